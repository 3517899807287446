"""Every NATS subject, stream and consumer name agentstream uses, built and validated in one place.

Subjects (docs/architecture.md, "What travels where"):

====================================  ============================================================
``agents.{tenant}.{agent}.run``       a run request, stored in stream ``AGENT_RUNS`` (work queue)
``agents.{tenant}.{agent}.member``    an ensemble member's child run request (same stream; no tenant cap)
``runs.{tenant}.{agent}.{run_id}``    that run's events, stored in stream ``RUN_EVENTS``
``live.runs.{tenant}.{agent}.{run}``  the same events re-published by the server (core, at-most-once)
``tools.{tenant}.{tool}``             one tool invocation (core request/reply, queue group per tool);
                                      MCP tools go through two generic tools, ``mcp`` (a call) and
                                      ``mcp_list`` (a server's tool list), the server and tool in
                                      the request (schemas/mcp.py)
``$SRV.INFO.agentstream-tool-runner`` which tools the tool runners serve (nats.micro discovery)
``control.{tenant}.{run_id}``         cancel and other signals for a run, stored in stream ``RUN_CONTROL``
``deadletter.{tenant}.{agent}.{run}`` the request of a run given up on, stored in ``RUN_DEAD_LETTERS``
``runlog.{tenant}.{agent}.{kind}``    the run log: one entry when a run is submitted, one when it ends
                                      (``kind``: submitted, completed, failed, cancelled), in
                                      ``RUN_LOG``: the index run listings are read from
``webhooks.{tenant}.{run_id}``        a webhook delivery job (one event to one URL), stored in stream
                                      ``WEBHOOK_JOBS`` (work queue) until a webhook sender delivers it
====================================  ============================================================

Every token (tenant, agent, tool, run id) must match ``[A-Za-z0-9_-]{1,64}``. Anything else is
refused with :class:`SubjectTokenError` before it can reach NATS: a ``.`` would add a token, ``*``
and ``>`` are wildcards, whitespace breaks the protocol line (docs/nats.md, "Subject tokens").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TypeGuard

TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Streams and consumers.
AGENT_RUNS_STREAM = "AGENT_RUNS"
RUN_EVENTS_STREAM = "RUN_EVENTS"
RUN_CONTROL_STREAM = "RUN_CONTROL"
RUN_DEAD_LETTERS_STREAM = "RUN_DEAD_LETTERS"
RUN_LOG_STREAM = "RUN_LOG"
WEBHOOK_JOBS_STREAM = "WEBHOOK_JOBS"
WEBHOOK_SENDERS_CONSUMER = "webhook-senders"
"""The durable pull consumer on WEBHOOK_JOBS every webhook sender shares."""
LEGACY_RUNNERS_CONSUMER = "agent-runners"
"""The one shared consumer of earlier releases; it overlaps the per-tenant ones and is removed."""
MEMBER_RUNS_CONSUMER = "member-runs"
"""The consumer of ensemble members' child runs (``agents.*.*.member``), shared by all runners."""
TENANT_CONSUMER_PREFIX = "tenant_"
"""Per-tenant consumers on AGENT_RUNS are named ``tenant_{tenant}`` (see :func:`tenant_consumer`)."""

# Key-value buckets (JetStream KV; each is stream ``KV_{bucket}``).
TENANTS_BUCKET = "TENANTS"
"""Tenant policies (limits, allowed agents), written by edges from the keys file, read by runners."""
RATE_LIMITS_BUCKET = "RATE_LIMITS"
"""Rate-limit state shared by every edge (one GCRA timestamp per key, tenant or client address)."""
STREAM_COUNTS_BUCKET = "STREAM_COUNTS"
"""Open SSE streams per API key and edge, so ``max_streams`` holds across edges."""
TOOL_RESULTS_BUCKET = "TOOL_RESULTS"
"""Results of (and claims on) tool calls with side effects, by tenant and idempotency key, so a
retried call is not executed again on another tool runner (tool_runner/once.py)."""
CONVERSATIONS_BUCKET = "CONVERSATIONS"
"""One entry per conversation (``{tenant}.{sha256 of its id}``): its turns, the runs in order."""
RUN_INDEX_BUCKET = "RUN_INDEX"
"""One entry per run (``{tenant}.{run_id}``): agent, message id, status; written at submit."""
APPROVALS_BUCKET = "APPROVALS"
"""One entry per run waiting for tool approvals (``{tenant}.{run_id}``): the calls, the decisions
made so far, the deadline, and the run request to resume it with (schemas/approvals.py)."""
SCHEDULES_BUCKET = "SCHEDULES"
"""One entry per schedule (``{tenant}.{schedule_id}``): its definition and the last tick fired,
changed only by compare-and-set (edges fire the ticks: edge/scheduler.py)."""
WEBHOOK_SECRETS_BUCKET = "WEBHOOK_SECRETS"
"""One entry per tenant (``{tenant}``): the secret its webhooks are signed with (edges and webhook
senders only)."""
WEBHOOK_DELIVERIES_BUCKET = "WEBHOOK_DELIVERIES"
"""One entry per webhook delivery (``{tenant}.{run_id}.{delivery_id}``): its attempts and state."""
AGENTS_BUCKET = "AGENTS"
"""Agents created over the API, one key per tenant and agent (``{tenant}.{agent}``, see
:func:`agent_key`), with their last revisions kept (schemas/streams.py ``AGENT_REVISIONS``).
Written by edges, watched by edges and agent runners (agentstream/agentstore.py)."""
AGENT_PAUSES_BUCKET = "AGENT_PAUSES"
"""Paused agents, one key per tenant and agent (``{tenant}.{agent}``); no entry: not paused.
Written by edges, watched by edges and agent runners."""

# Subject prefixes (first token of each family).
_RUN_REQUEST_PREFIX = "agents"
_RUN_EVENTS_PREFIX = "runs"
_LIVE_PREFIX = "live"
_TOOLS_PREFIX = "tools"
_CONTROL_PREFIX = "control"
_DEAD_LETTER_PREFIX = "deadletter"
_RUN_LOG_PREFIX = "runlog"
_WEBHOOK_PREFIX = "webhooks"

# Wildcards that cover each family; used by stream and consumer definitions.
RUN_REQUESTS_ALL = f"{_RUN_REQUEST_PREFIX}.*.*.run"
MEMBER_REQUESTS_ALL = f"{_RUN_REQUEST_PREFIX}.*.*.member"
RUN_EVENTS_ALL = f"{_RUN_EVENTS_PREFIX}.*.*.*"
LIVE_RUN_EVENTS_ALL = f"{_LIVE_PREFIX}.{_RUN_EVENTS_PREFIX}.*.*.*"
CONTROL_ALL = f"{_CONTROL_PREFIX}.*.*"
TOOLS_ALL = f"{_TOOLS_PREFIX}.*.*"
DEAD_LETTERS_ALL = f"{_DEAD_LETTER_PREFIX}.*.*.*"
RUN_LOG_ALL = f"{_RUN_LOG_PREFIX}.*.*.*"
RUN_LOG_SUBMITTED_ALL = f"{_RUN_LOG_PREFIX}.*.*.submitted"
WEBHOOK_JOBS_ALL = f"{_WEBHOOK_PREFIX}.*.*"
RUN_LOG_KINDS = ("submitted", "completed", "failed", "cancelled")
"""What a run log entry records: the run was submitted, or it ended so."""

# Republish mapping for RUN_EVENTS (source -> destination); server-side, see streams.py.
RUN_EVENTS_REPUBLISH_SRC = f"{_RUN_EVENTS_PREFIX}.>"
RUN_EVENTS_REPUBLISH_DEST = f"{_LIVE_PREFIX}.{_RUN_EVENTS_PREFIX}.>"

# Queue group shared by every tool runner for one tool (one group per tool subject).
TOOL_QUEUE_GROUP = "tool-runners"

TOOL_SERVICE = "agentstream-tool-runner"
"""The nats.micro service name every tool runner registers (one endpoint per tool it serves)."""
TOOL_SERVICE_INFO = f"$SRV.INFO.{TOOL_SERVICE}"
"""nats.micro discovery (ADR-32, "Discovery"): each tool runner answers a request here with its
service info, whose endpoints name the tools it serves."""
MCP_CALL_TOOL = "mcp"
"""The tool (``tools.{tenant}.mcp``) that calls a tool of an agent's MCP server (schemas/mcp.py)."""
MCP_LIST_TOOL = "mcp_list"
"""The tool (``tools.{tenant}.mcp_list``) that lists the tools of an agent's MCP server."""


class SubjectTokenError(ValueError):
    """A tenant, agent, tool or run id that cannot be a subject token.

    Attributes: ``field`` (which token: "tenant", "agent", "tool", "run_id"), ``value`` (what was
    given). The message says what is allowed.
    """

    def __init__(self, field: str, value: object):
        self.field = field
        self.value = value
        shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:80] + "...")
        super().__init__(
            f"{field} {shown} is not a valid name: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
        )


def is_token(value: object) -> TypeGuard[str]:
    """True when ``value`` is a str usable as one subject token (``[A-Za-z0-9_-]{1,64}``)."""
    return isinstance(value, str) and _TOKEN_RE.fullmatch(value) is not None


def token(value: object, field: str) -> str:
    """Return ``value`` if it is a valid subject token, else raise :class:`SubjectTokenError`.

    ``field`` names the token in the error ("tenant", "agent", "tool", "run_id").
    """
    if not is_token(value):
        raise SubjectTokenError(field, value)
    return value


def run_request(tenant: str, agent: str) -> str:
    """Subject of a run request: ``agents.{tenant}.{agent}.run`` (stream AGENT_RUNS)."""
    return f"{_RUN_REQUEST_PREFIX}.{token(tenant, 'tenant')}.{token(agent, 'agent')}.run"


def member_request(tenant: str, agent: str) -> str:
    """Subject of an ensemble member's child run: ``agents.{tenant}.{agent}.member`` (stream AGENT_RUNS).

    Only agent runners publish here (a tenant cannot): child runs are admitted with their parent,
    so they are not held back by the tenant's ``max_concurrent_runs`` the parent already counts in.
    """
    return f"{_RUN_REQUEST_PREFIX}.{token(tenant, 'tenant')}.{token(agent, 'agent')}.member"


def run_requests_of_tenant(tenant: str) -> str:
    """Filter for every run request of one tenant: ``agents.{tenant}.*.run``."""
    return f"{_RUN_REQUEST_PREFIX}.{token(tenant, 'tenant')}.*.run"


def tenant_consumer(tenant: str) -> str:
    """Name of the tenant's durable consumer on AGENT_RUNS (``tenant_{tenant}``): its
    ``max_ack_pending`` is the tenant's ``max_concurrent_runs`` across all runners."""
    return f"{TENANT_CONSUMER_PREFIX}{token(tenant, 'tenant')}"


def tenant_of_consumer(name: str) -> str | None:
    """The tenant a ``tenant_{tenant}`` consumer serves, or None for any other name."""
    if not name.startswith(TENANT_CONSUMER_PREFIX):
        return None
    rest = name[len(TENANT_CONSUMER_PREFIX):]
    return rest if is_token(rest) else None


def tool_result_key(tenant: str, idempotency_key: str) -> str:
    """Key of a tool call's entry in the TOOL_RESULTS bucket: ``{tenant}.{sha256 of the
    idempotency key, 40 hex digits}`` (the key itself may hold any character the model wrote)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return f"{token(tenant, 'tenant')}.{digest}"


def conversation_key(tenant: str, conversation_id: str) -> str:
    """Key of a conversation in the CONVERSATIONS bucket: ``{tenant}.{sha256 of its id, 40 hex}``
    (a conversation id is free text, up to 200 characters)."""
    digest = hashlib.sha256(conversation_id.encode()).hexdigest()[:40]
    return f"{token(tenant, 'tenant')}.{digest}"


def run_index_key(tenant: str, run_id: str) -> str:
    """Key of a run's entry in the RUN_INDEX bucket: ``{tenant}.{run_id}``."""
    return f"{token(tenant, 'tenant')}.{token(run_id, 'run_id')}"


def approval_key(tenant: str, run_id: str) -> str:
    """Key of a run's entry in the APPROVALS bucket: ``{tenant}.{run_id}``."""
    return f"{token(tenant, 'tenant')}.{token(run_id, 'run_id')}"


def parse_approval_key(key: str) -> tuple[str, str]:
    """Split an APPROVALS key into ``(tenant, run_id)``; SubjectTokenError on any other shape."""
    parts = key.split(".")
    if len(parts) != 2:
        raise SubjectTokenError("key", key)
    return token(parts[0], "tenant"), token(parts[1], "run_id")


def schedule_key(tenant: str, schedule_id: str) -> str:
    """Key of a schedule in the SCHEDULES bucket: ``{tenant}.{schedule_id}``."""
    return f"{token(tenant, 'tenant')}.{token(schedule_id, 'schedule_id')}"


def schedules_of_tenant(tenant: str) -> str:
    """The KV subject filter of every schedule of one tenant: ``$KV.SCHEDULES.{tenant}.*``."""
    return f"$KV.{SCHEDULES_BUCKET}.{token(tenant, 'tenant')}.*"


def webhook_secret_key(tenant: str) -> str:
    """Key of a tenant's webhook secret in the WEBHOOK_SECRETS bucket: ``{tenant}``."""
    return token(tenant, "tenant")


def webhook_delivery_key(tenant: str, run_id: str, delivery_id: str) -> str:
    """Key of one webhook delivery in the WEBHOOK_DELIVERIES bucket: ``{tenant}.{run_id}.{delivery_id}``."""
    return f"{token(tenant, 'tenant')}.{token(run_id, 'run_id')}.{token(delivery_id, 'delivery_id')}"


def webhook_deliveries_of_run(tenant: str, run_id: str) -> str:
    """The KV subject filter of every webhook delivery of one run: ``$KV.WEBHOOK_DELIVERIES.{tenant}.{run_id}.*``."""
    return f"$KV.{WEBHOOK_DELIVERIES_BUCKET}.{token(tenant, 'tenant')}.{token(run_id, 'run_id')}.*"


def webhook_job(tenant: str, run_id: str) -> str:
    """Subject of a webhook delivery job: ``webhooks.{tenant}.{run_id}`` (stream WEBHOOK_JOBS)."""
    return f"{_WEBHOOK_PREFIX}.{token(tenant, 'tenant')}.{token(run_id, 'run_id')}"


def parse_webhook_job(subject: str) -> tuple[str, str]:
    """Split ``webhooks.{tenant}.{run_id}`` into ``(tenant, run_id)``; the tenant of a delivery
    comes from here, never from the job's payload."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != _WEBHOOK_PREFIX:
        raise SubjectTokenError("subject", subject)
    return token(parts[1], "tenant"), token(parts[2], "run_id")


def agent_key(tenant: str, agent: str) -> str:
    """Key of a tenant's agent in the AGENTS and AGENT_PAUSES buckets: ``{tenant}.{agent}``."""
    return f"{token(tenant, 'tenant')}.{token(agent, 'agent')}"


def parse_agent_key(key: str) -> tuple[str, str]:
    """Split an AGENTS / AGENT_PAUSES key ``{tenant}.{agent}`` into ``(tenant, agent)``; raises
    SubjectTokenError on any other shape."""
    parts = key.split(".")
    if len(parts) != 2:
        raise SubjectTokenError("key", key)
    return token(parts[0], "tenant"), token(parts[1], "agent")


def run_events(tenant: str, agent: str, run_id: str) -> str:
    """Subject of one run's events: ``runs.{tenant}.{agent}.{run_id}`` (stream RUN_EVENTS)."""
    return (
        f"{_RUN_EVENTS_PREFIX}.{token(tenant, 'tenant')}.{token(agent, 'agent')}."
        f"{token(run_id, 'run_id')}"
    )


def run_events_of_run(tenant: str, run_id: str) -> str:
    """Filter for one run's events when its agent is not known: ``runs.{tenant}.*.{run_id}``."""
    return f"{_RUN_EVENTS_PREFIX}.{token(tenant, 'tenant')}.*.{token(run_id, 'run_id')}"


def run_events_of_agent(tenant: str, agent: str) -> str:
    """Filter for every run of one agent: ``runs.{tenant}.{agent}.*``."""
    return f"{_RUN_EVENTS_PREFIX}.{token(tenant, 'tenant')}.{token(agent, 'agent')}.*"


def run_events_tree_of_tenant(tenant: str) -> str:
    """Everything under one tenant's run events, at any depth: ``runs.{tenant}.>`` (for permissions)."""
    return f"{_RUN_EVENTS_PREFIX}.{token(tenant, 'tenant')}.>"


def control_of_tenant(tenant: str) -> str:
    """Filter for every control signal of one tenant: ``control.{tenant}.*``."""
    return f"{_CONTROL_PREFIX}.{token(tenant, 'tenant')}.*"


def live_of(events_subject: str) -> str:
    """The core subject the server re-publishes a RUN_EVENTS subject (or filter) to."""
    return f"{_LIVE_PREFIX}.{events_subject}"


def tool(tenant: str, tool_name: str) -> str:
    """Subject of a tool invocation: ``tools.{tenant}.{tool}`` (core request/reply)."""
    return f"{_TOOLS_PREFIX}.{token(tenant, 'tenant')}.{token(tool_name, 'tool')}"


def tool_all_tenants(tool_name: str) -> str:
    """What a tool runner subscribes to for one tool: ``tools.*.{tool}``."""
    return f"{_TOOLS_PREFIX}.*.{token(tool_name, 'tool')}"


def control(tenant: str, run_id: str) -> str:
    """Subject of control signals (cancel) for a run: ``control.{tenant}.{run_id}``."""
    return f"{_CONTROL_PREFIX}.{token(tenant, 'tenant')}.{token(run_id, 'run_id')}"


def dead_letter(tenant: str, agent: str, run_id: str) -> str:
    """Subject of a run's dead letter: ``deadletter.{tenant}.{agent}.{run_id}``."""
    return (
        f"{_DEAD_LETTER_PREFIX}.{token(tenant, 'tenant')}.{token(agent, 'agent')}.{token(run_id, 'run_id')}"
    )


def run_log(tenant: str, agent: str, kind: str) -> str:
    """Subject of a run log entry: ``runlog.{tenant}.{agent}.{kind}`` (stream RUN_LOG)."""
    if kind not in RUN_LOG_KINDS:
        raise SubjectTokenError("kind", kind)
    return f"{_RUN_LOG_PREFIX}.{token(tenant, 'tenant')}.{token(agent, 'agent')}.{kind}"


def run_log_filter(tenant: str, agent: str | None, kind: str) -> str:
    """Filter for run log entries of one tenant, one agent (None: every agent), one kind."""
    if kind not in RUN_LOG_KINDS:
        raise SubjectTokenError("kind", kind)
    return f"{_RUN_LOG_PREFIX}.{token(tenant, 'tenant')}.{token(agent, 'agent') if agent else '*'}.{kind}"


def dead_letter_of_run(tenant: str, run_id: str) -> str:
    """Filter for a run's dead letter when its agent is not known."""
    return f"{_DEAD_LETTER_PREFIX}.{token(tenant, 'tenant')}.*.{token(run_id, 'run_id')}"


@dataclass(frozen=True, slots=True)
class RunSubject:
    """The parts of a ``runs.{tenant}.{agent}.{run_id}`` or ``agents.{tenant}.{agent}.run`` subject."""

    tenant: str
    agent: str
    run_id: str | None = None


def parse_run_request(subject: str) -> RunSubject:
    """Split ``agents.{tenant}.{agent}.run`` (or ``.member``); raises SubjectTokenError on any other shape.

    The tenant of a run always comes from here, never from the payload (docs/architecture.md).
    """
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != _RUN_REQUEST_PREFIX or parts[3] not in ("run", "member"):
        raise SubjectTokenError("subject", subject)
    return RunSubject(token(parts[1], "tenant"), token(parts[2], "agent"))


def parse_run_events(subject: str) -> RunSubject:
    """Split ``runs.{tenant}.{agent}.{run_id}`` (or its ``live.`` form) into its tokens."""
    parts = subject.split(".")
    if parts and parts[0] == _LIVE_PREFIX:
        parts = parts[1:]
    if len(parts) != 4 or parts[0] != _RUN_EVENTS_PREFIX:
        raise SubjectTokenError("subject", subject)
    return RunSubject(token(parts[1], "tenant"), token(parts[2], "agent"), token(parts[3], "run_id"))


def parse_tool(subject: str) -> tuple[str, str]:
    """Split ``tools.{tenant}.{tool}`` into ``(tenant, tool)``."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != _TOOLS_PREFIX:
        raise SubjectTokenError("subject", subject)
    return token(parts[1], "tenant"), token(parts[2], "tool")


def parse_control(subject: str) -> tuple[str, str]:
    """Split ``control.{tenant}.{run_id}`` into ``(tenant, run_id)``."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != _CONTROL_PREFIX:
        raise SubjectTokenError("subject", subject)
    return token(parts[1], "tenant"), token(parts[2], "run_id")

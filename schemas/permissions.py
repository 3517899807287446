"""Who may do what on the bus: the NATS subject permissions of every identity, in one place.

Each process kind connects with its own identity (an nkey user of nats-server), and so does each
tenant's own service that skips HTTP. nats-server enforces these lists: a publish or subscribe
outside them is refused with a permissions violation (the client sees it on its error callback,
and a request then times out). The rules follow docs/security.md; in short:

=============  ================================================================================
identity       may
=============  ================================================================================
admin          everything (declares streams, consumers and buckets; nothing else uses it)
edge           submit runs of any tenant, send cancels, read events (stored and live), keep its
               buckets (tenant policies, rate limits, open streams, run index, approval
               decisions, schedules, webhook secrets, agents and paused agents, the last two
               also watched), read webhook deliveries; never write ``runs.>`` (it cannot forge a
               run's events)
agent-runner   pull run requests through its consumers, write ``runs.>`` and dead letters,
               start ensemble members, call tools and ask which are served, read cancels,
               read tenant policies, keep conversations, read and watch (never write) agents
               and paused agents, enqueue webhook deliveries (``webhooks.*.*``), keep and
               watch runs waiting for approvals and publish their run requests again to
               resume them
webhook-sender pull webhook deliveries through its consumer, keep their records
               (WEBHOOK_DELIVERIES), read (and create) tenants' signing secrets; nothing of
               runs, tools or tenants' policies
tool-runner    serve ``tools.*.*`` in queue group ``tool-runners`` only, answer the requests it
               receives (``allow_responses``), keep tool results (TOOL_RESULTS), read
               tenant policies (a tenant's own ``tool_root``)
tenant T       submit ``agents.T.*.run``, cancel ``control.T.*``, read ``runs.T.>`` (direct
               get by subject, consumers whose filter is inside ``runs.T.>``, live
               ``live.runs.T.>``); nothing of any other tenant, no tool calls, no stream
               management
=============  ================================================================================

Every identity has its own inbox prefix (:func:`inbox_prefix`), since replies (JetStream
acknowledgements, tool results, direct-get answers) travel on inbox subjects: an identity may
subscribe only to its own. A tenant's service must pass ``inbox_prefix=`` to ``nats.connect``.

JetStream's API is subjects too. Consumers are created with a name and one filter, so the filter
is part of the subject (``$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter}``) and a permission can
confine it; the unnamed form carries the filter only in its payload and is refused to tenants.
Direct get by subject (``$JS.API.DIRECT.GET.{stream}.{subject}``) is confinable the same way;
the batched form (``$JS.API.DIRECT.GET.{stream}``, filter in the payload) is for trusted
components only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas import subjects as S

API = "$JS.API"
ACK = "$JS.ACK"
FLOW_CONTROL = "$JS.FC"
MICRO = "$SRV"
TENANT_INBOX_PREFIX = "_INBOX_"
"""A tenant's inbox prefix is ``_INBOX_{tenant}`` (one token); a component's is ``_INBOX.{role}``."""
TOOL_RESPONSES_MAX = 1_000_000
"""Replies a tool runner may send to one request (progress messages, then the result)."""
TOOL_RESPONSES_EXPIRES = 3600.0
"""Seconds a tool runner may keep answering one request (the longest ``tool_timeout``)."""


class Role(StrEnum):
    """The component identities. Tenants are identities too (:func:`tenant_permissions`)."""

    ADMIN = "admin"
    EDGE = "edge"
    AGENT_RUNNER = "agent-runner"
    TOOL_RUNNER = "tool-runner"
    WEBHOOK_SENDER = "webhook-sender"


@dataclass(frozen=True, slots=True)
class Permissions:
    """One identity's permissions: subjects it may publish to and subscribe to (NATS wildcards;
    a subscribe entry ``"subject queue"`` allows only that queue group), and whether it may answer
    requests it receives (``responses``: ``(max messages, expiry seconds)`` per request)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: tuple[int, float] | None = None

    def as_config(self) -> dict[str, object]:
        """The ``permissions`` block of a nats-server user (configuration file, JSON syntax)."""
        block: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.responses is not None:
            most, expires = self.responses
            block["allow_responses"] = {"max": most, "expires": f"{int(expires)}s"}
        return block


def inbox_prefix(role: Role | str) -> str:
    """The inbox prefix a component connects with (``nats.connect(inbox_prefix=...)``): ``_INBOX.{role}``."""
    return f"_INBOX.{Role(role).value}"


def tenant_inbox_prefix(tenant: str) -> str:
    """The inbox prefix a tenant's service connects with: ``_INBOX_{tenant}``. It never collides
    with a component's: it is one token, never ``_INBOX`` itself."""
    return f"{TENANT_INBOX_PREFIX}{S.token(tenant, 'tenant')}"


def _bucket(bucket: str, *, watch: bool = False) -> tuple[str, ...]:
    """Publish permissions to read and write one KV bucket (and watch it, if asked)."""
    stream = f"KV_{bucket}"
    rules = [
        f"$KV.{bucket}.>",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
    ]
    if watch:
        rules += [f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>", f"{FLOW_CONTROL}.{stream}.>"]
    return tuple(rules)


def _bucket_read(bucket: str) -> tuple[str, ...]:
    """Publish permissions to read and watch one KV bucket, never to write it: direct gets (by
    subject and batched), the stream's info, and ordered consumers on its stream."""
    stream = f"KV_{bucket}"
    return (
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{FLOW_CONTROL}.{stream}.>",
    )


def _stream_read(stream: str) -> tuple[str, ...]:
    return (f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>")


_EVERYTHING = Permissions(publish=(">",), subscribe=(">",))

_EDGE = Permissions(
    publish=(
        S.RUN_REQUESTS_ALL,
        S.CONTROL_ALL,
        S.RUN_LOG_SUBMITTED_ALL,
        *_stream_read(S.RUN_EVENTS_STREAM),
        *_stream_read(S.RUN_LOG_STREAM),
        *_stream_read(S.RUN_DEAD_LETTERS_STREAM),
        f"{API}.INFO",
        f"{API}.STREAM.INFO.*",
        f"{API}.CONSUMER.INFO.{S.AGENT_RUNS_STREAM}.*",
        *_bucket(S.TENANTS_BUCKET),
        *_bucket(S.RATE_LIMITS_BUCKET),
        *_bucket(S.STREAM_COUNTS_BUCKET),
        *_bucket(S.RUN_INDEX_BUCKET),
        *_bucket(S.CONVERSATIONS_BUCKET),
        *_bucket(S.APPROVALS_BUCKET),
        *_bucket(S.SCHEDULES_BUCKET, watch=True),  # edges fire schedules (edge/scheduler.py)
        *_bucket(S.WEBHOOK_SECRETS_BUCKET),  # GET /api/webhooks/secret, and its rotation
        *_bucket_read(S.WEBHOOK_DELIVERIES_BUCKET),  # GET /api/runs/{id} shows the deliveries
        *_bucket(S.AGENTS_BUCKET, watch=True),
        *_bucket(S.AGENT_PAUSES_BUCKET, watch=True),
    ),
    subscribe=(S.LIVE_RUN_EVENTS_ALL, f"{inbox_prefix(Role.EDGE)}.>"),
)

_AGENT_RUNNER = Permissions(
    publish=(
        S.RUN_EVENTS_ALL,
        S.MEMBER_REQUESTS_ALL,
        S.RUN_REQUESTS_ALL,  # a run that waited for approvals is queued again (agent_runner.approval_keeper)
        S.CONTROL_ALL,
        S.DEAD_LETTERS_ALL,
        S.RUN_LOG_ALL,
        S.TOOLS_ALL,
        S.TOOL_SERVICE_INFO,  # which tools are served (agent_runner.tool_directory)
        f"{API}.INFO",
        f"{API}.STREAM.INFO.*",
        f"{API}.CONSUMER.CREATE.{S.AGENT_RUNS_STREAM}.>",
        f"{API}.CONSUMER.INFO.{S.AGENT_RUNS_STREAM}.*",
        f"{API}.CONSUMER.DELETE.{S.AGENT_RUNS_STREAM}.*",
        f"{API}.CONSUMER.MSG.NEXT.{S.AGENT_RUNS_STREAM}.*",
        f"{ACK}.{S.AGENT_RUNS_STREAM}.>",
        f"{API}.CONSUMER.CREATE.{S.RUN_CONTROL_STREAM}",
        f"{API}.CONSUMER.CREATE.{S.RUN_CONTROL_STREAM}.>",
        f"{FLOW_CONTROL}.{S.RUN_CONTROL_STREAM}.>",
        *_stream_read(S.RUN_EVENTS_STREAM),
        # The leader's answer when a replica's may be stale (agentstream.eventlog.last_event_from_leader).
        f"{API}.STREAM.MSG.GET.{S.RUN_EVENTS_STREAM}",
        *_stream_read(S.RUN_CONTROL_STREAM),
        *_bucket(S.TENANTS_BUCKET, watch=True),
        *_bucket(S.RUN_INDEX_BUCKET),
        *_bucket(S.CONVERSATIONS_BUCKET),
        *_bucket(S.APPROVALS_BUCKET, watch=True),
        S.WEBHOOK_JOBS_ALL,  # a subscribed event's delivery jobs (agent_runner/webhooks.py)
        *_bucket_read(S.AGENTS_BUCKET),
        *_bucket_read(S.AGENT_PAUSES_BUCKET),
    ),
    subscribe=(S.LIVE_RUN_EVENTS_ALL, f"{inbox_prefix(Role.AGENT_RUNNER)}.>"),
)

_TOOL_RUNNER = Permissions(
    publish=(f"{API}.INFO", f"{API}.STREAM.INFO.*", *_bucket(S.TOOL_RESULTS_BUCKET),
             *_bucket(S.TENANTS_BUCKET, watch=True)),
    subscribe=(
        f"{S.TOOLS_ALL} {S.TOOL_QUEUE_GROUP}",
        f"{MICRO}.>",
        f"{inbox_prefix(Role.TOOL_RUNNER)}.>",
    ),
    responses=(TOOL_RESPONSES_MAX, TOOL_RESPONSES_EXPIRES),
)

_WEBHOOK_SENDER = Permissions(
    publish=(
        f"{API}.INFO",
        f"{API}.STREAM.INFO.{S.WEBHOOK_JOBS_STREAM}",
        f"{API}.CONSUMER.INFO.{S.WEBHOOK_JOBS_STREAM}.{S.WEBHOOK_SENDERS_CONSUMER}",
        f"{API}.CONSUMER.MSG.NEXT.{S.WEBHOOK_JOBS_STREAM}.{S.WEBHOOK_SENDERS_CONSUMER}",
        f"{ACK}.{S.WEBHOOK_JOBS_STREAM}.>",
        *_bucket(S.WEBHOOK_DELIVERIES_BUCKET),
        *_bucket(S.WEBHOOK_SECRETS_BUCKET, watch=True),  # mirrored (a rotation applies at once); made if missing
    ),
    subscribe=(f"{inbox_prefix(Role.WEBHOOK_SENDER)}.>",),
)

_ROLES: dict[Role, Permissions] = {
    Role.ADMIN: _EVERYTHING,
    Role.EDGE: _EDGE,
    Role.AGENT_RUNNER: _AGENT_RUNNER,
    Role.TOOL_RUNNER: _TOOL_RUNNER,
    Role.WEBHOOK_SENDER: _WEBHOOK_SENDER,
}


def role_permissions(role: Role | str) -> Permissions:
    """The permissions of a component identity. Raises ValueError for an unknown role."""
    return _ROLES[Role(role)]


def tenant_permissions(tenant: str) -> Permissions:
    """The permissions of tenant ``tenant``'s own services (``agentstream creds TENANT``).

    Raises SubjectTokenError when ``tenant`` is not a valid name.
    """
    t = S.token(tenant, "tenant")
    events = S.run_events_tree_of_tenant(t)  # runs.{t}.>
    return Permissions(
        publish=(
            S.run_requests_of_tenant(t),
            S.control_of_tenant(t),
            f"{API}.DIRECT.GET.{S.RUN_EVENTS_STREAM}.{events}",
            f"{API}.CONSUMER.CREATE.{S.RUN_EVENTS_STREAM}.*.{events}",
            f"{FLOW_CONTROL}.{S.RUN_EVENTS_STREAM}.>",
        ),
        subscribe=(f"{tenant_inbox_prefix(t)}.>", S.live_of(events)),
    )

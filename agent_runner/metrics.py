"""The agent runner's Prometheus metrics (README, Observability), served on its probe server's
``GET /metrics`` (agentstream.probe, ``METRICS_BIND``).

Label values are bounded (agentstream.metrics): ``agent`` is one of the runner's agents or
``_unknown``, ``tenant`` follows ``METRICS_MAX_TENANTS``, ``tool`` is a known tool or
``_unknown``, ``error_type`` is one of agentstream's own error types (``ErrorInfo.type``),
``model`` comes from the agent files or ``LLM_MODEL``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel

from agentstream import tracing
from agentstream.agentstore import SOURCE_API, AgentRegistry
from agentstream.metrics import API_AGENT, DURATION_BUCKETS, FAST_BUCKETS, OTHER_MODEL, UNKNOWN, TenantLabels
from schemas import events as E
from schemas import subjects

log = logging.getLogger(__name__)

RUNS = Counter(
    "agentstream_runs_total",
    "Runs this runner ended, by outcome (completed, failed, cancelled) and, for failed ones, error type.",
    ["tenant", "agent", "outcome", "error_type"],
)
RUN_DURATION = Histogram(
    "agentstream_run_duration_seconds",
    "How long the attempt that ended a run took, from taking its request to its terminal event.",
    ["agent", "outcome"], buckets=DURATION_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "agentstream_run_time_to_first_token_seconds",
    "From a run attempt's run.started to its first message.delta (the model's first text).",
    ["agent"], buckets=FAST_BUCKETS,
)
REDELIVERIES = Counter(
    "agentstream_run_redeliveries_total",
    "Run requests delivered again (attempt > 1: a runner died, timed out or handed the run back).",
    ["agent"],
)
DEAD_LETTERS = Counter(
    "agentstream_dead_letters_total",
    "Runs given up on after AGENT_RUNNER_MAX_ATTEMPTS attempts died; their requests are kept in RUN_DEAD_LETTERS.",
    ["agent"],
)
TOOL_CALLS = Counter(
    "agentstream_tool_calls_total",
    "Tool calls made by runs (as the caller, retries on other tool runners included), by outcome (ok, error).",
    ["tool", "outcome", "error_type"],
)
TOOL_CALL_DURATION = Histogram(
    "agentstream_tool_call_duration_seconds",
    "Tool call latency as the run sees it (request to result, over every attempt).",
    ["tool"], buckets=FAST_BUCKETS,
)
LLM_REQUEST_DURATION = Histogram(
    "agentstream_llm_request_duration_seconds",
    "One HTTP request to the model server, to the end of its streamed answer (each retry is a request).",
    ["model", "outcome"], buckets=DURATION_BUCKETS,
)
LLM_ERRORS = Counter(
    "agentstream_llm_errors_total",
    "Failed model server requests, by error type (llm_unreachable, llm_http_error, llm_stream_error, "
    "llm_bad_response), retried ones included.",
    ["model", "error_type"],
)
CONSUMER_PENDING = Gauge(
    "agentstream_consumer_pending_messages",
    "Run requests waiting in AGENT_RUNS for a consumer (num_pending), sampled at scrape time. Every runner reports "
    "the same shared consumers: aggregate with max, not sum.",
    ["consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "agentstream_consumer_ack_pending_messages",
    "Run requests handed out by a consumer and not yet acknowledged (num_ack_pending: being run, or waiting for "
    "a slot), sampled at scrape time.",
    ["consumer"],
)

TENANTS = TenantLabels()
"""This runner's tenant label rule; its limit and known tenants are set by the runner."""

ALL_TENANT_CONSUMERS = f"{subjects.TENANT_CONSUMER_PREFIX}*"
"""The ``consumer`` label of every tenant consumer summed, when tenants are not labelled each."""

CONSUMER_INFO_TIMEOUT = 2.0
"""Seconds a scrape waits for the consumers' state."""


class RunMetrics:
    """What one run attempt reports. ``tenant``, ``agent``: label values (already bounded)."""

    __slots__ = ("_first_token", "_started", "agent", "tenant")

    def __init__(self, tenant: str, agent: str):
        self.tenant = tenant
        self.agent = agent
        self._started: float | None = None
        self._first_token = False

    @classmethod
    def of(cls, registry: AgentRegistry, tenant: str, agent: str) -> RunMetrics:
        """The metrics of a run of ``agent`` for ``tenant``, labels bounded (:func:`agent_label`, :data:`TENANTS`)."""
        return cls(TENANTS.label(tenant), agent_label(registry, tenant, agent))

    def started(self) -> None:
        """``run.started`` is being written: the clock of this attempt starts."""
        self._started = time.perf_counter()
        self._first_token = False

    def first_delta(self) -> None:
        """Text is being written: the first time in this attempt, the time to first token is observed."""
        if self._first_token or self._started is None:
            return
        self._first_token = True
        TIME_TO_FIRST_TOKEN.labels(self.agent).observe(time.perf_counter() - self._started)

    def ended(self, event_type: str, data: BaseModel) -> None:
        """The terminal event ``event_type`` (``run.completed``, ``run.failed``, ``run.cancelled``)
        with ``data`` is stored."""
        outcome = event_type.removeprefix("run.")
        error = getattr(data, "error", None)
        error_type = getattr(error, "type", "") if event_type == E.RUN_FAILED else ""
        RUNS.labels(self.tenant, self.agent, outcome, error_type or "").inc()
        span = tracing.current()
        if span is not None:
            span.set_attribute("agentstream.outcome", outcome)
            if error_type:
                tracing.mark_error(span, error_type)
        duration_ms = getattr(data, "duration_ms", None)
        if isinstance(duration_ms, int | float):
            RUN_DURATION.labels(self.agent, outcome).observe(duration_ms / 1000)


def agent_label(registry: AgentRegistry, tenant: str, agent: str) -> str:
    """The ``agent`` label: the name of an agent of ``AGENTS_DIR`` (the operator's, few), else
    :data:`API_AGENT` for an agent ``tenant`` created over the API (every tenant may create many),
    else :data:`UNKNOWN`."""
    if agent in registry.files.agents:
        return agent
    return API_AGENT if registry.catalog(tenant).source(agent) == SOURCE_API else UNKNOWN


MODELS: set[str] = set()
"""The ``model`` label values: the models the agent files and LLM_MODEL name (:func:`known_models`)."""


def known_models(names: Iterable[str | None]) -> None:
    """The models that are label values as they are (the agent files' ``model``, ``LLM_MODEL``);
    any other (an agent created over the API names its own) is counted as :data:`OTHER_MODEL`."""
    MODELS.clear()
    MODELS.update(name for name in names if name)


def model_label(model: str) -> str:
    """The ``model`` label of ``model`` (see :func:`known_models`)."""
    return model if model in MODELS else OTHER_MODEL


def tool_call(tool: str, seconds: float, error_type: str | None) -> None:
    """Count one tool call of a run (``tool``: its label, already bounded; ``error_type`` None: it
    succeeded) and its latency (seconds)."""
    TOOL_CALLS.labels(tool, "ok" if error_type is None else "error", error_type or "").inc()
    TOOL_CALL_DURATION.labels(tool).observe(seconds)


async def sample_consumers(js: JetStreamContext, consumers: Sequence[str]) -> None:
    """Read ``num_pending`` and ``num_ack_pending`` of ``consumers`` (on AGENT_RUNS) into the
    gauges; tenant consumers are summed under ``tenant_*`` unless :data:`TENANTS` labels each
    tenant. A consumer that cannot be read within :data:`CONSUMER_INFO_TIMEOUT` is left out."""

    async def info(name: str) -> tuple[str, int, int] | None:
        try:
            got = await js.consumer_info(subjects.AGENT_RUNS_STREAM, name, timeout=CONSUMER_INFO_TIMEOUT)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.debug("consumer %s not sampled: %s", name, err)
            return None
        return name, int(got.num_pending or 0), int(got.num_ack_pending or 0)

    found = await asyncio.gather(*(info(name) for name in consumers))
    pending: dict[str, int] = {}
    ack_pending: dict[str, int] = {}
    for item in found:
        if item is None:
            continue
        name, waiting, working = item
        tenant = subjects.tenant_of_consumer(name)
        if tenant is not None and TENANTS.label(tenant) != tenant:
            name = ALL_TENANT_CONSUMERS
        pending[name] = pending.get(name, 0) + waiting
        ack_pending[name] = ack_pending.get(name, 0) + working
    # Set all at once (no await in between), so a concurrent scrape never sees half of them.
    CONSUMER_PENDING.clear()
    CONSUMER_ACK_PENDING.clear()
    for name, value in pending.items():
        CONSUMER_PENDING.labels(name).set(value)
    for name, value in ack_pending.items():
        CONSUMER_ACK_PENDING.labels(name).set(value)

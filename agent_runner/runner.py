"""The agent runner: takes run requests from AGENT_RUNS through the consumers all runners share
(one per tenant, one for ensemble members: agent_runner.intake), runs each (agent_runner.loop),
writes its events, and acks the request only once the run's terminal event is stored.

Guarantees, per run request:
- a run of an agent its tenant may not use (the keys file's allow-list, also for runs submitted
  over NATS directly) ends ``run.failed`` with error type ``forbidden_agent``, without running;
- a request whose run already ended (a duplicate, a redelivery after the terminal event) is acked
  without running again;
- while a run is held, ``in_progress`` is sent every third of the ack wait, so a long run is not
  redelivered; a runner that dies stops sending it, and the request goes to another runner, which
  writes ``run.retrying`` and continues it (agent_runner.resume);
- a stale attempt (its runner was presumed dead but was not) loses the run's subject to the new
  attempt (agent_runner.event_writer) and stops without acking;
- on shutdown, runs still going after the grace period are handed back (nak) for another runner;
- a run whose tool calls wait for a person's approval is let go: the wait is stored in the
  APPROVALS bucket, ``tool.approval_requested`` is written and the request acked, so the run holds
  no slot, no model connection and no place of its tenant while it waits; it is resumed by a
  request published again once it is ready (agent_runner.approval_keeper), and continued from its
  events like any run taken over by another runner.

The work is split by job: agent_runner.control (cancels and deletions), agent_runner.reception
(a delivered request until it has a slot), agent_runner.execution (open, run, end, ack),
agent_runner.opening with agent_runner.delivery (what a delivery is, and its first events),
agent_runner.suspension (waits for approvals) and agent_runner.failures (every ``run.failed``).
This module wires them: start, stop, load, metrics, and each run's writer and webhook outbox.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from pydantic import BaseModel

from agent_runner import metrics
from agent_runner.admission import AUTO_MAX_RUNS, Admission
from agent_runner.approval_keeper import ApprovalKeeper
from agent_runner.cancels import CancelRegistry, RunKey
from agent_runner.control import ControlFollower
from agent_runner.endpoint import llm_endpoint
from agent_runner.event_writer import RunEventWriter
from agent_runner.execution import RunExecutor
from agent_runner.intake import Intake, Slots
from agent_runner.llm import LLMClient, LLMEndpoint
from agent_runner.mcp_tools import McpToolLister
from agent_runner.opening import RunOpener
from agent_runner.reception import Reception
from agent_runner.tool_client import ToolClient
from agent_runner.webhooks import WebhookOutbox
from agentstream import eventlog, runlog
from agentstream.agentstore import AgentRegistry
from agentstream.bus import ensure_topology
from agentstream.policies import PolicyWatcher
from agentstream.settings import Settings
from schemas import events as E
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.common import ErrorInfo, Usage
from schemas.runs import RunRequest
from schemas.tenants import TenantPolicy
from schemas.webhooks import merged_targets

log = logging.getLogger(__name__)


class AgentRunner:
    """One agent runner process' work loop. ``start()``, then ``stop(grace)`` (seconds).

    ``catalog``: every tenant's agents, followed in the AGENTS bucket (started by the caller); a
    run's agent is resolved from its tenant's catalog when the run is taken. ``llm_base_url``:
    where agents without their own ``llm.base_url`` are served (LLM_BASE_URL, or the built-in
    model's URL).
    """

    def __init__(self, settings: Settings, nc: NATS, catalog: AgentRegistry, *, llm_base_url: str):
        self.settings = settings
        self.nc = nc
        self.js = nc.jetstream()
        self.catalog = catalog
        self.llm_base_url = llm_base_url
        self.id = settings.runner_name
        self.llm = LLMClient(max_attempts=settings.llm_max_attempts, stream_usage=settings.llm_stream_usage)
        metrics.TENANTS.max_tenants = settings.metrics_max_tenants
        metrics.known_models([settings.llm_model, *(a.model for a in catalog.files.agents.values())])
        self.tools = ToolClient(nc, progress_interval=settings.tool_progress_interval,
                                restart_grace=settings.tool_restart_grace)
        self.mcp = McpToolLister(self.tools, ttl=settings.mcp_tools_cache, timeout=settings.mcp_list_timeout)
        self.cancels = CancelRegistry()
        self.slots = Slots(settings.runner_concurrency or AUTO_MAX_RUNS)
        self.admission = Admission(self.slots, max_runs=settings.runner_concurrency,
                                   memory_budget=settings.runner_memory_budget, max_lag=settings.runner_max_loop_lag)
        self.opener = RunOpener(self)
        self.executor = RunExecutor(self)
        self.reception = Reception(self)
        self.control = ControlFollower(nc, self.cancels, on_cancel=self._on_cancel, background=self.background)
        self.intake = Intake(self.js, self.reception.take, self.slots, ack_wait=settings.runner_ack_wait)
        self.policies: PolicyWatcher | None = None
        self.run_index: KeyValue | None = None
        self.conversations: KeyValue | None = None
        self.approvals: KeyValue | None = None
        self.keeper: ApprovalKeeper | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._outboxes: dict[tuple[str, str], WebhookOutbox] = {}

    async def start(self) -> None:
        """Wait for (or declare) the streams, read cancels, follow the tenant policies, start taking runs."""
        await ensure_topology(self.nc, self.settings)
        await self.control.start()
        self.run_index = await self.js.key_value(subjects.RUN_INDEX_BUCKET)
        self.conversations = await self.js.key_value(subjects.CONVERSATIONS_BUCKET)
        self.approvals = await self.js.key_value(subjects.APPROVALS_BUCKET)
        self.keeper = ApprovalKeeper(self.js, self.approvals, self.id,
                                     cancel_reason=lambda tenant, run_id: self.cancels.reason((tenant, run_id)))
        await self.keeper.start()
        self.policies = PolicyWatcher(self.js, on_change=self._on_policy)
        self.admission.start()
        await self.intake.start()
        await self.policies.start()

    async def _on_policy(self, tenant: str, policy: TenantPolicy | None) -> None:
        if self.policies is not None:
            metrics.TENANTS.set_known(self.policies.policies)
        await self.intake.set_tenant(tenant, policy)

    def _on_cancel(self, key: RunKey) -> None:
        if self.keeper is not None and key in self.keeper.pending:
            self.keeper.poke()  # it waits for approvals: resume it, so it ends cancelled

    async def sample_metrics(self) -> None:
        """Read the state of the consumers this runner takes runs from into its gauges (at scrape time)."""
        await metrics.sample_consumers(self.js, self.intake.consumers)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking runs; hand back those still waiting for a slot; let running runs finish for
        ``grace`` seconds; hand the rest back."""
        if self.policies is not None:
            await self.policies.stop()
        await self.intake.stop()
        await self.admission.stop()
        if self.keeper is not None:
            await self.keeper.stop()
        handlers = self.reception.handlers
        waiting = [task for task, admitted in handlers.items() if not admitted]
        for task in waiting:
            task.cancel()
        if waiting:
            await asyncio.wait(waiting, timeout=10)
        if handlers:
            log.info("waiting up to %.0f s for %d run(s)", grace, len(handlers))
            _, pending = await asyncio.wait(set(handlers), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
        await self.control.stop()
        await self.llm.aclose()

    @property
    def active_runs(self) -> int:
        """How many runs this runner holds now (working, or waiting for a slot)."""
        return len(self.reception.handlers)

    def load(self) -> dict[str, int]:
        """What its ``/healthz`` shows of its work: ``active_runs`` (held now), ``slots_used`` of
        ``slots``, and ``awaiting_approval`` (runs of all runners waiting for a person, held by none)."""
        return {"active_runs": self.active_runs, "slots_used": self.slots.used, "slots": self.slots.capacity,
                "awaiting_approval": self.keeper.waiting if self.keeper is not None else 0}

    def endpoint_for(self, agent: AgentDefinition) -> LLMEndpoint:
        """Where this agent's model is, and its key (agent_runner.endpoint: LLM_API_KEY only to
        LLM_BASE_URL's origin, ``llm.api_key_env`` only within LLM_KEY_ENV_PATTERN).

        Raises ValueError when the agent names an API key variable that is refused or not set.
        """
        return llm_endpoint(agent, self.settings, self.llm_base_url, os.environ)

    def writer(
        self, subject: str, tenant: str, agent: str, request: RunRequest, attempt: int, last_seq: int
    ) -> RunEventWriter:
        """The writer of one attempt (``attempt``) of a run whose latest stored event is ``last_seq``
        (0: not read yet): coalescing deltas as this runner's load asks, reporting its end to the
        run log, its events to the run's webhook outbox, its timings to the metrics."""
        return RunEventWriter(
            self.nc, subject,
            {"run_id": request.run_id, "tenant": tenant, "agent": agent, "message_id": request.message_id,
             "attempt": attempt},
            last_seq,
            flush_interval=self._delta_interval,
            flush_bytes=self.settings.delta_flush_bytes,
            event_max_bytes=self.settings.event_max_bytes,
            storage_patience=self.settings.storage_patience,
            on_end=self._logger(tenant, agent, request),
            on_stored=outbox.stored if (outbox := self.outbox(tenant, agent, request)) is not None else None,
            metrics=metrics.RunMetrics.of(self.catalog, tenant, agent),
        )

    def _delta_interval(self) -> float:
        """Seconds a run's text deltas are coalesced: DELTA_FLUSH_INTERVAL, longer when this runner
        holds so many runs that its delta events would pass DELTA_EVENTS_PER_SECOND (a run's first
        text still goes out at once)."""
        return max(self.settings.delta_flush_interval, self.slots.used / self.settings.delta_events_per_second)

    def _logger(
        self, tenant: str, agent: str, request: RunRequest
    ) -> Callable[[str, BaseModel, str | None], Awaitable[None]]:
        """What a run's writer does once its terminal event is stored: the run log's ending entry."""

        async def log_end(event_type: str, data: BaseModel, answer: str | None) -> None:
            entry = runlog.submitted_entry(agent, request).model_copy(update={
                "kind": runlog.ended_kind(event_type), "ended_at": datetime.now(UTC),
                "duration_ms": getattr(data, "duration_ms", None),
                "usage": usage.model_dump() if isinstance(usage := getattr(data, "usage", None), Usage) else None,
                "error": error.model_dump() if isinstance(error := getattr(data, "error", None), ErrorInfo) else None,
                "answer": answer[: runlog.MESSAGE_CHARS] if answer else None,
            })
            await runlog.write(self.nc, tenant, entry)

        return log_end

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of this runner's own (kept until it ends; its errors are its own)."""
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def outbox(self, tenant: str, agent: str, request: RunRequest) -> WebhookOutbox | None:
        """The run's webhook outbox (one per run held: its request's and its agent file's
        webhooks), or None when it has no webhooks."""
        key = (tenant, request.run_id)
        outbox = self._outboxes.get(key)
        if outbox is None:
            definition = self.catalog.get(tenant, agent)
            targets = merged_targets(request.webhooks, definition.webhooks if definition is not None else [])
            if not targets:
                return None
            outbox = self._outboxes[key] = WebhookOutbox(self.nc, tenant, agent, request.run_id, targets,
                                                         tenant_urls={w.url for w in request.webhooks})
        return outbox

    def drop_outbox(self, tenant: str, run_id: str) -> None:
        """Forget the run's webhook outbox (this runner no longer holds the run)."""
        self._outboxes.pop((tenant, run_id), None)

    async def webhooks_enqueued(self, tenant: str, agent: str, request: RunRequest) -> bool:
        """Before a run's request is acked: make sure its terminal event's webhook jobs are
        enqueued (agent_runner/webhooks.py). False (the request is handed back, and tried again
        by whichever runner takes it) when they cannot be."""
        outbox = self.outbox(tenant, agent, request)
        if outbox is None or outbox.ended or not any(outbox.wants(t) for t in E.TERMINAL_TYPES):
            return True
        subject = subjects.run_events(tenant, agent, request.run_id)
        try:
            last = await eventlog.retrying(lambda: eventlog.last_event_from_leader(self.nc, subject))
            await outbox.ensure_ended(last)
        except Exception as err:  # NATS unreachable: the request is handed back
            log.warning("run %s: its webhook jobs could not be enqueued (%s); the request is handed back",
                        request.run_id, err)
            return False
        return True


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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from agent_runner import conversation, metrics, resume
from agent_runner.admission import AUTO_MAX_RUNS, Admission
from agent_runner.approval_keeper import ApprovalKeeper
from agent_runner.cancels import CancelRegistry
from agent_runner.endpoint import llm_endpoint
from agent_runner.ensemble import combined_message, question_of, run_members
from agent_runner.event_writer import OwnershipLost, RunEventWriter
from agent_runner.intake import Intake, Slots
from agent_runner.llm import LLMClient, LLMEndpoint
from agent_runner.loop import AwaitingApproval, RunContext, StepCall, run_agent
from agent_runner.mcp_tools import McpToolLister
from agent_runner.tool_client import ToolClient
from agent_runner.webhooks import WebhookOutbox
from agentstream import approvals, eventlog, logs, runlog, tracing
from agentstream.agentstore import AgentRegistry
from agentstream.bus import ensure_topology
from agentstream.eventlog import StorageFull, StoredEvent
from agentstream.policies import PolicyWatcher
from agentstream.runs import write_queued
from agentstream.settings import Settings
from schemas import events as E
from schemas import headers as H
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.approvals import PendingApproval, PendingCall
from schemas.common import ErrorInfo, Usage
from schemas.errors import AgentstreamError, ErrorKind
from schemas.runs import DeadLetter, RunControl, RunRequest
from schemas.tenants import TenantPolicy
from schemas.webhooks import merged_targets

log = logging.getLogger(__name__)

TURN_WAIT = 0.5
"""Seconds before a conversation's turn whose previous turn is still running is offered again."""

WEBHOOK_RETRY = 5.0
"""Seconds before a run whose terminal event's webhook jobs could not be enqueued is offered again."""

STORAGE_FULL_RETRY = 5.0
"""Seconds before a run that could not start (the event store was full) is offered again."""



@dataclass
class _Opened:
    """What a delivery of a run request turned into: a writer to continue the run with (None: the
    run is already finished, nothing to do), the attempt number, and where to resume."""

    writer: RunEventWriter | None
    attempt: int
    plan: resume.ResumePlan | None = None
    history: resume.RunHistory | None = None
    cancel_reason: str | None = None
    """The run was cancelled while it waited for approvals: it ends ``run.cancelled`` at once."""


class _AlreadyEnded(Exception):
    """The run this delivery is for has already ended: nothing to do but ack."""


class _NotFresh(Exception):
    """A first delivery for a run that already has events beyond ``run.queued``."""


class _NotSuspended(Exception):
    """The wait for approvals could not be stored: the request is handed back for later."""


class _Cancelled(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
        self._handlers: dict[asyncio.Task[None], bool] = {}  # handler task -> has a slot
        self.cancels = CancelRegistry()
        self._stopping = asyncio.Event()
        self.slots = Slots(settings.runner_concurrency or AUTO_MAX_RUNS)
        self.admission = Admission(self.slots, max_runs=settings.runner_concurrency,
                                   memory_budget=settings.runner_memory_budget, max_lag=settings.runner_max_loop_lag)
        self.intake = Intake(self.js, self._take, self.slots, ack_wait=settings.runner_ack_wait)
        self.policies: PolicyWatcher | None = None
        self.run_index: KeyValue | None = None
        self.conversations: KeyValue | None = None
        self.approvals: KeyValue | None = None
        self.keeper: ApprovalKeeper | None = None
        self._control_sub: JetStreamContext.PushSubscription | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._outboxes: dict[tuple[str, str], WebhookOutbox] = {}

    async def start(self) -> None:
        """Wait for (or declare) the streams, read cancels, follow the tenant policies, start taking runs."""
        await ensure_topology(self.nc, self.settings)
        # Every cancel request, stored and live, through one ordered consumer: a runner taking a run
        # knows at once whether it was cancelled before (no lookup per run).
        info = await self.js.stream_info(subjects.RUN_CONTROL_STREAM)
        self._control_caught_up = asyncio.Event()
        self._control_backlog_seq = info.state.last_seq
        if info.state.messages == 0:
            self._control_caught_up.set()
        self._control_sub = await self.js.subscribe(
            subjects.CONTROL_ALL, stream=subjects.RUN_CONTROL_STREAM, cb=self._on_control, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        await asyncio.wait_for(self._control_caught_up.wait(), 60)
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

    async def sample_metrics(self) -> None:
        """Read the state of the consumers this runner takes runs from into its gauges (at scrape time)."""
        await metrics.sample_consumers(self.js, self.intake.consumers)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking runs; hand back those still waiting for a slot; let running runs finish for
        ``grace`` seconds; hand the rest back."""
        self._stopping.set()
        if self.policies is not None:
            await self.policies.stop()
        await self.intake.stop()
        await self.admission.stop()
        if self.keeper is not None:
            await self.keeper.stop()
        waiting = [task for task, admitted in self._handlers.items() if not admitted]
        for task in waiting:
            task.cancel()
        if waiting:
            await asyncio.wait(waiting, timeout=10)
        if self._handlers:
            log.info("waiting up to %.0f s for %d run(s)", grace, len(self._handlers))
            _, pending = await asyncio.wait(set(self._handlers), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=10)
        if self._control_sub is not None:
            try:
                await self._control_sub.unsubscribe()
            except Exception:  # already closed
                pass
        await self.llm.aclose()

    @property
    def active_runs(self) -> int:
        """How many runs this runner holds now (working, or waiting for a slot)."""
        return len(self._handlers)

    def load(self) -> dict[str, int]:
        """What its ``/healthz`` shows of its work: ``active_runs`` (held now), ``slots_used`` of
        ``slots``, and ``awaiting_approval`` (runs of all runners waiting for a person, held by none)."""
        return {"active_runs": self.active_runs, "slots_used": self.slots.used, "slots": self.slots.capacity,
                "awaiting_approval": self.keeper.waiting if self.keeper is not None else 0}

    # -- taking runs

    async def _take(self, msg: Msg, admitted: asyncio.Event) -> None:
        """One delivered request: refuse it if its tenant may not use its agent, else wait for a
        slot (kept alive meanwhile), then handle it. Sets ``admitted`` once it has a slot (or was
        refused), so its consumer's loop fetches the next (agent_runner.intake)."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = False
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            if await self._forbidden(msg) or await self._waits_for_its_turn(msg):
                return
            try:
                await self._hold_while_paused(msg, admitted)
                await self.slots.acquire()
            except asyncio.CancelledError:
                await _nak(msg)  # stopping before it got a slot: another runner takes it at once
                raise
            self._handlers[task] = True
            admitted.set()
            keep_alive.cancel()
            try:
                await self._handle(msg)
            finally:
                self.slots.release()
        except Exception:
            log.exception("run handler crashed")
        finally:
            admitted.set()
            keep_alive.cancel()
            self._handlers.pop(task, None)

    async def _waits_for_its_turn(self, msg: Msg) -> bool:
        """True (and the request handed back for a moment) when the run is a conversation's turn
        whose previous turn has not ended yet (``on_busy: enqueue``)."""
        if self.conversations is None:
            return False
        try:
            request = RunRequest.model_validate_json(msg.data)
            tenant = subjects.parse_run_request(msg.subject).tenant
        except (ValidationError, subjects.SubjectTokenError):
            return False  # _handle refuses it
        if not conversation.is_turn(request):
            return False
        try:
            waiting = await conversation.previous_still_running(self.nc, self.conversations, tenant, request)
        except (eventlog.EventLogError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.warning("run %s: its conversation could not be read (%s); running it now", request.run_id, err)
            return False
        if waiting:
            await _nak(msg, delay=TURN_WAIT)
        return waiting

    async def _forbidden(self, msg: Msg) -> bool:
        """True (and the run ended ``run.failed``) when the request's tenant may not use its agent."""
        if self.policies is None or not msg.subject.endswith(".run"):
            return False  # an ensemble member: its parent was checked
        try:
            where = subjects.parse_run_request(msg.subject)
        except subjects.SubjectTokenError:
            return False  # _handle terminates it
        policy = self.policies.get(where.tenant)
        if policy is None or policy.may_use(where.agent):
            return False
        problem = ErrorInfo(type=ErrorKind.FORBIDDEN_AGENT,
                            message=f"tenant {where.tenant!r} may not use agent {where.agent!r}")
        log.warning("run request on %s refused: %s", msg.subject, problem.message)
        await self._refuse(msg, where.tenant, where.agent, "agent not allowed", problem)
        return True

    async def _hold_while_paused(self, msg: Msg, admitted: asyncio.Event) -> None:
        """Resolve the request's agent from its tenant's catalog now (reading the AGENTS bucket if
        this runner has not seen the agent yet), and while the agent is paused hold the request:
        kept alive, holding no slot, its consumer free to deliver the next request (``admitted``
        is set). It goes on when the agent is resumed (or deleted), or the run is cancelled (it
        then ends ``run.cancelled``); nothing is written meanwhile, so the wait is no attempt of
        the run. Stopping hands it back (``_take``)."""
        try:
            where = subjects.parse_run_request(msg.subject)
        except subjects.SubjectTokenError:
            return  # _handle terminates it
        if self.catalog.get(where.tenant, where.agent) is None:
            await self.catalog.resolve(where.tenant, where.agent)
        if self.catalog.paused(where.tenant, where.agent) is None:
            return
        admitted.set()
        log.info("run request on %s held: agent %s of %s is paused", msg.subject, where.agent, where.tenant)
        run = (where.tenant, (msg.headers or {}).get(H.MSG_ID, ""))
        while self.catalog.paused(where.tenant, where.agent) is not None and run not in self.cancels:
            with contextlib.suppress(TimeoutError):  # cancels are not catalog changes: look again each second
                await asyncio.wait_for(self.catalog.changed(), 1.0)

    # -- control

    async def _on_control(self, msg: Msg) -> None:
        try:
            if msg.metadata.sequence.stream >= self._control_backlog_seq:
                self._control_caught_up.set()
        except Exception:  # no metadata: not from the stream
            pass
        try:
            tenant, run_id = subjects.parse_control(msg.subject)
            control = RunControl.model_validate_json(msg.data)
        except (ValueError, ValidationError) as err:
            log.warning("ignoring control message on %s: %s", msg.subject, err)
            return
        if control.action == "delete":
            self._background(self._delete(tenant, run_id, control.reason))
            return
        key = (tenant, run_id)
        self.cancels.request(key, control.reason)
        if self.keeper is not None and key in self.keeper.pending:
            self.keeper.poke()  # it waits for approvals: resume it, so it ends cancelled

    async def _delete(self, tenant: str, run_id: str, reason: str) -> None:
        """Replace a finished run's events by one ``run.deleted`` tombstone (a subject rollup,
        ``Nats-Rollup: sub``). Every runner sees the request and may do it: the write is
        deduplicated by its message id, and a run already deleted or still running is left alone."""
        try:
            last = await eventlog.last_event(self.nc, subjects.run_events_of_run(tenant, run_id))
            if last is None or not E.is_terminal(last.type):
                return
            where = subjects.parse_run_events(last.subject)
            tombstone = E.RunDeleted(run_id=run_id, tenant=tenant, agent=where.agent, message_id=last.json().get(
                "message_id", run_id), attempt=0, data=E.RunDeletedData(reason=reason))
            await self.js.publish(last.subject, tombstone.model_dump_json().encode(), timeout=5.0, headers={
                H.MSG_ID: f"{run_id}:deleted", H.ROLLUP: H.ROLLUP_SUBJECT, H.EVENT_TYPE: E.RUN_DELETED})
            log.info("run %s of tenant %s deleted (%s)", run_id, tenant, reason)
        except (eventlog.EventLogError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.warning("run %s not deleted: %s", run_id, err)

    # -- one run

    async def _keep_alive(self, msg: Msg) -> None:
        interval = max(self.settings.runner_ack_wait / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as err:  # reconnecting; the next one may pass
                log.debug("in_progress failed: %s", err)

    async def _handle(self, msg: Msg) -> None:
        try:
            where = subjects.parse_run_request(msg.subject)
        except subjects.SubjectTokenError as err:
            log.error("terminating a request on an invalid subject %r: %s", msg.subject, err)
            await msg.term()
            return
        try:
            request = RunRequest.model_validate_json(msg.data)
        except ValidationError as err:
            await self._refuse_request(msg, where.tenant, where.agent, err)
            return
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        agent_label = metrics.agent_label(self.catalog, where.tenant, where.agent)
        if attempt > 1:
            metrics.REDELIVERIES.labels(agent_label).inc()
        # The run's trace: the context stored with its request (every attempt reads the same one).
        with logs.bound(run_id=request.run_id, tenant=where.tenant, agent=where.agent), tracing.span(
            f"invoke_agent {agent_label}", kind=tracing.SpanKind.CONSUMER, parent=msg.headers,
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": where.agent,
                        "agentstream.run_id": request.run_id, "agentstream.tenant": where.tenant,
                        "agentstream.attempt": attempt, "agentstream.runner": self.id,
                        "messaging.system": "nats", "messaging.destination.name": msg.subject},
        ):
            log.debug("taking the run (attempt %d)", attempt)
            await self._handle_request(msg, where, request)

    async def _handle_request(self, msg: Msg, where: subjects.RunSubject, request: RunRequest) -> None:
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        request = await self._with_history(where.tenant, where.agent, request)
        opened: _Opened | None = None
        try:
            opened = self._open_fresh(msg, where.tenant, where.agent, request)
            if opened is not None:
                try:
                    await self._run(where.tenant, where.agent, request, opened, msg)
                except _AlreadyEnded:
                    opened = None  # nothing to do: ack
                except _NotFresh:
                    opened = await self._open(msg, where.tenant, where.agent, request)
                    if opened.writer is not None:
                        await self._run(where.tenant, where.agent, request, opened, msg)
            else:
                opened = await self._open(msg, where.tenant, where.agent, request)
                if opened.writer is not None:
                    await self._run(where.tenant, where.agent, request, opened, msg)
            if not await self._webhooks_enqueued(where.tenant, where.agent, request):
                await _nak(msg, delay=WEBHOOK_RETRY)
                return
            await msg.ack()
        except OwnershipLost as err:
            log.warning("run %s: another attempt took over (%s); stopping this one", request.run_id, err)
        except StorageFull as err:
            log.warning("run %s not started: the event store is full (%s); handed back, retried in %g s",
                        request.run_id, err, STORAGE_FULL_RETRY)
            await _nak(msg, delay=STORAGE_FULL_RETRY)
        except _NotSuspended as err:
            log.warning("run %s: its wait for approvals could not be read or stored (%s); handed back, retried in "
                        "%g s", request.run_id, err, STORAGE_FULL_RETRY)
            await _nak(msg, delay=STORAGE_FULL_RETRY)
        except asyncio.CancelledError:
            # Shutdown: hand the run back. Say so in its events (it is not a failed attempt),
            # then nak it, so another runner takes it at once.
            if opened is not None and opened.writer is not None:
                await opened.writer.close()
                try:
                    await asyncio.wait_for(opened.writer.emit(E.RUN_REQUEUED, E.RunRequeuedData(
                        runner=self.id, attempt=opened.attempt, reason="the runner is shutting down")), 3.0)
                except (Exception, asyncio.CancelledError) as err:  # it will count as a crash
                    log.warning("run %s: could not record the hand-back: %s", request.run_id, err)
            try:
                await msg.nak()
            except Exception:
                pass
            raise
        finally:
            keep_alive.cancel()
            self._outboxes.pop((where.tenant, request.run_id), None)

    def _outbox(self, tenant: str, agent: str, request: RunRequest) -> WebhookOutbox | None:
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

    async def _webhooks_enqueued(self, tenant: str, agent: str, request: RunRequest) -> bool:
        """Before a run's request is acked: make sure its terminal event's webhook jobs are
        enqueued (agent_runner/webhooks.py). False (the request is handed back, and tried again
        by whichever runner takes it) when they cannot be."""
        outbox = self._outbox(tenant, agent, request)
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

    async def _with_history(self, tenant: str, agent: str, request: RunRequest) -> RunRequest:
        """The request, with its conversation's earlier turns as its history when it is a turn."""
        definition = self.catalog.get(tenant, agent)
        if self.conversations is None or definition is None or not conversation.is_turn(request):
            return request
        answering = (self.catalog.get(tenant, definition.combiner) if definition.is_ensemble and definition.combiner
                     else None)
        try:
            history = await conversation.history_for(self.nc, self.conversations, tenant, answering or definition,
                                                     request)
        except (eventlog.EventLogError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.warning("run %s: its conversation could not be read (%s); it runs without history", request.run_id,
                        err)
            return request
        return request.model_copy(update={"history": history}) if history else request

    def _open_fresh(self, msg: Msg, tenant: str, agent: str, request: RunRequest) -> _Opened | None:
        """The fast path for a first delivery of a plain agent's run: its model call starts at
        once, while ``run.queued`` (if missing) and ``run.started`` are written concurrently. If
        the run turns out not to be fresh (it has more than ``run.queued``), the first write
        raises :class:`_AlreadyEnded` or :class:`_NotFresh` and the caller takes the full path.
        None when the fast path does not apply."""
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        definition = self.catalog.get(tenant, agent)
        if attempt != 1 or definition is None or definition.is_ensemble or (tenant, request.run_id) in self.cancels \
                or H.RESUME in (msg.headers or {}):
            return None
        subject = subjects.run_events(tenant, agent, request.run_id)
        writer = self._writer(subject, tenant, agent, request, attempt, 0)

        async def find_last_seq() -> int:
            last = await self._last_event_or_queued(subject, tenant, agent, request, first=True)
            if E.is_terminal(last.type):
                raise _AlreadyEnded(last.type)
            if last.type != E.RUN_QUEUED:
                raise _NotFresh(last.type)
            return last.seq

        writer.open_later(find_last_seq, (E.RUN_STARTED, E.RunStartedData(runner=self.id, attempt=attempt)))
        return _Opened(writer, attempt)

    async def _last_event_or_queued(
        self, subject: str, tenant: str, agent: str, request: RunRequest, *, first: bool
    ) -> StoredEvent:
        """The run's latest event, writing ``run.queued`` first if the run has none yet (a runner
        writes it when it takes the run: edges may not write run events). ``first``: this is the
        request's first delivery, so the write is tried before any read (one round trip when the
        run is new). Raises RuntimeError if the event cannot be read back."""
        if not first:
            # A decision (where this attempt starts): the leader's answer, not a replica's, which
            # may be behind (agentstream.eventlog).
            last = await eventlog.retrying(lambda: eventlog.last_event_from_leader(self.nc, subject))
            if last is not None:
                return last
        try:
            seq = await write_queued(self.nc, tenant, agent, request)
            if not request.logged:  # it came over the bus directly: the run log has no entry yet
                self._background(runlog.write(self.nc, tenant, runlog.submitted_entry(agent, request)))
            return StoredEvent(seq=seq, subject=subject, type=E.RUN_QUEUED, data=b"")
        except eventlog.WriteConflict:
            pass  # the run has events already
        last = await eventlog.retrying(lambda: eventlog.last_event_from_leader(self.nc, subject))
        if last is None:
            raise RuntimeError(f"{subject}: run.queued was stored but cannot be read back")
        return last

    def _writer(
        self, subject: str, tenant: str, agent: str, request: RunRequest, attempt: int, last_seq: int
    ) -> RunEventWriter:
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
            on_stored=outbox.stored if (outbox := self._outbox(tenant, agent, request)) is not None else None,
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

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _open(self, msg: Msg, tenant: str, agent: str, request: RunRequest) -> _Opened:
        """Decide what this delivery does, and write its first events.

        - the run already ended: nothing (the request is acked);
        - it has died ``max_attempts`` times: ``run.failed`` and a dead letter (then acked);
        - its answer is stored but not its end: just the terminal event;
        - otherwise ``run.queued`` if missing, ``run.retrying`` if an earlier attempt ran (with
          the step it resumes from), ``run.started``; the returned plan continues the run.
        """
        subject = subjects.run_events(tenant, agent, request.run_id)
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        resuming = H.RESUME in (msg.headers or {})
        last = await self._last_event_or_queued(subject, tenant, agent, request, first=delivered == 1 and not resuming)
        if E.is_terminal(last.type):
            log.info("run %s already ended (%s); acking its request", request.run_id, last.type)
            if resuming and self.approvals is not None:
                await approvals.remove(self.approvals, tenant, request.run_id)
            return _Opened(None, delivered)
        if last.type == E.RUN_QUEUED:
            writer = self._writer(subject, tenant, agent, request, delivered, last.seq)
            await writer.emit(E.RUN_STARTED, E.RunStartedData(runner=self.id, attempt=delivered))
            return _Opened(writer, delivered)

        earlier = await self._history(subject, last.seq)
        history = resume.fold(earlier)
        outbox = self._outbox(tenant, agent, request)
        if outbox is not None:
            await outbox.replay(earlier)
        # Each attempt's number is new (its events' message ids contain it), also when a run
        # that waited for approvals comes back in a request delivered for the first time.
        attempt = max(delivered, history.started_attempts + 1)
        writer = self._writer(subject, tenant, agent, request, attempt, last.seq)
        try:
            waited = await self._approvals_of(msg, tenant, agent, request, writer, history)
        except (approvals.ApprovalConflict, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            raise _NotSuspended(f"{type(err).__name__}: {err}") from err
        if waited is not None:
            return waited
        if history.crashed_attempts >= self.settings.runner_max_attempts:
            await self._give_up(writer, tenant, agent, request, msg, history.crashed_attempts)
            return _Opened(None, attempt)
        why = "it was handed back by a runner shutting down" if last.type == E.RUN_REQUEUED \
            else f"the previous attempt stopped after {last.type}"
        if history.completed is not None:
            await writer.emit(E.RUN_RETRYING, E.RunRetryingData(
                attempt=attempt, reason=why, resume_step=history.completed.steps))
            await writer.emit(E.RUN_STARTED, E.RunStartedData(runner=self.id, attempt=attempt))
            usage = history.usage_before(history.completed.steps) + (history.completed.usage or Usage())
            await writer.emit(E.RUN_COMPLETED, E.RunCompletedData(usage=usage, steps=history.completed.steps))
            return _Opened(None, attempt)
        continuation = resume.plan(history)
        # resume_step: the first step whose text the new attempt writes again (a step whose model
        # call completed keeps its text; only its missing tool results follow).
        superseded = continuation.step + 1 if continuation.pending is not None else continuation.step
        await writer.emit(E.RUN_RETRYING, E.RunRetryingData(attempt=attempt, reason=why, resume_step=superseded))
        await writer.emit(E.RUN_STARTED, E.RunStartedData(runner=self.id, attempt=attempt))
        return _Opened(writer, attempt, continuation, history)

    async def _approvals_of(self, msg: Msg, tenant: str, agent: str, request: RunRequest, writer: RunEventWriter,
                            history: resume.RunHistory) -> _Opened | None:
        """What this delivery does about the run's approvals (agent_runner.approval_keeper).

        None: nothing (the run waits for none; the caller goes on as usual). Otherwise an
        :class:`_Opened` to return: with no writer when the run still waits (this is a redelivery
        of the request it stopped with, or a repeat: every waiting call's request is made sure to
        be written, and the delivery is acked); with this writer when it is the delivery that
        resumes the run: ``run.started``, the decisions as ``tool.approval_decided``, the wait
        removed, and the plan to continue the step (approved calls run, rejected ones answer with
        their rejection). Raises nats errors, ApprovalConflict."""
        if self.approvals is None:
            return None
        stored = await approvals.load(self.approvals, tenant, request.run_id)
        entry = stored.entry if stored is not None else None
        if entry is not None and all(c.tool_call_id in history.approvals_decided for c in entry.calls):
            await approvals.remove(self.approvals, tenant, request.run_id)  # left by a resumed attempt
            entry = None
        if entry is None:
            if not history.awaiting:
                return None
            # The wait's entry is gone (expired with the bucket's age limit): store it again.
            entry = (await approvals.wait_for(self.approvals, tenant, self._wait_of(
                msg, tenant, agent, history.awaiting[0].step,
                [StepCall(r.tool_call_id, r.name, r.arguments) for r in history.awaiting],
                expires_at=min(r.expires_at for r in history.awaiting)))).entry
        if (msg.headers or {}).get(H.RESUME) != entry.resume_id:
            await self._request_approvals(writer, entry, set(history.approvals_requested))
            log.info("run %s waits for approval of %s; request %s acked", request.run_id,
                     ", ".join(c.tool_call_id for c in entry.calls if c.decision is None) or "nothing more",
                     "redelivered" if (msg.metadata and msg.metadata.num_delivered > 1) else "repeated")
            return _Opened(None, writer.envelope["attempt"])
        attempt = int(writer.envelope["attempt"])
        await writer.emit(E.RUN_STARTED, E.RunStartedData(runner=self.id, attempt=attempt))
        for call in entry.calls:
            if call.decision is None or call.tool_call_id in history.approvals_decided:
                continue
            decided = E.ToolApprovalDecidedData(
                step=entry.step, tool_call_id=call.tool_call_id, name=call.name, decision=call.decision,
                reason=call.reason, by=call.by or "request", decided_at=call.decided_at or datetime.now(UTC))
            await writer.emit(E.TOOL_APPROVAL_DECIDED, decided)
            history.approvals_decided[call.tool_call_id] = decided
        await approvals.remove(self.approvals, tenant, request.run_id)
        return _Opened(writer, attempt, resume.plan(history), history, cancel_reason=entry.cancel_reason)

    def _wait_of(self, msg: Msg, tenant: str, agent: str, step: int, calls: list[StepCall], *,
                 expires_at: datetime) -> PendingApproval:
        """The APPROVALS entry of a run stopping at ``step`` to wait for ``calls``; its request is
        the one this delivery carries (as submitted, without a conversation's history)."""
        return PendingApproval(
            run_id=RunRequest.model_validate_json(msg.data).run_id, agent=agent, step=step,
            resume_id=uuid.uuid4().hex[:16], member=msg.subject.endswith(".member"),
            requested_at=datetime.now(UTC), expires_at=expires_at,
            calls=[PendingCall(tool_call_id=c.id, name=c.name, arguments=c.arguments) for c in calls],
            request=RunRequest.model_validate_json(msg.data),
        )

    async def _request_approvals(self, writer: RunEventWriter, entry: PendingApproval, written: set[str]) -> None:
        """Write ``tool.approval_requested`` for each waiting call of ``entry`` not in ``written``."""
        awaiting = [c.tool_call_id for c in entry.calls]
        for call in entry.calls:
            if call.tool_call_id in written or call.decision is not None:
                continue
            await writer.emit(E.TOOL_APPROVAL_REQUESTED, E.ToolApprovalRequestedData(
                step=entry.step, tool_call_id=call.tool_call_id, name=call.name, arguments=call.arguments,
                awaiting=awaiting, expires_at=entry.expires_at))

    async def _suspend(self, msg: Msg, writer: RunEventWriter, tenant: str, agent: str, answering: AgentDefinition,
                       waiting: AwaitingApproval, written: set[str]) -> None:
        """Let the run wait for approvals: store the wait (APPROVALS, created before the events,
        so a decision never finds the run waiting without it), then ``tool.approval_requested``
        per call. The caller acks the request. The wait ends ``approval_timeout`` seconds from now
        (at most half of RUN_EVENTS_MAX_AGE, so the run's events outlive it). Raises
        :class:`_NotSuspended` when the wait cannot be stored."""
        assert self.approvals is not None
        timeout = min(answering.approval_timeout, self.settings.run_events_max_age / 2)
        entry = self._wait_of(msg, tenant, agent, waiting.step, waiting.calls,
                              expires_at=datetime.now(UTC) + timedelta(seconds=timeout))
        try:
            stored = await approvals.wait_for(self.approvals, tenant, entry)
        except (approvals.ApprovalConflict, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            raise _NotSuspended(f"{type(err).__name__}: {err}") from err
        await self._request_approvals(writer, stored.entry, written)
        log.info("run %s waits for approval of %s (until %s); its request is acked", entry.run_id,
                 ", ".join(f"{c.name} {c.id}" for c in waiting.calls), stored.entry.expires_at.isoformat())

    async def _history(self, subject: str, last_seq: int) -> list[StoredEvent]:
        """The run's events up to ``last_seq`` (its latest, as the leader said): re-read while a
        replica's answer stops short of it (agentstream.eventlog)."""

        async def read() -> list[StoredEvent]:
            events = await eventlog.read_list(self.nc, subject)
            if not events or events[-1].seq < last_seq:
                raise eventlog.EventLogError(f"{subject}: this replica has not got event {last_seq} yet")
            return events

        return await eventlog.retrying(read)

    async def _give_up(self, writer: RunEventWriter, tenant: str, agent: str, request: RunRequest, msg: Msg,
                       attempts: int) -> None:
        """Keep the request in RUN_DEAD_LETTERS, then end the run ``run.failed``."""
        reason = f"gave up after {attempts} attempts"
        letter = DeadLetter(run_id=request.run_id, tenant=tenant, agent=agent, reason=reason, attempts=attempts,
                            deliveries=msg.metadata.num_delivered if msg.metadata else attempts + 1,
                            request=json.loads(msg.data))
        await self.js.publish(subjects.dead_letter(tenant, agent, request.run_id), letter.model_dump_json().encode(),
                              headers={"Nats-Msg-Id": f"{request.run_id}:dead"}, timeout=5.0)
        metrics.DEAD_LETTERS.labels(metrics.agent_label(self.catalog, tenant, agent)).inc()
        log.error("run %s: %s; request kept as a dead letter", request.run_id, reason)
        await writer.emit(E.RUN_FAILED, E.RunFailedData(
            reason=reason,
            error=ErrorInfo(type=ErrorKind.GAVE_UP,
                            message=f"every attempt of this run stopped without finishing ({attempts} "
                            "attempts: its runner crashed or was killed); the request is kept as a dead letter"),
        ))

    async def _run(self, tenant: str, agent_name: str, request: RunRequest, opened: _Opened, msg: Msg) -> None:
        """Run (or continue) the run, and write how it ended; return without an end when it stops
        to wait for approvals (the request ``msg`` carries is kept to resume it)."""
        writer = opened.writer
        if writer is None:  # the run had already ended: nothing to run (callers check before)
            return
        started = time.perf_counter()
        agent = self.catalog.get(tenant, agent_name)
        key = (tenant, request.run_id)
        ctx: RunContext | None = None

        def duration() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        if agent is None:
            invalid = self.catalog.catalog(tenant).invalid.get(agent_name)
            if invalid:
                reason, error = "configuration error", ErrorInfo(
                    type=ErrorKind.CONFIGURATION_ERROR, message=f"agent {agent_name!r} cannot run: {invalid[0]}")
            else:
                reason, error = "unknown agent", ErrorInfo(
                    type=ErrorKind.UNKNOWN_AGENT, message=f"this runner has no agent {agent_name!r}")
            await writer.emit(E.RUN_FAILED, E.RunFailedData(reason=reason, error=error, duration_ms=duration()))
            return
        # A combiner is set exactly when the agent is an ensemble (AgentDefinition checks it).
        answering = self.catalog.get(tenant, agent.combiner) if agent.combiner is not None else agent
        try:
            if answering is None:
                raise ValueError(f"the ensemble's combiner {agent.combiner!r} is not an agent of this runner")
            endpoint = self.endpoint_for(answering)
        except ValueError as err:
            await writer.emit(E.RUN_FAILED, E.RunFailedData(
                reason="configuration error", error=ErrorInfo(type=ErrorKind.CONFIGURATION_ERROR, message=str(err)),
                duration_ms=duration(),
            ))
            return
        ctx = RunContext(
            tenant=tenant, agent=answering, request=request, writer=writer, llm=self.llm, endpoint=endpoint,
            tools=self.tools, skills=self.catalog.skills_of(answering), mcp=self.mcp,
            decisions=dict(opened.history.approvals_decided) if opened.history is not None else {},
        )
        if opened.cancel_reason is not None:  # cancelled while it waited for approvals
            self.cancels.remember(key, opened.cancel_reason)
        work = self._ensemble(ctx, agent, opened) if agent.is_ensemble else run_agent(ctx, opened.plan)
        loop_task = asyncio.create_task(work)
        try:
            self.cancels.running(key, loop_task)
            try:
                await asyncio.wait_for(loop_task, timeout=agent.timeout)
            except TimeoutError:
                await writer.close()
                await writer.emit(
                    E.RUN_FAILED,
                    E.RunFailedData(
                        reason="timed out",
                        error=ErrorInfo(
                            type=ErrorKind.TIMEOUT,
                            message=f"the run took longer than its budget of {agent.timeout:g} s"
                        ),
                        usage=ctx.total_usage,
                        steps=ctx.steps,
                        duration_ms=duration(),
                    ),
                )
                return
            except asyncio.CancelledError:
                asked = self.cancels.cancelled_by_request(key, loop_task)
                if asked is not None:
                    raise _Cancelled(asked) from None
                raise
            await writer.emit(E.RUN_COMPLETED, E.RunCompletedData(
                usage=ctx.total_usage, steps=ctx.steps, duration_ms=duration(),
            ))
        except _Cancelled as cancelled:
            await writer.close()
            await writer.emit(E.RUN_CANCELLED, E.RunCancelledData(
                reason=cancelled.reason, usage=ctx.total_usage, steps=ctx.steps, duration_ms=duration(),
            ))
        except AwaitingApproval as waiting:
            await writer.close()
            written = set(opened.history.approvals_requested) if opened.history is not None else set()
            await self._suspend(msg, writer, tenant, agent_name, answering, waiting, written)
        except AgentstreamError as err:  # the model call, max_steps, an ensemble's members...
            await writer.close()
            await writer.emit(E.RUN_FAILED, E.RunFailedData(
                reason=err.reason, error=ErrorInfo(type=err.kind, message=err.message),
                usage=ctx.total_usage, steps=ctx.steps, duration_ms=duration(),
            ))
        except (OwnershipLost, asyncio.CancelledError, _AlreadyEnded, _NotFresh, _NotSuspended):
            raise
        except StorageFull:
            await writer.close()
            if not writer.started:
                raise  # nothing of this attempt is stored: the request is handed back for later
            log.error("run %s stopped: the event store has had no space for %g s; it ends run.failed "
                      "(storage_unavailable) as soon as that can be stored", request.run_id,
                      self.settings.storage_patience)
            await writer.emit(E.RUN_FAILED, E.RunFailedData(
                reason="event store full",
                error=ErrorInfo(type=ErrorKind.STORAGE_UNAVAILABLE, message="the run's events could not be stored (the "
                                "event store had no space), so the run was stopped"),
                usage=ctx.total_usage, steps=ctx.steps, duration_ms=duration(),
            ), patient=True)
        except Exception as err:  # a bug must still end the run
            log.exception("run %s crashed", request.run_id)
            await writer.close()
            await writer.emit(E.RUN_FAILED, E.RunFailedData(
                reason="internal error", error=ErrorInfo(type=ErrorKind.INTERNAL_ERROR,
                                                         message=f"{type(err).__name__}: {err}"),
                usage=ctx.total_usage, steps=ctx.steps, duration_ms=duration(),
            ))
        finally:
            self.cancels.finished(key)

    async def _ensemble(self, ctx: RunContext, ensemble: AgentDefinition, opened: _Opened) -> E.MessageCompletedData:
        """An ensemble run: its members as child runs, then the combiner in this run."""
        history = opened.history or resume.RunHistory()
        outcomes = await run_members(
            self.nc, ctx.tenant, ensemble, ctx.request, ctx.writer,
            started_before=history.members_started, finished_before=history.members_finished,
            waiting=self._waiting_slot, index=self.run_index,
        )
        ctx.extra_usage = sum((o.finished.usage for _, o in outcomes), Usage())
        message = combined_message(ensemble, question_of(ctx.request), outcomes)
        ctx.request = ctx.request.model_copy(update={"message": message})
        return await run_agent(ctx, opened.plan)

    @asynccontextmanager
    async def _waiting_slot(self) -> AsyncIterator[None]:
        """While a run only waits for others (an ensemble's members), it does not hold a slot:
        with every slot held by waiting parents the members could never run. It takes its slot
        back without waiting when they are done."""
        self.slots.release()
        try:
            yield
        finally:
            self.slots.take_anyway()

    def endpoint_for(self, agent: AgentDefinition) -> LLMEndpoint:
        """Where this agent's model is, and its key (agent_runner.endpoint: LLM_API_KEY only to
        LLM_BASE_URL's origin, ``llm.api_key_env`` only within LLM_KEY_ENV_PATTERN).

        Raises ValueError when the agent names an API key variable that is refused or not set.
        """
        return llm_endpoint(agent, self.settings, self.llm_base_url, os.environ)

    async def _refuse_request(self, msg: Msg, tenant: str, agent: str, err: ValidationError) -> None:
        """An unreadable run request: end its run ``run.failed`` if it names one, and drop it."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in err.errors())
        log.error("invalid run request on %s: %s", msg.subject, problems)
        await self._refuse(msg, tenant, agent, "invalid run request",
                           ErrorInfo(type=ErrorKind.INVALID_REQUEST, message=problems))

    async def _refuse(self, msg: Msg, tenant: str, agent: str, reason: str, error: ErrorInfo) -> None:
        """End the run a request names (its ``Nats-Msg-Id``) ``run.failed`` without running it,
        and drop the request (``term``)."""
        run_id = (msg.headers or {}).get(H.MSG_ID, "")
        if subjects.is_token(run_id):
            try:
                request = RunRequest.model_validate_json(msg.data)
            except ValidationError:
                request = RunRequest.model_construct(run_id=run_id, message_id=run_id, message=None, history=[],
                                                     tools=[], submitted_at=datetime.now(UTC))
            subject = subjects.run_events(tenant, agent, run_id)
            try:
                last = await self._last_event_or_queued(subject, tenant, agent, request, first=True)
                if not E.is_terminal(last.type):
                    writer = self._writer(subject, tenant, agent, request, 1, last.seq)
                    await writer.emit(E.RUN_FAILED, E.RunFailedData(reason=reason, error=error))
            except (eventlog.WriteConflict, eventlog.EventLogError, RuntimeError) as write_err:
                log.warning("could not record the refused request's failure: %s", write_err)
            finally:
                self._outboxes.pop((tenant, run_id), None)
        await msg.term()


async def _nak(msg: Msg, delay: float | None = None) -> None:
    try:
        await msg.nak(delay=delay)
    except Exception as err:  # the connection is gone: the ack wait hands it back anyway
        log.debug("nak failed: %s", err)

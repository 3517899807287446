"""Executing one run request that has a slot: open the run (agent_runner.opening), run the agent
or ensemble (agent_runner.loop, agent_runner.ensemble), write how it ended, and ack the request
only once the run's terminal event (and its webhook jobs) are stored.

A run ends ``run.completed``, ``run.cancelled`` (asked to stop), or ``run.failed`` through the
one failure path (agent_runner.failures); or it stops without an end: to wait for approvals
(agent_runner.suspension, the request is acked), when another attempt took it over (not acked),
or when this runner shuts down (``run.requeued``, handed back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from pydantic import ValidationError

from agent_runner import conversation, delivery, failures, metrics, resume, suspension
from agent_runner.delivery import Opened
from agent_runner.ensemble import combined_message, question_of, run_members
from agent_runner.event_writer import OwnershipLost
from agent_runner.intake import keep_alive, nak
from agent_runner.loop import AwaitingApproval, RunContext, run_agent
from agentstream import eventlog, logs, tracing
from agentstream.eventlog import StorageFull
from schemas import events as E
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.common import Usage
from schemas.errors import AgentstreamError, ErrorKind
from schemas.runs import RunRequest

if TYPE_CHECKING:
    from agent_runner.runner import AgentRunner

log = logging.getLogger(__name__)

WEBHOOK_RETRY = 5.0
"""Seconds before a run whose terminal event's webhook jobs could not be enqueued is offered again."""

STORAGE_FULL_RETRY = 5.0
"""Seconds before a run that could not start (the event store was full) is offered again."""


class _Cancelled(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RunExecutor:
    """Executes the run requests ``runner`` admitted (its catalog, model client, tools, slots, cancels)."""

    def __init__(self, runner: AgentRunner):
        self.runner = runner

    async def handle(self, msg: Msg) -> None:
        """One admitted delivery, from its subject and request to its ack (nak, term, or nothing
        when another attempt took the run over). Raises CancelledError when the runner stops (the
        request is handed back)."""
        r = self.runner
        try:
            where = subjects.parse_run_request(msg.subject)
        except subjects.SubjectTokenError as err:
            log.error("terminating a request on an invalid subject %r: %s", msg.subject, err)
            await msg.term()
            return
        try:
            request = RunRequest.model_validate_json(msg.data)
        except ValidationError as err:
            await r.opener.refuse_invalid(msg, where.tenant, where.agent, err)
            return
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        agent_label = metrics.agent_label(r.catalog, where.tenant, where.agent)
        if attempt > 1:
            metrics.REDELIVERIES.labels(agent_label).inc()
        # The run's trace: the context stored with its request (every attempt reads the same one).
        with logs.bound(run_id=request.run_id, tenant=where.tenant, agent=where.agent), tracing.span(
            f"invoke_agent {agent_label}", kind=tracing.SpanKind.CONSUMER, parent=msg.headers,
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": where.agent,
                        "agentstream.run_id": request.run_id, "agentstream.tenant": where.tenant,
                        "agentstream.attempt": attempt, "agentstream.runner": r.id,
                        "messaging.system": "nats", "messaging.destination.name": msg.subject},
        ):
            log.debug("taking the run (attempt %d)", attempt)
            await self._handle_request(msg, where, request)

    async def _handle_request(self, msg: Msg, where: subjects.RunSubject, request: RunRequest) -> None:
        r = self.runner
        alive = asyncio.create_task(keep_alive(msg, r.settings.runner_ack_wait))
        request = await self._with_history(where.tenant, where.agent, request)
        opened: Opened | None = None
        try:
            # The fast path first (a fresh run starts before its events are read); the full open
            # when it does not apply or the run turns out not to be fresh.
            opened = r.opener.fresh(msg, where.tenant, where.agent, request)
            done = False
            if opened is not None:
                try:
                    await self.run(where.tenant, where.agent, request, opened, msg)
                    done = True
                except delivery.AlreadyEnded:
                    opened, done = None, True  # nothing to do: ack
                except delivery.NotFresh:
                    pass
            if not done:
                opened = await r.opener.open(msg, where.tenant, where.agent, request)
                if opened.writer is not None:
                    await self.run(where.tenant, where.agent, request, opened, msg)
            if not await r.webhooks_enqueued(where.tenant, where.agent, request):
                await nak(msg, delay=WEBHOOK_RETRY)
                return
            await msg.ack()
        except OwnershipLost as err:
            log.warning("run %s: another attempt took over (%s); stopping this one", request.run_id, err)
        except StorageFull as err:
            log.warning("run %s not started: the event store is full (%s); handed back, retried in %g s",
                        request.run_id, err, STORAGE_FULL_RETRY)
            await nak(msg, delay=STORAGE_FULL_RETRY)
        except delivery.NotSuspended as err:
            log.warning("run %s: its wait for approvals could not be read or stored (%s); handed back, retried in "
                        "%g s", request.run_id, err, STORAGE_FULL_RETRY)
            await nak(msg, delay=STORAGE_FULL_RETRY)
        except asyncio.CancelledError:
            # Shutdown: hand the run back. Say so in its events (it is not a failed attempt),
            # then nak it, so another runner takes it at once.
            if opened is not None and opened.writer is not None:
                await opened.writer.close()
                try:
                    await asyncio.wait_for(opened.writer.emit(E.RUN_REQUEUED, E.RunRequeuedData(
                        runner=r.id, attempt=opened.attempt, reason="the runner is shutting down")), 3.0)
                except (Exception, asyncio.CancelledError) as err:  # it will count as a crash
                    log.warning("run %s: could not record the hand-back: %s", request.run_id, err)
            try:
                await msg.nak()
            except Exception:
                pass
            raise
        finally:
            alive.cancel()
            r.drop_outbox(where.tenant, request.run_id)

    async def _with_history(self, tenant: str, agent: str, request: RunRequest) -> RunRequest:
        """The request, with its conversation's earlier turns as its history when it is a turn."""
        r = self.runner
        definition = r.catalog.get(tenant, agent)
        if r.conversations is None or definition is None or not conversation.is_turn(request):
            return request
        answering = (r.catalog.get(tenant, definition.combiner) if definition.is_ensemble and definition.combiner
                     else None)
        try:
            history = await conversation.history_for(r.nc, r.conversations, tenant, answering or definition,
                                                     request)
        except (eventlog.EventLogError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.warning("run %s: its conversation could not be read (%s); it runs without history", request.run_id,
                        err)
            return request
        return request.model_copy(update={"history": history}) if history else request

    async def run(self, tenant: str, agent_name: str, request: RunRequest, opened: Opened, msg: Msg) -> None:
        """Run (or continue) the run, and write how it ended; return without an end when it stops
        to wait for approvals (the request ``msg`` carries is kept to resume it). Raises
        OwnershipLost, CancelledError, :class:`delivery.AlreadyEnded`, :class:`delivery.NotFresh`,
        :class:`delivery.NotSuspended`, and StorageFull when nothing of this attempt is stored."""
        r = self.runner
        writer = opened.writer
        if writer is None:  # the run had already ended: nothing to run (callers check before)
            return
        started = time.perf_counter()
        agent = r.catalog.get(tenant, agent_name)
        key = (tenant, request.run_id)
        ctx: RunContext | None = None

        def duration() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        if agent is None:
            invalid = r.catalog.catalog(tenant).invalid.get(agent_name)
            failure = (AgentstreamError(ErrorKind.CONFIGURATION_ERROR, f"agent {agent_name!r} cannot run: {invalid[0]}",
                                        reason="configuration error") if invalid else
                       AgentstreamError(ErrorKind.UNKNOWN_AGENT, f"this runner has no agent {agent_name!r}",
                                        reason="unknown agent"))
            await failures.end_failed(writer, failure, duration_ms=duration())
            return
        # A combiner is set exactly when the agent is an ensemble (AgentDefinition checks it).
        answering = r.catalog.get(tenant, agent.combiner) if agent.combiner is not None else agent
        try:
            if answering is None:
                raise ValueError(f"the ensemble's combiner {agent.combiner!r} is not an agent of this runner")
            endpoint = r.endpoint_for(answering)
        except ValueError as err:
            await failures.end_failed(writer, AgentstreamError(ErrorKind.CONFIGURATION_ERROR, str(err),
                                                               reason="configuration error"), duration_ms=duration())
            return
        ctx = RunContext(
            tenant=tenant, agent=answering, request=request, writer=writer, llm=r.llm, endpoint=endpoint,
            tools=r.tools, skills=r.catalog.skills_of(answering), mcp=r.mcp,
            decisions=dict(opened.history.approvals_decided) if opened.history is not None else {},
        )
        if opened.cancel_reason is not None:  # cancelled while it waited for approvals
            r.cancels.remember(key, opened.cancel_reason)
        work = self._ensemble(ctx, agent, opened) if agent.is_ensemble else run_agent(ctx, opened.plan)
        loop_task = asyncio.create_task(work)
        try:
            r.cancels.running(key, loop_task)
            try:
                await asyncio.wait_for(loop_task, timeout=agent.timeout)
            except TimeoutError:
                await failures.end_failed(writer, AgentstreamError(
                    ErrorKind.TIMEOUT, f"the run took longer than its budget of {agent.timeout:g} s",
                    reason="timed out"), usage=ctx.total_usage, steps=ctx.steps, duration_ms=duration())
                return
            except asyncio.CancelledError:
                asked = r.cancels.cancelled_by_request(key, loop_task)
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
            assert r.approvals is not None
            written = set(opened.history.approvals_requested) if opened.history is not None else set()
            await suspension.suspend(r.approvals, msg, writer, tenant, agent_name, answering, waiting, written,
                                     max_age=r.settings.run_events_max_age)
        except (OwnershipLost, asyncio.CancelledError, delivery.AlreadyEnded, delivery.NotFresh,
                delivery.NotSuspended):
            raise
        except StorageFull as err:
            await writer.close()
            if not writer.started:
                raise  # nothing of this attempt is stored: the request is handed back for later
            log.error("run %s stopped: the event store has had no space for %g s; it ends run.failed "
                      "(storage_unavailable) as soon as that can be stored", request.run_id,
                      r.settings.storage_patience)
            await failures.end_failed(writer, failures.failure_of(err), usage=ctx.total_usage, steps=ctx.steps,
                                      duration_ms=duration(), patient=True)
        except Exception as err:  # the model call, max_steps, an ensemble's members... and a bug must still end it
            if not isinstance(err, AgentstreamError):
                log.exception("run %s crashed", request.run_id)
            await failures.end_failed(writer, failures.failure_of(err), usage=ctx.total_usage, steps=ctx.steps,
                                      duration_ms=duration())
        finally:
            r.cancels.finished(key)

    async def _ensemble(self, ctx: RunContext, ensemble: AgentDefinition, opened: Opened) -> E.MessageCompletedData:
        """An ensemble run: its members as child runs, then the combiner in this run."""
        r = self.runner
        history = opened.history or resume.RunHistory()
        outcomes = await run_members(
            r.nc, ctx.tenant, ensemble, ctx.request, ctx.writer,
            started_before=history.members_started, finished_before=history.members_finished,
            waiting=self._waiting_slot, index=r.run_index,
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
        slots = self.runner.slots
        slots.release()
        try:
            yield
        finally:
            slots.take_anyway()

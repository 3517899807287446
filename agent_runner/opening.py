"""Opening a run for one delivery of its request: reading what is stored of it, writing its first
events, and giving the run executor a writer and where to continue (or nothing to run).

What a delivery is (fresh, ended, waiting for approvals, resuming after them, dead, answered, a
retry) is decided by agent_runner.delivery, without I/O; this module reads the events it needs
and does what the verdict says. A run that may not run at all (an unreadable request, a
forbidden agent) is also ended here, ``run.failed`` before any attempt (:meth:`RunOpener.refuse`).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from pydantic import ValidationError

from agent_runner import delivery, failures, metrics, resume, suspension
from agent_runner.delivery import Opened, Verdict
from agent_runner.event_writer import RunEventWriter
from agentstream import approvals, eventlog, runlog
from agentstream.eventlog import StoredEvent
from agentstream.runs import write_queued
from schemas import events as E
from schemas import headers as H
from schemas import subjects
from schemas.common import Usage
from schemas.errors import AgentstreamError, ErrorKind
from schemas.runs import DeadLetter, RunRequest

if TYPE_CHECKING:
    from agent_runner.runner import AgentRunner

log = logging.getLogger(__name__)


class RunOpener:
    """Opens runs for ``runner`` (its connection, settings, catalog, cancels, buckets and writers)."""

    def __init__(self, runner: AgentRunner):
        self.runner = runner

    def fresh(self, msg: Msg, tenant: str, agent: str, request: RunRequest) -> Opened | None:
        """The fast path for a first delivery of a plain agent's run (:func:`delivery.takes_fast_path`):
        its model call starts at once, while ``run.queued`` (if missing) and ``run.started`` are
        written concurrently. If the run turns out not to be fresh, the first write raises
        :class:`delivery.AlreadyEnded` or :class:`delivery.NotFresh` and the caller opens it with
        :meth:`open`. None when the fast path does not apply."""
        r = self.runner
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        definition = r.catalog.get(tenant, agent)
        if not delivery.takes_fast_path(attempt, plain=definition is not None and not definition.is_ensemble,
                                        cancelled=(tenant, request.run_id) in r.cancels,
                                        resuming=H.RESUME in (msg.headers or {})):
            return None
        subject = subjects.run_events(tenant, agent, request.run_id)
        writer = r.writer(subject, tenant, agent, request, attempt, 0)

        async def find_last_seq() -> int:
            last = await self.last_event_or_queued(subject, tenant, agent, request, first=True)
            verdict = delivery.first_look(last.type)
            if verdict is Verdict.ENDED:
                raise delivery.AlreadyEnded(last.type)
            if verdict is not Verdict.FRESH:
                raise delivery.NotFresh(last.type)
            return last.seq

        writer.open_later(find_last_seq, (E.RUN_STARTED, E.RunStartedData(runner=r.id, attempt=attempt)))
        return Opened(writer, attempt)

    async def open(self, msg: Msg, tenant: str, agent: str, request: RunRequest) -> Opened:
        """Decide what this delivery does (:func:`delivery.classify`), and write its first events:

        - ENDED: nothing (the request is acked);
        - FRESH: ``run.started``;
        - AWAITING: each waiting call's ``tool.approval_requested`` made sure of (then acked);
        - APPROVED: ``run.started`` and the decisions; the plan continues the step;
        - DEAD: a dead letter and ``run.failed`` (then acked);
        - ANSWERED: just the terminal event;
        - RESUME: ``run.retrying`` (with the step it resumes from), ``run.started``; the returned
          plan continues the run.

        Raises :class:`delivery.NotSuspended` when the run's wait for approvals cannot be read or
        stored, and what writing events raises.
        """
        r = self.runner
        subject = subjects.run_events(tenant, agent, request.run_id)
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        resuming = H.RESUME in (msg.headers or {})
        last = await self.last_event_or_queued(subject, tenant, agent, request, first=delivered == 1 and not resuming)
        verdict = delivery.first_look(last.type)
        if verdict is Verdict.ENDED:
            log.info("run %s already ended (%s); acking its request", request.run_id, last.type)
            if resuming and r.approvals is not None:
                await approvals.remove(r.approvals, tenant, request.run_id)
            return Opened(None, delivered)
        if verdict is Verdict.FRESH:
            writer = r.writer(subject, tenant, agent, request, delivered, last.seq)
            await writer.emit(E.RUN_STARTED, E.RunStartedData(runner=r.id, attempt=delivered))
            return Opened(writer, delivered)

        earlier = await self.history(subject, last.seq)
        history = resume.fold(earlier)
        outbox = r.outbox(tenant, agent, request)
        if outbox is not None:
            await outbox.replay(earlier)
        attempt = delivery.attempt_of(delivered, history)
        writer = r.writer(subject, tenant, agent, request, attempt, last.seq)
        try:
            entry = (await suspension.stored_wait(r.approvals, msg, tenant, agent, request, history)
                     if r.approvals is not None else None)
            wait = delivery.wait_of(entry.resume_id if entry is not None else None, (msg.headers or {}).get(H.RESUME))
            verdict = delivery.classify(last.type, history, wait=wait, max_attempts=r.settings.runner_max_attempts)
            if entry is not None and r.approvals is not None:
                if verdict is Verdict.AWAITING:
                    await suspension.request_approvals(writer, entry, set(history.approvals_requested))
                    log.info("run %s waits for approval of %s; request %s acked", request.run_id,
                             ", ".join(c.tool_call_id for c in entry.calls if c.decision is None) or "nothing more",
                             "redelivered" if (msg.metadata and msg.metadata.num_delivered > 1) else "repeated")
                    return Opened(None, attempt)
                if verdict is Verdict.APPROVED:
                    return await suspension.resume_decided(r.approvals, writer, r.id, tenant, request, entry, history)
        except suspension.STORAGE_ERRORS as err:
            raise delivery.NotSuspended(f"{type(err).__name__}: {err}") from err
        if verdict is Verdict.DEAD:
            await self.give_up(writer, tenant, agent, request, msg, history.crashed_attempts)
            return Opened(None, attempt)
        why = delivery.retry_reason(last.type)
        if verdict is Verdict.ANSWERED:
            assert history.completed is not None
            await writer.emit(E.RUN_RETRYING, E.RunRetryingData(
                attempt=attempt, reason=why, resume_step=history.completed.steps))
            await writer.emit(E.RUN_STARTED, E.RunStartedData(runner=r.id, attempt=attempt))
            usage = history.usage_before(history.completed.steps) + (history.completed.usage or Usage())
            await writer.emit(E.RUN_COMPLETED, E.RunCompletedData(usage=usage, steps=history.completed.steps))
            return Opened(None, attempt)
        continuation = resume.plan(history)
        await writer.emit(E.RUN_RETRYING, E.RunRetryingData(
            attempt=attempt, reason=why, resume_step=delivery.resume_step(continuation)))
        await writer.emit(E.RUN_STARTED, E.RunStartedData(runner=r.id, attempt=attempt))
        return Opened(writer, attempt, continuation, history)

    async def last_event_or_queued(
        self, subject: str, tenant: str, agent: str, request: RunRequest, *, first: bool
    ) -> StoredEvent:
        """The run's latest event, writing ``run.queued`` first if the run has none yet (a runner
        writes it when it takes the run: edges may not write run events). ``first``: this is the
        request's first delivery, so the write is tried before any read (one round trip when the
        run is new). Raises RuntimeError if the event cannot be read back."""
        r = self.runner
        if not first:
            # A decision (where this attempt starts): the leader's answer, not a replica's, which
            # may be behind (agentstream.eventlog).
            last = await eventlog.retrying(lambda: eventlog.last_event_from_leader(r.nc, subject))
            if last is not None:
                return last
        try:
            seq = await write_queued(r.nc, tenant, agent, request)
            if not request.logged:  # it came over the bus directly: the run log has no entry yet
                r.background(runlog.write(r.nc, tenant, runlog.submitted_entry(agent, request)))
            return StoredEvent(seq=seq, subject=subject, type=E.RUN_QUEUED, data=b"")
        except eventlog.WriteConflict:
            pass  # the run has events already
        last = await eventlog.retrying(lambda: eventlog.last_event_from_leader(r.nc, subject))
        if last is None:
            raise RuntimeError(f"{subject}: run.queued was stored but cannot be read back")
        return last

    async def history(self, subject: str, last_seq: int) -> list[StoredEvent]:
        """The run's events up to ``last_seq`` (its latest, as the leader said): re-read while a
        replica's answer stops short of it (agentstream.eventlog)."""

        async def read() -> list[StoredEvent]:
            events = await eventlog.read_list(self.runner.nc, subject)
            if not events or events[-1].seq < last_seq:
                raise eventlog.EventLogError(f"{subject}: this replica has not got event {last_seq} yet")
            return events

        return await eventlog.retrying(read)

    async def give_up(self, writer: RunEventWriter, tenant: str, agent: str, request: RunRequest, msg: Msg,
                      attempts: int) -> None:
        """Keep the request in RUN_DEAD_LETTERS, then end the run ``run.failed`` (``gave_up``)."""
        r = self.runner
        reason = f"gave up after {attempts} attempts"
        letter = DeadLetter(run_id=request.run_id, tenant=tenant, agent=agent, reason=reason, attempts=attempts,
                            deliveries=msg.metadata.num_delivered if msg.metadata else attempts + 1,
                            request=json.loads(msg.data))
        await r.js.publish(subjects.dead_letter(tenant, agent, request.run_id), letter.model_dump_json().encode(),
                           headers={"Nats-Msg-Id": f"{request.run_id}:dead"}, timeout=5.0)
        metrics.DEAD_LETTERS.labels(metrics.agent_label(r.catalog, tenant, agent)).inc()
        log.error("run %s: %s; request kept as a dead letter", request.run_id, reason)
        await failures.end_failed(writer, AgentstreamError(
            ErrorKind.GAVE_UP, f"every attempt of this run stopped without finishing ({attempts} attempts: its "
            "runner crashed or was killed); the request is kept as a dead letter", reason=reason))

    async def refuse_invalid(self, msg: Msg, tenant: str, agent: str, err: ValidationError) -> None:
        """An unreadable run request: end its run ``run.failed`` (``invalid_request``) if it names
        one, and drop it."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in err.errors())
        log.error("invalid run request on %s: %s", msg.subject, problems)
        await self.refuse(msg, tenant, agent, AgentstreamError(ErrorKind.INVALID_REQUEST, problems,
                                                               reason="invalid run request"))

    async def refuse(self, msg: Msg, tenant: str, agent: str, failure: AgentstreamError) -> None:
        """End the run a request names (its ``Nats-Msg-Id``) ``run.failed`` with ``failure``
        without running it, and drop the request (``term``)."""
        r = self.runner
        run_id = (msg.headers or {}).get(H.MSG_ID, "")
        if subjects.is_token(run_id):
            try:
                request = RunRequest.model_validate_json(msg.data)
            except ValidationError:
                request = RunRequest.model_construct(run_id=run_id, message_id=run_id, message=None, history=[],
                                                     tools=[], submitted_at=datetime.now(UTC))
            subject = subjects.run_events(tenant, agent, run_id)
            try:
                last = await self.last_event_or_queued(subject, tenant, agent, request, first=True)
                if not E.is_terminal(last.type):
                    writer = r.writer(subject, tenant, agent, request, 1, last.seq)
                    await failures.end_failed(writer, failure)
            except (eventlog.WriteConflict, eventlog.EventLogError, RuntimeError) as write_err:
                log.warning("could not record the refused request's failure: %s", write_err)
            finally:
                r.drop_outbox(tenant, run_id)
        await msg.term()

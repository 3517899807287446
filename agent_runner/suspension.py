"""A run that waits for a person's approval of tool calls: storing the wait, writing its requests,
and resuming the run once every call is decided (docs/approvals.md).

The wait is an entry of the APPROVALS bucket (agentstream.approvals), stored before the events
that announce it, so a decision never finds the run waiting without it. While it waits the run
holds no runner: its request is acked, and agent_runner.approval_keeper publishes a request with
the wait's resume id once it is ready.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from agent_runner import delivery, resume
from agent_runner.event_writer import RunEventWriter
from agent_runner.loop import AwaitingApproval, StepCall
from agentstream import approvals
from schemas import events as E
from schemas.agents import AgentDefinition
from schemas.approvals import PendingApproval, PendingCall
from schemas.runs import RunRequest

log = logging.getLogger(__name__)

STORAGE_ERRORS = (approvals.ApprovalConflict, nats.errors.Error, nats.js.errors.Error, TimeoutError)
"""What reading or storing a wait may raise; the request is then handed back (:class:`delivery.NotSuspended`)."""


def pending_of(msg: Msg, agent: str, step: int, calls: list[StepCall], *, expires_at: datetime) -> PendingApproval:
    """The APPROVALS entry of a run stopping at ``step`` to wait for ``calls``; its request is
    the one this delivery carries (as submitted, without a conversation's history)."""
    return PendingApproval(
        run_id=RunRequest.model_validate_json(msg.data).run_id, agent=agent, step=step,
        resume_id=uuid.uuid4().hex[:16], member=msg.subject.endswith(".member"),
        requested_at=datetime.now(UTC), expires_at=expires_at,
        calls=[PendingCall(tool_call_id=c.id, name=c.name, arguments=c.arguments) for c in calls],
        request=RunRequest.model_validate_json(msg.data),
    )


async def request_approvals(writer: RunEventWriter, entry: PendingApproval, written: set[str]) -> None:
    """Write ``tool.approval_requested`` for each waiting call of ``entry`` not in ``written``."""
    awaiting = [c.tool_call_id for c in entry.calls]
    for call in entry.calls:
        if call.tool_call_id in written or call.decision is not None:
            continue
        await writer.emit(E.TOOL_APPROVAL_REQUESTED, E.ToolApprovalRequestedData(
            step=entry.step, tool_call_id=call.tool_call_id, name=call.name, arguments=call.arguments,
            awaiting=awaiting, expires_at=entry.expires_at))


async def suspend(bucket: KeyValue, msg: Msg, writer: RunEventWriter, tenant: str, agent: str,
                  answering: AgentDefinition, waiting: AwaitingApproval, written: set[str], *,
                  max_age: float) -> None:
    """Let the run wait for approvals: store the wait, then ``tool.approval_requested`` per call
    not in ``written``. The caller acks the request. The wait ends ``approval_timeout`` seconds
    from now (at most ``max_age / 2``, half of RUN_EVENTS_MAX_AGE, so the run's events outlive
    it). Raises :class:`delivery.NotSuspended` when the wait cannot be stored."""
    timeout = min(answering.approval_timeout, max_age / 2)
    entry = pending_of(msg, agent, waiting.step, waiting.calls,
                       expires_at=datetime.now(UTC) + timedelta(seconds=timeout))
    try:
        stored = await approvals.wait_for(bucket, tenant, entry)
    except STORAGE_ERRORS as err:
        raise delivery.NotSuspended(f"{type(err).__name__}: {err}") from err
    await request_approvals(writer, stored.entry, written)
    log.info("run %s waits for approval of %s (until %s); its request is acked", entry.run_id,
             ", ".join(f"{c.name} {c.id}" for c in waiting.calls), stored.entry.expires_at.isoformat())


async def stored_wait(bucket: KeyValue, msg: Msg, tenant: str, agent: str, request: RunRequest,
                      history: resume.RunHistory) -> PendingApproval | None:
    """The run's wait for approvals as stored, kept in step with its events: a wait left over by
    an attempt that already resumed is removed (None); a wait the events show but the bucket lost
    (expired with the bucket's age limit) is stored again. None: the run waits for nothing.
    Raises :data:`STORAGE_ERRORS`."""
    stored = await approvals.load(bucket, tenant, request.run_id)
    entry = stored.entry if stored is not None else None
    if entry is not None and delivery.wait_is_left_over((c.tool_call_id for c in entry.calls),
                                                        history.approvals_decided):
        await approvals.remove(bucket, tenant, request.run_id)
        entry = None
    if entry is None and history.awaiting:
        entry = (await approvals.wait_for(bucket, tenant, pending_of(
            msg, agent, history.awaiting[0].step,
            [StepCall(r.tool_call_id, r.name, r.arguments) for r in history.awaiting],
            expires_at=min(r.expires_at for r in history.awaiting)))).entry
    return entry


async def resume_decided(bucket: KeyValue, writer: RunEventWriter, runner_id: str, tenant: str,
                         request: RunRequest, entry: PendingApproval, history: resume.RunHistory) -> delivery.Opened:
    """The delivery that resumes a run after its approvals: ``run.started``, each decision not in
    the events yet as ``tool.approval_decided`` (added to ``history``), the wait removed; the
    plan continues the step (approved calls run, rejected ones answer with their rejection).
    Raises what the writer and the bucket raise."""
    attempt = int(writer.envelope["attempt"])
    await writer.emit(E.RUN_STARTED, E.RunStartedData(runner=runner_id, attempt=attempt))
    for call in entry.calls:
        if call.decision is None or call.tool_call_id in history.approvals_decided:
            continue
        decided = E.ToolApprovalDecidedData(
            step=entry.step, tool_call_id=call.tool_call_id, name=call.name, decision=call.decision,
            reason=call.reason, by=call.by or "request", decided_at=call.decided_at or datetime.now(UTC))
        await writer.emit(E.TOOL_APPROVAL_DECIDED, decided)
        history.approvals_decided[call.tool_call_id] = decided
    await approvals.remove(bucket, tenant, request.run_id)
    return delivery.Opened(writer, attempt, resume.plan(history), history, cancel_reason=entry.cancel_reason)

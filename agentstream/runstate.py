"""A run's state, computed from its stored events (the events are the only record of a run).

``queued`` → ``running`` (↔ ``awaiting_approval``) → ``completed`` | ``failed`` | ``cancelled``.

A run is ``awaiting_approval`` from its ``tool.approval_requested`` events until the attempt that
resumes it starts (``run.started``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from agentstream.eventlog import StoredEvent
from schemas import events as E

RunStatus = Literal["queued", "running", "awaiting_approval", "completed", "failed", "cancelled"]
QUEUED: Final = "queued"
RUNNING: Final = "running"
AWAITING_APPROVAL: Final = "awaiting_approval"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
_TERMINAL_STATUS: dict[str, RunStatus] = {E.RUN_COMPLETED: COMPLETED, E.RUN_FAILED: FAILED, E.RUN_CANCELLED: CANCELLED}


@dataclass
class ToolCallRecord:
    """One tool call of a run, with its result once known."""

    tool_call_id: str
    name: str
    arguments: str
    step: int
    ok: bool | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    ms: float | None = None
    runner: str | None = None


@dataclass
class ApprovalRecord:
    """A tool call that waited (or waits) for approval: ``status`` is ``pending``, ``approved``
    or ``rejected``; ``by``: ``request`` or ``timeout``; times ISO 8601 UTC."""

    tool_call_id: str
    name: str
    arguments: str
    step: int
    status: Literal["pending", "approved", "rejected"] = "pending"
    expires_at: str | None = None
    reason: str | None = None
    by: str | None = None
    decided_at: str | None = None


@dataclass
class RunRecord:
    """What is known about a run. Times are ISO 8601 UTC strings; ``last_event_id`` is the stream
    sequence of its latest event (resume its SSE stream after it)."""

    run_id: str
    tenant: str
    agent: str
    message_id: str
    status: RunStatus = QUEUED
    message: str | None = None
    conversation_id: str | None = None
    attempts: int = 0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    answer: str | None = None
    finish_reason: str | None = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    usage: dict[str, Any] | None = None
    steps: int = 0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    approvals: list[ApprovalRecord] = field(default_factory=list)
    last_event_id: int = 0
    events: int = 0
    schedule: dict[str, Any] | None = None
    """The schedule tick that fired the run (``schedule_id``, ``tick``), None for a submitted run."""

    @property
    def finished(self) -> bool:
        """True once a terminal event is stored."""
        return self.status in (COMPLETED, FAILED, CANCELLED)

    def as_dict(self) -> dict[str, Any]:
        """JSON shape for ``GET /api/runs/{run_id}``."""
        return asdict(self)


def fold(events: Iterable[StoredEvent]) -> RunRecord | None:
    """The record of the run whose events are given in stream order; None if there are none (or
    none this version can read: agentstream.eventlog.parse_event). Every event counts in
    ``events`` and ``last_event_id``; those of a type this version does not know change nothing else."""
    record: RunRecord | None = None
    calls: dict[str, ToolCallRecord] = {}
    waits: dict[str, ApprovalRecord] = {}
    count = last_seq = 0
    for ev in events:
        count, last_seq = count + 1, ev.seq
        event = ev.event
        if event is None:
            continue
        ts = E.stored_time(event.ts)
        if record is None:
            record = RunRecord(run_id=event.run_id, tenant=event.tenant, agent=event.agent,
                               message_id=event.message_id, created_at=ts)
        match event:
            case E.RunQueued(data=data):
                record.message = data.message
                record.conversation_id = data.conversation_id
                record.created_at = ts
                record.schedule = data.schedule.model_dump(mode="json") if data.schedule else None
            case E.RunRequeued():
                if not record.finished:
                    record.status = QUEUED
            case E.RunStarted(data=data) | E.RunRetrying(data=data):
                record.status = RUNNING if not record.finished else record.status
                record.attempts = max(record.attempts, data.attempt or event.attempt)
                record.started_at = record.started_at or ts
            case E.ToolCall(data=data):
                call = ToolCallRecord(data.tool_call_id, data.name, data.arguments, data.step)
                calls[f"{call.step}:{call.tool_call_id}"] = call
                record.tool_calls.append(call)
            case E.ToolResult(data=data):
                called = calls.get(f"{data.step}:{data.tool_call_id}")
                if called is not None:
                    called.ok, called.output = data.ok, data.output
                    called.error = data.error.model_dump() if data.error else None
                    called.ms, called.runner = data.ms, data.runner
            case E.ToolApprovalRequested(data=data):
                if not record.finished:
                    record.status = AWAITING_APPROVAL
                wait = waits.get(data.tool_call_id)
                if wait is None:
                    wait = waits[data.tool_call_id] = ApprovalRecord(
                        data.tool_call_id, data.name, data.arguments, data.step)
                    record.approvals.append(wait)
                wait.expires_at = E.stored_time(data.expires_at)
            case E.ToolApprovalDecided(data=data):
                wait = waits.get(data.tool_call_id)
                if wait is not None:
                    wait.status = data.decision
                    wait.reason, wait.by, wait.decided_at = data.reason, data.by, E.stored_time(data.decided_at)
            case E.MessageCompleted(data=data):
                record.answer = data.text
                record.finish_reason = data.finish_reason
            case E.RunCompleted(data=data) | E.RunFailed(data=data) | E.RunCancelled(data=data):
                record.status = _TERMINAL_STATUS[event.type]
                record.finished_at = ts
                record.reason = data.reason
                record.error = data.error.model_dump() if isinstance(data, E.RunFailedData) else None
                record.usage = data.usage.model_dump()
                record.steps = data.steps
    if record is not None:
        record.events, record.last_event_id = count, last_seq
    return record

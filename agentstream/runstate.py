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
    """The record of the run whose events are given in stream order; None if there are none."""
    record: RunRecord | None = None
    calls: dict[str, ToolCallRecord] = {}
    waits: dict[str, ApprovalRecord] = {}
    for ev in events:
        body = ev.json()
        data = body.get("data") or {}
        if record is None:
            record = RunRecord(
                run_id=body["run_id"], tenant=body["tenant"], agent=body["agent"], message_id=body["message_id"],
                created_at=body.get("ts"),
            )
        record.events += 1
        record.last_event_id = ev.seq
        t = ev.type
        if t == E.RUN_QUEUED:
            record.message = data.get("message")
            record.conversation_id = data.get("conversation_id")
            record.created_at = body.get("ts")
            record.schedule = data.get("schedule")
        elif t == E.RUN_REQUEUED:
            if not record.finished:
                record.status = QUEUED
        elif t in (E.RUN_STARTED, E.RUN_RETRYING):
            record.status = RUNNING if not record.finished else record.status
            record.attempts = max(record.attempts, int(data.get("attempt") or body.get("attempt") or 0))
            record.started_at = record.started_at or body.get("ts")
        elif t == E.TOOL_CALL:
            call = ToolCallRecord(data["tool_call_id"], data["name"], data.get("arguments", ""), data.get("step", 0))
            calls[f"{call.step}:{call.tool_call_id}"] = call
            record.tool_calls.append(call)
        elif t == E.TOOL_RESULT:
            called = calls.get(f"{data.get('step', 0)}:{data['tool_call_id']}")
            if called is not None:
                called.ok, called.output, called.error = data.get("ok"), data.get("output"), data.get("error")
                called.ms, called.runner = data.get("ms"), data.get("runner")
        elif t == E.TOOL_APPROVAL_REQUESTED:
            if not record.finished:
                record.status = AWAITING_APPROVAL
            wait = waits.get(data["tool_call_id"])
            if wait is None:
                wait = waits[data["tool_call_id"]] = ApprovalRecord(
                    data["tool_call_id"], data["name"], data.get("arguments", ""), data.get("step", 0))
                record.approvals.append(wait)
            wait.expires_at = data.get("expires_at")
        elif t == E.TOOL_APPROVAL_DECIDED:
            wait = waits.get(data["tool_call_id"])
            if wait is not None:
                wait.status = data.get("decision", "rejected")
                wait.reason, wait.by, wait.decided_at = data.get("reason"), data.get("by"), data.get("decided_at")
        elif t == E.MESSAGE_COMPLETED:
            record.answer = data.get("text")
            record.finish_reason = data.get("finish_reason")
        elif t in _TERMINAL_STATUS:
            record.status = _TERMINAL_STATUS[t]
            record.finished_at = body.get("ts")
            record.reason = data.get("reason")
            record.error = data.get("error")
            record.usage = data.get("usage")
            record.steps = data.get("steps", 0)
    return record

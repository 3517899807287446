"""Continuing a run from its stored events after an earlier attempt stopped (docs/events.md,
"run.started and run.retrying").

The event log is the run's only state. Folding it gives, per LLM step, the text and tool calls the
model produced and the tool results already stored. A new attempt then:

- keeps every finished step (its tool results are reused, not executed again);
- for the last step, if the model's call had completed (its ``tool.call`` events are stored),
  executes only the tool calls that have no stored result (same idempotency keys), then goes on;
  otherwise calls the model again for that step (its earlier text is superseded);
- if ``message.completed`` is stored, only writes the terminal event: the answer is stored once.

It also counts the attempts that died: started, then neither finished nor handed back
(``run.requeued``) nor stopped to wait for approvals (``tool.approval_requested``); the runner
gives up on a run after ``max_attempts`` of those. A run whose last step has calls waiting for
approval (requested, not yet decided in its events) is :attr:`RunHistory.awaiting` them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentstream.eventlog import StoredEvent
from schemas import events as E
from schemas.common import Usage


@dataclass
class StepRecord:
    """What is stored of one LLM step."""

    step: int
    text: str = ""
    calls: list[E.ToolCallData] = field(default_factory=list)
    results: dict[str, E.ToolResultData] = field(default_factory=dict)
    usage: Usage | None = None


@dataclass
class RunHistory:
    """A run's stored events, folded. ``crashed_attempts``: attempts that started and stopped
    without a terminal event, a hand-back or a wait for approvals; ``started_attempts``: every
    ``run.started`` (a new attempt's number is above it); ``ended``: a terminal event is stored."""

    steps: dict[int, StepRecord] = field(default_factory=dict)
    completed: E.MessageCompletedData | None = None
    crashed_attempts: int = 0
    started_attempts: int = 0
    ended: bool = False
    members_started: dict[str, E.MemberStartedData] = field(default_factory=dict)
    members_finished: dict[str, E.MemberFinishedData] = field(default_factory=dict)
    approvals_requested: dict[str, E.ToolApprovalRequestedData] = field(default_factory=dict)
    approvals_decided: dict[str, E.ToolApprovalDecidedData] = field(default_factory=dict)

    @property
    def last_step(self) -> int:
        return max(self.steps, default=0)

    @property
    def awaiting(self) -> list[E.ToolApprovalRequestedData]:
        """The calls whose approval was requested and is not decided in the events yet (empty once
        the run ended)."""
        if self.ended:
            return []
        return [r for r in self.approvals_requested.values() if r.tool_call_id not in self.approvals_decided]

    def usage_before(self, step: int) -> Usage:
        """Usage of the LLM calls of steps before ``step`` (and of ``step`` itself if its call completed)."""
        total = Usage()
        for number, record in self.steps.items():
            if record.usage is not None and (number < step or (number == step and record.calls)):
                total = total + record.usage
        return total


def fold(events: list[StoredEvent]) -> RunHistory:
    """Fold a run's events (stream order, all attempts). Attempts are counted from the event types
    (their stored headers); what a step produced is read from the typed events
    (:attr:`StoredEvent.event`), so an event this version cannot read changes nothing else."""
    history = RunHistory()
    open_attempt = False
    for ev in events:
        t = ev.type
        if t == E.RUN_STARTED:
            if open_attempt:
                history.crashed_attempts += 1
            open_attempt = True
            history.started_attempts += 1
            continue
        if t == E.RUN_REQUEUED:
            open_attempt = False
            continue
        if E.is_terminal(t):
            open_attempt = False
            history.ended = True
            continue
        match ev.event:
            case E.RunRetrying(data=retrying):
                for number, record in history.steps.items():
                    if number >= retrying.resume_step and not record.calls:
                        record.text = ""  # an interrupted model call: what it wrote is superseded
            case E.MemberStarted(data=started):
                history.members_started[started.member] = started
            case E.MemberFinished(data=finished):
                history.members_finished[finished.member] = finished
            case E.MessageDelta(data=delta):
                history.steps.setdefault(delta.step, StepRecord(delta.step)).text += delta.text
            case E.ToolCall(data=call):
                record = history.steps.setdefault(call.step, StepRecord(call.step))
                record.calls.append(call)
                if call.usage is not None:
                    record.usage = call.usage
            case E.ToolResult(data=result):
                history.steps.setdefault(result.step, StepRecord(result.step)).results[result.tool_call_id] = result
            case E.ToolApprovalRequested(data=requested):
                history.approvals_requested[requested.tool_call_id] = requested
                open_attempt = False  # the attempt stopped to wait: not a crash
            case E.ToolApprovalDecided(data=decided):
                history.approvals_decided[decided.tool_call_id] = decided
            case E.MessageCompleted(data=completed):
                history.completed = completed
            case _:
                pass
    if open_attempt:
        history.crashed_attempts += 1
    return history


@dataclass
class ResumePlan:
    """Where a new attempt starts: ``step`` (the LLM step to continue), the finished steps before
    it, and whether ``step``'s model call already completed (then only its missing tool results
    are produced)."""

    step: int
    finished: list[StepRecord]
    pending: StepRecord | None
    usage: Usage


def plan(history: RunHistory) -> ResumePlan:
    """The plan for continuing ``history`` (which has no terminal and no ``message.completed``)."""
    last = history.last_step
    if last == 0:
        return ResumePlan(step=1, finished=[], pending=None, usage=Usage())
    finished = [history.steps[n] for n in sorted(history.steps) if n < last]
    record = history.steps[last]
    return ResumePlan(
        step=last,
        finished=finished,
        pending=record if record.calls else None,
        usage=history.usage_before(last),
    )

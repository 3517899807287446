"""Run events: the native vocabulary every dialect (native SSE, LocalAI, OpenAI) is a view of.

Each event is stored on ``runs.{tenant}.{agent}.{run_id}`` in stream RUN_EVENTS as the compact
JSON of a :data:`RunEvent`, with header ``Agentstream-Event: <type>``. Its stream sequence is its
identity: the SSE ``id:`` field, so ``Last-Event-ID`` resumes exactly where a client was.

Envelope: ``{type, run_id, tenant, agent, message_id, attempt, ts, data}`` (docs/events.md,
"The envelope"). Exactly one terminal event (``run.completed``, ``run.failed``, ``run.cancelled``)
per run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import Field, TypeAdapter
from pydantic_core import to_jsonable_python

from schemas.common import ChatMessage, ErrorInfo, MessageId, ScheduleRef, Strict, Token, ToolCallRef, Usage

# Event type names, in one place (Final: each is its Literal, as the models' ``type`` fields want).
RUN_QUEUED: Final = "run.queued"
RUN_STARTED: Final = "run.started"
RUN_RETRYING: Final = "run.retrying"
RUN_REQUEUED: Final = "run.requeued"
MEMBER_STARTED: Final = "member.started"
MEMBER_FINISHED: Final = "member.finished"
MESSAGE_DELTA: Final = "message.delta"
TOOL_CALL: Final = "tool.call"
TOOL_RESULT: Final = "tool.result"
TOOL_APPROVAL_REQUESTED: Final = "tool.approval_requested"
TOOL_APPROVAL_DECIDED: Final = "tool.approval_decided"
MESSAGE_COMPLETED: Final = "message.completed"
RUN_COMPLETED: Final = "run.completed"
RUN_FAILED: Final = "run.failed"
RUN_CANCELLED: Final = "run.cancelled"
RUN_DELETED: Final = "run.deleted"

TERMINAL_TYPES = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED})

NOT_FOR_WEBHOOKS = frozenset({MESSAGE_DELTA, RUN_DELETED})
"""Event types a webhook cannot subscribe to: text fragments (many per run, coalesced by time, not
meaningful one by one) and the deletion tombstone (not written through a run's writer)."""

WEBHOOK_DEFAULT_EVENTS = (RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED)
"""What a webhook sends when it names no ``events``: how the run ended (the terminal events)."""


def webhook_event_types() -> tuple[str, ...]:
    """Every event type a webhook may name in its ``events`` (README, Webhooks): each type of
    :data:`EVENT_CLASSES` but those in :data:`NOT_FOR_WEBHOOKS`. A new event type (e.g. a run that
    waits for a person's approval) can be named as soon as it has its class there."""
    return tuple(t for t in EVENT_CLASSES if t not in NOT_FOR_WEBHOOKS)


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
Decision = Literal["approved", "rejected"]
"""What a person (or the approval timeout) decided about a tool call that waited for approval."""
DecisionSource = Literal["request", "timeout"]
"""Who decided: a request to ``/api/runs/{id}/approve`` or ``/reject``, or the agent's ``approval_timeout``."""


def is_terminal(event_type: str) -> bool:
    """True for the three event types that end a run."""
    return event_type in TERMINAL_TYPES


def is_deleted(event_type: str) -> bool:
    """True for the tombstone a deleted run's events were replaced by."""
    return event_type == RUN_DELETED


def stored_time(value: datetime) -> str:
    """A time as the stored JSON has it (pydantic's ISO 8601 form, ``Z`` for UTC): an envelope's
    ``ts`` or a payload's time read back into a model gives the text it was written with."""
    text: str = to_jsonable_python(value)
    return text


# ----------------------------------------------------------------------------------------------
# data payloads


class RunQueuedData(Strict):
    """``run.queued``: the user's message, as accepted.

    ``history``: the turns this run adds to a conversation, when its request asked to keep them
    (``RunRequest.keep_history_from``), so a later run can continue it; ``echo``: the request's
    ``echo`` (what the client's protocol shows back, e.g. the Responses API's instructions);
    ``schedule``: the schedule and tick that fired the run (None for a run someone submitted).
    """

    message: str | None = None
    history_length: int = 0
    client_tools: list[str] = Field(default_factory=list, description="names of client-side tools")
    conversation_id: str | None = None
    history: list[ChatMessage] | None = None
    echo: dict[str, Any] | None = None
    schedule: ScheduleRef | None = Field(default=None, description="the schedule and tick that fired this run")


class RunStartedData(Strict):
    """``run.started``: which runner took the run, and which attempt this is (1-based)."""

    runner: str
    attempt: int


class RunRetryingData(Strict):
    """``run.retrying``: an earlier attempt stopped without finishing; ``attempt`` is the new one.

    ``resume_step``: text deltas of this LLM step and later ones written by earlier attempts are
    superseded by what follows: a client showing the answer drops them. Everything before is kept,
    and tool results already stored are reused, not run again
    (docs/events.md, "run.started and run.retrying").
    """

    attempt: int
    reason: str
    resume_step: int = 1


class RunRequeuedData(Strict):
    """``run.requeued``: the runner holding the run is shutting down and handed it back; another
    runner continues it (this does not count as a failed attempt)."""

    runner: str
    attempt: int
    reason: str


class MemberStartedData(Strict):
    """``member.started``: a member agent's child run was submitted (an ensemble's run; docs/events.md,
    "member.started and member.finished")."""

    member: str
    run_id: str


class MemberFinishedData(Strict):
    """``member.finished``: how a member's child run ended. ``status``: ``completed``, ``failed``,
    ``cancelled`` or ``timeout`` (it did not end within ``member_timeout`` and was cancelled);
    ``duration_ms`` from its submission; ``error`` when it did not complete."""

    member: str
    run_id: str
    status: Literal["completed", "failed", "cancelled", "timeout"]
    duration_ms: float
    error: ErrorInfo | None = None
    usage: Usage = Field(default_factory=Usage)


class MessageDeltaData(Strict):
    """``message.delta``: a fragment of the model's text in LLM step ``step`` (1-based).

    Fragments are coalesced by time and size, so one event may hold many model tokens.
    """

    step: int
    text: str


class ToolCallData(Strict):
    """``tool.call``: the model asked for a tool.

    ``arguments`` is the JSON text exactly as the model produced it. ``client`` is true for a
    client-side tool (OpenAI ``tools`` in the request), which the client executes, not us.
    """

    step: int
    tool_call_id: str
    name: str
    arguments: str
    client: bool = False
    usage: Usage | None = Field(
        default=None, description="the usage of the step's LLM call, on its first tool call only"
    )


class ToolResultData(Strict):
    """``tool.result``: how a tool call ended.

    ``ok`` and ``output`` (the tool's JSON result) on success, ``error`` otherwise; ``ms`` is the
    wall time in milliseconds including retries, ``attempts`` how many invocations it took,
    ``runner`` the id of the tool runner that answered (None for runner-local tools).
    ``truncated`` is true when ``output`` was cut to fit the event size limit (the model saw it all).
    """

    step: int
    tool_call_id: str
    name: str
    ok: bool
    output: Any = None
    error: ErrorInfo | None = None
    ms: float
    attempts: int = 1
    runner: str | None = None
    truncated: bool = False


class ToolApprovalRequestedData(Strict):
    """``tool.approval_requested``: a server-side tool call waits for a person's decision (its
    agent's ``approval`` rule matched it). The run then waits, holding no runner: its status is
    ``awaiting_approval`` until every call of the step is decided (``POST
    /api/runs/{run_id}/approve`` or ``/reject`` with this ``tool_call_id``), or until
    ``expires_at``, when the calls still undecided count as rejected.

    ``arguments``: the JSON text as the model wrote it; ``awaiting``: the ids of every call of
    this step that waits (this one included), in order, so a reader knows when it has seen them all.
    """

    step: int
    tool_call_id: str
    name: str
    arguments: str
    awaiting: list[str]
    expires_at: datetime


class ToolApprovalDecidedData(Strict):
    """``tool.approval_decided``: how a call that waited for approval was decided, written when the
    run goes on. ``approved``: the call runs (its ``tool.result`` follows); ``rejected``: it does
    not, and the model reads ``{"error": {"type": "approval_rejected", "message"}}`` (with the
    ``reason``) as its answer. ``by``: ``request`` (a person) or ``timeout``."""

    step: int
    tool_call_id: str
    name: str
    decision: Decision
    reason: str | None = None
    by: DecisionSource
    decided_at: datetime


class MessageCompletedData(Strict):
    """``message.completed``: the final answer.

    ``finish_reason`` follows OpenAI: ``stop``, ``length`` (max tokens hit), ``tool_calls`` (the
    model called client-side tools, listed in ``tool_calls``).
    """

    text: str
    finish_reason: FinishReason = "stop"
    tool_calls: list[ToolCallRef] = Field(default_factory=list)
    steps: int
    usage: Usage | None = Field(default=None, description="the usage of the final step's LLM call")


class RunCompletedData(Strict):
    """``run.completed``: the run ended normally."""

    reason: str = "completed"
    usage: Usage = Field(default_factory=Usage)
    steps: int = 0
    duration_ms: float = 0.0


class RunFailedData(Strict):
    """``run.failed``: the run ended in error; ``error.type`` is machine-readable."""

    reason: str
    error: ErrorInfo
    usage: Usage = Field(default_factory=Usage)
    steps: int = 0
    duration_ms: float = 0.0


class RunCancelledData(Strict):
    """``run.cancelled``: the run was stopped on request (or its client went away)."""

    reason: str
    usage: Usage = Field(default_factory=Usage)
    steps: int = 0
    duration_ms: float = 0.0


class RunDeletedData(Strict):
    """``run.deleted``: the run's events were deleted on request (``DELETE /api/runs/{id}``); this
    tombstone replaced them all (a JetStream subject rollup). The run no longer exists for readers."""

    reason: str = "deleted on request"


# ----------------------------------------------------------------------------------------------
# envelopes


class _Envelope(Strict):
    type: str
    run_id: Token
    tenant: Token
    agent: Token
    message_id: MessageId
    attempt: int = Field(ge=0, description="attempt number; 0 for events written before any runner took the run")
    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))


class RunQueued(_Envelope):
    type: Literal["run.queued"] = RUN_QUEUED
    data: RunQueuedData


class RunStarted(_Envelope):
    type: Literal["run.started"] = RUN_STARTED
    data: RunStartedData


class RunRetrying(_Envelope):
    type: Literal["run.retrying"] = RUN_RETRYING
    data: RunRetryingData


class RunRequeued(_Envelope):
    type: Literal["run.requeued"] = RUN_REQUEUED
    data: RunRequeuedData


class MemberStarted(_Envelope):
    type: Literal["member.started"] = MEMBER_STARTED
    data: MemberStartedData


class MemberFinished(_Envelope):
    type: Literal["member.finished"] = MEMBER_FINISHED
    data: MemberFinishedData


class MessageDelta(_Envelope):
    type: Literal["message.delta"] = MESSAGE_DELTA
    data: MessageDeltaData


class ToolCall(_Envelope):
    type: Literal["tool.call"] = TOOL_CALL
    data: ToolCallData


class ToolResult(_Envelope):
    type: Literal["tool.result"] = TOOL_RESULT
    data: ToolResultData


class ToolApprovalRequested(_Envelope):
    type: Literal["tool.approval_requested"] = TOOL_APPROVAL_REQUESTED
    data: ToolApprovalRequestedData


class ToolApprovalDecided(_Envelope):
    type: Literal["tool.approval_decided"] = TOOL_APPROVAL_DECIDED
    data: ToolApprovalDecidedData


class MessageCompleted(_Envelope):
    type: Literal["message.completed"] = MESSAGE_COMPLETED
    data: MessageCompletedData


class RunCompleted(_Envelope):
    type: Literal["run.completed"] = RUN_COMPLETED
    data: RunCompletedData


class RunFailed(_Envelope):
    type: Literal["run.failed"] = RUN_FAILED
    data: RunFailedData


class RunCancelled(_Envelope):
    type: Literal["run.cancelled"] = RUN_CANCELLED
    data: RunCancelledData


class RunDeleted(_Envelope):
    type: Literal["run.deleted"] = RUN_DELETED
    data: RunDeletedData


RunEvent = Annotated[
    RunQueued
    | RunStarted
    | RunRetrying
    | RunRequeued
    | MemberStarted
    | MemberFinished
    | MessageDelta
    | ToolCall
    | ToolResult
    | ToolApprovalRequested
    | ToolApprovalDecided
    | MessageCompleted
    | RunCompleted
    | RunFailed
    | RunCancelled
    | RunDeleted,
    Field(discriminator="type"),
]
"""Any run event; validate with :data:`run_event_adapter`."""

run_event_adapter: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)

EVENT_CLASSES: dict[str, type[_Envelope]] = {
    RUN_QUEUED: RunQueued,
    RUN_STARTED: RunStarted,
    RUN_RETRYING: RunRetrying,
    RUN_REQUEUED: RunRequeued,
    MEMBER_STARTED: MemberStarted,
    MEMBER_FINISHED: MemberFinished,
    MESSAGE_DELTA: MessageDelta,
    TOOL_CALL: ToolCall,
    TOOL_RESULT: ToolResult,
    TOOL_APPROVAL_REQUESTED: ToolApprovalRequested,
    TOOL_APPROVAL_DECIDED: ToolApprovalDecided,
    MESSAGE_COMPLETED: MessageCompleted,
    RUN_COMPLETED: RunCompleted,
    RUN_FAILED: RunFailed,
    RUN_DELETED: RunDeleted,
    RUN_CANCELLED: RunCancelled,
}

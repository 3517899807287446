"""The run request: what is published to ``agents.{tenant}.{agent}.run`` (stream AGENT_RUNS).

The tenant and agent of a run come from the subject, never from this payload (docs/architecture.md,
"Rules that hold everywhere"). The
``Nats-Msg-Id`` header of the message must be the ``run_id``: it makes a publish retried by a
client or an edge a no-op inside the stream's duplicate window.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from schemas.common import ChatMessage, FunctionTool, MessageId, ScheduleRef, Strict, Token
from schemas.webhooks import WebhookTarget

CLIENT_DISCONNECTED = "client disconnected"
"""The reason of a cancel the edge makes because the client of a stream went away (such a run does
not hold its message id: edge/idempotency.py)."""


PENDING_RUN_ID = "pending"
"""A placeholder run id for a request whose id is decided later (after an idempotency check)."""


def new_run_id() -> str:
    """A fresh run id: 32 lowercase hex characters (a random UUID, subject-safe)."""
    return uuid.uuid4().hex


def member_run_id(parent_run_id: str, member: str) -> str:
    """The run id of an ensemble member's child run: the same for every attempt of the parent, so
    a parent that is retried finds its children instead of starting them again."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"agentstream:{parent_run_id}/member/{member}").hex


def run_id_for(tenant: str, agent: str, message_id: str) -> str:
    """The run id a client's ``message_id`` maps to, the same on every edge and after restarts.

    A UUID5 over ``tenant/agent/message_id``, as 32 hex characters: posting the same message id
    twice names the same run, so the second post is answered with the first run.
    """
    return uuid.uuid5(uuid.NAMESPACE_URL, f"agentstream:{tenant}/{agent}/{message_id}").hex


class RunRequest(Strict):
    """A request to run an agent once.

    Fields:
    - ``run_id``: subject-safe id of the run; also the message's ``Nats-Msg-Id``.
    - ``message_id``: the client's id for the message (idempotency key; echoed in every event).
    - ``message``: the user's message. May be omitted when ``history`` ends the conversation
      (e.g. with tool results sent back by an OpenAI client).
    - ``history``: earlier turns, OpenAI message shape, passed to the model after the agent's own
      system prompt.
    - ``tools``: client-side tools (OpenAI function definitions) the model may call; such a call
      ends the run with ``finish_reason: "tool_calls"`` and is answered by the client.
    - ``parameters``: per-run overrides of the agent's LLM parameters (e.g. ``max_tokens``).
    - ``conversation_id``: free text grouping runs into a conversation.
    - ``parent_run_id``: set on the child runs of an ensemble's members.
    - ``submitted_at``: when the edge accepted it (UTC).
    - ``echo``: what the client's protocol shows back whenever the run is read again (the Responses
      API's ``instructions``, ``tools``, ``metadata``, ``previous_response_id``...); kept in
      ``run.queued`` and in the run's RUN_INDEX entry, so every edge renders the same response.
    - ``keep_history_from``: when set, ``run.queued`` keeps ``history[keep_history_from:]`` (the turns
      this run adds to a conversation, not the earlier ones it continues nor its instructions), so a
      later run can continue the conversation from the stored events (the Responses API's
      ``previous_response_id``); None keeps only ``message``.
    - ``webhooks``: where this run's events are POSTed (schemas/webhooks.py), besides the agent
      file's ``webhooks``; the webhook senders check each address at every delivery.
    - ``schedule``: the schedule tick that fired this run (edge/scheduler.py), None otherwise.
    """

    run_id: Token
    message_id: MessageId
    message: str | None = None
    history: list[ChatMessage] = Field(default_factory=list)
    tools: list[FunctionTool] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    conversation_id: str | None = Field(default=None, max_length=200)
    parent_run_id: Token | None = Field(default=None, description="the ensemble run this run is a member of")
    submitted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    echo: dict[str, Any] | None = None
    keep_history_from: int | None = Field(default=None, ge=0)
    logged: bool = Field(default=False, description="its submission is already in the run log (RUN_LOG)")
    webhooks: list[WebhookTarget] = Field(default_factory=list, max_length=4)
    schedule: ScheduleRef | None = None

    @model_validator(mode="after")
    def _has_input(self) -> RunRequest:
        if (self.message is None or not self.message.strip()) and not self.history:
            raise ValueError("a run needs a non-empty 'message' or a 'history'")
        return self

    def kept_history(self) -> list[ChatMessage] | None:
        """The turns ``run.queued`` keeps (see ``keep_history_from``), or None."""
        return None if self.keep_history_from is None else self.history[self.keep_history_from:]


class RunControl(Strict):
    """A signal for a run, published to ``control.{tenant}.{run_id}`` (stream RUN_CONTROL).

    ``action``: ``cancel`` (stop the run wherever it is, end it ``run.cancelled``) or ``delete``
    (replace a finished run's events by a ``run.deleted`` tombstone); ``reason``: shown in the
    terminal event. Stored, so a runner that takes the run later still obeys it.
    """

    action: Literal["cancel", "delete"] = "cancel"
    reason: str = Field(default="cancelled by request", max_length=500)
    requested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class DeadLetter(Strict):
    """A run given up on, kept on ``deadletter.{tenant}.{agent}.{run_id}`` (stream RUN_DEAD_LETTERS)
    for inspection: why, after how many attempts, and the original request as it was submitted."""

    run_id: Token
    tenant: Token
    agent: Token
    reason: str
    attempts: int
    deliveries: int
    request: dict[str, Any]
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class RunIndexEntry(Strict):
    """A run's entry in the RUN_INDEX bucket (key ``{tenant}.{run_id}``), written when the run is
    submitted, before any of its events: it makes a run that waits in its tenant's queue visible
    (status ``queued``), and a repeated submission recognisable after JetStream's duplicate window.

    ``agent``: the run's agent (so its event subject is known); ``message_id`` and
    ``conversation_id`` as submitted; ``parent_run_id`` for an ensemble member;
    ``submitted_at``: when it was accepted (UTC); ``message``: the start of the user's message;
    ``echo``: the request's ``echo`` (what its protocol shows back), so a run still waiting for a
    runner can be shown as its client created it; ``schedule``: the tick that fired it.
    """

    run_id: Token
    agent: Token
    message_id: MessageId
    conversation_id: str | None = Field(default=None, max_length=200)
    parent_run_id: Token | None = None
    submitted_at: datetime
    message: str | None = Field(default=None, description="the first 2,000 characters of the message")
    echo: dict[str, Any] | None = None
    schedule: ScheduleRef | None = None


RunLogKind = Literal["submitted", "completed", "failed", "cancelled"]


class RunLogEntry(Strict):
    """One entry of the run log (stream RUN_LOG, subject ``runlog.{tenant}.{agent}.{kind}``).

    ``submitted``: written when the run is accepted; the others when it ends, with its outcome:
    ``ended_at``, ``duration_ms``, ``usage``, ``error`` (for ``failed``), ``answer`` (the first
    2,000 characters). Run listings read these newest first (agentstream/runlog.py).
    """

    run_id: Token
    agent: Token
    kind: RunLogKind
    message_id: MessageId
    conversation_id: str | None = None
    parent_run_id: Token | None = None
    submitted_at: datetime
    message: str | None = None
    ended_at: datetime | None = None
    duration_ms: float | None = None
    usage: dict[str, int] | None = None
    error: dict[str, str] | None = None
    answer: str | None = None

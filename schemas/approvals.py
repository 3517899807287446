"""A run waiting for tool approvals, as stored in the APPROVALS bucket (key ``{tenant}.{run_id}``).

The agent runner that stops a run for approval creates the entry (before it writes the run's
``tool.approval_requested`` events, so a decision can never find the run waiting without it);
edges write decisions into it, each by compare-and-set on the entry's revision; agent runners
watch the bucket and resume the run once every call is decided, its deadline has passed, or it
was cancelled (agent_runner/approval_keeper.py). The run's events stay its record: the decisions
are copied into them (``tool.approval_decided``) when the run goes on, and the entry is removed.

``state``: ``waiting`` (decisions may still come), ``resuming`` (an agent runner claimed it at
``claimed_at`` and publishes the run request again), ``resumed`` (the request is stored).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.common import Strict, Token
from schemas.events import Decision, DecisionSource
from schemas.runs import RunRequest

ApprovalState = Literal["waiting", "resuming", "resumed"]

REASON_MAX_CHARS = 1000
"""Longest ``reason`` a decision may give."""


class PendingCall(Strict):
    """One call that waits, and its decision once made."""

    tool_call_id: str
    name: str
    arguments: str = ""
    decision: Decision | None = None
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)
    by: DecisionSource | None = None
    decided_at: datetime | None = None


class PendingApproval(Strict):
    """One run's waiting calls (all of one LLM step). ``member``: the run is an ensemble member's
    child run (resumed on ``agents.{tenant}.{agent}.member``, not ``.run``); ``request``: the run
    request, published again to resume the run (``Nats-Msg-Id`` ``{run_id}:resume:{resume_id}``,
    header ``Agentstream-Resume: {resume_id}``: only that delivery continues the run);
    ``expires_at``: when the calls still undecided count as rejected (the agent's
    ``approval_timeout`` after ``requested_at``); ``cancel_reason``: the run was cancelled while
    it waited (it is resumed to end ``run.cancelled``)."""

    run_id: Token
    agent: Token
    step: int
    resume_id: Token
    member: bool = False
    requested_at: datetime
    expires_at: datetime
    calls: list[PendingCall] = Field(min_length=1)
    request: RunRequest
    state: ApprovalState = "waiting"
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    cancel_reason: str | None = None

    def call(self, tool_call_id: str) -> PendingCall | None:
        """The waiting call with this id, or None."""
        return next((c for c in self.calls if c.tool_call_id == tool_call_id), None)

    @property
    def decided(self) -> bool:
        """Every call has its decision."""
        return all(c.decision is not None for c in self.calls)

    def ready(self, now: datetime) -> bool:
        """Waiting, and nothing more to wait for: every call decided, the deadline passed, or the
        run cancelled."""
        return self.state == "waiting" and (self.decided or self.cancel_reason is not None or now >= self.expires_at)

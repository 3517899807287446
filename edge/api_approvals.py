"""Deciding tool calls that wait for a person's approval: ``POST /api/runs/{run_id}/approve`` and
``POST /api/runs/{run_id}/reject`` with ``{"tool_call_id", "reason"?}``.

The decision is stored in the run's APPROVALS entry (agentstream/approvals.py, a compare-and-set,
so decisions made at once on several edges never overwrite each other); once every waiting call
of the run is decided an agent runner resumes it (agent_runner/approval_keeper.py): an approved
call runs, a rejected one answers the model with its rejection. Answers:

- ``202`` ``{run_id, tool_call_id, decision, by, duplicate, waiting_for, events_url}``: stored;
  the same decision again is ``202`` with ``duplicate: true`` (also after the run went on);
- ``409`` ``approval_already_decided`` (field ``tool_call_id``): the call was decided the other
  way (by a person, or rejected by the agent's ``approval_timeout``), ``decision`` and ``by`` say how;
- ``409`` ``run_not_awaiting_approval`` (field ``run_id``, with ``run_status``): the run waits
  for no approval;
- ``404`` (field ``tool_call_id``): the run waits, but not for that call; ``404`` (field
  ``run_id``): no such run of the caller's tenant (another tenant's run included);
- ``422`` naming the field for a bad body; ``503`` when NATS cannot be reached.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
import nats.js.errors
from pydantic import Field
from quart import Blueprint, Response

from agentstream import approvals
from agentstream.runstate import fold
from edge.auth import Tenant
from edge.errors import ApiError
from edge.http import check_run_id, json_body, json_response, run_events, state, tenant
from schemas.approvals import REASON_MAX_CHARS
from schemas.common import Strict
from schemas.events import Decision

log = logging.getLogger(__name__)

bp = Blueprint("approvals", __name__)


class DecisionBody(Strict):
    """``POST /api/runs/{run_id}/approve`` (or ``/reject``) body."""

    tool_call_id: str = Field(min_length=1, max_length=200)
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


@bp.post("/api/runs/<run_id>/approve")
async def approve(run_id: str) -> Response:
    """Approve one waiting tool call of the run: it runs when the run goes on."""
    return await _decide(run_id, "approved")


@bp.post("/api/runs/<run_id>/reject")
async def reject(run_id: str) -> Response:
    """Reject one waiting tool call of the run: the model reads the rejection as its answer."""
    return await _decide(run_id, "rejected")


async def _decide(run_id: str, decision: Decision) -> Response:
    t = tenant()
    check_run_id(run_id)
    body: DecisionBody = await json_body(DecisionBody)
    return json_response(await decide_call(t, run_id, body.tool_call_id, decision, body.reason), 202)


async def decide_call(t: Tenant, run_id: str, tool_call_id: str, decision: Decision,
                      reason: str | None) -> dict[str, Any]:
    """Record ``decision`` for a call of one of ``t``'s runs (see the module docstring); returns
    the 202 body. ApiError 404 / 409 / 503. Also used by AG-UI's ``resume`` (edge/api_agui.py)."""
    st = state()
    kv = st.approvals
    if kv is None:
        raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly", retry_after=1)
    try:
        result = await approvals.decide(kv, t.name, run_id, tool_call_id, decision, reason=reason)
    except (approvals.ApprovalConflict, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
        raise ApiError(503, "unavailable", f"the decision could not be stored ({type(err).__name__}); retry",
                       retry_after=1) from None
    done = {"run_id": run_id, "tool_call_id": tool_call_id, "decision": decision,
            "events_url": f"/api/runs/{run_id}/events"}
    entry = result.entry
    if entry is not None:
        call = entry.call(tool_call_id)
        waiting_for = [c.tool_call_id for c in entry.calls if c.decision is None]
        if result.outcome == "decided":
            log.info("run %s of tenant %s: tool call %s %s", run_id, t.name, tool_call_id, decision)
            return {**done, "by": "request", "duplicate": False, "waiting_for": waiting_for}
        if result.outcome == "same" and call is not None:
            return {**done, "by": call.by, "duplicate": True, "waiting_for": waiting_for}
        if result.outcome == "opposite" and call is not None:
            raise _already(run_id, tool_call_id, call.decision, call.by)
        if result.outcome == "not_waiting":  # cancelled while it waited: it ends without running the call
            raise ApiError(409, "run_not_awaiting_approval", f"run {run_id} was cancelled while it waited for "
                           "approval", "run_id", run_status="cancelled")
        if result.outcome == "unknown_call":
            waiting = ", ".join(c.tool_call_id for c in entry.calls)
            raise ApiError(404, "not_found", f"run {run_id} waits for approval of {waiting}, not of "
                           f"{tool_call_id[:80]!r}", "tool_call_id", waiting_for=waiting_for)
    # No wait stored (the run waits for nothing now): its events say what happened.
    record = fold(await run_events(t, run_id))
    if record is None:
        raise ApiError(404, "not_found", f"no run {run_id!r}", "run_id")
    known = next((a for a in record.approvals if a.tool_call_id == tool_call_id), None)
    if known is not None and known.status != "pending":
        if known.status == decision:
            return {**done, "by": known.by, "duplicate": True, "waiting_for": []}
        raise _already(run_id, tool_call_id, known.status, known.by)
    if record.status == "awaiting_approval":  # its wait is being stored again (agent_runner.suspension)
        raise ApiError(503, "unavailable", f"run {run_id}'s wait for approval is being restored; retry", retry_after=1)
    raise ApiError(409, "run_not_awaiting_approval", f"run {run_id} is {record.status}: it waits for no approval"
                   f"{' of ' + repr(tool_call_id[:80]) if known is None else ''}", "run_id", run_status=record.status)


def _already(run_id: str, tool_call_id: str, decision: str | None, by: str | None) -> ApiError:
    how = "by the approval timeout" if by == "timeout" else "by an earlier request"
    return ApiError(409, "approval_already_decided", f"tool call {tool_call_id} of run {run_id} was already "
                    f"{decision} {how}", "tool_call_id", decision=decision, by=by)

"""Conversations as resources: ``GET /api/conversations/{id}``, ``GET /api/conversations?agent=``,
``DELETE /api/conversations/{id}`` (agentstream/conversations.py keeps them; only the caller's
tenant's are visible)."""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
from quart import Blueprint, Response, request

from agentstream import conversations, eventlog, runlog
from agentstream.conversations import Conversation
from edge.auth import Tenant
from edge.errors import ApiError
from edge.http import int_arg, json_response, state, tenant
from schemas import subjects

bp = Blueprint("conversations", __name__)


def _kv() -> Any:
    kv = state().conversations
    if kv is None:
        raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly", retry_after=1)
    return kv


def _check_id(conversation_id: str) -> None:
    if not 0 < len(conversation_id) <= 200:
        raise ApiError(400, "invalid_request", "a conversation id is 1 to 200 characters", "conversation_id")


async def _view(t: Tenant, conversation: Conversation) -> dict[str, Any]:
    turns = [turn for turn in conversation.turns if t.may_use(turn.agent)]
    latest = await runlog.latest_events(state().bus(), t.name, [(turn.agent, turn.run_id) for turn in turns])
    return {
        "conversation_id": conversation.conversation_id, "agents": conversation.agents,
        "created_at": conversation.created_at.isoformat(), "updated_at": conversation.updated_at.isoformat(),
        "turns": [{
            "run_id": turn.run_id, "agent": turn.agent, "message_id": turn.message_id,
            "submitted_at": turn.submitted_at.isoformat(), "status": runlog.status_of(latest.get(turn.run_id)),
            "events_url": f"/api/runs/{turn.run_id}/events",
        } for turn in turns],
    }


@bp.get("/api/conversations/<path:conversation_id>")
async def get_conversation(conversation_id: str) -> Response:
    """``GET /api/conversations/{id}``: its turns in order, each with its run id and status; 404 if
    the caller's tenant has no such conversation."""
    t = tenant()
    _check_id(conversation_id)
    try:
        found, _ = await conversations.load(_kv(), t.name, conversation_id)
        if found is None:
            raise ApiError(404, "not_found", f"no conversation {conversation_id[:80]!r}", "conversation_id")
        return json_response(await _view(t, found))
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError, eventlog.EventLogError) as err:
        raise ApiError(503, "unavailable", f"conversations could not be read ({type(err).__name__})",
                       retry_after=1) from None


@bp.get("/api/conversations")
async def list_conversations() -> Response:
    """``GET /api/conversations?agent=&limit=``: the caller's conversations, most recently
    continued first (with ``agent``: those it answered in)."""
    t = tenant()
    agent = request.args.get("agent")
    if agent is not None and not subjects.is_token(agent):
        raise ApiError(400, "invalid_name", f"{agent[:80]!r} is not a valid agent name", "agent")
    limit = int_arg("limit", 50, 1, 500)
    prefix = f"$KV.{subjects.CONVERSATIONS_BUCKET}.{t.name}."
    try:
        msgs, _ = await eventlog.direct_get_batch(
            state().bus(), f"KV_{subjects.CONVERSATIONS_BUCKET}", {"multi_last": [f"{prefix}*"], "batch": 10_000},
            what="conversations")
    except eventlog.EventLogError as err:
        raise ApiError(503, "unavailable", f"conversations could not be read ({err})", retry_after=1) from None
    found = []
    for msg in msgs:
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            continue
        conversation = Conversation.model_validate_json(msg.data)
        agents = [a for a in conversation.agents if t.may_use(a)]
        if not agents or (agent is not None and agent not in agents):
            continue
        found.append(conversation)
    found.sort(key=lambda c: c.updated_at, reverse=True)
    return json_response({"conversations": [{
        "conversation_id": c.conversation_id, "agents": c.agents, "turns": len(c.turns),
        "created_at": c.created_at.isoformat(), "updated_at": c.updated_at.isoformat(),
    } for c in found[:limit]]})


@bp.delete("/api/conversations/<path:conversation_id>")
async def delete_conversation(conversation_id: str) -> Response:
    """``DELETE /api/conversations/{id}``: 204; the next message with this id starts a new
    conversation (its runs stay, until deleted or aged out). 404 if unknown."""
    t = tenant()
    _check_id(conversation_id)
    try:
        if not await conversations.forget(_kv(), t.name, conversation_id):
            raise ApiError(404, "not_found", f"no conversation {conversation_id[:80]!r}", "conversation_id")
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
        raise ApiError(503, "unavailable", f"conversations could not be changed ({type(err).__name__})",
                       retry_after=1) from None
    return Response(b"", status=204)

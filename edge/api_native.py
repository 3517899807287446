"""The native API (``/api/...``: chat, runs) and its LocalAI-compatible views, plus ``/healthz``.

Agents themselves (list, create, change, pause, ...) are edge.api_agents.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import nats.js.errors
import orjson
from pydantic import Field
from quart import Blueprint, Response, request

from agentstream import eventlog, sse
from agentstream.health import HEALTH
from agentstream.runstate import RunRecord
from edge.dialects import localai
from edge.errors import ApiError
from edge.feed import HEARTBEAT
from edge.history import recent_runs
from edge.http import (
    agent_feed,
    agent_for,
    check_run_id,
    int_arg,
    json_body,
    json_response,
    last_event_id,
    open_stream,
    request_cancel,
    run_feed,
    run_index_entry,
    run_record,
    sse_response,
    state,
    submit_run,
    tenant,
)
from edge.idempotency import claim, request_fingerprint
from edge.webhooks import check_target, deliveries, parse_target
from schemas import subjects
from schemas.common import MessageId, Strict
from schemas.events import is_deleted, is_terminal
from schemas.runs import PENDING_RUN_ID, RunRequest, new_run_id

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 200_000
MAX_KEY_CHARS = 200
"""Longest ``message_id`` / ``Idempotency-Key`` (schemas.common.MessageId)."""

bp = Blueprint("native", __name__)


class ChatBody(Strict):
    """``POST /api/agents/{name}/chat`` body (LocalAI-compatible, plus idempotency, plus a
    ``webhook``: a URL, or ``{url, events}``, the run's events are POSTed to; README, Webhooks)."""

    message: str = Field(max_length=MAX_MESSAGE_CHARS, examples=["Who are you?"])
    message_id: MessageId | None = None
    conversation_id: str | None = Field(default=None, max_length=200)
    webhook: str | dict[str, Any] | None = None


class CancelBody(Strict):
    """``POST /api/runs/{run_id}/cancel`` body (optional)."""

    reason: str = Field(default="cancelled by request", max_length=500)


@bp.get("/healthz")
async def healthz() -> Response:
    """``GET /healthz``: 200 ``{"status": "ok", ...}`` once connected to NATS, 503 before. ``keys_file``
    says whether the keys file on disk is the one in force (``problem``: why not). 503 with
    ``problems`` while the edge cannot do its job (e.g. ``storage``: JetStream refuses writes)."""
    st = state()
    keys = {"path": str(st.auth.path), "problem": st.auth.problem} if st.auth.path is not None else None
    if not st.healthy:
        return json_response({"status": "starting", "nats": "disconnected", "keys_file": keys}, 503)
    body = {"status": "ok" if HEALTH.ok else "unhealthy", "nats": "connected", "problems": HEALTH.as_dict(),
            "watchers": st.hub.watchers if st.hub else 0, "overflows": st.hub.overflows if st.hub else 0,
            "keys_file": keys}
    return json_response(body, 200 if HEALTH.ok else 503)


# -- agents (listing and managing them: edge.api_agents)

@bp.post("/api/agents/<name>/chat")
async def chat(name: str) -> Response:
    """``POST /api/agents/{name}/chat`` with ``{"message", "message_id"?, "conversation_id"?, "webhook"?}``
    → 202 ``{"status": "message_received", "message_id", "run_id", "duplicate", "events_url"}`` once
    the run request is stored in JetStream; 400/404/413/422 for bad input (a ``webhook`` whose
    address is refused: 422 naming ``webhook``), 503 if it cannot be stored."""
    t = tenant()
    agent = agent_for(t, name)
    body = await json_body(ChatBody)
    if not body.message.strip():
        raise ApiError(422, "invalid_request", "'message' must not be empty", "message")
    header = request.headers.get("Idempotency-Key")
    if not body.message_id and header is not None and len(header) > MAX_KEY_CHARS:
        raise ApiError(400, "invalid_request", f"Idempotency-Key must be at most {MAX_KEY_CHARS} characters",
                       "Idempotency-Key")
    webhook = parse_target(body.webhook, "webhook")
    if webhook is not None:
        await check_target(state(), webhook, "webhook")
    message_id = body.message_id or header
    field = "message_id" if body.message_id else "Idempotency-Key"
    draft = RunRequest(run_id=PENDING_RUN_ID, message_id=message_id or PENDING_RUN_ID, message=body.message.strip(),
                       conversation_id=body.conversation_id, webhooks=[webhook] if webhook is not None else [])
    existing = False
    if message_id:
        run_id, existing = await claim(state(), t.name, agent.name, message_id,
                                       request_fingerprint(agent.name, draft), field=field)
    else:
        run_id = message_id = new_run_id()
    submitted = await submit_run(t, agent.name, draft.model_copy(update={"run_id": run_id, "message_id": message_id}))
    return json_response({
        "status": "message_received",
        "message_id": message_id,
        "run_id": submitted.run_id,
        "duplicate": submitted.duplicate or existing,
        "events_url": f"/api/runs/{submitted.run_id}/events",
    }, 202)


@bp.get("/api/agents/<name>/status")
async def agent_status(name: str) -> Response:
    """``GET /api/agents/{name}/status``: the agent's status history, run by run, from stored events."""
    t = tenant()
    agent = agent_for(t, name)
    records = await recent_runs(state().bus(), t.name, agent.name, limit=int_arg("limit", 20, 1, 200))
    return json_response({
        "Name": agent.name,
        "History": localai.status_history(records),
        "runs": [_run_summary(r) for r in records],
    })


@bp.get("/api/agents/<name>/sse")
async def agent_sse(name: str) -> Response:
    """``GET /api/agents/{name}/sse``: LocalAI's agent stream (``json_message``, ``json_message_status``,
    ``stream_event``, ``json_error``: edge.dialects.localai) for every run of the agent, from now or
    after ``Last-Event-ID``."""
    t = tenant()
    agent = agent_for(t, name)
    after = last_event_id()
    if not after:  # start "now", like LocalAI's stream
        latest = await eventlog.last_event(state().bus(), subjects.run_events_of_agent(t.name, agent.name))
        after = latest.seq if latest else 0
    lease = await open_stream(t)
    feed = agent_feed(t.name, agent.name, after, lease=lease)

    async def body() -> AsyncIterator[bytes]:
        yield sse.comment("agentstream: LocalAI agent stream")
        async for item in feed:
            if item is HEARTBEAT:
                yield sse.PING
                continue
            if item.event is None:
                continue  # a type this version does not know (agentstream.eventlog.parse_event)
            frames = localai.render(item.event)
            for i, (event, payload) in enumerate(frames):
                data = payload if isinstance(payload, str) else orjson.dumps(payload)
                yield sse.frame(data, event=event, id=item.seq if i == len(frames) - 1 else None)

    return sse_response(body(), lease=lease)


# -- runs

@bp.get("/api/runs/<run_id>")
async def get_run(run_id: str) -> Response:
    """``GET /api/runs/{run_id}``: the run's state folded from its events, plus its dead letter if any
    and its webhook deliveries (``webhooks``: each delivery's attempts with status and time, its
    state, its next attempt)."""
    t = tenant()
    record = await run_record(t, run_id)
    return json_response({**record.as_dict(), "dead_letter": await _dead_letter(t.name, run_id),
                          "webhooks": await deliveries(state(), t.name, run_id),
                          "events_url": f"/api/runs/{run_id}/events"})


async def _dead_letter(tenant_name: str, run_id: str) -> dict[str, Any] | None:
    """The run's dead letter (the request of a run given up on), or None."""
    try:
        msg = await state().bus().jetstream().get_msg(
            subjects.RUN_DEAD_LETTERS_STREAM, subject=subjects.dead_letter_of_run(tenant_name, run_id), direct=True)
    except nats.js.errors.NotFoundError:
        return None
    letter: dict[str, Any] | None = orjson.loads(msg.data) if msg.data else None
    return letter


def native_frame(ev: eventlog.StoredEvent) -> bytes:
    """The event as the native stream frames it (``id:`` stream sequence, ``event:`` type, ``data:``
    the envelope), built once per event however many clients watch the run."""
    frame = ev.frames.get("native")
    if frame is None:
        frame = ev.frames["native"] = sse.frame(ev.data, event=ev.type, id=ev.seq)
    return frame


@bp.get("/api/runs/<run_id>/events")
async def run_sse(run_id: str) -> Response:
    """``GET /api/runs/{run_id}/events``: SSE, ``id:`` = stream sequence, ``event:`` = type, ``data:`` =
    the envelope; replays from the start or after ``Last-Event-ID``; ends after the terminal event;
    204 when ``Last-Event-ID`` is already the terminal event; 404 naming ``run_id`` if unknown."""
    t = tenant()
    check_run_id(run_id)
    after = last_event_id()
    latest = await eventlog.last_event(state().bus(), subjects.run_events_of_run(t.name, run_id))
    if latest is None:
        # No event yet: the run waits in its tenant's queue (known from its index entry).
        entry = await run_index_entry(t, run_id)
        if entry is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}", "run_id")
        subject = subjects.run_events(t.name, entry.agent, run_id)
    elif is_deleted(latest.type):
        raise ApiError(404, "not_found", f"no run {run_id!r} (it was deleted)", "run_id")
    else:
        if after and after >= latest.seq and is_terminal(latest.type):
            # Nothing left and nothing will come: 204 tells EventSource to stop reconnecting.
            return Response(b"", status=204)
        subject = latest.subject
    lease = await open_stream(t)
    feed = run_feed(t.name, run_id, subject, after, lease=lease)

    async def body() -> AsyncIterator[bytes]:
        async for batch in feed.batches():
            yield sse.PING if batch is HEARTBEAT else b"".join(map(native_frame, batch))

    return sse_response(body(), lease=lease)


@bp.post("/api/runs/<run_id>/cancel")
async def cancel_run(run_id: str) -> Response:
    """``POST /api/runs/{run_id}/cancel``: 202 when the cancel is stored; 409 with the status if the run
    already ended; 404 if unknown (or another tenant's)."""
    t = tenant()
    body = await json_body(CancelBody, optional=True)
    record = await run_record(t, run_id)
    if record.finished:
        raise ApiError(
            409, "conflict", f"run {run_id} already ended: {record.status}", "run_id", run_status=record.status
        )
    await request_cancel(state(), t.name, run_id, body.reason)
    return json_response({"status": "cancelling", "run_id": run_id, "events_url": f"/api/runs/{run_id}/events"}, 202)


def _run_summary(record: RunRecord) -> dict[str, Any]:
    return {
        "run_id": record.run_id, "message_id": record.message_id, "status": record.status,
        "message": record.message, "answer": record.answer, "created_at": record.created_at,
        "finished_at": record.finished_at, "attempts": record.attempts, "steps": record.steps,
        "tool_calls": [{"name": c.name, "arguments": c.arguments, "ok": c.ok} for c in record.tool_calls],
        "error": record.error,
    }

"""The edge: agentstream's only HTTP surface (Quart, served by Hypercorn).

It authenticates, validates, stores run requests in JetStream and renders run events as SSE. It
keeps no run state of its own: any number of edges can serve the same runs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import orjson
from nats.aio.client import Client as NATS
from pydantic import Field, ValidationError
from quart import Quart, Response, request
from quart_cors import cors
from werkzeug.exceptions import HTTPException

from agentstream import eventlog, sse
from agentstream.agents import AgentCatalog, load_agents
from agentstream.bus import close, connect, declare
from agentstream.runs import SubmitError, submit
from agentstream.runstate import fold
from agentstream.settings import Settings
from edge.auth import Authenticator, Tenant
from edge.dialects import localai
from edge.errors import ApiError, from_validation
from edge.feed import HEARTBEAT, EventFeed, LiveHub
from edge.history import recent_runs
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.common import MessageId, Strict
from schemas.events import is_terminal
from schemas.runs import RunControl, RunRequest, new_run_id, run_id_for

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 200_000
MAX_EVENT_ID = 2**63 - 1
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
"""Content types a browser sends cross-origin without a CORS preflight (Fetch standard)."""


class ChatBody(Strict):
    """``POST /api/agents/{name}/chat`` body (LocalAI-compatible, plus idempotency)."""

    message: str = Field(max_length=MAX_MESSAGE_CHARS)
    message_id: MessageId | None = None
    conversation_id: str | None = Field(default=None, max_length=200)


class CancelBody(Strict):
    """``POST /api/runs/{run_id}/cancel`` body (optional)."""

    reason: str = Field(default="cancelled by request", max_length=500)


@dataclass
class EdgeState:
    """What the edge process holds: its settings, NATS connection (once up), agents, keys."""

    settings: Settings
    auth: Authenticator
    catalog: AgentCatalog
    nc: NATS | None = None
    hub: LiveHub | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def bus(self) -> NATS:
        """The NATS connection; ApiError 503 while it is not up."""
        if self.nc is None or not self.ready.is_set() or not self.nc.is_connected:
            raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly")
        return self.nc


def create_app(settings: Settings, *, auth: Authenticator | None = None, catalog: AgentCatalog | None = None) -> Quart:
    """The edge app. Connects to NATS in the background once serving starts (healthz says when)."""
    app = Quart("agentstream.edge")
    app.config["RESPONSE_TIMEOUT"] = None  # SSE streams live as long as their run (Quart's default: 60 s)
    app.config["MAX_CONTENT_LENGTH"] = settings.edge_max_body
    app.config["BODY_TIMEOUT"] = 60
    state = EdgeState(
        settings=settings,
        auth=auth or Authenticator.from_file(settings.keys_file),
        catalog=catalog or load_agents(settings.agents_dir),
    )
    app.extensions["agentstream"] = state
    origins = [o.strip() for o in settings.edge_cors_origins.split(",") if o.strip()]
    if origins:
        cors(
            app,
            allow_origin="*" if "*" in origins else origins,
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            allow_methods=["GET", "POST", "OPTIONS"],
            expose_headers=["X-Run-Id"],
            max_age=600,
        )
    background: list[asyncio.Task] = []

    @app.before_serving
    async def startup() -> None:
        for error in state.catalog.errors:
            log.error("agent file problem: %s", error)
        if state.auth.open:
            log.warning("no KEYS_FILE: serving the single tenant %r to every caller, no key needed", "default")
        background.append(asyncio.create_task(_connect(state)))

    @app.after_serving
    async def shutdown() -> None:
        for task in background:
            task.cancel()
        if state.hub is not None:
            await state.hub.stop()
        if state.nc is not None:
            await close(state.nc)

    # -- errors

    @app.errorhandler(ApiError)
    async def api_error(err: ApiError):
        return err.response()

    @app.errorhandler(HTTPException)
    async def http_error(err: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(err.code or 500, "http_error")
        message = err.description or err.name
        if err.code == 413:
            message = f"the request body is larger than {settings.edge_max_body} bytes"
        return ApiError(err.code or 500, kind, message, "body" if err.code == 413 else None).response()

    @app.errorhandler(Exception)
    async def internal_error(err: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "internal_error", "internal error; see the edge's log").response()

    # -- helpers

    def tenant() -> Tenant:
        return state.auth.tenant_for(request.headers.get("Authorization"), request.args.get("api_key"))

    def agent_for(t: Tenant, name: str) -> AgentDefinition:
        if not subjects.is_token(name):
            raise ApiError(400, "invalid_name", f"{name[:80]!r} is not a valid agent name (1-64 of A-Z a-z 0-9 _ -)", "name")
        agent = state.catalog.get(name)
        if agent is None or not t.may_use(name):
            raise ApiError(404, "not_found", f"no agent named {name!r}", "name")
        return agent

    def check_run_id(run_id: str) -> None:
        if not subjects.is_token(run_id):
            raise ApiError(400, "invalid_name", f"{run_id[:80]!r} is not a valid run id", "run_id")

    async def json_body(model, *, optional: bool = False):
        if request.mimetype in SIMPLE_CONTENT_TYPES:
            # A browser may send these cross-site without asking (no CORS preflight): refusing
            # them keeps other web pages from starting runs on a local edge.
            raise ApiError(415, "unsupported_media_type", "send the body as JSON with 'Content-Type: application/json'",
                           "Content-Type")
        raw = await request.get_data()
        if not raw.strip():
            if optional:
                return model()
            raise ApiError(400, "invalid_json", "the request body must be a JSON object", "body")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {err}", "body") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "invalid_json", "the request body must be a JSON object", "body")
        try:
            return model.model_validate(doc)
        except ValidationError as err:
            raise from_validation(err) from None

    def last_event_id() -> int:
        raw = request.headers.get("Last-Event-ID")
        name = "Last-Event-ID"
        if raw is None:
            raw, name = request.args.get("last_event_id"), "last_event_id"
        if raw is None or raw.strip() == "":
            return 0
        raw = raw.strip()
        if not raw.isdigit() or int(raw) > MAX_EVENT_ID:
            raise ApiError(400, "invalid_request", f"{name} must be a non-negative integer event id, not {raw[:40]!r}", name)
        return int(raw)

    async def run_events(t: Tenant, run_id: str) -> list[eventlog.StoredEvent]:
        check_run_id(run_id)
        events = await eventlog.read_list(state.bus(), subjects.run_events_of_run(t.name, run_id))
        if not events:
            raise ApiError(404, "not_found", f"no run {run_id!r}", "run_id")
        return events

    def sse_response(body) -> Response:
        response = Response(body, headers=sse.HEADERS)
        response.timeout = None
        return response

    def json_response(doc, status: int = 200) -> Response:
        return Response(orjson.dumps(doc), status=status, content_type="application/json")

    # -- health

    @app.get("/healthz")
    async def healthz():
        if state.nc is None or not state.ready.is_set() or not state.nc.is_connected:
            return json_response({"status": "starting", "nats": "disconnected"}, 503)
        return json_response({"status": "ok", "nats": "connected", "watchers": state.hub.watchers if state.hub else 0})

    # -- agents

    @app.get("/api/agents")
    async def list_agents():
        t = tenant()
        agents = [a for name, a in sorted(state.catalog.agents.items()) if t.may_use(name)]
        return json_response({
            "agents": [a.name for a in agents],
            "agentCount": len(agents),
            "actions": len({x for a in agents for x in a.actions}),
            "connectors": 0,
            "statuses": {a.name: True for a in agents},
            "items": [_agent_summary(a) for a in agents],
            "errors": [e.as_dict() for e in state.catalog.errors],
        })

    @app.get("/api/agents/<name>")
    async def get_agent(name: str):
        agent = agent_for(tenant(), name)
        return json_response({"active": True, **agent.public_view()})

    @app.post("/api/agents/<name>/chat")
    async def chat(name: str):
        t = tenant()
        agent = agent_for(t, name)
        body = await json_body(ChatBody)
        if not body.message.strip():
            raise ApiError(422, "invalid_request", "'message' must not be empty", "message")
        if body.message_id is not None:
            run_id, message_id = run_id_for(t.name, agent.name, body.message_id), body.message_id
        else:
            run_id = new_run_id()
            message_id = run_id
        req = RunRequest(
            run_id=run_id, message_id=message_id, message=body.message.strip(), conversation_id=body.conversation_id,
        )
        try:
            submitted = await submit(state.bus(), t.name, agent.name, req)
        except SubmitError as err:
            log.error("submit failed: %s", err)
            raise ApiError(503, "unavailable", "the run could not be stored; retry with the same message_id") from None
        return json_response({
            "status": "message_received",
            "message_id": message_id,
            "run_id": submitted.run_id,
            "duplicate": submitted.duplicate,
            "events_url": f"/api/runs/{submitted.run_id}/events",
        }, 202)

    @app.get("/api/agents/<name>/status")
    async def agent_status(name: str):
        t = tenant()
        agent = agent_for(t, name)
        limit = _int_arg("limit", 20, 1, 200)
        records = await recent_runs(state.bus(), t.name, agent.name, limit=limit)
        return json_response({
            "Name": agent.name,
            "History": localai.status_history(records),
            "runs": [_run_summary(r) for r in records],
        })

    @app.get("/api/agents/<name>/sse")
    async def agent_sse(name: str):
        t = tenant()
        agent = agent_for(t, name)
        after = last_event_id()
        nc = state.bus()
        filter_subject = subjects.run_events_of_agent(t.name, agent.name)
        if not after:
            latest = await eventlog.last_event(nc, filter_subject)
            after = latest.seq if latest else 0
        feed = EventFeed(
            nc, state.hub, scope="agent", tenant=t.name, name=agent.name, filter_subject=filter_subject,
            after=after, heartbeat=settings.sse_heartbeat, buffer=settings.edge_watch_buffer,
        )

        async def body():
            yield sse.comment("agentstream: LocalAI agent stream")
            async for item in feed:
                if item is HEARTBEAT:
                    yield sse.PING
                    continue
                frames = localai.render(item.json())
                for i, (event, payload) in enumerate(frames):
                    data = payload if isinstance(payload, str) else orjson.dumps(payload)
                    yield sse.frame(data, event=event, id=item.seq if i == len(frames) - 1 else None)

        return sse_response(body())

    # -- runs

    @app.get("/api/runs/<run_id>")
    async def get_run(run_id: str):
        record = fold(await run_events(tenant(), run_id))
        return json_response({**record.as_dict(), "events_url": f"/api/runs/{run_id}/events"})

    @app.get("/api/runs/<run_id>/events")
    async def run_sse(run_id: str):
        t = tenant()
        check_run_id(run_id)
        after = last_event_id()
        nc = state.bus()
        filter_subject = subjects.run_events_of_run(t.name, run_id)
        latest = await eventlog.last_event(nc, filter_subject)
        if latest is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}", "run_id")
        if after and after >= latest.seq and is_terminal(latest.type):
            # Nothing left to send and nothing will come: 204 tells EventSource to stop reconnecting.
            return Response(b"", status=204)
        feed = EventFeed(
            nc, state.hub, scope="run", tenant=t.name, name=run_id, filter_subject=latest.subject,
            after=after, heartbeat=settings.sse_heartbeat, buffer=settings.edge_watch_buffer,
        )

        async def body():
            async for item in feed:
                if item is HEARTBEAT:
                    yield sse.PING
                else:
                    yield sse.frame(item.data, event=item.type, id=item.seq)

        return sse_response(body())

    @app.post("/api/runs/<run_id>/cancel")
    async def cancel_run(run_id: str):
        t = tenant()
        body = await json_body(CancelBody, optional=True)
        record = fold(await run_events(t, run_id))
        if record.finished:
            raise ApiError(409, "conflict", f"run {run_id} already ended: {record.status}", "run_id", run_status=record.status)
        control = RunControl(reason=body.reason)
        try:
            await state.bus().jetstream().publish(
                subjects.control(t.name, run_id), control.model_dump_json().encode(), timeout=5.0
            )
        except Exception as err:  # noqa: BLE001
            log.error("cancel of %s not stored: %s", run_id, err)
            raise ApiError(503, "unavailable", "the cancel request could not be stored; retry") from None
        return json_response({"status": "cancelling", "run_id": run_id, "events_url": f"/api/runs/{run_id}/events"}, 202)

    return app


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ApiError(400, "invalid_request", f"{name} must be an integer from {lo} to {hi}", name)
    return int(raw)


def _agent_summary(agent: AgentDefinition) -> dict:
    return {
        "name": agent.name, "description": agent.description, "model": agent.model,
        "actions": agent.actions, "skills": agent.skills, "max_steps": agent.max_steps,
    }


def _run_summary(record) -> dict:
    return {
        "run_id": record.run_id, "message_id": record.message_id, "status": record.status,
        "message": record.message, "answer": record.answer, "created_at": record.created_at,
        "finished_at": record.finished_at, "attempts": record.attempts, "steps": record.steps,
        "tool_calls": [{"name": c.name, "arguments": c.arguments, "ok": c.ok} for c in record.tool_calls],
        "error": record.error,
    }


async def _connect(state: EdgeState) -> None:
    """Connect to NATS (retrying), declare the streams, start the live hub; then mark ready."""
    hub_holder: dict[str, LiveHub] = {}

    async def on_reconnected() -> None:
        if "hub" in hub_holder:
            hub_holder["hub"].resync_all()

    nc = await connect(state.settings, "edge", on_reconnected=on_reconnected)
    await declare(nc, state.settings)
    hub = LiveHub(nc)
    await hub.start()
    hub_holder["hub"] = hub
    state.nc, state.hub = nc, hub
    state.ready.set()
    log.info("edge connected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")

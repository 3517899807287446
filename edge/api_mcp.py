"""Agents as an MCP server: ``/mcp`` (Model Context Protocol, streamable HTTP transport).

The official SDK's streamable HTTP server (``StreamableHTTPSessionManager``, an ASGI app) answers
``/mcp``; it is reached through a Quart route, so the request meets edge.guard and edge.gate first
like every route (``Host``, ``Origin`` — checked for every method here, as the MCP spec asks of
servers, 2025-11-25, Transports, "Security Warning" —, ``Content-Type: application/json`` for a
POST, the tenant's key as ``Authorization: Bearer``, rate limits). The route hands the request's
scope and body to the SDK's app and streams its answer back (:class:`McpEndpoint`): Quart has no
way to mount another ASGI app under a path, and a dispatcher before Quart would need the gate's
authentication and limits written again outside Quart.

The server is **stateless** (the SDK's ``stateless=True``: no ``Mcp-Session-Id``; every POST is
served on its own): any edge answers any request, as for the rest of the API, and an edge restart
breaks no session. ``GET /mcp`` answers 405 (no server-initiated stream: the spec's rule for a
server that offers none). Consequence: a ``notifications/cancelled`` arrives on a POST of its own
and cannot reach the call it names; a call is cancelled by closing its response stream instead
(the client cancels its request, or disconnects), which the spec's newer stateless revision makes
the way to cancel. Since this server keeps no events to resume a stream from, a client that left
can never get the answer, so its run is cancelled then.

Tools: the tenant's agents (its allow-list applied), each ``{name: agent, inputSchema: {message:
string}}``. A call submits a run (edge.http.submit_run), follows its events (edge.http.run_feed)
and answers with the run's answer as text; ``isError`` when the run failed or was cancelled. While
it runs, a client that sent a ``progressToken`` gets progress notifications: the run's id first,
then each tool call and result, member runs of an ensemble, and the answer's text as it streams.
The run id is also in the result's ``_meta`` (``agentstream/run_id``), for ``/api/runs/{id}/events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp.types as mt
from hypercorn.typing import ASGIReceiveEvent, ASGISendEvent
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from quart import Blueprint, Quart, Response, current_app, request
from starlette.types import Message, Scope
from werkzeug.datastructures import Headers

from edge import metrics
from edge.auth import Tenant
from edge.errors import ApiError
from edge.feed import HEARTBEAT
from edge.http import cancel_later, json_response, open_stream, run_feed, state, submit_run, tenant
from schemas import events as E
from schemas import subjects
from schemas.runs import RunRequest, new_run_id

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
SCOPE_CALLER = "agentstream.mcp_caller"
"""Where the route leaves the authenticated caller in the ASGI scope for the tool handlers."""
RUN_ID_META = "agentstream/run_id"
MAX_MESSAGE_CHARS = 200_000
PROGRESS_TEXT_CHARS = 2000
"""Longest text of one progress message (a tool call's arguments, a tool's error)."""
CANCELLED_BY_CLIENT = "the MCP client cancelled the call or disconnected"
INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"message": {"type": "string", "description": "What to ask the agent."}},
    "required": ["message"],
    "additionalProperties": False,
}

bp = Blueprint("mcp", __name__)


@dataclass(frozen=True)
class _Caller:
    """Who sent the HTTP request carrying an MCP message, and the app to serve it in."""

    tenant: Tenant
    app: Quart
    headers: Headers
    """The HTTP request's headers (its ``traceparent`` is the parent of the runs it submits)."""


class McpEndpoint:
    """The MCP server of one edge: the SDK's low-level server with our ``tools/list`` and
    ``tools/call`` handlers, and its stateless streamable HTTP app. ``start()`` in the serving
    loop, ``stop()`` at shutdown."""

    def __init__(self) -> None:
        self.server: Server[Any, Any] = Server("agentstream", version="0.1.0", instructions=(
            "Each tool is an agent: call it with {\"message\": ...}; its answer is the result."))
        # Handlers by request type (the SDK's dispatch table), not its decorators: those keep one
        # tool cache for the whole server, and each tenant has its own tools.
        self.server.request_handlers[mt.ListToolsRequest] = self._list_tools
        self.server.request_handlers[mt.CallToolRequest] = self._call_tool
        self.manager = StreamableHTTPSessionManager(app=self.server, stateless=True, json_response=False)
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run the SDK's session manager (it holds the task group the requests are served in)."""

        async def hold() -> None:
            async with self.manager.run():
                self._ready.set()
                await self._stop.wait()

        self._task = asyncio.create_task(hold(), name="mcp session manager")
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            self._task.result()

    async def stop(self) -> None:
        """Stop the manager: calls still running are cancelled (and so are their runs)."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10.0)

    async def respond(self, scope: Scope, body: bytes) -> Response:
        """Serve one HTTP request with the SDK's app; its answer as a (streamed) Quart response.

        ``scope``: the request's ASGI scope (with the caller under :data:`SCOPE_CALLER`); ``body``:
        its body, already read by Quart (within EDGE_MAX_BODY). The SDK sees the client disconnect
        when the response stream ends before its last byte (Quart stops reading the body iterator).
        """
        if not self._ready.is_set():
            raise ApiError(503, "unavailable", "the MCP server is starting; retry shortly", retry_after=1)
        outbox: asyncio.Queue[ASGISendEvent] = asyncio.Queue()
        gone = asyncio.Event()
        delivered = False

        async def receive() -> ASGIReceiveEvent:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await outbox.put(message)  # type: ignore[arg-type]  # starlette's Message is a plain mapping

        scope = {**scope, "path": MCP_PATH, "raw_path": MCP_PATH.encode(), "root_path": ""}
        work = asyncio.create_task(self.manager.handle_request(scope, receive, send))  # type: ignore[arg-type]
        start = await _next(outbox, work)
        if start is None or start["type"] != "http.response.start":
            gone.set()
            await _finish(work)
            raise ApiError(500, "internal_error", "the MCP server gave no answer; see the edge's log")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
        body_: AsyncIterator[bytes] = _body(outbox, work, gone)
        if any(k.lower() == "content-type" and v.startswith("text/event-stream") for k, v in headers):
            body_ = metrics.counted_stream(body_)  # an SSE stream like the other APIs' (edge.metrics)
        response = Response(body_, status=start["status"], headers=Headers(headers))
        response.timeout = None  # a call lasts as long as its run
        return response

    # -- the tools

    async def _list_tools(self, req: mt.ListToolsRequest) -> mt.ServerResult:
        caller = self._caller()
        catalog = caller.app.extensions["agentstream"].agents.catalog(caller.tenant.name)
        tools = [
            mt.Tool(name=name, title=name, description=agent.description or f"the agent {name}",
                    inputSchema=INPUT_SCHEMA)
            for name, agent in sorted(catalog.agents.items()) if caller.tenant.may_use(name)
        ]
        return mt.ServerResult(mt.ListToolsResult(tools=tools))

    async def _call_tool(self, req: mt.CallToolRequest) -> mt.ServerResult:
        caller = self._caller()
        ctx = self.server.request_context
        token = ctx.meta.progressToken if ctx.meta is not None else None
        sent = 0

        async def progress(message: str) -> None:
            nonlocal sent
            if token is None:
                return
            sent += 1
            try:
                await ctx.session.send_progress_notification(token, float(sent), message=message,
                                                             related_request_id=str(ctx.request_id))
            except Exception as err:  # the client's stream is gone; the call ends with it
                log.debug("progress not sent: %s", err)

        async with caller.app.app_context():
            result = await _run_agent(caller.tenant, req.params.name, req.params.arguments or {}, progress,
                                      caller.headers)
        return mt.ServerResult(result)

    def _caller(self) -> _Caller:
        http = self.server.request_context.request
        caller = getattr(http, "scope", {}).get(SCOPE_CALLER)
        if not isinstance(caller, _Caller):
            raise RuntimeError("an MCP request arrived without its caller")
        return caller


async def _next(outbox: asyncio.Queue[ASGISendEvent], work: asyncio.Task[None]) -> ASGISendEvent | None:
    """The SDK app's next ASGI message, or None when it ended without one."""
    if not outbox.empty():
        return outbox.get_nowait()
    getter = asyncio.ensure_future(outbox.get())
    await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    if not outbox.empty():
        return outbox.get_nowait()
    if work.exception() is not None:
        log.error("MCP request failed", exc_info=work.exception())
    return None


async def _body(outbox: asyncio.Queue[ASGISendEvent], work: asyncio.Task[None], gone: asyncio.Event
                ) -> AsyncIterator[bytes]:
    try:
        while True:
            message = await _next(outbox, work)
            if message is None or message["type"] != "http.response.body":
                return
            chunk = message.get("body", b"")
            if chunk:
                yield bytes(chunk)
            if not message.get("more_body"):
                return
    finally:
        gone.set()  # the SDK's app sees http.disconnect (if it still listens)
        await _finish(work)


async def _finish(work: asyncio.Task[None]) -> None:
    """Let the SDK's app end (it closes the request's transport, which cancels a call still
    running, and so its run); cancel it if it does not within a few seconds."""
    done, _ = await asyncio.wait({work}, timeout=5.0)
    if not done:
        work.cancel()
        await asyncio.wait({work}, timeout=5.0)
    elif not work.cancelled() and work.exception() is not None:
        log.warning("MCP request ended with %r", work.exception())


def _error(text: str, run_id: str | None = None) -> mt.CallToolResult:
    meta = {RUN_ID_META: run_id} if run_id else None
    return mt.CallToolResult(content=[mt.TextContent(type="text", text=text)], isError=True, _meta=meta)


async def _run_agent(t: Tenant, name: str, arguments: dict[str, Any],
                     progress: Callable[[str], Awaitable[None]], caller_headers: Headers) -> mt.CallToolResult:
    """Run agent ``name`` for ``t`` on ``arguments["message"]``; its answer, or an error result.
    ``caller_headers``: the HTTP request's (a ``traceparent`` there is honoured)."""
    st = state()
    agent = st.agents.get(t.name, name) if subjects.is_token(name) else None
    if agent is None or not t.may_use(name):
        return _error(f"no tool {name[:80]!r}: the tools are this key's agents (tools/list)")
    if st.agents.paused(t.name, name) is not None:
        return _error(f"agent {name!r} is paused: runs are not accepted until it is resumed "
                      f"(POST /api/agents/{name}/resume)")
    message = arguments.get("message")
    extra = sorted(set(arguments) - {"message"})
    if not isinstance(message, str) or not message.strip() or len(message) > MAX_MESSAGE_CHARS or extra:
        return _error(f"the arguments must be {{\"message\": a non-empty string of at most {MAX_MESSAGE_CHARS} "
                      f"characters}}{f'; unknown: {extra}' if extra else ''}")
    try:
        lease = await open_stream(t)
    except ApiError as err:
        return _error(err.message)
    run_id = new_run_id()
    ended = False
    try:
        try:
            submitted = await submit_run(t, agent.name, RunRequest(run_id=run_id, message_id=run_id,
                                                                   message=message.strip()),
                                         caller_headers=caller_headers)
        except ApiError as err:
            ended = True
            metrics.count_submit(t.name, None, err.status)
            return _error(f"the run could not be started: {err.message}")
        metrics.count_submit(t.name, submitted, 200)
        await progress(f"run {run_id} of agent {agent.name} submitted")
        answer = ""
        feed = run_feed(t.name, run_id, subjects.run_events(t.name, agent.name, run_id), lease=lease, sse=False)
        async for item in feed:
            if item is HEARTBEAT:
                continue
            match item.event:
                case E.MessageCompleted(data=data):
                    answer = data.text
                case E.RunCompleted():
                    ended = True
                    return mt.CallToolResult(content=[mt.TextContent(type="text", text=answer)], isError=False,
                                             _meta={RUN_ID_META: run_id})
                case E.RunFailed(data=data):
                    ended = True
                    return _error(f"the run failed ({data.error.type}): {data.error.message}", run_id)
                case E.RunCancelled(data=data):
                    ended = True
                    return _error(f"the run was cancelled: {data.reason}", run_id)
                case None:
                    pass  # a type this version does not know (agentstream.eventlog.parse_event)
                case event:
                    note = _progress_note(event, run_id)
                    if note:
                        await progress(note)
        return _error("the server is restarting; call again", run_id)  # the feed ended first: edge stopping
    finally:
        if lease is not None:
            lease.release()
        if not ended:
            cancel_later(st, t.name, run_id, CANCELLED_BY_CLIENT)


def _progress_note(event: E.RunEvent, run_id: str = "") -> str | None:
    """What a progress notification says about one run event of run ``run_id`` (None: nothing)."""
    match event:
        case E.RunStarted():
            return "run started"
        case E.RunRetrying(data=data):
            return f"run retrying (attempt {data.attempt}): {data.reason}"
        case E.MessageDelta(data=data):
            return data.text or None
        case E.ToolCall(data=data):
            return f"tool call {data.name} {data.arguments[:PROGRESS_TEXT_CHARS]}"
        case E.ToolResult(data=data):
            if data.ok:
                return f"tool result {data.name}: ok"
            error = data.error
            why = str(error.message if error else None)[:PROGRESS_TEXT_CHARS]
            return f"tool result {data.name}: {error.type if error else None}: {why}"
        case E.ToolApprovalRequested(data=data):
            return (f"tool call {data.name} awaits approval (tool_call_id {data.tool_call_id}, until "
                    f"{E.stored_time(data.expires_at)}): POST /api/runs/{run_id}/approve or /reject")
        case E.ToolApprovalDecided(data=data):
            return f"tool call {data.name} {data.decision}"
        case E.MemberStarted(data=data):
            return f"member {data.member} started (run {data.run_id})"
        case E.MemberFinished(data=data):
            return f"member {data.member} {data.status}"
    return None


def _parse_error(why: str) -> Response:
    """400 with a JSON-RPC parse error (JSON-RPC 2.0 §5.1, code -32700), as the SDK answers a body
    that is not JSON."""
    error = mt.JSONRPCError(jsonrpc="2.0", id="server-error", error=mt.ErrorData(code=mt.PARSE_ERROR,
                                                                                   message=f"Parse error: {why}"))
    return Response(error.model_dump_json(by_alias=True, exclude_none=True), status=400,
                    content_type="application/json")


@bp.route(MCP_PATH, methods=["GET", "POST", "DELETE"])
async def mcp_endpoint() -> Response:
    """``/mcp``: MCP's streamable HTTP transport (see the module docstring). ``GET``: 405."""
    t = tenant()
    if request.method == "GET":
        return json_response({"error": {"message": "this MCP server offers no server-initiated stream; POST "
                                        "JSON-RPC messages to /mcp", "type": "method_not_allowed", "field": None}},
                             405, headers={"Allow": "POST, DELETE"})
    endpoint: McpEndpoint = current_app.extensions["agentstream.mcp"]
    body = await request.get_data(True, False, False) if request.method == "POST" else b""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as err:  # the SDK parses only text: it would answer 500
        return _parse_error(f"the body is not UTF-8 (byte {err.start})")
    app: Quart = current_app._get_current_object()  # type: ignore[attr-defined]  # werkzeug's LocalProxy
    scope = {**request.scope, SCOPE_CALLER: _Caller(t, app, request.headers)}
    return await endpoint.respond(scope, body)

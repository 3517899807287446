"""The edge: agentstream's only HTTP surface (Quart, served by Hypercorn).

It authenticates, validates, stores run requests in JetStream and renders run events as SSE, in
the native vocabulary (``/api``), LocalAI's (``/api/agents/{name}/sse``), llm-sse's
(``/api/process``), OpenAI's (``/v1``: chat completions and the Responses API) and AG-UI's
(``/ag-ui/{name}``), and the Model Context Protocol's (``/mcp``: the agents as MCP tools).
Tenants manage their agents on ``/api/agents`` (edge.api_agents; stored in the AGENTS bucket, so
every edge serves the same agents).
It keeps no run state of its own: any number of edges can serve the same runs.
"""

from __future__ import annotations

import asyncio
import logging

from quart import Quart, Response, request
from quart_cors import cors
from werkzeug.exceptions import HTTPException

from agentstream.agents import AgentCatalog, load_agents
from agentstream.agentstore import AgentRegistry
from agentstream.bus import close
from agentstream.origins import ModelServers
from agentstream.settings import Settings
from edge import (
    api_agents,
    api_agui,
    api_approvals,
    api_conversations,
    api_docs,
    api_llmsse,
    api_mcp,
    api_native,
    api_openai,
    api_responses,
    api_runs,
    api_schedules,
    api_webhooks,
    guard,
    metrics,
    ui,
)
from edge.auth import Authenticator
from edge.bodylimit import WholeBodyFirst
from edge.disconnect import EndOnDisconnect
from edge.errors import ApiError
from edge.gate import admit
from edge.scheduler import Scheduler
from edge.state import EdgeState

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, auth: Authenticator | None = None, catalog: AgentCatalog | None = None) -> Quart:
    """The edge app. Connects to NATS in the background once serving starts (``/healthz`` says when)."""
    # No static folder: the web page's files are served by edge.ui (Quart's default would add a
    # /static/<path:filename> route reading the working directory's static/).
    app = Quart("agentstream.edge", static_folder=None)
    app.config["RESPONSE_TIMEOUT"] = None  # streams live as long as their run (Quart's default: 60 s)
    app.config["MAX_CONTENT_LENGTH"] = settings.edge_max_body
    app.config["BODY_TIMEOUT"] = 60
    # Answers the client can read. Quart documents wrapping asgi_app so; mypy forbids assigning to a method.
    app.asgi_app = WholeBodyFirst(app.asgi_app, settings.edge_max_body)  # type: ignore[method-assign]
    app.asgi_app = EndOnDisconnect(app.asgi_app)  # type: ignore[method-assign]  # streams of departed clients end
    files = catalog or load_agents(settings.agents_dir, key_env_pattern=settings.llm_key_env_pattern,
                                   mcp_stdio_commands=settings.mcp_stdio_commands)
    state = EdgeState(
        settings=settings,
        auth=auth or Authenticator.from_file(settings.keys_file),
        catalog=files,
        agents=AgentRegistry(files, key_env_pattern=settings.llm_key_env_pattern,
                             servers=ModelServers.of(settings.agents_llm_origins, settings.llm_base_url)),
    )
    app.extensions["agentstream"] = state
    guard.install(app, settings)  # Host, ?api_key=, Origin and Content-Type rules, before any route
    origins = [o.strip() for o in settings.edge_cors_origins.split(",") if o.strip()]
    if origins:
        cors(
            app,
            allow_origin="*" if "*" in origins else origins,
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Mcp-Protocol-Version"],
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            expose_headers=["X-Run-Id"],
            max_age=600,
        )
    app.register_blueprint(api_agents.bp)
    app.register_blueprint(api_native.bp)
    app.register_blueprint(api_runs.bp)
    app.register_blueprint(api_approvals.bp)
    app.register_blueprint(api_conversations.bp)
    app.register_blueprint(api_openai.bp)
    app.register_blueprint(api_responses.bp)
    app.register_blueprint(api_llmsse.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(api_agui.bp)
    app.register_blueprint(api_mcp.bp)
    app.register_blueprint(api_docs.bp)
    app.register_blueprint(api_schedules.bp)
    app.register_blueprint(api_webhooks.bp)
    mcp_endpoint = app.extensions["agentstream.mcp"] = api_mcp.McpEndpoint()
    metrics.install(app, settings.metrics_max_tenants)
    metrics.known_tenants(state.auth.policies)
    background: list[asyncio.Task[None]] = []
    schedulers: list[Scheduler] = []

    async def run_scheduler() -> None:
        """Fire schedules (edge/scheduler.py) once connected (retried until it can start)."""
        await state.ready.wait()
        assert state.schedules is not None
        while True:
            scheduler = Scheduler(state, state.schedules)
            try:
                await scheduler.start()
            except Exception as err:  # NATS not answering yet: try again
                log.warning("the scheduler could not start (%s: %s); retrying", type(err).__name__, err)
                await scheduler.stop()
                await asyncio.sleep(1.0)
                continue
            schedulers.append(scheduler)
            return

    @app.before_request
    async def gate() -> None:
        await admit(state)

    @app.before_serving
    async def startup() -> None:
        for error in state.catalog.errors:
            log.error("agent file problem: %s", error)
        if state.auth.open:
            log.warning("no KEYS_FILE: serving the single tenant 'default' to every caller, no key needed")
        await mcp_endpoint.start()
        background.append(asyncio.create_task(state.connect()))
        background.append(asyncio.create_task(run_scheduler()))
        if state.auth.path is not None:
            background.append(asyncio.create_task(state.watch_keys_file()))

    @app.after_serving
    async def shutdown() -> None:
        await mcp_endpoint.stop()
        for scheduler in schedulers:
            await scheduler.stop()
        for task in background:
            task.cancel()
        if state.hub is not None:
            await state.hub.stop()
        await state.agents.stop()
        if state.streams is not None:
            await state.streams.stop()
        if state.nc is not None:
            await close(state.nc)

    def render(err: ApiError) -> Response:
        return api_openai.error_response(err) if request.path.startswith("/v1/") else err.response()

    @app.errorhandler(ApiError)
    async def api_error(err: ApiError) -> Response:
        return render(err)

    @app.errorhandler(HTTPException)
    async def http_error(err: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(err.code or 500, "http_error")
        message = err.description or err.name
        if err.code == 413:
            message = f"the request body is larger than {settings.edge_max_body} bytes"
        return render(ApiError(err.code or 500, kind, message, "body" if err.code == 413 else None))

    @app.errorhandler(Exception)
    async def internal_error(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(ApiError(500, "internal_error", "internal error; see the edge's log"))

    return app

"""The edge's Prometheus metrics (README, Observability).

They are served with the process's other metrics by the edge's probe server on
``METRICS_BIND`` (agentstream.probe: ``GET /metrics``, without a key), never on ``EDGE_BIND``:
every tenant reaches ``EDGE_BIND``, and counts by agent, tool and outcome across tenants are
other tenants' data (docs/security.md, "Metrics"). They name a tenant only while the edge serves
at most ``METRICS_MAX_TENANTS`` tenants; never a key, a message or an answer.

Each request also gets its log context here (agentstream.logs): the caller's tenant once the gate
knows it, and the route's ``name`` (agent) and ``run_id``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from prometheus_client import Counter, Gauge
from quart import Quart, Response, g, request

from agentstream import logs
from agentstream.metrics import TenantLabels
from agentstream.runs import Submitted

SSE_STREAMS_OPEN = Gauge(
    "agentstream_sse_streams_open",
    "SSE responses this edge is sending now (every dialect: /api, /v1 streams, /api/process).",
)
SSE_EVENTS_SENT = Counter(
    "agentstream_sse_events_sent_total",
    "Run events handed to SSE streams (an OpenAI stream renders only some of them as chunks).",
)
SUBMITS = Counter(
    "agentstream_submits_total",
    "Requests that submit a run (POST /api/agents/{name}/chat, /v1/chat/completions, /v1/completions, "
    "/v1/responses, /ag-ui/{name}, /api/process; an MCP tools/call on /mcp), by outcome: accepted (a new run), "
    "duplicate (a repeated message_id: the same run), refused (no run; with the HTTP status).",
    ["tenant", "outcome", "status"],
)

SUBMIT_ENDPOINTS = frozenset({
    "native.chat", "openai.chat_completions", "openai.completions", "responses.create_response", "agui.run_agent",
    "llmsse.process",
})
"""The routes counted in :data:`SUBMITS` once their response is made (an MCP tool call is counted
by :func:`count_submit` itself: one POST to ``/mcp`` is not one submit)."""

TENANTS = TenantLabels()
"""The edge's tenant label rule: the keys file's tenants (see :func:`install`)."""

async def counted_stream(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body``, counted in :data:`SSE_STREAMS_OPEN` from its first chunk to its end."""
    SSE_STREAMS_OPEN.inc()
    try:
        async for chunk in body:
            yield chunk
    finally:
        SSE_STREAMS_OPEN.dec()
        closer = getattr(body, "aclose", None)
        if closer is not None:
            await closer()


def install(app: Quart, max_tenants: int) -> None:
    """Count ``app``'s submits, and set each request's log context. ``max_tenants``:
    METRICS_MAX_TENANTS. Call :func:`known_tenants` whenever the keys file changes."""
    TENANTS.max_tenants = max_tenants

    @app.before_request
    async def log_context() -> None:  # the tenant is set by the gate, once it knows the caller
        args = request.view_args or {}
        logs.RUN_ID.set(_text(args.get("run_id")))
        logs.AGENT.set(_text(args.get("name")))

    @app.after_request
    async def count_submitting_request(response: Response) -> Response:
        if request.endpoint in SUBMIT_ENDPOINTS:
            caller = g.get("caller")
            count_submit(caller.name if caller is not None else None, g.get("submitted"), response.status_code)
        return response


def count_submit(tenant: str | None, submitted: Submitted | None, status: int) -> None:
    """Count one submit of ``tenant`` (None: the caller was not known) in :data:`SUBMITS`:
    ``submitted`` None means no run was stored (refused); ``status``: the HTTP status answered
    (a run that was stored and then failed while the client waited is still ``accepted``)."""
    if submitted is None:
        outcome = "refused"
    else:
        outcome = "duplicate" if submitted.duplicate else "accepted"
    SUBMITS.labels(TENANTS.label(tenant), outcome, str(status)).inc()


def known_tenants(names: Iterable[str]) -> None:
    """The tenants of the keys file in force (the tenant label rule counts them)."""
    TENANTS.set_known(names)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None

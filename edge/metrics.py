"""The edge's Prometheus metrics and its ``GET /metrics`` (README, Observability).

``/metrics`` is served on ``EDGE_BIND`` like ``/healthz``: without a key, without the ``Host``
rule (a scraper addresses the edge by its IP address), never rate-limited (edge.gate,
edge.guard). It shows counts by agent and, while the edge serves at most
``METRICS_MAX_TENANTS`` tenants, by tenant name; never a key, a message or an answer
(docs/security.md).

Each request also gets its log context here (agentstream.logs): the caller's tenant once the gate
knows it, and the route's ``name`` (agent) and ``run_id``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from prometheus_client import Counter, Gauge
from quart import Blueprint, Quart, Response, g, request

from agentstream import logs
from agentstream import metrics as common
from agentstream.metrics import TenantLabels

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
    "/api/process), by outcome: accepted (a new run), duplicate (a repeated message_id: the same run), "
    "refused (with the HTTP status).",
    ["tenant", "outcome", "status"],
)

SUBMIT_ENDPOINTS = frozenset({"native.chat", "openai.chat_completions", "openai.completions", "llmsse.process"})
"""The routes counted in :data:`SUBMITS`."""

TENANTS = TenantLabels()
"""The edge's tenant label rule: the keys file's tenants (see :func:`install`)."""

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
async def metrics_page() -> Response:
    """``GET /metrics``: the edge's metrics in the Prometheus text format."""
    return Response(common.render(), content_type=common.CONTENT_TYPE)


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
    """Serve ``/metrics`` on ``app``, count its submits, and set each request's log context.
    ``max_tenants``: METRICS_MAX_TENANTS. Call :func:`known_tenants` whenever the keys file changes."""
    TENANTS.max_tenants = max_tenants
    app.register_blueprint(bp)

    @app.before_request
    async def log_context() -> None:  # the tenant is set by the gate, once it knows the caller
        args = request.view_args or {}
        logs.RUN_ID.set(_text(args.get("run_id")))
        logs.AGENT.set(_text(args.get("name")))

    @app.after_request
    async def count_submit(response: Response) -> Response:
        if request.endpoint in SUBMIT_ENDPOINTS:
            caller = g.get("caller")
            submitted = g.get("submitted")
            status = response.status_code
            if status >= 400 or submitted is None:
                outcome = "refused"
            else:
                outcome = "duplicate" if submitted.duplicate else "accepted"
            SUBMITS.labels(TENANTS.label(caller.name if caller is not None else None), outcome, str(status)).inc()
        return response


def known_tenants(names: Iterable[str]) -> None:
    """The tenants of the keys file in force (the tenant label rule counts them)."""
    TENANTS.set_known(names)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None

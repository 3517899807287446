"""The door every request passes before its route: who is calling, and whether they may call now.

In order, for every request but the public ones (``/healthz``, and the web page: ``/``, ``/ui``
and the files under ``/static/``, which carry no tenant data; the page calls the API with a key):

1. A client address that sent too many wrong API keys (``EDGE_AUTH_FAILURES_PER_MINUTE``) gets
   429 whatever it sends, until its limit lets it in again (the address is the TCP peer; put a
   trusted proxy in front only if it is the peer for everyone).
2. The key is looked up (edge.auth): ``Authorization: Bearer KEY``, or ``?api_key=`` on the SSE
   GET routes only. A wrong key is 401 and counts against the address.
3. The tenant's ``requests_per_minute`` / ``burst``, and the key's own if it has them, are counted
   in the shared RATE_LIMITS bucket (edge.ratelimit); over one: 429 with ``Retry-After`` and the
   JSON error body (OpenAI's shape on ``/v1``, code ``rate_limit_exceeded``).

The caller is kept in ``g.caller`` for the route (edge.http.tenant).
"""

from __future__ import annotations

import hashlib

from quart import g, request

from agentstream import logs
from edge import ui
from edge.auth import Tenant
from edge.errors import ApiError
from edge.ratelimit import Decision, Limit
from edge.state import EdgeState

PUBLIC_PATHS = frozenset({"/healthz"}) | ui.PAGE_PATHS
"""Paths served without a key: the health check and the web page (edge.ui). The metrics are not
served here but on METRICS_BIND (edge.metrics)."""
PUBLIC_ENDPOINTS = frozenset({"ui.static_file"})
"""Routes served without a key whatever their path: the web page's files under ``/static/``."""
SSE_GET_ENDPOINTS = frozenset({"native.run_sse", "native.agent_sse"})
"""Routes a browser ``EventSource`` opens (it cannot set headers): ``?api_key=`` is accepted there."""


def _address_key() -> str:
    peer = request.remote_addr or "unknown"
    return "a." + hashlib.sha256(peer.encode()).hexdigest()[:24]


def refusal(decision: Decision, what: str) -> ApiError:
    """The 429 for a refused rate-limit check; ``what`` says what was limited."""
    limit = decision.limit
    detail = f" ({limit.rate} requests per minute, burst {limit.burst})" if limit is not None else ""
    return ApiError(429, "rate_limit_exceeded", f"{what} is over its rate limit{detail}; retry after "
                    f"{decision.retry_after} s", None, retry_after=decision.retry_after, code="rate_limit_exceeded")


async def admit(st: EdgeState) -> Tenant | None:
    """Authenticate and rate-limit the current request; returns the caller (None for public
    routes). Raises ApiError 401 or 429."""
    if request.path in PUBLIC_PATHS or request.endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
        return None
    limiter = st.limiter if st.healthy else None
    failures = Limit(st.settings.auth_failures_per_minute, st.settings.auth_failures_per_minute, "wrong API keys")
    if limiter is not None and not st.auth.open:
        blocked = await limiter.peek(_address_key(), failures)
        if not blocked.allowed:
            raise refusal(blocked, "this client address sent too many wrong API keys and")
    api_key = request.args.get("api_key") if request.endpoint in SSE_GET_ENDPOINTS else None
    try:
        caller = st.auth.tenant_for(request.headers.get("Authorization"), api_key)
    except ApiError as err:
        if err.status == 401 and limiter is not None:
            await limiter.take(_address_key(), failures)
        raise
    g.caller = caller
    logs.TENANT.set(caller.name)
    if limiter is not None:
        checks: list[tuple[str, Limit]] = []
        policy = caller.policy
        if policy.requests_per_minute is not None:
            tenant_limit = Limit(policy.requests_per_minute, policy.burst, f"tenant {caller.name}")
            checks.append((f"t.{caller.name}", tenant_limit))
        if caller.key is not None and caller.key.requests_per_minute is not None:
            burst = caller.key.burst or policy.burst
            checks.append((f"k.{caller.key_id}", Limit(caller.key.requests_per_minute, burst, "this API key")))
        decision = await limiter.take_all(checks)
        if not decision.allowed:
            name = decision.limit.name if decision.limit is not None else "this caller"
            raise refusal(decision, name)
    return caller

"""``http_request``: one HTTP request to a public address, redirects followed and re-checked.

Every hop (the first URL and each redirect) is resolved, checked by tool_runner.netguard, and
connected to at the checked address (with the original Host header and TLS server name), so a
hostile DNS answer cannot redirect the request to an internal address after the check.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from schemas.errors import ErrorKind
from schemas.tools import HttpRequestArgs
from tool_runner.errors import ToolError
from tool_runner.netguard import resolve_allowed
from tool_runner.tools import ToolContext

MAX_REDIRECTS = 5
_DROP_REQUEST_HEADERS = {
    "host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization",
}


async def http_request(args: HttpRequestArgs, ctx: ToolContext) -> dict[str, Any]:
    """Make the request; return ``{url, status, headers, body, bytes, truncated, redirects}``.

    ``url`` is the final URL after redirects, ``body`` the response text (at most
    TOOL_HTTP_MAX_BYTES bytes of it, ``truncated`` says if cut), ``bytes`` how many body bytes
    were read. Raises ToolError ``invalid_url``, ``dns_error``, ``address_refused``,
    ``too_many_redirects``, ``timeout``, ``connection_error``.
    """
    limit = ctx.settings.tool_http_timeout
    timeout = min(args.timeout, limit) if args.timeout else limit
    try:
        async with asyncio.timeout(timeout):
            return await _request(args, ctx, timeout)
    except TimeoutError:
        raise ToolError(ErrorKind.TIMEOUT, f"no complete answer from {args.url} within {timeout:g} s") from None


async def _request(
    args: HttpRequestArgs, ctx: ToolContext, timeout: float  # noqa: ASYNC109 - also httpx's per-phase timeouts
) -> dict[str, Any]:
    url = _parse_url(args.url)
    method = args.method
    body: bytes | None = args.body.encode("utf-8") if args.body is not None else None
    headers = {k: v for k, v in args.headers.items() if k.lower() not in _DROP_REQUEST_HEADERS}
    redirects: list[str] = []
    for _hop in range(MAX_REDIRECTS + 1):
        port = url.port or (443 if url.scheme == "https" else 80)
        allowed = ctx.settings.tool_http_allow_private or _listed(url.host, port, ctx.settings.tool_http_allow_hosts)
        address = await resolve_allowed(url.host, port, allow_private=allowed)
        request = ctx.http.build_request(
            method,
            url.copy_with(host=address),
            headers={**headers, "Host": url.netloc.decode("ascii")},
            content=body,
            extensions=(
                {"sni_hostname": url.host, "timeout": _timeouts(timeout)} if url.scheme == "https"
                else {"timeout": _timeouts(timeout)}
            ),
        )
        try:
            response = await ctx.http.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException:
            raise ToolError(ErrorKind.TIMEOUT, f"{url} did not answer within {timeout:g} s") from None
        except httpx.HTTPError as err:
            raise ToolError(ErrorKind.CONNECTION_ERROR,
                            f"request to {url} failed: {err or type(err).__name__}") from None
        try:
            if response.has_redirect_location and "location" in response.headers:
                redirects.append(str(url))
                url = _parse_url(str(url.join(response.headers["location"])))
                if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                    method, body = "GET", None
                continue
            data, truncated = await _read_capped(response, ctx.settings.tool_http_max_bytes)
        finally:
            await response.aclose()
        encoding = response.charset_encoding or "utf-8"
        try:
            text = data.decode(encoding, errors="replace")
        except LookupError:
            text = data.decode("utf-8", errors="replace")
        return {
            "url": str(url),
            "status": response.status_code,
            "headers": dict(response.headers),
            "body": text,
            "bytes": len(data),
            "truncated": truncated,
            "redirects": redirects,
        }
    raise ToolError(ErrorKind.TOO_MANY_REDIRECTS, f"more than {MAX_REDIRECTS} redirects starting at {args.url}")


def _listed(host: str, port: int, allow_hosts: str) -> bool:
    """True when TOOL_HTTP_ALLOW_HOSTS names ``host`` or ``host:port``."""
    entries = {e.strip().lower() for e in allow_hosts.split(",") if e.strip()}
    return host.lower() in entries or f"{host.lower()}:{port}" in entries


def _parse_url(raw: str) -> httpx.URL:
    try:
        url = httpx.URL(raw)
    except Exception as err:  # httpx raises several types for bad URLs
        raise ToolError(ErrorKind.INVALID_URL, f"not a valid URL: {raw!r} ({err})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ToolError(ErrorKind.INVALID_URL, f"only absolute http:// and https:// URLs are allowed, not {raw!r}")
    return url


def _timeouts(seconds: float) -> dict[str, float]:
    return {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        room = cap - len(data)
        if len(chunk) > room:
            data += chunk[:room]
            return bytes(data), True
        data += chunk
    return bytes(data), False

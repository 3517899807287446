"""Which addresses a tool runner may reach an MCP server (``url``) at: the rule of http_request.

Every HTTP request the MCP SDK's client makes (the session's POSTs, its GET stream, the closing
DELETE) goes through :class:`GuardedTransport`: the host is resolved, checked by
tool_runner.netguard (public unicast addresses only, also IPv6 forms carrying a refused IPv4
address), and the connection goes to the address that was checked, with the original ``Host``
header and TLS server name, so a DNS answer cannot swap in an internal address after the check
(the same way tool_runner/tools/http.py connects). Hosts the operator lists in
``MCP_ALLOW_HOSTS`` (``host`` or ``host:port``) may be any address.
"""

from __future__ import annotations

import httpx

from schemas.errors import ErrorKind
from tool_runner.errors import ToolError
from tool_runner.netguard import resolve_allowed

_DEFAULT_PORTS = {"http": 80, "https": 443}


def listed(host: str, port: int, allow_hosts: str) -> bool:
    """True when ``allow_hosts`` (comma-separated ``host`` or ``host:port``) names ``host`` or
    ``host:port`` (case-insensitive)."""
    entries = {e.strip().lower() for e in allow_hosts.split(",") if e.strip()}
    return host.lower() in entries or f"{host.lower()}:{port}" in entries


async def checked_address(url: httpx.URL, allow_hosts: str) -> str:
    """The address ``url``'s host may be reached at. Raises ToolError ``invalid_url`` (not an
    absolute http(s) URL), ``dns_error``, ``address_refused`` (tool_runner.netguard)."""
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise ToolError(ErrorKind.INVALID_URL,
                        f"an MCP server's url must be an absolute http:// or https:// URL, not {url}")
    port = url.port or _DEFAULT_PORTS[url.scheme]
    try:
        return await resolve_allowed(url.host, port, allow_private=listed(url.host, port, allow_hosts))
    except ToolError as err:
        if err.kind == ErrorKind.ADDRESS_REFUSED:
            reason = err.message.split("; the operator")[0]
            raise ToolError(ErrorKind.ADDRESS_REFUSED, f"MCP server: {reason}; the operator can allow it with "
                            "MCP_ALLOW_HOSTS") from None
        raise


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request only to an address :func:`checked_address`
    allows (see the module docstring). A refused request raises ToolError, which the SDK's client
    sees as a failed request. ``allow_hosts``: MCP_ALLOW_HOSTS."""

    def __init__(self, allow_hosts: str):
        self.allow_hosts = allow_hosts
        self._inner = httpx.AsyncHTTPTransport(trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Resolve and check the request's host, then send it to the checked address."""
        url = request.url
        address = await checked_address(url, self.allow_hosts)
        request.url = url.copy_with(host=address)
        if "host" not in request.headers:
            request.headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": url.host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._inner.aclose()

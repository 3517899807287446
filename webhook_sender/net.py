"""Which addresses a webhook may be POSTed to: the rule of http_request (tool_runner/netguard.py).

Public unicast addresses only (loopback, private, link-local, CGNAT, multicast, reserved and the
IPv6 forms carrying such an IPv4 address are refused), unless ``WEBHOOK_ALLOW_HOSTS`` (``host`` or
``host:port``, its own list: http_request's ``TOOL_HTTP_ALLOW_HOSTS`` does not open webhooks) names
the host. The edge checks a submitted webhook's URL (a ``422`` naming the field); the webhook
sender checks again at every delivery, since DNS may answer differently by then, and connects to
the address it checked (with the original ``Host`` header and TLS server name), so an answer
cannot change between the check and the connection.
"""

from __future__ import annotations

import httpx

from schemas.errors import AgentstreamError, ErrorKind
from schemas.webhooks import url_problem
from tool_runner.errors import ToolError
from tool_runner.netguard import resolve_allowed

_DEFAULT_PORTS = {"http": 80, "https": 443}


class WebhookRefused(AgentstreamError):
    """A webhook URL that may not be used: ``kind`` is ``invalid_url`` or ``address_refused``
    (final: a delivery is not retried), or ``dns_error`` (its host does not resolve now)."""

    reason = "webhook refused"

    @property
    def final(self) -> bool:
        """True when retrying cannot help (the URL or its address is refused)."""
        return self.kind != ErrorKind.DNS_ERROR


def listed(host: str, port: int, allow_hosts: str) -> bool:
    """True when ``allow_hosts`` (comma-separated ``host`` or ``host:port``, WEBHOOK_ALLOW_HOSTS)
    names ``host`` or ``host:port`` (case-insensitive)."""
    entries = {e.strip().lower() for e in allow_hosts.split(",") if e.strip()}
    return host.lower() in entries or f"{host.lower()}:{port}" in entries


async def checked_address(url: str, allow_hosts: str) -> tuple[httpx.URL, str]:
    """The parsed ``url`` and the address its host may be reached at. Raises WebhookRefused."""
    problem = url_problem(url)
    if problem is not None:
        raise WebhookRefused(ErrorKind.INVALID_URL, problem)
    parsed = httpx.URL(url)
    port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
    try:
        address = await resolve_allowed(parsed.host, port, allow_private=listed(parsed.host, port, allow_hosts))
    except ToolError as err:
        if err.kind == ErrorKind.ADDRESS_REFUSED:
            reason = err.message.split("; the operator")[0]
            raise WebhookRefused(ErrorKind.ADDRESS_REFUSED, f"{reason}; the operator can allow it with "
                                 "WEBHOOK_ALLOW_HOSTS") from None
        raise WebhookRefused(err.kind, err.message) from None
    return parsed, address


async def post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], *, allow_hosts: str,
               timeout: float) -> int:  # noqa: ASYNC109 - httpx's per-phase timeouts
    """POST ``body`` to ``url`` at the address :func:`checked_address` allows; returns the HTTP
    status (redirects are not followed: a 3xx is the answer). Raises WebhookRefused, or
    httpx.HTTPError when the request fails (connection refused, timeout)."""
    parsed, address = await checked_address(url, allow_hosts)
    extensions: dict[str, object] = {"timeout": {"connect": timeout, "read": timeout, "write": timeout,
                                                 "pool": timeout}}
    if parsed.scheme == "https":
        extensions["sni_hostname"] = parsed.host
    request = client.build_request("POST", parsed.copy_with(host=address), content=body,
                                   headers={**headers, "Host": parsed.netloc.decode("ascii")}, extensions=extensions)
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        read = 0
        async for chunk in response.aiter_bytes():  # the answer is not kept; a little is read, then it is closed
            read += len(chunk)
            if read > 64 * 1024:
                break
    finally:
        await response.aclose()
    return response.status_code

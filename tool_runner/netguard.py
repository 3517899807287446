"""Which network addresses http_request may reach.

By default only public unicast addresses: loopback, private (RFC 1918, ULA), link-local
(including cloud metadata at 169.254.169.254), multicast, reserved, unspecified and shared
(CGNAT) addresses are refused, for IPv4, IPv6 and IPv4-mapped IPv6 alike. The check is made on the
resolved address the connection then uses, so DNS cannot swap in another address afterwards.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from tool_runner.errors import ToolError

_SHARED = ipaddress.ip_network("100.64.0.0/10")


def refusal_reason(address: str) -> str | None:
    """Why ``address`` (an IP literal) is refused, or None if it is a public unicast address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared (CGNAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    return None


async def resolve_allowed(host: str, port: int, *, allow_private: bool) -> str:
    """Resolve ``host`` and return one address it may be reached at.

    Raises ToolError ``dns_error`` when it does not resolve, ``address_refused`` when every
    address it resolves to is refused (any refused address is named in the message).
    """
    try:
        addresses = [str(ipaddress.ip_address(host))]  # an address already: nothing to resolve
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise ToolError("dns_error", f"cannot resolve {host!r}: {err.strerror or err}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))  # (host, port, ...), IPv4 and IPv6
    if allow_private:
        return addresses[0]
    refused = []
    for address in addresses:
        reason = refusal_reason(address)
        if reason is None:
            return address
        refused.append(f"{address} ({reason})")
    raise ToolError(
        "address_refused",
        f"{host} resolves only to non-public addresses: {', '.join(refused)}; "
        "the operator can allow them with TOOL_HTTP_ALLOW_HOSTS or TOOL_HTTP_ALLOW_PRIVATE=true",
    )

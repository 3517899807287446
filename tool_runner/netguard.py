"""Which network addresses http_request may reach.

By default only public unicast addresses: loopback, private (RFC 1918, ULA), link-local
(including cloud metadata at 169.254.169.254), multicast, reserved, unspecified, shared (CGNAT)
and deprecated site-local (``fec0::/10``, RFC 3879) addresses are refused, for IPv4, IPv6 and
IPv4-mapped IPv6 alike. IPv6 addresses that carry an IPv4 address are judged by that address
too, since the network may deliver them to it: 6to4 (``2002::/16``, RFC 3056), NAT64's
well-known prefix (``64:ff9b::/96``, RFC 6052: allowed when the IPv4 address is public),
Teredo (``2001::/32``, RFC 4380: server and client), and the deprecated IPv4-compatible form
(``::a.b.c.d``, RFC 4291 §2.5.5.1: always refused). The local-use NAT64 prefix
(``64:ff9b:1::/48``, RFC 8215) is not globally reachable (IANA special-purpose registry) and is
refused. The check is made on the resolved address the connection then uses, so DNS cannot swap
in another address afterwards.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from schemas.errors import ErrorKind
from tool_runner.errors import ToolError

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def refusal_reason(address: str) -> str | None:
    """Why ``address`` (an IP literal) is refused, or None if it is a public unicast address.

    The reason is short text naming the kind of address (``loopback``, ``private``, ...); for an
    IPv6 address carrying an IPv4 address it names both, e.g. ``6to4 of 192.168.1.1 (private)``.
    Raises ValueError when ``address`` is not an IP address.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            embedded = _embedded_refusal(ip)
            if embedded is not None:
                return embedded or None
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
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local (deprecated)"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    return None


def _embedded_refusal(ip: ipaddress.IPv6Address) -> str | None:
    """For an IPv6 address that carries IPv4 addresses: the refusal reason, or ``""`` when it is
    allowed for what it carries (NAT64 of a public address); None when it carries none (or is
    6to4 or Teredo of public addresses, left to the general checks)."""
    if ip in _NAT64_LOCAL:
        return "local-use NAT64 (RFC 8215)"
    if ip.is_loopback or ip.is_unspecified:
        return None
    carried: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip.sixtofour is not None:
        carried.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        carried += [("Teredo server", server), ("Teredo client", client)]
    if ip in _NAT64:
        carried.append(("NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip in _IPV4_COMPATIBLE:
        carried.append(("IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    for kind, v4 in carried:
        reason = refusal_reason(str(v4))
        if reason is not None:
            return f"{kind} of {v4} ({reason})"
    if ip in _IPV4_COMPATIBLE:
        return "IPv4-compatible (deprecated, RFC 4291 §2.5.5.1)"
    if ip in _NAT64:
        return ""
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
            raise ToolError(ErrorKind.DNS_ERROR, f"cannot resolve {host!r}: {err.strerror or err}") from None
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
        ErrorKind.ADDRESS_REFUSED,
        f"{host} resolves only to non-public addresses: {', '.join(refused)}; "
        "the operator can allow them with TOOL_HTTP_ALLOW_HOSTS or TOOL_HTTP_ALLOW_PRIVATE=true",
    )

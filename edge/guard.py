"""Rules every request meets before any route: so that no other web page, and no other host
name, can use an edge that listens on this machine.

Checked in this order (:func:`check`), each refusal an :class:`ApiError` naming the field:

1. ``Host`` must be one this edge serves (``EDGE_ALLOWED_HOSTS``), else ``421 Misdirected
   Request`` (RFC 9110 §15.5.20), field ``Host``; so is a missing or malformed ``Host``
   (RFC 9110 §7.2). A web page can point a name it owns at
   127.0.0.1 (DNS rebinding); its requests then reach a local edge as same-origin requests, but
   carry that name in ``Host``. Default (unset): ``localhost``, ``127.0.0.1``, ``[::1]`` and the
   address the edge is bound to, each with any port; bound to all addresses (``0.0.0.0``,
   ``::``), also this machine's host name. Anything else must be listed (``name``: any port;
   ``name:port``: that port; ``.example.com``: that domain and its subdomains) or allowed with
   ``*`` (e.g. behind a proxy that checks ``Host`` itself). A trailing dot and case are ignored.
2. ``?api_key=`` is taken only on the SSE routes (``GET /api/runs/{id}/events``,
   ``GET /api/agents/{name}/sse``), where a browser ``EventSource`` cannot send headers;
   elsewhere it is a ``401``, field ``api_key`` (a key in a URL ends up in logs and histories).
3. A ``POST`` (and any request to ``/mcp``: the MCP spec asks servers to check ``Origin`` on
   every connection, 2025-11-25, Transports, "Security Warning") from a web page of another
   origin is refused, ``403``, field ``Origin``, unless
   ``EDGE_CORS_ORIGINS`` lists that origin (or is ``*``). The origin is the ``Origin`` header
   (which browsers send with every ``POST``, Fetch standard §3.1); the edge's own origin is the
   one whose host and port are the request's ``Host``. Without ``Origin``, a
   ``Sec-Fetch-Site: cross-site`` header (Fetch Metadata) is refused the same way. Clients that
   are not browsers send neither and pass.
4. Every ``POST`` needs ``Content-Type: application/json`` (parameters such as ``charset``
   allowed), else ``415``, field ``Content-Type``; nothing is guessed. Form and ``text/plain``
   bodies are "CORS-safelisted" (Fetch standard §2.2.2): a browser sends them to any origin
   without a preflight, so a JSON body is also what makes every cross-origin ``POST`` go through
   the CORS preflight, which only ``EDGE_CORS_ORIGINS`` pass. The two routes that take agent
   definitions (``POST /api/agents``, ``POST /api/agents/import``) also take YAML
   (``application/yaml``, RFC 9512, and its older names ``application/x-yaml``, ``text/yaml``):
   none of them is CORS-safelisted either, so the same preflight stands in front of them.

``OPTIONS`` (preflights) and other methods meet rules 1 and 2 only (and 3 on ``/mcp``). ``/healthz`` meets none:
health probes address the edge by its IP address (Kubernetes sends the pod's IP as ``Host``), and
it shows no tenant's data.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from quart import Quart, request

from agentstream.settings import Settings
from edge.errors import ApiError
from edge.gate import PUBLIC_PATHS, SSE_GET_ENDPOINTS

ORIGIN_CHECKED_PATHS = frozenset({"/mcp"})
"""Paths whose every request (not only a POST) meets the Origin rule."""
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
"""Names every edge serves unless EDGE_ALLOWED_HOSTS says otherwise (IPv6 without brackets)."""
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
"""Media types of a YAML body: RFC 9512's, and the names used before it. None is CORS-safelisted."""
YAML_POST_ENDPOINTS = frozenset({"agents.create_agent", "agents.import_agents"})
"""The POST routes that take YAML as well as JSON (agent definitions, edge.api_agents)."""
_WILDCARDS = ("0.0.0.0", "::", "")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostRule:
    """Which ``Host`` values an edge serves. ``any_host``: all; ``names``: host names with any
    port; ``exact``: ``(name, port)`` pairs; ``domains``: suffixes (``.example.com``) matching the
    domain and its subdomains. Names are lower-case, IPv6 addresses without brackets."""

    any_host: bool = False
    names: frozenset[str] = frozenset()
    exact: frozenset[tuple[str, int]] = frozenset()
    domains: tuple[str, ...] = ()

    def allows(self, host: str, port: int | None) -> bool:
        """True when ``host`` (normalised, see :func:`split_host`) with ``port`` is served."""
        if self.any_host or host in self.names:
            return True
        if port is not None and (host, port) in self.exact:
            return True
        return any(host == d[1:] or host.endswith(d) for d in self.domains)


def host_rule(allowed_hosts: str, bind: str, hostname: str | None = None) -> HostRule:
    """The rule from ``EDGE_ALLOWED_HOSTS`` (comma-separated entries, see the module docstring)
    or, when that is blank, the default for an edge bound to ``bind`` (``host:port``).
    ``hostname``: this machine's name (default ``socket.gethostname()``), allowed by default
    only when bound to all addresses. Raises ValueError naming EDGE_ALLOWED_HOSTS for an entry
    that is not a host name, address or ``name:port``."""
    entries = [e.strip() for e in allowed_hosts.split(",") if e.strip()]
    if not entries:
        bound = _bind_host(bind)
        names = set(LOOPBACK_NAMES)
        if bound in _WILDCARDS:
            names.add(_normal(hostname if hostname is not None else socket.gethostname()))
        else:
            names.add(bound)
        return HostRule(names=frozenset(n for n in names if n))
    if "*" in entries:
        return HostRule(any_host=True)
    names, exact, domains = set(), set(), []
    for entry in entries:
        if entry.startswith("."):
            domains.append(_normal(entry))
            continue
        parsed = split_host(entry)
        if parsed is None:
            raise ValueError(f"EDGE_ALLOWED_HOSTS: {entry!r} is not a host name, address, host:port or .domain")
        host, port = parsed
        if port is None:
            names.add(host)
        else:
            exact.add((host, port))
    return HostRule(names=frozenset(names), exact=frozenset(exact), domains=tuple(domains))


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` header value (RFC 9110 §7.2: ``host[:port]``, IPv6 in brackets) as a lower-case
    host without brackets or trailing dot, and the port if given; None when malformed."""
    value = value.strip()
    if not value or any(c in value for c in "/\\@?# \t"):
        return None
    port: int | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        if rest:
            if not rest.startswith(":"):
                return None
            port = _port(rest[1:])
            if port is None:
                return None
        return host.lower(), port
    if value.count(":") > 1:
        return None  # a bare IPv6 address: not a valid Host
    host, sep, raw_port = value.partition(":")
    if sep:
        port = _port(raw_port)
        if port is None:
            return None
    host = _normal(host)
    return (host, port) if host else None


def check(
    *, method: str, path: str, host: str | None, endpoint: str | None, has_api_key_param: bool, mimetype: str,
    origin: str | None, sec_fetch_site: str | None, hosts: HostRule, cors_origins: frozenset[str],
) -> None:
    """Apply the rules of the module docstring to one request. Raises :class:`ApiError` (421,
    401, 403 or 415) naming the field at fault. ``mimetype``: the Content-Type without
    parameters, lower-case ("" if none); ``cors_origins``: EDGE_CORS_ORIGINS, normalised."""
    if path in PUBLIC_PATHS:
        return
    parsed = split_host(host) if host else None
    if parsed is None or not hosts.allows(*parsed):
        shown = (host or "")[:100]
        raise ApiError(421, "misdirected_request",
                       f"this edge does not serve the host {shown!r}; the operator lists the names it serves "
                       "in EDGE_ALLOWED_HOSTS", "Host")
    if has_api_key_param and endpoint not in SSE_GET_ENDPOINTS:
        raise ApiError(401, "unauthorized",
                       "?api_key= is taken only by the SSE routes (GET /api/runs/{id}/events, "
                       "GET /api/agents/{name}/sse), for a browser EventSource; send 'Authorization: Bearer KEY'",
                       "api_key")
    if method != "POST" and path not in ORIGIN_CHECKED_PATHS:
        return
    if origin is not None:
        if not _origin_allowed(origin, parsed, cors_origins):
            raise ApiError(403, "forbidden",
                           f"requests from web pages of {origin[:100]!r} are not allowed; the operator lists the "
                           "origins that may call this edge in EDGE_CORS_ORIGINS", "Origin")
    elif (sec_fetch_site or "").strip().lower() == "cross-site" and "*" not in cors_origins:
        raise ApiError(403, "forbidden",
                       "requests from web pages of other sites are not allowed (Sec-Fetch-Site: cross-site); the "
                       "operator lists the origins that may call this edge in EDGE_CORS_ORIGINS", "Origin")
    if method != "POST" or mimetype == "application/json" or (endpoint in YAML_POST_ENDPOINTS
                                                            and mimetype in YAML_TYPES):
        return
    if endpoint in YAML_POST_ENDPOINTS:
        raise ApiError(415, "unsupported_media_type", "send the body as JSON ('Content-Type: application/json') or "
                       "YAML ('Content-Type: application/yaml')", "Content-Type")
    raise ApiError(415, "unsupported_media_type",
                   "send the body as JSON with 'Content-Type: application/json'", "Content-Type")


def normal_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` lower-case with the scheme's default port left out, or None
    when ``origin`` is not a serialised http(s) origin (``null`` included)."""
    parts = _origin_parts(origin)
    if parts is None:
        return None
    scheme, host, port = parts
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" if port == _DEFAULT_PORTS[scheme] else f"{scheme}://{shown}:{port}"


def install(app: Quart, settings: Settings) -> None:
    """Check every request of ``app`` with :func:`check`, before any route (``before_request``;
    install it before edge.gate, so that nothing is authenticated or counted for a request these
    rules refuse). Raises ValueError for a bad EDGE_ALLOWED_HOSTS."""
    hosts = host_rule(settings.edge_allowed_hosts, settings.edge_bind)
    listed = [o.strip() for o in settings.edge_cors_origins.split(",") if o.strip()]
    cors_origins = frozenset("*" if o == "*" else (normal_origin(o) or o) for o in listed)

    @app.before_request
    async def guard() -> None:
        check(
            method=request.method, path=request.path, host=request.headers.get("Host"), endpoint=request.endpoint,
            has_api_key_param="api_key" in request.args, mimetype=(request.mimetype or "").lower(),
            origin=request.headers.get("Origin"), sec_fetch_site=request.headers.get("Sec-Fetch-Site"),
            hosts=hosts, cors_origins=cors_origins,
        )


def _origin_allowed(origin: str, host: tuple[str, int | None], cors_origins: frozenset[str]) -> bool:
    if "*" in cors_origins:
        return True
    parts = _origin_parts(origin)
    if parts is None:
        return False  # "null" (sandboxed pages, file:) or malformed
    scheme, origin_host, origin_port = parts
    request_host, request_port = host
    if origin_host == request_host and origin_port == (request_port or _DEFAULT_PORTS[scheme]):
        return True  # the edge's own pages
    return normal_origin(origin) in cors_origins


def _origin_parts(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    return scheme, _normal(parts.hostname), port if port is not None else _DEFAULT_PORTS[scheme]


def _bind_host(bind: str) -> str:
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    return _normal(host.strip("[]"))


def _normal(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _port(raw: str) -> int | None:
    if not raw.isdigit() or len(raw) > 5 or not 0 < int(raw) < 65536:
        return None
    return int(raw)

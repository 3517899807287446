"""Origins of model servers, and which ones agents created over the API may name.

An origin is a URL's scheme, host and port (RFC 6454 §4). Keys go only to the origins the operator
chose (agent_runner.endpoint), and agents that tenants create over the API may name only the model
servers the operator lists (:class:`ModelServers`): otherwise any tenant with a key could have the
agent runners send requests, and the keys they hold, to a server of its choosing (its own, or an
address inside the operator's network).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def origin(url: str) -> Origin | None:
    """``(scheme, host, port)`` of an http(s) URL, lower-cased, the port filled in from the scheme;
    None when ``url`` has no such origin (another scheme, no host, a bad port)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def same_origin(a: str, b: str) -> bool:
    """True when both URLs have the same origin (and have one)."""
    first = origin(a)
    return first is not None and first == origin(b)


@dataclass(frozen=True)
class ModelServers:
    """The model servers an agent created over the API may name in ``llm.base_url``: the origins
    of ``AGENTS_LLM_ORIGINS`` and of ``LLM_BASE_URL`` (``allowed``)."""

    allowed: frozenset[Origin] = frozenset()

    @classmethod
    def of(cls, listed: str, llm_base_url: str | None = None) -> ModelServers:
        """From ``AGENTS_LLM_ORIGINS`` (comma-separated URLs or origins) and ``LLM_BASE_URL``.
        Raises ValueError naming AGENTS_LLM_ORIGINS for an entry that is not an http(s) URL."""
        allowed: set[Origin] = set()
        for entry in (e.strip() for e in listed.split(",")):
            if not entry:
                continue
            found = origin(entry)
            if found is None:
                raise ValueError(f"AGENTS_LLM_ORIGINS: {entry!r} is not an http(s) URL or origin")
            allowed.add(found)
        if llm_base_url and (default := origin(llm_base_url)) is not None:
            allowed.add(default)
        return cls(frozenset(allowed))

    def allows(self, url: str) -> bool:
        """True when ``url``'s origin is one of the allowed."""
        found = origin(url)
        return found is not None and found in self.allowed

    def refusal(self, url: str) -> str:
        """Why ``llm.base_url: url`` is refused (for an error naming that field)."""
        return (f"{url[:200]!r} is not a model server agents created over the API may use; the operator lists "
                "those in AGENTS_LLM_ORIGINS" + ("" if self.allowed else " (empty: only LLM_BASE_URL)"))

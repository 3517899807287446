"""Who is calling: API keys mapped to tenants through a keys file.

Keys file (``KEYS_FILE``, YAML)::

    tenants:
      acme:
        keys:
          - sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
          - a-plain-key-for-development
        agents: [programmer-helper]     # optional: the agents this tenant may use (default: all)

A key is given as ``sha256:<hex of the key's SHA-256>`` (recommended: the file then holds no
secret) or as the plain key. Requests carry ``Authorization: Bearer KEY``; SSE endpoints also
accept ``?api_key=KEY``, because a browser ``EventSource`` cannot set headers.

With no keys file the edge serves a single tenant, ``default``, to everyone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from edge.errors import ApiError
from schemas.subjects import is_token

DEFAULT_TENANT = "default"


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the problem."""


@dataclass(frozen=True)
class Tenant:
    """A caller's tenant: its ``name`` and the agents it may use (None: all)."""

    name: str
    agents: frozenset[str] | None = None

    def may_use(self, agent: str) -> bool:
        return self.agents is None or agent in self.agents


class Authenticator:
    """Maps a request's key to its :class:`Tenant`. Without keys: everyone is ``default``."""

    def __init__(self, tenants_by_digest: dict[bytes, Tenant] | None):
        self._by_digest = tenants_by_digest

    @property
    def open(self) -> bool:
        """True when no keys file is configured (single tenant, no key needed)."""
        return self._by_digest is None

    @classmethod
    def from_file(cls, path: Path | None) -> Authenticator:
        """Load ``path`` (None: open, single tenant). Raises KeysFileError."""
        if path is None:
            return cls(None)
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise KeysFileError(f"keys file {path}: {err}") from None
        tenants = (doc or {}).get("tenants") if isinstance(doc, dict) else None
        if not isinstance(tenants, dict) or not tenants:
            raise KeysFileError(f"keys file {path}: expected a 'tenants:' mapping")
        by_digest: dict[bytes, Tenant] = {}
        for name, spec in tenants.items():
            if not is_token(name):
                raise KeysFileError(f"keys file {path}: tenant name {name!r} must be 1-64 of A-Z a-z 0-9 _ -")
            if not isinstance(spec, dict) or not isinstance(spec.get("keys"), list) or not spec["keys"]:
                raise KeysFileError(f"keys file {path}: tenant {name!r} needs a non-empty 'keys' list")
            agents = spec.get("agents")
            if agents is not None and not (isinstance(agents, list) and all(isinstance(a, str) for a in agents)):
                raise KeysFileError(f"keys file {path}: tenant {name!r}: 'agents' must be a list of names")
            tenant = Tenant(name, frozenset(agents) if agents is not None else None)
            for key in spec["keys"]:
                if not isinstance(key, str) or not key:
                    raise KeysFileError(f"keys file {path}: tenant {name!r}: keys must be non-empty strings")
                digest = _digest_of_entry(key, path, name)
                if digest in by_digest and by_digest[digest].name != name:
                    raise KeysFileError(f"keys file {path}: a key is listed for two tenants")
                by_digest[digest] = tenant
        return cls(by_digest)

    def tenant_for(self, authorization: str | None, api_key_param: str | None = None) -> Tenant:
        """The tenant of a request. Raises ApiError 401 for a missing or unknown key."""
        if self._by_digest is None:
            return Tenant(DEFAULT_TENANT)
        key = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                key = value.strip()
        if key is None and api_key_param:
            key = api_key_param
        if not key:
            raise ApiError(
                401, "unauthorized", "an API key is required: send 'Authorization: Bearer KEY'", "Authorization"
            )
        tenant = self._by_digest.get(hashlib.sha256(key.encode()).digest())
        if tenant is None:
            raise ApiError(401, "unauthorized", "unknown API key", "Authorization")
        return tenant


def _digest_of_entry(entry: str, path: Path, tenant: str) -> bytes:
    if entry.startswith("sha256:"):
        hexpart = entry[len("sha256:"):]
        try:
            digest = bytes.fromhex(hexpart)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise KeysFileError(f"keys file {path}: tenant {tenant!r}: 'sha256:' must be followed by 64 hex digits")
        return digest
    return hashlib.sha256(entry.encode()).digest()

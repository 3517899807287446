"""Who is calling: API keys mapped to tenants through the keys file (schemas/tenants.py), re-read
when it changes.

Requests carry ``Authorization: Bearer KEY``; the SSE routes also accept ``?api_key=KEY``, because
a browser ``EventSource`` cannot set headers. With no keys file the edge serves one tenant,
``default``, to everyone.

The file is checked for changes every ``KEYS_FILE_POLL`` seconds (:meth:`Authenticator.reload`):
a valid new file takes effect at once (a revoked key is refused from then on, and the edge ends
its open streams); a bad one is logged with the file, field and reason, and the last good file
stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from edge.errors import ApiError
from schemas.tenants import DEFAULT_TENANT, KeyEntry, KeysFile, TenantPolicy

log = logging.getLogger(__name__)

MAX_KEYS_FILE_BYTES = 4 * 1024 * 1024


class KeysFileError(ValueError):
    """The keys file cannot be used. ``file``, ``field`` (dotted path or None) and ``reason``."""

    def __init__(self, file: Path, field: str | None, reason: str):
        self.file, self.field, self.reason = file, field, reason
        super().__init__(f"keys file {file}: {field + ': ' if field else ''}{reason}")


@dataclass(frozen=True, slots=True)
class Tenant:
    """A caller: its tenant's ``policy`` and, when it sent a key, the key's ``digest`` (SHA-256)
    and per-key limits (``key``)."""

    policy: TenantPolicy
    digest: bytes | None = None
    key: KeyEntry | None = None

    @property
    def name(self) -> str:
        """The tenant's name (the first token of every subject its requests touch)."""
        return self.policy.tenant

    @property
    def key_id(self) -> str | None:
        """A short public name of the key (16 hex digits of its SHA-256; never the key)."""
        return self.digest.hex()[:16] if self.digest is not None else None

    def may_use(self, agent: str) -> bool:
        """True when the tenant's allow-list (if any) names ``agent``."""
        return self.policy.may_use(agent)


@dataclass(frozen=True)
class KeyRing:
    """One parsed keys file: callers by key digest, and every tenant's policy."""

    by_digest: dict[bytes, Tenant]
    policies: dict[str, TenantPolicy]


def parse_keys_file(path: Path) -> KeyRing:
    """Read and validate the keys file. Raises KeysFileError naming the field."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_KEYS_FILE_BYTES + 1)
    except OSError as err:
        raise KeysFileError(path, None, f"cannot read ({err.strerror or err})") from None
    if len(raw) > MAX_KEYS_FILE_BYTES:
        raise KeysFileError(path, None, f"larger than {MAX_KEYS_FILE_BYTES} bytes")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KeysFileError(path, None, f"YAML syntax error{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(doc, dict):
        raise KeysFileError(path, None, "expected a mapping with 'tenants:'")
    try:
        parsed = KeysFile.model_validate(doc)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        reason = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise KeysFileError(path, field, reason) from None
    by_digest: dict[bytes, Tenant] = {}
    policies: dict[str, TenantPolicy] = {}
    for name, entry in parsed.tenants.items():
        policy = entry.policy(name)
        policies[name] = policy
        for key in entry.key_entries():
            digest = key.digest()
            by_digest[digest] = Tenant(policy, digest, key)
    return KeyRing(by_digest, policies)


class Authenticator:
    """Maps a request's key to its :class:`Tenant`. Without a keys file: everyone is ``default``."""

    def __init__(self, ring: KeyRing | None, path: Path | None = None):
        self._ring = ring
        self.path = path
        self._stamp = _stamp(path) if path is not None else None
        self.problem: str | None = None
        """Why the keys file on disk is not the one in force (None: it is)."""
        self._open = Tenant(TenantPolicy.open_default())

    @property
    def open(self) -> bool:
        """True when no keys file is configured (single tenant, no key needed)."""
        return self._ring is None

    @property
    def policies(self) -> dict[str, TenantPolicy]:
        """Every tenant's policy (in open mode: the ``default`` tenant's)."""
        if self._ring is None:
            return {DEFAULT_TENANT: self._open.policy}
        return self._ring.policies

    @classmethod
    def from_file(cls, path: Path | None) -> Authenticator:
        """Load ``path`` (None: open, single tenant). Raises KeysFileError."""
        if path is None:
            return cls(None)
        return cls(parse_keys_file(path), path)

    def reload(self) -> set[bytes] | None:
        """Re-read the keys file if it changed. Returns the digests of keys no longer valid (or
        whose tenant changed) when a new file took effect, None when nothing changed or the new
        file is bad (logged; the last good file stays in force)."""
        if self.path is None or self._ring is None:
            return None
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            ring = parse_keys_file(self.path)
        except KeysFileError as err:
            log.error("%s; keeping the keys file that was last valid", err)
            self.problem = str(err)
            return None
        old = self._ring
        self._ring = ring
        self.problem = None
        gone = {d for d, t in old.by_digest.items() if d not in ring.by_digest or ring.by_digest[d].name != t.name}
        log.info("keys file %s reloaded: %d tenant(s), %d key(s); %d key(s) revoked",
                 self.path, len(ring.policies), len(ring.by_digest), len(gone))
        return gone

    def tenant_for(self, authorization: str | None, api_key_param: str | None = None) -> Tenant:
        """The caller of a request. Raises ApiError 401 for a missing or unknown key."""
        if self._ring is None:
            return self._open
        key = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                key = value.strip()
        if key is None and api_key_param:
            key = api_key_param
        if not key:
            raise ApiError(401, "unauthorized", "an API key is required: send 'Authorization: Bearer KEY'",
                           "Authorization")
        tenant = self._ring.by_digest.get(hashlib.sha256(key.encode()).digest())
        if tenant is None:
            raise ApiError(401, "unauthorized", "unknown API key", "Authorization")
        return tenant


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file: inode, size and modification time (ns); None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)

"""Tenants: the keys file (API keys and per-tenant limits) and the policy every component applies.

The keys file (``KEYS_FILE``, YAML) maps API keys to tenants and sets each tenant's limits::

    tenants:
      acme:
        keys:
          - sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
          - {key: a-plain-dev-key, requests_per_minute: 60, burst: 10}
        agents: [programmer-helper]     # optional: the agents this tenant may use (default: all)
        max_concurrent_runs: 8          # its runs worked on at once, across all runners
        max_queued_runs: 1000           # its runs waiting; a submit over it gets 429
        requests_per_minute: 600        # HTTP requests of the whole tenant (all its keys)
        burst: 60                       # requests allowed at once above the steady rate
        max_streams: 100                # open SSE streams per key

A key is ``sha256:<hex of the key's SHA-256>`` (recommended: the file then holds no secret) or the
plain key; an entry may also be an object with ``key`` and its own ``requests_per_minute`` /
``burst``. Limits are positive integers: a negative number, zero, text or a fraction is an error
naming the field (never a silent "unlimited").

:class:`TenantPolicy` is the part of a tenant's entry other components need (no keys): edges
publish it to the TENANTS bucket; agent runners read it there.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from pydantic import Field, StrictInt, StringConstraints, field_validator, model_validator

from schemas.common import Strict, Token

DEFAULT_TENANT = "default"
"""The one tenant of an edge without a keys file."""

DEFAULT_MAX_CONCURRENT_RUNS = 64
DEFAULT_MAX_QUEUED_RUNS = 10_000
DEFAULT_REQUESTS_PER_MINUTE = 6_000
DEFAULT_BURST = 300
DEFAULT_MAX_STREAMS = 500
UNLIMITED_CONCURRENT_RUNS = 100_000
"""``max_concurrent_runs`` of the open single tenant (no keys file): the runners' capacity decides."""

PositiveInt = Annotated[StrictInt, Field(ge=1, le=10_000_000)]
KeyText = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class KeyEntry(Strict):
    """One API key: ``key`` (plain, or ``sha256:`` + 64 hex digits) with optional per-key limits."""

    key: KeyText
    requests_per_minute: PositiveInt | None = None
    burst: PositiveInt | None = None

    @field_validator("key")
    @classmethod
    def _digest_form(cls, key: str) -> str:
        if key.startswith("sha256:"):
            hexpart = key.removeprefix("sha256:")
            if len(hexpart) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexpart):
                raise ValueError("'sha256:' must be followed by 64 hex digits")
        return key

    def digest(self) -> bytes:
        """The SHA-256 of the key (what requests are matched by)."""
        if self.key.startswith("sha256:"):
            return bytes.fromhex(self.key.removeprefix("sha256:"))
        return hashlib.sha256(self.key.encode()).digest()


class TenantPolicy(Strict):
    """What a tenant may do, as every component applies it (no keys). Stored in the TENANTS bucket
    under the tenant's name. ``agents``: None means every agent."""

    tenant: Token
    agents: list[Token] | None = None
    max_concurrent_runs: PositiveInt = DEFAULT_MAX_CONCURRENT_RUNS
    max_queued_runs: PositiveInt | None = DEFAULT_MAX_QUEUED_RUNS
    requests_per_minute: PositiveInt | None = DEFAULT_REQUESTS_PER_MINUTE
    burst: PositiveInt = DEFAULT_BURST
    max_streams: PositiveInt | None = DEFAULT_MAX_STREAMS

    def may_use(self, agent: str) -> bool:
        """True when the tenant's allow-list (if any) names ``agent``."""
        return self.agents is None or agent in self.agents

    @classmethod
    def open_default(cls) -> TenantPolicy:
        """The policy of the single tenant of an edge without a keys file: no limits of its own."""
        return cls(tenant=DEFAULT_TENANT, max_concurrent_runs=UNLIMITED_CONCURRENT_RUNS, max_queued_runs=None,
                   requests_per_minute=None, max_streams=None)


class TenantEntry(Strict):
    """One tenant's entry in the keys file (see the module docstring)."""

    keys: list[KeyText | KeyEntry] = Field(min_length=1)
    agents: list[Token] | None = None
    max_concurrent_runs: PositiveInt = DEFAULT_MAX_CONCURRENT_RUNS
    max_queued_runs: PositiveInt = DEFAULT_MAX_QUEUED_RUNS
    requests_per_minute: PositiveInt = DEFAULT_REQUESTS_PER_MINUTE
    burst: PositiveInt = DEFAULT_BURST
    max_streams: PositiveInt = DEFAULT_MAX_STREAMS

    def key_entries(self) -> list[KeyEntry]:
        """Every key as a :class:`KeyEntry` (plain strings become entries without limits)."""
        return [k if isinstance(k, KeyEntry) else KeyEntry(key=k) for k in self.keys]

    def policy(self, name: str) -> TenantPolicy:
        """The tenant's policy (everything but its keys)."""
        return TenantPolicy(tenant=name, **self.model_dump(exclude={"keys"}))


class KeysFile(Strict):
    """The whole keys file: ``tenants`` by name. Validation errors name the field
    (``tenants.acme.max_queued_runs``)."""

    tenants: dict[Token, TenantEntry] = Field(min_length=1)

    @field_validator("tenants", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of tenant names to their entries")
        return value

    @model_validator(mode="after")
    def _one_tenant_per_key(self) -> KeysFile:
        owner: dict[bytes, str] = {}
        for name, entry in self.tenants.items():
            for key in entry.key_entries():
                digest = key.digest()
                if owner.get(digest, name) != name:
                    raise ValueError(f"a key of tenant {name!r} is also listed for tenant {owner[digest]!r}")
                owner[digest] = name
        return self

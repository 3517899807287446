"""Tenant policies on the bus: edges publish them from the keys file to the TENANTS bucket; agent
runners watch the bucket and apply them (per-tenant consumers, allow-lists, limits).

Every edge publishes the policies of the keys file it holds, after start-up and after each
reload: an entry is written only when it differs from what is stored, and entries of tenants no
longer in the file are deleted. Every edge of a deployment must therefore hold the same keys
file (as they must anyway, to authenticate the same callers).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from agentstream.eventlog import direct_get_batch
from agentstream.kvwatch import BucketEntry, BucketWatcher
from schemas import subjects
from schemas.tenants import TenantPolicy

log = logging.getLogger(__name__)


async def stored_policies(nc: NATS) -> dict[str, bytes]:
    """The TENANTS bucket's entries now (tenant name -> stored JSON), in one batched read."""
    prefix = f"$KV.{subjects.TENANTS_BUCKET}."
    request = {"multi_last": [f"{prefix}>"], "batch": 10_000}
    msgs, _ = await direct_get_batch(nc, f"KV_{subjects.TENANTS_BUCKET}", request, what="tenant policies")
    stored: dict[str, bytes] = {}
    for msg in msgs:
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            continue
        stored[msg.subject.removeprefix(prefix)] = msg.data
    return stored


async def publish_policies(nc: NATS, kv: KeyValue, policies: dict[str, TenantPolicy]) -> int:
    """Make the TENANTS bucket hold exactly ``policies``; returns how many entries changed.
    Raises EventLogError or a nats error when the bucket cannot be read or written."""
    stored = await stored_policies(nc)
    changed = 0
    for name, policy in policies.items():
        value = policy.model_dump_json().encode()
        if stored.get(name) != value:
            await kv.put(name, value)
            changed += 1
    for name in set(stored) - set(policies):
        await kv.delete(name)
        changed += 1
    return changed


PolicyCallback = Callable[[str, TenantPolicy | None], Awaitable[None]]
"""Called with a tenant's name and its new policy (None: the tenant was removed)."""


class PolicyWatcher:
    """The tenant policies as the TENANTS bucket holds them now, kept current by a
    :class:`agentstream.kvwatch.BucketWatcher` (the latest entry of every key, then each change).

    ``on_change`` is awaited for every change (also for each entry present at start), one at a
    time, in stream order.
    """

    def __init__(self, js: JetStreamContext, on_change: PolicyCallback | None = None):
        self.js = js
        self.on_change = on_change
        self.policies: dict[str, TenantPolicy] = {}
        self._watcher = BucketWatcher(js, subjects.TENANTS_BUCKET, self._apply)
        self.ready = self._watcher.ready

    def get(self, tenant: str) -> TenantPolicy | None:
        """The tenant's policy, or None when it has none (unknown tenant)."""
        return self.policies.get(tenant)

    async def start(self, within: float = 30.0) -> None:
        """Start watching; returns once the entries present now were applied (TimeoutError after
        ``within`` seconds)."""
        await self._watcher.start(within)

    async def stop(self) -> None:
        """Stop watching."""
        await self._watcher.stop()

    async def _apply(self, entry: BucketEntry) -> None:
        name = entry.key
        policy: TenantPolicy | None = None
        if entry.value:
            try:
                policy = TenantPolicy.model_validate_json(entry.value)
            except ValidationError as err:
                log.error("tenant %s: unreadable policy ignored: %s", name, err)
                return
        if policy is None:
            if self.policies.pop(name, None) is None:
                return
        else:
            if self.policies.get(name) == policy:
                return
            self.policies[name] = policy
        if self.on_change is not None:
            await self.on_change(name, policy)

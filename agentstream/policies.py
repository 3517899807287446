"""Tenant policies on the bus: edges publish them from the keys file to the TENANTS bucket; agent
runners watch the bucket and apply them (per-tenant consumers, allow-lists, limits).

Every edge publishes the policies of the keys file it holds, after start-up and after each
reload: an entry is written only when it differs from what is stored, and entries of tenants no
longer in the file are deleted. Every edge of a deployment must therefore hold the same keys
file (as they must anyway, to authenticate the same callers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue
from pydantic import ValidationError

from agentstream.eventlog import direct_get_batch
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
    """The tenant policies as the TENANTS bucket holds them now, kept current by an ordered
    consumer on the bucket's stream (the latest entry of every key, then each change).

    ``on_change`` is awaited for every change (also for each entry present at start), one at a
    time, in stream order.
    """

    def __init__(self, js: JetStreamContext, on_change: PolicyCallback | None = None):
        self.js = js
        self.on_change = on_change
        self.policies: dict[str, TenantPolicy] = {}
        self.ready = asyncio.Event()
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PushSubscription | None = None

    def get(self, tenant: str) -> TenantPolicy | None:
        """The tenant's policy, or None when it has none (unknown tenant)."""
        return self.policies.get(tenant)

    async def start(self, within: float = 30.0) -> None:
        """Start watching; returns once the entries present now were applied (TimeoutError after
        ``within`` seconds)."""
        stream = f"KV_{subjects.TENANTS_BUCKET}"
        info = await self.js.stream_info(stream)
        if info.state.messages == 0:
            self.ready.set()
        self._task = asyncio.create_task(self._apply_all())
        self._sub = await self.js.subscribe(
            f"$KV.{subjects.TENANTS_BUCKET}.>", stream=stream, cb=self._queue.put, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        )
        await asyncio.wait_for(self.ready.wait(), within)

    async def stop(self) -> None:
        """Stop watching."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _apply_all(self) -> None:
        prefix = f"$KV.{subjects.TENANTS_BUCKET}."
        while True:
            msg = await self._queue.get()
            try:
                await self._apply(msg.subject.removeprefix(prefix), msg.data, (msg.headers or {}).get("KV-Operation"))
            except Exception:
                log.exception("applying the policy of %s failed", msg.subject)
            with contextlib.suppress(Exception):
                if msg.metadata.num_pending == 0:
                    self.ready.set()

    async def _apply(self, name: str, value: bytes | None, operation: str | None) -> None:
        policy: TenantPolicy | None = None
        if operation not in ("DEL", "PURGE") and value:
            try:
                policy = TenantPolicy.model_validate_json(value)
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

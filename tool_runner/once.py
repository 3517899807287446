"""Tool calls with side effects executed once across every tool runner.

A tool call is identified by its idempotency key (``{run_id}:{step}:{tool_call_id}``: the same for
every retry of the call, on any tool runner, after any crash). For a tool with side effects
(``ToolSpec.side_effects``) the tool runner keeps, in the TOOL_RESULTS bucket under
``{tenant}.{sha256(key)}``:

1. a **claim** before executing: ``{"state": "running", "runner", "expires"}``, written only if
   the key has no entry (compare-and-set), and renewed every third of ``claim_ttl`` while the
   call runs;
2. the **result** when done: ``{"state": "done", "result": <ToolCallResult>}``.

A retried call that finds a result returns it without executing; one that finds a live claim
waits for the result (polling every :data:`POLL` seconds, up to its own deadline); one that finds
a claim whose runner stopped renewing it (the runner died mid-call) takes the claim over and
executes the call: only then, when the first execution's outcome is unknowable, can a side
effect happen twice. An agent runner that dies while a tool runner works (the common case: the
agent runner waits on the model and tools for most of a run) never causes a second execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.js.kv import KeyValue

from schemas import subjects

log = logging.getLogger(__name__)

POLL = 0.2
"""Seconds between looks at a call another tool runner is executing."""


class StoreUnavailable(Exception):
    """The TOOL_RESULTS bucket cannot be reached: the call is not executed (the caller retries)."""


class ResultStore:
    """Claims and results of side-effecting tool calls. ``claim_ttl``: seconds a claim lives
    without renewal (a runner silent that long is presumed dead)."""

    def __init__(self, kv: KeyValue, runner: str, *, claim_ttl: float = 10.0, clock: Callable[[], float] = time.time):
        self.kv = kv
        self.runner = runner
        self.claim_ttl = claim_ttl
        self.clock = clock

    async def once(self, tenant: str, key: str, execute: Callable[[], Awaitable[bytes]], *, within: float) -> bytes:
        """The result of the call ``key`` of ``tenant``: stored, awaited from the runner executing
        it, or from ``execute()`` (whose bytes, a serialized ToolCallResult, are stored).

        ``within``: seconds to wait for another runner's result. Raises StoreUnavailable (bucket
        unreachable), TimeoutError (another runner's call outlasted ``within``).
        """
        kv_key = subjects.tool_result_key(tenant, key)
        deadline = asyncio.get_running_loop().time() + within
        while True:
            entry = await self._get(kv_key)
            if entry is None:
                revision = await self._claim(kv_key, last=0)
            else:
                value, revision = entry
                if value.get("state") == "done":
                    return orjson.dumps(value["result"])
                if float(value.get("expires", 0)) > self.clock():
                    if asyncio.get_running_loop().time() > deadline:
                        raise TimeoutError(f"tool call {key} still running on {value.get('runner')}")
                    await asyncio.sleep(POLL)
                    continue
                log.warning("tool call %s: its claim by %s expired; executing it here", key, value.get("runner"))
                revision = await self._claim(kv_key, last=revision)
            if revision is None:
                continue  # another runner claimed it first: look again
            return await self._execute(kv_key, revision, execute)

    async def _execute(self, kv_key: str, revision: int, execute: Callable[[], Awaitable[bytes]]) -> bytes:
        holder = {"revision": revision}
        stop = asyncio.Event()
        renew = asyncio.create_task(self._renew(kv_key, holder, stop))
        try:
            result = await execute()
        finally:
            # Stopped by the event, not only by cancelling: Python 3.11's wait_for (inside nats-py's
            # request) can swallow a cancellation that arrives as its reply does (CPython gh-86296).
            stop.set()
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
        done = orjson.dumps({"state": "done", "result": orjson.loads(result)})
        try:
            await self.kv.update(kv_key, done, last=holder["revision"])
        except nats.js.errors.KeyWrongLastSequenceError:
            await self.kv.put(kv_key, done)  # our claim was taken over: the result is ours all the same
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.warning("result of tool call %s not stored: %s", kv_key, err)
        return result

    async def _renew(self, kv_key: str, holder: dict[str, int], stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.claim_ttl / 3)
            if stop.is_set():
                return
            try:
                holder["revision"] = await self.kv.update(kv_key, self._claim_value(), last=holder["revision"])
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("tool call %s: another runner took the claim over", kv_key)
                return
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
                log.warning("tool call %s: claim not renewed: %s", kv_key, err)

    def _claim_value(self) -> bytes:
        return orjson.dumps({"state": "running", "runner": self.runner, "expires": self.clock() + self.claim_ttl})

    async def _claim(self, kv_key: str, *, last: int) -> int | None:
        """Write our claim if the entry is still at revision ``last`` (0: absent); its revision, or None."""
        try:
            if last:
                return await self.kv.update(kv_key, self._claim_value(), last=last)
            return await self.kv.create(kv_key, self._claim_value())
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            raise StoreUnavailable(str(err)) from err

    async def _get(self, kv_key: str) -> tuple[dict[str, Any], int] | None:
        try:
            entry = await self.kv.get(kv_key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            raise StoreUnavailable(str(err)) from err
        try:
            value = orjson.loads(entry.value or b"{}")
        except orjson.JSONDecodeError:
            value = {}
        return (value if isinstance(value, dict) else {}), int(entry.revision or 0)

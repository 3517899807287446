"""Writing one run's events to ``runs.{tenant}.{agent}.{run_id}``: in order, exactly once, by
exactly one writer.

- **Order and single writer.** Every publish carries ``Nats-Expected-Last-Subject-Sequence``: the
  sequence of the run's previous event. If another attempt of the run (a runner that took over
  after this one was presumed dead) wrote in between, the server refuses the publish and this
  writer raises :class:`OwnershipLost`: the stale attempt stops without writing anything more.
- **Exactly once.** Each event has a ``Nats-Msg-Id`` of ``{run_id}:{attempt}:{n}``. A publish
  whose acknowledgement was lost (timeout, NATS restart) is retried; if the first try was in fact
  stored, the server's "wrong last sequence" answer is checked against the stored event's id and
  treated as success.
- **Coalescing.** Text deltas are buffered and written at most every ``flush_interval`` seconds
  (a number, or a function the runner uses to coalesce more when it holds many runs)
  (or as soon as ``flush_bytes`` accumulate), so a fast model does not become one JetStream
  message per token; the first delta after a quiet spell goes out at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from pydantic import BaseModel

from agent_runner.metrics import RunMetrics
from agentstream.eventlog import APPEND_RETRY_SECONDS, WriteConflict, append
from schemas import events as E

OwnershipLost = WriteConflict
"""Another attempt of this run wrote to its subject: this attempt must stop, silently."""


class RunEventWriter:
    """Writes the events of one run attempt.

    ``subject``: the run's event subject; ``envelope``: ``run_id, tenant, agent, message_id,
    attempt``; ``last_seq``: sequence of the run's latest stored event (0 if none); ``on_end``:
    awaited with the terminal event's type, its data and the answer once it is stored; ``metrics``:
    where the attempt's start, first text and end are reported (agent_runner.metrics).
    """

    def __init__(
        self,
        nc: NATS,
        subject: str,
        envelope: dict[str, Any],
        last_seq: int,
        *,
        flush_interval: float | Callable[[], float] = 0.02,
        flush_bytes: int = 4096,
        event_max_bytes: int = 900 * 1024,
        storage_patience: float = APPEND_RETRY_SECONDS,
        on_end: Callable[[str, BaseModel, str | None], Awaitable[None]] | None = None,
        on_stored: Callable[[str, int, bytes], Awaitable[None]] | None = None,
        metrics: RunMetrics | None = None,
    ):
        self.nc = nc
        self.metrics = metrics
        self.subject = subject
        self.envelope = envelope
        self.last_seq = last_seq
        self._interval = flush_interval if callable(flush_interval) else (lambda: flush_interval)
        self.flush_bytes = flush_bytes
        self.event_max_bytes = event_max_bytes
        self.storage_patience = storage_patience
        self.on_end = on_end
        """Awaited with the terminal event's type and data and the answer (if any) once it is stored."""
        self.on_stored = on_stored
        """Awaited with each event's type, stream sequence and stored JSON once it is stored (the
        run's webhooks: agent_runner/webhooks.py); it must not raise."""
        self.answer: str | None = None
        self.started = False
        """True once this attempt's ``run.started`` is stored."""
        self._n = 0
        self._lock = asyncio.Lock()
        self._buf: list[str] = []
        self._buf_bytes = 0
        self._buf_step = 0
        self._flush_task: asyncio.Task[None] | None = None
        self._last_delta = 0.0  # monotonic time the last message.delta was stored
        self._failed: BaseException | None = None
        self._inflight: asyncio.Task[int] | None = None
        self._opening: asyncio.Task[None] | None = None

    def open_later(self, find_last_seq: Callable[[], Awaitable[int]], first: tuple[str, BaseModel]) -> None:
        """Let the run start before its subject is read: ``find_last_seq()`` (which may raise to
        say this attempt must not go on) runs now, concurrently, and the ``first`` event is written
        as soon as it returns; every other write waits for both. Used so a fresh run's model call
        starts without waiting two NATS round trips (lower time to first token)."""
        if first[0] == E.RUN_STARTED and self.metrics is not None:
            self.metrics.started()

        async def opening() -> None:
            self.last_seq = await find_last_seq()
            await self._append_now(*first)

        self._opening = asyncio.create_task(opening())

    async def opened(self) -> None:
        """Wait until :meth:`open_later`'s work is done (re-raising what stopped it)."""
        if self._opening is not None:
            await asyncio.shield(self._opening)

    # -- public API

    async def emit(self, event_type: str, data: BaseModel, *, patient: bool = False) -> int:
        """Write one event (after any buffered text); returns its stream sequence.

        Raises OwnershipLost; StorageFull when JetStream has had no space for ``storage_patience``
        seconds; or the last transport error after retrying for 5 minutes. ``patient``: retry
        transport failures and a full store until the event is stored (a terminal event that
        must be written whenever that becomes possible).
        """
        if not patient:
            await self.flush()
        if event_type == E.RUN_STARTED and self.metrics is not None:
            self.metrics.started()
        return await self._publish(event_type, data, patient=patient)

    async def delta(self, step: int, text: str) -> None:
        """Buffer a text fragment of LLM step ``step``; it is written soon (see module doc)."""
        if self._failed is not None:
            raise self._failed
        if self.metrics is not None:
            self.metrics.first_delta()
        if self._buf and step != self._buf_step:
            await self.flush()
        self._buf.append(text)
        self._buf_step = step
        self._buf_bytes += len(text)
        # Due is measured from the last *delta*: the first text of a run or step goes out at once,
        # however recently run.started or a tool result was written (time to first token). A due
        # flush is written here, inline, not left to the timer task: a model streaming flat out
        # keeps this coroutine busy, and the task would only run once the stream pauses.
        due = self._last_delta + self._interval()
        if self._buf_bytes >= self.flush_bytes or time.monotonic() >= due:
            await self.flush()
        elif self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_later(due - time.monotonic()))

    async def flush(self) -> None:
        """Write any buffered text now."""
        task, self._flush_task = self._flush_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._failed is not None:
            raise self._failed
        if self._buf:
            text, step = "".join(self._buf), self._buf_step
            self._buf, self._buf_bytes = [], 0
            await self._publish(E.MESSAGE_DELTA, E.MessageDeltaData(step=step, text=text))

    async def close(self) -> None:
        """Stop any pending flush without writing (the attempt is being abandoned)."""
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None

    # -- internals

    async def _flush_later(self, wait: float) -> None:
        try:
            if wait > 0:
                await asyncio.sleep(wait)
            self._flush_task = None
            if self._buf:
                text, step = "".join(self._buf), self._buf_step
                self._buf, self._buf_bytes = [], 0
                await self._publish(E.MESSAGE_DELTA, E.MessageDeltaData(step=step, text=text))
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # surfaced on the next delta/emit
            self._failed = err

    def _encode(self, event_type: str, data: BaseModel) -> bytes:
        cls = E.EVENT_CLASSES[event_type]
        # The envelope was validated once (RunRequest, subject tokens) and ``data`` is a model
        # already: construct without validating again (a hot path: every event). ``ts`` is given
        # rather than left to its default factory, which model_construct inspects on every call
        # (half the cost of the construction).
        ts = datetime.now(UTC)
        event = cls.model_construct(**self.envelope, ts=ts, data=data)
        payload = event.model_dump_json().encode()
        if len(payload) > self.event_max_bytes and isinstance(data, E.ToolResultData):
            shown = orjson.dumps(data.output)[: self.event_max_bytes // 2].decode("utf-8", "ignore")
            data = data.model_copy(update={"output": shown, "truncated": True})
            payload = cls.model_construct(**self.envelope, ts=ts, data=data).model_dump_json().encode()
        return payload

    async def _publish(self, event_type: str, data: BaseModel, *, patient: bool = False) -> int:
        async with self._lock:
            if self._opening is not None:
                await asyncio.shield(self._opening)
            return await self._append_now(event_type, data, patient=patient)

    async def _append_now(self, event_type: str, data: BaseModel, *, patient: bool = False) -> int:
        """Write one event now (the caller holds the lock, or is the opening)."""
        await self._settle()
        self._n += 1
        msg_id = f"{self.envelope['run_id']}:{self.envelope['attempt']}:{self._n}"
        payload = self._encode(event_type, data)
        # The write runs as its own task: if this coroutine is cancelled (run cancelled, timed
        # out), the write still completes, and the next emit waits for it (_settle), so the
        # run's sequence chain stays known and the terminal event can follow.
        forever = float("inf")
        self._inflight = asyncio.create_task(
            append(self.nc, self.subject, payload, event_type=event_type, msg_id=msg_id,
                   expected_last_seq=self.last_seq, retry_seconds=forever if patient else APPEND_RETRY_SECONDS,
                   storage_patience=forever if patient else self.storage_patience)
        )
        seq = await asyncio.shield(self._inflight)
        self._inflight = None
        self.last_seq = seq
        if self.on_stored is not None:
            await self.on_stored(event_type, seq, payload)
        if event_type == E.RUN_STARTED:
            self.started = True
        elif event_type == E.MESSAGE_COMPLETED and isinstance(data, E.MessageCompletedData):
            self.answer = data.text
        elif event_type == E.MESSAGE_DELTA:
            self._last_delta = time.monotonic()
        elif E.is_terminal(event_type):
            if self.metrics is not None:
                self.metrics.ended(event_type, data)
            if self.on_end is not None:
                await self.on_end(event_type, data, self.answer)
        return seq

    async def _settle(self) -> None:
        """Wait for a write interrupted by a cancellation, and take its sequence."""
        task, self._inflight = self._inflight, None
        if task is None:
            return
        try:
            self.last_seq = await task
        except OwnershipLost:
            raise
        except Exception:  # it was not stored; the chain is unchanged
            pass

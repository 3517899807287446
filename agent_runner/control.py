"""Following run control requests (stream RUN_CONTROL, ``control.{tenant}.{run_id}``): cancels go
to the runner's cancel registry (agent_runner.cancels), deletions replace a finished run's events
by a ``run.deleted`` tombstone (docs/events.md, ``run.deleted``).

Every request, stored and live, comes through one ordered consumer, read to its end before the
runner takes runs: a runner taking a run knows at once whether it was cancelled before (no
lookup per run).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from agent_runner.cancels import CancelRegistry, RunKey
from agentstream import eventlog
from schemas import events as E
from schemas import headers as H
from schemas import subjects
from schemas.runs import RunControl

log = logging.getLogger(__name__)

CATCH_UP_TIMEOUT = 60.0
"""Seconds :meth:`ControlFollower.start` waits to have read the stored control requests."""


class ControlFollower:
    """Applies control requests: ``cancels`` learns each cancel, then ``on_cancel(key)`` is called
    (the runner resumes a run waiting for approvals so it ends cancelled); deletions are written
    as background work (``background``). ``start()``, then ``stop()``."""

    def __init__(self, nc: NATS, cancels: CancelRegistry, *, on_cancel: Callable[[RunKey], None],
                 background: Callable[[Coroutine[Any, Any, None]], None]):
        self.nc = nc
        self.js = nc.jetstream()
        self.cancels = cancels
        self.on_cancel = on_cancel
        self.background = background
        self._sub: JetStreamContext.PushSubscription | None = None
        self._caught_up = asyncio.Event()
        self._backlog_seq = 0

    async def start(self) -> None:
        """Subscribe, and return once every stored request is read. Raises TimeoutError after
        :data:`CATCH_UP_TIMEOUT` seconds, and nats errors."""
        info = await self.js.stream_info(subjects.RUN_CONTROL_STREAM)
        self._backlog_seq = info.state.last_seq
        if info.state.messages == 0:
            self._caught_up.set()
        self._sub = await self.js.subscribe(
            subjects.CONTROL_ALL, stream=subjects.RUN_CONTROL_STREAM, cb=self._on_control, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        await asyncio.wait_for(self._caught_up.wait(), CATCH_UP_TIMEOUT)

    async def stop(self) -> None:
        """Stop following."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # already closed
                pass

    async def _on_control(self, msg: Msg) -> None:
        try:
            if msg.metadata.sequence.stream >= self._backlog_seq:
                self._caught_up.set()
        except Exception:  # no metadata: not from the stream
            pass
        try:
            tenant, run_id = subjects.parse_control(msg.subject)
            control = RunControl.model_validate_json(msg.data)
        except (ValueError, ValidationError) as err:
            log.warning("ignoring control message on %s: %s", msg.subject, err)
            return
        if control.action == "delete":
            self.background(self._delete(tenant, run_id, control.reason))
            return
        key = (tenant, run_id)
        self.cancels.request(key, control.reason)
        self.on_cancel(key)

    async def _delete(self, tenant: str, run_id: str, reason: str) -> None:
        """Replace a finished run's events by one ``run.deleted`` tombstone (a subject rollup,
        ``Nats-Rollup: sub``). Every runner sees the request and may do it: the write is
        deduplicated by its message id, and a run already deleted or still running is left alone."""
        try:
            last = await eventlog.last_event(self.nc, subjects.run_events_of_run(tenant, run_id))
            if last is None or not E.is_terminal(last.type):
                return
            where = subjects.parse_run_events(last.subject)
            ended = last.event
            tombstone = E.RunDeleted(run_id=run_id, tenant=tenant, agent=where.agent,
                                     message_id=ended.message_id if ended is not None else run_id, attempt=0,
                                     data=E.RunDeletedData(reason=reason))
            await self.js.publish(last.subject, tombstone.model_dump_json().encode(), timeout=5.0, headers={
                H.MSG_ID: f"{run_id}:deleted", H.ROLLUP: H.ROLLUP_SUBJECT, H.EVENT_TYPE: E.RUN_DELETED})
            log.info("run %s of tenant %s deleted (%s)", run_id, tenant, reason)
        except (eventlog.EventLogError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.warning("run %s not deleted: %s", run_id, err)

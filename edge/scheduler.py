"""Firing schedules: every edge watches the SCHEDULES bucket and fires the ticks that are due, each
tick exactly once however many edges are up (README, Schedules).

For a due tick (agentstream/ticks.py decides which, by the schedule's ``catch_up``):

1. **claim** it: a compare-and-set update of the schedule's entry that moves ``last_tick`` to the
   tick and records it as ``firing``. Edges racing for it all read the same revision; one update
   wins, the others are refused and look again (so no tick is fired twice, and none skipped: the
   entry only ever moves from one tick to the next);
2. **submit** its run, as the edge submits any run (the tenant's allow-list and queue limit apply;
   a conversation's turn-taking too). Its run id and ``message_id`` are derived from the schedule
   and the tick (schemas/schedules.py), so a repeated submission is the same run: JetStream drops
   a repeat within RUN_DEDUPE_WINDOW and RUN_INDEX remembers the run after it;
3. **confirm** it: the entry's ``firing`` is cleared, with the run's id (or why no run started:
   ``last_error``).

An edge that dies between 1 and 3 leaves the claim: after SCHEDULE_CLAIM_TIMEOUT another edge (or
the same one restarted) takes it over and submits the same tick again, which yields the same run.
Ticks that fell due while no edge was up are found at the next start, and follow ``catch_up``.

An agent file's ``periodic_runs`` (LocalAI's field) is a schedule too: every edge keeps a
schedule ``periodic-{agent}`` (every ``periodic_runs`` seconds, message ``permanent_goal``,
``catch_up: one``) for each tenant that may use the agent, and removes it when the agent file
drops the field (every edge must hold the same agent files, as it must hold the same keys file).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import ValidationError

from agentstream import eventlog, ticks
from agentstream.kvmirror import KvMirror
from agentstream.runs import SubmitError, read_index, submit
from agentstream.tasks import finish_within, stop_loop
from edge.auth import Tenant
from edge.errors import ApiError
from edge.http import check_queue, take_turn
from edge.state import EdgeState
from schemas import subjects
from schemas.common import ScheduleRef
from schemas.runs import RunRequest
from schemas.schedules import (
    Firing,
    Schedule,
    periodic_schedule_id,
    scheduled_message_id,
    scheduled_run_id,
)

log = logging.getLogger(__name__)

MAX_TRIES = 8
SYNC_EVERY = 10.0
"""Seconds between an edge's checks that the agent files' periodic schedules are in the bucket."""
_TRANSIENT = (nats.errors.Error, nats.js.errors.Error, TimeoutError, eventlog.EventLogError)


class NotFired(Exception):
    """A tick that starts no run, for a reason that will not pass by retrying (the agent is not
    allowed, the tenant's queue is full): the tick is used up and the reason kept."""


async def load(kv: KeyValue, key: str) -> tuple[Schedule | None, int]:
    """The schedule stored under ``key`` and its revision (``(None, 0)`` when there is none).
    Raises nats errors."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    if not entry.value:
        return None, 0
    return Schedule.model_validate_json(entry.value), int(entry.revision or 0)


def next_run(schedule: Schedule) -> int | None:
    """When the schedule next fires (Unix seconds): its claimed tick, or the next one after its
    last; None while paused."""
    if schedule.paused:
        return None
    if schedule.firing is not None:
        return schedule.firing.tick
    return ticks.Timing.of(schedule).next_after(schedule.last_tick)


class Scheduler:
    """One edge's scheduler. ``start()`` once the edge is connected; ``stop()``."""

    def __init__(self, st: EdgeState, kv: KeyValue):
        self.st = st
        self.kv = kv
        self.settings = st.settings
        self.mirror = KvMirror(st.bus().jetstream(), subjects.SCHEDULES_BUCKET)
        self.me = f"edge {self.settings.runner_name}"
        self._busy: set[str] = set()
        self._due: dict[str, tuple[int, float | None]] = {}  # key -> (revision, due time or None)
        self._hold: dict[str, tuple[int, float]] = {}  # key -> (revision, monotonic time): not before, unless changed
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Mirror the bucket and start the firing loop."""
        await self.mirror.start()
        self._loop = asyncio.create_task(self._run())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop firing; let ticks being submitted finish for ``grace`` seconds (one cut short stays
        claimed: another edge takes it over after SCHEDULE_CLAIM_TIMEOUT)."""
        await stop_loop(self._loop)
        await finish_within(self._tasks, grace, after_cancel=1)
        await self.mirror.stop()

    async def _run(self) -> None:
        next_sync = 0.0
        while True:
            try:
                if time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + SYNC_EVERY
                    await self.sync_agent_files()
                self._fire_due(time.time())
            except Exception:  # a bug must not stop every schedule
                log.exception("scheduler pass failed")
            self.mirror.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.mirror.changed.wait(), self.settings.schedule_poll)

    def _fire_due(self, now: float) -> None:
        for key, entry in list(self.mirror.entries.items()):
            if key in self._busy:
                continue
            cached = self._due.get(key)
            if cached is None or cached[0] != entry.revision:
                try:
                    schedule = Schedule.model_validate_json(entry.value)
                except ValidationError as err:
                    log.error("schedule %s is unreadable and is not fired: %s", key, err)
                    cached = (entry.revision, None)
                else:
                    due: float | None
                    if schedule.paused:
                        due = None
                    elif schedule.firing is not None:
                        due = schedule.firing.claimed_at.timestamp() + self.settings.schedule_claim_timeout
                    else:
                        due = ticks.Timing.of(schedule).next_after(schedule.last_tick)
                    cached = (entry.revision, due)
                self._due[key] = cached
            held = self._hold.get(key)
            if held is not None and held[0] == entry.revision and time.monotonic() < held[1]:
                continue  # another edge holds its tick: look again once the entry changes, or a poll later
            if cached[1] is not None and now >= cached[1]:
                self._busy.add(key)
                task = asyncio.create_task(self._tick(key))
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._finished, key))
        for gone in set(self._due) - set(self.mirror.entries):
            self._due.pop(gone, None)
            self._hold.pop(gone, None)

    def _finished(self, key: str, task: asyncio.Task[None]) -> None:
        self._busy.discard(key)
        self._tasks.discard(task)
        self.mirror.changed.set()

    async def _tick(self, key: str) -> None:
        """Claim the schedule's next due tick, submit its run, confirm it."""
        try:
            seen = self.mirror.entries.get(key)
            claimed = await self._claim(key)
            if claimed is None:
                if seen is not None:
                    self._hold[key] = (seen.revision, time.monotonic() + self.settings.schedule_poll)
                return
            schedule, tick = claimed
            tenant = key.split(".", 1)[0]
            try:
                run_id, error = await self._submit(tenant, schedule, tick), None
            except NotFired as err:
                run_id, error = None, str(err)
                log.warning("schedule %s: tick %d started no run: %s", key, tick, error)
            await self._confirm(key, tick, run_id, error)
        except (*_TRANSIENT, SubmitError) as err:
            log.warning("schedule %s: %s: %s; another pass (or edge) takes it over", key, type(err).__name__, err)
        except Exception:  # a bug: logged; the claim (if any) is taken over after SCHEDULE_CLAIM_TIMEOUT
            log.exception("schedule %s: firing failed", key)

    async def _claim(self, key: str) -> tuple[Schedule, int] | None:
        """Move the schedule's entry to its next due tick, marked ``firing`` (compare-and-set), and
        return it with the tick; None when nothing is due or another edge got there first."""
        schedule, revision = await load(self.kv, key)
        if schedule is None or schedule.paused:
            return None
        now = time.time()
        stamp = datetime.now(UTC)
        if schedule.firing is not None:
            if now - schedule.firing.claimed_at.timestamp() < self.settings.schedule_claim_timeout:
                return None
            tick = schedule.firing.tick
            log.warning("schedule %s: tick %d was claimed by %s and never confirmed; submitting it", key, tick,
                        schedule.firing.by)
            updated = schedule.model_copy(update={"firing": Firing(tick=tick, claimed_at=stamp, by=self.me)})
        else:
            plan = ticks.plan(ticks.Timing.of(schedule), schedule.last_tick, now, catch_up=schedule.catch_up,
                              grace=self.settings.schedule_misfire_grace,
                              max_catch_up=self.settings.schedule_max_catch_up)
            if not plan.fire:
                if plan.latest > schedule.last_tick:  # missed ticks skipped (catch_up: none)
                    skipped = schedule.model_copy(update={"last_tick": plan.latest,
                                                          "skipped": schedule.skipped + plan.skipped})
                    await self._write(key, skipped, revision)
                return None
            tick = plan.fire[0]
            updated = schedule.model_copy(update={
                "last_tick": tick, "skipped": schedule.skipped + plan.skipped,
                "firing": Firing(tick=tick, claimed_at=stamp, by=self.me),
            })
            if plan.skipped:
                log.info("schedule %s: %d missed tick(s) skipped (catch_up: %s)", key, plan.skipped,
                         schedule.catch_up)
        if not await self._write(key, updated, revision):
            return None
        return updated, tick

    async def _write(self, key: str, schedule: Schedule, revision: int) -> bool:
        """Compare-and-set; False when the entry changed since ``revision`` (or was deleted)."""
        value = schedule.model_dump_json().encode()
        try:
            new = await self.kv.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self.mirror.note(key, value, int(new))
        return True

    async def _submit(self, tenant: str, schedule: Schedule, tick: int) -> str:
        """Submit the tick's run; returns its id. Raises NotFired (no run will start for it) or a
        transient error (SubmitError, nats errors: the claim stays, and is taken over)."""
        st = self.st
        policy = st.auth.policies.get(tenant)
        if policy is None:
            raise NotFired(f"tenant {tenant!r} is not in the keys file")
        t = Tenant(policy)
        agent = st.agents.catalog(tenant).get(schedule.agent)  # its files' agents and its own
        if agent is None or not t.may_use(schedule.agent):
            raise NotFired(f"agent {schedule.agent!r} is not available to tenant {tenant!r}")
        run_id = scheduled_run_id(tenant, schedule.schedule_id, tick)
        index = st.run_index
        if index is not None and await read_index(index, tenant, run_id) is not None:
            return run_id  # submitted already (by an edge that died before confirming)
        request = RunRequest(
            run_id=run_id, message_id=scheduled_message_id(schedule.schedule_id, tick), message=schedule.message,
            conversation_id=schedule.conversation_id,
            webhooks=[schedule.webhook] if schedule.webhook is not None else [],
            schedule=ScheduleRef(schedule_id=schedule.schedule_id, tick=datetime.fromtimestamp(tick, UTC)),
        )
        try:
            await check_queue(st, t)
            if request.conversation_id:
                await take_turn(st, t, schedule.agent, request)
        except ApiError as err:
            if err.status == 503:
                raise SubmitError(err.message) from None
            raise NotFired(err.message) from None
        await submit(st.bus(), tenant, schedule.agent, request, index=index, log=True)
        log.info("schedule %s.%s: tick %s fired run %s", tenant, schedule.schedule_id,
                 datetime.fromtimestamp(tick, UTC).isoformat(), run_id)
        return run_id

    async def _confirm(self, key: str, tick: int, run_id: str | None, error: str | None) -> None:
        """Clear the tick's claim and record its outcome (compare-and-set, re-read on conflict)."""
        for _ in range(MAX_TRIES):
            schedule, revision = await load(self.kv, key)
            if schedule is None or schedule.firing is None or schedule.firing.tick != tick:
                return  # deleted, or confirmed by an edge that took the claim over
            update: dict[str, Any] = {"firing": None, "last_error": error}
            if run_id is not None:
                update |= {"fired": schedule.fired + 1, "last_run_id": run_id, "last_fired_at": datetime.now(UTC)}
            if await self._write(key, schedule.model_copy(update=update), revision):
                return
        log.warning("schedule %s: tick %d could not be confirmed (the entry kept changing)", key, tick)

    async def sync_agent_files(self) -> None:
        """Keep one schedule per agent file's ``periodic_runs`` and tenant that may use the agent:
        create the missing, update the changed, remove those no agent file defines any more."""
        st = self.st
        wanted: dict[str, tuple[str, int, str]] = {}  # key -> (agent, every, message)
        for tenant, policy in st.auth.policies.items():
            for name, definition in st.catalog.agents.items():
                if definition.periodic_runs is not None and definition.permanent_goal and policy.may_use(name):
                    key = subjects.schedule_key(tenant, periodic_schedule_id(name))
                    wanted[key] = (name, definition.periodic_runs, definition.permanent_goal)
        for key, entry in list(self.mirror.entries.items()):
            try:
                schedule = Schedule.model_validate_json(entry.value)
            except ValidationError:
                continue
            if schedule.source != "agent_file":
                continue
            want = wanted.pop(key, None)
            if want is None:
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    await self.kv.delete(key, last=entry.revision)
                    log.info("schedule %s removed: no agent file defines its periodic_runs any more", key)
                continue
            agent, every, message = want
            if (schedule.agent, schedule.every, schedule.message) != (agent, every, message):
                await self._write(key, schedule.model_copy(update={"agent": agent, "every": every,
                                                                   "message": message}), entry.revision)
        now = datetime.now(UTC)
        for key, (agent_name, every, message) in wanted.items():
            anchor = int(now.timestamp())
            schedule = Schedule(schedule_id=key.split(".", 1)[1], agent=agent_name, every=every, message=message,
                                source="agent_file", created_at=now, anchor=anchor, last_tick=anchor)
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                revision = await self.kv.create(key, schedule.model_dump_json().encode())
                self.mirror.note(key, schedule.model_dump_json().encode(), int(revision))
                log.info("schedule %s made from agent %s's periodic_runs (every %d s)", key, agent_name, every)

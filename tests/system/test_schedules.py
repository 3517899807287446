"""Schedules against real processes: three edges (each fires schedules) and three agent runners.

What a user checks: a schedule every second fires each tick exactly once (no double, no gap) for
ten ticks however many edges race for it; the runs say which schedule and tick fired them; bad
definitions are refused naming the field; another tenant sees none of it; an agent file's
``periodic_runs`` (LocalAI's field) is a schedule; and ticks missed while every edge was down follow
``catch_up``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from schemas.schedules import scheduled_run_id
from tests.conftest import ALICE_KEY, BOB_KEY, edge_client, eventually, read_events, write_keys_file
from tests.harness import System, new_system

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("schedules")
    sysm = new_system(base, SCHEDULE_CLAIM_TIMEOUT="3")
    (base / "agents" / "ticker.yaml").write_text(
        "# LocalAI's periodic runs: every 2 s, asked its permanent goal.\n"
        "name: ticker\n"
        'model: "builtin:echo=1,delay=0.001"\n'
        "max_steps: 1\n"
        "periodic_runs: 2s\n"
        "permanent_goal: look around\n"
    )
    keys = write_keys_file(base / "keys.yaml")
    with sysm:
        sysm.start_model()
        for n in range(3):
            sysm.start_agent_runner(f"runner-{n}")
        for _ in range(3):
            sysm.start_edge(KEYS_FILE=str(keys))
        yield sysm


def client(system: System, key: str, url: str | None = None) -> httpx.AsyncClient:
    return edge_client(url or system.edge_url, key)


async def create(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await api.post("/api/schedules", json={"agent": "echo", "message": "tick", **body})
    assert resp.status_code == 201, resp.text
    schedule: dict[str, Any] = resp.json()
    return schedule


async def view(api: httpx.AsyncClient, schedule_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/schedules/{schedule_id}")
    assert resp.status_code == 200, resp.text
    found: dict[str, Any] = resp.json()
    return found


async def pause(api: httpx.AsyncClient, schedule_id: str) -> dict[str, Any]:
    resp = await api.post(f"/api/schedules/{schedule_id}/pause", json={})
    assert resp.status_code == 200, resp.text
    paused: dict[str, Any] = resp.json()
    assert paused["paused"] is True and paused["next_run_at"] is None
    return paused


async def settled(api: httpx.AsyncClient, schedule_id: str) -> dict[str, Any]:
    """The schedule once paused and no tick of it is being submitted any more."""
    await pause(api, schedule_id)

    async def quiet() -> bool:
        first = await view(api, schedule_id)
        await asyncio.sleep(0.3)
        return first == await view(api, schedule_id)

    await eventually(quiet, within=20)
    return await view(api, schedule_id)


def ticks_of(schedule: dict[str, Any]) -> list[int]:
    """Every tick of an ``every`` schedule from its creation to its last handled tick."""
    anchor = int(datetime.fromisoformat(schedule["created_at"].replace("Z", "+00:00")).timestamp())
    last = int(datetime.fromisoformat(schedule["last_tick"].replace("Z", "+00:00")).timestamp())
    return list(range(anchor + schedule["every"], last + 1, schedule["every"]))


async def fired_ticks(api: httpx.AsyncClient, tenant: str, schedule: dict[str, Any]) -> list[int]:
    """The ticks of ``schedule`` that have a run (each tick's run id is known in advance)."""
    found = []
    for tick in ticks_of(schedule):
        resp = await api.get(f"/api/runs/{scheduled_run_id(tenant, schedule['schedule_id'], tick)}")
        if resp.status_code == 200:
            run = resp.json()
            assert run["schedule"]["schedule_id"] == schedule["schedule_id"]
            assert int(datetime.fromisoformat(run["schedule"]["tick"].replace("Z", "+00:00")).timestamp()) == tick
            found.append(tick)
        else:
            assert resp.status_code == 404, resp.text
    return found


async def test_a_bad_schedule_is_refused_naming_its_field(clock: System) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"every": 5, "timezone": "Mars/Olympus"}, "timezone"),
        ({"every": 0}, "every"),
        ({"every": "5ms"}, "every"),
        ({"every": 5, "cron": "* * * * *"}, "every"),
        ({}, "cron"),
        ({"every": 5, "agent": "no-such-agent"}, "agent"),
        ({"every": 5, "agent": "web-reader"}, "agent"),  # bob's allow-list: programmer-helper only
        ({"every": 5, "catch_up": "twice"}, "catch_up"),
        ({"every": 5, "message": ""}, "message"),
        ({"every": 5, "webhook": "http://10.0.0.1/hook"}, "webhook"),
        ({"every": 5, "colour": "red"}, "colour"),
    ]
    async with client(clock, BOB_KEY) as bob:
        for extra, field in cases:
            body = {"agent": "programmer-helper", "message": "tick", **extra}
            resp = await bob.post("/api/schedules", json=body)
            assert resp.status_code == 422, (extra, resp.text)
            assert resp.json()["error"]["field"] == field, (extra, resp.text)
        assert (await bob.get("/api/schedules")).json() == {"schedules": []}


async def test_an_agent_files_periodic_runs_is_a_schedule_of_each_tenant_that_may_use_it(clock: System) -> None:
    async with client(clock, ALICE_KEY) as alice, client(clock, BOB_KEY) as bob:

        async def listed() -> bool:
            return any(s["schedule_id"] == "periodic-ticker" for s in (await alice.get("/api/schedules")).json()[
                "schedules"])

        await eventually(listed, within=15)
        schedule = await view(alice, "periodic-ticker")
        assert schedule["source"] == "agent_file" and schedule["agent"] == "ticker" and schedule["every"] == 2
        assert schedule["message"] == "look around" and schedule["catch_up"] == "one"
        # bob may not use ticker (its allow-list): it has no such schedule.
        assert (await bob.get("/api/schedules/periodic-ticker")).status_code == 404

        async def fired() -> bool:
            return int((await view(alice, "periodic-ticker"))["fired"]) >= 1

        await eventually(fired, within=15)
        run_id = (await view(alice, "periodic-ticker"))["last_run_id"]
        events = await asyncio.wait_for(read_events(alice, run_id), 30)
        assert events[0]["data"]["data"]["message"] == "look around"
        assert events[0]["data"]["data"]["schedule"]["schedule_id"] == "periodic-ticker"
        assert events[-1]["event"] == "run.completed"
        refused = await alice.delete("/api/schedules/periodic-ticker")
        assert refused.status_code == 409 and refused.json()["error"]["field"] == "schedule_id"
        await settled(alice, "periodic-ticker")


async def test_every_second_each_tick_fires_exactly_once_with_three_edges_and_three_runners(clock: System) -> None:
    async with client(clock, ALICE_KEY) as alice:
        created = await create(alice, every=1, catch_up="all", message="tick tock")
        sid = created["schedule_id"]
        assert created["next_run_at"] is not None and created["fired"] == 0

        async def ten() -> bool:
            return int((await view(alice, sid))["fired"]) >= 10

        await eventually(ten, within=40)
        final = await settled(alice, sid)
        ticks = ticks_of(final)
        fired = await fired_ticks(alice, "alice", final)
        # No gap: every tick from the first to the last has its run; no double: the schedule counted
        # one confirmed run per tick, and each tick's run id was submitted by one edge.
        assert fired == ticks and len(ticks) >= 10
        assert final["fired"] == len(ticks) and final["skipped"] == 0
        run_ids = {scheduled_run_id("alice", sid, t) for t in ticks}
        edge_logs = "".join(p.log_path.read_text(errors="replace") for p in clock.procs if p.name.startswith("edge"))
        for run_id in run_ids:
            assert edge_logs.count(f"fired run {run_id}") == 1, run_id
        # Each run ran once: one attempt, on one of the runners, and completed.
        runners = set()
        for run_id in run_ids:
            events = await asyncio.wait_for(read_events(alice, run_id), 30)
            kinds = [e["event"] for e in events]
            assert kinds.count("run.queued") == 1 and kinds.count("run.started") == 1, kinds
            assert "run.retrying" not in kinds and kinds[-1] == "run.completed"
            runners.add(next(e["data"]["data"]["runner"] for e in events if e["event"] == "run.started"))
            assert events[0]["data"]["message_id"].startswith(f"schedule:{sid}:")
        assert runners <= {"runner-0", "runner-1", "runner-2"}


async def test_a_schedule_is_its_tenants_alone_and_deleting_it_stops_it(clock: System) -> None:
    async with client(clock, ALICE_KEY) as alice, client(clock, BOB_KEY) as bob:
        created = await create(alice, cron="0 9 * * *", timezone="Europe/Berlin", message="good morning")
        sid = created["schedule_id"]
        assert created["next_run_at"].endswith(("T07:00:00Z", "T08:00:00Z"))  # 09:00 in Berlin
        for method, path in (("GET", f"/api/schedules/{sid}"), ("DELETE", f"/api/schedules/{sid}"),
                             ("POST", f"/api/schedules/{sid}/pause"), ("POST", f"/api/schedules/{sid}/resume")):
            resp = await bob.request(method, path, json={} if method == "POST" else None)
            assert resp.status_code == 404, (method, path, resp.text)
            assert resp.json()["error"]["field"] == "schedule_id"
        assert sid not in {s["schedule_id"] for s in (await bob.get("/api/schedules")).json()["schedules"]}
        assert sid in {s["schedule_id"] for s in (await alice.get("/api/schedules")).json()["schedules"]}
        assert (await view(alice, sid))["paused"] is False  # bob's pause did nothing
        paused = await pause(alice, sid)
        resumed = await alice.post(f"/api/schedules/{sid}/resume", json={})
        assert resumed.status_code == 200 and resumed.json()["paused"] is False
        assert resumed.json()["next_run_at"] == created["next_run_at"] and paused["fired"] == 0
        assert (await alice.delete(f"/api/schedules/{sid}")).status_code == 204
        assert (await alice.get(f"/api/schedules/{sid}")).status_code == 404
        assert (await alice.delete(f"/api/schedules/{sid}")).status_code == 404


async def test_ticks_missed_while_every_edge_was_down_follow_catch_up(clock: System) -> None:
    async with client(clock, ALICE_KEY) as alice:
        ids = {mode: (await create(alice, every=1, catch_up=mode, message=f"catch up {mode}"))["schedule_id"]
               for mode in ("none", "one", "all")}

        async def each_fired_twice() -> bool:
            return all([int((await view(alice, sid))["fired"]) >= 2 for sid in ids.values()])

        await eventually(each_fired_twice, within=20)
    edges = [p for p in clock.procs if p.name.startswith("edge") and p.alive()]
    for edge in edges:
        assert edge.terminate() == 0
    down = time.time()
    await asyncio.sleep(5)  # every edge is down: five ticks of each schedule fall due unfired
    edge = clock.start_edge(KEYS_FILE=str(clock.base / "keys.yaml"))
    up = time.time()
    async with client(clock, ALICE_KEY, edge.ready_value) as alice:

        async def fired_after_restart() -> bool:
            for sid in ids.values():
                last = datetime.fromisoformat((await view(alice, sid))["last_tick"].replace("Z", "+00:00"))
                if last.timestamp() < up + 2:
                    return False
            return True

        await eventually(fired_after_restart, within=20)
        for mode, sid in ids.items():
            final = await settled(alice, sid)
            ticks = ticks_of(final)
            fired = await fired_ticks(alice, "alice", final)
            assert final["fired"] == len(fired)
            assert final["fired"] + final["skipped"] == len(ticks), (mode, final)
            # Ticks no edge could fire: due after the last edge stopped, before the new one was up.
            missed = [t for t in ticks if down + 1 < t < up - 2]
            assert len(missed) >= 2
            before = max(t for t in fired if t <= down)
            after = sorted(t for t in fired if t > before)
            if mode == "all":
                assert fired == ticks and final["skipped"] == 0  # every missed tick fired, late
            elif mode == "none":
                assert not set(missed) & set(fired)  # all skipped; the tick on time at the restart fired
                assert after[0] >= max(missed) + 1
            else:
                # One run stands for the missed ticks (the newest of them), then the tick on time.
                assert len(set(missed) & set(fired)) <= 1
                assert after[0] >= max(missed) and after[1] == after[0] + 1

"""Runs as managed resources: listing across agents (filters, newest first, cursor pages),
deletion, usage per tenant, answered from the run log on the shared system (real processes)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from tests.conftest import BOB_KEY, eventually, read_events, submit


async def finished_run(api: httpx.AsyncClient, agent: str, message: str, **extra: str) -> tuple[str, list[dict]]:
    accepted = await submit(api, agent, message, **extra)
    events = await asyncio.wait_for(read_events(api, accepted["run_id"]), 60)
    return accepted["run_id"], events


async def test_runs_are_listed_newest_first_with_filters_and_pages(api, system):
    conversation = f"list-{uuid.uuid4().hex}"
    started = datetime.now(UTC) - timedelta(seconds=1)
    made = []
    for i in range(5):
        run_id, _ = await finished_run(api, "echo" if i % 2 else "plain", f"message {i}", conversation_id=conversation)
        made.append(run_id)
    failed_id, failed_events = await finished_run(api, "failing-model", "boom", conversation_id=conversation)
    assert failed_events[-1]["event"] == "run.failed"

    mine = (await api.get("/api/runs", params={"conversation_id": conversation, "limit": 50})).json()
    assert [r["run_id"] for r in mine["runs"]] == [failed_id, *reversed(made)]  # newest first
    assert mine["runs"][0]["status"] == "failed" and mine["runs"][0]["error"]["type"]
    assert all(r["status"] == "completed" for r in mine["runs"][1:])
    assert mine["runs"][1]["duration_ms"] > 0 and mine["runs"][1]["usage"]["total_tokens"] > 0

    echo_only = (await api.get("/api/runs", params={"agent": "echo", "conversation_id": conversation})).json()
    assert [r["run_id"] for r in echo_only["runs"]] == [made[3], made[1]]
    failed = (await api.get("/api/runs", params={"status": "failed", "limit": 1})).json()
    assert failed["runs"][0]["run_id"] == failed_id  # the newest failure of the tenant
    recent = (await api.get("/api/runs", params={"since": started.isoformat(), "limit": 200})).json()
    assert set(made) <= {r["run_id"] for r in recent["runs"]}
    none_yet = (await api.get("/api/runs", params={"until": started.isoformat(), "conversation_id": conversation}))
    assert none_yet.json()["runs"] == []

    # Pages of two, following the cursor, give the same runs in the same order, once each.
    pages, cursor = [], None
    while True:
        params = {"conversation_id": conversation, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/api/runs", params=params)).json()
        pages.extend(r["run_id"] for r in page["runs"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == [r["run_id"] for r in mine["runs"]]


async def test_another_tenant_lists_none_of_them(api, system):
    run_id, _ = await finished_run(api, "echo", "alice only")
    async with httpx.AsyncClient(base_url=system.edge_url, headers={"Authorization": f"Bearer {BOB_KEY}"}) as bob:
        theirs = (await bob.get("/api/runs", params={"limit": 200})).json()
        assert run_id not in {r["run_id"] for r in theirs["runs"]}
        assert (await bob.get("/api/runs", params={"agent": "echo"})).status_code == 404  # not in bob's allow-list
        assert (await bob.delete(f"/api/runs/{run_id}")).status_code == 404
    assert (await api.get(f"/api/runs/{run_id}")).status_code == 200


async def test_bad_listing_parameters_are_400_naming_them(api):
    for params, field in (({"status": "done"}, "status"), ({"since": "yesterday"}, "since"),
                          ({"limit": "0"}, "limit"), ({"cursor": "abc"}, "cursor"), ({"agent": "a.b"}, "agent")):
        resp = await api.get("/api/runs", params=params)
        assert resp.status_code == 400 and resp.json()["error"]["field"] == field, (params, resp.text)
    assert (await api.get("/api/usage", params={"group_by": "week"})).json()["error"]["field"] == "group_by"


async def test_a_finished_run_can_be_deleted_and_is_gone_everywhere(api):
    run = await submit(api, "long-story", "tell me a long story")
    busy = await api.delete(f"/api/runs/{run['run_id']}")
    assert busy.status_code == 409 and busy.json()["error"]["run_status"] in ("queued", "running")
    await api.post(f"/api/runs/{run['run_id']}/cancel", json={})
    await asyncio.wait_for(read_events(api, run["run_id"]), 60)
    gone = await api.delete(f"/api/runs/{run['run_id']}")
    assert gone.status_code == 204
    assert (await api.get(f"/api/runs/{run['run_id']}")).status_code == 404
    assert (await api.get(f"/api/runs/{run['run_id']}/events")).status_code == 404
    assert (await api.delete(f"/api/runs/{run['run_id']}")).status_code == 404
    listed = (await api.get("/api/runs", params={"agent": "long-story", "limit": 200})).json()
    assert run["run_id"] not in {r["run_id"] for r in listed["runs"]}


async def test_usage_sums_the_tenants_runs(api, system):
    before = (await api.get("/api/usage")).json()
    tokens = 0
    for i in range(3):
        _, events = await finished_run(api, "echo", f"usage {i}")
        tokens += events[-1]["data"]["data"]["usage"]["total_tokens"]
    echo_before = next((g for g in before["groups"] if g["agent"] == "echo"), {"runs": 0, "total_tokens": 0})

    async def counted() -> bool:
        """the usage counts the three runs (a run's log entry is written just after its terminal event)"""
        groups = (await api.get("/api/usage")).json()["groups"]
        return next((g["runs"] for g in groups if g["agent"] == "echo"), 0) - echo_before["runs"] >= 3

    await eventually(counted, within=5.0)
    after = (await api.get("/api/usage")).json()
    echo_after = next(g for g in after["groups"] if g["agent"] == "echo")
    assert echo_after["runs"] - echo_before["runs"] == 3
    assert echo_after["total_tokens"] - echo_before["total_tokens"] == tokens
    assert after["total"]["runs"] - before["total"]["runs"] == 3
    today = datetime.now(UTC).date().isoformat()
    by_day = (await api.get("/api/usage", params={"group_by": "day"})).json()
    assert any(g["day"] == today and g["runs"] >= 3 for g in by_day["groups"])
    async with httpx.AsyncClient(base_url=system.edge_url, headers={"Authorization": f"Bearer {BOB_KEY}"}) as bob:
        theirs = (await bob.get("/api/usage")).json()
        assert all(g["agent"] == "programmer-helper" for g in theirs["groups"])

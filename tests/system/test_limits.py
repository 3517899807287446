"""Limits that hold across edges and tenants, on real processes: rate limits shared by two edges,
per-key limits, bad-key throttling per client address, open streams per key, queued runs per
tenant, fair scheduling between tenants, and keys changed while the edges run."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import eventually, read_events
from tests.harness import System, new_system

pytestmark = pytest.mark.timeout(180)

KEYS = """
tenants:
  carol:
    keys: [carol-key]
    requests_per_minute: 1
    burst: 5
  dave:
    keys:
      - {key: dave-key, requests_per_minute: 1, burst: 2}
  erin:
    keys: [erin-key]
    max_streams: 1
  frank:
    keys: [frank-key]
    max_concurrent_runs: 1
    max_queued_runs: 2
  gina:
    keys: [gina-key, 'sha256:GINA_DIGEST']
  bulk:
    keys: [bulk-key]
    max_concurrent_runs: 1
  solo:
    keys: [solo-key]
""".replace("GINA_DIGEST", hashlib.sha256(b"gina-second-key").hexdigest())


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("limits")
    keys = base / "keys.yaml"
    keys.write_text(KEYS)
    sysm = new_system(base, KEYS_FILE_POLL="0.2")
    with sysm:
        sysm.start_model()
        sysm.start_agent_runner("runner-limits", AGENT_RUNNER_CONCURRENCY="2")
        # Hypercorn sees an idle stream's client leave only when it next writes: heartbeats often.
        sysm.start_edge(KEYS_FILE=str(keys), SSE_HEARTBEAT="0.5")
        second = sysm.start_edge(KEYS_FILE=str(keys), EDGE_AUTH_FAILURES_PER_MINUTE="3", SSE_HEARTBEAT="0.5")
        sysm.env["SECOND_EDGE"] = second.ready_value
        yield sysm


def client(url: str, key: str | None = None, *, source: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.AsyncHTTPTransport(local_address=source) if source else None
    return httpx.AsyncClient(base_url=url, headers=headers, transport=transport, timeout=httpx.Timeout(10, read=60))


async def test_two_edges_enforce_one_tenant_limit(limited: System) -> None:
    edges = [limited.edge_url, limited.env["SECOND_EDGE"]]
    statuses: list[int] = []
    refusals: list[httpx.Response] = []
    for i in range(12):
        async with client(edges[i % 2], "carol-key") as c:
            resp = await c.get("/api/agents")
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            refusals.append(resp)
    assert statuses.count(200) == 5, statuses  # the burst, counted across both edges
    assert statuses.count(429) == 7
    for resp in refusals:
        assert int(resp.headers["Retry-After"]) >= 1
        error = resp.json()["error"]
        assert error["type"] == "rate_limit_exceeded" and "tenant carol" in error["message"]
    async with client(edges[1], "carol-key") as c:
        resp = await c.get("/v1/models")
    assert resp.status_code == 429 and "Retry-After" in resp.headers
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert resp.json()["error"]["type"] == "rate_limit_error"  # OpenAI's shape on /v1


async def test_a_key_can_have_its_own_limit(limited: System) -> None:
    async with client(limited.edge_url, "dave-key") as c:
        statuses = [(await c.get("/api/agents")).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]


async def test_wrong_keys_from_one_address_are_throttled(limited: System) -> None:
    # The second edge allows 3 wrong keys a minute per client address; this test's client uses
    # its own loopback source address so the other tests' clients are not throttled.
    url = limited.env["SECOND_EDGE"]
    statuses = []
    for i in range(5):
        async with client(url, f"guess-{i}", source="127.0.0.2") as c:
            statuses.append((await c.get("/api/agents")).status_code)
    assert statuses == [401, 401, 401, 429, 429]
    async with client(url, "solo-key", source="127.0.0.2") as c:
        resp = await c.get("/api/agents")
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1  # even with a good key, for a while
    async with client(url, "solo-key") as c:  # another address is not affected
        assert (await c.get("/api/agents")).status_code == 200


@pytest.fixture
async def erin_stream(limited: System) -> AsyncIterator[Any]:
    async with client(limited.edge_url, "erin-key") as c, aconnect_sse(c, "GET", "/api/agents/echo/sse") as src:
        assert src.response.status_code == 200
        yield src


async def test_open_streams_per_key_are_capped_across_edges(limited: System, erin_stream: Any) -> None:
    async with client(limited.env["SECOND_EDGE"], "erin-key") as c:
        resp = await c.get("/api/agents/echo/sse")
    assert resp.status_code == 429
    assert resp.json()["error"]["type"] == "too_many_streams"
    assert int(resp.headers["Retry-After"]) >= 1


async def test_responses_and_ag_ui_streams_take_a_place_among_the_keys_streams(limited: System) -> None:
    async with client(limited.edge_url, "erin-key") as c:
        whole = await c.post("/v1/responses", json={"model": "echo", "input": "hi"})  # not a stream: no place
        assert whole.status_code == 200, whole.text
        async with aconnect_sse(c, "GET", "/api/agents/echo/sse") as src:  # erin's one place
            assert src.response.status_code == 200
            refused = [
                await c.post("/v1/responses", json={"model": "echo", "input": "hi", "stream": True}),
                await c.get(f"/v1/responses/{whole.json()['id']}", params={"stream": "true"}),
                await c.post("/ag-ui/echo", json={"threadId": "t", "runId": "r-erin", "messages": [
                    {"id": "m", "role": "user", "content": "hi"}]}),
            ]
        assert [r.status_code for r in refused] == [429, 429, 429]
        assert refused[0].json()["error"]["code"] == "rate_limit_exceeded"  # OpenAI's shape on /v1
        assert refused[2].json()["error"]["type"] == "too_many_streams"
        again = await c.post("/v1/responses", json={"model": "echo", "input": "hi", "stream": True})
        assert again.status_code == 200 and again.text.rstrip().endswith("}"), "the place is free again"


async def test_a_closed_stream_frees_its_place(limited: System) -> None:
    async with client(limited.edge_url) as edge:
        async def no_stream_open() -> bool:
            """the edge has noticed that the last stream's client went away"""
            return (await edge.get("/healthz")).json()["watchers"] == 0

        # Each client leaves as soon as its stream has started (while the edge is still reading
        # the stored events): the edge must notice every time, not keep writing heartbeats to it.
        for _ in range(10):
            await eventually(no_stream_open)
            async with client(limited.edge_url, "erin-key") as c, aconnect_sse(c, "GET", "/api/agents/echo/sse") as src:
                assert src.response.status_code == 200


async def submit(c: httpx.AsyncClient, agent: str, message: str = "hello") -> httpx.Response:
    return await c.post(f"/api/agents/{agent}/chat", json={"message": message})


async def test_a_full_queue_refuses_new_runs(limited: System) -> None:
    async with client(limited.edge_url, "frank-key") as c:
        first = await submit(c, "queued-work")
        assert first.status_code == 202
        run_id = first.json()["run_id"]
        async with aconnect_sse(c, "GET", f"/api/runs/{run_id}/events") as src:
            async for sse in src.aiter_sse():
                if sse.event == "run.started":
                    break  # frank's one concurrent run is being worked on
        waiting = [await submit(c, "queued-work") for _ in range(2)]
        assert [r.status_code for r in waiting] == [202, 202]
        over = await submit(c, "queued-work")
        assert over.status_code == 429, over.text
        error = over.json()["error"]
        assert error["type"] == "queue_full" and "max_queued_runs is 2" in error["message"]
        assert int(over.headers["Retry-After"]) >= 1
        # A queued run is visible as such (it has no event yet: the runner writes run.queued).
        queued = (await c.get(f"/api/runs/{waiting[1].json()['run_id']}")).json()
        assert queued["status"] in ("queued", "running")
        for resp in [first, *waiting]:
            await c.post(f"/api/runs/{resp.json()['run_id']}/cancel", json={})


async def test_one_tenants_backlog_does_not_hold_up_another(limited: System) -> None:
    async with client(limited.edge_url, "bulk-key") as bulk, client(limited.edge_url, "solo-key") as solo:
        backlog = [await submit(bulk, "queued-work", f"job {i}") for i in range(30)]
        assert all(r.status_code == 202 for r in backlog)
        mine = await submit(solo, "queued-work")
        assert mine.status_code == 202
        events = await asyncio.wait_for(read_events(solo, mine.json()["run_id"]), 60)
        assert events[-1]["event"] == "run.completed"
        statuses = [(await bulk.get(f"/api/runs/{r.json()['run_id']}")).json()["status"] for r in backlog]
        # solo's run started while most of bulk's backlog was still waiting (FIFO would have made it last).
        assert statuses.count("queued") >= 15, statuses
        for r in backlog:
            await bulk.post(f"/api/runs/{r.json()['run_id']}/cancel", json={})


async def test_a_revoked_key_is_refused_and_its_streams_end(limited: System) -> None:
    keys = Path(limited.base / "keys.yaml")
    async with client(limited.edge_url, "gina-second-key") as c, aconnect_sse(c, "GET", "/api/agents/echo/sse") as src:
        assert src.response.status_code == 200
        revoked = KEYS.replace("gina-key, ", "gina-key-new, ").replace(
            hashlib.sha256(b"gina-second-key").hexdigest(), hashlib.sha256(b"gina-third-key").hexdigest())
        await asyncio.to_thread(keys.write_text, revoked)

        async def drain() -> None:
            async for _ in src.aiter_sse():
                pass

        await asyncio.wait_for(drain(), 10)  # the edge ended the stream of the revoked key
    async with client(limited.edge_url, "gina-second-key") as c:
        resp = await c.get("/api/agents")
        assert resp.status_code == 401
    async with client(limited.env["SECOND_EDGE"], "gina-key-new") as c:
        async def accepted() -> bool:
            """the other edge accepts the new key"""
            return (await c.get("/api/agents")).status_code == 200

        await eventually(accepted, within=5)
    await asyncio.to_thread(keys.write_text, KEYS)


async def test_a_bad_keys_file_keeps_the_last_good_one(limited: System) -> None:
    keys = Path(limited.base / "keys.yaml")
    await asyncio.to_thread(keys.write_text, KEYS.replace("max_streams: 1", "max_streams: -3"))
    async with client(limited.edge_url, "solo-key") as c:
        async def noticed() -> bool:
            """the edge reports the bad keys file"""
            problem = (await c.get("/healthz")).json()["keys_file"]["problem"]
            return problem is not None and "tenants.erin.max_streams" in problem

        await eventually(noticed)
        assert (await c.get("/api/agents")).status_code == 200  # the last good file is in force
    edge = next(p for p in limited.procs if p.name.startswith("edge"))
    log = await asyncio.to_thread(edge.log_path.read_text, errors="replace")
    line = next(line for line in log.splitlines() if "tenants.erin.max_streams" in line)
    assert str(keys) in line and "keeping the keys file that was last valid" in line
    await asyncio.to_thread(keys.write_text, KEYS)


def test_keys_file_errors_name_the_field(tmp_path: Path) -> None:
    from edge.auth import KeysFileError, parse_keys_file

    cases = {
        "tenants: {acme: {keys: [k], max_queued_runs: -1}}": "tenants.acme.max_queued_runs",
        "tenants: {acme: {keys: [k], requests_per_minute: lots}}": "tenants.acme.requests_per_minute",
        "tenants: {acme: {keys: [k], burst: 1.5}}": "tenants.acme.burst",
        "tenants: {acme: {keys: [k], max_streams: null}}": "tenants.acme.max_streams",
        "tenants: {acme: {keys: [{key: k, requests_per_minute: 0}]}}": "tenants.acme.keys.0",
        "tenants: {acme: {keys: []}}": "tenants.acme.keys",
        "tenants: {'a.b': {keys: [k]}}": "tenants",
        "tenants: {acme: {keys: [k], max_runs: 3}}": "tenants.acme.max_runs",
    }
    for text, field in cases.items():
        path = tmp_path / "keys.yaml"
        path.write_text(text)
        with pytest.raises(KeysFileError) as err:
            parse_keys_file(path)
        assert err.value.field is not None and err.value.field.startswith(field), (text, err.value)
        assert str(path) in str(err.value)
    path = tmp_path / "keys.yaml"
    path.write_text("tenants: {a: {keys: [same]}, b: {keys: [same]}}")
    with pytest.raises(KeysFileError, match="also listed for tenant"):
        parse_keys_file(path)


def test_gcra_allows_a_burst_then_the_steady_rate() -> None:
    from edge.ratelimit import Limit, gcra

    limit = Limit(rate=60, burst=3, name="t")  # one per second, three at once
    tat = None
    allowed = []
    for _ in range(5):
        ok, new_tat, wait = gcra(tat, 1000.0, limit)
        allowed.append(ok)
        if ok:
            tat = new_tat
        else:
            assert 0 < wait <= 1.0
    assert allowed == [True, True, True, False, False]
    ok, _, _ = gcra(tat, 1001.0, limit)
    assert ok  # one more after a second

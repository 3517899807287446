"""Fault injection against real processes: runners killed mid-run, a NATS server
restart, an edge restart, duplicate submits, poison runs, cancel, slow clients, rolling restarts.

Each test builds its own system (nats-server, built-in model, edge(s), runners) so it can kill
what it likes; each is bounded in time and cleans up after itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import threading
import time
import urllib.parse
from typing import ClassVar

import httpx
import nats
import pytest
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families

from agentstream import eventlog
from agentstream.bus import declare
from agentstream.runs import submit as submit_run
from agentstream.settings import Settings
from schemas import events as E
from schemas import subjects
from schemas.runs import RunRequest
from tests.conftest import eventually, read_events, submit
from tests.harness import new_system

TERMINAL = {"run.completed", "run.failed", "run.cancelled"}


@pytest.fixture
def fresh(tmp_path):
    systems = []

    def make(**env):
        s = new_system(tmp_path / f"sys{len(systems)}", **env)
        systems.append(s)
        return s

    yield make
    for s in systems:
        s.stop()


class Watch:
    """One SSE connection reading a run's events for the whole test (it never reconnects)."""

    def __init__(self, client: httpx.AsyncClient, run_id: str):
        self.events: list[dict] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(client, run_id))

    async def _read(self, client, run_id):
        async with aconnect_sse(client, "GET", f"/api/runs/{run_id}/events") as src:
            async for sse in src.aiter_sse():
                if sse.data:
                    self.events.append({"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)})
                    self._changed.set()

    async def until(self, predicate, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - asserts, listing the events
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            remaining = deadline - time.monotonic()
            assert remaining > 0, [e["event"] for e in self.events]
            self._changed.clear()
            with contextlib.suppress(TimeoutError):  # the loop's assert reports the timeout
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def finished(self, timeout: float = 60.0) -> list[dict]:  # noqa: ASYNC109 - passed on to until()
        await self.until(lambda evs: bool(evs) and evs[-1]["event"] in TERMINAL, timeout)
        await asyncio.wait_for(self._task, 5)  # the server closes the stream after the terminal event
        return self.events


def types(events):
    return [e["event"] for e in events]


class Counter(http.server.BaseHTTPRequestHandler):
    """A web page with a side effect: every GET is counted; ``?delay=S`` answers after S seconds."""

    hits: ClassVar[dict[str, int]] = {}
    arrived: ClassVar[dict[str, threading.Event]] = {}
    answered: ClassVar[dict[str, threading.Event]] = {}
    lock = threading.Lock()

    @classmethod
    def expect(cls, path: str) -> tuple[threading.Event, threading.Event]:
        """Events set when a request for ``path`` arrives, and when it has been answered."""
        with cls.lock:
            return cls.arrived.setdefault(path, threading.Event()), cls.answered.setdefault(path, threading.Event())

    def log_message(self, *args):
        """Quiet: no request log on stderr."""

    def do_GET(self):
        parsed = urllib.parse.urlparse(self.path)
        arrived, answered = self.expect(parsed.path)
        with self.lock:
            Counter.hits[parsed.path] = Counter.hits.get(parsed.path, 0) + 1
        arrived.set()
        delay = float(urllib.parse.parse_qs(parsed.query).get("delay", ["0"])[0])
        time.sleep(delay)
        body = f"order {parsed.path} placed".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        answered.set()


@pytest.fixture
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fault_system(fresh, **env):
    sysm = fresh(AGENT_RUNNER_ACK_WAIT="1.5", TOOL_HTTP_ALLOW_PRIVATE="true", **env)
    sysm.start_model()
    sysm.start_tool_runner("tools")
    return sysm


async def test_runner_killed_mid_answer_another_resumes_and_the_tool_is_not_repeated(fresh, web):
    sysm = fault_system(fresh)
    runners = {rid: sysm.start_agent_runner(rid) for rid in ("runner-a", "runner-b")}
    sysm.start_edge()
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60) as client:
        run = await submit(client, "slow-fetcher", f"Please fetch {web}/answer-{time.monotonic_ns()}")
        watch = Watch(client, run["run_id"])
        # Wait until the tool result is stored and the answer is streaming, then kill its runner.
        await watch.until(lambda evs: "tool.result" in types(evs) and types(evs).count("message.delta") >= 2)
        holder = next(e["data"]["data"]["runner"] for e in watch.events if e["event"] == "run.started")
        runners[holder].kill()
        events = await watch.finished()
    survivor = ({"runner-a", "runner-b"} - {holder}).pop()
    t = types(events)
    assert t[-1] == "run.completed" and t.count("run.completed") == 1
    retry = next(e for e in events if e["event"] == "run.retrying")["data"]["data"]
    assert retry["attempt"] == 2 and retry["resume_step"] == 2
    starts = [e["data"]["data"] for e in events if e["event"] == "run.started"]
    assert [s["runner"] for s in starts] == [holder, survivor]
    assert t.count("tool.call") == 1 and t.count("tool.result") == 1 and t.count("message.completed") == 1
    assert sum(Counter.hits.values()) == 1  # the page with a side effect was fetched once
    answer = next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")
    assert "answered HTTP 200" in answer
    # The answer streamed by the second attempt, after the retry, is the whole answer.
    after = t.index("run.retrying")
    assert "".join(e["data"]["data"]["text"] for e in events[after:] if e["event"] == "message.delta") == answer
    Counter.hits.clear()


async def test_runner_killed_during_a_tool_call_the_call_is_not_executed_twice(fresh, web):
    sysm = fault_system(fresh)
    runners = {rid: sysm.start_agent_runner(rid) for rid in ("runner-a", "runner-b")}
    sysm.start_edge()
    path = f"/slow-order-{time.monotonic_ns()}"
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60) as client:
        run = await submit(client, "slow-fetcher", f"Please fetch {web}{path}?delay=2")
        watch = Watch(client, run["run_id"])
        await watch.until(lambda evs: "tool.call" in types(evs))
        await asyncio.sleep(0.3)  # the tool runner is now waiting on the slow page
        holder = next(e["data"]["data"]["runner"] for e in watch.events if e["event"] == "run.started")
        runners[holder].kill()
        events = await watch.finished()
    t = types(events)
    assert t[-1] == "run.completed"
    assert t.count("tool.call") == 1 and t.count("tool.result") == 1
    retry = next(e for e in events if e["event"] == "run.retrying")["data"]["data"]
    assert retry["resume_step"] == 2  # step 1's model call had completed: only its tool result was missing
    result = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
    assert result["ok"] is True and result["output"]["status"] == 200
    assert Counter.hits[path] == 1  # joined the call still running in the tool runner, not a second order
    Counter.hits.clear()


async def test_a_side_effect_retried_on_another_tool_runner_happens_once(fresh, web):
    # The agent runner dies while tools-1 executes an HTTP request with a side effect; tools-1
    # finishes it and then stops; the run's next attempt retries the call, which can only land on
    # tools-2: it must hand back the stored result, not send the request again.
    sysm = fresh(AGENT_RUNNER_ACK_WAIT="1.5", TOOL_HTTP_ALLOW_PRIVATE="true")
    sysm.start_model()
    first_tools = sysm.start_tool_runner("tools-1")
    holder = sysm.start_agent_runner("runner-a")
    sysm.start_edge()
    path = f"/order-{time.monotonic_ns()}"
    arrived, answered = Counter.expect(path)
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60) as client:
        run = await submit(client, "slow-fetcher", f"Please fetch {web}{path}?delay=2")
        watch = Watch(client, run["run_id"])
        assert await asyncio.to_thread(arrived.wait, 30), "the tool call reached the web server"
        holder.kill()
        sysm.start_tool_runner("tools-2")
        assert await asyncio.to_thread(answered.wait, 30)
        assert first_tools.terminate() == 0  # it finished and stored its call first
        sysm.start_agent_runner("runner-b")
        events = await watch.finished()
    t = types(events)
    assert t[-1] == "run.completed" and "run.retrying" in t
    result = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
    assert result["ok"] is True and result["output"]["status"] == 200
    assert result["runner"] == "tools-1"  # the result tools-1 produced, handed back by tools-2
    assert Counter.hits[path] == 1


async def test_a_side_effect_retried_while_it_still_runs_elsewhere_happens_once(fresh, web):
    # Two tool runners; the agent runner dies during a slow side-effecting call; the next attempt
    # retries the call at once, on whichever tool runner: it waits for the running call's result.
    sysm = fresh(AGENT_RUNNER_ACK_WAIT="1.5", TOOL_HTTP_ALLOW_PRIVATE="true")
    sysm.start_model()
    sysm.start_tool_runner("tools-1")
    sysm.start_tool_runner("tools-2")
    runners = {rid: sysm.start_agent_runner(rid) for rid in ("runner-a", "runner-b")}
    sysm.start_edge()
    path = f"/order-{time.monotonic_ns()}"
    arrived, _ = Counter.expect(path)
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60) as client:
        run = await submit(client, "slow-fetcher", f"Please fetch {web}{path}?delay=4")
        watch = Watch(client, run["run_id"])
        assert await asyncio.to_thread(arrived.wait, 30)
        holder = next(e["data"]["data"]["runner"] for e in watch.events if e["event"] == "run.started")
        runners[holder].kill()
        events = await watch.finished()
    t = types(events)
    assert t[-1] == "run.completed" and "run.retrying" in t
    assert t.count("tool.result") == 1
    assert Counter.hits[path] == 1


async def test_a_full_store_is_loud_and_no_run_is_left_running(fresh):
    # JetStream may store 16 MiB; a run is streaming when an admin fills the rest. The runner
    # says so at once (log, /healthz), new submits get 503 with Retry-After, the run is stopped
    # after STORAGE_PATIENCE and, once space is back, ends run.failed (storage_unavailable).
    sysm = fresh(max_file_store=16 * 1024 * 1024, STORAGE_PATIENCE="1")
    sysm.start_model()
    runner = sysm.start_agent_runner("runner-a")
    sysm.start_edge()
    nc = await nats.connect(**sysm.connect_options())
    js = nc.jetstream()
    await js.add_stream(name="FILLER", subjects=["filler.>"])
    try:
        async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60) as client:
            run = await submit(client, "long-story", "tell me")
            watch = Watch(client, run["run_id"])
            await watch.until(lambda evs: "message.delta" in types(evs))
            with pytest.raises(nats.js.errors.ServiceUnavailableError) as full:
                for _ in range(200):
                    await js.publish("filler.x", b"x" * 256 * 1024)
            assert full.value.err_code == 10023  # JetStream: insufficient resources

            async def runner_reports_it() -> bool:
                """the runner's /healthz is 503 naming the store"""
                async with httpx.AsyncClient() as probe:
                    resp = await probe.get(runner.health_url)
                return resp.status_code == 503 and "storage" in resp.json()["problems"]

            await eventually(runner_reports_it)
            assert "JetStream refuses to store" in runner.log_path.read_text(errors="replace")
            refused = await client.post("/api/agents/echo/chat", json={"message": "hi"})
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
            health = await client.get("/healthz")
            assert health.status_code == 503 and "storage" in health.json()["problems"]

            async def runner_stopped_the_run() -> bool:
                """the runner says it stopped the run (after STORAGE_PATIENCE)"""
                return f"run {run['run_id']} stopped" in runner.log_path.read_text(errors="replace")

            await eventually(runner_stopped_the_run)
            await js.delete_stream("FILLER")  # space is back
            events = await watch.finished()
            t = types(events)
            assert sum(t.count(x) for x in ("run.completed", "run.failed", "run.cancelled")) == 1
            assert t[-1] == "run.failed"
            assert events[-1]["data"]["data"]["error"]["type"] == "storage_unavailable"
            after = await submit(client, "echo", "hello again")
            assert (await read_events(client, after["run_id"]))[-1]["event"] == "run.completed"

            async def runner_recovered() -> bool:
                """the runner's /healthz is 200 again"""
                async with httpx.AsyncClient() as probe:
                    return (await probe.get(runner.health_url)).status_code == 200

            await eventually(runner_recovered)
    finally:
        await nc.close()


async def test_nats_server_restart_loses_nothing_and_repeats_nothing(fresh):
    sysm = fault_system(fresh)
    sysm.start_agent_runner("runner-a")
    sysm.start_edge()
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60) as client:
        run = await submit(client, "long-story", "tell me")
        watch = Watch(client, run["run_id"])
        await watch.until(lambda evs: types(evs).count("message.delta") >= 5)
        await asyncio.to_thread(sysm.nats.restart)  # stop (flushing the store) and start again, same port
        events = await watch.finished(90)
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids)), "no event twice, in order"
        stored = await asyncio.wait_for(read_events(client, run["run_id"]), 30)
        assert [e["id"] for e in stored] == ids, "the live client got exactly what is stored"
        middle = ids[len(ids) // 2]
        rest = await asyncio.wait_for(read_events(client, run["run_id"], last_event_id=middle), 30)
        assert [e["id"] for e in rest] == [i for i in ids if i > middle]
        assert types(events)[-1] == "run.completed", json.dumps(events[-1]["data"]["data"])
        answer = next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")
        assert len(answer.split()) == 100
        # Everything reconnected by itself: a new run goes through.
        again = await submit(client, "programmer-helper", "What is the first line of pyproject.toml?")
        assert types(await asyncio.wait_for(read_events(client, again["run_id"]), 60))[-1] == "run.completed"


async def test_edge_restart_clients_resume_on_another_edge(fresh):
    sysm = fault_system(fresh)
    sysm.start_agent_runner("runner-a")
    edge_a = sysm.start_edge()
    edge_b = sysm.start_edge()
    async with httpx.AsyncClient(base_url=edge_a.ready_value, timeout=60) as a, \
            httpx.AsyncClient(base_url=edge_b.ready_value, timeout=60) as b:
        run = await submit(a, "long-story", "tell me")
        first: list[dict] = []
        stopped_at = None
        async with aconnect_sse(a, "GET", f"/api/runs/{run['run_id']}/events") as src:
            async for sse in src.aiter_sse():
                if sse.data:
                    first.append({"id": int(sse.id), "event": sse.event})
                if len(first) == 6 and stopped_at is None:
                    stopped_at = time.monotonic()
                    threading.Thread(target=edge_a.terminate, daemon=True).start()  # SIGTERM edge A
        assert time.monotonic() - stopped_at < 5, "edge A ended its stream promptly on SIGTERM"
        assert first[-1]["event"] not in TERMINAL
        rest = await asyncio.wait_for(read_events(b, run["run_id"], last_event_id=first[-1]["id"]), 60)
        whole = await asyncio.wait_for(read_events(b, run["run_id"]), 30)
    assert [e["id"] for e in first] + [e["id"] for e in rest] == [e["id"] for e in whole]
    assert whole[-1]["event"] == "run.completed"
    assert edge_a.proc.returncode == 0


async def test_duplicate_submit_across_an_edge_restart_is_one_run(fresh):
    sysm = fault_system(fresh)
    sysm.start_agent_runner("runner-a")
    edge_a = sysm.start_edge()
    async with httpx.AsyncClient(base_url=edge_a.ready_value, timeout=30) as a:
        first = await submit(a, "programmer-helper", "What is in pyproject.toml?", message_id="retry-me-7")
    edge_a.terminate()
    edge_b = sysm.start_edge()
    async with httpx.AsyncClient(base_url=edge_b.ready_value, timeout=30) as b:
        second = await submit(b, "programmer-helper", "What is in pyproject.toml?", message_id="retry-me-7")
        events = await asyncio.wait_for(read_events(b, first["run_id"]), 30)
    assert second["run_id"] == first["run_id"] and second["duplicate"] is True
    assert types(events).count("run.queued") == 1 and types(events).count("run.started") == 1
    assert types(events).count("message.completed") == 1 and types(events)[-1] == "run.completed"


async def test_a_run_that_keeps_killing_its_runner_is_given_up_with_a_dead_letter(fresh):
    sysm = fault_system(fresh, AGENT_RUNNER_MAX_ATTEMPTS="2")
    runner = sysm.start_agent_runner("runner-1")
    sysm.start_edge()
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60) as client:
        run = await submit(client, "long-story", "poison")
        watch = Watch(client, run["run_id"])
        for crash in range(2):
            await watch.until(lambda evs, n=crash + 1: types(evs).count("run.started") == n)
            runner.kill()  # the run "crashes" its runner
            runner = sysm.start_agent_runner(f"runner-{crash + 2}")
        events = await watch.finished()
        record = (await client.get(f"/api/runs/{run['run_id']}")).json()
    assert types(events)[-1] == "run.failed"
    failure = events[-1]["data"]["data"]
    assert failure["reason"] == "gave up after 2 attempts" and failure["error"]["type"] == "gave_up"
    assert types(events).count("run.started") == 2
    assert record["status"] == "failed"
    letter = record["dead_letter"]
    assert letter["reason"] == "gave up after 2 attempts" and letter["attempts"] == 2
    assert letter["request"]["run_id"] == run["run_id"] and letter["request"]["message"] == "poison"
    # The runner that gave up counts the redelivery, the dead letter and the failed run.
    async with httpx.AsyncClient(timeout=10) as client:
        page = (await client.get(runner.metrics_url)).text
    counted = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(page) for s in family.samples}
    assert counted[("agentstream_run_redeliveries_total", (("agent", "long-story"),))] == 1
    assert counted[("agentstream_dead_letters_total", (("agent", "long-story"),))] == 1
    failed = (("agent", "long-story"), ("error_type", "gave_up"), ("outcome", "failed"), ("tenant", "_all"))
    assert counted[("agentstream_runs_total", failed)] == 1


async def test_cancel_before_any_runner_takes_the_run(fresh):
    sysm = fault_system(fresh)
    sysm.start_edge()
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=30) as client:
        marker = f"never-asked-{time.monotonic_ns()}"
        run = await submit(client, "programmer-helper", marker)
        resp = await client.post(f"/api/runs/{run['run_id']}/cancel", json={"reason": "changed my mind"})
        assert resp.status_code == 202
        sysm.start_agent_runner("late-runner")
        events = await asyncio.wait_for(read_events(client, run["run_id"]), 30)
        log = (await client.get(sysm.model_url.removesuffix("/v1") + "/debug/requests")).json()["requests"]
    assert types(events)[-1] == "run.cancelled" and events[-1]["data"]["data"]["reason"] == "changed my mind"
    assert not any(marker in json.dumps(r["messages"]) for r in log), "the model was never called"


async def test_run_budget_ends_the_run_failed(fresh):
    sysm = fault_system(fresh)
    sysm.start_agent_runner()
    sysm.start_edge()
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=30) as client:
        run = await submit(client, "short-budget", "go")
        events = await asyncio.wait_for(read_events(client, run["run_id"]), 30)
    assert types(events)[-1] == "run.failed"
    assert events[-1]["data"]["data"]["error"]["type"] == "timeout"


async def test_a_client_that_stops_reading_slows_nobody_and_misses_nothing(fresh):
    sysm = fault_system(fresh)
    sysm.start_agent_runner(AGENT_RUNNER_CONCURRENCY="8")
    sysm.start_edge(EDGE_WATCH_BUFFER="8")
    host, port = sysm.edge_url.removeprefix("http://").split(":")
    # A raw client with a tiny receive window that reads nothing for a while.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting, so the window stays small
    stuck.connect((host, int(port)))
    stuck.sendall(
        f"GET /api/agents/echo/sse HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await asyncio.sleep(0.5)
    big = "x" * 190_000  # each run: ~1 MB of LocalAI frames; ten of them outgrow every socket buffer
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60) as client:
        started = time.monotonic()
        runs = [await submit(client, "echo", f"{i} {big}") for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*(read_events(client, r["run_id"]) for r in runs)), 60)
        elapsed = time.monotonic() - started
        assert all(types(evs)[-1] == "run.completed" for evs in results)
        assert elapsed < 30, "the other clients and the runners were not slowed down"
        health = (await client.get("/healthz")).json()
    expected = sorted(e["id"] for evs in results for e in evs)
    # Now the stuck client reads everything it was sent.
    stuck.settimeout(10)
    raw = b""
    while True:
        ids = [int(m) for m in __import__("re").findall(rb"\nid: (\d+)\n", b"\n" + raw)]
        if ids and max(ids) >= expected[-1]:
            break
        chunk = stuck.recv(1 << 20)
        assert chunk, "stream closed early"
        raw += chunk
    stuck.close()
    assert sorted(set(ids)) == ids, "in order, none twice"
    assert ids == expected, "every event of every run, none dropped"
    assert health["watchers"] >= 1
    assert health["overflows"] >= 1, "the stuck client's buffer overflowed and it was served from the stream"


async def test_rolling_restart_of_all_runners_under_load_loses_no_run(fresh):
    sysm = fault_system(fresh, SHUTDOWN_GRACE="0.5")
    runners = [sysm.start_agent_runner(f"runner-{i}") for i in (1, 2)]
    sysm.start_edge()
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=90) as client:
        runs = [await submit(client, "long-story", f"story {i}") for i in range(12)]
        watches = [Watch(client, r["run_id"]) for r in runs]
        for w in watches:  # every run is streaming text before the first runner goes
            await w.until(lambda evs: "message.delta" in types(evs))
        for i, old in enumerate(runners):  # replace each runner in turn while runs are going
            assert await asyncio.to_thread(old.terminate, 20) == 0
            runners[i] = sysm.start_agent_runner(f"runner-{i + 1}b")
        results = [await w.finished(120) for w in watches]
    handed_back = 0
    for events in results:
        t = types(events)
        assert t[-1] == "run.completed", t
        assert sum(t.count(x) for x in TERMINAL) == 1 and t.count("message.completed") == 1
        handed_back += t.count("run.requeued")
        answer = next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")
        assert len(answer.split()) == 100
    assert handed_back >= 1, "the restarts happened while runs were going"


async def test_writes_while_jetstream_has_no_stream_yet_are_retried_not_failed(fresh):
    # Right after a nats-server restart, JetStream answers publishes with "no responders" until it
    # has loaded its streams (nats-py raises NoStreamResponseError). A run's events and a submit
    # made in that window must wait for JetStream, not fail the run: here the streams are declared
    # only after both writes have started.
    sysm = fresh(setup=False)
    nc = await nats.connect(**sysm.connect_options())
    try:
        request = RunRequest(run_id="0123456789abcdef0123456789abcdef", message_id="m-1", message="hi")
        submitted = asyncio.create_task(submit_run(nc, "default", "programmer-helper", request, index=None,
                                                   timeout=20))
        stored = asyncio.create_task(eventlog.append(
            nc, subjects.run_events("default", "programmer-helper", "fedcba98765432100123456789abcdef"), b"{}",
            event_type=E.RUN_STARTED, msg_id="x-1", expected_last_seq=0, retry_seconds=20))
        await asyncio.sleep(0.5)
        assert not submitted.done() and not stored.done(), "both wait for JetStream"
        await declare(nc, Settings.from_env(sysm.env))
        result = await asyncio.wait_for(submitted, 20)
        assert result.run_id == request.run_id and not result.duplicate
        assert await asyncio.wait_for(stored, 20) >= 1
        info = await nc.jetstream().stream_info(subjects.AGENT_RUNS_STREAM)
        assert info.state.messages == 1
    finally:
        await nc.close()

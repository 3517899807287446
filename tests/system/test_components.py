"""Components as separate processes: start in any order, share the work, survive a tool runner
dying mid-call, and stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import threading
import time

import httpx
import pytest
from httpx_sse import aconnect_sse

from agentstream import launch
from agentstream.natsserver import EmbeddedNats, free_port
from tests.conftest import read_events, submit
from tests.harness import new_system


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


async def test_edge_started_before_nats_reports_503_then_works(tmp_path, fresh):
    port = free_port()
    sysm = fresh()
    sysm.nats.stop()  # this test brings its own server, on a port known in advance
    sysm.env["NATS_URL"] = f"nats://127.0.0.1:{port}"
    edge_port = free_port()
    from tests.harness import Proc

    edge = Proc("edge-early", "edge", {**sysm.env, "EDGE_BIND": f"127.0.0.1:{edge_port}"}, sysm.base, "edge ready: ")
    sysm.procs.append(edge)
    edge.start()
    url = f"http://127.0.0.1:{edge_port}"
    async with httpx.AsyncClient(base_url=url) as client:
        health = await client.get("/healthz")
        assert health.status_code == 503
        resp = await client.post("/api/agents/programmer-helper/chat", json={"message": "hi"})
        assert resp.status_code == 503 and resp.json()["error"]["type"] == "unavailable"

        late = EmbeddedNats(tmp_path / "late-nats", port=port, fallback=False)
        late.start()
        try:
            sysm.start_model()
            sysm.start_tool_runner()
            sysm.start_agent_runner()
            # The edge pushes this on its ready pipe once it has reached the late server.
            await asyncio.to_thread(edge.wait_for, launch.CONNECTED["edge"], 20)
            assert (await client.get("/healthz")).status_code == 200
            accepted = await submit(client, "programmer-helper", "What is in pyproject.toml?")
            events = await asyncio.wait_for(read_events(client, accepted["run_id"]), 30)
            assert events[-1]["event"] == "run.completed"
        finally:
            for p in sysm.procs:
                p.terminate(5)
            late.stop()


async def test_two_agent_runners_started_together_share_one_consumer(fresh):
    sysm = fresh()
    sysm.start_model()
    sysm.start_tool_runner()
    # Start both runners at once on a server where nothing is declared yet.
    procs = await asyncio.gather(
        asyncio.to_thread(sysm.start_agent_runner, "runner-x"),
        asyncio.to_thread(sysm.start_agent_runner, "runner-y"),
    )
    assert all(p.alive() for p in procs)
    sysm.start_edge()
    async with httpx.AsyncClient(base_url=sysm.edge_url) as client:
        runs = [await submit(client, "slow-talker", f"story {i}") for i in range(6)]
        streams = await asyncio.wait_for(asyncio.gather(*(read_events(client, r["run_id"]) for r in runs)), 60)
    runners = set()
    for events in streams:
        assert events[-1]["event"] == "run.completed"
        runners.add(next(e["data"]["data"]["runner"] for e in events if e["event"] == "run.started"))
    assert runners <= {"runner-x", "runner-y"}


class _Quick(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        """Quiet: no request log on stderr."""

    def do_GET(self):
        body = b"quick answer"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Slow(http.server.BaseHTTPRequestHandler):
    """Holds its first request until ``release`` is set (the tool runner that sent it is dead by
    then); answers later ones at once."""

    arrived = threading.Event()
    release = threading.Event()
    hits = 0

    def log_message(self, *args):
        """Quiet: no request log on stderr."""

    def do_GET(self):
        type(self).hits += 1
        first = type(self).hits == 1
        type(self).arrived.set()
        if first:
            type(self).release.wait(60)
        body = b"slow answer"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


async def test_tool_runner_killed_mid_call_the_call_is_retried_on_another(fresh):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/slow"
    sysm = fresh(TOOL_HTTP_ALLOW_PRIVATE="true", TOOL_PROGRESS_INTERVAL="0.2")
    try:
        sysm.start_model()
        doomed = sysm.start_tool_runner("tools-doomed")
        sysm.start_agent_runner()
        sysm.start_edge()
        # The survivor executes the call once the dead runner's claim on it has expired (a few s).
        async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=httpx.Timeout(10, read=30)) as client:
            accepted = await submit(client, "fetcher", f"Please fetch {url}")
            assert await asyncio.to_thread(_Slow.arrived.wait, 20)  # the only tool runner has the call
            sysm.start_tool_runner("tools-survivor")
            doomed.kill()  # kill -9 while it waits on the slow server
            _Slow.release.set()  # its answer now goes nowhere
            events = await asyncio.wait_for(read_events(client, accepted["run_id"]), 60)
    finally:
        server.shutdown()
    result = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
    assert result["ok"] is True, result["error"]
    assert result["runner"] == "tools-survivor"
    assert result["attempts"] >= 2
    assert result["output"]["body"] == "slow answer"
    assert events[-1]["event"] == "run.completed"
    assert "slow answer" in next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")


def test_every_component_exits_0_on_sigterm(fresh):
    sysm = fresh()
    procs = [sysm.start_model(), sysm.start_tool_runner(), sysm.start_agent_runner(), sysm.start_webhook_sender(),
             sysm.start_edge()]
    for proc in reversed(procs):
        started = time.monotonic()
        assert proc.terminate(timeout=15) == 0, proc.tail()
        assert time.monotonic() - started < 10


async def test_heartbeats_flow_while_the_model_is_silent(fresh):
    sysm = fresh()
    sysm.start_model()
    sysm.start_agent_runner()
    sysm.start_edge(SSE_HEARTBEAT="0.3")
    async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=30) as client:
        accepted = await submit(client, "slow-starter", "hello")
        raw = b""
        async with client.stream("GET", f"/api/runs/{accepted['run_id']}/events") as resp:
            async for chunk in resp.aiter_bytes():
                raw += chunk
    before_answer = raw.split(b"event: message.delta")[0]
    assert before_answer.count(b": ping\n\n") >= 2, raw[:500]
    assert raw.endswith(b"\n\n") and b"event: run.completed" in raw


async def test_no_tool_runner_the_tool_error_reaches_the_model_at_once_and_the_run_ends(fresh):
    sysm = fresh()
    sysm.start_model()
    sysm.start_agent_runner()
    sysm.start_edge()
    async with httpx.AsyncClient(base_url=sysm.edge_url) as client:
        accepted = await submit(client, "fetcher", "fetch https://example.com/")
        events = await asyncio.wait_for(read_events(client, accepted["run_id"]), 30)
    result = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
    assert result["ok"] is False and result["error"]["type"] == "tool_unavailable"
    assert "no tool runner serves http_request" in result["error"]["message"]
    # No tool runner has served it: the call ends after one attempt, not at its 30-second budget.
    assert result["attempts"] == 1 and result["ms"] < 15_000
    assert events[-1]["event"] == "run.completed"
    answer = next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")
    assert "tool_unavailable" in answer


async def test_tool_runners_serving_some_tools_get_only_those_calls(fresh):
    sysm = fresh(TOOL_HTTP_ALLOW_PRIVATE="true")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quick)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sysm.start_model()
        sysm.start_tool_runner("files-only", TOOL_RUNNER_TOOLS="read_file")
        sysm.start_tool_runner("web-only", TOOL_RUNNER_TOOLS="http_request")
        sysm.start_agent_runner()
        sysm.start_edge()
        async with httpx.AsyncClient(base_url=sysm.edge_url) as client:
            read = await submit(client, "programmer-helper", "What is the first line of pyproject.toml?")
            fetch = await submit(client, "fetcher", f"Please fetch http://127.0.0.1:{server.server_address[1]}/x")
            listing = await submit(client, "programmer-helper", "List the files in the directory `agents`")
            results = {}
            for name, run in (("read", read), ("fetch", fetch), ("list", listing)):
                events = await asyncio.wait_for(read_events(client, run["run_id"]), 60)
                assert events[-1]["event"] == "run.completed", events[-1]
                results[name] = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
    finally:
        server.shutdown()
    assert results["read"]["name"] == "read_file" and results["read"]["ok"] is True
    assert results["read"]["runner"] == "files-only"
    assert results["fetch"]["name"] == "http_request" and results["fetch"]["ok"] is True
    assert results["fetch"]["runner"] == "web-only"
    # list_dir: no tool runner serves it, so the call fails at once instead of at its budget (60 s).
    listed = results["list"]
    assert listed["name"] == "list_dir" and listed["ok"] is False
    assert listed["error"]["type"] == "tool_unavailable" and listed["attempts"] == 1


async def test_a_call_waits_for_its_tool_runner_to_restart(fresh):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quick)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    sysm = fresh(TOOL_HTTP_ALLOW_PRIVATE="true")
    try:
        sysm.start_model()
        tools = sysm.start_tool_runner("tools-1", TOOL_RUNNER_TOOLS="http_request")
        sysm.start_agent_runner()
        sysm.start_edge()
        async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=30) as client:
            first = await submit(client, "fetcher", f"Please fetch {url}/first")
            events = await asyncio.wait_for(read_events(client, first["run_id"]), 60)
            assert next(e for e in events if e["event"] == "tool.result")["data"]["data"]["ok"] is True
            tools.kill()  # the only tool runner serving http_request goes away ...
            second = await submit(client, "fetcher", f"Please fetch {url}/second")
            async with aconnect_sse(client, "GET", f"/api/runs/{second['run_id']}/events") as source:
                async for sse in source.aiter_sse():
                    if sse.event == "tool.call":
                        break
            await asyncio.sleep(1.0)  # ... for a while: the call keeps being retried meanwhile
            sysm.start_tool_runner("tools-2", TOOL_RUNNER_TOOLS="http_request")  # ... and comes back
            events = await asyncio.wait_for(read_events(client, second["run_id"]), 60)
    finally:
        server.shutdown()
    result = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
    assert result["ok"] is True and result["runner"] == "tools-2" and result["attempts"] > 1
    assert events[-1]["event"] == "run.completed"


def test_a_tool_runner_with_an_unknown_tool_says_so_and_exits(fresh):
    sysm = fresh()
    with pytest.raises(RuntimeError) as err:
        sysm.start_tool_runner("bad", TOOL_RUNNER_TOOLS="read_file,shell")
    assert "exited with 2" in str(err.value)
    assert "TOOL_RUNNER_TOOLS='read_file,shell': unknown tool(s) shell" in str(err.value)
    assert "read_file, list_dir, http_request" in str(err.value)


async def test_keys_go_only_where_the_operator_sent_them(fresh):
    # A second model server stands in for one an agent file points at; it records a digest of
    # the Authorization header each request carried.
    sysm = fresh()
    sysm.start_model()  # the default model server (LLM_BASE_URL)
    other = sysm._proc("other-model", "agentstream.builtin_model", "builtin-model ready: ",
                       BUILTIN_MODEL_BIND=f"127.0.0.1:{free_port()}")
    agents = sysm.base / "agents"
    (agents / "own-llm.yaml").write_text(
        f"name: own-llm\nmodel: builtin\nllm: {{base_url: '{other.ready_value}', api_key_env: AGENTSTREAM_KEY_OWN}}\n")
    (agents / "keyless-own.yaml").write_text(
        f"name: keyless-own\nmodel: builtin\nllm: {{base_url: '{other.ready_value}'}}\n")
    (agents / "home-key.yaml").write_text(
        f"name: home-key\nmodel: builtin\nllm: {{base_url: '{other.ready_value}', api_key_env: HOME}}\n")
    sysm.start_agent_runner(LLM_API_KEY="sk-global-secret", AGENTSTREAM_KEY_OWN="sk-own-secret", HOME="/home/secret")
    sysm.start_edge()
    async with httpx.AsyncClient(base_url=sysm.edge_url) as client:
        for agent in ("own-llm", "keyless-own", "plain"):
            accepted = await submit(client, agent, f"hello from {agent}")
            events = await asyncio.wait_for(read_events(client, accepted["run_id"]), 30)
            assert events[-1]["event"] == "run.completed", events[-1]
        refused = await client.post("/api/agents/home-key/chat", json={"message": "hi"})
        listing = (await client.get("/api/agents")).json()
        seen_default = (await client.get(sysm.model_url.removesuffix("/v1") + "/debug/requests")).json()["requests"]
        seen_other = (await client.get(other.ready_value.removesuffix("/v1") + "/debug/requests")).json()["requests"]

    def auth_of(requests: list[dict], agent: str) -> set[str | None]:
        return {r["auth_sha256"] for r in requests if f"hello from {agent}" in json.dumps(r["messages"])}

    def digest(key: str) -> str:
        return hashlib.sha256(f"Bearer {key}".encode()).hexdigest()[:16]

    assert auth_of(seen_other, "own-llm") == {digest("sk-own-secret")}
    assert auth_of(seen_other, "keyless-own") == {None}  # not LLM_API_KEY: that is for LLM_BASE_URL only
    assert auth_of(seen_default, "plain") == {digest("sk-global-secret")}
    assert not auth_of(seen_default, "own-llm") and not auth_of(seen_default, "keyless-own")
    assert refused.status_code == 404
    assert {"file": "home-key.yaml", "field": "llm.api_key_env",
            "reason": "'HOME' does not match LLM_KEY_ENV_PATTERN (AGENTSTREAM_KEY_*); put the key in a variable whose "
                      "name matches it"} in listing["errors"]


async def test_a_file_swapped_for_a_fifo_never_stalls_the_tool_runner(fresh, tmp_path):
    # A read_file whose file became a FIFO between its check and its open used to wait for a
    # writer forever, holding a thread; once the threads were all taken, every tenant's
    # read_file timed out. Now the FIFO is opened without waiting and refused.
    import nats

    from schemas import subjects
    from schemas.permissions import Role
    from schemas.tools import ToolCallRequest, ToolCallResult

    root = tmp_path / "files"
    root.mkdir()
    (root / "notes.txt").write_text("one\ntwo\n")
    (root / "spare.txt").write_text("plain text\n")
    sysm = fresh(TOOL_ROOT=str(root))
    sysm.start_tool_runner("tools-fifo")
    nc = await nats.connect(**sysm.connect_options(Role.AGENT_RUNNER))  # who calls tools
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(root / "spare.txt", root / "swapped")
            os.mkfifo(root / "fifo-tmp")
            os.rename(root / "fifo-tmp", root / "swapped")
            os.rename(root / "swapped", root / "fifo-gone")
            os.unlink(root / "fifo-gone")
            (root / "spare.txt").write_text("plain text\n")

    async def call(tenant: str, path: str, n: int) -> ToolCallResult:
        request = ToolCallRequest(run_id=f"run-{n}", tool_call_id=f"call-{n}", arguments={"path": path}, timeout=5)
        reply = await nc.request(subjects.tool(tenant, "read_file"), request.model_dump_json().encode(), timeout=10)
        return ToolCallResult.model_validate_json(reply.data)

    swapper = threading.Thread(target=swap)
    swapper.start()
    def met_the_fifo() -> bool:
        return any(not r.ok and r.error is not None and r.error.type == "not_a_file" for r in results)

    try:
        results: list[ToolCallResult] = []
        batch = 0
        deadline = asyncio.get_running_loop().time() + 30
        # At least 25 batches, and on until some call met the FIFO (how soon depends on how the
        # machine schedules the swapping thread), within the deadline.
        while batch < 25 or (not met_the_fifo() and asyncio.get_running_loop().time() < deadline):
            results += await asyncio.gather(*(call("mallory", "swapped", batch * 16 + i) for i in range(16)))
            batch += 1
    finally:
        stop.set()
        swapper.join()
    try:
        outcomes = {"ok" if r.ok else r.error.type for r in results}
        assert outcomes <= {"ok", "not_found", "not_a_file"}, outcomes  # never "timeout"
        assert "not_a_file" in outcomes  # some calls did meet the FIFO
        after = await call("alice", "notes.txt", 999)
        assert after.ok and after.output["content"] == "one\ntwo\n"
    finally:
        await nc.close()

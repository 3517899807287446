"""Agents using MCP servers' tools, end to end: a real system (nats-server with authentication,
the built-in model, an edge, an agent runner, a tool runner) and two MCP servers written with the
SDK's FastMCP: one over stdio, started by the tool runner (tests/mcp_servers/notes_stdio.py), one
over streamable HTTP on loopback, started here (tests/mcp_servers/lookup_http.py) and allowed by
MCP_ALLOW_HOSTS. The built-in model calls tools named in the message ("use the tool X with {...}").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import nats
import nats.js.errors
import pytest

from agent_runner.tool_client import ToolClient, ToolOutcome
from agentstream.natsserver import free_port
from schemas import subjects
from schemas.mcp import McpServer
from schemas.permissions import Role
from tests.conftest import eventually, read_events, submit
from tests.harness import REPO, System, new_system
from tool_runner.mcp.session import McpPool, SessionKey
from tool_runner.mcp.tools import output_of

NOTES = REPO / "tests" / "mcp_servers" / "notes_stdio.py"
LOOKUP = REPO / "tests" / "mcp_servers" / "lookup_http.py"


def _agent_files(target: Path, port: int) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    (target / "mcp-user.yaml").write_text(
        "name: mcp-user\n"
        "description: Answers from two MCP servers\n"
        "max_steps: 3\n"
        "mcp_servers:\n"
        "  - name: notes\n"
        f"    command: {json.dumps(sys.executable)}\n"
        f"    args: [{json.dumps(str(NOTES))}]\n"
        "    env: {NOTES_GREETING: hello}\n"
        "    tools: [read_note, whoami, crash, append_note]\n"
        "  - name: web\n"
        f"    url: http://127.0.0.1:{port}/mcp\n"
    )
    # The same HTTP server under a name MCP_ALLOW_HOSTS does not list: refused (loopback).
    (target / "mcp-blocked.yaml").write_text(
        "name: mcp-blocked\n"
        "max_steps: 3\n"
        "mcp_servers:\n"
        "  - name: web\n"
        f"    url: http://localhost:{port}/mcp\n"
    )
    return target


def _wait_listening(port: int, proc: subprocess.Popen, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MCP server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the MCP server is not listening on {port} within {within:g} s")


@pytest.fixture(scope="module")
def mcp_system(tmp_path_factory):
    base = tmp_path_factory.mktemp("mcp")
    port = free_port()
    lookup = subprocess.Popen([sys.executable, str(LOOKUP), str(port)], cwd=REPO,
                              stdout=open(base / "lookup.log", "wb"), stderr=subprocess.STDOUT)
    sysm: System | None = None
    try:
        _wait_listening(port, lookup)
        sysm = new_system(base, extra_agents=_agent_files(base / "extra", port),
                          MCP_STDIO_COMMANDS=sys.executable, MCP_ALLOW_HOSTS=f"127.0.0.1:{port}")
        sysm.start_model()
        sysm.start_tool_runner("mcp-tools")
        sysm.start_agent_runner("mcp-runner")
        sysm.start_edge()
        yield sysm
    finally:
        if sysm is not None:
            sysm.stop()
        lookup.terminate()
        lookup.wait(10)


@pytest.fixture
async def edge(mcp_system):
    async with httpx.AsyncClient(base_url=mcp_system.edge_url, timeout=httpx.Timeout(10, read=60)) as client:
        yield client


async def _ask(client: httpx.AsyncClient, agent: str, message: str) -> list[dict]:
    run = await submit(client, agent, message)
    events = await read_events(client, run["run_id"])
    assert events[-1]["event"] == "run.completed", events[-1]
    return events


def _results(events: list[dict]) -> list[dict]:
    return [e["data"]["data"] for e in events if e["event"] == "tool.result"]


def _answer(events: list[dict]) -> str:
    return next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")


async def _tool_request(system: System, tenant: str, tool: str, arguments: dict, *,
                        key: str | None = None) -> ToolOutcome:
    """One request on ``tools.{tenant}.{tool}`` as an agent runner makes it (``key``: its
    idempotency key; default a new one)."""
    nc = await nats.connect(**system.connect_options(Role.AGENT_RUNNER))
    try:
        call_id = f"call-{uuid.uuid4().hex[:8]}"
        return await ToolClient(nc).call(tenant, tool, run_id="mcp-test", tool_call_id=call_id,
                                         idempotency_key=key or f"mcp-test:1:{call_id}", arguments=arguments,
                                         budget=30)
    finally:
        await nc.close()


async def test_agent_answers_from_a_stdio_and_an_http_mcp_server(edge):
    events = await _ask(edge, "mcp-user", 'use the tool notes__read_note with {"name": "groceries"} and '
                                          'use the tool web__lookup with {"key": "abc"}')
    calls = [e["data"]["data"] for e in events if e["event"] == "tool.call"]
    assert [c["name"] for c in calls] == ["notes__read_note", "web__lookup"]
    results = {r["name"]: r for r in _results(events)}  # in the order they finished: the calls ran together
    assert all(r["ok"] for r in results.values()), results
    assert results["notes__read_note"]["output"]["text"] == "note groceries says: hello from default"
    assert results["web__lookup"]["output"]["text"] == "the value of abc is ABC-42"
    answer = _answer(events)
    assert "note groceries says: hello from default" in answer
    assert "the value of abc is ABC-42" in answer


async def test_only_allowed_tools_are_offered_and_callable(edge, mcp_system):
    marker = uuid.uuid4().hex[:8]
    events = await _ask(edge, "mcp-user", f"use the tool notes__secret with {{}} ({marker})")
    (result,) = _results(events)
    assert not result["ok"] and result["error"]["type"] == "unknown_tool"
    async with httpx.AsyncClient() as model:
        requests = (await model.get(f"{mcp_system.model_url.removesuffix('/v1')}/debug/requests")).json()["requests"]
    offered = next(r["tools"] for r in requests if marker in json.dumps(r["messages"]))
    assert set(offered) == {"notes__read_note", "notes__whoami", "notes__crash", "notes__append_note", "web__lookup"}
    # The tool runner refuses it too, whoever asks.
    direct = await _tool_request(mcp_system, "default", subjects.MCP_CALL_TOOL,
                                 {"agent": "mcp-user", "server": "notes", "tool": "secret"})
    assert not direct.ok and direct.error.type == "unknown_tool"


async def test_an_unknown_mcp_tool_is_an_error_result(edge, mcp_system):
    events = await _ask(edge, "mcp-user", "use the tool web__nope with {}")
    (result,) = _results(events)
    assert not result["ok"] and result["error"]["type"] == "unknown_tool"
    assert "web__lookup" in result["error"]["message"]  # it names what there is
    direct = await _tool_request(mcp_system, "default", subjects.MCP_CALL_TOOL,
                                 {"agent": "mcp-user", "server": "web", "tool": "nope"})
    assert not direct.ok and direct.error.type == "unknown_tool" and "lookup" in direct.error.message
    unknown_server = await _tool_request(mcp_system, "default", subjects.MCP_LIST_TOOL,
                                         {"agent": "mcp-user", "server": "elsewhere"})
    assert not unknown_server.ok and unknown_server.error.type == "unknown_server"


async def test_a_stdio_server_that_dies_is_started_again(edge):
    def pid_of(events: list[dict]) -> int:
        (result,) = _results(events)
        assert result["ok"], result
        return int(result["output"]["text"].rsplit(" ", 1)[1])

    first = pid_of(await _ask(edge, "mcp-user", "use the tool notes__whoami"))
    os.kill(first, signal.SIGKILL)  # the server dies between two calls
    second = pid_of(await _ask(edge, "mcp-user", "use the tool notes__whoami"))
    assert second != first
    # It dies during a call: that call (not read-only: it may have acted) is not repeated.
    events = await _ask(edge, "mcp-user", "use the tool notes__crash")
    (crashed,) = _results(events)
    assert not crashed["ok"] and crashed["error"]["type"] == "mcp_connection_lost", crashed
    assert "went away" in _answer(events)
    third = pid_of(await _ask(edge, "mcp-user", "use the tool notes__whoami"))
    assert third not in (first, second)


async def test_sessions_are_per_tenant(mcp_system):
    note = {"agent": "mcp-user", "server": "notes", "tool": "read_note", "arguments": {"name": "x"}}
    alice = await _tool_request(mcp_system, "alice", subjects.MCP_CALL_TOOL, note)
    bob = await _tool_request(mcp_system, "bob", subjects.MCP_CALL_TOOL,
                              {"agent": "mcp-user", "server": "notes", "tool": "whoami"})
    alice_pid = await _tool_request(mcp_system, "alice", subjects.MCP_CALL_TOOL,
                                    {"agent": "mcp-user", "server": "notes", "tool": "whoami"})
    assert alice.ok and alice.output["text"] == "note x says: hello from alice"
    assert bob.ok and alice_pid.ok and bob.output["text"] != alice_pid.output["text"]  # two processes


async def test_an_mcp_url_at_a_refused_address_is_not_reached(edge, mcp_system):
    listing = await _tool_request(mcp_system, "default", subjects.MCP_LIST_TOOL,
                                  {"agent": "mcp-blocked", "server": "web"})
    assert not listing.ok and listing.error.type == "address_refused", listing.error
    assert "MCP_ALLOW_HOSTS" in listing.error.message
    events = await _ask(edge, "mcp-blocked", 'use the tool web__lookup with {"key": "abc"}')
    (result,) = _results(events)  # its tools were never offered
    assert not result["ok"] and result["error"]["type"] == "unknown_tool"


async def test_the_listing_is_answered_within_the_tool_budget(mcp_system):
    """A tool list comes back as a tool result: its tools, their schemas and read-only hints."""
    listing = await asyncio.wait_for(_tool_request(mcp_system, "default", subjects.MCP_LIST_TOOL,
                                                   {"agent": "mcp-user", "server": "notes"}), 30)
    assert listing.ok, listing.error
    tools = {t["name"]: t for t in listing.output["tools"]}
    assert set(tools) == {"read_note", "whoami", "crash", "append_note"}
    assert tools["read_note"]["model_name"] == "notes__read_note"
    assert tools["read_note"]["read_only"] and not tools["crash"]["read_only"]
    assert tools["read_note"]["input_schema"]["properties"]["name"]["type"] == "string"


async def test_a_tool_without_read_only_hint_is_executed_once_per_call(mcp_system):
    """A tool the server does not mark read-only is kept in TOOL_RESULTS (tool_runner/once.py): a
    retry of the call (same idempotency key, on any tool runner) gets the first result; a read-only
    tool is simply executed again."""
    key = f"mcp-test:1:{uuid.uuid4().hex[:8]}"
    append = {"agent": "mcp-user", "server": "notes", "tool": "append_note",
              "arguments": {"name": "n", "text": "t"}}
    first = await _tool_request(mcp_system, "carol", subjects.MCP_CALL_TOOL, append, key=key)
    again = await _tool_request(mcp_system, "carol", subjects.MCP_CALL_TOOL, append, key=key)
    other = await _tool_request(mcp_system, "carol", subjects.MCP_CALL_TOOL, append)
    assert (first.output["text"], again.output["text"], other.output["text"]) == (
        "kept 1 note(s)", "kept 1 note(s)", "kept 2 note(s)")
    read_key = f"mcp-test:1:{uuid.uuid4().hex[:8]}"
    read = await _tool_request(mcp_system, "carol", subjects.MCP_CALL_TOOL,
                               {"agent": "mcp-user", "server": "notes", "tool": "read_note",
                                "arguments": {"name": "n"}}, key=read_key)
    assert read.ok
    nc = await nats.connect(**mcp_system.connect_options(Role.ADMIN))
    try:
        kv = await nc.jetstream().key_value(subjects.TOOL_RESULTS_BUCKET)
        stored = json.loads((await kv.get(subjects.tool_result_key("carol", key))).value)
        assert stored["state"] == "done" and stored["result"]["output"]["text"] == "kept 1 note(s)"
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(subjects.tool_result_key("carol", read_key))
    finally:
        await nc.close()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_an_idle_session_is_closed_and_its_server_process_ends():
    """The tool runner's pool alone (no bus): an unused session is closed after MCP_IDLE_TIMEOUT."""
    pool = McpPool(connect_timeout=20, idle_timeout=0.5, allow_hosts="")
    pool.start()
    spec = McpServer(name="notes", command=sys.executable, args=[str(NOTES)])
    try:
        session = await pool.session(SessionKey("t", "a", "notes"), spec, cwd=REPO, env={}, timeout=20)
        pid = int(output_of(await session.call("whoami", {}, 10))["text"].rsplit(" ", 1)[1])
        assert pool.open_sessions == 1 and _running(pid)

        async def closed() -> bool:
            """the idle session was closed and its server process ended"""
            return pool.open_sessions == 0 and not _running(pid)

        await eventually(closed, within=15)
    finally:
        await pool.close()

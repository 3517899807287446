"""The edge as an MCP server (``/mcp``), driven by the official SDK's client over real HTTP against
the shared system: a tenant's agents are its tools, a call runs the agent and answers with its
answer, progress arrives while it runs, failures are error results, and the edge's door (key,
Origin, Content-Type) holds for /mcp as for every route."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ALICE_KEY, BOB_KEY, eventually

RUN_ID = "agentstream/run_id"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def mcp_session(edge_url: str, key: str) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session with the edge, as the tenant of ``key``."""
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx.Timeout(30, read=120)) as http,
        streamable_http_client(f"{edge_url}/mcp", http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def _text(result) -> str:
    return "".join(block.text for block in result.content if block.type == "text")


async def test_the_tools_are_the_tenants_agents(system):
    async with mcp_session(system.edge_url, ALICE_KEY) as alice:
        tools = {t.name: t for t in (await alice.list_tools()).tools}
    assert {"plain", "programmer-helper", "slow-talker", "failing-model"} <= set(tools)
    assert tools["plain"].description == "No tools of its own"
    assert tools["plain"].inputSchema["required"] == ["message"]
    async with mcp_session(system.edge_url, BOB_KEY) as bob:  # bob's key allows one agent
        assert [t.name for t in (await bob.list_tools()).tools] == ["programmer-helper"]


async def test_calling_an_agent_answers_with_its_answer(system, api):
    async with mcp_session(system.edge_url, ALICE_KEY) as alice:
        result = await alice.call_tool("plain", {"message": "hello over MCP"})
    assert not result.isError, _text(result)
    assert "hello over MCP" in _text(result)
    run_id = result.meta[RUN_ID]
    run = (await api.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "completed" and run["agent"] == "plain"
    assert run["answer"] == _text(result)


async def test_progress_reports_tool_calls_and_text_while_it_runs(system):
    notes: list[tuple[float, str]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, message or ""))

    async with mcp_session(system.edge_url, ALICE_KEY) as alice:
        result = await alice.call_tool("programmer-helper", {"message": "How many lines does pyproject.toml have?"},
                                       progress_callback=on_progress)
    assert not result.isError, _text(result)
    messages = [m for _, m in notes]
    assert messages[0].startswith(f"run {result.meta[RUN_ID]} ")
    assert any(m.startswith('tool call read_file {"path": "pyproject.toml"}') for m in messages), messages
    assert "tool result read_file: ok" in messages
    streamed = "".join(messages[messages.index("tool result read_file: ok") + 1:])
    assert _text(result) in streamed  # the answer arrived as text progress before the result
    assert [p for p, _ in notes] == sorted({p for p, _ in notes})  # strictly increasing


async def test_a_failing_agent_gives_an_error_result(system):
    async with mcp_session(system.edge_url, ALICE_KEY) as alice:
        result = await alice.call_tool("failing-model", {"message": "hello"})
    assert result.isError
    assert _text(result).startswith("the run failed (llm_http_error)"), _text(result)


async def test_an_unknown_tool_or_another_tenants_agent_is_an_error(system):
    async with mcp_session(system.edge_url, ALICE_KEY) as alice:
        unknown = await alice.call_tool("no-such-agent", {"message": "hello"})
        bad_arguments = await alice.call_tool("plain", {"question": "hello"})
    assert unknown.isError and "no tool 'no-such-agent'" in _text(unknown)
    assert bad_arguments.isError and "message" in _text(bad_arguments)
    async with mcp_session(system.edge_url, BOB_KEY) as bob:  # "plain" is not among bob's agents
        refused = await bob.call_tool("plain", {"message": "hello"})
    assert refused.isError and "no tool 'plain'" in _text(refused)


async def test_a_bad_key_is_refused(system):
    async with httpx.AsyncClient(base_url=system.edge_url) as client:
        for headers in ({"Authorization": "Bearer wrong-key"}, {}):
            resp = await client.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers})
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"]["type"] == "unauthorized"
    # The SDK's client sees the 401 too: it raises it (inside its task group's exception group).
    with pytest.raises(ExceptionGroup) as caught:
        async with mcp_session(system.edge_url, "wrong-key"):
            pass
    statuses = [e.response.status_code for e in caught.value.exceptions if isinstance(e, httpx.HTTPStatusError)]
    assert statuses == [401], caught.value.exceptions


async def test_the_door_rules_hold_for_mcp(system):
    auth = {"Authorization": f"Bearer {ALICE_KEY}"}
    async with httpx.AsyncClient(base_url=system.edge_url, headers=auth) as client:
        page = {"Origin": "https://evil.example"}
        post = await client.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **page})
        get = await client.get("/mcp", headers={"Accept": "text/event-stream", **page})
        assert (post.status_code, get.status_code) == (403, 403)
        assert get.json()["error"]["field"] == "Origin"
        form = await client.post("/mcp", content=b"{}", headers={"Content-Type": "text/plain"})
        assert form.status_code == 415
        stream = await client.get("/mcp", headers={"Accept": "text/event-stream"})
        assert stream.status_code == 405 and stream.headers["Allow"] == "POST, DELETE"
        answer = await client.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        assert answer.status_code == 200, answer.text
        assert "2025-11-25" in answer.text


async def test_a_body_that_is_not_text_is_a_parse_error_not_a_500(system):
    # The SDK reads the body as text; bytes that are not UTF-8 once made it answer 500.
    auth = {"Authorization": f"Bearer {ALICE_KEY}"}
    async with httpx.AsyncClient(base_url=system.edge_url, headers=auth) as client:
        for body in (b"\xff\xfe{", b"{not json"):
            resp = await client.post("/mcp", content=body, headers={**MCP_HEADERS, "Content-Type": "application/json"})
            assert resp.status_code == 400, resp.text
            error = resp.json()
            assert error["jsonrpc"] == "2.0" and error["error"]["code"] == -32700  # JSON-RPC 2.0, parse error
            assert error["error"]["message"].startswith("Parse error")


async def test_a_client_that_goes_away_cancels_the_run(system, api):
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if not started.done() and message and message.startswith("run "):
            started.set_result(message.split()[1])

    async def call() -> None:
        async with mcp_session(system.edge_url, ALICE_KEY) as alice:
            await alice.call_tool("long-story", {"message": "tell me a story"}, progress_callback=on_progress)

    client = asyncio.create_task(call())
    run_id = await asyncio.wait_for(started, 30)
    client.cancel()  # the client leaves mid-run: its HTTP connection closes
    with contextlib.suppress(BaseException):
        await client

    async def cancelled() -> bool:
        """the run ended cancelled"""
        return (await api.get(f"/api/runs/{run_id}")).json()["status"] == "cancelled"

    await eventually(cancelled, within=20)

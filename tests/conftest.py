"""Fixtures: a shared running system (real nats-server, built-in model server, edge, agent runner,
two tool runners as separate processes), and helpers to talk to it over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.harness import REPO, System, new_system

ALICE_KEY = "alice-secret-key"
BOB_KEY = "bob-secret-key"


def write_keys_file(path: Path) -> Path:
    """Two tenants: alice (plain key) and bob (key given as its SHA-256, limited to one agent)."""
    bob_digest = hashlib.sha256(BOB_KEY.encode()).hexdigest()
    path.write_text(
        "tenants:\n"
        f"  alice:\n    keys: [{ALICE_KEY}]\n"
        f"  bob:\n    keys: ['sha256:{bob_digest}']\n    agents: [programmer-helper]\n"
    )
    return path


@pytest.fixture(scope="session")
def system(tmp_path_factory) -> System:
    """The shared system. Tests must not kill its processes (fault tests build their own)."""
    base = tmp_path_factory.mktemp("system")
    sysm = new_system(base, LLM_MAX_ATTEMPTS="2", TOOL_HTTP_ALLOW_PRIVATE="true")
    with sysm:
        sysm.start_model()
        sysm.start_tool_runner("tools-a")
        sysm.start_tool_runner("tools-b")
        sysm.start_agent_runner("runner-1")
        sysm.start_edge(KEYS_FILE=str(write_keys_file(base / "keys.yaml")))
        yield sysm


def edge_client(url: str, key: str = ALICE_KEY) -> httpx.AsyncClient:
    """An HTTP client for the edge at ``url`` as the tenant whose API key is ``key``, with the
    suite's timeouts (10 s; 60 s to read a response)."""
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                             timeout=httpx.Timeout(10, read=60))


@pytest.fixture
async def api(system):
    """An HTTP client for the shared edge, as tenant alice."""
    async with edge_client(system.edge_url, ALICE_KEY) as client:
        yield client


async def submit(client: httpx.AsyncClient, agent: str, message: str, **extra) -> dict:
    """POST a chat message; asserts the 202 and returns its JSON body."""
    resp = await client.post(f"/api/agents/{agent}/chat", json={"message": message, **extra})
    assert resp.status_code == 202, resp.text
    return resp.json()


async def read_events(client: httpx.AsyncClient, run_id: str, *, last_event_id: int | None = None,
                      stop_after: int | None = None) -> list[dict]:
    """Read a run's SSE stream until it closes (after the terminal event) or ``stop_after``
    events; returns ``[{"id": int, "event": str, "data": dict}]`` in arrival order."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events = []
    async with aconnect_sse(client, "GET", f"/api/runs/{run_id}/events", headers=headers) as source:
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            if not sse.data:
                continue
            events.append({"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)})
            if stop_after is not None and len(events) >= stop_after:
                break
    return events


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 10.0, every: float = 0.1) -> None:
    """Wait until ``check()`` is true (a state another process reaches, observable only by asking),
    asking every ``every`` seconds; AssertionError after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {within:g} s: {check.__doc__ or check}")
        await asyncio.sleep(every)


def repo_file(path: str) -> str:
    return (REPO / path).read_text()

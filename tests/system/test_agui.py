"""POST /ag-ui/{agent}: AG-UI events, each parsed back with the ``ag-ui-protocol`` models, and
``@ag-ui/client`` (the protocol's own TypeScript client, from npm) run against the endpoint.

The system is the shared one (tests/conftest.py): real NATS, a real agent runner and tool
runners, the built-in model.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from ag_ui.core import Event, EventType, RunAgentInput
from pydantic import TypeAdapter

from tests.conftest import ALICE_KEY, BOB_KEY, edge_client, eventually

EVENT: TypeAdapter[Event] = TypeAdapter(Event)
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CLIENT_DIR = Path(__file__).resolve().parent.parent / "agui_client"


def run_input(messages: list[dict], **extra) -> dict:
    """A RunAgentInput (camelCase, as AG-UI clients send it), validated with the package's model."""
    doc = {"threadId": f"thread-{uuid.uuid4().hex[:8]}", "runId": f"run-{uuid.uuid4().hex}", "messages": messages,
           "tools": [], "context": [], "state": {}, "forwardedProps": {}, **extra}
    RunAgentInput.model_validate(doc)
    return doc


def user(text: str) -> dict:
    return {"id": f"m-{uuid.uuid4().hex[:8]}", "role": "user", "content": text}


@pytest.fixture
async def api(system):
    async with edge_client(system.edge_url, ALICE_KEY) as c:
        yield c


async def read_events(resp: httpx.Response, *, stop_after: int | None = None) -> list:
    """Every ``data:`` frame parsed back into an ``ag_ui.core`` event (``: ping`` comments skipped)."""
    events = []
    buf = b""
    async for chunk in resp.aiter_raw():
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            text = frame.decode()
            if text.startswith(":"):
                continue
            assert text.startswith("data: ") and "\n" not in text, text[:200]
            events.append(EVENT.validate_json(text[len("data: "):]))
            if stop_after is not None and len(events) >= stop_after:
                return events
    return events


async def run_agent(api: httpx.AsyncClient, agent: str, doc: dict) -> tuple[httpx.Response, list]:
    async with api.stream("POST", f"/ag-ui/{agent}", json=doc) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        return resp, await read_events(resp)


def check_order(events: list) -> None:
    """RUN_STARTED first and the run's end last; steps, text messages and tool calls nest."""
    types = [e.type for e in events]
    assert types[0] == EventType.RUN_STARTED
    assert types[-1] in (EventType.RUN_FINISHED, EventType.RUN_ERROR)
    assert types.count(EventType.RUN_STARTED) == 1 and types.count(types[-1]) == 1
    step = message = None
    calls: set[str] = set()
    for e in events[1:-1]:
        if e.type == EventType.STEP_STARTED:
            assert step is None
            step = e.step_name
        elif e.type == EventType.STEP_FINISHED:
            assert step == e.step_name and message is None and not calls
            step = None
        elif e.type == EventType.TEXT_MESSAGE_START:
            assert step is not None and message is None
            message = e.message_id
        elif e.type == EventType.TEXT_MESSAGE_CONTENT:
            assert message == e.message_id and e.delta
        elif e.type == EventType.TEXT_MESSAGE_END:
            assert message == e.message_id
            message = None
        elif e.type == EventType.TOOL_CALL_START:
            assert step is not None and message is None
            calls.add(e.tool_call_id)
        elif e.type in (EventType.TOOL_CALL_ARGS, EventType.TOOL_CALL_END):
            assert e.tool_call_id in calls
            if e.type == EventType.TOOL_CALL_END:
                calls.discard(e.tool_call_id)
    if types[-1] == EventType.RUN_FINISHED:
        assert step is None and message is None and not calls, "everything is closed before RUN_FINISHED"


async def test_server_side_tools_steps_text_and_usage(api):
    doc = run_input([user("How many lines does pyproject.toml have?")])
    resp, events = await run_agent(api, "programmer-helper", doc)
    check_order(events)
    types = [e.type for e in events]
    assert events[0].thread_id == doc["threadId"] and events[0].run_id == doc["runId"]
    assert [e.step_name for e in events if e.type == EventType.STEP_STARTED] == ["step 1", "step 2"]
    start = next(e for e in events if e.type == EventType.TOOL_CALL_START)
    assert start.tool_call_name == "read_file"
    args = "".join(e.delta for e in events if e.type == EventType.TOOL_CALL_ARGS)
    assert json.loads(args) == {"path": "pyproject.toml"}
    result = next(e for e in events if e.type == EventType.TOOL_CALL_RESULT)
    assert result.tool_call_id == start.tool_call_id and json.loads(result.content)["path"] == "pyproject.toml"
    assert types.index(EventType.TOOL_CALL_RESULT) < types.index(EventType.TEXT_MESSAGE_START)
    text = "".join(e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)
    assert "lines" in text
    finished = events[-1]
    assert finished.type == EventType.RUN_FINISHED and finished.run_id == doc["runId"]
    assert finished.usage[0].total_tokens == finished.usage[0].input_tokens + finished.usage[0].output_tokens > 0
    run = (await api.get(f"/api/runs/{resp.headers['x-run-id']}")).json()
    assert run["conversation_id"] == doc["threadId"] and run["message_id"] == doc["runId"]
    assert run["answer"] == text and run["usage"]["total_tokens"] == finished.usage[0].total_tokens

    # The same runId names the same run: posting it again replays that run, it does not run twice.
    again, replayed = await run_agent(api, "programmer-helper", doc)
    assert again.headers["x-run-id"] == resp.headers["x-run-id"]
    assert "".join(e.delta for e in replayed if e.type == EventType.TEXT_MESSAGE_CONTENT) == text


async def test_frontend_tool_ends_the_run_and_its_result_starts_the_next(api, system):
    ask = user('Please call get_weather with {"city": "Paris"}')
    first = run_input([ask], tools=[WEATHER], context=[{"description": "units", "value": "metric"}])
    _, events = await run_agent(api, "plain", first)
    check_order(events)
    types = [e.type for e in events]
    assert types[types.index(EventType.TOOL_CALL_END) + 1:] == [EventType.STEP_FINISHED, EventType.RUN_FINISHED]
    assert EventType.TOOL_CALL_RESULT not in types, "the application runs its own tools"
    start = next(e for e in events if e.type == EventType.TOOL_CALL_START)
    assert start.tool_call_name == "get_weather"
    args = "".join(e.delta for e in events if e.type == EventType.TOOL_CALL_ARGS)

    second = run_input([
        ask,
        {"id": start.parent_message_id, "role": "assistant", "toolCalls": [
            {"id": start.tool_call_id, "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
        {"id": "tool-1", "role": "tool", "toolCallId": start.tool_call_id, "content": '{"temp_c": 21}'},
    ], tools=[WEATHER], threadId=first["threadId"], context=first["context"])
    _, events = await run_agent(api, "plain", second)
    check_order(events)
    assert "temp_c" in "".join(e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)
    log = (await api.get(system.model_url.removesuffix("/v1") + "/debug/requests")).json()["requests"]
    sent = next(r for r in reversed(log) if start.tool_call_id in json.dumps(r["messages"]))["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user", "assistant", "tool"]
    assert sent[1]["content"] == "Context from the application:\n- units: metric"


async def test_refusals_name_the_field(api, system):
    doc = run_input([user("hi")])
    unknown = await api.post("/ag-ui/no-such-agent", json=doc)
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "name"
    for bad, field in (
        ({**doc, "messages": [{"id": "m", "role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({**doc, "messages": [{"id": "m", "role": "user"}]}, "messages.0.content"),
        ({k: v for k, v in doc.items() if k != "runId"}, "runId"),
        ({**doc, "threadId": "t" * 201}, "threadId"),
        ({**doc, "messages": []}, "messages"),
        ({**doc, "tools": [{"name": "read file", "description": "x"}]}, "tools.0.name"),
    ):
        resp = await api.post("/ag-ui/plain", json=bad)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["field"] == field, (field, resp.json())
    async with httpx.AsyncClient(base_url=system.edge_url, headers={"Authorization": f"Bearer {BOB_KEY}"}) as bob:
        assert (await bob.post("/ag-ui/plain", json=doc)).status_code == 404, "not among bob's agents"


async def test_a_failed_run_is_run_error(api):
    _, events = await run_agent(api, "failing-model", run_input([user("hi")]))
    check_order(events)
    assert [e.type for e in events] == [EventType.RUN_STARTED, EventType.RUN_ERROR]
    assert events[-1].code == "llm_http_error" and "500" in events[-1].message


async def test_client_disconnect_cancels_the_run(api):
    async with api.stream("POST", "/ag-ui/slow-talker", json=run_input([user(f"go {time.monotonic_ns()}")])) as r:
        run_id = r.headers["x-run-id"]
        events = await read_events(r, stop_after=5)  # started, step, message start, two fragments; then gone
    assert events[-1].type == EventType.TEXT_MESSAGE_CONTENT

    async def ended() -> bool:
        """the run ended"""
        return (await api.get(f"/api/runs/{run_id}")).json()["status"] not in ("queued", "running")
    await eventually(ended)
    run = (await api.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "cancelled" and run["reason"] == "client disconnected"


@pytest.fixture(scope="module")
def agui_client() -> Path:
    """``@ag-ui/client`` installed from npm (package-lock.json pins it) into tests/agui_client."""
    npm = shutil.which("npm")
    assert npm is not None and shutil.which("node"), "node and npm are needed to run @ag-ui/client"
    marker = CLIENT_DIR / "node_modules" / "@ag-ui" / "client" / "package.json"
    if not marker.exists():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT_DIR, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    return CLIENT_DIR


async def node_client(system, scenario: str) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "node", "run.mjs", system.edge_url, ALICE_KEY, scenario, cwd=CLIENT_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_the_ag_ui_typescript_client(system, agui_client):
    """@ag-ui/client's HttpAgent validates every event against the protocol (zod schemas and its
    event-order checks) and builds the conversation from them, as an AG-UI application does."""
    served = await node_client(system, "server-tools")
    assert served["runs"][0]["error"] is None and served["runs"][0]["events"][-1] == "RUN_FINISHED"
    roles = [m["role"] for m in served["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert served["messages"][1]["toolCalls"][0]["function"]["name"] == "read_file"
    assert "lines" in served["messages"][-1]["content"]

    frontend = await node_client(system, "frontend-tool")
    first, second = frontend["runs"]
    assert first["error"] is None and "TOOL_CALL_RESULT" not in first["events"]
    assert second["error"] is None and second["events"][-1] == "RUN_FINISHED"
    assert [m["role"] for m in frontend["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert "temp_c" in frontend["messages"][-1]["content"]

    failed = await node_client(system, "failure")
    assert failed["runs"][0]["events"][0] == "RUN_STARTED"
    assert failed["runs"][0]["events"][-1].startswith("RUN_ERROR: ") and "500" in failed["runs"][0]["events"][-1]


async def test_keep_alive_comments_on_both_new_streams(system):
    """``: ping`` comments while the model is silent, on /ag-ui and /v1/responses alike."""
    edge = await asyncio.to_thread(system.start_edge, SSE_HEARTBEAT="0.2")
    try:
        async with httpx.AsyncClient(base_url=edge.ready_value, headers={"Authorization": f"Bearer {ALICE_KEY}"},
                                     timeout=30) as c:
            agui, responses = await asyncio.gather(
                c.post("/ag-ui/slow-starter", json=run_input([user("hi")])),
                c.post("/v1/responses", json={"model": "slow-starter", "input": "hi", "stream": True}))
    finally:
        await asyncio.to_thread(edge.terminate)
    for body in (agui.content, responses.content):
        assert body.count(b": ping\n\n") >= 3
    assert agui.content.rstrip().split(b"\n\n")[-1].startswith(b'data: {"type":"RUN_FINISHED"')
    assert responses.content.rstrip().split(b"\n\n")[-1].startswith(b"event: response.completed\n")

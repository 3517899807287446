"""Tool calls that wait for a person's approval, against real processes: the run lets go of its
runner while it waits (a run of another agent proceeds on a runner with one slot), survives every
component restarting, is resumed once decided; a rejection is the tool's answer; the approval
timeout rejects once however many runners are up; decisions are tenant-scoped, idempotent and
refused clearly; every dialect shows the wait (native SSE, OpenAI chat, Responses, AG-UI, llm-sse,
LocalAI).

The test agents (tests/agents/gatekeeper*.yaml): reading pyproject.toml waits for approval;
``gatekeeper-quick`` gives up waiting after 1.5 s. The built-in model calls a tool when told
``use the tool NAME with {json}``, and answers from its result (or its error).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pytest
from ag_ui.core import EventType
from httpx_sse import aconnect_sse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import ALICE_KEY, BOB_KEY, edge_client, eventually, read_events, submit, write_keys_file
from tests.harness import REPO, System, new_system

pytestmark = pytest.mark.timeout(240)

READ_TOML = 'use the tool read_file with {"path": "pyproject.toml"}'
TOML_LINES = len((REPO / "pyproject.toml").read_text().splitlines())
TERMINAL = {"run.completed", "run.failed", "run.cancelled"}


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Iterator[System]:
    """Two agent runners (so the approval timeout has two to fire on), a tool runner, an edge with
    alice and bob and half-second heartbeats."""
    base = tmp_path_factory.mktemp("approvals")
    sysm = new_system(base, TOOL_HTTP_ALLOW_PRIVATE="true")
    with sysm:
        sysm.start_model()
        sysm.start_tool_runner("tools-g")
        sysm.start_agent_runner("runner-g1")
        sysm.start_agent_runner("runner-g2")
        sysm.start_edge(KEYS_FILE=str(write_keys_file(base / "keys.yaml")), SSE_HEARTBEAT="0.5")
        yield sysm


@pytest.fixture
async def alice(gate) -> Any:
    async with edge_client(gate.edge_url, ALICE_KEY) as client:
        yield client


async def waiting_call(client: httpx.AsyncClient, run_id: str, within: float = 20.0) -> dict:
    """The run's pending approval once its status is ``awaiting_approval``."""
    found: dict = {}

    async def waits() -> bool:
        """the run is awaiting_approval"""
        record = (await client.get(f"/api/runs/{run_id}")).json()
        if record["status"] == "awaiting_approval":
            found.update(record)
            return True
        return False

    await eventually(waits, within=within)
    pending = [a for a in found["approvals"] if a["status"] == "pending"]
    assert len(pending) == 1, found["approvals"]
    return pending[0]


def types(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


def answer(events: list[dict]) -> str:
    return next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")


async def test_an_approved_call_runs_and_the_model_answers_from_it(alice):
    run = await submit(alice, "gatekeeper", READ_TOML)
    call = await waiting_call(alice, run["run_id"])
    assert call["name"] == "read_file" and json.loads(call["arguments"]) == {"path": "pyproject.toml"}
    assert call["expires_at"]
    listed = (await alice.get("/api/runs", params={"status": "awaiting_approval", "agent": "gatekeeper"})).json()
    assert run["run_id"] in [r["run_id"] for r in listed["runs"]]

    decided = await alice.post(f"/api/runs/{run['run_id']}/approve", json={"tool_call_id": call["tool_call_id"]})
    assert decided.status_code == 202, decided.text
    assert decided.json()["duplicate"] is False and decided.json()["waiting_for"] == []
    again = await alice.post(f"/api/runs/{run['run_id']}/approve", json={"tool_call_id": call["tool_call_id"]})
    assert again.status_code == 202 and again.json()["duplicate"] is True
    opposite = await alice.post(f"/api/runs/{run['run_id']}/reject", json={"tool_call_id": call["tool_call_id"]})
    assert opposite.status_code == 409
    assert opposite.json()["error"] | {"message": ""} == {
        "message": "", "type": "approval_already_decided", "field": "tool_call_id", "decision": "approved",
        "by": "request"}

    events = await asyncio.wait_for(read_events(alice, run["run_id"]), 60)
    assert types(events)[-1] == "run.completed"
    kinds = types(events)
    assert kinds.count("tool.approval_requested") == 1 and kinds.count("tool.approval_decided") == 1
    assert kinds.index("tool.approval_requested") < kinds.index("tool.approval_decided") < kinds.index("tool.result")
    decided_event = next(e["data"]["data"] for e in events if e["event"] == "tool.approval_decided")
    assert decided_event["decision"] == "approved" and decided_event["by"] == "request"
    results = [e["data"]["data"] for e in events if e["event"] == "tool.result"]
    assert len(results) == 1 and results[0]["ok"] is True and results[0]["output"]["total_lines"] == TOML_LINES
    assert f"has {TOML_LINES} lines" in answer(events)
    # Once ended, the same decision is still fine and the other one still refused.
    late = await alice.post(f"/api/runs/{run['run_id']}/approve", json={"tool_call_id": call["tool_call_id"]})
    assert late.status_code == 202 and late.json()["duplicate"] is True
    record = (await alice.get(f"/api/runs/{run['run_id']}")).json()
    assert record["status"] == "completed" and record["approvals"][0]["status"] == "approved"


async def test_a_rejection_is_the_tools_answer_and_the_model_answers_from_it(alice):
    run = await submit(alice, "gatekeeper", READ_TOML)
    call = await waiting_call(alice, run["run_id"])
    rejected = await alice.post(f"/api/runs/{run['run_id']}/reject",
                                json={"tool_call_id": call["tool_call_id"], "reason": "not that file"})
    assert rejected.status_code == 202, rejected.text
    events = await asyncio.wait_for(read_events(alice, run["run_id"]), 60)
    assert types(events)[-1] == "run.completed"
    result = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
    assert result["ok"] is False and result["error"]["type"] == "approval_rejected"
    assert "not that file" in result["error"]["message"] and result["attempts"] == 0
    text = answer(events)
    assert "failed (approval_rejected)" in text and "a person rejected this call" in text and "not that file" in text
    assert "[build-system]" not in text, "the file was not read"


async def test_the_approval_timeout_rejects_once_with_two_runners_up(alice, gate):
    run = await submit(alice, "gatekeeper-quick", READ_TOML)
    events = await asyncio.wait_for(read_events(alice, run["run_id"]), 60)
    assert types(events)[-1] == "run.completed"
    decided = [e["data"]["data"] for e in events if e["event"] == "tool.approval_decided"]
    assert len(decided) == 1 and decided[0]["decision"] == "rejected" and decided[0]["by"] == "timeout"
    assert types(events).count("run.started") == 2, "started, then resumed exactly once"
    assert "not approved within the agent's approval_timeout (1.5 s)" in answer(events)
    call_id = decided[0]["tool_call_id"]
    late = await alice.post(f"/api/runs/{run['run_id']}/approve", json={"tool_call_id": call_id})
    assert late.status_code == 409 and late.json()["error"]["by"] == "timeout"
    same = await alice.post(f"/api/runs/{run['run_id']}/reject", json={"tool_call_id": call_id})
    assert same.status_code == 202 and same.json()["duplicate"] is True and same.json()["by"] == "timeout"
    resumed = [line for p in gate.procs if p.name.startswith("agent-runner")
               for line in p.log_path.read_text().splitlines()
               if "resumed after its approvals" in line and run["run_id"] in line]
    assert len(resumed) == 1, f"exactly one runner resumed it: {resumed}"


async def test_decisions_are_refused_clearly_naming_the_field(alice):
    finished = await submit(alice, "gatekeeper", "What is the first line of README.md?")
    done = await asyncio.wait_for(read_events(alice, finished["run_id"]), 60)
    assert types(done)[-1] == "run.completed"
    not_waiting = await alice.post(f"/api/runs/{finished['run_id']}/approve", json={"tool_call_id": "call_x"})
    assert not_waiting.status_code == 409
    error = not_waiting.json()["error"]
    assert error["type"] == "run_not_awaiting_approval" and error["field"] == "run_id"
    assert error["run_status"] == "completed"

    run = await submit(alice, "gatekeeper", READ_TOML)
    call = await waiting_call(alice, run["run_id"])
    url = f"/api/runs/{run['run_id']}/approve"
    wrong = await alice.post(url, json={"tool_call_id": "call_nope"})
    assert wrong.status_code == 404 and wrong.json()["error"]["field"] == "tool_call_id"
    assert wrong.json()["error"]["waiting_for"] == [call["tool_call_id"]]
    for body, field in (({}, "tool_call_id"), ({"tool_call_id": ""}, "tool_call_id"),
                        ({"tool_call_id": call["tool_call_id"], "reason": "x" * 1001}, "reason"),
                        ({"tool_call_id": call["tool_call_id"], "approve": True}, "approve")):
        bad = await alice.post(url, json=body)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == field, bad.text
    text = await alice.post(url, content=b"not json", headers={"Content-Type": "application/json"})
    assert text.status_code == 400 and text.json()["error"]["field"] == "body"
    unknown = await alice.post("/api/runs/no-such-run/approve", json={"tool_call_id": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "run_id"
    bad_id = await alice.post("/api/runs/a.b/approve", json={"tool_call_id": "x"})
    assert bad_id.status_code == 400 and bad_id.json()["error"]["field"] == "run_id"
    # Nothing of that was a decision: the run still waits, and goes on when rejected.
    assert (await alice.get(f"/api/runs/{run['run_id']}")).json()["status"] == "awaiting_approval"
    assert (await alice.post(f"/api/runs/{run['run_id']}/reject",
                             json={"tool_call_id": call["tool_call_id"]})).status_code == 202
    assert types(await asyncio.wait_for(read_events(alice, run["run_id"]), 60))[-1] == "run.completed"


async def test_another_tenant_can_neither_see_nor_decide(alice, gate):
    run = await submit(alice, "gatekeeper", READ_TOML)
    call = await waiting_call(alice, run["run_id"])
    async with httpx.AsyncClient(base_url=gate.edge_url, headers={"Authorization": f"Bearer {BOB_KEY}"},
                                 timeout=10) as bob:
        for decision in ("approve", "reject"):
            refused = await bob.post(f"/api/runs/{run['run_id']}/{decision}",
                                     json={"tool_call_id": call["tool_call_id"]})
            assert refused.status_code == 404 and refused.json()["error"]["field"] == "run_id", refused.text
            assert call["tool_call_id"] not in refused.text
        assert (await bob.get(f"/api/runs/{run['run_id']}")).status_code == 404
        listed = (await bob.get("/api/runs", params={"status": "awaiting_approval"})).json()
        assert listed["runs"] == []
    record = (await alice.get(f"/api/runs/{run['run_id']}")).json()
    assert record["status"] == "awaiting_approval" and record["approvals"][0]["status"] == "pending"
    assert (await alice.post(f"/api/runs/{run['run_id']}/approve",
                             json={"tool_call_id": call["tool_call_id"]})).status_code == 202
    assert types(await asyncio.wait_for(read_events(alice, run["run_id"]), 60))[-1] == "run.completed"


async def test_a_run_cancelled_while_it_waits_ends_cancelled(alice):
    run = await submit(alice, "gatekeeper", READ_TOML)
    call = await waiting_call(alice, run["run_id"])
    cancel = await alice.post(f"/api/runs/{run['run_id']}/cancel", json={"reason": "changed my mind"})
    assert cancel.status_code == 202
    events = await asyncio.wait_for(read_events(alice, run["run_id"]), 60)
    assert types(events)[-1] == "run.cancelled"
    assert events[-1]["data"]["data"]["reason"] == "changed my mind"
    assert "tool.result" not in types(events)
    late = await alice.post(f"/api/runs/{run['run_id']}/approve", json={"tool_call_id": call["tool_call_id"]})
    assert late.status_code == 409 and late.json()["error"]["type"] == "run_not_awaiting_approval"


class Orders(http.server.BaseHTTPRequestHandler):
    """A web service with side effects: every request is recorded."""

    seen: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:
        """Quiet."""

    def _answer(self) -> None:
        Orders.seen.append(f"{self.command} {self.path}")
        body = f"{self.command} done".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer


@pytest.fixture
def orders() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Orders)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Orders.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_a_rule_asks_only_for_the_calls_it_matches(alice, orders):
    get = await submit(alice, "gatekeeper", f'use the tool http_request with {{"url": "{orders}/list"}} and '
                                            'use the tool list_dir with {"path": "agents"}')
    events = await asyncio.wait_for(read_events(alice, get["run_id"]), 60)
    assert "tool.approval_requested" not in types(events) and types(events)[-1] == "run.completed"
    assert Orders.seen == ["GET /list"]

    # One call of the step needs approval, the other not: that one runs at once, the other waits.
    post = await submit(alice, "gatekeeper", f'use the tool http_request with {{"url": "{orders}/pay", '
                                             f'"method": "POST", "body": "42"}} and use the tool http_request '
                                             f'with {{"url": "{orders}/status", "method": "HEAD"}}')
    call = await waiting_call(alice, post["run_id"])
    assert json.loads(call["arguments"])["method"] == "POST"
    assert Orders.seen == ["GET /list", "HEAD /status"], "only the HEAD ran while the POST waits"
    assert (await alice.post(f"/api/runs/{post['run_id']}/approve",
                             json={"tool_call_id": call["tool_call_id"]})).status_code == 202
    events = await asyncio.wait_for(read_events(alice, post["run_id"]), 60)
    assert types(events)[-1] == "run.completed"
    assert Orders.seen == ["GET /list", "HEAD /status", "POST /pay"], "each call ran once"
    assert types(events).count("tool.result") == 2


async def test_openai_chat_stream_pings_while_waiting_then_answers(alice):
    frames: list[str] = []
    run_id = ""
    async with alice.stream("POST", "/v1/chat/completions", json={
            "model": "gatekeeper", "stream": True, "messages": [{"role": "user", "content": READ_TOML}]}) as resp:
        assert resp.status_code == 200
        run_id = resp.headers["x-run-id"]
        pings_while_waiting = 0
        async for line in resp.aiter_lines():
            frames.append(line)
            if line.startswith(": awaiting approval of tool call"):
                waiting = await waiting_call(alice, run_id)
                assert waiting["tool_call_id"] in line and f"/api/runs/{run_id}/approve" in line
            if line == ": ping" and any(f.startswith(": awaiting approval") for f in frames):
                pings_while_waiting += 1
                if pings_while_waiting == 2:
                    ok = await alice.post(f"/api/runs/{run_id}/approve",
                                          json={"tool_call_id": waiting["tool_call_id"]})
                    assert ok.status_code == 202
            if line == "data: [DONE]":
                break
    assert pings_while_waiting >= 2
    data = [json.loads(f[6:]) for f in frames if f.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in data if c.get("choices"))
    assert f"has {TOML_LINES} lines" in text
    assert [c["choices"][0]["finish_reason"] for c in data if c["choices"][0]["finish_reason"]] == ["stop"]
    assert all(f.startswith(("data: ", ":")) or f == "" for f in frames), "only data lines and comments"


async def test_responses_show_an_mcp_approval_request_and_take_an_mcp_approval_response(alice):
    events_adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    created = await alice.post("/v1/responses", json={"model": "gatekeeper", "input": READ_TOML})
    assert created.status_code == 200, created.text
    first = created.json()
    assert first["status"] == "in_progress", "answered as soon as the run waits; not cancelled"
    request_item = first["output"][-1]
    assert request_item["type"] == "mcp_approval_request" and request_item["name"] == "read_file"
    assert request_item["server_label"] == "agentstream" and json.loads(request_item["arguments"]) == {
        "path": "pyproject.toml"}
    run_id = created.headers["x-run-id"]
    assert (await waiting_call(alice, run_id))["tool_call_id"] == request_item["id"].removeprefix("mcpr_")

    # The stream of the same response shows the same item, typed as the SDK knows it.
    seen: list[dict] = []
    async with aconnect_sse(alice, "GET", f"/v1/responses/{first['id']}", params={"stream": "true"}) as src:
        async for sse in src.aiter_sse():
            event = json.loads(sse.data)
            events_adapter.validate_python(event)
            seen.append(event)
            if event["type"] == "response.output_item.done" and event["item"]["type"] == "mcp_approval_request":
                break
    assert seen[-1]["item"] == request_item

    bad = await alice.post("/v1/responses", json={"model": "gatekeeper", "input": [
        {"type": "mcp_approval_response", "approval_request_id": request_item["id"], "approve": True}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "previous_response_id"
    mixed = await alice.post("/v1/responses", json={"model": "gatekeeper", "previous_response_id": first["id"],
                                                    "input": ["hi", {"type": "mcp_approval_response"}]})
    assert mixed.status_code == 400 and mixed.json()["error"]["param"] == "input.0"

    answered = await alice.post("/v1/responses", json={
        "model": "gatekeeper", "previous_response_id": first["id"],
        "input": [{"type": "mcp_approval_response", "approval_request_id": request_item["id"], "approve": True}]})
    assert answered.status_code == 200, answered.text
    final = answered.json()
    assert final["id"] == first["id"] and final["status"] == "completed"
    text = "".join(p["text"] for item in final["output"] if item["type"] == "message" for p in item["content"])
    assert f"has {TOML_LINES} lines" in text
    assert [i["type"] for i in final["output"]].count("mcp_approval_request") == 1


async def test_agui_interrupts_and_a_resume_run_shows_the_rest(alice):
    body = {"threadId": "t-approval", "runId": "agui-1", "state": {}, "context": [], "tools": [],
            "forwardedProps": {}, "messages": [{"id": "m1", "role": "user", "content": READ_TOML}]}

    async def agui(doc: dict) -> list[dict]:
        out = []
        async with aconnect_sse(alice, "POST", "/ag-ui/gatekeeper", json=doc) as src:
            assert src.response.status_code == 200, await src.response.aread()
            async for sse in src.aiter_sse():
                out.append(json.loads(sse.data))
        return out

    first = await agui(body)
    assert first[0]["type"] == EventType.RUN_STARTED
    finished = first[-1]
    assert finished["type"] == EventType.RUN_FINISHED and finished["outcome"]["type"] == "interrupt"
    (interrupt,) = finished["outcome"]["interrupts"]
    assert interrupt["reason"] == "tool_approval" and interrupt["toolCallId"] and interrupt["expiresAt"]
    run_id = interrupt["id"].split(":")[1]
    assert (await alice.get(f"/api/runs/{run_id}")).json()["status"] == "awaiting_approval", "the run waits"

    bad = await alice.post("/ag-ui/gatekeeper", json={**body, "runId": "agui-2", "resume": [
        {"interruptId": interrupt["id"], "status": "resolved", "payload": {"approved": "yes"}}]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "resume.0.payload.approved"
    foreign = await alice.post("/ag-ui/gatekeeper", json={**body, "runId": "agui-2", "resume": [
        {"interruptId": "approval:someone-else:call_1", "status": "resolved", "payload": {"approved": True}}]})
    assert foreign.status_code == 404 and foreign.json()["error"]["field"] == "resume.0.interruptId"

    rest = await agui({**body, "runId": "agui-2", "resume": [
        {"interruptId": interrupt["id"], "status": "resolved", "payload": {"approved": True}}]})
    kinds = [e["type"] for e in rest]
    assert kinds[0] == EventType.RUN_STARTED and rest[0]["runId"] == "agui-2"
    assert kinds[-1] == EventType.RUN_FINISHED and "outcome" not in rest[-1]
    result = next(e for e in rest if e["type"] == EventType.TOOL_CALL_RESULT)
    assert result["toolCallId"] == interrupt["toolCallId"] and '"total_lines"' in result["content"]
    text = "".join(e["delta"] for e in rest if e["type"] == EventType.TEXT_MESSAGE_CONTENT)
    assert f"has {TOML_LINES} lines" in text


async def test_llmsse_and_localai_views_show_the_wait(alice):
    agent_sse: list[tuple[str, str]] = []
    started = asyncio.Event()

    async def follow_agent() -> None:
        async with aconnect_sse(alice, "GET", "/api/agents/gatekeeper/sse") as src:
            started.set()
            async for sse in src.aiter_sse():
                agent_sse.append((sse.event, sse.data))

    follower = asyncio.create_task(follow_agent())
    await asyncio.wait_for(started.wait(), 10)
    frames: list[dict] = []
    async with aconnect_sse(alice, "POST", "/api/process", json={
            "message": READ_TOML, "message_id": "process-approval", "agent": "gatekeeper"}) as src:
        async for sse in src.aiter_sse():
            frame = json.loads(sse.data)
            frames.append(frame)
            if frame["status"] == "Awaiting approval of read_file":
                run = (await alice.get("/api/runs", params={"agent": "gatekeeper", "limit": 1})).json()["runs"][0]
                call = await waiting_call(alice, run["run_id"])
                assert call["tool_call_id"] in frame["message"]
                assert (await alice.post(f"/api/runs/{run['run_id']}/approve",
                                         json={"tool_call_id": call["tool_call_id"]})).status_code == 202
            if frame.get("final"):
                break
    statuses = [f["status"] for f in frames]
    assert "Awaiting approval of read_file" in statuses and "read_file approved" in statuses
    assert statuses[-1] == "Completed" and all(f["message_id"] == "process-approval" for f in frames)
    assert f"has {TOML_LINES} lines" in "".join(f.get("message", "") for f in frames if f["status"] == "Streaming")

    async def localai_saw_it() -> bool:
        """the LocalAI stream showed the wait"""
        return any(e == "json_message_status" and json.loads(d).get("status") == "awaiting_approval"
                   for e, d in agent_sse) and any(e == "json_message_status" and json.loads(d).get("status") ==
                                                  "completed" for e, d in agent_sse)

    try:
        await eventually(localai_saw_it)
    finally:
        follower.cancel()


# -- restarts, in a system of their own


async def test_a_waiting_run_holds_no_slot_and_survives_every_component_restarting(tmp_path):
    sysm = new_system(tmp_path / "restarts", AGENT_RUNNER_ACK_WAIT="1.5")
    try:
        sysm.start_model()
        tools = sysm.start_tool_runner("tools-r")
        runner = sysm.start_agent_runner("runner-r1", AGENT_RUNNER_CONCURRENCY="1")
        edge = sysm.start_edge()
        async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=httpx.Timeout(10, read=60)) as client:
            run = await submit(client, "gatekeeper", READ_TOML)
            call = await waiting_call(client, run["run_id"])

            health = (await client.get(runner.health_url)).json()
            assert (health["active_runs"], health["slots_used"], health["slots"]) == (0, 0, 1), health
            assert health["awaiting_approval"] == 1, health
            # The runner has one slot, and the waiting run does not hold it: another agent's run goes through.
            other = await submit(client, "programmer-helper", "What is the first line of README.md?")
            assert types(await asyncio.wait_for(read_events(client, other["run_id"]), 60))[-1] == "run.completed"

            # Every component goes down and comes back while the run waits.
            runner.kill()
            tools.kill()
            edge.terminate()
            await asyncio.to_thread(sysm.nats.restart)
            sysm.start_tool_runner("tools-r2")
            sysm.start_agent_runner("runner-r2", AGENT_RUNNER_CONCURRENCY="1")
            sysm.edge_url = ""
            sysm.start_edge()
        async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=httpx.Timeout(10, read=60)) as client:
            assert (await waiting_call(client, run["run_id"]))["tool_call_id"] == call["tool_call_id"]
            decided = await client.post(f"/api/runs/{run['run_id']}/approve",
                                        json={"tool_call_id": call["tool_call_id"]})
            assert decided.status_code == 202, decided.text
            events = await asyncio.wait_for(read_events(client, run["run_id"]), 60)
            assert types(events)[-1] == "run.completed", types(events)
            assert f"has {TOML_LINES} lines" in answer(events)
            assert types(events).count("tool.result") == 1
            starts = [e["data"]["data"] for e in events if e["event"] == "run.started"]
            assert [s["runner"] for s in starts] == ["runner-r1", "runner-r2"], "resumed once, by the new runner"
            assert "run.retrying" not in types(events), "a wait is not a crash"
    finally:
        sysm.stop()


@pytest.mark.slow
async def test_a_waiting_run_survives_its_bucket_leader_killed_in_a_cluster(tmp_path):
    import nats

    sysm = new_system(tmp_path / "cluster", cluster=3)
    try:
        sysm.start_model()
        sysm.start_tool_runner("tools-c")
        sysm.start_agent_runner("runner-c1")
        sysm.start_edge()
        async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=httpx.Timeout(10, read=60)) as client:
            run = await submit(client, "gatekeeper", READ_TOML)
            call = await waiting_call(client, run["run_id"])
            nc = await nats.connect(**sysm.connect_options())
            try:
                leader = (await nc.jetstream().stream_info("KV_APPROVALS")).cluster.leader
            finally:
                await nc.close()
            assert sysm.nats.__class__.__name__ == "NatsCluster"
            index = next(i for i, node in enumerate(sysm.nats.nodes) if node.name == leader)  # type: ignore[union-attr]
            await asyncio.to_thread(sysm.nats.kill_node, index)  # type: ignore[union-attr]
            await asyncio.to_thread(sysm.nats.start_node, index)  # type: ignore[union-attr]

            async def decided() -> bool:
                """the approval is stored (the cluster has a leader for the bucket again)"""
                resp = await client.post(f"/api/runs/{run['run_id']}/approve",
                                         json={"tool_call_id": call["tool_call_id"]})
                return resp.status_code == 202

            await eventually(decided, within=30, every=0.5)
            events = await asyncio.wait_for(read_events(client, run["run_id"]), 90)
            assert types(events)[-1] == "run.completed"
            assert f"has {TOML_LINES} lines" in answer(events)
    finally:
        sysm.stop()

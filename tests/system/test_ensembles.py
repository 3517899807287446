"""Ensembles: members as concurrent child runs on the bus, a combiner that sees the
question and the labelled answers, partial failure, llm-sse's /api/process, cancellation."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from datetime import datetime

import httpx
import pytest

from agentstream.chat_cli import chat
from tests.conftest import ALICE_KEY, read_events, submit


async def process_frames(
    client: httpx.AsyncClient, body: dict, *, stop_after: int | None = None
) -> tuple[httpx.Response, list[dict], bytes]:
    """POST /api/process and read its frames (raw bytes kept, to check the framing)."""
    frames, raw = [], b""
    async with client.stream("POST", "/api/process", json=body) as resp:
        async for chunk in resp.aiter_raw():
            raw += chunk
            while b"\n\n" in raw[len(b"".join(f["_raw"] for f in frames)):]:
                start = len(b"".join(f["_raw"] for f in frames))
                end = raw.index(b"\n\n", start) + 2
                block = raw[start:end]
                frame = {"_raw": block}
                if block.startswith(b"data: "):
                    frame.update(json.loads(block[6:]))
                frames.append(frame)
                if stop_after is not None and len([f for f in frames if "status" in f]) >= stop_after:
                    return resp, frames, raw
    return resp, frames, raw


def _ts(event: dict) -> datetime:
    return datetime.fromisoformat(event["data"]["ts"].replace("Z", "+00:00"))


async def model_log(client: httpx.AsyncClient, system) -> list[dict]:
    return (await client.get(system.model_url.removesuffix("/v1") + "/debug/requests")).json()["requests"]


async def test_members_run_concurrently_and_the_combiner_sees_question_and_labelled_answers(api, system):
    question = f"Why is the sky blue? ({time.monotonic_ns()})"
    body = {"message": question, "message_id": f"m-{time.time_ns()}", "conversation_id": "conv-1", "agent": "ens-pair"}
    resp, frames, _raw = await asyncio.wait_for(process_frames(api, body), 60)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    data = [f for f in frames if "status" in f]
    assert all(f["message_id"] == data[0]["message_id"] and f["conversation_id"] == "conv-1" for f in data)
    statuses = [f["status"] for f in data]
    assert {"Sending to member-slow-a", "Sending to member-slow-b"} <= set(statuses[:2] + statuses[2:4])
    assert "member-slow-a completed" in statuses and "member-slow-b completed" in statuses
    combining = statuses.index("Combining via combiner")
    assert all(s != "Streaming" for s in statuses[:combining])
    assert statuses[-1] == "Completed" and data[-1]["final"] is True and data[-1]["source"] == "combiner"
    streamed = "".join(f["message"] for f in data if f["status"] == "Streaming")

    run_id = resp.headers["x-run-id"]
    parent = await asyncio.wait_for(read_events(api, run_id), 30)
    types = [e["event"] for e in parent]
    assert types[:2] == ["run.queued", "run.started"] and types[-1] == "run.completed"
    assert types.count("member.started") == 2 and types.count("member.finished") == 2
    answer = next(e["data"]["data"]["text"] for e in parent if e["event"] == "message.completed")
    assert streamed == answer and answer.startswith("Combining 2 answers (member-slow-a, member-slow-b)")

    # Each member is its own run, with its own events; their time windows overlap.
    windows = []
    for e in parent:
        if e["event"] == "member.finished":
            child = await asyncio.wait_for(read_events(api, e["data"]["data"]["run_id"]), 30)
            assert child[-1]["event"] == "run.completed"
            start = next(_ts(c) for c in child if c["event"] == "run.started")
            windows.append((start, _ts(child[-1])))
            assert e["data"]["data"]["status"] == "completed" and e["data"]["data"]["duration_ms"] > 1000
    (a_start, a_end), (b_start, b_end) = windows
    assert max(a_start, b_start) < min(a_end, b_end), f"members ran one after the other: {windows}"

    combine = next(r for r in await model_log(api, system)
                   if r["messages"][-1]["content"].startswith(f"Question:\n{question}\n"))
    prompt = combine["messages"][-1]["content"]
    assert prompt.index("### member-slow-a\n") < prompt.index("### member-slow-b\n")
    assert "You are member A" in prompt and "You are member B" in prompt  # each member's own answer, labelled
    assert combine["messages"][0]["content"].startswith("You combine the answers")  # the combiner's own prompt


async def test_each_members_frame_comes_when_that_member_ends(api):
    # member-slow-a (listed first) talks for about two seconds, member-quick answers at once.
    body = {"message": "Why is the sky blue?", "message_id": f"order-{time.time_ns()}", "agent": "ens-slow-first"}
    arrivals: dict[str, float] = {}
    frames = []
    async with api.stream("POST", "/api/process", json=body) as resp:
        assert resp.status_code == 200
        run_id = resp.headers["x-run-id"]
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
                arrivals.setdefault(frames[-1]["status"], time.monotonic())
                if frames[-1].get("final"):
                    break
    statuses = [f["status"] for f in frames]
    assert statuses.index("member-quick completed") < statuses.index("member-slow-a completed") < \
        statuses.index("Combining via combiner")
    # The quick member's frame was sent while the slow member still worked: its end was stored
    # before the slow member's run ended, not once both had.
    parent = await asyncio.wait_for(read_events(api, run_id), 30)
    finished = {e["data"]["data"]["member"]: e for e in parent if e["event"] == "member.finished"}
    slow_child = await asyncio.wait_for(read_events(api, finished["member-slow-a"]["data"]["data"]["run_id"]), 30)
    assert slow_child[-1]["event"] == "run.completed"
    assert _ts(finished["member-quick"]) < _ts(slow_child[-1])
    assert finished["member-quick"]["id"] < finished["member-slow-a"]["id"]
    assert arrivals["member-slow-a completed"] - arrivals["member-quick completed"] > 0.5  # seconds apart, not together


async def test_a_failed_and_a_stuck_member_are_left_out(api, system):
    accepted = await submit(api, "ens-partial", "What is two plus two?")
    events = await asyncio.wait_for(read_events(api, accepted["run_id"]), 60)
    finished = {e["data"]["data"]["member"]: e["data"]["data"] for e in events if e["event"] == "member.finished"}
    assert finished["member-quick"]["status"] == "completed"
    assert finished["member-broken"]["status"] == "failed"
    assert (
        finished["member-broken"]["error"]["type"] == "llm_http_error"
        and "500" in finished["member-broken"]["error"]["message"]
    )
    assert finished["member-stuck"]["status"] == "timeout"
    assert events[-1]["event"] == "run.completed"
    answer = next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")
    assert "member-quick" in answer
    # The stuck member's run was cancelled: its runner stopped waiting on its model.
    stuck = await asyncio.wait_for(read_events(api, finished["member-stuck"]["run_id"]), 30)
    assert stuck[-1]["event"] == "run.cancelled"
    deadline = time.monotonic() + 10
    while True:
        hung = [r for r in await model_log(api, system)
                if r["model"] == "builtin:hang=1" and "What is two plus two?" in json.dumps(r["messages"])]
        if hung and all(r["disconnected"] for r in hung):
            break
        assert time.monotonic() < deadline, hung
        await asyncio.sleep(0.1)


def test_chat_cli_shows_each_member_as_it_starts_and_finishes(system):
    out = io.StringIO()
    code = chat(system.edge_url, "ens-partial", "What is three plus three?", api_key=ALICE_KEY, out=out)
    text = out.getvalue()
    assert code == 0, text
    for member in ("member-quick", "member-broken", "member-stuck"):
        assert re.search(rf"^⇉ member {member} started \(run [\w-]+\)$", text, re.M), text
    assert re.search(r"^⇇ member member-quick completed \(\d+\.\d\d s, \d+ tokens\)$", text, re.M), text
    assert re.search(r"^⇇ member member-broken failed \(.*\): llm_http_error: .*500", text, re.M), text
    assert re.search(r"^⇇ member member-stuck timeout \(", text, re.M), text
    assert text.rindex("⇇ member") < text.index("Question: What is three plus three?")  # then the combiner's answer


async def test_not_enough_members_fails_the_run_naming_them(api):
    accepted = await submit(api, "ens-strict", "What is two plus two?")
    events = await asyncio.wait_for(read_events(api, accepted["run_id"]), 60)
    assert events[-1]["event"] == "run.failed"
    failure = events[-1]["data"]["data"]
    assert failure["error"]["type"] == "members_failed"
    message = failure["error"]["message"]
    assert message.startswith("1 of 3 members answered, 2 needed")
    assert "member-broken failed" in message and "500" in message and "member-stuck timeout" in message
    assert "message.completed" not in [e["event"] for e in events]


async def test_process_error_frame_has_the_real_message_id(api):
    _resp, frames, _raw = await asyncio.wait_for(process_frames(api, {"message": "hi", "message_id": "abc-123",
                                                                    "agent": "ens-strict"}), 60)
    data = [f for f in frames if "status" in f]
    last = data[-1]
    assert last["status"] == "error" and last["message_id"] == "abc-123" and last["final"] is True
    assert "members answered" in last["message"]
    # One of three answered, two were needed: the combiner never runs, and no frame says it does.
    statuses = [f["status"] for f in data]
    assert {"member-quick completed", "member-broken failed", "member-stuck timed out"} <= set(statuses)
    assert not any(s.startswith("Combining via") for s in statuses), statuses


async def test_process_validates_and_is_idempotent(api):
    resp = await api.post("/api/process", json={"message": "hi"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "message_id"
    resp = await api.post("/api/process", json={"message_id": "x"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "message"
    resp = await api.post("/api/process", json={"message": "hi", "message_id": "x", "agent": "nope"})
    assert resp.status_code == 404 and resp.json()["error"]["field"] == "agent"
    body = {"message": "hi", "message_id": f"same-{time.time_ns()}", "agent": "plain"}
    first, _, _ = await asyncio.wait_for(process_frames(api, body), 30)
    second, frames, _ = await asyncio.wait_for(process_frames(api, body), 30)
    assert first.headers["x-run-id"] == second.headers["x-run-id"]  # a retried request replays its run
    assert [f for f in frames if "status" in f][-1]["status"] == "Completed"


async def test_process_disconnect_cancels_the_parent_and_its_members(api, system):
    marker = f"cancel-me-{time.monotonic_ns()}"
    reading = asyncio.create_task(process_frames(api, {"message": marker, "message_id": marker, "agent": "ens-pair"}))
    deadline = time.monotonic() + 15
    while len([r for r in await model_log(api, system) if marker in json.dumps(r["messages"])]) < 2:
        assert time.monotonic() < deadline and not reading.done()
        await asyncio.sleep(0.05)
    reading.cancel()  # the client goes away while both members are talking to their model
    with pytest.raises(asyncio.CancelledError):
        await reading
    run_id = next(r["run_id"] for r in (await api.get("/api/agents/ens-pair/status")).json()["runs"]
                  if r["message"] == marker)
    while True:
        parent = (await api.get(f"/api/runs/{run_id}")).json()
        if parent["status"] not in ("queued", "running"):
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert parent["status"] == "cancelled" and parent["reason"] == "client disconnected"
    while True:
        calls = [r for r in await model_log(api, system) if marker in json.dumps(r["messages"])]
        if all(r["disconnected"] or r["finished"] for r in calls):
            break
        assert time.monotonic() < deadline, calls
        await asyncio.sleep(0.1)
    assert len(calls) == 2 and all(r["disconnected"] and not r["finished"] for r in calls), \
        "no member kept calling its model"
    members = [e for e in await read_events(api, run_id) if e["event"] == "member.started"]
    for m in members:
        child = (await api.get(f"/api/runs/{m['data']['data']['run_id']}")).json()
        assert child["status"] == "cancelled"


async def test_native_and_openai_endpoints_serve_ensembles(api, system):
    accepted = await submit(api, "trio", "Why do cats purr?")
    events = await asyncio.wait_for(read_events(api, accepted["run_id"]), 60)
    assert [e["event"] for e in events].count("member.finished") == 2 and events[-1]["event"] == "run.completed"
    import openai

    client = openai.AsyncOpenAI(base_url=f"{system.edge_url}/v1", api_key=ALICE_KEY, max_retries=0)
    stream = await client.chat.completions.create(
        model="trio", messages=[{"role": "user", "content": "Why do cats purr?"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.close()
    assert text.startswith("Combining 2 answers (creative, fact-checker)")


@pytest.mark.parametrize("field,value", [("combiner", None), ("min_success", 3), ("actions", ["read_file"])])
def test_bad_ensemble_files_are_reported(tmp_path, field, value):
    import yaml

    from agentstream.agents import load_agents

    doc = {"name": "bad-ens", "members": ["m1", "m2"], "combiner": "m1", field: value}
    if value is None:
        doc.pop(field)
    (tmp_path / "m1.yaml").write_text("name: m1\n")
    (tmp_path / "m2.yaml").write_text("name: m2\n")
    (tmp_path / "bad-ens.yaml").write_text(yaml.safe_dump(doc))
    catalog = load_agents(tmp_path)
    assert "bad-ens" not in catalog.agents and {"m1", "m2"} <= set(catalog.agents)
    assert [e.file for e in catalog.errors] == ["bad-ens.yaml"]


def test_ensemble_naming_a_missing_member_is_reported(tmp_path):
    from agentstream.agents import load_agents

    (tmp_path / "m1.yaml").write_text("name: m1\n")
    (tmp_path / "ens.yaml").write_text("name: ens\nmembers: [m1, ghost]\ncombiner: m1\n")
    catalog = load_agents(tmp_path)
    assert "ens" not in catalog.agents
    assert catalog.errors[0].file == "ens.yaml" and catalog.errors[0].field == "members"
    assert "ghost" in catalog.errors[0].reason

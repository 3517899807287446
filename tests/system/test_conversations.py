"""Conversations: a second message with the same conversation_id reaches the model with the first
turn (its message, its tool calls and their results, its answer), on the native API, the OpenAI
API and /api/process; on_busy each way; the conversation routes. The model requests are the ones
the built-in model server received (its /debug/requests)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx

from tests.conftest import BOB_KEY, read_events, submit


async def model_requests(api: httpx.AsyncClient, system: Any, tag: str) -> list[dict[str, Any]]:
    """The requests the built-in model received for models tagged ``tag``, oldest first."""
    log = (await api.get(system.model_url.removesuffix("/v1") + "/debug/requests")).json()["requests"]
    return [r for r in log if f"tag={tag}" in str(r.get("model", ""))]


def last_user(request: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")


async def turn(api: httpx.AsyncClient, agent: str, message: str, conversation: str) -> list[dict]:
    accepted = await submit(api, agent, message, conversation_id=conversation)
    return await asyncio.wait_for(read_events(api, accepted["run_id"]), 60)


async def test_the_second_turn_sees_the_first(api, system):
    conversation = f"c-{uuid.uuid4().hex}"
    first = await turn(api, "remembers", "What is the first line of pyproject.toml?", conversation)
    answer = next(e["data"]["data"]["text"] for e in first if e["event"] == "message.completed")
    second = await turn(api, "remembers", "Thanks. And what was my question?", conversation)
    assert second[0]["data"]["data"]["history_length"] == 4  # question, tool call, tool result, answer
    sent = next(r for r in reversed(await model_requests(api, system, "remembers"))
                if last_user(r) == "Thanks. And what was my question?")
    roles = [m["role"] for m in sent["messages"] if m["role"] != "system"]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    history = [m for m in sent["messages"] if m["role"] != "system"]
    assert history[0]["content"] == "What is the first line of pyproject.toml?"
    assert history[1]["tool_calls"][0]["function"]["name"] == "read_file"
    assert "[build-system]" in history[2]["content"]
    assert history[3]["content"] == answer
    # The conversation's turns, in order.
    view = (await api.get(f"/api/conversations/{conversation}")).json()
    assert [t["status"] for t in view["turns"]] == ["completed", "completed"]
    assert [t["run_id"] for t in view["turns"]] == [first[0]["data"]["run_id"], second[0]["data"]["run_id"]]
    listed = (await api.get("/api/conversations", params={"agent": "remembers"})).json()["conversations"]
    assert listed[0]["conversation_id"] == conversation and listed[0]["turns"] == 2


async def test_the_history_budget_keeps_the_newest_whole_turns(api, system):
    conversation = f"b-{uuid.uuid4().hex}"
    for i in range(3):
        await turn(api, "remembers", f"Just saying {i}.", conversation)  # two messages per turn
    await turn(api, "remembers", "Last one.", conversation)
    sent = next(r for r in reversed(await model_requests(api, system, "remembers")) if last_user(r) == "Last one.")
    users = [m["content"] for m in sent["messages"] if m["role"] == "user"]
    assert users == ["Just saying 0.", "Just saying 1.", "Just saying 2.", "Last one."]  # three turns: 6 messages
    await turn(api, "remembers", "One more.", conversation)
    sent = next(r for r in reversed(await model_requests(api, system, "remembers")) if last_user(r) == "One more.")
    users = [m["content"] for m in sent["messages"] if m["role"] == "user"]
    assert users == ["Just saying 1.", "Just saying 2.", "Last one.", "One more."]  # the oldest turn dropped


async def test_a_deleted_conversation_starts_again(api, system):
    conversation = f"d-{uuid.uuid4().hex}"
    await turn(api, "remembers", "Remember the word walrus.", conversation)
    assert (await api.delete(f"/api/conversations/{conversation}")).status_code == 204
    assert (await api.get(f"/api/conversations/{conversation}")).status_code == 404
    assert (await api.delete(f"/api/conversations/{conversation}")).status_code == 404
    events = await turn(api, "remembers", "Which word?", conversation)
    assert events[0]["data"]["data"]["history_length"] == 0


async def test_another_tenant_sees_no_conversation(api, system):
    conversation = f"t-{uuid.uuid4().hex}"
    await turn(api, "remembers", "private", conversation)
    async with httpx.AsyncClient(base_url=system.edge_url, headers={"Authorization": f"Bearer {BOB_KEY}"}) as bob:
        assert (await bob.get(f"/api/conversations/{conversation}")).status_code == 404
        assert (await bob.delete(f"/api/conversations/{conversation}")).status_code == 404
        listed = (await bob.get("/api/conversations")).json()["conversations"]
        assert conversation not in {c["conversation_id"] for c in listed}
        # bob posting with the same id has a conversation of its own
        events = await turn(bob, "programmer-helper", "hello", conversation)
        assert events[0]["data"]["data"]["history_length"] == 0
    assert len((await api.get(f"/api/conversations/{conversation}")).json()["turns"]) == 1


async def test_on_busy_enqueue_runs_the_next_turn_after_the_first(api, system):
    conversation = f"q-{uuid.uuid4().hex}"
    first = await submit(api, "busy-enqueue", "one", conversation_id=conversation)
    second = await submit(api, "busy-enqueue", "two", conversation_id=conversation)
    first_events = await asyncio.wait_for(read_events(api, first["run_id"]), 60)
    second_events = await asyncio.wait_for(read_events(api, second["run_id"]), 60)
    ended = first_events[-1]["data"]["ts"]
    started = next(e["data"]["ts"] for e in second_events if e["event"] == "run.started")
    assert first_events[-1]["event"] == second_events[-1]["event"] == "run.completed"
    assert started >= ended  # the second waited for the first
    assert second_events[0]["data"]["data"]["history_length"] == 2


async def test_on_busy_reject_refuses_while_the_first_runs(api):
    conversation = f"r-{uuid.uuid4().hex}"
    first = await submit(api, "busy-reject", "one", conversation_id=conversation)
    refused = await api.post("/api/agents/busy-reject/chat", json={"message": "two", "conversation_id": conversation})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["type"] == "conversation_busy" and error["field"] == "conversation_id"
    assert error["run_id"] == first["run_id"]
    await asyncio.wait_for(read_events(api, first["run_id"]), 60)
    assert (await submit(api, "busy-reject", "two", conversation_id=conversation))["run_id"]


async def test_on_busy_interrupt_cancels_the_first(api):
    conversation = f"i-{uuid.uuid4().hex}"
    first = await submit(api, "busy-interrupt", "one", conversation_id=conversation)
    second = await submit(api, "busy-interrupt", "two", conversation_id=conversation)
    first_events = await asyncio.wait_for(read_events(api, first["run_id"]), 60)
    assert first_events[-1]["event"] == "run.cancelled"
    assert first_events[-1]["data"]["data"]["reason"] == "interrupted by a new message"
    second_events = await asyncio.wait_for(read_events(api, second["run_id"]), 60)
    assert second_events[-1]["event"] == "run.completed"


async def test_openai_clients_continue_a_conversation_with_a_header(api, system):
    conversation = f"o-{uuid.uuid4().hex}"
    headers = {"X-Conversation-Id": conversation}
    body = {"model": "remembers", "messages": [{"role": "user", "content": "My name is Ada."}]}
    assert (await api.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
    body["messages"] = [{"role": "user", "content": "What is my name?"}]
    assert (await api.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
    sent = next(r for r in reversed(await model_requests(api, system, "remembers"))
                if last_user(r) == "What is my name?")
    assert [m["content"] for m in sent["messages"] if m["role"] == "user"] == ["My name is Ada.", "What is my name?"]


async def test_process_messages_of_one_conversation_are_turns(api, system):
    conversation = f"p-{uuid.uuid4().hex}"
    for message in ("first message", "second message"):
        body = {"message": message, "message_id": uuid.uuid4().hex, "conversation_id": conversation,
                "agent": "remembers"}
        resp = await api.post("/api/process", json=body)
        frames = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]
        assert frames[-1]["status"] == "Completed"
    sent = next(r for r in reversed(await model_requests(api, system, "remembers"))
                if last_user(r) == "second message")
    assert [m["content"] for m in sent["messages"] if m["role"] == "user"] == ["first message", "second message"]

"""/v1/responses (the OpenAI Responses API) with the ``openai`` SDK and on raw bytes.

Every streamed event and every response object is validated against the SDK's own models
(``openai.types.responses``). The system is the shared one (tests/conftest.py): real NATS, a real
agent runner, the built-in model; the test agents (tests/agents) produce each case.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import ALICE_KEY, BOB_KEY, edge_client, eventually

EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city", "strict": True,
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                         "additionalProperties": False}}]
ASK_TOOL = 'Please call get_weather with {"city": "Paris"}'
QUESTION = "How many lines does pyproject.toml have?"


@pytest.fixture
async def client(system):
    c = openai.AsyncOpenAI(base_url=f"{system.edge_url}/v1", api_key=ALICE_KEY, max_retries=0)
    yield c
    await c.close()


@pytest.fixture
async def raw(system):
    async with edge_client(system.edge_url, ALICE_KEY) as c:
        yield c


async def sse_events(resp: httpx.Response, *, stop_after: int | None = None) -> list[dict]:
    """Parse a Responses stream: every frame is ``event: <type>`` + one ``data:`` line, or a
    ``: ping`` comment. Each event is validated with the SDK's models."""
    events: list[dict] = []
    buf = b""
    async for chunk in resp.aiter_raw():
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            text = frame.decode()
            if text.startswith(":"):
                continue
            lines = text.split("\n")
            assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), text[:200]
            event = json.loads(lines[1][len("data: "):])
            assert lines[0] == f"event: {event['type']}", "the SSE event name is the event's type"
            EVENTS.validate_python(event)
            events.append(event)
            if stop_after is not None and len(events) >= stop_after:
                return events
    assert buf == b"", "the stream ends on a frame boundary"
    return events


async def post_stream(raw: httpx.AsyncClient, body: dict) -> tuple[httpx.Response, list[dict]]:
    async with raw.stream("POST", "/v1/responses", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        return resp, await sse_events(resp)


async def model_requests(raw: httpx.AsyncClient, system, marker: str) -> list[dict]:
    log = (await raw.get(system.model_url.removesuffix("/v1") + "/debug/requests")).json()["requests"]
    return [r for r in log if marker in json.dumps(r["messages"])]


def check_sequence(events: list[dict]) -> None:
    assert [e["sequence_number"] for e in events] == list(range(len(events))), "numbered 0, 1, 2... in order"
    assert events[0]["type"] == "response.created" and events[1]["type"] == "response.in_progress"
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1, "one response id throughout"


async def test_whole_streamed_and_sdk_stream_give_the_same_answer(client, raw, system):
    whole = await client.responses.create(model="programmer-helper", input=QUESTION)
    Response.model_validate(whole.model_dump())
    assert whole.status == "completed" and whole.id.startswith("resp_") and whole.object == "response"
    assert "lines" in whole.output_text and whole.model == "programmer-helper"
    assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens > 0

    # The usage is the run's, summed over its two model calls (the agent read the file in between).
    run = (await raw.get(f"/api/runs/{whole.id.removeprefix('resp_')}")).json()
    assert run["tool_calls"][0]["name"] == "read_file"
    assert whole.usage.input_tokens == run["usage"]["prompt_tokens"]
    assert whole.usage.output_tokens == run["usage"]["completion_tokens"]

    resp, events = await post_stream(raw, {"model": "programmer-helper", "input": QUESTION})
    check_sequence(events)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "response.completed"
    assert kinds[2:5] == ["response.output_item.added", "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = Response.model_validate(events[-1]["response"])
    assert text == whole.output_text == final.output_text
    assert final.id == f"resp_{resp.headers['x-run-id']}"
    assert final.usage.total_tokens > 0

    async with client.responses.stream(model="programmer-helper", input=QUESTION) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        helper_final = await stream.get_final_response()
    assert "".join(deltas) == helper_final.output_text == whole.output_text

    streamed = await client.responses.create(model="programmer-helper", input=QUESTION, stream=True)
    sdk_events = [e async for e in streamed]
    assert "".join(e.delta for e in sdk_events if e.type == "response.output_text.delta") == whole.output_text
    assert shape([e.type for e in sdk_events]) == shape(kinds)  # text is cut into deltas as it comes


def shape(kinds: list[str]) -> list[str]:
    """Event types with each run of deltas counted once."""
    return [k for i, k in enumerate(kinds) if not (k.endswith(".delta") and i and kinds[i - 1] == k)]


async def test_replay_gives_the_same_events_with_the_same_sequence_numbers(client, raw):
    _, live = await post_stream(raw, {"model": "programmer-helper", "input": QUESTION})
    resp_id = live[0]["response"]["id"]
    async with raw.stream("GET", f"/v1/responses/{resp_id}", params={"stream": "true"}) as again:
        assert again.status_code == 200
        replayed = await sse_events(again)
    assert replayed == live, "the live stream and its replay are the same events, numbered the same"
    middle = live[len(live) // 2]["sequence_number"]
    async with raw.stream("GET", f"/v1/responses/{resp_id}",
                          params={"stream": "true", "starting_after": str(middle)}) as tail:
        rest = await sse_events(tail)
    assert rest == live[middle + 1:]
    got = await client.responses.retrieve(resp_id)
    assert got.model_dump() == Response.model_validate(live[-1]["response"]).model_dump()


async def test_background_poll_resume_and_cancel(client, raw):
    started = await client.responses.create(model="slow-talker", input="tell me a story", background=True)
    assert started.status == "queued" and started.background is True and started.output == []

    async def running() -> bool:
        """the background response is in progress"""
        return (await client.responses.retrieve(started.id)).status == "in_progress"
    await eventually(running)

    # Resume its event stream after sequence number 3, while it is still being written.
    stream = await client.responses.retrieve(started.id, stream=True, starting_after=3)
    tail = [e async for e in stream]
    assert [e.sequence_number for e in tail] == list(range(4, 4 + len(tail)))
    assert tail[-1].type == "response.completed"
    done = await client.responses.retrieve(started.id)
    assert done.status == "completed" and len(done.output_text.split()) == 80
    assert done.output_text == tail[-1].response.output_text

    # The SDK's stream helper resumes the same way.
    async with client.responses.stream(response_id=started.id, starting_after=5) as helper:
        numbers = [e.sequence_number async for e in helper]
        assert (await helper.get_final_response()).output_text == done.output_text
    assert numbers == list(range(6, 6 + len(numbers))) and numbers[-1] == tail[-1].sequence_number

    victim = await client.responses.create(model="slow-talker", input="tell me another one", background=True)
    cancelled = await client.responses.cancel(victim.id)
    assert cancelled.status == "cancelled" and cancelled.id == victim.id
    run = (await raw.get(f"/api/runs/{victim.id.removeprefix('resp_')}")).json()
    assert run["status"] == "cancelled" and run["reason"] == "cancelled by request"
    assert (await client.responses.cancel(victim.id)).status == "cancelled", "cancelling again changes nothing"
    with pytest.raises(openai.ConflictError):
        await client.responses.cancel(done.id)


async def test_function_tool_round_trip_with_previous_response_id(client, raw, system):
    first = await client.responses.create(model="plain", input=ASK_TOOL, tools=TOOLS)
    assert first.status == "completed"
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id

    _, events = await post_stream(raw, {"model": "plain", "input": ASK_TOOL, "tools": TOOLS})
    kinds = [e["type"] for e in events]
    assert kinds[2:] == ["response.output_item.added", "response.function_call_arguments.delta",
                         "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert events[2]["item"]["arguments"] == "" and events[5]["item"]["arguments"] == call.arguments

    answer = await client.responses.create(model="plain", previous_response_id=first.id, tools=TOOLS, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}])
    assert "temp_c" in answer.output_text and answer.previous_response_id == first.id

    # What the model saw: the earlier turn (the question, its own call), then the tool's output.
    sent = (await model_requests(raw, system, call.call_id))[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[1]["content"] == ASK_TOOL and sent[2]["tool_calls"][0]["id"] == call.call_id
    assert sent[3] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp_c": 21}'}

    # Without previous_response_id, the client sends the items back itself (stateless).
    stateless = await client.responses.create(model="plain", tools=TOOLS, store=False, input=[
        {"role": "user", "content": ASK_TOOL},
        {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 22}'}])
    assert "temp_c" in stateless.output_text and "22" in stateless.output_text
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="plain", input="and then?", previous_response_id=stateless.id)
    assert err.value.body["param"] == "previous_response_id" and "store" in err.value.message


async def test_previous_response_id_continues_the_conversation_without_old_instructions(client, raw, system):
    marker = f"conversation-{time.monotonic_ns()}"
    first = await client.responses.create(model="programmer-helper", input=f"{QUESTION} ({marker})",
                                          instructions="Answer briefly.")
    second = await client.responses.create(model="echo", input="and the first line?", previous_response_id=first.id,
                                           instructions="Answer in French.")
    third = await client.responses.create(model="echo", input="thanks", previous_response_id=second.id)
    assert second.instructions == "Answer in French." and third.instructions is None
    assert third.output_text == "thanks"
    sent = next(r for r in await model_requests(raw, system, "thanks") if r["messages"][-1]["content"] == "thanks")
    roles = [(m["role"], (m.get("content") or "")[:30]) for m in sent["messages"]]
    # (echo has no prompt of its own) turn 1: question, the agent's read_file call and its result,
    # answer; turn 2: question, answer; turn 3. No instructions of earlier turns.
    assert [r for r, _ in roles] == ["user", "assistant", "tool", "assistant", "user", "assistant", "user"]
    assert marker in sent["messages"][0]["content"] and sent["messages"][3]["content"] == first.output_text
    assert sent["messages"][5]["content"] == "and the first line?" == second.output_text
    # One conversation: every run of the chain has the first response's id as its conversation id.
    for resp in (first, second, third):
        run = (await raw.get(f"/api/runs/{resp.id.removeprefix('resp_')}")).json()
        assert run["conversation_id"] == first.id


async def test_instructions_and_max_output_tokens(client, raw, system):
    marker = f"instructions-{time.monotonic_ns()}"
    resp = await client.responses.create(model="plain", input=marker, instructions="Be terse.")
    sent = (await model_requests(raw, system, marker))[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user"]
    assert sent[0]["content"] == "You are a plain assistant." and sent[1]["content"] == "Be terse."
    assert resp.instructions == "Be terse."

    cut = await client.responses.create(model="slow-talker", input="tell me everything", max_output_tokens=5)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert len(cut.output_text.split()) == 5 and cut.max_output_tokens == 5
    _, events = await post_stream(raw, {"model": "slow-talker", "input": "x", "max_output_tokens": 3})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"


async def test_refusals_are_the_sdks_own_errors(client, system):
    with pytest.raises(openai.NotFoundError) as err:
        await client.responses.create(model="no-such-agent", input="hi")
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    for extra, param in (
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "name": "load_skill", "parameters": {}}]}, "tools.0.name"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"background": True, "store": False}, "background"),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            await client.responses.create(**{"model": "plain", "input": "hi", **extra})
        assert bad.value.body["param"] == param, (extra, bad.value.body)
        assert bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="plain", input="hi", previous_response_id="resp_" + "0" * 32)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_nope")
    bad_key = openai.AsyncOpenAI(base_url=f"{system.edge_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad_key.responses.create(model="plain", input="hi")
    await bad_key.close()


async def test_a_failed_run(client, raw):
    with pytest.raises(openai.APIStatusError) as err:
        await client.responses.create(model="failing-model", input="hi")
    assert err.value.status_code == 502 and err.value.body["code"] == "llm_http_error"
    run_id = err.value.response.headers["x-run-id"]
    failed = await client.responses.retrieve(f"resp_{run_id}")
    assert failed.status == "failed" and failed.error.code == "server_error" and "500" in failed.error.message

    _, events = await post_stream(raw, {"model": "failing-model", "input": "hi"})
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed" and "500" in events[-1]["response"]["error"]["message"]


async def test_client_disconnect_cancels_a_foreground_response_but_not_a_background_one(raw):
    async def read_a_little(body: dict) -> str:
        async with raw.stream("POST", "/v1/responses", json={"model": "slow-talker", "stream": True, **body}) as r:
            run_id = r.headers["x-run-id"]
            await sse_events(r, stop_after=6)  # created, in_progress, item, part, two deltas; then gone
        return run_id

    foreground = await read_a_little({"input": f"go {time.monotonic_ns()}"})
    background = await read_a_little({"input": f"go {time.monotonic_ns()}", "background": True})

    async def ended(run_id: str) -> dict | None:
        run = (await raw.get(f"/api/runs/{run_id}")).json()
        return run if run["status"] not in ("queued", "running") else None

    async def both_ended() -> bool:
        """both runs ended"""
        return await ended(foreground) is not None and await ended(background) is not None
    await eventually(both_ended, within=20)
    run = await ended(foreground)
    assert run["status"] == "cancelled" and run["reason"] == "client disconnected"
    assert (await ended(background))["status"] == "completed", "a background response outlives its stream"


async def test_another_tenant_sees_nothing(client, system):
    mine = await client.responses.create(model="programmer-helper", input=QUESTION)
    bob = openai.AsyncOpenAI(base_url=f"{system.edge_url}/v1", api_key=BOB_KEY, max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError):
            await bob.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            await bob.responses.retrieve(mine.id, stream=True)
        with pytest.raises(openai.NotFoundError):
            await bob.responses.cancel(mine.id)
        with pytest.raises(openai.NotFoundError) as err:
            await bob.responses.create(model="programmer-helper", input="more", previous_response_id=mine.id)
        assert err.value.body["param"] == "previous_response_id"
        with pytest.raises(openai.NotFoundError):
            await bob.responses.create(model="plain", input="hi")  # not among bob's agents
        assert (await client.responses.retrieve(mine.id)).status == "completed"
    finally:
        await bob.close()

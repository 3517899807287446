"""Real clients against /v1: the ``openai`` Python SDK and LangChain's ChatOpenAI.

Streaming and non-streaming calls of the same deterministic agent must give the same text and the
same tool calls; errors must surface as each client's own exceptions.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import ALICE_KEY

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ASK_TOOL = [{"role": "user", "content": 'Please call get_weather with {"city": "Paris"}'}]
QUESTION = [{"role": "user", "content": "How many lines does pyproject.toml have?"}]


@pytest.fixture
async def client(system):
    c = openai.AsyncOpenAI(base_url=f"{system.edge_url}/v1", api_key=ALICE_KEY, max_retries=0)
    yield c
    await c.close()


async def test_stream_and_whole_give_the_same_text(client):
    whole = await client.chat.completions.create(model="programmer-helper", messages=QUESTION)
    text = whole.choices[0].message.content
    assert "lines" in text and whole.choices[0].finish_reason == "stop"
    assert whole.usage.total_tokens > 0

    pieces, finish, usage = [], None, None
    stream = await client.chat.completions.create(
        model="programmer-helper", messages=QUESTION, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == text
    assert finish == "stop" and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0

    async with client.chat.completions.stream(model="programmer-helper", messages=QUESTION) as helper:
        deltas = [e.delta async for e in helper if e.type == "content.delta"]
        final = await helper.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content == text


async def test_tool_calls_accumulate_the_same_streamed_and_whole(client):
    whole = await client.chat.completions.create(model="plain", messages=ASK_TOOL, tools=TOOLS)
    call = whole.choices[0].message.tool_calls[0]
    assert whole.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    async with client.chat.completions.stream(model="plain", messages=ASK_TOOL, tools=TOOLS) as helper:
        kinds = [e.type async for e in helper]
        final = await helper.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    streamed = final.choices[0].message.tool_calls[0]
    assert streamed.function.name == "get_weather" and json.loads(streamed.function.arguments) == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"

    # Send the tool's result back as the next turn.
    answer = await client.chat.completions.create(model="plain", tools=TOOLS, messages=[
        *ASK_TOOL,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ])
    assert "temp_c" in answer.choices[0].message.content


async def test_legacy_completions(client):
    whole = await client.completions.create(model="echo", prompt="one two three")
    assert whole.choices[0].text == "one two three"
    stream = await client.completions.create(model="echo", prompt="one two three", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "one two three"


async def test_models(client):
    ids = [m.id async for m in client.models.list()]
    assert "programmer-helper" in ids and "plain" in ids
    assert (await client.models.retrieve("plain")).id == "plain"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_errors_are_the_sdks_own(client, system):
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="no-such-agent", messages=QUESTION)
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="plain", messages=QUESTION, n=2)
    assert bad.value.body["param"] == "n"
    bad_key = openai.AsyncOpenAI(base_url=f"{system.edge_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad_key.chat.completions.create(model="plain", messages=QUESTION)
    await bad_key.close()
    stream = await client.chat.completions.create(model="midstream-failure", messages=QUESTION, stream=True)
    with pytest.raises(openai.APIError) as mid:
        [chunk async for chunk in stream]  # reading the stream must raise mid-way
    assert "mid-stream" in mid.value.message


def test_langchain_chat_openai(system):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="programmer-helper", base_url=f"{system.edge_url}/v1", api_key=ALICE_KEY,
                     max_retries=0, stream_usage=True)
    whole = llm.invoke("How many lines does pyproject.toml have?")
    chunks = list(llm.stream("How many lines does pyproject.toml have?"))
    streamed = chunks[0]
    for c in chunks[1:]:
        streamed = streamed + c
    assert streamed.content == whole.content and "lines" in whole.content
    # LangChain sums usage over chunks: it must equal the run's real usage (one usage chunk:
    # docs/streaming.md, "Usage").
    assert streamed.usage_metadata["total_tokens"] == whole.usage_metadata["total_tokens"] > 0

    with_tools = ChatOpenAI(model="plain", base_url=f"{system.edge_url}/v1", api_key=ALICE_KEY,
                            max_retries=0).bind_tools(TOOLS)
    msg = with_tools.invoke(ASK_TOOL[0]["content"])
    assert msg.tool_calls[0]["name"] == "get_weather" and msg.tool_calls[0]["args"] == {"city": "Paris"}
    acc = None
    for c in with_tools.stream(ASK_TOOL[0]["content"]):
        acc = c if acc is None else acc + c
    assert acc.tool_calls[0]["name"] == "get_weather" and acc.tool_calls[0]["args"] == {"city": "Paris"}
    reply = with_tools.invoke([HumanMessage(ASK_TOOL[0]["content"]), msg,
                               ToolMessage('{"temp_c": 21}', tool_call_id=msg.tool_calls[0]["id"])])
    assert "temp_c" in reply.content

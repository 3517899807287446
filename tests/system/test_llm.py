"""The OpenAI-compatible client against the built-in model, a real HTTP server: streaming, tool
calls, retries on 5xx, no retries on 4xx or after the first token, tolerance of odd servers."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from agent_runner.endpoint import llm_endpoint, origin
from agent_runner.llm import LLMClient, LLMEndpoint, LLMError, ToolCallAccum, _merge_tool_call
from agentstream.settings import Settings
from schemas.agents import AgentDefinition
from schemas.tools import READ_FILE
from tests.harness import REPO


@pytest.fixture
async def llm():
    client = LLMClient(max_attempts=3)
    yield client
    await client.aclose()


def endpoint(system, model: str = "builtin") -> LLMEndpoint:
    return LLMEndpoint(base_url=system.model_url, model=model, timeout=10)


async def requests_for(system, model: str) -> list[dict]:
    async with httpx.AsyncClient() as c:
        data = (await c.get(system.model_url.removesuffix("/v1") + "/debug/requests")).json()
    return [r for r in data["requests"] if r["model"] == model]


async def test_streams_text_and_reports_usage(system, llm):
    pieces: list[str] = []

    async def on_text(t: str) -> None:
        pieces.append(t)

    result = await llm.chat(endpoint(system), [{"role": "user", "content": "hello there"}], on_text=on_text)
    assert len(pieces) > 5  # token by token
    assert "".join(pieces) == result.text
    assert "hello there" in result.text
    assert result.finish_reason == "stop"
    assert result.usage.completion_tokens == len(pieces) and result.usage.prompt_tokens > 0


async def test_assembles_a_streamed_tool_call(system, llm):
    result = await llm.chat(
        endpoint(system), [{"role": "user", "content": "What is in pyproject.toml?"}],
        tools=[READ_FILE.function_definition()],
    )
    assert result.finish_reason == "tool_calls"
    assert len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call.name == "read_file" and call.id.startswith("call_")
    assert json.loads(call.arguments) == {"path": "pyproject.toml"}


async def test_parameters_are_passed_through(system, llm):
    model = f"builtin:tokens=30,delay=0,tag={uuid.uuid4().hex}"
    result = await llm.chat(endpoint(system, model), [{"role": "user", "content": "hi"}],
                            parameters={"max_tokens": 7, "temperature": 0.1, "seed": 3})
    assert result.finish_reason == "length"
    assert len(result.text.split()) == 7
    sent = (await requests_for(system, model))[-1]["parameters"]
    assert sent["temperature"] == 0.1 and sent["seed"] == 3 and sent["max_tokens"] == 7


async def test_retries_5xx_then_succeeds(system, llm):
    model = f"builtin:fail_first=2,tag={uuid.uuid4().hex}"
    result = await llm.chat(endpoint(system, model), [{"role": "user", "content": "hi"}])
    assert result.attempts == 3
    assert "hi" in result.text
    assert len(await requests_for(system, model)) == 3


async def test_gives_up_after_max_attempts(system, llm):
    model = f"builtin:fail=503,tag={uuid.uuid4().hex}"
    with pytest.raises(LLMError) as err:
        await llm.chat(endpoint(system, model), [{"role": "user", "content": "hi"}])
    assert err.value.kind == "llm_http_error" and err.value.status == 503
    assert err.value.message.startswith("the model server answered HTTP 503")
    assert httpx.URL(system.model_url).netloc.decode() not in err.value.message  # logged, not shown to clients
    assert len(await requests_for(system, model)) == 3


async def test_does_not_retry_4xx(system, llm):
    model = f"builtin:fail=400,tag={uuid.uuid4().hex}"
    with pytest.raises(LLMError) as err:
        await llm.chat(endpoint(system, model), [{"role": "user", "content": "hi"}])
    assert err.value.status == 400
    assert len(await requests_for(system, model)) == 1


async def test_error_mid_stream_is_not_retried(system, llm):
    model = f"builtin:fail_after=3,tag={uuid.uuid4().hex}"
    got: list[str] = []

    async def on_text(t: str) -> None:
        got.append(t)

    with pytest.raises(LLMError) as err:
        await llm.chat(endpoint(system, model), [{"role": "user", "content": "a question"}], on_text=on_text)
    assert err.value.kind == "llm_stream_error"
    assert len(got) == 3
    assert len(await requests_for(system, model)) == 1


async def test_unreachable_server_is_retried_then_reported(llm):
    from agentstream.natsserver import free_port

    port = free_port()
    with pytest.raises(LLMError) as err:
        await llm.chat(LLMEndpoint(base_url=f"http://127.0.0.1:{port}/v1", model="x", timeout=2),
                       [{"role": "user", "content": "hi"}])
    assert err.value.kind == "llm_unreachable"
    # The message reaches the run's clients (run.failed): it names no internal address.
    assert err.value.message == "the model server could not be reached (ConnectError)"
    assert str(port) not in err.value.message


async def test_accepts_a_json_body_answered_to_a_streaming_request(system, llm):
    result = await llm.chat(endpoint(system, "builtin:no_stream=1"), [{"role": "user", "content": "Read README.md"}],
                            tools=[READ_FILE.function_definition()])
    assert result.tool_calls[0].name == "read_file"


def test_tool_call_fragments_without_index_are_joined_by_id():
    calls: dict[int, ToolCallAccum] = {}
    _merge_tool_call(calls, {"id": "a", "function": {"name": "f", "arguments": '{"x":'}})
    _merge_tool_call(calls, {"id": "a", "function": {"arguments": "1}"}})
    _merge_tool_call(calls, {"id": "b", "function": {"name": "g", "arguments": {"y": 2}}})
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls.values()] == [
        ("a", "f", {"x": 1}),
        ("b", "g", {"y": 2}),
    ]


def test_repeated_name_is_not_doubled():
    calls: dict[int, ToolCallAccum] = {}
    _merge_tool_call(calls, {"index": 0, "id": "a", "function": {"name": "read_file", "arguments": ""}})
    _merge_tool_call(calls, {"index": 0, "function": {"name": "read_file", "arguments": "{}"}})
    assert calls[0].name == "read_file" and calls[0].arguments == "{}"


async def test_model_answers_from_the_tool_result(system, llm):
    text = (REPO / "README.md").read_text() if (REPO / "README.md").exists() else "line one\nline two\n"
    messages = [
        {"role": "user", "content": "How long is README.md?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path": "README.md"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": json.dumps(
                {"path": "README.md", "total_lines": len(text.splitlines()), "size": len(text), "content": text}
            ),
        },
    ]
    result = await llm.chat(endpoint(system), messages, tools=[READ_FILE.function_definition()])
    assert f"has {len(text.splitlines())} lines" in result.text
    assert text.splitlines()[0] in result.text


# -- which key goes where (agent_runner.endpoint)

DEFAULT = "https://llm.internal:8443/v1"


def _agent(**llm) -> AgentDefinition:
    return AgentDefinition.model_validate({"name": "a", **({"llm": llm} if llm else {})})


@pytest.mark.parametrize("llm,environ,key", [
    ({}, {}, "sk-global"),  # the default server
    ({"base_url": "https://LLM.Internal:8443/other/"}, {}, "sk-global"),  # the same origin, spelled differently
    ({"base_url": "https://llm.internal/v1"}, {}, None),  # another port: another origin
    ({"base_url": "http://llm.internal:8443/v1"}, {}, None),  # another scheme
    ({"base_url": "https://evil.example/v1"}, {}, None),
    ({"base_url": "https://evil.example/v1", "api_key_env": "AGENTSTREAM_KEY_EVIL"}, {"AGENTSTREAM_KEY_EVIL": "sk-e"},
     "sk-e"),
    ({"api_key_env": "AGENTSTREAM_KEY_OTHER"}, {"AGENTSTREAM_KEY_OTHER": "sk-o"}, "sk-o"),
])
def test_llm_api_key_goes_only_to_llm_base_url(llm, environ, key):
    settings = Settings.from_env({}, llm_api_key="sk-global", llm_base_url=DEFAULT)
    assert llm_endpoint(_agent(**llm), settings, DEFAULT, environ).api_key == key


def test_a_key_variable_outside_the_pattern_or_unset_is_refused():
    settings = Settings.from_env({}, llm_base_url=DEFAULT)
    with pytest.raises(ValueError, match=r"llm\.api_key_env: 'HOME' does not match LLM_KEY_ENV_PATTERN"):
        llm_endpoint(_agent(base_url="https://evil.example/v1", api_key_env="HOME"), settings, DEFAULT,
                     {"HOME": "/root"})
    with pytest.raises(ValueError, match=r"\$AGENTSTREAM_KEY_X, which is not set"):
        llm_endpoint(_agent(api_key_env="AGENTSTREAM_KEY_X"), settings, DEFAULT, {})


@pytest.mark.parametrize("url,expected", [
    ("http://Example.COM/v1", ("http", "example.com", 80)), ("https://[::1]:8443", ("https", "::1", 8443)),
    ("ftp://example.com", None), ("http://example.com:99999/", None), ("not a url", None),
])
def test_origin(url, expected):
    assert origin(url) == expected

"""/v1/chat/completions and /v1/completions checked on raw bytes against docs/streaming.md.

Each assertion names the section of docs/streaming.md it enforces. The system is the real one:
real NATS, a real agent runner, the built-in model (a real HTTP server) set up by the test agents to produce
each case (tests/agents: echo, paced, midstream-failure, plain, slow-talker, programmer-helper).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time

import httpx
import pytest

from tests.conftest import ALICE_KEY

FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


async def raw_chat(client: httpx.AsyncClient, body: dict, path: str = "/v1/chat/completions"):
    """POST a streaming request; returns (response, body bytes, [(arrival time, frame bytes)], t_done, t_eof)."""
    frames: list[tuple[float, bytes]] = []
    buf = b""
    pos = 0
    t_done = None
    async with client.stream("POST", path, json=body) as resp:
        async for chunk in resp.aiter_raw():
            now = time.monotonic()
            buf += chunk
            while (end := buf.find(b"\n\n", pos)) != -1:
                frame = buf[pos:end + 2]
                frames.append((now, frame))
                pos = end + 2
                if frame == b"data: [DONE]\n\n":
                    t_done = now
        t_eof = time.monotonic()
    return resp, buf, frames, t_done, t_eof


def check_framing(raw: bytes) -> list[dict | str]:
    """docs/streaming.md, "SSE framing" and "Termination", on the raw body: returns the data payloads
    (dicts, and the final "[DONE]")."""
    assert not raw.startswith(b"\xef\xbb\xbf"), "SSE framing: no BOM"
    assert raw.endswith(b"\n\n"), "SSE framing: the last event ends with a blank line"
    assert b"\r" not in raw, "SSE framing: LF line endings"
    payloads: list[dict | str] = []
    for frame in raw[:-2].split(b"\n\n"):
        text = frame.decode("utf-8")  # SSE framing: valid UTF-8 throughout
        if text.startswith(":"):
            assert "\n" not in text, "Keep-alives: keep-alive is a one-line comment"
            continue
        assert re.fullmatch(r"data: (\{.*\}|\[DONE\])", text), (
            f"SSE framing: a frame is exactly one data line: {text[:120]!r}"
        )
        assert not text.startswith("data: data:"), "SSE framing: no doubled prefix"
        value = text[len("data: "):]
        payloads.append(value if value == "[DONE]" else json.loads(value))
    assert payloads and payloads[-1] == "[DONE]", "Termination: the final frame is data: [DONE]"
    assert payloads.count("[DONE]") == 1, "Termination: nothing after [DONE]"
    assert "\ufffd" not in raw.decode("utf-8"), "SSE framing: no replacement characters"
    return payloads


def check_headers(resp: httpx.Response) -> None:
    assert resp.status_code == 200, "HTTP response"
    assert resp.headers["content-type"].split(";")[0].strip() == "text/event-stream", "HTTP response"
    cache_control = resp.headers.get("cache-control", "")
    assert "no-cache" in cache_control or "no-store" in cache_control, "HTTP response"
    assert resp.headers.get("x-accel-buffering") == "no", "HTTP response"
    assert "content-encoding" not in resp.headers, "HTTP response: never compressed"
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-run-id"])


def check_chunks(chunks: list[dict], *, include_usage: bool) -> tuple[str, str, dict | None]:
    """docs/streaming.md, "Chunks" and "Usage", on the parsed chunks. Returns (content, finish_reason, usage)."""
    usage_chunk = None
    if include_usage:
        usage_chunk = chunks[-1]
        assert usage_chunk["choices"] == [], "Usage: the usage chunk has choices: []"
        u = usage_chunk["usage"]
        assert all(isinstance(u[k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens")), "Usage"
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], "Usage"
        assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0, "Usage: real counts"
        chunks = chunks[:-1]
        for c in chunks:
            assert "usage" in c and c["usage"] is None, "Usage: every other chunk has usage: null"
    else:
        assert all(c.get("usage") is None for c in chunks), "Usage: no usage without include_usage"
    first = chunks[0]
    for c in chunks:
        assert c["object"] == "chat.completion.chunk", "Chunks"
        assert c["id"] == first["id"] and isinstance(c["id"], str), "Chunks: same id"
        assert c["created"] == first["created"] and isinstance(c["created"], int), "Chunks: same created (seconds)"
        assert abs(c["created"] - time.time()) < 600, "Chunks: created is Unix seconds"
        assert c["model"] == first["model"], "Chunks: same model"
        assert isinstance(c["choices"], list) and len(c["choices"]) == 1, "Chunks (n=1)"
        choice = c["choices"][0]
        assert choice["index"] == 0 and isinstance(choice["delta"], dict) and "finish_reason" in choice, "Chunks"
    finishes = [c for c in chunks if c["choices"][0]["finish_reason"] is not None]
    assert len(finishes) == 1 and finishes[0] is chunks[-1], "Chunks: exactly one finish, last"
    finish = finishes[0]["choices"][0]
    assert finish["finish_reason"] in FINISH, "Chunks"
    assert not finish["delta"].get("content"), "Chunks: the finish chunk does not re-send content"
    roles = [c["choices"][0]["delta"].get("role") for c in chunks if "role" in c["choices"][0]["delta"]]
    assert roles == ["assistant"] and "role" in chunks[0]["choices"][0]["delta"], "Chunks: role once, first"
    content = ""
    for c in chunks:
        piece = c["choices"][0]["delta"].get("content")
        assert piece is None or isinstance(piece, str), "Chunks"
        content += piece or ""
    return content, finish["finish_reason"], usage_chunk["usage"] if usage_chunk else None


@pytest.fixture
async def oai(system):
    async with httpx.AsyncClient(base_url=system.edge_url, timeout=httpx.Timeout(10, read=60),
                                 headers={"Authorization": f"Bearer {ALICE_KEY}", "Accept-Encoding": "gzip"}) as client:
        yield client


async def test_text_stream(oai):
    resp, raw, _frames, t_done, t_eof = await raw_chat(oai, {
        "model": "echo", "stream": True,
        "messages": [{"role": "user", "content": "line one\nline two\r\nthird\u2028 emoji 🚀 中文字符 e\u0301 done"}],
    })
    check_headers(resp)
    payloads = check_framing(raw)
    content, finish, _ = check_chunks(payloads[:-1], include_usage=False)
    assert finish == "stop", "Chunks"
    assert content == "line one\nline two\r\nthird\u2028 emoji 🚀 中文字符 e\u0301 done", "framing, chunks: exact text"
    assert t_eof - t_done < 1.0, "Termination: the body ends right after [DONE]"

    whole = (
        await oai.post(
            "/v1/chat/completions",
            json={
                "model": "echo",
                "messages": [
                    {"role": "user", "content": "line one\nline two\r\nthird\u2028 emoji 🚀 中文字符 e\u0301 done"}
                ],
            },
        )
    ).json()
    assert whole["choices"][0]["message"]["content"] == content, "Chunks: streamed == not streamed"


async def test_usage_chunk(oai):
    resp, raw, *_ = await raw_chat(oai, {
        "model": "programmer-helper", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "How many lines does pyproject.toml have?"}],
    })
    check_headers(resp)
    payloads = check_framing(raw)
    content, finish, usage = check_chunks(payloads[:-1], include_usage=True)
    assert "lines" in content and finish == "stop"
    # The agent called read_file on the server: two model calls, both counted.
    run = (await oai.get(f"/api/runs/{resp.headers['x-run-id']}")).json()
    assert run["tool_calls"][0]["name"] == "read_file"
    assert usage == {k: run["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


async def test_length_finish(oai):
    _, raw, *_ = await raw_chat(oai, {"model": "slow-talker", "stream": True, "max_tokens": 5,
                                      "messages": [{"role": "user", "content": "tell me everything"}]})
    content, finish, _ = check_chunks(check_framing(raw)[:-1], include_usage=False)
    assert finish == "length", "Chunks: max_tokens hit"
    assert len(content.split()) == 5
    whole = (await oai.post("/v1/chat/completions", json={"model": "slow-talker", "max_completion_tokens": 3,
                                                          "messages": [{"role": "user", "content": "x"}]})).json()
    assert whole["choices"][0]["finish_reason"] == "length"


async def test_events_are_flushed_as_they_are_produced(oai):
    started = time.monotonic()
    _, _raw, frames, _, t_eof = await raw_chat(oai, {"model": "paced", "stream": True,
                                                     "messages": [{"role": "user", "content": "go"}]})
    content_times = [t for t, f in frames if b'"content":"' in f and b'"content":""' not in f]
    assert len(content_times) == 6
    assert frames[0][0] - started < 0.5 < t_eof - started, "HTTP response: the first event comes long before the end"
    gaps = [b - a for a, b in itertools.pairwise(content_times)]
    assert min(gaps) > 0.05, f"HTTP response: content events arrive as generated, not in a burst: {gaps}"


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


async def test_tool_call_stream(oai):
    messages = [{"role": "user", "content": 'Please call get_weather with {"city": "Paris"}'}]
    resp, raw, *_ = await raw_chat(oai, {"model": "plain", "stream": True, "tools": TOOLS, "messages": messages})
    check_headers(resp)
    chunks = check_framing(raw)[:-1]
    content, finish, _ = check_chunks(chunks, include_usage=False)
    assert finish == "tool_calls", "Chunks, Tool call deltas"
    assert content == "", "Tool call deltas: no content with only tool calls"
    entries = [e for c in chunks for e in c["choices"][0]["delta"].get("tool_calls") or []]
    assert entries, "tool call deltas"
    for e in entries:
        assert isinstance(e["index"], int), "Tool call deltas: index on every entry"
        assert isinstance(e["function"], dict), "Tool call deltas: function object on every entry"
    first = entries[0]
    assert first["index"] == 0 and first["id"].startswith("call_") and first["type"] == "function", "Tool call deltas"
    assert first["function"]["name"] == "get_weather", "Tool call deltas: full name first"
    assert all("id" not in e and "name" not in e["function"] for e in entries[1:]), "Tool call deltas: id and name once"
    args = "".join(e["function"].get("arguments", "") for e in entries)
    assert json.loads(args) == {"city": "Paris"}, "Tool call deltas: fragments concatenate to the JSON"

    whole = (
        await oai.post("/v1/chat/completions", json={"model": "plain", "tools": TOOLS, "messages": messages})
    ).json()
    call = whole["choices"][0]["message"]["tool_calls"][0]
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    assert whole["choices"][0]["message"]["content"] is None, "Tool call deltas"
    assert isinstance(call["function"]["arguments"], str), "Non-streaming"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert call["id"] != first["id"], "Tool call deltas: unique ids across requests"

    # The client runs the tool and sends the result back; the agent answers from it.
    follow = (await oai.post("/v1/chat/completions", json={"model": "plain", "tools": TOOLS, "messages": [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21, "sky": "clear"}'},
    ]})).json()
    assert follow["choices"][0]["finish_reason"] == "stop"
    assert "temp_c" in follow["choices"][0]["message"]["content"]


async def test_non_streaming_shape(oai):
    resp = await oai.post(
        "/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json"), "Non-streaming"
    body = resp.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "hi", "refusal": None}, "Non-streaming"
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None and choice["index"] == 0, "Non-streaming"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0


def _openai_error(resp: httpx.Response, status: int, param: str | None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json"), "Errors before the first byte"
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"], "Errors before the first byte"
    assert {"message", "type", "param", "code"} <= set(err), "Errors before the first byte: OpenAI error shape"
    assert err["param"] == param
    if status < 500:
        assert resp.headers.get("x-should-retry") == "false", (
            "Errors before the first byte: deterministic errors are not retried"
        )
    return err


async def test_errors_before_the_stream(oai, system):
    err = _openai_error(await oai.post("/v1/chat/completions", json={
        "model": "no-such-agent", "stream": True, "messages": [{"role": "user", "content": "hi"}]}), 404, "model")
    assert err["code"] == "model_not_found"
    _openai_error(await oai.post("/v1/chat/completions", json={
        "model": "echo", "stream": True, "n": 2, "messages": [{"role": "user", "content": "hi"}]}), 400, "n")
    _openai_error(
        await oai.post("/v1/chat/completions", json={"model": "echo", "stream": True, "messages": []}), 400, "messages"
    )
    _openai_error(await oai.post("/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "robot", "content": "hi"}]}), 400, "messages.0.role")
    _openai_error(
        await oai.post("/v1/chat/completions", content=b"{nope", headers={"Content-Type": "application/json"}),
        400,
        "body",
    )
    _openai_error(await oai.post("/v1/chat/completions", json={
        "model": "plain", "tools": [{"type": "function", "function": {"name": "read file"}}],
        "messages": [{"role": "user", "content": "hi"}]}), 400, "tools.0.function.name")
    async with httpx.AsyncClient(base_url=system.edge_url) as anon:
        err = _openai_error(await anon.post("/v1/chat/completions", json={
            "model": "echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}), 401, "Authorization")
        assert err["type"] == "authentication_error"


async def test_error_mid_stream(oai):
    resp, raw, _frames, t_done, t_eof = await raw_chat(oai, {
        "model": "midstream-failure", "stream": True, "messages": [{"role": "user", "content": "a b c d e f g"}]})
    assert resp.status_code == 200
    payloads = check_framing(raw)
    assert payloads[-2].keys() == {"error"}, "Errors after the first byte: an error event"
    err = payloads[-2]["error"]
    assert isinstance(err["message"], str) and "mid-stream" in err["message"], "Errors after the first byte"
    assert {"type", "param", "code"} <= set(err)
    contents = [p["choices"][0]["delta"].get("content") for p in payloads[:-2]]
    assert contents[0] == "" and "".join(contents) == "You asked: \u201ca ", "the three words came first"
    assert b"event:" not in raw, "Errors after the first byte"
    assert t_eof - t_done < 1.0, "Termination"


async def test_client_disconnect_cancels_the_run(oai, system):
    marker = f"disconnect-{time.monotonic_ns()}"
    async with oai.stream("POST", "/v1/chat/completions", json={
            "model": "slow-talker", "stream": True, "messages": [{"role": "user", "content": marker}]}) as resp:
        run_id = resp.headers["x-run-id"]
        seen = 0
        async for line in resp.aiter_lines():
            if '"content":"' in line and '"content":""' not in line:
                seen += 1
                if seen == 3:
                    break  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while True:
        run = (await oai.get(f"/api/runs/{run_id}")).json()
        if run["status"] != "running":
            break
        assert time.monotonic() < deadline, run
        await asyncio.sleep(0.1)
    assert run["status"] == "cancelled" and run["reason"] == "client disconnected"
    model_log = (await oai.get(system.model_url.removesuffix("/v1") + "/debug/requests")).json()["requests"]
    mine = [r for r in model_log if marker in json.dumps(r["messages"])]
    assert len(mine) == 1 and mine[0]["disconnected"] is True, "Disconnects: the runner stopped calling the model"
    assert mine[0]["finished"] is False


async def test_keep_alive_comments_during_server_side_tool_work(system, tmp_path):
    edge = system.start_edge(SSE_HEARTBEAT="0.2")
    async with httpx.AsyncClient(base_url=edge.ready_value, headers={"Authorization": f"Bearer {ALICE_KEY}"},
                                 timeout=30) as client:
        _, raw, *_ = await raw_chat(client, {"model": "slow-starter", "stream": True,
                                             "messages": [{"role": "user", "content": "hi"}]})
    edge.terminate()
    assert raw.count(b": ping\n\n") >= 3, "Keep-alives: comment keep-alives while the model is silent"
    check_chunks(check_framing(raw)[:-1], include_usage=False)


# -- legacy completions


def check_text_completion_chunks(chunks: list[dict]) -> tuple[str, str]:
    first = chunks[0]
    for c in chunks:
        assert c["object"] == "text_completion", "Legacy completions: same object as non-streaming"
        same = c["id"] == first["id"] and c["created"] == first["created"] and c["model"] == first["model"]
        assert same, "Legacy completions"
        choice = c["choices"][0]
        assert isinstance(choice["text"], str), "Legacy completions: text in every chunk"
        assert choice["index"] == 0 and "logprobs" in choice and "finish_reason" in choice, "Legacy completions"
    finishes = [c for c in chunks if c["choices"][0]["finish_reason"] is not None]
    assert len(finishes) == 1 and finishes[0] is chunks[-1], "Legacy completions: one finish, last"
    assert finishes[0]["choices"][0]["text"] == "", "Legacy completions: text in the finish chunk too"
    return "".join(c["choices"][0]["text"] for c in chunks), finishes[0]["choices"][0]["finish_reason"]


async def test_completions_stream_and_whole(oai):
    resp, raw, *_ = await raw_chat(oai, {"model": "echo", "prompt": "Say: hello\nworld", "stream": True,
                                         "stream_options": {"include_usage": True}}, path="/v1/completions")
    check_headers(resp)
    payloads = check_framing(raw)
    usage = payloads[-2]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0, "Legacy completions, Usage"
    text, finish = check_text_completion_chunks(payloads[:-2])
    assert text == "Say: hello\nworld" and finish == "stop"
    whole = (await oai.post("/v1/completions", json={"model": "echo", "prompt": "Say: hello\nworld"})).json()
    assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == text, "Legacy completions"
    assert whole["choices"][0]["finish_reason"] == "stop"
    _openai_error(await oai.post("/v1/completions", json={"model": "echo", "prompt": "x", "n": 3}), 400, "n")
    _openai_error(await oai.post("/v1/completions", json={"model": "echo", "prompt": ["a", "b"]}), 400, "prompt")


# -- models


async def test_models(oai, system):
    listing = (await oai.get("/v1/models")).json()
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert "programmer-helper" in ids and "echo" in ids
    for m in listing["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int) and m["created"] > 0 and m["owned_by"], "Models"
    one = (await oai.get("/v1/models/programmer-helper")).json()
    assert one["id"] == "programmer-helper" and one["object"] == "model", "Models"
    err = _openai_error(await oai.get("/v1/models/nope"), 404, "model")
    assert err["code"] == "model_not_found"
    from tests.conftest import BOB_KEY

    async with httpx.AsyncClient(base_url=system.edge_url, headers={"Authorization": f"Bearer {BOB_KEY}"}) as bob:
        assert [m["id"] for m in (await bob.get("/v1/models")).json()["data"]] == ["programmer-helper"], "tenant-scoped"


@pytest.mark.parametrize("extra", [
    {},
    {"tools": TOOLS},
    {"tools": TOOLS, "tool_choice": "required"},
    {"response_format": {"type": "json_object"}},
    {"stream_options": {"include_usage": False, "include_obfuscation": True}},
])
async def test_stream_true_is_always_sse(oai, extra):
    resp, raw, *_ = await raw_chat(oai, {"model": "plain", "stream": True, **extra,
                                         "messages": [{"role": "user", "content": "hello"}]})
    check_headers(resp)  # HTTP response: an SSE stream, even with tools
    check_chunks(check_framing(raw)[:-1], include_usage=False)


async def test_a_failed_run_is_never_a_200(oai):
    resp = await oai.post(
        "/v1/chat/completions", json={"model": "failing-model", "messages": [{"role": "user", "content": "hi"}]}
    )
    err = _openai_error(resp, 502, None)  # Non-streaming: the model server failed: a retryable upstream error
    assert err["type"] == "server_error" and "500" in err["message"]
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-run-id"])


async def test_conversation_reaches_the_model_after_the_agents_own_prompt(oai, system):
    marker = f"conversation-{time.monotonic_ns()}"
    resp = await oai.post("/v1/chat/completions", json={"model": "plain", "messages": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": marker}]},
    ]})
    assert resp.status_code == 200
    log = (await oai.get(system.model_url.removesuffix("/v1") + "/debug/requests")).json()["requests"]
    sent = next(r for r in log if marker in json.dumps(r["messages"]))["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user", "assistant", "user"]
    assert sent[0]["content"] == "You are a plain assistant."  # the agent's own prompt first
    assert sent[1]["content"] == "Answer in French." and sent[-1]["content"] == marker
    run = (await oai.get(f"/api/runs/{resp.headers['x-run-id']}")).json()
    assert run["message"] == marker


async def test_client_gone_from_a_non_streaming_call_cancels_the_run(oai, system):
    marker = f"gone-{time.monotonic_ns()}"
    request = asyncio.create_task(oai.post("/v1/chat/completions", json={
        "model": "slow-talker", "messages": [{"role": "user", "content": marker}]}))
    model_url = system.model_url.removesuffix("/v1") + "/debug/requests"
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient() as probe:
        while not any(marker in json.dumps(r["messages"]) for r in (await probe.get(model_url)).json()["requests"]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        request.cancel()  # the client hangs up while the model is still talking
        with pytest.raises(asyncio.CancelledError):
            await request
        while True:
            mine = next(
                r for r in (await probe.get(model_url)).json()["requests"] if marker in json.dumps(r["messages"])
            )
            if mine["disconnected"] or mine["finished"]:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert mine["disconnected"] is True and mine["finished"] is False

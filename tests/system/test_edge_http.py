"""The edge's HTTP contract: bad input gets its documented error (status + JSON naming the field),
tenants are isolated, the LocalAI views work, health reflects the NATS connection."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import ALICE_KEY, BOB_KEY, read_events, submit


def _error(resp: httpx.Response, status: int, field: str | None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()["error"]
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["type"], str)
    assert body["field"] == field, body
    return body


async def test_malformed_json_is_400_naming_the_body(api):
    resp = await api.post(
        "/api/agents/programmer-helper/chat", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    _error(resp, 400, "body")


async def test_body_that_is_not_an_object_is_400(api):
    resp = await api.post("/api/agents/programmer-helper/chat", json=["hello"])
    _error(resp, 400, "body")


async def test_missing_message_is_422(api):
    _error(await api.post("/api/agents/programmer-helper/chat", json={}), 422, "message")


async def test_empty_message_is_422(api):
    _error(await api.post("/api/agents/programmer-helper/chat", json={"message": "   "}), 422, "message")


async def test_wrong_type_is_422(api):
    _error(await api.post("/api/agents/programmer-helper/chat", json={"message": 42}), 422, "message")


async def test_unknown_field_is_422(api):
    body = _error(
        await api.post("/api/agents/programmer-helper/chat", json={"message": "hi", "mesage_id": "x"}), 422, "mesage_id"
    )
    assert "unknown field" in body["message"]


async def test_unknown_agent_is_404(api):
    _error(await api.post("/api/agents/no-such-agent/chat", json={"message": "hi"}), 404, "name")
    _error(await api.get("/api/agents/no-such-agent"), 404, "name")


@pytest.mark.parametrize("name", ["a.b", "*", ">", "a b", "x" * 65])
async def test_subject_unsafe_agent_name_is_400(api, name):
    resp = await api.post(f"/api/agents/{httpx.URL(path=name).path}/chat", json={"message": "hi"})
    _error(resp, 400, "name")


@pytest.mark.parametrize("run_id", ["a.b", "*", ">", "x" * 65])
async def test_subject_unsafe_run_id_is_400(api, run_id):
    _error(await api.get(f"/api/runs/{run_id}"), 400, "run_id")
    _error(await api.get(f"/api/runs/{run_id}/events"), 400, "run_id")


async def test_unknown_run_is_404(api):
    _error(await api.get("/api/runs/0123456789abcdef0123456789abcdef"), 404, "run_id")
    _error(await api.get("/api/runs/0123456789abcdef0123456789abcdef/events"), 404, "run_id")


async def test_bad_last_event_id_is_400(api):
    accepted = await submit(api, "programmer-helper", "hello")
    resp = await api.get(f"/api/runs/{accepted['run_id']}/events", headers={"Last-Event-ID": "yesterday"})
    _error(resp, 400, "Last-Event-ID")


async def test_oversized_body_is_413(api):
    # Quart refuses the body while the client is still sending it; the client must still read the
    # 413 (not a connection reset), every time, and the next request on the connection must work.
    for size in (2 * 1024 * 1024, 8 * 1024 * 1024) * 3:
        resp = await api.post("/api/agents/programmer-helper/chat", json={"message": "x" * size})
        _error(resp, 413, "body")
        assert (await api.get("/api/agents")).status_code == 200


async def test_oversized_chunked_body_is_413(api):
    async def chunks():  # no Content-Length: the edge finds out only by counting
        for _ in range(48):
            yield b"x" * 65536

    for _ in range(3):
        resp = await api.post(
            "/api/agents/programmer-helper/chat", content=chunks(), headers={"Content-Type": "application/json"}
        )
        _error(resp, 413, "body")


async def test_oversized_message_id_is_422(api):
    _error(
        await api.post("/api/agents/programmer-helper/chat", json={"message": "hi", "message_id": "m" * 201}),
        422,
        "message_id",
    )


async def test_missing_and_unknown_keys_are_401(system):
    async with httpx.AsyncClient(base_url=system.edge_url) as anon:
        _error(await anon.post("/api/agents/programmer-helper/chat", json={"message": "hi"}), 401, "Authorization")
        resp = await anon.get("/api/agents", headers={"Authorization": "Bearer not-a-key"})
        _error(resp, 401, "Authorization")
        assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_another_tenants_run_is_404(api, system):
    accepted = await submit(api, "programmer-helper", "What is in pyproject.toml?")
    await asyncio.wait_for(read_events(api, accepted["run_id"]), 30)
    async with httpx.AsyncClient(base_url=system.edge_url, headers={"Authorization": f"Bearer {BOB_KEY}"}) as bob:
        _error(await bob.get(f"/api/runs/{accepted['run_id']}"), 404, "run_id")
        _error(await bob.get(f"/api/runs/{accepted['run_id']}/events"), 404, "run_id")
        _error(await bob.post(f"/api/runs/{accepted['run_id']}/cancel", json={}), 404, "run_id")
        # bob may use only programmer-helper (keys file), and sees only that one
        listing = (await bob.get("/api/agents")).json()
        assert listing["agents"] == ["programmer-helper"]
        _error(await bob.post("/api/agents/slow-talker/chat", json={"message": "hi"}), 404, "name")


async def test_the_same_message_id_in_two_tenants_is_two_runs(api, system):
    mine = await submit(api, "programmer-helper", "hi", message_id="shared-id")
    async with httpx.AsyncClient(base_url=system.edge_url, headers={"Authorization": f"Bearer {BOB_KEY}"}) as bob:
        theirs = await submit(bob, "programmer-helper", "hi", message_id="shared-id")
    assert mine["run_id"] != theirs["run_id"]


async def test_api_key_query_parameter_works_for_eventsource(system):
    async with httpx.AsyncClient(base_url=system.edge_url, headers={"Authorization": f"Bearer {ALICE_KEY}"}) as api:
        accepted = await submit(api, "programmer-helper", "hello")
    async with httpx.AsyncClient(base_url=system.edge_url) as browserlike:
        async with aconnect_sse(
            browserlike, "GET", f"/api/runs/{accepted['run_id']}/events?api_key={ALICE_KEY}"
        ) as src:
            assert src.response.status_code == 200
            first = await anext(src.aiter_sse())
            assert first.event == "run.queued"


async def test_agents_listing_and_detail(api):
    listing = (await api.get("/api/agents")).json()
    assert "programmer-helper" in listing["agents"]
    assert listing["agentCount"] == len(listing["agents"])
    assert listing["statuses"]["programmer-helper"] is True
    detail = (await api.get("/api/agents/programmer-helper")).json()
    assert detail["active"] is True
    assert detail["actions"] == ["read_file", "list_dir", "http_request"]
    assert detail["skills"] == ["go-analyzer", "code-review"]


async def test_status_history_is_built_from_stored_events(api):
    accepted = await submit(api, "programmer-helper", "What is in agents/web-reader.yaml?")
    await asyncio.wait_for(read_events(api, accepted["run_id"]), 30)
    status = (await api.get("/api/agents/programmer-helper/status")).json()
    assert status["Name"] == "programmer-helper"
    newest = status["runs"][0]
    assert newest["run_id"] == accepted["run_id"]
    assert newest["status"] == "completed"
    assert newest["tool_calls"][0]["name"] == "read_file"
    assert any("Action taken: read_file" in h and "web-reader.yaml" in h for h in status["History"])


async def test_localai_agent_stream_shows_a_run_in_localai_terms(api, system):
    received: list[tuple[str, dict | str]] = []

    async def watch():
        async with aconnect_sse(api, "GET", "/api/agents/programmer-helper/sse") as src:
            assert src.response.status_code == 200
            async for sse in src.aiter_sse():
                if not sse.data:
                    continue
                try:
                    payload = json.loads(sse.data)
                except json.JSONDecodeError:
                    payload = sse.data
                received.append((sse.event, payload))
                if sse.event == "json_message_status" and payload.get("status") == "completed" \
                        and payload.get("run_id") == run["run_id"]:
                    return

    run = {}
    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)  # the stream starts "now": connect before submitting
    run.update(await submit(api, "programmer-helper", "How many lines does pyproject.toml have?"))
    await asyncio.wait_for(watcher, 30)
    mine = [(e, p) for e, p in received if not isinstance(p, dict) or p.get("run_id") in (None, run["run_id"])]
    names = [e for e, _ in mine]
    assert names[0] == "json_message"
    assert mine[0][1]["sender"] == "user" and mine[0][1]["id"] == f"{run['message_id']}-user"
    assert "stream_event" in names and "status" in names
    tool_calls = [p for e, p in mine if e == "stream_event" and p["type"] == "tool_call"]
    assert tool_calls and tool_calls[0]["tool_name"] == "read_file"
    agent_msg = [p for e, p in mine if e == "json_message" and p["sender"] == "agent"]
    assert agent_msg and agent_msg[0]["id"] == f"{run['message_id']}-agent"
    assert names[-1] == "json_message_status"


async def test_healthz_is_200_when_connected(api):
    resp = await api.get("/healthz")
    assert resp.status_code == 200
    assert resp.json()["nats"] == "connected"


async def test_unknown_route_and_method_are_json(api):
    _error(await api.get("/api/nope"), 404, None)
    _error(await api.delete("/api/agents"), 405, None)


async def test_form_and_text_bodies_are_refused_415(api):
    for ctype in ("text/plain", "application/x-www-form-urlencoded"):
        resp = await api.post(
            "/api/agents/programmer-helper/chat", content=b'{"message": "hi"}', headers={"Content-Type": ctype}
        )
        _error(resp, 415, "Content-Type")


async def test_no_cors_headers_by_default(api):
    resp = await api.get("/api/agents", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in resp.headers


async def test_cors_for_configured_origins(system):
    edge = system.start_edge(EDGE_CORS_ORIGINS="https://app.example")
    url = edge.ready_value
    async with httpx.AsyncClient(base_url=url) as browser:
        pre = await browser.options("/api/agents/programmer-helper/chat", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        other = await browser.get("/api/agents", headers={"Origin": "https://evil.example",
                                                           "Authorization": f"Bearer {ALICE_KEY}"})
        assert "access-control-allow-origin" not in other.headers
    edge.terminate()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return status, await asyncio.wait_for(reader.readexactly(length), 10)


async def test_an_early_error_keeps_the_connection_usable(system):
    # The edge refuses some requests before reading their body (unknown agent, bad key). The body
    # may still be on its way (sent after the headers, as httpx does, or delayed by a busy
    # client); the answer must wait for it, or Hypercorn closes the keep-alive connection without
    # saying so and the client's next request on it fails ("server disconnected").
    host, port = system.edge_url.removeprefix("http://").split(":")
    netloc = f"{host}:{port}"
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        body = b'{"message": "hi"}'
        for path, auth, status in (("/api/agents/no-such-agent/chat", ALICE_KEY, 404),
                                   ("/api/agents/programmer-helper/chat", "not-a-key", 401)):
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nAuthorization: Bearer {auth}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.3)  # the body comes later
            writer.write(body)
            await writer.drain()
            got, _ = await _read_response(reader)
            assert got == status
        writer.write(
            f"GET /api/agents HTTP/1.1\r\nHost: {netloc}\r\nAuthorization: Bearer {ALICE_KEY}\r\n\r\n".encode())
        await writer.drain()
        got, listing = await _read_response(reader)
        assert got == 200 and "programmer-helper" in json.loads(listing)["agents"]
    finally:
        writer.close()


async def test_the_real_edge_applies_its_request_rules(system):
    # The rules themselves are tested in test_edge_guard.py through the app; this checks them
    # on the running edge, behind Hypercorn, as a browser or a rebinding page would meet them.
    async with httpx.AsyncClient(base_url=system.edge_url, headers={"Authorization": f"Bearer {ALICE_KEY}"}) as client:
        _error(await client.get("/api/agents", headers={"Host": "evil.example"}), 421, "Host")
        _error(await client.post("/api/agents/programmer-helper/chat", content=b'{"message": "hi"}',
                                 headers={"Origin": "https://evil.example"}), 403, "Origin")
        _error(await client.post("/api/agents/programmer-helper/chat", content=b'{"message": "hi"}'), 415,
               "Content-Type")
        _error(await client.post(f"/api/agents/programmer-helper/chat?api_key={ALICE_KEY}", json={"message": "hi"},
                                 headers={"Authorization": ""}), 401, "api_key")
    host, port = system.edge_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /api/agents HTTP/1.1\r\nHost: [::1\r\n\r\n")
        await writer.drain()
        status, _ = await _read_response(reader)
        assert status == 421  # a malformed Host is not served either
    finally:
        writer.close()


# -- idempotency: the same key names the same run, never the answer to another question

async def test_a_used_message_id_with_a_different_message_is_409(api):
    key = f"m-{uuid.uuid4().hex}"
    first = await submit(api, "echo", "Explain gravity", message_id=key)
    again = await submit(api, "echo", "Explain gravity", message_id=key)
    assert again["run_id"] == first["run_id"] and again["duplicate"] is True
    other = await api.post("/api/agents/echo/chat",
                           json={"message": "What is the capital of France?", "message_id": key})
    assert other.status_code == 409
    assert other.json()["error"]["type"] == "idempotency_key_reused" and other.json()["error"]["field"] == "message_id"


async def test_the_idempotency_key_header_works_like_message_id(api):
    key = f"k-{uuid.uuid4().hex}"
    headers = {"Idempotency-Key": key}
    first = (await api.post("/api/agents/echo/chat", json={"message": "hi"}, headers=headers)).json()
    again = (await api.post("/api/agents/echo/chat", json={"message": "hi"}, headers=headers)).json()
    assert first["run_id"] == again["run_id"] and again["duplicate"] is True and first["message_id"] == key
    other = await api.post("/api/agents/echo/chat", json={"message": "hello"}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["field"] == "Idempotency-Key"


async def test_openai_idempotency_key_names_one_run_and_refuses_another_question(api):
    key = f"oai-{uuid.uuid4().hex}"
    body = {"model": "echo", "messages": [{"role": "user", "content": "ping"}]}
    first = await api.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": key})
    again = await api.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200
    assert first.headers["X-Run-Id"] == again.headers["X-Run-Id"]
    assert again.json()["choices"][0]["message"]["content"] == "ping"
    other = await api.post("/v1/chat/completions", headers={"Idempotency-Key": key},
                           json={**body, "messages": [{"role": "user", "content": "pong"}]})
    assert other.status_code == 409
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"


async def test_llm_sse_clients_reusing_a_message_id_get_each_question_answered(api):
    # llm-sse's clients send message_id as a label: two different questions under "message_123".
    label = f"message_123-{uuid.uuid4().hex[:6]}"
    answers = {}
    for question in ("Explain <gravity> & stuff", "What is the capital of France?"):
        body = {"message": question, "message_id": label, "conversation_id": "conv-1", "agent": "echo"}
        resp = await api.post("/api/process", json=body)
        frames = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]
        assert frames[-1]["status"] == "Completed" and all(f["message_id"] == label for f in frames)
        answers[question] = "".join(f.get("message", "") for f in frames if f["status"] == "Streaming")
    assert answers == {q: q for q in answers}  # each answered from its own question
    # and the same question again is the same run
    body = {"message": "What is the capital of France?", "message_id": label, "agent": "echo",
            "conversation_id": "conv-1"}
    first = await api.post("/api/process", json=body)
    second = await api.post("/api/process", json=body)
    assert first.headers["X-Run-Id"] == second.headers["X-Run-Id"]


async def test_a_run_cancelled_by_its_departed_client_does_not_hold_its_message_id(api):
    key = f"gone-{uuid.uuid4().hex}"
    body = {"message": "tell me", "message_id": key, "agent": "long-story"}
    async with api.stream("POST", "/api/process", json=body) as resp:
        gone_run = resp.headers["X-Run-Id"]
        async for line in resp.aiter_lines():
            if '"Streaming"' in line:
                break  # the client leaves mid-answer: the edge cancels the run
    events = await asyncio.wait_for(read_events(api, gone_run), 30)
    assert events[-1]["event"] == "run.cancelled" and events[-1]["data"]["data"]["reason"] == "client disconnected"
    again = await api.post("/api/process", json=body)
    assert again.status_code == 200 and again.headers["X-Run-Id"] != gone_run
    frames = [json.loads(line[6:]) for line in again.text.splitlines() if line.startswith("data: ")]
    assert frames[-1]["status"] == "Completed"

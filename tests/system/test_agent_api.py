"""Agents as managed resources (``/api/agents``), against real processes: a nats-server with
authentication, two edges, an agent runner and a tool runner started before any agent is created,
the built-in model. Every route, every bad input, tenants that see nothing of each other, pause
and resume across the whole pipeline, rollback, export and import, LocalAI's body, the CLI push,
and the bus permissions of the two buckets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import uuid
from typing import Any

import httpx
import nats
import pytest
import yaml
from nats.js.api import AckPolicy, ConsumerConfig

from agentstream.runs import submit as bus_submit
from schemas import subjects
from schemas.permissions import Role, tenant_inbox_prefix
from schemas.runs import RunRequest, new_run_id
from tests.conftest import ALICE_KEY, BOB_KEY, edge_client, eventually, read_events
from tests.harness import REPO, System, new_system
from tests.system.test_isolation import Probe, creds, seed_of
from tests.system.test_mcp_edge import mcp_session

pytestmark = pytest.mark.timeout(180)

CAROL_KEY = "carol-secret-key"


def _keys(path) -> None:
    bob_digest = hashlib.sha256(BOB_KEY.encode()).hexdigest()
    path.write_text(
        "tenants:\n"
        f"  alice:\n    keys: [{ALICE_KEY}]\n"
        f"  carol:\n    keys: [{CAROL_KEY}]\n"
        f"  bob:\n    keys: ['sha256:{bob_digest}']\n    agents: [programmer-helper, bobs-own]\n"
    )


@pytest.fixture(scope="module")
def agents_system(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("agent-api")
    # 127.0.0.1:9 (discard: nothing answers) is the one model server besides LLM_BASE_URL's that agents
    # created over the API may name.
    sysm = new_system(base, LLM_MAX_ATTEMPTS="2", AGENTS_LLM_ORIGINS="http://127.0.0.1:9")
    with sysm:
        _keys(base / "keys.yaml")
        sysm.start_model()
        sysm.start_tool_runner("tools-agents")
        sysm.start_agent_runner("runner-before")  # started before any agent of this module exists
        sysm.start_edge(KEYS_FILE=str(base / "keys.yaml"))
        second = sysm.start_edge(KEYS_FILE=str(base / "keys.yaml"))
        sysm.second_edge_url = second.ready_value  # type: ignore[attr-defined]
        yield sysm


@pytest.fixture
async def alice(agents_system: System):
    async with edge_client(agents_system.edge_url, ALICE_KEY) as client:
        yield client


@pytest.fixture
async def alice2(agents_system: System):
    """Alice on the second edge."""
    async with edge_client(agents_system.second_edge_url, ALICE_KEY) as client:  # type: ignore[attr-defined]
        yield client


@pytest.fixture
async def carol(agents_system: System):
    async with edge_client(agents_system.edge_url, CAROL_KEY) as client:
        yield client


@pytest.fixture
async def bob(agents_system: System):
    async with edge_client(agents_system.edge_url, BOB_KEY) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_of(resp: httpx.Response, status: int, field: str | None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["field"] == field, body
    assert body["message"]
    return body


def plain(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "description": "an agent made over the API", "model": "builtin:delay=0.001",
            "max_steps": 2, **fields}


async def create(client: httpx.AsyncClient, doc: dict[str, Any]) -> dict:
    resp = await client.post("/api/agents", json=doc)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def chat(client: httpx.AsyncClient, agent: str, message: str = "Hello there") -> dict:
    resp = await client.post(f"/api/agents/{agent}/chat", json={"message": message})
    assert resp.status_code == 202, resp.text
    return resp.json()


async def finished(client: httpx.AsyncClient, run_id: str) -> list[dict]:
    events = await read_events(client, run_id)
    assert events[-1]["event"] == "run.completed", events[-1]
    return events


# -- routes


async def test_create_read_list_replace_delete(alice):
    name = unique("crud")
    made = await create(alice, plain(name, system_prompt="Be brief.", actions=["read_file"]))
    assert made["source"] == "api" and made["paused"] is False and made["valid"] is True
    assert made["revision"] > 0 and made["system_prompt"] == "Be brief." and made["actions"] == ["read_file"]

    got = (await alice.get(f"/api/agents/{name}")).json()
    assert got["name"] == name and got["active"] is True and got["revision"] == made["revision"]
    assert got["definition"] == plain(name, system_prompt="Be brief.", actions=["read_file"])  # as stored
    listing = (await alice.get("/api/agents")).json()
    assert listing["tenant"] == "alice" and name in listing["agents"] and listing["statuses"][name] is True
    item = next(i for i in listing["items"] if i["name"] == name)
    assert item["source"] == "api" and item["paused"] is False and item["revision"] == made["revision"]
    shipped = next(i for i in listing["items"] if i["name"] == "programmer-helper")
    assert shipped["source"] == "file" and shipped["revision"] is None

    error_of(await alice.post("/api/agents", json=plain(name)), 409, "name")  # it exists: PUT replaces
    replaced = await alice.put(f"/api/agents/{name}", json={"description": "second", "model": "builtin"})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["description"] == "second" and replaced.json()["revision"] > made["revision"]
    assert replaced.json()["system_prompt"] == ""  # a PUT replaces the whole definition

    deleted = await alice.delete(f"/api/agents/{name}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True and deleted.json()["source"] is None
    error_of(await alice.get(f"/api/agents/{name}"), 404, "name")
    assert name not in (await alice.get("/api/agents")).json()["agents"]
    error_of(await alice.post(f"/api/agents/{name}/chat", json={"message": "hi"}), 404, "name")


async def test_yaml_bodies(alice):
    name = unique("yaml")
    text = f"name: {name}\ndescription: from YAML\nmodel: builtin\nparameters: {{temperature: 0.2}}\n"
    resp = await alice.post("/api/agents", content=text, headers={"Content-Type": "application/yaml"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["parameters"] == {"temperature": 0.2}
    resp = await alice.put(f"/api/agents/{name}", content="description: replaced\n",
                           headers={"Content-Type": "application/yaml"})
    assert resp.status_code == 200 and resp.json()["description"] == "replaced"


async def test_bad_inputs_name_their_field(alice):
    name = unique("bad")
    body = error_of(await alice.post("/api/agents", json=plain(name, modle="x")), 422, "modle")
    assert body["message"] == "modle: unknown field" and body["type"] == "invalid_agent"  # as `agents check` says
    body = error_of(await alice.post("/api/agents", json=plain(name, actions=["rm_rf"])), 422, "actions")
    assert "unknown tool" in body["message"]
    body = error_of(await alice.post("/api/agents", json=plain(name, skills=["no-such-skill"])), 422, "skills")
    assert "skills/no-such-skill.md" in body["message"]
    body = error_of(await alice.post("/api/agents", json=plain(name, llm={"api_key_env": "HOME"})), 422,
                    "llm.api_key_env")
    assert "LLM_KEY_ENV_PATTERN" in body["message"]
    # A tenant's agent cannot send the runners' requests (and keys) to a server the operator did not list.
    for url in ("http://169.254.169.254/v1", "https://attacker.example/v1", "http://127.0.0.1:10/v1"):
        body = error_of(await alice.post("/api/agents", json=plain(name, llm={
            "base_url": url, "api_key_env": "AGENTSTREAM_KEY_OPENAI"})), 422, "llm.base_url")
        assert "AGENTS_LLM_ORIGINS" in body["message"]
    error_of(await alice.post("/api/agents", json={"name": name, "api_url": "https://attacker.example/v1"}), 422,
             "llm.base_url")
    error_of(await alice.post("/api/agents", json=plain("no.dots")), 422, "name")
    error_of(await alice.post("/api/agents", json=plain(name, max_steps=0)), 422, "max_steps")
    error_of(await alice.post("/api/agents", json=[plain(name)]), 422, "body")
    error_of(await alice.post("/api/agents", json={"name": name, "members": ["no-such"], "combiner": "combiner"}),
             422, "members")
    error_of(await alice.post("/api/agents", json={"name": name, "members": ["trio"], "combiner": "combiner"}),
             422, "members")  # an ensemble cannot be a member
    error_of(await alice.put(f"/api/agents/{name}", json=plain("another-name")), 422, "name")  # not the URL's

    yaml_headers = {"Content-Type": "application/yaml"}
    body = error_of(await alice.post("/api/agents", content="name: [unclosed\n", headers=yaml_headers), 400, "body")
    assert "line" in body["message"]
    aliased = f"name: {name}\nparameters: &p {{temperature: 1}}\nllm: *p\n"
    body = error_of(await alice.post("/api/agents", content=aliased, headers=yaml_headers), 422, "llm")
    assert "alias" in body["message"]
    error_of(await alice.post("/api/agents", content=b"{not json", headers={"Content-Type": "application/json"}),
             400, "body")
    error_of(await alice.post("/api/agents", content=f"name: {name}", headers={"Content-Type": "text/plain"}),
             415, "Content-Type")
    error_of(await alice.put(f"/api/agents/{name}", content=f"name: {name}", headers={"Content-Type": "text/plain"}),
             415, "Content-Type")
    # YAML only where agents are written: the chat route still takes JSON only.
    error_of(await alice.post("/api/agents/programmer-helper/chat", content="message: hi", headers=yaml_headers),
             415, "Content-Type")

    for method, path in (("GET", "/api/agents/no-such-agent"), ("DELETE", "/api/agents/no-such-agent"),
                         ("POST", "/api/agents/no-such-agent/pause"), ("GET", "/api/agents/no-such-agent/export"),
                         ("GET", "/api/agents/no-such-agent/revisions")):
        error_of(await alice.request(method, path, json={} if method == "POST" else None), 404, "name")
    body = error_of(await alice.post("/api/agents", json=plain(name, system_prompt="x" * 300_000)), 422, "body")
    assert "larger than" in body["message"]  # the parsed document's bound, as for files
    escaped = "\\x01" * 200_000  # 200,000 characters, 1.2 MB once stored as JSON: over the entry's bound
    body = error_of(await alice.post("/api/agents", content=f'name: {name}\nsystem_prompt: "{escaped}"\n',
                                     headers=yaml_headers), 422, "body")
    assert "as stored" in body["message"]
    # YAML integers have no bound; JSON's do (an agent is stored and served as JSON): refused, not a 500.
    huge = f"name: {name}\nmin_success: 226199503790493990912\nparameters: {{seed: {2**64}}}\n"
    error_of(await alice.post("/api/agents", content=huge, headers=yaml_headers), 422, "min_success")
    error_of(await alice.post("/api/agents/import", content=f"- {huge.replace(chr(10), chr(10) + '  ')}",
                              headers=yaml_headers), 422, "0.min_success")
    error_of(await alice.get("/api/agents/not%20a%20name"), 400, "name")
    assert (await alice.get(f"/api/agents/{name}")).status_code == 404  # nothing was stored by any of these


async def test_file_agents_are_read_only_until_copied(alice, carol):
    error_of(await alice.delete("/api/agents/web-reader"), 409, "name")
    copy = await alice.put("/api/agents/web-reader", json={"description": "alice's own web reader",
                                                           "actions": ["http_request"]})
    assert copy.status_code == 201, copy.text
    assert copy.json()["source"] == "api"
    mine = (await alice.get("/api/agents/web-reader")).json()
    assert mine["description"] == "alice's own web reader" and mine["source"] == "api"
    theirs = (await carol.get("/api/agents/web-reader")).json()
    assert theirs["source"] == "file" and theirs["description"] != "alice's own web reader"
    gone = await alice.delete("/api/agents/web-reader")
    assert gone.status_code == 200 and gone.json()["source"] == "file"  # the file agent is alice's again
    assert (await alice.get("/api/agents/web-reader")).json()["source"] == "file"


async def test_an_agent_an_ensemble_uses_cannot_be_deleted_or_broken(alice):
    member, ensemble = unique("member"), unique("panel")
    await create(alice, plain(member))
    await create(alice, {"name": ensemble, "members": [member], "combiner": "combiner"})
    body = error_of(await alice.delete(f"/api/agents/{member}"), 409, "name")
    assert body["type"] == "agent_in_use" and ensemble in body["message"]
    body = error_of(await alice.put(f"/api/agents/{member}", json={"members": ["creative"],
                                                                   "combiner": "combiner"}), 409, "name")
    assert ensemble in body["message"]
    assert (await alice.get(f"/api/agents/{member}")).json()["members"] == []  # unchanged
    run = await chat(alice, ensemble, "Why is the sky blue?")
    events = await finished(alice, run["run_id"])
    assert any(e["event"] == "member.finished" and e["data"]["data"]["member"] == member
               and e["data"]["data"]["status"] == "completed" for e in events)
    assert (await alice.delete(f"/api/agents/{ensemble}")).status_code == 200
    assert (await alice.delete(f"/api/agents/{member}")).status_code == 200


# -- live on every edge and runner


async def test_created_on_one_edge_runs_on_a_runner_started_before_and_shows_on_the_other_edge(
        alice, alice2, agents_system):
    name = unique("live")
    await create(alice, plain(name, description="made after the runner started"))

    async def on_second_edge() -> bool:
        """the second edge shows the new agent"""
        return (await alice2.get(f"/api/agents/{name}")).status_code == 200

    await eventually(on_second_edge, within=2.0, every=0.05)
    run = await chat(alice2, name, "Say hello")  # submitted on the other edge
    events = await finished(alice, run["run_id"])
    started = next(e for e in events if e["event"] == "run.started")
    assert started["data"]["data"]["runner"] == "runner-before"
    assert any(e["event"] == "message.completed" and e["data"]["data"]["text"] for e in events)

    # A change is applied live too: the second edge sees the new revision, the runner runs it.
    await alice.put(f"/api/agents/{name}", json={"model": "builtin:echo=1,delay=0.001", "max_steps": 1})

    async def changed() -> bool:
        """the second edge shows the replaced definition"""
        return (await alice2.get(f"/api/agents/{name}")).json().get("model") == "builtin:echo=1,delay=0.001"

    await eventually(changed, within=2.0, every=0.05)
    run = await chat(alice2, name, "parrot this")
    events = await finished(alice, run["run_id"])
    assert next(e for e in events if e["event"] == "message.completed")["data"]["data"]["text"] == "parrot this"

    # A deletion too: the other edge stops serving it, and the runner refuses a run that still reaches it.
    assert (await alice.delete(f"/api/agents/{name}")).status_code == 200

    async def gone() -> bool:
        """the second edge no longer has the deleted agent"""
        return (await alice2.get(f"/api/agents/{name}")).status_code == 404

    await eventually(gone, within=2.0, every=0.05)
    error_of(await alice2.post(f"/api/agents/{name}/chat", json={"message": "hi"}), 404, "name")
    run_id = await _bus_submit(agents_system, "alice", name)
    events = await read_events(alice, run_id)
    assert events[-1]["event"] == "run.failed" and events[-1]["data"]["data"]["error"]["type"] == "unknown_agent"


async def _bus_submit(system: System, tenant: str, agent: str, *run_ids: str) -> str:
    """Submit runs of ``agent`` on the bus, past the edges (as a tenant's own service may, or as a run
    submitted just before a change would reach the runner); returns the first run id."""
    ids = list(run_ids) or [new_run_id()]
    nc = await nats.connect(**system.connect_options(Role.EDGE))
    try:
        index = await nc.jetstream().key_value(subjects.RUN_INDEX_BUCKET)
        for rid in ids:
            await bus_submit(nc, tenant, agent, RunRequest(run_id=rid, message_id=rid, message="Hello"), index=index)
    finally:
        await nc.close()
    return ids[0]


# -- tenants


async def test_another_tenant_sees_nothing_and_cannot_edit(alice, carol, agents_system):
    name = unique("private")
    made = await create(alice, plain(name, description="alice's secret"))
    assert name not in (await carol.get("/api/agents")).json()["agents"]
    error_of(await carol.get(f"/api/agents/{name}"), 404, "name")
    error_of(await carol.get(f"/api/agents/{name}/export"), 404, "name")
    error_of(await carol.get(f"/api/agents/{name}/revisions"), 404, "name")
    error_of(await carol.delete(f"/api/agents/{name}"), 404, "name")
    error_of(await carol.post(f"/api/agents/{name}/pause", json={}), 404, "name")
    error_of(await carol.post(f"/api/agents/{name}/chat", json={"message": "hi"}), 404, "name")
    # Alice's revision number names nothing of carol's.
    error_of(await carol.put(f"/api/agents/{name}?revision={made['revision']}"), 404, "revision")
    async with edge_client(agents_system.edge_url, CAROL_KEY) as c:
        resp = await c.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user",
                                                                                           "content": "hi"}]})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    # Carol may have an agent of the same name: her own, which changes nothing of alice's.
    assert (await carol.put(f"/api/agents/{name}", json={"description": "carol's"})).status_code == 201
    assert (await alice.get(f"/api/agents/{name}")).json()["description"] == "alice's secret"
    assert (await carol.delete(f"/api/agents/{name}")).status_code == 200
    assert (await alice.get(f"/api/agents/{name}")).json()["revision"] == made["revision"]


async def test_the_allow_list_still_applies(bob):
    error_of(await bob.post("/api/agents", json=plain("not-listed")), 403, "name")
    made = await bob.post("/api/agents", json=plain("bobs-own"))
    assert made.status_code == 201, made.text
    assert sorted((await bob.get("/api/agents")).json()["agents"]) == ["bobs-own", "programmer-helper"]
    error_of(await bob.post("/api/agents", json={"name": "bobs-own", "members": ["creative"], "combiner": "combiner"}),
             409, "name")  # exists
    error_of(await bob.put("/api/agents/bobs-own", json={"members": ["creative"], "combiner": "combiner"}),
             422, "members")  # creative is not bob's to use
    assert (await bob.delete("/api/agents/bobs-own")).status_code == 200


# -- pause and resume


async def test_a_paused_agent_refuses_submits_on_every_api(alice, alice2, agents_system):
    name = unique("paused")
    await create(alice, plain(name))
    resp = await alice.post(f"/api/agents/{name}/pause", json={})
    assert resp.status_code == 200 and resp.json()["paused"] is True
    shown = (await alice.get(f"/api/agents/{name}")).json()
    assert shown["paused"] is True and shown["active"] is False and shown["paused_at"]
    assert (await alice.get("/api/agents")).json()["statuses"][name] is False

    for client in (alice, alice2):  # the pause holds on every edge (the other within 2 s)
        async def refused(client: httpx.AsyncClient = client) -> bool:
            """the edge refuses a submit of the paused agent"""
            return (await client.post(f"/api/agents/{name}/chat", json={"message": "hi"})).status_code == 409

        await eventually(refused, within=2.0, every=0.05)
    body = error_of(await alice.post(f"/api/agents/{name}/chat", json={"message": "hi", "message_id": "p-1"}),
                    409, "name")
    assert body["type"] == "agent_paused"
    body = error_of(await alice.post("/api/process", json={"message": "hi", "message_id": "p-2", "agent": name}),
                    409, "agent")
    assert body["type"] == "agent_paused"
    messages = [{"role": "user", "content": "hi"}]
    for path, doc in (("/v1/chat/completions", {"model": name, "messages": messages}),
                      ("/v1/chat/completions", {"model": name, "messages": messages, "stream": True}),
                      ("/v1/completions", {"model": name, "prompt": "hi"}),
                      ("/v1/responses", {"model": name, "input": "hi"})):
        resp = await alice.post(path, json=doc)
        assert resp.status_code == 409, (path, resp.text)
        assert resp.json()["error"]["code"] == "agent_paused" and resp.json()["error"]["param"] == "model"
    agui = {"threadId": "t", "runId": "r-paused", "state": {}, "context": [], "forwardedProps": {}, "tools": [],
            "messages": [{"id": "m1", "role": "user", "content": "hi"}]}
    error_of(await alice.post(f"/ag-ui/{name}", json=agui), 409, "name")

    # The pause is stored: an edge started after it refuses from its first request.
    late = agents_system.start_edge(KEYS_FILE=str(agents_system.base / "keys.yaml"))
    try:
        async with edge_client(late.ready_value, ALICE_KEY) as fresh:
            body = error_of(await fresh.post(f"/api/agents/{name}/chat", json={"message": "hi"}), 409, "name")
            assert body["type"] == "agent_paused"
            assert (await fresh.get(f"/api/agents/{name}")).json()["paused"] is True
    finally:
        late.terminate()

    assert (await alice.post(f"/api/agents/{name}/resume", json={})).json()["paused"] is False
    run = await chat(alice, name)
    await finished(alice, run["run_id"])
    # the same message_id refused while paused is a new run now, not a "duplicate"
    again = await alice.post(f"/api/agents/{name}/chat", json={"message": "hi", "message_id": "p-1"})
    assert again.status_code == 202 and again.json()["duplicate"] is False


async def test_a_queued_run_of_a_paused_agent_waits_and_starts_after_resume(alice, agents_system):
    name = unique("held")
    await create(alice, plain(name))
    assert (await alice.post(f"/api/agents/{name}/pause", json={})).status_code == 200
    # A run that reaches the queue while the agent is paused (submitted on the bus, as a tenant's own
    # service may, or just before the pause): the runner must hold it, not run it, not fail it.
    run_id, dropped = new_run_id(), new_run_id()
    await _bus_submit(agents_system, "alice", name, run_id, dropped)
    runner_log = next(p for p in agents_system.procs if p.name.startswith("agent-runner")).log_path

    async def held() -> bool:
        """the agent runner took the run and holds it"""
        return f"agents.alice.{name}.run held" in runner_log.read_text()

    await eventually(held, within=10.0)
    state = (await alice.get(f"/api/runs/{run_id}")).json()
    assert state["status"] == "queued", state  # taken, not started, not failed
    # A held run that is cancelled ends now, while the agent stays paused.
    assert (await alice.post(f"/api/runs/{dropped}/cancel", json={})).status_code == 202
    assert (await read_events(alice, dropped))[-1]["event"] == "run.cancelled"
    assert (await alice.get(f"/api/agents/{name}")).json()["paused"] is True
    assert (await alice.get(f"/api/runs/{run_id}")).json()["status"] == "queued"
    assert (await alice.post(f"/api/agents/{name}/resume", json={})).status_code == 200
    events = await finished(alice, run_id)
    # the wait was no attempt
    assert [e["data"]["data"]["attempt"] for e in events if e["event"] == "run.started"] == [1]
    assert not any(e["event"] == "run.retrying" for e in events)


# -- revisions and rollback


async def test_revisions_and_rollback(alice, alice2):
    name = unique("history")
    first = await create(alice, plain(name, description="one"))
    second = (await alice.put(f"/api/agents/{name}", json=plain(name, description="two"))).json()
    listing = (await alice.get(f"/api/agents/{name}/revisions")).json()
    assert [r["revision"] for r in listing["revisions"]] == [second["revision"], first["revision"]]
    assert listing["current"] == second["revision"]
    assert [r["definition"]["description"] for r in listing["revisions"]] == ["two", "one"]
    assert [r["action"] for r in listing["revisions"]] == ["update", "create"]
    assert all(r["time"].endswith("Z") for r in listing["revisions"])

    rolled = await alice.put(f"/api/agents/{name}?revision={first['revision']}")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["description"] == "one" and rolled.json()["revision"] > second["revision"]

    async def rolled_back() -> bool:
        """the second edge shows the rolled-back definition"""
        return (await alice2.get(f"/api/agents/{name}")).json().get("description") == "one"

    await eventually(rolled_back, within=2.0, every=0.05)
    newest = (await alice.get(f"/api/agents/{name}/revisions")).json()["revisions"][0]
    assert newest["action"] == "rollback" and newest["from_revision"] == first["revision"]

    error_of(await alice.put(f"/api/agents/{name}?revision=999999999"), 404, "revision")
    error_of(await alice.put(f"/api/agents/{name}?revision=abc"), 400, "revision")
    # A deleted agent keeps its revisions; rolling back brings it back.
    await alice.delete(f"/api/agents/{name}")
    after = (await alice.get(f"/api/agents/{name}/revisions")).json()
    assert after["revisions"][0]["deleted"] is True and after["current"] is None
    back = await alice.put(f"/api/agents/{name}?revision={second['revision']}")
    assert back.status_code == 201 and back.json()["description"] == "two"


# -- export and import


async def test_export_import_round_trip(alice):
    name = unique("exported")
    made = await create(alice, plain(name, llm={"base_url": "http://127.0.0.1:9/v1",
                                                "api_key_env": "AGENTSTREAM_KEY_EXAMPLE"},
                                     parameters={"temperature": 0.3}, system_prompt="Line one.\nLine two.\n"))
    resp = await alice.get(f"/api/agents/{name}/export")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/yaml")
    text = resp.text
    doc = yaml.safe_load(text)
    assert doc["llm"] == {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "AGENTSTREAM_KEY_EXAMPLE"}
    assert "api_key:" not in text
    assert (await alice.delete(f"/api/agents/{name}")).status_code == 200

    imported = await alice.post("/api/agents/import", content=text, headers={"Content-Type": "application/yaml"})
    assert imported.status_code == 200, imported.text
    assert imported.json()["agents"][0]["name"] == name and imported.json()["agents"][0]["created"] is True
    again = (await alice.get(f"/api/agents/{name}")).json()
    for field in ("llm", "parameters", "system_prompt", "description", "model", "max_steps"):
        assert again[field] == made[field], field
    file_agent = yaml.safe_load((await alice.get("/api/agents/programmer-helper/export")).text)
    assert file_agent["name"] == "programmer-helper" and "read_file" in file_agent["actions"]


async def test_import_is_all_or_nothing(alice):
    good, bad = unique("good"), unique("bad")
    body = error_of(await alice.post("/api/agents/import", json=[plain(good), plain(bad, modle="x")]), 422, "1.modle")
    assert body["errors"][0]["field"] == "1.modle"
    error_of(await alice.get(f"/api/agents/{good}"), 404, "name")  # the valid one was not stored either
    error_of(await alice.post("/api/agents/import", json=[plain(good), plain(good)]), 422, "1.name")
    # an ensemble whose member is made in the same import
    members = [plain(good), {"name": bad, "members": [good], "combiner": "combiner"}]
    resp = await alice.post("/api/agents/import", json=members)
    assert resp.status_code == 200, resp.text
    assert [a["name"] for a in resp.json()["agents"]] == [good, bad]
    error_of(await alice.post("/api/agents/import", content="- name: [x\n", headers={"Content-Type": "text/yaml"}),
             400, "body")


# -- LocalAI's body


async def test_localai_agent_config_is_mapped(alice):
    name = unique("localai")
    body = {  # what LocalAI's agent pool takes on create (LocalAGI's AgentConfig), most fields at rest
        "name": name, "description": "from a LocalAI client", "model": "builtin:delay=0.001",
        "system_prompt": "You are helpful.", "actions": [{"name": "read_file", "config": "{}"}],
        "connectors": [], "dynamic_prompts": [], "mcp_servers": [], "filters": [], "api_url": "", "api_key": "",
        "hud": False, "standalone_job": False, "random_identity": False, "enable_kb": False, "kb_results": 5,
        "kb_auto_search": True, "enable_reasoning": False, "long_term_memory": False, "periodic_runs": "",
        "permanent_goal": "", "identity_guidance": "", "can_stop_itself": False, "parallel_jobs": 0,
    }
    made = await create(alice, body)
    assert made["actions"] == ["read_file"] and made["system_prompt"] == "You are helpful."
    assert made["llm"] is None
    run = await chat(alice, name, "What is the first line of pyproject.toml?")
    events = await finished(alice, run["run_id"])
    assert any(e["event"] == "tool.result" and e["data"]["data"]["ok"] for e in events)

    other = unique("localai")
    with_url = await create(alice, {"name": other, "api_url": "http://127.0.0.1:9/v1", "hud": False})
    assert with_url["llm"]["base_url"] == "http://127.0.0.1:9/v1"
    body = error_of(await alice.post("/api/agents", json={"name": unique("x"), "connectors": [
        {"type": "slack", "config": "{}"}]}), 422, "connectors")
    assert body["message"] == "field 'connectors' is not supported"
    error_of(await alice.post("/api/agents", json={"name": unique("x"), "api_key": "sk-123"}), 422, "api_key")
    error_of(await alice.post("/api/agents", json={"name": unique("x"), "periodic_runs": "10m"}), 422,
             "periodic_runs")
    error_of(await alice.post("/api/agents", json={"name": unique("x"), "actions": [
        {"name": "read_file", "config": '{"root": "/"}'}]}), 422, "actions.0.config")
    error_of(await alice.post("/api/agents", json={"name": unique("x"), "actions": [
        {"name": "search", "config": ""}]}), 422, "actions")


# -- MCP servers: agent files only


async def test_mcp_servers_are_refused_over_the_api(alice, agents_system):
    name = unique("mcp")
    stdio = {"name": "notes", "command": sys.executable, "args": ["tests/mcp_servers/notes_stdio.py"]}
    for servers in ([stdio], [{"name": "web", "url": "https://mcp.example/mcp"}]):
        body = error_of(await alice.post("/api/agents", json=plain(name, mcp_servers=servers)), 422, "mcp_servers")
        assert "AGENTS_DIR" in body["message"] and body["type"] == "invalid_agent"
        error_of(await alice.put(f"/api/agents/{name}", json=plain(name, mcp_servers=servers)), 422, "mcp_servers")
        error_of(await alice.post("/api/agents/import", json=[plain(unique("ok")), plain(name, mcp_servers=servers)]),
                 422, "1.mcp_servers")
        text = yaml.safe_dump(plain(name, mcp_servers=servers))
        error_of(await alice.post("/api/agents", content=text, headers={"Content-Type": "application/yaml"}), 422,
                 "mcp_servers")
    # LocalAI's shape of the field too; at its zero value it is accepted, as LocalAI clients send it.
    error_of(await alice.post("/api/agents", json={"name": name, "mcp_servers": [{"url": "http://x", "token": ""}]}),
             422, "mcp_servers")
    made = await create(alice, plain(name, mcp_servers=[]))
    assert made["mcp_servers"] == []

    # An entry holding MCP servers (written past the checks) is reported, not run.
    sneaked = unique("mcp")
    nc = await nats.connect(**agents_system.connect_options(Role.EDGE))
    try:
        kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
        doc = {"definition": plain(sneaked, mcp_servers=[{"name": "web", "url": "https://mcp.example/mcp"}]),
               "action": "create"}
        await kv.create(subjects.agent_key("alice", sneaked), json.dumps(doc).encode())
    finally:
        await nc.close()

    async def reported() -> bool:
        """the edge reports the entry's mcp_servers"""
        shown = await alice.get(f"/api/agents/{sneaked}")
        return shown.status_code == 200 and shown.json()["errors"][:1] != [] and \
            shown.json()["errors"][0]["field"] == "mcp_servers"

    await eventually(reported, within=2.0, every=0.05)
    body = error_of(await alice.post(f"/api/agents/{sneaked}/chat", json={"message": "hi"}), 409, "name")
    assert body["type"] == "agent_invalid"
    run_id = await _bus_submit(agents_system, "alice", sneaked)  # and the runner does not run it either
    events = await read_events(alice, run_id)
    assert events[-1]["event"] == "run.failed" and "mcp_servers" in events[-1]["data"]["data"]["error"]["message"]
    assert not any(e["event"] == "tool.call" for e in events)
    await alice.delete(f"/api/agents/{sneaked}")


# -- the tenant's agents as MCP tools on /mcp


async def test_own_agents_are_the_tenants_mcp_tools(alice, carol, agents_system):
    name = unique("mcptool")
    await create(alice, plain(name, description="alice's MCP tool", model="builtin:echo=1,delay=0.001",
                              max_steps=1))
    async with mcp_session(agents_system.second_edge_url, ALICE_KEY) as session:  # type: ignore[attr-defined]
        async def listed() -> bool:
            """the other edge lists the new agent as a tool"""
            return name in {t.name for t in (await session.list_tools()).tools}

        await eventually(listed, within=2.0, every=0.05)
        result = await session.call_tool(name, {"message": "over MCP"})
        assert not result.isError and result.content[0].text == "over MCP"
        await alice.post(f"/api/agents/{name}/pause", json={})

        async def refused() -> bool:
            """the other edge answers a paused agent's call with an error"""
            outcome = await session.call_tool(name, {"message": "again"})
            return outcome.isError and "paused" in outcome.content[0].text

        await eventually(refused, within=2.0, every=0.05)
    async with mcp_session(agents_system.edge_url, CAROL_KEY) as session:
        assert name not in {t.name for t in (await session.list_tools()).tools}
        result = await session.call_tool(name, {"message": "hi"})
        assert result.isError and "no tool" in result.content[0].text


# -- an agent that became invalid is reported, not run


async def test_a_stored_agent_that_is_not_valid_is_reported(alice, agents_system):
    name = unique("broken")
    # Another edge (with a wider LLM_KEY_ENV_PATTERN) could store what this one refuses; write it as it would.
    nc = await nats.connect(**agents_system.connect_options(Role.EDGE))
    try:
        kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
        doc = {"definition": {"name": name, "llm": {"api_key_env": "HOME"}}, "action": "create"}
        await kv.create(subjects.agent_key("alice", name), json.dumps(doc).encode())
    finally:
        await nc.close()

    async def reported() -> bool:
        """the edge reports the stored agent's error"""
        errors = (await alice.get("/api/agents")).json()["errors"]
        return any(e["file"] == f"api:{name}" and e["field"] == "llm.api_key_env" for e in errors)

    await eventually(reported, within=2.0, every=0.05)
    shown = (await alice.get(f"/api/agents/{name}")).json()
    assert shown["valid"] is False and shown["active"] is False and shown["errors"][0]["field"] == "llm.api_key_env"
    assert name not in (await alice.get("/api/agents")).json()["agents"]
    body = error_of(await alice.post(f"/api/agents/{name}/chat", json={"message": "hi"}), 409, "name")
    assert body["type"] == "agent_invalid"
    fixed = await alice.put(f"/api/agents/{name}", json=plain(name))  # a good write repairs it
    assert fixed.status_code == 200, fixed.text
    await finished(alice, (await chat(alice, name))["run_id"])


async def test_an_unreadable_entry_is_reported_and_left_out_of_the_revisions(alice, agents_system):
    name = unique("garbled")
    made = await create(alice, plain(name, description="readable"))
    nc = await nats.connect(**agents_system.connect_options(Role.EDGE))
    try:  # what a bad write of another release, or a damaged store, would leave
        kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
        garbled = await kv.put(subjects.agent_key("alice", name), b"{not json")
    finally:
        await nc.close()

    async def reported() -> bool:
        """the edge reports the unreadable entry"""
        return (await alice.get(f"/api/agents/{name}")).json()["valid"] is False

    await eventually(reported, within=2.0, every=0.05)
    shown = (await alice.get(f"/api/agents/{name}")).json()
    assert "unreadable entry" in shown["errors"][0]["reason"] and shown["revision"] == garbled
    listing = await alice.get(f"/api/agents/{name}/revisions")
    assert listing.status_code == 200, listing.text
    assert [r["revision"] for r in listing.json()["revisions"]] == [made["revision"]]  # the unreadable one left out
    error_of(await alice.put(f"/api/agents/{name}?revision={garbled}"), 404, "revision")
    back = await alice.put(f"/api/agents/{name}?revision={made['revision']}")
    assert back.status_code == 200 and back.json()["valid"] is True and back.json()["description"] == "readable"


# -- the CLI


def _push(system: System, directory, *extra: str, key: str = ALICE_KEY) -> subprocess.CompletedProcess[str]:
    env = {**system.env, "AGENTSTREAM_URL": system.edge_url, "AGENTSTREAM_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "agentstream", "agents", "push", str(directory), *extra],
                          env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


async def test_cli_push_uploads_a_directory(alice, carol, agents_system, tmp_path):
    first, second = unique("pushed"), unique("pushed")
    (tmp_path / "one.yaml").write_text(f"name: {first}\nmodel: builtin\n")
    (tmp_path / "two.yml").write_text(f"name: {second}\ndescription: second\n")
    wrong = await asyncio.to_thread(_push, agents_system, tmp_path, "--tenant", "carol")
    assert wrong.returncode == 2 and "alice" in wrong.stderr
    error_of(await alice.get(f"/api/agents/{first}"), 404, "name")

    done = await asyncio.to_thread(_push, agents_system, tmp_path, "--tenant", "alice")
    assert done.returncode == 0, done.stderr
    assert first in done.stdout and second in done.stdout
    assert (await alice.get(f"/api/agents/{second}")).json()["description"] == "second"
    error_of(await carol.get(f"/api/agents/{first}"), 404, "name")

    (tmp_path / "three.yaml").write_text(f"name: {unique('pushed')}\nmodle: x\n")
    refused = await asyncio.to_thread(_push, agents_system, tmp_path)
    assert refused.returncode == 1 and "three.yaml: modle: unknown field" in refused.stderr


# -- the bus


async def test_bus_permissions_of_the_agent_buckets(agents_system):
    key = subjects.agent_key("alice", "programmer-helper")
    def options(role: Role) -> dict[str, Any]:
        return {k: v for k, v in agents_system.connect_options(role).items() if k != "servers"}

    url = agents_system.env["NATS_URL"]
    runner = await Probe().connect(url, **options(Role.AGENT_RUNNER))
    tools = await Probe().connect(url, **options(Role.TOOL_RUNNER))
    try:
        for bucket in (subjects.AGENTS_BUCKET, subjects.AGENT_PAUSES_BUCKET):
            subject = f"$KV.{bucket}.{key}"
            await runner.refused(subject, lambda s=subject: runner.nc.jetstream().publish(s, b"{}", timeout=2))
            await tools.refused(f"$JS.API.DIRECT.GET.KV_{bucket}", lambda b=bucket: tools.nc.jetstream().get_msg(
                f"KV_{b}", subject=f"$KV.{b}.{key}", direct=True))
        info = await runner.nc.jetstream().stream_info(f"KV_{subjects.AGENTS_BUCKET}")  # and it can read
        assert info.config.max_msgs_per_subject == 16
    finally:
        await runner.close()
        await tools.close()


async def test_a_tenants_own_service_cannot_touch_another_tenants_agents(alice, agents_system):
    name = unique("guarded")
    made = await create(alice, plain(name, description="alice's"))
    await alice.post(f"/api/agents/{name}/pause", json={})
    carol = await Probe().connect(agents_system.env["NATS_URL"], nkeys_seed=str(seed_of(creds(agents_system, "carol"))),
                                  inbox_prefix=tenant_inbox_prefix("carol"))
    try:
        js = carol.nc.jetstream()
        key = subjects.agent_key("alice", name)
        for bucket in (subjects.AGENTS_BUCKET, subjects.AGENT_PAUSES_BUCKET):
            stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{key}"
            await carol.refused(subject, lambda s=subject: js.publish(s, b"{}", timeout=2))  # change or unpause
            await carol.refused(f"$KV.{bucket}.{subjects.agent_key('carol', name)}",  # its own too: HTTP only
                                lambda b=bucket: js.publish(f"$KV.{b}.{subjects.agent_key('carol', name)}", b"{}"))
            await carol.refused(f"$JS.API.DIRECT.GET.{stream}.{subject}",
                                lambda st=stream, s=subject: js.get_msg(st, subject=s, direct=True))
            await carol.refused(f"$JS.API.DIRECT.GET.{stream}", lambda st=stream, b=bucket: js.get_msg(
                st, seq=1, subject=f"$KV.{b}.>", next=True, direct=True))
            await carol.refused(f"$JS.API.CONSUMER.CREATE.{stream}", lambda st=stream, b=bucket: js.add_consumer(
                st, ConsumerConfig(filter_subject=f"$KV.{b}.alice.>", ack_policy=AckPolicy.NONE)))
            await carol.refused(f"$JS.API.STREAM.PURGE.{stream}", lambda st=stream: js.purge_stream(st))
    finally:
        await carol.close()
    shown = (await alice.get(f"/api/agents/{name}")).json()  # unchanged, still paused
    assert shown["revision"] == made["revision"] and shown["description"] == "alice's" and shown["paused"] is True

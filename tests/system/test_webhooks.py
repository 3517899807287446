"""Webhooks against real processes: an edge, an agent runner, a webhook sender and a receiver on
loopback (allowed by WEBHOOK_ALLOW_HOSTS) that verifies every delivery's signature with the
``standardwebhooks`` package and refuses the first two deliveries of each event.

What a user checks: each event is accepted exactly once, signed with the tenant's secret (also
across a rotation), and GET /api/runs/{id} shows every attempt; non-public addresses are refused
at submit (422 naming the field) and at delivery; another tenant sees nothing of it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from schemas import subjects
from tests.conftest import ALICE_KEY, BOB_KEY, edge_client, eventually, read_events, submit, write_keys_file
from tests.harness import System, new_system

pytestmark = pytest.mark.timeout(120)

FAILS_BEFORE_OK = 2


class Receiver:
    """A webhook receiver on 127.0.0.1: answers 500 to the first FAILS_BEFORE_OK deliveries of each
    ``webhook-id`` (``/flaky``), to every delivery until ``up`` is set (``/down``), or to none
    (``/ok``), 204 otherwise; keeps every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.up = threading.Event()
        """``/down`` answers 500 until this is set."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server interface names it so
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                hook_id = headers.get("webhook-id", "")
                with receiver.lock:
                    receiver.seen[hook_id] += 1
                    ok = (self.path != "/flaky" or receiver.seen[hook_id] > FAILS_BEFORE_OK) and (
                        self.path != "/down" or receiver.up.is_set())
                    if ok:
                        receiver.accepted[hook_id] += 1
                    receiver.requests.append({"path": self.path, "headers": headers, "body": body, "ok": ok})
                self.send_response(204 if ok else 500)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted_of(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["ok"] and r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Any:
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Any:
    base = tmp_path_factory.mktemp("webhooks")
    sysm = new_system(base, WEBHOOK_ALLOW_HOSTS=f"127.0.0.1:{receiver.port}", WEBHOOK_RETRY_FIRST_DELAY="0.2",
                      WEBHOOK_RETRY_MAX_DELAY="1")
    # An agent whose file sends every run's start and end to the receiver, and its end to an
    # address no webhook may reach (refused at delivery: nothing checks an agent file's URL earlier).
    (base / "agents" / "announcer.yaml").write_text(
        "name: announcer\n"
        'model: "builtin:echo=1,delay=0.001"\n'
        "max_steps: 1\n"
        "webhooks:\n"
        f"  - url: {receiver.url('/agent-file')}\n"
        "    events: [run.started, run.completed]\n"
        "  - url: http://10.11.12.13/hook\n"
    )
    with sysm:
        sysm.start_model()
        sysm.start_agent_runner("runner-hooks")
        sysm.start_webhook_sender("sender-a")
        sysm.start_edge(KEYS_FILE=str(write_keys_file(base / "keys.yaml")))
        yield sysm


@pytest.fixture
async def alice(hooks: System) -> Any:
    async with edge_client(hooks.edge_url, ALICE_KEY) as client:
        yield client


@pytest.fixture
async def bob(hooks: System) -> Any:
    async with edge_client(hooks.edge_url, BOB_KEY) as client:
        yield client


async def secret_of(client: httpx.AsyncClient) -> str:
    resp = await client.get("/api/webhooks/secret")
    assert resp.status_code == 200, resp.text
    secret = resp.json()["secret"]
    assert secret.startswith("whsec_")
    return str(secret)


async def nothing_left_to_deliver(system: System) -> None:
    """Wait until the webhook senders' consumer holds no job (none waiting, none being retried):
    after that no delivery can come."""
    import nats

    nc = await nats.connect(**system.connect_options())
    try:
        js = nc.jetstream()

        async def drained() -> bool:
            info = await js.consumer_info(subjects.WEBHOOK_JOBS_STREAM, subjects.WEBHOOK_SENDERS_CONSUMER)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(drained, within=30)
    finally:
        await nc.close()


async def run_view(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/runs/{run_id}")
    assert resp.status_code == 200, resp.text
    view: dict[str, Any] = resp.json()
    return view


async def test_each_event_is_accepted_once_after_two_failures_and_the_attempts_show(
    hooks: System, receiver: Receiver, alice: httpx.AsyncClient
) -> None:
    secret = await secret_of(alice)
    url = receiver.url("/flaky")
    accepted = await submit(alice, "echo", "ring the bell", webhook={"url": url,
                                                                      "events": ["run.started", "run.completed"]})
    run_id = accepted["run_id"]
    events = await asyncio.wait_for(read_events(alice, run_id), 60)
    assert events[-1]["event"] == "run.completed"

    async def both_delivered() -> bool:
        view = await run_view(alice, run_id)
        return len(view["webhooks"]) == 2 and all(d["state"] == "delivered" for d in view["webhooks"])

    await eventually(both_delivered, within=30)
    await nothing_left_to_deliver(hooks)

    # The receiver accepted each event once, after refusing it twice; every request was signed
    # with alice's secret, and a repeat carries the same webhook-id.
    deliveries = receiver.accepted_of("/flaky")
    by_type = {json.loads(d["body"])["type"]: d for d in deliveries}
    assert sorted(by_type) == ["run.completed", "run.started"]
    assert len(deliveries) == 2
    verifier = Webhook(secret)
    for request in [r for r in receiver.requests if r["path"] == "/flaky"]:
        body = verifier.verify(request["body"], request["headers"])
        assert body["data"]["run_id"] == run_id and body["data"]["tenant"] == "alice"
    for kind, delivery in by_type.items():
        hook_id = delivery["headers"]["webhook-id"]
        assert receiver.seen[hook_id] == FAILS_BEFORE_OK + 1 and receiver.accepted[hook_id] == 1
        stored = next(e for e in events if e["event"] == kind)
        assert json.loads(delivery["body"])["data"] == stored["data"]  # the event as stored
    assert len({d["headers"]["webhook-id"] for d in deliveries}) == 2  # one id per event

    # GET /api/runs/{id}: each delivery's attempts (status, time), its final state.
    view = await run_view(alice, run_id)
    for delivery in view["webhooks"]:
        assert delivery["url"] == url and delivery["state"] == "delivered"
        assert [a["status"] for a in delivery["attempts"]] == [500, 500, 204]
        assert delivery["attempt_count"] == 3 and delivery["next_attempt_at"] is None
        assert all(a["at"] for a in delivery["attempts"]) and delivery["delivered_at"]
        assert delivery["attempts"][0]["error"] == "http_status: 500"
    assert {d["event_type"] for d in view["webhooks"]} == {"run.started", "run.completed"}


async def test_agent_file_webhooks_are_merged_with_the_submit_and_refused_addresses_fail_at_delivery(
    hooks: System, receiver: Receiver, alice: httpx.AsyncClient
) -> None:
    # The submit names the agent file's URL again, for run.completed: one delivery per event and URL.
    accepted = await submit(alice, "announcer", "hello", webhook=receiver.url("/agent-file"))
    run_id = accepted["run_id"]
    await asyncio.wait_for(read_events(alice, run_id), 60)

    async def settled() -> bool:
        view = await run_view(alice, run_id)
        return len(view["webhooks"]) == 3 and all(d["state"] != "pending" for d in view["webhooks"])

    await eventually(settled, within=30)
    await nothing_left_to_deliver(hooks)
    view = await run_view(alice, run_id)
    by_url = defaultdict(list)
    for delivery in view["webhooks"]:
        by_url[delivery["url"]].append(delivery)
    ours = by_url[receiver.url("/agent-file")]
    assert sorted(d["event_type"] for d in ours) == ["run.completed", "run.started"]
    assert all(d["state"] == "delivered" and d["attempt_count"] == 1 for d in ours)
    mine = [r for r in receiver.accepted_of("/agent-file") if json.loads(r["body"])["data"]["run_id"] == run_id]
    assert len(mine) == 2
    # The private address: given up at its first attempt, never reached. The tenant did not give
    # that URL (the agent file did): it sees its origin only, here and in the agent's view.
    [refused] = by_url["http://10.11.12.13/…"]
    assert refused["event_type"] == "run.completed" and refused["state"] == "failed"
    assert refused["attempt_count"] == 1 and refused["attempts"][0]["status"] is None
    assert "address_refused" in refused["gave_up"] and "private" in refused["gave_up"]
    agent = (await alice.get("/api/agents/announcer")).json()
    assert [w["url"] for w in agent["webhooks"]] == [f"http://127.0.0.1:{receiver.port}/…", "http://10.11.12.13/…"]


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/hook",                 # private
    "http://169.254.169.254/latest/meta",   # link-local (cloud metadata)
    "http://[::1]/hook",                    # loopback, IPv6
    "http://127.0.0.1:9/hook",              # loopback, a port WEBHOOK_ALLOW_HOSTS does not list
    "http://[::ffff:192.168.0.1]/hook",     # a private IPv4 address in IPv6 clothing
])
async def test_a_non_public_address_is_refused_at_submit(alice: httpx.AsyncClient, url: str) -> None:
    for path, body in (("/api/agents/echo/chat", {"message": "hi"}),
                       ("/api/process", {"message": "hi", "message_id": "m1", "agent": "echo"}),
                       ("/api/schedules", {"agent": "echo", "message": "hi", "every": 60})):
        resp = await alice.post(path, json={**body, "webhook": url})
        assert resp.status_code == 422, (path, resp.text)
        error = resp.json()["error"]
        assert error["field"] == "webhook" and "WEBHOOK_ALLOW_HOSTS" in error["message"], path
    assert (await alice.get("/api/schedules")).json() == {"schedules": []}


@pytest.mark.parametrize(("webhook", "field"), [
    ({"url": "ftp://example.com/x"}, "webhook.url"),
    ({"url": "https://user:pw@example.com/x"}, "webhook.url"),
    ({"url": "https://example.com/x", "events": ["message.delta"]}, "webhook.events"),
    ({"url": "https://example.com/x", "events": ["no.such"]}, "webhook.events"),
    ({"url": "https://example.com/x", "colour": "red"}, "webhook.colour"),
])
async def test_a_malformed_webhook_is_refused_naming_its_field(alice: httpx.AsyncClient, webhook: Any,
                                                               field: str) -> None:
    resp = await alice.post("/api/agents/echo/chat", json={"message": "hi", "webhook": webhook})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field


async def test_a_rotated_secret_signs_with_both_until_receivers_switch(
    hooks: System, receiver: Receiver, alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    old = await secret_of(alice)
    assert await secret_of(alice) == old  # stable until rotated
    rotated = await alice.post("/api/webhooks/secret/rotate", json={})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and rotated.json()["previous_valid_until"]
    assert await secret_of(alice) == new
    assert await secret_of(bob) not in (old, new)  # each tenant its own

    accepted = await submit(alice, "echo", "after the rotation", webhook=receiver.url("/ok"))

    async def delivered() -> bool:
        return any(json.loads(r["body"])["data"]["run_id"] == accepted["run_id"] for r in receiver.accepted_of("/ok"))

    await eventually(delivered, within=30)
    request = next(r for r in receiver.accepted_of("/ok")
                   if json.loads(r["body"])["data"]["run_id"] == accepted["run_id"])
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(request["body"], request["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook(await secret_of(bob)).verify(request["body"], request["headers"])


async def test_another_tenant_sees_nothing_of_a_runs_webhooks(
    hooks: System, receiver: Receiver, alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    accepted = await submit(alice, "echo", "private", webhook=receiver.url("/ok"))
    await asyncio.wait_for(read_events(alice, accepted["run_id"]), 60)
    assert (await bob.get(f"/api/runs/{accepted['run_id']}")).status_code == 404
    # bob may not use echo (its allow-list): no webhook through it either.
    refused = await bob.post("/api/agents/echo/chat", json={"message": "hi", "webhook": receiver.url("/ok")})
    assert refused.status_code == 404


async def test_a_schedules_runs_post_their_end_to_its_webhook(receiver: Receiver, alice: httpx.AsyncClient) -> None:
    resp = await alice.post("/api/schedules", json={"agent": "echo", "message": "scheduled hello", "every": 1,
                                                    "webhook": receiver.url("/ok")})
    assert resp.status_code == 201, resp.text
    sid = resp.json()["schedule_id"]
    assert resp.json()["webhook"]["url"] == receiver.url("/ok")

    def from_schedule() -> list[dict[str, Any]]:
        return [r for r in receiver.accepted_of("/ok")
                if json.loads(r["body"])["data"]["message_id"].startswith(f"schedule:{sid}:")]

    async def delivered() -> bool:
        return bool(from_schedule())

    await eventually(delivered, within=30)
    assert (await alice.delete(f"/api/schedules/{sid}")).status_code == 204
    body = json.loads(from_schedule()[0]["body"])
    assert body["type"] == "run.completed"
    run_id = body["data"]["run_id"]

    async def recorded() -> bool:
        return bool((await run_view(alice, run_id))["webhooks"][0]["state"] == "delivered")

    await eventually(recorded, within=10)
    assert (await run_view(alice, run_id))["schedule"]["schedule_id"] == sid


async def test_a_delivery_waiting_for_its_retry_survives_its_webhook_sender_being_killed(
    hooks: System, receiver: Receiver, alice: httpx.AsyncClient
) -> None:
    accepted = await submit(alice, "echo", "outlive the sender", webhook=receiver.url("/down"))
    run_id = accepted["run_id"]

    async def failed_once() -> bool:
        view = await run_view(alice, run_id)
        return bool(view["webhooks"]) and view["webhooks"][0]["attempt_count"] >= 1

    await eventually(failed_once, within=30)
    sender = next(p for p in hooks.procs if p.name.startswith("webhook-sender") and p.alive())
    sender.kill()  # SIGKILL: the job waits in the stream for its retry, with nobody to deliver it
    receiver.up.set()
    hooks.start_webhook_sender("sender-b")

    async def delivered() -> bool:
        return bool((await run_view(alice, run_id))["webhooks"][0]["state"] == "delivered")

    # Killed between attempts, the job's retry goes to the new sender; killed in the middle of a
    # POST (rarely), the job comes back after its ack wait (30 s).
    await eventually(delivered, within=45)
    await nothing_left_to_deliver(hooks)
    ours = [r for r in receiver.accepted_of("/down") if json.loads(r["body"])["data"]["run_id"] == run_id]
    assert len(ours) == 1
    attempts = (await run_view(alice, run_id))["webhooks"][0]["attempts"]
    assert [a["status"] for a in attempts][-1] == 204 and set(a["status"] for a in attempts[:-1]) == {500}


async def test_a_run_waiting_for_approval_tells_its_webhook_which_is_decided_from_it(
    hooks: System, receiver: Receiver, alice: httpx.AsyncClient
) -> None:
    url = receiver.url("/ok")
    accepted = await submit(alice, "gatekeeper", 'use the tool read_file with {"path": "pyproject.toml"}',
                            webhook={"url": url, "events": ["tool.approval_requested", "run.completed"]})
    run_id = accepted["run_id"]

    def told() -> dict[str, Any] | None:
        return next((json.loads(r["body"]) for r in receiver.accepted_of("/ok")
                     if json.loads(r["body"])["data"]["run_id"] == run_id
                     and json.loads(r["body"])["type"] == "tool.approval_requested"), None)

    async def was_told() -> bool:
        """the webhook was told the run waits for approval"""
        return told() is not None

    await eventually(was_told, within=30)
    waiting = told()
    assert waiting is not None and waiting["data"]["data"]["name"] == "read_file"
    assert (await run_view(alice, run_id))["status"] == "awaiting_approval"
    decided = await alice.post(f"/api/runs/{run_id}/reject", json={
        "tool_call_id": waiting["data"]["data"]["tool_call_id"], "reason": "told by the webhook"})
    assert decided.status_code == 202, decided.text
    events = await asyncio.wait_for(read_events(alice, run_id), 60)
    assert events[-1]["event"] == "run.completed"

    async def end_delivered() -> bool:
        """the run's end was delivered too"""
        return any(json.loads(r["body"])["data"]["run_id"] == run_id and json.loads(r["body"])["type"] ==
                   "run.completed" for r in receiver.accepted_of("/ok"))

    await eventually(end_delivered, within=30)

"""Tenants that cannot reach each other on the bus: every forbidden operation, tried with tenant
bob's own credentials (and with each component's identity beyond its role) against a real
nats-server with authentication on, is refused by the server, and alice's runs are unchanged;
every identity can still do its job.

The server refuses with a permissions violation, which nats-py reports only to the connection's
error callback (a refused request then times out): :class:`Probe` waits for that report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas import subjects
from schemas.permissions import Role, tenant_inbox_prefix
from tests.conftest import ALICE_KEY, BOB_KEY, edge_client, read_events, submit, write_keys_file
from tests.harness import System, new_system

pytestmark = pytest.mark.timeout(180)


class Probe:
    """A bare nats-py connection with one identity, recording what the server refused."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self.nc: Any = None

    async def connect(self, url: str, **options: Any) -> Probe:
        async def on_error(err: Exception) -> None:
            self.errors.append(str(err))
            self._changed.set()

        async def on_closed() -> None:
            self.closed.set()

        self.nc = await nats.connect(url, error_cb=on_error, closed_cb=on_closed, allow_reconnect=False, **options)
        return self

    async def refused(self, subject: str, action: Callable[[], Awaitable[Any]]) -> None:
        """Start ``action``; assert the server reports a permissions violation naming ``subject``
        (a refused request would only time out: it is abandoned once the report is in)."""
        seen = len(self.errors)
        want = subject.lower()

        def found() -> bool:
            return any("permissions violation" in e and want in e.lower() for e in self.errors[seen:])

        async def wait() -> None:
            while not found():
                self._changed.clear()
                await self._changed.wait()

        task = asyncio.ensure_future(action())
        try:
            await asyncio.wait_for(wait(), 5.0)
        except TimeoutError:
            raise AssertionError(f"no permissions violation for {subject}; errors: {self.errors[seen:]}") from None
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


def creds(system: System, tenant: str, *, revoke: bool = False) -> subprocess.CompletedProcess[str]:
    """``agentstream creds TENANT`` as an operator runs it."""
    env = {**system.env, "KEYS_FILE": str(system.base / "keys.yaml")}
    args = [sys.executable, "-m", "agentstream", "creds", tenant, *(["--revoke"] if revoke else [])]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


def seed_of(done: subprocess.CompletedProcess[str]) -> Path:
    assert done.returncode == 0, done.stderr
    found = re.search(r"wrote (\S+)", done.stdout)
    assert found is not None, done.stdout
    return Path(found.group(1))


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("isolation")
    sysm = new_system(base, TOOL_HTTP_ALLOW_PRIVATE="true")
    with sysm:
        keys = write_keys_file(base / "keys.yaml")
        bob_root = base / "bob-files"  # bob's own tool root; alice's is the shared TOOL_ROOT
        bob_root.mkdir()
        (bob_root / "notes.txt").write_text("bob's private notes\nline two\n")
        keys.write_text(keys.read_text() + f"    tool_root: {bob_root}\n")
        sysm.start_model()
        sysm.start_tool_runner("tools-iso")
        sysm.start_agent_runner("runner-iso")
        sysm.start_edge(KEYS_FILE=str(base / "keys.yaml"))
        yield sysm


@pytest.fixture
async def alice(bus: System) -> Any:
    async with edge_client(bus.edge_url, ALICE_KEY) as client:
        yield client


@pytest.fixture
async def bob_bus(bus: System) -> Any:
    probe = await Probe().connect(bus.env["NATS_URL"], nkeys_seed=str(seed_of(creds(bus, "bob"))),
                                  inbox_prefix=tenant_inbox_prefix("bob"))
    yield probe
    await probe.close()


async def alice_run(client: httpx.AsyncClient) -> tuple[str, list[dict[str, Any]]]:
    """A finished run of alice's, and its events."""
    accepted = await submit(client, "programmer-helper", "What is the first line of pyproject.toml?")
    events = await asyncio.wait_for(read_events(client, accepted["run_id"]), 60)
    assert events[-1]["event"] == "run.completed"
    return accepted["run_id"], events


async def test_anonymous_clients_are_refused(bus: System) -> None:
    with pytest.raises(Exception, match="Authorization Violation"):
        await nats.connect(bus.env["NATS_URL"], allow_reconnect=False, max_reconnect_attempts=0)


async def test_another_tenants_credentials_reach_nothing_of_alice(bus: System, alice: httpx.AsyncClient,
                                                                  bob_bus: Probe) -> None:
    run_id, before = await alice_run(alice)
    subject = subjects.run_events("alice", "programmer-helper", run_id)
    nc = bob_bus.nc
    assert nc is not None
    js = nc.jetstream()

    async def subscribe(subject: str, queue: str = "") -> Any:
        sub = await nc.subscribe(subject, queue=queue)
        await nc.flush()
        return sub

    # Read alice's events: live, from the stream (direct get, consumers), through inboxes.
    await bob_bus.refused("live.runs.>", lambda: subscribe("live.runs.>"))
    await bob_bus.refused("live.runs.alice.>", lambda: subscribe("live.runs.alice.>"))
    await bob_bus.refused("_inbox.>", lambda: subscribe("_INBOX.>"))
    await bob_bus.refused(f"$JS.API.DIRECT.GET.RUN_EVENTS.{subject}",
                          lambda: js.get_msg(subjects.RUN_EVENTS_STREAM, subject=subject, direct=True))
    await bob_bus.refused("$JS.API.DIRECT.GET.RUN_EVENTS", lambda: js.get_msg(
        subjects.RUN_EVENTS_STREAM, seq=1, subject="runs.>", next=True, direct=True))
    await bob_bus.refused("$JS.API.CONSUMER.CREATE.RUN_EVENTS.peek.runs.alice.*.*", lambda: js.add_consumer(
        subjects.RUN_EVENTS_STREAM, ConsumerConfig(name="peek", filter_subject="runs.alice.*.*",
                                                   ack_policy=AckPolicy.NONE)))
    await bob_bus.refused("$JS.API.CONSUMER.CREATE.RUN_EVENTS.all.runs.*.*.*", lambda: js.add_consumer(
        subjects.RUN_EVENTS_STREAM, ConsumerConfig(name="all", filter_subject="runs.*.*.*", ack_policy=AckPolicy.NONE)))
    await bob_bus.refused("$JS.API.CONSUMER.CREATE.RUN_EVENTS", lambda: js.add_consumer(
        subjects.RUN_EVENTS_STREAM, ConsumerConfig(filter_subject="runs.bob.*.*", ack_policy=AckPolicy.NONE)))
    await bob_bus.refused("$JS.API.STREAM.MSG.GET.RUN_EVENTS", lambda: js.get_last_msg(  # the leader's read
        subjects.RUN_EVENTS_STREAM, subject))
    await bob_bus.refused("$JS.API.STREAM.INFO.RUN_EVENTS", lambda: js.stream_info(
        subjects.RUN_EVENTS_STREAM, subjects_filter="runs.alice.>"))
    await bob_bus.refused("$kv.tenants.alice", lambda: js.publish("$KV.TENANTS.alice", b"{}"))
    await bob_bus.refused("$JS.API.DIRECT.GET.KV_RATE_LIMITS", lambda: js.get_msg(
        "KV_RATE_LIMITS", seq=1, subject="$KV.RATE_LIMITS.>", next=True, direct=True))
    # Runs waiting for approvals (their calls, decisions, requests): not even bob's own entries.
    await bob_bus.refused(f"$JS.API.DIRECT.GET.KV_APPROVALS.$KV.APPROVALS.alice.{run_id}", lambda: js.get_msg(
        "KV_APPROVALS", subject=f"$KV.APPROVALS.alice.{run_id}", direct=True))
    await bob_bus.refused("$JS.API.DIRECT.GET.KV_APPROVALS.$KV.APPROVALS.bob.x", lambda: js.get_msg(
        "KV_APPROVALS", subject="$KV.APPROVALS.bob.x", direct=True))
    await bob_bus.refused(f"$kv.approvals.alice.{run_id}", lambda: js.publish(
        f"$KV.APPROVALS.alice.{run_id}", b"{}"))
    await bob_bus.refused("$JS.API.CONSUMER.CREATE.KV_APPROVALS", lambda: js.subscribe(
        "$KV.APPROVALS.>", stream="KV_APPROVALS", ordered_consumer=True))

    # Write as alice: submit her runs (past her allow-list or not), forge events, cancel, purge.
    request = json.dumps({"run_id": uuid.uuid4().hex, "message_id": "forged", "message": "hi"}).encode()
    await bob_bus.refused("agents.alice.programmer-helper.run",
                          lambda: js.publish("agents.alice.programmer-helper.run", request))
    await bob_bus.refused("agents.bob.programmer-helper.member",
                          lambda: js.publish("agents.bob.programmer-helper.member", request))
    forged = json.dumps({"type": "run.completed", "run_id": run_id}).encode()
    await bob_bus.refused(subject, lambda: js.publish(subject, forged))
    await bob_bus.refused(f"control.alice.{run_id}", lambda: js.publish(f"control.alice.{run_id}", b"{}"))
    await bob_bus.refused("$JS.API.STREAM.PURGE.RUN_EVENTS", lambda: js.purge_stream(subjects.RUN_EVENTS_STREAM))
    await bob_bus.refused("$JS.API.STREAM.DELETE.RUN_EVENTS", lambda: js.delete_stream(subjects.RUN_EVENTS_STREAM))
    await bob_bus.refused("$JS.API.CONSUMER.DELETE.AGENT_RUNS.tenant_alice",
                          lambda: js.delete_consumer(subjects.AGENT_RUNS_STREAM, "tenant_alice"))
    await bob_bus.refused("$JS.API.CONSUMER.MSG.NEXT.AGENT_RUNS.tenant_alice",
                          lambda: nc.request("$JS.API.CONSUMER.MSG.NEXT.AGENT_RUNS.tenant_alice", b"1", timeout=1))

    # Tools: no calls (not even for itself), no joining the tool runners' queue group.
    call = json.dumps({"run_id": run_id, "tool_call_id": "x", "arguments": {"path": "README.md"}}).encode()
    await bob_bus.refused("tools.bob.read_file", lambda: nc.request("tools.bob.read_file", call, timeout=1))
    await bob_bus.refused("tools.alice.read_file", lambda: nc.request("tools.alice.read_file", call, timeout=1))
    await bob_bus.refused("tools.*.read_file", lambda: subscribe("tools.*.read_file", queue=subjects.TOOL_QUEUE_GROUP))
    await bob_bus.refused(subjects.TOOL_SERVICE_INFO, lambda: nc.request(subjects.TOOL_SERVICE_INFO, b"", timeout=1))
    # Nor MCP tools: a tenant's service cannot make a tool runner list or call an agent's MCP server.
    mcp = json.dumps({"run_id": run_id, "tool_call_id": "x", "arguments": {"agent": "a", "server": "s"}}).encode()
    await bob_bus.refused("tools.bob.mcp_list", lambda: nc.request("tools.bob.mcp_list", mcp, timeout=1))
    await bob_bus.refused("tools.alice.mcp", lambda: nc.request("tools.alice.mcp", mcp, timeout=1))

    # Webhooks and schedules: no delivery jobs (not even its own), no delivery records, no signing
    # secrets (its own comes over HTTP), no schedules (HTTP only).
    await bob_bus.refused("webhooks.alice.x", lambda: js.publish("webhooks.alice.x", b"{}"))
    await bob_bus.refused("webhooks.bob.x", lambda: js.publish("webhooks.bob.x", b"{}"))
    await bob_bus.refused("$JS.API.CONSUMER.MSG.NEXT.WEBHOOK_JOBS.webhook-senders", lambda: nc.request(
        "$JS.API.CONSUMER.MSG.NEXT.WEBHOOK_JOBS.webhook-senders", b"1", timeout=1))
    await bob_bus.refused("$JS.API.DIRECT.GET.KV_WEBHOOK_SECRETS.$KV.WEBHOOK_SECRETS.alice", lambda: js.get_msg(
        "KV_WEBHOOK_SECRETS", subject="$KV.WEBHOOK_SECRETS.alice", direct=True))
    await bob_bus.refused("$JS.API.DIRECT.GET.KV_WEBHOOK_SECRETS.$KV.WEBHOOK_SECRETS.bob", lambda: js.get_msg(
        "KV_WEBHOOK_SECRETS", subject="$KV.WEBHOOK_SECRETS.bob", direct=True))
    await bob_bus.refused("$kv.webhook_secrets.bob", lambda: js.publish("$KV.WEBHOOK_SECRETS.bob", b"{}"))
    await bob_bus.refused("$JS.API.DIRECT.GET.KV_WEBHOOK_DELIVERIES", lambda: js.get_msg(
        "KV_WEBHOOK_DELIVERIES", seq=1, subject="$KV.WEBHOOK_DELIVERIES.>", next=True, direct=True))
    await bob_bus.refused("$JS.API.DIRECT.GET.KV_SCHEDULES.$KV.SCHEDULES.bob.x", lambda: js.get_msg(
        "KV_SCHEDULES", subject="$KV.SCHEDULES.bob.x", direct=True))
    await bob_bus.refused("$kv.schedules.bob.x", lambda: js.publish("$KV.SCHEDULES.bob.x", b"{}"))
    await bob_bus.refused("$kv.schedules.alice.x", lambda: js.publish("$KV.SCHEDULES.alice.x", b"{}"))

    # Alice's run is as it was, and her next run is served normally.
    after = await read_events(alice, run_id)
    assert [e["id"] for e in after] == [e["id"] for e in before]
    status = (await alice.get(f"/api/runs/{run_id}")).json()
    assert status["status"] == "completed" and status["answer"] == before[-2]["data"]["data"]["text"]
    await alice_run(alice)


async def test_a_tenant_service_submits_reads_and_cancels_its_own_runs(bus: System, bob_bus: Probe) -> None:
    nc = bob_bus.nc
    assert nc is not None
    js = nc.jetstream()

    async def run(agent: str, message: str) -> list[dict[str, Any]]:
        run_id = uuid.uuid4().hex
        events: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def on_event(msg: Any) -> None:
            events.append(json.loads(msg.data))
            if events[-1]["type"] in ("run.completed", "run.failed", "run.cancelled"):
                done.set()

        sub = await js.subscribe(subjects.run_events("bob", agent, run_id), stream=subjects.RUN_EVENTS_STREAM,
                                 cb=on_event, ordered_consumer=True,
                                 config=ConsumerConfig(name=f"bob-{run_id}", deliver_policy=DeliverPolicy.ALL))
        body = json.dumps({"run_id": run_id, "message_id": run_id, "message": message}).encode()
        ack = await js.publish(subjects.run_request("bob", agent), body, headers={"Nats-Msg-Id": run_id})
        assert ack.stream == subjects.AGENT_RUNS_STREAM
        await asyncio.wait_for(done.wait(), 60)
        await sub.unsubscribe()
        # The last event is also readable by direct get, and live events arrive on live.runs.bob.>.
        last = await js.get_msg(subjects.RUN_EVENTS_STREAM, subject=subjects.run_events("bob", agent, run_id),
                                direct=True)
        assert json.loads(last.data)["type"] == events[-1]["type"]
        return events

    events = await run("programmer-helper", "What is the first line of pyproject.toml?")
    assert events[0]["type"] == "run.queued" and events[-1]["type"] == "run.completed"
    assert events[0]["tenant"] == "bob"

    # bob's allow-list (keys file: programmer-helper only) holds for runs that skip HTTP too.
    refused = await run("web-reader", "Fetch https://example.com")
    assert [e["type"] for e in refused] == ["run.queued", "run.failed"]
    assert refused[-1]["data"]["error"]["type"] == "forbidden_agent"

    # Its own run can be cancelled by its own service (stored in RUN_CONTROL).
    run_id = uuid.uuid4().hex
    live: list[dict[str, Any]] = []
    ended = asyncio.Event()

    async def on_live(msg: Any) -> None:
        live.append(json.loads(msg.data))
        if live[-1]["type"] == "run.cancelled":
            ended.set()

    await nc.subscribe(f"live.runs.bob.*.{run_id}", cb=on_live)
    await js.publish(f"control.bob.{run_id}", json.dumps({"reason": "changed my mind"}).encode())
    body = json.dumps({"run_id": run_id, "message_id": run_id, "message": "Tell me a story"}).encode()
    await js.publish(subjects.run_request("bob", "programmer-helper"), body, headers={"Nats-Msg-Id": run_id})
    await asyncio.wait_for(ended.wait(), 60)
    assert live[-1]["data"]["reason"] == "changed my mind"
    assert not bob_bus.errors, bob_bus.errors


async def test_a_tenant_with_its_own_tool_root_reads_only_there(bus: System, alice: httpx.AsyncClient) -> None:
    async with edge_client(bus.edge_url, BOB_KEY) as bob:

        async def read(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
            run = await submit(client, "programmer-helper", f"What is the first line of {path}?")
            events = await asyncio.wait_for(read_events(client, run["run_id"]), 60)
            return next(e["data"]["data"] for e in events if e["event"] == "tool.result")

        mine = await read(bob, "notes.txt")
        assert mine["ok"] is True and mine["output"]["content"].startswith("bob's private notes")
        assert (await read(bob, "pyproject.toml"))["ok"] is False  # the shared root is not bob's
        theirs = await read(alice, "notes.txt")
        assert theirs["ok"] is False and theirs["error"]["type"] == "not_found"


async def test_each_component_identity_is_held_to_its_role(bus: System) -> None:
    url = bus.env["NATS_URL"]
    edge = await Probe().connect(url, **_options(bus, Role.EDGE))
    tools = await Probe().connect(url, **_options(bus, Role.TOOL_RUNNER))
    runner = await Probe().connect(url, **_options(bus, Role.AGENT_RUNNER))
    admin = await Probe().connect(url, **_options(bus, Role.ADMIN))
    try:
        assert edge.nc and tools.nc and runner.nc and admin.nc
        forged = b'{"type": "run.completed"}'
        await edge.refused("runs.alice.programmer-helper.x", lambda: edge.nc.jetstream().publish(
            "runs.alice.programmer-helper.x", forged))
        await edge.refused("$JS.API.STREAM.PURGE.RUN_EVENTS",
                           lambda: edge.nc.jetstream().purge_stream(subjects.RUN_EVENTS_STREAM))
        await edge.refused("tools.alice.read_file",
                           lambda: edge.nc.request("tools.alice.read_file", b"{}", timeout=1))
        await edge.refused("$JS.API.STREAM.MSG.GET.RUN_EVENTS", lambda: edge.nc.jetstream().get_last_msg(
            subjects.RUN_EVENTS_STREAM, "runs.alice.programmer-helper.x"))
        await runner.refused("$JS.API.STREAM.DELETE.AGENT_RUNS",
                             lambda: runner.nc.jetstream().delete_stream(subjects.AGENT_RUNS_STREAM))
        # (An agent runner may publish run requests: it queues a run that waited for approvals again.)
        await runner.refused("$KV.RATE_LIMITS.alice", lambda: runner.nc.jetstream().publish(
            "$KV.RATE_LIMITS.alice", b"{}"))
        await tools.refused("$KV.APPROVALS.alice.x", lambda: tools.nc.jetstream().publish(
            "$KV.APPROVALS.alice.x", b"{}"))
        await tools.refused("agents.alice.programmer-helper.run",
                            lambda: tools.nc.publish("agents.alice.programmer-helper.run", b"{}"))
        await tools.refused("live.runs.>", lambda: _sub_and_flush(tools.nc, "live.runs.>"))
        await tools.refused("tools.*.read_file", lambda: _sub_and_flush(tools.nc, "tools.*.read_file"))
        # An agent runner may ask the stream leader for a run's latest event (a write it must confirm).
        refusals = len(runner.errors)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await runner.nc.jetstream().get_last_msg(subjects.RUN_EVENTS_STREAM, "runs.alice.programmer-helper.x")
        # ... and ask the tool runners which tools they serve (their nats.micro discovery).
        info = json.loads((await runner.nc.request(subjects.TOOL_SERVICE_INFO, b"", timeout=5)).data)
        assert info["name"] == subjects.TOOL_SERVICE and {e["name"] for e in info["endpoints"]} == {
            "read_file", "list_dir", "http_request", subjects.MCP_CALL_TOOL, subjects.MCP_LIST_TOOL}
        assert runner.errors[refusals:] == []
        await edge.refused(subjects.TOOL_SERVICE_INFO,
                           lambda: edge.nc.request(subjects.TOOL_SERVICE_INFO, b"", timeout=1))
        # Webhooks: only agent runners enqueue deliveries, only webhook senders read the signing
        # secrets besides edges (which hand a tenant its own); runners cannot touch schedules.
        senders = await Probe().connect(url, **_options(bus, Role.WEBHOOK_SENDER))
        try:
            assert senders.nc
            secret = "$JS.API.DIRECT.GET.KV_WEBHOOK_SECRETS.$KV.WEBHOOK_SECRETS.alice"
            await runner.refused(secret, lambda: runner.nc.jetstream().get_msg(
                "KV_WEBHOOK_SECRETS", subject="$KV.WEBHOOK_SECRETS.alice", direct=True))
            await tools.refused(secret, lambda: tools.nc.jetstream().get_msg(
                "KV_WEBHOOK_SECRETS", subject="$KV.WEBHOOK_SECRETS.alice", direct=True))
            await runner.refused("$kv.schedules.alice.x", lambda: runner.nc.jetstream().publish(
                "$KV.SCHEDULES.alice.x", b"{}"))
            await edge.refused("webhooks.alice.x", lambda: edge.nc.jetstream().publish("webhooks.alice.x", b"{}"))
            await edge.refused("$kv.webhook_deliveries.alice.r.d", lambda: edge.nc.jetstream().publish(
                "$KV.WEBHOOK_DELIVERIES.alice.r.d", b"{}"))
            await tools.refused("webhooks.alice.x", lambda: tools.nc.publish("webhooks.alice.x", b"{}"))
            sjs = senders.nc.jetstream()
            await senders.refused("agents.alice.programmer-helper.run", lambda: sjs.publish(
                "agents.alice.programmer-helper.run", b"{}"))
            await senders.refused("runs.alice.programmer-helper.x", lambda: sjs.publish(
                "runs.alice.programmer-helper.x", b"{}"))
            await senders.refused("$JS.API.DIRECT.GET.RUN_EVENTS", lambda: sjs.get_msg(
                subjects.RUN_EVENTS_STREAM, seq=1, subject="runs.>", next=True, direct=True))
            await senders.refused("$kv.tenants.alice", lambda: sjs.publish("$KV.TENANTS.alice", b"{}"))
            await senders.refused("tools.alice.read_file",
                                  lambda: senders.nc.request("tools.alice.read_file", b"{}", timeout=1))
            await senders.refused("$kv.schedules.alice.x", lambda: sjs.publish("$KV.SCHEDULES.alice.x", b"{}"))
            # ... while a sender may read the secrets and pull its jobs.
            refusals = len(senders.errors)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await sjs.get_msg("KV_WEBHOOK_SECRETS", subject="$KV.WEBHOOK_SECRETS.alice", direct=True)
            pull = await sjs.pull_subscribe_bind(durable=subjects.WEBHOOK_SENDERS_CONSUMER,
                                                 stream=subjects.WEBHOOK_JOBS_STREAM)
            with contextlib.suppress(nats.errors.TimeoutError):
                await pull.fetch(1, timeout=0.5)
            assert senders.errors[refusals:] == []
        finally:
            await senders.close()
        # The admin identity may manage streams (a harmless update proves it).
        info = await admin.nc.jetstream().stream_info(subjects.RUN_EVENTS_STREAM)
        await admin.nc.jetstream().update_stream(info.config)
        assert not admin.errors
    finally:
        for probe in (edge, tools, runner, admin):
            await probe.close()


async def test_revoked_tenant_credentials_stop_working_without_a_restart(bus: System, tmp_path: Path) -> None:
    seed = tmp_path / "alice.nk"  # the copy a tenant's service keeps
    seed.write_bytes(seed_of(creds(bus, "alice")).read_bytes())
    inbox = tenant_inbox_prefix("alice")
    probe = await Probe().connect(bus.env["NATS_URL"], nkeys_seed=str(seed), inbox_prefix=inbox)
    revoked = creds(bus, "alice", revoke=True)
    assert revoked.returncode == 0, revoked.stderr
    assert "closed its connections" in revoked.stdout
    await asyncio.wait_for(probe.closed.wait(), 10)
    with pytest.raises(Exception, match="Authorization Violation"):
        await nats.connect(bus.env["NATS_URL"], nkeys_seed=str(seed), allow_reconnect=False)
    assert bus.nats.proc is not None and bus.nats.proc.poll() is None, "the server kept running"


def test_credentials_for_an_unknown_or_invalid_tenant_are_refused(bus: System) -> None:
    unknown = creds(bus, "mallory")
    assert unknown.returncode == 2
    assert "unknown tenant 'mallory'" in unknown.stderr and "alice" in unknown.stderr
    bad = creds(bus, "a.b")
    assert bad.returncode == 2 and "not a valid name" in bad.stderr
    never = creds(bus, "bob", revoke=True)
    never_again = creds(bus, "bob", revoke=True)
    assert never.returncode in (0, 2) and never_again.returncode == 2
    assert "no credentials to revoke" in never_again.stderr


def test_seed_files_are_private(bus: System) -> None:
    seed = seed_of(creds(bus, "bob"))
    assert seed.stat().st_mode & 0o777 == 0o600
    assert bus.auth is not None
    config = bus.auth.server_config_path.read_text()
    for path in [seed, *(bus.auth.seed_path(role) for role in Role)]:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().strip() not in config  # the server holds public keys only
    logs = "".join(p.log_path.read_text(errors="replace") for p in bus.procs)
    assert seed.read_text().strip() not in logs


def _options(bus: System, role: Role) -> dict[str, Any]:
    options = bus.connect_options(role)
    options.pop("servers")
    return options


async def _sub_and_flush(nc: Any, subject: str) -> None:
    await nc.subscribe(subject)
    await nc.flush()



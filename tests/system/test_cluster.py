"""A real 3-node JetStream cluster (streams in 3 replicas) under load: one node, the stream leader
of RUN_EVENTS and AGENT_RUNS and the server the edge is connected to, is killed with SIGKILL while
100 runs are in flight and watched over SSE; every run ends exactly once, every watcher (through
the edge, reconnecting with ``Last-Event-ID`` when its stream is cut) gets every event once, in
order (half of them also lose their connection at the kill and come back with ``Last-Event-ID``);
every component is connected to another node; the node, restarted at once while the runs go on,
rejoins and catches up. Then the same with the node's whole store deleted before it restarts.
Cancels still reach the runners afterwards.

Marked slow (about 25 s on two cores); it runs in ``make test`` all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from typing import Any

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from httpx_sse import aconnect_sse

from agentstream.natsserver import NatsCluster
from schemas import subjects
from tests.conftest import eventually, read_events, submit
from tests.harness import System, new_system

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

TERMINAL = {"run.completed", "run.failed", "run.cancelled"}
RUNS = 100
STREAMS = (subjects.RUN_EVENTS_STREAM, subjects.AGENT_RUNS_STREAM)
COMPONENTS = ("edge", "agent-runner runner-1", "agent-runner runner-2", "tool-runner tools-1")


class ResumingWatch:
    """A client watching one run's events through the edge's SSE, as a browser's EventSource
    does: when the stream is cut before the run's end it reconnects with ``Last-Event-ID``.
    :meth:`cut` drops the connection (a network blip) to make it do so."""

    def __init__(self, client: httpx.AsyncClient, run_id: str):
        self.run_id = run_id
        self.events: list[dict[str, Any]] = []
        self.reconnects = 0
        self._connection: asyncio.Task[bool] | None = None
        self.task = asyncio.create_task(self._read(client))

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1]["event"] in TERMINAL

    def cut(self) -> None:
        """Drop the current connection; the watcher reconnects with Last-Event-ID."""
        if self._connection is not None:
            self._connection.cancel()

    async def _read(self, client: httpx.AsyncClient) -> None:
        while True:
            self._connection = asyncio.create_task(self._connect(client))
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):  # cut: reconnect, as EventSource does
                if await self._connection:
                    return
            self.reconnects += 1
            await asyncio.sleep(0.1)

    async def _connect(self, client: httpx.AsyncClient) -> bool:
        """One connection; True once the run's end was read (or the edge says there is nothing more)."""
        headers = {"Last-Event-ID": str(self.events[-1]["id"])} if self.events else {}
        async with aconnect_sse(client, "GET", f"/api/runs/{self.run_id}/events", headers=headers) as src:
            if src.response.status_code == 204:  # the run had ended: EventSource stops
                return True
            if src.response.status_code != 200:
                return False
            async for sse in src.aiter_sse():
                if sse.data:
                    self.events.append({"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)})
                    if sse.event in TERMINAL:
                        return True
        return False


async def connections(cluster: NatsCluster, index: int) -> list[str]:
    """The names of the clients connected to node ``index`` (its monitoring ``/connz``)."""
    _, body = await asyncio.to_thread(cluster.monitor, index, "/connz?limit=1000")
    return [c.get("name", "") for c in body.get("connections", [])]


async def node_of(cluster: NatsCluster, client_name: str, among: list[int]) -> int:
    """The node (of ``among``) the client named ``client_name`` is connected to."""
    for index in among:
        if client_name in await connections(cluster, index):
            return index
    raise AssertionError(f"{client_name} is connected to none of {among}")


async def lead_from(js: Any, nc: nats.NATS, node: str) -> None:
    """Make ``node`` the leader of RUN_EVENTS and AGENT_RUNS (a leader step-down naming the
    preferred successor, nats-server 2.11+), and wait until both say so."""
    for stream in STREAMS:
        async def leads(stream: str = stream) -> bool:
            """the stream's leader is the chosen node"""
            try:
                return (await js.stream_info(stream)).cluster.leader == node
            except (nats.errors.TimeoutError, nats.js.errors.APIError):  # electing
                return False

        if not await leads():
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                             json.dumps({"placement": {"preferred": node}}).encode(), timeout=5)
            await eventually(leads, within=20, every=0.2)


async def caught_up(cluster: NatsCluster, index: int, js: Any) -> bool:
    """Node ``index`` is healthy and holds every stream's messages, as its own monitoring port
    reports them (``/jsz``), up to the sequence the leader reports; and the leader counts it as
    a current replica."""
    if not await asyncio.to_thread(cluster.healthy, index):
        return False
    _, jsz = await asyncio.to_thread(cluster.monitor, index, "/jsz?streams=true")
    local = {s["name"]: s for a in jsz.get("account_details") or [] for s in a.get("stream_detail") or []}
    name = cluster.node_name(index)
    for stream in STREAMS:
        try:
            info = await js.stream_info(stream)
        except (nats.errors.TimeoutError, nats.js.errors.APIError):  # electing
            return False
        mine = local.get(stream)
        if mine is None or mine["state"]["last_seq"] != info.state.last_seq:
            return False
        if mine["state"]["messages"] != info.state.messages:
            return False
        if info.cluster.leader != name and not any(r.name == name and r.current for r in info.cluster.replicas):
            return False
    return True


def check_runs(watches: list[ResumingWatch], stored: dict[str, list[int]]) -> int:
    """Every run ended exactly once and its watcher got exactly the stored events, in order;
    returns how many runs completed."""
    completed = 0
    for w in watches:
        kinds = [e["event"] for e in w.events]
        ids = [e["id"] for e in w.events]
        assert kinds[-1] in TERMINAL and sum(k in TERMINAL for k in kinds) == 1, (w.run_id, kinds)
        assert ids == sorted(set(ids)), f"{w.run_id}: an event twice or out of order: {ids}"
        assert ids == stored[w.run_id], f"{w.run_id}: the watcher missed events: {ids} vs {stored[w.run_id]}"
        assert kinds.count("message.completed") <= 1
        completed += kinds[-1] == "run.completed"
    return completed


async def one_fault(sysm: System, client: httpx.AsyncClient, js: Any, nc: nats.NATS, *, wipe: bool,
                    label: str) -> dict[str, Any]:
    cluster = sysm.nats
    assert isinstance(cluster, NatsCluster)
    all_nodes = list(range(cluster.size))
    victim = await node_of(cluster, "edge", all_nodes)
    name = cluster.node_name(victim)
    await lead_from(js, nc, name)

    sem = asyncio.Semaphore(20)

    async def start(i: int) -> ResumingWatch:
        async with sem:
            run = await submit(client, "steady-story", f"{label} story {i}")
        return ResumingWatch(client, run["run_id"])

    watches = await asyncio.gather(*(start(i) for i in range(RUNS)))

    async def streaming() -> bool:
        """every run is streaming its answer"""
        return all(any(e["event"] == "message.delta" for e in w.events) for w in watches)

    await eventually(streaming, within=60, every=0.1)
    assert not any(w.ended for w in watches), "the runs are in flight when the node dies"
    killed_at = time.monotonic()
    cluster.kill_node(victim)
    if wipe:
        shutil.rmtree(cluster.nodes[victim].store_dir)
    for w in watches[::2]:  # half the clients lose their connection too, and come back with Last-Event-ID
        w.cut()

    survivors = [i for i in all_nodes if i != victim]

    async def reconnected() -> bool:
        """every component is connected to a surviving node"""
        names = [n for i in survivors for n in await connections(cluster, i)]
        return all(c in names for c in COMPONENTS)

    await eventually(reconnected, within=30, every=0.2)
    in_flight = sum(not w.ended for w in watches)
    # The node comes back at once, while the runs go on: it catches up under load.
    restarted_at = time.monotonic()
    await asyncio.to_thread(cluster.start_node, victim)
    await asyncio.wait_for(asyncio.gather(*(w.task for w in watches)), 180)
    ended_after = time.monotonic() - killed_at

    async def rejoined() -> bool:
        """the restarted node is healthy and caught up with the stream leaders"""
        return await caught_up(cluster, victim, js)

    await eventually(rejoined, within=90, every=0.5)
    caught_up_after = time.monotonic() - restarted_at

    stored = {}
    for w in watches:
        stored[w.run_id] = [e["id"] for e in await asyncio.wait_for(read_events(client, w.run_id), 30)]
    completed = check_runs(watches, stored)
    return {"node": name, "in_flight_at_restart": in_flight, "completed": completed,
            "retried": sum(any(e["event"] == "run.retrying" for e in w.events) for w in watches),
            "sse_reconnects": sum(w.reconnects for w in watches), "runs_ended_s": round(ended_after, 1),
            "caught_up_s": round(caught_up_after, 1)}


async def test_a_node_killed_under_load_then_its_store_lost(tmp_path):
    sysm = new_system(tmp_path / "cluster", cluster=3)
    try:
        sysm.start_model()
        sysm.start_tool_runner("tools-1")
        for rid in ("runner-1", "runner-2"):
            # Either runner alone has a slot for every run: a runner holds at least one request
            # beyond its free slots (agent_runner.intake), and none may wait for a slot here.
            sysm.start_agent_runner(rid, AGENT_RUNNER_CONCURRENCY=str(RUNS + 10))
        sysm.start_edge()
        nc = await nats.connect(**sysm.connect_options())
        js = nc.jetstream()
        try:
            async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=httpx.Timeout(10, read=60),
                                         limits=httpx.Limits(max_connections=RUNS + 50)) as client:
                # The cluster serves: a first run goes through end to end (its tenant's consumer is
                # created and has elected its leader).
                first = await submit(client, "programmer-helper", "What is the first line of pyproject.toml?")
                assert (await asyncio.wait_for(read_events(client, first["run_id"]), 60))[-1]["event"] == \
                    "run.completed"
                killed = await one_fault(sysm, client, js, nc, wipe=False, label="kill")
                wiped = await one_fault(sysm, client, js, nc, wipe=True, label="wipe")
                # The cluster still takes runs, with a tool call: one goes through end to end.
                again = await submit(client, "programmer-helper", "What is the first line of pyproject.toml?")
                events = await asyncio.wait_for(read_events(client, again["run_id"]), 60)
                assert events[-1]["event"] == "run.completed"
                # And cancels still reach the runners (their RUN_CONTROL consumers followed the cluster).
                doomed = await submit(client, "steady-story", "cancel me")
                watch = ResumingWatch(client, doomed["run_id"])

                async def talking() -> bool:
                    """the run is streaming"""
                    return any(e["event"] == "message.delta" for e in watch.events)

                await eventually(talking, within=30)
                resp = await client.post(f"/api/runs/{doomed['run_id']}/cancel", json={"reason": "enough"})
                assert resp.status_code == 202, resp.text
                await asyncio.wait_for(watch.task, 30)
                assert watch.events[-1]["event"] == "run.cancelled"
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        print(f"\ncluster: killed {killed}; store deleted {wiped}")
        for outcome in (killed, wiped):
            assert outcome["completed"] == RUNS, outcome
            assert outcome["sse_reconnects"] >= RUNS // 2, outcome  # the cut clients came back
    except BaseException:
        print(sysm.logs())
        raise
    finally:
        sysm.stop()

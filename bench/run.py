"""The benchmark: what the bus costs over calling the model directly, how many runs and streams one
box holds, and whether more runners add capacity (the targets: bench/RESULTS.md, "Targets").

``make bench`` (``python -m bench``) starts a whole system (embedded nats-server, the built-in
model as the zero-latency model server, edge, runners), runs every scenario and writes
``bench/results.json`` and ``bench/RESULTS.md``. ``BENCH_QUICK=1`` runs smaller samples,
``BENCH_ONLY=a,b`` some scenarios (merged into the existing results), ``BENCH_OUT=dir`` writes
the results elsewhere. It reports; it does not assert.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats

from agentstream.launch import System, new_system
from agentstream.natsserver import NatsCluster
from bench.loadclient import LoadClients, RawHTTP
from schemas import subjects

BENCH = Path(__file__).resolve().parent
QUICK = os.environ.get("BENCH_QUICK") == "1"
OUT = Path(os.environ.get("BENCH_OUT") or BENCH)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def dist(values: list[float]) -> dict[str, float]:
    """p50/p99/mean/n of a sample."""
    return {
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
        "n": len(values),
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, seconds) process ``pid`` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by the system's processes between ``start()`` and ``stop()``, by role
    (``agent_runner``, ``model``, ``nats``, ``edge``, ``tool_runner``): figures that, unlike
    times, do not depend on what else the machine was doing."""

    def __init__(self, system: System):
        self.pids: dict[str, list[int]] = {}
        for proc in system.procs:
            if proc.proc is not None and proc.proc.poll() is None:
                role = {"agentstream.builtin_model": "model"}.get(proc.module, proc.module)
                self.pids.setdefault(role, []).append(proc.proc.pid)
        for server in system.nats.nodes if isinstance(system.nats, NatsCluster) else [system.nats]:
            if server.proc is not None:
                self.pids.setdefault("nats", []).append(server.proc.pid)
        self.before: dict[int, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        """Take the starting readings."""
        self.before = {pid: cpu_seconds(pid) for pids in self.pids.values() for pid in pids}

    def stop(self) -> dict[str, float]:
        """CPU seconds by role since ``start()``."""
        self.used = {role: sum(cpu_seconds(pid) - self.before[pid] for pid in pids) for role, pids in self.pids.items()}
        return self.used


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def stream_completion(client: httpx.AsyncClient, url: str, model: str, headers: dict | None = None) -> dict:
    """One streamed chat completion: time to first content token, total time, characters."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    started = time.perf_counter()
    ttft = None
    chars = 0
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    chars += len(text)
    total = time.perf_counter() - started
    return {"ttft": ttft, "total": total, "chars": chars}


class Bench:
    """One system, every scenario, the results."""

    def __init__(self, base: Path):
        self.system: System = new_system(base, extra_agents=BENCH / "agents", LOG_LEVEL="WARNING",
                                         TOOL_RUNNER_CONCURRENCY="64")
        self.results: dict[str, Any] = {}
        self.runners = []
        self.tools = []

    # -- setup

    def start(self) -> None:
        """Start the model server, one tool runner, one agent runner and the edge."""
        s = self.system
        s.start_model()
        self.tools.append(s.start_tool_runner("tools-1"))
        self.runners.append(s.start_agent_runner("runner-1"))
        self.edge = s.start_edge(SSE_HEARTBEAT="15")

    def stop(self) -> None:
        """Stop every process of the system."""
        self.system.stop()

    @property
    def edge_url(self) -> str:
        """``http://host:port`` of the main edge."""
        return self.system.edge_url

    # -- 0. the broker's own ceiling

    async def nats_ceiling(self) -> None:
        """JetStream publish (async and one at a time) and core request/reply (sequential and 100
        concurrent) rates from Python, on a stream of its own, deleted afterwards."""
        nc = await nats.connect(**self.system.connect_options())
        js = nc.jetstream()
        from nats.js.api import StorageType, StreamConfig

        await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"], storage=StorageType.FILE))
        n = 5000 if QUICK else 20000
        payload = b"x" * 300
        started = time.perf_counter()
        futures = [await js.publish_async("bench.p", payload) for _ in range(n)]
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        async_rate = n / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(n // 10):
            await js.publish("bench.s", payload)
        sync_rate = (n // 10) / (time.perf_counter() - started)

        async def responder(msg):
            await msg.respond(msg.data)

        await nc.subscribe("bench.echo", cb=responder)
        started = time.perf_counter()
        for _ in range(n // 10):
            await nc.request("bench.echo", payload, timeout=5)
        rr_sequential = (n // 10) / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(n // 100):
            await asyncio.gather(*(nc.request("bench.echo", payload, timeout=5) for _ in range(100)))
        rr_concurrent = n / (time.perf_counter() - started)
        await js.delete_stream("BENCH")
        await nc.close()
        self.results["nats_ceiling"] = {
            "js_publish_async_per_s": async_rate, "js_publish_sync_per_s": sync_rate,
            "request_reply_sequential_per_s": rr_sequential, "request_reply_100_concurrent_per_s": rr_concurrent,
        }

    # -- 1. overhead vs direct

    async def overhead(self) -> None:
        """The same streamed completion read directly from the model server and through
        ``/v1/chat/completions``, interleaved, at the realistic and flat-out paces."""
        model_url = self.system.model_url + "/chat/completions"
        edge_url = self.edge_url + "/v1/chat/completions"
        out = {}

        async def interleaved(model: str, agent: str, n: int, warm: int) -> tuple[list[dict], list[dict]]:
            """``n`` completions each way, alternating, so both see the same machine state."""
            for _ in range(warm):
                await stream_completion(client, model_url, model)
                await stream_completion(client, edge_url, agent)
            direct, through = [], []
            for _ in range(n):
                direct.append(await stream_completion(client, model_url, model))
                through.append(await stream_completion(client, edge_url, agent))
            return direct, through

        async with httpx.AsyncClient(timeout=120) as client:
            for pace, agent, model, n in (
                ("realistic", "bench-realistic", "builtin:tokens=200,delay=0.02", 5 if QUICK else 15),
                ("flat_out", "bench-flat", "builtin:tokens=2000,delay=0", 10 if QUICK else 40),
            ):
                direct, through = await interleaved(model, agent, n, warm=2)
                row = {}
                for name, sample in (("direct", direct), ("agentstream", through)):
                    row[name] = {
                        "ttft_ms": dist([s["ttft"] * 1000 for s in sample]),
                        "total_ms": dist([s["total"] * 1000 for s in sample]),
                        "chars_per_s": dist([s["chars"] / s["total"] for s in sample]),
                        "chars": sample[0]["chars"],
                    }
                row["total_ratio_p50"] = row["agentstream"]["total_ms"]["p50"] / row["direct"]["total_ms"]["p50"]
                row["total_ratio_p99"] = row["agentstream"]["total_ms"]["p99"] / row["direct"]["total_ms"]["p99"]
                row["added_ttft_ms_p50"] = row["agentstream"]["ttft_ms"]["p50"] - row["direct"]["ttft_ms"]["p50"]
                row["added_ttft_ms_p99"] = row["agentstream"]["ttft_ms"]["p99"] - row["direct"]["ttft_ms"]["p99"]
                row["chars_per_s_ratio_p50"] = (
                    row["agentstream"]["chars_per_s"]["p50"] / row["direct"]["chars_per_s"]["p50"]
                )
                out[pace] = row
            # Time to first token alone, with many more samples than the 4-second runs above give:
            # short completions at the same pace, interleaved the same way.
            samples = await interleaved(
                "builtin:tokens=3,delay=0.02", "bench-first-token", 30 if QUICK else 110, warm=10
            )
            direct, through = (dist([s["ttft"] * 1000 for s in sample]) for sample in samples)
            out["first_token"] = {"direct_ttft_ms": direct, "agentstream_ttft_ms": through,
                                  "added_ttft_ms_p50": through["p50"] - direct["p50"],
                                  "added_ttft_ms_p99": through["p99"] - direct["p99"]}
        self.results["overhead"] = out

    # -- 2. submit latency

    async def submit_latency(self) -> None:
        """POST → 202 and POST → first SSE event, measured with a bare HTTP/1.1 client (so the
        client's own cost is not counted) and, for one client, with httpx too (what a Python user
        of httpx sees). 50 clients are run two ways: as users sending a message every second on
        average (exponential think time; the runs they start execute meanwhile), and closed-loop
        (each sends the next message the moment the last one's first event arrives), which
        saturates the machine and measures queueing, not latency."""
        host, port = self.edge_url.removeprefix("http://").split(":")
        path = "/api/agents/bench-one-step/chat"
        out = {}
        per_client = 50 if QUICK else 200

        async def raw_client(n: int, think: float, accepted: list, first_event: list):
            conn = RawHTTP(host, int(port))
            try:
                for _ in range(n):
                    if think:
                        await asyncio.sleep(random.expovariate(1 / think))
                    started = time.perf_counter()
                    status, body = await conn.post_json(path, b'{"message":"hi"}')
                    accepted.append((time.perf_counter() - started) * 1000)
                    if status != 202:
                        raise RuntimeError(f"submit answered {status}: {body[:200]!r}")
                    await conn.first_event(f"/api/runs/{json.loads(body)['run_id']}/events")
                    first_event.append((time.perf_counter() - started) * 1000)
            finally:
                conn.close()

        async def httpx_client(n: int, accepted: list, first_event: list):
            async with httpx.AsyncClient(base_url=self.edge_url, timeout=60) as client:
                for _ in range(n):
                    started = time.perf_counter()
                    resp = await client.post(path, json={"message": "hi"})
                    accepted.append((time.perf_counter() - started) * 1000)
                    async with client.stream("GET", f"/api/runs/{resp.json()['run_id']}/events") as stream:
                        async for line in stream.aiter_lines():
                            if line.startswith("data: "):
                                first_event.append((time.perf_counter() - started) * 1000)
                                break

        await raw_client(20, 0, [], [])  # warm-up
        await httpx_client(20, [], [])
        for name, clients, n, think, kind in (
            ("1_client", 1, per_client, 0.0, "raw"),
            ("1_client_httpx", 1, per_client, 0.0, "httpx"),
            ("50_clients", 50, max(4, per_client // 10), 1.0, "raw"),
            ("50_clients_closed_loop", 50, max(4, per_client // 10), 0.0, "raw"),
        ):
            await self._drain()
            accepted: list[float] = []
            first_event: list[float] = []
            started = time.perf_counter()
            if kind == "httpx":
                await httpx_client(n, accepted, first_event)
            else:
                await asyncio.gather(*(raw_client(n, think, accepted, first_event) for _ in range(clients)))
            elapsed = time.perf_counter() - started
            out[name] = {"clients": clients, "client": kind, "think_s_mean": think,
                         "submits_per_s": len(accepted) / elapsed,
                         "to_202_ms": dist(accepted), "to_first_event_ms": dist(first_event)}
        await self._drain()
        self.results["submit_latency"] = out

    async def _drain(self, timeout: float = 120) -> None:  # noqa: ASYNC109 - gives up quietly at the deadline
        """Wait until no run is queued or running (the work queue is empty)."""
        nc = await nats.connect(**self.system.connect_options())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await nc.jetstream().stream_info("AGENT_RUNS")
            if info.state.messages == 0:
                break
            await asyncio.sleep(0.2)
        await nc.close()

    # -- 3. run throughput

    async def run_throughput(self) -> None:
        """Completed runs per second draining a full queue with one and two agent runners."""
        out = {}
        n = 300 if QUICK else 1500
        for agent in ("bench-one-step", "bench-two-step"):
            row = {}
            for runners in (1, 2):
                row[f"{runners}_runner"] = await self._drain_rate(
                    agent, n if agent == "bench-one-step" else n // 2, runners
                )
            row["scaling_ratio"] = row["2_runner"]["runs_per_s"] / row["1_runner"]["runs_per_s"]
            out[agent] = row
        self.results["run_throughput"] = out

    async def _drain_rate(self, agent: str, n: int, runners: int) -> dict:
        """Queue ``n`` runs with no runner up, then start ``runners`` runners and time the drain."""
        for proc in self.runners:
            proc.terminate(20)
        self.runners.clear()
        tenant = "default"
        nc = await nats.connect(**self.system.connect_options(), pending_size=64 * 1024 * 1024)
        from agentstream.runs import submit
        from schemas.runs import RunRequest, new_run_id

        done = asyncio.Event()
        ended = {"n": 0, "completed": 0}

        async def on_event(msg):
            kind = (msg.headers or {}).get("Agentstream-Event", "")
            if kind in ("run.completed", "run.failed", "run.cancelled"):
                ended["n"] += 1
                ended["completed"] += kind == "run.completed"
                if ended["n"] == n:
                    done.set()

        sub = await nc.subscribe(f"live.runs.{tenant}.{agent}.*", cb=on_event)
        sem = asyncio.Semaphore(200)

        async def submit_one():
            async with sem:
                await submit(nc, tenant, agent, RunRequest(run_id=new_run_id(), message_id=uuid.uuid4().hex,
                                                           message="Read README.md please"), index=None)

        await asyncio.gather(*(submit_one() for _ in range(n)))
        stored_before = (await nc.jetstream().stream_info(subjects.RUN_EVENTS_STREAM)).state.last_seq
        started = time.perf_counter()
        procs = await asyncio.gather(
            *(
                asyncio.to_thread(
                    self.system.start_agent_runner, f"runner-{agent}-{runners}-{i}"
                )
                for i in range(runners)
            )
        )
        ready = time.perf_counter()
        self.runners.extend(procs)
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - ready
        stored = (await nc.jetstream().stream_info(subjects.RUN_EVENTS_STREAM)).state.last_seq - stored_before
        await sub.unsubscribe()
        await nc.close()
        return {"runs": n, "completed": ended["completed"], "seconds": elapsed, "runs_per_s": n / elapsed,
                "runner_start_s": ready - started,
                # the runners' JetStream writes (run.started to run.completed), to read against the ceiling
                "events_stored": stored, "events_stored_per_run": stored / n, "events_stored_per_s": stored / elapsed}

    # -- 4. event fan-out

    async def fan_out(self) -> None:
        """Events per second delivered to 1, 100, 1,000 and 5,000 SSE clients watching runs, with the
        edge's RSS (MiB) before, once connected and at peak."""
        out = {}
        host, port = self.edge_url.removeprefix("http://").split(":")
        sizes = (1, 100, 1000) if QUICK else (1, 100, 1000, 5000)
        for clients in sizes:
            runs = max(1, min(50, clients // 100))
            for proc in self.runners:
                proc.terminate(20)
            self.runners.clear()
            async with httpx.AsyncClient(base_url=self.edge_url, timeout=60) as client:
                run_ids = [(await client.post("/api/agents/bench-stream/chat", json={"message": "go"})).json()["run_id"]
                           for _ in range(runs)]
            paths = [f"/api/runs/{run_ids[i % runs]}/events" for i in range(clients)]
            rss_before = rss_mib(self.edge.proc.pid)
            load = LoadClients(host, int(port), paths, processes=min(8, max(1, clients // 250)),
                               end_marker=b"event: run.completed")
            opened = await asyncio.to_thread(load.start)
            rss_connected = rss_mib(self.edge.proc.pid)
            load.go()
            peak = rss_connected
            self.runners.append(await asyncio.to_thread(self.system.start_agent_runner, f"runner-fan-{clients}",
                                                        AGENT_RUNNER_CONCURRENCY="64"))
            collector = asyncio.ensure_future(asyncio.to_thread(load.results, 600))
            while not collector.done():
                peak = max(peak, rss_mib(self.edge.proc.pid))
                await asyncio.sleep(0.2)
            stats = collector.result()
            events = sum(s.events for s in stats)
            first = min((s.first for s in stats if s.first), default=0)
            last = max((s.last for s in stats if s.last), default=0)
            errors = [s.error for s in stats if s.error]
            out[str(clients)] = {
                "clients": clients, "opened": opened, "runs_watched": runs, "events_delivered": events,
                "events_per_s": events / (last - first) if last > first else float("nan"),
                "window_s": last - first, "all_ended": all(s.ended for s in stats), "errors": len(errors),
                "first_error": errors[0] if errors else "", "edge_rss_mib_before": rss_before,
                "edge_rss_mib_connected": rss_connected, "edge_rss_mib_peak": peak,
            }
        self.results["fan_out"] = out

    # -- 5. concurrent idle streams

    async def idle_streams(self) -> None:
        """5,000 idle agent streams held by an edge with 2 s heartbeats; memory per stream (KiB)."""
        clients = 1000 if QUICK else 5000
        host, port = self.edge_url.removeprefix("http://").split(":")
        # An edge of its own with a short heartbeat, so heartbeats visibly flow.
        heartbeat_s = 2
        edge = self.system.start_edge(SSE_HEARTBEAT=str(heartbeat_s))
        host, port = edge.ready_value.removeprefix("http://").split(":")
        before = rss_mib(edge.proc.pid)
        load = LoadClients(host, int(port), ["/api/agents/bench-idle/sse"] * clients, processes=8)
        opened = await asyncio.to_thread(load.start)
        load.go()
        await asyncio.sleep(7)
        after = rss_mib(edge.proc.pid)
        load.stop()
        stats = await asyncio.to_thread(load.results, 300)
        edge.terminate(20)
        self.results["idle_streams"] = {
            "streams": clients, "heartbeat_s": heartbeat_s,
            "opened": opened, "held_with_pings": sum(1 for s in stats if s.pings >= 2),
            "pings_received": sum(s.pings for s in stats), "errors": sum(1 for s in stats if s.error),
            "edge_rss_mib_before": before, "edge_rss_mib_with_streams": after,
            "kib_per_stream": (after - before) * 1024 / max(opened, 1),
        }

    # -- 6. tool throughput

    async def tool_throughput(self) -> None:
        """``read_file`` calls per second over NATS, 128 in flight, with one and two tool runners."""
        from agent_runner.tool_client import ToolClient

        out = {}
        n = 1000 if QUICK else 4000
        in_flight = 128
        for count in (1, 2):
            while len(self.tools) < count:
                self.tools.append(self.system.start_tool_runner(f"tools-{len(self.tools) + 1}"))
            nc = await nats.connect(**self.system.connect_options())
            client = ToolClient(nc)
            sem = asyncio.Semaphore(in_flight)
            runners: dict[str, int] = {}

            async def call(i, client=client, sem=sem, runners=runners, count=count):
                async with sem:
                    outcome = await client.call("default", "read_file", run_id="bench", tool_call_id=f"c{count}-{i}",
                                                idempotency_key=f"bench:{count}:{i}:{uuid.uuid4().hex}",
                                                arguments={"path": "pyproject.toml"}, budget=30)
                    runners[outcome.runner or "none"] = runners.get(outcome.runner or "none", 0) + 1
                    return outcome.ok

            await asyncio.gather(*(call(i) for i in range(200)))  # warm-up
            runners.clear()
            started = time.perf_counter()
            oks = await asyncio.gather(*(call(i) for i in range(n)))
            elapsed = time.perf_counter() - started
            await nc.close()
            out[f"{count}_tool_runner"] = {"calls": n, "ok": sum(oks), "calls_per_s": n / elapsed, "by_runner": runners}
        out["scaling_ratio"] = out["2_tool_runner"]["calls_per_s"] / out["1_tool_runner"]["calls_per_s"]
        out["in_flight"] = in_flight
        self.results["tool_throughput"] = out


    # -- 9. many clients of llm-sse's endpoint, many runs on one runner

    async def process_concurrency(self) -> None:
        """``POST /api/process`` with an ensemble (two members, then the combiner) on the paced
        stand-in model: the time to the final frame for one client, then for 50 at once. One agent
        runner with the default settings (an earlier scenario may have left others, e.g. capped at
        64 runs: 50 ensembles are 150 runs)."""
        for proc in self.runners:
            proc.terminate(20)
        self.runners.clear()
        self.runners.append(await asyncio.to_thread(self.system.start_agent_runner, "runner-process"))
        async with httpx.AsyncClient(base_url=self.edge_url, timeout=300) as client:

            async def one() -> float:
                body = {"message": "Why is the sky blue?", "message_id": uuid.uuid4().hex, "agent": "bench-trio"}
                started = time.perf_counter()
                async with client.stream("POST", "/api/process", json=body) as resp:
                    async for line in resp.aiter_lines():
                        if '"final":true' in line.replace(" ", ""):
                            break
                return time.perf_counter() - started

            await one()  # warm
            single = [await one() for _ in range(3 if QUICK else 5)]
            meter = CpuMeter(self.system)
            meter.start()
            many = await asyncio.gather(*(one() for _ in range(50)))
            used = meter.stop()
        base = pct(single, 50)
        self.results["process_concurrency"] = {
            "one_client_s": dist(single), "fifty_clients_s": dist(list(many)),
            "p50_ratio": pct(list(many), 50) / base, "slowest_ratio": max(many) / base,
            # per client: one ensemble, three runs
            "cpu_ms_per_client": {role: seconds * 1000 / 50 for role, seconds in used.items()},
        }

    async def many_runs(self) -> None:
        """Runs streaming at the realistic pace (200 tokens at 50 tokens/s, 4 s each) arriving
        steadily so that about 1,000 are in flight at once on one agent runner: do all complete?
        added time to first token once that many are in flight; the runner's memory per run."""
        from agentstream.runs import submit
        from schemas.runs import RunRequest, new_run_id

        in_flight = 300 if QUICK else 1000
        duration = 4.0  # seconds a bench-realistic run streams
        n = in_flight * 3  # a ramp of one run duration, then two at the full count
        for proc in self.runners:
            proc.terminate(20)
        self.runners.clear()
        runner = await asyncio.to_thread(self.system.start_agent_runner, "runner-many")
        self.runners.append(runner)
        assert runner.proc is not None
        rss_before = rss_mib(runner.proc.pid)
        async with httpx.AsyncClient(timeout=60) as client:  # the model's own time to first token
            direct = [(await stream_completion(client, self.system.model_url + "/chat/completions",
                                               "builtin:tokens=200,delay=0.02"))["ttft"] for _ in range(5)]
        nc = await nats.connect(**self.system.connect_options(), pending_size=64 * 1024 * 1024)
        submitted: dict[str, float] = {}
        first: dict[str, float] = {}
        ended: dict[str, str] = {}
        done = asyncio.Event()

        async def on_event(msg: Any) -> None:
            run_id = msg.subject.rsplit(".", 1)[-1]
            kind = (msg.headers or {}).get("Agentstream-Event", "")
            if kind == "message.delta" and run_id not in first:
                first[run_id] = time.perf_counter()
            elif kind in ("run.completed", "run.failed", "run.cancelled"):
                ended[run_id] = kind
                if len(ended) == n:
                    done.set()

        sub = await nc.subscribe("live.runs.default.bench-realistic.*", cb=on_event)
        peak, concurrent = rss_before, 0

        async def sample() -> None:
            nonlocal peak, concurrent
            while not done.is_set():
                peak = max(peak, rss_mib(runner.proc.pid))  # type: ignore[union-attr]
                concurrent = max(concurrent, len(first) - len(ended))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        meter = CpuMeter(self.system)
        meter.start()
        started = time.perf_counter()
        gap = duration / in_flight
        pending = set()
        for i in range(n):
            run_id = new_run_id()
            submitted[run_id] = time.perf_counter()
            pending.add(asyncio.create_task(submit(nc, "default", "bench-realistic", RunRequest(
                run_id=run_id, message_id=run_id, message="go"), index=None)))
            delay = started + (i + 1) * gap - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - started
        used = meter.stop()
        done.set()
        await sampler
        await sub.unsubscribe()
        await nc.close()
        steady = [(first[r] - t) * 1000 for r, t in submitted.items() if r in first and t - started >= duration]
        direct_ms = pct([d * 1000 for d in direct], 50)
        # A run streams 200 tokens, each its own chunk, plus the role, finish and [DONE] chunks.
        chunks = len(ended) * (200 + 3)
        cpu_us = {role: seconds * 1e6 / max(chunks, 1) for role, seconds in used.items()}
        rate = 200 / duration  # chunks per second of one run
        self.results["many_runs"] = {
            "target_in_flight": in_flight, "runs": n, "most_in_flight": concurrent,
            "completed": sum(1 for k in ended.values() if k == "run.completed"), "ended": len(ended),
            "seconds": elapsed, "steady_ttft_ms": dist(steady), "model_ttft_ms": direct_ms,
            "added_ttft_ms_p50": pct(steady, 50) - direct_ms, "added_ttft_ms_p99": pct(steady, 99) - direct_ms,
            "runner_rss_mib_before": rss_before, "runner_rss_mib_peak": peak,
            "rss_kib_per_run": (peak - rss_before) * 1024 / max(concurrent, 1),
            "cpu_us_per_model_chunk": cpu_us,
            # What one core of the runner carries at this pace, and the cores the whole scenario
            # needs at its target (every process, including the stand-in model), from CPU used.
            "runs_per_runner_core": 1e6 / (cpu_us.get("agent_runner", 0) * rate or 1),
            "cores_needed_at_target": sum(cpu_us.values()) * in_flight * rate / 1e6,
            "cores": os.cpu_count(),
        }
        await self._drain()

    # -- 8. listing runs

    async def listing(self) -> None:
        """``GET /api/runs?limit=20`` and ``GET /api/agents/{name}/status?limit=20`` with 10,000 stored
        runs (the run log answers them: their time must not grow with the number of runs)."""
        n = 2000 if QUICK else 10_000
        await self._drain_rate("bench-one-step", n, 1)
        samples = 30 if QUICK else 100
        out: dict[str, Any] = {"stored_runs": n}
        async with httpx.AsyncClient(base_url=self.edge_url, timeout=30) as client:
            for name, path in (("runs", "/api/runs?limit=20"),
                               ("agent_status", "/api/agents/bench-one-step/status?limit=20")):
                times = []
                for _ in range(samples):
                    started = time.perf_counter()
                    resp = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert resp.status_code == 200, resp.text
                out[name] = {"ms": dist(times), "returned": len(resp.json().get("runs") or [])}
        self.results["listing"] = out

    # -- 6b. tool runners scaling out on a latency-bound tool

    async def tool_scaling(self) -> None:
        """``http_request`` calls to a loopback server answering each request in 50 ms, with 1, 2
        and 4 tool runners each limited to 8 calls at once (``TOOL_RUNNER_CONCURRENCY=8``), so one
        tool runner can finish at most 160 calls per second: what adding tool runners adds, when
        the tool's own latency, not the machine, is the limit. 64 calls are kept in flight."""
        from agent_runner.tool_client import ToolClient

        per_runner, delay, in_flight = 8, 0.05, 64
        seconds = 3.0 if QUICK else 10.0
        web = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.slowhttp", str(delay),
                                                   stdout=asyncio.subprocess.PIPE, cwd=BENCH.parent)
        try:
            assert web.stdout is not None
            url = (await web.stdout.readline()).decode().split("ready: ", 1)[1].strip()
            host = url.removeprefix("http://")
            for proc in self.tools:
                proc.terminate(20)
            self.tools.clear()
            out: dict[str, Any] = {"tool_latency_ms": delay * 1000, "concurrency_per_runner": per_runner,
                                   "in_flight": in_flight, "seconds": seconds,
                                   "ceiling_per_runner_per_s": per_runner / delay}
            for count in (1, 2, 4):
                while len(self.tools) < count:
                    self.tools.append(await asyncio.to_thread(
                        self.system.start_tool_runner, f"web-{len(self.tools) + 1}",
                        TOOL_RUNNER_CONCURRENCY=str(per_runner), TOOL_RUNNER_TOOLS="http_request",
                        TOOL_HTTP_ALLOW_HOSTS=host))
                nc = await nats.connect(**self.system.connect_options())
                client = ToolClient(nc)
                runners: dict[str, int] = {}
                latencies: list[float] = []
                failed = 0

                async def caller(stop_at: float, tag: str, record: bool, client: ToolClient = client,
                                 runners: dict[str, int] = runners, latencies: list[float] = latencies) -> int:
                    nonlocal failed
                    done = 0
                    while time.perf_counter() < stop_at:
                        started = time.perf_counter()
                        outcome = await client.call(
                            "default", "http_request", run_id="bench", tool_call_id=f"{tag}-{uuid.uuid4().hex}",
                            idempotency_key=uuid.uuid4().hex, arguments={"url": f"{url}/x"}, budget=30)
                        if record:
                            done += 1
                            latencies.append((time.perf_counter() - started) * 1000)
                            runners[outcome.runner or "none"] = runners.get(outcome.runner or "none", 0) + 1
                            failed += not outcome.ok
                    return done

                warm_until = time.perf_counter() + 1.0
                await asyncio.gather(*(caller(warm_until, "warm", False) for _ in range(in_flight)))
                started = time.perf_counter()
                calls = sum(await asyncio.gather(*(caller(started + seconds, "run", True) for _ in range(in_flight))))
                elapsed = time.perf_counter() - started
                await nc.close()
                out[f"{count}_tool_runner"] = {"calls": calls, "failed": failed, "calls_per_s": calls / elapsed,
                                               "latency_ms": dist(latencies), "by_runner": runners}
            one = out["1_tool_runner"]["calls_per_s"]
            out["scaling_2_vs_1"] = out["2_tool_runner"]["calls_per_s"] / one
            out["scaling_4_vs_1"] = out["4_tool_runner"]["calls_per_s"] / one
        finally:
            web.kill()
            await web.wait()
        self.results["tool_scaling"] = out

    # -- 7. fairness between tenants

    async def fairness(self) -> None:
        """Tenant A holds a backlog of runs of one second each; tenant B submits one run at a time
        meanwhile: B's start delay (submit to ``run.started``), with one and two agent runners."""
        backlog = 400 if QUICK else 2000
        samples = 6 if QUICK else 20
        out = {}
        for runners in (1, 2):
            out[f"{runners}_runner"] = await self._fairness(backlog, samples, runners)
        self.results["fairness"] = out

    async def _fairness(self, backlog: int, samples: int, runners: int) -> dict[str, Any]:
        from agentstream.runs import submit
        from schemas.runs import RunRequest, new_run_id
        from schemas.tenants import TenantPolicy

        for proc in self.runners:
            proc.terminate(20)
        self.runners.clear()
        nc = await nats.connect(**self.system.connect_options(), pending_size=64 * 1024 * 1024)
        js = nc.jetstream()
        # The bench's edge serves the open single tenant; the two tenants are given to the runners
        # the way edges do it, through the TENANTS bucket (the bench connects as admin).
        tenants = await js.key_value(subjects.TENANTS_BUCKET)
        for name in ("bench-a", "bench-b"):
            await tenants.put(name, TenantPolicy(tenant=name, max_concurrent_runs=10_000).model_dump_json().encode())
        agent = "bench-second"
        started: dict[str, float] = {}
        got_start = asyncio.Event()

        async def on_event(msg: Any) -> None:
            if (msg.headers or {}).get("Agentstream-Event") == "run.started":
                started[msg.subject.rsplit(".", 1)[-1]] = time.perf_counter()
                got_start.set()

        sub = await nc.subscribe(f"live.runs.bench-b.{agent}.*", cb=on_event)
        sem = asyncio.Semaphore(200)

        async def queue_a() -> None:
            async with sem:
                await submit(nc, "bench-a", agent, RunRequest(run_id=new_run_id(), message_id=uuid.uuid4().hex,
                                                              message="work"), index=None)

        await asyncio.gather(*(queue_a() for _ in range(backlog)))
        procs = await asyncio.gather(*(asyncio.to_thread(
            self.system.start_agent_runner, f"runner-fair-{runners}-{i}", AGENT_RUNNER_CONCURRENCY="64")
            for i in range(runners)))
        self.runners.extend(procs)
        await asyncio.sleep(3)  # A's backlog is being worked on
        delays = []
        for _ in range(samples):
            run_id = new_run_id()
            sent = time.perf_counter()
            await submit(nc, "bench-b", agent, RunRequest(run_id=run_id, message_id=run_id, message="mine"), index=None)
            while run_id not in started:
                got_start.clear()
                await asyncio.wait_for(got_start.wait(), 600)
            delays.append((started[run_id] - sent) * 1000)
            await asyncio.sleep(0.5)
        left = (await js.stream_info(subjects.AGENT_RUNS_STREAM, subjects_filter="agents.bench-a.*.run")).state
        await sub.unsubscribe()
        await js.purge_stream(subjects.AGENT_RUNS_STREAM, subject="agents.bench-a.*.run")
        await nc.close()
        await self._drain()
        return {"backlog": backlog, "a_left_when_done": left.messages, "b_start_delay_ms": dist(delays)}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    nats_bin = str(Path(sys.executable).parent / "nats-server")
    version = subprocess.run([nats_bin, "--version"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "nats_server": version,
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d"), "quick": QUICK}


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="agentstream-bench-") as tmp:
        bench = Bench(Path(tmp))
        bench.start()
        try:
            for name in ("nats_ceiling", "overhead", "submit_latency", "run_throughput", "fan_out", "idle_streams",
                         "tool_throughput", "tool_scaling", "fairness", "listing", "process_concurrency",
                         "many_runs"):
                if os.environ.get("BENCH_ONLY") and name not in os.environ["BENCH_ONLY"].split(","):
                    continue
                started = time.perf_counter()
                print(f"bench: {name} ...", flush=True)
                await getattr(bench, name)()
                print(f"bench: {name} done in {time.perf_counter() - started:.0f} s: "
                      f"{json.dumps(bench.results.get(name), default=str)[:600]}", flush=True)
        finally:
            bench.stop()
    save({"machine": machine(), **bench.results})


def save(results: dict[str, Any]) -> None:
    """Write the results (merged into the existing ones with BENCH_ONLY) and their Markdown report."""
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / ("results.quick.json" if QUICK else "results.json")
    previous = json.loads(out.read_text()) if out.exists() and os.environ.get("BENCH_ONLY") else {}
    # Each scenario keeps the date it was measured on: those merged from an earlier run keep theirs.
    earlier = previous.get("machine", {}).get("date")
    kept = previous.get("dates", {})
    dates = {name: kept.get(name, earlier) for name in previous if name not in ("machine", "dates")}
    today = results.get("machine", {}).get("date")
    dates.update({name: today for name in results if name not in ("machine", "dates")})
    merged = {**previous, **results, "dates": dates}
    out.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    from bench.report import write_markdown

    write_markdown(merged, OUT / ("RESULTS.quick.md" if QUICK else "RESULTS.md"))
    print(f"bench: wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())

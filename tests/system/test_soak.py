"""Soak (opt-in: ``make soak``, or ``pytest -m soak``): many runs while agent and tool runners are
killed at random; every accepted run must end exactly once, with at most one final answer.

``SOAK_RUNS`` (default 1000) sets the number of runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter

import httpx
import pytest

from agentstream import eventlog
from schemas import subjects
from tests.harness import new_system

pytestmark = pytest.mark.soak


async def test_soak_random_kills(tmp_path):
    total = int(os.environ.get("SOAK_RUNS", "1000"))
    sysm = new_system(tmp_path / "soak", AGENT_RUNNER_ACK_WAIT="2", AGENT_RUNNER_MAX_ATTEMPTS="6",
                      TOOL_PROGRESS_INTERVAL="0.3", BUILTIN_MODEL_TOKEN_DELAY="0.001")
    rng = random.Random(7)
    kills = Counter()
    try:
        sysm.start_model()
        tools = [sysm.start_tool_runner(f"tools-{i}") for i in range(2)]
        runners = [sysm.start_agent_runner(f"runner-{i}", AGENT_RUNNER_CONCURRENCY="32") for i in range(3)]
        sysm.start_edge()
        stop = asyncio.Event()

        async def chaos():
            n = 0
            while not stop.is_set():
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                n += 1
                if n % 4 == 0:
                    i = rng.randrange(len(tools))
                    tools[i].kill()
                    kills["tool-runner"] += 1
                    tools[i] = await asyncio.to_thread(sysm.start_tool_runner, f"tools-{i}-{n}")
                else:
                    i = rng.randrange(len(runners))
                    runners[i].kill()
                    kills["agent-runner"] += 1
                    runners[i] = await asyncio.to_thread(sysm.start_agent_runner, f"runner-{i}-{n}",
                                                         AGENT_RUNNER_CONCURRENCY="32")

        started = time.monotonic()
        async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60) as client:
            chaos_task = asyncio.create_task(chaos())
            run_ids = []
            for i in range(total):
                agent, message = ("programmer-helper", "How many lines does pyproject.toml have?") if i % 2 else \
                    ("long-story", f"story {i}") if i % 10 == 0 else ("echo", f"echo {i}")
                resp = await client.post(f"/api/agents/{agent}/chat", json={"message": message})
                assert resp.status_code == 202, resp.text
                run_ids.append(resp.json()["run_id"])
                if i % 50 == 49:
                    await asyncio.sleep(0.2)
            deadline = time.monotonic() + 900
            pending = set(run_ids)
            while pending:
                assert time.monotonic() < deadline, f"{len(pending)} runs never ended"
                for run_id in list(pending)[:200]:
                    status = (await client.get(f"/api/runs/{run_id}")).json()["status"]
                    if status in ("completed", "failed", "cancelled"):
                        pending.discard(run_id)
                await asyncio.sleep(0.5)
            stop.set()
            await chaos_task
        elapsed = time.monotonic() - started

        import nats

        nc = await nats.connect(**sysm.connect_options())
        outcome = Counter()
        duplicated_answers = 0
        multiple_terminals = 0
        retried = 0
        for run_id in run_ids:
            events = await eventlog.read_list(nc, subjects.run_events_of_run("default", run_id))
            kinds = Counter(e.type for e in events)
            terminals = kinds["run.completed"] + kinds["run.failed"] + kinds["run.cancelled"]
            multiple_terminals += terminals != 1
            duplicated_answers += kinds["message.completed"] > 1
            retried += kinds["run.retrying"] > 0
            outcome[events[-1].type] += 1
        await nc.close()
        print(f"\nsoak: {total} runs in {elapsed:.0f} s; kills {dict(kills)}; outcomes {dict(outcome)}; "
              f"retried {retried}; runs without exactly one terminal event {multiple_terminals}; "
              f"runs with more than one final answer {duplicated_answers}")
        assert sum(outcome.values()) == total and multiple_terminals == 0 and duplicated_answers == 0
        assert outcome["run.completed"] + outcome["run.failed"] == total
    finally:
        sysm.stop()

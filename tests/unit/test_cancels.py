"""The cancel registry (agent_runner/cancels.py): a cancel before, during and after a run."""

from __future__ import annotations

import asyncio

from agent_runner.cancels import CancelRegistry


async def test_a_cancel_of_a_running_run_stops_its_task_with_the_reason():
    cancels = CancelRegistry()
    task = asyncio.create_task(asyncio.sleep(30))
    cancels.running(("t", "r1"), task)
    cancels.request(("t", "r1"), "client disconnected")
    await asyncio.gather(task, return_exceptions=True)
    assert cancels.cancelled_by_request(("t", "r1"), task) == "client disconnected"
    cancels.finished(("t", "r1"))
    assert ("t", "r1") in cancels  # still remembered: a redelivery of the run ends at once


async def test_a_cancel_before_the_run_starts_cancels_it_as_it_starts():
    cancels = CancelRegistry()
    cancels.request(("t", "r2"), "user asked")
    task = asyncio.create_task(asyncio.sleep(30))
    cancels.running(("t", "r2"), task)
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and cancels.cancelled_by_request(("t", "r2"), task) == "user asked"


async def test_a_task_cancelled_otherwise_is_not_a_requested_cancel():
    cancels = CancelRegistry()
    task = asyncio.create_task(asyncio.sleep(30))
    cancels.running(("t", "r3"), task)
    task.cancel()  # this runner stopping
    await asyncio.gather(task, return_exceptions=True)
    assert cancels.cancelled_by_request(("t", "r3"), task) is None and ("t", "r3") not in cancels


def test_only_the_newest_cancels_are_remembered_and_a_known_reason_stays():
    cancels = CancelRegistry(memory=2)
    for run in ("a", "b", "c"):
        cancels.request(("t", run), f"stop {run}")
    assert ("t", "a") not in cancels and cancels.reason(("t", "c")) == "stop c"
    cancels.remember(("t", "c"), "other")
    assert cancels.reason(("t", "c")) == "stop c"

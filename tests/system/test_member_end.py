"""How an ensemble's parent learns a member's end (agent_runner/ensemble.py ``wait_for_end``), on a
real nats-server: from the live re-publication when it saw the answer and the end back to back,
from the stream when it did not (the end came first, or the answer was stored before it listened)."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from agent_runner.ensemble import wait_for_end
from agentstream import eventlog
from schemas import events as E
from schemas import subjects
from schemas.common import ErrorInfo


def _envelope(cls: type[E._Envelope], run_id: str, data: object) -> bytes:
    return cls(run_id=run_id, tenant="default", agent="member", message_id=f"m-{run_id}", attempt=1,
               data=data).model_dump_json().encode()  # type: ignore[call-arg]


class Run:
    """One member run's events, written as an agent runner writes them (expected last sequence)."""

    def __init__(self, nc: nats.NATS):
        self.nc = nc
        self.run_id = uuid.uuid4().hex
        self.subject = subjects.run_events("default", "member", self.run_id)
        self.last = 0

    async def write(self, cls: type[E._Envelope], data: object) -> None:
        event_type = cls.model_fields["type"].default
        self.last = await eventlog.append(self.nc, self.subject, _envelope(cls, self.run_id, data),
                                          event_type=event_type, msg_id=f"{self.run_id}:{self.last}",
                                          expected_last_seq=self.last, retry_seconds=5)

    async def queued(self) -> None:
        await self.write(E.RunQueued, E.RunQueuedData(message="2+2?"))

    async def answered(self, text: str) -> None:
        await self.write(E.MessageCompleted, E.MessageCompletedData(text=text, steps=1))

    async def completed(self) -> None:
        await self.write(E.RunCompleted, E.RunCompletedData(steps=1))


@pytest.fixture
async def nc(system):
    conn = await nats.connect(**system.connect_options())
    yield conn
    await conn.close()


async def _waiting(nc: nats.NATS, run: Run) -> asyncio.Task[list[eventlog.StoredEvent] | None]:
    """wait_for_end started, listening, its first read of the stream done."""
    listening = asyncio.Event()
    task = asyncio.create_task(wait_for_end(nc, run.subject, 20, listening=listening))
    await asyncio.wait_for(listening.wait(), 10)
    return task


async def test_an_answer_and_end_seen_live_are_the_outcome_without_a_read(nc):
    run = Run(nc)
    await run.queued()
    task = await _waiting(nc, run)
    await run.answered("four")
    await run.completed()
    ended = await asyncio.wait_for(task, 10)
    assert ended is not None
    assert [e.type for e in ended] == [E.MESSAGE_COMPLETED, E.RUN_COMPLETED]
    assert ended[0].event is not None and ended[0].event.data.text == "four"  # type: ignore[union-attr]


async def test_an_end_before_listening_is_read_from_the_stream(nc):
    run = Run(nc)
    await run.queued()
    await run.answered("four")
    await run.completed()
    ended = await wait_for_end(nc, run.subject, 10)
    assert ended is not None
    assert [e.type for e in ended] == [E.RUN_QUEUED, E.MESSAGE_COMPLETED, E.RUN_COMPLETED]


async def test_an_end_whose_answer_was_stored_before_listening_reads_the_answer_from_the_stream(nc):
    run = Run(nc)
    await run.queued()
    await run.answered("four")
    task = await _waiting(nc, run)
    await run.completed()
    ended = await asyncio.wait_for(task, 10)
    assert ended is not None
    assert [e.type for e in ended] == [E.RUN_QUEUED, E.MESSAGE_COMPLETED, E.RUN_COMPLETED]


async def test_an_answer_of_an_earlier_attempt_is_not_taken_for_the_last_one(nc):
    """The answer seen live is used only when it is the event stored just before the end."""
    run = Run(nc)
    await run.queued()
    task = await _waiting(nc, run)
    await run.answered("first attempt")
    await run.write(E.RunRetrying, E.RunRetryingData(attempt=2, reason="runner died"))
    await run.completed()
    ended = await asyncio.wait_for(task, 10)
    assert ended is not None
    assert [e.type for e in ended] == [E.RUN_QUEUED, E.MESSAGE_COMPLETED, E.RUN_RETRYING, E.RUN_COMPLETED]


async def test_a_failure_seen_live_is_the_outcome(nc):
    run = Run(nc)
    await run.queued()
    task = await _waiting(nc, run)
    await run.write(E.RunFailed, E.RunFailedData(reason="boom", error=ErrorInfo(type="internal_error", message="x")))
    ended = await asyncio.wait_for(task, 10)
    assert ended is not None and [e.type for e in ended] == [E.RUN_FAILED]


async def test_no_end_within_the_timeout_is_none(nc):
    run = Run(nc)
    await run.queued()
    assert await wait_for_end(nc, run.subject, 0.5) is None

"""Ensembles (README, "Ensembles"): ask several member agents concurrently, then answer from their answers.

The parent run submits one child run per member on the bus (``agents.{tenant}.{member}.run``), so
members run concurrently on whichever agent runners are free, each with its own events under its
own run id. It waits for them, each within ``member_timeout`` (a slower one is cancelled), writes
``member.started`` on its own stream, and ``member.finished`` for each member as soon as that
member ends (so clients hear of a fast member while a slow one still works), and if at least ``min_success``
answered, runs the combiner agent in the parent run itself (its deltas and answer are the
parent's) with the question and the answers labelled by member. Cancelling the parent cancels
the children. Child run ids are derived from the parent's, so a retried parent finds its children
instead of starting them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from agent_runner.event_writer import OwnershipLost, RunEventWriter
from agentstream import eventlog
from agentstream.runs import submit
from agentstream.runstate import fold as fold_record
from schemas import events as E
from schemas import headers as H
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.common import ErrorInfo, Usage
from schemas.errors import AgentstreamError, ErrorKind
from schemas.runs import RunControl, RunRequest, member_run_id

log = logging.getLogger(__name__)


class MembersFailed(AgentstreamError):
    """Fewer than ``min_success`` members answered (``members_failed``); the message names each failure."""

    reason = "not enough members answered"

    def __init__(self, message: str):
        super().__init__(ErrorKind.MEMBERS_FAILED, message)


@dataclass
class MemberOutcome:
    """One member's end: its finished event data and, if it completed, its answer."""

    finished: E.MemberFinishedData
    answer: str | None = None


def question_of(request: RunRequest) -> str:
    """The question the members are asked: the request's message, or its last user message."""
    if request.message:
        return request.message
    for message in reversed(request.history):
        if message.role == "user":
            content = message.content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return content or ""
    return ""


def combined_message(ensemble: AgentDefinition, question: str, outcomes: list[tuple[str, MemberOutcome]]) -> str:
    """The combiner's user message: ``combine_prompt`` with the question and the answers, each
    under a ``### {member}`` heading, in the ensemble's member order."""
    answers = "\n\n".join(
        f"### {member}\n{outcome.answer}" for member, outcome in outcomes if outcome.answer is not None
    )
    return ensemble.combine_prompt.replace("{question}", question).replace("{answers}", answers)


async def wait_for_end(
    nc: NATS, subject: str,
    timeout: float,  # noqa: ASYNC109 - at the deadline it returns None, it does not raise
    *, listening: asyncio.Event | None = None,
) -> list[eventlog.StoredEvent] | None:
    """The end of the run on ``subject``: the events its outcome is folded from, ending with its
    terminal event; None if that does not come within ``timeout`` seconds.

    Listens to the live re-publication. When the terminal event arrives live, a ``run.failed`` or
    ``run.cancelled`` is all that is needed, and a ``run.completed`` with the ``message.completed``
    seen live just before it on the subject (the terminal event's ``Nats-Last-Sequence`` is that
    event's sequence) gives the answer too: nothing is read back. Otherwise (an end that came
    before the subscription, a live event missed: core NATS delivers at most once) the run's
    events are read from the stream: at the start, once a live terminal event is seen without its
    answer, and once a second whatever arrives. A read that fails (a server died with it in
    flight, a leader election) counts as "not yet". ``listening``: set once it listens and has
    read the stream the first time (an event stored after that is seen live)."""
    sub = await nc.subscribe(subjects.live_of(subject))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    answered: eventlog.StoredEvent | None = None
    try:
        while True:
            try:
                last = await eventlog.last_event(nc, subject)
            except eventlog.EventLogError as err:
                log.warning("waiting for %s: %s; reading again", subject, err)
                last = None
            if last is not None and E.is_terminal(last.type):
                return await _read_ended(nc, subject)
            if listening is not None:
                listening.set()
            read_again = min(loop.time() + 1.0, deadline)
            while (remaining := read_again - loop.time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=remaining)
                except TimeoutError:
                    break
                event_type = (msg.headers or {}).get(H.EVENT_TYPE, "")
                if event_type == E.MESSAGE_COMPLETED:
                    answered = eventlog.StoredEvent.from_message(subject, msg.headers, msg.data)
                elif E.is_terminal(event_type):
                    terminal = eventlog.StoredEvent.from_message(subject, msg.headers, msg.data)
                    if terminal.type != E.RUN_COMPLETED:
                        return [terminal]
                    if answered is not None and terminal.last_seq == answered.seq:
                        return [answered, terminal]
                    break
            if loop.time() >= deadline:
                return None
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            pass


async def run_members(
    nc: NATS,
    tenant: str,
    ensemble: AgentDefinition,
    request: RunRequest,
    writer: RunEventWriter,
    *,
    started_before: dict[str, E.MemberStartedData],
    finished_before: dict[str, E.MemberFinishedData],
    waiting: Callable[[], AbstractAsyncContextManager[None]],
    index: KeyValue | None = None,
) -> list[tuple[str, MemberOutcome]]:
    """Run (or, on a retried parent, find) every member's child run and wait for them.

    Returns ``[(member, outcome)]`` in member order. Raises MembersFailed when fewer than
    ``min_success`` completed. ``waiting``: a context manager the runner uses to not count this
    run against its concurrency while it only waits; ``index``: the RUN_INDEX bucket the child
    runs are entered in.
    """
    question = question_of(request)
    outcomes: dict[str, MemberOutcome] = {}
    child_ids = {m: member_run_id(request.run_id, m) for m in ensemble.members}
    started_at = {m: time.perf_counter() for m in ensemble.members}
    try:
        # Submitted together (a repeat, from a retried parent, is recognised, not re-run), then
        # recorded in member order.
        await asyncio.gather(*(
            submit(nc, tenant, member, RunRequest(
                run_id=child_ids[member], message_id=f"{request.message_id[:150]}:{member}", message=question,
                history=request.history, conversation_id=request.conversation_id, parent_run_id=request.run_id,
            ), index=index, member=True, log=True)
            for member in ensemble.members
        ))
        for member in ensemble.members:
            if member not in started_before:
                await writer.emit(E.MEMBER_STARTED, E.MemberStartedData(member=member, run_id=child_ids[member]))
        async def finish(member: str) -> None:
            """Wait for one member and record its end at once (not after the others)."""
            outcome = await _member_outcome(nc, tenant, member, child_ids[member], ensemble.member_timeout,
                                            started_at[member], finished_before.get(member))
            outcomes[member] = outcome
            if member not in finished_before:
                await writer.emit(E.MEMBER_FINISHED, outcome.finished)

        async with waiting():
            watching = [asyncio.create_task(finish(member)) for member in ensemble.members]
            try:
                await asyncio.gather(*watching)
            finally:
                for task in watching:  # one failed: the others stop too (the run ends)
                    task.cancel()
    except OwnershipLost:
        raise  # another attempt of the parent took over: the members are its to wait for
    except BaseException:
        # The parent was cancelled, timed out, or could not follow a member: the members still
        # going are cancelled.
        for member in ensemble.members:
            if member not in outcomes:
                await _cancel_child(nc, tenant, child_ids[member], "the ensemble run was cancelled")
        raise
    ok = [m for m in ensemble.members if outcomes[m].finished.status == "completed"]
    if len(ok) < ensemble.min_success:
        failures = "; ".join(_failure(m, outcomes[m].finished) for m in ensemble.members if m not in ok)
        raise MembersFailed(
            f"{len(ok)} of {len(ensemble.members)} members answered, {ensemble.min_success} needed: {failures}"
        )
    return [(m, outcomes[m]) for m in ensemble.members]


def _failure(member: str, finished: E.MemberFinishedData) -> str:
    return f"{member} {finished.status}" + (f" ({finished.error.message})" if finished.error else "")


async def _member_outcome(
    nc: NATS, tenant: str, member: str, run_id: str,
    timeout: float,  # noqa: ASYNC109 - the member's budget: at its end the child is cancelled and reported
    started: float, finished_before: E.MemberFinishedData | None,
) -> MemberOutcome:
    subject = subjects.run_events(tenant, member, run_id)
    ended = await wait_for_end(nc, subject, timeout)
    duration = round((time.perf_counter() - started) * 1000, 3)
    if ended is None:
        await _cancel_child(nc, tenant, run_id, f"the member did not answer within {timeout:g} s")
        finished = E.MemberFinishedData(member=member, run_id=run_id, status="timeout", duration_ms=duration,
                                        error=ErrorInfo(type=ErrorKind.TIMEOUT,
                                                        message=f"no answer within {timeout:g} s"))
        return MemberOutcome(finished_before or finished)
    record = fold_record(ended)
    if record is None:  # its terminal event was just read: only a failed read leaves nothing
        raise eventlog.EventLogError(f"{subject}: no events to read")
    status = record.status if record.status in ("completed", "failed", "cancelled") else "failed"
    error = None
    if status != "completed":
        err = record.error or {}
        error = ErrorInfo(type=err.get("type") or status, message=err.get("message") or record.reason or status)
    usage = Usage(**{k: v for k, v in (record.usage or {}).items() if k in Usage.model_fields})
    finished = finished_before or E.MemberFinishedData(
        member=member, run_id=run_id, status=status, duration_ms=duration, error=error, usage=usage
    )
    return MemberOutcome(finished, record.answer if status == "completed" else None)


async def _read_ended(nc: NATS, subject: str) -> list[eventlog.StoredEvent]:
    """The events of an ended run, up to its terminal event: re-read (within
    eventlog.READ_RETRY_SECONDS) while the answer lacks it, as a replica behind the one that
    answered before may (agentstream.eventlog)."""

    async def read() -> list[eventlog.StoredEvent]:
        events = await eventlog.read_list(nc, subject)
        if not events or not E.is_terminal(events[-1].type):
            raise eventlog.EventLogError(f"{subject}: the terminal event is not in this replica's answer yet")
        return events

    return await eventlog.retrying(read)


async def _cancel_child(nc: NATS, tenant: str, run_id: str, reason: str) -> None:
    try:
        await nc.jetstream().publish(subjects.control(tenant, run_id),
                                     RunControl(reason=reason).model_dump_json().encode(), timeout=5.0)
    except Exception as err:  # best effort; the child's own budget still ends it
        log.warning("could not cancel member run %s: %s", run_id, err)

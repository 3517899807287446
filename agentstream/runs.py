"""Submitting a run: what the edge (and any other publisher) does to start one.

Two writes, made concurrently: the run request to ``agents.{tenant}.{agent}.run`` (stream
AGENT_RUNS, ``Nats-Msg-Id`` = run id, so a repeated submit inside the duplicate window is stored
once) and the run's entry in the RUN_INDEX bucket (created only if absent, so a repeated submit
after the window is recognised too). The run's events, ``run.queued`` first, are written by the
agent runner that takes it: an edge may not write ``runs.>`` (docs/security.md). A service that
submits over NATS directly publishes only the request; its run then has no index entry until a
runner takes it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import PubAck
from nats.js.errors import KeyWrongLastSequenceError, NoStreamResponseError
from nats.js.kv import KeyValue
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from agentstream import eventlog, runlog, tracing
from agentstream.bus import jetstream
from agentstream.retry import first_then_retry
from schemas import events as E
from schemas import headers as H
from schemas import subjects
from schemas.runs import RunIndexEntry, RunRequest


class SubmitError(Exception):
    """The run request could not be stored (NATS unreachable, JetStream unavailable)."""


@dataclass(frozen=True)
class Submitted:
    """A stored submission: ``run_id``, and ``duplicate`` when this run already existed."""

    run_id: str
    duplicate: bool


def queued_event(tenant: str, agent: str, request: RunRequest) -> bytes:
    """The ``run.queued`` event of a run request (the same whoever writes it)."""
    return E.RunQueued(
        run_id=request.run_id, tenant=tenant, agent=agent, message_id=request.message_id, attempt=0,
        ts=request.submitted_at,
        data=E.RunQueuedData(
            message=request.message,
            history_length=len(request.history),
            client_tools=[t.function.get("name", "") for t in request.tools],
            conversation_id=request.conversation_id,
            history=request.kept_history(),
            echo=request.echo,
            schedule=request.schedule,
        ),
    ).model_dump_json().encode()


async def write_queued(nc: NATS, tenant: str, agent: str, request: RunRequest) -> int:
    """Store ``run.queued`` as the run's first event; returns its sequence.

    Raises eventlog.WriteConflict if the run already has events.
    """
    return await eventlog.append(
        nc,
        subjects.run_events(tenant, agent, request.run_id),
        queued_event(tenant, agent, request),
        event_type=E.RUN_QUEUED,
        msg_id=f"{request.run_id}:queued",
        expected_last_seq=0,
        retry_seconds=10.0,
    )


INDEX_MESSAGE_CHARS = 2000
"""How much of a run's message its index entry keeps."""


def index_entry(agent: str, request: RunRequest) -> RunIndexEntry:
    """The RUN_INDEX entry of a run request."""
    return RunIndexEntry(run_id=request.run_id, agent=agent, message_id=request.message_id,
                         conversation_id=request.conversation_id, parent_run_id=request.parent_run_id,
                         submitted_at=request.submitted_at,
                         message=request.message[:INDEX_MESSAGE_CHARS] if request.message else None,
                         echo=request.echo, schedule=request.schedule)


async def submit(
    nc: NATS, tenant: str, agent: str, request: RunRequest,
    *, index: KeyValue | None, member: bool = False, log: bool = False,
    timeout: float = 10.0,  # noqa: ASYNC109 - the window for retries, then a SubmitError
) -> Submitted:
    """Store the run request, and its entry in ``index`` (the RUN_INDEX bucket; None: none).
    ``member``: an ensemble member's child run (``agents.{tenant}.{agent}.member``); ``log``:
    also write its ``submitted`` entry in the run log (agentstream/runlog.py), and say so in the
    request, so the runner does not write it again. The current trace context goes with the
    request (``traceparent`` header) when tracing is on.

    ``timeout``: seconds to keep retrying while NATS is unreachable. Raises SubmitError.
    """
    js = jetstream(nc)
    if log:
        request = request.model_copy(update={"logged": True})
    payload = request.model_dump_json().encode()
    subject = subjects.member_request(tenant, agent) if member else subjects.run_request(tenant, agent)
    headers = {H.MSG_ID: request.run_id}
    # The current span's context is stored with the request: every attempt of the run, on any
    # runner, continues this trace (agentstream.tracing).
    tracing.inject(headers)
    # NoStreamResponseError is "no responders" from js.publish: JetStream still loading after a
    # nats-server restart (nats-py raises it instead of NoRespondersError).
    transient = (nats.errors.TimeoutError, NoStreamResponseError, nats.errors.ConnectionReconnectingError)

    def retrying() -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_delay(timeout),
            wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
            retry=retry_if_exception_type(transient),
            reraise=True,
        )

    async def publish_request() -> PubAck:
        return await first_then_retry(
            lambda: js.publish(subject, payload, headers=headers, timeout=2.0),
            lambda err: isinstance(err, transient),
            retrying,
        )

    async def indexed() -> bool:
        """Create the index entry; True when it existed (a repeated submission)."""
        if index is None:
            return False
        key = subjects.run_index_key(tenant, request.run_id)
        value = index_entry(agent, request).model_dump_json().encode()
        try:
            await first_then_retry(lambda: index.create(key, value), lambda err: isinstance(err, transient), retrying)
        except KeyWrongLastSequenceError:
            return True
        return False

    async def logged() -> None:
        if log:
            await runlog.write(nc, tenant, runlog.submitted_entry(agent, request))

    ack, existed, _ = await asyncio.gather(publish_request(), indexed(), logged(), return_exceptions=True)
    for outcome in (ack, existed):
        if isinstance(outcome, BaseException):
            if eventlog.is_storage_full(outcome):
                eventlog.storage_full(f"the run request on {subject}", outcome)
            raise _not_stored(outcome) from outcome
    assert not isinstance(ack, BaseException) and not isinstance(existed, BaseException)
    eventlog.storage_ok()
    return Submitted(run_id=request.run_id, duplicate=bool(ack.duplicate) or bool(existed))


async def read_index(index: KeyValue, tenant: str, run_id: str) -> RunIndexEntry | None:
    """A run's RUN_INDEX entry, or None. Raises nats errors when the bucket cannot be read."""
    try:
        entry = await index.get(subjects.run_index_key(tenant, run_id))
    except nats.js.errors.KeyNotFoundError:
        return None
    return RunIndexEntry.model_validate_json(entry.value or b"{}")


def _not_stored(err: BaseException) -> SubmitError:
    return SubmitError(f"could not store the run request: {type(err).__name__}: {err}")

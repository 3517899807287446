"""Submitting a run: what the edge (and any other publisher) does to start one.

Two writes, made concurrently: the run request to ``agents.{tenant}.{agent}.run`` (stream
AGENT_RUNS, ``Nats-Msg-Id`` = run id, so a repeated submit inside the duplicate window is stored
once) and ``run.queued`` as the first event on the run's subject (written only if the subject is
empty, so a repeated submit after the window is recognised too). Whichever order they land in is
safe: a runner that finds no ``run.queued`` writes the same one itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from agentstream import eventlog
from agentstream.bus import jetstream
from agentstream.retry import first_then_retry
from schemas import events as E
from schemas import headers as H
from schemas import subjects
from schemas.runs import RunRequest


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


async def submit(
    nc: NATS, tenant: str, agent: str, request: RunRequest,
    *, timeout: float = 10.0,  # noqa: ASYNC109 - the window for retries, then a SubmitError
) -> Submitted:
    """Store the run request and its ``run.queued`` event. Raises SubmitError.

    ``timeout``: seconds to keep retrying while NATS is unreachable.
    """
    js = jetstream(nc)
    payload = request.model_dump_json().encode()
    subject = subjects.run_request(tenant, agent)
    # NoStreamResponseError is "no responders" from js.publish: JetStream still loading after a
    # nats-server restart (nats-py raises it instead of NoRespondersError).
    transient = (nats.errors.TimeoutError, NoStreamResponseError, nats.errors.ConnectionReconnectingError)

    async def publish_request() -> PubAck:
        return await first_then_retry(
            lambda: js.publish(subject, payload, headers={H.MSG_ID: request.run_id}, timeout=2.0),
            lambda err: isinstance(err, transient),
            lambda: AsyncRetrying(
                stop=stop_after_delay(timeout),
                wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
                retry=retry_if_exception_type(transient),
                reraise=True,
            ),
        )

    async def queued() -> bool:
        try:
            await write_queued(nc, tenant, agent, request)
            return False
        except eventlog.WriteConflict:
            return True

    ack, existed = await asyncio.gather(publish_request(), queued(), return_exceptions=True)
    if isinstance(ack, BaseException):
        raise _not_stored(ack) from ack
    if isinstance(existed, BaseException):
        raise _not_stored(existed) from existed
    return Submitted(run_id=request.run_id, duplicate=bool(ack.duplicate) or existed)


def _not_stored(err: BaseException) -> SubmitError:
    return SubmitError(f"could not store the run request: {type(err).__name__}: {err}")

"""Enqueueing a run's webhook deliveries: when a subscribed event is stored, one job per URL on
``webhooks.{tenant}.{run_id}`` (stream WEBHOOK_JOBS), which webhook senders deliver.

A run's webhooks are its request's (``webhook`` on a submit, a schedule's) and its agent file's
(``webhooks:``), one per URL (schemas/webhooks.py). Enqueueing is idempotent, so it is done again
whenever in doubt: each job carries ``Nats-Msg-Id`` = run and delivery (JetStream stores it once
within its duplicate window), and a sender drops a job whose delivery already ended. So:

- every subscribed event is enqueued once it is stored (agent_runner/event_writer.py);
- a run's terminal event is enqueued before its request is acked: when that fails the request is
  handed back, and the attempt that takes it (the run has ended: nothing to run) enqueues again;
- a resumed run (its runner died) enqueues the subscribed events of its earlier attempts again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.js.errors import NoStreamResponseError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from agentstream.bus import jetstream
from agentstream.eventlog import StoredEvent
from schemas import events as E
from schemas import headers as H
from schemas import subjects
from schemas.webhooks import WebhookJob, WebhookTarget, delivery_id, job_msg_id, webhook_id

log = logging.getLogger(__name__)

ENQUEUE_PATIENCE = 10.0
"""Seconds one enqueue is retried while NATS is unreachable."""
_TRANSIENT = (nats.errors.TimeoutError, NoStreamResponseError, nats.errors.ConnectionReconnectingError,
              nats.errors.NoRespondersError)


class WebhookOutbox:
    """The webhook deliveries of one run: ``targets`` (merged, one per URL) of run ``run_id`` of
    ``agent`` for ``tenant``; ``tenant_urls``: those the run's request named. ``ended`` becomes True
    once the run's terminal event is enqueued."""

    def __init__(self, nc: NATS, tenant: str, agent: str, run_id: str, targets: list[WebhookTarget],
                 *, tenant_urls: set[str] | frozenset[str] = frozenset()):
        self.nc = nc
        self.tenant = tenant
        self.agent = agent
        self.run_id = run_id
        self.targets = targets
        self.tenant_urls = tenant_urls
        """The URLs the tenant gave (the request's); the others (the agent file's) it sees only as origins."""
        self.ended = False

    def wants(self, event_type: str) -> bool:
        """True when some webhook of the run subscribes to ``event_type``."""
        return any(event_type in t.events for t in self.targets)

    async def enqueue(self, event_type: str, seq: int, payload: bytes) -> int:
        """Publish the jobs of stored event ``seq`` (its JSON ``payload``) for every webhook that
        subscribes to it; returns how many. Raises nats errors after ENQUEUE_PATIENCE seconds."""
        wanted = [t for t in self.targets if event_type in t.events]
        if not wanted:
            return 0
        event = orjson.loads(payload)
        subject = subjects.webhook_job(self.tenant, self.run_id)
        for target in wanted:
            delivery = delivery_id(seq, target.url)
            job = WebhookJob(webhook_id=webhook_id(self.run_id, seq), delivery_id=delivery, url=target.url,
                             event_type=event_type, seq=seq, agent=self.agent, event=event,
                             enqueued_at=datetime.now(UTC), url_hidden=target.url not in self.tenant_urls)
            data = job.model_dump_json().encode()
            headers = {H.MSG_ID: job_msg_id(self.run_id, delivery)}
            async for attempt in AsyncRetrying(stop=stop_after_delay(ENQUEUE_PATIENCE),
                                               wait=wait_exponential_jitter(initial=0.05, max=1.0),
                                               retry=retry_if_exception_type(_TRANSIENT), reraise=True):
                with attempt:
                    await jetstream(self.nc).publish(subject, data, headers=headers, timeout=2.0)
        if E.is_terminal(event_type):
            self.ended = True
        return len(wanted)

    async def stored(self, event_type: str, seq: int, payload: bytes) -> None:
        """Called by the run's writer after each stored event: enqueue it if subscribed. Never
        raises (a run is not failed by its webhooks): a failure is logged, and a terminal event is
        enqueued again before the request is acked (:meth:`ensure_ended`)."""
        if not self.wants(event_type):
            return
        try:
            await self.enqueue(event_type, seq, payload)
        except Exception as err:  # NATS unreachable for ENQUEUE_PATIENCE: logged, retried at the end
            log.warning("run %s: webhook jobs of %s (event %d) not enqueued: %s", self.run_id, event_type, seq, err)

    async def replay(self, events: list[StoredEvent]) -> None:
        """Enqueue again every subscribed event of a resumed run's earlier attempts (stored
        before a runner died, perhaps not enqueued). Never raises."""
        for event in events:
            await self.stored(event.type, event.seq, event.data)

    async def ensure_ended(self, last: StoredEvent | None) -> None:
        """Make sure the run's terminal event ``last`` (its latest event; nothing is done unless it
        is terminal) is enqueued. Raises nats errors when it cannot be (the caller hands the run's
        request back, so this is tried again)."""
        if self.ended or last is None or not E.is_terminal(last.type):
            return
        await self.enqueue(last.type, last.seq, last.data)
        self.ended = True

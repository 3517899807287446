"""Delivering webhook jobs: pull from WEBHOOK_JOBS, POST, record, ack or retry later.

Every webhook sender pulls from the one durable consumer ``webhook-senders``, so each job is with
one sender at a time and survives restarts of every process (README, Webhooks). For each job:

1. its record in WEBHOOK_DELIVERIES (``{tenant}.{run_id}.{delivery_id}``) is read, or made: a job
   whose delivery already ended (``delivered``, ``failed``) is acked and dropped, so a job enqueued
   twice (a runner that redid a run's end) is delivered once;
2. the record is claimed by compare-and-set for the length of one POST (a second copy of the job
   held by another sender waits), then the POST is made: signed with the tenant's secret (Standard
   Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), to an address checked
   again now (webhook_sender/net.py);
3. the attempt is recorded (status, time, error); a 2xx ends it ``delivered`` (ack); a refused
   address ends it ``failed`` (ack); anything else is retried: the job is nak'ed with a delay,
   ``WEBHOOK_RETRY_FIRST_DELAY`` doubling up to ``WEBHOOK_RETRY_MAX_DELAY``, until
   ``WEBHOOK_RETRY_FOR`` has passed since its first attempt (then ``failed``).

A sender that dies mid-POST stops sending progress; after the consumer's ack wait another sender
gets the job and, its claim having lapsed, POSTs again with the same ``webhook-id``: deliveries are
at least once, and receivers drop repeats by ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook

from agentstream import logs, webhook_secrets
from agentstream.kvmirror import KvMirror
from agentstream.settings import Settings
from agentstream.tasks import finish_within, stop_loop
from schemas import subjects as S
from schemas.webhooks import (
    MAX_ATTEMPTS_KEPT,
    DeliveryAttempt,
    DeliveryRecord,
    WebhookJob,
    WebhookSecret,
    shown_url,
)
from webhook_sender import net

log = logging.getLogger(__name__)

MAX_TRIES = 8
"""Compare-and-set attempts on one record before the job is handed back for a moment."""
USER_AGENT = "agentstream-webhooks/1"
FETCH_WAIT = 5.0
"""Seconds one fetch waits for a job before asking again."""
MORE_WAIT = 0.05
"""Seconds the fetch of "what else is there now" may wait (it returns at once when some are there)."""


def retry_delay(attempts: int, *, first: float, most: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: ``first`` doubling per attempt,
    at most ``most``, with ±10 % jitter (so deliveries failing together spread out)."""
    base: float = min(first * 2 ** max(attempts - 1, 0), most)
    return base * random.uniform(0.9, 1.1)


@dataclass(frozen=True)
class Outcome:
    """What becomes of the job: acked (``delay`` None) or handed back to be tried again after
    ``delay`` seconds."""

    delay: float | None = None


class WebhookSender:
    """One webhook sender's work loop. ``start()``, then ``stop(grace)`` (seconds)."""

    def __init__(self, settings: Settings, nc: NATS, *, name: str):
        self.settings = settings
        self.nc = nc
        self.js = nc.jetstream()
        self.name = name
        self.http = httpx.AsyncClient(trust_env=False, headers={"user-agent": USER_AGENT})
        self.deliveries: KeyValue | None = None
        self.secrets: KeyValue | None = None
        self._secrets: KvMirror | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._room = asyncio.Event()
        self.delivered = 0

    async def start(self) -> None:
        """Open the buckets, bind to the shared consumer, start pulling."""
        self.deliveries = await self.js.key_value(S.WEBHOOK_DELIVERIES_BUCKET)
        self.secrets = await self.js.key_value(S.WEBHOOK_SECRETS_BUCKET)
        self._secrets = KvMirror(self.js, S.WEBHOOK_SECRETS_BUCKET)  # a rotation applies at once
        await self._secrets.start()
        self._sub = await self.js.pull_subscribe_bind(durable=S.WEBHOOK_SENDERS_CONSUMER,
                                                      stream=S.WEBHOOK_JOBS_STREAM)
        self._loop = asyncio.create_task(self._pull())

    async def stop(self, grace: float) -> None:
        """Stop pulling; let POSTs under way finish for ``grace`` seconds; hand the rest back."""
        self._stopping.set()
        await stop_loop(self._loop)
        await finish_within(self._tasks, grace, after_cancel=5)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._secrets is not None:
            await self._secrets.stop()
        await self.http.aclose()

    async def _pull(self) -> None:
        assert self._sub is not None
        while not self._stopping.is_set():
            room = self.settings.webhook_concurrency - len(self._tasks)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            # One job waited for, then what else is there at once: a fetch of several keeps waiting
            # for the rest once one has come (docs/nats.md, "The work queue and its consumers").
            try:
                msgs = await self._sub.fetch(1, timeout=FETCH_WAIT)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except (nats.errors.Error, nats.js.errors.Error) as err:
                log.warning("pulling webhook jobs failed (%s); retrying", err)
                await asyncio.sleep(0.5)
                continue
            if room > 1:
                with contextlib.suppress(TimeoutError, nats.errors.Error, nats.js.errors.Error):
                    msgs += await self._sub.fetch(room - 1, timeout=MORE_WAIT)
            for msg in msgs:
                task = asyncio.create_task(self._take(msg))
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.set()

    async def _take(self, msg: Msg) -> None:
        try:
            tenant, run_id = S.parse_webhook_job(msg.subject)
            job = WebhookJob.model_validate_json(msg.data)
        except (S.SubjectTokenError, ValidationError) as err:
            log.error("dropping an unreadable webhook job on %s: %s", msg.subject, err)
            with contextlib.suppress(Exception):
                await msg.term()
            return
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            with logs.bound(run_id=run_id, tenant=tenant, agent=job.agent):  # its log lines name the run
                outcome = await self.deliver(tenant, run_id, job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()  # stopping: another sender takes it at once
            raise
        except Exception as err:  # NATS unavailable, a bug: the job is tried again shortly
            log.warning("webhook job %s of run %s: %s: %s; retrying", job.delivery_id, run_id, type(err).__name__, err)
            outcome = Outcome(delay=2.0)
        finally:
            keep_alive.cancel()
        with contextlib.suppress(Exception):  # a lost ack or nak: the ack wait hands the job back
            if outcome.delay is None:
                await msg.ack()
            else:
                await msg.nak(delay=outcome.delay)

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(5.0)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def deliver(self, tenant: str, run_id: str, job: WebhookJob) -> Outcome:
        """Make one attempt of the job's delivery if one is due (see the module docstring).
        Raises nats errors when the record cannot be read or written."""
        assert self.deliveries is not None
        key = S.webhook_delivery_key(tenant, run_id, job.delivery_id)
        retry_for = timedelta(seconds=self.settings.webhook_retry_for)
        for _ in range(MAX_TRIES):
            record, revision = await self._load(key)
            now = datetime.now(UTC)
            if record is None:
                record = DeliveryRecord(webhook_id=job.webhook_id, delivery_id=job.delivery_id,
                                        url=shown_url(job.url, hidden=job.url_hidden), event_type=job.event_type,
                                        seq=job.seq, created_at=now)
            if record.state != "pending":
                return Outcome()  # delivered or given up already: this copy of the job is a repeat
            if record.claimed_until is not None and record.claimed_until > now:
                return Outcome(delay=(record.claimed_until - now).total_seconds() + 0.1)
            if record.next_attempt_at is not None and record.next_attempt_at > now + timedelta(seconds=0.5):
                return Outcome(delay=(record.next_attempt_at - now).total_seconds())
            claim = timedelta(seconds=self.settings.webhook_timeout + 10)
            claimed = record.model_copy(update={"claimed_until": now + claim})
            try:
                revision = await self._save(key, claimed, revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # changed meanwhile (another copy of the job): look again
            break
        else:
            return Outcome(delay=1.0)
        attempt, final = await self._attempt(tenant, job)
        for _ in range(MAX_TRIES):
            now = datetime.now(UTC)
            done = record.model_copy(update={
                "attempts": [*record.attempts, attempt][-MAX_ATTEMPTS_KEPT:],
                "attempt_count": record.attempt_count + 1, "claimed_until": None, "next_attempt_at": None,
            })
            delay: float | None = None
            if attempt.status is not None and 200 <= attempt.status < 300:
                done.state, done.delivered_at = "delivered", now
            elif final:
                done.state, done.gave_up = "failed", attempt.error
            elif now >= record.created_at + retry_for:
                done.state = "failed"
                done.gave_up = (f"no 2xx answer in {done.attempt_count} attempts over "
                                f"{self.settings.webhook_retry_for:g} s (WEBHOOK_RETRY_FOR)")
            else:
                wait = retry_delay(done.attempt_count, first=self.settings.webhook_retry_first_delay,
                                   most=self.settings.webhook_retry_max_delay)
                due = min(now + timedelta(seconds=wait), record.created_at + retry_for)
                done.next_attempt_at = due
                delay = max((due - now).total_seconds(), 0.0)
            try:
                await self._save(key, done, revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                current, revision = await self._load(key)
                if current is None or current.state != "pending":
                    return Outcome()
                record = current
                continue
            if done.state == "delivered":
                self.delivered += 1
                log.info("webhook %s (%s) delivered to %s after %d attempt(s)", job.webhook_id, job.event_type,
                         job.url, done.attempt_count)
            elif done.state == "failed":
                log.warning("webhook %s to %s given up: %s", job.webhook_id, job.url, done.gave_up)
            return Outcome(delay=delay)
        return Outcome(delay=1.0)

    async def _attempt(self, tenant: str, job: WebhookJob) -> tuple[DeliveryAttempt, bool]:
        """One signed POST; returns the attempt and whether it is final (the address is refused)."""
        body = orjson.dumps({"type": job.event_type, "timestamp": job.event.get("ts"), "data": job.event})
        now = datetime.now(UTC)
        secret = await self._secret(tenant)
        text = body.decode()
        signature = " ".join(Webhook(key).sign(job.webhook_id, now, text) for key in secret.signing_secrets(now))
        headers = {
            "content-type": "application/json",
            "webhook-id": job.webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
        started = time.perf_counter()

        def took() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        try:
            async with asyncio.timeout(self.settings.webhook_timeout):
                status = await net.post(self.http, job.url, body, headers,
                                        allow_hosts=self.settings.webhook_allow_hosts,
                                        timeout=self.settings.webhook_timeout)
        except net.WebhookRefused as err:
            return DeliveryAttempt(at=now, error=f"{err.kind}: {err.message}", ms=took()), err.final
        except (TimeoutError, httpx.TimeoutException):
            return DeliveryAttempt(at=now, error=f"timeout: no answer within {self.settings.webhook_timeout:g} s",
                                   ms=took()), False
        except httpx.HTTPError as err:
            return DeliveryAttempt(at=now, error=f"connection_error: {err or type(err).__name__}", ms=took()), False
        error = None if 200 <= status < 300 else f"http_status: {status}"
        return DeliveryAttempt(at=now, status=status, error=error, ms=took()), False

    async def _secret(self, tenant: str) -> WebhookSecret:
        """The tenant's secret as the bucket holds it now (mirrored), made if it has none."""
        assert self.secrets is not None and self._secrets is not None
        entry = self._secrets.entries.get(S.webhook_secret_key(tenant))
        if entry is not None:
            with contextlib.suppress(ValidationError):
                return WebhookSecret.model_validate_json(entry.value)
        return await webhook_secrets.get_or_create(self.secrets, tenant)

    async def _load(self, key: str) -> tuple[DeliveryRecord | None, int]:
        assert self.deliveries is not None
        try:
            entry = await self.deliveries.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        return DeliveryRecord.model_validate_json(entry.value or b"{}"), int(entry.revision or 0)

    async def _save(self, key: str, record: DeliveryRecord, revision: int) -> int:
        """Write ``record`` if the entry is still at ``revision`` (0: absent); its new revision.
        Raises KeyWrongLastSequenceError when it changed."""
        assert self.deliveries is not None
        value = record.model_dump_json().encode()
        if revision:
            return int(await self.deliveries.update(key, value, last=revision))
        return int(await self.deliveries.create(key, value))

"""Webhooks: where a run's events are POSTed, the delivery job, and what a delivery records.

A webhook (:class:`WebhookTarget`) is a URL and the event types sent to it (README, Webhooks).
It comes from a submit (``webhook`` on ``POST /api/agents/{name}/chat``, or on a schedule) or from
the agent file (``webhooks:``). When the agent runner has stored a subscribed event it publishes a
:class:`WebhookJob` to ``webhooks.{tenant}.{run_id}`` (stream WEBHOOK_JOBS, ``Nats-Msg-Id`` =
:func:`job_msg_id`); a webhook sender POSTs it and keeps a :class:`DeliveryRecord` in the
WEBHOOK_DELIVERIES bucket.

Each delivery follows Standard Webhooks (https://www.standardwebhooks.com, "Signature scheme"):
headers ``webhook-id`` (:func:`webhook_id`: one per event, the same on every retry, so a receiver
can drop a repeat), ``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` with the tenant's secret); the body is
``{"type", "timestamp", "data"}`` ("Payload structure"), ``data`` being the run event as stored.
"""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, StringConstraints, field_validator

from schemas.common import Strict, Token
from schemas.events import WEBHOOK_DEFAULT_EVENTS, webhook_event_types

MAX_URL_CHARS = 2000
MAX_ATTEMPTS_KEPT = 20
"""Attempts a delivery record keeps (the newest); ``attempt_count`` counts them all."""
SECRET_PREFIX = "whsec_"
"""Standard Webhooks' prefix of a base64 signing secret (what the ``standardwebhooks`` package reads)."""


class WebhookTarget(Strict):
    """A webhook: ``url`` (absolute ``http://`` or ``https://``, no ``user:password@``, at most 2,000
    characters) and ``events``, the event types POSTed to it (default: the terminal events,
    ``run.completed``, ``run.failed``, ``run.cancelled``; any type of
    :func:`schemas.events.webhook_event_types` may be named).

    Which addresses it may reach is decided where it is used (the edge at submit, the webhook
    sender at each delivery: public addresses only, unless WEBHOOK_ALLOW_HOSTS lists the host).
    """

    url: Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_CHARS)]
    events: list[str] = Field(default_factory=lambda: list(WEBHOOK_DEFAULT_EVENTS), min_length=1, max_length=32)

    @field_validator("url")
    @classmethod
    def _absolute_http(cls, url: str) -> str:
        problem = url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return url

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        allowed = webhook_event_types()
        unknown = [e for e in events if e not in allowed]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(map(repr, unknown))}; a webhook may send: "
                             f"{', '.join(allowed)}")
        if len(set(events)) != len(events):
            raise ValueError("an event type is listed twice")
        return events


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook's URL (not absolute http(s), no host, credentials in it,
    whitespace), or None."""
    if any(c.isspace() for c in url):
        return "a webhook URL may not contain whitespace"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        return f"not a valid URL: {err}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "a webhook URL must be an absolute http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        return "a webhook URL may not carry credentials (user:password@); the signature authenticates us"
    if port == 0:
        return "a webhook URL may not name port 0"
    return None


def shown_url(url: str, *, hidden: bool) -> str:
    """``url`` as the API shows it: whole when the caller gave it, else (an agent file's webhook,
    whose path or query often carries a token) only its origin and ``/…``."""
    if not hidden:
        return url
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/…"


def merged_targets(*groups: list[WebhookTarget]) -> list[WebhookTarget]:
    """The webhooks of a run from all its sources (the submit's, the agent file's), one per URL:
    the same URL named twice receives the union of the event types (each event once)."""
    by_url: dict[str, list[str]] = {}
    for group in groups:
        for target in group:
            events = by_url.setdefault(target.url, [])
            events.extend(e for e in target.events if e not in events)
    return [WebhookTarget(url=url, events=events) for url, events in by_url.items()]


def webhook_id(run_id: str, seq: int) -> str:
    """The ``webhook-id`` of one event: ``evt_{run_id}_{seq}`` (its stream sequence in RUN_EVENTS).
    The same for every retry and every re-enqueue of that event, and for every URL it goes to."""
    return f"evt_{run_id}_{seq}"


def delivery_id(seq: int, url: str) -> str:
    """The id of one event's delivery to one URL (a subject token): ``{seq}-{sha256(url), 16 hex}``."""
    return f"{seq}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def job_msg_id(run_id: str, delivery: str) -> str:
    """The ``Nats-Msg-Id`` of a delivery job: JetStream stores a re-enqueued job once."""
    return f"{run_id}:{delivery}"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes (Standard Webhooks,
    "Symmetric signatures": secrets of 24 to 64 bytes)."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode("ascii")


class WebhookJob(Strict):
    """One event to POST to one URL, published to ``webhooks.{tenant}.{run_id}`` (the tenant and
    the run come from the subject, never from here).

    ``webhook_id`` (:func:`webhook_id`), ``delivery_id`` (:func:`delivery_id`), ``url``,
    ``event_type``, ``seq`` (the event's sequence in RUN_EVENTS), ``agent``, ``event`` (the run
    event as stored: the body's ``data``), ``enqueued_at`` (UTC); ``url_hidden``: the URL comes
    from the agent file, not from the tenant, and is shown to it only as :func:`shown_url` does.
    """

    webhook_id: Annotated[str, StringConstraints(min_length=1, max_length=120)]
    delivery_id: Token
    url: Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_CHARS)]
    event_type: str
    seq: int = Field(ge=1)
    agent: Token
    event: dict[str, Any]
    enqueued_at: datetime
    url_hidden: bool = False


class DeliveryAttempt(Strict):
    """One POST: when (``at``, UTC), the HTTP ``status`` (None when no answer came), ``error``
    (why it failed: a status, a timeout, a refused address), how long it took (``ms``)."""

    at: datetime
    status: int | None = None
    error: str | None = None
    ms: float = 0.0


DeliveryState = Literal["pending", "delivered", "failed"]


class DeliveryRecord(Strict):
    """A delivery's record in the WEBHOOK_DELIVERIES bucket (``{tenant}.{run_id}.{delivery_id}``),
    changed only by compare-and-set: ``pending`` until a POST is answered 2xx (``delivered``) or it
    is given up (``failed``: the retry period ran out, or the address is refused).

    ``attempts``: the newest :data:`MAX_ATTEMPTS_KEPT`; ``attempt_count``: all of them;
    ``next_attempt_at``: when the next retry is due (UTC); ``claimed_until``: a sender is POSTing
    it until then (another sender holding a repeated job waits); ``created_at``: when the first
    sender took it (the retry period counts from here).
    """

    webhook_id: str
    delivery_id: Token
    url: str
    event_type: str
    seq: int
    state: DeliveryState = "pending"
    attempts: list[DeliveryAttempt] = Field(default_factory=list)
    attempt_count: int = 0
    created_at: datetime
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    gave_up: str | None = None
    claimed_until: datetime | None = None

    def view(self) -> dict[str, Any]:
        """What ``GET /api/runs/{id}`` shows of it (``webhooks``)."""
        return self.model_dump(mode="json", exclude={"claimed_until", "delivery_id"})


class WebhookSecret(Strict):
    """A tenant's entry in the WEBHOOK_SECRETS bucket: the ``secret`` deliveries are signed with,
    when it was made, and after a rotation the ``previous`` one, which keeps signing too (a second
    signature in ``webhook-signature``) until ``previous_until`` (UTC), so receivers can switch."""

    secret: str
    created_at: datetime
    previous: str | None = None
    previous_until: datetime | None = None

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets a delivery at ``now`` is signed with: the current one, and the previous one
        while it is still honoured."""
        keys = [self.secret]
        if self.previous is not None and self.previous_until is not None and now < self.previous_until:
            keys.append(self.previous)
        return keys

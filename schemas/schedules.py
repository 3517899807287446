"""Schedules: an agent run fired by time, stored in the SCHEDULES bucket (``{tenant}.{schedule_id}``).

A schedule names an agent, when (``cron`` in a time zone, or ``every`` N seconds), the
``message`` each run gets, an optional ``conversation_id`` (each run is its next turn) and what
happens to ticks missed while nothing could fire them (``catch_up``: ``none``, ``one``, ``all``;
agentstream/ticks.py). Edges fire the ticks (edge/scheduler.py), each exactly once: the tick is
claimed by compare-and-set on the entry, and its run id is derived from the schedule and the
tick (:func:`scheduled_run_id`), so a repeated submission is the same run.

``cron`` is croniter's syntax: five fields (minute hour day month weekday), or six with seconds
last (``* * * * * */10``), read in ``timezone`` (an IANA name, default UTC). ``every`` is a
whole number of seconds (at least 1), or a duration such as ``90s``, ``10m``, ``1h30m``, ``2d``
(LocalAI's ``periodic_runs`` values, e.g. ``10m``).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import Field, StringConstraints, field_validator

from schemas.common import Strict, Token
from schemas.webhooks import WebhookTarget

MAX_MESSAGE_CHARS = 200_000
MAX_EVERY_SECONDS = 366 * 86400
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNIT_SECONDS = (86400, 3600, 60, 1)
CatchUp = Literal["none", "one", "all"]
Source = Literal["api", "agent_file"]


class ScheduleError(ValueError):
    """A schedule that cannot be: ``field`` names what is wrong (``cron``, ``every``, ``timezone``...)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def parse_every(value: object, field: str = "every") -> int:
    """Seconds between runs: an int (at least 1), or a duration string of whole days, hours,
    minutes and seconds (``90s``, ``10m``, ``1h30m``, ``2d``; digits alone are seconds). At most
    366 days. Raises ScheduleError naming ``field``."""
    if isinstance(value, bool):
        raise ScheduleError(field, f"{field} must be a number of seconds or a duration such as '10m'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float) and value.is_integer():
        seconds = int(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        match = _DURATION.fullmatch(text) if not text.isdigit() else None
        if text.isdigit():
            seconds = int(text)
        elif match is not None and any(match.groups()):
            seconds = sum(int(g or 0) * unit for g, unit in zip(match.groups(), _UNIT_SECONDS, strict=True))
        else:
            raise ScheduleError(field, f"{field} {value[:40]!r} is not a duration: use whole seconds (60) or "
                                "d/h/m/s units (90s, 10m, 1h30m, 2d)")
    else:
        raise ScheduleError(field, f"{field} must be a whole number of seconds or a duration such as '10m'")
    if seconds < 1:
        raise ScheduleError(field, f"{field} must be at least 1 second")
    if seconds > MAX_EVERY_SECONDS:
        raise ScheduleError(field, f"{field} may be at most 366 days")
    return seconds


def check_timezone(name: str, field: str = "timezone") -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Berlin``, ``UTC``). Raises ScheduleError."""
    try:
        if not name or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(field, f"unknown time zone {name[:60]!r}: use an IANA name such as "
                            "'Europe/Berlin' or 'UTC'") from None


def check_cron(expression: str, zone: ZoneInfo, field: str = "cron") -> str:
    """A cron expression croniter reads (5 fields, or 6 with seconds last) that fires at least once
    (``0 0 30 2 *`` never does). Raises ScheduleError."""
    text = " ".join(expression.split())
    if len(text.split(" ")) not in (5, 6):
        raise ScheduleError(field, f"cron {expression[:80]!r} must have 5 fields (minute hour day month weekday) "
                            "or 6 (with seconds last)")
    if not croniter.is_valid(text):
        raise ScheduleError(field, f"cron {expression[:80]!r} is not a valid cron expression")
    try:
        croniter(text, datetime.now(zone)).get_next(float)
    except Exception:  # croniter raises its own errors for expressions that never match
        raise ScheduleError(field, f"cron {expression[:80]!r} never fires") from None
    return text


class ScheduleBody(Strict):
    """``POST /api/schedules``: ``agent``, ``cron`` or ``every``, ``timezone``, ``message``,
    ``conversation_id``, ``catch_up``, ``webhook`` (a URL, or ``{url, events}``) for every run it
    fires. :func:`checked` turns it into a definition or raises ScheduleError naming the field."""

    agent: Token
    cron: str | None = Field(default=None, max_length=200)
    every: int | None = None
    timezone: str = Field(default="UTC", max_length=64)
    message: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    conversation_id: str | None = Field(default=None, min_length=1, max_length=200)
    catch_up: CatchUp = "one"
    webhook: WebhookTarget | None = None

    @field_validator("every", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_every(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        check_timezone(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value, ZoneInfo("UTC"))

    @field_validator("webhook", mode="before")
    @classmethod
    def _url_alone(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value


class Firing(Strict):
    """A tick claimed and being submitted: ``tick`` (Unix seconds), ``claimed_at`` (UTC) and who
    claimed it. An edge finding a claim older than SCHEDULE_CLAIM_TIMEOUT submits the tick itself
    (the run id is the tick's, so the run is not doubled)."""

    tick: int
    claimed_at: datetime
    by: str


class Schedule(Strict):
    """A schedule as stored (SCHEDULES bucket). Times of ticks are Unix seconds.

    Definition: ``schedule_id``, ``agent``, ``cron`` or ``every`` (seconds), ``timezone``,
    ``message``, ``conversation_id``, ``catch_up``, ``webhook``, ``source`` (``api``, or
    ``agent_file``: an agent file's ``periodic_runs``), ``created_at``, ``anchor`` (the ticks of
    ``every`` are ``anchor + k * every``).

    State: ``paused``; ``last_tick`` (the latest tick fired or skipped: the next one is after it);
    ``firing`` (a claimed tick whose run is being submitted); counts ``fired`` and ``skipped``;
    ``last_run_id``, ``last_fired_at``; ``last_error`` (why the latest tick started no run: an
    agent no longer allowed, a full queue).
    """

    schedule_id: Token
    agent: Token
    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"
    message: str
    conversation_id: str | None = None
    catch_up: CatchUp = "one"
    webhook: WebhookTarget | None = None
    source: Source = "api"
    created_at: datetime
    anchor: int
    paused: bool = False
    last_tick: int
    firing: Firing | None = None
    fired: int = 0
    skipped: int = 0
    last_run_id: str | None = None
    last_fired_at: datetime | None = None
    last_error: str | None = None

    def view(self, next_tick: int | None) -> dict[str, Any]:
        """What the API shows: the schedule, its ``next_run_at`` (UTC, None while paused) and the
        time of its ``last_tick``."""
        doc = self.model_dump(mode="json", exclude={"anchor", "firing"})
        doc["last_tick"] = _iso(self.last_tick)
        doc["next_run_at"] = _iso(next_tick) if next_tick is not None and not self.paused else None
        return doc


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def checked(body: ScheduleBody, schedule_id: str, now: datetime, *, source: Source = "api") -> Schedule:
    """The schedule ``body`` defines, created at ``now``. Exactly one of ``cron`` and ``every``;
    the time zone must exist and the cron expression fire. Raises ScheduleError naming the field."""
    if (body.cron is None) == (body.every is None):
        field = "cron" if body.cron is None else "every"
        raise ScheduleError(field, "give exactly one of 'cron' (a cron expression) and 'every' (seconds or a "
                            "duration such as '10m')")
    if not body.message.strip():
        raise ScheduleError("message", "'message' must not be empty")
    anchor = int(now.timestamp())
    return Schedule(
        schedule_id=schedule_id, agent=body.agent, cron=body.cron, every=body.every, timezone=body.timezone,
        message=body.message, conversation_id=body.conversation_id, catch_up=body.catch_up, webhook=body.webhook,
        source=source, created_at=now, anchor=anchor, last_tick=anchor,
    )


def new_schedule_id() -> str:
    """A fresh schedule id: ``sch_`` + 24 hex digits."""
    return "sch_" + uuid.uuid4().hex[:24]


def periodic_schedule_id(agent: str) -> str:
    """The id of the schedule an agent file's ``periodic_runs`` makes: ``periodic-{agent}`` (a
    hash of the name when that would pass 64 characters)."""
    name = f"periodic-{agent}"
    return name if len(name) <= 64 else f"periodic-{uuid.uuid5(uuid.NAMESPACE_URL, agent).hex}"


def scheduled_run_id(tenant: str, schedule_id: str, tick: int) -> str:
    """The run id of a schedule's tick: a UUID5 over ``tenant/schedule/tick``, 32 hex digits. Every
    edge derives the same one, so the tick's run is stored once (``Nats-Msg-Id``, RUN_INDEX)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"agentstream:{tenant}/schedule/{schedule_id}/{tick}").hex


def scheduled_message_id(schedule_id: str, tick: int) -> str:
    """The ``message_id`` of a schedule's tick: ``schedule:{schedule_id}:{tick}``."""
    return f"schedule:{schedule_id}:{tick}"

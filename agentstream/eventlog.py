"""Reading stored run events from RUN_EVENTS, by subject filter and sequence.

Reads use the stream's direct-get API (ADR-31), batched: one request returns up to ``batch``
messages matching a (wildcard) subject from a start sequence, then an end-of-batch status
(``204 EOB``). A run's whole history is usually one round trip. nats-py 2.16 exposes only the
single-message form, so the batch request is made here on the documented wire format:
``$JS.API.DIRECT.GET.<stream>`` with ``{"seq", "next_by_subj", "batch"}`` (needs server ≥ 2.11).

Writes (:func:`append`) are conditional on the subject's last sequence
(``Nats-Expected-Last-Subject-Sequence``), which makes each run's subject single-writer.

In a JetStream cluster every replica of a stream answers direct gets from its own store (ADR-31),
so a read may come from a replica a few messages behind the leader (one that is catching up after a
restart, or has not applied the latest write yet). Readers that must not act on a stale answer (a
writer deciding whether its own write was stored) ask the stream leader instead
(:func:`last_event_from_leader`); readers that can wait re-read (edge.feed). A read in flight when
a server dies times out: :func:`retrying` retries reads for a while instead of failing a run.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar
from weakref import WeakKeyDictionary

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from agentstream.bus import jetstream
from agentstream.health import HEALTH, STORAGE
from agentstream.retry import first_then_retry
from schemas import events as E
from schemas import headers as H
from schemas import subjects

log = logging.getLogger(__name__)

DIRECT_GET = "$JS.API.DIRECT.GET.{stream}"
_WRONG_LAST_SEQUENCE = 10071
APPEND_RETRY_SECONDS = 300.0


class EventLogError(Exception):
    """The stream could not be read (no responders, timeout, an error status)."""


class _Unparsed(enum.Enum):
    UNPARSED = "unparsed"


_UNPARSED: Final = _Unparsed.UNPARSED
_unknown_types_logged: set[str] = set()


def parse_event(seq: int, event_type: str, data: bytes) -> E.RunEvent | None:
    """The typed envelope (schemas/events.py :data:`~schemas.events.RunEvent`) of one stored event's
    JSON ``data``, or None when this version cannot read it. Events a newer version wrote:

    - fields this version does not know (in the envelope or its ``data``) are ignored: the
      models forbid unknown fields when events are written, not when they are read;
    - a type this version does not know gives None, logged once per type and process. Readers of
      typed events (the edge's dialects) leave it out, as each dialect always left out the types
      it has no view of; the native stream (``/api/runs/{id}/events``) passes the raw event on.

    An envelope that does not validate otherwise (a field missing or of the wrong type) gives
    None too, logged once per parse. A ``message.delta`` costs a few µs (pydantic's
    ``validate_json`` on the raw bytes).
    """
    if event_type not in E.EVENT_CLASSES:
        if event_type not in _unknown_types_logged:
            _unknown_types_logged.add(event_type)
            log.warning("events of type %r are unknown to this version: left out of typed views (first: seq %d)",
                        event_type[:100], seq)
        return None
    try:
        return E.run_event_adapter.validate_json(data, extra="ignore")
    except ValidationError as err:
        log.warning("event seq %d (%s) does not validate, left out of typed views: %s", seq, event_type,
                    "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:3]))
        return None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One stored run event: its stream ``seq``, ``subject``, ``type`` (header) and raw JSON ``data``."""

    seq: int
    subject: str
    type: str
    data: bytes
    last_seq: int | None = None  # previous seq on the same subject, when the server says
    msg_id: str | None = None  # the Nats-Msg-Id it was written with
    frames: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    """Frames built from this event, by dialect (``"native"``): built once, shared by every client
    watching the run. The record is frozen; only this cache fills in."""
    _parsed: E.RunEvent | Literal[_Unparsed.UNPARSED] | None = field(
        default=_UNPARSED, init=False, compare=False, repr=False)

    @property
    def event(self) -> E.RunEvent | None:
        """The typed envelope (:func:`parse_event`), parsed on first use and then kept: one live
        event is one record shared by every feed watching its run, so it is parsed once however
        many clients watch. None when this version cannot read it (an unknown type, or an envelope
        that does not validate)."""
        parsed = self._parsed
        if parsed is _UNPARSED:
            parsed = parse_event(self.seq, self.type, self.data)
            object.__setattr__(self, "_parsed", parsed)
        return parsed

    def json(self) -> dict[str, Any]:
        """The event envelope as a dict."""
        envelope: dict[str, Any] = orjson.loads(self.data)
        return envelope

    @classmethod
    def from_message(cls, subject: str, headers: dict[str, str] | None, data: bytes) -> StoredEvent:
        """Build from a direct-get or re-published message (headers carry sequence and subject)."""
        hdrs = headers or {}
        ev_type = hdrs.get(H.EVENT_TYPE)
        if not ev_type:
            try:
                ev_type = orjson.loads(data).get("type", "")
            except orjson.JSONDecodeError:
                ev_type = ""
        last = hdrs.get(H.LAST_SEQUENCE)
        return cls(
            seq=int(hdrs[H.SEQUENCE]),
            subject=hdrs.get(H.SUBJECT, subject),
            type=ev_type,
            data=data,
            last_seq=int(last) if last is not None and last.isdigit() else None,
            msg_id=hdrs.get(H.MSG_ID),
        )


def typed(events: Iterable[StoredEvent]) -> list[E.RunEvent]:
    """The typed envelopes of ``events``, in order, leaving out those this version cannot read
    (:func:`parse_event`)."""
    return [ev.event for ev in events if ev.event is not None]


async def read_batch(
    nc: NATS,
    filter_subject: str,
    after_seq: int = 0,
    *,
    batch: int = 256,
    timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for the replies, raised as EventLogError
    stream: str = subjects.RUN_EVENTS_STREAM,
) -> tuple[list[StoredEvent], int]:
    """Up to ``batch`` events on ``filter_subject`` with sequence > ``after_seq``.

    Returns ``(events, pending)``: ``pending`` is how many more matching events the stream holds
    after the last one returned. Raises EventLogError.
    """
    request = {"seq": after_seq + 1, "next_by_subj": filter_subject, "batch": batch}
    replies, pending = await direct_get_batch(nc, stream, request, what=filter_subject, within=timeout)
    return [StoredEvent.from_message(msg.subject, msg.headers, msg.data) for msg in replies], pending


async def direct_get_batch(
    nc: NATS, stream: str, request: dict[str, Any], *, what: str, within: float = 5.0
) -> tuple[list[Msg], int]:
    """One batched direct get (ADR-31) on ``stream``: the messages it answers, and how many more
    match after them (``Nats-Num-Pending`` of the end-of-batch status). ``request`` is the JSON
    request (``seq`` + ``next_by_subj`` + ``batch``, or ``multi_last`` + ``batch``); ``what``
    names the read in errors; ``within``: seconds to wait for the whole answer. Raises EventLogError.
    """
    mux = await _BatchMux.of(nc)
    token, replies = mux.open()
    try:
        await nc.publish(DIRECT_GET.format(stream=stream), orjson.dumps(request), reply=f"{mux.prefix}.{token}")
        out: list[Msg] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise EventLogError(f"timed out reading {what}")
            try:
                msg = await asyncio.wait_for(replies.get(), remaining)
            except TimeoutError:
                raise EventLogError(f"timed out reading {what}") from None
            hdrs = msg.headers or {}
            status = hdrs.get(H.STATUS)
            if status:
                if status == "204":  # end of batch
                    return out, int(hdrs.get(H.NUM_PENDING, "0") or 0)
                if status == "404":  # nothing (more) matches
                    return out, 0
                if status == "503":
                    raise EventLogError(f"no JetStream responders for {stream} (is the stream declared?)")
                raise EventLogError(f"direct get of {what} failed: {status} {hdrs.get(H.DESCRIPTION, '')}")
            out.append(msg)
    except NoRespondersError:
        raise EventLogError(f"no JetStream responders for {stream}") from None
    finally:
        mux.close(token)


class _BatchMux:
    """One wildcard inbox subscription per connection for every batched read, replies routed by
    the inbox's last token (what nats-py does for single-reply requests; a batch has many
    replies). Saves a SUB/UNSUB round of protocol per read on hot paths (every SSE connection)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.pending: dict[str, asyncio.Queue[Msg]] = {}
        self._next = 0

    @classmethod
    async def of(cls, nc: NATS) -> _BatchMux:
        """The connection's multiplexer, subscribing its wildcard inbox on first use."""
        mux = _MUXES.get(nc)
        if mux is not None:
            return mux
        lock = _MUX_LOCKS.get(nc)
        if lock is None:
            lock = _MUX_LOCKS[nc] = asyncio.Lock()
        async with lock:
            mux = _MUXES.get(nc)
            if mux is None:
                mux = cls(nc.new_inbox())
                await nc.subscribe(f"{mux.prefix}.*", cb=mux._on_reply)
                _MUXES[nc] = mux
        return mux

    def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        """A new reply token and the queue its replies land in."""
        self._next += 1
        token = str(self._next)
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.pending[token] = queue
        return token, queue

    def close(self, token: str) -> None:
        """Forget ``token``; late replies to it are dropped."""
        self.pending.pop(token, None)

    async def _on_reply(self, msg: Msg) -> None:
        queue = self.pending.get(msg.subject.rsplit(".", 1)[-1])
        if queue is not None:
            queue.put_nowait(msg)


# Each connection's multiplexer, and the lock that makes only one (kept with the connection).
_MUXES: WeakKeyDictionary[NATS, _BatchMux] = WeakKeyDictionary()
_MUX_LOCKS: WeakKeyDictionary[NATS, asyncio.Lock] = WeakKeyDictionary()


async def read_all(
    nc: NATS, filter_subject: str, after_seq: int = 0, *, batch: int = 256
) -> AsyncIterator[StoredEvent]:
    """Every event on ``filter_subject`` after ``after_seq``, in stream order, paging as needed."""
    last = after_seq
    while True:
        events, pending = await read_batch(nc, filter_subject, last, batch=batch)
        for ev in events:
            yield ev
        if not events or pending == 0:
            return
        last = events[-1].seq


async def read_list(nc: NATS, filter_subject: str, after_seq: int = 0) -> list[StoredEvent]:
    """:func:`read_all` as a list."""
    return [ev async for ev in read_all(nc, filter_subject, after_seq)]


async def last_event(
    nc: NATS, filter_subject: str, *, timeout: float = 5.0,  # noqa: ASYNC109 - passed on to nc.request
    stream: str = subjects.RUN_EVENTS_STREAM,
) -> StoredEvent | None:
    """The latest message on ``filter_subject`` (wildcards allowed) of ``stream`` (default
    RUN_EVENTS), or None if there is none. Raises EventLogError."""
    try:
        msg = await nc.request(f"{DIRECT_GET.format(stream=stream)}.{filter_subject}", b"", timeout=timeout)
    except NoRespondersError:
        raise EventLogError(f"no JetStream responders for {stream}") from None
    except TimeoutError:
        raise EventLogError(f"timed out reading {filter_subject}") from None
    hdrs = msg.headers or {}
    status = hdrs.get(H.STATUS)
    if status == "404":
        return None
    if status:
        raise EventLogError(f"direct get of {filter_subject} failed: {status} {hdrs.get(H.DESCRIPTION, '')}")
    return StoredEvent.from_message(msg.subject, hdrs, msg.data)


async def last_event_from_leader(
    nc: NATS, subject: str, *, timeout: float = 5.0  # noqa: ASYNC109 - passed on to the request
) -> StoredEvent | None:
    """The latest event on ``subject`` as the stream leader has it (``$JS.API.STREAM.MSG.GET``,
    which only the leader answers), or None. Unlike :func:`last_event` never stale; costs the
    leader an API call, so only for decisions (was this write stored?). Raises EventLogError."""
    try:
        raw = await jetstream(nc).get_last_msg(subjects.RUN_EVENTS_STREAM, subject)
    except NotFoundError:
        return None
    except (nats.errors.TimeoutError, NoRespondersError, APIError) as err:
        raise EventLogError(f"reading {subject} from the stream leader: {type(err).__name__}: {err}") from None
    hdrs = raw.headers or {}
    return StoredEvent(seq=raw.seq or 0, subject=raw.subject or subject, type=hdrs.get(H.EVENT_TYPE, ""),
                       data=raw.data or b"", msg_id=hdrs.get(H.MSG_ID))


T = TypeVar("T")

READ_RETRY_SECONDS = 30.0
"""How long :func:`retrying` keeps re-trying a read (a leader election takes seconds)."""


async def retrying(read: Callable[[], Awaitable[T]], *, within: float = READ_RETRY_SECONDS) -> T:
    """``await read()``, retried with backoff while it raises EventLogError (a read in flight when
    a server died, no responders during an election), for up to ``within`` seconds; then the last
    EventLogError is raised."""
    return await first_then_retry(
        read,
        lambda err: isinstance(err, EventLogError),
        lambda: AsyncRetrying(
            stop=stop_after_delay(within),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
            retry=retry_if_exception_type(EventLogError),
            reraise=True,
        ),
    )





class WriteConflict(Exception):
    """The subject's last sequence was not the expected one: another writer stored an event first."""


class StorageFull(Exception):
    """JetStream refused to store an event for lack of space (its store or the account's limit)
    for longer than the writer's patience."""


STORAGE_FULL_CODES = frozenset({10023, 10047})
"""JetStream API error codes for "insufficient resources" (the server's store is full) and
"storage resources exceeded" (an account limit): nats-server ``server/errors.json``."""


def is_storage_full(err: BaseException) -> bool:
    """True for a JetStream refusal that means "no space to store this"."""
    return isinstance(err, APIError) and err.err_code in STORAGE_FULL_CODES


def storage_full(where: str, err: BaseException) -> None:
    """Record (and log at once, once per episode) that JetStream refused a write for lack of space."""
    if HEALTH.report(STORAGE, f"JetStream cannot store ({where}): {err.description or err}"
                     if isinstance(err, APIError) else f"JetStream cannot store ({where})"):
        log.warning("JetStream refuses to store %s: %s (code %s); the store is full or over its limit",
                    where, getattr(err, "description", err), getattr(err, "err_code", "?"))


def storage_ok() -> None:
    """A write succeeded: a storage problem (if any was reported) is over."""
    if HEALTH.clear(STORAGE):
        log.warning("JetStream stores events again")


class _Transient(Exception):
    pass


async def append(
    nc: NATS,
    subject: str,
    payload: bytes,
    *,
    event_type: str,
    msg_id: str,
    expected_last_seq: int,
    retry_seconds: float = APPEND_RETRY_SECONDS,
    storage_patience: float = APPEND_RETRY_SECONDS,
) -> int:
    """Store one event on ``subject`` if the subject's last sequence is ``expected_last_seq``
    (0: the subject must be empty). Returns the event's stream sequence.

    Raises WriteConflict when another writer got there first. Transport failures (timeouts, no
    responders while NATS restarts) are retried with the same ``msg_id`` for ``retry_seconds``;
    if an earlier try was in fact stored, the conflict it causes is recognised by the stored
    event's ``Nats-Msg-Id`` and counted as success. A store without space (:func:`is_storage_full`)
    is reported at once (log and ``/healthz``) and retried for ``storage_patience`` seconds, then
    StorageFull is raised.
    """
    js = jetstream(nc)
    headers = {
        H.MSG_ID: msg_id,
        H.EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected_last_seq),
        H.EVENT_TYPE: event_type,
    }

    loop = asyncio.get_running_loop()
    full_since: list[float] = []

    async def attempt() -> int:
        try:
            ack = await js.publish(subject, payload, headers=headers, timeout=5.0)
            if full_since:
                storage_ok()
            return ack.seq
        except BadRequestError as err:
            if err.err_code != _WRONG_LAST_SEQUENCE:
                raise
            try:
                stored = await last_event(nc, subject)
                if stored is None or stored.msg_id != msg_id:
                    # A replica's answer may be behind the leader (module doc): ask the leader
                    # before calling it a conflict.
                    stored = await last_event_from_leader(nc, subject)
            except EventLogError as read_err:
                raise _Transient(str(read_err)) from None
            if stored is not None and stored.msg_id == msg_id:
                return stored.seq  # an earlier try of this very publish was stored
            raise WriteConflict(f"{subject}: another writer stored event {stored.seq if stored else '?'}") from None
        except APIError as err:
            if is_storage_full(err):
                storage_full(f"{event_type} on {subject}", err)
                full_since.append(full_since[0] if full_since else loop.time())
                if loop.time() - full_since[0] >= storage_patience:
                    raise StorageFull(f"{subject}: {err.description or err}") from None
                raise _Transient(str(err)) from None
            if err.code and int(err.code) >= 500:
                raise _Transient(str(err)) from None
            raise
        except (nats.errors.TimeoutError, NoStreamResponseError, nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError) as err:
            # NoStreamResponseError: the server answered "no responders" (nats-py's js.publish
            # turns NoRespondersError into it). Right after a nats-server restart that is
            # JetStream still loading its streams, not a missing stream: retry.
            log.warning("storing %s on %s: %s; retrying", event_type, subject, type(err).__name__)
            raise _Transient(str(err)) from None

    return await first_then_retry(
        attempt,
        lambda err: isinstance(err, _Transient),
        lambda: AsyncRetrying(
            stop=stop_after_delay(retry_seconds),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        ),
    )

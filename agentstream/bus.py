"""Connecting to NATS the way every long-lived agentstream process should.

nats-py's defaults suit scripts, not services (docs/nats.md, "Reconnecting"): it gives up after 60
reconnect attempts and notices a dead connection only after ~4 minutes. Services here reconnect
forever, ping every 10 s, and keep retrying the first connection too, so components can start in
any order (compose starts them together).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agentstream.natsauth import connect_options
from agentstream.settings import Settings
from schemas import streams
from schemas import subjects as S
from schemas.permissions import Role, inbox_prefix

log = logging.getLogger(__name__)

"""Connections being closed by :func:`close`: their disconnection is expected, not reported."""


async def connect(
    settings: Settings,
    name: str,
    *,
    role: Role,
    wait: float | None = None,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
    on_disconnected: Callable[[], Awaitable[None]] | None = None,
    on_slow_consumer: Callable[[], Awaitable[None]] | None = None,
) -> Bus:
    """Connect to ``settings.nats_servers`` as client ``name`` with the identity of ``role``
    (``NATS_CREDS``, and the role's inbox prefix: schemas/permissions.py); retry until connected.

    ``wait``: give up after this many seconds (``TimeoutError``); None waits forever.
    ``on_reconnected`` / ``on_disconnected``: optional coroutines called on those transitions;
    ``on_slow_consumer``: called when the client dropped messages of a subscription that fell
    behind (docs/nats.md, "The error callback": this is the only sign of it).
    """

    options = connect_options(settings.nats_creds, inbox_prefix(role))

    async def error_cb(err: Exception) -> None:
        text = str(err)
        if "permissions violation" in text.lower() or "authorization violation" in text.lower():
            log.error("nats refused %s (%s): %s", name, role.value, text)
        else:
            log.warning("nats: %s: %s", type(err).__name__, err)
        if on_slow_consumer is not None and isinstance(err, nats.errors.SlowConsumerError):
            await on_slow_consumer()

    bus = Bus()  # a new one for each attempt; the callbacks read the latest

    async def disconnected_cb() -> None:
        if bus.is_closed or bus.closing:
            return
        log.warning("nats: disconnected; reconnecting")
        if on_disconnected:
            await on_disconnected()

    async def reconnected_cb() -> None:
        log.info("nats: reconnected")
        if on_reconnected:
            await on_reconnected()

    loop = asyncio.get_running_loop()
    deadline = None if wait is None else loop.time() + wait
    delay = 0.1
    while True:
        try:
            bus = Bus()
            await bus.connect(
                servers=settings.nats_servers,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int; any seconds work
                connect_timeout=2,
                ping_interval=10,
                max_outstanding_pings=3,
                pending_size=16 * 1024 * 1024,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
                **options,
            )
            return bus
        except Exception as err:  # any failure to connect is retried
            if deadline is not None and loop.time() + delay > deadline:
                raise TimeoutError(f"could not connect to NATS at {settings.nats_servers}: {err}") from err
            log.warning("nats: cannot connect to %s (%s); retrying", ",".join(settings.nats_servers), err)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


class Bus(NATS):
    """A NATS connection as every component holds it (made by :func:`connect`): nats-py's client
    plus the JetStream context it owns, made once (creating one per call shows in profiles)."""

    def __init__(self) -> None:
        super().__init__()
        self._js: JetStreamContext | None = None
        self.closing = False
        """Set by :func:`close`: the connection is being closed on purpose."""

    @property
    def js(self) -> JetStreamContext:
        """This connection's JetStream context."""
        if self._js is None:
            self._js = self.jetstream()
        return self._js


def jetstream(nc: NATS) -> JetStreamContext:
    """``nc``'s JetStream context: the one a :class:`Bus` owns, or a new one for a plain client
    (tests and tools that connect with ``nats.connect``)."""
    return nc.js if isinstance(nc, Bus) else nc.jetstream()


CLUSTER_NOT_READY = frozenset({
    10005,  # "no suitable peers for placement": the cluster's servers have not all joined yet
    10008,  # "JetStream system temporarily unavailable": no meta leader (yet, or an election)
    10023,  # "insufficient resources": peers not known yet
})
"""JetStream API error codes (nats-server ``server/errors.json``) that a cluster answers while it
forms or elects a leader: worth retrying, unlike a refused configuration."""


def jetstream_not_ready(err: BaseException) -> bool:
    """True for errors that mean "JetStream is not available right now" (a server just started, a
    cluster forming or electing a leader, the connection moving to another server), not "no"."""
    if isinstance(err, (nats.errors.TimeoutError, TimeoutError, nats.errors.NoRespondersError,
                        nats.errors.ConnectionReconnectingError, nats.js.errors.ServiceUnavailableError)):
        return True
    if isinstance(err, nats.js.errors.APIError):
        return err.err_code in CLUSTER_NOT_READY or (err.code is not None and int(err.code) >= 500)
    return False


async def declare(nc: NATS, settings: Settings) -> None:
    """Declare the streams, buckets and shared consumers (admin identity, or no authentication).
    Idempotent; retried while JetStream is not yet available (a server that just started, a
    cluster still forming: :func:`jetstream_not_ready`)."""
    js = nc.jetstream()
    configs = streams.stream_configs(
        run_dedupe_window=settings.run_dedupe_window,
        events_max_age=settings.run_events_max_age,
        dead_letter_max_age=settings.dead_letter_max_age,
        webhook_max_age=settings.webhook_retry_for + 86400.0,
        replicas=settings.stream_replicas,
    )
    buckets = streams.kv_configs(run_index_max_age=settings.run_events_max_age, replicas=settings.stream_replicas)
    delay = 0.1
    for _ in range(50):
        try:
            await streams.ensure_streams(js, configs)
            await streams.ensure_buckets(js, buckets)
            await streams.ensure_consumers(js, ack_wait=settings.runner_ack_wait)
            return
        except Exception as err:  # filtered just below
            if not jetstream_not_ready(err):
                raise
            log.warning("jetstream not ready (%s: %s); retrying", type(err).__name__, err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise RuntimeError("JetStream did not become available: is the server started with -js?")


async def setup(settings: Settings, *, within: float = 30.0) -> None:
    """Connect as the admin identity (``settings.nats_creds``), declare everything, disconnect.
    What ``agentstream nats-setup`` and ``agentstream up`` do. Raises TimeoutError when NATS
    cannot be reached within ``within`` seconds."""
    nc = await connect(settings, "agentstream setup", role=Role.ADMIN, wait=within)
    try:
        await declare(nc, settings)
    finally:
        await close(nc)


TOPOLOGY = (
    S.AGENT_RUNS_STREAM, S.RUN_EVENTS_STREAM, S.RUN_CONTROL_STREAM, S.RUN_DEAD_LETTERS_STREAM, S.RUN_LOG_STREAM,
    S.WEBHOOK_JOBS_STREAM,
    *(f"KV_{b}" for b in (S.TENANTS_BUCKET, S.RATE_LIMITS_BUCKET, S.STREAM_COUNTS_BUCKET, S.RUN_INDEX_BUCKET,
                          S.TOOL_RESULTS_BUCKET, S.CONVERSATIONS_BUCKET, S.APPROVALS_BUCKET, S.SCHEDULES_BUCKET,
                          S.WEBHOOK_SECRETS_BUCKET, S.WEBHOOK_DELIVERIES_BUCKET, S.AGENTS_BUCKET,
                          S.AGENT_PAUSES_BUCKET)),
)
"""The streams (and bucket streams) every component needs."""


async def ensure_topology(
    nc: NATS, settings: Settings, *, poll: float = 1.0, names: tuple[str, ...] = TOPOLOGY
) -> None:
    """Make sure the streams and buckets exist before a component starts its work.

    Without credentials (a server without authentication) the component declares them itself,
    as any component may. With credentials only the admin identity may (``agentstream up`` and
    ``agentstream nats-setup`` use it): the component waits, polling every ``poll`` seconds,
    and says once what to run. ``names``: the streams it waits for (those its identity may look
    at; default all of :data:`TOPOLOGY`).
    """
    if settings.nats_creds is None:
        await declare(nc, settings)
        return
    js = nc.jetstream()
    told = False
    while True:
        missing = []
        for name in names:
            try:
                await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                missing.append(name)
            except Exception as err:  # filtered just below
                if not jetstream_not_ready(err):
                    raise
                missing.append(name)
        if not missing:
            return
        if not told:
            log.warning("waiting for %s to be declared: run `agentstream nats-setup` with the admin credentials",
                        ", ".join(missing))
            told = True
        await asyncio.sleep(poll)


async def close(nc: NATS, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - bounds the flush; the close follows
    """Flush what is still buffered (up to ``timeout`` seconds), then close the connection.

    Used at shutdown after a component has finished its own work; unlike ``drain()`` it never
    waits on subscriptions nobody reads any more (e.g. a pull subscription's expired requests).
    """
    if nc.is_closed:
        return
    if isinstance(nc, Bus):
        nc.closing = True  # read by disconnected_cb: a disconnect now is expected
    try:
        await asyncio.wait_for(nc.flush(), timeout)
    except Exception as err:  # disconnected: nothing more to flush
        log.debug("flush before close failed: %s", err)
    await nc.close()

"""What one edge process holds: settings, keys, agents, and (once up) its NATS connection and
live hub. Nothing about runs: any number of edges serve the same runs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from agentstream.agents import AgentCatalog
from agentstream.agentstore import AgentRegistry
from agentstream.agentwrites import AgentWriter
from agentstream.bus import connect, ensure_topology
from agentstream.eventlog import EventLogError
from agentstream.policies import publish_policies
from agentstream.settings import Settings
from edge import metrics
from edge.auth import Authenticator
from edge.errors import ApiError
from edge.feed import LiveHub
from edge.ratelimit import RateLimiter
from edge.streamcaps import StreamCaps
from schemas import subjects
from schemas.permissions import Role

log = logging.getLogger(__name__)


@dataclass
class EdgeState:
    """The edge's state. ``stopping`` is set when the process begins to shut down: open streams
    end (clients reconnect, to this or another edge, with ``Last-Event-ID``). ``catalog``: the
    agents directory; ``agents``: every tenant's effective agents (the directory's and its own,
    followed in the AGENTS bucket); ``agent_writer``: stores changes of them (once connected)."""

    settings: Settings
    auth: Authenticator
    catalog: AgentCatalog
    agents: AgentRegistry
    nc: NATS | None = None
    agent_writer: AgentWriter | None = None
    hub: LiveHub | None = None
    limiter: RateLimiter | None = None
    streams: StreamCaps | None = None
    run_index: KeyValue | None = None
    conversations: KeyValue | None = None
    approvals: KeyValue | None = None
    tenants_kv: KeyValue | None = None
    schedules: KeyValue | None = None
    webhook_secrets: KeyValue | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def bus(self) -> NATS:
        """The NATS connection; ApiError 503 while it is not up."""
        if self.nc is None or not self.ready.is_set() or not self.nc.is_connected:
            raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly")
        return self.nc

    def live(self) -> LiveHub:
        """The live hub (started with the connection); ApiError 503 while it is not up."""
        if self.hub is None or not self.ready.is_set():
            raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly")
        return self.hub

    @property
    def healthy(self) -> bool:
        """Connected to NATS and ready to serve."""
        return self.nc is not None and self.ready.is_set() and self.nc.is_connected

    def begin_shutdown(self) -> None:
        """End open streams now, so their clients reconnect (to any edge) with Last-Event-ID
        instead of being cut when the server's graceful period runs out."""
        self.stopping.set()
        if self.hub is not None:
            self.hub.close_all()

    async def publish_policies(self) -> None:
        """Publish the keys file's tenant policies to the TENANTS bucket (runners apply them)."""
        if self.nc is None or self.tenants_kv is None:
            return
        try:
            changed = await publish_policies(self.nc, self.tenants_kv, self.auth.policies)
        except (EventLogError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.error("could not publish tenant policies: %s", err)
            return
        if changed:
            log.info("published %d tenant policy change(s)", changed)

    async def watch_keys_file(self) -> None:
        """Re-read the keys file every KEYS_FILE_POLL seconds; apply a new valid one at once: end
        the open streams of revoked keys, publish the tenant policies."""
        while True:
            await asyncio.sleep(self.settings.keys_file_poll)
            revoked = self.auth.reload()
            if revoked is None:
                continue
            metrics.known_tenants(self.auth.policies)
            if revoked and self.streams is not None:
                ended = self.streams.revoke({d.hex()[:16] for d in revoked})
                if ended:
                    log.info("ended %d open stream(s) of revoked keys", ended)
            await self.publish_policies()

    async def connect(self) -> None:
        """Connect to NATS (retrying forever), declare the streams, start the live hub, mark ready."""

        async def on_reconnected() -> None:
            # Re-published events may have been lost: every feed re-reads from the stream.
            if self.hub is not None:
                self.hub.resync_all()

        nc = await connect(self.settings, "edge", role=Role.EDGE, on_reconnected=on_reconnected,
                           on_slow_consumer=on_reconnected)
        await ensure_topology(nc, self.settings)
        js = nc.jetstream()
        self.tenants_kv = await js.key_value(subjects.TENANTS_BUCKET)
        self.run_index = await js.key_value(subjects.RUN_INDEX_BUCKET)
        self.conversations = await js.key_value(subjects.CONVERSATIONS_BUCKET)
        self.approvals = await js.key_value(subjects.APPROVALS_BUCKET)
        self.schedules = await js.key_value(subjects.SCHEDULES_BUCKET)
        self.webhook_secrets = await js.key_value(subjects.WEBHOOK_SECRETS_BUCKET)
        self.limiter = RateLimiter(await js.key_value(subjects.RATE_LIMITS_BUCKET))
        self.streams = StreamCaps(nc, await js.key_value(subjects.STREAM_COUNTS_BUCKET))
        self.streams.start()
        await self.agents.start(js)
        self.agent_writer = await AgentWriter.open(nc, js, self.agents)
        self.nc = nc
        await self.publish_policies()
        hub = LiveHub(nc)
        await hub.start()
        self.hub = hub
        self.ready.set()
        log.info("edge connected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")

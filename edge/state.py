"""What one edge process holds: settings, keys, agents, and (once up) its NATS connection and
live hub. Nothing about runs: any number of edges serve the same runs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from agentstream.agents import AgentCatalog
from agentstream.bus import connect, declare
from agentstream.settings import Settings
from edge.auth import Authenticator
from edge.errors import ApiError
from edge.feed import LiveHub

log = logging.getLogger(__name__)


@dataclass
class EdgeState:
    """The edge's state. ``stopping`` is set when the process begins to shut down: open streams
    end (clients reconnect, to this or another edge, with ``Last-Event-ID``)."""

    settings: Settings
    auth: Authenticator
    catalog: AgentCatalog
    nc: NATS | None = None
    hub: LiveHub | None = None
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

    async def connect(self) -> None:
        """Connect to NATS (retrying forever), declare the streams, start the live hub, mark ready."""

        async def on_reconnected() -> None:
            # Re-published events may have been lost: every feed re-reads from the stream.
            if self.hub is not None:
                self.hub.resync_all()

        nc = await connect(self.settings, "edge", on_reconnected=on_reconnected, on_slow_consumer=on_reconnected)
        await declare(nc, self.settings)
        hub = LiveHub(nc)
        await hub.start()
        self.nc, self.hub = nc, hub
        self.ready.set()
        log.info("edge connected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")

"""Which tools the tool runners serve, so a call for a tool nobody serves fails at once.

A tool call finding no tool runner ("no responders") is either a tool runner restarting (retry:
it comes back in seconds) or a tool no tool runner serves at all (``TOOL_RUNNER_TOOLS`` leaves it
out everywhere: retrying until the agent's ``tool_timeout`` only delays the run). The directory
tells them apart:

- every tool runner is a nats.micro service (``agentstream-tool-runner``) with one endpoint per
  tool it serves; a discovery request (``$SRV.INFO.agentstream-tool-runner``, ADR-32
  "Discovery") collects each one's answer for :data:`DISCOVERY_WINDOW` seconds; the answer is
  kept :data:`DISCOVERY_TTL` seconds, so a burst of failing calls costs one discovery;
- a tool seen served (in a discovery, or by a result from a tool runner) within the last
  ``restart_grace`` seconds (``TOOL_RESTART_GRACE``) is taken to be restarting: its calls retry;
- any other tool is unserved: its call fails with ``tool_unavailable`` after one attempt.

A discovery that cannot be made (NATS reconnecting) counts as "unknown": the call retries.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import headers as H
from schemas import subjects

log = logging.getLogger(__name__)

DISCOVERY_WINDOW = 0.25
"""Seconds a discovery waits for the tool runners' answers (each answers at once, unless busy)."""
DISCOVERY_QUIET = 0.05
"""Seconds without a new answer after which a discovery stops waiting early."""
DISCOVERY_TTL = 1.0
"""Seconds a discovery's answer is reused."""


class ToolDirectory:
    """What this agent runner knows of the tools served. ``restart_grace``: seconds (see module)."""

    def __init__(self, nc: NATS, *, restart_grace: float):
        self.nc = nc
        self.restart_grace = restart_grace
        self._seen: dict[str, float] = {}  # tool -> monotonic time it was last seen served
        self._discovered_at = float("-inf")
        self._discovering: asyncio.Task[set[str] | None] | None = None

    def saw(self, tool: str) -> None:
        """Record that ``tool`` is served now (a tool runner answered a call for it)."""
        self._seen[tool] = time.monotonic()

    async def unserved(self, tool: str) -> bool:
        """True when no tool runner serves ``tool``: not seen within ``restart_grace`` seconds, and
        not in a discovery made now (or in the last :data:`DISCOVERY_TTL` seconds)."""
        if self._recently_seen(tool):
            return False
        if time.monotonic() - self._discovered_at > DISCOVERY_TTL:
            if self._discovering is None or self._discovering.done():
                self._discovering = asyncio.create_task(self._discover())
            served = await asyncio.shield(self._discovering)
            if served is None:  # could not ask: assume it may be served
                return False
        return not self._recently_seen(tool)

    def _recently_seen(self, tool: str) -> bool:
        seen = self._seen.get(tool)
        return seen is not None and time.monotonic() - seen <= self.restart_grace

    async def _discover(self) -> set[str] | None:
        """Ask every tool runner which tools it serves; the tools served (also recorded as seen),
        or None when the question could not be asked."""
        inbox = self.nc.new_inbox()
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def on_answer(msg: Msg) -> None:
            answers.put_nowait(None if (msg.headers or {}).get(H.STATUS) == "503" else msg.data)

        try:
            sub = await self.nc.subscribe(inbox, cb=on_answer)
        except Exception as err:  # not connected
            log.info("tool discovery not possible now: %s", err)
            return None
        served: set[str] = set()
        try:
            await self.nc.publish(subjects.TOOL_SERVICE_INFO, b"", reply=inbox)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DISCOVERY_WINDOW
            while (remaining := deadline - loop.time()) > 0:
                try:
                    data = await asyncio.wait_for(answers.get(), DISCOVERY_QUIET if served else remaining)
                except TimeoutError:
                    break
                if data is None:  # "no responders": no tool runner at all
                    break
                served |= _tools_of(data)
        except Exception as err:  # disconnected meanwhile
            log.info("tool discovery failed: %s", err)
            return None
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # connection closing
                pass
        now = time.monotonic()
        for tool in served:
            self._seen[tool] = now
        self._discovered_at = now
        return served


def _tools_of(info: bytes) -> set[str]:
    """The tool names in one nats.micro info answer (its endpoints' names)."""
    try:
        doc = orjson.loads(info)
        return {str(e["name"]) for e in doc.get("endpoints") or [] if isinstance(e, dict) and "name" in e}
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return set()

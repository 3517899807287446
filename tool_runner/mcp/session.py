"""Open MCP client sessions of one tool runner: connected on first use, kept open, reconnected
when they die, closed when idle.

The SDK (``mcp``, anyio-based; anyio runs on asyncio and so on uvloop) opens a session through
context managers that must be entered and left by one task, so each :class:`McpSession` has an
owner task holding its transport (a stdio process, or a streamable HTTP connection) and its
``ClientSession`` until it is closed. Calls are made from the tool runner's own tasks.

A session is dead when its transport's stream of messages ends (a stdio server's process exited:
its stdout closed) or its owner task ended (a streamable HTTP request failed: the SDK's client
stops). Calls in flight then fail at once (:class:`SessionLost`), not at their timeout; the next
call opens a new session (:meth:`McpPool.session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as mt
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError
from mcp.shared.message import SessionMessage

from schemas.errors import ErrorKind
from schemas.mcp import McpServer
from tool_runner.errors import ToolError
from tool_runner.mcp.net import GuardedTransport, checked_address

log = logging.getLogger(__name__)

CLIENT_INFO = mt.Implementation(name="agentstream-tool-runner", version="0.1.0")
REAP_EVERY = 5.0
"""Seconds between looks for idle sessions."""


class SessionLost(Exception):
    """The session died while a call waited for its answer (the server's process exited, its
    connection failed). Whether the call was executed is unknown."""


@dataclass(frozen=True)
class SessionKey:
    """Which session: a tenant's agent's server. Sessions are never shared between tenants (a
    server may keep state between calls), nor between agents."""

    tenant: str
    agent: str
    server: str


class McpSession:
    """One connected MCP server. Use :meth:`open` (connects, initializes, lists tools), then
    :meth:`call` / :meth:`list_tools`, then :meth:`close`.

    ``spec``: the server as its agent file declares it; ``cwd``: a stdio server's working
    directory; ``env``: added to its environment; ``allow_hosts``: MCP_ALLOW_HOSTS.
    """

    def __init__(self, key: SessionKey, spec: McpServer, *, cwd: Path, env: dict[str, str], allow_hosts: str):
        self.key = key
        self.spec = spec
        self.cwd = cwd
        self.env = env
        self.allow_hosts = allow_hosts
        self.tools: dict[str, mt.Tool] = {}
        self.last_used = time.monotonic()
        self.in_flight = 0
        self._session: ClientSession | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._dead = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        """Connected, and neither dead nor closing."""
        return self._session is not None and not self._dead.is_set() and not self._closing.is_set()

    async def open(self, timeout: float) -> None:  # noqa: ASYNC109 - one budget for start, handshake and listing
        """Start the server (stdio) or reach it (HTTP), initialize, list its tools, within
        ``timeout`` seconds. Raises ToolError ``mcp_unavailable`` (it could not be started or did not
        answer), ``address_refused`` / ``dns_error`` (its url), ``timeout``."""
        if self.spec.url is not None:
            await checked_address(httpx.URL(self.spec.url), self.allow_hosts)
        self._owner = asyncio.create_task(self._own(timeout), name=f"mcp {self.key}")
        waiter = asyncio.ensure_future(asyncio.shield(self._ready))
        done, _ = await asyncio.wait({waiter, self._owner}, timeout=timeout + 1.0,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            waiter.result()  # raises what the owner failed with
            return
        waiter.cancel()
        self._closing.set()
        self._owner.cancel()
        await asyncio.wait({self._owner}, timeout=10.0)
        if not done:
            raise ToolError(ErrorKind.TIMEOUT,
                            f"MCP server {self.spec.name!r} did not start and answer within {timeout:g} s")
        raise ToolError(ErrorKind.MCP_UNAVAILABLE, f"MCP server {self.spec.name!r} stopped while starting")

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        if self.spec.command is not None:
            params = StdioServerParameters(command=self.spec.command, args=list(self.spec.args),
                                           env={**self.spec.env, **self.env}, cwd=self.cwd)
            return stdio_client(params, errlog=sys.stderr)
        assert self.spec.url is not None
        client = httpx.AsyncClient(transport=GuardedTransport(self.allow_hosts), trust_env=False,
                                   timeout=httpx.Timeout(30.0, read=300.0), follow_redirects=False)
        return _http_session(self.spec.url, client)

    async def _own(self, timeout: float) -> None:  # noqa: ASYNC109
        """The owner task: hold the transport and session open until closed or dead."""
        try:
            async with anyio.create_task_group() as tg, AsyncExitStack() as stack:
                streams = await stack.enter_async_context(self._transport())
                read, write = streams[0], streams[1]
                forward_send, forward_read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
                tg.start_soon(self._forward, read, forward_send)
                session = await stack.enter_async_context(ClientSession(forward_read, write, client_info=CLIENT_INFO))
                with anyio.fail_after(timeout):
                    await session.initialize()
                    self.tools = await _all_tools(session)
                self._session = session
                self._ready.set_result(None)
                log.info("MCP session %s/%s/%s open (%s, %d tools)", self.key.tenant, self.key.agent, self.key.server,
                         self.spec.transport, len(self.tools))
                closing = asyncio.ensure_future(self._closing.wait())
                dead = asyncio.ensure_future(self._dead.wait())
                try:
                    await asyncio.wait({closing, dead}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closing.cancel()
                    dead.cancel()
        except BaseException as err:  # reported to open(), or the session is simply dead
            if not self._ready.done():
                self._ready.set_exception(_as_tool_error(self.spec, err))
            elif not self._closing.is_set():
                log.warning("MCP session %s ended: %s", self.key, _describe(err))
            if isinstance(err, asyncio.CancelledError):
                raise
        finally:
            self._dead.set()
            self._session = None

    async def _forward(self, read: MemoryObjectReceiveStream[SessionMessage | Exception],
                       send: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
        """Hand the transport's messages to the session; when they end, the session is dead."""
        try:
            async with send:
                async for message in read:
                    await send.send(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass
        finally:
            if not self._closing.is_set():
                log.warning("MCP server %s of %s/%s closed its connection", self.key.server, self.key.tenant,
                            self.key.agent)
            self._dead.set()

    async def list_tools(self, timeout: float) -> dict[str, mt.Tool]:  # noqa: ASYNC109
        """The server's tools now (and kept in :attr:`tools`). Raises SessionLost, ToolError."""
        tools: dict[str, mt.Tool] = await self._request(_all_tools, timeout)
        self.tools = tools
        return tools

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> mt.CallToolResult:  # noqa: ASYNC109
        """Call ``tool``. Raises SessionLost (the session died meanwhile), ToolError (``timeout``;
        ``mcp_error``: the server answered with a JSON-RPC error)."""
        result: mt.CallToolResult = await self._request(
            lambda s: s.call_tool(tool, arguments, read_timeout_seconds=timedelta(seconds=timeout)), timeout)
        return result

    async def _request(self, make: Any, timeout: float) -> Any:  # noqa: ASYNC109
        session = self._session
        if session is None or not self.alive:
            raise SessionLost("the session is closed")
        self.in_flight += 1
        self.last_used = time.monotonic()
        work = asyncio.ensure_future(make(session))
        dead = asyncio.ensure_future(self._dead.wait())
        try:
            done, _ = await asyncio.wait({work, dead}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                try:
                    return work.result()
                except McpError as err:
                    if err.error.code == mt.CONNECTION_CLOSED:
                        raise SessionLost(err.error.message) from None
                    raise ToolError(ErrorKind.MCP_ERROR,
                                    f"MCP server {self.spec.name!r}: {err.error.message}") from None
            if dead in done:
                raise SessionLost(f"MCP server {self.spec.name!r} stopped while the call ran")
            raise ToolError(ErrorKind.TIMEOUT, f"MCP server {self.spec.name!r} gave no answer within {timeout:g} s")
        finally:
            for task in (work, dead):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(BaseException):
                await work
            self.in_flight -= 1
            self.last_used = time.monotonic()

    async def close(self) -> None:
        """Close the session (a stdio server's stdin is closed, then it is terminated if it does not
        exit: the SDK's shutdown sequence) and wait for its owner task."""
        self._closing.set()
        if self._owner is not None and not self._owner.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._owner), 10.0)
            except (TimeoutError, asyncio.CancelledError):
                self._owner.cancel()
            except Exception as err:  # closing: nothing more to do with it
                log.debug("MCP session %s closed with %s", self.key, err)


@contextlib.asynccontextmanager
async def _http_session(url: str, client: httpx.AsyncClient) -> AsyncIterator[Any]:
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


async def _all_tools(session: ClientSession) -> dict[str, mt.Tool]:
    tools: dict[str, mt.Tool] = {}
    cursor: str | None = None
    for _ in range(100):  # pages; a server that never stops paging is cut off
        page = await session.list_tools(params=mt.PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools.update((t.name, t) for t in page.tools)
        cursor = page.nextCursor
        if not cursor:
            break
    return tools


def _describe(err: BaseException) -> str:
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in err.exceptions)
    return f"{type(err).__name__}: {err}"


def _as_tool_error(spec: McpServer, err: BaseException) -> ToolError:
    """Why a session could not be opened, as the tool result's error."""
    leaves = list(_leaves(err))
    for leaf in leaves:
        if isinstance(leaf, ToolError):
            return leaf
    if any(isinstance(leaf, TimeoutError) for leaf in leaves):
        return ToolError(ErrorKind.TIMEOUT, f"MCP server {spec.name!r} did not answer in time")
    what = f"command {spec.command!r}" if spec.command is not None else f"url {spec.url}"
    return ToolError(ErrorKind.MCP_UNAVAILABLE, f"MCP server {spec.name!r} ({what}) could not be used: "
                     f"{'; '.join(_describe(leaf) for leaf in leaves)[:500]}")


def _leaves(err: BaseException) -> list[BaseException]:
    if isinstance(err, BaseExceptionGroup):
        return [leaf for sub in err.exceptions for leaf in _leaves(sub)]
    return [err]


class McpPool:
    """The open sessions of one tool runner, by :class:`SessionKey`.

    ``connect_timeout``: seconds to open a session; ``idle_timeout``: seconds unused before a
    session is closed; ``allow_hosts``: MCP_ALLOW_HOSTS.
    """

    def __init__(self, *, connect_timeout: float, idle_timeout: float, allow_hosts: str):
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.allow_hosts = allow_hosts
        self._sessions: dict[SessionKey, McpSession] = {}
        self._locks: dict[SessionKey, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start closing idle sessions."""
        self._reaper = asyncio.create_task(self._reap())

    async def session(self, key: SessionKey, spec: McpServer, *, cwd: Path, env: dict[str, str],
                      timeout: float) -> McpSession:  # noqa: ASYNC109
        """The open session for ``key``, opened now (within ``timeout`` seconds and
        MCP_CONNECT_TIMEOUT) if there is none or it died. Raises ToolError."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            current = self._sessions.get(key)
            if current is not None and current.alive:
                return current
            if current is not None:
                log.info("MCP session %s/%s/%s is gone; reconnecting", key.tenant, key.agent, key.server)
                self._sessions.pop(key, None)
                await current.close()
            fresh = McpSession(key, spec, cwd=cwd, env=env, allow_hosts=self.allow_hosts)
            await fresh.open(min(timeout, self.connect_timeout))
            self._sessions[key] = fresh
            return fresh

    async def discard(self, session: McpSession) -> None:
        """Forget and close ``session`` (it failed); the next call opens a new one."""
        if self._sessions.get(session.key) is session:
            self._sessions.pop(session.key, None)
        await session.close()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(REAP_EVERY, self.idle_timeout))
            now = time.monotonic()
            for key, session in list(self._sessions.items()):
                if not session.alive or (session.in_flight == 0 and now - session.last_used > self.idle_timeout):
                    log.info("closing MCP session %s/%s/%s (%s)", key.tenant, key.agent, key.server,
                             "idle" if session.alive else "dead")
                    self._sessions.pop(key, None)
                    await session.close()

    @property
    def open_sessions(self) -> int:
        """How many sessions are open."""
        return sum(1 for s in self._sessions.values() if s.alive)

    async def close(self) -> None:
        """Close every session."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

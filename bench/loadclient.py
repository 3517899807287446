"""SSE load clients in separate processes: one Python process cannot hold thousands of streams and
read them fast, so each worker process holds a share of the connections (bare asyncio protocols,
HTTP/1.1) and reports what it received.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from dataclasses import dataclass


@dataclass
class StreamStats:
    """What one connection received: event frames, ping comments, first and last event times
    (``time.time()``), whether it ended (the run's terminal event), and an error if any."""

    events: int = 0
    pings: int = 0
    first: float = 0.0
    last: float = 0.0
    ended: bool = False
    error: str = ""


HEADERS_TIMEOUT = 60.0
"""Seconds a connection waits for its response headers before it counts as an error."""


class _SSECounter(asyncio.Protocol):
    """One SSE connection as a bare protocol: counts frames and pings as bytes arrive, with no
    parsing and no task per read, so the load clients cost little next to the edge they load."""

    def __init__(self, request: bytes, end_marker: bytes, on_headers):
        self.request = request
        self.end_marker = end_marker
        self.on_headers = on_headers
        self.stats = StreamStats()
        self.head = b""
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)
        asyncio.get_running_loop().call_later(HEADERS_TIMEOUT, self._headers_timeout)

    def _headers_timeout(self) -> None:
        if self.on_headers is not None:
            self.stats.error = "headers: timeout"
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.on_headers is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            self.on_headers()
            self.on_headers = None
            if b" 200 " not in status:
                self.stats.error = status.decode()
                self.transport.close()
                return
        data = self.tail + data
        n = data.count(b"\nid: ") + data.startswith(b"id: ")
        if n:
            now = time.time()
            self.stats.events += n
            self.stats.first = self.stats.first or now
            self.stats.last = now
        self.stats.pings += data.count(b": ping")
        if self.end_marker and self.end_marker in data:
            self.stats.ended = True
            self.transport.close()
        self.tail = data[-64:]

    def connection_lost(self, exc) -> None:
        if exc is not None and not self.stats.error:
            self.stats.error = f"read: {type(exc).__name__}"
        if self.on_headers is not None:
            self.stats.error = self.stats.error or "headers: connection closed"
            self.on_headers()
            self.on_headers = None
        if not self.done.done():
            self.done.set_result(None)


async def _one(host: str, port: int, path: str, headers: str, connected: asyncio.Event, counter: list[int],
               stop: asyncio.Event, end_marker: bytes) -> StreamStats:
    def headers_in() -> None:
        counter[0] += 1
        if counter[0] == counter[1]:
            connected.set()

    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{headers}\r\n".encode()
    loop = asyncio.get_running_loop()
    try:
        _, proto = await loop.create_connection(lambda: _SSECounter(request, end_marker, headers_in), host, port)
    except OSError as err:
        headers_in()
        return StreamStats(error=f"connect: {err}")
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({proto.done, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_task.cancel()
        proto.transport.close()
    return proto.stats


def _worker(host: str, port: int, paths: list[str], headers: str, end_marker: bytes, ready, go, stop, results) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main():
        connected = asyncio.Event()
        counter = [0, len(paths)]
        stop_local = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Open connections in slices, so the edge's accept queue is not overrun.
        tasks = []
        for i in range(0, len(paths), 100):
            for p in paths[i:i + 100]:
                tasks.append(
                    asyncio.ensure_future(_one(host, port, p, headers, connected, counter, stop_local, end_marker))
                )
            await asyncio.sleep(0.02)
        await connected.wait()
        ready.put(len(paths))
        await loop.run_in_executor(None, go.wait)

        async def watch_stop():
            await loop.run_in_executor(None, stop.wait)
            stop_local.set()

        watcher = asyncio.ensure_future(watch_stop())
        out = await asyncio.gather(*tasks)
        watcher.cancel()
        results.put([s.__dict__ for s in out])

    asyncio.run(main())


class LoadClients:
    """``processes`` worker processes sharing ``paths`` (one SSE connection each) on ``host:port``.

    ``start()`` returns once every connection is open (response headers received); ``go()`` lets
    them read; ``stop()`` ends them; ``results()`` collects one :class:`StreamStats` per path.
    ``end_marker``: bytes whose arrival ends a connection (e.g. ``b"event: run.completed"``).
    """

    def __init__(self, host: str, port: int, paths: list[str], *, processes: int, headers: str = "",
                 end_marker: bytes = b""):
        ctx = mp.get_context("spawn")
        self.ready = ctx.Queue()
        self.results_q = ctx.Queue()
        self.go_event = ctx.Event()
        self.stop_event = ctx.Event()
        shares = [paths[i::processes] for i in range(processes)]
        self.procs = [
            ctx.Process(target=_worker, args=(host, port, share, headers, end_marker, self.ready, self.go_event,
                                              self.stop_event, self.results_q), daemon=True)
            for share in shares if share
        ]

    def start(self, timeout: float = 300) -> int:
        """Start the worker processes; block until every connection has its response headers (or
        failed); returns how many connections were attempted. ``timeout`` in seconds."""
        for p in self.procs:
            p.start()
        return sum(self.ready.get(timeout=timeout) for _ in self.procs)

    def go(self) -> None:
        """Let the connections count what they read."""
        self.go_event.set()

    def stop(self) -> None:
        """Close every connection now."""
        self.stop_event.set()

    def results(self, timeout: float = 300) -> list[StreamStats]:
        """One :class:`StreamStats` per path (order not kept), waiting ``timeout`` seconds per worker."""
        out: list[StreamStats] = []
        for _ in self.procs:
            out.extend(StreamStats(**d) for d in self.results_q.get(timeout=timeout))
        for p in self.procs:
            p.join(10)
        return out


class RawHTTP:
    """A bare HTTP/1.1 keep-alive connection for latency measurements: a request costs the client
    a few microseconds, so the time measured is the server's (httpx costs ~2.5 ms per request on
    a small machine, as much as the edge itself). Only what the bench needs: JSON POSTs with a
    ``Content-Length`` response, and reading the first event of an SSE response.
    """

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON bytes) to ``path``; returns ``(status, response body)``."""
        if self.writer is None:
            await self._connect()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
        return int(lines[0].split(b" ", 2)[1]), await self.reader.readexactly(length)

    async def first_event(self, path: str) -> bytes:
        """GET the SSE stream at ``path`` on a connection of its own; returns its first frame with
        a ``data:`` line, then closes the connection."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
            buf = b""
            while b"\ndata: " not in buf and not buf.startswith(b"data: "):
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise RuntimeError("stream ended before its first event")
                buf += chunk
            return buf
        finally:
            writer.close()

    def close(self) -> None:
        """Close the keep-alive connection."""
        if self.writer is not None:
            self.writer.close()

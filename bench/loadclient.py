"""SSE load clients in separate processes: one Python process cannot hold thousands of streams and
read them fast, so each worker process holds a share of the connections (plain asyncio sockets,
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


async def _one(host: str, port: int, path: str, headers: str, connected: asyncio.Event, counter: list[int],
               stop: asyncio.Event, end_marker: bytes) -> StreamStats:
    stats = StreamStats()
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    except OSError as err:
        stats.error = f"connect: {err}"
        counter[0] += 1
        if counter[0] == counter[1]:
            connected.set()
        return stats
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{headers}\r\n".encode())
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            stats.error = head.split(b"\r\n", 1)[0].decode()
            return stats
    except (asyncio.IncompleteReadError, TimeoutError, OSError) as err:
        stats.error = f"headers: {type(err).__name__}"
        return stats
    finally:
        counter[0] += 1
        if counter[0] == counter[1]:
            connected.set()
    tail = b""
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        while not stats.ended:
            read = asyncio.ensure_future(reader.read(1 << 16))
            done, _ = await asyncio.wait({read, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                break
            chunk = read.result()
            if not chunk:
                break
            data = tail + chunk
            now = time.time()
            n = data.count(b"\nid: ") + data.startswith(b"id: ")
            if n:
                stats.events += n
                stats.first = stats.first or now
                stats.last = now
            stats.pings += data.count(b": ping")
            if end_marker and end_marker in data:
                stats.ended = True
            tail = data[-64:]
    except (OSError, asyncio.IncompleteReadError) as err:
        stats.error = f"read: {type(err).__name__}"
    finally:
        stop_task.cancel()
        writer.close()
    return stats


def _worker(host: str, port: int, paths: list[str], headers: str, end_marker: bytes, ready, go, stop, results) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
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
                tasks.append(asyncio.ensure_future(_one(host, port, p, headers, connected, counter, stop_local, end_marker)))
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
        for p in self.procs:
            p.start()
        return sum(self.ready.get(timeout=timeout) for _ in self.procs)

    def go(self) -> None:
        self.go_event.set()

    def stop(self) -> None:
        self.stop_event.set()

    def results(self, timeout: float = 300) -> list[StreamStats]:
        out: list[StreamStats] = []
        for _ in self.procs:
            out.extend(StreamStats(**d) for d in self.results_q.get(timeout=timeout))
        for p in self.procs:
            p.join(10)
        return out

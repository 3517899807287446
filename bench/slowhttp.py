"""A latency-bound web server for the benchmark: every request is answered after ``delay`` seconds
(keep-alive, HTTP/1.1), however many arrive at once, like a remote API that is slow but not busy.

``python -m bench.slowhttp DELAY`` listens on a free loopback port and prints
``slowhttp ready: http://127.0.0.1:PORT``; it runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

BODY = b"slow but steady"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Serve one connection: each request (headers only; a body is read by Content-Length) is
    answered with 200 and a short body after ``delay`` seconds."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(delay: float) -> None:
    """Listen on a free loopback port and serve forever."""
    server = await asyncio.start_server(lambda r, w: handle(r, w, delay), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"slowhttp ready: http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.05))

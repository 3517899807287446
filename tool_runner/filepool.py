"""The threads file tools run on: a bounded pool of their own, with a deadline per call.

File system calls block the thread that makes them, so read_file and list_dir run off the event
loop. They get their own pool (``TOOL_FILE_WORKERS`` threads), not asyncio's default executor, so
that a call stuck in the kernel (a hung network file system) holds one of these threads and
nothing else: HTTP tools, progress messages and other tenants' calls go on. Every call has a
deadline (``TOOL_FILE_TIMEOUT`` seconds, waiting for a free thread included): past it the caller
gets ToolError ``timeout`` at once, a call still queued is dropped, and a running one stops at
its next :meth:`Deadline.check` (between chunks it reads). Opening never waits for a FIFO's
writer or a device (``O_NONBLOCK``, see :mod:`agentstream.beneath`).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from schemas.errors import ErrorKind
from tool_runner.errors import ToolError

T = TypeVar("T")


class Deadline:
    """When a call must be done: ``seconds`` from now (``time.monotonic``)."""

    def __init__(self, seconds: float, what: str):
        self.seconds = seconds
        self.what = what
        self.at = time.monotonic() + seconds

    @property
    def passed(self) -> bool:
        """True once the deadline has passed."""
        return time.monotonic() > self.at

    def check(self) -> None:
        """Raise ToolError ``timeout`` once the deadline has passed."""
        if self.passed:
            raise self.error()

    def error(self) -> ToolError:
        """The ToolError ``timeout`` naming the call and its budget."""
        return ToolError(ErrorKind.TIMEOUT, f"{self.what} did not finish within {self.seconds:g} s")


_Job = tuple[Callable[[Deadline], Any], Deadline, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class FilePool:
    """``workers`` threads for file tools; each call may take ``timeout`` seconds.

    The threads are daemon threads: a process that stops does not wait for one stuck in a system
    call (a ``concurrent.futures`` pool would join it at exit). Raises ValueError for ``workers``
    < 1 or ``timeout`` <= 0, naming the setting (TOOL_FILE_WORKERS, TOOL_FILE_TIMEOUT).
    """

    def __init__(self, workers: int, timeout: float):
        if workers < 1:
            raise ValueError(f"TOOL_FILE_WORKERS must be at least 1, not {workers}")
        if timeout <= 0:
            raise ValueError(f"TOOL_FILE_TIMEOUT must be more than 0 seconds, not {timeout:g}")
        self.workers = workers
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"file-tool-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, what: str, work: Callable[[Deadline], T]) -> T:
        """``work(deadline)`` on a pool thread; its result, or its exception.

        ``what`` names the call in the timeout message (``read_file 'a.txt'``). Raises ToolError
        ``timeout`` when the deadline passes first (the thread is not waited for).
        """
        loop = asyncio.get_running_loop()
        deadline = Deadline(self.timeout, what)
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((work, deadline, future, loop))
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise deadline.error() from None

    def close(self) -> None:
        """Let each thread end after its current call; calls still queued are dropped."""
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            work, deadline, future, loop = job
            if future.done() or deadline.passed:  # its caller has given up already
                continue
            try:
                outcome: tuple[bool, Any] = (True, work(deadline))
            except BaseException as err:
                outcome = (False, err)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)

"""Retrying with tenacity, without paying for it when the first try works.

tenacity's ``AsyncRetrying`` costs a few tens of microseconds to set up; on hot paths that
succeed at once (every event written, every run submitted) that is most of the call. So the first
try is made directly, and only a failure that should be retried hands over to tenacity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying

T = TypeVar("T")


async def first_then_retry(attempt: Callable[[], Awaitable[T]], retryable: Callable[[BaseException], bool],
                           make_retrying: Callable[[], AsyncRetrying],
                           first_wait: Callable[[BaseException], float] = lambda err: 0.05) -> T:
    """``await attempt()``; if it raises an exception ``retryable`` accepts, wait
    ``first_wait(error)`` seconds, then retry with the tenacity policy ``make_retrying()`` (which
    decides the later waits, when to stop and what is retried)."""
    try:
        return await attempt()
    except Exception as err:  # filtered just below
        if not retryable(err):
            raise
        await asyncio.sleep(first_wait(err))
    async for state in make_retrying():
        with state:
            return await attempt()
    raise AssertionError("unreachable")  # pragma: no cover

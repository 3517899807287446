"""The one loop that streams a run to a client, whatever the dialect.

Each dialect (OpenAI chat and text completions, the Responses API, AG-UI, llm-sse's
``/api/process``) supplies a :class:`RunRenderer`: its opening frames, the frames of one stored
event, whether the run's end has been sent, and what to send if the feed ends first (this edge is
stopping). The loop owns what they share: events that reach the feed together go out in one
write, a ``: ping`` comment fills every silence (docs/streaming.md, "Keep-alives"), and a stream
that ends before the run does cancels the run: its client went away and nobody will read the
answer (docs/streaming.md, "Disconnects").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from agentstream import sse
from edge.feed import HEARTBEAT, EventFeed
from edge.http import cancel_later
from edge.state import EdgeState
from schemas.events import RunEvent
from schemas.runs import CLIENT_DISCONNECTED


class RunRenderer(Protocol):
    """One dialect's rendering of a run as SSE bytes."""

    @property
    def done(self) -> bool:
        """The run's end has been rendered: nothing more will be sent."""

    def start(self) -> bytes:
        """Frames sent before any event (``b""`` for none)."""

    def render(self, event: RunEvent) -> bytes:
        """The frames of one stored event (its typed envelope, schemas/events.py), ``b""`` for none."""

    def interrupted(self) -> bytes:
        """Frames sent when the feed ends before the run does: this edge is stopping."""


async def stream_run(
    st: EdgeState, tenant: str, run_id: str, feed: EventFeed, renderer: RunRenderer, *,
    cancel_on_exit: bool = True, resumable: bool = False,
) -> AsyncIterator[bytes]:
    """The SSE body of a run: ``renderer``'s frames for the events of ``feed``, ``: ping`` in
    silences, until the renderer is done.

    ``cancel_on_exit``: a stream that ends first (the client went away, or this edge stops)
    cancels the run; ``resumable``: not when this edge stops, since the client can resume the
    stream from another edge (the Responses API's ``starting_after``)."""
    try:
        first = renderer.start()
        if first:
            yield first
        async for batch in feed.batches():
            if batch is HEARTBEAT:
                yield sse.PING
                continue
            frames: list[bytes] = []
            for item in batch:  # events that arrived together go out in one write
                event = item.event  # parsed once per stored event, however many streams show it
                if event is None:
                    continue  # a type this version does not know (agentstream.eventlog.parse_event)
                frames.append(renderer.render(event))
                if renderer.done:
                    break
            out = b"".join(frames)
            if out:
                yield out
            if renderer.done:
                return
        tail = renderer.interrupted()
        if tail:
            yield tail
    finally:
        if not renderer.done and cancel_on_exit and not (resumable and st.stopping.is_set()):
            cancel_later(st, tenant, run_id, CLIENT_DISCONNECTED)

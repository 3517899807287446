"""SSE framing (agentstream/sse.py) read back by a real SSE parser (httpx-sse), as clients read it."""

from __future__ import annotations

import pytest
from httpx_sse._decoders import SSEDecoder

from agentstream import sse


def parse(raw: bytes) -> list[tuple[str, str, str]]:
    """``(event, data, id)`` of each event in ``raw``, by httpx-sse's decoder (WHATWG rules)."""
    decoder, out = SSEDecoder(), []
    for line in raw.decode("utf-8").splitlines():
        event = decoder.decode(line)
        if event is not None:
            out.append((event.event, event.data, event.id))
    return out


def test_a_frame_round_trips_with_its_id_and_event():
    assert parse(sse.frame(b'{"a":1}', event="run.started", id=7)) == [("run.started", '{"a":1}', "7")]


@pytest.mark.parametrize("text", ["two\nlines", "cr\rbreak", "crlf\r\nbreak", "trailing\n", "\nleading", "é ✓"])
def test_line_breaks_in_data_become_several_data_lines_and_survive(text):
    raw = sse.frame(text)
    assert raw.endswith(b"\n\n") and b"\r" not in raw
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    assert parse(raw) == [("message", normalised, "")]


@pytest.mark.parametrize(("field", "value"), [("event", "a\nb"), ("id", "1\r2"), ("id", "x\x00")])
def test_a_line_break_in_event_or_id_is_refused(field, value):
    with pytest.raises(ValueError):
        sse.frame("x", **{field: value})


def test_comments_and_pings_are_ignored_by_parsers():
    assert parse(sse.comment("agentstream") + sse.PING + sse.frame("x")) == [("message", "x", "")]
    with pytest.raises(ValueError):
        sse.comment("two\nlines")


def test_the_openai_terminator():
    assert parse(sse.DONE) == [("message", "[DONE]", "")]

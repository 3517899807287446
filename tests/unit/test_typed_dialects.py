"""The edge's dialects fed typed run events (schemas/events.py classes), and the typed view of a
stored event they read (agentstream.eventlog.StoredEvent.event). Pure code, no processes: each
test asserts the frames a client of that dialect would read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from agentstream import sse
from agentstream.eventlog import StoredEvent, typed
from edge.dialects import localai
from edge.dialects.llmsse import ProcessStream
from edge.dialects.openai import ChatStream, TextCompletionStream, collect
from edge.feed import HEARTBEAT
from edge.streaming import stream_run
from schemas import events as E
from schemas.common import ErrorInfo, Usage

TS = datetime(2030, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)
TS_TEXT = "2030-01-02T03:04:05.250000Z"
ENVELOPE = {"run_id": "r1", "tenant": "t", "agent": "a", "message_id": "m1", "attempt": 1, "ts": TS}
USAGE = Usage(prompt_tokens=7, completion_tokens=5, total_tokens=12)


def started(attempt: int = 1) -> E.RunStarted:
    return E.RunStarted(**ENVELOPE, data=E.RunStartedData(runner="x", attempt=attempt))


def delta(text: str, step: int = 1) -> E.MessageDelta:
    return E.MessageDelta(**ENVELOPE, data=E.MessageDeltaData(step=step, text=text))


def tool_call(call_id: str, name: str, arguments: str, *, client: bool = False) -> E.ToolCall:
    return E.ToolCall(**ENVELOPE, data=E.ToolCallData(step=1, tool_call_id=call_id, name=name, arguments=arguments,
                                                      client=client))


def completed_message(text: str, finish: E.FinishReason = "stop") -> E.MessageCompleted:
    return E.MessageCompleted(**ENVELOPE, data=E.MessageCompletedData(text=text, finish_reason=finish, steps=1))


def completed() -> E.RunCompleted:
    return E.RunCompleted(**ENVELOPE, data=E.RunCompletedData(usage=USAGE, steps=1))


def failed(message: str = "boom") -> E.RunFailed:
    return E.RunFailed(**ENVELOPE, data=E.RunFailedData(reason="x", error=ErrorInfo(type="llm_http_error",
                                                                                     message=message)))


def retrying(resume_step: int = 1) -> E.RunRetrying:
    return E.RunRetrying(**ENVELOPE, data=E.RunRetryingData(attempt=2, reason="runner lost", resume_step=resume_step))


def stored(event: E.RunEvent, seq: int = 1) -> StoredEvent:
    """The event as the stream holds it (the writer's ``model_dump_json``, agent_runner/event_writer.py)."""
    return StoredEvent(seq=seq, subject="runs.t.a.r1", type=event.type, data=event.model_dump_json().encode())


def data_lines(frames: list[bytes]) -> list[object]:
    """The JSON of each ``data:`` frame (``[DONE]`` as the string)."""
    out: list[object] = []
    for frame in frames:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n"), frame
        payload = frame[len(b"data: "):-2]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


# -- the typed view of a stored event


def test_a_stored_event_is_parsed_once_into_its_class():
    ev = stored(delta("Hello"))
    first = ev.event
    assert isinstance(first, E.MessageDelta) and first.data.text == "Hello" and first.ts == TS
    assert ev.event is first, "every reader of one stored event (each watcher of a run) shares one parse"
    assert first.model_dump_json().encode() == ev.data, "the typed view writes back the bytes it was read from"


def test_an_unknown_event_type_is_left_out_with_one_log_line(caplog: pytest.LogCaptureFixture):
    raw = {"type": "run.paused_for_lunch", "run_id": "r1", "tenant": "t", "agent": "a", "message_id": "m1",
           "attempt": 1, "ts": TS_TEXT, "data": {"minutes": 30}}
    later = [StoredEvent(seq=n, subject="runs.t.a.r1", type=raw["type"], data=json.dumps(raw).encode())
             for n in (5, 6)]
    with caplog.at_level(logging.WARNING, logger="agentstream.eventlog"):
        assert [ev.event for ev in later] == [None, None]
    lines = [r.getMessage() for r in caplog.records if "run.paused_for_lunch" in r.getMessage()]
    assert len(lines) == 1 and "unknown to this version" in lines[0], lines
    assert typed([*later, stored(delta("x"), 7)]) == [stored(delta("x"), 7).event]


def test_fields_a_newer_version_added_are_ignored_and_a_broken_event_is_left_out():
    body = json.loads(delta("Hi").model_dump_json())
    body["data"]["language"] = "en"
    body["trace"] = "abc"
    newer = StoredEvent(seq=1, subject="s", type=E.MESSAGE_DELTA, data=json.dumps(body).encode())
    assert isinstance(newer.event, E.MessageDelta) and newer.event.data.text == "Hi"
    del body["data"]["text"]
    broken = StoredEvent(seq=2, subject="s", type=E.MESSAGE_DELTA, data=json.dumps(body).encode())
    assert broken.event is None


async def test_the_streaming_loop_skips_an_unknown_event_and_finishes_the_stream():
    unknown = StoredEvent(seq=2, subject="s", type="run.teleported",
                          data=b'{"type": "run.teleported", "run_id": "r1", "data": {}}')
    batches: list[list[StoredEvent]] = [[stored(started(), 1), unknown, stored(delta("Hi"), 3)],
                                        [stored(completed_message("Hi"), 4), stored(completed(), 5)]]

    class Feed:  # what stream_run reads of an EventFeed: its batches (the NATS part is edge/feed.py's)
        async def batches(self) -> AsyncIterator[object]:
            yield HEARTBEAT
            for batch in batches:
                yield batch

    renderer = _ChatFrames(ChatStream("chatcmpl-1", 1, "a", include_usage=False))
    writes = [w async for w in stream_run(None, "t", "r1", Feed(), renderer)]  # type: ignore[arg-type]
    assert writes[1] == sse.PING and renderer.done
    chunks = data_lines([f + b"\n\n" for w in writes if w != sse.PING for f in w.split(b"\n\n") if f])
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [{"role": "assistant", "content": ""},
                                                               {"content": "Hi"}, {}]
    assert chunks[-1] == "[DONE]"


class _ChatFrames:
    """A ChatStream as a RunRenderer (as edge/api_openai.py wraps it)."""

    def __init__(self, stream: ChatStream):
        self.stream = stream

    @property
    def done(self) -> bool:
        return self.stream.done

    def start(self) -> bytes:
        return self.stream.start()

    def render(self, event: E.RunEvent) -> bytes:
        return b"".join(self.stream.render(event))

    def interrupted(self) -> bytes:
        return b""


# -- OpenAI chat and text completions


def test_chat_stream_frames_text_client_tool_calls_finish_usage_and_done():
    stream = ChatStream("chatcmpl-1", 1700000000, "a", include_usage=True)
    frames = [stream.start()]
    for event in (started(), delta("Hel"), delta("lo"), tool_call("s1", "read_file", "{}"),
                  tool_call("c1", "get_weather", '{"city": "Oslo"}', client=True),
                  completed_message("Hello", "tool_calls"), completed()):
        frames.extend(stream.render(event))
    chunks = data_lines(frames)
    assert chunks[-1] == "[DONE]" and stream.done
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {"prompt_tokens": 7, "completion_tokens": 5,
                                                                      "total_tokens": 12}
    body = chunks[:-2]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" and c["usage"] is None
               for c in body)
    assert [c["choices"][0]["delta"] for c in body] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}]},
        {},
    ], "the agent's own tool call (read_file) is not shown"
    assert body[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert stream.render(delta("late")) == [], "nothing after [DONE]"


def test_chat_stream_errors_after_the_first_byte_and_on_a_diverging_restart():
    stream = ChatStream("chatcmpl-1", 1, "a", include_usage=False)
    assert data_lines(stream.render(failed("the model is down"))) == [
        {"error": {"message": "the model is down", "type": "server_error", "param": None, "code": "llm_http_error"}},
        "[DONE]"]
    stream = ChatStream("chatcmpl-2", 1, "a", include_usage=False)
    frames = [*stream.render(delta("Hello wor")), *stream.render(retrying()), *stream.render(delta("Hello world"))]
    assert [c["choices"][0]["delta"] for c in data_lines(frames)] == [{"content": "Hello wor"}, {"content": "ld"}]
    stream.render(retrying())
    out = data_lines(stream.render(delta("Goodbye")))
    assert out[0]["error"]["code"] == "run_restarted" and out[-1] == "[DONE]" and stream.done


def test_chat_stream_shows_a_cancelled_run_as_an_error():
    stream = ChatStream("chatcmpl-1", 1, "a", include_usage=False)
    cancelled = E.RunCancelled(**ENVELOPE, data=E.RunCancelledData(reason="client disconnected"))
    error = data_lines(stream.render(cancelled))[0]
    assert error == {"error": {"message": "the run was cancelled: client disconnected", "type": "cancelled",
                               "param": None, "code": "run_cancelled"}}


def test_text_completion_stream_frames():
    stream = TextCompletionStream("cmpl-1", 1, "a", include_usage=False)
    frames = [*stream.render(delta("Hi")), *stream.render(completed_message("Hi", "length")),
              *stream.render(completed())]
    chunks = data_lines(frames)
    assert [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]] == [
        ("Hi", None), ("", "length")]
    assert all(c["object"] == "text_completion" for c in chunks[:-1]) and chunks[-1] == "[DONE]"


def test_collect_folds_a_whole_run():
    run = collect([started(), delta("Hello wor"), retrying(), delta("Hello world"),
                   tool_call("c1", "get_weather", "{}", client=True), tool_call("s1", "read_file", "{}"),
                   completed_message("Hello world", "length"), completed()])
    assert run.text == "Hello world" and run.finish_reason == "length" and run.error is None
    assert run.tool_calls == [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    assert run.usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    broken = collect([delta("x"), failed("nope")])
    assert broken.error_type == "llm_http_error" and broken.error is not None
    assert broken.error["error"]["message"] == "nope"


# -- LocalAI


def test_localai_events_for_a_run():
    queued = E.RunQueued(**ENVELOPE, data=E.RunQueuedData(message="hi"))
    result = E.ToolResult(**ENVELOPE, data=E.ToolResultData(step=1, tool_call_id="s1", name="read_file", ok=False,
                                                            error=ErrorInfo(type="tool_error", message="no\nfile"),
                                                            ms=2.0))
    common = {"message_id": "m1", "run_id": "r1", "timestamp": TS_TEXT}
    assert localai.render(queued) == [("json_message", {"id": "m1-user", "sender": "user", "content": "hi",
                                                        **common})]
    assert localai.render(started()) == [("json_message_status", {"status": "processing", **common})]
    assert localai.render(delta("Hel")) == [("stream_event", {"type": "content", "content": "Hel", **common})]
    assert localai.render(tool_call("s1", "read_file", '{"p": 1}')) == [
        ("stream_event", {"type": "tool_call", "tool_name": "read_file", "tool_args": '{"p": 1}', **common})]
    shown = '{"error": {"type": "tool_error", "message": "no\\nfile"}}'
    assert localai.render(result) == [
        ("stream_event", {"type": "tool_result", "tool_name": "read_file", "tool_result": shown, **common}),
        ("status", f"Action taken: read_file<br>Result: {shown}"),
    ]
    assert localai.render(completed_message("Hello")) == [
        ("stream_event", {"type": "done", **common}),
        ("json_message", {"id": "m1-agent", "sender": "agent", "content": "Hello", **common}),
    ]
    assert localai.render(failed("down")) == [("json_error", {"error": "down", **common}),
                                              ("json_message_status", {"status": "completed", **common})]


def test_localai_shows_a_wait_for_approval_with_the_stored_times():
    expires = TS + timedelta(minutes=5)
    asked = E.ToolApprovalRequested(**ENVELOPE, data=E.ToolApprovalRequestedData(
        step=1, tool_call_id="c1", name="rm", arguments='{"path": "/"}', awaiting=["c1"], expires_at=expires))
    (name, status), (_, log) = localai.render(asked)
    assert name == "json_message_status" and status == {
        "status": "awaiting_approval", "tool_name": "rm", "tool_call_id": "c1", "message_id": "m1", "run_id": "r1",
        "timestamp": TS_TEXT}
    assert log == 'Awaiting approval: rm<br>Parameters: {"path": "/"}'


# -- llm-sse (/api/process)


def test_llmsse_frames_of_an_ensemble_run():
    stream = ProcessStream("m1", "conv-1", agent="team", source="judge", members=2, min_success=1)
    member = E.MemberFinished(**ENVELOPE, data=E.MemberFinishedData(
        member="m-a", run_id="c1", status="timeout", duration_ms=5.0, error=ErrorInfo(type="timeout", message="slow")))
    answered = E.MemberFinished(**ENVELOPE, data=E.MemberFinishedData(member="m-b", run_id="c2", status="completed",
                                                                      duration_ms=5.0))
    frames: list[bytes] = []
    for event in (started(), E.MemberStarted(**ENVELOPE, data=E.MemberStartedData(member="m-a", run_id="c1")),
                  member, answered, delta("Yes"), completed()):
        frames.extend(stream.render(event))
    base = {"message_id": "m1", "conversation_id": "conv-1"}
    assert data_lines(frames) == [
        {**base, "status": "Sending to m-a", "source": "m-a"},
        {**base, "status": "m-a timed out", "source": "m-a", "message": "slow"},
        {**base, "status": "m-b completed", "source": "m-b"},
        {**base, "status": "Combining via judge", "source": "judge"},
        {**base, "status": "Streaming", "source": "judge", "message": "Yes"},
        {**base, "status": "Completed", "source": "judge", "final": True},
    ]
    assert stream.done and stream.render(delta("late")) == []


def test_llmsse_frames_of_a_plain_run_that_fails():
    stream = ProcessStream("m1", None, agent="helper", source="helper", members=0)
    frames = [*stream.render(started()), *stream.render(started(attempt=2)), *stream.render(failed("down"))]
    assert data_lines(frames) == [
        {"message_id": "m1", "status": "Sending to helper", "source": "helper"},
        {"message_id": "m1", "status": "error", "source": "helper", "message": "down", "final": True},
    ], "a second attempt does not announce the agent again"


# -- a run's state (GET /api/runs/{id}, LocalAI's status history)


def test_a_run_record_folds_typed_events_and_counts_an_unknown_one():
    from agentstream.runstate import fold
    from edge.dialects.localai import status_history

    result = E.ToolResult(**ENVELOPE, data=E.ToolResultData(step=1, tool_call_id="s1", name="read_file", ok=True,
                                                            output={"lines": 3}, ms=2.0))
    unknown = StoredEvent(seq=4, subject="s", type="run.teleported", data=b'{"type": "run.teleported"}')
    events = [stored(started(), 1), stored(tool_call("s1", "read_file", '{"path": "x"}'), 2), stored(result, 3),
              unknown, stored(completed_message("3 lines"), 5), stored(completed(), 6)]
    record = fold(events)
    assert record is not None and record.status == "completed" and record.answer == "3 lines"
    assert record.events == 6 and record.last_event_id == 6 and record.started_at == TS_TEXT
    assert record.usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert status_history([record]) == [
        'Reasoning: run r1, step 1\nAction taken: read_file\nParameters: {"path": "x"}\nResult: {"lines": 3}']

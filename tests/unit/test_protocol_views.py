"""The Responses and AG-UI views of a run, on run events made here (pure code, no processes).

Each produced event is validated with the protocol's own models: the ``openai`` SDK's
``openai.types.responses`` and the ``ag-ui-protocol`` package's ``ag_ui.core``.
"""

from __future__ import annotations

import json

import pytest
from ag_ui.core import Event, EventType
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from edge.dialects.agui import AguiStream
from edge.dialects.responses import ResponseView, fold_turn, input_messages, split_last_user
from edge.errors import ApiError
from schemas import events as E

RESPONSE_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
AGUI_EVENT: TypeAdapter[Event] = TypeAdapter(Event)
TS = "2030-01-02T03:04:05.000000Z"
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def ev(type_: str, **data) -> E.RunEvent:
    """A typed run event of type ``type_``: its class (schemas/events.py) validates ``data``."""
    return E.run_event_adapter.validate_python({"type": type_, "run_id": "r1", "tenant": "t", "agent": "a",
                                                "message_id": "r1", "attempt": 1, "ts": TS, "data": data})


def two_steps(final: E.RunEvent | None = None) -> list[E.RunEvent]:
    """A run: step 1 says something and calls read_file (server) and get_weather (client)..."""
    return [
        ev("run.queued", message="hi", history_length=1, history=[{"role": "system", "content": "be brief"}],
           echo={"model": "a", "created_at": 1, "previous_response_id": "resp_r0"}),
        ev("run.started", runner="x", attempt=1),
        ev("message.delta", step=1, text="Let me look."),
        ev("tool.call", step=1, tool_call_id="c1", name="read_file", arguments='{"path": "x"}'),
        ev("tool.result", step=1, tool_call_id="c1", name="read_file", ok=True, output={"lines": 3}, ms=1.0),
        ev("message.delta", step=2, text="It has "),
        ev("message.delta", step=2, text="3 lines."),
        ev("message.completed", text="It has 3 lines.", finish_reason="stop", steps=2),
        final or ev("run.completed", usage=USAGE, steps=2),
    ]


def render_responses(events: list[E.RunEvent], echo: dict | None = None) -> tuple[ResponseView, list[dict]]:
    view = ResponseView("resp_r1", echo or {"model": "a", "created_at": 1})
    out = view.start()
    for body in events:
        out.extend(view.render(body))
    for e in out:
        RESPONSE_EVENT.validate_python(e)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return view, out


def test_each_step_is_a_message_item_and_the_answer_is_whole():
    view, out = render_responses(two_steps())
    final = Response.model_validate(out[-1]["response"])
    assert out[-1]["type"] == "response.completed" and final.status == "completed"
    assert [item.id for item in final.output] == ["msg_r1_0", "msg_r1_1"]
    assert final.output_text == "Let me look.It has 3 lines."
    assert final.usage.input_tokens == 7 and final.usage.output_tokens == 5 and final.usage.total_tokens == 12
    assert view.snapshot() == out[-1]["response"]
    _, replayed = render_responses(two_steps())
    assert replayed == out, "the same events give the same stream, sequence numbers included"


def test_a_restarted_step_is_not_sent_twice_and_a_different_one_fails_the_response():
    events = [ev("message.delta", step=1, text="Hello wor"), ev("run.retrying", attempt=2, reason="x", resume_step=1),
              ev("message.delta", step=1, text="Hello world"), ev("message.completed", text="Hello world", steps=1),
              ev("run.completed", usage=USAGE)]
    _, out = render_responses(events)
    assert "".join(e.get("delta", "") for e in out if e["type"] == "response.output_text.delta") == "Hello world"
    events[2] = ev("message.delta", step=1, text="Goodbye")
    view, out = render_responses(events)
    assert out[-1]["type"] == "response.failed" and view.error_type == "run_restarted"
    assert len([e for e in out if e["type"].startswith("response.failed")]) == 1


def test_length_cancel_and_failure_end_the_response():
    _, out = render_responses([ev("message.delta", step=1, text="a b"),
                               ev("message.completed", text="a b", finish_reason="length", steps=1),
                               ev("run.completed", usage=USAGE)])
    assert out[-1]["type"] == "response.incomplete"
    assert out[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    _, out = render_responses([ev("message.delta", step=1, text="a"), ev("run.cancelled", reason="stop")])
    assert out[-1]["type"] == "response.failed" and out[-1]["response"]["status"] == "cancelled"
    assert out[-2]["type"] == "response.output_item.done", "the open message is closed first"
    _, out = render_responses([ev("run.failed", reason="x", error={"type": "llm_http_error", "message": "boom"})])
    assert out[-1]["response"]["error"] == {"code": "server_error", "message": "boom"}


def test_a_client_tool_call_is_a_function_call_item():
    events = [ev("tool.call", step=1, tool_call_id="call_9", name="get_weather", arguments='{"city": "Oslo"}',
                 client=True),
              ev("message.completed", text="", finish_reason="tool_calls", steps=1), ev("run.completed")]
    _, out = render_responses(events, {"model": "a", "tools": [{"type": "function", "name": "get_weather",
                                                                "parameters": {}}]})
    final = Response.model_validate(out[-1]["response"])
    call = final.output[0]
    assert call.type == "function_call" and call.call_id == "call_9" and call.arguments == '{"city": "Oslo"}'
    assert final.tools[0].name == "get_weather"


def test_a_stored_turn_rebuilds_what_the_model_saw():
    events = two_steps()
    events.insert(4, ev("tool.call", step=1, tool_call_id="c2", name="get_weather", arguments="{}", client=True))
    turn = fold_turn(events)
    assert turn.ended and turn.stored and turn.previous_response_id == "resp_r0"
    assert turn.messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "x"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"lines": 3})},
        {"role": "assistant", "content": "It has 3 lines."},
    ], "the client answers c2 itself"
    unkept = fold_turn([ev("run.queued", message="hi", history_length=2), ev("run.completed")])
    assert not unkept.stored, "a run whose earlier turns were not kept cannot be continued"


def test_input_items_become_chat_messages():
    messages = input_messages([
        {"role": "developer", "content": "be brief"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a "},
                                                         {"type": "input_text", "text": "b"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]},
    ])
    assert [m.role for m in messages] == ["developer", "user", "assistant", "tool", "user"]
    assert messages[1].content == "a b" and [c.id for c in messages[2].tool_calls] == ["c1", "c2"]
    assert messages[4].content == [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    assert split_last_user(input_messages("hello")) == ("hello", [])
    for bad, param in (
        ([{"type": "reasoning"}], "input.0.type"),
        ([{"role": "robot", "content": "x"}], "input.0.role"),
        ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}], "input.0.content.0.type"),
    ):
        with pytest.raises(ApiError) as err:
            input_messages(bad)
        assert err.value.status == 400 and err.value.field == param


def render_agui(events: list[E.RunEvent]) -> list:
    view = AguiStream("thread-1", "client-run-1", "r1")
    out = [*view.start()]
    for body in events:
        out.extend(view.render(body))
    return [AGUI_EVENT.validate_json(e.model_dump_json(by_alias=True)) for e in out]


def test_ag_ui_steps_messages_and_tool_calls():
    out = render_agui(two_steps())
    assert [e.type for e in out] == [
        EventType.RUN_STARTED, EventType.STEP_STARTED, EventType.TEXT_MESSAGE_START, EventType.TEXT_MESSAGE_CONTENT,
        EventType.TEXT_MESSAGE_END, EventType.TOOL_CALL_START, EventType.TOOL_CALL_ARGS, EventType.TOOL_CALL_END,
        EventType.TOOL_CALL_RESULT, EventType.STEP_FINISHED, EventType.STEP_STARTED, EventType.TEXT_MESSAGE_START,
        EventType.TEXT_MESSAGE_CONTENT, EventType.TEXT_MESSAGE_CONTENT, EventType.TEXT_MESSAGE_END,
        EventType.STEP_FINISHED, EventType.RUN_FINISHED]
    assert out[5].parent_message_id == out[2].message_id == "r1-1"
    assert out[-1].thread_id == "thread-1" and out[-1].run_id == "client-run-1" and out[-1].usage[0].total_tokens == 12


def test_ag_ui_restarts_cancels_and_failures():
    out = render_agui([ev("message.delta", step=1, text="Hello wor"),
                       ev("run.retrying", attempt=2, reason="x", resume_step=1),
                       ev("message.delta", step=1, text="Hello world"), ev("run.cancelled", reason="stop")])
    assert "".join(e.delta for e in out if e.type == EventType.TEXT_MESSAGE_CONTENT) == "Hello world"
    assert out[-1].type == EventType.RUN_FINISHED and out[-1].outcome.type == "cancelled"
    assert out[-2].type == EventType.STEP_FINISHED, "the step is closed before the run's end"
    out = render_agui([ev("message.delta", step=1, text="Hello"), ev("run.retrying", resume_step=1, attempt=2,
                                                                      reason="x"),
                       ev("message.delta", step=1, text="Bye")])
    assert out[-1].type == EventType.RUN_ERROR and out[-1].code == "run_restarted"
    out = render_agui([ev("run.failed", reason="x", error={"type": "timeout", "message": "too slow"})])
    assert [e.type for e in out] == [EventType.RUN_STARTED, EventType.RUN_ERROR] and out[-1].message == "too slow"

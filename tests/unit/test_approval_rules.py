"""When a tool call waits for approval: the ``approval`` rule syntax of agent files and its matching
(schemas/approval_rules.py), the errors a bad rule gets (naming its field), and how the views of a
run (AG-UI, Responses, OpenAI chat) show a wait. Pure code: no processes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from ag_ui.core import RunFinishedEvent
from pydantic import ValidationError

from agentstream.approvals import expire
from edge.dialects.agui import AguiStream, interrupt_id, parse_interrupt_id
from edge.dialects.openai import ChatStream
from edge.dialects.responses import ResponseView, tool_call_id_of
from schemas import events as E
from schemas.agents import AgentDefinition
from schemas.approval_rules import ApprovalRule, needs_approval
from schemas.approvals import PendingApproval, PendingCall
from schemas.runs import RunRequest


def agent(*actions: Any, **fields: Any) -> AgentDefinition:
    return AgentDefinition.model_validate({"name": "a", "actions": list(actions), **fields})


def rule(**kw: Any) -> ApprovalRule:
    return ApprovalRule.model_validate(kw)


def test_words_and_rules_decide_which_calls_wait():
    assert needs_approval("required", {}) and not needs_approval("never", {"anything": 1})
    not_get = rule(unless={"method": ["GET", "HEAD"]})
    assert not needs_approval(not_get, {"method": "GET"})
    assert not needs_approval(not_get, {"method": "HEAD", "url": "x"})
    assert needs_approval(not_get, {"method": "POST"})
    assert needs_approval(not_get, {"url": "x"}), "an argument the rule names but the call lacks: unless fails"
    assert needs_approval(not_get, {"method": "get"}), "strings match case-sensitively"

    secrets = rule(when={"path": "secrets/*"})
    assert needs_approval(secrets, {"path": "secrets/key.pem"})
    assert not needs_approval(secrets, {"path": "README.md"})
    assert not needs_approval(secrets, {}), "when fails without the argument: no approval"
    assert needs_approval(rule(when={"path": ["a.txt", "b?.txt", "[xy]*"]}), {"path": "b1.txt"})
    assert needs_approval(rule(when={"path": ["a.txt", "b?.txt", "[xy]*"]}), {"path": "yes"})

    both = rule(when={"url": "https://api.example.com/*"}, unless={"method": "GET"})
    assert needs_approval(both, {"url": "https://api.example.com/pay", "method": "POST"})
    assert not needs_approval(both, {"url": "https://api.example.com/pay", "method": "GET"})
    assert not needs_approval(both, {"url": "https://other.example/pay", "method": "POST"})

    every = rule(when={"method": "POST", "url": "https://x/*"})  # every named argument must match
    assert needs_approval(every, {"method": "POST", "url": "https://x/1"})
    assert not needs_approval(every, {"method": "POST", "url": "https://y/1"})


def test_values_other_than_strings_match_by_json_equality():
    assert needs_approval(rule(when={"count": 3}), {"count": 3})
    assert needs_approval(rule(when={"count": 3}), {"count": 3.0})
    assert not needs_approval(rule(when={"count": 1}), {"count": True}), "1 is not true"
    assert not needs_approval(rule(when={"force": True}), {"force": 1})
    assert needs_approval(rule(when={"force": True}), {"force": True})
    assert needs_approval(rule(when={"to": None}), {"to": None})
    assert not needs_approval(rule(when={"to": None}), {"to": "x"})
    assert not needs_approval(rule(when={"n": "3"}), {"n": 3}), "a glob matches text only"
    assert not needs_approval(rule(when={"path": "*"}), {"path": ["a"]})


def test_an_agent_file_declares_approvals_beside_plain_actions():
    a = agent("list_dir", {"name": "read_file", "approval": {"when": {"path": "*.toml"}}},
              {"name": "http_request", "approval": {"unless": {"method": ["GET", "HEAD"]}}},
              approval_timeout=30)
    assert a.tool_names == ["list_dir", "read_file", "http_request"]
    assert a.approval_timeout == 30
    assert not a.call_needs_approval("list_dir", {"path": "."})
    assert a.call_needs_approval("read_file", {"path": "pyproject.toml"})
    assert not a.call_needs_approval("read_file", {"path": "README.md"})
    # The tool's own defaults come first: http_request without a method is a GET.
    assert not a.call_needs_approval("http_request", {"url": "https://example.com/"})
    assert a.call_needs_approval("http_request", {"url": "https://example.com/", "method": "DELETE"})
    # The public view keeps the file's shape: a bare name for a tool that never asks.
    assert a.public_view()["actions"] == [
        "list_dir", {"name": "read_file", "approval": {"when": {"path": "*.toml"}}},
        {"name": "http_request", "approval": {"unless": {"method": ["GET", "HEAD"]}}}]
    assert agent({"name": "read_file", "approval": "required"}).call_needs_approval("read_file", {"path": "x"})
    assert agent({"name": "read_file"}).tool_names == ["read_file"]
    assert agent().approval_timeout == 86400


def test_mcp_servers_take_the_same_rules():
    a = AgentDefinition.model_validate({"name": "a", "mcp_servers": [
        {"name": "notes", "url": "https://mcp.example/mcp", "approval": {"when": {"name": "secret*"}}}]})
    assert a.call_needs_approval("notes__read_note", {"name": "secret-plan"}, mcp_server="notes")
    assert not a.call_needs_approval("notes__read_note", {"name": "groceries"}, mcp_server="notes")
    assert not a.call_needs_approval("x", {}, mcp_server="unknown")


@pytest.mark.parametrize(("approval", "field", "says"), [
    ("sometimes", "actions.1.approval", "approval must be required, never, or a rule"),
    (True, "actions.1.approval", "approval must be required, never, or a rule"),
    ({}, "actions.1.approval", "a rule needs when or unless"),
    ({"unles": {"method": "GET"}}, "actions.1.approval.unles", "Extra inputs"),
    ({"unless": {}}, "actions.1.approval.unless", "at least 1"),
    ({"unless": {"method": []}}, "actions.1.approval.unless.method", ""),
])
def test_a_bad_rule_is_an_error_naming_its_field(approval, field, says):
    with pytest.raises(ValidationError) as caught:
        agent("list_dir", {"name": "http_request", "approval": approval})
    first = caught.value.errors()[0]
    assert ".".join(str(p) for p in first["loc"]).startswith(field), caught.value
    assert says in str(caught.value)


def test_bad_action_entries_name_their_field():
    with pytest.raises(ValidationError) as caught:
        agent({"name": "read_file", "aproval": "required"})
    assert caught.value.errors()[0]["loc"] == ("actions", 0, "aproval")
    with pytest.raises(ValidationError, match="unknown tool"):
        agent({"name": "delete_everything", "approval": "required"})
    with pytest.raises(ValidationError, match="listed twice"):
        agent("read_file", {"name": "read_file", "approval": "required"})
    for bad in ([1], ["no spaces"], [{"approval": "required"}]):
        with pytest.raises(ValidationError) as caught:
            agent(*bad)
        assert caught.value.errors()[0]["loc"][:2] == ("actions", 0)
    with pytest.raises(ValidationError) as caught:
        agent(approval_timeout=0)
    assert caught.value.errors()[0]["loc"] == ("approval_timeout",)


def _pending(expires: datetime, *decisions: str | None) -> PendingApproval:
    return PendingApproval(
        run_id="r1", agent="a", step=1, resume_id="x1", requested_at=datetime(2026, 1, 1, tzinfo=UTC),
        expires_at=expires, request=RunRequest(run_id="r1", message_id="m", message="hi"),
        calls=[PendingCall(tool_call_id=f"c{i}", name="read_file", decision=d)  # type: ignore[arg-type]
               for i, d in enumerate(decisions)])


def test_the_deadline_rejects_what_is_undecided_and_keeps_what_is():
    deadline = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    entry = _pending(deadline, "approved", None)
    assert not entry.ready(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
    assert not expire(entry, datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
    assert entry.ready(deadline)
    assert expire(entry, deadline)
    assert [(c.decision, c.by) for c in entry.calls] == [("approved", None), ("rejected", "timeout")]
    assert entry.decided and not expire(entry, deadline)
    assert _pending(datetime(2030, 1, 1, tzinfo=UTC), "rejected", "approved").ready(deadline)


def _envelope(type_: str, data: dict[str, Any]) -> E.RunEvent:
    """A typed run event of type ``type_`` (its class in schemas/events.py validates ``data``)."""
    return E.run_event_adapter.validate_python({
        "type": type_, "run_id": "run1", "tenant": "t", "agent": "a", "message_id": "m", "attempt": 1,
        "ts": "2026-12-01T10:00:00Z", "data": data})


def _requested(call_id: str, awaiting: list[str]) -> E.RunEvent:
    return _envelope(E.TOOL_APPROVAL_REQUESTED, {
        "step": 1, "tool_call_id": call_id, "name": "read_file", "arguments": '{"path": "x"}',
        "awaiting": awaiting, "expires_at": "2026-12-01T11:00:00Z"})


def test_agui_ends_its_run_with_an_interrupt_once_every_waiting_call_is_asked():
    view = AguiStream("thread", "agui-run", "run1")
    view.start()
    view.render(_envelope(E.TOOL_CALL, {"step": 1, "tool_call_id": "c1", "name": "read_file", "arguments": "{}"}))
    assert view.render(_requested("c1", ["c1", "c2"])) == [] and not view.done
    events = view.render(_requested("c2", ["c1", "c2"]))
    finished = events[-1]
    assert isinstance(finished, RunFinishedEvent) and view.done
    assert finished.outcome is not None and finished.outcome.type == "interrupt"
    interrupts = finished.outcome.interrupts
    assert [i.tool_call_id for i in interrupts] == ["c1", "c2"]
    assert interrupts[0].id == interrupt_id("run1", "c1") and interrupts[0].reason == "tool_approval"
    assert interrupts[0].expires_at == "2026-12-01T11:00:00Z"
    assert parse_interrupt_id(interrupts[1].id) == ("run1", "c2")
    assert parse_interrupt_id("something-else") is None
    assert parse_interrupt_id("approval:run1:") is None


def test_responses_show_an_approval_request_item_and_know_when_the_run_waits():
    view = ResponseView("resp_run1", {"model": "a"})
    view.start()
    out = view.render(_requested("c1", ["c1"]))
    assert [e["type"] for e in out] == ["response.output_item.added", "response.output_item.done"]
    item = out[-1]["item"]
    assert item == {"id": "mcpr_c1", "type": "mcp_approval_request", "server_label": "agentstream",
                    "name": "read_file", "arguments": '{"path": "x"}'}
    assert tool_call_id_of(item["id"]) == "c1"
    assert view.waiting and view.awaiting == {"c1"} and view.snapshot()["status"] == "in_progress"
    assert view.render(_requested("c1", ["c1"])) == [], "asked again by a later attempt: shown once"
    view.render(_envelope(E.RUN_STARTED, {"runner": "r", "attempt": 2}))
    assert not view.waiting


def test_the_chat_stream_shows_a_wait_as_a_comment_only():
    stream = ChatStream("chatcmpl-1", 0, "a", include_usage=False)
    frames = stream.render(_requested("c1\nevil", ["c1\nevil"]))
    assert len(frames) == 1 and frames[0].startswith(b": awaiting approval of tool call c1 evil (read_file)")
    assert frames[0].endswith(b"\n\n") and frames[0].count(b"\n") == 2
    assert b"/api/runs/run1/approve" in frames[0]


def test_an_approval_rule_is_not_mistaken_for_a_localai_action():
    from agentstream.localai_config import from_localai, is_localai

    ours = {"name": "a", "actions": ["read_file", {"name": "http_request", "approval": {"unless": {"method": "GET"}}}]}
    assert not is_localai(ours) and from_localai(ours) is ours
    mixed = {"name": "a", "api_url": "http://h/v1", "actions": [
        {"name": "read_file", "config": ""}, {"name": "http_request", "approval": "required"}]}
    assert from_localai(mixed)["actions"] == ["read_file", {"name": "http_request", "approval": "required"}]
    assert agent(*from_localai(mixed)["actions"]).approval_of("http_request") == "required"

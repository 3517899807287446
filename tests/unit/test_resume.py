"""Folding a run's stored events into what a new attempt must redo (agent_runner/resume.py)."""

from __future__ import annotations

from agent_runner import resume
from agentstream.eventlog import StoredEvent
from tests.unit.stored import stored_events


def events(*items: tuple[str, dict]) -> list[StoredEvent]:
    return stored_events(*items)


def call(step: int, call_id: str, name: str = "read_file") -> tuple[str, dict]:
    return "tool.call", {"step": step, "tool_call_id": call_id, "name": name, "arguments": "{}"}


def result(step: int, call_id: str) -> tuple[str, dict]:
    return "tool.result", {"step": step, "tool_call_id": call_id, "name": "read_file", "ok": True, "ms": 1.0}


def test_a_fresh_run_starts_at_step_one():
    plan = resume.plan(resume.fold(events(("run.queued", {}), ("run.started", {"runner": "r", "attempt": 1}))))
    assert (plan.step, plan.finished, plan.pending) == (1, [], None)


def test_a_crash_after_a_tool_call_redoes_only_its_missing_result():
    history = resume.fold(events(
        ("run.started", {"runner": "r", "attempt": 1}),
        ("message.delta", {"step": 1, "text": "Let me look."}),
        call(1, "c1"), call(1, "c2"), result(1, "c1"),
    ))
    assert history.crashed_attempts == 1
    plan = resume.plan(history)
    assert plan.step == 1 and plan.pending is not None
    assert set(plan.pending.results) == {"c1"} and [c.tool_call_id for c in plan.pending.calls] == ["c1", "c2"]


def test_finished_steps_are_kept_and_the_interrupted_model_call_is_redone():
    history = resume.fold(events(
        ("run.started", {"runner": "r", "attempt": 1}),
        call(1, "c1"), result(1, "c1"),
        ("message.delta", {"step": 2, "text": "half an ans"}),
        ("run.started", {"runner": "r2", "attempt": 2}),
        ("run.retrying", {"attempt": 2, "reason": "runner died", "resume_step": 2}),
    ))
    plan = resume.plan(history)
    assert plan.step == 2 and [s.step for s in plan.finished] == [1] and plan.pending is None
    assert history.steps[2].text == ""  # the superseded text is not handed to the model again
    assert history.crashed_attempts == 2  # both attempts stopped without an end (the fold is for a third)


def test_a_handed_back_attempt_is_not_a_crash():
    history = resume.fold(events(
        ("run.started", {"runner": "r", "attempt": 1}),
        ("run.requeued", {"runner": "r"}),
        ("run.started", {"runner": "r2", "attempt": 1}),
    ))
    assert history.crashed_attempts == 1  # only the open attempt at the end counts


def test_events_this_version_cannot_read_change_nothing_but_attempts_still_count():
    """A newer version's event type, or an envelope that does not validate, is skipped; attempts
    are still counted from the stored types."""
    history = resume.fold(events(
        ("run.started", {"runner": "r", "attempt": 1}),
        ("message.delta", {"step": 1, "text": "kept"}),
        ("message.reasoning", {"step": 1, "text": "from a newer version"}),
        ("message.delta", {"step": 1}),  # no text: does not validate
        ("run.started", {"runner": "r", "attempt": 2}),
    ))
    assert history.steps[1].text == "kept"
    assert (history.started_attempts, history.crashed_attempts) == (2, 2)

"""What a delivery of a run request turns into (agent_runner/delivery.py), and how a run's failure
is written (agent_runner/failures.py): pure decisions, no processes."""

from __future__ import annotations

import ast

import pytest

from agent_runner import delivery, failures, resume
from agent_runner.delivery import Verdict, Wait
from agent_runner.ensemble import MembersFailed
from agent_runner.llm import LLMError
from agent_runner.loop import MaxStepsExceeded
from agentstream.eventlog import StorageFull
from schemas.common import Usage
from schemas.errors import AgentstreamError, ErrorKind
from tests.harness import REPO
from tests.unit.stored import stored_events

STARTED = ("run.started", {"runner": "r", "attempt": 1})


def fold(*items: tuple[str, dict]) -> resume.RunHistory:
    return resume.fold(stored_events(("run.queued", {}), *items))


def classify(*items: tuple[str, dict], wait: Wait = Wait.NONE, max_attempts: int = 3) -> Verdict:
    history = fold(*items)
    return delivery.classify(items[-1][0], history, wait=wait, max_attempts=max_attempts)


@pytest.mark.parametrize("last", ["run.completed", "run.failed", "run.cancelled"])
def test_a_run_that_ended_is_only_acked(last):
    assert delivery.first_look(last) is Verdict.ENDED
    assert delivery.classify(last, max_attempts=3) is Verdict.ENDED  # no history needed


def test_a_run_with_only_its_queued_event_starts_from_the_beginning():
    assert delivery.first_look("run.queued") is Verdict.FRESH
    assert delivery.classify("run.queued", max_attempts=3) is Verdict.FRESH


def test_a_run_with_more_than_its_queued_event_needs_its_history():
    assert delivery.first_look("run.started") is None
    with pytest.raises(ValueError, match="history"):
        delivery.classify("run.started", max_attempts=3)


def test_an_attempt_that_died_is_resumed_from_its_events():
    assert classify(STARTED, ("message.delta", {"step": 1, "text": "Hel"})) is Verdict.RESUME


def test_a_run_handed_back_at_shutdown_is_resumed_and_says_so():
    assert classify(STARTED, ("run.requeued", {"runner": "r", "attempt": 1, "reason": "stopping"})) is Verdict.RESUME
    assert delivery.retry_reason("run.requeued") == "it was handed back by a runner shutting down"
    assert delivery.retry_reason("tool.call") == "the previous attempt stopped after tool.call"


def test_a_run_whose_answer_is_stored_only_gets_its_end():
    assert classify(STARTED, ("message.completed", {"text": "hi", "steps": 1})) is Verdict.ANSWERED


def test_a_run_whose_attempts_died_max_attempts_times_is_dead():
    died_three_times = (STARTED, STARTED, STARTED)
    assert fold(*died_three_times).crashed_attempts == 3
    assert classify(*died_three_times, max_attempts=3) is Verdict.DEAD
    assert classify(*died_three_times, max_attempts=4) is Verdict.RESUME
    # Dead outranks a stored answer: nothing more is tried.
    answered = ("message.completed", {"text": "hi", "steps": 1})
    assert classify(*died_three_times, answered, max_attempts=3) is Verdict.DEAD


def test_a_run_waiting_for_approvals_is_acked_until_the_request_that_resumes_it():
    waited = (STARTED, ("tool.approval_requested", {"step": 1, "tool_call_id": "c1", "name": "write_file",
                                                     "arguments": "{}", "awaiting": ["c1"],
                                                     "expires_at": "2030-01-01T00:00:00Z"}))
    assert fold(*waited).crashed_attempts == 0  # stopping to wait is no death
    assert classify(*waited, wait=Wait.WAITING) is Verdict.AWAITING
    assert classify(*waited, wait=Wait.RESUMING) is Verdict.APPROVED
    # Waiting outranks dying: a run whose earlier attempts died still waits for its person.
    assert classify(STARTED, STARTED, STARTED, wait=Wait.WAITING) is Verdict.AWAITING


def test_the_wait_a_delivery_finds_is_decided_by_its_resume_id():
    assert delivery.wait_of(None, None) is Wait.NONE
    assert delivery.wait_of(None, "abc") is Wait.NONE  # a resume request for a wait already gone
    assert delivery.wait_of("abc", None) is Wait.WAITING  # a redelivery of the request it stopped with
    assert delivery.wait_of("abc", "old") is Wait.WAITING  # a repeat of an earlier resume
    assert delivery.wait_of("abc", "abc") is Wait.RESUMING


def test_a_stored_wait_whose_calls_are_all_decided_is_left_over():
    assert delivery.wait_is_left_over(["c1", "c2"], {"c1": 1, "c2": 2})
    assert not delivery.wait_is_left_over(["c1", "c2"], {"c1": 1})


@pytest.mark.parametrize(("delivered", "plain", "cancelled", "resuming", "fast"), [
    (1, True, False, False, True),
    (2, True, False, False, False),  # a redelivery: its events decide
    (1, False, False, False, False),  # an ensemble, or an agent this runner does not know
    (1, True, True, False, False),  # cancelled before it arrived
    (1, True, False, True, False),  # resuming after approvals
])
def test_only_a_plain_first_delivery_starts_before_its_events_are_read(delivered, plain, cancelled, resuming, fast):
    assert delivery.takes_fast_path(delivered, plain=plain, cancelled=cancelled, resuming=resuming) is fast


def test_each_attempt_has_a_new_number():
    assert delivery.attempt_of(2, fold(STARTED)) == 2
    # A run back from its approvals in a request delivered for the first time: after both earlier attempts.
    assert delivery.attempt_of(1, fold(STARTED, STARTED)) == 3


def test_a_retry_rewrites_text_from_the_step_whose_model_call_did_not_complete():
    interrupted = resume.plan(fold(STARTED, ("message.delta", {"step": 1, "text": "Hel"})))
    assert delivery.resume_step(interrupted) == 1
    called = resume.plan(fold(STARTED, ("tool.call", {"step": 1, "tool_call_id": "c1", "name": "read_file",
                                                      "arguments": "{}"})))
    assert delivery.resume_step(called) == 2


# -- failures


@pytest.mark.parametrize(("error", "kind", "reason"), [
    (LLMError(ErrorKind.LLM_HTTP_ERROR, "502 from the model"), "llm_http_error", "model call failed"),
    (MaxStepsExceeded("no answer within max_steps (3)"), "max_steps", "max_steps reached"),
    (MembersFailed("2 of 3 failed"), "members_failed", "not enough members answered"),
    (AgentstreamError(ErrorKind.TIMEOUT, "too slow", reason="timed out"), "timeout", "timed out"),
])
def test_a_failure_with_a_kind_keeps_it(error, kind, reason):
    failure = failures.failure_of(error)
    assert failure is error and (failure.kind, failure.reason) == (kind, reason)


def test_a_full_event_store_is_storage_unavailable_also_for_a_subclass():
    class DiskGone(StorageFull):
        pass

    for err in (StorageFull("no space"), DiskGone("no space")):
        failure = failures.failure_of(err)
        assert (failure.kind, failure.reason) == (ErrorKind.STORAGE_UNAVAILABLE, "event store full")
        assert failure.message == failures.STORAGE_FULL_MESSAGE


def test_any_other_exception_is_an_internal_error_naming_its_class():
    class BrandNew(KeyError):
        pass

    for err, shown in ((ValueError("bad"), "ValueError: bad"), (BrandNew("x"), "BrandNew: 'x'")):
        failure = failures.failure_of(err)
        assert (failure.kind, failure.reason, failure.message) == (ErrorKind.INTERNAL_ERROR, "internal error", shown)


def test_the_run_failed_data_carries_the_kind_and_what_the_run_used():
    data = failures.failed_data(AgentstreamError(ErrorKind.TIMEOUT, "took longer than 5 s", reason="timed out"),
                                usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7), steps=2,
                                duration_ms=5001.5)
    assert data.model_dump(mode="json") == {
        "reason": "timed out", "error": {"type": "timeout", "message": "took longer than 5 s"},
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, "steps": 2, "duration_ms": 5001.5}
    bare = failures.failed_data(AgentstreamError(ErrorKind.FORBIDDEN_AGENT, "no", reason="agent not allowed"))
    assert (bare.usage, bare.steps, bare.duration_ms) == (Usage(), 0, 0.0)


def test_run_failed_is_written_in_one_place():
    """Every exit that fails a run goes through agent_runner.failures: no other module of the runner
    builds ``RunFailedData`` or emits ``run.failed`` itself."""
    offenders = []
    for path in (REPO / "agent_runner").rglob("*.py"):
        if path.name == "failures.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                first = node.args[0] if node.args else None
                if name == "RunFailedData" or (name == "emit" and getattr(first, "attr", None) == "RUN_FAILED"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []

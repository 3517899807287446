"""What one delivery of a run request turns into, decided from what is stored of the run: pure.

A request of AGENT_RUNS may be delivered many times (JetStream redelivers it when its runner
stops keeping it alive; a run that waited for approvals comes back in a new request). The run's
events are its only state (agent_runner.resume), so each delivery looks at them and is one of
the :class:`Verdict` members; :func:`classify` decides which, with no I/O, and
agent_runner.opening does what it says (docs/events.md, "run.started and run.retrying").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from agent_runner import resume
from agent_runner.event_writer import RunEventWriter
from schemas import events as E


class Verdict(StrEnum):
    """What a delivery does."""

    ENDED = "ended"
    """The run's terminal event is stored (a duplicate, a redelivery after the end): ack, write nothing."""
    FRESH = "fresh"
    """Only ``run.queued`` is stored: ``run.started``, and the run starts from its first step."""
    AWAITING = "awaiting"
    """The run waits for approvals and this is not the request that resumes it (a redelivery of
    the request it stopped with, or a repeat): each waiting call's ``tool.approval_requested`` is
    made sure to be written, and the delivery is acked."""
    APPROVED = "approved"
    """This is the request that resumes a run after its approvals: ``run.started``, the decisions
    (``tool.approval_decided``), then the step goes on."""
    DEAD = "dead"
    """Its attempts died ``max_attempts`` times: the request is kept as a dead letter and the run
    ends ``run.failed`` (``gave_up``)."""
    ANSWERED = "answered"
    """Its answer (``message.completed``) is stored but not its end: ``run.retrying``,
    ``run.started``, ``run.completed``, nothing run again."""
    RESUME = "resume"
    """An earlier attempt stopped: ``run.retrying``, ``run.started``, and the run continues from
    its events (agent_runner.resume.plan)."""


class Wait(StrEnum):
    """The run's wait for approvals, as this delivery finds it (APPROVALS bucket)."""

    NONE = "none"
    """The run waits for no approval."""
    WAITING = "waiting"
    """It waits, and this delivery does not carry the wait's resume id."""
    RESUMING = "resuming"
    """It waited, every call is decided, and this delivery carries the wait's resume id."""


class AlreadyEnded(Exception):
    """The run this delivery is for has already ended: nothing to do but ack."""


class NotFresh(Exception):
    """A first delivery for a run that already has events beyond ``run.queued``."""


class NotSuspended(Exception):
    """The wait for approvals could not be read or stored: the request is handed back for later."""


@dataclass
class Opened:
    """What a delivery of a run request turned into: a writer to continue the run with (None: the
    run is already finished, or waits, nothing to run), the attempt number, and where to resume."""

    writer: RunEventWriter | None
    attempt: int
    plan: resume.ResumePlan | None = None
    history: resume.RunHistory | None = None
    cancel_reason: str | None = None
    """The run was cancelled while it waited for approvals: it ends ``run.cancelled`` at once."""


def takes_fast_path(delivered: int, *, plain: bool, cancelled: bool, resuming: bool) -> bool:
    """Whether a delivery may start the run before reading its events (its model call starts at
    once, ``run.started`` written concurrently): the request's first delivery (``delivered``, the
    JetStream delivery count, is 1), of a ``plain`` agent (known to this runner, not an
    ensemble), not ``cancelled`` already, not ``resuming`` after approvals."""
    return delivered == 1 and plain and not cancelled and not resuming


def first_look(last_type: str) -> Verdict | None:
    """The verdict from the run's latest event type alone: ENDED (a terminal event), FRESH (only
    ``run.queued``), or None (the run has more: its history decides, :func:`classify`)."""
    if E.is_terminal(last_type):
        return Verdict.ENDED
    if last_type == E.RUN_QUEUED:
        return Verdict.FRESH
    return None


def classify(last_type: str, history: resume.RunHistory | None = None, *, wait: Wait = Wait.NONE,
             max_attempts: int) -> Verdict:
    """What a delivery does, given the run's latest event type, its folded ``history`` (needed
    unless :func:`first_look` decides), its ``wait`` for approvals and the most attempts that
    may die (``max_attempts``, AGENT_RUNNER_MAX_ATTEMPTS). In this order: ended, fresh, waiting
    or resuming after approvals (an attempt that stopped to wait is no death), dead, answered,
    resume. Raises ValueError when ``history`` is needed and None."""
    early = first_look(last_type)
    if early is not None:
        return early
    if history is None:
        raise ValueError(f"a run whose latest event is {last_type} is classified from its history")
    if wait is Wait.WAITING:
        return Verdict.AWAITING
    if wait is Wait.RESUMING:
        return Verdict.APPROVED
    if history.crashed_attempts >= max_attempts:
        return Verdict.DEAD
    if history.completed is not None:
        return Verdict.ANSWERED
    return Verdict.RESUME


def wait_of(stored_resume_id: str | None, delivered_resume_id: str | None) -> Wait:
    """The run's :class:`Wait`: ``stored_resume_id`` is the resume id of its stored wait (None: it
    waits for nothing), ``delivered_resume_id`` the ``Agentstream-Resume`` header of this delivery."""
    if stored_resume_id is None:
        return Wait.NONE
    return Wait.RESUMING if delivered_resume_id == stored_resume_id else Wait.WAITING


def wait_is_left_over(call_ids: Iterable[str], decided: Mapping[str, object]) -> bool:
    """Whether a stored wait is left over by an attempt that already resumed: every one of its
    calls (``call_ids``) has its decision in the run's events (``decided``, by tool call id)."""
    return all(call_id in decided for call_id in call_ids)


def attempt_of(delivered: int, history: resume.RunHistory) -> int:
    """A new attempt's number: each is new (its events' message ids contain it), also when a run
    that waited for approvals comes back in a request delivered for the first time."""
    return max(delivered, history.started_attempts + 1)


def retry_reason(last_type: str) -> str:
    """The ``run.retrying`` reason, from the run's latest event type."""
    if last_type == E.RUN_REQUEUED:
        return "it was handed back by a runner shutting down"
    return f"the previous attempt stopped after {last_type}"


def resume_step(plan: resume.ResumePlan) -> int:
    """``run.retrying``'s ``resume_step``: the first step whose text the new attempt writes again
    (a step whose model call completed keeps its text; only its missing tool results follow)."""
    return plan.step + 1 if plan.pending is not None else plan.step

"""How a run ends ``run.failed``: one path for every way it can (docs/events.md, ``run.failed``).

Every exit that fails a run (a timeout, an agent this runner does not have or cannot run, the
event store out of space, a bug, a dead letter, a refused request, and every
:class:`~schemas.errors.AgentstreamError` the run raised) goes through :func:`end_failed`, with
the failure as an :class:`~schemas.errors.AgentstreamError`. An exception that is not one is
turned into one by :func:`failure_of`: a short ordered list of the classes the runner knows, and
``internal_error`` for anything else, so a new exception class can never go unmapped.
"""

from __future__ import annotations

from agent_runner.event_writer import RunEventWriter
from agentstream.eventlog import StorageFull
from schemas import events as E
from schemas.common import ErrorInfo, Usage
from schemas.errors import AgentstreamError, ErrorKind

STORAGE_FULL_MESSAGE = "the run's events could not be stored (the event store had no space), so the run was stopped"

_KNOWN: tuple[tuple[type[BaseException], ErrorKind, str, str | None], ...] = (
    (StorageFull, ErrorKind.STORAGE_UNAVAILABLE, "event store full", STORAGE_FULL_MESSAGE),
)
"""``(exception class, kind, run.failed reason, message)`` in the order they are tried (the first
class the exception is an instance of wins); a message of None: the exception's own."""


def failure_of(err: BaseException) -> AgentstreamError:
    """The failure ``err`` stands for: itself when it is an :class:`AgentstreamError` (its own
    ``kind``), else the first match in :data:`_KNOWN`, else ``internal_error`` (reason
    ``internal error``, message ``"{class name}: {err}"``). Never raises."""
    if isinstance(err, AgentstreamError):
        return err
    for cls, kind, reason, message in _KNOWN:
        if isinstance(err, cls):
            return AgentstreamError(kind, message if message is not None else str(err), reason=reason)
    return AgentstreamError(ErrorKind.INTERNAL_ERROR, f"{type(err).__name__}: {err}", reason="internal error")


def failed_data(failure: AgentstreamError, *, usage: Usage | None = None, steps: int = 0,
                duration_ms: float = 0.0) -> E.RunFailedData:
    """The ``run.failed`` data of ``failure``: its ``reason``, ``{"type": kind, "message"}``, and
    what the run used (``usage``, ``steps``, ``duration_ms`` in milliseconds)."""
    return E.RunFailedData(reason=failure.reason, error=ErrorInfo(type=failure.kind, message=failure.message),
                           usage=usage if usage is not None else Usage(), steps=steps, duration_ms=duration_ms)


async def end_failed(writer: RunEventWriter, failure: AgentstreamError, *, usage: Usage | None = None,
                     steps: int = 0, duration_ms: float = 0.0, patient: bool = False) -> None:
    """End the run ``run.failed`` with ``failure``: drop the writer's pending flush timer (any text
    still buffered is written before the end), then write the terminal event. ``patient``: retry
    until it is stored (the event store was full). Raises what
    :meth:`RunEventWriter.emit` raises (OwnershipLost, StorageFull, transport errors)."""
    await writer.close()
    await writer.emit(E.RUN_FAILED, failed_data(failure, usage=usage, steps=steps, duration_ms=duration_ms),
                      patient=patient)

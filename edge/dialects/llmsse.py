"""The llm-sse view of a run (``POST /api/process``), for clients of WolfusFlow/llm-sse.

Frames are ``data: {"message_id", "conversation_id"?, "status", "source", "message"?, "final"?}``
(llm-sse's ``StatusEvent``, ``internal/service/service.go``): ``Sending to <member>`` per member,
``<member> completed`` / ``failed`` / ``timed out`` as each ends (llm-sse had no such frame; the
parent run writes each member's ``member.finished`` when that member ends), ``Combining via
<combiner>`` once every member has ended and at least ``min_success`` answered (otherwise the
error frame follows), one ``Streaming`` frame per fragment of the combined answer, ``Completed``
with ``final: true``.
Unlike llm-sse, an error frame carries the real ``message_id`` (and ``final: true``), and the
stream has heartbeats (written by the caller).
"""

from __future__ import annotations

from typing import Any

import orjson

from agentstream import sse
from edge.dialects.replay import Replay
from schemas import events as E

_ENDED = {"completed": "completed", "failed": "failed", "cancelled": "was cancelled", "timeout": "timed out"}


class ProcessStream:
    """Frames for one run. ``source``: the name answering (the combiner of an ensemble, else the
    agent); ``members``: how many members the agent has (0 for a plain agent); ``min_success``:
    how many must answer for the combiner to run."""

    def __init__(self, message_id: str, conversation_id: str | None, *, agent: str, source: str, members: int,
                 min_success: int = 1):
        self.base: dict[str, Any] = {"message_id": message_id}
        if conversation_id:
            self.base["conversation_id"] = conversation_id
        self.agent = agent
        self.source = source
        self.members = members
        self.min_success = min_success
        self.finished_members = 0
        self.answered_members = 0
        self.done = False
        self._replay = Replay()

    def _frame(self, **fields: Any) -> bytes:
        return sse.frame(orjson.dumps({**self.base, **{k: v for k, v in fields.items() if v is not None}}))

    def render(self, event: E.RunEvent) -> list[bytes]:
        """Frames for one run event."""
        if self.done:
            return []
        match event:
            case E.RunStarted(data=data) if not self.members and data.attempt == 1:
                return [self._frame(status=f"Sending to {self.agent}", source=self.agent)]
            case E.MemberStarted(data=data):
                return [self._frame(status=f"Sending to {data.member}", source=data.member)]
            case E.MemberFinished(data=data):
                self.finished_members += 1
                self.answered_members += data.status == "completed"
                error = data.error.message if data.error else None
                frames = [self._frame(status=f"{data.member} {_ENDED.get(data.status, data.status)}",
                                      source=data.member, message=error)]
                if self.finished_members == self.members and self.answered_members >= self.min_success:
                    frames.append(self._frame(status=f"Combining via {self.source}", source=self.source))
                return frames
            case E.ToolApprovalRequested(data=data):  # the stream waits (with its heartbeats) for the decision
                return [self._frame(status=f"Awaiting approval of {data.name}", source=self.source,
                                    message=f"POST /api/runs/{event.run_id}/approve or /reject with tool_call_id "
                                            f"{data.tool_call_id}")]
            case E.ToolApprovalDecided(data=data):
                return [self._frame(status=f"{data.name} {data.decision}", source=self.source)]
            case E.RunRetrying(data=data):
                self._replay.restart(data.resume_step)
            case E.MessageDelta(data=data):
                text = self._replay.text(data.step, data.text)
                if text is None:
                    self.done = True
                    return [self._frame(status="error", source=self.source, final=True,
                                        message="the run was interrupted and restarted with a different answer; retry")]
                return [self._frame(status="Streaming", source=self.source, message=text)] if text else []
            case E.RunCompleted():
                self.done = True
                return [self._frame(status="Completed", source=self.source, final=True)]
            case E.RunFailed(data=data):
                self.done = True
                message = data.error.message or data.reason or "the run failed"
                return [self._frame(status="error", source=self.source, message=message, final=True)]
            case E.RunCancelled(data=data):
                self.done = True
                message = f"the run was cancelled: {data.reason}".rstrip(": ")
                return [self._frame(status="error", source=self.source, message=message, final=True)]
        return []

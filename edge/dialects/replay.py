"""Not sending a client the same text twice when a run restarts a step (``run.retrying``)."""

from __future__ import annotations


class Replay:
    """Text already sent, per LLM step, so a run that restarts a step (``run.retrying``) does not
    send the client the same words twice. If the new attempt writes something else than what was
    sent, the stream cannot be corrected (there is no way to take text back in this protocol):
    :meth:`text` then returns None and the caller ends the stream with an error."""

    def __init__(self) -> None:
        self.sent: dict[int, str] = {}
        self.pending: dict[int, str] = {}

    def restart(self, resume_step: int) -> None:
        self.pending = {step: text for step, text in self.sent.items() if step >= resume_step and text}
        for step in self.pending:
            self.sent[step] = ""

    def text(self, step: int, text: str) -> str | None:
        """What of ``text`` (a delta of ``step``) is new to the client; None if it contradicts it."""
        expected = self.pending.get(step)
        if expected:
            if expected.startswith(text):
                self.pending[step] = expected[len(text):]
                self.sent[step] = self.sent.get(step, "") + text
                return ""
            if not text.startswith(expected):
                return None
            self.pending[step] = ""
            self.sent[step] = self.sent.get(step, "") + expected
            text = text[len(expected):]
        self.sent[step] = self.sent.get(step, "") + text
        return text

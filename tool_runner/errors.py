"""The error a tool raises when it cannot do what was asked.

It becomes a tool result with ``ok: false`` and ``error: {type, message}``, which the agent runner
hands back to the model as the tool's answer: a tool error comes back to the model as a tool
result, not as a crash (docs/events.md, "tool.result").
"""

from schemas.errors import AgentstreamError, ErrorKind


class ToolError(AgentstreamError):
    """A tool's refusal or failure: ``kind`` (e.g. ``not_found``, ``outside_root``,
    ``address_refused``, ``timeout``), ``message`` for the model."""

    reason = "tool failed"

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(kind, message)

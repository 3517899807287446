"""The error a tool raises when it cannot do what was asked.

It becomes a tool result with ``ok: false`` and ``error: {type, message}``, which the agent runner
hands back to the model as the tool's answer: a tool error comes back to the model as a tool
result, not as a crash (docs/events.md, "tool.result").
"""


class ToolError(Exception):
    """A tool's refusal or failure. ``type`` is machine-readable (e.g. ``not_found``,
    ``outside_root``, ``too_large``, ``address_refused``, ``timeout``); ``message`` is for the model."""

    def __init__(self, type: str, message: str):
        super().__init__(message)
        self.type = type
        self.message = message

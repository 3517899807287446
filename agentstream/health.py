"""What is wrong with this process right now, for ``/healthz``: one registry per process.

Code that meets a condition that stops the process from doing its job (the JetStream store is
full, NATS is unreachable) reports it under a name, and clears it when it is over; ``/healthz``
answers 503 with the reasons while any is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Health:
    """Problems by name: ``{name: (reason, since)}`` (``since``: Unix seconds)."""

    problems: dict[str, tuple[str, float]] = field(default_factory=dict)

    def report(self, name: str, reason: str) -> bool:
        """Record a problem; True when it is new (not already reported under ``name``)."""
        new = name not in self.problems
        if new:
            self.problems[name] = (reason, time.time())
        return new

    def clear(self, name: str) -> bool:
        """The problem is over; True when there was one."""
        return self.problems.pop(name, None) is not None

    @property
    def ok(self) -> bool:
        """No problem reported."""
        return not self.problems

    def as_dict(self) -> dict[str, dict[str, object]]:
        """``{name: {"reason", "since"}}`` for a JSON body."""
        return {name: {"reason": reason, "since": since} for name, (reason, since) in self.problems.items()}


HEALTH = Health()
"""This process's problems."""

STORAGE = "storage"
"""The problem name for a JetStream store that refuses writes (full disk or account limit)."""

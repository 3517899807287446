"""Stored run events for unit tests, as an agent runner writes them: full envelopes."""

from __future__ import annotations

import orjson

from agentstream.eventlog import StoredEvent

ENVELOPE = {"run_id": "r" * 32, "tenant": "t", "agent": "a", "message_id": "m-1", "attempt": 1,
            "ts": "2026-12-01T00:00:00Z"}
"""The envelope fields every event of the test run carries."""


def stored_events(*items: tuple[str, dict]) -> list[StoredEvent]:
    """One stored event per ``(type, data)``, in order (sequences 1, 2, …) on one run's subject."""
    return [StoredEvent(seq=i + 1, subject="runs.t.a.r", type=t, data=orjson.dumps({"type": t, **ENVELOPE, "data": d}))
            for i, (t, d) in enumerate(items)]

"""An agent's recent runs, for LocalAI's status history: the newest runs from the run log
(agentstream/runlog.py: a few requests, however many runs are stored), each folded from its own
events (read concurrently), so the history survives restarts and shows what the runs did."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from agentstream import eventlog, runlog
from agentstream.runstate import RunRecord, fold
from schemas import events as E
from schemas import subjects


async def recent_runs(nc: NATS, tenant: str, agent: str, *, limit: int = 20) -> list[RunRecord]:
    """Up to ``limit`` most recent runs of ``agent`` (by submission), newest first. Runs deleted
    since are left out. Raises EventLogError."""
    page, _ = await runlog.newest(nc, subjects.run_log_filter(tenant, agent, "submitted"), want=limit * 2)
    run_ids = list(dict.fromkeys(logged.entry.run_id for logged in page))[:limit]
    histories = await asyncio.gather(*(
        eventlog.read_list(nc, subjects.run_events(tenant, agent, run_id)) for run_id in run_ids))
    records = []
    for events in histories:
        if events and E.is_deleted(events[-1].type):
            continue
        record = fold(events)
        if record is not None:
            records.append(record)
    return records

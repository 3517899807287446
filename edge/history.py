"""An agent's recent runs, rebuilt from the stored events (so the history survives restarts).

The events of all runs of an agent share the filter ``runs.{tenant}.{agent}.*``. The stream is
scanned backwards in growing windows of sequence numbers until ``limit`` runs whose
``run.queued`` is in the scanned range have been seen (or the stream's start is reached); each
run's record is then folded from its own events.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from agentstream import eventlog
from agentstream.runstate import RunRecord, fold
from schemas import events as E
from schemas import subjects


async def recent_runs(
    nc: NATS, tenant: str, agent: str, *, limit: int = 20, max_scan: int = 1_000_000
) -> list[RunRecord]:
    """Up to ``limit`` most recent runs of ``agent``, newest first. ``max_scan``: most stream
    sequences to look back through."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.RUN_EVENTS_STREAM)
    first, last = info.state.first_seq, info.state.last_seq
    filter_subject = subjects.run_events_of_agent(tenant, agent)
    queued: dict[str, int] = {}  # run subject -> seq of its run.queued
    hi = last
    window = 512
    scanned = 0
    while hi >= first and len(queued) < limit and scanned < max_scan:
        lo = max(first - 1, hi - window)
        after = lo
        while True:
            events, pending = await eventlog.read_batch(nc, filter_subject, after, batch=512)
            for ev in events:
                if ev.seq > hi:
                    break
                if ev.type == E.RUN_QUEUED:
                    queued[ev.subject] = ev.seq
            if not events or pending == 0 or events[-1].seq >= hi:
                break
            after = events[-1].seq
        scanned += hi - lo
        hi = lo
        window *= 4
    newest = sorted(queued, key=queued.__getitem__, reverse=True)[:limit]
    records = []
    for subject in newest:
        record = fold(await eventlog.read_list(nc, subject))
        if record is not None:
            records.append(record)
    return records

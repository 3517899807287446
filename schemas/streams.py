"""JetStream streams and consumers, and their idempotent declaration.

The admin identity declares them (``agentstream up``, ``agentstream nats-setup``); with no
authentication any component may, and does, at start-up. Declaring an identical stream is a no-op
on the server; a stream whose configuration changed (a new release, a new setting) is updated in
place when the change is one the server allows.

=============  =========================  ==========  ==================================================
stream         subjects                   retention   why
=============  =========================  ==========  ==================================================
AGENT_RUNS     ``agents.*.*.run``,        work queue  each request is held until a runner acks it; one
               ``agents.*.*.member``                  consumer per tenant, one for ensemble members
RUN_EVENTS     ``runs.*.*.*``             limits      every event, replayable; age-bounded;
                                                      re-published to ``live.runs.>`` for live readers
RUN_CONTROL    ``control.*.*``            limits      cancel requests, kept so a runner that takes the
                                                      run later still sees them
RUN_DEAD_      ``deadletter.*.*.*``       limits      requests of runs given up on, for inspection
LETTERS
RUN_LOG        ``runlog.*.*.*``           limits      an entry per run submitted and per run ended:
                                                      run listings read it newest first
WEBHOOK_JOBS   ``webhooks.*.*``           work queue  a webhook delivery (one event, one URL) until a
                                                      webhook sender got a 2xx or gave up; retries are
                                                      naks with a delay, so they survive restarts
=============  =========================  ==========  ==================================================
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from schemas import subjects

log = logging.getLogger(__name__)

AGENT_REVISIONS = 16
"""Revisions of each API-managed agent the AGENTS bucket keeps (the bucket's history; NATS allows
at most 64). Older ones are dropped by the server; rollback reaches only these."""
MAX_AGENT_ENTRY_BYTES = 1024 * 1024
"""Largest AGENTS entry (bytes): a definition of at most 256 Ki characters, as JSON."""

_STREAM_CONFIG_CHANGED = 10058  # "stream name already in use with a different configuration"


def stream_configs(
    *,
    run_dedupe_window: float = 300.0,
    events_max_age: float = 7 * 86400.0,
    control_max_age: float = 86400.0,
    dead_letter_max_age: float = 30 * 86400.0,
    webhook_max_age: float = 2 * 86400.0,
    max_msg_size: int = 1024 * 1024,
    replicas: int = 1,
) -> list[StreamConfig]:
    """The streams. Durations in seconds; ``max_msg_size`` in bytes (-1: server limit);
    ``replicas``: copies a JetStream cluster keeps of each (``STREAM_REPLICAS``; 1 on a single
    server). Their consumers inherit it (a consumer's ``num_replicas`` 0 is the stream's).
    ``webhook_max_age``: how long a webhook job is kept at most (longer than its retry period)."""
    return [
        StreamConfig(
            name=subjects.AGENT_RUNS_STREAM,
            num_replicas=replicas,
            description="agentstream run requests (work queue, one shared durable consumer)",
            subjects=[subjects.RUN_REQUESTS_ALL, subjects.MEMBER_REQUESTS_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=run_dedupe_window,
            max_msg_size=max_msg_size,
        ),
        StreamConfig(
            name=subjects.RUN_EVENTS_STREAM,
            num_replicas=replicas,
            description="agentstream run events, one subject per run",
            subjects=[subjects.RUN_EVENTS_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=events_max_age,
            allow_direct=True,
            allow_rollup_hdrs=True,  # DELETE /api/runs/{id}: a tombstone replaces the run's events
            max_msg_size=max_msg_size,
            republish=RePublish(
                src=subjects.RUN_EVENTS_REPUBLISH_SRC,
                dest=subjects.RUN_EVENTS_REPUBLISH_DEST,
            ),
        ),
        StreamConfig(
            name=subjects.RUN_CONTROL_STREAM,
            num_replicas=replicas,
            description="agentstream run control signals (cancel)",
            subjects=[subjects.CONTROL_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=control_max_age,
            max_msgs_per_subject=16,
            allow_direct=True,
        ),
        StreamConfig(
            name=subjects.RUN_LOG_STREAM,
            num_replicas=replicas,
            description="agentstream run log: runs submitted and ended, newest last (the run listings' index)",
            subjects=[subjects.RUN_LOG_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=events_max_age,
            allow_direct=True,
            duplicate_window=run_dedupe_window,
        ),
        StreamConfig(
            name=subjects.RUN_DEAD_LETTERS_STREAM,
            num_replicas=replicas,
            description="agentstream requests of runs given up on",
            subjects=[subjects.DEAD_LETTERS_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=dead_letter_max_age,
            allow_direct=True,
        ),
        StreamConfig(
            name=subjects.WEBHOOK_JOBS_STREAM,
            num_replicas=replicas,
            description="agentstream webhook deliveries (work queue, one shared durable consumer)",
            subjects=[subjects.WEBHOOK_JOBS_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=webhook_max_age,
            duplicate_window=run_dedupe_window,
            max_msg_size=max_msg_size,
        ),
    ]


def kv_configs(*, run_index_max_age: float = 7 * 86400.0, replicas: int = 1) -> list[KeyValueConfig]:
    """The key-value buckets (each one JetStream stream ``KV_{bucket}``). Durations in seconds;
    ``replicas`` as for :func:`stream_configs`.

    - TENANTS: one entry per tenant (its policy, no keys), kept until removed;
    - RATE_LIMITS: rate-limit state, forgotten an hour after its last use (it is full again by then);
    - STREAM_COUNTS: open SSE streams per key and edge, refreshed by each edge, gone 60 s after
      an edge that held them stops refreshing (it died);
    - TOOL_RESULTS: a side-effecting tool call's claim, then its result, kept two days (longer
      than any run may take, so a retry always finds it);
    - CONVERSATIONS: one entry per conversation (its turns), kept as long as run events are;
    - RUN_INDEX: one entry per run, kept as long as run events are;
    - APPROVALS: one entry per run waiting for tool approvals, removed when the run goes on (kept
      at most as long as run events are);
    - SCHEDULES: one entry per schedule, kept until deleted;
    - WEBHOOK_SECRETS: one signing secret per tenant, kept until replaced;
    - WEBHOOK_DELIVERIES: one entry per webhook delivery (its attempts), kept as long as run events are.
    - AGENTS: the agents tenants created over the API, the last :data:`AGENT_REVISIONS`
      revisions of each (a deletion is a marker: the revisions before it stay, for rollback);
    - AGENT_PAUSES: which agents are paused, per tenant (the entry is deleted on resume).
    """
    return [
        KeyValueConfig(bucket=subjects.TENANTS_BUCKET, description="agentstream tenant policies", history=1,
                       storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.RATE_LIMITS_BUCKET, description="agentstream rate limits", history=1,
                       ttl=3600.0, storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.STREAM_COUNTS_BUCKET, description="agentstream open SSE streams", history=1,
                       ttl=60.0, storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.TOOL_RESULTS_BUCKET, description="agentstream tool results by call",
                       history=1, ttl=2 * 86400.0, storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.CONVERSATIONS_BUCKET, description="agentstream conversations", history=1,
                       ttl=run_index_max_age, storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.RUN_INDEX_BUCKET, description="agentstream runs by id", history=1,
                       ttl=run_index_max_age, storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.APPROVALS_BUCKET, description="agentstream runs waiting for tool approvals",
                       history=1, ttl=run_index_max_age, storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.SCHEDULES_BUCKET, description="agentstream schedules", history=1,
                       storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.WEBHOOK_SECRETS_BUCKET, description="agentstream webhook signing secrets",
                       history=1, storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.WEBHOOK_DELIVERIES_BUCKET, description="agentstream webhook deliveries",
                       history=1, ttl=run_index_max_age, storage=StorageType.FILE, replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.AGENTS_BUCKET, description="agentstream agents managed over the API",
                       history=AGENT_REVISIONS, max_value_size=MAX_AGENT_ENTRY_BYTES, storage=StorageType.FILE,
                       replicas=replicas, direct=True),
        KeyValueConfig(bucket=subjects.AGENT_PAUSES_BUCKET, description="agentstream paused agents", history=1,
                       storage=StorageType.FILE, replicas=replicas, direct=True),
    ]


def runner_consumer_config(
    name: str, filter_subject: str, *, ack_wait: float = 30.0, max_ack_pending: int = 10_000
) -> ConsumerConfig:
    """A durable pull consumer on AGENT_RUNS shared by every agent runner.

    One per tenant (``tenant_{tenant}``, filter ``agents.{tenant}.*.run``; ``max_ack_pending`` is the
    tenant's ``max_concurrent_runs``: the server hands out no more of its runs at once, across all
    runners) and one for ensemble members (``member-runs``, ``agents.*.*.member``). Filters never
    overlap, as a work-queue stream requires. ``ack_wait`` (seconds) is how long a run may go
    without a progress signal before the server hands it to another runner; runners send
    ``in_progress`` well within it. The name is set as well as the durable name, so nats-py
    creates it on ``$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter}`` (confinable by permissions).
    """
    return ConsumerConfig(
        name=name,
        durable_name=name,
        description="agentstream agent runners (shared)",
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )


def member_consumer_config(*, ack_wait: float = 30.0) -> ConsumerConfig:
    """The consumer of ensemble members' child runs (see :func:`runner_consumer_config`)."""
    return runner_consumer_config(subjects.MEMBER_RUNS_CONSUMER, subjects.MEMBER_REQUESTS_ALL, ack_wait=ack_wait)


def tenant_consumer_config(tenant: str, *, max_concurrent_runs: int, ack_wait: float = 30.0) -> ConsumerConfig:
    """The consumer of one tenant's run requests (see :func:`runner_consumer_config`)."""
    return runner_consumer_config(
        subjects.tenant_consumer(tenant), subjects.run_requests_of_tenant(tenant),
        ack_wait=ack_wait, max_ack_pending=max_concurrent_runs,
    )


WEBHOOK_ACK_WAIT = 30.0
"""Seconds a webhook sender may hold a delivery without a progress signal (it sends one every few
seconds while a POST is under way) before the job goes to another sender."""
WEBHOOK_MAX_ACK_PENDING = 100_000
"""Deliveries the webhook senders' consumer hands out and has not had acked: being POSTed, or
waiting for their retry (a nak with a delay keeps the job pending)."""


def webhook_consumer_config() -> ConsumerConfig:
    """The durable pull consumer every webhook sender shares (``webhook-senders`` on WEBHOOK_JOBS):
    each job to one sender at a time, redelivered after :data:`WEBHOOK_ACK_WAIT` without progress,
    never given up by the server (the sender decides when a delivery is given up)."""
    return ConsumerConfig(
        name=subjects.WEBHOOK_SENDERS_CONSUMER,
        durable_name=subjects.WEBHOOK_SENDERS_CONSUMER,
        description="agentstream webhook senders (shared)",
        filter_subject=subjects.WEBHOOK_JOBS_ALL,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=WEBHOOK_ACK_WAIT,
        max_deliver=-1,
        max_ack_pending=WEBHOOK_MAX_ACK_PENDING,
    )


async def ensure_streams(js: JetStreamContext, configs: list[StreamConfig]) -> None:
    """Create each stream, or update it in place if it exists with another configuration.

    Raises ``nats.js.errors.APIError`` when the server refuses (e.g. a change it cannot apply,
    such as a different retention policy: delete the stream by hand to change that).
    """
    for config in configs:
        try:
            await js.add_stream(config)
        except BadRequestError as err:
            if err.err_code != _STREAM_CONFIG_CHANGED:
                raise
            log.info("stream %s exists with another configuration; updating it", config.name)
            await js.update_stream(config)


async def ensure_buckets(js: JetStreamContext, configs: list[KeyValueConfig]) -> None:
    """Create each key-value bucket, or update its stream in place when its configuration changed."""
    for config in configs:
        try:
            await js.create_key_value(config)
        except BadRequestError as err:
            if err.err_code != _STREAM_CONFIG_CHANGED:
                raise
            log.info("bucket %s exists with another configuration; updating it", config.bucket)
            info = await js.stream_info(f"KV_{config.bucket}")
            stream = info.config
            stream.max_age = config.ttl or 0.0
            stream.description = config.description
            stream.num_replicas = config.replicas
            await js.update_stream(stream)


async def ensure_consumers(js: JetStreamContext, *, ack_wait: float) -> None:
    """Create (or update) the members' consumer and the webhook senders' consumer, and remove the
    one shared consumer of earlier releases, whose filter overlaps the per-tenant ones (a work-queue
    stream refuses that)."""
    try:
        await js.delete_consumer(subjects.AGENT_RUNS_STREAM, subjects.LEGACY_RUNNERS_CONSUMER)
        log.info("removed the consumer %s of an earlier release", subjects.LEGACY_RUNNERS_CONSUMER)
    except NotFoundError:
        pass
    await js.add_consumer(subjects.AGENT_RUNS_STREAM, member_consumer_config(ack_wait=ack_wait))
    await js.add_consumer(subjects.WEBHOOK_JOBS_STREAM, webhook_consumer_config())

"""JetStream streams and consumers, and their idempotent declaration.

Any component may start first: each calls :func:`ensure_streams` at start-up. Declaring an
identical stream is a no-op on the server; a stream whose configuration changed (a new release, a
new setting) is updated in place when the change is one the server allows.

=============  =========================  ==========  ==================================================
stream         subjects                   retention   why
=============  =========================  ==========  ==================================================
AGENT_RUNS     ``agents.*.*.run``         work queue  each request is held until a runner acks it
RUN_EVENTS     ``runs.*.*.*``             limits      every event, replayable; age-bounded;
                                                      re-published to ``live.runs.>`` for live readers
RUN_CONTROL    ``control.*.*``            limits      cancel requests, kept so a runner that takes the
                                                      run later still sees them
RUN_DEAD_      ``deadletter.*.*.*``       limits      requests of runs given up on, for inspection
LETTERS
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
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

from schemas import subjects

log = logging.getLogger(__name__)

_STREAM_CONFIG_CHANGED = 10058  # "stream name already in use with a different configuration"


def stream_configs(
    *,
    run_dedupe_window: float = 300.0,
    events_max_age: float = 7 * 86400.0,
    control_max_age: float = 86400.0,
    dead_letter_max_age: float = 30 * 86400.0,
    max_msg_size: int = 1024 * 1024,
) -> list[StreamConfig]:
    """The four streams. Durations in seconds; ``max_msg_size`` in bytes (-1: server limit)."""
    return [
        StreamConfig(
            name=subjects.AGENT_RUNS_STREAM,
            description="agentstream run requests (work queue, one shared durable consumer)",
            subjects=[subjects.RUN_REQUESTS_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=run_dedupe_window,
            max_msg_size=max_msg_size,
        ),
        StreamConfig(
            name=subjects.RUN_EVENTS_STREAM,
            description="agentstream run events, one subject per run",
            subjects=[subjects.RUN_EVENTS_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=events_max_age,
            allow_direct=True,
            max_msg_size=max_msg_size,
            republish=RePublish(
                src=subjects.RUN_EVENTS_REPUBLISH_SRC,
                dest=subjects.RUN_EVENTS_REPUBLISH_DEST,
            ),
        ),
        StreamConfig(
            name=subjects.RUN_CONTROL_STREAM,
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
            name=subjects.RUN_DEAD_LETTERS_STREAM,
            description="agentstream requests of runs given up on",
            subjects=[subjects.DEAD_LETTERS_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=dead_letter_max_age,
            allow_direct=True,
        ),
    ]


def runner_consumer_config(*, ack_wait: float = 30.0, max_deliver: int = -1) -> ConsumerConfig:
    """The one durable pull consumer all agent runners share on AGENT_RUNS.

    ``ack_wait`` (seconds) is how long a run may go without a progress signal before the server
    hands it to another runner; runners send ``in_progress`` well within it.
    """
    return ConsumerConfig(
        durable_name=subjects.AGENT_RUNNERS_CONSUMER,
        description="agentstream agent runners (shared)",
        filter_subject=subjects.RUN_REQUESTS_ALL,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=10_000,
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


async def ensure_runner_consumer(js: JetStreamContext, config: ConsumerConfig) -> None:
    """Create (or update) the shared agent-runner consumer. Idempotent."""
    await js.add_consumer(subjects.AGENT_RUNS_STREAM, config)

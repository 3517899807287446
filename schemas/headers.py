"""NATS message header names agentstream writes and reads, in one place.

JetStream header names must match exactly (docs/nats.md, "Headers"); the ``Nats-*`` ones are the
server's, the ``Agentstream-*`` ones are ours.
"""

# JetStream (server) headers.
MSG_ID = "Nats-Msg-Id"
"""Deduplication id. Run requests: the run id. Events: ``{run_id}:{attempt}:{n}``."""
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
"""Optimistic concurrency on one subject: the single-writer rule for a run's event subject."""
ROLLUP = "Nats-Rollup"
"""With value ``sub``: the message replaces every earlier message of its subject (the stream must
allow rollups); how a deleted run's events become one tombstone."""
ROLLUP_SUBJECT = "sub"
STREAM = "Nats-Stream"
SUBJECT = "Nats-Subject"
SEQUENCE = "Nats-Sequence"
LAST_SEQUENCE = "Nats-Last-Sequence"
"""On re-published and direct-get messages: the previous sequence on the same subject."""
NUM_PENDING = "Nats-Num-Pending"
TIME_STAMP = "Nats-Time-Stamp"
STATUS = "Status"
DESCRIPTION = "Description"

# Micro service error headers (ADR-32), set by tool runners on protocol errors.
SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"

# Ours.
EVENT_TYPE = "Agentstream-Event"
"""The event type of a RUN_EVENTS message, so readers can route it without parsing JSON."""
TOOL_CALL_ID = "Agentstream-Tool-Call-Id"
"""Idempotency key of a tool invocation: ``{run_id}:{tool_call_id}``."""
TOOL_PROGRESS = "Agentstream-Progress"
"""Asked for in a tool request (value "1"): the tool runner then sends empty progress messages
to the reply subject while it works, each with this header set, before the final result."""
RUNNER = "Agentstream-Runner"
"""Which process answered (tool runner id), for tracing and load-spread checks."""
RESUME = "Agentstream-Resume"
"""On a run request an agent runner publishes again to continue a run that waited for tool
approvals (value: the step it resumes). A runner then reads the run's events before anything else."""

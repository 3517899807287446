"""Idempotent submits that cannot answer the wrong question.

A client names a message with a ``message_id`` (or the ``Idempotency-Key`` header: the IETF draft
"The Idempotency-Key HTTP Header Field"). The edge remembers, per tenant, agent and key, which
run it started and a fingerprint of the request (:func:`request_fingerprint`), in the RUN_INDEX
bucket under ``{tenant}.msg.{sha256}``:

- the same key with the same request names the same run (``duplicate: true``), on every edge and
  after restarts;
- the same key with a **different** request is refused with 409 ``idempotency_key_reused`` (the
  draft's and Stripe's rule), except on ``/api/process``, where llm-sse clients use
  ``message_id`` as a label: there each different message is its own run;
- a run that was cancelled because its client disconnected does not hold its key: posting the
  same request again starts a new run.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import nats.errors
import nats.js.errors
import orjson

from agentstream import eventlog
from edge.errors import ApiError
from edge.state import EdgeState
from schemas import events as E
from schemas import subjects
from schemas.runs import CLIENT_DISCONNECTED, RunRequest, new_run_id, run_id_for

MAX_TRIES = 8


def request_fingerprint(agent: str, request: RunRequest) -> str:
    """SHA-256 (hex) of what makes two requests the same question: the agent, the message, the
    history, the client tools, the parameters and the conversation."""
    doc: dict[str, Any] = {
        "agent": agent,
        "message": request.message,
        "history": [m.model_dump(mode="json", exclude_none=True) for m in request.history],
        "tools": [t.model_dump(mode="json") for t in request.tools],
        "parameters": request.parameters,
        "conversation_id": request.conversation_id,
    }
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def message_key(tenant: str, agent: str, message_id: str, fingerprint: str = "") -> str:
    """The RUN_INDEX key remembering ``message_id``: ``{tenant}.msg.{sha256(agent, id[, fingerprint])}``."""
    digest = hashlib.sha256(f"{agent}\0{message_id}\0{fingerprint}".encode()).hexdigest()[:40]
    return f"{subjects.token(tenant, 'tenant')}.msg.{digest}"


async def claim(
    st: EdgeState, tenant: str, agent: str, message_id: str, fingerprint: str,
    *, on_reuse: Literal["conflict", "new_run"] = "conflict", field: str = "message_id",
) -> tuple[str, bool]:
    """The run ``message_id`` names: ``(run_id, existing)``; ``existing`` is True when that run was
    started by an earlier post. ``on_reuse``: what a different request with the same key gets
    (``conflict``: ApiError 409 naming ``field``; ``new_run``: its own run).

    Raises ApiError 409 or 503 (the bucket cannot be read).
    """
    kv = st.run_index
    if kv is None:
        raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly", retry_after=1)
    key = message_key(tenant, agent, message_id, fingerprint if on_reuse == "new_run" else "")
    try:
        label = message_id if on_reuse == "conflict" else f"{message_id}\0{fingerprint}"
        for _ in range(MAX_TRIES):
            # A new key is the common case: claimed in one round trip, read only when it exists.
            run_id = run_id_for(tenant, agent, label)
            try:
                await kv.create(key, orjson.dumps({"run_id": run_id, "fingerprint": fingerprint}))
                return run_id, False
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # claimed before (or by another edge at the same moment): which run does it name?
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # removed since: claim it again
            known = orjson.loads(entry.value or b"{}")
            if known.get("fingerprint") != fingerprint:
                raise ApiError(409, "idempotency_key_reused", f"{field} {message_id[:80]!r} was already used for a "
                               "different request; use a new one", field)
            run_id = str(known["run_id"])
            if not await _left_by_its_client(st, tenant, run_id):
                return run_id, True
            fresh = new_run_id()
            try:
                await kv.update(key, orjson.dumps({"run_id": fresh, "fingerprint": fingerprint}), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return fresh, False
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError, eventlog.EventLogError) as err:
        raise ApiError(503, "unavailable", f"the message id could not be checked ({type(err).__name__}); retry",
                       retry_after=1) from None
    raise ApiError(503, "unavailable", "the message id is being claimed by other requests; retry", retry_after=1)


async def _left_by_its_client(st: EdgeState, tenant: str, run_id: str) -> bool:
    """True when the run ended cancelled because its client disconnected."""
    last = await eventlog.last_event(st.bus(), subjects.run_events_of_run(tenant, run_id))
    event = last.event if last is not None else None
    return isinstance(event, E.RunCancelled) and event.data.reason == CLIENT_DISCONNECTED

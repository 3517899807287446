"""The edge's part of webhooks: checking a submitted webhook's URL, and reading a run's deliveries.

A webhook given on a submit (or a schedule) must reach a public address, or a host the operator
lists in WEBHOOK_ALLOW_HOSTS: the edge resolves it and checks it with the rule of http_request
(webhook_sender/net.py), answering ``422`` naming the field; the webhook sender checks again at
every delivery (DNS may answer differently by then).
"""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
from pydantic import ValidationError

from agentstream.eventlog import EventLogError, direct_get_batch
from edge.errors import ApiError, from_validation
from edge.state import EdgeState
from schemas import subjects
from schemas.webhooks import DeliveryRecord, WebhookTarget
from webhook_sender.net import WebhookRefused, checked_address


def parse_target(raw: Any, field: str) -> WebhookTarget | None:
    """A ``webhook`` field of a request body: a URL, or ``{url, events}`` (None: absent).
    ApiError 422 naming ``field`` (or its part) when it is not one."""
    if raw is None:
        return None
    try:
        return WebhookTarget.model_validate({"url": raw} if isinstance(raw, str) else raw)
    except ValidationError as err:
        raise from_validation(err, prefix=field) from None


async def check_target(st: EdgeState, target: WebhookTarget, field: str) -> None:
    """ApiError 422 naming ``field`` unless ``target``'s host resolves to an address webhooks may
    reach (public, or listed in WEBHOOK_ALLOW_HOSTS)."""
    try:
        await checked_address(target.url, st.settings.webhook_allow_hosts)
    except WebhookRefused as err:
        raise ApiError(422, "invalid_request", f"webhook refused: {err.message}", field, reason=err.kind) from None


async def deliveries(st: EdgeState, tenant: str, run_id: str) -> list[dict[str, Any]]:
    """The run's webhook deliveries (WEBHOOK_DELIVERIES records: attempts, state, next attempt),
    in event order. ApiError 503 when they cannot be read."""
    stream = f"KV_{subjects.WEBHOOK_DELIVERIES_BUCKET}"
    request = {"multi_last": [subjects.webhook_deliveries_of_run(tenant, run_id)], "batch": 1000}
    try:
        msgs, _ = await direct_get_batch(st.bus(), stream, request, what=f"webhook deliveries of {run_id}")
    except (EventLogError, nats.errors.Error, nats.js.errors.Error) as err:
        raise ApiError(503, "unavailable", f"the run's webhook deliveries could not be read ({err}); retry",
                       retry_after=1) from None
    records = []
    for msg in msgs:
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            continue
        try:
            records.append(DeliveryRecord.model_validate_json(msg.data))
        except ValidationError:
            continue
    return [r.view() for r in sorted(records, key=lambda r: (r.seq, r.url))]

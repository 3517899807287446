"""Tenants' webhook signing secrets, kept in the WEBHOOK_SECRETS bucket (key: the tenant).

Only two identities may read the bucket: edges (a tenant fetches its secret with
``GET /api/webhooks/secret`` and rotates it with ``POST /api/webhooks/secret/rotate``) and webhook
senders (which sign with it); tenants' own NATS identities and the runners cannot
(schemas/permissions.py). A tenant's secret is made the first time either needs it, by
compare-and-set, so two edges or senders making it at once agree on one. A rotation keeps the
previous secret signing as well (a second ``v1,`` signature) for WEBHOOK_SECRET_OVERLAP seconds,
so receivers can move to the new one without losing deliveries (Standard Webhooks, "Signature
scheme": several space-separated signatures).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import nats.js.errors
from nats.js.kv import KeyValue

from schemas import subjects
from schemas.webhooks import WebhookSecret, new_secret

MAX_TRIES = 8


async def load(kv: KeyValue, tenant: str) -> tuple[WebhookSecret | None, int]:
    """The tenant's secret entry and its revision (``(None, 0)`` when it has none). Raises nats errors."""
    try:
        entry = await kv.get(subjects.webhook_secret_key(tenant))
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    return WebhookSecret.model_validate_json(entry.value or b"{}"), int(entry.revision or 0)


async def get_or_create(kv: KeyValue, tenant: str) -> WebhookSecret:
    """The tenant's secret, made now if it has none (``create`` only: a concurrent maker's wins).
    Raises nats errors, RuntimeError when the entry keeps changing."""
    for _ in range(MAX_TRIES):
        current, _ = await load(kv, tenant)
        if current is not None:
            return current
        fresh = WebhookSecret(secret=new_secret(), created_at=datetime.now(UTC))
        try:
            await kv.create(subjects.webhook_secret_key(tenant), fresh.model_dump_json().encode())
            return fresh
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
    raise RuntimeError(f"the webhook secret of {tenant} could not be read or made")


async def rotate(kv: KeyValue, tenant: str, *, overlap: float) -> WebhookSecret:
    """Replace the tenant's secret by a new one; the old one keeps signing for ``overlap`` seconds.
    Raises nats errors, RuntimeError when concurrent rotations kept winning."""
    for _ in range(MAX_TRIES):
        current, revision = await load(kv, tenant)
        now = datetime.now(UTC)
        fresh = WebhookSecret(
            secret=new_secret(), created_at=now,
            previous=current.secret if current is not None and overlap > 0 else None,
            previous_until=now + timedelta(seconds=overlap) if current is not None and overlap > 0 else None,
        )
        value = fresh.model_dump_json().encode()
        key = subjects.webhook_secret_key(tenant)
        try:
            if revision:
                await kv.update(key, value, last=revision)
            else:
                await kv.create(key, value)
            return fresh
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
    raise RuntimeError(f"the webhook secret of {tenant} is being rotated by others; retry")

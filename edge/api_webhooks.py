"""A tenant's webhook signing secret: ``GET /api/webhooks/secret`` (made on first use) and
``POST /api/webhooks/secret/rotate`` (agentstream/webhook_secrets.py). Receivers verify the
``webhook-signature`` of each delivery with it (Standard Webhooks; the ``standardwebhooks``
package: ``Webhook(secret).verify(body, headers)``)."""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue
from quart import Blueprint, Response

from agentstream import webhook_secrets
from edge.errors import ApiError
from edge.http import json_object, json_response, state, tenant
from schemas.webhooks import WebhookSecret

bp = Blueprint("webhooks", __name__)


def _kv() -> KeyValue:
    kv = state().webhook_secrets
    if kv is None:
        raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly", retry_after=1)
    return kv


def _view(secret: WebhookSecret) -> dict[str, Any]:
    return {
        "secret": secret.secret,
        "created_at": secret.created_at.isoformat().replace("+00:00", "Z"),
        "previous_valid_until": secret.previous_until.isoformat().replace("+00:00", "Z")
        if secret.previous_until is not None else None,
    }


@bp.get("/api/webhooks/secret")
async def get_secret() -> Response:
    """``GET /api/webhooks/secret``: ``{"secret": "whsec_…", "created_at", "previous_valid_until"}``,
    the caller's tenant's signing secret (made now if it has none). 503 if NATS cannot be reached."""
    t = tenant()
    try:
        secret = await webhook_secrets.get_or_create(_kv(), t.name)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError, RuntimeError) as err:
        raise ApiError(503, "unavailable", f"the webhook secret could not be read ({type(err).__name__}); retry",
                       retry_after=1) from None
    return json_response(_view(secret))


@bp.post("/api/webhooks/secret/rotate")
async def rotate_secret() -> Response:
    """``POST /api/webhooks/secret/rotate`` (body ``{}``): a new secret; the previous one keeps
    signing too (a second signature) for WEBHOOK_SECRET_OVERLAP seconds (``previous_valid_until``)."""
    t = tenant()
    await json_object(optional=True)
    try:
        secret = await webhook_secrets.rotate(_kv(), t.name, overlap=state().settings.webhook_secret_overlap)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError, RuntimeError) as err:
        raise ApiError(503, "unavailable", f"the webhook secret could not be rotated ({type(err).__name__}); retry",
                       retry_after=1) from None
    return json_response(_view(secret))

"""HTTP errors as JSON: ``{"error": {"message", "type", "field"}}`` with a fitting status.

Every refusal the edge makes goes through :class:`ApiError`, so bad input never becomes a 500
(400, 401, 403, 404, 409, 413, 415, 421, 422, 429 or 503 as fitting: README, "HTTP API").
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from quart import Response


class ApiError(Exception):
    """A request the edge refuses. ``status``: HTTP status; ``type``: machine-readable kind
    (``invalid_json``, ``invalid_request``, ``not_found``, ``unauthorized``, ...); ``field``: the
    request field at fault (``message``, ``name``, ``run_id``, ``Last-Event-ID``, ...) or None;
    ``retry_after``: seconds, sent as ``Retry-After`` (RFC 9110 §10.2.3) with a 429 or 503."""

    def __init__(self, status: int, type: str, message: str, field: str | None = None, *,
                 retry_after: int | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.extra = extra

    def headers(self) -> dict[str, str]:
        """Headers the refusal carries (``WWW-Authenticate`` on 401, ``Retry-After``)."""
        headers = {"WWW-Authenticate": 'Bearer realm="agentstream"'} if self.status == 401 else {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.type, "field": self.field, **self.extra}}

    def response(self) -> Response:
        """The HTTP response."""
        return Response(orjson.dumps(self.body()), status=self.status, content_type="application/json",
                        headers=self.headers())


def from_validation(err: ValidationError, *, status: int = 422, prefix: str = "") -> ApiError:
    """The first problem of a pydantic ValidationError, naming its field."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    if first.get("type") == "extra_forbidden":
        message = f"unknown field {field!r}"
    elif first.get("type") == "missing":
        message = f"{field!r} is required"
    else:
        message = f"{field}: {first['msg'].removeprefix('Value error, ')}" if field else first["msg"]
    if prefix and field:
        field = f"{prefix}.{field}"
    return ApiError(status, "invalid_request", message, field)

"""The OpenAPI 3.1 document of the edge, built from the pydantic models it validates with.

OpenAPI Specification 3.1.1 (https://spec.openapis.org/oas/v3.1.1). Each route of the edge is an
:class:`Operation` in edge/operations.py: its parameters, its request body (the model the route
validates with), and each response it can give, success and error alike. :func:`document` turns
that table into the document ``GET /openapi.json`` serves; every schema comes from a pydantic model
(``TypeAdapter.json_schemas``, JSON Schema 2020-12, which OpenAPI 3.1 uses as is) and lands in
``components.schemas``.

Statuses every route of a kind can give are added here, not repeated in the table (edge/guard.py
and edge/gate.py give them before any route runs): ``401``, ``421``, ``429`` and ``503`` on every
route that needs a key; on a ``POST`` also ``400`` (body not a JSON object), ``403`` (``Origin``),
``413`` (body over ``EDGE_MAX_BODY``) and ``415`` (not ``application/json``), on a ``PUT`` the same
but ``403``; ``403`` on every method of ``/mcp``.

Why not quart-schema (``QuartSchema``, ``validate_request``, ``document_*``): its validation
answers with its own error shape, where the edge's routes answer per protocol (422 naming the field
on ``/api``, OpenAI's 400 with ``param`` on ``/v1``, AG-UI's field names); its document gives a
response only an ``application/json`` body (no ``text/event-stream``, response headers misplaced
under ``content``); and ``init_app`` replaces the app's JSON provider, test client and
``make_response`` for the sake of documentation. The table here documents the edge as it is.

Server-Sent Events (``text/event-stream``) are described as OpenAPI 3.2 does for sequential media
types, read the 3.1 way (the ``schema`` describes one event): an object with ``event``, ``id`` and
``data``, where ``data`` is a string holding JSON (``contentMediaType: application/json``) whose
``contentSchema`` is the event's model. Comments (``: ping`` heartbeats) are not events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter

Where = Literal["path", "query", "header"]
REF_PREFIX = "#/components/schemas/"


@dataclass(frozen=True)
class Schema:
    """A pydantic type (a model, or any type ``TypeAdapter`` takes) whose JSON Schema is a component
    named ``name`` (default: the type's ``__name__``). ``mode``: ``validation`` for what the edge
    reads, ``serialization`` for what it writes."""

    type: Any
    mode: Literal["validation", "serialization"] = "serialization"
    name: str | None = None

    @property
    def component(self) -> str:
        """The component's name."""
        return self.name or str(getattr(self.type, "__name__", "Schema"))


SchemaLike = Schema | dict[str, Any]
"""A :class:`Schema`, or a literal JSON Schema (which may hold :class:`Schema` values, resolved to ``$ref``)."""


@dataclass(frozen=True)
class Param:
    """A parameter: ``where`` (``path``, ``query``, ``header``), its schema, what it means."""

    name: str
    where: Where
    schema: dict[str, Any]
    description: str
    required: bool = False
    example: Any = None


@dataclass(frozen=True)
class Header:
    """A response header: its schema and meaning; ``required``: every such response carries it."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Answer:
    """One response: ``json`` (an ``application/json`` body), ``sse`` (a ``text/event-stream`` of
    events, each described by :func:`sse_event`), ``other`` (``{media type: schema}``); none of them:
    no body."""

    description: str
    json: SchemaLike | None = None
    sse: SchemaLike | None = None
    other: Mapping[str, SchemaLike] = field(default_factory=dict)
    headers: tuple[Header, ...] = ()
    links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    """OpenAPI links (§4.8.20): ``{name: (operationId, {parameter: runtime expression})}``."""


@dataclass(frozen=True)
class Operation:
    """One method of one route. ``path`` in OpenAPI's form (``/api/runs/{run_id}``); ``request``:
    the body's model (``request_required``: whether a body must be sent; ``request_media``: the
    media types it may come as, JSON unless said); ``answers``: by
    status; ``errors``: the error body's schema for every status this table or the door adds
    (:func:`common_errors`) that ``answers`` does not give itself; ``public``: needs no key;
    ``security``: the schemes that take the key (default: the bearer header)."""

    method: Literal["get", "post", "put", "delete"]
    path: str
    operation_id: str
    summary: str
    tag: str
    answers: dict[int, Answer]
    description: str = ""
    params: tuple[Param, ...] = ()
    request: SchemaLike | None = None
    request_required: bool = True
    request_media: tuple[str, ...] = ("application/json",)
    errors: SchemaLike | None = None
    error_statuses: dict[int, str] = field(default_factory=dict)
    public: bool = False
    security: tuple[str, ...] = ("bearer",)


ERROR_MEANINGS = {
    400: "Malformed: not JSON, not an object, or a parameter out of range (the error names the field).",
    401: "No valid API key (`Authorization: Bearer KEY`; `?api_key=` only on the SSE routes).",
    403: "A web page of another origin (`Origin`), unless `EDGE_CORS_ORIGINS` lists it.",
    404: "Unknown, or another tenant's.",
    409: "Conflict (the error says with what).",
    413: "The body is larger than `EDGE_MAX_BODY`.",
    415: "The body is not `Content-Type: application/json`.",
    421: "The `Host` is not one this edge serves (`EDGE_ALLOWED_HOSTS`).",
    422: "A field is invalid (the error names it).",
    429: "A limit: the rate, the key's streams or the tenant's queue; retry after `Retry-After` seconds.",
    503: "NATS is not reachable yet, or could not store the request; retry.",
}
"""What each error status means, as the document says it."""

RETRY_AFTER = Header("Retry-After", "Seconds to wait before retrying (RFC 9110 §10.2.3).", {"type": "string",
                     "pattern": "^[0-9]+$"})
WWW_AUTHENTICATE = Header("WWW-Authenticate", "`Bearer realm=\"agentstream\"` (RFC 6750 §3).", required=True)
X_RUN_ID = Header("X-Run-Id", "The run answering this request: its events are on `/api/runs/{run_id}/events`.",
                  required=True)
ERROR_HEADERS = {401: (WWW_AUTHENTICATE,), 429: (RETRY_AFTER,), 503: (RETRY_AFTER,)}


def common_errors(op: Operation) -> dict[int, str]:
    """The statuses the door (edge/guard.py, edge/gate.py) adds to ``op``, with their meaning."""
    if op.public:
        return {}
    statuses = {401, 421, 429, 503}
    if op.method == "post":
        statuses |= {400, 403, 413, 415}
    if op.method == "put":  # a browser cannot send one to another origin without CORS: no Origin rule
        statuses |= {400, 413, 415}
    if op.path == "/mcp":
        statuses.add(403)
    return {s: ERROR_MEANINGS[s] for s in sorted(statuses)}


def sse_event(data: SchemaLike, *, event: dict[str, Any] | None = None, with_id: bool = False,
              json_data: bool = True) -> dict[str, Any]:
    """The schema of one Server-Sent Event (WHATWG HTML §9.2): ``data`` holds JSON described by
    ``data`` (or, ``json_data=False``, is text described by it); ``event``: the schema of the
    ``event:`` field (absent: ``message``, the default name); ``with_id``: events carry ``id:``."""
    payload: SchemaLike = (
        {"type": "string", "contentMediaType": "application/json", "contentSchema": data} if json_data else data
    )
    properties: dict[str, Any] = {"data": payload, "event": event or {"type": "string"}}
    required = ["data"]
    if with_id:
        properties["id"] = {"type": "string", "pattern": "^[0-9]+$",
                            "description": "The event's stream sequence: send it back as `Last-Event-ID` to resume."}
        required.append("id")
    return {"type": "object", "properties": properties, "required": required}


class _Components:
    """Every :class:`Schema` the operations use, generated together so shared models are one component."""

    def __init__(self) -> None:
        self.wanted: dict[tuple[str, str], Schema] = {}

    def collect(self, value: Any) -> None:
        if isinstance(value, Schema):
            self.wanted.setdefault((value.component, value.mode), value)
        elif isinstance(value, dict):
            for v in value.values():
                self.collect(v)
        elif isinstance(value, list | tuple):
            for v in value:
                self.collect(v)

    def build(self) -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, Any]]]:
        """(``components.schemas``, the schema to use for each wanted ``(name, mode)``)."""
        inputs = [(name, s.mode, TypeAdapter(s.type)) for (name, _), s in self.wanted.items()]
        refs, top = TypeAdapter.json_schemas(inputs, ref_template=REF_PREFIX + "{model}")
        components: dict[str, Any] = dict(top.get("$defs", {}))
        uses: dict[tuple[str, str], dict[str, Any]] = {}
        for key, schema in refs.items():
            name = key[0]
            if "$ref" in schema and len(schema) == 1:
                uses[key] = schema
            else:  # a union or other type without a model of its own: give it a component
                components[name] = schema
                uses[key] = {"$ref": REF_PREFIX + name}
        return components, uses


def _resolve(value: Any, uses: dict[tuple[str, str], dict[str, Any]]) -> Any:
    if isinstance(value, Schema):
        return uses[(value.component, value.mode)]
    if isinstance(value, dict):
        return {k: _resolve(v, uses) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_resolve(v, uses) for v in value]
    return value


def _header_objects(headers: tuple[Header, ...]) -> dict[str, Any]:
    return {h.name: {"description": h.description, "required": h.required, "schema": h.schema} for h in headers}


def _response(answer: Answer) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    content: dict[str, Any] = {}
    if answer.json is not None:
        content["application/json"] = {"schema": answer.json}
    if answer.sse is not None:
        content["text/event-stream"] = {"schema": answer.sse}
    for media, schema in answer.other.items():
        content[media] = {"schema": schema}
    if content:
        out["content"] = content
    if answer.headers:
        out["headers"] = _header_objects(answer.headers)
    if answer.links:
        out["links"] = {name: {"operationId": op_id, "parameters": params}
                        for name, (op_id, params) in answer.links.items()}
    return out


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    if op.params:
        params = []
        for p in op.params:
            param: dict[str, Any] = {"name": p.name, "in": p.where, "description": p.description,
                                     "required": p.required or p.where == "path", "schema": p.schema}
            if p.example is not None:
                param["example"] = p.example
            params.append(param)
        out["parameters"] = params
    if op.request is not None:
        out["requestBody"] = {"required": op.request_required,
                              "content": {media: {"schema": op.request} for media in op.request_media}}
    responses = {str(status): _response(answer) for status, answer in sorted(op.answers.items())}
    errors = {**common_errors(op), **op.error_statuses}
    for status, meaning in sorted(errors.items()):
        if str(status) in responses:
            continue
        if op.errors is None:
            raise ValueError(f"{op.method.upper()} {op.path}: status {status} has no error schema")
        responses[str(status)] = _response(Answer(meaning, json=op.errors, headers=ERROR_HEADERS.get(status, ())))
    out["responses"] = responses
    out["security"] = [] if op.public else [{name: []} for name in op.security]
    return out


def document(operations: list[Operation], *, title: str, version: str, description: str,
             tags: list[dict[str, str]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``. Raises ValueError for two operations on the same
    method and path, or an error status without an error schema."""
    components = _Components()
    for op in operations:
        components.collect([op.request, op.errors, *[(a.json, a.sse, a.other) for a in op.answers.values()]])
    schemas, uses = components.build()
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item = paths.setdefault(op.path, {})
        if op.method in item:
            raise ValueError(f"{op.method.upper()} {op.path} is described twice")
        item[op.method] = _resolve(_operation(op), uses)
    return {
        "openapi": "3.1.1",
        "info": {"title": title, "version": version, "description": description,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API key of the keys file (`KEYS_FILE`), as `Authorization: Bearer "
                                          "KEY`. Without a keys file the edge serves one tenant, `default`, and "
                                          "needs no key."},
                "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key",
                                "description": "The key as `?api_key=`, taken only by the two SSE routes a browser "
                                               "`EventSource` opens (it cannot send headers)."},
            },
        },
        "security": [{"bearer": []}],
    }

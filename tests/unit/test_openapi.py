"""The OpenAPI document (edge/openapi.py, edge/operations.py), as built (no processes).

- It is valid OpenAPI 3.1 (openapi-spec-validator).
- Every route registered on the app is in it, and nothing else is: a route added without
  documentation fails here.
- Its request bodies are the models the edge validates with; every error status a route can give,
  the door's included, has the error body; streams are ``text/event-stream`` with the event's schema.

tests/system/test_openapi_docs.py checks the edge serves it and the /docs page;
tests/system/test_openapi_fuzz.py fuzzes the live edge from it.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
from pydantic import TypeAdapter

from agentstream.settings import Settings
from edge.api_docs import document
from edge.api_native import ChatBody
from edge.app import create_app
from edge.openapi import REF_PREFIX

METHODS = ("get", "post", "delete", "put", "patch")


def _routes() -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route of the edge's app (HEAD and OPTIONS are automatic)."""
    app = create_app(Settings())
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]*:)?([^>]+)>", r"{\1}", rule.rule)
        out |= {(m.lower(), path) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    return out


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items() if m in METHODS]


def _schema_of(doc: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """A schema that resolves ``$ref``s against the whole document."""
    return {**ref, "components": doc["components"]}


def test_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_every_route_of_the_app_is_documented_and_nothing_else():
    documented = {(m, p) for m, p, _ in _operations(document())}
    routes = _routes()
    missing = sorted(routes - documented)
    assert not missing, f"routes without an entry in edge/operations.py: {missing}"
    assert not sorted(documented - routes), f"documented but not routes of the app: {sorted(documented - routes)}"
    assert ("post", "/v1/chat/completions") in routes and ("get", "/api/runs/{run_id}/events") in routes


def test_request_bodies_are_the_models_the_edge_validates_with():
    doc = document()
    body = doc["paths"]["/api/agents/{name}/chat"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": REF_PREFIX + "ChatBody"}
    generated = TypeAdapter(ChatBody).json_schema(ref_template=REF_PREFIX + "{model}")
    assert doc["components"]["schemas"]["ChatBody"] == generated
    validator = jsonschema.Draft202012Validator(_schema_of(doc, body))
    assert validator.is_valid({"message": "hi", "message_id": "m-1"})
    assert not validator.is_valid({"message": "hi", "mesage_id": "typo"})  # the edge refuses it too (422)


def test_every_error_status_has_the_error_body():
    doc = document()
    for method, path, op in _operations(doc):
        responses = op["responses"]
        label = f"{method.upper()} {path}"
        if op["security"]:
            door = {"401", "421", "429", "503"} | ({"400", "403", "413", "415"} if method == "post" else set())
            assert door <= set(responses), f"{label} lacks the door's statuses {sorted(door - set(responses))}"
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
            assert "Retry-After" in responses["429"]["headers"]
        for status, response in responses.items():
            if int(status) < 400 or path in ("/mcp", "/healthz"):  # MCP's JSON-RPC errors; health is its own body
                continue
            schema = response["content"]["application/json"]["schema"]
            error = "OpenAIErrorBody" if path.startswith("/v1/") else "ErrorBody"
            assert schema == {"$ref": REF_PREFIX + error}, f"{label} {status}: {schema}"
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"message", "type", "field"}


def test_streams_are_event_streams_with_the_event_schema():
    doc = document()
    streams = {(m, p) for m, p, op in _operations(doc)
               if any("text/event-stream" in r.get("content", {}) for r in op["responses"].values())}
    assert streams == {
        ("get", "/api/runs/{run_id}/events"), ("get", "/api/agents/{name}/sse"), ("post", "/api/process"),
        ("post", "/ag-ui/{name}"), ("post", "/mcp"), ("post", "/v1/chat/completions"), ("post", "/v1/completions"),
        ("post", "/v1/responses"), ("get", "/v1/responses/{resp_id}"),
    }
    native = doc["paths"]["/api/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    event = jsonschema.Draft202012Validator(_schema_of(doc, native["schema"]))
    assert native["schema"]["properties"]["data"]["contentSchema"] == {"$ref": REF_PREFIX + "RunEvent"}
    assert event.is_valid({"id": "7", "event": "run.started", "data": "{}"})  # data is JSON text
    assert not event.is_valid({"event": "run.started", "data": "{}"})  # every native event has an id
    security = doc["paths"]["/api/runs/{run_id}/events"]["get"]["security"]
    assert security == [{"bearer": []}, {"apiKeyQuery": []}]
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                                "type": "http", "scheme": "bearer"}

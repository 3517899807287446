"""The API's own description: ``GET /openapi.json`` (OpenAPI 3.1, edge/openapi.py built from the
route table in edge/operations.py) and ``GET /docs``, a page showing it with Swagger UI.

Swagger UI's files are vendored in ``edge/docs_ui/vendor`` (``make docs-ui`` takes them from npm's
``swagger-ui-dist``; ``VERSION`` says which) beside the page's own (``index.html``, ``docs.js``,
``docs.css``), all served as ``/docs/{name}``, so the page works offline: nothing is fetched from
elsewhere. Like the web page (edge/ui.py) these routes need no key and carry no tenant data; they
are served with its Content-Security-Policy (this origin only; images also from ``data:`` URLs,
which Swagger UI's stylesheet uses for its icons), content types and ETags.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
from pathlib import Path
from typing import Any

import orjson
from quart import Blueprint, Response

from edge import openapi, ui
from edge.errors import ApiError
from edge.operations import OPERATIONS, TAGS

DOCS_DIR = Path(__file__).resolve().parent / "docs_ui"
DOC_PATHS = frozenset({"/openapi.json", "/docs"})
"""Served without a key (edge.gate), like the web page."""

FILES = {**ui.load_static(DOCS_DIR / "vendor"), **ui.load_static(DOCS_DIR)}
HEADERS = {**ui.SECURITY_HEADERS,
           "Content-Security-Policy": ui.CONTENT_SECURITY_POLICY.replace("img-src 'self'", "img-src 'self' data:")}

DESCRIPTION = """\
agentstream runs LLM agents defined in YAML as services: post a message to an agent, get a run id
back at once, and follow the run's events live as Server-Sent Events (README.md).

Errors are `{"error": {"message", "type", "field"}}` naming the field at fault (on `/v1`, OpenAI's
`{"error": {"message", "type", "param", "code"}}`). Every request but `/healthz` must name a `Host`
this edge serves; a `POST` must be `Content-Type: application/json` and, from a web page, come from
an origin `EDGE_CORS_ORIGINS` allows. Streams (`text/event-stream`) are described one event at a
time: `data` holds the JSON shown; `: ping` comments keep quiet streams open.
"""

bp = Blueprint("docs", __name__)


def document() -> dict[str, Any]:
    """The OpenAPI document of the edge (a copy of the one built once: callers may change theirs)."""
    return copy.deepcopy(_built())


@functools.cache
def _built() -> dict[str, Any]:
    try:
        version = importlib.metadata.version("agentstream")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return openapi.document(OPERATIONS, title="agentstream", version=version, description=DESCRIPTION, tags=TAGS)


@functools.cache
def _document_file() -> ui.StaticFile:
    body = orjson.dumps(_built())
    return ui.StaticFile(body, "application/json", ui.etag_of(body))


@bp.get("/openapi.json")
async def openapi_json() -> Response:
    """``GET /openapi.json``: the OpenAPI 3.1 document."""
    return ui.serve(_document_file(), HEADERS)


@bp.get("/docs")
async def docs_page() -> Response:
    """``GET /docs``: the document in Swagger UI."""
    return ui.serve(FILES["index.html"], HEADERS)


@bp.get("/docs/<name>")
async def docs_file(name: str) -> Response:
    """``GET /docs/{name}``: a file of the page; 404 (JSON error naming ``name``) for any other name."""
    file = FILES.get(name)
    if file is None or name == "index.html":
        raise ApiError(404, "not_found", f"no documentation file {name[:80]!r}", "name")
    return ui.serve(file, HEADERS)

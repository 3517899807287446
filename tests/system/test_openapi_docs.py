"""The edge serves its OpenAPI document and the /docs page (edge/api_docs.py) to anyone, offline.

- ``GET /openapi.json`` is the document edge/openapi.py builds; ``/docs`` and its files need no
  key, are this origin's only, and 404/421 like the web page's.
- LocalAI's agent stream, the one route the fuzzer leaves out, gives the events the document says.
- In headless Chromium the page lists every operation, calls the API with a key from "Try it out",
  and fetches nothing from anywhere but the edge (screenshots in ``test-artifacts/openapi/``).
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import httpx
import jsonschema
import pytest
from playwright.sync_api import expect, sync_playwright

from edge.api_docs import document
from edge.openapi import REF_PREFIX
from tests.conftest import ALICE_KEY
from tests.harness import REPO
from tests.system.test_webui import CHROMIUM_ARGS, chromium_path

ARTIFACTS = REPO / "test-artifacts" / "openapi"
METHODS = ("get", "post", "delete", "put", "patch")


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items() if m in METHODS]


def _schema_of(doc: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """A schema that resolves ``$ref``s against the whole document."""
    return {**ref, "components": doc["components"]}


def test_the_edge_serves_the_document_and_its_page_without_a_key(system):
    with httpx.Client(base_url=system.edge_url, timeout=10) as client:
        served = client.get("/openapi.json")
        assert served.status_code == 200 and served.headers["content-type"] == "application/json"
        assert served.json() == json.loads(json.dumps(document()))
        again = client.get("/openapi.json", headers={"If-None-Match": served.headers["etag"]})
        assert again.status_code == 304
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for name in re.findall(r'(?:src|href)="/docs/([^"]+)"', page.text):
            assert client.get(f"/docs/{name}").status_code == 200, name
        missing = client.get("/docs/nothing.js")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "name"
        misdirected = client.get("/docs/docs.js", headers={"Host": "attacker.example"})
        assert misdirected.status_code == 421 and misdirected.json()["error"]["field"] == "Host"
        # The API itself still needs the key.
        assert client.get("/api/agents").status_code == 401
        assert client.get("/api/agents", headers={"Authorization": f"Bearer {ALICE_KEY}"}).status_code == 200


def test_localai_agent_stream_matches_the_document(system):
    """The one route the fuzzer leaves out (its stream never ends): its events, read while a run
    goes, are those the document describes."""
    doc = document()
    described = doc["paths"]["/api/agents/{name}/sse"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    event_schema = jsonschema.Draft202012Validator(_schema_of(doc, described["schema"]))
    frame_schema = jsonschema.Draft202012Validator(_schema_of(doc, {"$ref": REF_PREFIX + "LocalAIFrame"}))
    headers = {"Authorization": f"Bearer {ALICE_KEY}"}
    events: list[dict[str, str]] = []
    with httpx.Client(base_url=system.edge_url, headers=headers, timeout=httpx.Timeout(10, read=60)) as client, \
            client.stream("GET", "/api/agents/programmer-helper/sse") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines).startswith(":")  # the stream's opening comment: it is listening from now on
        posted = threading.Thread(target=lambda: httpx.post(
            f"{system.edge_url}/api/agents/programmer-helper/chat", headers=headers, json={"message": "Who are you?"},
            timeout=10).raise_for_status())
        posted.start()
        block: dict[str, str] = {}
        for line in lines:
            if line == "" and "data" in block:
                events.append(block)
                if block.get("event") == "json_message_status" and '"completed"' in block["data"]:
                    break
                block = {}
            elif line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                block[name] = value
        posted.join()
    assert {"json_message", "json_message_status", "stream_event"} <= {e["event"] for e in events}
    for event in events:
        event.setdefault("event", "message")
        event_schema.validate(event)
        if event["event"] != "status":
            frame_schema.validate(json.loads(event["data"]))


@pytest.mark.slow
def test_docs_page_shows_every_operation_offline(system):
    """/docs in headless Chromium: every operation listed, an API call made from the page with a key,
    nothing fetched from anywhere but the edge."""
    doc = document()
    origin = system.edge_url
    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda req: requests.append(req.url))
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{origin}/docs")
            blocks = page.locator(".opblock")
            blocks.first.wait_for(timeout=30_000)
            assert blocks.count() == len(_operations(doc))
            assert page.locator(".opblock-summary-path", has_text="/api/agents/{name}/chat").count() == 1
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=False)
            # Authorize with a key, then try GET /api/agents from the page: the answer is shown.
            page.locator("button.authorize").first.click()
            page.locator(".auth-container input").first.fill(ALICE_KEY)
            page.locator(".auth-btn-wrapper button.authorize").first.click()
            page.locator(".auth-btn-wrapper button.btn-done").first.click()
            operation = page.locator("#operations-agents-list_agents")
            operation.locator(".opblock-summary").click()
            operation.locator("button.try-out__btn").click()
            operation.locator("button.execute").click()
            expect(operation.locator(".live-responses-table tr.response td.response-col_status").first).to_have_text(
                re.compile(r"^\s*200"), timeout=30_000)
            expect(operation.locator(".live-responses-table .highlight-code").first).to_contain_text(
                "programmer-helper")
            page.screenshot(path=str(ARTIFACTS / "docs-try-it-out.png"), full_page=False)
        finally:
            browser.close()
    assert not problems, problems
    elsewhere = [url for url in requests if not url.startswith(origin + "/")]
    assert not elsewhere, f"the page fetched from elsewhere: {elsewhere}"
    assert f"{origin}/openapi.json" in requests

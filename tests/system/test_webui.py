"""The web page (edge/ui.py, edge/static/): served by the edge, used in headless Chromium against a
real system (nats-server with authentication, the built-in model, a tool runner, an agent runner,
an edge with a keys file), as a person would: type the key, pick an agent, chat, watch the
timeline, reload, cancel, open past runs, on a desktop and a phone-width screen.

Chromium is Debian's (``apt-get install -y chromium``; .ci/run installs it), driven by Playwright's
Python API; no browser is downloaded. Without it these tests fail, saying how to install it.
Screenshots go to ``test-artifacts/webui/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, expect, sync_playwright

from tests.conftest import ALICE_KEY, BOB_KEY, write_keys_file
from tests.harness import REPO, System, new_system

ARTIFACTS = REPO / "test-artifacts" / "webui"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 812}
FINISHED = "#timeline:is([data-status=completed],[data-status=failed],[data-status=cancelled])"


def chromium_path() -> str:
    """Debian's chromium (or ``CHROMIUM``); fails the test, saying how to install it, if absent."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the web page tests need Debian's chromium: run `apt-get install -y chromium` "
                    "(.ci/run does), or set CHROMIUM to a Chromium binary", pytrace=False)
    return path


@pytest.fixture(scope="module")
def ui_system(tmp_path_factory) -> Iterator[System]:
    """One system for the module. DELTA_FLUSH_BYTES=1: every streamed word is its own event, so
    ``many-deltas`` (1,000 words) makes a run of more than 1,000 events; AGENT_RUNNER_ACK_WAIT=1.5:
    a killed runner's run is retried soon (the last test)."""
    base = tmp_path_factory.mktemp("webui")
    sysm = new_system(base, DELTA_FLUSH_BYTES="1", AGENT_RUNNER_ACK_WAIT="1.5")
    with sysm:
        sysm.start_model()
        sysm.start_tool_runner("tools-ui")
        sysm.start_agent_runner("runner-ui")
        sysm.start_edge(KEYS_FILE=str(write_keys_file(base / "keys.yaml")))
        yield sysm


@pytest.fixture(scope="module")
def browser(ui_system) -> Iterator[Browser]:
    """Headless Chromium for the module; Playwright gives it a fresh ``--user-data-dir``."""
    executable = chromium_path()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Tab:
    """A page of the web UI and what the test saw of it (uncaught errors, event-stream requests)."""

    def __init__(self, page: Page, base_url: str):
        self.page = page
        self.base_url = base_url
        self.errors: list[str] = []
        self.streams: list[Request] = []
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("request", self._request)

    def _request(self, req: Request) -> None:
        if re.search(r"/api/runs/[^/]+/events$", req.url):
            self.streams.append(req)

    def goto(self, fragment: str = "") -> None:
        self.page.goto(f"{self.base_url}/{fragment}")
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")

    def enter_key(self, key: str) -> None:
        self.page.fill("#api-key", key)
        self.page.click("#key-form button[type=submit]")

    def login(self, key: str = ALICE_KEY) -> None:
        self.goto()
        self.enter_key(key)
        expect(self.page.locator("#agent option").first).to_be_attached()

    def send(self, agent: str, message: str) -> str:
        """Send ``message`` to ``agent``; returns the new run's id once the page shows it."""
        self.page.select_option("#agent", agent)
        before = self.page.locator("#run-id").text_content()
        self.page.fill("#message", message)
        self.page.click("#send")
        expect(self.page.locator("#run-id")).not_to_have_text(before or "")
        expect(self.page.locator("#run-id")).not_to_have_text("")
        return self.page.locator("#run-id").text_content() or ""

    def wait_finished(self, timeout: float = 60) -> str:
        self.page.wait_for_selector(FINISHED, state="attached", timeout=timeout * 1000)
        return self.page.locator("#timeline").get_attribute("data-status") or ""

    def answer(self) -> str:
        return self.page.locator("#exchange .msg.agent").inner_text()

    def shot(self, name: str, *, full_page: bool = True) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


@pytest.fixture
def context(browser) -> Iterator[BrowserContext]:
    """A fresh browser profile per test (its own localStorage and sessionStorage)."""
    ctx = browser.new_context(viewport=DESKTOP)
    yield ctx
    ctx.close()


@pytest.fixture
def tab(context, ui_system) -> Iterator[Tab]:
    t = Tab(context.new_page(), ui_system.edge_url)
    yield t
    assert not t.errors, f"uncaught errors in the page: {t.errors}"


def wait_for(check: Callable[[], Any], *, within: float = 20.0, what: str = "") -> Any:
    """Poll ``check()`` until it returns something truthy (deadline ``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within:g} s: {what or check}")
        time.sleep(0.05)


def api(system: System, key: str = ALICE_KEY) -> httpx.Client:
    return httpx.Client(base_url=system.edge_url, headers={"Authorization": f"Bearer {key}"},
                        timeout=httpx.Timeout(10, read=60))


def server_events(system: System, run_id: str) -> list[dict]:
    """The run's events from the edge's SSE stream, read to its end: ``[{id, event, data}]``."""
    events = []
    with api(system) as client, client.stream("GET", f"/api/runs/{run_id}/events") as resp:
        assert resp.status_code == 200
        block: dict[str, str] = {}
        for line in resp.iter_lines():
            if line == "":
                if "data" in block:
                    events.append({"id": int(block["id"]), "event": block["event"], "data": json.loads(block["data"])})
                block = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                block[field] = value
    return events


def final_answer(events: list[dict]) -> str:
    return next(e["data"]["data"]["text"] for e in events
                if e["event"] == "message.completed" and e["data"]["data"]["finish_reason"] == "stop")


# -- the page as the edge serves it

def test_page_and_its_files_need_no_key_and_carry_a_strict_csp(ui_system):
    with httpx.Client(base_url=ui_system.edge_url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe" not in csp and "http" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), "inline script would be refused by the CSP"
        assert "style=" not in page.text

        redirect = client.get("/ui")
        assert redirect.status_code == 308 and redirect.headers["location"] == "/"

        # Every file the page loads, and every module those import, is served with its type.
        wanted = set(re.findall(r'(?:src|href)="/static/([^"]+)"', page.text))
        kinds = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
        seen: set[str] = set()
        while wanted - seen:
            name = sorted(wanted - seen)[0]
            seen.add(name)
            resp = client.get(f"/static/{name}")
            assert resp.status_code == 200, name
            assert resp.headers["content-type"] == kinds[os.path.splitext(name)[1]], name
            assert resp.headers["content-security-policy"] == csp
            if name.endswith(".js"):
                wanted |= set(re.findall(r'from "\./([\w-]+\.js)"', resp.text))
        assert {"app.js", "sse.js", "timeline.js", "style.css"} <= seen

        etag = client.get("/static/app.js").headers["etag"]
        assert client.get("/static/app.js", headers={"If-None-Match": etag}).status_code == 304

        missing = client.get("/static/nope.js")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "name"
        assert client.get("/static/%2e%2e%2fui.py").status_code in (401, 404)

        # Only the page is open: the API still needs a key.
        assert client.get("/api/agents").status_code == 401
        assert client.get("/api/agents", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_keyed_edge_asks_for_the_key(tab):
    tab.goto()
    notice = tab.page.locator("#notice")
    expect(notice).to_contain_text("HTTP 401")
    expect(notice).to_contain_text("enter this edge's API key")
    expect(tab.page.locator("#send")).to_be_disabled()
    tab.enter_key("not-a-key")
    expect(notice).to_contain_text("HTTP 401")
    expect(tab.page.locator("#agent option")).to_have_count(0)
    tab.enter_key(ALICE_KEY)
    expect(tab.page.locator("#agent option[value=programmer-helper]")).to_be_attached()
    expect(notice).to_be_hidden()
    tab.page.reload()  # the key stays in this browser
    expect(tab.page.locator("#api-key")).to_have_value(ALICE_KEY)
    expect(tab.page.locator("#agent option[value=programmer-helper]")).to_be_attached()


def test_an_edge_without_keys_file_needs_no_key(ui_system, context):
    open_edge = ui_system.start_edge()  # the same system, a second edge with no KEYS_FILE
    try:
        t = Tab(context.new_page(), open_edge.ready_value)
        t.goto()
        expect(t.page.locator("#agent option[value=echo]")).to_be_attached()
        expect(t.page.locator("#notice")).to_be_hidden()
        t.send("echo", "open door")
        assert t.wait_finished() == "completed"
        assert t.answer() == "open door"
        assert not t.errors
    finally:
        open_edge.terminate()


# -- chatting

def test_a_chat_streams_its_answer_and_shows_the_tool_call_with_its_result(tab, ui_system):
    lines = (REPO / "pyproject.toml").read_text().splitlines()
    tab.login()
    run_id = tab.send("programmer-helper", "How many lines does pyproject.toml have, and what is its first line?")
    assert tab.wait_finished() == "completed"

    answer = tab.answer()
    assert f"has {len(lines)} lines" in answer and lines[0] in answer
    assert answer == final_answer(server_events(ui_system, run_id))
    expect(tab.page.locator("#exchange .msg.user")).to_have_text(
        "How many lines does pyproject.toml have, and what is its first line?")

    tool = tab.page.locator(".row.tool[data-name=read_file]")
    expect(tool).to_have_count(1)
    expect(tool).to_have_attribute("data-ok", "true")
    expect(tool.locator("details.args pre")).to_have_text('{"path":"pyproject.toml"}')
    expect(tool.locator(".tool-meta")).to_contain_text("ms")
    result = tool.locator("details.result")
    expect(result).not_to_have_attribute("open", "")  # a whole file: folded
    expect(result.locator("summary")).to_contain_text(re.compile(r"\d+ lines, [\d,]+ chars"))
    result.locator("summary").click()
    expect(result).to_have_attribute("open", "")
    expect(result.locator("pre")).to_contain_text(f"total_lines: {len(lines)}")
    expect(result.locator("pre")).to_contain_text(lines[0])

    expect(tab.page.locator(".row.step")).to_have_count(2)  # read, then answer
    expect(tab.page.locator(".row.step .dur").first).to_contain_text("ms")
    expect(tab.page.locator("#run-usage")).to_contain_text("tokens")
    expect(tab.page.locator(".row.run-completed")).to_contain_text("completed")
    expect(tab.page.locator("#cancel")).to_be_disabled()
    tab.shot("chat-tool-call.png")


def test_the_answer_grows_as_deltas_arrive(tab, ui_system):
    tab.login()
    tab.page.evaluate("""() => {
        window.__lengths = [];
        const box = document.getElementById('exchange');
        new MutationObserver(() => {
            const answer = box.querySelector('.msg.agent');
            if (answer) window.__lengths.push(answer.textContent.length);
        }).observe(box, {subtree: true, childList: true, characterData: true});
    }""")
    run_id = tab.send("long-story", "Tell me a long story")
    assert tab.wait_finished() == "completed"
    lengths = [n for n in tab.page.evaluate("window.__lengths") if n > 0]
    final = final_answer(server_events(ui_system, run_id))
    assert tab.answer() == final
    assert len(set(lengths)) >= 5, f"the answer did not stream in: lengths seen {lengths}"
    assert lengths == sorted(lengths) and lengths[-1] == len(final)


def test_a_reload_mid_run_resumes_where_it_was_without_duplicates(tab, ui_system):
    tab.login()
    run_id = tab.send("long-story", "Tell me a story, then I reload")
    two_rounds = "hotel alpha bravo charlie delta echo foxtrot golf hotel"
    expect(tab.page.locator("#exchange .msg.agent")).to_contain_text(two_rounds, timeout=20_000)
    shown = int(tab.page.locator("#timeline").get_attribute("data-last-event-id") or 0)
    assert tab.page.locator("#timeline").get_attribute("data-status") == "running"
    assert f"run={run_id}" in tab.page.url

    tab.streams.clear()
    tab.page.reload()
    assert tab.wait_finished() == "completed"

    # The page asked only for what came after what it had shown.
    resumed = [r.headers.get("last-event-id") for r in tab.streams if run_id in r.url]
    assert resumed and resumed[0] is not None and int(resumed[0]) >= shown, resumed

    events = server_events(ui_system, run_id)
    assert tab.answer() == final_answer(events)
    assert len(tab.answer().split()) == 100
    timeline = tab.page.locator("#timeline")
    expect(timeline).to_have_attribute("data-events", str(len(events)))
    expect(timeline).to_have_attribute("data-last-event-id", str(events[-1]["id"]))
    for kind in ("run.queued", "run.started", "run.completed", "text"):
        expect(timeline.locator(f"[data-type='{kind}']")).to_have_count(1)
    expect(tab.page.locator("#exchange .msg.user")).to_have_text("Tell me a story, then I reload")


def test_cancel_stops_the_run(tab, ui_system):
    tab.login()
    run_id = tab.send("long-story", "A story I will cut short")
    expect(tab.page.locator("#exchange .msg.agent")).to_contain_text("alpha bravo", timeout=20_000)
    cancel = tab.page.locator("#cancel")
    expect(cancel).to_be_enabled()
    cancel.click()
    assert tab.wait_finished(30) == "cancelled"
    expect(tab.page.locator("#exchange .chat-status")).to_contain_text("cancelled from the web page")
    expect(tab.page.locator(".row.run-cancelled")).to_have_count(1)
    expect(cancel).to_be_disabled()
    with api(ui_system) as client:
        assert client.get(f"/api/runs/{run_id}").json()["status"] == "cancelled"
    assert len(tab.answer().split()) < 100


def test_an_ensemble_shows_its_members_side_by_side(tab, ui_system):
    tab.login()
    run_id = tab.send("ens-pair", "Why is the sky blue?")
    cards = tab.page.locator(".member")
    expect(cards).to_have_count(2, timeout=20_000)
    a, b = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
    assert a and b and a["y"] == b["y"] and a["x"] + a["width"] <= b["x"], (a, b)  # side by side
    assert tab.wait_finished() == "completed"
    expect(tab.page.locator(".member[data-status=completed]")).to_have_count(2)

    events = server_events(ui_system, run_id)
    assert tab.answer() == final_answer(events)
    children = {e["data"]["data"]["member"]: e["data"]["data"]["run_id"] for e in events
                if e["event"] == "member.started"}
    assert set(children) == {"member-slow-a", "member-slow-b"}
    for member, child in children.items():
        card = tab.page.locator(f".member[data-member={member}]")
        expect(card).to_have_attribute("data-run-id", child)
        expect(card.locator(".member-meta")).to_contain_text(" s")  # its duration
        # The member's own answer, followed on its child run.
        expect(card.locator(".member-text")).to_have_text(final_answer(server_events(ui_system, child)))
    tab.shot("ensemble.png")

    # A member's own timeline opens from its card.
    tab.page.locator(".member[data-member=member-slow-a] .run-link").click()
    expect(tab.page.locator("#run-id")).to_have_text(children["member-slow-a"])
    assert tab.wait_finished() == "completed"
    assert f"run={children['member-slow-a']}" in tab.page.url
    expect(tab.page.locator("#agent")).to_have_value("member-slow-a")


def test_the_runs_list_opens_a_past_run_from_its_start(tab, ui_system):
    with api(ui_system) as client:
        resp = client.post("/api/agents/programmer-helper/chat",
                           json={"message": "What is the first line of README.md?"})
        run_id = resp.json()["run_id"]
    events = server_events(ui_system, run_id)
    tab.login()
    tab.page.select_option("#agent", "programmer-helper")
    item = tab.page.locator(f".run-item[data-run-id='{run_id}']")
    expect(item).to_have_attribute("data-status", "completed")
    expect(item.locator(".run-meta")).to_contain_text(re.compile(r"\d+(\.\d+)? (ms|s)"))
    expect(item).to_contain_text("What is the first line of README.md?")
    tab.streams.clear()
    item.click()
    assert tab.wait_finished() == "completed"
    expect(tab.page.locator("#run-id")).to_have_text(run_id)
    assert [r.headers.get("last-event-id") for r in tab.streams] == [None]  # replayed from the start
    expect(tab.page.locator("#timeline")).to_have_attribute("data-events", str(len(events)))
    expect(tab.page.locator(".row.tool[data-name=read_file] details.args pre")).to_have_text('{"path":"README.md"}')
    assert tab.answer() == final_answer(events)
    expect(item).to_have_class(re.compile(r"\bactive\b"))


def test_a_phone_width_screen_has_no_horizontal_scroll(browser, ui_system):
    ctx = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        t = Tab(ctx.new_page(), ui_system.edge_url)
        t.login()
        t.send("programmer-helper", "How many lines does pyproject.toml have?")
        assert t.wait_finished() == "completed"
        t.page.locator(".row.tool details.result summary").click()  # a whole file, unfolded
        t.page.locator(".row.text summary").first.click()
        width = t.page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth]")
        assert max(width) <= PHONE["width"], f"the page scrolls sideways: {width}"
        t.send("trio", "Why is the sky blue? Answer with a really-long-word-that-does-not-fit-anywhere-at-all-ever")
        assert t.wait_finished() == "completed"
        for selector in ("#send", "#cancel", "#agent", "#api-key", ".member >> nth=1", "#run-id"):
            box = t.page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5, (selector, box)
        width = t.page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth]")
        assert max(width) <= PHONE["width"], f"the page scrolls sideways: {width}"
        t.shot("phone.png")
        assert not t.errors
    finally:
        ctx.close()


def test_a_run_of_a_thousand_events_renders_incrementally(tab, ui_system):
    tab.login()
    tab.page.evaluate("""() => {
        window.__added = 0;
        new MutationObserver((records) => {
            for (const r of records) window.__added += r.addedNodes.length;
        }).observe(document.getElementById('timeline'), {subtree: true, childList: true});
    }""")
    started = time.monotonic()
    run_id = tab.send("many-deltas", "A thousand words, please")
    assert tab.wait_finished() == "completed"
    took = time.monotonic() - started
    events = server_events(ui_system, run_id)
    deltas = [e for e in events if e["event"] == "message.delta"]
    assert len(deltas) >= 1000
    expect(tab.page.locator("#timeline")).to_have_attribute("data-events", str(len(events)))
    assert tab.answer() == final_answer(events) and len(tab.answer().split()) == 1000
    added = tab.page.evaluate("window.__added")
    rows = tab.page.locator("#timeline *").count()
    assert added < 50 and rows < 100, f"the timeline grew by node per event: {added} nodes added, {rows} in all"
    print(f"\n{len(events)} events rendered in {took:.2f} s from send to the last event shown; {added} nodes added")

    # A reload shows it again from this tab's saved events: no stream is opened.
    tab.streams.clear()
    tab.page.reload()
    assert tab.wait_finished() == "completed"
    expect(tab.page.locator("#timeline")).to_have_attribute("data-events", str(len(events)))
    assert tab.answer() == final_answer(events)
    assert tab.streams == []


# -- tenants

def test_another_tenant_sees_none_of_it(tab, ui_system):
    with api(ui_system) as client:
        resp = client.post("/api/agents/programmer-helper/chat", json={"message": "alice's secret question"})
        alice_run = resp.json()["run_id"]
    server_events(ui_system, alice_run)
    tab.goto(f"#agent=programmer-helper&run={alice_run}")
    tab.enter_key(BOB_KEY)
    expect(tab.page.locator("#agent option")).to_have_count(1)  # bob may use programmer-helper only
    expect(tab.page.locator("#timeline")).to_have_attribute("data-status", "unavailable")
    expect(tab.page.locator("#timeline")).to_contain_text("HTTP 404")
    expect(tab.page.locator("#runs")).not_to_contain_text("alice's secret question")
    expect(tab.page.locator(f".run-item[data-run-id='{alice_run}']")).to_have_count(0)
    assert "alice's secret question" not in tab.page.locator("body").inner_text()


# -- the agent editor

def test_the_agent_editor_shows_each_refusal_at_its_field_and_saves_live(tab, ui_system):
    name = f"ui-made-{int(time.time() * 1000) % 10**8}"
    page = tab.page
    tab.login()
    page.click("#agent-new")
    dialog = page.locator("#editor")
    expect(dialog).to_be_visible()
    page.fill("#ed-name", name)
    page.fill("#ed-model", "builtin:delay=0.001")
    page.fill("#ed-actions", "read_file, rm_rf")
    page.fill("#ed-max-steps", "0")
    page.click("#editor-save")
    # The edge's 422 names both fields; each reason is shown at its own input, and the form stays open.
    expect(page.locator("#ed-actions")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#ed-actions-error")).to_contain_text("rm_rf")
    expect(page.locator("#ed-max-steps")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#ed-max-steps-error")).to_be_visible()
    expect(page.locator("#ed-name")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#ed-actions")).to_be_focused()
    expect(dialog).to_be_visible()
    tab.shot("editor-errors.png", full_page=False)
    with api(ui_system) as client:
        assert client.get(f"/api/agents/{name}").status_code == 404  # nothing was stored

    page.fill("#ed-actions", "read_file")
    page.fill("#ed-max-steps", "3")
    page.fill("#ed-llm-base-url", "https://attacker.example/v1")  # a model server the operator did not list
    page.click("#editor-save")
    expect(page.locator("#ed-llm-base-url-error")).to_contain_text("AGENTS_LLM_ORIGINS")
    expect(page.locator("#ed-actions")).not_to_have_attribute("aria-invalid", "true")  # fixed: cleared
    expect(page.locator("#ed-actions-error")).to_be_hidden()

    page.fill("#ed-llm-base-url", "")
    page.click("#editor-save")
    expect(dialog).to_be_hidden()
    expect(page.locator("#agent")).to_have_value(name)
    expect(page.locator("#notice")).to_contain_text(f"Saved agent {name}")
    with api(ui_system) as client:
        stored = client.get(f"/api/agents/{name}").json()
    assert stored["source"] == "api" and stored["actions"] == ["read_file"] and stored["max_steps"] == 3
    assert stored["llm"] is None
    # Served at once: the runner started before the agent existed runs it, tool call included.
    tab.send(name, "What is the first line of pyproject.toml?")
    assert tab.wait_finished() == "completed"
    expect(page.locator("#timeline")).to_contain_text("read_file")

    # Changing it keeps what the form does not show, and stores a new revision.
    page.click("#agent-edit")
    expect(dialog).to_be_visible()  # once the agent is read
    expect(page.locator("#editor-note")).to_contain_text(f"revision {stored['revision']}")
    expect(page.locator("#ed-name")).to_have_value(name)
    expect(page.locator("#ed-name")).to_have_attribute("readonly", "")  # PUT cannot rename
    expect(page.locator("#ed-max-steps")).to_have_value("3")
    page.fill("#ed-description", "changed in the browser")
    page.click("#editor-save")
    expect(dialog).to_be_hidden()
    with api(ui_system) as client:
        changed = client.get(f"/api/agents/{name}").json()
        assert changed["description"] == "changed in the browser" and changed["revision"] > stored["revision"]
        assert changed["model"] == "builtin:delay=0.001" and changed["max_steps"] == 3
        with api(ui_system, BOB_KEY) as bob:  # another tenant has no such agent
            assert bob.get(f"/api/agents/{name}").status_code == 404

    # A file agent's form says that saving makes the tenant's own copy; it cannot be deleted.
    page.select_option("#agent", "programmer-helper")
    page.click("#agent-edit")
    expect(dialog).to_be_visible()
    expect(page.locator("#editor-note")).to_contain_text("AGENTS_DIR")
    expect(page.locator("#editor-delete")).to_be_hidden()
    page.click("#editor-close")

    # Deleting takes a second click; the agent leaves the list.
    page.select_option("#agent", name)
    page.click("#agent-edit")
    expect(page.locator("#editor-delete")).to_be_visible()
    page.click("#editor-delete")
    expect(page.locator("#editor-delete")).to_have_text("Really delete?")
    expect(dialog).to_be_visible()
    page.click("#editor-delete")
    expect(dialog).to_be_hidden()
    expect(page.locator(f"#agent option[value='{name}']")).to_have_count(0)
    with api(ui_system) as client:
        assert client.get(f"/api/agents/{name}").status_code == 404


# -- the page's own logic, on made-up input

def test_stream_parsing_and_retry_rendering(tab):
    """The SSE parser on awkward chunking, and what a retry supersedes (README, "Run events"),
    checked in the page's own modules with events made up for the purpose."""
    tab.login()
    result = tab.page.evaluate("""async () => {
        const { SSEParser } = await import('/static/sse.js');
        const p = new SSEParser();
        const out = [];
        for (const chunk of ['id: 1\\r', '\\nevent: a\\ndata: x\\r\\n', 'data: y\\n', '\\n: ping\\n\\nid: 2\\0\\n',
                             'data: z\\r\\rdata:no-space\\n\\n']) out.push(...p.feed(chunk));
        const { Timeline } = await import('/static/timeline.js');
        const { ChatView } = await import('/static/chat.js');
        const { flushNow } = await import('/static/scheduler.js');
        const mk = (tag) => document.createElement(tag);
        const parts = { list: mk('ol'), status: mk('span'), runId: mk('code'), elapsed: mk('span'),
                        count: mk('span'), usage: mk('p'), cancel: mk('button') };
        const tl = new Timeline(parts, { followRun: () => ({ stop() {} }), openRun() {} });
        const chat = new ChatView(mk('div'));
        tl.reset('r1'); chat.reset('r1');
        const ts = (s) => `2026-01-01T00:00:${String(s).padStart(2, '0')}Z`;
        const evs = [
            ['run.queued', 1, 0, { message: 'q' }], ['run.started', 1, 1, { runner: 'a', attempt: 1 }],
            ['message.delta', 1, 2, { step: 1, text: 'old one ' }],
            ['tool.call', 1, 2, { step: 1, tool_call_id: 'c1', name: 'read_file', arguments: '{}' }],
            ['tool.result', 1, 3, { step: 1, tool_call_id: 'c1', name: 'read_file', ok: true, output: {}, ms: 5 }],
            ['message.delta', 1, 4, { step: 2, text: 'half an ans' }],
            ['run.retrying', 2, 9, { attempt: 2, reason: 'runner died', resume_step: 2 }],
            ['message.delta', 2, 10, { step: 2, text: 'the whole answer' }],
            ['message.completed', 2, 11, { text: 'the whole answer', finish_reason: 'stop', steps: 2 }],
            ['run.completed', 2, 11, { duration_ms: 11000, steps: 2,
                                       usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } }],
        ];
        evs.forEach(([type, attempt, s, data], i) => {
            const ev = { id: i + 1, type, env: { type, attempt, ts: ts(s), data } };
            tl.apply(ev); chat.apply(ev);
        });
        flushNow();
        const texts = [...parts.list.querySelectorAll('.row.text')];
        return {
            parsed: out,
            answer: chat.answer.textContent,
            superseded: texts.map((t) => t.classList.contains('superseded')),
            steps: [...parts.list.querySelectorAll('.row.step')].map((s) => s.dataset.step + '/' + s.dataset.attempt),
            status: parts.list.dataset.status, events: parts.list.dataset.events,
            elapsed: parts.elapsed.textContent, usage: parts.usage.textContent,
        };
    }""")
    assert result["parsed"] == [
        {"id": "1", "event": "a", "data": "x\ny"},
        {"id": "1", "event": "message", "data": "z"},  # an id with NUL is ignored; CR CR ends the event
        {"id": "1", "event": "message", "data": "no-space"},
    ]
    assert result["answer"] == "old one the whole answer"  # step 2's first try is gone, step 1 stays
    assert result["superseded"] == [False, True, False]
    assert result["steps"] == ["1/1", "2/1", "2/2"]
    assert result["status"] == "completed" and result["events"] == "10"
    assert result["elapsed"] == "11.0 s"
    assert result["usage"] == "1 prompt + 2 completion = 3 tokens"


def test_a_call_waiting_for_approval_is_approved_or_rejected_from_the_page(tab, ui_system):
    lines = (REPO / "pyproject.toml").read_text().splitlines()
    read_toml = 'use the tool read_file with {"path": "pyproject.toml"}'
    tab.login()
    approved_run = run_id = tab.send("gatekeeper", read_toml)
    box = tab.page.locator(".row.tool[data-name=read_file] .approval")
    expect(box.locator("button.approve")).to_be_enabled(timeout=20_000)
    expect(tab.page.locator("#run-status")).to_have_text("awaiting approval")
    expect(tab.page.locator(".row.tool[data-name=read_file] .badge")).to_have_text("awaiting approval")
    expect(box).to_contain_text("waits for approval until")
    expect(tab.page.locator("#exchange .chat-status")).to_contain_text("waiting for approval of read_file")
    tab.shot("approval-waiting.png")

    # A reload while it waits shows the buttons again; the decision goes through the API.
    tab.page.reload()
    expect(box.locator("button.approve")).to_be_enabled(timeout=20_000)
    box.locator("input.approval-reason").fill("fine, read it")
    box.locator("button.approve").click()
    assert tab.wait_finished() == "completed"
    expect(tab.page.locator(".row.tool[data-name=read_file]")).to_have_attribute("data-approval", "approved")
    expect(tab.page.locator(".row.tool[data-name=read_file]")).to_have_attribute("data-ok", "true")
    expect(box.locator("button")).to_have_count(0)
    expect(box).to_contain_text("approved — fine, read it")
    assert f"has {len(lines)} lines" in tab.answer()
    decided = next(e["data"]["data"] for e in server_events(ui_system, run_id) if e["event"] == "tool.approval_decided")
    assert decided["decision"] == "approved" and decided["reason"] == "fine, read it"
    tab.shot("approval-approved.png")

    run_id = tab.send("gatekeeper", read_toml)
    expect(box.locator("button.reject")).to_be_enabled(timeout=20_000)
    box.locator("input.approval-reason").fill("not today")
    box.locator("button.reject").click()
    assert tab.wait_finished() == "completed"
    expect(tab.page.locator(".row.tool[data-name=read_file]")).to_have_attribute("data-approval", "rejected")
    expect(tab.page.locator(".row.tool[data-name=read_file] .badge")).to_have_text("failed")
    assert "approval_rejected" in tab.answer() and "not today" in tab.answer()
    # A past run replayed from its start shows how it was decided, with no buttons.
    tab.page.click("#runs-refresh")
    tab.page.locator(f".run-item[data-run-id='{approved_run}']").click()
    expect(tab.page.locator("#run-id")).to_have_text(approved_run)
    assert tab.wait_finished() == "completed"
    expect(box).to_contain_text("approved — fine, read it")
    expect(box.locator("button")).to_have_count(0)


# -- last: kills a runner of the module's system

def test_a_retry_supersedes_the_text_it_rewrites(tab, ui_system):
    """A runner killed mid-answer: another takes the run over (``run.retrying``, resume_step 1), and
    the page drops the text it had shown of that step instead of showing it twice."""
    ui_system.start_agent_runner("runner-ui-spare")
    runners = {p.ready_value: p for p in ui_system.procs if p.name.startswith("agent-runner") and p.alive()}
    tab.login()
    run_id = tab.send("long-story", "A story that survives its runner")
    expect(tab.page.locator("#exchange .msg.agent")).to_contain_text("golf hotel alpha bravo", timeout=20_000)
    holder = re.search(r"on (\S+) ·", tab.page.locator(".row.run-started").inner_text()).group(1)
    runners[holder].kill()
    assert tab.wait_finished(60) == "completed"

    events = server_events(ui_system, run_id)
    retry = next(e["data"]["data"] for e in events if e["event"] == "run.retrying")
    assert retry["resume_step"] == 1
    expect(tab.page.locator(".row.run-retrying")).to_contain_text("attempt 2")
    expect(tab.page.locator(".row.run-started")).to_have_count(2)
    expect(tab.page.locator(".row.step[data-attempt='1'] .row.text")).to_have_class(re.compile(r"\bsuperseded\b"))
    expect(tab.page.locator(".row.step[data-attempt='2'] .row.text")).not_to_have_class(re.compile("superseded"))
    assert tab.answer() == final_answer(events) and len(tab.answer().split()) == 100
    expect(tab.page.locator("#timeline")).to_have_attribute("data-events", str(len(events)))
    tab.shot("retry.png")
    # Whichever runner held the run (the spare or the first), the other is still serving.
    assert [rid for rid, p in runners.items() if p.alive()] == [rid for rid in runners if rid != holder]

"""The edge's request rules (edge.guard): Host, ?api_key=, Origin and Content-Type, checked before
any route. The pure parts are tested as functions; the rules as a client meets them through the
edge app itself (Quart's test client: real routing and error rendering, no NATS, so a request that
passes the rules and needs NATS answers 503)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from agentstream.settings import Settings
from edge.app import create_app
from edge.auth import Authenticator
from edge.guard import HostRule, host_rule, normal_origin, split_host

CHAT = "/api/agents/programmer-helper/chat"
KEY = "k-secret"


def app_for(**settings):
    keys = Path(tempfile.mkdtemp()) / "keys.yaml"
    keys.write_text(f"tenants:\n  acme:\n    keys: [{KEY}]\n")
    return create_app(Settings.from_env({}, **settings), auth=Authenticator.from_file(keys))


async def error_of(resp, status: int, field: str) -> dict:
    assert resp.status_code == status, await resp.get_data()
    body = (await resp.get_json())["error"]
    assert body.get("field", body.get("param")) == field, body
    assert body["message"]
    return body


BEARER = {"Authorization": f"Bearer {KEY}"}


# -- Content-Type and Origin on POST


async def test_a_post_without_content_type_from_another_origin_is_403():
    client = app_for().test_client()
    resp = await client.post(CHAT, data=b'{"message": "hi"}', headers={"Origin": "https://evil.example", **BEARER})
    await error_of(resp, 403, "Origin")


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/yaml",
    "application/json-seq",
])
async def test_every_post_needs_json(content_type):
    client = app_for().test_client()
    headers = {**BEARER, **({"Content-Type": content_type} if content_type else {})}
    for path in (CHAT, "/api/runs/r1/cancel", "/api/process", "/v1/chat/completions"):
        await error_of(await client.post(path, data=b"{}", headers=headers), 415, "Content-Type")


@pytest.mark.parametrize("content_type", ["application/yaml", "application/x-yaml", "text/yaml; charset=utf-8"])
async def test_the_agent_definition_routes_also_take_yaml(content_type):
    client = app_for().test_client()
    headers = {**BEARER, "Content-Type": content_type}
    for path in ("/api/agents", "/api/agents/import"):
        resp = await client.post(path, data=b"name: x\n", headers=headers)
        assert resp.status_code == 503, await resp.get_data()  # past the rules; storing needs NATS
    for path in ("/api/agents/x/pause", CHAT, "/api/process"):  # every other POST: JSON only
        await error_of(await client.post(path, data=b"name: x\n", headers=headers), 415, "Content-Type")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_the_agent_definition_routes_refuse_what_browsers_send_anywhere(content_type):
    client = app_for().test_client()
    headers = {**BEARER, **({"Content-Type": content_type} if content_type else {})}
    for path in ("/api/agents", "/api/agents/import"):
        body = await error_of(await client.post(path, data=b"name: x\n", headers=headers), 415, "Content-Type")
        assert "application/yaml" in body["message"]
    yaml_from_elsewhere = {**BEARER, "Content-Type": "application/yaml", "Origin": "https://evil.example"}
    await error_of(await client.post("/api/agents", data=b"name: x\n", headers=yaml_from_elsewhere), 403, "Origin")


@pytest.mark.parametrize("headers", [
    {},  # not a browser
    {"Origin": "http://localhost"},  # the edge's own page (Host: localhost)
    {"Origin": "http://LOCALHOST:80", "Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://app.example"},  # listed in EDGE_CORS_ORIGINS
    {"Origin": "https://app.example:443", "Sec-Fetch-Site": "cross-site"},
])
async def test_posts_that_pass_reach_the_route(headers):
    client = app_for(edge_cors_origins="https://app.example").test_client()
    resp = await client.post(CHAT, json={"message": "hi"}, headers={**BEARER, **headers})
    assert resp.status_code == 503  # past every rule: the route needs NATS, which is not connected


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "http://localhost:3000"},  # same site, another origin
    {"Origin": "null"},  # a sandboxed page or a file
    {"Origin": "https://app.example.evil"},
    {"Sec-Fetch-Site": "cross-site"},  # no Origin, but the browser says where it comes from
])
async def test_posts_from_other_web_pages_are_403(headers):
    client = app_for(edge_cors_origins="https://app.example").test_client()
    await error_of(await client.post(CHAT, json={"message": "hi"}, headers={**BEARER, **headers}), 403, "Origin")


async def test_any_origin_when_the_operator_says_so():
    client = app_for(edge_cors_origins="*").test_client()
    for headers in ({"Origin": "null"}, {"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        resp = await client.post(CHAT, json={"message": "hi"}, headers={**BEARER, **headers})
        assert resp.status_code == 503, headers  # past every rule


async def test_gets_and_preflights_are_not_refused_for_their_origin():
    client = app_for(edge_cors_origins="https://app.example").test_client()
    assert (await client.get("/api/agents", headers={**BEARER, "Origin": "https://evil.example"})).status_code == 200
    pre = await client.options(CHAT, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == "https://app.example"


# -- Host


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.2",
                                  "", "local host", "::1", "localhost:99999"])
async def test_a_host_the_edge_does_not_serve_is_421(host):
    client = app_for().test_client()
    for method, path in (("GET", "/api/agents"), ("POST", CHAT), ("GET", "/v1/models")):
        resp = await client.open(path, method=method, json={"message": "hi"} if method == "POST" else None,
                                 headers={**BEARER, "Host": host})
        await error_of(resp, 421, "Host")


async def test_health_probes_may_use_any_host():
    client = app_for().test_client()  # (503: not connected to NATS; a 421 would be the rule)
    assert (await client.get("/healthz", headers={"Host": "10.1.2.3:8080"})).status_code == 503


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8080", "localhost.", "127.0.0.1", "127.0.0.1:9000",
                                  "[::1]", "[::1]:8080"])
async def test_loopback_names_are_served_by_default(host):
    client = app_for().test_client()
    assert (await client.get("/api/agents", headers={**BEARER, "Host": host})).status_code == 200


async def test_listed_and_any_hosts():
    listed = app_for(edge_allowed_hosts="agents.example:8443, .corp.example").test_client()
    for host, status in (("agents.example:8443", 200), ("agents.example", 421), ("corp.example", 200),
                         ("a.b.corp.example:1", 200), ("localhost", 421), ("xcorp.example", 421)):
        assert (await listed.get("/api/agents", headers={**BEARER, "Host": host})).status_code == status, host
    anything = app_for(edge_allowed_hosts="*").test_client()
    assert (await anything.get("/api/agents", headers={**BEARER, "Host": "evil.example"})).status_code == 200


def test_default_host_rule():
    assert host_rule("", "127.0.0.1:8080") == HostRule(names=frozenset({"localhost", "127.0.0.1", "::1"}))
    assert "10.0.0.5" in host_rule("", "10.0.0.5:8080").names
    assert "edge-7" in host_rule("", "0.0.0.0:8080", hostname="Edge-7").names
    assert "edge-7" in host_rule("", "[::]:8080", hostname="edge-7").names
    with pytest.raises(ValueError, match="EDGE_ALLOWED_HOSTS: 'a b'"):
        host_rule("a b", "127.0.0.1:8080")


@pytest.mark.parametrize("value,expected", [
    ("Example.COM.", ("example.com", None)), ("example.com:8080", ("example.com", 8080)), ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", None)), ("::1", None), ("[::1", None), ("[::1]x", None), ("[nope]", None), ("a:b", None),
    ("a:0", None), ("a/b", None),
    ("user@host", None), ("", None),
])
def test_split_host(value, expected):
    assert split_host(value) == expected


@pytest.mark.parametrize("value,expected", [
    ("https://App.Example:443", "https://app.example"), ("http://a.example:8080", "http://a.example:8080"),
    ("http://[::1]:80", "http://[::1]"), ("null", None), ("https://a.example/path", None), ("ftp://a.example", None),
])
def test_normal_origin(value, expected):
    assert normal_origin(value) == expected


# -- ?api_key= only on SSE routes


async def test_api_key_in_the_query_only_on_sse_routes():
    client = app_for().test_client()
    for method, path in (("POST", CHAT), ("GET", "/api/agents"), ("GET", "/api/runs/r1"), ("GET", "/v1/models"),
                         ("POST", "/api/runs/r1/cancel")):
        resp = await client.open(f"{path}?api_key={KEY}", method=method,
                                 json={"message": "hi"} if method == "POST" else None)
        await error_of(resp, 401, "api_key")
    for path in ("/api/runs/r1/events", "/api/agents/programmer-helper/sse"):
        resp = await client.get(f"{path}?api_key={KEY}")
        assert resp.status_code == 503, path  # the key was taken; the stream needs NATS
        await error_of(await client.get(f"{path}?api_key=wrong"), 401, "Authorization")

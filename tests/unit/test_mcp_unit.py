"""MCP's pure parts: the agent-file rules for ``mcp_servers`` (errors name the field), the names
the model sees, the built-in model's "use the tool X with {...}" rule, an MCP result as the model
reads it, and the edge's Origin rule on /mcp."""

from __future__ import annotations

import mcp.types as mt
import pytest

from agent_runner.mcp_tools import McpToolLister, function_definition
from agent_runner.tool_client import ToolOutcome
from agentstream.agents import parse_agent
from agentstream.builtin_model.policy import Options, decide
from edge.errors import ApiError
from edge.guard import HostRule, check
from schemas.mcp import McpToolInfo, command_allowed, model_tool_name
from tool_runner.errors import ToolError
from tool_runner.mcp.tools import output_of


def errors_of(text: str, commands: str = "python") -> list[tuple[str | None, str]]:
    agent, errors = parse_agent(text, "a.yaml", mcp_stdio_commands=commands)
    assert agent is None
    return [(e.field, e.reason) for e in errors]


def test_a_good_agent_file_with_both_kinds_of_server_loads():
    agent, errors = parse_agent(
        "name: a\nmcp_servers:\n"
        "  - {name: files, command: python, args: [-m, srv], env: {KEY: v}, tools: [read, list]}\n"
        "  - {name: web, url: 'https://mcp.example/mcp'}\n", "a.yaml", mcp_stdio_commands="python, npx")
    assert errors == [] and agent is not None
    files, web = agent.mcp_servers
    assert (files.transport, files.allows("read"), files.allows("write")) == ("stdio", True, False)
    assert (web.transport, web.allows("anything")) == ("http", True)


@pytest.mark.parametrize(("server", "field", "reason"), [
    ("{name: w, url: 'ftp://x'}", "mcp_servers.0.url", "pattern"),
    ("{name: w, url: 'https://user:pw@mcp.example/mcp'}", "mcp_servers.0.url", "pattern"),
    ("{name: 'a.b', url: 'https://x/mcp'}", "mcp_servers.0.name", "pattern"),
    ("{name: w}", "mcp_servers.0", "either command"),
    ("{name: w, command: python, url: 'https://x/mcp'}", "mcp_servers.0", "not both"),
    ("{name: w, url: 'https://x/mcp', args: [a]}", "mcp_servers.0", "a url server takes neither"),
    ("{name: w, command: python, env: {'1BAD': x}}", "mcp_servers.0.env.1BAD.[key]", "pattern"),
    ("{name: w, url: 'https://x/mcp', tools: [a, a]}", "mcp_servers.0", "twice"),
    ("{name: w, url: 'https://x/mcp', colour: red}", "mcp_servers.0.colour", "unknown field"),
])
def test_a_bad_server_is_an_error_naming_its_field(server, field, reason):
    ((got_field, got_reason),) = errors_of(f"name: a\nmcp_servers:\n  - {server}\n")
    assert got_field == field and reason in got_reason


def test_server_names_are_unique():
    ((field, reason),) = errors_of("name: a\nmcp_servers:\n  - {name: w, url: 'https://x/mcp'}\n"
                                   "  - {name: w, url: 'https://y/mcp'}\n")
    assert field == "mcp_servers" and "'w' used twice" in reason


def test_a_stdio_command_must_be_allowed_by_the_operator():
    text = "name: a\nmcp_servers:\n  - {name: ok, command: python}\n  - {name: sh, command: /bin/sh, args: [-c, id]}\n"
    ((field, reason),) = errors_of(text, commands="python")
    assert field == "mcp_servers.1.command" and "MCP_STDIO_COMMANDS" in reason
    assert [f for f, _ in errors_of(text, commands="")] == ["mcp_servers.0.command", "mcp_servers.1.command"]
    assert command_allowed("python", " python ,npx") and not command_allowed("/usr/bin/python", "python")


def test_an_ensemble_has_no_servers_of_its_own():
    ((field, reason),) = errors_of("name: e\nmembers: [a]\ncombiner: c\nmcp_servers: [{name: w, url: 'https://x/m'}]\n")
    assert "mcp_servers" in reason and field is None


def test_model_names_are_valid_function_names():
    assert model_tool_name("files", "read") == "files__read"
    dotted = model_tool_name("files", "fs.read")
    long = model_tool_name("s" * 40, "t" * 40)
    assert dotted.startswith("files__fs_read_") and len(dotted) == len("files__fs_read_") + 8
    assert len(long) == 64
    assert model_tool_name("files", "fs.read") != model_tool_name("files", "fs_read")
    assert model_tool_name("files", "read", hashed=True).startswith("files__read_")
    for name in (dotted, long):
        assert all(c.isalnum() or c in "_-" for c in name)


def test_the_builtin_model_calls_the_tools_a_message_names():
    reply = decide([{"role": "user", "content": 'Please use the tool notes__read with {"name": "a b"} and then '
                                                "use the tool `web__ping`."}], None, Options())
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("notes__read", {"name": "a b"}), ("web__ping", {})]
    # Before every other rule: a URL in the message does not make it fetch.
    offered = [{"type": "function", "function": {"name": "http_request"}}]
    ask = [{"role": "user", "content": "use the tool x__y with {} on https://example.com"}]
    reply = decide(ask, offered, Options())
    assert [c.name for c in reply.tool_calls] == ["x__y"]


def test_the_builtin_model_answers_from_an_mcp_result():
    messages = [
        {"role": "user", "content": "use the tool n__r"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "n__r", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"text": "forty-two"}'},
    ]
    assert decide(messages, None, Options()).text == "The tool n__r returned: forty-two"


def test_an_mcp_result_as_the_model_reads_it():
    result = mt.CallToolResult(content=[mt.TextContent(type="text", text="a"), mt.TextContent(type="text", text="b"),
                                        mt.ImageContent(type="image", data="AA==", mimeType="image/png")],
                               structuredContent={"n": 1})
    assert output_of(result) == {"text": "a\nb", "structured": {"n": 1},
                                 "other_content": [{"type": "image", "mimeType": "image/png"}]}
    with pytest.raises(ToolError) as failed:
        output_of(mt.CallToolResult(content=[mt.TextContent(type="text", text="no such note")], isError=True))
    assert (failed.value.kind, failed.value.message) == ("mcp_tool_error", "no such note")


def test_a_function_definition_from_a_tool_list_entry():
    info = McpToolInfo(name="read", model_name="files__read", description="Read a file",
                       input_schema={"type": "object", "title": "readArguments", "$schema": "x",
                                     "properties": {"path": {"type": "string"}}})
    assert function_definition(info) == {"type": "function", "function": {
        "name": "files__read", "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}
    odd = function_definition(McpToolInfo(name="x", model_name="s__x", input_schema={"type": "string"}))
    assert odd["function"]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_origin_is_checked_for_every_method_on_mcp(method):
    def run(path: str) -> None:
        check(method=method, path=path, host="127.0.0.1:8080", endpoint=None, has_api_key_param=False,
              mimetype="application/json", origin="https://evil.example", sec_fetch_site=None,
              hosts=HostRule(names=frozenset({"127.0.0.1"})), cors_origins=frozenset())

    with pytest.raises(ApiError) as refused:
        run("/mcp")
    assert (refused.value.status, refused.value.field) == (403, "Origin")
    if method != "POST":
        run("/api/runs")  # elsewhere, only a POST meets the Origin rule


async def test_two_tools_with_the_same_model_name_are_both_offered():
    """Server "a__b" with tool "c" and server "a" with tool "b__c" both make "a__b__c"."""

    class Lists:
        async def call(self, tenant, tool, *, arguments, **_):
            server = arguments["server"]
            name = {"a__b": "c", "a": "b__c"}[server]
            listing = {"server": server, "tools": [{"name": name, "model_name": model_tool_name(server, name)}]}
            return ToolOutcome(ok=True, output=listing)

    agent = parse_agent("name: x\nmcp_servers: [{name: a__b, url: 'https://x/m'}, {name: a, url: 'https://y/m'}]\n",
                        "x.yaml")[0]
    offered = await McpToolLister(Lists(), ttl=60, timeout=5).tools_for("t", agent, "run-1")
    assert len(offered) == 2 and "a__b__c" in offered
    other = next(t for name, t in offered.items() if name != "a__b__c")
    assert (other.server, other.tool, other.definition["function"]["name"]) == ("a", "b__c", other.model_name)

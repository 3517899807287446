"""What the built-in model says: a deterministic stand-in for an LLM that drives the agent loop
honestly.

- Told ``use the tool NAME with {json}`` (once or more in the message: ``use the tool a with {}
  and use the tool b with {"x": 1}``): it calls each tool NAME so named, in that order, in one
  step, with that JSON object as its arguments (``with`` and the object may be left out: ``{}``).
  It does so whether or not NAME is offered, as a real model may call a tool it was not given;
  this rule comes before all others.
- Asked about a URL, with ``http_request`` offered: it calls ``http_request``.
- Asked about a skill by name, with ``load_skill`` offered: it calls ``load_skill``.
- Asked to list a directory, with ``list_dir`` offered: it calls ``list_dir``.
- Asked about a file path, with ``read_file`` offered: it calls ``read_file``.
- Asked to call any other offered tool by name (client-side tools): it calls it, with the first
  JSON object in the message as arguments.
- Given tool results: it answers from their actual content (a file's line count and first line,
  an HTTP status and the start of the body, a directory's entries, an MCP tool's text, an error's
  message).
- Otherwise it answers with a fixed sentence built from the question.

It is not a language model and does not pretend to be one; see the README for real servers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_URL = re.compile(r"https?://[^\s<>\"'`)\]]+")
_BACKTICKED = re.compile(r"`([^`\s]+)`")
_PATH = re.compile(r"(?<![\w/.@-])((?:\.{0,2}/)?(?:[\w.-]+/)*[\w-][\w.-]*\.[A-Za-z0-9]{1,10})(?![\w/-])")
_DIR_WORDS = re.compile(r"\b(list|ls|show)\b.*\b(dir|directory|folder|files|entries)\b", re.I | re.S)
_WORD = re.compile(r"\S+\s*|\s+")
_LABELLED = re.compile(r"^### ([\w.-]+)\n(.*?)(?=^### |\Z)", re.M | re.S)
_USE_TOOL = re.compile(r"\buse the tool\s+`?([A-Za-z0-9_-]{1,64})`?(?:\s+with\s+(?=\{))?", re.I)
_NAMED_DIR = re.compile(
    r"\b(?:the\s+)?([\w.][\w./-]*)\s+(?:dir|directory|folder)\b|\b(?:dir|directory|folder)\s+`?([\w.][\w./-]*)", re.I
)


@dataclass
class Options:
    """Behaviour knobs, read from the model name: ``builtin:delay=0.1,tokens=50``.

    - ``delay``: seconds between streamed tokens (default: the server's BUILTIN_MODEL_TOKEN_DELAY)
    - ``first_delay``: seconds before the first byte (a long prompt-processing pause)
    - ``tokens``: answer with exactly this many words instead of the usual sentence
    - ``fail``: answer every request with this HTTP status (e.g. 500, 429)
    - ``fail_after``: stream this many tokens, then an error event (a failure mid-stream)
    - ``fail_first``: answer the first N requests naming this exact model with HTTP 500, then
      normally (a flaky server, for retry tests)
    - ``no_stream``: answer with one JSON body even when streaming was asked (some servers do)
    - ``echo``: answer with the user's message, verbatim (newlines, emoji and all)
    - ``hang``: never answer (1)
    - ``tag``: ignored; tells requests apart in ``/debug/requests``
    """

    delay: float | None = None
    first_delay: float = 0.0
    tokens: int | None = None
    fail: int | None = None
    fail_after: int | None = None
    fail_first: int = 0
    no_stream: bool = False
    echo: bool = False
    hang: bool = False

    @classmethod
    def from_model(cls, model: str) -> Options:
        """Parse ``name:key=value,...``; unknown keys and bad values raise ValueError."""
        opts = cls()
        if ":" not in model:
            return opts
        spec = model.split(":", 1)[1]
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, _, value = item.partition("=")
            if key in ("delay", "first_delay"):
                setattr(opts, key, float(value))
            elif key in ("tokens", "fail", "fail_after", "fail_first"):
                setattr(opts, key, int(value))
            elif key == "tag":
                pass
            elif key in ("hang", "no_stream", "echo"):
                setattr(opts, key, value not in ("0", "false", ""))
            else:
                raise ValueError(f"unknown built-in model option {key!r}")
        return opts


@dataclass
class ToolCallPlan:
    """A tool call the model decides to make."""

    name: str
    arguments: dict[str, Any]


@dataclass
class Reply:
    """What the model answers: ``text``, or ``tool_calls`` (then text is empty)."""

    text: str = ""
    tool_calls: list[ToolCallPlan] = field(default_factory=list)


def tokens_of(text: str) -> list[str]:
    """Split text into the pieces streamed one by one (a word and its trailing space)."""
    return _WORD.findall(text)


def count_prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """A stable, non-zero prompt token count: words in every message and tool definition."""
    words = 0
    for m in messages:
        words += len(_text_of(m.get("content")).split())
        for call in m.get("tool_calls") or []:
            words += len(str(call.get("function", {}).get("arguments", "")).split()) + 1
    if tools:
        words += len(json.dumps(tools).split())
    return max(words, 1)


def decide(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, opts: Options) -> Reply:
    """The reply to a conversation (OpenAI messages and tools)."""
    offered = {t.get("function", {}).get("name"): t for t in tools or [] if t.get("type", "function") == "function"}
    last = messages[-1] if messages else {"role": "user", "content": ""}
    if last.get("role") == "tool":
        return Reply(text=_answer_from_tool_results(messages))
    question = _text_of(last.get("content"))
    if opts.echo:
        return Reply(text=question)
    if opts.tokens is not None:
        return Reply(text=_words(opts.tokens))
    named = _named_tool_calls(question)
    if named:
        return Reply(tool_calls=named)
    plan = _plan_tool_call(question, offered)
    if plan is not None:
        return Reply(tool_calls=[plan])
    labelled = _LABELLED.findall(question)
    if len(labelled) >= 2:
        return Reply(text=_combine(labelled))
    return Reply(text=_plain_answer(question, _persona(messages)))


def _named_tool_calls(question: str) -> list[ToolCallPlan]:
    """The calls a message asks for by name: ``use the tool NAME with {json}`` (see the module docstring)."""
    plans = []
    for match in _USE_TOOL.finditer(question):
        rest = question[match.end():]
        arguments: dict[str, Any] = {}
        if rest.startswith("{"):
            try:
                value, _ = json.JSONDecoder().raw_decode(rest)
            except json.JSONDecodeError:
                value = None
            if isinstance(value, dict):
                arguments = value
        plans.append(ToolCallPlan(match.group(1), arguments))
    return plans


def _plan_tool_call(question: str, offered: dict[str, dict[str, Any]]) -> ToolCallPlan | None:
    urls = _URL.findall(question)
    if urls and "http_request" in offered:
        return ToolCallPlan("http_request", {"url": urls[0].rstrip(".,;:!?"), "method": "GET"})
    if "load_skill" in offered:
        for skill in _skill_names(offered["load_skill"]):
            if re.search(rf"(?<![\w-]){re.escape(skill)}(?![\w-])", question):
                return ToolCallPlan("load_skill", {"name": skill})
    without_urls = _URL.sub(" ", question)
    path = _find_path(without_urls)
    if "list_dir" in offered and _DIR_WORDS.search(without_urls):
        named = _NAMED_DIR.search(without_urls)
        target = next((g for g in named.groups() if g), None) if named else None
        if target in (None, "the", "this", "that", "a", "project", "root", "current"):
            target = "."
        return ToolCallPlan("list_dir", {"path": target.strip("`'\".,")})
    if path and "read_file" in offered:
        return ToolCallPlan("read_file", {"path": path})
    for name in offered:
        if name in ("http_request", "load_skill", "list_dir", "read_file") or not name:
            continue
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", question):
            return ToolCallPlan(name, _first_json_object(question))
    return None


def _skill_names(tool: dict[str, Any]) -> list[str]:
    params = tool.get("function", {}).get("parameters", {})
    enum = params.get("properties", {}).get("name", {}).get("enum")
    return list(enum or [])


def _find_path(text: str) -> str | None:
    candidates: list[str] = _BACKTICKED.findall(text)
    for candidate in candidates:
        if "/" in candidate or "." in candidate:
            return candidate.strip("'\".,;:")
    m = _PATH.search(text)
    return m.group(1) if m else None


def _first_json_object(text: str) -> dict[str, Any]:
    start = text.find("{")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return {}


def _plain_answer(question: str, persona: str = "") -> str:
    q = " ".join(question.split())
    if len(q) > 200:
        q = q[:200] + "…"
    who = f" Following my instructions ({persona})," if persona else ""
    return (
        f"You asked: \u201c{q}\u201d.{who} I am agentstream's built-in stand-in model: ask me about a file "
        "(for example README.md) or a URL and I will use my tools to answer."
    )


def _persona(messages: list[dict[str, Any]]) -> str:
    """The first sentence of the first system message, shortened: what the model was told to be."""
    system = next((_text_of(m.get("content")) for m in messages if m.get("role") == "system"), "")
    first = re.split(r"(?<=[.:!?])\s", " ".join(system.split()), maxsplit=1)[0] if system.strip() else ""
    return first[:80].rstrip(".:") if first else ""


def _combine(labelled: list[tuple[str, str]]) -> str:
    """The answer to a combine prompt: which answers it combined, and the start of each."""
    names = ", ".join(name for name, _ in labelled)
    parts = []
    for name, body in labelled:
        body = " ".join(body.split())
        parts.append(f"{name} said: {body[:100]}{'…' if len(body) > 100 else ''}")
    return f"Combining {len(labelled)} answers ({names}). " + " ".join(parts)


def _words(n: int) -> str:
    vocab = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
    return " ".join(vocab[i % len(vocab)] for i in range(n))


def _answer_from_tool_results(messages: list[dict[str, Any]]) -> str:
    # The tool messages after the last assistant message, matched to that message's calls.
    i = len(messages) - 1
    while i >= 0 and messages[i].get("role") == "tool":
        i -= 1
    calls = {}
    if i >= 0 and messages[i].get("role") == "assistant":
        for call in messages[i].get("tool_calls") or []:
            calls[call.get("id")] = call.get("function", {})
    parts = []
    for m in messages[i + 1 :]:
        fn = calls.get(m.get("tool_call_id"), {})
        name = fn.get("name", "tool")
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except json.JSONDecodeError:
            args = {}
        parts.append(_describe(name, args, _text_of(m.get("content"))))
    return " ".join(parts) if parts else "I have no tool results to answer from."


def _describe(name: str, args: dict[str, Any], content: str) -> str:
    try:
        result = json.loads(content)
    except json.JSONDecodeError:
        result = content
    if isinstance(result, dict) and "error" in result and isinstance(result["error"], dict):
        err = result["error"]
        target = args.get("path") or args.get("url") or args.get("name") or ""
        return f"The {name} call{f' for {target}' if target else ''} failed ({err.get('type')}): {err.get('message')}."
    if name == "read_file" and isinstance(result, dict) and "content" in result:
        lines = result.get("content", "").splitlines()
        first = lines[0] if lines else ""
        if result.get("total_lines") is None:  # reading stopped before the end: lines not counted
            return (
                f"The file {result.get('path')} is {result.get('size')} bytes; I read lines "
                f"{result.get('start_line')} to {result.get('end_line')} of it, not to its end. "
                f"Its first line is: {first}"
            )
        return (
            f"The file {result.get('path')} has {result.get('total_lines')} lines "
            f"({result.get('size')} bytes). Its first line is: {first}"
        )
    if name == "list_dir" and isinstance(result, dict) and "entries" in result:
        entries = result["entries"]
        names = ", ".join(e["name"] + ("/" if e.get("type") == "dir" else "") for e in entries[:20])
        more = f" and {len(entries) - 20} more" if len(entries) > 20 else ""
        return f"The directory {result.get('path')} has {len(entries)} entries: {names}{more}."
    if name == "http_request" and isinstance(result, dict) and "status" in result:
        body = " ".join(str(result.get("body", "")).split())
        ctype = (result.get("headers") or {}).get("content-type", "unknown type")
        return (
            f"{result.get('url')} answered HTTP {result.get('status')} with {result.get('bytes')} bytes "
            f"of {ctype}. It starts: {body[:120]}"
        )
    if name == "load_skill" and isinstance(result, dict) and "text" in result:
        text = str(result["text"])
        first = next((ln.strip().lstrip("#").strip() for ln in text.splitlines() if ln.strip()), "")
        return f"I loaded the skill {result.get('name')} ({len(text.splitlines())} lines): {first}"
    if isinstance(result, dict) and isinstance(result.get("text"), str) and result["text"]:  # an MCP tool's result
        text = " ".join(result["text"].split())
        return f"The tool {name} returned: {text[:200]}{'…' if len(text) > 200 else ''}"
    shown = content if len(content) <= 200 else content[:200] + "…"
    return f"The tool {name} returned: {shown}"


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)

"""Error kinds: one vocabulary (schemas/errors.py), one base exception, used everywhere a run or a
tool call fails."""

from __future__ import annotations

import ast

import pytest

from agent_runner.ensemble import MembersFailed
from agent_runner.llm import LLMError
from agent_runner.loop import MaxStepsExceeded
from agentstream.beneath import BeneathError
from schemas.errors import AgentstreamError, ErrorKind
from tests.harness import REPO
from tool_runner.errors import ToolError


@pytest.mark.parametrize(("error", "kind", "reason"), [
    (LLMError(ErrorKind.LLM_UNREACHABLE, "no answer"), "llm_unreachable", "model call failed"),
    (MaxStepsExceeded("no answer within max_steps (3)"), "max_steps", "max_steps reached"),
    (MembersFailed("2 of 3 failed"), "members_failed", "not enough members answered"),
    (ToolError(ErrorKind.NOT_FOUND, "no such file"), "not_found", "tool failed"),
    (BeneathError(ErrorKind.OUTSIDE_ROOT, "a symlink out"), "outside_root", "failed"),
])
def test_every_failure_carries_its_kind_and_reason(error, kind, reason):
    assert isinstance(error, AgentstreamError) and error.kind == kind and error.reason == reason
    assert error.message == str(error)


def test_upstream_kinds_are_the_model_and_the_tool_pool():
    assert ErrorKind.is_upstream("llm_http_error") and ErrorKind.is_upstream("tool_unavailable")
    assert not ErrorKind.is_upstream("max_steps") and not ErrorKind.is_upstream(None)
    assert not ErrorKind.is_upstream("internal_error")


def test_no_error_kind_is_written_as_a_bare_string():
    """An ``ErrorInfo(type=...)`` or a failure built from a string literal would bypass the vocabulary."""
    offenders = []
    for package in ("agent_runner", "tool_runner", "edge", "agentstream"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                literal = [k.value for k in node.keywords if k.arg == "type"] if name == "ErrorInfo" else (
                    node.args[:1] if name in ("ToolError", "LLMError", "BeneathError") else [])
                if any(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in literal):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


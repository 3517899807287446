"""The tool runner's Prometheus metrics (README, Observability), served on its probe server's
``GET /metrics`` (agentstream.probe, ``METRICS_BIND``).

``tool`` is one of the tools this runner serves (requests for others are refused before they
count); ``error_type`` is one of the tools' own error types (``ToolError.type``, ``timeout``,
``invalid_arguments``, ``tool_unavailable``, ``internal_error``).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from agentstream.metrics import FAST_BUCKETS

TOOL_EXECUTIONS = Counter(
    "agentstream_tool_executions_total",
    "Tool calls this tool runner executed, by outcome (ok, error); a repeated call answered from its stored "
    "result is not executed again and not counted.",
    ["tool", "outcome", "error_type"],
)
TOOL_EXECUTION_DURATION = Histogram(
    "agentstream_tool_execution_duration_seconds",
    "How long a tool took to execute here (arguments checked to result).",
    ["tool"], buckets=FAST_BUCKETS,
)


def executed(tool: str, seconds: float, error_type: str | None) -> None:
    """Count one execution of ``tool`` (``error_type`` None: it succeeded) and its duration."""
    TOOL_EXECUTIONS.labels(tool, "ok" if error_type is None else "error", error_type or "").inc()
    TOOL_EXECUTION_DURATION.labels(tool).observe(seconds)

"""Log records as text or as JSON lines (``LOG_FORMAT``), carrying the run, tenant, agent and
trace they belong to.

The context comes from context variables (PEP 567): the agent runner binds a run's ``run_id``,
``tenant`` and ``agent`` while it handles the run (every task started meanwhile inherits them:
asyncio copies the context into new tasks), and the edge binds the caller's tenant and the
route's agent and run id for each request. ``trace_id`` is the current OpenTelemetry span's, when
tracing is on (agentstream.tracing).

``LOG_FORMAT=json`` writes one JSON object per line: ``time`` (RFC 3339, UTC, milliseconds),
``level``, ``logger``, ``message``, then ``run_id``, ``tenant``, ``agent``, ``trace_id`` where
known, and ``exception`` (the formatted traceback) for a record logged with one. The lines a
component prints at start-up for its supervisor (``edge ready: URL``, ``agent-runner health:
URL``) are written the same way (:func:`announce`); :func:`announced` reads either form back.

A component's ready line (``edge ready: URL``) is also pushed to its parent (:func:`report_ready`):
a launcher (agentstream/launch.py, the ``agentstream up`` supervisor) gives the child the write end
of a pipe and names its descriptor in ``AGENTSTREAM_READY_FD``; the child writes its ready line
there as plain text, one line, then closes it, so the parent waits on that pipe rather than on the
log. Without the variable (``python -m edge`` run by hand) the line only goes to stdout.

What is never logged: API keys, ``Authorization`` headers, nkey seeds (docs/security.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson

from agentstream import tracing

RUN_ID: ContextVar[str | None] = ContextVar("agentstream_run_id", default=None)
TENANT: ContextVar[str | None] = ContextVar("agentstream_tenant", default=None)
AGENT: ContextVar[str | None] = ContextVar("agentstream_agent", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY_LOGGERS = ("httpx", "httpcore", "hypercorn.access")
"""Libraries whose INFO records say nothing an operator needs (one line per HTTP request)."""

_json_output = False

READY_FD_ENV = "AGENTSTREAM_READY_FD"
"""The environment variable naming the descriptor of the ready pipe's write end (a decimal number)."""


def _take_ready_fd() -> int | None:
    """The ready pipe's descriptor, taken out of the environment (so processes this one starts do
    not inherit a number that means nothing to them) and made non-inheritable; None without one."""
    value = os.environ.pop(READY_FD_ENV, None)
    if value is None or not value.strip().isdigit():
        return None
    fd = int(value)
    try:
        os.set_inheritable(fd, False)
    except OSError:  # not open here: a variable copied from elsewhere
        return None
    return fd


_ready_fd = _take_ready_fd()


def bind(*, run_id: str | None = None, tenant: str | None = None, agent: str | None = None) -> None:
    """Set the log context of the current task (and of the tasks it starts from now on)."""
    RUN_ID.set(run_id)
    TENANT.set(tenant)
    AGENT.set(agent)


@contextmanager
def bound(*, run_id: str | None = None, tenant: str | None = None, agent: str | None = None) -> Iterator[None]:
    """The log context for the duration of a ``with`` block; the previous one afterwards."""
    tokens = (RUN_ID.set(run_id), TENANT.set(tenant), AGENT.set(agent))
    try:
        yield
    finally:
        AGENT.reset(tokens[2])
        TENANT.reset(tokens[1])
        RUN_ID.reset(tokens[0])


def _timestamp(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for its fields)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (no line break inside: newlines are escaped)."""
        doc: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id, tenant, agent = RUN_ID.get(), TENANT.get(), AGENT.get()
        if run_id is not None:
            doc["run_id"] = run_id
        if tenant is not None:
            doc["tenant"] = tenant
        if agent is not None:
            doc["agent"] = agent
        trace_id = tracing.current_trace_id()
        if trace_id is not None:
            doc["trace_id"] = trace_id
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def configure(level: str, fmt: str) -> None:
    """Log to stderr at ``level`` (DEBUG, INFO, WARNING, ERROR) as ``fmt`` (``text`` or ``json``);
    Python warnings become log records; the chattiest libraries log only warnings."""
    global _json_output
    _json_output = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if _json_output else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def announce(text: str) -> None:
    """Print a start-up line for supervisors and tests (``edge ready: URL``) on stdout: as is, or
    with LOG_FORMAT=json as a JSON log line whose ``message`` is ``text``."""
    if _json_output:
        line = orjson.dumps({"time": _timestamp(time.time()), "level": "INFO", "logger": "agentstream",
                             "message": text}).decode()
    else:
        line = text
    print(line, flush=True)


def report_ready(text: str, *, more: bool = False) -> None:
    """Announce a ready line (``edge ready: URL``, :func:`announce`) and push it to the parent's
    ready pipe (``AGENTSTREAM_READY_FD``) as ``text`` plus a line feed, UTF-8; then close the pipe,
    unless ``more`` lines follow (the edge's ``edge connected: URL`` once it reaches NATS). Without
    a pipe, or when the parent no longer reads it, the line goes to stdout only."""
    global _ready_fd
    announce(text)
    if _ready_fd is None:
        return
    data = (text + "\n").encode()
    try:
        while data:  # one line is shorter than PIPE_BUF: a single write in practice
            data = data[os.write(_ready_fd, data):]
    except OSError:  # the parent closed its end (it has what it waited for) or died
        more = False
    if not more:
        with contextlib.suppress(OSError):
            os.close(_ready_fd)
        _ready_fd = None


def announced(line: str) -> str:
    """The text of an output line: its ``message`` if it is a JSON log line, else the line."""
    if line.startswith("{"):
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            return line
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return str(doc["message"])
    return line

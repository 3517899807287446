"""OpenTelemetry traces: one trace per run, across every process it touches.

The W3C trace context (``traceparent``, ``tracestate``: W3C Trace Context §3) travels

- on the HTTP request to the edge (an incoming ``traceparent`` is honoured: the submit span is
  its child),
- in the headers of the stored run request (``agents.{tenant}.{agent}.run``): JetStream keeps a
  message's headers, so every attempt of the run, on whichever agent runner takes it after a
  crash, reads the same context and its run span joins the run's trace,
- in the headers of each tool call request (``tools.{tenant}.{tool}``) and of an ensemble's
  member runs,
- on the model server request (``POST …/chat/completions``; the httpx instrumentation's span,
  :func:`instrument_httpx`).

Spans are exported with OTLP over HTTP (protobuf) when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set;
the SDK's own variables (``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_TRACES_SAMPLER``, ``OTEL_RESOURCE_ATTRIBUTES``, …) apply. Unset, nothing is set up: every
function here returns at once (no span objects, no header writes), so the hot path pays one
boolean test.

Only the trace context is propagated (no ``baggage``): a caller's baggage would otherwise ride
along into every process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Protocol

import httpx
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

__all__ = [
    "AttributeValue", "Headers", "Span", "SpanKind", "current", "current_trace_id", "enabled", "end_span", "inject",
    "mark_error", "setup", "shutdown", "span", "start_span",
]

_PROPAGATOR = TraceContextTextMapPropagator()


class Headers(Protocol):
    """Message or request headers: a dict (NATS), or an HTTP library's header collection."""

    def items(self) -> Iterable[tuple[str, str]]:
        """``(name, value)`` pairs."""
        ...

_state: dict[str, Any] = {"tracer": None, "provider": None}


def enabled() -> bool:
    """True when this process exports spans (``setup`` found an endpoint)."""
    return _state["tracer"] is not None


def setup(service: str, endpoint: str | None, *, instance: str | None = None) -> bool:
    """Export this process's spans to ``endpoint`` (OTLP/HTTP base URL; None: do nothing) as
    ``service.name`` = ``service`` (unless OTEL_SERVICE_NAME says otherwise) and
    ``service.instance.id`` = ``instance``. Returns whether tracing is on."""
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, AttributeValue] = {"service.name": service, "service.namespace": "agentstream"}
    if instance:
        attributes["service.instance.id"] = instance
    provider = TracerProvider(resource=Resource.create(attributes))
    # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and …_TRACES_ENDPOINT, headers, timeout) itself.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Instrumentation libraries inject with the global propagator: the trace context only, as ours.
    propagate.set_global_textmap(_PROPAGATOR)
    # The httpx instrumentation's attributes under the stable HTTP semantic conventions
    # (``http.request.method``, ``http.response.status_code``), as our own spans; a value the
    # operator set wins.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    _state["provider"] = provider
    _state["tracer"] = provider.get_tracer("agentstream")
    return True


def instrument_httpx(client: httpx.AsyncClient) -> None:
    """Make every request of ``client`` a client span of the current trace, its context sent in
    ``traceparent`` (opentelemetry-instrumentation-httpx, HTTP semantic conventions: method,
    ``url.full`` without credentials, status). Nothing when tracing is off: the client stays as it is."""
    provider = _state["provider"]
    if provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)


def shutdown() -> None:
    """Export the spans still buffered and stop (at process exit)."""
    provider = _state["provider"]
    _state["tracer"] = _state["provider"] = None
    if provider is not None:
        provider.shutdown()


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers`` (NATS message
    or HTTP request headers); nothing when tracing is off or no span is current."""
    if _state["tracer"] is not None:
        _PROPAGATOR.inject(headers)


def _parent(headers: Headers | None) -> Context | None:
    if not headers:
        return None
    carrier = {k.lower(): v for k, v in headers.items()}  # HTTP header names are case-insensitive
    return _PROPAGATOR.extract(carrier) if "traceparent" in carrier else None


@contextmanager
def span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, parent: Headers | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span | None]:
    """A span around a ``with`` block, current inside it (so tasks started inside inherit it).

    ``parent``: headers carrying a ``traceparent`` to continue (an incoming request or message);
    without one, the current span (if any) is the parent. Yields None when tracing is off. An
    exception leaving the block is recorded and sets the span's status to error (except
    cancellation, which is not a failure of the span's work).
    """
    tracer = _state["tracer"]
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(
        name, context=_parent(parent), kind=kind, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as err:
            if isinstance(err, Exception):
                current.record_exception(err)
                mark_error(current, type(err).__name__)
            raise


def start_span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, parent: Headers | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Span | None:
    """A span that is not made current, for work that outlives a ``with`` block (a streamed
    response); end it with :func:`end_span`. ``parent`` as for :func:`span`. None when tracing is off."""
    tracer = _state["tracer"]
    if tracer is None:
        return None
    started: Span = tracer.start_span(name, context=_parent(parent), kind=kind, attributes=attributes)
    return started


def end_span(started: Span | None) -> None:
    """End a span of :func:`start_span` (None, or already ended: nothing)."""
    if started is not None and started.is_recording():
        started.end()


def mark_error(current: Span | None, error_type: str, description: str | None = None) -> None:
    """Set ``error.type`` and an error status on ``current`` (None: nothing)."""
    if current is None:
        return
    current.set_attribute("error.type", error_type)
    current.set_status(Status(StatusCode.ERROR, description))


def current() -> Span | None:
    """The current span (None when tracing is off or none is current)."""
    if _state["tracer"] is None:
        return None
    found = trace.get_current_span()
    return found if found.is_recording() else None


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), or None (tracing off, or no span)."""
    if _state["tracer"] is None:
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None

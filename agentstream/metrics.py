"""What every process's ``GET /metrics`` shares: rendering the Prometheus text format, and the
rules that keep label values bounded.

Each component defines its own metrics (edge/metrics.py, agent_runner/metrics.py,
tool_runner/metrics.py) in prometheus-client's default registry, which also holds the process's
own (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``python_gc_*``, …). The
page is rendered by :func:`render` from a Quart route: the edge's app and the runners' probe
server (agentstream.probe); prometheus-client's own WSGI and ``http.server`` exporters are not
used.

Labels whose values come from outside must stay few (Prometheus keeps one series per label
combination):

- ``tenant``: ``_all`` by default; the tenant's name while this process knows at most
  ``METRICS_MAX_TENANTS`` tenants (the edge: its keys file; runners: the tenant policies in the
  TENANTS bucket) (:class:`TenantLabels`); ``_none`` for a request refused before its caller was
  known. Off by default because the edge's ``/metrics`` needs no key: tenant names there would
  be visible to every tenant;
- ``agent``: the name of an agent of the agent files (``AGENTS_DIR``), ``_api`` for one a tenant
  created over the API, else ``_unknown``; tool names likewise (:func:`bounded`); ``model``: a
  model the agent files or ``LLM_MODEL`` name, else ``_other``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, disable_created_metrics, generate_latest

# No ``*_created`` series next to every counter and histogram: Prometheus does not use them, and
# they would double the page.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of :func:`render`'s page (the Prometheus text exposition format)."""

ALL_TENANTS = "_all"
"""The ``tenant`` label of every tenant when there are too many to label each."""
NO_TENANT = "_none"
"""The ``tenant`` label of a request refused before its caller was known (a wrong key)."""
UNKNOWN = "_unknown"
"""The label of a name that is none of this process's agents (or tools)."""
API_AGENT = "_api"
"""The ``agent`` label of an agent a tenant created over the API (their number has no bound)."""
OTHER_MODEL = "_other"
"""The ``model`` label of a model no agent file nor LLM_MODEL names (an API agent's own)."""

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Histogram buckets (seconds) for runs and model calls: from a cached answer to a long agent run."""
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram buckets (seconds) for tool calls and the time to a run's first token."""


def render() -> bytes:
    """This process's metrics in the Prometheus text format (content type :data:`CONTENT_TYPE`)."""
    return generate_latest(REGISTRY)


def bounded(name: str, known: Collection[str]) -> str:
    """``name`` if it is one of ``known``, else :data:`UNKNOWN`."""
    return name if name in known else UNKNOWN


class TenantLabels:
    """The ``tenant`` label rule of one process: each tenant's own name while at most
    ``max_tenants`` are known (see :meth:`set_known`), else :data:`ALL_TENANTS`. A tenant that is
    not known (none is, before the first :meth:`set_known`) is :data:`ALL_TENANTS` too.
    ``max_tenants`` 0: never a tenant's name."""

    def __init__(self, max_tenants: int = 0):
        self.max_tenants = max_tenants
        self._known: frozenset[str] = frozenset()

    def set_known(self, tenants: Iterable[str]) -> None:
        """The tenants this process serves now (the edge: its keys file's; runners: TENANTS)."""
        self._known = frozenset(tenants)

    @property
    def per_tenant(self) -> bool:
        """True while tenants are labelled by name."""
        return 0 < len(self._known) <= self.max_tenants

    def label(self, tenant: str | None) -> str:
        """The label value for ``tenant`` (None: the caller is not known: :data:`NO_TENANT`)."""
        if tenant is None:
            return NO_TENANT
        return tenant if self.per_tenant and tenant in self._known else ALL_TENANTS

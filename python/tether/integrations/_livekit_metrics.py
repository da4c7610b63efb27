"""tether's metrics in a livekit-agents worker's Prometheus endpoint, next to its ``lk_agents_*``
metrics and labelled like them (``nodename``); see ``livekit.install``.

A worker started with ``prometheus_port`` serves ``/metrics`` from prometheus_client's global registry
(``generate_latest()``, run in an executor thread). This part registers a collector there. At each
scrape it collects tether's instruments through a MeterProvider of its own (the OpenTelemetry SDK,
which livekit-agents depends on) and writes them as Prometheus families named the way the
OpenTelemetry-to-Prometheus conventions name them: dots become underscores, a unit of ``s`` adds
``_seconds``, counters end in ``_total``, ``{...}`` annotations are dropped; ``server.address`` becomes
``server_address``, and every series gets livekit's ``nodename`` label.

tether reports through that provider only while a worker that serves ``/metrics`` runs (``run()`` with a
``prometheus_port``): a worker without the endpoint measures nothing.

Not covered: prometheus_client's multiprocess mode (``prometheus_multiproc_dir`` or
``PROMETHEUS_MULTIPROC_DIR``), in which the worker's endpoint reads only the files its processes write,
never the registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from .. import metrics

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(name: str, unit: str) -> str:
    """``tether.connection.downtime`` in ``s`` -> ``tether_connection_downtime_seconds``."""
    base = _UNSAFE.sub("_", name)
    if unit == "s" and not base.endswith("_seconds"):
        base += "_seconds"
    return base


def label_name(key: str) -> str:
    return _UNSAFE.sub("_", key)


class Bridge:
    """The collector in prometheus_client's registry, and the MeterProvider it reads."""

    def __init__(self, nodename: Callable[[], str], registry: Any) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self._nodename = nodename
        self._registry = registry
        # a pull reader: the SDK collects into it, under its lock, when a scrape asks (no thread of its own)
        self._reader = InMemoryMetricReader()
        self._provider = MeterProvider(metric_readers=[self._reader])
        self._binding: Any = None
        self._runs = 0

    # -- installed / uninstalled with the part ---------------------------------------------------------
    def register(self) -> None:
        self._registry.register(self)

    def unregister(self) -> None:
        self._registry.unregister(self)
        while self._runs:
            self.run_ended()
        self._provider.shutdown()

    # -- a worker that serves /metrics runs --------------------------------------------------------------
    def run_started(self) -> None:
        if self._runs == 0:
            self._binding = metrics._attach(self._provider)
        self._runs += 1

    def run_ended(self) -> None:
        if self._runs == 0:  # uninstalled while the worker ran: already detached
            return
        self._runs -= 1
        if self._runs == 0 and self._binding is not None:
            metrics._detach(self._binding)
            self._binding = None

    # -- prometheus_client's collector protocol ----------------------------------------------------------
    def describe(self) -> list[Any]:
        # nothing to check against the registry's names at registration (and no collection then)
        return []

    def collect(self) -> Iterator[Any]:
        if self._binding is None:
            return
        data = self._reader.get_metrics_data()
        if data is None:
            return
        node = self._nodename()
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name.startswith("tether."):
                        family = _family(m, node)
                        if family is not None:
                            yield family


def _family(m: Any, node: str) -> Any:
    """One OpenTelemetry metric as a prometheus_client family, every series labelled ``nodename``."""
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    points: list[Any] = list(m.data.data_points)
    if not points:
        return None
    name, help_ = prometheus_name(m.name, m.unit or ""), m.description or ""
    keys = sorted({k for p in points for k in p.attributes})
    labels = [label_name(k) for k in keys] + ["nodename"]

    def values(p: Any) -> list[str]:
        return [str(p.attributes.get(k, "")) for k in keys] + [node]

    family: Any
    if isinstance(m.data, Histogram):
        family = HistogramMetricFamily(name, help_, labels=labels)
        for p in points:
            cumulative, buckets = 0, []
            # one count more than bounds: the last bucket is +Inf, which is the count
            for bound, n in zip(p.explicit_bounds, p.bucket_counts, strict=False):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            buckets.append(("+Inf", p.count))
            family.add_metric(values(p), buckets, p.sum)
    elif isinstance(m.data, Sum) and m.data.is_monotonic:
        family = CounterMetricFamily(name, help_, labels=labels)
        for p in points:
            family.add_metric(values(p), p.value)
    elif isinstance(m.data, (Sum, Gauge)):
        family = GaugeMetricFamily(name, help_, labels=labels)
        for p in points:
            family.add_metric(values(p), p.value)
    else:
        return None
    return family


def _bound(b: float) -> str:
    """A bucket's ``le`` as Prometheus writes it (``1.0``, ``0.25``)."""
    return repr(float(b))


def patch(p: Any, server_cls: Any, nodename: Callable[[], str], registry: Any) -> None:
    """Register the collector, and report through it while a server with a ``prometheus_port`` runs."""
    bridge = Bridge(nodename, registry)

    async def run(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        server = args[0]
        if getattr(server, "_prometheus_port", None) is None:
            return await wrapped(*args, **kwargs)
        bridge.run_started()
        try:
            return await wrapped(*args, **kwargs)
        finally:
            bridge.run_ended()

    p.call(bridge.register, bridge.unregister)
    p.wrap(server_cls, "run", run)

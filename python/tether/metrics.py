"""OpenTelemetry metrics of tether's connections, reconnect loops, process pools, watchdogs and
readiness gates (``pip install 'tether[otel]'``)::

    import tether

    tether.metrics.enable()  # the global MeterProvider (set it up first, e.g. with the OpenTelemetry SDK)
    tether.metrics.enable(meter_provider=provider)  # or a provider of your own

Objects created after ``enable()`` are measured; an object created before it is not (where it would
count, it finds it has no metrics and goes on). Every instrument's name starts with ``tether.``; the
README lists them. Counting happens in tether's native core when something happens (a connect, a loss,
a spawn, an alarm), never per message; a reader's collection reads the totals and gauges and hands over
the histogram values recorded since the last one. Nothing of tether's runs between collections.

This module imports nothing from OpenTelemetry until ``enable()`` is called, and importing ``tether``
never imports it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import _native

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

_INSTALL_HINT = "tether.metrics needs the OpenTelemetry API: pip install 'tether[otel]'"


class _Binding:
    """tether's instruments on one MeterProvider, created once (an SDK does not take a second set of
    callbacks for an instrument it has) and switched on and off by ``active``."""

    def __init__(self, key: object, provider: MeterProvider) -> None:
        from opentelemetry.metrics import Observation

        self.key = key
        self.provider = provider
        self.enabled_by_user = False
        self.bridges = 0
        self.histograms: dict[str, Histogram] = {}
        self._observation = Observation
        meter = provider.get_meter("tether", _native.__version__)
        for name, kind, unit, description, _attributes, boundaries in _native._metrics_instruments():
            if kind == "histogram":
                self.histograms[name] = meter.create_histogram(
                    name, unit=unit, description=description, explicit_bucket_boundaries_advisory=boundaries
                )
            elif kind == "counter":
                meter.create_observable_counter(
                    name, callbacks=[self._callback(name)], unit=unit, description=description
                )
            else:
                meter.create_observable_up_down_counter(
                    name, callbacks=[self._callback(name)], unit=unit, description=description
                )

    @property
    def active(self) -> bool:
        return self.enabled_by_user or self.bridges > 0

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not self.active:
                return []
            # the histogram values go first, so this collection includes them (the SDK reads its
            # storage after every callback ran)
            _drain()
            return [self._observation(value, attributes) for attributes, value in _native._metrics_read(name)]

        return observe


_lock = threading.Lock()
_bindings: list[_Binding] = []


def _drain() -> None:
    """Hand the histogram values recorded since the last collection to every active provider."""
    samples = _native._metrics_drain()
    if not samples:
        return
    active = [b for b in _bindings if b.active]
    if len(active) > 1:
        # the global provider may also be enabled by name: the SDK hands both bindings its one histogram
        from opentelemetry import metrics as otel_metrics

        named = {id(b.provider) for b in active if b.key is not _GLOBAL}
        if id(otel_metrics.get_meter_provider()) in named:
            active = [b for b in active if b.key is not _GLOBAL]
    for name, attributes, value in samples:
        for b in active:
            b.histograms[name].record(value, attributes)


# the key of the global provider: get_meter_provider() returns a proxy until the application sets one,
# then the provider itself; the proxy's instruments follow it there, so one binding serves both
_GLOBAL = object()


def _binding(key: object, provider: Callable[[], MeterProvider]) -> _Binding:
    for b in _bindings:
        if b.key is key:
            return b
    b = _Binding(key, provider())
    _bindings.append(b)
    return b


def _refresh() -> None:
    _native._metrics_attach(any(b.active for b in _bindings))


def enable(meter_provider: MeterProvider | None = None) -> None:
    """Report tether's metrics through ``meter_provider`` (default: OpenTelemetry's global provider, also
    when it is set later with ``set_meter_provider``). Idempotent; several providers may be enabled at
    once. Objects created from now on are measured. Raises ``ImportError`` without ``tether[otel]``."""
    try:
        from opentelemetry import metrics as otel_metrics
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    key = _GLOBAL if meter_provider is None else meter_provider
    with _lock:
        _binding(key, lambda: meter_provider or otel_metrics.get_meter_provider()).enabled_by_user = True
        _refresh()


def disable() -> None:
    """Stop reporting through the providers ``enable()`` was given. Objects created from now on are not
    measured; the values of the others are no longer read (their totals go on and are read again, as
    cumulative counters, after another ``enable()``)."""
    with _lock:
        for b in _bindings:
            b.enabled_by_user = False
        _refresh()


def enabled() -> bool:
    """Whether tether's metrics are reported anywhere (through ``enable()`` or an integration)."""
    with _lock:
        return any(b.active for b in _bindings)


def instruments() -> Sequence[tuple[str, str, str, str, Sequence[str]]]:
    """Every instrument: (name, kind, unit, description, attributes); ``kind`` is "counter",
    "updowncounter" (both observable) or "histogram"."""
    return [(n, k, u, d, tuple(a)) for n, k, u, d, a, _b in _native._metrics_instruments()]


def _attach(provider: Any) -> _Binding:
    """For integrations: report through ``provider`` until ``_detach``, independently of ``enable()``."""
    with _lock:
        b = _binding(provider, lambda: provider)
        b.bridges += 1
        _refresh()
        return b


def _detach(binding: _Binding) -> None:
    with _lock:
        binding.bridges = max(0, binding.bridges - 1)
        _refresh()


__all__ = ["disable", "enable", "enabled", "instruments"]

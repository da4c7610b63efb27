"""What a collection of tether's metrics costs: `tether.metrics` counts nothing per message, so its cost is
the reader's collection (OpenTelemetry SDK, here an `InMemoryMetricReader`), paid once per export
interval in the exporter's thread. Measured as process CPU per collection with N connections open (one
series each kind, since they share a name), next to the SDK's floor (a provider with one plain counter).
The message path with metrics on and off is `LIBS=tether,tether-metrics benches/bench_peers.py`.

Run: make bench   (or .venv/bin/python benches/bench_metrics.py; QUICK=1 for 1 and 100 connections)
"""

from __future__ import annotations

import asyncio
import os
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import tether
from tether.testing import SignalServer

QUICK = os.environ.get("QUICK") == "1"
SIZES = (1, 100) if QUICK else (1, 100, 1000)
COLLECTIONS = 50 if QUICK else 200


def cpu_ms_per_collection(collect) -> float:
    collect()  # the first collection creates the SDK's storage
    t0 = time.process_time()
    for _ in range(COLLECTIONS):
        collect()
    return (time.process_time() - t0) / COLLECTIONS * 1000


async def main() -> None:
    floor_reader = InMemoryMetricReader()
    MeterProvider(metric_readers=[floor_reader]).get_meter("floor").create_counter("floor").add(1)
    floor = cpu_ms_per_collection(floor_reader.get_metrics_data)
    reader = InMemoryMetricReader()
    tether.metrics.enable(meter_provider=MeterProvider(metric_readers=[reader]))
    print(f"load average {os.getloadavg()[0]:.2f}; {COLLECTIONS} collections each")
    print(f"  the SDK's floor (one plain counter): {floor:.3f} ms CPU per collection")
    async with SignalServer() as srv:
        conns: list[tether.Connection] = []
        for n in SIZES:
            more = [tether.connect(srv.url, name="bench") for _ in range(n - len(conns))]
            await asyncio.gather(*more)
            conns += more
            got = cpu_ms_per_collection(reader.get_metrics_data)
            print(f"  {n} connection(s) open: {got:.3f} ms CPU per collection of tether's instruments")
        await asyncio.gather(*(c.aclose() for c in conns))
    tether.metrics.disable()


if __name__ == "__main__":
    asyncio.run(main())

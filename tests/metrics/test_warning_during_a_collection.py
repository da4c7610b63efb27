"""The "histogram values are waiting for a collection" WARNING while a metric reader collects from another
thread: it was emitted with the metrics registry locked, and its record goes to Python logging, whose
handler may release the GIL (any I/O); the collecting thread, holding the GIL, waited for the registry, and
the handler for the GIL: the whole process hung. It is now logged after the registry is unlocked.

Here: a Reconnector stepped 10,001 times with no collection in between (what a 60 s export interval sees under
load), a handler doing slow I/O (time.sleep stands for a blocked stream), and a reader collecting at that
moment."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("opentelemetry.sdk.metrics", reason="opentelemetry-sdk is not installed")

CODE = textwrap.dedent(
    """
    import logging, threading, time
    import tether
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    tether.metrics.enable(meter_provider=MeterProvider(metric_readers=[reader]))

    warned = threading.Event()

    class SlowIO(logging.Handler):
        def emit(self, record):
            if "histogram values are waiting" in record.getMessage():
                warned.set()
                time.sleep(0.5)  # a handler doing I/O releases the GIL

    logging.getLogger("tether").addHandler(SlowIO())
    logging.getLogger("tether").setLevel(logging.WARNING)
    tether.sync_log_level()

    def collector():
        warned.wait(60)
        reader.get_metrics_data()  # a periodic reader's collection

    threading.Thread(target=collector, daemon=True).start()
    r = tether.Reconnector(name="review-deadlock", quiet_jitter=0)
    r.connected()
    for _ in range(10_050):
        r.failed(ConnectionResetError("reset"))
        r.connected()
    print("done", flush=True)
    """
)


def test_metrics_overflow_warning_does_not_deadlock_with_a_collection():
    try:
        r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung: the WARNING is logged while the metrics registry lock is held")
    assert r.returncode == 0 and "done" in r.stdout, r.stdout + r.stderr

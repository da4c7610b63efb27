"""tether.metrics through the OpenTelemetry SDK's in-memory reader: real connections (a `websockets`
server, a ChaosProxy black hole), a ProcPool whose spawns fail, a watchdog alarm, a readiness dispatch,
a Reconnector driven step by step. Each test names its objects, so series of other tests (the totals
are process-wide) never mix in."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk.metrics", reason="opentelemetry-sdk is not installed")

import websockets
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

import tether
from support import MS, eventually
from tether import events as ev


class Reader:
    """An SDK MeterProvider with an in-memory reader that tether reports through."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def collect(self) -> dict[str, list[tuple[dict[str, str], object]]]:
        """{instrument: [(attributes, value or HistogramDataPoint)]} of tether's instruments."""
        out: dict[str, list[tuple[dict[str, str], object]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        value = p if isinstance(p, HistogramDataPoint) else p.value
                        out.setdefault(m.name, []).append((dict(p.attributes), value))
        return out

    def value(self, instrument: str, **attrs: str) -> object:
        """The one point of `instrument` whose attributes include `attrs` (None if there is none)."""
        found = [v for a, v in self.collect().get(instrument, []) if attrs.items() <= a.items()]
        assert len(found) <= 1, found
        return found[0] if found else None


@pytest.fixture
def otel():
    r = Reader()
    tether.metrics.enable(meter_provider=r.provider)
    yield r
    tether.metrics.disable()
    r.provider.shutdown()


async def next_event(stream, kind, timeout=10.0):
    while True:
        e = await asyncio.wait_for(stream.__anext__(), timeout)
        if isinstance(e, kind):
            return e


def test_importing_tether_imports_no_opentelemetry():
    code = (
        "import sys, tether, tether.metrics\n"
        "tether.Watchdog('w'); tether.ReadinessGate(); tether.connect('ws://127.0.0.1:9/')\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "assert not tether.metrics.enabled()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_enable_without_the_api_says_what_to_install():
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import tether\n"
        "try:\n"
        "    tether.metrics.enable()\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'tether[otel]'\" in str(e), e\n"
        "else:\n"
        "    raise SystemExit('enable() did not raise')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# for the tests run in a process of their own (a global provider is set once per process): {instrument: value,
# or a histogram's count} of the series named `name`
POINTS_OF = """
def points_of(reader, name):
    found = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    if p.attributes.get("name") == name:
                        found[m.name] = p.value if hasattr(p, "value") else p.count
    return found
"""


def test_the_global_provider_set_after_enable_is_used_once():
    code = """
import time
import tether
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
tether.metrics.enable()  # before the application set its provider
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
tether.metrics.enable()  # and again after: one binding, so nothing is recorded twice
wd = tether.Watchdog("global-test")
wd.liveness("k", 0.01)
r = tether.Reconnector(name="global-test", quiet_jitter=0)
r.connected()
r.failed(ConnectionResetError("reset"))
r.connected()
time.sleep(0.3)
found = points_of(reader, "global-test")
assert found.get("tether.watchdog.alarms") == 1, found
assert found.get("tether.connection.downtime") == 1, found
assert found.get("tether.connection.connects") == 2, found
"""
    subprocess.run([sys.executable, "-c", POINTS_OF + code], check=True, timeout=60)


def test_the_global_provider_also_enabled_by_name_records_once():
    """``enable()`` and ``enable(meter_provider=p)``, ``p`` being the global provider. Before, each
    histogram value was recorded twice (one downtime counted two) while the counters counted once."""
    code = """
import tether
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
reader = InMemoryMetricReader()
provider = MeterProvider(metric_readers=[reader])
metrics.set_meter_provider(provider)
tether.metrics.enable()
tether.metrics.enable(meter_provider=provider)
r = tether.Reconnector(name="dup-test", quiet_jitter=0)
r.connected()
r.failed(ConnectionResetError("reset"))
r.connected()
found = points_of(reader, "dup-test")
assert found.get("tether.connection.losses") == 1, found
assert found.get("tether.connection.downtime") == 1, found
"""
    subprocess.run([sys.executable, "-c", POINTS_OF + code], check=True, timeout=60)


class ClientConnectionError(Exception):
    """aiohttp's base of client errors."""


class ClientConnectionResetError(ClientConnectionError, ConnectionResetError):
    """As aiohttp defines it."""


class ServerTimeoutError(ClientConnectionError, TimeoutError):
    """As aiohttp defines it."""


def test_a_loss_reason_follows_the_builtin_class_an_exception_derives_from(otel):
    """Frameworks raise subclasses (aiohttp's ClientConnectionResetError, ServerTimeoutError). Before,
    the reason came from the type's name: both were counted as ``error``."""
    r = tether.Reconnector(name="subclass-test", quiet_jitter=0)
    r.connected()
    r.failed(ClientConnectionResetError("Cannot write to closing transport"))
    r.connected()
    r.failed(ServerTimeoutError("Timeout on reading data from socket"))
    reasons = {a["reason"]: v for a, v in otel.collect()["tether.connection.losses"] if a["name"] == "subclass-test"}
    assert reasons == {"reset": 1, "timeout": 1}


async def test_an_unnamed_connection_is_measured_as_connection(otel):
    """README: ``name`` is ``connection`` for a ``tether.connect`` without ``name=``. Before, it was
    empty (an empty label, which Prometheus treats as none)."""

    async def handler(ws):
        await ws.wait_closed()

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        async with tether.connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/path?token=t"):
            assert otel.value("tether.connection.connects", name="connection") == 1
            names = {a["name"] for a, _ in otel.collect()["tether.connection.connects"]}
            assert "" not in names and not any("token" in n or "127.0.0.1" in n for n in names), names


async def test_a_drop_and_a_reconnect_against_a_websockets_server(otel):
    peers = []

    async def echo(ws):
        peers.append(ws)
        async for m in ws:
            await ws.send(m)

    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://user:pw@127.0.0.1:{port}/rtc?access_token=SECRET"
        async with tether.connect(url, name="drop-test", quiet_jitter=0) as conn:
            events = conn.events()
            await conn.send("a")
            assert await conn.recv() == "a"
            await peers[0].close(1012, "restart")
            await next_event(events, ev.Reconnected)
            await conn.send("b")
            assert await conn.recv() == "b"

            name = {"name": "drop-test", "server.address": "127.0.0.1"}
            assert otel.value("tether.connection.connects", **name) == 2
            assert otel.value("tether.connection.losses", **name, reason="close_frame") == 1
            assert otel.value("tether.connection.retries", **name, strategy="resume") == 1
            assert otel.value("tether.connection.give_ups", **name) is None
            downtime = otel.value("tether.connection.downtime", **name)
            assert downtime.count == 1 and 0 <= downtime.sum < 5, downtime
            assert otel.value("tether.connection.handshake.duration", **name).count == 2
            assert otel.value("tether.connection.count", **name, state="connected") == 1
            assert otel.value("tether.connection.count", **name, state="reconnecting") == 0
            assert otel.value("tether.connection.sends.unconfirmed", **name) == 0
            everything = repr(otel.collect())
            assert "SECRET" not in everything and "pw" not in everything and "/rtc" not in everything
        # the last collection before the end: closed
        assert otel.value("tether.connection.count", **name, state="closed") == 1


async def test_many_connections_flapping_at_once_add_up_in_their_series(otel):
    peers = set()

    async def echo(ws):
        peers.add(ws)
        try:
            async for m in ws:
                await ws.send(m)
        except websockets.ConnectionClosed:
            pass
        finally:
            peers.discard(ws)

    n, drops = 30, 3
    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        conns = [tether.connect(url, name="many-test", quiet_jitter=0.2) for _ in range(n)]
        await asyncio.gather(*conns)
        for _ in range(drops):
            streams = [c.events() for c in conns]
            for ws in list(peers):
                ws.transport.abort()  # the server dies: no close frame
            await asyncio.gather(*(next_event(s, ev.Reconnected, timeout=30) for s in streams))
        name = {"name": "many-test", "server.address": "127.0.0.1"}
        assert otel.value("tether.connection.connects", **name) == n * (drops + 1)
        losses = [v for a, v in otel.collect()["tether.connection.losses"] if a["name"] == "many-test"]
        assert sum(losses) == n * drops, losses
        assert otel.value("tether.connection.count", **name, state="connected") == n
        assert otel.value("tether.connection.downtime", **name).count == n * drops
        await asyncio.gather(*(c.aclose() for c in conns))
    assert otel.value("tether.connection.count", **name, state="closed") == n


async def test_a_black_hole_is_counted_with_its_detection_time(otel, chaos_proxy, signal_server):
    p = await chaos_proxy(("127.0.0.1", signal_server.port))
    interval, timeout = 0.2, 0.3
    c = await tether.connect(
        p.url(),
        name="blackhole-test",
        ping_interval=interval,
        ping_timeout=timeout,
        open_timeout=1,
        policy=tether.Backoff(0.05, max_delay=0.2, jitter="none"),
    )
    evs = c.events()
    await c.send("before")
    await c.flush()
    p.blackhole()
    await next_event(evs, ev.ConnectionLost)
    await asyncio.sleep(300 * MS)  # the outage lasts at least this long
    p.heal()
    await next_event(evs, ev.Reconnected)
    await c.aclose()
    detection = otel.value("tether.connection.detection.duration", name="blackhole-test", reason="ping_timeout")
    # from the last pong to the deadline: at least ping_timeout, at most about interval + timeout (the
    # bound here is generous for a busy box; benches/bench_ws.py measures it)
    assert detection.count == 1, detection
    assert timeout * 0.95 <= detection.sum <= interval + timeout + 2.0, detection.sum
    assert otel.value("tether.connection.losses", name="blackhole-test", reason="ping_timeout") == 1
    downtime = otel.value("tether.connection.downtime", name="blackhole-test")
    assert downtime.count == 1 and downtime.sum >= 0.3, downtime


async def test_sends_unconfirmed_at_a_loss_are_counted_as_resent(otel, chaos_proxy, signal_server):
    p = await chaos_proxy(("127.0.0.1", signal_server.port))
    c = await tether.connect(p.url(), name="resend-test", ping_interval=30, ping_timeout=30, quiet_jitter=0)
    evs = c.events()
    p.blackhole("down")  # the server reads; its echoes and pongs are held back
    for i in range(3):
        await c.send(f"m{i}")
    await eventually(
        lambda: otel.value("tether.connection.sends.unconfirmed", name="resend-test") == 3, what="3 sends unconfirmed"
    )
    # "unconfirmed" counts a send still queued too, and only what was written is re-sent: the server has read
    # all three before the reset (a third still queued made it 2 re-sent, once, on uvloop)
    assert await signal_server.wait_for(3, timeout=10, key="messages_in")
    p.reset()
    # healed once the loss is seen: what the black hole held would confirm them otherwise
    await next_event(evs, ev.ConnectionLost)
    p.heal()
    await next_event(evs, ev.Reconnected)
    await asyncio.wait_for(c.flush(), 10)
    await c.aclose()
    # one loss. Its reason is mostly "reset", but not always: the kernel reports the proxy's RST to one
    # call on the socket only, after which a read sees an EOF and a write a broken pipe (1-3 runs in 20,
    # with the transport reading as with tether's reader)
    losses = [
        (a["reason"], v) for a, v in otel.collect().get("tether.connection.losses", []) if a["name"] == "resend-test"
    ]
    assert len(losses) == 1 and losses[0][1] == 1 and losses[0][0] in ("reset", "eof", "io_error"), losses
    assert otel.value("tether.connection.sends.resent", name="resend-test") == 3
    assert otel.value("tether.connection.sends.unconfirmed", name="resend-test") == 0


async def test_a_pool_whose_spawns_fail(otel):
    spawned = []

    async def spawn():
        spawned.append(time.monotonic())
        if len(spawned) <= 2:
            raise RuntimeError("model file not found")
        return Proc()

    class Proc:
        def is_alive(self) -> bool:
            return True

        def kill(self) -> None:
            pass

        async def wait(self) -> int:
            return 0

    fast = tether.Backoff(0.01, max_delay=0.02, jitter="none")
    pool = tether.ProcPool(spawn=spawn, num_idle=0, respawn=fast, acquire_attempts=3, name="pool-test")
    proc = await pool.acquire(timeout=10)
    assert otel.value("tether.pool.spawn_failures", name="pool-test") == 2
    assert otel.value("tether.pool.spawns", name="pool-test") == 1
    assert otel.value("tether.pool.processes", name="pool-test", state="in_use") == 1
    assert otel.value("tether.pool.healthy", name="pool-test") == 1
    pool.release(proc)
    await pool.aclose()
    acquired = otel.value("tether.pool.acquire.duration", name="pool-test", outcome="acquired")
    assert acquired.count == 1, acquired

    async def always_fails():
        raise RuntimeError("model file not found")

    broken = tether.ProcPool(spawn=always_fails, num_idle=0, respawn=fast, name="broken-pool-test")
    with pytest.raises(tether.PoolExhausted):
        await broken.acquire(timeout=10)
    assert otel.value("tether.pool.healthy", name="broken-pool-test") == 0
    assert otel.value("tether.pool.spawn_failures", name="broken-pool-test") >= 2
    assert otel.value("tether.pool.acquire.duration", name="broken-pool-test", outcome="exhausted").count == 1
    await broken.aclose()


async def test_a_watchdog_alarm_is_counted_by_kind(otel):
    wd = tether.Watchdog("wd-test")
    wd.liveness("audio", 0.05)
    alarms = wd.__aiter__()
    alarm = await asyncio.wait_for(alarms.__anext__(), 10)
    assert alarm.kind == "liveness"
    assert otel.value("tether.watchdog.alarms", name="wd-test", kind="liveness") == 1
    assert otel.value("tether.watchdog.alarms", name="wd-test", kind="dwell") is None


async def test_a_readiness_dispatch_records_each_stage(otel):
    gate = tether.ReadinessGate(name="gate-test")
    agents = []

    async def dispatch(job_id: str, attempt: int) -> None:
        async def agent() -> None:
            await asyncio.sleep(50 * MS)
            gate.mark(job_id, "joined")
            await asyncio.sleep(50 * MS)
            gate.mark(job_id, "ready")

        agents.append(asyncio.ensure_future(agent()))

    timings = await gate.dispatch("j1", dispatch)
    assert list(timings) == ["dispatched", "joined", "ready"]
    for stage in ("dispatched", "joined", "ready"):
        point = otel.value("tether.readiness.stage.duration", name="gate-test", stage=stage)
        assert point.count == 1, (stage, point)
    joined = otel.value("tether.readiness.stage.duration", name="gate-test", stage="joined")
    assert joined.sum >= 0.04, joined.sum


async def test_a_reconnector_stepped_by_a_framework_loop(otel):
    r = tether.Reconnector(tether.Backoff(0.01, jitter="none", max_attempts=1), quiet_jitter=0, name="step-test")
    assert otel.value("tether.connection.count", name="step-test", state="idle") == 1
    r.connected()
    assert otel.value("tether.connection.count", name="step-test", state="connected") == 1
    r.failed(ConnectionResetError("reset by peer"))
    assert otel.value("tether.connection.count", name="step-test", state="reconnecting") == 1
    assert otel.value("tether.connection.losses", name="step-test", reason="reset") == 1
    assert otel.value("tether.connection.retries", name="step-test", strategy="reconnect") == 1
    with pytest.raises(tether.GaveUp):
        r.failed(TimeoutError("still down"))
    assert otel.value("tether.connection.give_ups", name="step-test") == 1
    assert otel.value("tether.connection.count", name="step-test", state="failed") == 1


async def test_objects_made_before_enable_are_not_measured_and_disable_stops_reporting():
    before = tether.Watchdog("before-enable-test")
    before.liveness("k", 0.02)
    r = Reader()
    tether.metrics.enable(meter_provider=r.provider)
    try:
        assert tether.metrics.enabled()
        await asyncio.wait_for(before.__aiter__().__anext__(), 10)
        assert r.value("tether.watchdog.alarms", name="before-enable-test") is None
        after = tether.Watchdog("after-enable-test")
        after.liveness("k", 0.02)
        await asyncio.wait_for(after.__aiter__().__anext__(), 10)
        assert r.value("tether.watchdog.alarms", name="after-enable-test", kind="liveness") == 1
    finally:
        tether.metrics.disable()
    assert not tether.metrics.enabled()
    assert not [k for k in r.collect() if k.startswith("tether.")]
    # enabled again on the same provider: the same instruments read on, cumulative
    tether.metrics.enable(meter_provider=r.provider)
    try:
        assert r.value("tether.watchdog.alarms", name="after-enable-test", kind="liveness") == 1
    finally:
        tether.metrics.disable()
        r.provider.shutdown()


def test_the_readme_lists_every_instrument():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        m = re.match(r"\| `(tether\.[a-z_.]+)` \| ([a-z -]+) \| `([^`]+)` \| ([^|]+) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), re.findall(r"`([^`]+)`", m.group(4)))
    kinds = {"counter": "counter", "updowncounter": "up-down counter", "histogram": "histogram"}
    expected = {name: (kinds[kind], unit, list(attrs)) for name, kind, unit, _d, attrs in tether.metrics.instruments()}
    assert rows == expected

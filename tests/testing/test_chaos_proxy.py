"""ChaosProxy: each toxic does what it says, with real sockets. Uses the pytest plugin's fixtures."""

import asyncio
import subprocess
import sys
import time

import pytest

import tether
from support import MS, eventually
from tether import events as ev
from tether.testing import ChaosProxy


@pytest.fixture
async def echo():
    async def handle(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


async def open_(proxy):
    return await asyncio.open_connection(proxy.host, proxy.port)


async def roundtrip(reader, writer, data, timeout=5.0):
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def test_forwards(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    r, w = await open_(p)
    assert await roundtrip(r, w, b"hello") == b"hello"
    assert p.stats()["bytes_up"] == 5 and p.stats()["active"] == 1
    w.close()


async def test_blackhole_is_silent_no_fin_no_rst_and_heal_delivers(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    r, w = await open_(p)
    assert await roundtrip(r, w, b"a") == b"a"
    p.blackhole()
    w.write(b"during")
    await w.drain()
    with pytest.raises(asyncio.TimeoutError):  # neither EOF nor ConnectionResetError: silence
        await asyncio.wait_for(r.read(1), 0.5)
    assert not r.at_eof()
    p.heal()
    assert await asyncio.wait_for(r.readexactly(6), 5) == b"during"
    w.close()


async def test_blackhole_swallows_new_connections_until_heal(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    p.blackhole()
    r, w = await open_(p)  # the kernel accepts...
    w.write(b"x")
    with pytest.raises(asyncio.TimeoutError):  # ...but nothing gets through
        await asyncio.wait_for(r.read(1), 0.3)
    p.heal()
    assert await asyncio.wait_for(r.readexactly(1), 5) == b"x"
    w.close()


async def test_connections_given_up_during_a_blackhole_never_reach_upstream(chaos_proxy, signal_server):
    """A connection accepted during a black hole whose client closed or reset it before heal() is not
    connected upstream; one still open is, with what it wrote. Before, heal() connected the abandoned ones
    too and replayed their upgrade requests to the server, as handshakes no client was waiting for."""
    p = await chaos_proxy(("127.0.0.1", signal_server.port))
    p.blackhole()
    upgrade = (
        b"GET /?token=abandoned HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for _ in range(3):
        _, w = await open_(p)
        w.write(upgrade)
        await w.drain()
        w.close()  # the client's open timeout ran out
        await w.wait_closed()
    r, w = await open_(p)  # still waiting
    w.write(upgrade.replace(b"abandoned", b"waiting"))
    await eventually(lambda: p.stats()["accepted"] == 4, what="every connection accepted")
    await asyncio.sleep(0.3)
    p.heal()
    assert b" 101 " in await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    await asyncio.sleep(0.3)
    assert signal_server.requests() == ["/?token=waiting"]
    assert signal_server.stats()["tcp_accepts"] == 1
    w.close()


async def test_one_direction_blackhole(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    r, w = await open_(p)
    p.blackhole("down")
    w.write(b"up-ok")
    await w.drain()
    await eventually(lambda: p.stats()["bytes_up"] == 5, what="the bytes reaching upstream")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(r.read(1), 0.3)
    p.heal()
    assert await asyncio.wait_for(r.readexactly(5), 5) == b"up-ok"
    w.close()


async def test_reset_is_seen_as_rst(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    r, w = await open_(p)
    assert await roundtrip(r, w, b"a") == b"a"
    assert p.reset() == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(1), 5)
    w.close()


async def test_close_is_seen_as_eof(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    r, w = await open_(p)
    assert await roundtrip(r, w, b"a") == b"a"
    assert p.close() == 1
    assert await asyncio.wait_for(r.read(1), 5) == b""
    w.close()


async def test_latency_adds_delay(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    r, w = await open_(p)
    await roundtrip(r, w, b"warm")
    p.latency(150, "down")
    t0 = time.monotonic()
    await roundtrip(r, w, b"ping")
    assert time.monotonic() - t0 >= 0.15
    w.close()


async def test_latency_delays_without_capping_throughput(chaos_proxy):
    """16 MiB through latency(500) take about 500 ms more than without it. Before, the pump held 64 reads
    at most in flight, which capped a direction at 1 MiB per latency period: the 16 MiB took 8 s."""

    async def count(r, w):
        n = 0
        while d := await r.read(1 << 20):
            n += len(d)
        w.write(str(n).encode())
        await w.drain()
        w.close()

    sink = await asyncio.start_server(count, "127.0.0.1", 0)
    async with sink:
        p = await chaos_proxy(("127.0.0.1", sink.sockets[0].getsockname()[1]))
        p.latency(500, "up")
        r, w = await open_(p)
        t0 = time.monotonic()
        w.write(b"x" * (16 << 20))
        await w.drain()
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 60) == str(16 << 20).encode()
        took = time.monotonic() - t0
        w.close()
    assert 0.5 <= took < 3.0, f"16 MiB through latency(500) took {took:.1f} s"


async def test_bandwidth_caps_throughput(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    r, w = await open_(p)
    p.bandwidth(50_000, "down")
    data = b"x" * 25_000
    t0 = time.monotonic()
    await roundtrip(r, w, data, timeout=20)
    took = time.monotonic() - t0
    assert took >= 0.3, took  # 25 kB at 50 kB/s is ~0.5 s; generous lower bound
    p.bandwidth(None)
    w.close()


async def test_many_connections(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    conns = [await open_(p) for _ in range(50)]
    got = await asyncio.gather(*(roundtrip(r, w, f"c{i}".encode()) for i, (r, w) in enumerate(conns)))
    assert got == [f"c{i}".encode() for i in range(50)]
    assert p.reset() == 50
    for _, w in conns:
        w.close()


async def test_upstream_down_resets_client(chaos_proxy):
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    p = await chaos_proxy(("127.0.0.1", port))
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        # the reset may land while connecting or on the first read
        r, _w = await open_(p)
        await asyncio.wait_for(r.readexactly(1), 5)
    await eventually(lambda: p.stats()["upstream_failures"] == 1, what="the upstream failure counted")


async def test_tether_connect_detects_a_real_blackhole_and_recovers(chaos_proxy, signal_server):
    p = await chaos_proxy(("127.0.0.1", signal_server.port))
    c = await tether.connect(
        p.url(),
        ping_interval=0.2,
        ping_timeout=0.3,
        open_timeout=1,
        policy=tether.Backoff(0.05, max_delay=0.2, jitter="none"),
    )
    evs = c.events()
    p.blackhole()
    t0 = time.monotonic()
    while not isinstance(e := await asyncio.wait_for(evs.__anext__(), 10), ev.ConnectionLost):
        pass
    assert "ping timeout" in e.reason
    assert time.monotonic() - t0 < 0.5 + 2.0
    await asyncio.sleep(300 * MS)  # reconnect attempts time out inside the black hole
    p.heal()
    while not isinstance(await asyncio.wait_for(evs.__anext__(), 10), ev.Reconnected):
        pass
    await c.send("after")
    assert await c.recv() == "after"
    await c.aclose()


async def test_aclose_bounded_through_blackhole(chaos_proxy, signal_server):
    p = await chaos_proxy(("127.0.0.1", signal_server.port))
    c = await tether.connect(p.url(), ping_interval=30, ping_timeout=30, close_timeout=0.5)
    p.blackhole()
    t0 = time.monotonic()
    await c.aclose()
    assert time.monotonic() - t0 < 3.0


@pytest.mark.parametrize(
    "args,exc",
    [
        (("nohostport",), ValueError),
        (("h:99999",), ValueError),
        ((":80",), ValueError),
        ((42,), TypeError),
        ((("h", "p"),), TypeError),
    ],
)
def test_bad_upstream(args, exc):
    with pytest.raises(exc):
        ChaosProxy(*args)


async def test_bad_toxic_args(chaos_proxy, echo):
    p = await chaos_proxy(echo)
    with pytest.raises(ValueError):
        p.latency(-5)
    with pytest.raises(ValueError):
        p.bandwidth(0)
    with pytest.raises(ValueError):
        p.blackhole("sideways")
    with pytest.raises(RuntimeError):
        ChaosProxy(echo).blackhole()  # not started


async def test_proxy_cli_control_port(echo):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether",
        "proxy",
        "--upstream",
        echo,
        "--control",
        "127.0.0.1:0",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        listen = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "listening on" in listen
        await proc.stdout.readline()  # help line
        control = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        host, port = control.rsplit(" ", 1)[1].strip().rsplit(":", 1)
        data_port = int(listen.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1])
        cr, cw = await asyncio.open_connection(host, int(port))
        r, w = await asyncio.open_connection("127.0.0.1", data_port)
        assert await roundtrip(r, w, b"via cli") == b"via cli"
        cw.write(b"blackhole\n")
        assert (await asyncio.wait_for(cr.readline(), 5)).startswith(b"ok")
        w.write(b"x")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(r.read(1), 0.3)
        cw.write(b"heal\nstats\nquit\n")
        assert (await asyncio.wait_for(cr.readline(), 5)).startswith(b"ok")
        assert b"accepted=1" in await asyncio.wait_for(cr.readline(), 5)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        w.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

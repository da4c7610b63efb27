"""A connection reads its socket itself: the loop runs tether's reader when the socket is readable (a
watch on a duplicate of the transport's descriptor, the transport's own reading paused), not asyncio's
`_read_ready`. The duplicate keeps the TCP connection open while it exists, so every way a link ends
must close it: a close, a drop by the server, a close frame, a connection let go without a close, a loop
closed under it; and reading must stop and start again with the application's inbound buffer."""

import asyncio
import gc
import os
import subprocess
import sys
import time

import pytest
import websockets

import tether
from support import FAST, MS, collect, drop, eventually, first_of, other_cpythons_or_skip, policy
from tether import events as ev
from tether.testing import SignalServer

needs_unix = pytest.mark.skipif(sys.platform == "win32", reason="the reader watches a POSIX descriptor")

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="counts descriptors in /proc")

CHUNK = 64 * 1024


def tcp_rows() -> list[list[str]]:
    """The kernel's TCP sockets (`/proc/net/tcp` and `tcp6`), one row of fields each."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            with open(table) as f:
                rows += [line.split() for line in list(f)[1:]]
    return rows


def fds_of(inodes: set[str]) -> dict[int, str]:
    """This process's descriptors of the sockets `inodes`, with the inode each refers to."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            found[int(fd)] = link[8:-1]
    return found


def tcp_fds() -> set[int]:
    """This process's descriptors of TCP sockets (a duplicate counts as one more)."""
    return set(fds_of({row[9] for row in tcp_rows()}))


def client_sockets(port: int) -> dict[str, int]:
    """This process's descriptors of each established TCP socket connected to `port` on loopback, by
    socket inode: a connection that reads its socket itself holds two (the transport's and the
    duplicate its reader watches)."""
    inodes = {row[9] for row in tcp_rows() if int(row[2].rsplit(":", 1)[1], 16) == port and row[3] == "01"}
    found: dict[str, int] = {}
    for inode in fds_of(inodes).values():
        found[inode] = found.get(inode, 0) + 1
    return found


def transports_reading(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Descriptors the transports of tether's connections still read themselves."""
    return [
        key.fd
        for key in loop._selector.get_map().values()  # type: ignore[attr-defined]
        if key.data[0] is not None
        and type(getattr(getattr(key.data[0]._callback, "__self__", None), "_protocol", None)).__name__ == "Wire"
    ]


def tether_readers(loop: asyncio.AbstractEventLoop) -> set[int]:
    """Descriptors asyncio's selector watches for reading with a tether callable, but the timer set's."""
    return {
        key.fd
        for key in loop._selector.get_map().values()  # type: ignore[attr-defined]
        if key.data[0] is not None
        and type(key.data[0]._callback).__module__.startswith("tether")
        and not is_timerfd(key.fd)
    }


def is_timerfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[timerfd]"
    except OSError:
        return False


async def echoed(c, m: str) -> None:
    """Send `m` and read until its echo: unconfirmed messages are sent again after a reconnect, so
    their echoes may come first."""
    await c.send(m)
    while (got := await asyncio.wait_for(c.recv(), 10)) != m:
        assert got < m, (got, m)


def port_of(srv) -> int:
    return srv.sockets[0].getsockname()[1]


@needs_unix
@pytest.mark.asyncio_loop_only("finds the reader among its selector's watches (test_on_uvloop reads on uvloop)")
async def test_the_loop_runs_tethers_reader_for_each_connection(signal_server):
    loop = asyncio.get_running_loop()
    signal_server.echo(True)
    base = tether_readers(loop)
    conns = [await tether.connect(signal_server.url, **FAST) for _ in range(3)]
    for i, c in enumerate(conns):
        await c.send(f"m{i}")
        assert await asyncio.wait_for(c.recv(), 5) == f"m{i}"
    assert len(tether_readers(loop) - base) == 3
    assert transports_reading(loop) == []  # each transport's own reading is paused
    assert sorted(client_sockets(signal_server.port).values()) == [2, 2, 2]
    for c in conns:
        await c.aclose()
    assert tether_readers(loop) == base
    await eventually(lambda: not client_sockets(signal_server.port), what="the sockets closed")


@needs_unix
@needs_proc
async def test_a_link_lost_to_a_silent_server_closes_its_socket(signal_server):
    """The server stops answering and never closes: the ping timeout ends the link, and its socket is
    closed then, duplicate included, though nothing more will ever be read from it."""
    signal_server.echo(True)
    got: list = []
    async with tether.connect(signal_server.url, policy=policy(), **FAST) as c:
        watcher = asyncio.ensure_future(collect(c.events(), got))
        await echoed(c, "a")
        ((inode, n),) = client_sockets(signal_server.port).items()
        assert n == 2
        signal_server.freeze()
        await eventually(lambda: first_of(got, ev.ConnectionLost), what="ConnectionLost")
        await eventually(lambda: inode not in client_sockets(signal_server.port), what="the lost link's socket closed")
        signal_server.unfreeze()
    await asyncio.wait_for(watcher, 5)


@needs_unix
@needs_proc
async def test_every_way_a_link_ends_leaves_no_descriptor():
    """A drop (EOF or reset), a close frame from the server, the client's close: each link's duplicate
    goes with it. Counted once the server is gone too, so only a descriptor tether kept can remain."""
    before = tcp_fds()
    async with SignalServer("127.0.0.1", 0) as srv:
        srv.echo(True)
        for _ in range(3):
            c = await tether.connect(srv.url, **FAST)
            await echoed(c, "a")
            await drop(srv)
            await echoed(c, "b")  # queued, delivered on the next link
            await srv.wait_for(1)
            assert srv.close(1001, "going away") == 1
            await echoed(c, "c")
            await c.aclose()
    gc.collect()
    await eventually(lambda: tcp_fds() <= before, what=f"TCP descriptors back to {sorted(before)}: {sorted(tcp_fds())}")


async def let_go_without_close_ends_the_tcp_connection() -> None:
    ended = asyncio.Event()

    async def handler(ws):
        try:
            async for m in ws:
                await ws.send(m)
        except websockets.ConnectionClosed:
            pass
        ended.set()

    async with websockets.serve(handler, "127.0.0.1", 0) as srv:
        c = await tether.connect(f"ws://127.0.0.1:{port_of(srv)}/", **FAST)
        await c.send("x")
        assert await asyncio.wait_for(c.recv(), 5) == "x"
        del c
        gc.collect()
        # the server sees the end: no duplicate descriptor keeps the socket open
        await asyncio.wait_for(ended.wait(), 10)


@needs_unix
async def test_a_connection_let_go_without_close_ends_its_tcp_connection():
    await let_go_without_close_ends_the_tcp_connection()


async def reading_stopped(c: tether.Connection, within: float = 10) -> None:
    """Until nothing more is read for 300 ms; fails if reading goes on for `within` seconds."""
    last, give_up = -1, time.monotonic() + within
    while (now := c.stats()["bytes_in"]) != last:
        assert time.monotonic() < give_up, f"still reading after {within}s: {c.stats()}"
        last = now
        await asyncio.sleep(300 * MS)


@needs_unix
@pytest.mark.asyncio_loop_only(
    "finds the reader among its selector's watches (test_on_uvloop fills the buffer on uvloop)"
)
async def test_reading_stops_while_the_inbound_buffer_is_full_and_starts_again_as_it_drains():
    """More than the inbound buffer's 64 MiB, sent at once: tether stops watching the socket, then
    watches it again once the application took half, and every message arrives, in order."""
    # beyond the buffer, more than the kernel's socket buffers hold (up to 32 MiB + 4 MiB here); sent
    # uncompressed, as compression would shrink them to almost nothing on the wire
    n = (64 << 20) // CHUNK + (96 << 20) // CHUNK
    server: list = []

    async def burst(ws):
        server.append(ws)
        await ws.recv()
        for i in range(n):
            await ws.send(i.to_bytes(4, "big") + b"z" * (CHUNK - 4))
        await ws.wait_closed()

    loop = asyncio.get_running_loop()
    base = tether_readers(loop)
    async with websockets.serve(burst, "127.0.0.1", 0, compression=None) as srv:
        async with tether.connect(f"ws://127.0.0.1:{port_of(srv)}/", **FAST) as c:
            mine = tether_readers(loop) - base
            assert len(mine) == 1
            await c.send("go")
            await eventually(lambda: c.stats()["recv_queue"] >= (64 << 20) // CHUNK, what="a full buffer")
            assert not mine & tether_readers(loop)
            await reading_stopped(c)
            assert server[0].transport.get_write_buffer_size() > 0  # though the server has bytes to write
            # all of them, in order: reading starts again each time the application took half
            for i in range(n):
                m = await asyncio.wait_for(c.recv(), 10)
                assert int.from_bytes(m[:4], "big") == i
            assert mine <= tether_readers(loop)
            assert c.state == "connected"


@needs_proc
def test_on_uvloop():
    """uvloop refuses `add_reader` on a descriptor its transport owns, as asyncio does; the duplicate
    is watched there too, and goes with the connection. uvloop starts the transport's reading after
    `connection_made` although it was paused there: paused again, a full inbound buffer stops all
    reading (64 MiB here, then a flood of 100 MiB; before, the transport read on and the buffer grew
    to the whole flood)."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        before = tcp_fds()
        async with SignalServer("127.0.0.1", 0) as srv:
            srv.echo(True)
            async with tether.connect(srv.url, **FAST) as c:
                await echoed(c, "m")
                assert list(client_sockets(srv.port).values()) == [2]  # the reader's duplicate
                for i in range(100):
                    await echoed(c, f"m{i:03}")
                await drop(srv)
                await echoed(c, "n")
            async with tether.connect(srv.url, **FAST) as c:
                await the_inbound_buffer_stays_bounded(srv, c)
        await let_go_without_close_ends_the_tcp_connection()
        gc.collect()
        await eventually(lambda: tcp_fds() <= before, what=f"TCP descriptors back to {sorted(before)}")

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()


async def the_inbound_buffer_stays_bounded(srv: SignalServer, c: tether.Connection, n: int = 1600) -> None:
    """A flood of n × 64 KiB stops at the inbound buffer's 64 MiB while nothing reads, then arrives whole."""
    srv.flood(n, CHUNK)
    full = (64 << 20) // CHUNK
    await eventually(lambda: c.stats()["recv_queue"] >= full, 30, what=f"{full} messages buffered")
    await reading_stopped(c)
    assert c.stats()["recv_queue"] <= full + 1, c.stats()
    for _ in range(n):
        assert len(await asyncio.wait_for(c.recv(), 10)) == CHUNK
    assert c.state == "connected"


EVERY_CPYTHON = """
import asyncio, sys
import tether
from tether.testing import SignalServer


def reading(loop):
    # (tether readers, transports reading) among the selector's watches
    mine, transports = 0, 0
    for key in loop._selector.get_map().values():
        h = key.data[0]
        if h is None:
            continue
        mine += type(h._callback).__name__ == "Reader"
        transports += type(getattr(getattr(h._callback, "__self__", None), "_protocol", None)).__name__ == "Wire"
    return mine, transports


async def main():
    loop = asyncio.get_running_loop()
    async with SignalServer("127.0.0.1", 0) as srv:
        srv.echo(True)
        async with tether.connect(srv.url, ping_interval=0.2, ping_timeout=0.5) as c:
            await c.send("x")
            assert await c.recv() == "x"
            assert reading(loop) == (1, 0), reading(loop)
            srv.flood(N, 65536)
            last = -1
            while c.stats()["bytes_in"] != last:
                last = c.stats()["bytes_in"]
                await asyncio.sleep(0.3)
            # the inbound buffer is full: nothing reads the socket any more
            assert reading(loop) == (0, 0), reading(loop)
            assert c.stats()["recv_queue"] < N
            for _ in range(N):
                await asyncio.wait_for(c.recv(), 10)
            assert c.state == "connected"


N = 1600
asyncio.run(asyncio.wait_for(main(), 60))
"""


@needs_unix
def test_on_every_cpython():
    """The transport's reading stays paused on every CPython this machine has: before 3.11.4 asyncio
    undoes a pause made in `connection_made` (python/cpython#103607), and a transport that still read
    would keep reading when the inbound buffer is full (64 MiB here, then a flood of 100 MiB)."""
    pythons = other_cpythons_or_skip()
    package = os.path.dirname(os.path.dirname(tether.__file__))
    for exe in pythons:
        out = subprocess.run(
            [exe, "-c", EVERY_CPYTHON],
            env={**os.environ, "PYTHONPATH": package},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, (exe, out.stderr[-2000:])

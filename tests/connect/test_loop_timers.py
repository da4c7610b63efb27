"""A connection's deadlines stay out of asyncio's timer heap, where every `asyncio.sleep` of the
application would compare against them in Python: on Linux one `timerfd` per loop, watched with
`add_reader`, serves every connection of the loop; a loop without `add_reader` gets one `call_later`.
Each behaviour that rests on a deadline (ping timeout, reconnect backoff) is driven on every kind."""

import asyncio
import gc
import os
import sys

import pytest

import tether
from support import FAST, frozen_server_is_detected_and_recovered
from tether.testing import SignalServer

needs_linux = pytest.mark.skipif(sys.platform != "linux", reason="timerfd is Linux's")


def tether_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """tether's entries in asyncio's own timer heap."""
    return [h for h in loop._scheduled if type(h._callback).__module__.startswith("tether")]  # type: ignore[attr-defined]


def timerfds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[timerfd]"
        except OSError:
            pass
    return n


@needs_linux
@pytest.mark.asyncio_loop_only("counts the timers in its heap")
async def test_connections_keep_nothing_in_asyncios_heap(signal_server):
    loop = asyncio.get_running_loop()
    conns = [await tether.connect(signal_server.url, **FAST)]
    # the loop's set opened with the first connection (and closed those of loops closed before it)
    before = timerfds() - 1
    conns += [await tether.connect(signal_server.url, **FAST) for _ in range(19)]
    try:
        for c in conns:
            await c.send("x")
            assert await c.recv() == "x"
        assert tether_timers(loop) == []
        assert timerfds() == before + 1  # one for the loop, however many connections
        # the pings the deadlines drive keep flowing: a connection idle for three intervals is still up
        await asyncio.sleep(3 * FAST["ping_interval"])
        assert all(c.state == "connected" and c.stats()["losses"] == 0 for c in conns)
    finally:
        for c in conns[:-1]:
            await c.aclose()
        assert timerfds() == before + 1
        await conns[-1].aclose()
    assert timerfds() == before  # the last connection's end closes it
    assert tether_timers(loop) == []


@needs_linux
async def test_deadlines_work_through_the_timerfd(signal_server):
    await frozen_server_is_detected_and_recovered(signal_server)


class NoReaders(asyncio.SelectorEventLoop):
    """A loop that watches no descriptors for callers, as the Proactor."""

    def add_reader(self, fd, callback, *args):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def test_loop_without_add_reader_gets_one_call_later():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with SignalServer("127.0.0.1", 0) as srv:
            conns = [await tether.connect(srv.url, **FAST) for _ in range(5)]
            assert len(tether_timers(loop)) == 1  # one for the loop, however many connections
            for c in conns:
                await c.aclose()
            assert tether_timers(loop) == []
            await frozen_server_is_detected_and_recovered(srv)

    loop = NoReaders()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()


def test_deadlines_on_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        async with SignalServer("127.0.0.1", 0) as srv:
            await frozen_server_is_detected_and_recovered(srv)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()


@needs_linux
async def test_loops_closed_with_connections_open_leave_no_descriptor(signal_server):
    """`asyncio.run` returning with connections still open, again and again in one thread (a test suite
    that forgets `aclose`): each loop's timerfd is closed once the thread opens a set for the next loop."""

    def runs() -> int:
        async def leave_one_open() -> None:
            c = await tether.connect(signal_server.url, **FAST)
            await c.send("x")

        for _ in range(5):
            asyncio.run(leave_one_open())
        return timerfds()

    before = timerfds()
    after = await asyncio.get_running_loop().run_in_executor(None, runs)
    assert after <= before + 1, (before, after)


@needs_linux
async def test_a_connection_let_go_without_close_takes_its_deadline_along(signal_server):
    """The last connection of a loop, dropped by the application without `aclose`: the loop's timerfd
    closes with it, not at the next deadline nobody needs."""
    c = await tether.connect(signal_server.url, **FAST)
    await c.send("x")
    during = timerfds()
    del c
    gc.collect()
    assert timerfds() == during - 1


@needs_linux
@pytest.mark.asyncio_loop_only("compares its selector's watches")
async def test_a_connection_let_go_on_another_thread_is_taken_down_on_its_loop(signal_server):
    """The last reference dropped on another thread (an audio thread that held the connection): asyncio's
    objects belong to the loop, so the reader's watch, the socket and the deadline are taken down there,
    at the loop's next turn, not left to the next deadline (30 s here) or done from the wrong thread."""
    loop = asyncio.get_running_loop()
    signal_server.echo(True)
    box = [await tether.connect(signal_server.url, ping_interval=30)]
    await box[0].send("x")
    assert await asyncio.wait_for(box[0].recv(), 5) == "x"
    during = timerfds()
    watched = dict(loop._selector.get_map())  # type: ignore[attr-defined]
    ours = {fd for fd, key in watched.items() if type(key.data[0]._callback).__module__.startswith("tether")}
    assert len(ours) == 2  # the connection's reader and the loop's timerfd

    def let_go() -> None:
        box.clear()
        gc.collect()

    await loop.run_in_executor(None, let_go)
    for _ in range(3):
        await asyncio.sleep(0)
    assert timerfds() == during - 1
    assert set(loop._selector.get_map()) == set(watched) - ours  # type: ignore[attr-defined]

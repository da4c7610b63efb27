"""How results reach asyncio: batched on the loop thread, no thread per pending awaitable, fork- and
exit-safe. The native SignalServer's ``wait_for`` is the probe: it stays pending until the server sees
a TCP connection from a client none of tether wrote (asyncio.open_connection). Its awaitable is a
coroutine: it waits (and so is pending) from its first step, taken here by a task."""

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from support import MS
from tether import _native


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def knock(srv) -> None:
    """One TCP connection to the server: bumps its ``tcp_accepts`` on a tokio thread."""
    _, w = await asyncio.open_connection(srv.host, srv.port)
    w.close()
    await w.wait_closed()


async def test_20000_pending_awaitables_complete_without_new_threads():
    srv = _native.SignalServer()
    await srv.start()
    try:
        await asyncio.wait_for(srv.wait_for(0, key="tcp_accepts"), 10)  # runtime and completer are up
        before = threads()
        pending = [asyncio.ensure_future(srv.wait_for(1, timeout=60, key="tcp_accepts")) for _ in range(20_000)]
        await asyncio.sleep(0)  # every task took its first step: 20,000 Rust futures wait
        assert not any(f.done() for f in pending)
        await knock(srv)  # completes all 20,000 from tokio's threads
        results = await asyncio.wait_for(asyncio.gather(*pending), 60)
        assert results == [True] * 20_000
        # a thread per completion (the old bridge) would show here: idle pool threads linger for 10 s
        assert threads() <= before + 2, (before, threads())
    finally:
        await srv.aclose()


async def test_an_already_resolvable_awaitable_returns_at_its_first_step_without_a_loop():
    import threading

    srv = _native.SignalServer()
    await srv.start()
    try:
        got = []

        def first_step():  # on a thread with no event loop: a ready result needs none
            with pytest.raises(StopIteration) as stop:
                srv.wait_for(0, key="handshakes").send(None)  # true on the first poll
            got.append(stop.value.value)

        t = threading.Thread(target=first_step)
        t.start()
        t.join(30)
        assert got == [True]
    finally:
        await srv.aclose()


async def test_cancelling_a_pending_awaitable_leaves_the_others_working():
    srv = _native.SignalServer()
    await srv.start()
    try:
        futs = [asyncio.ensure_future(srv.wait_for(1, timeout=60, key="tcp_accepts")) for _ in range(100)]
        await asyncio.sleep(0)  # all pending
        for f in futs[::2]:
            f.cancel()
        await asyncio.sleep(0)  # the cancellations abort the Rust side
        await knock(srv)
        assert await asyncio.wait_for(asyncio.gather(*futs[1::2]), 30) == [True] * 50
        assert all(f.cancelled() for f in futs[::2])
    finally:
        await srv.aclose()


async def test_timer_completions_racing_cancellations_lose_nothing():
    import random

    rng = random.Random(7)
    srv = _native.SignalServer()
    await srv.start()
    try:
        # each resolves to False when its tokio timer fires; a third are cancelled while in flight
        futs = [
            asyncio.ensure_future(srv.wait_for(10**9, timeout=rng.uniform(0.001, 0.05), key="tcp_accepts"))
            for _ in range(5000)
        ]
        doomed = set(rng.sample(range(len(futs)), len(futs) // 3))
        for step in range(5):
            await asyncio.sleep(10 * MS)
            for i in doomed:
                if i % 5 == step:
                    futs[i].cancel()
        done = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 30)
        for i, (f, r) in enumerate(zip(futs, done, strict=True)):
            if f.cancelled():
                assert i in doomed
            else:
                assert r is False, (i, r)
    finally:
        await srv.aclose()


async def test_awaitables_on_loops_in_two_threads_complete_on_their_own_loop():
    import threading

    errors = []

    def run():
        async def main():
            srv = _native.SignalServer()
            await srv.start()
            try:
                me = threading.get_ident()
                futs = [asyncio.ensure_future(srv.wait_for(1, timeout=30, key="tcp_accepts")) for _ in range(200)]
                await asyncio.sleep(0)  # all pending
                seen = []
                for f in futs:
                    f.add_done_callback(lambda _: seen.append(threading.get_ident()))
                await knock(srv)
                assert await asyncio.wait_for(asyncio.gather(*futs), 30) == [True] * 200
                await asyncio.sleep(0)
                assert set(seen) == {me}
            finally:
                await srv.aclose()

        try:
            asyncio.run(main())
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=run) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert errors == []


class LoopWithoutAddReader(asyncio.SelectorEventLoop):
    """Like Windows' Proactor loop: no add_reader, so results come through call_soon_threadsafe."""

    def add_reader(self, fd, callback, *args):
        raise NotImplementedError


def test_a_loop_without_add_reader_still_gets_its_results():
    async def main():
        srv = _native.SignalServer()
        await srv.start()
        try:
            futs = [asyncio.ensure_future(srv.wait_for(1, timeout=30, key="tcp_accepts")) for _ in range(500)]
            await asyncio.sleep(0)  # all pending
            _, w = await asyncio.open_connection(srv.host, srv.port)
            w.close()
            return await asyncio.wait_for(asyncio.gather(*futs), 30)
        finally:
            await srv.aclose()

    loop = LoopWithoutAddReader()
    try:
        assert loop.run_until_complete(main()) == [True] * 500
    finally:
        loop.close()


def test_uvloop_gets_its_results():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        srv = _native.SignalServer()
        await srv.start()
        try:
            assert await srv.wait_for(0, key="handshakes")
            futs = [asyncio.ensure_future(srv.wait_for(1, timeout=30, key="tcp_accepts")) for _ in range(500)]
            await asyncio.sleep(0)  # all pending
            for f in futs[::2]:
                f.cancel()
            await knock(srv)
            assert await asyncio.wait_for(asyncio.gather(*futs[1::2]), 30) == [True] * 250
        finally:
            await srv.aclose()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_loops_are_not_kept_alive_after_use():
    import gc
    import weakref

    async def use():
        srv = _native.SignalServer()
        await srv.start()
        try:
            assert await srv.wait_for(0, key="handshakes")
            futs = [asyncio.ensure_future(srv.wait_for(1, timeout=30, key="tcp_accepts")) for _ in range(10)]
            await asyncio.sleep(0)
            _, w = await asyncio.open_connection(srv.host, srv.port)
            w.close()
            assert await asyncio.wait_for(asyncio.gather(*futs), 30) == [True] * 10
        finally:
            await srv.aclose()

    refs = []
    for factory in (LoopWithoutAddReader, asyncio.SelectorEventLoop):
        loop = factory()
        loop.run_until_complete(use())
        loop.close()
        refs.append(weakref.ref(loop))
        del loop
    asyncio.run(use())  # this thread's last loop is remembered until the next one
    gc.collect()
    assert [r() for r in refs] == [None, None]


def run_script(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=90)


PROBE = """
    import asyncio, os, sys
    from tether import _native

    async def use(n=300):
        srv = _native.SignalServer()
        await srv.start()
        try:
            futs = [asyncio.ensure_future(srv.wait_for(1, timeout=20, key="tcp_accepts")) for _ in range(n)]
            await asyncio.sleep(0)  # all pending
            _, w = await asyncio.open_connection(srv.host, srv.port)
            w.close()
            assert await asyncio.wait_for(asyncio.gather(*futs), 20) == [True] * n
        finally:
            await srv.aclose()
"""


def test_parent_loop_keeps_working_after_a_child_used_tether():
    r = run_script(
        PROBE
        + """
    loop = asyncio.new_event_loop()
    loop.run_until_complete(use())  # the parent's completer for this loop
    pid = os.fork()
    if pid == 0:
        try:
            asyncio.run(asyncio.wait_for(use(), 20))  # the child's own runtime and completer
        except BaseException as e:
            print("child failed:", repr(e), flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "child"
    loop.run_until_complete(asyncio.wait_for(use(), 20))  # the parent's socket was not touched
    loop.close()
    print("ok")
    """
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_results_in_flight_at_interpreter_exit_are_dropped_quietly():
    r = run_script(
        PROBE
        + """
    async def leave():
        srv = _native.SignalServer()
        await srv.start()
        futs = [asyncio.ensure_future(srv.wait_for(1, timeout=20, key="tcp_accepts")) for _ in range(5000)]
        await asyncio.sleep(0)  # all pending
        _, w = await asyncio.open_connection(srv.host, srv.port)
        w.close()  # tokio completes 5,000 futures while the interpreter shuts down

    asyncio.run(use())
    asyncio.run(leave())
    print("ok")
    """
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
    assert "Fatal" not in r.stderr and "panick" not in r.stderr, r.stderr

"""Every public awaitable works wherever a coroutine does, as websockets' do: ``await``,
``asyncio.create_task``, ``ensure_future``, ``wait_for``, ``gather``, ``TaskGroup``/``timeout``, and
``asyncio.run_coroutine_threadsafe`` from a thread that has no event loop (an audio or callback thread),
on asyncio's loop and on uvloop. Cancellation and ``throw`` reach the Rust work; a coroutine is awaited
once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import io
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

import tether
from support import FAST, MS, eventually
from tether.testing import SignalServer

T = 20  # seconds: a deadline no healthy case comes near, on a loaded 2-core box
LOOPS = ["asyncio", "uvloop"]


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(kind: str, main: Callable[[], Awaitable[Any]]) -> Any:
    loop = new_loop(kind)
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@dataclass
class Kind:
    """A public awaitable: ``make()`` returns a fresh one (callable from any thread), ``check`` its result."""

    make: Callable[[], Awaitable[Any]]
    check: Callable[[Any], None]


def is_none(r: Any) -> None:
    assert r is None, r


def equals(v: Any) -> Callable[[Any], None]:
    def check(r: Any) -> None:
        assert r == v, r

    return check


# 2,000 sends from a thread and the loop at once on a busy box: no ping timeout while they queue
FAST = dict(FAST, ping_timeout=2000 * MS, quiet_jitter=0.0)


@contextlib.asynccontextmanager
async def connected() -> AsyncIterator[tuple[SignalServer, tether.Connection]]:
    async with SignalServer() as srv:
        async with tether.connect(srv.url, **FAST) as conn:
            yield srv, conn


@contextlib.asynccontextmanager
async def kind_of(name: str) -> AsyncIterator[Kind]:
    if name == "Connection.send":
        async with connected() as (_, conn):
            yield Kind(lambda: conn.send("x"), is_none)
    elif name == "Connection.flush":
        async with connected() as (_, conn):
            yield Kind(conn.flush, is_none)
    elif name in ("Connection.recv", "Connection.__anext__"):
        async with connected() as (srv, conn):
            await srv.wait_for(1)

            def make() -> Awaitable[Any]:
                srv.push("hi")  # the server's message arrives while the awaitable waits (or before)
                return conn.recv() if name == "Connection.recv" else aiter(conn).__anext__()

            yield Kind(make, equals("hi"))
    elif name == "Connection.aclose":
        async with connected() as (_, conn):
            yield Kind(conn.aclose, is_none)  # one close shared by every call
    elif name == "EventStream.__anext__":
        r = tether.Reconnector(tether.Backoff(0.001, jitter="none"), quiet_attempts=0, name="kinds")
        stream = r.events()

        def make() -> Awaitable[Any]:
            r.failed(ValueError("down"))  # reports Reconnecting on the stream
            return stream.__anext__()

        yield Kind(make, lambda ev: isinstance(ev, tether.events.Reconnecting) or pytest.fail(repr(ev)))
    elif name == "AlarmStream.__anext__":
        wd = tether.Watchdog("kinds")
        alarms = wd.alarms()

        def make() -> Awaitable[Any]:
            wd.liveness("beat", 0.01)  # silent: alarms within 10 ms
            return alarms.__anext__()

        yield Kind(make, lambda a: isinstance(a, tether.Alarm) or pytest.fail(repr(a)))
        wd.close()
    elif name == "Reconnector.run":
        r = tether.Reconnector(name="kinds")

        async def connect() -> int:
            r.connected()
            return 42

        yield Kind(lambda: r.run(connect), equals(42))
    elif name == "Reconnector.backoff":
        r = tether.Reconnector(tether.Backoff(0.001, jitter="none"), quiet_attempts=0, name="kinds")
        yield Kind(lambda: r.backoff(ValueError("down")), is_none)
    elif name == "bounded":
        yield Kind(lambda: tether.bounded(asyncio.sleep(0, "done"), T), equals("done"))
    elif name in ("ProcPool.acquire", "ProcPool.warm", "WorkerProc.request"):
        pool = tether.ProcPool(command=[sys.executable, "-m", "tether.worker"], num_idle=1)
        try:
            if name == "ProcPool.acquire":

                def lent(p: Any) -> None:
                    assert isinstance(p, tether.WorkerProc), p
                    pool.release(p)

                yield Kind(lambda: pool.acquire(timeout=T), lent)
            elif name == "ProcPool.warm":
                yield Kind(lambda: pool.warm(1, timeout=T), is_none)
            else:
                worker = await pool.acquire(timeout=T)
                yield Kind(lambda: worker.request(b"ping", timeout=T), equals(b"ping"))
                pool.release(worker)
        finally:
            await pool.aclose()
    elif name == "ProcPool.aclose":
        pool = tether.ProcPool(command=[sys.executable, "-m", "tether.worker"], num_idle=0)
        yield Kind(pool.aclose, is_none)
    elif name == "ReadinessGate.dispatch":
        gate = tether.ReadinessGate()
        jobs = iter(range(10**6))

        async def dispatch(job_id: str, attempt: int) -> None:
            await asyncio.sleep(0)

        def dispatched(r: Any) -> None:
            assert set(r) == {"dispatched"}, r

        yield Kind(lambda: gate.dispatch(f"j{next(jobs)}", dispatch, stages=("dispatched",)), dispatched)
    elif name == "SignalServer.wait_for":
        async with SignalServer() as srv:
            yield Kind(lambda: srv.wait_for(0, key="handshakes"), equals(True))
    else:
        raise AssertionError(name)


KINDS = [
    "Connection.send",
    "Connection.flush",
    "Connection.recv",
    "Connection.__anext__",
    "Connection.aclose",
    "EventStream.__anext__",
    "AlarmStream.__anext__",
    "Reconnector.run",
    "Reconnector.backoff",
    "bounded",
    "ProcPool.acquire",
    "ProcPool.warm",
    "WorkerProc.request",
    "ProcPool.aclose",
    "ReadinessGate.dispatch",
    "SignalServer.wait_for",
]


async def every_idiom(k: Kind) -> None:
    loop = asyncio.get_running_loop()
    aw = k.make()
    assert asyncio.iscoroutine(aw), type(aw)
    assert inspect.isawaitable(aw)
    k.check(await aw)
    k.check(await asyncio.create_task(k.make()))
    k.check(await asyncio.ensure_future(k.make()))
    k.check(await asyncio.wait_for(k.make(), T))
    (r,) = await asyncio.gather(k.make())
    k.check(r)
    if sys.version_info >= (3, 11):
        async with asyncio.TaskGroup() as tg:
            t = tg.create_task(k.make())
        k.check(t.result())
        async with asyncio.timeout(T):
            k.check(await k.make())

    def from_a_thread() -> Any:
        # no running loop on this thread: the awaitable is made here and runs on the loop's thread
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        return asyncio.run_coroutine_threadsafe(k.make(), loop).result(T)  # type: ignore[arg-type]

    k.check(await loop.run_in_executor(None, from_a_thread))


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("name", KINDS)
def test_every_public_awaitable_works_wherever_a_coroutine_does(name: str, loop: str) -> None:
    async def main() -> None:
        async with kind_of(name) as k:
            await every_idiom(k)

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_handshake_awaitables_work_wherever_a_coroutine_does(loop: str) -> None:
    async def main() -> None:
        async with SignalServer() as srv:
            srv.echo()
            seen: list[str] = []

            async def join(hs: tether.Handshake) -> None:
                lp = asyncio.get_running_loop()
                for i, send in enumerate(
                    [
                        lambda m: hs.send(m),
                        lambda m: asyncio.create_task(hs.send(m)),
                        lambda m: asyncio.wait_for(hs.send(m), T),
                        lambda m: asyncio.wrap_future(
                            asyncio.run_coroutine_threadsafe(hs.send(m), lp)  # type: ignore[arg-type]
                        ),
                    ]
                ):
                    aw = hs.send(f"probe{i}")
                    assert asyncio.iscoroutine(aw)
                    await aw
                    assert await asyncio.create_task(hs.recv()) == f"probe{i}"
                    await send(f"m{i}")
                    seen.append(await asyncio.wait_for(hs.recv(), T))

            async with tether.connect(srv.url, on_connect=join, **FAST):
                pass
            assert seen == ["m0", "m1", "m2", "m3"]

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_sends_from_a_thread_and_from_the_loop_all_arrive_each_in_its_order(loop: str) -> None:
    """A thread without an event loop (an audio callback) sends 1,000 messages through
    ``run_coroutine_threadsafe`` while the loop sends 1,000 of its own, to a websockets server."""
    from websockets.asyncio.server import serve

    async def main() -> None:
        got: list[str] = []
        all_in = asyncio.Event()

        async def handler(ws: Any) -> None:
            async for m in ws:
                got.append(m)
                if len(got) == 2000:
                    all_in.set()

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with tether.connect(f"ws://127.0.0.1:{port}/", **FAST) as conn:
                lp = asyncio.get_running_loop()

                def thread_sender() -> None:
                    pending = []
                    for i in range(1000):
                        # queued by this call, on this thread; awaited (flow control) on the loop
                        f = asyncio.run_coroutine_threadsafe(conn.send(f"t{i}"), lp)  # type: ignore[arg-type]
                        pending.append(f)
                        if i % 100 == 99:
                            for f in pending:
                                f.result(T)
                            pending.clear()

                t = threading.Thread(target=thread_sender)
                t.start()
                for i in range(1000):
                    await conn.send(f"l{i}")
                    if i % 50 == 0:
                        await asyncio.sleep(0)  # let the thread's sends interleave
                await lp.run_in_executor(None, t.join, T)
                assert not t.is_alive()
                await asyncio.wait_for(conn.flush(), T)
                await asyncio.wait_for(all_in.wait(), T)
        assert [m for m in got if m[0] == "t"] == [f"t{i}" for i in range(1000)]
        assert [m for m in got if m[0] == "l"] == [f"l{i}" for i in range(1000)]

    run(loop, main)


async def test_send_from_a_thread_without_a_loop_queues_at_the_call():
    async with connected() as (srv, conn):
        srv.echo()
        errors: list[BaseException] = []

        def fire_and_forget() -> None:
            try:
                conn.send("from a thread")  # no running loop here: the call itself queues it
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=fire_and_forget)
        t.start()
        t.join(T)
        assert errors == []
        assert await asyncio.wait_for(conn.recv(), T) == "from a thread"


async def test_send_queues_at_call_time_in_call_order():
    async with connected() as (srv, conn):
        srv.echo()
        first, second = conn.send("1"), conn.send("2")
        await second
        await first
        assert [await asyncio.wait_for(conn.recv(), T) for _ in range(2)] == ["1", "2"]


async def test_a_coroutine_is_awaited_once():
    async with connected() as (_, conn):
        aw = conn.send("x")
        await aw
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await aw
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            aw.send(None)  # type: ignore[attr-defined]
    gate = tether.ReadinessGate()

    async def dispatch(job_id: str, attempt: int) -> None:
        pass

    pending = gate.dispatch("j", dispatch, stages=("dispatched", "ready"), timeouts=T)
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)  # the task made its first step: the dispatch waits for "ready"
    with pytest.raises(RuntimeError, match="being awaited already"):
        await pending
    gate.mark("j", "ready")
    assert set(await asyncio.wait_for(task, T)) == {"dispatched", "ready"}


async def test_cancelling_the_task_cancels_the_rust_work_and_a_cancelled_recv_consumes_nothing():
    gate = tether.ReadinessGate()

    async def dispatch(job_id: str, attempt: int) -> None:
        pass

    task = asyncio.create_task(gate.dispatch("j1", dispatch, stages=("dispatched", "ready"), timeouts=T))
    await eventually(lambda: "j1" in gate.pending(), T)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: gate.pending() == [], T)  # the Rust dispatch was dropped (its tokio task aborted)
    assert gate.mark("j1", "ready") is False

    async with connected() as (srv, conn):
        waiting = asyncio.create_task(conn.recv())
        await asyncio.sleep(50 * MS)  # the receive is pending on the Rust side when it is cancelled
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        srv.push("kept")
        assert await asyncio.wait_for(conn.recv(), T) == "kept"


async def test_an_exception_thrown_in_stops_the_rust_work_and_is_raised():
    gate = tether.ReadinessGate()
    calls: list[str] = []

    async def dispatch(job_id: str, attempt: int) -> None:
        calls.append(job_id)

    aw = gate.dispatch("j2", dispatch, stages=("dispatched", "ready"), timeouts=T)
    waited_on = aw.send(None)  # type: ignore[attr-defined]  # the first step: pending, yields its future
    assert isinstance(waited_on, asyncio.Future) and not waited_on.done()
    assert gate.pending() == ["j2"]
    with pytest.raises(ValueError, match="boom"):
        aw.throw(ValueError("boom"))  # type: ignore[attr-defined]
    assert waited_on.cancelled()
    await eventually(lambda: gate.pending() == [], T)
    with pytest.raises(RuntimeError, match="cannot reuse"):
        aw.send(None)  # type: ignore[attr-defined]

    # thrown in before the first step: nothing ran, as with a coroutine
    fresh = gate.dispatch("j3", dispatch, stages=("dispatched",))
    with pytest.raises(KeyError):
        fresh.throw(KeyError, "k")  # type: ignore[attr-defined]
    await asyncio.sleep(10 * MS)  # room for a dispatch that must not start
    assert "j3" not in gate.pending() and "j3" not in calls

    closed = gate.dispatch("j4", dispatch, stages=("dispatched",))
    closed.close()  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="cannot reuse"):
        await closed


def unawaited_warnings(make: Callable[[], Any], name: str) -> list[str]:
    """The RuntimeWarnings about `name` issued while the awaitable `make()` returns is dropped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and name in str(w.message)]


async def test_an_unawaited_send_still_goes_out_without_a_warning_and_other_awaitables_warn():
    async with connected() as (srv, conn):
        srv.echo()
        assert unawaited_warnings(lambda: conn.send("never awaited"), "Connection.send") == []
        assert await asyncio.wait_for(conn.recv(), T) == "never awaited"
        assert unawaited_warnings(conn.flush, "Connection.flush") == ["coroutine 'Connection.flush' was never awaited"]

    pool = tether.ProcPool(command=[sys.executable, "-m", "tether.worker"], num_idle=1)
    try:
        await pool.warm(1, timeout=T)
        # nothing runs before the first step: an acquire never awaited lends nothing
        assert unawaited_warnings(pool.acquire, "ProcPool.acquire") == [
            "coroutine 'ProcPool.acquire' was never awaited"
        ]
        assert pool.stats()["idle"] == 1

        def closed_unawaited() -> None:
            aw = pool.acquire()
            aw.close()  # type: ignore[attr-defined]  # as for a coroutine: closed is not "never awaited"

        assert unawaited_warnings(closed_unawaited, "ProcPool.acquire") == []
        assert pool.stats()["idle"] == 1
    finally:
        await pool.aclose()


def states(c: Any) -> tuple[str, bool, bool]:
    """What `inspect` and asyncio's introspection read off a coroutine."""
    state = inspect.getcoroutinestate(c)  # type: ignore[arg-type]
    # inspect reads `cr_state` alone from Python 3.15 on, and derives the state from the others before
    assert c.cr_state == state
    return state, c.cr_running, c.cr_await is not None


async def nothing(job_id: str, attempt: int) -> None:
    pass


async def test_inspect_reads_a_native_coroutines_state_as_a_coroutines():
    """``inspect.getcoroutinestate`` (which anyio calls on every task of a cancel scope), ``cr_state``,
    ``cr_running``, ``cr_frame``, ``cr_await``, ``cr_code`` and ``cr_suspended`` answer as for a coroutine, in
    every state: awaited by a task, by ``await`` inside one, stepped by hand, closed, finished."""
    gate = tether.ReadinessGate()

    def waiting(job: str) -> Any:
        """A native coroutine that waits until `job` is marked ready."""
        return gate.dispatch(job, nothing, stages=("dispatched", "ready"), timeouts=T)

    c = waiting("a")
    assert states(c) == (inspect.CORO_CREATED, False, False)
    assert c.cr_frame is not None and c.cr_code is None and not c.cr_suspended
    assert c.cr_frame.f_globals["__name__"] == "tether._native"
    task = asyncio.create_task(c)
    await eventually(lambda: "a" in gate.pending(), T)
    assert states(c) == (inspect.CORO_SUSPENDED, False, True)
    assert isinstance(c.cr_await, asyncio.Future) and c.cr_suspended
    assert "ReadinessGate.dispatch" in repr(task) and len(task.get_stack()) == 1
    task.print_stack(file=io.StringIO())
    gate.mark("a", "ready")
    await asyncio.wait_for(task, T)
    assert states(c) == (inspect.CORO_CLOSED, False, False)
    assert c.cr_frame is None and not c.cr_suspended

    # awaited inside a coroutine: its future is handed over, and the native one waits on it
    inner = waiting("b")

    async def outer() -> Any:
        return await inner

    task = asyncio.create_task(outer())
    await eventually(lambda: "b" in gate.pending(), T)
    assert states(inner) == (inspect.CORO_SUSPENDED, False, True)
    gate.mark("b", "ready")
    await asyncio.wait_for(task, T)
    assert states(inner)[0] == inspect.CORO_CLOSED

    # ready at the first step, closed before it, thrown into while waiting: as a coroutine
    async with connected() as (_, conn):
        ready = conn.send("x")
        with pytest.raises(StopIteration):
            ready.send(None)  # type: ignore[attr-defined]
        assert states(ready)[0] == inspect.CORO_CLOSED
    closed = waiting("c")
    closed.close()
    assert states(closed)[0] == inspect.CORO_CLOSED
    stepped = waiting("d")
    stepped.send(None)
    assert states(stepped) == (inspect.CORO_SUSPENDED, False, True)
    with pytest.raises(KeyError):
        stepped.throw(KeyError("k"))
    assert states(stepped)[0] == inspect.CORO_CLOSED


async def test_anyio_task_groups_and_cancel_scopes_drive_native_coroutines():
    """anyio on asyncio reads ``getcoroutinestate`` of the tasks a cancel scope cancels and names tasks from
    ``cr_frame``: native coroutines work in its task groups, cancel scopes and timeouts."""
    anyio = pytest.importorskip("anyio")
    from importlib.metadata import version

    if tuple(int(p) for p in version("anyio").split(".")[:2]) < (4, 14):
        pytest.skip("anyio before 4.14 takes only Python coroutine objects in start_soon (wrap in an async def)")
    gate = tether.ReadinessGate()

    def waiting(job: str) -> Any:
        return gate.dispatch(job, nothing, stages=("dispatched", "ready"), timeouts=T)

    with anyio.move_on_after(0.1) as scope:
        await waiting("a")
    assert scope.cancelled_caught
    await eventually(lambda: gate.pending() == [], T)  # the Rust work stopped
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiting, "b")
        tg.start_soon(waiting, "c")
        if hasattr(tg, "create_task"):  # anyio >= 4.14
            handle = tg.create_task(waiting("d"))
            assert handle.name.endswith("ReadinessGate.dispatch"), handle.name
        await eventually(lambda: len(gate.pending()) >= 2, T)
        tg.cancel_scope.cancel()
    await eventually(lambda: gate.pending() == [], T)
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiting, "e")
        await eventually(lambda: gate.pending() == ["e"], T)
        gate.mark("e", "ready")
    assert gate.pending() == []

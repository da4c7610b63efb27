"""ProcPool hooks for frameworks: warm(), detach(), liveness=, spawn failure causes."""

import asyncio
import os
import signal
import sys

import pytest

import tether
from support import eventually, respawn, running
from tether._procpool import Evicted

WORKER = [sys.executable, "-m", "tether.worker"]


async def test_warm_waits_until_n_processes_are_idle():
    pool = tether.ProcPool(command=WORKER, num_idle=1, max_concurrent_spawns=2, initialize_timeout=20)
    await pool.warm(timeout=60)
    assert pool.stats()["idle"] == 1
    await pool.warm(2, timeout=60)  # raises the idle target
    assert pool.stats()["idle"] == 2
    await pool.aclose()


async def test_warm_raises_pool_exhausted_naming_the_spawn_failures():
    pool = tether.ProcPool(command=[*WORKER, "--fail"], num_idle=2, acquire_attempts=2, respawn=respawn())
    with pytest.raises(tether.PoolExhausted) as info:
        await pool.warm(timeout=60)
    assert info.value.attempts == 2 and "agent_plugins" in str(info.value)
    assert "warm" in str(info.value)
    await pool.aclose()


async def test_warm_is_bounded_by_its_timeout():
    async def spawn():
        await asyncio.sleep(3600)

    pool = tether.ProcPool(spawn=spawn, num_idle=1, initialize_timeout=100)
    with pytest.raises(tether.TimeoutError):
        await pool.warm(timeout=0.3)
    await pool.aclose()


async def test_detach_takes_a_process_out_for_good():
    pool = tether.ProcPool(command=WORKER, num_idle=1, initialize_timeout=20)
    await pool.warm(timeout=60)
    p = await pool.acquire(timeout=30)
    pool.detach(p)
    with pytest.raises(ValueError):
        pool.detach(p)
    with pytest.raises(ValueError):
        pool.release(p)
    await pool.warm(timeout=60)  # refilled to its target
    await pool.aclose()
    assert p.is_alive() and running(p.pid)  # not the pool's any more: aclose left it alone
    assert await p.request(b"still mine", timeout=10) == b"still mine"
    os.kill(p.pid, signal.SIGKILL)


async def test_detach_of_a_process_from_elsewhere_raises():
    async def spawn():
        return object()

    a = tether.ProcPool(spawn=spawn, num_idle=0)
    b = tether.ProcPool(spawn=spawn, num_idle=0)
    p = await a.acquire(timeout=10)
    with pytest.raises(ValueError):
        b.detach(p)
    a.detach(p)
    await a.aclose()
    await b.aclose()


async def test_liveness_callable_judges_plain_objects():
    class Proc:
        def __init__(self, i):
            self.i = i
            self.alive = True

    n = 0

    async def spawn():
        nonlocal n
        n += 1
        return Proc(n)

    pool = tether.ProcPool(spawn=spawn, num_idle=1, liveness=lambda p: p.alive)
    events = pool.events()
    await pool.warm(timeout=10)
    first = await pool.acquire(timeout=10)
    pool.release(first)
    first.alive = False  # dies while idle
    p = await pool.acquire(timeout=10)
    assert p is not first and p.alive
    seen = []
    while not any(isinstance(e, Evicted) for e in seen):
        seen.append(await asyncio.wait_for(events.__anext__(), 5))
    await pool.aclose()


async def test_asyncio_subprocess_liveness_and_reaping_without_a_liveness_callable():
    async def spawn():
        return await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")

    pool = tether.ProcPool(spawn=spawn, num_idle=1)
    await pool.warm(timeout=30)
    first = await pool.acquire(timeout=30)
    pool.release(first)
    first.kill()
    await first.wait()
    p = await pool.acquire(timeout=30)
    assert p is not first and p.returncode is None
    pool.release(p, kill=True)
    # killed and awaited (reaped), not left to the garbage collector
    await eventually(lambda: p.returncode is not None, what="the process reaped")
    await pool.aclose()


def test_liveness_must_be_callable_and_is_for_spawn_pools():
    async def spawn():
        return object()

    with pytest.raises(TypeError):
        tether.ProcPool(spawn=spawn, liveness=5)
    with pytest.raises(TypeError):
        tether.ProcPool(command=WORKER, liveness=lambda p: True)


async def test_spawn_failure_names_the_chained_cause():
    async def spawn():
        try:
            raise ModuleNotFoundError("No module named 'plugins'")
        except ModuleNotFoundError as e:
            raise RuntimeError("worker initialization failed") from e

    pool = tether.ProcPool(spawn=spawn, num_idle=0, acquire_attempts=1)
    with pytest.raises(tether.PoolExhausted) as info:
        await pool.acquire(timeout=10)
    text = str(info.value)
    assert "RuntimeError: worker initialization failed" in text
    assert "caused by ModuleNotFoundError: No module named 'plugins'" in text
    await pool.aclose()


async def test_spawn_failure_names_the_implicit_context():
    async def spawn():
        try:
            {}["missing"]
        except KeyError:
            raise RuntimeError("setup failed")  # noqa: B904 (the implicit context is what is tested)

    pool = tether.ProcPool(spawn=spawn, num_idle=0, acquire_attempts=1)
    with pytest.raises(tether.PoolExhausted, match=r"setup failed \(caused by KeyError: 'missing'\)"):
        await pool.acquire(timeout=10)
    await pool.aclose()


@pytest.mark.parametrize("spawn", [lambda: None, print, len, type("Sync", (), {"__call__": lambda self: 1})()])
def test_a_plain_callable_as_spawn_is_a_type_error_at_once(spawn):
    with pytest.raises(TypeError, match="async"):
        tether.ProcPool(spawn=spawn)


def test_async_callables_of_every_shape_are_accepted():
    import functools

    async def spawn(x=1):
        return object()

    class Spawner:
        async def __call__(self):
            return object()

    for s in (spawn, functools.partial(spawn, 2), Spawner()):
        tether.ProcPool(spawn=s)


async def test_popen_objects_are_judged_by_poll():
    import subprocess

    async def spawn():
        return await asyncio.to_thread(subprocess.Popen, [sys.executable, "-c", "import time; time.sleep(60)"])

    pool = tether.ProcPool(spawn=spawn, num_idle=1)
    await pool.warm(timeout=30)
    first = await pool.acquire(timeout=30)
    pool.release(first)
    first.kill()
    await asyncio.to_thread(first.wait)
    first.returncode = None  # as if nobody had polled it yet
    p = await pool.acquire(timeout=30)
    assert p is not first
    pool.release(p, kill=True)
    await pool.aclose()
    await asyncio.to_thread(p.wait, 10)

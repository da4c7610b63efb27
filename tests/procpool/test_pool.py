"""tether.ProcPool with real subprocesses and spawn callables: acquire never hangs, nothing leaks, a
process is released only into the pool that lent it, and a spawn failure costs an attempt only of the
acquire it was for."""

import asyncio
import os
import sys
import time

import pytest

import tether
from support import DEADLINE, MS, eventually, respawn, running
from tether._procpool import HealthChanged, SpawnFailed

WORKER = [sys.executable, "-m", "tether.worker"]


def gone(pid, timeout=5.0):
    """True once the pid is gone (reaped: no zombie left)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(20 * MS)
    return False


async def test_acquire_request_release():
    pool = tether.ProcPool(command=WORKER, num_idle=1, initialize_timeout=20)
    pool.start()
    p = await pool.acquire(timeout=30)
    assert p.is_alive() and p.returncode is None
    assert await p.request(b"hello", timeout=10) == b"hello"
    pid = p.pid
    pool.release(p, kill=True)
    assert await asyncio.to_thread(gone, pid)
    await pool.aclose()


async def test_all_spawns_fail_raises_pool_exhausted_quickly_with_causes():
    pool = tether.ProcPool(
        command=[*WORKER, "--fail"], num_idle=1, acquire_attempts=3, respawn=respawn(), initialize_timeout=20
    )
    t0 = time.monotonic()
    with pytest.raises(tether.PoolExhausted) as info:
        await asyncio.wait_for(pool.acquire(), 60)
    e = info.value
    assert e.attempts == 3 and len(e.failures) == 3
    assert "exited with exit status: 3 before signaling ready" in str(e)
    assert "agent_plugins" in str(e)  # the child's stderr tail
    assert time.monotonic() - t0 < 60
    assert pool.healthy is False
    await pool.aclose()


async def test_an_unhealthy_pool_fails_an_acquire_at_the_next_spawn_failure_whoever_it_was_for():
    # A setup that always fails and two idle processes wanted: once the pool is unhealthy, the next
    # failure ends a waiting acquire, even when it is a spawn started for the idle target before the
    # acquire arrived; it does not wait for spawns of its own, each a backoff away.
    gate = asyncio.Semaphore(0)
    started = 0

    async def spawn():
        nonlocal started
        started += 1
        await gate.acquire()
        raise RuntimeError("prewarm failed: model file /models/vad.onnx not found")

    pool = tether.ProcPool(
        spawn=spawn,
        num_idle=2,
        max_concurrent_spawns=2,
        acquire_attempts=3,
        respawn=tether.Backoff(0.01, jitter="none"),
    )
    pool.start()
    await eventually(lambda: started == 2, 30)
    gate.release()
    gate.release()
    await eventually(lambda: not pool.healthy and started >= 3, 30)  # the next spawn for the idle target is in flight
    acquire = asyncio.ensure_future(pool.acquire(timeout=60))
    # let spawns fail one by one: the first ends the acquire (a second only if the first failure came
    # before the acquire had registered); a pool waiting for 3 attempts of its own needs 3 or 4
    failed = 0
    while not acquire.done() and failed < 2:
        n = started
        gate.release()
        failed += 1
        await eventually(lambda n=n: acquire.done() or started > n, 30)
    assert acquire.done(), f"acquire still waiting after {failed} spawn failures in an unhealthy pool"
    with pytest.raises(tether.PoolExhausted) as info:
        await acquire
    e = info.value
    assert e.attempts == 1 and len(e.failures) == 1, (e.attempts, e.failures)
    assert "prewarm failed: model file /models/vad.onnx not found" in str(e), str(e)
    assert "unhealthy" in str(e), str(e)
    await pool.aclose()


async def test_some_spawns_fail_acquire_still_succeeds():
    n = 0

    class Proc:
        def __init__(self, i):
            self.i = i

    async def spawn():
        nonlocal n
        n += 1
        if n % 2 == 1:
            raise RuntimeError(f"spawn {n} failed")
        return Proc(n)

    pool = tether.ProcPool(spawn=spawn, num_idle=0, acquire_attempts=3, respawn=respawn())
    got = [await pool.acquire(timeout=10) for _ in range(3)]
    assert [p.i for p in got] == [2, 4, 6]
    for p in got:
        pool.release(p)
    await pool.aclose()


async def test_hang_on_init_is_killed_and_reaped():
    pool = tether.ProcPool(
        command=[*WORKER, "--hang"], num_idle=1, initialize_timeout=0.5, acquire_attempts=2, respawn=respawn()
    )
    events = pool.events()
    t0 = time.monotonic()
    with pytest.raises(tether.PoolExhausted) as info:
        await pool.acquire(timeout=30)
    assert "did not finish within 0.5s" in str(info.value)
    assert time.monotonic() - t0 < 20
    await pool.aclose()
    # every hung child was killed and reaped: no python -m tether.worker --hang left
    await eventually(
        lambda: not [p for p in os.listdir("/proc") if p.isdigit() and _is_hung_worker(p)], what="hung workers reaped"
    )
    seen = []
    while True:
        try:
            seen.append(await asyncio.wait_for(events.__anext__(), 1))
        except (StopAsyncIteration, asyncio.TimeoutError):
            break
    assert any(isinstance(e, SpawnFailed) for e in seen)


def _is_hung_worker(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().split(") ")[1].split()[1])
    except OSError:
        return False
    return b"tether.worker\x00--hang" in cmd and ppid == os.getpid()


async def test_dead_idle_process_is_evicted_not_handed_out():
    pool = tether.ProcPool(command=WORKER, num_idle=1, initialize_timeout=20)
    pool.start()
    await eventually(lambda: pool.stats()["idle"] == 1, 30, what="an idle process")
    first = await pool.acquire(timeout=30)
    pid = first.pid
    pool.release(first)  # back to idle
    os.kill(pid, 9)  # dies while idle
    await eventually(lambda: not running(pid), what="the idle process dead")
    p = await pool.acquire(timeout=30)
    assert p.pid != pid and p.is_alive()
    assert await asyncio.to_thread(gone, pid)  # evicted and reaped, not left a zombie
    assert await p.request(b"x", timeout=10) == b"x"
    await pool.aclose()
    assert await asyncio.to_thread(gone, p.pid)


async def test_cancel_during_acquire_leaks_nothing():
    started = asyncio.Event()
    release = asyncio.Event()
    made = []

    class Proc:
        closed = False

        async def aclose(self):
            self.closed = True

    async def spawn():
        started.set()
        await release.wait()
        p = Proc()
        made.append(p)
        return p

    pool = tether.ProcPool(spawn=spawn, num_idle=0)
    t = asyncio.ensure_future(pool.acquire())
    await asyncio.wait_for(started.wait(), 5)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    release.set()
    # the spawn finished after the waiter left: with num_idle=0 nobody wants it, so it is closed,
    # neither lost nor kept idle beyond the target
    await eventually(lambda: made and made[0].closed, what="the unwanted process closed")
    assert made[0].closed and pool.stats()["idle"] == 0
    p = await pool.acquire(timeout=5)
    assert p is made[1]
    pool.release(p, kill=True)
    await eventually(lambda: p.closed, what="the killed process closed")
    await pool.aclose()


async def test_crash_loop_does_not_spin():
    pool = tether.ProcPool(
        command=[*WORKER, "--fail"],
        num_idle=2,
        max_concurrent_spawns=2,
        respawn=tether.Backoff(0.2, 2, max_delay=1.0, jitter="none"),
        initialize_timeout=20,
    )
    events = pool.events()
    pool.start()
    await asyncio.sleep(3000 * MS)  # the crash loop runs for 3 s
    spawns = pool.stats()["spawns"]
    # 2 at a time, waits 0.2, 0.4, 0.8, 1.0 ...: a handful in 3 s, not hundreds
    assert spawns <= 2 * 8, spawns
    assert pool.healthy is False
    await pool.aclose()
    kinds = []
    while True:
        try:
            kinds.append(type(await asyncio.wait_for(events.__anext__(), 1)).__name__)
        except (StopAsyncIteration, asyncio.TimeoutError):
            break
    assert "HealthChanged" in kinds and "SpawnFailed" in kinds


# a worker that reports ready, then exits at once (it crashes in work it does after the handshake)
READY_THEN_EXIT = ["sh", "-c", "printf '\\000\\000\\000\\005ready'; exit 3"]


async def test_workers_dying_right_after_ready_are_a_paced_crash_loop():
    """Such a worker's spawn succeeded: before, the pool evicted the dead process at the next acquire
    and spawned again at once, with no backoff and healthy throughout (over 600 spawns in 3 s), and an
    acquire looped until its timeout, for ever without one. Its death before its first use now fails
    its spawn after all: the backoff paces the pool, it turns unhealthy, acquire raises PoolExhausted."""
    pool = tether.ProcPool(
        command=READY_THEN_EXIT,
        num_idle=1,
        initialize_timeout=20,
        respawn=tether.Backoff(0.2, 2, max_delay=1.0, jitter="none"),
    )
    exhausted = []
    end = time.monotonic() + 3
    while time.monotonic() < end:  # callers that retry for 3 s
        try:
            # no timeout of its own: it must end by itself
            p = await asyncio.wait_for(pool.acquire(), DEADLINE)
        except tether.PoolExhausted as e:
            exhausted.append(str(e))
        else:
            pool.release(p)  # lent in the moment before it exited
    spawns, healthy = pool.stats()["spawns"], pool.healthy
    await pool.aclose()
    # waits of 0.2, 0.4, 0.8, 1.0 s, two spawns after each (the one after the wait, and the one its
    # success starts for the idle target before the first is found dead): a dozen in 3 s
    assert spawns <= 2 * 8, spawns
    assert not healthy
    assert exhausted and "died before its first use" in exhausted[0], exhausted[:1]


async def test_an_acquire_on_processes_dead_on_arrival_ends_by_itself():
    class Dead:
        """A child that crashed during start-up: dead by the time the pool checks it."""

        def is_alive(self):
            return False

        async def aclose(self):
            pass

    async def spawn():
        await asyncio.sleep(0)
        return Dead()

    pool = tether.ProcPool(spawn=spawn, num_idle=1, initialize_timeout=20)
    with pytest.raises(tether.PoolExhausted, match="died before its first use"):
        await asyncio.wait_for(pool.acquire(), DEADLINE)  # no timeout of its own
    spawns = pool.stats()["spawns"]
    await pool.aclose()
    assert spawns <= 5, spawns  # 86,682 in 15 s before


async def test_healthy_flips_back_after_a_success():
    fail = True

    async def spawn():
        if fail:
            raise OSError("cannot fork")
        return object()

    pool = tether.ProcPool(spawn=spawn, num_idle=1, respawn=tether.Backoff(0.05, max_delay=0.1, jitter="none"))
    events = pool.events()
    pool.start()
    await eventually(lambda: not pool.healthy, what="unhealthy")
    fail = False
    await eventually(lambda: pool.healthy, what="healthy again")
    seen = []
    while len([e for e in seen if isinstance(e, HealthChanged)]) < 2:
        seen.append(await asyncio.wait_for(events.__anext__(), 5))
    assert [e.healthy for e in seen if isinstance(e, HealthChanged)] == [False, True]
    await pool.aclose()


async def test_acquire_timeout_is_bounded():
    async def spawn():
        await asyncio.sleep(3600)

    pool = tether.ProcPool(spawn=spawn, num_idle=0, initialize_timeout=100)
    t0 = time.monotonic()
    with pytest.raises(tether.TimeoutError):
        await pool.acquire(timeout=0.3)
    assert time.monotonic() - t0 < 3
    t0 = time.monotonic()
    await pool.aclose()  # aborts the hung spawn instead of waiting for initialize_timeout
    assert time.monotonic() - t0 < 5


async def test_the_errors_of_acquire_say_what_ended_it():
    async def spawn():
        await asyncio.sleep(3600)

    pool = tether.ProcPool(spawn=spawn, num_idle=0, initialize_timeout=100)
    with pytest.raises(tether.TimeoutError) as timed_out:
        await pool.acquire(timeout=300 * MS)
    e = timed_out.value
    assert isinstance(e, TimeoutError) and isinstance(e, tether.TetherError)
    assert (
        e.timeout == pytest.approx(0.3) and e.what == "ProcPool.acquire" and str(e).startswith("ProcPool.acquire: ")
    ), e
    # a waiter the pool's close ends
    waiting = asyncio.create_task(pool.acquire(timeout=30))
    await eventually(lambda: pool.stats()["in_flight"] == 1, what="a spawn for the waiter")
    await pool.aclose()
    with pytest.raises(tether.PoolExhausted, match="the pool is closed") as closed:
        await waiting
    assert (closed.value.attempts, closed.value.failures) == (0, [])


async def test_worker_dying_mid_request_raises():
    pool = tether.ProcPool(command=[*WORKER, "--die-after", "1"], num_idle=0, initialize_timeout=20)
    p = await pool.acquire(timeout=30)
    assert await p.request(b"one", timeout=10) == b"one"
    with pytest.raises(tether.TetherError):
        await p.request(b"two", timeout=10)
    pool.release(p)
    await pool.aclose()


async def test_aclose_fails_waiters_and_kills_idle():
    pool = tether.ProcPool(command=WORKER, num_idle=2, max_concurrent_spawns=2, initialize_timeout=20)
    pool.start()
    await eventually(lambda: pool.stats()["idle"] == 2, 30, what="two idle processes")
    a = await pool.acquire(timeout=30)
    b = await pool.acquire(timeout=30)
    pool.release(a)
    pool.release(b)
    pids = [a.pid, b.pid]
    await pool.aclose()
    for pid in pids:
        assert await asyncio.to_thread(gone, pid)
    with pytest.raises(tether.PoolExhausted, match="closed"):
        await pool.acquire()


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(), TypeError),
        (dict(command="python -m x"), TypeError),
        (dict(command=[]), ValueError),
        (dict(command=WORKER, spawn=print), TypeError),
        (dict(spawn=5), TypeError),
        (dict(command=WORKER, num_idle=-1), ValueError),
        (dict(command=WORKER, max_concurrent_spawns=0), ValueError),
        (dict(command=WORKER, acquire_attempts=0), ValueError),
        (dict(command=WORKER, initialize_timeout=0), ValueError),
        (dict(command=WORKER, respawn=1.0), TypeError),
    ],
)
def test_bad_inputs(kwargs, exc):
    with pytest.raises(exc) as info:
        tether.ProcPool(**kwargs)
    bad = [k for k in kwargs if k not in ("command", "spawn")]
    if bad:  # the error names the argument it is about
        assert bad[0] in str(info.value)


async def test_release_of_a_foreign_object():
    async def spawn():
        return object()

    pool = tether.ProcPool(spawn=spawn, num_idle=0)
    with pytest.raises(ValueError):
        pool.release(object())
    await pool.aclose()


@pytest.mark.asyncio_loop_only("builds the race from the order it runs callbacks in")
@pytest.mark.parametrize("driven_by", ["await", "task"])
async def test_an_acquire_cancelled_after_its_process_arrived_gives_the_process_back(driven_by):
    """wait_for's timeout can fire in the loop iteration after the acquire's result arrived and before
    the task resumed: the task is cancelled with the process already handed over. That process must go
    back to the pool, not stay lent to nobody (a leaked child and slot)."""
    pool = tether.ProcPool(command=WORKER, num_idle=0, initialize_timeout=20)
    pool.start()
    loop = asyncio.get_running_loop()

    async def take():
        return await pool.acquire(timeout=30)

    task = asyncio.create_task(take() if driven_by == "await" else pool.acquire(timeout=30))
    await asyncio.sleep(0)  # the acquire's first step: nothing idle, a spawn starts for it

    def hold_the_loop_until_lent():
        # the spawn finishes on tether's thread while the loop is held, so the result is delivered in
        # the next iteration; the cancel scheduled from there runs after that delivery and before the
        # task's wake-up (both callbacks of the iteration after it, the cancel first)
        end = time.monotonic() + 30
        while pool.stats()["lent"] == 0 and time.monotonic() < end:
            time.sleep(5 * MS)  # holds the loop on purpose
        loop.call_soon(loop.call_soon, task.cancel)

    loop.call_soon(hold_the_loop_until_lent)
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: pool.stats()["lent"] == 0, what=f"the process given back: {pool.stats()}")
    await pool.aclose()


async def test_pool_exhausted_is_reported_once_by_the_exception(tether_logs):
    pool = tether.ProcPool(
        command=[sys.executable, "-m", "tether.worker", "--fail"],
        acquire_attempts=1,
        respawn=tether.Backoff(0.01, jitter="none"),
    )
    try:
        with pytest.raises(tether.PoolExhausted) as info:
            await pool.acquire(timeout=30)
    finally:
        await pool.aclose()
    same = [r for r in tether_logs.records if str(info.value) in r.getMessage()]
    assert [r.levelname for r in same] == ["DEBUG"], [(r.levelname, r.getMessage()) for r in same]


async def test_double_release_of_a_worker_raises():
    pool = tether.ProcPool(command=WORKER, num_idle=1, initialize_timeout=20)
    p = await pool.acquire(timeout=30)
    pool.release(p)
    with pytest.raises(ValueError, match="not acquired from this pool"):
        pool.release(p)
    a = await pool.acquire(timeout=30)
    b = await pool.acquire(timeout=30)
    assert a.pid != b.pid  # the same pid is never lent twice
    pool.release(a, kill=True)
    pool.release(b, kill=True)
    await pool.aclose()


async def test_release_of_a_worker_into_another_pool_raises():
    mine = tether.ProcPool(command=WORKER, num_idle=0, initialize_timeout=20)
    other = tether.ProcPool(command=WORKER, num_idle=0, initialize_timeout=20)
    p = await mine.acquire(timeout=30)
    with pytest.raises(ValueError):
        other.release(p)
    await other.aclose()
    assert p.is_alive() and await p.request(b"x", timeout=10) == b"x"  # other's aclose did not kill it
    mine.release(p, kill=True)
    await mine.aclose()


async def test_a_spawn_failure_costs_an_attempt_only_of_its_own_waiter():
    n = 0

    async def spawn():
        nonlocal n
        n += 1
        await asyncio.sleep(10 * MS)
        if n % 2 == 1:
            raise RuntimeError(f"spawn {n} failed")
        return object()

    pool = tether.ProcPool(spawn=spawn, num_idle=0, acquire_attempts=3, respawn=tether.Backoff(0.01, jitter="none"))
    got = await asyncio.gather(*(pool.acquire(timeout=60) for _ in range(10)), return_exceptions=True)
    failed = [g for g in got if isinstance(g, BaseException)]
    assert failed == []
    assert len({id(g) for g in got}) == 10
    await pool.aclose()


async def test_an_acquire_error_lists_only_failures_since_it_started():
    phase = "early"

    async def spawn():
        raise RuntimeError(f"{phase} failure")

    pool = tether.ProcPool(spawn=spawn, num_idle=1, acquire_attempts=2, respawn=respawn())
    events = pool.events()
    pool.start()
    seen = 0
    while seen < 3:
        e = await asyncio.wait_for(events.__anext__(), 10)
        seen += type(e).__name__ == "SpawnFailed"
    phase = "late"
    with pytest.raises(tether.PoolExhausted) as info:
        await pool.acquire(timeout=60)
    assert info.value.failures and all("late" in f for f in info.value.failures), info.value.failures
    with pytest.raises(tether.TimeoutError) as timed_out:
        phase = "later"
        await pool.acquire(timeout=0.01)
    assert "early" not in str(timed_out.value) and "late failure" not in str(timed_out.value)
    await pool.aclose()


async def test_idle_never_exceeds_num_idle_after_cancelled_waiters():
    made = []

    class Proc:
        closed = False

        async def aclose(self):
            self.closed = True

    async def spawn():
        await asyncio.sleep(300 * MS)
        p = Proc()
        made.append(p)
        return p

    pool = tether.ProcPool(spawn=spawn, num_idle=1, max_concurrent_spawns=4)
    waiters = [asyncio.ensure_future(pool.acquire()) for _ in range(4)]
    await eventually(lambda: pool.stats()["in_flight"] == 4, what="a spawn for each waiter")
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await eventually(lambda: len(made) >= 4 and pool.stats()["in_flight"] == 0, what="every spawn finished")
    await asyncio.sleep(100 * MS)  # room for a surplus disposal that must not be undone
    assert pool.stats()["idle"] <= 1
    assert len([p for p in made if not p.closed]) == pool.stats()["idle"]  # the rest were disposed
    await pool.aclose()


def test_a_pool_left_open_when_its_loop_closes_stops_spawning():
    async def spawn():
        raise OSError("cannot fork")

    async def main():
        pool = tether.ProcPool(spawn=spawn, num_idle=1, respawn=tether.Backoff(0.02, max_delay=0.05, jitter="none"))
        pool.start()
        await asyncio.sleep(200 * MS)  # spawns fail and are retried while the loop runs
        return pool  # never closed

    pool = asyncio.run(main())
    end = time.monotonic() + 10
    while not pool.stats()["closed"] and time.monotonic() < end:
        time.sleep(50 * MS)  # no event loop any more to wait on
    assert pool.stats()["closed"]
    spawns = pool.stats()["spawns"]
    time.sleep(500 * MS)  # ten backoffs' time: a pool still retrying would spawn again
    assert pool.stats()["spawns"] == spawns  # not retrying forever in the background

"""ProcPool's child processes, with real subprocesses: they die with the program that owns the pool
(a normal exit without aclose(), or SIGKILL), a request that times out or is cancelled kills its worker
(a late reply never answers the next request), and a worker that fails to start is named with its
stderr tail."""

import asyncio
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import tether
from support import MS, eventually, running

WORKER = [sys.executable, "-m", "tether.worker"]


def all_gone(pids, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(running(p) for p in pids):
            return True
        time.sleep(50 * MS)
    return False


CHILD_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import tether

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[1].split()[0] != "Z"
        except OSError:
            return False

    def children():
        # a surplus idle process the pool disposed of is killed and reaped in the background:
        # it is no longer the pool's, so it is not one of the pids the parent's death must take along
        out = set()
        for t in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{t}/children") as f:
                out |= {int(x) for x in f.read().split()}
        return {p for p in out if alive(p)}

    async def spawn():
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(600)",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def main():
        if sys.argv[1] == "spawn":
            pool = tether.ProcPool(spawn=spawn, num_idle=2, max_concurrent_spawns=2)
        else:
            pool = tether.ProcPool(command=[sys.executable, "-m", "tether.worker"], num_idle=2,
                                   max_concurrent_spawns=2, initialize_timeout=30)
        lent = await pool.acquire(timeout=60)
        pool.release(await pool.acquire(timeout=60))  # back to idle
        for _ in range(600):  # let the refill finish: a spawn still inside user code is not the pool's yet
            st = pool.stats()
            if st["in_flight"] == 0 and st["idle"] == 2 and len(children()) == 3:
                break
            await asyncio.sleep(0.05)
        assert lent.pid in children()
        print(" ".join(str(p) for p in sorted(children())), flush=True)
        if sys.argv[1] == "hang":
            time.sleep(3600)
        # normal exit: no release, no aclose

    asyncio.run(main())
    """
)


def _start(mode):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("mode", ["exit", "spawn"])
def test_children_die_when_the_program_exits_without_aclose(mode):
    proc = _start(mode)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    pids = [int(p) for p in out.split()]
    assert len(pids) >= 2
    assert all_gone(pids), [p for p in pids if running(p)]


def test_children_die_when_the_parent_is_sigkilled():
    proc = _start("hang")
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) >= 2, proc.stderr.read() if proc.poll() is not None else line
        assert all(running(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert all_gone(pids), [p for p in pids if running(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


async def test_a_timed_out_request_kills_the_worker():
    pool = tether.ProcPool(command=[*WORKER, "--delay", "0.5"], num_idle=0, initialize_timeout=20)
    p = await pool.acquire(timeout=30)
    with pytest.raises(tether.TimeoutError, match="killed"):
        await p.request(b"one", timeout=0.1)
    # the late reply to "one" must never answer "two"
    with pytest.raises(tether.TetherError):
        await p.request(b"two", timeout=5)
    assert not p.is_alive()
    pid = p.pid
    pool.release(p)
    q = await pool.acquire(timeout=30)
    assert q.pid != pid
    assert await q.request(b"three", timeout=10) == b"three"
    pool.release(q, kill=True)
    await pool.aclose()


async def test_a_cancelled_request_kills_the_worker():
    pool = tether.ProcPool(command=[*WORKER, "--delay", "0.5"], num_idle=1, initialize_timeout=20)
    p = await pool.acquire(timeout=30)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(p.request(b"one"), 0.1)
    await eventually(lambda: not p.is_alive(), what="the worker killed")
    pool.release(p)  # back to the pool: disposed, never handed out again
    q = await pool.acquire(timeout=30)
    assert q.pid != p.pid and await q.request(b"two", timeout=10) == b"two"
    await pool.aclose()


async def test_text_instead_of_the_ready_frame_is_named_with_the_stderr_tail():
    script = (
        "import sys, time; sys.stderr.write('config loaded\\n'); sys.stderr.flush(); "
        "print('hello, I am the worker', flush=True); time.sleep(60)"
    )
    pool = tether.ProcPool(
        command=[sys.executable, "-c", script], num_idle=0, acquire_attempts=1, initialize_timeout=20
    )
    with pytest.raises(tether.PoolExhausted) as info:
        await pool.acquire(timeout=30)
    text = str(info.value)
    assert "hello, I am the worker" in text and "instead of the ready frame" in text, text
    assert "config loaded" in text and "SIGKILL" not in text and "signal" not in text, text
    await pool.aclose()


async def test_initialize_timeout_kill_reports_the_stderr_tail():
    script = "import sys, time; print('loading model weights', file=sys.stderr, flush=True); time.sleep(60)"
    pool = tether.ProcPool(command=[sys.executable, "-c", script], num_idle=0, acquire_attempts=1, initialize_timeout=1)
    with pytest.raises(tether.PoolExhausted) as info:
        await pool.acquire(timeout=30)
    assert "within 1.0s" in str(info.value) and "loading model weights" in str(info.value), str(info.value)
    await pool.aclose()

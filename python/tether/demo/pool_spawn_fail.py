"""Every worker process fails to initialize (a broken prewarm, a missing env var, an
ImportError). launch_job used to hang forever on the warm queue. acquire raises PoolExhausted within
its attempt budget, naming each failure's cause with the child's stderr."""

from __future__ import annotations

import sys

import tether

TITLE = "every spawn fails: acquire raises PoolExhausted naming the causes (no hang)"


async def run(tl):
    pool = tether.ProcPool(
        command=[sys.executable, "-m", "tether.worker", "--fail"],
        num_idle=2,
        max_concurrent_spawns=2,
        acquire_attempts=3,
        initialize_timeout=10,
        respawn=tether.Backoff(0.05, 2, max_delay=0.2, jitter="none"),
    )
    w = tl.watch(pool, lane="pool")
    tl.fault("the worker module cannot be imported: every child exits during initialization")
    try:
        await pool.acquire(timeout=30)
    except tether.PoolExhausted as e:
        tl.detected(f"PoolExhausted after {e.attempts} attempts; first cause: {e.failures[0]}")
        assert "agent_plugins" in e.failures[0] and e.attempts == 3
    else:
        raise AssertionError("expected PoolExhausted")
    finally:
        tl.note(f"healthy={pool.healthy}, spawns so far: {pool.stats()['spawns']}")
        await pool.aclose()
        await w

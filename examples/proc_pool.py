"""On tether.ProcPool: a livekit-like job launcher whose acquire never hangs.

The pool prewarms job processes (`python -m tether.worker`-style children that load their models, then
signal ready). launch_job acquires a warm one, runs the job over length-prefixed frames, and gives it
back killed (job processes are single-use). If the worker cannot start at all, acquire raises
tether.PoolExhausted naming every failure's cause (with the child's stderr) instead of hanging.

Run: .venv/bin/python examples/proc_pool.py
"""

from __future__ import annotations

import asyncio
import logging
import sys

import tether

JOB_WORKER = [sys.executable, "-m", "tether.worker"]  # your worker: `from tether import worker; worker.serve(handler)`


class JobLauncher:
    def __init__(self, command: list[str]) -> None:
        self.pool = tether.ProcPool(
            command=command,
            num_idle=2,
            max_concurrent_spawns=2,
            initialize_timeout=10.0,
            acquire_attempts=3,
            respawn=tether.Backoff(0.5, 2, max_delay=10, jitter="equal"),
        )

    async def launch_job(self, payload: bytes) -> bytes:
        proc = await self.pool.acquire(timeout=30)
        try:
            return await proc.request(payload, timeout=60)
        finally:
            self.pool.release(proc, kill=True)  # single-use job process: killed and reaped

    async def aclose(self) -> None:
        await self.pool.aclose()


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s")
    tether.sync_log_level()
    launcher = JobLauncher(JOB_WORKER)
    launcher.pool.start()
    print("job result:", await launcher.launch_job(b"room=demo job=1"))
    print("pool:", launcher.pool.stats())
    await launcher.aclose()

    broken = JobLauncher([*JOB_WORKER, "--fail"])
    try:
        await broken.launch_job(b"job=2")
    except tether.PoolExhausted as e:
        print("PoolExhausted:", e)
    await broken.aclose()


if __name__ == "__main__":
    asyncio.run(main())

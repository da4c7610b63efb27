"""A crash-looping child must not spin the CPU: respawns follow the backoff, `healthy` turns false,
and the pool recovers by itself once the child is fixed."""

from __future__ import annotations

import asyncio
import sys

import tether

from ._ws import until, watch

TITLE = "crash loop: paced respawns, healthy flips false, recovers when the child is fixed"


async def run(tl):
    broken = {"on": True}

    async def spawn():
        argv = (
            [sys.executable, "-c", "import sys; sys.exit(1)"]
            if broken["on"]
            else [sys.executable, "-m", "tether.worker"]
        )
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        try:
            # the frame may arrive in pieces: read all 9 bytes, not whatever the first read returns
            assert proc.stdout is not None  # stdout=PIPE
            head = await proc.stdout.readexactly(9)
        except asyncio.IncompleteReadError:
            head = b""
        except asyncio.CancelledError:
            # the pool closing (or initialize_timeout): the child is still this spawn's to end
            proc.kill()
            await proc.wait()
            raise
        if head != b"\x00\x00\x00\x05ready":
            # its stdout ended: it is exiting, so wait for that. A kill now would reap it on Python
            # 3.11 (Popen.send_signal polls first), and asyncio's child watcher would report 255
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
            raise RuntimeError(f"child exited with {proc.returncode} during initialization")
        return proc

    pool = tether.ProcPool(spawn=spawn, num_idle=1, respawn=tether.Backoff(0.1, 2, max_delay=0.4, jitter="none"))
    w = watch(pool, tl, lane="pool")  # healthy=False is the detection, healthy=True the recovery
    tl.fault("the child crashes at start-up, every time")
    pool.start()
    await asyncio.sleep(1.5)
    spawns = pool.stats()["spawns"]
    tl.note(f"{spawns} spawns in 1.5 s (paced by the backoff, not a spin)")
    assert spawns <= 8
    await until(lambda: not pool.healthy, timeout=30)  # two failures in a row (later on a loaded box)
    broken["on"] = False
    tl.mark("fix", "the child is fixed")
    # by itself: the pool respawns for its idle target. A spawn begun before the fix still fails, and
    # an acquire waiting on an unhealthy pool would end with that failure, so the recovery comes first
    await until(lambda: pool.healthy, timeout=30)
    proc = await pool.acquire(timeout=10)
    pool.release(proc, kill=True)
    await pool.aclose()
    await asyncio.wait_for(w, 5)

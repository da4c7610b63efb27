"""A process forked from one that runs a ProcPool (a gunicorn-style worker, any os.fork() child that exits
through sys.exit, so atexit runs) leaves its parent's pool workers alone when it exits. It inherits the
process-wide lists of pools and children (src/procpool), and tether's atexit hook killed every process in
them, its parent's; the lists now note the process that owns each entry."""

import subprocess
import sys
import textwrap

CODE = textwrap.dedent(
    """
    import asyncio, atexit, os, sys, time
    import tether

    async def main():
        pool = tether.ProcPool(command=[sys.executable, "-m", "tether.worker"], num_idle=1,
                               initialize_timeout=30)
        proc = await pool.acquire(timeout=60)
        pid = os.fork()
        if pid == 0:
            # the child ends as a normal exit does, its atexit handlers run (tether's among them); not
            # by sys.exit here: a SystemExit in the running loop the fork inherited hangs it on 3.14
            atexit._run_exitfuncs()
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.5)
        ok = proc.is_alive()  # waitpid: a worker the child killed is reaped here
        print("worker alive after the forked child exited:", ok, flush=True)
        await pool.aclose()
        sys.exit(0 if ok else 3)

    asyncio.run(main())
    """
)


def test_a_forked_child_exiting_does_not_kill_the_parents_pool_workers():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

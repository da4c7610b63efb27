"""Frameworks fork worker processes: a child must get a working tether even if the parent used it."""

import subprocess
import sys
import textwrap

CODE = textwrap.dedent(
    """
    import asyncio, os, sys
    import tether
    from tether.testing import SignalServer

    async def use():
        async with SignalServer() as srv:
            async with tether.connect(srv.url) as c:
                await c.send("x")
                assert await c.recv() == "x"
        r = tether.Reconnector(tether.Backoff(0.01))
        async def ok():
            return 7
        assert await r.run(ok) == 7

    asyncio.run(use())  # the parent starts tether's runtime
    pid = os.fork()
    if pid == 0:
        try:
            asyncio.run(asyncio.wait_for(use(), 15))
        except BaseException as e:
            print("child failed:", repr(e), flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_child_after_fork_has_a_working_runtime():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

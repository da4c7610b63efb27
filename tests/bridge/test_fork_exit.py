"""A process forked while one of tether's tokio threads is attached to Python (here handling a log record,
which any handler doing I/O makes last) exits at once. It used to inherit the count of attaches in progress
(`ATTACHING`, src/py/mod.rs), attaches of a thread that does not exist in the child, and its atexit hook
`_at_exit` waited the full 2 s for them on every exit (a gunicorn-style worker that ends with sys.exit, a
test runner's forked child). A fork handler now resets the count in the child."""

import subprocess
import sys
import textwrap

CODE = textwrap.dedent(
    """
    import logging, os, sys, threading, time
    import tether

    in_handler = threading.Event()

    class SlowIO(logging.Handler):
        def emit(self, record):
            in_handler.set()
            time.sleep(1.5)  # a handler doing I/O, on tether's tokio thread

    logging.getLogger("tether").addHandler(SlowIO())
    logging.getLogger("tether").setLevel(logging.WARNING)
    tether.sync_log_level()
    wd = tether.Watchdog("fork-exit")
    wd.liveness("k", 0.01)  # its WARNING is logged from the tokio thread
    assert in_handler.wait(30)
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # normal exit: atexit runs
    t = time.monotonic()
    os.waitpid(pid, 0)
    took = time.monotonic() - t
    print(f"child exit took {took:.2f}s", flush=True)
    sys.exit(0 if took < 1.5 else 3)
    """
)


def test_a_child_forked_while_a_tokio_thread_logs_exits_without_a_stall():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

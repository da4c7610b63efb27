"""`python -m tether demo` as a user runs it: five runs in a row, each exits 0 with every scenario ok
and nothing on stderr about an unclosed event loop or transport."""

import os
import re
import subprocess
import sys

import pytest

RUNS = 5
BAD_STDERR = re.compile(r"Event loop is closed|Exception ignored|unclosed|ResourceWarning|Traceback", re.I)


def summary(stdout: str) -> dict[str, str]:
    """{scenario: result} from the summary table."""
    tail = stdout.split("== summary", 1)[1].splitlines()[2:]
    return {cols[0]: cols[1] for cols in (line.split() for line in tail) if len(cols) >= 2}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("run", range(RUNS))
def test_demo_passes_every_time(run):
    # unbuffered stdio (common in containers) makes every write a syscall: frames arrive in pieces
    env = {**os.environ, "PYTHONWARNINGS": "default::ResourceWarning", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "demo"], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = summary(proc.stdout)
    names = subprocess.run(
        [sys.executable, "-m", "tether", "demo", "--list"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert sorted(results) == sorted(names)
    assert {n: r for n, r in results.items() if r != "ok"} == {}
    bad = [line for line in proc.stderr.splitlines() if BAD_STDERR.search(line)]
    assert bad == []

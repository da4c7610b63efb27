"""tether.integrations.livekit against one release per supported minor besides the one installed in the
venv (tested in-process by test_agent_server.py): each is installed aside in .venv/livekit-agents-VERSION
by the Makefile and runs `lk_scenarios.py suite` in its own subprocess, all of them at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# the releases aside run on the venv's livekit (rtc, protocol, api): without it they cannot run either
pytest.importorskip("livekit.protocol", reason="livekit (protocol) is not installed")
from lk_scenarios import check_scrape

HERE = Path(__file__).parent
ASIDE = sorted((HERE.parents[2] / ".venv").glob("livekit-agents-*"))
SUITE_TIMEOUT = 400

pytestmark = pytest.mark.skipif(
    not ASIDE, reason="no livekit-agents release in .venv/livekit-agents-* (make test installs them there)"
)


@pytest.fixture(scope="module")
def suites():
    """Start every release's suite at once; results are read by the tests that need them."""
    procs = {}
    for path in ASIDE:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
        procs[path.name.removeprefix("livekit-agents-")] = subprocess.Popen(
            [sys.executable, str(HERE / "lk_scenarios.py"), "suite"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=SUITE_TIMEOUT)
            results[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return results


def result(suites, name: str) -> dict:
    code, out, err = suites[name]
    assert code == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(SUITE_TIMEOUT + 60)
@pytest.mark.parametrize("name", [p.name.removeprefix("livekit-agents-") for p in ASIDE])
def test_release(suites, name):
    r = result(suites, name)
    assert r["version"] == name, r["version"]
    # every part fits its declared range: nothing refused on a supported release
    assert r["patched"] == ["control_plane", "proc_pool", "metrics"] and r["refused"] == {}, r
    # tether's series in the worker's /metrics, next to livekit's (2.x: the native worker reconnects by
    # itself, so tether sees the registrations, not the losses in between)
    check_scrape(r["metrics"], reconnects=name.startswith("1."))
    if name.startswith("1."):
        a = r["accept_drop"]
        # as shipped thousands of connections at 0 s; with tether: quiet retry, then >= 0.5, 1, 2, 4 s
        assert 2 <= a["connections"] <= 5, a
        assert a["retry_levels"][0] == "DEBUG" and set(a["retry_levels"][1:]) == {"WARNING"}, a
        # the wrapper another library put on the connection task before install() runs
        assert a["instrumented_runs"] == 1, a
    else:
        c = r["recycle"]
        # as shipped the native worker dies after max_retry + 1 registrations (~14 s); supervised it
        # is started again after each run that registered and lasted stable_after
        assert c["outcome"] == "running" and c["registrations"] >= 6, c
        assert c["retry_levels"][0] == "DEBUG", c
        # the wrapper another library put on the connection task before install() runs on every start
        # of the native worker; livekit's own decorator's "Error in _connection_task" with its traceback
        # is dropped for a run that is started again
        assert c["instrumented_runs"] >= 2, c
        assert not [e for e in c["errors"] if e.startswith("Error in _connection_task")], c
    m = r["max_retry"]
    # the first attempt and max_retry=2 retries, then the shipped error (2.x: a worker that never
    # registered is not started again, its native loop spent the budget)
    assert m["connections"] == 3, m
    # from 1.6 run() ends with the loop's error; 1.5's run() goes on (its health check answers 503)
    assert m["outcome"].startswith("RuntimeError:") or name.startswith("1.5."), m
    if name.startswith("1."):
        assert any("gave up on livekit" in e for e in m["errors"]), m
    else:
        # never registered: the run ends as shipped, logged by livekit's own decorator
        assert any(e.startswith("Error in _connection_task") for e in m["errors"]), m
    assert m["instrumented_runs"] == 1, m
    p = r["prewarm_fails"]
    assert p["job_error_type"] == "PoolExhausted", p
    assert "prewarm failed: model file /models/vad.onnx not found" in p["job_error"], p
    assert p["spawns"] <= 2 + p["seconds"] / 1.5 and p["spawns_after_job"] <= 2, p
    h = r["healthy"]
    assert h["registered_after"] is not None and h["job_error"] is None, h
    # livekit's event-loop lag monitor may warn on a loaded box; 2.0's native worker warns, as shipped,
    # on the status of the simulated job (it was not assigned through the control plane)
    expected = ("event loop blocked", "job status for a job this worker does not have")
    assert [w for w in h["warnings"] if not w.startswith(expected)] == [], h

"""tether.integrations.pipecat against the real pipecat-ai WebsocketService (installed aside by the
Makefile, with only the modules websocket_service imports), each scenario in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PIPECAT = next(iter(sorted((HERE.parents[2] / ".venv").glob("pipecat-*"))), None)

pytestmark = pytest.mark.skipif(
    PIPECAT is None, reason="pipecat-ai not installed in .venv/pipecat-* (make test installs it there)"
)


def scenario(name: str, *flags: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PIPECAT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, str(HERE / "pc_scenarios.py"), name, *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_blip_reconnects_quietly():
    r = scenario("blip", "--tether")
    assert r["recovered_after"] is not None and not r["loop_ended"], r
    assert r["warnings_or_worse"] == 0, r  # shipped: 4 WARNINGs for a blip that heals at once


def test_outage_longer_than_pipecats_budget_is_survived():
    # shipped: 3 attempts 4 s apart, then a permanent error: the service is dead after ~8-12 s
    r = scenario("outage", "--tether")
    assert r["recovered_after"] is not None and not r["permanent_error"], r


def test_accept_then_drop_gives_up_as_permanent():
    r = scenario("accept_drop", "--tether")
    assert r["loop_ended"] and r["permanent_error"], r
    assert any("gave up reconnecting" in e for e in r["errors"]), r


def test_renamed_private_method_refuses():
    r = scenario("drift")
    assert r["patched"] == [] and r["untouched"], r
    assert "WebsocketService._verify_connection" in r["refused"]["websocket_service"], r
    assert any("not patching websocket_service" in w for w in r["warnings"]), r


def test_receive_loop_changed_inside_is_refused():
    r = scenario("edited")
    assert r["patched"] == [] and r["untouched"], r
    assert r["kinds"] == {"websocket_service": "changed_code"}, r
    # the same source compiled again is patched: the refusal is the edit's
    assert scenario("recompiled")["patched"] == ["websocket_service"]

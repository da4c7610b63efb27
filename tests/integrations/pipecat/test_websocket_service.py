"""tether.integrations.pipecat against the real pipecat-ai WebsocketService (installed aside by the
Makefile, with only the modules websocket_service imports), each scenario in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import each_release

HERE = Path(__file__).parent
PIPECAT = next(iter(sorted((HERE.parents[2] / ".venv").glob("pipecat-*"))), None)

pytestmark = pytest.mark.skipif(
    PIPECAT is None, reason="pipecat-ai not installed in .venv/pipecat-* (make test installs it there)"
)


# the latest of each older minor of the part's range (Makefile: PIPECAT_OLD), on the dependencies of PIPECAT's
OLDER = sorted((HERE.parents[2] / ".venv").glob("older-pipecat-*"))
FAULTS = ("blip", "outage", "accept_drop")


def scenario(name: str, *flags: str, release: Path | None = None) -> dict:
    paths = [str(release)] if release else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(PIPECAT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, str(HERE / "pc_scenarios.py"), name, *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(fault: str, r: dict) -> None:
    """What tether makes of each fault, on any release of the range."""
    if fault == "blip":
        assert r["recovered_after"] is not None and not r["loop_ended"], r
        assert r["warnings_or_worse"] == 0, r  # shipped: 4 WARNINGs for a blip that heals at once
    elif fault == "outage":
        # shipped: 3 attempts 4 s apart, then a permanent error: the service is dead after ~8-12 s
        assert r["recovered_after"] is not None and not r["permanent_error"], r
    else:
        assert r["loop_ended"] and r["permanent_error"], r
        assert any("gave up reconnecting" in e for e in r["errors"]), r


def test_blip_reconnects_quietly():
    check("blip", scenario("blip", "--tether"))


def test_outage_longer_than_pipecats_budget_is_survived():
    check("outage", scenario("outage", "--tether"))


def test_accept_then_drop_gives_up_as_permanent():
    check("accept_drop", scenario("accept_drop", "--tether"))


@pytest.mark.timeout(300)
def test_every_fault_on_uvloop():
    """pipecat applications run on uvloop too (its OpenAI services work around uvloop's async generator
    finalizer): the three faults there, all at once, with the same outcomes."""
    pytest.importorskip("uvloop")
    assert PIPECAT is not None
    runs = each_release([PIPECAT], FAULTS, lambda _, f: scenario(f, "--tether", "--uvloop"), at_once=len(FAULTS))
    for fault in FAULTS:
        r = runs[(PIPECAT.name, fault)]
        assert r["loop"].startswith("uvloop"), r
        check(fault, r)


@pytest.fixture(scope="module")
def older_runs() -> dict[tuple[str, str], dict]:
    """Every fault on every older release, all at once (each mostly waits on its outage)."""
    return each_release(
        OLDER, FAULTS, lambda p, f: scenario(f, "--tether", release=p), at_once=len(OLDER) * len(FAULTS)
    )


@pytest.mark.skipif(not OLDER, reason="no older pipecat-ai in .venv/older-pipecat-* (make test installs them there)")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("release", [p.name.removeprefix("older-pipecat-") for p in OLDER])
def test_older_release(older_runs, release, fault):
    r = older_runs[(f"older-pipecat-{release}", fault)]
    assert r["version"] == release, r
    check(fault, r)


def test_a_send_during_a_reconnect_opens_no_second_socket():
    """pipecat's ``send_with_retry`` reconnects by itself unless ``_reconnect_in_progress`` says one is
    under way. Before, tether's loop never set the flag: a sender and the loop each opened a socket, and
    one stayed open at the provider, unread and never closed (without tether: one socket)."""
    assert scenario("send_during_reconnect")["open_on_server"] == 1  # pipecat as shipped
    r = scenario("send_during_reconnect", "--tether")
    assert r == {"open_on_server": 1, "open_after_disconnect": 0}, r


def test_a_reconnect_a_sender_finished_first_is_kept():
    """The sender's ``send_with_retry`` reconnected and re-sent before the loop's first retry was due.
    Before, the loop closed that socket (the message's) and opened a third."""
    r = scenario("sender_reconnects_first", "--tether")
    assert r == {"connections": 2, "kept": True}, r


def test_the_services_own_reconnect_hook_runs():
    """Services override ``_reconnect_websocket`` to reset per-connection state (1.14's TTS services close
    their audio contexts). Before, tether's loop reconnected around it: the hook never ran."""
    assert scenario("reconnect_hook")["hook_calls"] == 1  # pipecat as shipped
    r = scenario("reconnect_hook", "--tether")
    assert r == {"connections": 2, "hook_calls": 1}, r


def test_a_provider_that_never_confirms_runs_out_of_attempts():
    """pipecat 1.14's services that wait for a confirmation message count an unconfirmed connection as a
    quick failure. Before, tether counted it as connected: one that waited past ``stable_after`` reset
    the budget, and the service reconnected for ever with no permanent error."""
    r = scenario("never_confirmed", "--tether")
    assert r["loop_ended"] and r["permanent_error"], r
    assert r["connections"] <= 4, r  # the first connection and 3 retries


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

"""tether.integrations.getstream on getstream 7 (signaling in Rust, getstream-rtc): part ``call_watch``.

getstream 7.0.0 is installed aside (.venv/getstream7-7.0.0, by the Makefile) because the main test venv
pins 6.1.1 for the signaling part, so each test runs gs7_scenarios.py in a subprocess: 7.0's own
ConnectionManager joins a fake coordinator and SFU (tests/support/fake_stream7.py, real sockets on loopback) with the
SFU behind tether's ChaosProxy. The watch runs with short deadlines there (``--fast``); the 25 s black
hole of the README is `gs7_scenarios.py blackhole [--tether]`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import installed_version

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
GS7 = next(iter(sorted((ROOT / ".venv").glob("getstream7-*"))), None)


# getstream 7 is installed aside without its dependencies: it runs on those getstream[webrtc] 6.x brought
# into the venv (aiohttp among them, which the scenarios' fake server uses too)
needs_gs7 = pytest.mark.skipif(
    GS7 is None or installed_version("getstream") is None or installed_version("aiohttp") is None,
    reason="getstream 7 is not installed in .venv/getstream7-*, or the venv lacks getstream[webrtc] 6.x, whose "
    "dependencies it runs on (make test installs both)",
)


def scenario(*args: str, timeout: float = 120) -> dict:
    assert GS7 is not None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(GS7), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, str(HERE / "gs7_scenarios.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_gs7
def test_install_wraps_undoes_and_refuses_with_a_warning():
    r = scenario("install")
    assert r["patched"] == [["call_watch"], ["call_watch"]]  # idempotent
    assert r["wrapped"] and r["restored"]  # each wrapper calls the original; uninstall puts it back
    assert r["untested"]["patched"] == [] and "outside the tested range" in r["untested"]["refused"]["call_watch"]
    assert r["untested_allowed"]["patched"] == ["call_watch"]
    assert r["missing_name"]["patched"] == [] and r["missing_name_untouched"]
    assert "ParticipantsState._replace_participants" in r["missing_name"]["refused"]["call_watch"]
    # each refusal is one WARNING; the signaling part (gone since 7) is not about this release line at all
    assert sum("not patching call_watch" in w for w in r["warnings"]) == 2, r["warnings"]
    assert not any("signaling" in w for w in r["warnings"]), r["warnings"]
    assert "signaling" not in r["untested"]["refused"] and "signaling" not in r["missing_name"]["refused"]
    assert "ConnectionManager, not object" in r["watch_call_bad_input"]


@needs_gs7
def test_as_shipped_a_black_hole_goes_unnoticed():
    r = scenario("blackhole", "--hole", "6", "--settle", "3")
    assert not r["watched"]
    assert r["states_after_fault"] == [] and r["state"] == "JOINED"  # never left JOINED
    assert r["sfu_joins"] == [0]  # 7.0's own reconnect never started
    assert r["levels_during_fault"] == 0  # while nothing arrived: the ghost call


@needs_gs7
def test_black_hole_is_detected_and_the_call_joined_again():
    # the short deadlines given to install(), which attaches the watch when the call joins
    r = scenario("blackhole", "--fast-install", "--publish", "--hole", "6", "--settle", "6")
    assert r["alarms"] == [["liveness", "remote media"]], r
    # the alarm's one WARNING, under the manager's logger; before, there was none (the watchdog's record
    # is DEBUG when it has an on_alarm handler, and the watch's handler logged nothing)
    assert r["alarm_warnings"] == 1 and r["detected"] < 6, r
    # a new session (a join cut short during the black hole can reach the SFU at the heal too)
    assert r["rejoins"] == 1 and r["state"] == "JOINED" and r["sfu_joins"][:2] == [0, 0]
    assert r["rejoined"] is not None and not r["joined_during_fault"]
    assert r["levels_after"] > 0  # events reach the application again
    assert r["publishes_after_fault"] == 1  # the audio track added before is published again
    assert not r["wait_returned"] and r["call_ended"] == 0  # the application's wait() went on
    assert r["wait_returned_after_leave"] and "wait_raised" not in r
    assert r["secrets_in_logs"] == [] and r["log_records"] > 0


@needs_gs7
def test_an_on_alarm_that_raises_does_not_stop_the_rejoin():
    """The application's callback is a side channel. Before, its exception escaped the watch's handler
    before the rejoin began: the ghost call stayed joined and deaf."""
    r = scenario("blackhole", "--fast-install", "--raising-on-alarm", "--hole", "6", "--settle", "6")
    assert r["alarms"] == [["liveness", "remote media"]], r
    assert r["rejoins"] == 1 and r["state"] == "JOINED" and r["sfu_joins"][:2] == [0, 0], r


@needs_gs7
def test_stuck_reconnecting_alarms_and_joins_again():
    # a reset makes 7.0 reconnect; the black hole holds its reconnect, which has no deadline
    r = scenario("stuck", "--fast", "--hole", "6", "--settle", "6")
    assert r["states_after_fault"][0][1] == "RECONNECTING"
    assert r["alarms"] == [["dwell", "reconnecting"]], r
    assert r["rejoins"] == 1 and r["state"] == "JOINED" and r["levels_after"] > 0
    assert not r["wait_returned"]


@needs_gs7
def test_a_tcp_reset_is_left_to_the_sdk():
    r = scenario("reset", "--fast", "--settle", "5")
    assert r["alarms"] == [] and r["rejoins"] == 0
    assert r["sfu_joins"][0] == 0 and r["sfu_joins"][1] in (2, 3)  # 7.0's own FAST or REJOIN
    assert r["state"] == "JOINED" and r["levels_after"] > 0


@needs_gs7
def test_the_end_of_the_call_ends_the_watch():
    r = scenario("ended", "--fast", "--settle", "4")
    assert not r["watched"] and r["alarms"] == []
    assert r["call_ended"] == 1 and r["wait_returned"] and r["state"] == "LEFT"
    assert r["sfu_joins"] == [0]  # not joined again


@needs_gs7
def test_a_muted_remote_participant_is_not_a_dead_call():
    # nothing arrives after her track is unpublished, for longer than the media deadline
    r = scenario("muted", "--fast", "--settle", "5")
    assert r["alarms"] == [] and r["rejoins"] == 0 and r["sfu_joins"] == [0]
    assert r["state"] == "JOINED" and not r["wait_returned"]


@needs_gs7
def test_wait_raises_gave_up_when_the_rejoin_gives_up():
    r = scenario("giveup", "--fast", "--settle", "14")
    assert r["rejoins"] == 0 and r["state"] == "LEFT"
    assert r["wait_raised"] == "GaveUp"


# -- on getstream 3.3 to 6.x (the main test venv): the part refuses, never raises --------------------


def test_call_part_refuses_other_versions_with_a_warning(monkeypatch, caplog):
    if installed_version("getstream") is None:
        pytest.skip("getstream is not installed")
    from tether.integrations import _patch, getstream

    caplog.set_level(logging.WARNING, logger="tether.integrations")
    try:
        report = getstream.install()  # 6.1.1: the call part is for getstream 7, not a word about it here
        assert report.patched == ("signaling",) and "call_watch" not in report.refused, report
        getstream.uninstall()
        monkeypatch.setattr(_patch, "installed_version", lambda dist: "7.0.0")
        report = getstream.install()  # 7.0 without getstream-rtc: refused, not raised
        assert report.patched == () and "missing" in report.refused["call_watch"]
        getstream.uninstall()
        monkeypatch.setattr(_patch, "installed_version", lambda dist: "7.1.0")
        report = getstream.install()
        assert report.patched == () and "outside the tested range" in report.refused["call_watch"]
        getstream.uninstall()
        report = getstream.install(allow_untested=True)
        assert report.patched == () and "missing" in report.refused["call_watch"]
        assert "signaling" not in report.refused
    finally:
        getstream.uninstall()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("not patching call_watch" in w for w in warnings), warnings


def test_watch_call_names_why_it_cannot_watch(monkeypatch):
    if installed_version("getstream") is None:
        pytest.skip("getstream is not installed")
    from tether.integrations import getstream

    with pytest.raises(RuntimeError, match="it is for getstream 7"):
        getstream.watch_call(object())
    getstream.uninstall()

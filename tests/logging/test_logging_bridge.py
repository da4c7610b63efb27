import asyncio
import logging
import subprocess
import sys

import tether


async def test_records_reach_python_logging_with_extra(tether_logs):
    """A real record (a Watchdog alarm) reaches its tether.* logger with its fields as ``extra`` and the
    Rust file and line as its origin."""
    wd = tether.Watchdog("room")
    alarms = wd.alarms()
    wd.dwell("reconnecting", 0.05)
    wd.set_state("reconnecting")
    await asyncio.wait_for(alarms.__anext__(), 10)
    wd.close()
    recs = [r for r in tether_logs.records if r.name == "tether.watchdog"]
    assert len(recs) == 1
    rec = recs[0]
    assert rec.levelno == logging.WARNING and "reconnecting" in rec.getMessage()
    assert rec.watchdog == "room" and rec.kind == "dwell" and rec.key == "reconnecting"
    assert rec.limit_s == 0.05 and rec.elapsed_s >= 0.05
    assert rec.pathname.endswith("watchdog.rs") and rec.lineno > 0


def test_rust_side_filter_follows_logger_level(caplog):
    """Records below the synced threshold are dropped in Rust: a logger lowered without a sync gets
    nothing, although Python would accept the record; after ``sync_log_level()`` it does."""
    caplog.set_level(logging.WARNING, logger="tether")
    r = tether.Reconnector(tether.Backoff(0.05, jitter="none"), quiet_attempts=5, quiet_jitter=0, name="f")
    assert tether.sync_log_level() == logging.WARNING
    caplog.set_level(logging.DEBUG, logger="tether.reconnect")  # not synced yet
    try:
        r.failed(OSError("a"))  # a quiet retry: DEBUG
        assert not [x for x in caplog.records if x.name.startswith("tether")]
        assert tether.sync_log_level() == logging.DEBUG
        r.failed(OSError("b"))
        recs = [x for x in caplog.records if x.name == "tether.reconnect"]
        assert [(x.levelno, x.retry_count) for x in recs] == [(logging.DEBUG, 2)]
    finally:
        logging.getLogger("tether.reconnect").setLevel(logging.NOTSET)
        tether.sync_log_level()


def test_import_starts_no_threads():
    code = "import threading, tether; print(threading.active_count()); import os; print(len(os.listdir('/proc/self/task')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1"], out


def test_redact():
    s = tether.redact("wss://h/rtc?access_token=abc&x=1 token=zz")
    assert "abc" not in s and "zz" not in s and "x=1" in s


def test_exception_hierarchy():
    for cls in (tether.GaveUp, tether.PoolExhausted, tether.NotReady, tether.ConnectionClosed, tether.TimeoutError):
        assert issubclass(cls, tether.TetherError)
    assert issubclass(tether.TimeoutError, TimeoutError)

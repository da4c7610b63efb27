import logging
import subprocess
import sys

import tether
from tether import _native


def test_records_reach_python_logging_with_extra(tether_logs):
    _native._emit_test_log("warning", "hello from rust", 3)
    recs = [r for r in tether_logs.records if r.name == "tether.test"]
    assert len(recs) == 1
    assert recs[0].levelno == logging.WARNING and recs[0].getMessage() == "hello from rust"
    assert recs[0].retry_count == 3


def test_rust_side_filter_follows_logger_level(caplog):
    caplog.set_level(logging.WARNING, logger="tether")
    tether.sync_log_level()
    assert _native._log_level_rank() == 2  # warn
    _native._emit_test_log("debug", "dropped in rust", 1)
    assert not [r for r in caplog.records if r.name.startswith("tether")]
    caplog.set_level(logging.DEBUG, logger="tether.reconnect")
    assert tether.sync_log_level() == logging.DEBUG
    assert _native._log_level_rank() == 4


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

import logging
import subprocess
import sys

import pytest

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


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_logger_name_routes_an_objects_records_there(caplog):
    """logger= (issue 10): records of that object go to the framework's logger with the same extra
    fields; tether's own loggers get none of them; the framework's filters apply."""
    tether_logger = logging.getLogger("tether")
    saved = tether_logger.level
    tether_logger.setLevel(logging.WARNING)
    caplog.set_level(logging.DEBUG, logger="livekit.agents")
    try:
        r = tether.Reconnector(tether.Backoff(0.05, jitter="none"), name="livekit", logger="livekit.agents")
        assert _native._log_level_rank() == 4  # the framework logger's DEBUG is in the Rust-side filter
        r.failed(OSError("refused"))
        r.failed(OSError("refused"))
        recs = [x for x in caplog.records if x.name == "livekit.agents"]
        assert [x.levelno for x in recs] == [logging.DEBUG, logging.WARNING]
        assert [x.retry_count for x in recs] == [1, 2]
        assert recs[1].delay_s == 0.05 and recs[1].tether_name == "livekit" and recs[1].error == "OSError: refused"
        assert not hasattr(recs[0], "logger")  # the routing key is not an extra field
        assert not [x for x in caplog.records if x.name.startswith("tether")]

        # an existing filter on the framework logger keeps working (seed 000's workaround)
        class DemoteRetries(logging.Filter):
            def filter(self, record):
                return not record.getMessage().startswith("failed to connect")

        demote = DemoteRetries()
        logging.getLogger("livekit.agents").addFilter(demote)
        try:
            caplog.clear()
            r.failed(OSError("refused"))
            assert not caplog.records
        finally:
            logging.getLogger("livekit.agents").removeFilter(demote)
    finally:
        tether_logger.setLevel(saved)
        tether.sync_log_level()


def test_logger_object_and_rust_side_filter():
    lg = logging.Logger("standalone")  # not made by getLogger: routed by identity, not by name
    handler = ListHandler()
    lg.addHandler(handler)
    lg.setLevel(logging.WARNING)
    tether_logger = logging.getLogger("tether")
    saved = tether_logger.level
    tether_logger.setLevel(logging.WARNING)
    try:
        r = tether.Reconnector(tether.Backoff(0.05, jitter="none"), name="obj", logger=lg)
        assert tether.sync_log_level() == logging.WARNING
        assert _native._log_level_rank() == 2  # DEBUG records are dropped before reaching Python
        r.failed(OSError("a"))  # quiet: DEBUG, filtered in Rust
        r.failed(OSError("b"))  # WARNING
        assert [x.levelno for x in handler.records] == [logging.WARNING]
        assert handler.records[0].retry_count == 2 and handler.records[0].name == "standalone"
    finally:
        tether_logger.setLevel(saved)
        tether.sync_log_level()


@pytest.mark.parametrize("bad,exc", [(42, TypeError), (b"name", TypeError), ("", ValueError)])
def test_logger_argument_is_checked(bad, exc):
    with pytest.raises(exc):
        tether.Reconnector(logger=bad)

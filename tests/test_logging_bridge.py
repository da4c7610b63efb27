import asyncio
import logging
import subprocess
import sys

import pytest

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
        assert tether.sync_log_level() == logging.DEBUG  # the framework logger's DEBUG is in the Rust-side filter
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

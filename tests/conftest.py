import logging

import pytest

import tether


@pytest.fixture
def tether_logs(caplog):
    """Capture tether's records at DEBUG and push the level into the Rust-side filter."""
    caplog.set_level(logging.DEBUG, logger="tether")
    tether.sync_log_level()
    yield caplog
    logging.getLogger("tether").setLevel(logging.NOTSET)
    tether.sync_log_level()


def records(caplog, logger_prefix="tether"):
    return [r for r in caplog.records if r.name.startswith(logger_prefix)]


def returns_at_once(aw) -> bool:
    """Whether awaiting the native coroutine ``aw`` returns at its first step, with no waiting (it is
    used up either way: closed if it would wait)."""
    try:
        aw.send(None)
    except StopIteration:
        return True
    aw.close()
    return False

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

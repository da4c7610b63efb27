"""Keeps the Rust-side log filter in step with Python's ``logging`` configuration, and routes the
records of objects built with ``logger=`` to that logger.

Rust records below the threshold are dropped at the tracing callsite (no Python call, no formatting).
The threshold is the lowest effective level among the ``tether`` loggers and the loggers passed as
``logger=``; it is synced when the package is imported and whenever a tether object is created or
started. Call ``tether.sync_log_level()`` after changing logging levels while connections are running.
"""

from __future__ import annotations

import logging

from . import _native

# routing key -> logger, for every ``logger=`` given to a tether object (loggers live as long as the
# logging module, so holding them costs nothing)
_LOGGERS: dict[str, logging.Logger] = {}


def register_logger(logger: str | logging.Logger) -> str:
    """The key under which an object's records reach ``logger`` (a name or a ``logging.Logger``)."""
    if isinstance(logger, str):
        if not logger:
            raise ValueError("logger must be a non-empty logger name or a logging.Logger")
        key, lg = logger, logging.getLogger(logger)
    elif isinstance(logger, logging.Logger):
        lg = logger
        # a Logger made directly (not by getLogger) may share its name with a managed one
        managed = logging.Logger.manager.loggerDict.get(lg.name) is lg or lg is logging.getLogger()
        key = lg.name if managed else f"{lg.name}@{id(lg):x}"
    else:
        raise TypeError(f"logger must be a logger name (str) or a logging.Logger, not {type(logger).__name__}")
    _LOGGERS[key] = lg
    return key


def logger_for(key: str) -> logging.Logger:
    """The logger registered under ``key`` (used by the Rust bridge for each record it forwards)."""
    lg = _LOGGERS.get(key)
    return lg if lg is not None else logging.getLogger(key)


def sync_log_level() -> int:
    """Recompute the threshold from the ``tether`` hierarchy and the ``logger=`` loggers; returns it."""
    level = logging.getLogger("tether").getEffectiveLevel()
    manager = logging.Logger.manager
    for name, lg in list(manager.loggerDict.items()):
        if name.startswith("tether.") and isinstance(lg, logging.Logger):
            level = min(level, lg.getEffectiveLevel())
    for lg in list(_LOGGERS.values()):
        level = min(level, lg.getEffectiveLevel())
    _native._set_log_level(level)
    return level

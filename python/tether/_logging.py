"""Keeps the Rust-side log filter in step with Python's ``logging`` configuration, and routes the
records of objects built with ``logger=`` to that logger.

Rust records below the threshold are dropped at the tracing callsite (no Python call, no formatting).
The threshold is the lowest effective level among the ``tether`` loggers and the loggers passed as
``logger=`` to tether objects still alive; it is synced when the package is imported and whenever a
tether object is created or started. Call ``tether.sync_log_level()`` after changing logging levels
while connections are running.
"""

from __future__ import annotations

import logging
import weakref

from . import _native


class _Route:
    """What the tether objects given one ``logger=`` hold: while one of them lives, the records with its
    key go to the logger and the logger's level counts in the threshold."""

    __slots__ = ("__weakref__", "logger")

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger


# routing key -> route, held weakly: a logger made for one session (not by getLogger) is freed with the
# objects that used it, and its level no longer lowers the threshold
_ROUTES: weakref.WeakValueDictionary[str, _Route] = weakref.WeakValueDictionary()


def register_logger(logger: str | logging.Logger) -> tuple[str, _Route]:
    """The key under which an object's records reach ``logger`` (a name or a ``logging.Logger``), and the
    route the object keeps for as long as it lives."""
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
    route = _ROUTES.get(key)
    if route is None:
        route = _ROUTES[key] = _Route(lg)
    return key, route


def logger_for(key: str) -> logging.Logger | None:
    """The logger registered under ``key`` (used by the Rust bridge for each record it forwards); once the
    objects that held it are gone, a named logger still, else None (the record's module logger)."""
    route = _ROUTES.get(key)
    if route is not None:
        return route.logger
    return logging.getLogger(key) if key in logging.Logger.manager.loggerDict else None


def sync_log_level() -> int:
    """Recompute the threshold from the ``tether`` hierarchy and the ``logger=`` loggers; returns it."""
    level = logging.getLogger("tether").getEffectiveLevel()
    manager = logging.Logger.manager
    for name, lg in list(manager.loggerDict.items()):
        if name.startswith("tether.") and isinstance(lg, logging.Logger):
            level = min(level, lg.getEffectiveLevel())
    for route in list(_ROUTES.values()):
        level = min(level, route.logger.getEffectiveLevel())
    _native._set_log_level(level)
    return level

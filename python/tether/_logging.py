"""Keeps the Rust-side log filter in step with Python's ``logging`` configuration.

Rust records below the threshold are dropped at the tracing callsite (no Python call, no formatting).
The threshold is the lowest effective level among the ``tether`` loggers; it is synced when the
package is imported and whenever a tether object is created or started. Call ``tether.sync_log_level()``
after changing logging levels while connections are already running.
"""

from __future__ import annotations

import logging

from . import _native


def sync_log_level() -> int:
    """Recompute the threshold from the ``tether`` logger hierarchy; returns the Python level in force."""
    level = logging.getLogger("tether").getEffectiveLevel()
    manager = logging.Logger.manager
    for name, lg in list(manager.loggerDict.items()):
        if name.startswith("tether.") and isinstance(lg, logging.Logger):
            level = min(level, lg.getEffectiveLevel())
    _native._set_log_level(level)
    return level

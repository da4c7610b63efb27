"""tether: native, bounded connection resilience for asyncio real-time agent frameworks.

Importing tether starts no thread and no runtime (safe before frameworks fork their workers); the
tokio runtime is created on first use.
"""

from __future__ import annotations

import atexit as _atexit

from . import _native, events
from ._connect import Connection, connect
from ._errors import ConnectionClosed, GaveUp, NotReady, PoolExhausted, SendBufferFull, TetherError, TimeoutError
from ._hooks import Handshake
from ._logging import sync_log_level
from ._native import Backoff, Heartbeat, Reconnector, redact
from ._procpool import ProcPool, WorkerProc
from ._readiness import ReadinessGate
from ._watchdog import Alarm, Liveness, Watchdog, bounded

__version__ = _native.__version__

sync_log_level()
# from interpreter shutdown on, Rust threads stop calling into Python
_atexit.register(_native._at_exit)

__all__ = [
    "Alarm",
    "Backoff",
    "Connection",
    "ConnectionClosed",
    "GaveUp",
    "Handshake",
    "Heartbeat",
    "Liveness",
    "NotReady",
    "PoolExhausted",
    "ProcPool",
    "ReadinessGate",
    "Reconnector",
    "SendBufferFull",
    "TetherError",
    "TimeoutError",
    "Watchdog",
    "WorkerProc",
    "bounded",
    "connect",
    "events",
    "redact",
    "sync_log_level",
]

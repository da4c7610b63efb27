"""tether: native, bounded connection resilience for asyncio real-time agent frameworks.

Importing tether starts no thread and no runtime (safe before frameworks fork their workers); the
tokio runtime is created on first use.
"""

from __future__ import annotations

import atexit as _atexit

from . import _native, events, metrics
from ._connect import Connection, add_redacted_names, connect
from ._hooks import Handshake
from ._logging import sync_log_level
from ._native import (
    Backoff,
    ConnectFailed,
    ConnectionClosed,
    FailedMessage,
    GaveUp,
    Heartbeat,
    NotReady,
    PoolExhausted,
    SendBufferFull,
    SendFailed,
    TetherError,
    redact,
)
from ._native import (
    TimeoutError as TimeoutError,  # explicit re-export: importable, yet not in __all__
)
from ._procpool import ProcPool, WorkerProc
from ._readiness import ReadinessGate
from ._reconnect import Reconnector
from ._watchdog import Alarm, Liveness, Watchdog, bounded

__version__ = _native.__version__

# ``tether.TimeoutError`` (a subclass of the builtin, so ``except TimeoutError`` still catches it) is left
# out of __all__: ``from tether import *`` must not shadow the builtin name.

sync_log_level()
# from interpreter shutdown on, Rust threads stop calling into Python
_atexit.register(_native._at_exit)

__all__ = [
    "Alarm",
    "Backoff",
    "ConnectFailed",
    "Connection",
    "ConnectionClosed",
    "FailedMessage",
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
    "SendFailed",
    "TetherError",
    "Watchdog",
    "WorkerProc",
    "add_redacted_names",
    "bounded",
    "connect",
    "events",
    "metrics",
    "redact",
    "sync_log_level",
]

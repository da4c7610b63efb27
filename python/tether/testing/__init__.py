"""Test helpers: real servers and fault injection.

* ``SignalServer``: an embedded Rust WebSocket server with scripted misbehaviour.
* ``ChaosProxy``: a TCP proxy that black-holes, resets, closes, delays or throttles connections.

The pytest plugin (entry point ``tether``, module ``pytest_tether``) exposes both as fixtures.
"""

from ._chaos import ChaosProxy
from ._signal_server import SignalServer

__all__ = ["ChaosProxy", "SignalServer"]

"""Test helpers: real servers, fault injection, and a timeline of what happened.

* ``SignalServer``: an embedded Rust WebSocket server with scripted misbehaviour.
* ``ChaosProxy``: a TCP proxy that black-holes, resets, closes, delays or throttles connections.
* ``Timeline``: records what connections, reconnect loops, pools and watchdogs report, as text or a
  self-contained HTML page to attach to a failing test.

The pytest plugin (entry point ``tether``, module ``pytest_tether``) exposes the servers as fixtures.
"""

from ._chaos import ChaosProxy
from ._signal_server import SignalServer
from ._timeline import Timeline

__all__ = ["ChaosProxy", "SignalServer", "Timeline"]

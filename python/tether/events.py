"""Events reported by reconnect loops and connections (``async for ev in x.events()``).

The classes are made in Rust, frozen: built by position or keyword, compared and hashed by their
fields, matched with ``case Reconnecting(attempt=n):``. ``Event`` is their union, for annotations.
"""

from __future__ import annotations

from typing import TypeAlias

from ._native import Closed as Closed  # the end marker: importable as before, never yielded, not in __all__
from ._native import Connected, Connecting, ConnectionLost, Reconnected, Reconnecting
from ._native import GaveUpEvent as GaveUp

Event: TypeAlias = Connecting | Connected | ConnectionLost | Reconnecting | Reconnected | GaveUp

__all__ = ["Connected", "Connecting", "ConnectionLost", "Event", "GaveUp", "Reconnected", "Reconnecting"]

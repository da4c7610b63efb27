"""What both benchmark servers share: the flood's pre-encoded frames, and the herd's bookkeeping (which herd
connections are up, and when each one came back after the server aborted them all at once)."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Hashable


def frame_bytes(size: int) -> bytes:
    """One server-to-client binary frame of size bytes (unmasked: FIN|binary, then the length)."""
    if size < 126:
        head = struct.pack("!BB", 0x82, size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x82, 126, size)
    else:
        head = struct.pack("!BBQ", 0x82, 127, size)
    return head + b"x" * size


class Herd:
    def __init__(self) -> None:
        self.conns: dict[Hashable, Callable[[], None]] = {}  # connection -> abort it (no close frame)
        self.dropped_at: float | None = None
        self.expected = 0
        self.handshakes: list[float] = []
        self.all_back: float | None = None

    def joined(self, key: Hashable, abort: Callable[[], None]) -> None:
        self.conns[key] = abort
        if self.dropped_at is not None:
            now = time.monotonic() - self.dropped_at
            self.handshakes.append(now)
            if self.all_back is None and len(self.conns) >= self.expected:
                self.all_back = now

    def left(self, key: Hashable) -> None:
        self.conns.pop(key, None)

    def drop(self, expected: int) -> int:
        self.expected, self.handshakes, self.all_back = expected, [], None
        victims, self.conns = list(self.conns.values()), {}
        self.dropped_at = time.monotonic()
        for abort in victims:
            abort()
        return len(victims)

    def command(self, text: str) -> str:
        """The /control protocol: "herd", "drop N", "report"."""
        cmd = text.split()
        if cmd[:1] == ["herd"]:
            return str(len(self.conns))
        if cmd[:1] == ["drop"] and len(cmd) == 2:
            return str(self.drop(int(cmd[1])))
        if cmd[:1] == ["report"]:
            return json.dumps({"handshakes": self.handshakes, "all_back": self.all_back, "connected": len(self.conns)})
        return "error: unknown command"

"""The asyncio protocol of one ``tether.connect`` TCP connection.

asyncio (and uvloop) read into a buffer the protocol provides only for a ``BufferedProtocol`` subclass;
with a plain protocol each read allocates a ``bytes`` of the transport's read size (256 KiB, an mmap per
read for asyncio). So the native protocol's methods are installed on an instance of this subclass: the
transport reads into one buffer per event loop thread, shared by its connections, and calls the native
methods directly (no Python frame per read). Where the loop can watch a descriptor (``add_reader``), the
connection reads its socket itself and pauses the transport's reading; the transport keeps the rest
(writes it buffers, flow control, the close), and the reading methods serve the other loops.
"""

from __future__ import annotations

import asyncio


class Wire(asyncio.BufferedProtocol):
    # the native protocol's bound methods, set by tether (they shadow BufferedProtocol's)
    __slots__ = (
        "buffer_updated",
        "connection_lost",
        "connection_made",
        "eof_received",
        "get_buffer",
        "pause_writing",
        "resume_writing",
    )

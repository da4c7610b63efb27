"""Child side of a native ``ProcPool(command=[...])`` worker.

Frames are a 4-byte big-endian length and that many bytes, on stdin/stdout. The child signals readiness
with the frame ``b"ready"`` once it initialized (imported models, warmed caches); the pool hands it out
only after that. ``serve(handler)`` answers each request frame with ``handler(frame) -> bytes``.

    # my_worker.py
    from tether import worker
    model = load_model()              # initialization, bounded by the pool's initialize_timeout
    worker.serve(lambda req: model.run(req))

``python -m tether.worker`` is an echo worker (``--fail`` exits at once, ``--hang`` never becomes
ready, ``--die-after N`` exits after N requests, ``--delay S`` waits S seconds before each reply):
handy for tests and demos.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

MAX_FRAME = 64 * 1024 * 1024


def write_frame(out: BinaryIO, data: bytes) -> None:
    """Write one frame (length, then ``data``) to ``out`` and flush it."""
    # one write: a reader never sees the length without the payload
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


def read_frame(inp: BinaryIO) -> bytes | None:
    """Read one frame from ``inp``; None at the end of input. ValueError for a frame over 64 MiB."""
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    data = inp.read(n)
    return data if len(data) == n else None


def ready(out: BinaryIO | None = None) -> None:
    """Tell the pool this child finished initializing (the ``b"ready"`` frame, on stdout by default)."""
    write_frame(out or sys.stdout.buffer, b"ready")


def serve(handler: Callable[[bytes], bytes], *, signal_ready: bool = True, max_requests: int | None = None) -> None:
    """Signal ready, then answer request frames until stdin closes (or ``max_requests`` were served)."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    if signal_ready:
        ready(out)
    served = 0
    while max_requests is None or served < max_requests:
        req = read_frame(inp)
        if req is None:
            return
        write_frame(out, handler(req))
        served += 1


def main(argv: list[str]) -> int:
    """``python -m tether.worker [--fail | --hang | --die-after N | --delay S]``: the echo worker."""
    if "--fail" in argv:
        print("worker: failing on purpose (ImportError: no module named 'agent_plugins')", file=sys.stderr, flush=True)
        return 3
    if "--hang" in argv:
        time.sleep(3600)
        return 0
    die_after = None
    if "--die-after" in argv:
        die_after = int(argv[argv.index("--die-after") + 1])
    delay = float(argv[argv.index("--delay") + 1]) if "--delay" in argv else 0.0

    def echo(req: bytes) -> bytes:
        time.sleep(delay)
        return req

    serve(echo, max_requests=die_after)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A WebSocket server tether did not write that keeps crashing: the stress peer of the delivery tests and of
benches/bench_flapping.py.

Built on the `websockets` Sans-I/O protocol (`websockets.server.ServerProtocol`) over a raw asyncio stream.
Every connection reads a random number of frames (`crash_after`, 10-250 by default, pings included), records
each data message it read, answers each ping it read with a pong, and then crashes in one of three ways:

- "rst": the socket is closed with SO_LINGER 0 (a TCP reset, as when the process dies with unread data);
- "fin": a bare TCP FIN (half-close), no close frame; what arrives afterwards is read and thrown away;
- "1011": a close frame 1011 (internal error), then as "fin"; any other close code given as a mode (such as
  "1001", a draining instance) is sent the same way.

Frames that arrive after the crash point are never recorded and never answered, also when they came in the
same read as the last recorded one. The listening socket stays up, so every reconnect lands on a fresh
"process" on the same port, unless `connections` is set: then the server stops listening once it accepted
that many, so every later connect is refused (a server that went away for good). `poison` (a substring)
makes a connection close 1011 whenever it reads a message containing it; `max_size` makes it close 1009
for a bigger message, as `websockets` does.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from support import close_frame

CRASH_MODES = ("rst", "fin", "1011")


@dataclass
class Record:
    """What the server saw: every data message read (text decoded), and how each connection ended."""

    received: list[str | bytes] = field(default_factory=list)
    connections: int = 0
    crashes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CRASH_MODES, 0))
    poisoned: int = 0
    too_big: int = 0


class _Crashing(ServerProtocol):
    """Stops at frame `budget`: later frames are neither recorded nor answered (a ping's pong is queued by
    `recv_frame`, so skipping it skips the pong), and nothing is written after that point (not even the
    close 1009 the parser would send for a too-big frame further on in the same read)."""

    def __init__(self, budget: int, record: Record, poison: str | None, **kw: Any) -> None:
        super().__init__(**kw)
        self.budget = budget
        self.frames = 0
        self.record = record
        self.poison = poison
        self.crashed: str | None = None

    def recv_frame(self, frame: Any) -> None:
        if self.crashed is not None:
            return
        if self.poison is not None and frame.opcode is Opcode.TEXT and self.poison in frame.data.decode():
            self.record.poisoned += 1
            self.crashed = "poison"
            return
        super().recv_frame(frame)
        if frame.opcode is Opcode.TEXT:
            self.record.received.append(frame.data.decode())
        elif frame.opcode is Opcode.BINARY:
            self.record.received.append(bytes(frame.data))
        self.frames += 1
        if self.frames >= self.budget and frame.opcode is not Opcode.CLOSE:
            self.crashed = "crash"

    def send_frame(self, frame: Any) -> None:
        if self.crashed is None:
            super().send_frame(frame)


class FlappingServer:
    """`async with FlappingServer(seed=1) as srv:` then connect to `srv.url`; `srv.record` says what it read."""

    def __init__(
        self,
        *,
        seed: int = 0,
        crash_after: tuple[int, int] | None = (10, 250),
        modes: tuple[str, ...] = CRASH_MODES,
        poison: str | None = None,
        max_size: int | None = None,
        connections: int | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.connections = connections
        self._accepted = 0
        self._url = ""
        self.crash_after = crash_after
        self.modes = modes
        self.poison = poison
        self.max_size = max_size
        self.record = Record()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return self._url

    async def __aenter__(self) -> FlappingServer:
        self._server = await asyncio.start_server(self._spawn, "127.0.0.1", 0)
        self._url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        if self._accepted == self.connections:
            # the last one: connections already accepted go on, new ones are refused
            assert self._server is not None
            self._server.close()
        t = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.record.connections += 1
        budget = self.rng.randint(*self.crash_after) if self.crash_after else 1 << 60
        mode = self.rng.choice(self.modes)
        proto = _Crashing(budget, self.record, self.poison, max_size=self.max_size)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                proto.receive_data(data)
                for ev in proto.events_received():
                    if isinstance(ev, Request):
                        proto.send_response(proto.accept(ev))
                if proto.crashed is not None:
                    for out in proto.data_to_send():
                        writer.write(out)
                    if proto.crashed == "poison":
                        await self._crash(reader, writer, "1011")
                    else:
                        self.record.crashes[mode] = self.record.crashes.get(mode, 0) + 1
                        await self._crash(reader, writer, mode)
                    return
                for out in proto.data_to_send():
                    if out:
                        writer.write(out)
                    elif writer.can_write_eof():
                        # the protocol ended the connection (a close handshake, or 1009 for a message
                        # over max_size)
                        if proto.close_sent is not None and proto.close_sent.code == 1009:
                            self.record.too_big += 1
                        writer.write_eof()
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    async def _crash(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
        if mode == "rst":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if mode.isdigit():
            writer.write(close_frame(int(mode), b"crashed" if mode == "1011" else b"closing"))
        writer.write_eof()
        # read (and drop) until the client closes, so the kernel does not answer its data with a reset
        try:
            await asyncio.wait_for(_drain(reader), 5)
        except (asyncio.TimeoutError, ConnectionError):
            pass


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


@dataclass
class Run:
    """One numbered run: which sends resolved, which messages a `SendFailed` named, what the server read."""

    resolved: set[str]
    named: set[str]
    received: set[str]
    record: Record
    losses: int

    @property
    def lost(self) -> set[str]:
        """Resolved, never read by the server, and named by no `SendFailed`: lost silently."""
        return self.resolved - self.received - self.named

    @property
    def unread(self) -> set[str]:
        """Resolved and never read by the server (named or not)."""
        return self.resolved - self.received


async def numbered_run(
    url: str, record: Record, *, n: int, in_flight: int, pacing: float = 0.0, send_buffer: int = 1024, **kw: Any
) -> Run:
    """Send "m0".."m{n-1}" through `tether.connect`, `in_flight` awaited sends at a time (`pacing` seconds
    between windows), then `flush()`. Every resolved send must reach the server or be named by a
    `SendFailed`."""
    import tether

    resolved: set[str] = set()
    named: set[str] = set()

    def note(e: tether.SendFailed) -> None:
        named.update(m for m in e.messages if isinstance(m, str))

    conn = tether.connect(
        url,
        send_buffer=send_buffer,
        policy=tether.Backoff(0.005, 2.0, max_delay=0.05, jitter="none"),
        quiet_jitter=0,
        stable_after=0.2,
        **kw,
    )
    async with conn:
        for start in range(0, n, in_flight):
            window = [f"m{i}" for i in range(start, min(n, start + in_flight))]
            results = await asyncio.gather(*(conn.send(m) for m in window), return_exceptions=True)
            for m, r in zip(window, results, strict=True):
                if r is None:
                    resolved.add(m)
                elif isinstance(r, tether.SendFailed):
                    note(r)
                else:
                    raise r
            if pacing:
                await asyncio.sleep(pacing)
        try:
            await conn.flush()
        except tether.SendFailed as e:
            note(e)
        losses = conn.stats()["losses"]
    received = {m for m in record.received if isinstance(m, str)}
    return Run(resolved, named, received, record, losses)

"""One adapter per client library, each exposing that library's own public calls.

`await open_conn(lib, url)` returns a `Conn` whose `send`/`send_text`/`recv` are the library's own bound
awaitables (no wrapper in the hot path) and whose `stream` is what `async for` iterates. tether receives
through `__anext__` (what `async for` calls); the peers through their own `recv()`/`receive()`. picows has no
awaitable send or receive: it gets the smallest adapter a user would write (a deque drained by an
`async for`, and a send that waits only while the transport asked to pause writing, like websockets' drain).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

LIBS = ("tether", "websockets", "picows", "aiohttp")


@dataclass
class Conn:
    send: Callable[[bytes], Awaitable[Any]]
    send_text: Callable[[str], Awaitable[Any]]
    recv: Callable[[], Awaitable[Any]]
    stream: AsyncIterable[Any]
    close: Callable[[], Awaitable[Any]]
    # tether's explicit confirmation (`await conn.flush()`) where the build has it; the others have none
    flush: Callable[[], Awaitable[Any]] | None = None


def text_of(msg: Any) -> str:
    """The text of a reply, whatever the library wraps it in (aiohttp yields WSMessage objects)."""
    data = getattr(msg, "data", msg)
    return data.decode() if isinstance(data, bytes | bytearray) else data


async def open_tether(url: str) -> Conn:
    import tether

    c = await tether.connect(url)  # default settings: what a user gets
    # receive through the iterator protocol, exactly what `async for msg in conn` calls
    return Conn(c.send, c.send, aiter(c).__anext__, c, c.aclose, getattr(c, "flush", None))


_metrics_provider = None


async def open_tether_metrics(url: str) -> Conn:
    """tether with `tether.metrics` on, exported the way an application exports them: an OpenTelemetry SDK
    MeterProvider whose periodic reader collects every second in its own thread (into an exporter that
    drops them). The A/B of `LIBS=tether,tether-metrics` is what metrics cost on the message path."""
    global _metrics_provider
    if _metrics_provider is None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader

        import tether

        class Drop(MetricExporter):
            def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis: float = 10_000) -> bool:
                return True

            def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
                pass

        _metrics_provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(Drop(), 1000)])
        tether.metrics.enable(meter_provider=_metrics_provider)
    return await open_tether(url)


async def open_websockets(url: str) -> Conn:
    import websockets

    ws = await websockets.connect(url)  # default settings
    return Conn(ws.send, ws.send, ws.recv, ws, ws.close)


_aiohttp_session = None


async def open_aiohttp(url: str) -> Conn:
    import aiohttp

    global _aiohttp_session
    if _aiohttp_session is None:
        # one session per process, as aiohttp recommends; no connection-count cap for the idle test
        _aiohttp_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    ws = await _aiohttp_session.ws_connect(url)
    return Conn(ws.send_bytes, ws.send_str, ws.receive, ws, ws.close)


async def shutdown() -> None:
    global _aiohttp_session
    if _aiohttp_session is not None:
        await _aiohttp_session.close()
        _aiohttp_session = None


@functools.cache
def _picows_types():
    from picows import WSCloseCode, WSListener, WSMsgType

    class Listener(WSListener):
        def __init__(self) -> None:
            self.queue: deque = deque()
            self.waiter: asyncio.Future | None = None
            self.closed = False
            self.writable = asyncio.Event()
            self.writable.set()

        def _wake(self) -> None:
            w, self.waiter = self.waiter, None
            if w is not None and not w.done():
                w.set_result(None)

        def on_ws_frame(self, t, frame) -> None:
            mt = frame.msg_type
            if mt == WSMsgType.BINARY:
                self.queue.append(frame.get_payload_as_bytes())
            elif mt == WSMsgType.TEXT:
                self.queue.append(frame.get_payload_as_utf8_text())
            elif mt == WSMsgType.CLOSE:
                t.send_close(WSCloseCode.OK)
                t.disconnect()
                self.closed = True
            else:
                return
            self._wake()

        def on_ws_disconnected(self, t) -> None:
            self.closed = True
            self._wake()

        def pause_writing(self) -> None:
            self.writable.clear()

        def resume_writing(self) -> None:
            self.writable.set()

    class PicowsConn:
        def __init__(self, transport, listener: Listener) -> None:
            self.t, self.l = transport, listener
            self.loop = asyncio.get_running_loop()

        async def send(self, data: bytes) -> None:
            self.t.send(WSMsgType.BINARY, data)
            await self.l.writable.wait()

        async def send_text(self, data: str) -> None:
            self.t.send(WSMsgType.TEXT, data.encode())
            await self.l.writable.wait()

        async def recv(self):
            q = self.l.queue
            while not q:
                if self.l.closed:
                    raise ConnectionError("picows connection closed")
                self.l.waiter = self.loop.create_future()
                await self.l.waiter
            return q.popleft()

        def __aiter__(self):
            return self

        async def __anext__(self):
            try:
                return await self.recv()
            except ConnectionError:
                raise StopAsyncIteration from None

        async def close(self) -> None:
            if not self.t.is_disconnected:
                self.t.send_close(WSCloseCode.OK)
                try:
                    await asyncio.wait_for(self.t.wait_disconnected(), 2)
                except (TimeoutError, asyncio.TimeoutError):
                    self.t.disconnect(graceful=False)

    return Listener, PicowsConn


async def open_picows(url: str) -> Conn:
    from picows import ws_connect

    listener_cls, conn_cls = _picows_types()
    transport, listener = await ws_connect(listener_cls, url)  # default settings
    c = conn_cls(transport, listener)
    return Conn(c.send, c.send_text, c.recv, c, c.close)


OPENERS = {
    "tether": open_tether,
    "websockets": open_websockets,
    "picows": open_picows,
    "aiohttp": open_aiohttp,
    # not run by default: LIBS=tether,tether-metrics compares tether with its metrics on
    "tether-metrics": open_tether_metrics,
}


async def open_conn(lib: str, url: str) -> Conn:
    return await OPENERS[lib](url)

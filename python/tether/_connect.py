"""``tether.connect``: a supervised, reconnecting signaling WebSocket (native, on the event loop's thread)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any, ParamSpec

from . import _native
from ._hooks import with_handshake
from ._native import ConnectionClosed, add_redacted_names

_P = ParamSpec("_P")


class Connection:
    """A WebSocket that reconnects by itself. Use ``async with tether.connect(url) as conn`` or
    ``conn = await tether.connect(url)``; iterate messages with ``async for msg in conn``.

    Iteration ends when the connection is closed with ``aclose()`` or by the server with a code of
    ``final_close_codes``; it raises ``tether.GaveUp`` when the reconnect budget is exhausted (after the
    messages already received were delivered). Once the connection ended, every call raises its error
    (``GaveUp``, or ``ConnectionClosed``), which names what it never delivered: ``.messages`` (sent, never
    confirmed, in send order) and ``.failures``; after ``async for`` ended, ``await conn.flush()`` raises it.
    """

    __slots__ = ("_n",)

    def __init__(self, native: _native.Connection) -> None:
        self._n = native

    # -- lifecycle ----------------------------------------------------------------------------------
    async def _start(self) -> Connection:
        await self._n.start()
        return self

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._start().__await__()

    async def __aenter__(self) -> Connection:
        try:
            return await self._start()
        except BaseException:
            await self._n.aclose()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self._n.aclose()

    async def aclose(self) -> None:
        """Close within ``close_timeout``: write every accepted send and a confirming ping, then the close
        frame, and wait for the peer's close. Never raises. On a live connection whose server answers,
        everything sent is confirmed when it returns; what is not (the server did not answer within
        ``close_timeout``, or the connection was down) is logged as a WARNING and named by the
        ``ConnectionClosed`` every later call raises (``.messages``, ``.failures``): ``await conn.flush()``
        after ``aclose()`` tells. To act on a failure before closing, ``await conn.flush()`` first. On a
        connection whose event loop is closed (opened in an ``asyncio.run`` that returned), nothing can run
        there any more: it ends at once, its socket aborted."""
        await self._n.aclose()

    def close(self) -> None:
        """Schedule the same bounded close as ``aclose()`` and return at once, for callers that cannot
        await (sync callbacks, ``__del__``-style cleanup). Safe to call twice, from another thread, and
        after the event loop stopped or closed: with no loop left to run the close, the connection ends at
        once, its socket aborted."""
        self._n.close()

    # -- messages -----------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self

    async def __anext__(self) -> str | bytes:
        # recv() inlined: one coroutine per message instead of two
        n = self._n
        try:
            while True:
                m = n.try_recv()
                if m is not None:
                    return m
                await n.wait_readable()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def recv(self) -> str | bytes:
        """Next message; raises ``ConnectionClosed`` after ``aclose()`` or ``GaveUp`` after giving up, and
        ``RuntimeError`` on a connection that was never awaited or entered (nothing would ever arrive).

        Cancellation-safe: the message is taken from the buffer by this task, synchronously, only once
        one is there; a recv cancelled while waiting (e.g. by ``asyncio.wait_for``) consumes nothing."""
        n = self._n
        while True:
            m = n.try_recv()
            if m is not None:
                return m
            await n.wait_readable()

    def send(self, data: str | bytes | bytearray | memoryview) -> Coroutine[Any, Any, None]:
        """Queue ``data`` now, at call time (so messages go out in call order, also when called from
        another thread, and ``SendBufferFull`` or ``ValueError`` for a message over ``max_message_size`` is
        raised by the call itself). Returns a coroutine: ``await`` it, or hand it to
        ``asyncio.create_task`` or, from a thread without a loop, ``asyncio.run_coroutine_threadsafe``.
        Awaiting it returns at once while the message is queued for the wire, as in websockets: while less
        than 64 KiB of queued messages is not yet written and less than half of ``send_buffer`` is
        unconfirmed (no thread round trip per send). Above the first mark it returns once the message
        was written to the socket; above the second, once at most a quarter of ``send_buffer`` is
        unconfirmed: a sender that awaits each send never meets ``SendBufferFull``. Unlike websockets'
        ``send``, a send left unawaited still goes out (with no "never awaited" warning): awaiting it is
        flow control. During an outage messages wait in the bounded send buffer and are written, in
        order, after the reconnect; a send after close or give-up raises. ``await conn.flush()`` tells
        when the server has them and raises ``SendFailed`` for any that failed."""
        return self._n.send(data)

    def flush(self) -> Coroutine[Any, Any, None]:
        """Resolves once every message sent before this call was confirmed by the server's WebSocket
        layer (one round trip: the pong to a ping written behind them), after a reconnect if needed.
        Raises ``tether.SendFailed`` if any of them was removed from the queue (close 1009, or the oldest
        unconfirmed message at 3 losses that confirmed nothing and looked like the server failing on it:
        no close frame, a timeout, or 1002/1003/1007/1008/1011), naming each (``.messages``,
        ``.failures``), and the connection's error if it closed or gave up first (also when called
        afterwards): ``GaveUp`` or ``ConnectionClosed``, whose ``.messages`` are the messages never
        confirmed and ``.failures`` those failed that no flush reported."""
        return self._n.flush()

    # -- observation --------------------------------------------------------------------------------
    def events(self) -> _native.EventStream:
        """``async for ev in conn.events()``: Connecting, Connected, ConnectionLost, Reconnecting,
        Reconnected, GaveUp (see ``tether.events``); ends when the connection ends.

        The stream subscribes when ``events()`` is called, not at its first ``__anext__``: it delivers every event
        emitted after the call returned, in order, and nothing from before, while its reader keeps within 64 unread
        events (beyond, the oldest are dropped and a WARNING says how many). So call it before whatever may cause
        the event you want to see. A watcher task whose body calls ``conn.events()`` has not subscribed until the
        task first runs, which may be after a loss; pass it the stream instead:
        ``asyncio.ensure_future(watch(conn.events()))``. ``conn.state`` and ``conn.stats()["last_loss"]``, read
        after the call, tell where the connection stood."""
        return self._n.events()

    @property
    def state(self) -> str:
        """ "idle", "connecting", "connected", "reconnecting", "closing", "closed" or "failed"."""
        return self._n.state

    @property
    def url(self) -> str:
        """The configured URL with secrets redacted."""
        return self._n.url

    @property
    def name(self) -> str:
        """How the connection appears in logs and errors: ``name=``, or else its redacted URL."""
        return self._n.name

    def stats(self) -> dict[str, Any]:
        """Counters and state: ``state``, ``connects``, ``reconnects``, ``losses``, ``last_loss``, messages and
        bytes each way, ``send_queue`` (accepted, not yet confirmed), ..."""
        return self._n.stats()

    def __repr__(self) -> str:
        return repr(self._n)


def _takes_the_options_of(
    native: Callable[_P, object],
) -> Callable[[Callable[..., Connection]], Callable[_P, Connection]]:
    """``connect`` takes what the native ``Connection`` takes, as it is: type checkers read the parameters,
    their types and defaults from the native stub, and ``help()``/``inspect.signature()`` from the native
    signature, whose defaults are the Rust configuration's. So neither is restated here."""

    def take(f: Callable[..., Connection]) -> Callable[_P, Connection]:
        f.__signature__ = inspect.signature(native).replace(return_annotation=Connection)  # type: ignore[attr-defined]
        return f

    return take


@_takes_the_options_of(_native.Connection)
def connect(url: str, **options: Any) -> Connection:
    """Create a supervised WebSocket (nothing happens until it is awaited or entered).

    ``url_for(strategy, attempt)`` (sync or async, called on the event loop of the first await) may return a
    fresh URL, or ``(url, headers)``, for every attempt: ``strategy`` is "connect" for the first connection, then the ``ladder`` rung in force
    (each rung gets one attempt, or ``(name, attempts)``; the last rung takes the rest).

    ``watchdog``: a ``tether.Watchdog`` fed with the connection's states ("connecting", "connected",
    "reconnecting", "closing", "closed", "failed"), so ``wd.dwell("reconnecting", 20)`` catches a
    connection stuck reconnecting; its alarms also appear in ``conn.events()`` as ``tether.Alarm``.

    ``on_connect(hs)`` (async) runs after every WebSocket handshake, before any queued or unconfirmed
    message is written, on the event loop that awaited the connection: ``await hs.send(x)`` writes
    directly, ``await hs.recv()`` takes the next inbound message; ``hs.attempt``, ``hs.strategy`` and
    ``hs.reconnect`` describe the attempt. Its whole run is bounded by ``open_timeout``. Returning makes
    the attempt connected (Connected/Reconnected, the ``stable_after`` clock starts, queued messages
    flush); raising fails the attempt: retried on the ladder, or given up at once (``GaveUp``) if the
    exception is an instance of a type in ``fatal``. A ``CancelledError`` the hook raises itself (it
    awaited a future something else cancelled) is such a failure; a ``cancel()`` of its task (the loop's
    tasks torn down) gives up, and so does any ``CancelledError`` on Python 3.10, which does not count a
    task's ``cancel()`` calls. Inside the hook use ``hs``, not ``conn``: the
    connection's own ``send`` is confirmed and ``recv`` fed only after the hook returned.
    ``first_message_timeout`` counts from the end of the hook.

    First connect: ``await tether.connect(...)`` (or ``async with``) returns once connected or raises
    ``tether.GaveUp`` (``conn.state`` "failed"), by ``connect_timeout`` (default 30 s) at the latest: all
    attempts and backoff of the first connect count, and ``last_error`` is the last attempt's failure.
    An answer that retrying will not change raises at once, within ``open_timeout`` (one attempt,
    reason "fatal error"): an HTTP status other than 101, 408, 429 and 5xx (a 404, a 200 page), a
    redirect that cannot be followed, or an answer that is not a WebSocket upgrade (a wrong
    ``Sec-WebSocket-Accept``); ``e.last_error.http_status`` holds the status. Once a connection has
    succeeded the URL is known to be right: outages are bounded by ``policy`` alone (no bound by
    default; a signaling client keeps trying) and such answers are retried like any failure (except
    ``fatal_http_statuses``). ``connect_timeout=None`` leaves the first connect to ``policy`` as well.

    Redirects: a 301, 302, 303, 307 or 308 (or 300) answer with a ``Location`` to a ws:// or wss:// URL
    is followed, at most 10 times per attempt, all within ``open_timeout``, never from wss:// down to
    ws://. A redirect to another origin (scheme, host and port) does not carry credentials: the
    ``Authorization``, ``Proxy-Authorization`` and ``Cookie`` headers, API-key headers and names given to
    ``add_redacted_names`` are not sent there, and the URL's userinfo never moves to another host. URLs
    in the redirect's log record are redacted. Every reconnect starts again from ``url`` (or ``url_for``).

    ``final_close_codes``: a close frame from the server with one of these codes ends the connection
    cleanly, as ``aclose()`` would: ``async for`` ends, ``recv()`` raises ``ConnectionClosed`` with that
    ``code``, ``conn.state`` is "closed", no reconnect. None by default: load balancers, proxies and
    redeploys close with 1000 or 1001 to recycle a connection, and a signaling client then reconnects;
    ``final_close_codes=(1000,)`` ends ``async for`` on a normal closure as in websockets.
    ``fatal_close_codes`` (default 1008) raise ``GaveUp`` instead; a code may not be in both. Both take
    only codes a close frame may carry (1000-1003, 1007-1014, 3000-4999): another is a ``ValueError``.

    ``quiet_jitter``: the first ``quiet_attempts`` retries wait uniform(0, quiet_jitter) seconds, so a
    fleet that lost the same server does not come back in one burst.
    ``logger``: a logger name or ``logging.Logger`` that receives this connection's records (same
    ``extra`` fields) instead of ``tether.*``.

    ``heartbeat=tether.Heartbeat(message, interval, is_reply=None, timeout=None)``: for protocols whose
    liveness is in-band; see ``tether.Heartbeat``. A missing reply is a loss ("heartbeat timeout").

    ``max_message_size``: the largest message, in bytes of payload, either way (default 16 MiB). A bigger
    ``send()`` raises ``ValueError`` at once; a bigger inbound message (or frame) is a loss, reported as
    such: tether closes with 1009 (as it closes with 1002 on a protocol error and 1007 on invalid UTF-8),
    and the connection reconnects. Received messages wait in a buffer bounded by count and by bytes
    (64 MiB, or one message if larger); when Python does not read and it fills, the reader pauses and the
    peer is slowed down by TCP; pings keep going out meanwhile, so a black hole is still detected (by the
    kernel's TCP_USER_TIMEOUT on Linux).

    ``compression`` (default ``"deflate"``): offer permessage-deflate (RFC 7692) as websockets does, and
    use it if the server accepts; ``None`` turns it off. Data messages are then compressed, each with the
    context of the ones before it on the same connection (a reconnect starts afresh, and re-sent messages
    are compressed again); ping, pong and close frames never are. ``max_message_size`` bounds a received
    message's inflated size, checked while inflating: a message that inflates past it (a deflate bomb)
    is a 1009 loss, not memory growth. The compressor and the decompressor are allocated at the first
    message each way that uses them: a connection that negotiated compression and stays idle holds none.

    ``read_buffer_size`` (default 4 KiB): the per-connection read buffer (it grows for a bigger
    message); ``write_buffer_size`` (default 16 KiB): written frames are buffered up to this size before
    a write system call. Larger values trade memory per connection for fewer system calls in floods.

    ``ssl``: which certificate authorities ``wss://`` trusts. Default: the Mozilla roots bundled with
    tether. ``"system"``: the operating system's trust store (on Linux the distribution bundle, or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``). A path (str or ``os.PathLike``): a PEM CA bundle, e.g. a private
    CA or a TLS-intercepting proxy's, or a directory of them (OpenSSL's ``capath``). An
    ``ssl.SSLContext``: the CA certificates it lists (``get_ca_certs()``; the system store if it lists
    none, as ``ssl.create_default_context()`` does). A context given ``capath=`` lists none (OpenSSL reads
    the directory per handshake), so pass that directory itself. A list of these: all of them. Certificates are always verified; TLS is done by rustls, so only the trust anchors of a context
    are used. Bad choices raise ``ValueError`` here.

    Delivery: ``await conn.send(x)`` resolves once ``x`` is queued for the wire (flow control: it waits
    only while 64 KiB or more is queued and not yet written, or half of ``send_buffer`` is unconfirmed);
    ``await conn.flush()`` once everything sent before it was confirmed: the server's WebSocket layer
    read it (not that its application handled it). A lone send is confirmed by a ping right behind it;
    a stream of sends shares one confirming ping per 20 ms, and ``flush()`` pings at once. Across a
    loss delivery is at-least-once: unconfirmed messages are re-sent first after the reconnect, from one
    message in flight that doubles with each confirmation; a long burst carries a confirming ping after
    every eighth of ``send_buffer``. A message the server refuses is not retried forever: a close 1009
    (message too big) removes the largest unconfirmed message, and so does being the oldest unconfirmed
    message at 3 losses that confirmed nothing (it was re-sent alone after the first) and looked like
    the server failing on it: cut without a close frame, a ping or heartbeat timeout, or a close 1002,
    1003, 1007, 1008 or 1011 (a close the server chose, such as 1000, 1001, 1012-1014 or 3000-4999,
    blames no message);
    ``send()`` (if not resolved yet) or the next ``flush()`` raises ``tether.SendFailed`` naming it
    (``.messages``, ``.failures``), and later messages go on. A server that crashes every 10-250 frames
    gets every message and fails none (``benches/bench_flapping.py``); one that dies within the first few
    frames of every connection cannot be told from one that a message kills, so messages it had read can
    be failed as poison, each named by a ``SendFailed``. When the connection ends for good (``GaveUp``, a final close code, ``aclose()``),
    its error names every message never confirmed (``.messages``, in send order) and every failure not
    reported yet (``.failures``), from whichever call raises it.
    """
    if "on_connect" in options:
        options["on_connect"] = with_handshake(options["on_connect"])
    return Connection(_native.Connection(url, **options))


__all__ = ["Connection", "add_redacted_names", "connect"]

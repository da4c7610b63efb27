"""getstream: SFU signaling on ``tether.connect`` (3.3 to 6.x), or a watch on every call (7.0, whose
signaling is in Rust): one call before joining a call.

    from tether.integrations import getstream
    getstream.install()

On getstream 7, ``install()`` patches part ``call_watch`` instead (``tether.integrations._getstream_call``:
``watch_call``, ``CallWatch``); ``install()``'s arguments say which release line each applies to.

Part ``signaling`` replaces ``getstream.video.rtc.signaling.WebSocketClient`` (and the name
``connection_utils`` uses) with a drop-in subclass whose socket is a ``tether.connect`` connection:

* every reconnect re-sends the ``JoinRequest`` with ``fast_reconnect=True`` from the ``on_connect``
  hook and counts as connected only once the SFU answered with a ``JoinResponse`` (a rejoin); the
  rejoin's ``join_response`` is dispatched to listeners like any SFU event;
* the SFU's in-band health checks (``HealthCheckRequest`` -> ``health_check_response``) are tether's
  application heartbeat, so a black-holed link is detected in ``health_interval + health_timeout``
  (no ping thread, no ``RuntimeError: cannot join current thread``);
* ``connection_lost`` is emitted only when tether gives up, so the framework's own
  ``ReconnectionManager`` (getstream >= 6) stays the last resort;
* ``connect()`` is bounded by ``connect_timeout`` and raises ``SignalingError`` like the original;
  ``close()`` is synchronous and bounded.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .._connect import Connection
from .._connect import connect as tether_connect
from .._hooks import Handshake
from .._native import Backoff, GaveUp, TetherError
from .._watchdog import Alarm, bounded
from ._getstream_call import (
    JOIN_TIMEOUT,
    LEAVE_TIMEOUT,
    MEDIA_TIMEOUT,
    RECONNECTING_TIMEOUT,
    CallWatch,
    call_watch_part,
    watch_call,
)
from ._getstream_call import _Settings as _CallSettings
from ._patch import Checks, InstallReport, Integration, Part, Patches, PatchFn

LOGGER_NAME = "getstream.video.rtc.signaling"

#: the releases the signaling part was tested with (the latest of each minor, 3.3.4 to 6.1.1, run in
#: ``make test``); getstream 7 moved signaling into a Rust extension, which this part cannot reach: its
#: release line ends there
SIGNALING_REQUIREMENT = "getstream>=3.3,<7"
# up to the first pre-release of 7 (``<7`` would leave 7.0.0rc1 to neither line)
SIGNALING_LINE = "<7.0.0.dev0"

_integration = Integration("getstream", "getstream")
_CLIENT_PARAMS = ("url", "join_request", "main_loop", "tracer", "sfu_id_fn")
_CLIENT_METHODS = ("connect", "close", "on_event", "on_wildcard", "emit", "remove_all_listeners")


# Defaults of install() for the signaling part, in seconds
_HEALTH_INTERVAL = 5.0
_CONNECT_TIMEOUT = 15.0
_ATTEMPT_TIMEOUT = 5.0
_STABLE_AFTER = 10.0


class _Settings:
    __slots__ = ("attempt_timeout", "connect_timeout", "health_interval", "health_timeout", "policy", "stable_after")

    def __init__(
        self,
        policy: Backoff | None = None,
        health_interval: float = _HEALTH_INTERVAL,
        health_timeout: float | None = None,
        connect_timeout: float = _CONNECT_TIMEOUT,
        attempt_timeout: float = _ATTEMPT_TIMEOUT,
        stable_after: float = _STABLE_AFTER,
    ) -> None:
        self.policy = policy
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.connect_timeout = connect_timeout
        self.attempt_timeout = attempt_timeout
        self.stable_after = stable_after


def install(
    *,
    policy: Backoff | None = None,
    health_interval: float = _HEALTH_INTERVAL,
    health_timeout: float | None = None,
    connect_timeout: float = _CONNECT_TIMEOUT,
    attempt_timeout: float = _ATTEMPT_TIMEOUT,
    stable_after: float = _STABLE_AFTER,
    reconnecting_timeout: float = RECONNECTING_TIMEOUT,
    media_timeout: float | None = MEDIA_TIMEOUT,
    rejoin: bool = True,
    join_timeout: float = JOIN_TIMEOUT,
    leave_timeout: float = LEAVE_TIMEOUT,
    on_alarm: Callable[[Alarm], object] | None = None,
    allow_untested: bool = False,
) -> InstallReport:
    """Patch getstream for the installed release (idempotent; undo with ``uninstall()``): part
    ``signaling`` on 3.3 to 6.x, part ``call_watch`` on 7.x. Each argument applies to one release line.

    Both lines: ``policy``, how tether retries: on 3.3 to 6.x the signaling socket's reconnect (default:
    immediate first retry, then 0.25 s doubling to 5 s, equal jitter, for 30 s — the SFU's own
    disconnection timeout), on 7.x the rejoin of a call after an alarm (default: 0.5 s doubling to 4 s,
    for 120 s). ``allow_untested``: try the parts on a release outside their ranges (a part that does
    not fit is still refused, with a WARNING).

    3.3 to 6.x (``signaling``): a health check is sent every ``health_interval`` seconds; no
    ``health_check_response`` within ``health_timeout`` (default: the interval) declares the link lost.
    ``connect_timeout`` bounds ``connect()``; ``attempt_timeout`` bounds each (re)connect attempt:
    WebSocket handshake plus rejoin; ``stable_after``: seconds a connection must last to end an outage.

    7.x (``call_watch``, a ``CallWatch`` on every ``ConnectionManager`` that joins; see ``watch_call``
    for one call): ``reconnecting_timeout``, ``media_timeout`` (None: no liveness alarm), ``rejoin``,
    ``join_timeout``, ``leave_timeout``, ``on_alarm``.

    Returns an ``InstallReport``. A second ``install()`` keeps the parts and settings of the first, and a
    WARNING names the settings it would have changed.
    """
    settings = _Settings(policy, health_interval, health_timeout, connect_timeout, attempt_timeout, stable_after)
    call_settings = _CallSettings(
        reconnecting_timeout, media_timeout, rejoin, policy, join_timeout, leave_timeout, on_alarm
    )
    given = {
        "policy": policy,
        "health_interval": health_interval,
        "health_timeout": health_timeout,
        "connect_timeout": connect_timeout,
        "attempt_timeout": attempt_timeout,
        "stable_after": stable_after,
        "reconnecting_timeout": reconnecting_timeout,
        "media_timeout": media_timeout,
        "rejoin": rejoin,
        "join_timeout": join_timeout,
        "leave_timeout": leave_timeout,
        "on_alarm": on_alarm,
    }
    return _integration.install(_parts(settings, call_settings), allow_untested=allow_untested, settings=given)


def _parts(settings: _Settings, call_settings: _CallSettings) -> list[Part]:
    return [
        Part(
            "signaling",
            SIGNALING_REQUIREMENT,
            functools.partial(_prepare_signaling, settings),
            line=SIGNALING_LINE,
            uses=("policy", "health_interval", "health_timeout", "connect_timeout", "attempt_timeout", "stable_after"),
        ),
        call_watch_part(call_settings),
    ]


def installed_parts() -> tuple[str, ...]:
    """The parts ``install()`` patched and ``uninstall()`` has not undone."""
    return _integration.report().patched


def instrumentation_dependencies() -> tuple[str, ...]:
    """The getstream releases each part was tested with, as requirement specifiers."""
    return Integration.instrumentation_dependencies(_parts(_Settings(), _CallSettings()))


def uninstall() -> None:
    """Undo ``install()`` for clients created afterwards."""
    _integration.uninstall()


def _prepare_signaling(settings: _Settings, c: Checks) -> PatchFn | None:
    connection_utils = c.module("getstream.video.rtc.connection_utils")
    signaling = c.module("getstream.video.rtc.signaling")
    events_pb2 = c.module("getstream.video.rtc.pb.stream.video.sfu.event.events_pb2")
    if connection_utils is None or signaling is None or events_pb2 is None:
        return None
    base = c.attr(signaling, "WebSocketClient")
    c.attrs(signaling, ("SignalingError", "SFU_EVENTS_TO_TRACE", "telemetry"))
    c.attrs(connection_utils, ("WebSocketClient",))
    c.attrs(events_pb2, ("SfuRequest", "SfuEvent", "HealthCheckRequest", "JoinRequest"))
    if base is not None:
        c.params(base.__init__, _CLIENT_PARAMS)
        c.attrs(base, _CLIENT_METHODS)
        c.instance_attrs(base, ("_tracer", "_sfu_id_fn", "parent_span"))
    if not c:
        return None
    if "fast_reconnect" not in events_pb2.JoinRequest.DESCRIPTOR.fields_by_name:
        c.missing.append("JoinRequest.fast_reconnect")
        return None

    def patch(p: Patches) -> None:
        # the class replaces the framework's: its socket is a tether.connect connection
        client = _make_client_class(base, signaling, events_pb2, settings)
        p.set(signaling, "WebSocketClient", client)
        if connection_utils.WebSocketClient is base:
            p.set(connection_utils, "WebSocketClient", client)

    return patch


def _default_policy() -> Backoff:
    return Backoff(initial=0.25, factor=2.0, max_delay=5.0, jitter="equal", deadline=30.0)


def _make_client_class(base: Any, signaling: Any, events_pb2: Any, settings: _Settings) -> type:
    log = logging.getLogger(LOGGER_NAME)
    # getstream's own dependency (not tether's: the lint venv may lack it)
    to_dict = importlib.import_module("google.protobuf.json_format").MessageToDict

    signaling_error = signaling.SignalingError
    telemetry = signaling.telemetry
    traced = signaling.SFU_EVENTS_TO_TRACE
    health_request = events_pb2.SfuRequest(health_check_request=events_pb2.HealthCheckRequest()).SerializeToString()

    def parse(raw: bytes | str) -> Any:
        event = events_pb2.SfuEvent()
        event.ParseFromString(raw if isinstance(raw, bytes) else raw.encode())
        return event

    def is_health_reply(raw: bytes | str) -> bool:
        try:
            return bool(parse(raw).HasField("health_check_response"))
        except Exception:
            return False

    class WebSocketClient(base):  # type: ignore[misc]
        """getstream's signaling client on ``tether.connect`` (tether.integrations.getstream)."""

        # set by the base class
        url: str
        join_request: Any
        first_message: Any
        closed: bool
        running: bool
        last_health_check_time: float

        def __init__(
            self,
            url: str,
            join_request: Any,
            main_loop: asyncio.AbstractEventLoop,
            tracer: Any = None,
            sfu_id_fn: Callable[[], str | None] | None = None,
        ) -> None:
            super().__init__(url, join_request, main_loop, tracer=tracer, sfu_id_fn=sfu_id_fn)
            self._t_conn: Connection | None = None
            self._t_reader: asyncio.Task[None] | None = None
            self._t_lost_sent = False
            self._t_call_ended = False
            self._t_join_error: BaseException | None = None
            self.rejoins = 0

        # -- tracing (getstream's SfuStatsReporter sends these traces to Stream) --------------------------
        def _t_trace(self, kind: str, data: dict[str, Any]) -> None:
            try:
                sfu_id = self._sfu_id_fn() if self._sfu_id_fn else None
                self._tracer.trace(kind, sfu_id, data)
            except Exception:  # the tracer's failure is not the connection's
                log.debug("tracing %s failed", kind, exc_info=True)

        def _t_trace_event(self, event: Any) -> None:
            kind = event.WhichOneof("event_payload")
            if kind in traced and self._tracer is not None:
                self._t_trace(kind, to_dict(getattr(event, kind)))

        # -- connecting ---------------------------------------------------------------------------------
        async def _t_on_connect(self, hs: Handshake) -> None:
            request = events_pb2.JoinRequest()
            request.CopyFrom(self.join_request)
            if hs.reconnect:
                request.fast_reconnect = True
            if self._tracer is not None:  # what the shipped client traces on each open
                self._t_trace("signal.ws.open", {"isTrusted": True})
                payload = {"oneofKind": "joinRequest", "joinRequest": to_dict(request)}
                self._t_trace("joinRequest", {"requestPayload": payload})
            await hs.send(events_pb2.SfuRequest(join_request=request).SerializeToString())
            while True:
                event = parse(await hs.recv())
                self._t_trace_event(event)  # a refused join's error too
                if event.HasField("error"):
                    err = event.error.error
                    # kept: tether reports a hook's exception as text, connect() re-raises the object
                    self._t_join_error = signaling_error(f"Connection failed: {err.message}", error=err)
                    raise self._t_join_error
                if event.HasField("join_response"):
                    break
                self._t_dispatch(event)  # e.g. a health reply or a participant event ahead of the ack
            if self.first_message is None:
                self.first_message = event
            else:
                self.rejoins += 1
                log.info(
                    "signaling rejoined the SFU (fast_reconnect, attempt %d)", hs.attempt, extra={"attempt": hs.attempt}
                )
                self._t_dispatch(event)
            self.last_health_check_time = time.time()

        async def connect(self) -> Any:
            if self.closed:
                raise signaling_error("Cannot reconnect a closed WebSocket client")
            from .. import Heartbeat

            if self._t_conn is not None:  # connect() again: the previous socket goes first
                self._t_conn.close()
                if self._t_reader is not None:
                    self._t_reader.cancel()
            self.first_message = None
            self._t_join_error = None
            conn = self._t_conn = tether_connect(
                self.url,
                policy=settings.policy or _default_policy(),
                on_connect=self._t_on_connect,
                heartbeat=Heartbeat(
                    health_request,
                    settings.health_interval,
                    is_reply=is_health_reply,
                    timeout=settings.health_timeout,
                ),
                stable_after=settings.stable_after,
                open_timeout=min(settings.attempt_timeout, settings.connect_timeout),
                fatal=(signaling_error,),
                name="getstream SFU signaling",
                logger=LOGGER_NAME,
            )
            try:
                await bounded(conn, settings.connect_timeout, what="SFU signaling connect")
            except BaseException as e:
                self._t_conn = None
                conn.close()
                if isinstance(e, GaveUp) and self._t_join_error is not None:
                    raise self._t_join_error from e
                if isinstance(e, TetherError):
                    raise signaling_error(f"Connection failed: {e}") from e
                raise
            self.running = True
            self._t_reader = asyncio.ensure_future(self._t_read(conn))
            return self.first_message

        # -- receiving ----------------------------------------------------------------------------------
        async def _t_read(self, conn: Connection) -> None:
            reason = "closed"
            try:
                async for raw in conn:
                    event = parse(raw)
                    if event.HasField("health_check_response"):
                        self.last_health_check_time = time.time()
                    if event.HasField("call_ended"):
                        self._t_call_ended = True
                    self._t_trace_event(event)
                    self._t_dispatch(event)
                return
            except GaveUp as e:
                reason = f"gave up reconnecting: {e}"
            except Exception as e:
                reason = f"error: {e}"
            finally:
                self.running = False
            if not self.closed and not self._t_call_ended and not self._t_lost_sent:
                self._t_lost_sent = True
                log.warning("signaling connection lost for good: %s", reason, extra={"reason": reason})
                self.emit("connection_lost", reason)

        def _t_dispatch(self, event: Any) -> None:
            kind = event.WhichOneof("event_payload")
            if not kind:
                return
            # the shipped client emits each event in a task of its own, so a listener that raises loses
            # that event only; here it would end the reader
            try:
                with telemetry.attach_span(self.parent_span):
                    self.emit(kind, getattr(event, kind))
            except Exception:
                log.exception("a listener of the SFU event %s raised; signaling goes on", kind, extra={"event": kind})

        # -- closing ------------------------------------------------------------------------------------
        def close(self) -> None:
            if self.closed:
                return
            self.closed = True
            self.running = False
            if self._t_reader is not None:
                self._t_reader.cancel()
                self._t_reader = None
            if self._t_conn is not None:
                self._t_conn.close()
                self._t_conn = None
            self.remove_all_listeners()
            remove_wildcards = getattr(self, "remove_all_wildcard_listeners", None)
            if remove_wildcards is not None:
                remove_wildcards()

        @property
        def connection(self) -> Connection | None:
            """The underlying ``tether.Connection`` (None before ``connect()`` / after ``close()``)."""
            return self._t_conn

    WebSocketClient.__module__ = __name__
    WebSocketClient.__qualname__ = "WebSocketClient"
    return WebSocketClient


__all__ = [
    "SIGNALING_REQUIREMENT",
    "CallWatch",
    "InstallReport",
    "install",
    "installed_parts",
    "instrumentation_dependencies",
    "uninstall",
    "watch_call",
]

"""getstream SFU signaling (3.x–6.x) on ``tether.connect``, or (7.0) a watch on every call: one call
before joining a call.

    from tether.integrations import getstream
    getstream.install()

On getstream 7, whose signaling is in Rust, ``install()`` installs part ``call_watch`` instead
(``tether.integrations._getstream_call``: ``watch_call``, ``CallWatch``).

Part ``signaling`` replaces ``getstream.video.rtc.signaling.WebSocketClient`` (and the name
``connection_utils`` uses) with a drop-in subclass whose socket is a ``tether.connect`` connection
(seed 003):

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
import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .._connect import Connection
from .._connect import connect as tether_connect
from .._errors import GaveUp, TetherError
from .._hooks import Handshake
from .._native import Backoff
from .._watchdog import bounded
from . import _getstream_call
from ._getstream_call import CallWatch, watch_call
from ._patch import InstallReport, Integration, Patches, missing_attrs, missing_params

#: getstream versions this integration was tested with: >= first, < second.
TESTED_VERSIONS = ("3.3", "7.0")

LOGGER_NAME = "getstream.video.rtc.signaling"

_integration = Integration("getstream", "getstream", TESTED_VERSIONS)
_CLIENT_PARAMS = ("url", "join_request", "main_loop", "tracer", "sfu_id_fn")
_CLIENT_METHODS = ("connect", "close", "on_event", "on_wildcard", "emit", "remove_all_listeners")


class _Settings:
    __slots__ = ("attempt_timeout", "connect_timeout", "health_interval", "health_timeout", "policy", "stable_after")

    def __init__(
        self,
        policy: Backoff | None,
        health_interval: float,
        health_timeout: float | None,
        connect_timeout: float,
        attempt_timeout: float,
        stable_after: float,
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
    health_interval: float = 5.0,
    health_timeout: float | None = None,
    connect_timeout: float = 15.0,
    attempt_timeout: float = 5.0,
    stable_after: float = 10.0,
    allow_untested: bool = False,
) -> InstallReport:
    """Patch getstream's signaling client (idempotent; undo with ``uninstall()``).

    ``policy``: reconnect policy of the signaling socket (default: immediate first retry, then 0.25 s
    doubling to 5 s, equal jitter, for 30 s — the SFU's own disconnection timeout). A health check is
    sent every ``health_interval`` seconds; no ``health_check_response`` within ``health_timeout``
    (default: the interval) declares the link lost. ``connect_timeout`` bounds ``connect()``;
    ``attempt_timeout`` bounds each (re)connect attempt: WebSocket handshake plus rejoin.
    Returns an ``InstallReport``; a refused part logs a WARNING naming what is missing.

    getstream 7 has no Python signaling: there ``install()`` installs part ``call_watch`` instead (a
    ``CallWatch`` on every ``ConnectionManager``, see ``watch_call``); the signaling settings do not apply.
    """
    # -- getstream >= 7: the call part (tether.integrations._getstream_call) --------------------------
    if _getstream_call.handles_installed_version():
        report = _getstream_call.install(allow_untested=allow_untested)
        if report.patched:
            return report
        # nothing fits this version: say so for the signaling part too (its modules are gone since 7)
        low, high = TESTED_VERSIONS
        _integration.refuse("signaling", f"getstream {report.version} is outside the tested range >={low},<{high}")
        refused = {**_integration.report().refused, **report.refused}
        return InstallReport(report.framework, report.version, (), refused)
    # -- getstream 3.3 to 6.x: the signaling part -------------------------------------------------------
    if _integration.version_refused(("signaling",), allow_untested):
        return _integration.report()

    connection_utils = importlib.import_module("getstream.video.rtc.connection_utils")
    signaling = importlib.import_module("getstream.video.rtc.signaling")
    events_pb2 = importlib.import_module("getstream.video.rtc.pb.stream.video.sfu.event.events_pb2")

    base = getattr(signaling, "WebSocketClient", None)
    missing = missing_attrs(signaling, ("WebSocketClient", "SignalingError"))
    missing += missing_attrs(connection_utils, ("WebSocketClient",))
    missing += missing_attrs(events_pb2, ("SfuRequest", "SfuEvent", "HealthCheckRequest", "JoinRequest"))
    if base is not None:
        missing += missing_params(base.__init__, _CLIENT_PARAMS) + missing_attrs(base, _CLIENT_METHODS)
    if not missing:
        fields = events_pb2.JoinRequest.DESCRIPTOR.fields_by_name
        if "fast_reconnect" not in fields:
            missing.append("JoinRequest.fast_reconnect")
    settings = _Settings(policy, health_interval, health_timeout, connect_timeout, attempt_timeout, stable_after)

    def patch(p: Patches) -> None:
        client = _make_client_class(base, signaling.SignalingError, events_pb2, settings)
        p.set(signaling, "WebSocketClient", client)
        if connection_utils.WebSocketClient is base:
            p.set(connection_utils, "WebSocketClient", client)

    _integration.apply("signaling", missing, patch)
    return _integration.report()


def uninstall() -> None:
    """Undo ``install()`` for clients created afterwards."""
    _integration.uninstall()
    _getstream_call.uninstall()


def _default_policy() -> Backoff:
    return Backoff(initial=0.25, factor=2.0, max_delay=5.0, jitter="equal", deadline=30.0)


def _make_client_class(base: Any, signaling_error: Any, events_pb2: Any, settings: _Settings) -> type:
    log = logging.getLogger(LOGGER_NAME)
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

        # -- connecting ---------------------------------------------------------------------------------
        async def _t_on_connect(self, hs: Handshake) -> None:
            request = events_pb2.JoinRequest()
            request.CopyFrom(self.join_request)
            if hs.reconnect:
                request.fast_reconnect = True
            await hs.send(events_pb2.SfuRequest(join_request=request).SerializeToString())
            while True:
                event = parse(await hs.recv())
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
            if kind:
                self.emit(kind, getattr(event, kind))

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


__all__ = ["TESTED_VERSIONS", "CallWatch", "InstallReport", "install", "uninstall", "watch_call"]

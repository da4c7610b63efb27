"""getstream 7.x: a watcher on every call (``ConnectionManager``), since the signaling is in Rust.

getstream 7 moved the SFU signaling into a Rust extension (``getstream-rtc``): no Python socket is left
to put on ``tether.connect``. Its own reconnect (FAST, then REJOIN) starts only when the socket closes
or a peer connection fails. It sends a health check every 5 s but never waits for the reply, so a
black-holed SFU leaves the call JOINED while nothing arrives (the ghost room), and a reconnect into a
black hole has no deadline (stuck reconnecting).

Part ``call_watch`` wraps four public methods of ``ConnectionManager`` (each wrapper calls the
original): ``connect`` attaches a ``CallWatch`` with ``getstream.install()``'s settings to every manager
that joined (``watch_call`` attaches one by hand, with its own), ``leave`` ends it, ``wait`` waits through a rejoin, ``add_tracks``
remembers what to publish again. The watch:

* dwell alarms: RECONNECTING or MIGRATING for longer than ``reconnecting_timeout``; RECONNECTING_FAILED;
* liveness alarm: JOINED, a remote participant publishes audio, and for ``media_timeout`` seconds
  nothing arrived: no remote audio frame (the manager's ``audio`` event) and no SFU event. The SFU's
  health-check replies would be the direct signal, but 7.0 consumes them in Rust (only a changed
  participant count reaches Python);
* on an alarm: one WARNING under the manager's logger, ``on_alarm(alarm)``, then (``rejoin=True``) a
  bounded leave and a rejoin of the same manager: every attempt bounded by ``join_timeout``, retried on
  ``policy``; the tracks the application published with ``add_tracks`` are published again. The
  application's ``wait()`` keeps waiting through a rejoin and raises ``tether.GaveUp`` if it gave up.

A 7.0 manager cannot simply ``connect()`` again after ``leave()``: the SDK call joins, but event
streams made after a leave end at once, so the call would be JOINED and deaf. A rejoin therefore gives
the manager a fresh SDK call (from the manager's own constructor), stops the left call's event tasks,
resets the two flags ``leave()`` sets for good, and replaces the participant list. Those private names
are checked before anything is patched; a missing one refuses the part with a WARNING.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from .._native import Backoff, GaveUp, Liveness, Watchdog, redact
from .._reconnect import Reconnector
from .._watchdog import Alarm, bounded
from ._patch import Checks, Part, Patches, PatchFn

PART = "call_watch"

#: the releases the call part was tested with (7.0.0 runs in ``make test``); its release line is 7 and up
CALL_WATCH_REQUIREMENT = "getstream>=7.0,<7.1"
CALL_WATCH_LINE = ">=7.0.0.dev0"  # from the first pre-release of 7, where the signaling part's line ends

LOGGER_NAME = "getstream.video.rtc.connection_manager"

# Public names the watch uses.
_MANAGER_METHODS = (
    "connect",
    "leave",
    "wait",
    "add_tracks",
    "on",
    "remove_listener",
    "connection_state",
)
_MANAGER_PARAMS = ("call", "user_id", "create")
# Set in __init__: public ones, and the private state a rejoin resets (the SDK call, single use after a
# leave, the two flags leave() sets for good) or stops (the event tasks of the left call).
_MANAGER_STATE = (
    "call",
    "user_id",
    "create",
    "participants_state",
    "_rust_call",
    "_leaving",
    "_stop_event",
    "_event_tasks",
)
_CALLING_STATES = ("IDLE", "JOINING", "JOINED", "RECONNECTING", "MIGRATING", "RECONNECTING_FAILED", "LEFT")

# Every SFU event the manager emits: any of them shows the signaling socket still delivers.
_SFU_EVENTS = (
    "audio_level_changed",
    "connection_quality_changed",
    "dominant_speaker_changed",
    "participant_count_changed",
    "participant_joined",
    "participant_left",
    "participant_updated",
    "track_published",
    "track_unpublished",
    "pins_updated",
    "inbound_state_notification",
    "call_grants_updated",
    "change_publish_options",
    "change_publish_quality",
    "ice_restart",
    "error",
)

# A RECONNECTING_FAILED call stays there until it is left: alarm at once.
_FAILED_DWELL = 0.1

# Defaults of watch_call() and install(), in seconds. Remote audio comes every 20 ms (every 400 ms in
# DTX silence), so 10 s without it or any SFU event is a dead call; 7.0's own reconnect retries within
# 5 s, so 15 s in RECONNECTING is stuck. A join in flight when the link heals completes then; a join
# bounded to 10 s and retried within the policy's 4 s keeps the rejoin close to the heal.
RECONNECTING_TIMEOUT = 15.0
MEDIA_TIMEOUT = 10.0
JOIN_TIMEOUT = 10.0
LEAVE_TIMEOUT = 5.0


def _default_policy() -> Backoff:
    # 7.0's own REJOIN waits 250 ms to 5 s; a call is worth two minutes of retrying before giving up
    return Backoff(initial=0.5, factor=2.0, max_delay=4.0, jitter="equal", deadline=120.0)


class _Settings:
    __slots__ = (
        "join_timeout",
        "leave_timeout",
        "media_timeout",
        "on_alarm",
        "policy",
        "reconnecting_timeout",
        "rejoin",
    )

    def __init__(
        self,
        reconnecting_timeout: float = RECONNECTING_TIMEOUT,
        media_timeout: float | None = MEDIA_TIMEOUT,
        rejoin: bool = True,
        policy: Backoff | None = None,
        join_timeout: float = JOIN_TIMEOUT,
        leave_timeout: float = LEAVE_TIMEOUT,
        on_alarm: Callable[[Alarm], object] | None = None,
    ) -> None:
        self.reconnecting_timeout = reconnecting_timeout
        self.media_timeout = media_timeout
        self.rejoin = rejoin
        self.policy = policy
        self.join_timeout = join_timeout
        self.leave_timeout = leave_timeout
        self.on_alarm = on_alarm


_watches: weakref.WeakKeyDictionary[Any, CallWatch] = weakref.WeakKeyDictionary()
# what the application published with add_tracks(), per manager: a rejoin publishes it again
_published: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _original(method: Any) -> Any:
    """The framework's own function under tether's wrapper (if any)."""
    return getattr(method, "__wrapped__", method)


class CallWatch:
    """What ``watch_call`` returns: the watch of one ``ConnectionManager``. ``alarms``: the alarms so far;
    ``rejoins``: completed rejoins; ``gave_up``: the ``tether.GaveUp`` of a rejoin that failed for good.
    ``close()`` detaches it. ``CallWatch.of(manager)`` finds the watch of a manager."""

    def __init__(self, manager: Any, settings: _Settings) -> None:
        rtc = importlib.import_module("getstream_rtc")
        cs = rtc.CallingState
        self.manager = manager
        self.alarms: list[Alarm] = []
        self.rejoins = 0
        self.gave_up: GaveUp | None = None
        self._s = settings
        self._audio_type = rtc.TrackType.AUDIO
        self._state_names: dict[Any, str] = {getattr(cs, n): n.lower() for n in _CALLING_STATES}
        self._log = logging.getLogger(LOGGER_NAME)
        self._cid = f"{getattr(manager.call, 'call_type', '?')}:{getattr(manager.call, 'id', '?')}"
        self._recovery: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._publishers: dict[str, set[Any]] = {}
        self._media: Liveness | None = None
        self._closed = False
        # the alarm's one WARNING is _alarm's, under the manager's logger
        self._wd = Watchdog(f"getstream call {self._cid}", on_alarm=self._alarm, logger=LOGGER_NAME)
        self._wd.dwell("reconnecting", settings.reconnecting_timeout)
        self._wd.dwell("migrating", settings.reconnecting_timeout)
        self._wd.dwell("reconnecting_failed", _FAILED_DWELL)
        self._handlers: list[tuple[str, Callable[..., None]]] = [
            ("connection.state_changed", self._on_state),
            ("audio", self._on_inbound),
            ("call_ended", self._on_call_ended),
            ("participant_updated", self._on_participant_updated),
            ("track_published", self._on_track_published),
            ("track_unpublished", self._on_track_unpublished),
        ]
        self._handlers += [(name, self._on_inbound) for name in _SFU_EVENTS if name not in dict(self._handlers)]
        for event, handler in self._handlers:
            manager.on(event, handler)
        _watches[manager] = self
        # called now and on every join, leave and replacement of the manager's participant list
        self._participants = manager.participants_state.map(self._on_participants)
        self._set_state(manager.connection_state)

    @staticmethod
    def of(manager: Any) -> CallWatch | None:
        return _watches.get(manager)

    # -- call events ----------------------------------------------------------------------------------
    def _set_state(self, state: Any) -> None:
        name = self._state_names.get(state, str(state))
        if self._wd.state is None or self._wd.state[0] != name:
            self._wd.set_state(name)
        self._arm_media()

    def _on_state(self, change: Any) -> None:
        self._set_state(change["new"] if isinstance(change, dict) else change)

    def _on_inbound(self, *_: Any) -> None:
        if self._media is not None:
            self._media.beat()

    def _on_call_ended(self, *_: Any) -> None:
        # the call is over for everyone: nothing to rejoin
        self.close()

    def _on_participants(self, participants: list[Any]) -> None:
        # who publishes what: from the manager's list (joins, leaves, a rejoin's fresh list), kept up to
        # date by the track events in between
        remote = {p.session_id: p for p in participants if p.user_id != self.manager.user_id}
        for session in set(self._publishers) - set(remote):
            del self._publishers[session]
        for session, p in remote.items():
            self._publishers.setdefault(session, set(p.published_tracks))
        self._arm_media()

    def _on_participant_updated(self, event: Any) -> None:
        p = event.participant
        if p.user_id != self.manager.user_id:
            self._publishers[p.session_id] = set(p.published_tracks)
        self._on_inbound()
        self._arm_media()

    def _on_track_published(self, event: Any) -> None:
        if event.user_id != self.manager.user_id:
            self._publishers.setdefault(event.session_id, set()).add(event.track_type)
        self._on_inbound()
        self._arm_media()

    def _on_track_unpublished(self, event: Any) -> None:
        self._publishers.get(event.session_id, set()).discard(event.track_type)
        self._on_inbound()
        self._arm_media()

    def _arm_media(self) -> None:
        if self._s.media_timeout is None or self._wd.closed:
            return
        joined = self._wd.state is not None and self._wd.state[0] == "joined"
        wanted = joined and any(self._audio_type in tracks for tracks in self._publishers.values())
        # a fresh key (not pause/beat) so the deadline counts from now and the watchdog re-arms at once
        if wanted and self._media is None:
            self._media = self._wd.liveness("remote media", self._s.media_timeout)
        elif not wanted and self._media is not None:
            self._wd.remove(self._media)
            self._media = None

    # -- alarms ---------------------------------------------------------------------------------------
    def _alarm(self, alarm: Alarm) -> None:
        if self._closed:
            return
        self.alarms.append(alarm)
        # with on_alarm the watchdog leaves the report to its handler (this one): the alarm's WARNING
        self._log.warning("%s", alarm.message, extra={"call_cid": self._cid, "alarm": alarm.kind})
        if self._s.on_alarm is not None:
            try:
                result = self._s.on_alarm(alarm)
            except Exception:  # the application's bug must not cancel the recovery
                self._log.exception("call %s: on_alarm raised", self._cid, extra={"call_cid": self._cid})
            else:
                if inspect.isawaitable(result):
                    self._spawn(result)
        if self._s.rejoin and self._recovery is None:
            self._log.info("call %s: leaving and joining it again", self._cid, extra={"call_cid": self._cid})
            self._recovery = self._spawn(self._rejoin())

    def _spawn(self, aw: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- leave and rejoin -----------------------------------------------------------------------------
    async def _rejoin(self) -> None:
        try:
            await self._leave_dead_call()
            await self._join_again()
        finally:
            self._recovery = None

    async def _leave_dead_call(self) -> None:
        manager = self.manager
        event_tasks = list(manager._event_tasks)
        try:
            await bounded(_original(type(manager).leave)(manager), self._s.leave_timeout, what="leave()")
        except Exception as e:
            # 7.0's leave waits for the SFU to answer its close frame, with no deadline: on a black-holed
            # socket it never returns. The SDK finishes it in the background; the rejoin uses a new SDK call.
            self._log.info("call %s: leave did not complete: %s", self._cid, redact(str(e)))
        # a cut-short leave did not wait for the old call's event tasks: once the rejoin resets the
        # manager, their end would look like the end of the call (call_ended, wait() returning)
        for task in event_tasks:
            task.cancel()
        if event_tasks:
            await asyncio.wait(event_tasks, timeout=self._s.leave_timeout)
        manager._event_tasks = []  # a later leave() gathers them

    async def _join_again(self) -> None:
        manager = self.manager
        started = time.monotonic()
        reconnector = Reconnector(
            self._s.policy or _default_policy(),
            attempt_timeout=self._s.join_timeout,
            name=f"getstream call {self._cid} rejoin",
            logger=LOGGER_NAME,
        )

        async def attempt() -> None:
            await self._join_once()
            reconnector.connected()

        try:
            await reconnector.run(attempt)
        except GaveUp as e:
            self.gave_up = e  # the reconnector logged it (ERROR, under the manager's logger)
            return
        self.rejoins += 1
        self._log.info(
            "call %s joined again after %.2fs",
            self._cid,
            time.monotonic() - started,
            extra={"call_cid": self._cid, "rejoins": self.rejoins},
        )
        published = _published.get(manager)
        if published:
            try:
                await bounded(
                    _original(type(manager).add_tracks)(manager, **published),
                    self._s.join_timeout,
                    what="add_tracks()",
                )
            except Exception as e:
                self._log.warning("call %s: tracks not published again: %s", self._cid, redact(str(e)))

    async def _join_once(self) -> None:
        manager = self.manager
        # a left SDK call joins again but its new event streams end at once: take a fresh one from the
        # manager's own constructor, and undo what leave() set for good
        fresh = type(manager)(call=manager.call, user_id=manager.user_id, create=manager.create)
        manager._rust_call = fresh._rust_call
        manager._leaving = False
        manager._stop_event.clear()
        try:
            await _original(type(manager).connect)(manager)
        except BaseException:
            manager._stop_event.set()
            raise
        # 7.0 keeps the pre-outage participants beside the new ones: take the SDK's list (and forget
        # what the watch knew of the old ones)
        self._publishers.clear()
        manager.participants_state._replace_participants(manager._rust_call.participants())

    # -- the application's calls (through the part's wrappers) ----------------------------------------
    async def _goes_on(self) -> bool:
        """After the manager's stop event woke ``wait()``: whether the call goes on (a rejoin)."""
        recovery = self._recovery
        if recovery is not None:
            await asyncio.shield(recovery)
        if self.gave_up is not None:
            raise self.gave_up
        # a rejoin clears the stop event before it joins again
        return not self.manager._stop_event.is_set()

    async def _left_by_application(self) -> None:
        recovery = self._recovery
        self.close()
        if recovery is not None:
            recovery.cancel()
            await asyncio.wait({recovery}, timeout=self._s.leave_timeout + self._s.join_timeout)

    # -- closing --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop watching (the application's ``leave()`` and the end of the call do it)."""
        if self._closed:
            return
        self._closed = True
        for event, handler in self._handlers:
            self.manager.remove_listener(event, handler)
        self._handlers.clear()
        self._participants.unsubscribe()
        if _watches.get(self.manager) is self:
            del _watches[self.manager]
        self._wd.close()

    async def aclose(self) -> None:
        """``close()``, then cancel what an alarm started (a rejoin in progress) and wait for it, bounded."""
        self.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._s.leave_timeout + self._s.join_timeout)


def watch_call(
    manager: Any,
    *,
    reconnecting_timeout: float = RECONNECTING_TIMEOUT,
    media_timeout: float | None = MEDIA_TIMEOUT,
    rejoin: bool = True,
    policy: Backoff | None = None,
    join_timeout: float = JOIN_TIMEOUT,
    leave_timeout: float = LEAVE_TIMEOUT,
    on_alarm: Callable[[Alarm], object] | None = None,
) -> CallWatch:
    """Watch a getstream 7 ``ConnectionManager`` for stuck-reconnecting and ghost calls.

    * dwell alarm when the call stays RECONNECTING (or MIGRATING) longer than ``reconnecting_timeout``
      seconds, and at once on RECONNECTING_FAILED;
    * liveness alarm when the call is JOINED, a remote participant publishes audio, and neither a remote
      audio frame nor an SFU event arrived for ``media_timeout`` seconds (``None`` disables it);
    * on an alarm: one WARNING under ``getstream.video.rtc.connection_manager`` naming the call,
      ``on_alarm(alarm)`` (sync or async), then with ``rejoin=True`` ``leave()`` bounded by
      ``leave_timeout`` and joins of the same manager, each bounded by ``join_timeout``, retried on
      ``policy`` (default: 0.5 s doubling to 4 s, for 120 s). The application's ``wait()`` goes on
      waiting through a rejoin and raises ``tether.GaveUp`` when the retries are exhausted.

    ``install()`` attaches one with its own settings (these defaults unless given) to every manager that
    joins; the rejoin needs the part's wrappers of ``connect``/``leave``/``wait``/``add_tracks``, so this
    installs the part if it is not (a ``RuntimeError`` names why when it is refused). Call from the loop the manager runs on; a
    manager has one watch (a new one replaces it).
    """
    from . import getstream

    if PART not in getstream.installed_parts():
        report = getstream.install()
        if PART not in report.patched:
            why = report.refused.get(PART) or f"getstream {report.version} has no call part (it is for getstream 7)"
            raise RuntimeError(f"tether cannot watch this getstream call: {why}")
    manager_class = importlib.import_module("getstream.video.rtc.connection_manager").ConnectionManager
    if not isinstance(manager, manager_class):
        raise TypeError(f"watch_call() takes a getstream ConnectionManager, not {type(manager).__name__}")
    previous = CallWatch.of(manager)
    if previous is not None:
        previous.close()
    settings = _Settings(reconnecting_timeout, media_timeout, rejoin, policy, join_timeout, leave_timeout, on_alarm)
    return CallWatch(manager, settings)


def call_watch_part(settings: _Settings) -> Part:
    """The part ``getstream.install()`` declares for getstream 7: a ``CallWatch`` with ``settings`` on
    every ``ConnectionManager`` once it joined."""
    uses = ("reconnecting_timeout", "media_timeout", "rejoin", "policy", "join_timeout", "leave_timeout", "on_alarm")
    return Part(PART, CALL_WATCH_REQUIREMENT, functools.partial(_prepare, settings), line=CALL_WATCH_LINE, uses=uses)


def _prepare(settings: _Settings, c: Checks) -> PatchFn | None:
    cm_module = c.module("getstream.video.rtc.connection_manager")
    participants = c.module("getstream.video.rtc.participants")
    rtc = c.module("getstream_rtc")
    if cm_module is None or participants is None or rtc is None:
        return None
    manager = c.attr(cm_module, "ConnectionManager")
    c.attrs(rtc, ("CallingState", "TrackType", "Call"))
    state = c.attr(participants, "ParticipantsState")
    if state is not None:
        c.attrs(state, ("map", "get_participants", "_replace_participants"))
    if manager is not None:
        c.attrs(manager, _MANAGER_METHODS)
        c.params(manager.__init__, _MANAGER_PARAMS)
        c.instance_attrs(manager, _MANAGER_STATE)
    if hasattr(rtc, "CallingState"):
        c.attrs(rtc.CallingState, _CALLING_STATES)
    if hasattr(rtc, "Call"):
        c.attrs(rtc.Call, ("participants", "calling_state"))
    if not c:
        return None

    def patch(p: Patches) -> None:
        for name, wrapper in _wrappers(settings).items():
            p.wrap(manager, name, wrapper)

    return patch


Wrapper = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


def _wrappers(settings: _Settings) -> dict[str, Wrapper]:
    """Wrappers (``Patches.wrap``'s shape) of the manager's public methods; each calls the original."""

    async def connect(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = await wrapped(*args, **kwargs)
        manager = args[0]
        if CallWatch.of(manager) is None:
            try:
                CallWatch(manager, settings)
            except Exception as e:  # the call is joined: a watch that cannot start must not undo that
                logging.getLogger("tether.integrations").warning(
                    "tether.integrations.getstream: not watching this call: %s", redact(str(e))
                )
        return result

    async def leave(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        watch = CallWatch.of(args[0])
        if watch is not None:
            await watch._left_by_application()
        return await wrapped(*args, **kwargs)

    async def wait(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        while True:
            result = await wrapped(*args, **kwargs)
            watch = CallWatch.of(args[0])
            if watch is None or not await watch._goes_on():
                return result

    async def add_tracks(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = await wrapped(*args, **kwargs)
        manager, audio, video = _tracks(*args, **kwargs)
        tracks = _published.setdefault(manager, {})
        if audio is not None:
            tracks["audio"] = audio
        if video is not None:
            tracks["video"] = video
        return result

    return {"connect": connect, "leave": leave, "wait": wait, "add_tracks": add_tracks}


def _tracks(manager: Any, audio: Any = None, video: Any = None) -> tuple[Any, Any, Any]:
    """The arguments of ``ConnectionManager.add_tracks(audio=None, video=None)`` however they were passed."""
    return manager, audio, video


__all__ = ["CALL_WATCH_REQUIREMENT", "CallWatch", "call_watch_part", "watch_call"]

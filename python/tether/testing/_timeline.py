"""``tether.testing.Timeline``: what connections, reconnect loops, pools and watchdogs reported, on one clock.

A failing resilience test usually fails because of *when* things happened: the loss was detected late, a
retry waited longer than expected, the recovery came after the assertion. The recorder keeps every event
of the sources it watches, your own marks and (optionally) log records, with the time each reached
Python, and renders them as text or as a self-contained HTML page to attach to the failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, TextIO

from .. import _native
from ._timeline_html import Section, page


@dataclasses.dataclass(frozen=True)
class Entry:
    """One thing on the timeline: ``at`` seconds after the recorder started, its ``kind`` (an event's
    class name, or the kind given to ``mark``), a redacted ``text``, the ``lane`` (the watched source it
    came from; None for marks), ``event`` (the event's class name, also when a subclass shows it under
    another kind) and ``fields`` (the event's fields)."""

    at: float
    kind: str
    text: str
    lane: str | None = None
    event: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)


def _fields(event: Any) -> dict[str, Any]:
    """An event's fields, in order: the names its class matches positionally (none for other objects)."""
    return {name: getattr(event, name) for name in getattr(type(event), "__match_args__", ())}


def describe(event: Any) -> str:
    """``name=value ...`` of an event's fields (or its ``str`` if it is not an event)."""
    if not hasattr(type(event), "__match_args__"):
        return str(event)
    return " ".join(f"{name}={value!r}" for name, value in _fields(event).items())


# A connection's ``state`` when watching begins, as the page draws it: the band starts there instead of
# at the first event, which may come much later (a connection watched once connected).
_STATES = {
    "connecting": "connecting",
    "connected": "connected",
    "reconnecting": "down",
    "closing": "closed",
    "closed": "closed",
    "failed": "failed",
}


class _Lane:
    """One watched source: its stream, the task that records it, when watching began and in which state,
    and when the stream ended (seconds after the recorder's start)."""

    def __init__(self, name: str, stream: Any, started_at: float, initial: str | None) -> None:
        self.name = name
        self.stream = stream
        self.task: asyncio.Task[None] | None = None
        self.started_at = started_at
        self.initial = initial
        self.ended_at: float | None = None


class _LogHandler(logging.Handler):
    def __init__(self, rec: Timeline) -> None:
        super().__init__(logging.NOTSET)
        self.rec = rec

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.rec._add(f"log {record.levelname}", record.getMessage(), lane=None, echo=False)
        except Exception:  # a recorder must never break the code it observes
            self.handleError(record)


class Timeline:
    """Record what tether reports, on one clock, to read or look at after a failure.

    ``rec.watch(conn)`` subscribes to ``conn.events()`` at the call (so call it before whatever causes
    the events you want, as for ``events()`` itself) and records each event, with the time it reached
    Python, until the stream ends; it works the same for a ``Reconnector`` (``events()``), a ``ProcPool``
    (``events()``) and a ``Watchdog`` (its alarms), and needs a running event loop. ``rec.mark(kind,
    text)`` adds your own points: the kinds "fault", "detected" and "recovered" (any case) are drawn as
    lines across the page. ``rec.capture_logs("tether")`` adds the records of a logger (they are not
    echoed: your logging configuration prints them already). ``rec.text()`` and ``rec.write_html(path)``
    render what was recorded so far, including events still waiting in the watched streams; the page is
    self-contained (inline CSS and SVG, no network fetch). Every text is redacted as tether's logs are.
    ``echo``: a file (e.g. ``sys.stdout``) that gets each entry as a line as it is recorded.

    ::

        rec = tether.testing.Timeline("reconnect test")
        rec.watch(conn)
        try:
            ...
        finally:
            rec.write_html(tmp_path / "timeline.html")
    """

    def __init__(self, title: str = "timeline", *, echo: TextIO | None = None) -> None:
        self.title = _native.redact(title)
        self.echo = echo
        self.t0 = time.monotonic()
        self.entries: list[Entry] = []
        self._lanes: list[_Lane] = []
        self._log_handlers: list[tuple[logging.Logger, _LogHandler]] = []

    # -- recording -------------------------------------------------------------------------------------
    def watch(self, source: Any, *, lane: str | None = None) -> asyncio.Task[None]:
        """Record every event ``source`` reports from now on, in the lane ``lane`` (default: the source's
        name, URL or class). Returns the task that records them; it ends when the stream ends (the source
        closed or gave up)."""
        loop = asyncio.get_running_loop()  # before subscribing: without a loop nothing would record
        stream = _stream_of(source)
        name = self._unique(_native.redact(lane or _lane_name(source)))
        state = getattr(source, "state", None)
        initial = _STATES.get(state) if isinstance(state, str) else None
        entry = _Lane(name, stream, time.monotonic() - self.t0, initial)
        self._lanes.append(entry)
        entry.task = loop.create_task(self._record(entry), name=f"tether.testing.Timeline {name}")
        return entry.task

    def mark(self, kind: str, text: str = "", *, lane: str | None = None) -> float:
        """Add a point of your own (a fault you injected, a check that passed) now; returns its time as
        ``time.monotonic()``."""
        return self._add(kind, text, lane=lane)

    def capture_logs(self, logger: str | logging.Logger = "tether") -> None:
        """Also record the log records ``logger`` handles (its level decides which), as kind ``log
        LEVEL``, until ``stop()``."""
        log = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
        handler = _LogHandler(self)
        log.addHandler(handler)
        self._log_handlers.append((log, handler))

    def stop(self) -> None:
        """Take what the watched streams still hold, stop watching them and stop capturing logs."""
        self._drain()
        for lane in self._lanes:
            if lane.task is not None and not lane.task.done():
                lane.task.cancel()
        for log, handler in self._log_handlers:
            log.removeHandler(handler)
        self._log_handlers.clear()

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def lanes(self) -> list[str]:
        """The names of the watched sources, in the order they were watched."""
        return [lane.name for lane in self._lanes]

    def seen(self, kind: str, contains: str = "") -> int:
        """How many entries of ``kind`` have ``contains`` in their text."""
        return sum(1 for e in self.entries if e.kind == kind and contains in e.text)

    def text(self) -> str:
        """Every entry as a line: ``[ time ms] kind  text``, with its lane when there are several."""
        self._drain()
        several = len(self._lanes) > 1
        lines = [f"== {self.title}"]
        for e in self.entries:
            lane = f"({e.lane}) " if several and e.lane else ""
            lines.append(_line(e, lane))
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """A self-contained HTML page of this timeline."""
        self._drain()
        return page(self.title, [Section(self.title, "", None, self)])

    def write_html(self, path: Any) -> None:
        """Write ``html()`` to ``path`` (UTF-8)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.html())

    # -- internals -------------------------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        taken = {lane.name for lane in self._lanes}
        if name not in taken:
            return name
        n = 2
        while f"{name} #{n}" in taken:
            n += 1
        return f"{name} #{n}"

    def _add(
        self,
        kind: str,
        text: str,
        *,
        lane: str | None,
        event: str | None = None,
        fields: dict[str, Any] | None = None,
        echo: bool = True,
    ) -> float:
        now = time.monotonic()
        entry = Entry(now - self.t0, kind, _native.redact(text), lane, event, fields or {})
        self.entries.append(entry)
        if echo and self.echo is not None:
            print(_line(entry, ""), file=self.echo, flush=True)
        return now

    def _event(self, ev: Any, lane: str) -> None:
        """Record one event. A subclass may show some events under another kind (the demo shows a loss
        as its detection); ``event`` keeps the class name for drawing the lane's states."""
        name = type(ev).__name__
        self._add(name, describe(ev), lane=lane, event=name, fields=_fields(ev))

    def _take(self, lane: _Lane) -> bool:
        """Record what ``lane``'s stream holds now; False once it ended."""
        while True:
            try:
                ev = lane.stream.try_next()
            except StopAsyncIteration:
                if lane.ended_at is None:
                    lane.ended_at = time.monotonic() - self.t0
                return False
            if ev is None:
                return True
            self._event(ev, lane.name)

    async def _record(self, lane: _Lane) -> None:
        while self._take(lane):
            await lane.stream.wait()

    def _drain(self) -> None:
        for lane in self._lanes:
            if lane.ended_at is None:
                self._take(lane)


def _line(e: Entry, lane: str) -> str:
    return f"  [{e.at * 1000:9.1f} ms] {lane}{e.kind:<12} {e.text}"


def _stream_of(source: Any) -> Any:
    """The event stream of a source: ``events()``, a watchdog's ``alarms()``, or a stream itself."""
    if hasattr(source, "try_next") and hasattr(source, "wait"):
        return source
    if isinstance(source, _native.Watchdog):
        return source.alarms()
    events = getattr(source, "events", None)
    if callable(events):
        return events()
    raise TypeError(
        f"cannot watch {type(source).__name__}: give a connection, Reconnector, ProcPool, Watchdog or one "
        "of their event streams"
    )


def _lane_name(source: Any) -> str:
    for attr in ("name", "url"):
        value = getattr(source, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(source).__name__

"""A demo scenario's timeline: the shared recorder (``tether.testing.Timeline``) plus the scenario's fault,
its detection and its recovery, whose times the summary prints."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .. import events as ev
from ..testing import Timeline as Recorder


class Skip(Exception):
    """Raised by a scenario that cannot run here (the reason is printed)."""


class Timeline(Recorder):
    """Prints each entry as it is recorded. For the sources watched through ``_ws.watch`` (``outcome``
    lanes), a loss is the scenario's detection and a reconnect its recovery (kinds DETECTED and
    RECOVERED), as the fault is FAULT; other lanes show their events as they are."""

    def __init__(self, scenario: str, out: TextIO = sys.stdout) -> None:
        super().__init__(scenario, echo=out)
        self.scenario = scenario
        self.fault_at: float | None = None
        self.detected_at: float | None = None
        self.recovered_at: float | None = None
        self.notes: list[str] = []
        self.outcome_lanes: set[str] = set()

    @property
    def marks(self) -> list[tuple[str, str]]:
        """Every entry as (kind, text), in order: scenarios check their title's claims against it."""
        return [(e.kind, e.text) for e in self.entries]

    def fault(self, text: str) -> None:
        at = self.mark("FAULT", text)
        if self.fault_at is None:  # the summary times the first fault's detection
            self.fault_at = at

    def detected(self, text: str, **event: Any) -> None:
        at = self._add("DETECTED", text, **{"lane": None, **event})
        if self.detected_at is None:
            self.detected_at = at

    def recovered(self, text: str, **event: Any) -> None:
        at = self._add("RECOVERED", text, **{"lane": None, **event})
        if self.recovered_at is None:
            self.recovered_at = at

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.mark("note", text)

    def _event(self, e: Any, lane: str) -> None:
        if lane not in self.outcome_lanes:
            return super()._event(e, lane)
        meta = {"lane": lane, "event": type(e).__name__, "fields": {"reason": getattr(e, "reason", None)}}
        if isinstance(e, ev.ConnectionLost):
            self.detected(f"ConnectionLost {e.reason}", **meta)
        elif type(e).__name__ == "HealthChanged":  # a pool: unhealthy is the detection, healthy again the recovery
            meta["fields"] = {"healthy": e.healthy}
            (self.recovered if e.healthy else self.detected)(f"healthy={e.healthy}", **meta)
        elif isinstance(e, ev.Reconnected):
            meta["fields"] = {"downtime": e.downtime, "attempts": e.attempts}
            self.recovered(f"Reconnected after {e.downtime * 1000:.2f} ms (attempt {e.attempts})", **meta)
        else:
            super()._event(e, lane)

    def summary(self) -> dict[str, Any]:
        def rel(a):
            if a is None or self.fault_at is None:
                return None
            return (a - self.fault_at) * 1000.0

        return {"detect_ms": rel(self.detected_at), "recover_ms": rel(self.recovered_at)}

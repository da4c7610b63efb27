"""A timeline of detection and recovery for demo scenarios."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


class Skip(Exception):
    """Raised by a scenario that cannot run here (the reason is printed)."""


@dataclass
class Timeline:
    scenario: str
    out: TextIO = sys.stdout
    t0: float = field(default_factory=time.monotonic)
    fault_at: float | None = None
    detected_at: float | None = None
    recovered_at: float | None = None
    notes: list[str] = field(default_factory=list)
    # every mark as (kind, text), in order: scenarios check their title's claims against it
    marks: list[tuple[str, str]] = field(default_factory=list)

    def _ms(self, at: float) -> float:
        return (at - self.t0) * 1000.0

    def mark(self, kind: str, text: str = "") -> float:
        now = time.monotonic()
        self.marks.append((kind, text))
        print(f"  [{self._ms(now):9.1f} ms] {kind:<12} {text}", file=self.out, flush=True)
        return now

    def fault(self, text: str) -> None:
        at = self.mark("FAULT", text)
        if self.fault_at is None:  # the summary times the first fault's detection
            self.fault_at = at

    def detected(self, text: str) -> None:
        at = self.mark("DETECTED", text)
        if self.detected_at is None:
            self.detected_at = at

    def recovered(self, text: str) -> None:
        at = self.mark("RECOVERED", text)
        if self.recovered_at is None:
            self.recovered_at = at

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.mark("note", text)

    def seen(self, kind: str, contains: str = "") -> int:
        """How many marks of `kind` whose text contains `contains`."""
        return sum(1 for k, t in self.marks if k == kind and contains in t)

    def summary(self) -> dict[str, Any]:
        def rel(a):
            if a is None or self.fault_at is None:
                return None
            return (a - self.fault_at) * 1000.0

        return {"detect_ms": rel(self.detected_at), "recover_ms": rel(self.recovered_at)}

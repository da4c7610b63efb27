"""Dispatch readiness: ``ReadinessGate``. "Participant joined" is not "agent ready"."""

from ._native import ReadinessGate

__all__ = ["ReadinessGate"]

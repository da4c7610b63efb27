"""Dispatch readiness (seed 002): ``ReadinessGate``. "Participant joined" is not "agent ready"."""

from ._native import ReadinessGate

__all__ = ["ReadinessGate"]

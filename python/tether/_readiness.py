"""(placeholder: filled in by its issue)"""

def ReadinessGate(*args, **kwargs):  # noqa: D103 - placeholder
    raise NotImplementedError("tether.ReadinessGate is not implemented yet")


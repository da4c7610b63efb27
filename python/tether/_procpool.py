"""(placeholder: filled in by its issue)"""

def ProcPool(*args, **kwargs):  # noqa: D103 - placeholder
    raise NotImplementedError("tether.ProcPool is not implemented yet")


"""(placeholder: filled in by its issue)"""

def Watchdog(*args, **kwargs):  # noqa: D103 - placeholder
    raise NotImplementedError("tether.Watchdog is not implemented yet")

def Liveness(*args, **kwargs):  # noqa: D103 - placeholder
    raise NotImplementedError("tether.Liveness is not implemented yet")

def Alarm(*args, **kwargs):  # noqa: D103 - placeholder
    raise NotImplementedError("tether.Alarm is not implemented yet")

def bounded(*args, **kwargs):  # noqa: D103 - placeholder
    raise NotImplementedError("tether.bounded is not implemented yet")


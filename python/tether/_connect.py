"""(placeholder: filled in by its issue)"""

def connect(*args, **kwargs):  # noqa: D103 - placeholder
    raise NotImplementedError("tether.connect is not implemented yet")

def Connection(*args, **kwargs):  # noqa: D103 - placeholder
    raise NotImplementedError("tether.Connection is not implemented yet")


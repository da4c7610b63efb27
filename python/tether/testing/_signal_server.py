"""(placeholder: filled in by its issue)"""


class SignalServer:  # placeholder
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SignalServer is not implemented yet")

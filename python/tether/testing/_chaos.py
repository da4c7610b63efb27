"""(placeholder: filled in by its issue)"""


class ChaosProxy:  # placeholder
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("ChaosProxy is not implemented yet")

"""One-line integrations of tether into agent frameworks.

    from tether.integrations import livekit      # livekit-agents (pip install tether[livekit])
    from tether.integrations import getstream    # getstream 3.x–6.x (pip install tether[getstream])
    from tether.integrations import pipecat      # pipecat-ai websocket services (pip install tether[pipecat])

Each module's ``install()`` patches the framework (checked against its tested version range and every
private name it touches; a part that does not fit is refused with a WARNING) and returns an
``InstallReport``; ``uninstall()`` undoes it. Importing ``tether`` or this package imports no framework.
"""

from ._patch import InstallReport

__all__ = ["InstallReport"]

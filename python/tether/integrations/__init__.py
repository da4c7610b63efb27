"""One-line integrations of tether into agent frameworks.

    from tether.integrations import livekit      # livekit-agents (pip install tether[livekit])
    from tether.integrations import getstream    # getstream 3.x–6.x (pip install tether[getstream])
    from tether.integrations import pipecat      # pipecat-ai websocket services (pip install tether[pipecat])

Each module's ``install()`` patches the framework part by part (each part checked against the releases
it was tested with, ``instrumentation_dependencies()``, and every private name it touches; a part that
does not fit is refused with a WARNING) and returns an ``InstallReport`` whose ``refused`` values are
``Refusal`` strings with a ``RefusalKind``; ``uninstall()`` undoes it. Importing ``tether`` or this
package imports no framework.
"""

from ._patch import InstallReport, Refusal, RefusalKind

__all__ = ["InstallReport", "Refusal", "RefusalKind"]

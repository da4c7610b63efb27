"""pytest plugin (entry point ``tether``): fixtures for tether's real test servers.

* ``signal_server``: a started ``SignalServer`` (closed at teardown).
* ``chaos_proxy``: a factory, ``proxy = await chaos_proxy(upstream)``; every proxy is closed at teardown.

Both need pytest-asyncio (auto mode, or mark the tests with ``@pytest.mark.asyncio``).
"""

from __future__ import annotations

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - fixtures need pytest-asyncio
    pytest_asyncio = None

if pytest_asyncio is not None:
    from . import ChaosProxy, SignalServer

    @pytest_asyncio.fixture
    async def signal_server():
        async with SignalServer() as srv:
            yield srv

    @pytest_asyncio.fixture
    async def chaos_proxy():
        made: list[ChaosProxy] = []

        async def make(upstream, **kwargs) -> ChaosProxy:
            p = ChaosProxy(upstream, **kwargs)
            await p.start()
            made.append(p)
            return p

        yield make
        for p in made:
            await p.aclose()

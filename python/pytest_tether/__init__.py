"""pytest plugin (entry point ``tether``): fixtures for tether's real test servers.

* ``signal_server``: a started ``tether.testing.SignalServer`` (closed at teardown).
* ``chaos_proxy``: a factory, ``proxy = await chaos_proxy(upstream)``; every proxy is closed at teardown.

The fixtures are async and need pytest-asyncio (``pip install 'tether[pytest]'``; auto mode, or mark the
tests with ``@pytest.mark.asyncio``). This module lives outside the ``tether`` package on purpose: pytest
loads every installed plugin at start-up, and importing ``tether`` would load its native extension into
test runs that never use it. ``tether`` is imported when a fixture is first used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tether.testing import ChaosProxy, SignalServer

try:
    import pytest_asyncio
except ImportError:
    pytest_asyncio = None  # type: ignore[assignment]

_MISSING = (
    "tether's {} fixture is async and needs pytest-asyncio, which is not installed: "
    "pip install 'tether[pytest]' (or pytest-asyncio)"
)

if pytest_asyncio is None:

    @pytest.fixture
    def signal_server() -> None:
        pytest.fail(_MISSING.format("signal_server"), pytrace=False)

    @pytest.fixture
    def chaos_proxy() -> None:
        pytest.fail(_MISSING.format("chaos_proxy"), pytrace=False)

else:

    @pytest_asyncio.fixture
    async def signal_server() -> AsyncIterator[SignalServer]:
        from tether.testing import SignalServer

        async with SignalServer() as srv:
            yield srv

    @pytest_asyncio.fixture
    async def chaos_proxy() -> AsyncIterator[Callable[..., Awaitable[ChaosProxy]]]:
        from tether.testing import ChaosProxy

        made: list[ChaosProxy] = []

        async def make(upstream: Any, **kwargs: Any) -> ChaosProxy:
            p = ChaosProxy(upstream, **kwargs)
            await p.start()
            made.append(p)
            return p

        yield make
        for p in made:
            await p.aclose()

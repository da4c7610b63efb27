"""Shared lifecycle of the native test servers: ``await x.start()`` / ``async with x`` / ``aclose()``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs 3.11


class _Native(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    def stats(self) -> dict[str, int]: ...


N = TypeVar("N", bound=_Native)


class _NativeServer(Generic[N]):
    _n: N

    async def start(self) -> Self:
        """Start listening; returns self."""
        await self._n.start()
        return self

    async def aclose(self) -> None:
        """Stop listening and close every connection; once it returns, the port is free to listen on again."""
        await self._n.aclose()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def host(self) -> str:
        """The address it listens on."""
        return self._n.host

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._n.port

    def stats(self) -> dict[str, int]:
        """Counters (connections accepted, active, ...)."""
        return self._n.stats()

    def __repr__(self) -> str:
        return repr(self._n)

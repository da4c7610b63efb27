"""Shared lifecycle of the native test servers: ``await x.start()`` / ``async with x`` / ``aclose()``."""

from __future__ import annotations


class _NativeServer:
    _n: object

    async def start(self):
        await self._n.start()
        return self

    async def aclose(self) -> None:
        await self._n.aclose()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def host(self) -> str:
        return self._n.host

    @property
    def port(self) -> int:
        return self._n.port

    def stats(self) -> dict:
        return self._n.stats()

    def __repr__(self) -> str:
        return repr(self._n)

"""Undoable, drift-checked monkeypatching shared by the framework integrations.

An integration is split into parts (e.g. livekit's "control_plane" and "proc_pool"). Before a part is
patched, every private name it relies on is checked; if one is missing the part is refused with a
WARNING naming it, and nothing of that part is touched (no half-patching). A framework version outside
the tested range refuses every part unless the caller opts in with ``allow_untested=True``.
"""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

log = logging.getLogger("tether.integrations")

_MISSING = object()


@dataclass(frozen=True)
class InstallReport:
    """What ``install()`` did: ``patched`` part names, ``refused`` part name -> reason, the framework
    ``version`` found. Truthy when at least one part is patched."""

    framework: str
    version: str | None
    patched: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.patched)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def version_problem(dist: str, tested: tuple[str, str]) -> str | None:
    """None when ``dist`` is installed with ``tested[0] <= version < tested[1]``, else why not."""
    version = installed_version(dist)
    if version is None:
        return f"{dist} is not installed"
    low, high = tested
    if not (_version_key(low) <= _version_key(version) < _version_key(high)):
        return f"{dist} {version} is outside the tested range >={low},<{high}"
    return None


def missing_attrs(owner: object, names: Iterable[str]) -> list[str]:
    """Names that ``owner`` (a class or module) no longer has."""
    label = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
    return [f"{label}.{n}" for n in names if getattr(owner, n, _MISSING) is _MISSING]


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def missing_instance_attrs(cls: type, names: Iterable[str]) -> list[str]:
    """Instance attributes (set in methods, not visible on the class) that no method of ``cls`` or its
    bases mentions any more: a renamed private attribute disappears from the bytecode."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        for value in vars(klass).values():
            func = getattr(value, "__func__", value)
            code = getattr(func, "__code__", None)
            if code is not None:
                seen |= _code_names(code)
    return [f"{cls.__qualname__}().{n}" for n in names if n not in seen]


def missing_params(func: Callable[..., Any], names: Iterable[str]) -> list[str]:
    """Keyword parameters that ``func`` no longer accepts."""
    import inspect

    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return [f"{getattr(func, '__qualname__', func)}(...)"]
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    label = getattr(func, "__qualname__", repr(func))
    return [f"{label}({n}=)" for n in names if n not in params]


class Patches:
    """Attribute replacements that can be undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[object, str, object]] = []

    def set(self, owner: object, name: str, value: object) -> None:
        # remember whether the attribute was the owner's own or inherited, to restore exactly that
        own = vars(owner).get(name, _MISSING) if hasattr(owner, "__dict__") else getattr(owner, name)
        self._undo.append((owner, name, own))
        setattr(owner, name, value)

    def undo(self) -> None:
        while self._undo:
            owner, name, old = self._undo.pop()
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)

    def __bool__(self) -> bool:
        return bool(self._undo)


class Integration:
    """Bookkeeping of one framework integration: parts patched, refused, and how to undo them."""

    def __init__(self, framework: str, dist: str, tested: tuple[str, str]) -> None:
        self.framework = framework
        self.dist = dist
        self.tested = tested
        self._parts: dict[str, Patches] = {}
        self._refused: dict[str, str] = {}

    @property
    def installed(self) -> bool:
        return bool(self._parts)

    def report(self) -> InstallReport:
        return InstallReport(
            framework=self.framework,
            version=installed_version(self.dist),
            patched=tuple(self._parts),
            refused=dict(self._refused),
        )

    def refuse(self, part: str, reason: str) -> None:
        self._refused[part] = reason
        log.warning(
            "tether.integrations.%s: not patching %s: %s; the framework's own code stays in place",
            self.framework,
            part,
            reason,
            extra={"framework": self.framework, "part": part, "reason": reason},
        )

    def version_refused(self, parts: Iterable[str], allow_untested: bool) -> bool:
        """Whether the installed version stops ``install()``: a missing package always does, an untested
        version unless ``allow_untested``. Then each of ``parts`` not patched yet is refused, saying why."""
        problem = version_problem(self.dist, self.tested)
        if problem is None or (allow_untested and "not installed" not in problem):
            return False
        hint = "" if "not installed" in problem else "; pass allow_untested=True to try"
        for part in parts:
            if part not in self._parts:
                self.refuse(part, problem + hint)
        return True

    def apply(self, part: str, missing: list[str], patch: Callable[[Patches], None]) -> None:
        """Patch ``part`` with ``patch(patches)`` unless a name it needs is ``missing``."""
        if part in self._parts:
            return
        if missing:
            self.refuse(part, "missing " + ", ".join(missing))
            return
        patches = Patches()
        try:
            patch(patches)
        except BaseException:
            patches.undo()
            raise
        self._parts[part] = patches
        self._refused.pop(part, None)
        log.info(
            "tether.integrations.%s: patched %s",
            self.framework,
            part,
            extra={"framework": self.framework, "part": part},
        )

    def uninstall(self) -> None:
        for patches in reversed(list(self._parts.values())):
            patches.undo()
        self._parts.clear()
        self._refused.clear()

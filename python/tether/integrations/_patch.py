"""Integrations as instrumentors: declared version ranges, checked names, wrappers that can be undone.

An integration (livekit, getstream, pipecat) is a set of ``Part``s. Each part declares

* a ``requirement``: a ``packaging`` requirement specifier such as ``"livekit-agents>=1.5,<1.9"``, the
  releases it was tested with;
* a ``prepare(checks)`` function that imports what it touches, records in ``checks`` every private name
  it needs that is missing and every replaced function whose code changed, and returns the patch
  function to apply (which wraps the framework's originals, calling them, wherever the framework
  allows).

Parts that share a name are variants of one feature for different framework releases (livekit's
``control_plane`` on 1.x and on 2.x): the variant whose range holds the installed version is used.
``Integration.install`` does the rest, the same way for every framework: idempotency, the version check,
refusals (a WARNING on ``tether.integrations`` and a ``Refusal`` whose ``kind`` says why), and
``uninstall``. A part is patched whole or not at all. ``install`` never raises because of the
framework: with ``allow_untested=True`` a part that does not fit is refused like any other.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import importlib
import inspect
import logging
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

log = logging.getLogger("tether.integrations")

_MISSING = object()

PatchFn = Callable[["Patches"], None]


class RefusalKind(str, enum.Enum):
    """Why a part was not patched."""

    NOT_INSTALLED = "not_installed"  # the framework's distribution is not installed
    UNTESTED_VERSION = "untested_version"  # installed, outside every range the part declares
    MISSING_NAMES = "missing_names"  # a private name the part needs is gone or renamed
    CHANGED_CODE = "changed_code"  # a function the part relies on changed (its fingerprint differs)
    FAILED = "failed"  # importing the framework or applying the patch raised


class Refusal(str):
    """The reason a part was refused (a ``str``, for reading and logging), with its ``kind``."""

    kind: RefusalKind

    def __new__(cls, kind: RefusalKind, reason: str) -> Refusal:
        self = super().__new__(cls, reason)
        self.kind = kind
        return self

    def __repr__(self) -> str:
        return f"Refusal({self.kind.value}, {str(self)!r})"


@dataclass(frozen=True)
class InstallReport:
    """What ``install()`` did: ``patched`` part names, ``refused`` part name -> ``Refusal`` (a string with
    a ``kind``), the framework ``version`` found. Truthy when at least one part is patched."""

    framework: str
    version: str | None
    patched: tuple[str, ...] = ()
    refused: dict[str, Refusal] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.patched)


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class Checks:
    """What one part needs from the framework, collected before anything is patched."""

    def __init__(self) -> None:
        self.missing: list[str] = []
        self.changed: list[str] = []

    def __bool__(self) -> bool:
        """True when the part fits: nothing missing, nothing changed."""
        return not self.missing and not self.changed

    def module(self, name: str) -> types.ModuleType | None:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            self.missing.append(f"module {name} ({e})")
            return None

    def attr(self, owner: object, name: str) -> Any:
        """``owner.name``, or None (recorded as missing)."""
        value = getattr(owner, name, _MISSING)
        if value is _MISSING:
            self.missing.append(f"{_label(owner)}.{name}")
            return None
        return value

    def attrs(self, owner: object, names: Iterable[str]) -> None:
        for name in names:
            self.attr(owner, name)

    def instance_attrs(self, cls: type, names: Iterable[str]) -> None:
        """Instance attributes (set in methods, invisible on the class) that no method of ``cls`` or its
        bases mentions any more: a renamed private attribute disappears from the bytecode."""
        seen: set[str] = set()
        for klass in cls.__mro__:
            for value in vars(klass).values():
                code = getattr(inspect.unwrap(getattr(value, "__func__", value)), "__code__", None)
                if isinstance(code, types.CodeType):
                    seen |= _code_names(code)
        self.missing += [f"{cls.__qualname__}().{n}" for n in names if n not in seen]

    def params(self, func: Callable[..., Any], names: Iterable[str]) -> None:
        """Keyword parameters that ``func`` must accept."""
        label = getattr(func, "__qualname__", repr(func))
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            self.missing.append(f"{label}(...)")
            return
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        self.missing += [f"{label}({n}=)" for n in names if n not in params]

    def fingerprint(self, func: Callable[..., Any], expected: str | Iterable[str]) -> None:
        """``func``'s code must be one we read: a part that relies on the inside of a framework function
        (where it calls what, which names it uses) refuses when that code changed."""
        known = {expected} if isinstance(expected, str) else set(expected)
        actual = code_fingerprint(func)
        if actual not in known:
            self.changed.append(f"{getattr(func, '__qualname__', func)} (code fingerprint {actual})")


def code_fingerprint(func: Callable[..., Any]) -> str:
    """A fingerprint of what a function's code refers to: every name, local variable and constant of its
    code and nested code, as sets.

    Not a hash of ``co_code``: the bytecode of one source differs between CPython minors (and 3.12
    inlines comprehensions, 3.14 loads small ints without constants), so such a hash would refuse every
    Python the fingerprint was not taken on. Names, locals and literal constants are the same across
    them, and change when upstream renames an attribute, adds a call, a variable or a message."""
    code = inspect.unwrap(func).__code__
    names: set[str] = set()
    local: set[str] = set()
    consts: set[str] = set()

    def walk(c: types.CodeType) -> None:
        names.update(c.co_names)
        local.update(n for n in c.co_varnames + c.co_cellvars + c.co_freevars if not n.startswith("."))
        for const in c.co_consts:
            add(const)

    def add(const: object) -> None:
        if isinstance(const, types.CodeType):
            walk(const)
        elif isinstance(const, (tuple, frozenset)):
            for item in const:
                add(item)
        elif isinstance(const, (str, bytes, float)) or (isinstance(const, int) and not 0 <= const < 256):
            consts.add(repr(const))

    walk(code)
    material = repr((code.co_name, sorted(names), sorted(local), sorted(consts)))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _label(owner: object) -> str:
    return str(getattr(owner, "__qualname__", None) or getattr(owner, "__name__", None) or repr(owner))


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


class Patches:
    """Attribute replacements and wrappers that can be undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[object, str, object] | Callable[[], object]] = []

    def call(self, do: Callable[[], object], undo: Callable[[], object]) -> None:
        """A change that is not an attribute (a logging filter): ``do()`` now, ``undo()`` on undo."""
        do()
        self._undo.append(undo)

    def set(self, owner: object, name: str, value: object) -> None:
        # remember whether the attribute was the owner's own or inherited, to restore exactly that
        own = vars(owner).get(name, _MISSING) if hasattr(owner, "__dict__") else getattr(owner, name)
        self._undo.append((owner, name, own))
        setattr(owner, name, value)

    def wrap(self, owner: object, name: str, wrapper: Callable[..., Any]) -> Callable[..., Any]:
        """Put ``wrapper(wrapped, args, kwargs)`` in front of ``owner.name`` (wrapt's shape): the wrapper
        decides how to call the original, which stays reachable as ``__wrapped__``. An async original
        gets an async wrapper (frameworks check ``iscoroutinefunction``). Returns the original."""
        original = getattr(owner, name)
        if inspect.iscoroutinefunction(original):

            async def async_wrapped(*args: Any, **kwargs: Any) -> Any:
                return await wrapper(original, args, kwargs)

            wrapped: Callable[..., Any] = async_wrapped
        else:

            def sync_wrapped(*args: Any, **kwargs: Any) -> Any:
                return wrapper(original, args, kwargs)

            wrapped = sync_wrapped
        functools.update_wrapper(wrapped, original)
        self.set(owner, name, wrapped)
        return original  # type: ignore[no-any-return]

    def undo(self) -> None:
        while self._undo:
            step = self._undo.pop()
            if callable(step):
                step()
                continue
            owner, name, old = step
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)

    def __bool__(self) -> bool:
        return bool(self._undo)


@dataclass(frozen=True)
class Part:
    """One independently patched piece of an integration, for the releases in ``requirement``.

    ``line``, when set, is the wider span of releases the part is about at all (a specifier such as
    ``"<7"``): on a release outside it the part is not considered, neither patched nor refused. getstream
    7 moved signaling into Rust, so its signaling part has nothing to say there, and the part for 7.x
    has nothing to say on 6.x; each release line hears only of its own part."""

    name: str
    requirement: str
    prepare: Callable[[Checks], PatchFn | None]
    line: str = ""

    def supports(self, version: str) -> bool:
        from packaging.requirements import Requirement

        return _contains(Requirement(self.requirement).specifier, version)

    def concerns(self, version: str) -> bool:
        """Whether ``version`` is in the part's release line."""
        from packaging.specifiers import SpecifierSet

        return not self.line or _contains(SpecifierSet(self.line), version)

    @property
    def specifier(self) -> str:
        """The range as written (``>=1.5,<1.9``)."""
        from packaging.requirements import Requirement

        return self.requirement[len(Requirement(self.requirement).name) :].strip()


def _contains(spec: Any, version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        # pre-releases count: livekit-agents 2.0 ships as 2.0.0b1 and must match ">=2.0.0b1,<3"
        return bool(spec.contains(Version(version), prereleases=True))
    except InvalidVersion:
        return False


class Integration:
    """Bookkeeping of one framework integration (one instance per framework module): parts patched,
    parts refused and why, and how to undo them."""

    def __init__(self, framework: str, dist: str) -> None:
        self.framework = framework
        self.dist = dist
        self._parts: dict[str, Patches] = {}
        self._refused: dict[str, Refusal] = {}

    @staticmethod
    def instrumentation_dependencies(parts: Iterable[Part]) -> tuple[str, ...]:
        """The requirement specifiers of ``parts``, one per variant, as declared."""
        return tuple(dict.fromkeys(p.requirement for p in parts))

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

    def refuse(self, part: str, kind: RefusalKind, reason: str) -> None:
        self._refused[part] = Refusal(kind, reason)
        log.warning(
            "tether.integrations.%s: not patching %s: %s; the framework's own code stays in place",
            self.framework,
            part,
            reason,
            extra={"framework": self.framework, "part": part, "reason": reason, "kind": kind.value},
        )

    def install(self, parts: Sequence[Part], *, allow_untested: bool = False) -> InstallReport:
        """Patch every part not patched yet (idempotent). Variants sharing a name are tried in order:
        those whose range holds the installed version, or, with ``allow_untested``, all of them."""
        version = installed_version(self.dist)
        variants: dict[str, list[Part]] = {}
        for part in parts:
            variants.setdefault(part.name, []).append(part)
        for name, options in variants.items():
            if name in self._parts:
                continue
            if version is None:
                self.refuse(name, RefusalKind.NOT_INSTALLED, f"{self.dist} is not installed")
                continue
            try:
                options = [p for p in options if p.concerns(version)]
                fitting = [p for p in options if p.supports(version)]
            except ImportError as e:  # packaging, declared by every integration extra
                self.refuse(name, RefusalKind.FAILED, f"cannot check the version ({e}); pip install packaging")
                continue
            if not options:
                continue
            ranges = " or ".join(p.specifier for p in options)
            if not fitting and not allow_untested:
                self.refuse(
                    name,
                    RefusalKind.UNTESTED_VERSION,
                    f"{self.dist} {version} is outside the tested range {ranges}; pass allow_untested=True to try",
                )
                continue
            untested = "" if fitting else f"{self.dist} {version} is outside the tested range {ranges}, tried: "
            self._install_part(name, fitting or options, untested)
        return self.report()

    def _install_part(self, name: str, options: Sequence[Part], untested: str) -> None:
        refusal: tuple[RefusalKind, str] | None = None
        for part in options:
            checks = Checks()
            try:
                patch = part.prepare(checks)
            except Exception as e:
                refusal = refusal or (RefusalKind.FAILED, f"{type(e).__name__}: {e}")
                continue
            if not checks or patch is None:
                if checks.missing:
                    refusal = refusal or (RefusalKind.MISSING_NAMES, "missing " + ", ".join(checks.missing))
                else:
                    refusal = refusal or (RefusalKind.CHANGED_CODE, "changed " + ", ".join(checks.changed))
                continue
            patches = Patches()
            try:
                patch(patches)
            except Exception as e:
                patches.undo()
                log.debug("patching %s failed", name, exc_info=True)
                refusal = refusal or (RefusalKind.FAILED, f"patching raised {type(e).__name__}: {e}")
                continue
            self._parts[name] = patches
            self._refused.pop(name, None)
            log.info(
                "tether.integrations.%s: patched %s (%s)",
                self.framework,
                name,
                part.requirement,
                extra={"framework": self.framework, "part": name, "requirement": part.requirement},
            )
            return
        assert refusal is not None
        self.refuse(name, refusal[0], untested + refusal[1])

    def uninstall(self) -> None:
        for patches in reversed(list(self._parts.values())):
            patches.undo()
        self._parts.clear()
        self._refused.clear()

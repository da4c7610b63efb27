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
import tokenize
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    # a function the part relies on changed (its fingerprint differs), or its source cannot be read to check
    CHANGED_CODE = "changed_code"
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
        label = getattr(func, "__qualname__", func)
        try:
            actual = code_fingerprint(func)
        except OSError as e:
            # an unread function is as unknown as a changed one
            self.changed.append(f"{label} (its source cannot be read to check its code: {e})")
            return
        if actual not in known:
            self.changed.append(f"{label} (code fingerprint {actual})")


def code_fingerprint(func: Callable[..., Any]) -> str:
    """A fingerprint of a function's source code (of the innermost function under its wrappers): a hash of
    its tokens in order, so that a change in control flow, an operator or any literal changes it, while
    comments, blank lines, spacing inside a line and docstrings do not.

    Raises ``OSError`` when the source cannot be read (an installation without ``.py`` files): the
    function cannot be checked then, and ``Checks.fingerprint`` refuses the part.

    Source, not bytecode: the bytecode of one source differs between CPython minors (3.12 inlines
    comprehensions, 3.14 loads small ints without constants), so a hash of it would refuse every Python
    the fingerprint was not taken on; the tokens of one source are the same on all of them once an
    f-string is one token again (see ``source_fingerprint``; a test compares every CPython it finds,
    3.10 to 3.15 here)."""
    target = inspect.unwrap(func)
    try:
        source = inspect.getsource(target)
    except TypeError as e:  # a builtin or a callable object without Python code
        raise OSError(f"no Python source: {e}") from e
    return source_fingerprint(source)


# token kinds that say nothing about what the code does; ENCODING only comes from byte input
_IGNORED_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.ENDMARKER, tokenize.ENCODING}
# the block structure: a statement moved into or out of a block changes these, not the names around it
_STRUCTURE_TOKENS = {tokenize.NEWLINE: "NEWLINE", tokenize.INDENT: "INDENT", tokenize.DEDENT: "DEDENT"}
# CPython 3.12 tokenizes an f-string as its parts (3.14 also t-strings), older ones as one STRING token:
# the parts are joined back into the literal as written so that every minor sees one token
_FSTRING_START = {getattr(tokenize, n) for n in ("FSTRING_START", "TSTRING_START") if hasattr(tokenize, n)}
_FSTRING_END = {getattr(tokenize, n) for n in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, n)}


def source_fingerprint(source: str) -> str:
    """The fingerprint of one function's source as ``inspect.getsource`` returns it (a method's is
    indented): see ``code_fingerprint``. Raises ``OSError`` when it does not tokenize."""
    indented = source[:1] in (" ", "\t")
    # an indented block tokenizes only inside a block: a synthetic ``if 1:`` header, dropped below
    text = "if 1:\n" + source if indented else source
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(pos: tuple[int, int]) -> int:
        return offsets[pos[0] - 1] + pos[1]

    tokens: list[tuple[str, str]] = []
    depth, start = 0, 0
    try:
        for tok in tokenize.generate_tokens(iter(lines).__next__):
            if tok.type in _FSTRING_START:
                depth += 1
                if depth == 1:
                    start = at(tok.start)
            elif tok.type in _FSTRING_END:
                depth -= 1
                if depth == 0:
                    tokens.append(("STRING", text[start : at(tok.end)]))
            elif depth or tok.type in _IGNORED_TOKENS:
                continue
            elif tok.type in _STRUCTURE_TOKENS:
                tokens.append((_STRUCTURE_TOKENS[tok.type], ""))
            else:
                # NAME, NUMBER, STRING, OP: the kind is the same on every minor, the text is what was written
                tokens.append((tokenize.tok_name[tok.type], tok.string))
    except (tokenize.TokenError, SyntaxError) as e:
        raise OSError(f"the source does not tokenize: {e}") from e
    if indented:
        tokens = tokens[4:]  # if, 1, :, NEWLINE
    kept: list[tuple[str, str]] = []
    statement: list[tuple[str, str]] = []
    for item in tokens:
        if item[0] in ("INDENT", "DEDENT"):
            kept.append(item)  # only ever at the start of a statement
        elif item[0] != "NEWLINE":
            statement.append(item)
        else:
            # a statement that is only a plain string literal (a docstring) does nothing
            if not all(kind == "STRING" and _plain_string(literal) for kind, literal in statement):
                kept += statement
                kept.append(item)
            statement = []
    kept += statement
    # where the source ends (a trailing newline, the dedents back to column 0) is not part of the code
    while kept and kept[0][0] == "INDENT":
        del kept[0]
    while kept and kept[-1][0] in ("NEWLINE", "DEDENT"):
        kept.pop()
    material = "\n".join(f"{kind} {string}" for kind, string in kept)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _plain_string(literal: str) -> bool:
    """A string literal without interpolation (no f or t prefix)."""
    prefix = literal[: min(i for i in (literal.find("'"), literal.find('"')) if i >= 0)]
    return not set(prefix.lower()) & {"f", "t"}


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
    ``"<7.0.0.dev0"``): on a release outside it the part is not considered, neither patched nor refused.
    getstream 7 moved signaling into Rust, so its signaling part has nothing to say there, and the part
    for 7.x has nothing to say on 6.x; each release line hears only of its own part. Lines that meet
    are written at ``X.dev0``, the first release of all of X's pre-releases: ``<7`` and ``>=7`` would both
    leave out 7.0.0rc1. A release that no part's line holds refuses every part (``Integration.install``)."""

    name: str
    requirement: str
    prepare: Callable[[Checks], PatchFn | None]
    line: str = ""
    #: the ``install()`` arguments the part's patch holds (a second ``install()`` cannot change them)
    uses: tuple[str, ...] = ()

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
        self._settings: dict[str, Mapping[str, object]] = {}  # each patched part's install() settings

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

    def install(
        self, parts: Sequence[Part], *, allow_untested: bool = False, settings: Mapping[str, object] | None = None
    ) -> InstallReport:
        """Patch every part not patched yet (idempotent). Variants sharing a name are tried in order:
        those whose range holds the installed version, or, with ``allow_untested``, all of them.
        ``settings``: the install() call's own arguments; a part already patched keeps those of them it
        ``uses`` as it was patched with, and a WARNING names the ones this call would have changed."""
        settings = dict(settings or {})
        self._warn_kept_settings(settings)
        version = installed_version(self.dist)
        variants: dict[str, list[Part]] = {}
        for part in parts:
            variants.setdefault(part.name, []).append(part)
        try:
            in_line = version is not None and any(p.concerns(version) for p in parts)
        except ImportError:
            in_line = True  # refused below, part by part, for the missing packaging
        for name, options in variants.items():
            if name in self._parts:
                continue
            if version is None:
                self.refuse(name, RefusalKind.NOT_INSTALLED, f"{self.dist} is not installed")
                continue
            if not in_line:
                # a gap between release lines would otherwise patch nothing and say nothing
                lines = ", ".join(f"{p.name} {p.line}" for p in parts if p.line)
                self.refuse(
                    name,
                    RefusalKind.UNTESTED_VERSION,
                    f"no part of this integration is for {self.dist} {version} (release lines: {lines})",
                )
                continue
            try:
                options = [p for p in options if p.concerns(version)]
                fitting = [p for p in options if p.supports(version)]
            except ImportError as e:  # packaging, declared by every integration extra
                self.refuse(name, RefusalKind.FAILED, f"cannot check the version ({e}); pip install packaging")
                continue
            if not options:
                continue  # another part's release line holds this version
            ranges = " or ".join(p.specifier for p in options)
            if not fitting and not allow_untested:
                self.refuse(
                    name,
                    RefusalKind.UNTESTED_VERSION,
                    f"{self.dist} {version} is outside the tested range {ranges}; pass allow_untested=True to try",
                )
                continue
            untested = "" if fitting else f"{self.dist} {version} is outside the tested range {ranges}, tried: "
            patched = self._install_part(name, fitting or options, untested)
            if patched is not None:
                self._settings[name] = {k: settings[k] for k in patched.uses if k in settings}
        return self.report()

    def _warn_kept_settings(self, settings: Mapping[str, object]) -> None:
        """A WARNING naming the settings of this call that differ from those a patched part holds."""
        was: dict[str, object] = {}
        changed: dict[str, object] = {}
        kept: list[str] = []
        for name, held in self._settings.items():
            differ = [k for k, v in held.items() if k in settings and settings[k] != v]
            if differ:
                kept.append(name)
                was.update((k, held[k]) for k in differ)
                changed.update((k, settings[k]) for k in differ)
        if not changed:
            return
        log.warning(
            "tether.integrations.%s: already installed (%s) with %s: this call's %s do not apply; uninstall() "
            "first to change them",
            self.framework,
            ", ".join(kept),
            ", ".join(f"{k}={v!r}" for k, v in was.items()),
            ", ".join(f"{k}={v!r}" for k, v in changed.items()),
            extra={"framework": self.framework, "parts": kept, "kept": sorted(changed)},
        )

    def _install_part(self, name: str, options: Sequence[Part], untested: str) -> Part | None:
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
            return part
        assert refusal is not None
        self.refuse(name, refusal[0], untested + refusal[1])
        return None

    def uninstall(self) -> None:
        for patches in reversed(list(self._parts.values())):
            patches.undo()
        self._parts.clear()
        self._refused.clear()
        self._settings.clear()

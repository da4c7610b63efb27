"""The Integration base shared by every framework integration, on a stand-in framework: the
distribution is this test run's own `pytest` (a real installed version), the "framework" a module
made here."""

from __future__ import annotations

import itertools
import json
import linecache
import logging
import subprocess
import sys
import textwrap
import types
from importlib.metadata import version

import pytest

from support import other_cpythons_or_skip
from tether.integrations._patch import (
    Checks,
    Integration,
    Part,
    Patches,
    RefusalKind,
    code_fingerprint,
    source_fingerprint,
)

PYTEST = version("pytest")


def framework() -> types.ModuleType:
    mod = types.ModuleType("fake_framework")

    class Client:
        def __init__(self) -> None:
            self._retries = 0

        async def connect(self, url: str) -> str:
            self._retries += 1
            return f"connected to {url}"

        def close(self) -> str:
            return "closed"

    mod.Client = Client
    return mod


def wrap_connect(fw: types.ModuleType, calls: list):
    def prepare(c: Checks):
        client = c.attr(fw, "Client")
        if client is None:
            return None
        c.attrs(client, ("connect", "close"))
        c.instance_attrs(client, ("_retries",))
        if not c:
            return None

        def patch(p: Patches) -> None:
            async def connect(wrapped, args, kwargs):
                calls.append(args[1:])
                return "tether: " + await wrapped(*args, **kwargs)

            p.wrap(client, "connect", connect)

        return patch

    return prepare


async def test_wraps_calling_the_original_and_undoes_exactly():
    fw, calls = framework(), []
    original = fw.Client.connect
    i = Integration("fake", "pytest")
    report = i.install([Part("client", f"pytest>={PYTEST}", wrap_connect(fw, calls))])
    assert report.patched == ("client",) and report.version == PYTEST
    assert fw.Client.connect.__wrapped__ is original
    assert await fw.Client().connect("ws://x") == "tether: connected to ws://x" and calls == [("ws://x",)]
    # idempotent: a second install patches nothing twice
    assert i.install([Part("client", f"pytest>={PYTEST}", wrap_connect(fw, calls))]).patched == ("client",)
    assert fw.Client.connect.__wrapped__ is original
    i.uninstall()
    assert fw.Client.connect is original and "connect" in vars(fw.Client)


def test_a_second_install_with_other_settings_says_they_do_not_apply(caplog):
    """A library installs first, the application then asks for other settings: the patched part keeps
    the first ones (its wrappers hold them), and a WARNING names what was kept. Before, nothing said so."""
    caplog.set_level(logging.WARNING, logger="tether.integrations")
    fw = framework()
    i = Integration("fake", "pytest")
    part = Part("client", f"pytest>={PYTEST}", wrap_connect(fw, []), uses=("timeout", "policy"))
    try:
        i.install([part], settings={"timeout": 10.0, "policy": None})
        i.install([part], settings={"timeout": 10.0, "policy": None})  # the same settings: silent
        assert caplog.records == []
        assert i.install([part], settings={"timeout": 30.0, "policy": None}).patched == ("client",)
        [record] = caplog.records
        assert record.levelno == logging.WARNING
        assert "already installed (client) with timeout=10.0: this call's timeout=30.0 do not apply" in (
            record.getMessage()
        )
        assert record.kept == ["timeout"]
    finally:
        i.uninstall()
    caplog.clear()
    i.install([part], settings={"timeout": 30.0})  # after uninstall() the new settings are the ones patched
    assert caplog.records == []
    i.uninstall()


def test_version_is_compared_as_a_version_not_digits():
    fw = framework()
    i = Integration("fake", "pytest")
    major = int(PYTEST.split(".")[0])
    report = i.install([Part("client", f"pytest>={major + 1}.0.0rc1,<{major + 1}.10", wrap_connect(fw, []))])
    refusal = report.refused["client"]
    assert refusal.kind is RefusalKind.UNTESTED_VERSION and f">={major + 1}.0.0rc1" in refusal
    assert Part("p", "x>=1.5,<1.10", lambda c: None).supports("1.9.2")
    assert not Part("p", "x>=1.5,<1.10", lambda c: None).supports("1.10.0")
    assert Part("p", "x>=2.0.0b1,<3", lambda c: None).supports("2.0.0b1")  # pre-releases count
    assert not Part("p", "x>=1.5,<1.9", lambda c: None).supports("1.9.0rc1")
    assert not Part("p", "x>=1.5,<1.9", lambda c: None).supports("not a version")


def test_refusal_kinds_are_data(caplog):
    caplog.set_level(logging.WARNING, logger="tether.integrations")
    fw = framework()
    del fw.Client.close
    i = Integration("fake", "pytest")
    report = i.install(
        [
            Part("client", f"pytest>={PYTEST}", wrap_connect(fw, [])),
            Part("absent", f"pytest>={PYTEST}", lambda c: c.module("no_such_framework_module")),
        ]
    )
    assert report.patched == ()
    assert report.refused["client"].kind is RefusalKind.MISSING_NAMES and "Client.close" in report.refused["client"]
    assert report.refused["absent"].kind is RefusalKind.MISSING_NAMES
    assert [r.kind for r in caplog.records if r.levelno == logging.WARNING] == ["missing_names", "missing_names"]
    assert (
        Integration("fake", "no-such-dist-xyz")
        .install([Part("a", "no-such-dist-xyz>=1", lambda c: None)])
        .refused["a"]
        .kind
        is RefusalKind.NOT_INSTALLED
    )


def test_allow_untested_never_raises(monkeypatch):
    def boom(c: Checks):
        raise ModuleNotFoundError("No module named 'framework.signaling'")

    def broken_patch(c: Checks):
        def patch(p: Patches) -> None:
            p.set(sys.modules[__name__], "PYTEST", "changed")
            raise AttributeError("half-way")

        return patch

    i = Integration("fake", "pytest")
    report = i.install(
        [Part("a", "pytest<1", boom), Part("b", "pytest<1", broken_patch)],
        allow_untested=True,
    )
    assert report.patched == ()
    assert report.refused["a"].kind is RefusalKind.FAILED and "framework.signaling" in report.refused["a"]
    assert report.refused["b"].kind is RefusalKind.FAILED and "outside the tested range <1" in report.refused["b"]
    assert version("pytest") == PYTEST == sys.modules[__name__].PYTEST  # the half-applied patch was undone


def test_variants_the_one_in_range_is_used():
    fw, used = framework(), []

    def variant(tag):
        def prepare(c: Checks):
            return lambda p: used.append(tag)

        return prepare

    i = Integration("fake", "pytest")
    report = i.install(
        [Part("client", "pytest<1", variant("old")), Part("client", f"pytest>={PYTEST}", variant("new"))]
    )
    assert report.patched == ("client",) and used == ["new"]
    assert fw  # the module is not touched by these variants


def test_fingerprint_catches_a_changed_body_that_keeps_its_names():
    def loop(self):
        retry_count = 0
        while True:
            try:
                return self.connect()
            except Exception:
                retry_count += 1
                delay = min(retry_count * 2, 10)
                print(f"retrying in {delay}s")

    def loop_changed(self):
        retry_count = 0
        while True:
            try:
                return self.connect()
            except Exception:
                retry_count += 1
                delay = min(retry_count * 2, 30)  # a new cap: same names, another constant
                print(f"retrying in {delay}s")

    assert code_fingerprint(loop) == code_fingerprint(loop)
    assert code_fingerprint(loop) != code_fingerprint(loop_changed)
    c = Checks()
    c.fingerprint(loop_changed, code_fingerprint(loop))
    assert not c and c.changed and "loop_changed" in c.changed[0]
    c = Checks()
    c.fingerprint(loop, [code_fingerprint(loop_changed), code_fingerprint(loop)])
    assert c


_SOURCES = itertools.count()


def from_source(source: str, name: str, namespace: dict | None = None, *, readable: bool = True):
    """The function ``name`` defined by ``source``, compiled as a framework's module would be; its source
    is readable by ``inspect`` (in the linecache) unless ``readable=False`` (an installation without .py)."""
    filename = f"<edited framework {next(_SOURCES)}>"
    source = textwrap.dedent(source)
    if readable:
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    ns = dict(namespace or {})
    exec(compile(source, filename, "exec"), ns)
    return ns[name]


LOOP = """
    async def loop(self):
        retry_count = 0
        while not self._closed:
            try:
                ws = await self.connect()
                retry_count = 0
                self.register(ws)
                await self.run(ws)
            except Exception as e:
                if retry_count >= self._max_retry:
                    raise RuntimeError(f"failed after {retry_count} attempts") from None
                delay = min(retry_count * 2, 10)
                retry_count += 1
                log.warning(f"retrying in {delay}s", extra={"error": e})
                await asyncio.sleep(delay)
"""


def test_fingerprint_catches_control_flow_operators_and_small_ints():
    # upstream edits that keep every name, local and string: each changes what the loop does
    edits = {
        "the reset moves after registration": LOOP.replace(
            "retry_count = 0\n                self.register(ws)\n",
            "self.register(ws)\n                retry_count = 0\n",
        ),
        "a comparison operator": LOOP.replace("retry_count >= self._max_retry", "retry_count > self._max_retry"),
        "a small int": LOOP.replace("min(retry_count * 2, 10)", "min(retry_count * 2, 60)"),
        "an arithmetic operator": LOOP.replace("retry_count * 2", "retry_count ** 2"),
        "a statement leaves its block": LOOP.replace(
            "                await asyncio.sleep(delay)", "            await asyncio.sleep(delay)"
        ),
        "a condition negated": LOOP.replace("while not self._closed", "while self._closed"),
    }
    shipped = code_fingerprint(from_source(LOOP, "loop"))
    for what, source in edits.items():
        assert source != LOOP, what
        assert code_fingerprint(from_source(source, "loop")) != shipped, what


def test_fingerprint_ignores_comments_spacing_and_docstrings():
    edited = (
        LOOP.replace("async def loop(self):\n", 'async def loop(self):\n        """Reconnects."""\n\n')
        .replace("retry_count = 0\n", "retry_count = 0  # reset once the socket opened\n\n", 1)
        .replace("min(retry_count * 2, 10)", "min( retry_count*2 ,\n                            10 )")
    )
    assert edited != LOOP
    assert code_fingerprint(from_source(edited, "loop")) == code_fingerprint(from_source(LOOP, "loop"))
    # the indentation of a method (inspect.getsource keeps it) does not matter either
    method = "class Server:\n" + textwrap.indent(textwrap.dedent(LOOP), "    ")
    assert code_fingerprint(from_source(method, "Server").loop) == code_fingerprint(from_source(LOOP, "loop"))


def test_fingerprint_refuses_when_the_source_cannot_be_read(caplog):
    caplog.set_level(logging.WARNING, logger="tether.integrations")
    unreadable = from_source(LOOP, "loop", readable=False)
    c = Checks()
    c.fingerprint(unreadable, code_fingerprint(from_source(LOOP, "loop")))
    assert not c and "cannot be read" in c.changed[0], c.changed

    def prepare(c: Checks):
        c.fingerprint(unreadable, code_fingerprint(from_source(LOOP, "loop")))
        return lambda p: None

    report = Integration("fake", "pytest").install([Part("loop", f"pytest>={PYTEST}", prepare)])
    assert report.patched == () and report.refused["loop"].kind is RefusalKind.CHANGED_CODE, report
    assert any("not patching loop" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


_TRICKY = """
class K:
    @staticmethod
    async def method(self, a: int = 3, **kw) -> "K | None":
        \"\"\"Doc with {braces} and é.\"\"\"
        x = f"{a!r:>{a}} {{literal}} é→ {kw['k']} {f'{a}'}"  # comment é
        y = rf'\\d{a}' + b"bytes" + f\"\"\"multi
line {a + 1:08.3f}
\"\"\"
        if a >= 10 and (
            a < 300
        ):
            return None
        return x \\
            + y
"""

_FINGERPRINT_SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("_tether_patch", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
print(json.dumps([mod.source_fingerprint(s) for s in json.load(sys.stdin)]))
"""


def test_fingerprint_is_the_same_on_every_cpython():
    """The fingerprints declared by the integrations are taken on one CPython and checked on all: the
    token stream of one source must not depend on the minor (3.12 tokenizes f-strings in parts)."""
    import inspect

    edited = _TRICKY.replace("# comment é", "").replace('"""Doc with', '"""Other doc with')
    sources = [inspect.getsource(from_source(s, "K").method) for s in (_TRICKY, edited)]
    here = [source_fingerprint(s) for s in sources]
    assert here[0] == here[1]
    pythons = other_cpythons_or_skip()
    import tether.integrations._patch as patch_module

    for exe in pythons:
        out = subprocess.run(
            [exe, "-c", _FINGERPRINT_SCRIPT, patch_module.__file__],
            input=json.dumps(sources),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, (exe, out.stderr[-2000:])
        assert json.loads(out.stdout) == here, exe


GETSTREAM_RELEASES = ["6.9.0", "7.0.0rc1", "7.0.0b2", "7.0.0.dev1", "7.0.0", "7.0.1", "7.1.0rc1", "7.1.0", "8.0.0"]


def test_getstream_release_lines_meet_without_a_gap():
    """A pre-release of 7.0.0 is neither "<7" nor ">=7": each release line must hear of it."""
    from tether.integrations._getstream_call import CALL_WATCH_LINE, CALL_WATCH_REQUIREMENT
    from tether.integrations.getstream import SIGNALING_LINE, SIGNALING_REQUIREMENT

    signaling = Part("signaling", SIGNALING_REQUIREMENT, lambda c: None, line=SIGNALING_LINE)
    call_watch = Part("call_watch", CALL_WATCH_REQUIREMENT, lambda c: None, line=CALL_WATCH_LINE)
    for v in GETSTREAM_RELEASES:
        assert [p.name for p in (signaling, call_watch) if p.concerns(v)] == [
            "signaling" if v == "6.9.0" else "call_watch"
        ], v


@pytest.mark.parametrize("release", GETSTREAM_RELEASES)
def test_getstream_install_on_any_release_patches_or_warns(monkeypatch, caplog, release):
    """Never a silent no-op: on every release install() patches a part or refuses one with a WARNING."""
    from tether.integrations import _patch, getstream

    caplog.set_level(logging.WARNING, logger="tether.integrations")
    monkeypatch.setattr(_patch, "installed_version", lambda dist: release)
    tried: list[str] = []

    def prepare_as(name: str):
        return lambda c: lambda p: tried.append(name)

    parts = [
        Part(p.name, p.requirement, prepare_as(p.name), line=p.line)
        for p in getstream._parts(getstream._Settings(), getstream._CallSettings())
    ]
    report = Integration("getstream", "getstream").install(parts)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert report.patched or (report.refused and warnings), (release, report)
    if release in ("7.0.0rc1", "7.0.0b2", "7.0.0.dev1", "7.1.0rc1", "7.1.0", "8.0.0"):
        assert report.refused["call_watch"].kind is RefusalKind.UNTESTED_VERSION, report
        assert tried == [] and len(warnings) == 1, (report, warnings)


def test_a_version_no_part_concerns_is_refused_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="tether.integrations")
    i = Integration("fake", "pytest")
    # release lines that leave the installed version out (a gap between two lines)
    report = i.install(
        [
            Part("old", "pytest<1", lambda c: lambda p: None, line=f"<{PYTEST}"),
            Part("new", "pytest>=1000", lambda c: lambda p: None, line=f">{PYTEST}"),
        ],
        allow_untested=True,
    )
    assert report.patched == () and set(report.refused) == {"old", "new"}, report
    assert {r.kind for r in report.refused.values()} == {RefusalKind.UNTESTED_VERSION}
    assert "no part of this integration" in report.refused["old"], report
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2

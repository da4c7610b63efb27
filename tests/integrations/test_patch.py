"""The Integration base shared by every framework integration, on a stand-in framework: the
distribution is this test run's own `pytest` (a real installed version), the "framework" a module
made here."""

from __future__ import annotations

import logging
import sys
import types
from importlib.metadata import version

from tether.integrations._patch import (
    Checks,
    Integration,
    Part,
    Patches,
    RefusalKind,
    code_fingerprint,
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

"""What `help()` shows: every public class, function, method and property has a docstring at run time,
the constructors' signatures show the defaults that take effect (not None), the stub's docstrings are
the run-time ones, and `python -m tether proxy --help` lists the commands it reads."""

import ast
import inspect
import pathlib
import pydoc
import subprocess
import sys

import pytest

import tether
import tether._native as native
import tether._procpool
import tether.events
import tether.testing
import tether.worker
from tether.testing import _proxy_cli

STUB = pathlib.Path(tether.__file__).with_name("_native.pyi")
# the native sides of classes that tether wraps in Python (the wrappers are the public, documented ones)
WRAPPED = {"Connection", "HandshakeChannel", "SignalServer", "ChaosProxy"}


def public_objects():
    """(name, object) for every public class and function, and every public method and property of them."""
    roots = [(f"tether.{n}", getattr(tether, n)) for n in tether.__all__ if n != "events"]
    roots += [("tether.TimeoutError", tether.TimeoutError)]
    roots += [(f"tether.testing.{n}", getattr(tether.testing, n)) for n in tether.testing.__all__]
    roots += [(f"tether.events.{n}", getattr(tether.events, n)) for n in tether.events.__all__ if n != "Event"]
    roots += [(f"tether._procpool.{n}", getattr(tether._procpool, n)) for n in tether._procpool.__all__]
    roots += [
        (f"tether.worker.{n}", getattr(tether.worker, n)) for n in ("serve", "ready", "read_frame", "write_frame")
    ]
    roots += [(f"tether._native.{n}", getattr(native, n)) for n in ("NativeCoroutine", "EventStream", "AlarmStream")]
    roots += [
        ("tether._native.PoolEventStream", native.PoolEventStream),
        ("tether._native.DelayIter", native.DelayIter),
    ]
    out = []
    for name, obj in roots:
        out.append((name, obj))
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                out.append((f"{name}.{attr}", member))
    return out


@pytest.mark.parametrize(("name", "obj"), public_objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_has_a_docstring(name, obj):
    doc = inspect.getdoc(obj)
    assert doc and doc.strip(), f"{name} has no docstring: help() would show None"


@pytest.mark.parametrize(
    ("cls", "shown"),
    [
        (tether.Backoff, ["initial=0.3", "factor=2.0", "max_delay=7.0", "jitter='full'", "max_attempts=None"]),
        (tether.Reconnector, ["stable_after=10.0", "quiet_attempts=1", "quiet_jitter=1.0", "fatal=()", "name=None"]),
        (tether.ProcPool, ["num_idle=1", "max_concurrent_spawns=1", "initialize_timeout=10.0", "acquire_attempts=3"]),
        (tether.Watchdog, ["name='watchdog'", "on_alarm=None"]),
    ],
)
def test_help_shows_the_defaults_that_take_effect(cls, shown):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for s in shown:
        assert s in text, f"{s} not in help({cls.__name__}):\n{text[:600]}"
    assert inspect.getdoc(cls).split()[0] in text  # the docstring, not None


def test_the_defaults_shown_are_the_ones_an_object_gets():
    b = inspect.signature(tether.Backoff).parameters
    made = tether.Backoff()
    for p in ("initial", "factor", "max_delay", "jitter", "max_attempts", "deadline", "seed"):
        assert b[p].default == getattr(made, p), p
    # None still means "the default", as the stubs promise
    assert tether.Backoff(initial=None, factor=None, max_delay=None) == made
    r = inspect.signature(tether.Reconnector).parameters
    rec = tether.Reconnector()
    for p in ("policy", "stable_after", "quiet_attempts", "quiet_jitter", "name", "attempt_timeout"):
        assert r[p].default == getattr(rec, p), p
    assert r["policy"].default == tether.Backoff()
    pool = inspect.signature(tether.ProcPool).parameters
    assert pool["respawn"].default == tether.Backoff(0.1, 2.0, max_delay=10.0, jitter="equal")


def test_connect_shows_the_rust_defaults():
    """tether.connect's signature is the native constructor's, with the Rust configuration's defaults
    (tests/connect/test_options.py checks a connection uses them), not None or `...`."""
    text = pydoc.render_doc(tether.connect, renderer=pydoc.plaintext)
    for s in ["ping_interval=5.0", "ladder=('resume', 'restart')", "fatal_close_codes=(1008,)", "fatal=()"]:
        assert s in text, f"{s} not in help(tether.connect):\n{text[:600]}"
    assert "connect_timeout=30.0" in text and "compression='deflate'" in text and "-> tether" in text
    assert inspect.getdoc(tether.connect).startswith("Create a supervised WebSocket")
    params = inspect.signature(tether.connect).parameters
    assert params["max_message_size"].default == 16 * 1024 * 1024
    assert all(p.default is not ... for p in params.values())


def stub_docstrings():
    """(qualified name, stub docstring) for the public native objects the stub documents."""
    tree = ast.parse(STUB.read_text())
    out = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name not in WRAPPED:
            if doc := ast.get_docstring(node):
                out.append((node.name, doc))
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and (doc := ast.get_docstring(sub)):
                    out.append((f"{node.name}.{sub.name}", doc))
        elif isinstance(node, ast.FunctionDef) and (doc := ast.get_docstring(node)):
            out.append((node.name, doc))
    return out


@pytest.mark.parametrize(("qualname", "doc"), stub_docstrings(), ids=lambda v: v if "\n" not in v else "")
def test_the_stub_says_what_help_says(qualname, doc):
    obj = native
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part)
    runtime = inspect.getdoc(obj) or ""
    assert " ".join(runtime.split()) == " ".join(doc.split()), f"the stub's docstring of {qualname} differs"


def test_proxy_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "tether", "proxy", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for command, what in _proxy_cli.COMMANDS:
        assert command in out and what in out, f"{command!r} missing from:\n{out}"
    # and the `help` command names the same ones
    reply, _ = _proxy_cli.execute(None, "help")  # type: ignore[arg-type]
    assert all(c.split()[0] in reply for c, _ in _proxy_cli.COMMANDS)

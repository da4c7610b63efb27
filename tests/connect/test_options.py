"""Each option is checked when the object is made: a value of the wrong type is a TypeError, one out of
range a ValueError, and the message (not only a traceback note) names the argument, for every
constructor that takes the option. None takes the default; the defaults the signature shows are accepted."""

import asyncio
import inspect
import math

import pytest

import tether
from support import drop, eventually

URL = "ws://127.0.0.1:9/"


async def spawn():
    return None


def make_connect(**kw):
    return tether.connect(URL, **kw)


def make_reconnector(**kw):
    return tether.Reconnector(**kw)


def make_pool(**kw):
    return tether.ProcPool(spawn=spawn, **kw)


def make_backoff(**kw):
    return tether.Backoff(**kw)


def make_heartbeat(**kw):
    kw.setdefault("interval", 1.0)
    return tether.Heartbeat("hb", **kw)


SECONDS = [("x", TypeError), (True, TypeError), (None, None), (0, ValueError), (-1, ValueError)]
SECONDS += [(math.nan, ValueError), (math.inf, ValueError), (86401, ValueError)]
SECONDS_OR_ZERO = [("1", TypeError), (False, TypeError), (-0.5, ValueError), (math.nan, ValueError)]
COUNT = [(1.5, TypeError), ("3", TypeError), (True, TypeError), (-1, ValueError), (1_000_001, ValueError)]
AT_LEAST_ONE = [*COUNT, (0, ValueError)]
BYTES = [(0, ValueError), (-5, ValueError), ("big", ValueError)]
POLICY = [("fast", TypeError), (3, TypeError)]
CLOSE_CODES = [(1000, TypeError), ((True,), TypeError), ((999,), ValueError), ((1005,), ValueError)]

CASES = [
    (make_connect, "ping_interval", SECONDS),
    (make_connect, "ping_timeout", SECONDS),
    (make_connect, "open_timeout", SECONDS),
    (make_connect, "close_timeout", SECONDS),
    (make_connect, "first_message_timeout", SECONDS),
    (make_connect, "connect_timeout", [v for v in SECONDS if v[0] is not None]),
    (make_connect, "stable_after", SECONDS_OR_ZERO),
    (make_connect, "quiet_jitter", SECONDS_OR_ZERO),
    (make_connect, "quiet_attempts", COUNT),
    (make_connect, "send_buffer", AT_LEAST_ONE),
    (make_connect, "max_message_size", BYTES),
    (make_connect, "read_buffer_size", BYTES),
    (make_connect, "write_buffer_size", BYTES),
    (make_connect, "policy", POLICY),
    (make_connect, "fatal_close_codes", CLOSE_CODES),
    (make_connect, "final_close_codes", CLOSE_CODES),
    (make_connect, "fatal_http_statuses", [(401, TypeError), (("401",), TypeError), ((70000,), TypeError)]),
    (make_connect, "ladder", [("resume", TypeError), (5, TypeError), ((), ValueError), ((("a", 0),), ValueError)]),
    (make_connect, "compression", [("gzip", ValueError), (True, TypeError)]),
    (make_reconnector, "policy", POLICY),
    (make_reconnector, "stable_after", SECONDS_OR_ZERO),
    (make_reconnector, "quiet_jitter", SECONDS_OR_ZERO),
    (make_reconnector, "quiet_attempts", COUNT),
    (make_reconnector, "attempt_timeout", SECONDS),
    (make_pool, "num_idle", COUNT),
    (make_pool, "max_concurrent_spawns", AT_LEAST_ONE),
    (make_pool, "acquire_attempts", AT_LEAST_ONE),
    (make_pool, "initialize_timeout", SECONDS),
    (make_pool, "respawn", POLICY),
    (make_backoff, "initial", [("1", TypeError), (True, TypeError), (-1, ValueError)]),
    (make_backoff, "factor", [("2", TypeError), (0.5, ValueError)]),
    (make_backoff, "max_delay", [("7", TypeError), (1e12, ValueError)]),
    (make_backoff, "deadline", [("7", TypeError), (0, ValueError)]),
    (make_backoff, "max_attempts", COUNT),
    (make_backoff, "jitter", [(1, TypeError), ("sometimes", ValueError)]),
    (make_heartbeat, "interval", [v for v in SECONDS if v[0] is not None]),
    (make_heartbeat, "timeout", SECONDS),
]


@pytest.mark.parametrize(
    ("make", "name", "value", "error"),
    [(make, name, value, error) for make, name, values in CASES for value, error in values],
    ids=lambda v: getattr(v, "__name__", repr(v)),
)
def test_a_bad_value_is_refused_naming_the_argument(make, name, value, error):
    if error is None:  # None is the default
        make(**{name: value})
        return
    with pytest.raises(error) as info:
        make(**{name: value})
    assert type(info.value) is error, info.value
    assert name in str(info.value), f"{name} not in {info.value!r}"


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (make_connect, "ping_interval"),
        (make_connect, "stable_after"),
        (make_reconnector, "stable_after"),
        (make_reconnector, "quiet_jitter"),
        (make_reconnector, "attempt_timeout"),
        (make_pool, "initialize_timeout"),
        (make_backoff, "initial"),
        (make_backoff, "deadline"),
        (make_heartbeat, "timeout"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["10**400", "-10**400"])
def test_an_int_too_large_for_a_float_is_a_value_error(make, name, value):
    """An int beyond a float's range is a number out of range, a ValueError naming the argument as 10**20
    and inf are. Before, it was a TypeError ("must be a number of seconds, not int"): the float
    conversion's OverflowError was taken for a value of the wrong type."""
    with pytest.raises(ValueError, match=name):
        make(**{name: value})


@pytest.mark.parametrize("timeout", [0, -1, math.nan, "1", True], ids=lambda v: repr(v))
def test_the_methods_name_their_timeout(timeout):
    wd = tether.Watchdog()
    for call in (lambda: wd.dwell("s", timeout), lambda: wd.liveness("k", timeout), lambda: wd.progress("k", timeout)):
        with pytest.raises((TypeError, ValueError), match="timeout"):
            call()
    wd.close()


async def test_the_pool_methods_name_their_arguments():
    pool = tether.ProcPool(spawn=spawn, num_idle=0)
    with pytest.raises(ValueError, match="timeout"):
        await pool.acquire(timeout=0)
    with pytest.raises(TypeError, match="n must be an int"):
        await pool.warm(n=1.5)
    with pytest.raises(ValueError, match=r"^n must be"):
        pool.set_target_idle(-1)
    await pool.aclose()


@pytest.mark.parametrize("make", [make_connect, make_reconnector, make_pool, make_backoff])
def test_the_defaults_the_signature_shows_are_accepted(make):
    target = {make_connect: tether.connect, make_reconnector: tether.Reconnector}.get(make)
    target = target or {make_pool: tether.ProcPool, make_backoff: tether.Backoff}[make]
    params = inspect.signature(target).parameters
    shown = {
        n: p.default
        for n, p in params.items()
        if p.default is not inspect.Parameter.empty and n not in ("spawn", "command")
    }
    assert shown and all(v is not ... for v in shown.values()), shown
    make(**shown)


async def test_a_connection_left_at_its_defaults_uses_the_ones_its_signature_shows(signal_server):
    """Read through what a connection does, not through the configuration: the limits its errors name,
    the ladder rungs its url_for is called with, the close code it gives up on."""
    shown = {n: p.default for n, p in inspect.signature(tether.connect).parameters.items()}
    strategies = []

    def url_for(strategy, attempt):
        strategies.append(strategy)
        return signal_server.url

    async with tether.connect(signal_server.url, url_for=url_for) as conn:
        limit = shown["max_message_size"]
        with pytest.raises(ValueError, match=rf"larger than max_message_size \({limit} bytes\)"):
            conn.send(b"x" * (limit + 1))
        # sends queue at call time: unconfirmed, the buffer holds send_buffer of them and refuses the next
        pending = [conn.send("m") for _ in range(shown["send_buffer"])]
        with pytest.raises(tether.SendBufferFull):
            conn.send("one too many")
        await asyncio.gather(*pending)
        # every rung of the ladder, in order, until an attempt succeeds
        signal_server.refuse(503, times=len(shown["ladder"]))
        await drop(signal_server)
        await eventually(lambda: len(strategies) > len(shown["ladder"]) + 1, what="the reconnects")
        assert strategies[: len(shown["ladder"]) + 1] == ["connect", *shown["ladder"]], strategies
        await eventually(lambda: conn.state == "connected")
        signal_server.close(shown["fatal_close_codes"][0])
        with pytest.raises(tether.GaveUp, match=str(shown["fatal_close_codes"][0])):
            while True:  # the echoes of the messages above, then the give-up
                await asyncio.wait_for(conn.recv(), 10)


# What connect's docstring says of a default, and the value that phrase stands for: the docstring restates
# these for the reader, so it must change when the Rust configuration (the one source) does.
DOCUMENTED_DEFAULTS = [
    ("connect_timeout", "``connect_timeout`` (default 30 s)", 30.0),
    ("fatal_close_codes", "``fatal_close_codes`` (default 1008)", (1008,)),
    ("max_message_size", "either way (default 16 MiB)", 16 << 20),
    ("compression", '``compression`` (default ``"deflate"``)', "deflate"),
    ("read_buffer_size", "``read_buffer_size`` (default 4 KiB)", 4 << 10),
    ("write_buffer_size", "``write_buffer_size`` (default 16 KiB)", 16 << 10),
]


@pytest.mark.parametrize(("name", "phrase", "value"), DOCUMENTED_DEFAULTS, ids=[d[0] for d in DOCUMENTED_DEFAULTS])
def test_the_defaults_connects_docstring_states_are_the_signatures(name, phrase, value):
    doc = " ".join(inspect.getdoc(tether.connect).split())
    assert phrase in doc, f"connect's docstring no longer says {phrase!r}: update DOCUMENTED_DEFAULTS with it"
    assert inspect.signature(tether.connect).parameters[name].default == value, (
        f"connect's docstring says {phrase!r}, the signature (the Rust default) says otherwise"
    )

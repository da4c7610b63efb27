"""The exception hierarchy as users meet it: what each class is a subclass of, its keyword constructor and
the attributes' defaults, its message, pickling, subclassing, and FailedMessage behaving as a tuple."""

import asyncio
import builtins
import copy
import inspect
import pickle
import sys

import pytest

import tether

ERRORS = [
    tether.TetherError,
    tether.GaveUp,
    tether.PoolExhausted,
    tether.NotReady,
    tether.ConnectionClosed,
    tether.ConnectFailed,
    tether.SendBufferFull,
    tether.SendFailed,
    tether.TimeoutError,
]

# the attributes each constructor stores, with the values it gives those left out
DEFAULTS = {
    tether.GaveUp: dict(attempts=0, last_error=None, elapsed=0.0, reason="", name="", messages=[], failures=[]),
    tether.PoolExhausted: dict(failures=[], attempts=0),
    tether.NotReady: dict(job_id="", stage="", elapsed=0.0, reached={}, attempts=0),
    tether.ConnectionClosed: dict(code=None, reason="", http_status=None, messages=[], failures=[]),
    tether.ConnectFailed: dict(code=None, reason="", http_status=None, messages=[], failures=[]),
    tether.SendFailed: dict(size=0, code=None, losses=None, failures=[], messages=[]),
    tether.TimeoutError: dict(timeout=None, what=""),
}

FAILED = tether.FailedMessage(7, b"\x00payload", "the server closed with 1009 (message too big) after it", 1009)

# one set of values for every keyword of each constructor
GIVEN = {
    tether.GaveUp: dict(
        attempts=3,
        last_error=ConnectionError("refused"),
        elapsed=1.5,
        reason="attempt budget exhausted",
        name="signaling",
        messages=("a", b"b"),
        failures=(FAILED,),
    ),
    tether.PoolExhausted: dict(failures=("spawn() raised OSError",), attempts=2),
    tether.NotReady: dict(job_id="j", stage="ready", elapsed=2.0, reached={"dispatched": 0.1}, attempts=1),
    tether.ConnectionClosed: dict(code=4000, reason="bye", http_status=None, messages=["m"], failures=[FAILED]),
    tether.ConnectFailed: dict(code=None, reason="HTTP 404", http_status=404, messages=[], failures=[]),
    tether.SendFailed: dict(size=20, code=1009, losses=None, failures=[FAILED]),
    tether.TimeoutError: dict(timeout=2.5, what="ProcPool.acquire"),
}


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_class_is_a_tether_error_shown_under_tether(cls):
    assert issubclass(cls, tether.TetherError) and issubclass(cls, Exception)
    assert cls.__module__ == "tether" and getattr(tether, cls.__name__) is cls
    assert repr(cls) == f"<class 'tether.{cls.__name__}'>"


def test_the_subclass_relations():
    assert issubclass(tether.ConnectFailed, tether.ConnectionClosed)
    # also the builtin, so code that catches TimeoutError (or asyncio's) catches tether's
    assert issubclass(tether.TimeoutError, builtins.TimeoutError)
    if sys.version_info >= (3, 11):  # where asyncio's is the builtin
        assert issubclass(tether.TimeoutError, asyncio.TimeoutError)
    assert not issubclass(tether.GaveUp, builtins.TimeoutError)
    try:
        raise tether.TimeoutError("late", timeout=1.0, what="x")
    except TimeoutError as e:
        caught = e
    assert isinstance(caught, tether.TetherError)


@pytest.mark.parametrize("cls", list(DEFAULTS), ids=lambda c: c.__name__)
def test_keywords_left_out_take_their_defaults(cls):
    e = cls("what failed and why")
    assert vars(e) == DEFAULTS[cls]
    assert str(e) == "what failed and why" and e.args == ("what failed and why",)


@pytest.mark.parametrize("cls", list(GIVEN), ids=lambda c: c.__name__)
def test_keywords_given_are_the_attributes(cls):
    given = GIVEN[cls]
    e = cls("m", **given)
    for name, value in given.items():
        got = getattr(e, name)
        if isinstance(value, (tuple, list)):
            # any iterable, kept as a list
            assert type(got) is list and got == list(value), name
        else:
            assert got == value, name
    assert str(e) == "m"


def test_attributes_are_copies_of_what_was_passed():
    failures = [FAILED]
    reached = {"dispatched": 0.1}
    e = tether.SendFailed("m", failures=iter(failures))
    assert e.failures == failures and e.messages == [FAILED.message]
    n = tether.NotReady("m", reached=reached)
    reached["joined"] = 0.2
    assert n.reached == {"dispatched": 0.1}
    assert tether.GaveUp("m", messages=(x for x in ["a", "b"])).messages == ["a", "b"]


def test_the_message_may_be_a_keyword():
    e = tether.GaveUp(message="m", attempts=1)
    assert e.args == ("m",) and e.attempts == 1


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: tether.GaveUp("m", attemps=1), "unexpected keyword argument 'attemps'"),
        (lambda: tether.TimeoutError(timeout=1.0), "missing 1 required positional argument: 'message'"),
        (lambda: tether.NotReady("m", "extra"), "takes 2 positional arguments but 3 were given"),
        (lambda: tether.ConnectFailed("m", message="m"), "multiple values for argument 'message'"),
    ],
)
def test_wrong_arguments_are_type_errors(call, says):
    with pytest.raises(TypeError, match=says):
        call()


def test_the_base_and_plain_classes_take_any_positional_arguments():
    assert tether.TetherError("a", "b").args == ("a", "b")
    assert tether.SendBufferFull().args == ()


@pytest.mark.parametrize("cls", list(GIVEN), ids=lambda c: c.__name__)
def test_pickle_and_copy_keep_class_message_and_attributes(cls):
    e = cls("m", **GIVEN[cls])
    for back in (pickle.loads(pickle.dumps(e)), copy.copy(e), copy.deepcopy(e)):
        assert type(back) is cls and back.args == ("m",)
        for name, value in vars(e).items():
            if isinstance(value, BaseException):
                assert type(getattr(back, name)) is type(value) and getattr(back, name).args == value.args
            else:
                assert getattr(back, name) == value, name


def test_a_subclass_passes_its_keywords_up():
    class Mine(tether.GaveUp):
        def __init__(self, name):
            super().__init__(f"{name} gave up", attempts=9, name=name)

    e = Mine("x")
    assert (e.args, e.attempts, e.name, e.messages) == (("x gave up",), 9, "x", [])
    assert isinstance(e, tether.GaveUp)


def test_the_signature_shows_the_keywords_and_their_defaults():
    sig = inspect.signature(tether.TimeoutError)
    assert str(sig) == "(message, *, timeout=None, what='')"
    params = inspect.signature(tether.GaveUp).parameters
    assert [p for p in params] == ["message", *DEFAULTS[tether.GaveUp]]
    assert params["messages"].default == () and params["attempts"].default == 0


def test_a_cause_chain_is_kept():
    cause = ConnectionError("refused")
    try:
        try:
            raise cause
        except ConnectionError as c:
            raise tether.GaveUp("gave up", last_error=c) from c
    except tether.GaveUp as e:
        assert e.__cause__ is cause and e.last_error is cause


def test_failed_message_is_a_named_tuple():
    f = tether.FailedMessage(1, "hi", "why")
    assert isinstance(f, tuple) and len(f) == 5
    assert f == (1, "hi", "why", None, None) and f[1] == "hi" and f[-2:] == (None, None)
    seq, message, reason, code, losses = f
    assert (seq, message, reason, code, losses) == (1, "hi", "why", None, None)
    assert (f.seq, f.message, f.reason, f.code, f.losses) == (1, "hi", "why", None, None)
    assert tether.FailedMessage._fields == ("seq", "message", "reason", "code", "losses")
    assert f._replace(code=1009).code == 1009 and f._asdict()["reason"] == "why"
    assert hash(f) == hash((1, "hi", "why", None, None))
    assert pickle.loads(pickle.dumps(FAILED)) == FAILED
    assert repr(f) == "FailedMessage(seq=1, message='hi', reason='why', code=None, losses=None)"
    with pytest.raises(AttributeError):
        f.seq = 2  # type: ignore[misc]
    match FAILED:
        case tether.FailedMessage(seq, message, reason, code=1009):
            assert (seq, message) == (7, b"\x00payload")
        case _:
            pytest.fail("FailedMessage did not match by position")

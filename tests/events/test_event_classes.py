"""The event classes (connection and reconnect events, alarms, pool events) are made in Rust and behave as
the frozen dataclasses code written against them relies on: construction by position or keyword in field
order, read-only attributes, equality and hash by value, the dataclass repr, ``match`` patterns, pickling."""

import ast
import copy
import inspect
import pathlib
import pickle

import pytest

import tether
import tether._procpool as procpool
from tether import events as ev

# every class with the values of its fields, in field order
SAMPLES = [
    (ev.Connecting, (1, "connect")),
    (ev.Connected, (2,)),
    (ev.ConnectionLost, ("reset by peer",)),
    (ev.Reconnecting, (3, 0.25, "resume")),
    (ev.Reconnected, (1.5, 4)),
    (ev.GaveUp, ("refused", 5)),
    (ev.Closed, ()),
    (tether.Alarm, ("liveness", "audio", 1.2, 1.0, "no beat")),
    (procpool.Spawned, ("pid 7", 0.1)),
    (procpool.SpawnFailed, ("OSError: cannot fork", 2, 0.2)),
    (procpool.Evicted, ("pid 7", "died while idle")),
    (procpool.Exhausted, (3, ["a", "b", "c"])),
    (procpool.HealthChanged, (False,)),
    (procpool.PoolClosed, ()),
]
ids = [cls.__name__ for cls, _ in SAMPLES]


@pytest.mark.parametrize(("cls", "values"), SAMPLES, ids=ids)
def test_built_by_position_or_keyword_in_field_order(cls, values):
    names = cls.__match_args__
    assert list(inspect.signature(cls).parameters) == list(names)
    by_position = cls(*values)
    by_keyword = cls(**dict(zip(names, values, strict=True)))
    assert by_position == by_keyword
    assert [getattr(by_position, n) for n in names] == list(values)
    with pytest.raises(TypeError):
        cls(*values, "one too many")


@pytest.mark.parametrize(("cls", "values"), SAMPLES, ids=ids)
def test_frozen(cls, values):
    e = cls(*values)
    for name in cls.__match_args__:
        with pytest.raises(AttributeError):
            setattr(e, name, values[0])
        with pytest.raises(AttributeError):
            delattr(e, name)
    with pytest.raises(AttributeError):
        e.extra = 1  # no instance dict either


def test_a_list_field_cannot_be_changed_through_the_event():
    e = procpool.Exhausted(2, ["a", "b"])
    e.failures.append("c")
    assert e.failures == ["a", "b"]


def changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    return v + v[:1]  # str, list


@pytest.mark.parametrize(("cls", "values"), SAMPLES, ids=ids)
def test_equal_by_value_and_hashed_by_value(cls, values):
    a, b = cls(*values), cls(*values)
    assert a == b and not (a != b)
    assert a != values and a != object()
    for i in range(len(values)):  # any one field differing makes it another value
        assert a != cls(*values[:i], changed(values[i]), *values[i + 1 :])
    if cls is procpool.Exhausted:  # a list field makes it unhashable, as the dataclass was
        with pytest.raises(TypeError):
            hash(a)
    else:
        assert hash(a) == hash(b) == hash(tuple(values))
        assert len({a, b}) == 1
    with pytest.raises(TypeError):
        a < b  # noqa: B015 (equality only, no ordering)


def test_different_classes_with_the_same_fields_differ():
    assert ev.Connected(1) != procpool.HealthChanged(True)
    assert ev.Closed() != procpool.PoolClosed()
    assert procpool.Spawned("p", 1.0) != procpool.Evicted("p", "1.0")


@pytest.mark.parametrize(
    ("event", "shown"),
    [
        (ev.Connected(1), "Connected(attempt=1)"),
        (ev.Reconnecting(2, 0.5, "resume"), "Reconnecting(attempt=2, delay=0.5, strategy='resume')"),
        (ev.ConnectionLost('it\'s "gone"'), "ConnectionLost(reason='it\\'s \"gone\"')"),
        (procpool.Exhausted(1, ["x"]), "Exhausted(attempts=1, failures=['x'])"),
        (procpool.HealthChanged(True), "HealthChanged(healthy=True)"),
        (procpool.PoolClosed(), "PoolClosed()"),
        (
            tether.Alarm("dwell", "s", 2.0, 1.0, "m"),
            "Alarm(kind='dwell', name='s', elapsed=2.0, limit=1.0, message='m')",
        ),
    ],
)
def test_repr_is_the_dataclass_repr(event, shown):
    assert repr(event) == shown


def describe(e):
    match e:
        case ev.Reconnecting(attempt=n, strategy="resume"):
            return f"resume #{n}"
        case ev.Reconnecting(n, delay, _):
            return f"retry #{n} in {delay}"
        case ev.Connected(n):
            return f"up after {n}"
        case tether.Alarm("liveness", key):
            return f"silent {key}"
        case procpool.HealthChanged(healthy=False):
            return "unhealthy"
        case _:
            return "other"


def test_match_by_keyword_and_by_position():
    assert describe(ev.Reconnecting(3, 0.1, "resume")) == "resume #3"
    assert describe(ev.Reconnecting(4, 0.2, "restart")) == "retry #4 in 0.2"
    assert describe(ev.Connected(2)) == "up after 2"
    assert describe(tether.Alarm("liveness", "audio", 1.0, 1.0, "m")) == "silent audio"
    assert describe(procpool.HealthChanged(False)) == "unhealthy"
    assert describe(procpool.HealthChanged(True)) == "other"


@pytest.mark.parametrize(("cls", "values"), SAMPLES, ids=ids)
def test_pickled_and_copied_by_value(cls, values):
    e = cls(*values)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(e, protocol)) == e
    assert copy.copy(e) == e and copy.deepcopy(e) == e


@pytest.mark.parametrize(("cls", "values"), SAMPLES, ids=ids)
def test_found_where_users_import_them(cls, values):
    module = {ev.Closed.__module__: ev, "tether": tether, "tether._procpool": procpool}[cls.__module__]
    assert getattr(module, cls.__qualname__) is cls
    assert cls.__module__ in ("tether.events", "tether", "tether._procpool")
    assert inspect.getdoc(cls)


def test_event_is_the_union_of_what_events_yields():
    assert set(ev.Event.__args__) == {getattr(ev, n) for n in ev.__all__ if n != "Event"}


def test_the_stub_declares_the_runtime_fields():
    stub = ast.parse(pathlib.Path(tether._native.__file__).with_name("_native.pyi").read_text())
    declared = {}
    for node in stub.body:
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.Assign) and [t.id for t in sub.targets] == ["__match_args__"]:
                    declared[node.name] = ast.literal_eval(sub.value)
    # by the name the native module exposes each under (the event GaveUp is `GaveUpEvent` there: the
    # exception holds the name `GaveUp`)
    classes = [cls for cls, _ in SAMPLES]
    exposed = {name: c for name, c in vars(tether._native).items() if any(c is k for k in classes)}
    assert len(exposed) == len(classes)
    assert declared == {name: c.__match_args__ for name, c in exposed.items()}

import itertools
import math

import pytest

import tether


def test_defaults_match_the_contract():
    b = tether.Backoff()
    assert (b.initial, b.factor, b.max_delay, b.jitter) == (0.3, 2.0, 7.0, "full")
    assert b.max_attempts is None and b.deadline is None and b.seed is None
    # every argument given as None takes its default (jitter=None was a TypeError)
    none = dict.fromkeys(["initial", "factor", "max_delay", "jitter", "max_attempts", "deadline", "seed"])
    assert tether.Backoff(**none) == b


def test_no_jitter_sequence_and_retry_count():
    b = tether.Backoff(0.2, 2, jitter="none", max_attempts=3)
    assert [round(d, 6) for d in b.delays()] == [0.2, 0.4, 0.8]
    # each call is a fresh episode
    assert list(b.delays()) == list(b.delays())


def test_cap_and_deadline():
    b = tether.Backoff(1, 2, max_delay=3, jitter="none", deadline=10)
    assert list(b.delays()) == [1, 2, 3, 3]  # 9 <= 10, next would be 12


@pytest.mark.parametrize("jitter,lo", [("full", 0.0), ("equal", 0.5)])
def test_jitter_stays_in_bounds(jitter, lo):
    b = tether.Backoff(0.5, 2, max_delay=4, jitter=jitter, max_attempts=500, seed=11)
    for n, d in enumerate(b.delays()):
        base = min(0.5 * 2**n, 4)
        assert base * lo - 1e-9 <= d <= base + 1e-9


def test_decorrelated_bounds():
    b = tether.Backoff(0.1, 2, max_delay=2, jitter="decorrelated", max_attempts=300, seed=5)
    assert all(0.1 - 1e-9 <= d <= 2 + 1e-9 for d in b.delays())


def test_seed_reproducible():
    a = list(tether.Backoff(seed=123, max_attempts=10).delays())
    b = list(tether.Backoff(seed=123, max_attempts=10).delays())
    assert a == b
    assert list(tether.Backoff(seed=124, max_attempts=10).delays()) != a
    # large and negative ints are accepted (low 64 bits)
    tether.Backoff(seed=2**80 + 7)
    tether.Backoff(seed=-1)


def test_unbounded_is_infinite_iterator():
    it = tether.Backoff(jitter="none").delays()
    assert list(itertools.islice(it, 100))[-1] == 7.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(initial=-1),
        dict(initial=math.nan),
        dict(initial=math.inf),
        dict(factor=0.5),
        dict(initial=5, max_delay=1),
        dict(jitter="sometimes"),
        dict(max_attempts=-1),
        dict(deadline=0),
        dict(deadline=-3),
        dict(max_delay=1e12),
    ],
)
def test_nonsense_is_a_value_error(kwargs):
    with pytest.raises(ValueError):
        tether.Backoff(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(initial="1"),
        dict(initial=True),
        dict(max_attempts=2.5),
        dict(max_attempts=True),
        dict(seed="x"),
        dict(seed=1.5),
    ],
)
def test_wrong_types_are_type_errors(kwargs):
    with pytest.raises(TypeError):
        tether.Backoff(**kwargs)


def test_repr_and_eq():
    b = tether.Backoff(0.2, 2, max_attempts=3, seed=1)
    assert "max_attempts=3" in repr(b)
    assert b == tether.Backoff(0.2, 2, max_attempts=3, seed=1)
    assert b != tether.Backoff(0.2, 2, max_attempts=4, seed=1)

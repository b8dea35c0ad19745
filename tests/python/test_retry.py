"""API §9: @retry, @retry_backoff and @retry_cached."""

import logging
import traceback

import pytest

import makeParallel as mp
from conftest import WAIT
from makeParallel import _retry


class Flaky:
    """A callable that fails a given number of times, then returns "ok"."""

    def __init__(self, failures, error=ValueError):
        self.failures = failures
        self.error = error
        self.calls = 0
        self.raised = []

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            exc = self.error(f"failure {self.calls}")
            self.raised.append(exc)
            raise exc
        return "ok"


@pytest.fixture
def sleeps(monkeypatch):
    """Records the delays retry_backoff asks for instead of sleeping."""
    delays = []
    monkeypatch.setattr(_retry.time, "sleep", delays.append)
    return delays


# retry ---------------------------------------------------------------------


def test_retry_succeeds_after_failures():
    flaky = Flaky(failures=2)
    assert mp.retry(max_retries=3)(flaky)() == "ok"
    assert flaky.calls == 3


def test_retry_gives_up_after_max_retries_and_reraises_the_last_exception():
    flaky = Flaky(failures=10)
    wrapped = mp.retry(max_retries=3)(flaky)

    with pytest.raises(ValueError) as info:
        wrapped()

    assert flaky.calls == 4  # the first attempt and three retries
    assert info.value is flaky.raised[-1]


def test_retry_bare_uses_three_retries():
    flaky = Flaky(failures=10)

    @mp.retry
    def call():
        return flaky()

    with pytest.raises(ValueError, match="failure 4"):
        call()
    assert flaky.calls == 4
    assert call.__name__ == "call"


def test_retry_positional_max_retries():
    flaky = Flaky(failures=10)
    with pytest.raises(ValueError):
        mp.retry(1)(flaky)()
    assert flaky.calls == 2


def test_retry_zero_retries_calls_once():
    flaky = Flaky(failures=1)
    with pytest.raises(ValueError):
        mp.retry(max_retries=0)(flaky)()
    assert flaky.calls == 1


def test_retry_passes_arguments_through():
    @mp.retry(max_retries=1)
    def add(a, b=0):
        return a + b

    assert add(2, b=3) == 5


def test_retry_does_not_retry_cancellation_or_keyboard_interrupt():
    cancelled = Flaky(failures=5, error=mp.TaskCancelledError)
    with pytest.raises(mp.TaskCancelledError):
        mp.retry(cancelled)()
    assert cancelled.calls == 1

    interrupted = Flaky(failures=5, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        mp.retry(interrupted)()
    assert interrupted.calls == 1


def test_retry_logs_each_retry_at_debug(caplog):
    flaky = Flaky(failures=2)
    with caplog.at_level(logging.DEBUG, logger="makeParallel"):
        mp.retry(max_retries=3)(flaky)()

    retries = [r for r in caplog.records if r.name == "makeParallel"]
    assert len(retries) == 2
    assert all(r.levelno == logging.DEBUG for r in retries)
    assert "attempt 1 of 4" in retries[0].getMessage()


def test_retry_inside_a_task():
    flaky = Flaky(failures=2)
    handle = mp.parallel(mp.retry(max_retries=2)(flaky))()
    assert handle.get(WAIT) == "ok"
    assert flaky.calls == 3


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (2.0, TypeError), (None, TypeError)]
)
def test_retry_rejects_bad_max_retries(value, error):
    with pytest.raises(error, match="max_retries"):
        mp.retry(max_retries=value)


def test_retry_rejects_coroutine_functions():
    async def fetch():
        return 1

    with pytest.raises(TypeError, match="coroutine"):
        mp.retry(fetch)


# retry_backoff ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("exponential", [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]),
        ("linear", [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]),
        ("constant", [0.5] * 6),
    ],
)
def test_backoff_delays_follow_the_formula(sleeps, backoff, expected):
    flaky = Flaky(failures=100)
    wrapped = mp.retry_backoff(
        max_attempts=7, backoff=backoff, initial_delay=0.5, max_delay=5.0
    )(flaky)

    with pytest.raises(ValueError, match="failure 7"):
        wrapped()

    assert flaky.calls == 7
    assert sleeps == pytest.approx(expected)


def test_backoff_defaults_are_exponential_from_one_second(sleeps):
    flaky = Flaky(failures=2)
    assert mp.retry_backoff(flaky)() == "ok"
    assert sleeps == [1.0, 2.0]


def test_backoff_no_sleep_after_the_last_attempt_or_on_success(sleeps):
    flaky = Flaky(failures=1)
    assert mp.retry_backoff(max_attempts=3, initial_delay=0.25)(flaky)() == "ok"
    assert sleeps == [0.25]


def test_backoff_jitter_stays_between_half_and_the_full_delay(sleeps):
    flaky = Flaky(failures=100)
    wrapped = mp.retry_backoff(
        max_attempts=40, initial_delay=1.0, max_delay=8.0, jitter=True
    )(flaky)
    with pytest.raises(ValueError):
        wrapped()

    plain = [min(2.0**n, 8.0) for n in range(39)]
    assert len(sleeps) == 39
    assert all(p / 2 <= s <= p for s, p in zip(sleeps, plain))
    assert any(s != p for s, p in zip(sleeps, plain))


def test_backoff_huge_retry_number_is_capped_without_overflow():
    assert _retry.backoff_delay(5000, "exponential", 1.0, 60.0) == 60.0
    assert _retry.backoff_delay(5000, "exponential", 0.0, 60.0) == 0.0


def test_backoff_retries_only_the_given_exceptions(sleeps):
    wrong_kind = Flaky(failures=5, error=KeyError)
    wrapped = mp.retry_backoff(max_attempts=5, exceptions=(ValueError,))(wrong_kind)
    with pytest.raises(KeyError):
        wrapped()
    assert wrong_kind.calls == 1
    assert sleeps == []

    right_kind = Flaky(failures=2, error=ValueError)
    single = mp.retry_backoff(max_attempts=5, exceptions=ValueError)(right_kind)
    assert single() == "ok"
    assert right_kind.calls == 3


def test_backoff_logs_each_retry_with_its_delay(sleeps, caplog):
    flaky = Flaky(failures=2)
    with caplog.at_level(logging.DEBUG, logger="makeParallel"):
        mp.retry_backoff(initial_delay=0.5)(flaky)()
    messages = [r.getMessage() for r in caplog.records if r.name == "makeParallel"]
    assert len(messages) == 2
    assert "0.500 s" in messages[0] and "1.000 s" in messages[1]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": 1.5}, TypeError, "max_attempts"),
        ({"backoff": "fibonacci"}, ValueError, "backoff"),
        ({"backoff": 2}, TypeError, "backoff"),
        ({"initial_delay": -1.0}, ValueError, "initial_delay"),
        ({"initial_delay": float("nan")}, ValueError, "initial_delay"),
        ({"initial_delay": "1"}, TypeError, "initial_delay"),
        ({"max_delay": float("inf")}, ValueError, "max_delay"),
        ({"max_delay": None}, TypeError, "max_delay"),
        ({"jitter": 1}, TypeError, "jitter"),
        ({"exceptions": ()}, TypeError, "exceptions"),
        ({"exceptions": (ValueError, 3)}, TypeError, "exceptions"),
        ({"exceptions": [ValueError]}, TypeError, "exceptions"),
    ],
)
def test_backoff_rejects_bad_parameters(kwargs, error, name):
    with pytest.raises(error, match=name):
        mp.retry_backoff(**kwargs)


# retry_cached ----------------------------------------------------------------


def test_retry_cached_retries_then_caches_the_success():
    flaky = Flaky(failures=2)

    @mp.retry_cached(max_attempts=3)
    def fetch(key):
        return flaky(key)

    assert fetch("a") == "ok"
    assert fetch("a") == "ok"
    assert flaky.calls == 3
    assert fetch.cache_info().hits == 1


def test_retry_cached_does_not_cache_failures_by_default():
    flaky = Flaky(failures=3)
    fetch = mp.retry_cached(max_attempts=2)(flaky)

    with pytest.raises(ValueError, match="failure 2"):
        fetch(1)
    assert flaky.calls == 2
    assert fetch(1) == "ok"  # attempts 3 (fails) and 4 (succeeds)
    assert flaky.calls == 4


def test_retry_cached_caches_failures_when_asked():
    flaky = Flaky(failures=3)
    fetch = mp.retry_cached(max_attempts=2, cache_failures=True)(flaky)

    with pytest.raises(ValueError) as first:
        fetch(1)
    depths = []
    for _ in range(3):
        with pytest.raises(ValueError) as again:
            fetch(1)
        assert again.value is first.value
        depths.append(len(traceback.extract_tb(again.value.__traceback__)))
    assert flaky.calls == 2
    # Raising the cached exception again does not pile frames onto it.
    assert depths[0] == depths[1] == depths[2]
    fetch.cache_clear()
    assert fetch(1) == "ok"


def test_retry_cached_bare():
    flaky = Flaky(failures=2)
    fetch = mp.retry_cached(flaky)
    assert fetch() == "ok"
    assert fetch() == "ok"
    assert flaky.calls == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": "3"}, TypeError, "max_attempts"),
        ({"cache_failures": 1}, TypeError, "cache_failures"),
    ],
)
def test_retry_cached_rejects_bad_parameters(kwargs, error, name):
    with pytest.raises(error, match=name):
        mp.retry_cached(**kwargs)

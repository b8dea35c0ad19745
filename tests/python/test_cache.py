"""API §9: @memoize and @memoize_fast."""

import pickle
import threading

import pytest

import makeParallel as mp
from conftest import WAIT, wait_until

MEMOIZERS = ("memoize", "memoize_fast")


@pytest.fixture(params=MEMOIZERS)
def memoizer(request):
    """Each memoizing decorator in turn."""
    return getattr(mp, request.param)


class Counter:
    """A thread-safe count of how often a function body ran."""

    def __init__(self):
        self._lock = threading.Lock()
        self.value = 0

    def bump(self):
        with self._lock:
            self.value += 1


@mp.memoize
def module_level_square(x):
    return x * x


def test_repeated_call_runs_the_function_once(memoizer):
    runs = Counter()

    @memoizer
    def square(x):
        runs.bump()
        return x * x

    assert square(4) == 16
    assert square(4) == 16
    assert square(5) == 25
    assert runs.value == 2
    assert square.cache_info() == mp.CacheInfo(
        hits=1, misses=2, maxsize=None, currsize=2
    )


def test_works_with_arguments(memoizer):
    runs = Counter()

    @memoizer(maxsize=10)
    def add(a, b=0):
        runs.bump()
        return a + b

    assert add(1, b=2) == 3
    assert add(1, b=2) == 3
    assert runs.value == 1
    assert add.cache_info().maxsize == 10


def test_keys_are_values_not_reprs():
    runs = Counter()

    class SameRepr:
        def __init__(self, value):
            self.value = value

        def __repr__(self):
            return "SameRepr"

        def __eq__(self, other):
            return isinstance(other, SameRepr) and self.value == other.value

        def __hash__(self):
            return hash(self.value)

    @mp.memoize
    def unwrap(obj):
        runs.bump()
        return obj.value

    assert unwrap(SameRepr(1)) == 1
    assert unwrap(SameRepr(2)) == 2  # same repr, different value: computed again
    assert unwrap(SameRepr(1)) == 1  # equal value, new object: a hit
    assert runs.value == 2


def test_keyword_order_does_not_matter():
    runs = Counter()

    @mp.memoize
    def combine(**kwargs):
        runs.bump()
        return sorted(kwargs.items())

    assert combine(a=1, b=2) == combine(b=2, a=1)
    assert runs.value == 1


def test_positional_and_keyword_arguments_are_distinct_keys():
    runs = Counter()

    @mp.memoize
    def ident(x=None):
        runs.bump()
        return x

    ident(1)
    ident(x=1)
    assert runs.value == 2


def test_unhashable_arguments_bypass_the_cache(memoizer):
    runs = Counter()

    @memoizer
    def total(values):
        runs.bump()
        return sum(values)

    assert total([1, 2, 3]) == 6
    assert total([1, 2, 3]) == 6
    assert runs.value == 2
    info = total.cache_info()
    assert (info.hits, info.misses, info.currsize) == (0, 2, 0)


def test_unhashable_keyword_argument_bypasses_the_cache():
    runs = Counter()

    @mp.memoize
    def size(*, items):
        runs.bump()
        return len(items)

    assert size(items={"a": 1}) == 1
    assert size(items={"a": 1}) == 1
    assert runs.value == 2


def test_lru_eviction_drops_the_least_recently_used(memoizer):
    runs = []

    @memoizer(maxsize=2)
    def ident(x):
        runs.append(x)
        return x

    ident(1)
    ident(2)
    ident(1)  # 1 is now more recent than 2
    ident(3)  # evicts 2
    assert ident.cache_info().currsize == 2
    ident(1)
    ident(3)
    assert runs == [1, 2, 3]
    ident(2)
    assert runs == [1, 2, 3, 2]


def test_maxsize_zero_stores_nothing():
    runs = Counter()

    @mp.memoize(maxsize=0)
    def ident(x):
        runs.bump()
        return x

    ident(1)
    ident(1)
    assert runs.value == 2
    assert ident.cache_info().currsize == 0


def test_cache_clear_empties_the_cache_and_counters(memoizer):
    runs = Counter()

    @memoizer
    def ident(x):
        runs.bump()
        return x

    ident(1)
    ident(1)
    ident.cache_clear()
    assert ident.cache_info() == mp.CacheInfo(0, 0, None, 0)
    ident(1)
    assert runs.value == 2


def test_exceptions_are_not_cached():
    runs = Counter()

    @mp.memoize
    def fail_once(x):
        runs.bump()
        if runs.value == 1:
            raise ValueError("first call fails")
        return x

    with pytest.raises(ValueError, match="first call fails"):
        fail_once(1)
    assert fail_once(1) == 1
    assert runs.value == 2
    assert fail_once.cache_info().currsize == 1


def test_concurrent_callers_with_the_same_key_compute_once(memoizer):
    callers = 8
    barrier = threading.Barrier(callers)
    runs = Counter()
    release = threading.Event()

    @memoizer
    def slow(x):
        runs.bump()
        # Hold the computation until every caller has had time to arrive.
        release.wait(WAIT)
        return object()

    results = [None] * callers

    def call(i):
        barrier.wait(WAIT)
        results[i] = slow(1)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    # Once hits + misses reaches the number of callers, every caller is
    # either computing or waiting for that computation.
    wait_until(lambda: sum(slow.cache_info()[:2]) == callers)
    release.set()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()

    assert runs.value == 1
    assert all(r is results[0] for r in results)
    assert slow.cache_info().misses == 1
    assert slow.cache_info().hits == callers - 1


def test_concurrent_callers_share_the_exception_and_nothing_is_cached():
    callers = 8
    barrier = threading.Barrier(callers)
    runs = Counter()
    release = threading.Event()

    @mp.memoize
    def failing(x):
        runs.bump()
        release.wait(WAIT)
        raise KeyError(x)

    errors = [None] * callers

    def call(i):
        barrier.wait(WAIT)
        try:
            failing(7)
        except KeyError as exc:
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    wait_until(lambda: sum(failing.cache_info()[:2]) == callers)
    release.set()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()

    assert runs.value == 1
    assert all(isinstance(e, KeyError) and e.args == (7,) for e in errors)
    assert failing.cache_info().currsize == 0


def test_concurrent_callers_with_different_keys_compute_in_parallel(memoizer):
    callers = 4
    # Each computation waits until all of them are running at once: if the
    # cache serialised different keys, the barrier would break.
    inside = threading.Barrier(callers)

    @memoizer
    def compute(x):
        inside.wait(WAIT)
        return x * 10

    results = {}

    def call(i):
        results[i] = compute(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()

    assert results == {i: i * 10 for i in range(callers)}
    assert not inside.broken
    assert compute.cache_info().misses == callers


def test_recursive_call_with_the_same_key_raises_instead_of_deadlocking():
    @mp.memoize
    def loop(x):
        return loop(x)

    with pytest.raises(RuntimeError, match="called itself"):
        loop(1)
    assert loop.cache_info().currsize == 0


def test_recursion_with_new_keys_is_cached():
    @mp.memoize
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(80) == 23416728348467685
    assert fib.cache_info().misses == 81


def test_methods_include_self_in_the_key():
    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        @mp.memoize
        def scale(self, x):
            return x * self.factor

    two, three = Scaler(2), Scaler(3)
    assert two.scale(5) == 10
    assert three.scale(5) == 15
    assert two.scale(5) == 10
    assert Scaler.scale.cache_info().hits == 1
    assert two.scale.cache_info().currsize == 2


def test_keeps_the_function_identity_and_pickles_by_reference():
    assert module_level_square.__name__ == "module_level_square"
    assert module_level_square.__wrapped__(3) == 9
    assert pickle.loads(pickle.dumps(module_level_square)) is module_level_square


@pytest.mark.parametrize(
    ("maxsize", "error"),
    [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)],
)
def test_bad_maxsize_is_rejected(memoizer, maxsize, error):
    with pytest.raises(error, match="maxsize"):
        memoizer(maxsize=maxsize)


def test_decorating_a_non_callable_raises(memoizer):
    with pytest.raises(TypeError, match="callable"):
        memoizer(42)


def test_decorating_a_coroutine_function_raises():
    async def fetch():
        return 1

    with pytest.raises(TypeError, match="coroutine"):
        mp.memoize(fetch)


def test_prints_nothing(capsys, caplog):
    @mp.memoize
    def ident(x):
        return x

    ident(1)
    ident(1)
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""
    assert caplog.records == []

"""API §5: parallel_map(func, items, *, chunksize=None) on the global pool."""

import random
import re
import sys
import threading
import time

import makeParallel as mp
import pytest
from conftest import WAIT


def _square_after_random_delay(x):
    time.sleep(random.random() / 500)
    return x * x


@pytest.mark.parametrize("chunksize", [None, 1, 3, 7, 1000])
def test_results_keep_the_input_order(chunksize):
    mp.configure_thread_pool(num_threads=4)
    items = list(range(200))

    results = mp.parallel_map(_square_after_random_delay, items, chunksize=chunksize)

    assert results == [x * x for x in items]
    assert type(results) is list


@pytest.mark.parametrize(
    "make_items",
    [
        lambda: (x for x in range(50)),
        lambda: iter(range(50)),
        lambda: tuple(range(50)),
        lambda: range(50),
        lambda: {x: str(x) for x in range(50)},
        lambda: map(int, [str(x) for x in range(50)]),
    ],
    ids=["generator", "iterator", "tuple", "range", "dict", "map"],
)
def test_accepts_any_iterable(make_items):
    assert mp.parallel_map(lambda x: x + 1, make_items()) == list(range(1, 51))


def test_string_items():
    assert mp.parallel_map(str.upper, "abc") == ["A", "B", "C"]


@pytest.mark.parametrize(
    "items",
    [[], (), iter([]), (x for x in [])],
    ids=["list", "tuple", "iterator", "generator"],
)
def test_empty_input_gives_empty_list(items):
    calls = []
    assert mp.parallel_map(calls.append, items) == []
    assert calls == []


def test_works_with_builtins_and_lambdas():
    assert mp.parallel_map(len, ["a", "bb", "ccc"]) == [1, 2, 3]
    assert mp.parallel_map(lambda s: s[::-1], ["ab", "cd"]) == ["ba", "dc"]


def test_runs_on_the_global_pool_threads():
    mp.configure_thread_pool(num_threads=2)

    def ident(_):
        time.sleep(0.001)
        return threading.get_ident()

    idents = set(mp.parallel_map(ident, range(50), chunksize=1))

    assert threading.get_ident() not in idents
    assert 1 <= len(idents) <= 2


def test_items_run_in_parallel_on_the_pool():
    mp.configure_thread_pool(num_threads=4)
    barrier = threading.Barrier(4, timeout=WAIT)

    results = mp.parallel_map(lambda _: barrier.wait(), range(4), chunksize=1)

    assert sorted(results) == [0, 1, 2, 3]


def test_non_callable_is_type_error():
    with pytest.raises(TypeError):
        mp.parallel_map(42, [1, 2])


@pytest.mark.parametrize("chunksize", [0, -1])
def test_chunksize_below_one_is_value_error(chunksize):
    with pytest.raises(ValueError, match="chunksize"):
        mp.parallel_map(abs, [1, 2], chunksize=chunksize)


def _fail_on_tens(x):
    if x % 10 == 0 and x > 0:
        raise ValueError(f"bad item {x}")
    return x


def test_first_failure_is_raised_with_its_own_type():
    mp.configure_thread_pool(num_threads=1)
    items = [x * 10 + 1 for x in range(3)] + [30, 41, 50]

    with pytest.raises(ValueError, match="bad item 30"):
        mp.parallel_map(_fail_on_tens, items, chunksize=1)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PEP 678 notes need 3.11")
@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_failure_note_names_the_item_index(chunksize):
    items = [1, 2, 3, 4, 5, 6, 7, 70, 9]

    with pytest.raises(ValueError) as info:
        mp.parallel_map(_fail_on_tens, items, chunksize=chunksize)

    notes = getattr(info.value, "__notes__", [])
    assert any(re.search(r"(?<![\d.])7(?![\d.])", note) for note in notes), notes


def test_items_not_started_after_a_failure_are_not_run():
    mp.configure_thread_pool(num_threads=1)
    ran = []

    def work(i):
        ran.append(i)
        time.sleep(0.005)
        if i == 5:
            raise RuntimeError("stop here")
        return i

    with pytest.raises(RuntimeError, match="stop here"):
        mp.parallel_map(work, range(200), chunksize=1)
    time.sleep(0.3)

    assert ran[:6] == [0, 1, 2, 3, 4, 5]
    assert len(ran) <= 7, ran

"""`@parallel_with_deps`: tasks that start once other tasks succeeded (API §9)."""

import gc
import threading

import makeParallel as mp
import pytest
from conftest import WAIT, wait_until


class Boom(Exception):
    pass


def fail():
    raise Boom("dependency failed")


@mp.parallel_with_deps
def collect(results, *args, **kwargs):
    """A dependent that returns what it was given."""
    return results, args, kwargs


def busy_cache_threads():
    info = mp.get_thread_cache_info()
    return info["current_threads"] - info["idle_threads"]


# Passing results ------------------------------------------------------------


def test_results_arrive_as_a_tuple_in_depends_on_order(task_decorator, gate):
    slow = mp.parallel(lambda: (gate.enter(), "slow")[1])()
    fast = task_decorator(lambda: "fast")()
    assert fast.wait(WAIT)

    handle = collect(1, 2, depends_on=[slow, fast], key="value")
    gate.open()

    assert handle.get(WAIT) == (("slow", "fast"), (1, 2), {"key": "value"})


def test_depends_on_accepts_a_tuple():
    first = mp.parallel(lambda: 1)()

    assert collect(depends_on=(first,)).get(WAIT) == ((1,), (), {})


def test_the_same_handle_twice_gives_its_result_twice():
    first = mp.parallel(lambda: "x")()

    assert collect(depends_on=[first, first]).get(WAIT) == (("x", "x"), (), {})


def test_empty_depends_on_passes_an_empty_tuple():
    # A list built at run time may be empty; the function's first parameter is
    # still the tuple of results.
    assert collect("arg", depends_on=[]).get(WAIT) == ((), ("arg",), {})


def test_chain_of_three():
    @mp.parallel_with_deps
    def add_one(results):
        return results[0] + 1

    @mp.parallel_with_deps
    def times_ten(results):
        return results[0] * 10

    first = mp.parallel(lambda: 1)()
    second = add_one(depends_on=[first])
    third = times_ten(depends_on=[second])

    assert third.get(WAIT) == 20
    assert (first.get(WAIT), second.get(WAIT)) == (1, 2)


def test_diamond_runs_the_shared_dependency_once(log, gate):
    @mp.parallel_with_deps
    def step(results, name, factor):
        log.record(name)
        return results[0] * factor

    @mp.parallel_with_deps
    def join(results):
        log.record("join")
        return results

    root = mp.parallel(lambda: (gate.enter(), log.record("root"), 3)[2])()
    left = step("left", 2, depends_on=[root])
    right = step("right", 5, depends_on=[root])
    both = join(depends_on=[left, right])
    gate.wait_entered(1)
    assert log.snapshot() == []
    gate.open()

    assert both.get(WAIT) == (6, 15)
    assert sorted(log.snapshot()) == ["join", "left", "right", "root"]
    assert log.snapshot()[0] == "root" and log.snapshot()[-1] == "join"


def test_dependencies_from_every_kind_of_task():
    handles = [
        getattr(mp, name)(lambda value=name: value)()
        for name in ("parallel", "parallel_fast", "parallel_pool", "parallel_priority")
    ]
    handles.append(collect(depends_on=[handles[0]]))

    results, _, _ = collect(depends_on=handles).get(WAIT)

    assert results[:4] == (
        "parallel",
        "parallel_fast",
        "parallel_pool",
        "parallel_priority",
    )
    assert results[4] == (("parallel",), (), {})


# Dependencies that do not succeed -------------------------------------------------


def test_failed_dependency_gives_dependency_error_chained_to_its_exception(
    task_decorator, log
):
    dependency = task_decorator(fail)()
    dependent = mp.parallel_with_deps(lambda results: log.record("ran"))(
        depends_on=[dependency]
    )

    with pytest.raises(mp.DependencyError) as info:
        dependent.get(WAIT)
    assert info.value.__cause__ is dependency.exception(timeout=WAIT)
    assert isinstance(info.value.__cause__, Boom)
    assert dependent.status() == "failed"
    assert log.count("ran") == 0


def test_failure_reaches_dependents_down_a_chain(log):
    first = mp.parallel(fail)()
    second = mp.parallel_with_deps(lambda r: log.record("second"))(depends_on=[first])
    third = mp.parallel_with_deps(lambda r: log.record("third"))(depends_on=[second])

    with pytest.raises(mp.DependencyError) as info:
        third.get(WAIT)
    assert isinstance(info.value.__cause__, mp.DependencyError)
    assert isinstance(info.value.__cause__.__cause__, Boom)
    assert log.snapshot() == []


def test_one_failed_dependency_among_several_fails_the_dependent(gate, log):
    pending = mp.parallel(lambda: (gate.enter(), "late")[1])()
    failing = mp.parallel(fail)()
    dependent = mp.parallel_with_deps(lambda r: log.record("ran"))(
        depends_on=[pending, failing]
    )

    with pytest.raises(mp.DependencyError):
        dependent.get(WAIT)
    gate.open()
    assert pending.get(WAIT) == "late"
    assert log.snapshot() == []


@pytest.mark.parametrize(
    "how, cause", [("cancel", mp.TaskCancelledError), ("timeout", mp.TaskTimeoutError)]
)
def test_cancelled_or_timed_out_dependency_gives_dependency_error(
    task_decorator, gate, log, how, cause
):
    if how == "cancel":
        dependency = task_decorator(gate.enter)()
        gate.wait_entered(1)
    else:
        dependency = task_decorator(gate.enter)(timeout=0.05)
    dependent = mp.parallel_with_deps(lambda r: log.record("ran"))(
        depends_on=[dependency]
    )
    if how == "cancel":
        dependency.cancel()

    with pytest.raises(mp.DependencyError) as info:
        dependent.get(WAIT)
    assert isinstance(info.value.__cause__, cause)
    gate.open()
    wait_until(lambda: mp.get_active_task_count() == 0)
    assert log.snapshot() == []


def test_dependent_of_an_already_failed_handle_fails_without_running(log):
    dependency = mp.parallel(fail)()
    assert dependency.wait(WAIT)

    dependent = mp.parallel_with_deps(lambda r: log.record("ran"))(
        depends_on=[dependency]
    )

    with pytest.raises(mp.DependencyError):
        dependent.get(WAIT)
    assert log.snapshot() == []


# Waiting ---------------------------------------------------------------------


def test_waiting_on_dependencies_occupies_no_thread(gate, thread_count):
    dependency = mp.parallel(lambda: (gate.enter(), 2)[1])()
    gate.wait_entered(1)
    threads_before = thread_count()

    dependents = [
        mp.parallel_with_deps(lambda results, i: results[0] * i)(
            i, depends_on=[dependency]
        )
        for i in range(100)
    ]

    assert busy_cache_threads() <= 5
    assert thread_count() - threads_before <= 5
    assert all(h.status() == "pending" for h in dependents)
    gate.open()
    assert [h.get(WAIT) for h in dependents] == [2 * i for i in range(100)]


def test_dependents_of_finished_handles_run_at_once():
    first = mp.parallel(lambda: "a")()
    second = mp.parallel_pool(lambda: "b")()
    assert first.wait(WAIT) and second.wait(WAIT)

    assert collect(depends_on=[first, second]).get(WAIT) == (("a", "b"), (), {})


def test_cancelled_dependent_never_runs_even_when_the_dependency_succeeds(gate, log):
    dependency = mp.parallel(lambda: (gate.enter(), "ok")[1])()
    dependent = mp.parallel_with_deps(lambda r: log.record("cancelled one"))(
        depends_on=[dependency]
    )
    sibling = mp.parallel_with_deps(lambda r: log.record("sibling"))(
        depends_on=[dependency]
    )

    assert dependent.cancel() is True
    assert dependent.status() == "cancelled"
    gate.open()

    assert dependency.get(WAIT) == "ok"
    assert sibling.get(WAIT) == "sibling"
    wait_until(lambda: mp.get_active_task_count() == 0)
    assert log.snapshot() == ["sibling"]
    with pytest.raises(mp.TaskCancelledError):
        dependent.get(WAIT)


def test_timeout_of_a_waiting_dependent_applies(gate, log):
    dependency = mp.parallel(gate.enter)()
    dependent = mp.parallel_with_deps(lambda r: log.record("ran"))(
        depends_on=[dependency], timeout=0.05
    )

    with pytest.raises(mp.TaskTimeoutError):
        dependent.get(WAIT)
    gate.open()
    dependency.get(WAIT)
    wait_until(lambda: mp.get_active_task_count() == 0)
    assert log.snapshot() == []


def test_dropped_dependent_handle_still_runs(gate, log):
    dependency = mp.parallel(lambda: (gate.enter(), "v")[1])()
    mp.parallel_with_deps(lambda results: log.record(results))(depends_on=[dependency])
    gc.collect()
    gate.open()

    wait_until(lambda: log.snapshot() == [("v",)])


def test_many_threads_add_dependents_while_the_dependency_settles():
    release = threading.Event()
    dependency = mp.parallel(lambda: (release.wait(WAIT), 1)[1])()
    handles = []
    lock = threading.Lock()

    def submit_some():
        mine = [collect(depends_on=[dependency]) for _ in range(50)]
        with lock:
            handles.extend(mine)

    submitters = [threading.Thread(target=submit_some) for _ in range(4)]
    for t in submitters:
        t.start()
    release.set()
    for t in submitters:
        t.join(WAIT)

    assert len(handles) == 200
    assert all(h.get(WAIT) == ((1,), (), {}) for h in handles)


# Bad depends_on ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda h: h,
        lambda h: {h},
        lambda h: iter([h]),
        lambda h: "task_1",
        lambda h: [h, 1],
        lambda h: [h.get_task_id()],
        lambda h: [None],
    ],
    ids=["handle", "set", "iterator", "str", "int-item", "id-item", "none-item"],
)
def test_bad_depends_on_raises_type_error_before_submission(make_bad, log):
    good = mp.parallel(lambda: 1)()
    assert good.wait(WAIT)
    before = mp.get_active_task_count()
    function = mp.parallel_with_deps(lambda *args: log.record("ran"))

    with pytest.raises(TypeError, match="depends_on"):
        function(depends_on=make_bad(good))

    assert mp.get_active_task_count() == before
    assert log.snapshot() == []

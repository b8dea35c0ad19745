"""API §8 in depth: metric invariants, recording under load, trace and report.

``test_metrics.py`` has the basics (counts, names, reset); this file holds
what takes more set-up: many threads recording at once, resets racing with
recording, percentile accuracy against durations measured by the test
itself, ``metrics_report()`` and ``trace()``.
"""

import asyncio
import json
import math
import threading
import time
import traceback

import makeParallel as mp
import pytest
from conftest import WAIT

#: Every field of a PerformanceMetrics, in the order the API lists them.
FIELDS = (
    "total_tasks",
    "completed_tasks",
    "failed_tasks",
    "total_execution_time_ms",
    "average_execution_time_ms",
    "min_execution_time_ms",
    "max_execution_time_ms",
    "p50_execution_time_ms",
    "p95_execution_time_ms",
    "p99_execution_time_ms",
    "total_queue_time_ms",
)

#: Ways a function gets recorded: ``@profiled`` and every task decorator.
RECORDERS = ("profiled", "parallel", "parallel_pool", "parallel_priority")


def _fail_every_third(i):
    if i % 3 == 0:
        raise ValueError(f"call {i}")
    time.sleep((i % 5) / 1000)
    return i


def _run_recorded(recorder, func, args):
    """Calls ``func`` once per argument as ``recorder`` would, swallowing errors."""
    if recorder == "profiled":
        wrapped = mp.profiled(func)
        for arg in args:
            try:
                wrapped(arg)
            except ValueError:
                pass
        return
    handles = [getattr(mp, recorder)(func)(arg) for arg in args]
    for handle in handles:
        assert handle.wait(WAIT)


def _assert_consistent(m):
    assert m.total_tasks == m.completed_tasks + m.failed_tasks
    assert m.min_execution_time_ms <= m.p50_execution_time_ms
    assert m.p50_execution_time_ms <= m.p95_execution_time_ms
    assert m.p95_execution_time_ms <= m.p99_execution_time_ms
    assert m.p99_execution_time_ms <= m.max_execution_time_ms
    assert m.average_execution_time_ms == pytest.approx(
        m.total_execution_time_ms / m.total_tasks, rel=1e-12
    )


def _nearest_rank(sorted_values, q):
    """The q-quantile by the nearest-rank definition (1-based rank ceil(q n))."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


# ---------------------------------------------------------------------------
# Invariants


@pytest.mark.parametrize("recorder", RECORDERS)
def test_metrics_are_consistent_for_every_recorder(recorder):
    def mixed_outcomes(i):
        return _fail_every_third(i)

    _run_recorded(recorder, mixed_outcomes, range(30))

    m = mp.get_metrics("mixed_outcomes")
    assert (m.total_tasks, m.completed_tasks, m.failed_tasks) == (30, 20, 10)
    _assert_consistent(m)
    assert m.min_execution_time_ms > 0
    assert m.max_execution_time_ms >= 4.0 * 0.95  # the 4 ms sleeps


def test_percentiles_stay_ordered_with_one_outlier():
    @mp.profiled
    def mostly_fast(ms):
        time.sleep(ms / 1000)

    for _ in range(99):
        mostly_fast(0)
    mostly_fast(30)

    m = mp.get_metrics(mostly_fast)
    _assert_consistent(m)
    # 99 of 100 calls are fast: up to p99 the slow call must not show.
    assert m.p99_execution_time_ms < 10.0
    assert m.max_execution_time_ms >= 29.0


# ---------------------------------------------------------------------------
# Concurrency


def test_eight_threads_of_100000_calls_count_exactly_800000():
    @mp.profiled
    def trivial():
        return None

    start = threading.Barrier(8)

    def hammer():
        start.wait(WAIT)
        for _ in range(100_000):
            trivial()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()

    m = mp.get_metrics("trivial")
    assert m.total_tasks == 800_000
    assert m.completed_tasks == 800_000
    assert m.failed_tasks == 0
    _assert_consistent(m)


def test_pool_tasks_and_profiled_calls_of_one_name_add_up():
    def shared_name(i):
        if i % 10 == 0:
            raise ValueError(i)
        return i

    as_task = mp.parallel_pool(shared_name)
    as_call = mp.profiled(shared_name)

    handles = [as_task(i) for i in range(40)]  # 4 of them fail
    failures = 0
    for i in range(1, 61):  # 6 of them fail
        try:
            as_call(i)
        except ValueError:
            failures += 1
    for h in handles:
        assert h.wait(WAIT)

    m = mp.get_metrics("shared_name")
    assert failures == 6
    assert (m.total_tasks, m.completed_tasks, m.failed_tasks) == (100, 90, 10)
    assert mp.get_metrics(as_task) == m
    assert mp.get_metrics(as_call) == m


def test_reset_while_four_threads_record_keeps_counts_consistent():
    @mp.profiled
    def busy(i):
        if i % 7 == 0:
            raise KeyError(i)

    stop = threading.Event()
    calls = [0] * 4  # calls each thread has finished, written by that thread

    def record(slot):
        i = 0
        while not stop.is_set():
            try:
                busy(i)
            except KeyError:
                pass
            i += 1
            calls[slot] = i

    threads = [threading.Thread(target=record, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            time.sleep(0.005)
            mp.reset_metrics()
            m = mp.get_metrics("busy")
            if m is not None:
                assert m.total_tasks == m.completed_tasks + m.failed_tasks
        before_last_reset = sum(calls)
        mp.reset_metrics()
        after_last_reset = sum(calls)
        time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
    assert not any(t.is_alive() for t in threads)

    # Only calls that finished after the last reset began may be counted, and
    # every call that started after it returned must be. A thread can have
    # one call recorded but not yet added to `calls`, hence the slack of 4.
    m = mp.get_metrics("busy")
    made = sum(calls)
    assert m.total_tasks == m.completed_tasks + m.failed_tasks
    assert m.total_tasks <= made - before_last_reset
    assert m.total_tasks >= made - after_last_reset - len(threads)

    mp.reset_metrics()
    for i in range(70):
        try:
            busy(i)
        except KeyError:
            pass
    m = mp.get_metrics("busy")
    assert (m.total_tasks, m.completed_tasks, m.failed_tasks) == (70, 60, 10)
    _assert_consistent(m)


# ---------------------------------------------------------------------------
# Names


def _first_f():
    @mp.profiled
    def f():
        return 1

    return f


class _Holder:
    @staticmethod
    @mp.profiled
    def f():
        return 2


def test_functions_with_the_same_name_share_one_entry():
    first, second = _first_f(), _Holder.f
    assert first.__qualname__ != second.__qualname__

    first()
    first()
    second()

    assert mp.get_metrics("f").total_tasks == 3
    assert mp.get_metrics(first) == mp.get_metrics(second)


def test_a_custom_name_is_where_calls_are_recorded_and_looked_up():
    @mp.profiled(name="custom")
    def original_name():
        return 1

    @mp.profiled(name="custom_async")
    async def original_coroutine():
        return 2

    original_name()
    original_name()
    asyncio.run(original_coroutine())

    assert mp.get_metrics("original_name") is None
    assert mp.get_metrics("original_coroutine") is None
    assert mp.get_metrics("custom").total_tasks == 2
    assert mp.get_metrics(original_name).total_tasks == 2
    assert mp.get_metrics(original_coroutine).total_tasks == 1
    assert original_name.__name__ == "original_name"


@pytest.mark.parametrize(
    "decorator", ["parallel", "parallel_fast", "parallel_pool", "parallel_priority"]
)
def test_get_metrics_of_a_task_function_object_matches_its_name(decorator):
    @getattr(mp, decorator)
    def looked_up_by_object(x):
        return x

    assert looked_up_by_object(5).get(WAIT) == 5

    by_object = mp.get_metrics(looked_up_by_object)
    assert by_object is not None
    assert by_object == mp.get_metrics("looked_up_by_object")
    assert by_object.total_tasks == 1


def test_get_metrics_rejects_what_is_neither_a_name_nor_a_function():
    with pytest.raises(TypeError):
        mp.get_metrics(42)


# ---------------------------------------------------------------------------
# What @profiled wraps


def test_exceptions_pass_through_with_object_type_and_traceback():
    class Distinct(Exception):
        pass

    @mp.profiled
    def raises_distinct():
        raise Distinct("from inside")

    with pytest.raises(Distinct) as info:
        raises_distinct()

    assert type(info.value) is Distinct
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "raises_distinct"
    assert frames[-1].line == 'raise Distinct("from inside")'
    m = mp.get_metrics("raises_distinct")
    assert (m.total_tasks, m.completed_tasks, m.failed_tasks) == (1, 0, 1)


def test_exception_object_is_the_one_raised():
    raised = []

    @mp.profiled
    def keeps_it():
        error = OSError(5, "kept")
        raised.append(error)
        raise error

    with pytest.raises(OSError) as info:
        keeps_it()
    assert info.value is raised[0]


class _Account:
    def __init__(self, label):
        self.label = label

    @mp.profiled
    def whoami(self, suffix=""):
        return self.label + suffix

    @staticmethod
    @mp.profiled
    def static_sum(a, b):
        return a + b

    @classmethod
    @mp.profiled
    def which_class(cls):
        return cls


class _SubAccount(_Account):
    pass


def test_profiled_methods_get_the_right_self():
    a, b = _Account("a"), _Account("b")

    assert a.whoami() == "a"
    assert b.whoami("!") == "b!"
    assert _Account.whoami(a, "?") == "a?"
    bound = b.whoami
    assert bound() == "b"

    assert mp.get_metrics("whoami").total_tasks == 4
    assert mp.get_metrics(bound).total_tasks == 4


def test_profiled_staticmethod_and_classmethod():
    assert _Account.static_sum(2, 3) == 5
    assert _Account("x").static_sum(4, 5) == 9
    assert _Account.which_class() is _Account
    assert _SubAccount.which_class() is _SubAccount
    assert _SubAccount("y").which_class() is _SubAccount

    assert mp.get_metrics("static_sum").total_tasks == 2
    assert mp.get_metrics("which_class").total_tasks == 3


def test_profiled_coroutine_times_awaits_and_counts_failures():
    error = RuntimeError("async failure")

    @mp.profiled
    async def awaits(fail):
        await asyncio.sleep(0.05)
        if fail:
            raise error
        return "done"

    async def main():
        assert await awaits(False) == "done"
        with pytest.raises(RuntimeError) as info:
            await awaits(True)
        assert info.value is error

    asyncio.run(main())

    m = mp.get_metrics("awaits")
    assert (m.total_tasks, m.completed_tasks, m.failed_tasks) == (2, 1, 1)
    assert m.min_execution_time_ms >= 45.0
    _assert_consistent(m)


def test_profiled_coroutine_is_not_timed_until_awaited():
    @mp.profiled
    async def lazy():
        return 1

    coroutine = lazy()
    assert mp.get_metrics("lazy") is None
    assert asyncio.run(coroutine) == 1
    assert mp.get_metrics("lazy").total_tasks == 1


# ---------------------------------------------------------------------------
# Task decorators


def test_queue_time_is_counted_apart_from_execution_time(
    queueing_decorator, block_queue
):
    def waited_in_queue():
        return threading.get_native_id()

    handle = queueing_decorator(waited_in_queue)()
    time.sleep(0.2)
    assert handle.status() == "pending"
    block_queue.open()
    handle.get(WAIT)

    m = mp.get_metrics("waited_in_queue")
    assert m.total_tasks == 1
    assert m.total_queue_time_ms >= 150.0
    assert m.max_execution_time_ms < 100.0


def test_tasks_dropped_from_the_queue_are_not_counted(queueing_decorator, block_queue):
    def sometimes_dropped(i):
        return i

    task = queueing_decorator(sometimes_dropped)
    handles = [task(i) for i in range(3)]
    timed_out = task.options(timeout=0.05)(3)
    assert handles[1].cancel()
    assert timed_out.wait(WAIT)
    assert timed_out.status() == "timed_out"
    block_queue.open()
    assert handles[0].get(WAIT) == 0
    assert handles[2].get(WAIT) == 2

    m = mp.get_metrics("sometimes_dropped")
    assert (m.total_tasks, m.completed_tasks, m.failed_tasks) == (2, 2, 0)


def test_profiled_calls_report_no_queue_time():
    @mp.profiled
    def never_queued():
        time.sleep(0.002)

    never_queued()
    assert mp.get_metrics("never_queued").total_queue_time_ms == 0


# ---------------------------------------------------------------------------
# PerformanceMetrics


def test_performance_metrics_is_an_immutable_snapshot():
    @mp.profiled
    def snapped():
        return 1

    snapped()
    snapshot = mp.get_metrics("snapped")

    with pytest.raises(AttributeError):
        snapshot.total_tasks = 10
    with pytest.raises(AttributeError):
        snapshot.new_field = 1
    with pytest.raises(AttributeError):
        del snapshot.failed_tasks

    snapped()
    assert snapshot.total_tasks == 1
    assert mp.get_metrics("snapped").total_tasks == 2


def test_performance_metrics_repr_and_to_dict():
    @mp.profiled
    def described(fail):
        if fail:
            raise ValueError

    described(False)
    with pytest.raises(ValueError):
        described(True)
    m = mp.get_metrics("described")

    text = repr(m)
    assert text.startswith("PerformanceMetrics(")
    assert "total_tasks=2" in text
    assert "failed_tasks=1" in text

    as_dict = m.to_dict()
    assert tuple(as_dict) == FIELDS
    assert as_dict == {field: getattr(m, field) for field in FIELDS}
    as_dict["total_tasks"] = 99
    assert m.total_tasks == 2
    assert all(isinstance(as_dict[k], int) for k in FIELDS[:3])
    assert all(isinstance(as_dict[k], float) for k in FIELDS[3:])


def test_get_all_metrics_matches_get_metrics_and_globals_are_sums():
    outcomes = {"first_name": (5, 2), "second_name": (7, 0), "third_name": (3, 3)}
    for name, (calls, failures) in outcomes.items():
        recorded = mp.profiled(name=name)(_fail_every_third)
        for i in range(calls):
            try:
                recorded(3 * i if i < failures else 3 * i + 1)
            except ValueError:
                pass

    @mp.parallel_pool
    def fourth_name(i):
        return _fail_every_third(i)

    for h in [fourth_name(i) for i in range(6)]:  # 0 and 3 fail
        assert h.wait(WAIT)

    everything = mp.get_all_metrics()
    names = {n for n in everything if not n.startswith("_global")}
    assert names == {"first_name", "second_name", "third_name", "fourth_name"}
    for name in names:
        assert everything[name] == mp.get_metrics(name).to_dict()
    for key, field in (
        ("_global_total", "total_tasks"),
        ("_global_completed", "completed_tasks"),
        ("_global_failed", "failed_tasks"),
    ):
        assert type(everything[key]) is int
        assert everything[key] == sum(everything[n][field] for n in names)
    assert everything["_global_total"] == 5 + 7 + 3 + 6
    assert everything["_global_failed"] == 2 + 0 + 3 + 2


# ---------------------------------------------------------------------------
# Histogram accuracy end to end

#: How much shorter the library's own measurement of a call may be than the
#: test's: the test's clock reads sit outside the wrapper, the library's
#: inside, so the library sees the call minus the wrapper's own work (a few
#: microseconds) and minus any preemption between the two pairs of reads.
WRAPPER_ALLOWANCE_MS = 0.2


def test_percentiles_are_within_one_percent_of_the_measured_durations():
    @mp.profiled
    def sleeps_for(ms):
        time.sleep(ms / 1000)

    measured_ms = []
    for ms in range(1, 21):
        start = time.perf_counter_ns()
        sleeps_for(ms)
        measured_ms.append((time.perf_counter_ns() - start) / 1e6)
    measured_ms.sort()

    m = mp.get_metrics("sleeps_for")
    assert m.total_tasks == 20
    for q, got in (
        (0.50, m.p50_execution_time_ms),
        (0.95, m.p95_execution_time_ms),
        (0.99, m.p99_execution_time_ms),
    ):
        exact = _nearest_rank(measured_ms, q)
        low = exact * 0.99 - WRAPPER_ALLOWANCE_MS
        assert low <= got <= exact * 1.01, (q, got, exact)
    # With 20 samples the p99 rank is the largest, which is reported exactly.
    assert m.p99_execution_time_ms == pytest.approx(m.max_execution_time_ms, rel=0.01)
    assert m.max_execution_time_ms <= measured_ms[-1]
    assert m.min_execution_time_ms <= measured_ms[0]
    assert m.min_execution_time_ms >= measured_ms[0] - WRAPPER_ALLOWANCE_MS


# ---------------------------------------------------------------------------
# metrics_report()


def _report_rows(report):
    lines = report.splitlines()
    header, rule, rows = lines[0], lines[1], lines[2:]
    return header.split(), rule, [row.split() for row in rows]


def test_metrics_report_has_a_header_and_one_row_per_name_by_total_time():
    # name: (calls, milliseconds each call sleeps, calls that fail)
    plan = {
        "report_slow": (1, 30, 0),
        "report_mid": (4, 3, 1),
        "report_fast": (6, 0, 2),
    }
    for name, (calls, ms, failures) in plan.items():

        def body(i, ms=ms, failures=failures):
            time.sleep(ms / 1000)
            if i < failures:
                raise ValueError(i)

        recorded = mp.profiled(name=name)(body)
        for i in range(calls):
            try:
                recorded(i)
            except ValueError:
                pass

    header, rule, rows = _report_rows(mp.metrics_report())

    assert header[:3] == ["name", "calls", "failed"]
    assert set(rule) <= {"-", " "}
    assert [row[0] for row in rows] == ["report_slow", "report_mid", "report_fast"]
    for row in rows:
        calls, _, failures = plan[row[0]]
        assert (int(row[1]), int(row[2])) == (calls, failures)
        assert len(row) == 8  # name, calls, failed and five times in ms
        assert all(float(cell) >= 0 for cell in row[3:])
    totals = [mp.get_metrics(row[0]).total_execution_time_ms for row in rows]
    assert totals == sorted(totals, reverse=True)


def test_metrics_report_after_reset_has_no_rows():
    mp.profiled(name="report_gone")(abs)(-1)
    assert "report_gone" in mp.metrics_report()

    mp.reset_metrics()

    _, _, rows = _report_rows(mp.metrics_report())
    assert rows == []


# ---------------------------------------------------------------------------
# trace()


def _native_id(fail=False):
    if fail:
        raise ValueError("traced failure")
    time.sleep(0.01)
    return threading.get_native_id()


def on_pool(fail):
    return _native_id(fail)


def on_priority(fail):
    return _native_id(fail)


def on_own_thread(fail):
    return _native_id(fail)


def _submit_traced_tasks():
    """Runs tasks of each kind; returns {task_id: (name, thread id or None)}."""
    submitted = []
    for func, decorator in (
        (on_pool, mp.parallel_pool),
        (on_priority, mp.parallel_priority),
        (on_own_thread, mp.parallel),
    ):
        task = decorator(func)
        for fail in (False, False, True):
            submitted.append((func.__name__, task(fail)))
    expected = {}
    for name, handle in submitted:
        assert handle.wait(WAIT)
        try:
            tid = handle.get(WAIT)
        except ValueError:
            tid = None
        expected[handle.get_task_id()] = (name, tid)
    return expected


def test_trace_records_each_task_with_times_thread_and_outcome():
    before = time.monotonic_ns()
    with mp.trace() as t:
        expected = _submit_traced_tasks()
    after = time.monotonic_ns()

    by_id = {e["task_id"]: e for e in t.events}
    assert len(t.events) == len(expected) == 9
    assert set(by_id) == set(expected)
    for task_id, (name, tid) in expected.items():
        event = by_id[task_id]
        assert event["name"] == name
        assert before <= event["submitted_ns"] <= event["started_ns"]
        assert event["started_ns"] <= event["finished_ns"] <= after
        if tid is None:
            assert event["outcome"] == "failed"
        else:
            assert event["outcome"] == "done"
            assert event["thread_id"] == tid
            assert event["finished_ns"] - event["started_ns"] >= 9_000_000


def test_trace_saves_chrome_json_with_one_lane_per_worker(tmp_path):
    with mp.trace() as t:
        expected = _submit_traced_tasks()
    path = tmp_path / "trace.json"
    t.save(path)

    saved = json.loads(path.read_text(encoding="utf-8"))
    events = saved["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    lanes = [e for e in events if e["ph"] == "M"]
    assert len(spans) == len(expected)
    assert {e["args"]["task_id"] for e in spans} == set(expected)

    span_threads = {e["tid"] for e in spans}
    lane_threads = [e["tid"] for e in lanes]
    assert all(e["name"] == "thread_name" for e in lanes)
    assert sorted(lane_threads) == sorted(span_threads)
    ran_on = {tid for _, tid in expected.values() if tid is not None}
    assert ran_on <= span_threads

    # ts and dur are microseconds: each successful task slept 10 ms.
    by_id = {e["task_id"]: e for e in t.events}
    origin = min(e["submitted_ns"] for e in t.events)
    for span in spans:
        event = by_id[span["args"]["task_id"]]
        assert span["ts"] == pytest.approx((event["started_ns"] - origin) / 1000)
        assert span["dur"] == pytest.approx(
            (event["finished_ns"] - event["started_ns"]) / 1000
        )
        if event["outcome"] == "done":
            assert 9_000 <= span["dur"] < 10_000_000
        assert span["args"]["outcome"] == event["outcome"]


def test_nothing_is_recorded_outside_a_trace_block():
    @mp.parallel_pool
    def traced_or_not(label):
        return label

    assert traced_or_not("before").get(WAIT) == "before"
    with mp.trace() as t:
        inside = traced_or_not("inside")
        assert inside.get(WAIT) == "inside"
    assert traced_or_not("after").get(WAIT) == "after"

    assert [e["task_id"] for e in t.events] == [inside.get_task_id()]

    with mp.trace() as empty:
        pass
    assert empty.events == []
    assert empty.to_chrome()["traceEvents"] == []


def test_a_second_concurrent_trace_raises_and_the_first_goes_on():
    @mp.parallel
    def traced_once():
        return 1

    with mp.trace() as first:
        with pytest.raises(RuntimeError), mp.trace():
            pass
        handle = traced_once()
        assert handle.get(WAIT) == 1

    assert [e["task_id"] for e in first.events] == [handle.get_task_id()]
    with mp.trace() as later:
        assert traced_once().get(WAIT) == 1
    assert len(later.events) == 1

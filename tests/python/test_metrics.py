"""API §8: @profiled, automatic task metrics, get_metrics and friends."""

import asyncio
import threading
import time

import makeParallel as mp
import pytest
from conftest import WAIT

METRIC_KEYS = (
    "total_tasks",
    "completed_tasks",
    "failed_tasks",
    "total_execution_time_ms",
    "average_execution_time_ms",
)


def _maybe_fail(i):
    if i % 4 == 0:
        raise ValueError(f"item {i}")
    return i


def test_get_metrics_of_an_unknown_name_is_none():
    assert mp.get_metrics("never_recorded_anywhere") is None


def test_task_decorators_record_under_the_function_name(task_decorator):
    def counted_task(i):
        return _maybe_fail(i)

    handles = [task_decorator(counted_task)(i) for i in range(12)]
    for h in handles:
        h.wait(WAIT)

    metrics = mp.get_metrics("counted_task")
    assert metrics.total_tasks == 12
    assert metrics.completed_tasks == 9
    assert metrics.failed_tasks == 3
    assert metrics.total_tasks == metrics.completed_tasks + metrics.failed_tasks


def test_get_metrics_accepts_the_function_object(task_decorator):
    @task_decorator
    def by_object():
        return 1

    assert by_object().get(WAIT) == 1
    assert mp.get_metrics(by_object).total_tasks == 1
    assert mp.get_metrics(by_object.__wrapped__).total_tasks == 1


def test_profiled_counts_calls_and_failures_and_propagates_unchanged():
    error = ValueError("the very object")

    @mp.profiled
    def sometimes(fail):
        if fail:
            raise error
        return "ok"

    for i in range(10):
        if i % 5 == 0:
            with pytest.raises(ValueError) as info:
                sometimes(True)
            assert info.value is error
        else:
            assert sometimes(False) == "ok"

    metrics = mp.get_metrics("sometimes")
    assert metrics.total_tasks == 10
    assert metrics.completed_tasks == 8
    assert metrics.failed_tasks == 2


def test_profiled_with_a_custom_name():
    @mp.profiled(name="custom_metric_name")
    def renamed():
        return 1

    assert renamed() == 1
    assert mp.get_metrics("custom_metric_name").total_tasks == 1
    assert mp.get_metrics("renamed") is None


def test_profiled_times_the_awaited_execution_of_a_coroutine():
    @mp.profiled
    async def slow_coroutine():
        await asyncio.sleep(0.05)
        return "awaited"

    assert asyncio.run(slow_coroutine()) == "awaited"

    metrics = mp.get_metrics("slow_coroutine")
    assert metrics.total_tasks == 1
    assert metrics.completed_tasks == 1
    assert metrics.total_execution_time_ms >= 45.0


def test_execution_times_are_at_least_the_time_spent(task_decorator):
    def sleeper():
        time.sleep(0.05)

    handles = [task_decorator(sleeper)() for _ in range(3)]
    for h in handles:
        assert h.wait(WAIT)

    metrics = mp.get_metrics("sleeper")
    assert metrics.min_execution_time_ms >= 45.0
    assert metrics.total_execution_time_ms >= 3 * 45.0
    assert metrics.average_execution_time_ms == pytest.approx(
        metrics.total_execution_time_ms / 3
    )


def test_percentiles_are_ordered_and_within_min_and_max():
    @mp.profiled
    def varied(ms):
        time.sleep(ms / 1000)

    for ms in (1, 2, 3, 5, 8, 13, 21, 34):
        varied(ms)

    m = mp.get_metrics("varied")
    tolerance = 1.01
    assert m.min_execution_time_ms <= m.p50_execution_time_ms * tolerance
    assert m.p50_execution_time_ms <= m.p95_execution_time_ms * tolerance
    assert m.p95_execution_time_ms <= m.p99_execution_time_ms * tolerance
    assert m.p99_execution_time_ms <= m.max_execution_time_ms * tolerance
    assert m.max_execution_time_ms >= 34.0 / tolerance
    assert m.min_execution_time_ms >= 1.0 / tolerance


def test_queue_time_is_not_execution_time(block_pool):
    def quick():
        return 1

    handle = mp.parallel_pool(quick)()
    time.sleep(0.5)
    block_pool.open()
    assert handle.get(WAIT) == 1

    metrics = mp.get_metrics("quick")
    assert metrics.total_queue_time_ms >= 450.0
    assert metrics.max_execution_time_ms < 400.0


def test_task_cancelled_before_it_started_is_not_an_execution(
    queueing_decorator, block_queue
):
    def never_started():
        return 1

    handle = queueing_decorator(never_started)()
    handle.cancel()
    block_queue.open()
    assert queueing_decorator(abs)(-1).get(WAIT) == 1

    metrics = mp.get_metrics("never_started")
    assert metrics is None or metrics.total_tasks == 0


def test_get_all_metrics_has_every_name_and_global_counters_that_add_up():
    @mp.profiled
    def alpha(i):
        return _maybe_fail(i)

    @mp.parallel
    def beta(i):
        return _maybe_fail(i)

    for i in range(8):
        try:
            alpha(i)
        except ValueError:
            pass
    for h in [beta(i) for i in range(5)]:
        h.wait(WAIT)

    everything = mp.get_all_metrics()
    assert {"alpha", "beta"} <= set(everything)
    for name in ("alpha", "beta"):
        for key in METRIC_KEYS:
            assert key in everything[name], (name, key)
    alpha_m, beta_m = everything["alpha"], everything["beta"]
    assert (alpha_m["total_tasks"], alpha_m["failed_tasks"]) == (8, 2)
    assert (beta_m["total_tasks"], beta_m["failed_tasks"]) == (5, 2)
    names = [n for n in everything if not n.startswith("_global")]
    for glob, key in (
        ("_global_total", "total_tasks"),
        ("_global_completed", "completed_tasks"),
        ("_global_failed", "failed_tasks"),
    ):
        assert isinstance(everything[glob], int)
        assert everything[glob] == sum(everything[n][key] for n in names), glob
    assert everything["_global_total"] == 13


def test_reset_metrics_clears_everything():
    @mp.profiled
    def to_be_forgotten():
        return 1

    to_be_forgotten()
    assert mp.get_metrics("to_be_forgotten").total_tasks == 1

    mp.reset_metrics()

    assert mp.get_metrics("to_be_forgotten") is None
    everything = mp.get_all_metrics()
    assert "to_be_forgotten" not in everything
    assert everything["_global_total"] == 0
    assert everything["_global_completed"] == 0
    assert everything["_global_failed"] == 0


def test_recording_from_many_threads_loses_no_call():
    @mp.profiled
    def hammered():
        return None

    def call_many():
        for _ in range(2000):
            hammered()

    threads = [threading.Thread(target=call_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    metrics = mp.get_metrics("hammered")
    assert metrics.total_tasks == 16000
    assert metrics.completed_tasks == 16000
    assert mp.get_all_metrics()["_global_total"] == 16000


def test_complete_profiling_example_counts():
    @mp.profiled
    def database_query(query_id):
        if query_id % 10 == 0:
            raise ValueError("Simulated error")
        return f"Result {query_id}"

    @mp.profiled
    def process_data(data):
        return len(data) * 2

    for i in range(50):
        try:
            database_query(i)
        except ValueError:
            pass
        process_data(f"data_{i}")

    everything = mp.get_all_metrics()
    query, process = everything["database_query"], everything["process_data"]
    assert (query["total_tasks"], query["completed_tasks"]) == (50, 45)
    assert query["failed_tasks"] == 5
    assert (process["total_tasks"], process["completed_tasks"]) == (50, 50)
    assert process["failed_tasks"] == 0
    assert everything["_global_total"] == 100
    assert everything["_global_completed"] == 95
    assert everything["_global_failed"] == 5

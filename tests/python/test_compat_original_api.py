"""Programs written the way users of the earlier Rust-based package wrote them.

Code for that package imports the lower-case name ``makeparallel``, calls
``get()`` and ``is_ready()`` on handles, wires callbacks with lambdas that
format the error as text, and chains ``@parallel_with_deps`` steps by hand.
Each test below is such a program, one per area of the earlier README, and
checks that it gives the results that package promised. Where this package
deliberately differs (``on_error`` gets the exception object, ``get()``
re-raises the task's own exception type), the test checks our behaviour,
which is what API.md §9 asks for.
"""

import logging
import threading
import time

import makeparallel
import pytest
from conftest import WAIT, wait_until


def test_lower_case_name_is_the_same_module():
    import makeParallel

    assert makeparallel is makeParallel
    assert makeparallel.parallel is makeParallel.parallel


# Decorators ----------------------------------------------------------------------


def test_parallel_handle_push_check_pull():
    @makeparallel.parallel
    def combine(x, y, scale=1):
        time.sleep(0.05)
        return (x * y + x + y) * scale

    handle = combine(10, 20, scale=2)
    assert handle.try_get() in (None, 460)
    assert handle.wait(WAIT) is True
    assert handle.is_ready() is True
    assert handle.get(timeout=WAIT) == 460
    assert handle.try_get() == 460


@pytest.mark.parametrize("name", ["parallel", "parallel_fast", "parallel_pool"])
def test_many_tasks_give_their_results_in_order(name):
    decorator = getattr(makeparallel, name)

    @decorator
    def square(x):
        return x * x

    handles = [square(i) for i in range(50)]
    assert [h.get(timeout=WAIT) for h in handles] == [i * i for i in range(50)]


def test_decorated_method_uses_its_own_instance():
    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        @makeparallel.parallel
        def scale(self, values):
            return [v * self.factor for v in values]

    twice, thrice = Scaler(2), Scaler(3)
    first, second = twice.scale([1, 2]), thrice.scale([1, 2])
    assert first.get(timeout=WAIT) == [2, 4]
    assert second.get(timeout=WAIT) == [3, 6]


def test_task_error_is_caught_by_a_broad_except_and_keeps_its_type():
    @makeparallel.parallel
    def broken():
        raise ValueError("bad input")

    handle = broken()
    try:
        handle.get(timeout=WAIT)
    except Exception as error:  # noqa: BLE001 - how code for the old package caught it
        caught = error
    assert isinstance(caught, ValueError)
    assert "bad input" in str(caught)


def test_per_call_timeout_and_handle_information():
    release = threading.Event()

    @makeparallel.parallel
    def sleepy():
        release.wait(WAIT)

    handle = sleepy(timeout=0.1)
    handle.set_metadata("request_id", "req-7")
    try:
        with pytest.raises(makeparallel.TaskTimeoutError):
            handle.get(timeout=WAIT)
    finally:
        release.set()
    assert handle.is_cancelled() is True
    assert handle.get_timeout() == pytest.approx(0.1)
    assert handle.get_name() == "sleepy"
    assert handle.get_task_id().startswith("task_")
    assert handle.get_all_metadata() == {"request_id": "req-7"}
    assert handle.elapsed_time() < WAIT


def test_cancel_marks_the_handle_ready_and_cancelled():
    stop = threading.Event()

    @makeparallel.parallel
    def waits_for_stop():
        stop.wait(WAIT)

    handle = waits_for_stop()
    try:
        handle.cancel()
        assert handle.is_cancelled() is True
        assert handle.is_ready() is True
        with pytest.raises(makeparallel.TaskCancelledError):
            handle.get(timeout=WAIT)
    finally:
        stop.set()


# Callbacks and progress ----------------------------------------------------------


def test_progress_and_completion_callbacks_see_every_report():
    progress, finished = [], []

    @makeparallel.parallel
    def download(parts):
        for part in range(parts):
            time.sleep(0.01)
            makeparallel.report_progress((part + 1) / parts)
        return f"downloaded {parts} parts"

    handle = download(4)
    handle.on_progress(lambda p: progress.append(p))
    handle.on_complete(lambda result: finished.append(result))

    assert handle.get(timeout=WAIT) == "downloaded 4 parts"
    wait_until(lambda: finished == ["downloaded 4 parts"])
    # Reports made before on_progress was registered are not replayed.
    assert progress == sorted(progress)
    assert set(progress) <= {0.25, 0.5, 0.75, 1.0}
    assert handle.get_progress() == 1.0


def test_error_callback_formats_the_exception_as_text():
    messages = []

    @makeparallel.parallel
    def fails():
        raise RuntimeError("disk full")

    handle = fails()
    handle.on_error(lambda error: messages.append(f"Error: {error}"))
    handle.on_complete(lambda result: messages.append("unexpected success"))
    assert handle.wait(WAIT)
    wait_until(lambda: messages != [])
    assert messages == ["Error: disk full"]


def test_callbacks_fire_without_get():
    results = []

    @makeparallel.parallel
    def quick(x):
        return x + 1

    quick(1).on_complete(results.append)
    wait_until(lambda: results == [2])


def test_task_knows_its_own_id_and_progress_can_be_polled():
    release = threading.Event()

    @makeparallel.parallel
    def halfway():
        makeparallel.report_progress(0.5)
        release.wait(WAIT)
        return makeparallel.get_current_task_id()

    handle = halfway()
    try:
        wait_until(lambda: handle.get_progress() == 0.5)
    finally:
        release.set()
    assert handle.get(timeout=WAIT) == handle.get_task_id()
    assert makeparallel.get_current_task_id() is None


def test_report_progress_outside_a_task_raises_runtime_error():
    with pytest.raises(RuntimeError, match="outside a task"):
        makeparallel.report_progress(0.5)


# Dependencies --------------------------------------------------------------------


def test_dependency_chain_passes_each_result_on():
    @makeparallel.parallel_with_deps
    def extract():
        time.sleep(0.05)
        return {"users": 100, "orders": 500}

    @makeparallel.parallel_with_deps
    def transform(deps):
        return f"{deps[0]['users']} users"

    @makeparallel.parallel_with_deps
    def load(deps):
        return f"saved {deps[0]}"

    first = extract()
    second = transform(depends_on=[first])
    third = load(depends_on=[second])
    assert third.get(timeout=WAIT) == "saved 100 users"


def test_diamond_of_dependencies_receives_results_in_the_listed_order():
    @makeparallel.parallel_with_deps
    def source():
        return "s"

    @makeparallel.parallel_with_deps
    def branch(deps, side):
        time.sleep(0.05 if side == "left" else 0.0)
        return f"{side}({deps[0]})"

    @makeparallel.parallel_with_deps
    def merge(deps):
        return " + ".join(deps)

    root = source()
    left = branch("left", depends_on=[root])
    right = branch("right", depends_on=[root])
    merged = merge(depends_on=[left, right])
    assert merged.get(timeout=WAIT) == "left(s) + right(s)"


def test_failed_dependency_stops_the_pipeline():
    ran = []

    @makeparallel.parallel_with_deps
    def broken():
        raise ValueError("no data")

    @makeparallel.parallel_with_deps
    def consumer(deps):
        ran.append(deps)

    handle = consumer(depends_on=[broken()])
    with pytest.raises(makeparallel.DependencyError) as info:
        handle.get(timeout=WAIT)
    assert isinstance(info.value.__cause__, ValueError)
    assert ran == []


# gather and ParallelContext ------------------------------------------------------


@makeparallel.parallel
def _fails_on_five(x):
    if x == 5:
        raise ValueError("five")
    return x * 2


@pytest.mark.parametrize(
    "on_error, expected",
    [
        ("skip", [0, 2, 4, 6, 8, 12, 14, 16, 18]),
        ("none", [0, 2, 4, 6, 8, None, 12, 14, 16, 18]),
    ],
)
def test_gather_leaves_out_or_fills_in_failures(on_error, expected):
    handles = [_fails_on_five(i) for i in range(10)]
    assert makeparallel.gather(handles, on_error=on_error, timeout=WAIT) == expected


def test_gather_raises_the_first_failure_by_default():
    handles = [_fails_on_five(i) for i in range(10)]
    with pytest.raises(ValueError, match="five"):
        makeparallel.gather(handles, timeout=WAIT)


def test_parallel_context_finishes_its_tasks_on_exit():
    @makeparallel.parallel
    def double(x):
        time.sleep(0.05)
        return x * 2

    with makeparallel.ParallelContext(timeout=WAIT) as ctx:
        first = ctx.submit(double, (5,))
        second = ctx.submit(double, (10,))
    assert first.is_ready() and second.is_ready()
    assert (first.get(timeout=0), second.get(timeout=0)) == (10, 20)


# Caching, retries, timing --------------------------------------------------------


@pytest.mark.parametrize("name", ["memoize", "memoize_fast"])
def test_memoized_function_runs_once_per_argument(name):
    calls = []

    @getattr(makeparallel, name)
    def fibonacci(n):
        calls.append(n)
        return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)

    assert fibonacci(30) == 832040
    assert fibonacci(30) == 832040
    assert sorted(calls) == list(range(31))


def test_memoized_function_shared_by_parallel_tasks_computes_once():
    calls = []

    @makeparallel.memoize_fast
    def slow_square(x):
        calls.append(x)
        time.sleep(0.1)
        return x * x

    @makeparallel.parallel
    def worker(x):
        return slow_square(x)

    handles = [worker(7) for _ in range(8)]
    assert [h.get(timeout=WAIT) for h in handles] == [49] * 8
    assert calls == [7]


def test_retry_recovers_from_transient_failures():
    attempts = []

    @makeparallel.retry(max_retries=3)
    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    assert flaky() == "ok"
    assert len(attempts) == 3


def test_retry_gives_up_after_max_retries():
    attempts = []

    @makeparallel.retry(max_retries=2)
    def always_fails():
        attempts.append(1)
        raise RuntimeError("down")

    with pytest.raises(RuntimeError, match="down"):
        always_fails()
    assert len(attempts) == 3


def test_retry_backoff_waits_longer_each_time():
    stamps = []

    @makeparallel.retry_backoff(
        max_attempts=4, backoff="exponential", initial_delay=0.02, max_delay=1.0
    )
    def flaky():
        stamps.append(time.monotonic())
        if len(stamps) < 4:
            raise ConnectionError("retry")
        return "done"

    assert flaky() == "done"
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert [gap >= want for gap, want in zip(gaps, (0.02, 0.04, 0.08))] == [True] * 3


def test_retry_cached_does_not_run_a_successful_call_again():
    calls = []

    @makeparallel.retry_cached(max_attempts=2)
    def lookup(key):
        calls.append(key)
        if len(calls) == 1:
            raise TimeoutError("first attempt fails")
        return key.upper()

    assert lookup("a") == "A"
    assert lookup("a") == "A"
    assert calls == ["a", "a"]


def test_profiled_counts_calls_and_failures():
    @makeparallel.profiled
    def tracked(x):
        if x < 0:
            raise ValueError("negative")
        return x * x

    for i in range(5):
        tracked(i)
    with pytest.raises(ValueError):
        tracked(-1)

    metrics = makeparallel.get_metrics("tracked")
    assert (metrics.total_tasks, metrics.completed_tasks, metrics.failed_tasks) == (
        6,
        5,
        1,
    )
    assert metrics.average_execution_time_ms >= 0
    everything = makeparallel.get_all_metrics()
    assert everything["tracked"]["total_tasks"] == 6
    assert everything["_global_failed"] >= 1


def test_parallel_tasks_are_recorded_under_the_function_name():
    @makeparallel.parallel
    def recorded(x):
        return x

    for handle in [recorded(i) for i in range(4)]:
        handle.get(timeout=WAIT)

    # A task's metrics are recorded as its code ends, just after get() returns.
    def total():
        metrics = makeparallel.get_metrics("recorded")
        return None if metrics is None else metrics.total_tasks

    wait_until(lambda: total() == 4)


def test_timer_reports_each_call_on_stderr(capsys):
    @makeparallel.timer
    def work(a, b):
        return a + b

    assert work(2, 3) == 5
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "work took" in captured.err


def test_timer_can_report_to_a_logger(caplog):
    @makeparallel.timer(logger=logging.getLogger("compat.timer"))
    def work():
        return 1

    with caplog.at_level(logging.INFO, logger="compat.timer"):
        work()
    assert "work took" in caplog.text


def test_call_counter_counts_and_resets_also_on_methods():
    @makeparallel.CallCounter
    def greet(name):
        return f"Hello, {name}!"

    greet("Alice")
    greet("Bob")
    assert greet.call_count == 2
    greet.reset()
    assert greet("Dave") == "Hello, Dave!"
    assert greet.call_count == 1

    class Calculator:
        @makeparallel.CallCounter
        def add(self, a, b):
            return a + b

    calc = Calculator()
    assert calc.add(3, 4) == 7 and calc.add(10, 20) == 30
    assert calc.add.call_count == 2


# Limits and shutdown -------------------------------------------------------------


def test_max_concurrent_tasks_throttles_submissions():
    lock = threading.Lock()
    running = [0]
    peak = [0]

    @makeparallel.parallel
    def tracked_sleep(x):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.03)
        with lock:
            running[0] -= 1
        return x

    makeparallel.set_max_concurrent_tasks(3)
    try:
        handles = [tracked_sleep(i) for i in range(12)]
        assert [h.get(timeout=WAIT) for h in handles] == list(range(12))
    finally:
        makeparallel.set_max_concurrent_tasks(None)
    assert 1 <= peak[0] <= 3


def test_memory_limit_above_current_use_lets_tasks_run():
    @makeparallel.parallel
    def build(n):
        return len(list(range(n)))

    makeparallel.configure_memory_limit(max_memory_percent=100.0)
    try:
        handles = [build(1000) for _ in range(3)]
        assert [h.get(timeout=WAIT) for h in handles] == [1000] * 3
    finally:
        makeparallel.configure_memory_limit(None)


def test_shutdown_refuses_new_tasks_until_reset(gate):
    @makeparallel.parallel
    def held():
        gate.enter()
        return "finished"

    @makeparallel.parallel
    def after():
        return "accepted again"

    handles = [held() for _ in range(3)]
    gate.wait_entered(3)
    assert makeparallel.get_active_task_count() >= 3
    try:
        # The held tasks ignore cancellation, so they outlast the timeout.
        assert makeparallel.shutdown(timeout_secs=0.1, cancel_pending=True) is False
        with pytest.raises(makeparallel.ShutdownError):
            after()
        with pytest.raises(RuntimeError):  # what code for the old package caught
            after()
    finally:
        gate.open()
        makeparallel.reset_shutdown()
    assert all(h.is_cancelled() for h in handles)
    assert after().get(timeout=WAIT) == "accepted again"
    wait_until(lambda: makeparallel.get_active_task_count() == 0)


# Priorities ----------------------------------------------------------------------


def test_higher_priority_runs_first(block_priority_worker):
    order = []

    @makeparallel.parallel_priority
    def job(name):
        order.append(name)
        return name

    handles = [
        job("low", priority=1),
        job("urgent", priority=100),
        job("normal", priority=50),
    ]
    block_priority_worker.open()
    assert [h.get(timeout=WAIT) for h in handles] == ["low", "urgent", "normal"]
    assert order == ["urgent", "normal", "low"]


def test_priority_worker_can_be_started_and_stopped_explicitly():
    @makeparallel.parallel_priority
    def batch(batch_id):
        return f"batch {batch_id} done"

    makeparallel.start_priority_worker()
    try:
        high = batch(1, priority=10)
        low = batch(2, priority=1)
        assert high.get(timeout=WAIT) == "batch 1 done"
        assert low.get(timeout=WAIT) == "batch 2 done"
    finally:
        makeparallel.stop_priority_worker()

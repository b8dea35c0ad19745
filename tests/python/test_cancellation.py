"""API §7: cooperative and interrupting cancellation, timeouts, exit."""

import math
import queue
import random
import threading
import time

import makeParallel as mp
import pytest
from conftest import WAIT, os_thread_count, wait_until

# Cancellation flag inside and outside tasks ------------------------------------


def test_is_cancelled_is_false_outside_a_task():
    assert mp.is_cancelled() is False


def test_check_cancelled_does_nothing_outside_a_task():
    assert mp.check_cancelled() is None


def test_is_cancelled_is_false_in_a_task_nobody_cancelled(task_decorator):
    def probe():
        mp.check_cancelled()
        return mp.is_cancelled()

    assert task_decorator(probe)().get(WAIT) is False


def test_cancelled_task_sees_the_flag_and_its_return_is_discarded(task_decorator, gate):
    seen = []

    def cooperative():
        gate.enter(timeout=0)
        deadline = time.monotonic() + WAIT
        while not mp.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.002)
        seen.append(mp.is_cancelled())
        return "ignored"

    handle = task_decorator(cooperative)()
    gate.wait_entered(1)
    assert handle.cancel() is True

    wait_until(lambda: not handle.running())
    assert seen == [True]
    assert handle.status() == "cancelled"
    with pytest.raises(mp.TaskCancelledError):
        handle.get(WAIT)


def test_check_cancelled_raises_and_task_ends_cancelled(task_decorator, gate):
    raised = []

    def cooperative():
        gate.enter(timeout=0)
        deadline = time.monotonic() + WAIT
        try:
            while time.monotonic() < deadline:
                mp.check_cancelled()
                time.sleep(0.002)
        except mp.TaskCancelledError as error:
            raised.append(error)
            raise
        return "not cancelled"

    handle = task_decorator(cooperative)()
    gate.wait_entered(1)
    handle.cancel()

    wait_until(lambda: not handle.running())
    assert len(raised) == 1
    assert handle.status() == "cancelled"
    with pytest.raises(mp.TaskCancelledError):
        handle.get(WAIT)


def test_cancel_flag_belongs_to_its_own_task(task_decorator, gate):
    mp.configure_thread_pool(num_threads=2)
    mp.stop_priority_worker()
    mp.start_priority_worker(num_workers=2)

    def watch():
        gate.enter()
        return mp.is_cancelled()

    cancelled = task_decorator(watch)()
    untouched = task_decorator(watch)()
    gate.wait_entered(2)
    cancelled.cancel()
    gate.open()

    assert untouched.get(WAIT) is False
    assert mp.is_cancelled() is False


# cancel(interrupt=True) ----------------------------------------------------------


def test_interrupt_stops_a_pure_python_loop(task_decorator, gate):
    progress = []

    def spin():
        gate.enter(timeout=0)
        deadline = time.monotonic() + 20.0
        n = 0
        while time.monotonic() < deadline:
            n += 1
        progress.append("loop ran to its deadline")
        return n

    handle = task_decorator(spin)()
    gate.wait_entered(1)
    time.sleep(0.05)
    assert handle.cancel(interrupt=True) is True

    wait_until(lambda: not handle.running(), timeout=10.0)
    assert progress == []
    assert handle.status() == "cancelled"
    with pytest.raises(mp.TaskCancelledError):
        handle.get(WAIT)


def test_interrupt_stops_sleeping_code_when_it_returns_to_python(task_decorator, gate):
    finished = []

    def sleepy():
        gate.enter(timeout=0)
        for _ in range(100):
            time.sleep(0.05)
        finished.append(True)

    handle = task_decorator(sleepy)()
    gate.wait_entered(1)
    handle.cancel(interrupt=True)

    wait_until(lambda: not handle.running(), timeout=3.0)
    assert finished == []
    assert handle.status() == "cancelled"


def test_cancel_does_not_interrupt_by_default(task_decorator, gate):
    finished = threading.Event()

    def spin():
        gate.enter(timeout=0)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            pass
        finished.set()

    handle = task_decorator(spin)()
    gate.wait_entered(1)
    handle.cancel()

    assert finished.wait(WAIT)
    wait_until(lambda: not handle.running())
    assert handle.status() == "cancelled"


# Timeouts -------------------------------------------------------------------------


def test_timeout_settles_the_task_as_timed_out_and_requests_cancellation(
    task_decorator,
):
    noticed = threading.Event()

    def slow():
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if mp.is_cancelled():
                noticed.set()
                return "late"
            time.sleep(0.002)
        return "never cancelled"

    handle = task_decorator(slow)(timeout=0.2)

    with pytest.raises(mp.TaskTimeoutError):
        handle.get(WAIT)
    assert handle.status() == "timed_out"
    assert handle.is_cancelled()
    assert noticed.wait(WAIT)
    wait_until(lambda: not handle.running())
    assert handle.status() == "timed_out"
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(WAIT)


def test_late_result_after_timeout_is_discarded(task_decorator, gate):
    handle = task_decorator(lambda: (gate.enter(), "late")[1])(timeout=0.1)
    gate.wait_entered(1)
    assert handle.wait(WAIT)
    gate.open()

    wait_until(lambda: not handle.running())
    with pytest.raises(mp.TaskTimeoutError):
        handle.try_get()
    assert handle.status() == "timed_out"


def test_task_finishing_in_time_is_not_affected_by_its_timeout(task_decorator):
    handle = task_decorator(abs)(-4, timeout=30.0)

    assert handle.get(WAIT) == 4
    assert handle.status() == "done"
    assert not handle.is_cancelled()


def test_decorator_timeout_applies_to_every_call(task_decorator, gate):
    @task_decorator(timeout=0.1)
    def blocked():
        gate.enter()

    handle = blocked()
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(WAIT)


def test_queued_task_whose_deadline_passed_never_runs(
    queueing_decorator, block_queue, log
):
    expired = queueing_decorator(log.record)("expired", timeout=0.1)

    assert expired.wait(WAIT) is True
    assert expired.status() == "timed_out"
    block_queue.open()
    assert queueing_decorator(log.record)("after").get(WAIT) == "after"
    assert log.snapshot() == ["after"]


def test_timeouts_do_not_cost_a_thread_per_task(block_pool, log):
    before = os_thread_count()
    handles = [mp.parallel_pool(log.record)(i, timeout=60.0) for i in range(300)]

    assert os_thread_count() - before < 20
    block_pool.open()
    assert [h.get(WAIT) for h in handles] == list(range(300))


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5, math.nan, math.inf])
def test_timeout_that_is_not_positive_and_finite_is_value_error(
    task_decorator, log, timeout
):
    with pytest.raises(ValueError, match="timeout"):
        task_decorator(log.record)("x", timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        task_decorator(timeout=timeout)(log.record)("y")
    with pytest.raises(ValueError, match="timeout"):
        task_decorator(log.record).options(timeout=timeout)("z")

    time.sleep(0.05)
    assert log.snapshot() == []


@pytest.mark.parametrize("timeout", ["1", b"1", [1]], ids=repr)
def test_timeout_of_wrong_type_is_type_error(task_decorator, log, timeout):
    with pytest.raises(TypeError, match="timeout"):
        task_decorator(log.record)("x", timeout=timeout)
    with pytest.raises(TypeError, match="timeout"):
        task_decorator(log.record).options(timeout=timeout)("z")

    time.sleep(0.05)
    assert log.snapshot() == []


@pytest.mark.parametrize("timeout", [1, 2**31, 0.5, 1e-3])
def test_positive_numbers_are_valid_timeouts(task_decorator, timeout):
    handle = task_decorator(abs)(-1, timeout=timeout)
    assert handle.get_timeout() == timeout
    handle.wait(WAIT)
    assert handle.status() in ("done", "timed_out")


# Races ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "decorator_name", ["parallel", "parallel_pool", "parallel_priority"]
)
def test_cancel_racing_start_and_finish_gives_one_final_status(decorator_name):
    decorator = getattr(mp, decorator_name)
    mp.configure_thread_pool(num_threads=4)
    count = 3000
    runs = [0] * count
    runs_lock = threading.Lock()

    def work(i):
        with runs_lock:
            runs[i] += 1
        if i % 10 == 0:
            time.sleep(0.02)  # long enough that its cancel is almost never late
        if i % 3 == 0:
            mp.check_cancelled()
        return i

    task = decorator(work)
    to_cancel = queue.Queue()
    cancel_results = [[] for _ in range(count)]
    callbacks = [0] * count
    callbacks_lock = threading.Lock()

    def on_done(i):
        def callback(_handle):
            with callbacks_lock:
                callbacks[i] += 1

        return callback

    def canceller(seed):
        rng = random.Random(seed)
        while True:
            item = to_cancel.get()
            if item is None:
                return
            i, handle = item
            for _ in range(rng.randrange(200)):
                pass
            cancel_results[i].append(handle.cancel())

    cancellers = [threading.Thread(target=canceller, args=(s,)) for s in range(4)]
    for c in cancellers:
        c.start()
    handles = []
    try:
        for i in range(count):
            handle = task(i)
            handle.add_done_callback(on_done(i))
            handles.append(handle)
            if i % 2 == 0:
                to_cancel.put((i, handle))
                to_cancel.put((i, handle))
    finally:
        for _ in cancellers:
            to_cancel.put(None)
        for c in cancellers:
            c.join(60)

    assert all(h.wait(WAIT) for h in handles)
    wait_until(lambda: all(h.running() is False for h in handles), timeout=30)
    wait_until(lambda: sum(callbacks) >= count, timeout=30)
    time.sleep(0.05)
    statuses = {}
    for i, handle in enumerate(handles):
        status = handle.status()
        statuses[status] = statuses.get(status, 0) + 1
        assert status == "done" if i % 2 else status in ("done", "cancelled"), (
            i,
            status,
        )
        assert callbacks[i] == 1, (i, callbacks[i])
        assert runs[i] <= 1, (i, runs[i])
        assert cancel_results[i].count(True) == (status == "cancelled"), (
            i,
            status,
            cancel_results[i],
        )
        if status == "done":
            assert runs[i] == 1
            assert handle.get(WAIT) == i
        else:
            assert handle.is_cancelled()
            with pytest.raises(mp.TaskCancelledError):
                handle.get(WAIT)
        assert handle.status() == status
    assert statuses["cancelled"] >= count // 20, statuses


@pytest.mark.parametrize(
    "decorator_name", ["parallel_fast", "parallel_pool", "parallel_priority"]
)
def test_timeouts_racing_completion_give_one_final_status(decorator_name):
    decorator = getattr(mp, decorator_name)
    mp.configure_thread_pool(num_threads=4)
    count = 1500
    runs = [0] * count
    settled = [0] * count
    lock = threading.Lock()

    def work(i):
        with lock:
            runs[i] += 1
        time.sleep(0.0005)
        return i

    def on_settled(i):
        def callback(_handle):
            with lock:
                settled[i] += 1

        return callback

    task = decorator(work)
    handles = []
    for i in range(count):
        handle = task(i, timeout=0.001 + (i % 7) * 0.0005)
        handle.add_done_callback(on_settled(i))
        handles.append(handle)

    assert all(h.wait(WAIT) for h in handles)
    wait_until(lambda: sum(settled) >= count, timeout=30)
    wait_until(lambda: not any(h.running() for h in handles), timeout=30)
    for i, handle in enumerate(handles):
        status = handle.status()
        assert status in ("done", "timed_out"), (i, status)
        assert settled[i] == 1, (i, settled[i])
        assert runs[i] <= 1, (i, runs[i])
        if status == "done":
            assert runs[i] == 1 and handle.get(WAIT) == i
        else:
            assert handle.is_cancelled()
            with pytest.raises(mp.TaskTimeoutError):
                handle.get(WAIT)
        assert handle.status() == status


def test_concurrent_getters_and_cancellers_agree_on_each_outcome():
    mp.configure_thread_pool(num_threads=3)
    count = 600
    task = mp.parallel_pool(lambda i: i)
    handles = [task(i) for i in range(count)]
    seen = [[] for _ in range(count)]

    def getter():
        for i, handle in enumerate(handles):
            try:
                seen[i].append(handle.get(WAIT))
            except mp.TaskCancelledError:
                seen[i].append("cancelled")

    def canceller():
        for handle in handles[::2]:
            handle.cancel()

    threads = [threading.Thread(target=getter) for _ in range(3)]
    threads.append(threading.Thread(target=canceller))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    for i, outcomes in enumerate(seen):
        assert len(outcomes) == 3 and len(set(outcomes)) == 1, (i, outcomes)
        expected = "cancelled" if handles[i].status() == "cancelled" else i
        assert outcomes[0] == expected, (i, outcomes, handles[i].status())
    assert all(seen[i][0] == i for i in range(1, count, 2))


# Interpreter exit -------------------------------------------------------------------

EXIT_SCRIPT = """
import time
import makeParallel as mp

mp.configure_thread_pool(num_threads=2)

@mp.{decorator}
def stuck():
    time.sleep(100)

handles = [stuck({call_args}) for _ in range(2)]
time.sleep(0.3)
{settle}
print("end of script", flush=True)
"""


@pytest.mark.parametrize(
    "decorator", ["parallel", "parallel_pool", "parallel_priority"]
)
@pytest.mark.parametrize("how", ["cancel", "cancel_with_timeout", "timeout"])
def test_exit_with_cancelled_tasks_stuck_in_sleep_is_prompt(run_python, decorator, how):
    if how == "timeout":
        call_args, settle = "timeout=0.2", "for h in handles: h.wait(10)"
    elif how == "cancel":
        call_args, settle = "", "for h in handles: h.cancel()"
    else:
        call_args, settle = "", "for h in handles: h.cancel_with_timeout(0.1)"
    script = EXIT_SCRIPT.format(decorator=decorator, call_args=call_args, settle=settle)

    started = time.monotonic()
    result = run_python(script, timeout=30)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "end of script\n"
    assert result.stderr == ""
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "decorator", ["parallel", "parallel_pool", "parallel_priority"]
)
def test_exit_completes_tasks_that_were_not_cancelled(run_python, decorator):
    result = run_python(
        f"""
        import sys
        import time
        import makeParallel as mp

        @mp.{decorator}
        def finish_late(i):
            time.sleep(0.3)
            sys.stdout.write(f"finished {{i}}\\n")

        handles = [finish_late(i) for i in range(3)]
        """
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        "finished 0",
        "finished 1",
        "finished 2",
    ]


def test_cancel_with_timeout_none_waits_without_limit(gate):
    handle = mp.parallel(lambda: (gate.enter(), mp.check_cancelled())[1])()
    gate.wait_entered(1)
    threading.Timer(0.2, gate.open).start()
    assert handle.cancel_with_timeout(None) is True
    assert not handle.running()
    assert handle.status() == "cancelled"


@pytest.mark.parametrize("bad", [0, -1, math.nan, "1", True], ids=repr)
def test_cancel_with_timeout_rejects_a_bad_timeout_before_cancelling(gate, bad):
    handle = mp.parallel(lambda: gate.enter())()
    gate.wait_entered(1)
    with pytest.raises((TypeError, ValueError), match="timeout_secs"):
        handle.cancel_with_timeout(bad)
    assert not handle.is_cancelled()
    gate.open()
    handle.get(WAIT)


@pytest.mark.parametrize("bad", ["yes", 1, None], ids=repr)
def test_cancel_interrupt_must_be_a_bool(bad):
    handle = mp.parallel(abs)(-1)
    with pytest.raises(TypeError, match="interrupt must be a bool"):
        handle.cancel(bad)
    with pytest.raises(TypeError, match="interrupt must be a bool"):
        handle.cancel(interrupt=bad)
    assert handle.get(WAIT) == 1

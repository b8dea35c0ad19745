"""API §6: @parallel_priority and the priority worker(s)."""

import random
import threading
import time

import makeParallel as mp
import pytest
from conftest import WAIT, wait_until

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def _by_priority(entries):
    """Expected run order of (priority, submission index) pairs."""
    return sorted(entries, key=lambda e: (-e[0], e[1]))


def test_one_worker_runs_a_queued_batch_in_exact_priority_order(
    block_priority_worker, log
):
    rng = random.Random(20240601)
    entries = [(rng.randint(-5, 5), i) for i in range(400)]
    task = mp.parallel_priority(log.record)

    handles = [task(entry, priority=entry[0]) for entry in entries]
    assert mp.get_priority_queue_info()["queued_tasks"] == len(entries)
    block_priority_worker.open()

    assert [h.get(WAIT) for h in handles] == entries
    assert log.snapshot() == _by_priority(entries)


def test_wide_random_priorities_with_ties_run_in_order(block_priority_worker, log):
    rng = random.Random(7)
    choices = [INT64_MIN, -(2**40), -1, 0, 1, 2**40, INT64_MAX]
    entries = [(rng.choice(choices), i) for i in range(300)]
    task = mp.parallel_priority(log.record)

    handles = [task(entry, priority=entry[0]) for entry in entries]
    block_priority_worker.open()

    assert all(h.wait(WAIT) for h in handles)
    assert log.snapshot() == _by_priority(entries)


def test_default_priority_is_zero(block_priority_worker, log):
    task = mp.parallel_priority(log.record)
    handles = [task("low", priority=-1), task("default"), task("high", priority=1)]
    block_priority_worker.open()

    assert all(h.wait(WAIT) for h in handles)
    assert log.snapshot() == ["high", "default", "low"]


def test_extreme_64_bit_priorities_are_accepted_and_ordered(block_priority_worker, log):
    task = mp.parallel_priority(log.record)
    handles = [
        task("min", priority=INT64_MIN),
        task("zero", priority=0),
        task("max", priority=INT64_MAX),
    ]
    block_priority_worker.open()

    assert [h.get(WAIT) for h in handles] == ["min", "zero", "max"]
    assert log.snapshot() == ["max", "zero", "min"]


@pytest.mark.parametrize("priority", [INT64_MAX + 1, INT64_MIN - 1, 10**30])
def test_priority_outside_64_bits_is_rejected(block_priority_worker, log, priority):
    task = mp.parallel_priority(log.record)

    with pytest.raises((OverflowError, ValueError)):
        task("x", priority=priority)

    assert mp.get_priority_queue_info()["queued_tasks"] == 0


@pytest.mark.parametrize(
    "priority", [True, False, 1.5, 2.0, "high", None, [1]], ids=repr
)
def test_bad_priority_is_type_error_before_submission(
    block_priority_worker, log, priority
):
    task = mp.parallel_priority(log.record)

    with pytest.raises(TypeError, match="priority"):
        task("x", priority=priority)

    assert mp.get_priority_queue_info()["queued_tasks"] == 0
    block_priority_worker.open()
    assert task("after").get(WAIT) == "after"
    assert log.snapshot() == ["after"]


@pytest.mark.parametrize(
    "priority", [True, False, 1.5, 2.0, "high", None, [1]], ids=repr
)
def test_bad_priority_in_options_is_type_error_before_submission(
    block_priority_worker, log, priority
):
    task = mp.parallel_priority(log.record)

    with pytest.raises(TypeError, match="priority"):
        task.options(priority=priority)("y")

    assert mp.get_priority_queue_info()["queued_tasks"] == 0
    block_priority_worker.open()
    assert task("after").get(WAIT) == "after"
    assert log.snapshot() == ["after"]


def test_queue_info_reports_running_workers_and_queued_tasks(block_priority_worker):
    task = mp.parallel_priority(abs)
    handles = [task(-i) for i in range(3)]

    info = mp.get_priority_queue_info()
    assert info["running"] is True
    assert info["num_workers"] == 1
    assert info["queued_tasks"] == 3
    block_priority_worker.open()
    assert [h.get(WAIT) for h in handles] == [0, 1, 2]
    assert mp.get_priority_queue_info()["queued_tasks"] == 0


def test_several_workers_run_at_once_and_start_tasks_by_priority(gate, log):
    workers = 3
    mp.stop_priority_worker()
    mp.start_priority_worker(num_workers=workers)
    assert mp.get_priority_queue_info()["num_workers"] == workers
    blockers = [mp.parallel_priority(gate.enter)() for _ in range(workers)]
    gate.wait_entered(workers)

    task = mp.parallel_priority(log.record)
    handles = []
    for i in range(40):
        handles.append(task(("high", i), priority=10))
        handles.append(task(("low", i), priority=0))
    gate.open()

    assert all(h.wait(WAIT) for h in handles + blockers)
    order = [kind for kind, _ in log.snapshot()]
    first_low = order.index("low")
    # A worker may record its high task just after another recorded a low one.
    assert first_low >= 40 - (workers - 1), order


def test_start_again_while_running_does_nothing():
    mp.stop_priority_worker()
    mp.start_priority_worker(num_workers=2)
    mp.start_priority_worker(num_workers=5)
    mp.start_priority_worker()

    info = mp.get_priority_queue_info()
    assert info["running"] is True
    assert info["num_workers"] == 2


def test_start_with_no_workers_is_value_error():
    mp.stop_priority_worker()
    with pytest.raises(ValueError, match="num_workers"):
        mp.start_priority_worker(num_workers=0)


def test_first_call_starts_the_worker_automatically():
    mp.stop_priority_worker()
    assert mp.get_priority_queue_info()["running"] is False

    assert mp.parallel_priority(abs)(-3).get(WAIT) == 3
    assert mp.get_priority_queue_info()["running"] is True


def _stop_while_blocked(gate, cancel_pending):
    """Stops the worker while the gate holds it, then lets the running task end."""
    stopper = threading.Thread(
        target=mp.stop_priority_worker, kwargs={"cancel_pending": cancel_pending}
    )
    stopper.start()
    time.sleep(0.2)
    gate.open()
    stopper.join(WAIT)
    assert not stopper.is_alive(), "stop_priority_worker() did not return"
    wait_until(lambda: mp.get_priority_queue_info()["running"] is False)


def test_stop_keeps_queued_tasks_until_started_again(block_priority_worker, log):
    task = mp.parallel_priority(log.record)
    handles = [task(i, priority=i) for i in range(5)]

    _stop_while_blocked(block_priority_worker, cancel_pending=False)
    time.sleep(0.2)
    assert log.snapshot() == []
    assert [h.status() for h in handles] == ["pending"] * 5
    assert mp.get_priority_queue_info()["queued_tasks"] == 5

    mp.start_priority_worker(num_workers=1)
    assert [h.get(WAIT) for h in handles] == list(range(5))
    assert log.snapshot() == [4, 3, 2, 1, 0]


def test_stop_with_cancel_pending_cancels_queued_tasks(block_priority_worker, log):
    task = mp.parallel_priority(log.record)
    handles = [task(i) for i in range(5)]

    _stop_while_blocked(block_priority_worker, cancel_pending=True)

    assert [h.status() for h in handles] == ["cancelled"] * 5
    assert all(h.is_cancelled() for h in handles)
    with pytest.raises(mp.TaskCancelledError):
        handles[0].get(WAIT)
    assert mp.get_priority_queue_info()["queued_tasks"] == 0
    mp.start_priority_worker()
    assert task("after").get(WAIT) == "after"
    assert log.snapshot() == ["after"]


def test_next_call_restarts_a_stopped_worker_and_runs_the_queue(
    block_priority_worker, log
):
    task = mp.parallel_priority(log.record)
    queued = [task("queued-low", priority=-1), task("queued-high", priority=1)]
    _stop_while_blocked(block_priority_worker, cancel_pending=False)

    assert task("new").get(WAIT) == "new"
    assert [h.get(WAIT) for h in queued] == ["queued-low", "queued-high"]
    assert set(log.snapshot()) == {"queued-low", "queued-high", "new"}


@pytest.mark.parametrize("how", ["get", "wait", "result"])
def test_waiting_on_a_task_queued_while_stopped_restarts_the_worker(
    block_priority_worker, log, how
):
    handle = mp.parallel_priority(log.record)("queued")
    _stop_while_blocked(block_priority_worker, cancel_pending=False)
    assert handle.status() == "pending"

    if how == "get":
        assert handle.get(WAIT) == "queued"
    elif how == "wait":
        assert handle.wait(WAIT) is True
    else:
        assert handle.result(WAIT) == "queued"
    assert log.snapshot() == ["queued"]
    assert mp.get_priority_queue_info()["running"] is True


def test_cancel_of_a_queued_priority_task(block_priority_worker, log):
    task = mp.parallel_priority(log.record)
    keep_low = task("low", priority=1)
    drop = task("dropped", priority=5)
    keep_high = task("high", priority=3)

    assert drop.cancel() is True
    block_priority_worker.open()

    assert keep_high.get(WAIT) == "high"
    assert keep_low.get(WAIT) == "low"
    assert drop.status() == "cancelled"
    assert log.snapshot() == ["high", "low"]


def test_idle_priority_worker_uses_no_cpu():
    mp.start_priority_worker(num_workers=2)
    assert mp.parallel_priority(abs)(-1).get(WAIT) == 1

    before = time.process_time()
    time.sleep(1.0)
    used = time.process_time() - before

    assert used < 0.2, f"{used:.3f}s of CPU used by an idle priority worker"


def test_many_threads_submitting_at_once_run_every_task_exactly_once(log):
    mp.stop_priority_worker()
    mp.start_priority_worker(num_workers=2)
    task = mp.parallel_priority(log.record)
    threads, per_thread = 16, 250
    handles = [None] * (threads * per_thread)
    start = threading.Barrier(threads, timeout=WAIT)

    def submit(t):
        rng = random.Random(t)
        start.wait()
        for i in range(per_thread):
            key = t * per_thread + i
            handles[key] = task(key, priority=rng.randint(-100, 100))

    submitters = [threading.Thread(target=submit, args=(t,)) for t in range(threads)]
    for s in submitters:
        s.start()
    for s in submitters:
        s.join(60)

    assert all(h is not None for h in handles)
    assert [h.get(WAIT) for h in handles] == list(range(threads * per_thread))
    assert sorted(log.snapshot()) == list(range(threads * per_thread))

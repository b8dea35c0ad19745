"""API §9: gather, as_completed, wait and ParallelContext."""

import concurrent.futures
import threading
import time

import pytest

import makeParallel as mp
from conftest import WAIT, wait_until


def started_task(fn, *args):
    """Runs fn(*args) as a @parallel task (a thread of its own)."""
    return mp.parallel(fn)(*args)


def wait_for_event(event, value):
    """A task body: returns value once event is set (bounded wait)."""
    if not event.wait(WAIT):
        raise RuntimeError("event never set")
    return value


def fail_with(exc):
    raise exc


def failed_handle(exc):
    handle = started_task(fail_with, exc)
    handle.wait(WAIT)
    assert handle.status() == "failed"
    return handle


def cancelled_handle():
    """A cancelled @parallel_pool task; the pool must be blocked (block_pool)."""
    handle = mp.parallel_pool(lambda: "never")()
    assert handle.cancel()
    assert handle.status() == "cancelled"
    return handle


# gather --------------------------------------------------------------------


def test_gather_returns_results_in_the_handles_order_not_completion_order():
    events = [threading.Event() for _ in range(4)]
    handles = [started_task(wait_for_event, e, i) for i, e in enumerate(events)]
    for event in reversed(events):  # finish last-submitted first
        event.set()
        time.sleep(0.01)
    assert mp.gather(handles, timeout=WAIT) == [0, 1, 2, 3]


def test_gather_of_nothing_is_an_empty_list():
    assert mp.gather([]) == []


def test_gather_accepts_a_generator_and_repeated_handles():
    handle = started_task(lambda: 5)
    assert mp.gather((h for h in [handle, handle]), timeout=WAIT) == [5, 5]


def test_gather_raise_reraises_the_task_exception():
    ok = started_task(lambda: 1)
    bad = failed_handle(KeyError("missing"))
    with pytest.raises(KeyError, match="missing"):
        mp.gather([ok, bad], timeout=WAIT)


def test_gather_raise_returns_as_soon_as_one_fails(gate):
    blocked = started_task(gate.enter)
    bad = failed_handle(ValueError("early"))
    with pytest.raises(ValueError, match="early"):
        mp.gather([blocked, bad], timeout=WAIT)
    assert not blocked.is_ready()  # gather did not wait for it, nor cancel it
    assert not blocked.is_cancelled()


def test_gather_skip_leaves_failed_handles_out(block_pool):
    handles = [
        started_task(lambda: "a"),
        failed_handle(ValueError("x")),
        cancelled_handle(),
        started_task(lambda: "d"),
    ]
    assert mp.gather(handles, on_error="skip", timeout=WAIT) == ["a", "d"]


def test_gather_none_puts_none_for_failed_handles(block_pool):
    handles = [
        failed_handle(ValueError("x")),
        started_task(lambda: "b"),
        cancelled_handle(),
    ]
    assert mp.gather(handles, on_error="none", timeout=WAIT) == [None, "b", None]


def test_gather_raise_on_a_cancelled_handle_raises_task_cancelled(block_pool):
    with pytest.raises(mp.TaskCancelledError):
        mp.gather([cancelled_handle()], timeout=WAIT)


def test_gather_timed_out_task_counts_as_failed(gate):
    handle = mp.parallel(gate.enter).options(timeout=0.05)()
    with pytest.raises(mp.TaskTimeoutError):
        mp.gather([handle], timeout=WAIT)
    assert mp.gather([handle], on_error="none", timeout=WAIT) == [None]


def test_gather_bad_on_error_raises_before_waiting(gate):
    blocked = started_task(gate.enter)
    with pytest.raises(ValueError, match="on_error"):
        mp.gather([blocked], on_error="ignore")


def test_gather_timeout_raises_timeout_error_and_does_not_cancel(gate):
    blocked = started_task(gate.enter)
    with pytest.raises(TimeoutError, match="1 of 2"):
        mp.gather([started_task(lambda: 1), blocked], timeout=0.05)
    assert not blocked.is_cancelled()
    gate.open()
    assert blocked.get(WAIT) is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"timeout": -1}, ValueError), ({"timeout": "1"}, TypeError)],
)
def test_gather_rejects_a_bad_timeout(kwargs, error):
    with pytest.raises(error, match="timeout"):
        mp.gather([], **kwargs)


def test_gather_rejects_things_that_are_not_handles():
    with pytest.raises(TypeError, match=r"handles\[1\]"):
        mp.gather([started_task(lambda: 1), 42])
    with pytest.raises(TypeError, match="iterable"):
        mp.gather(42)


def test_gather_works_with_concurrent_futures():
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(pow, 2, n) for n in range(5)]
        assert mp.gather(futures, timeout=WAIT) == [1, 2, 4, 8, 16]


# as_completed --------------------------------------------------------------


def test_as_completed_yields_in_completion_order():
    events = {name: threading.Event() for name in "abc"}
    handles = {n: started_task(wait_for_event, e, n) for n, e in events.items()}
    iterator = mp.as_completed(handles.values(), timeout=WAIT)

    order = []
    for name in "cab":
        events[name].set()
        order.append(next(iterator).get(WAIT))
    assert order == ["c", "a", "b"]
    with pytest.raises(StopIteration):
        next(iterator)


def test_as_completed_yields_already_settled_handles_once():
    done = started_task(lambda: 1)
    done.wait(WAIT)
    assert list(mp.as_completed([done, done], timeout=WAIT)) == [done]


def test_as_completed_yields_failed_and_cancelled_handles(block_pool):
    bad = failed_handle(ValueError("x"))
    cancelled = cancelled_handle()
    assert set(mp.as_completed([bad, cancelled], timeout=WAIT)) == {bad, cancelled}


def test_as_completed_timeout_raises_after_yielding_what_finished(gate):
    quick = started_task(lambda: 1)
    blocked = started_task(gate.enter)
    iterator = mp.as_completed([quick, blocked], timeout=0.2)
    assert next(iterator) is quick
    with pytest.raises(TimeoutError, match="1 of 2"):
        next(iterator)
    assert not blocked.is_cancelled()


def test_as_completed_checks_arguments_at_the_call():
    with pytest.raises(TypeError):
        mp.as_completed([object()])
    with pytest.raises(ValueError):
        mp.as_completed([], timeout=-1.0)


# wait ----------------------------------------------------------------------


def test_wait_first_completed_returns_as_soon_as_one_settles(gate):
    blocked = started_task(gate.enter)
    quick = started_task(lambda: 1)
    done, not_done = mp.wait(
        [blocked, quick], timeout=WAIT, return_when=mp.FIRST_COMPLETED
    )
    assert done == {quick}
    assert not_done == {blocked}


def test_wait_all_completed_waits_for_all():
    events = [threading.Event() for _ in range(3)]
    handles = [started_task(wait_for_event, e, i) for i, e in enumerate(events)]
    for event in events:
        threading.Timer(0.02, event.set).start()
    result = mp.wait(handles, timeout=WAIT)
    assert isinstance(result, mp.DoneAndNotDone)
    assert result.done == set(handles)
    assert result.not_done == set()


def test_wait_timeout_returns_the_split_without_raising(gate):
    quick = started_task(lambda: 1)
    blocked = started_task(gate.enter)
    quick.wait(WAIT)
    done, not_done = mp.wait([quick, blocked], timeout=0.05)
    assert (done, not_done) == ({quick}, {blocked})


def test_wait_first_exception_stops_at_a_failure_not_a_cancellation(block_pool, gate):
    running = started_task(gate.enter)  # block_pool's gate: opened at teardown
    cancelled = cancelled_handle()
    done, not_done = mp.wait(
        [running, cancelled], timeout=0.05, return_when=mp.FIRST_EXCEPTION
    )
    assert done == {cancelled} and not_done == {running}  # timed out: no exception

    bad = failed_handle(ValueError("x"))
    done, not_done = mp.wait(
        [running, bad], timeout=WAIT, return_when=mp.FIRST_EXCEPTION
    )
    assert done == {bad} and not_done == {running}


def test_wait_uses_the_concurrent_futures_constants():
    assert mp.FIRST_COMPLETED is concurrent.futures.FIRST_COMPLETED
    assert mp.ALL_COMPLETED is concurrent.futures.ALL_COMPLETED
    with pytest.raises(ValueError, match="return_when"):
        mp.wait([], return_when="SOMETIME")


def test_waiting_starts_no_helper_threads(gate):
    blocked = started_task(gate.enter)
    threads_before = set(threading.enumerate())
    result = {}

    def waiter():
        result["split"] = mp.wait([blocked], timeout=WAIT)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    assert set(threading.enumerate()) - threads_before == {thread}
    gate.open()
    thread.join(WAIT)
    assert result["split"].done == {blocked}


# ParallelContext -----------------------------------------------------------


def test_parallel_context_waits_for_all_tasks_on_exit():
    mp.configure_thread_pool(num_threads=4)
    finished = []
    lock = threading.Lock()

    def work(i):
        time.sleep(0.02)
        with lock:
            finished.append(i)
        return i * i

    with mp.ParallelContext() as ctx:
        handles = [ctx.submit(work, args=(i,)) for i in range(8)]

    assert sorted(finished) == list(range(8))
    assert all(h.is_ready() for h in handles)
    assert [h.get(0) for h in handles] == [i * i for i in range(8)]
    assert ctx.handles == handles


def test_parallel_context_runs_on_the_global_pool_with_kwargs():
    with mp.ParallelContext() as ctx:
        handle = ctx.submit(
            lambda a, *, timeout, priority: (a, timeout, priority),
            args=[1],
            kwargs={"timeout": 2, "priority": 3},
        )
    assert handle.get(WAIT) == (1, 2, 3)  # every keyword reached the function


def test_parallel_context_runs_the_undecorated_function():
    @mp.parallel_pool
    def triple(x):
        return 3 * x

    with mp.ParallelContext() as ctx:
        handle = ctx.submit(triple, args=(4,))
    assert handle.get(WAIT) == 12
    assert handle.get_name() == "triple"


def test_parallel_context_does_not_raise_task_failures_on_exit():
    with mp.ParallelContext() as ctx:
        handle = ctx.submit(fail_with, args=(KeyError("k"),))
    assert handle.status() == "failed"
    with pytest.raises(KeyError):
        handle.get(0)


def test_parallel_context_cancels_queued_tasks_when_the_block_raises(gate):
    mp.configure_thread_pool(num_threads=1)
    try:
        ran = []

        def record(i):
            ran.append(i)

        with pytest.raises(RuntimeError, match="inside the block"):
            with mp.ParallelContext() as ctx:
                running = ctx.submit(gate.enter)
                gate.wait_entered(1)
                queued = [ctx.submit(record, args=(i,)) for i in range(3)]
                assert all(h.status() == "pending" for h in queued)
                # The blocker must finish for __exit__ to return.
                threading.Timer(0.05, gate.open).start()
                raise RuntimeError("inside the block")

        assert running.status() == "done"  # running: not cancelled, waited for
        assert [h.status() for h in queued] == ["cancelled"] * 3
        assert all(h.cancelled() for h in queued)
        assert ran == []
    finally:
        gate.open()
        mp.configure_thread_pool()


def test_parallel_context_timeout_applies_to_each_task(gate):
    with mp.ParallelContext(timeout=0.05) as ctx:
        handle = ctx.submit(gate.enter)
    assert handle.status() == "timed_out"
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(0)


def test_parallel_context_refuses_submissions_after_exit():
    with mp.ParallelContext() as ctx:
        pass
    with pytest.raises(RuntimeError, match="after the block"):
        ctx.submit(print)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda ctx: ctx.submit(3), TypeError, "callable"),
        (lambda ctx: ctx.submit(print, args=5), TypeError, "args"),
        (lambda ctx: ctx.submit(print, kwargs=[("a", 1)]), TypeError, "kwargs"),
    ],
)
def test_parallel_context_submit_checks_its_arguments(call, error, match):
    with mp.ParallelContext() as ctx, pytest.raises(error, match=match):
        call(ctx)
    assert ctx.handles == []


@pytest.mark.parametrize(("timeout", "error"), [(0, ValueError), ("1", TypeError)])
def test_parallel_context_rejects_a_bad_timeout(timeout, error):
    with pytest.raises(error, match="timeout"):
        mp.ParallelContext(timeout=timeout)


def test_helpers_settle_from_other_threads(gate):
    # Handles settled by worker threads while gather sleeps wake it up.
    handles = [started_task(gate.enter) for _ in range(3)]
    gate.wait_entered(3)
    threading.Timer(0.05, gate.open).start()
    assert mp.gather(handles, timeout=WAIT) == [None] * 3
    wait_until(lambda: all(h.status() == "done" for h in handles))


def test_waits_accept_timeouts_longer_than_a_lock_can_wait():
    # threading's locks cannot wait longer than threading.TIMEOUT_MAX; a
    # longer (still finite) timeout must simply mean "a very long time".
    nap = mp.parallel(time.sleep)
    assert mp.gather([nap(0.1)], timeout=1e10) == [None]
    done, pending = mp.wait([nap(0.1)], timeout=1e12)
    assert len(done) == 1 and not pending
    assert [h.get() for h in mp.as_completed([nap(0.1)], timeout=1e10)] == [None]
    with mp.ParallelContext(timeout=1e10) as ctx:
        handle = ctx.submit(time.sleep, (0.1,))
    assert handle.status() == "done"

"""API §4: AsyncHandle, its methods and the exception classes."""

import asyncio
import concurrent.futures
import re
import sys
import threading
import time
import traceback

import makeParallel as mp
import pytest
from conftest import WAIT, wait_until


class CustomError(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def raise_key_error():
    raise KeyError("boom")


def raise_custom_error():
    raise CustomError("custom", code=7)


# get() ---------------------------------------------------------------------


def test_get_returns_the_result(task_decorator):
    handle = task_decorator(lambda a, b: a * b)(6, 7)
    assert handle.get(WAIT) == 42
    assert handle.get() == 42


def test_get_with_timeout_raises_timeout_error_and_does_not_cancel(
    task_decorator, gate
):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)

    with pytest.raises(TimeoutError) as info:
        handle.get(timeout=0.05)

    assert not isinstance(info.value, mp.TaskTimeoutError)
    assert not handle.is_cancelled()
    assert handle.status() == "running"
    gate.open()
    assert handle.get(WAIT) is None
    assert handle.status() == "done"


def test_get_reraises_the_task_exception_with_the_worker_traceback(task_decorator):
    handle = task_decorator(raise_key_error)()

    with pytest.raises(KeyError) as info:
        handle.get(WAIT)

    assert info.value.args == ("boom",)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "raise_key_error" in frames


def test_get_reraises_a_custom_exception_with_its_attributes(task_decorator):
    handle = task_decorator(raise_custom_error)()

    with pytest.raises(CustomError) as info:
        handle.get(WAIT)

    assert type(info.value) is CustomError
    assert info.value.code == 7
    assert str(info.value) == "custom"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PEP 678 notes need 3.11")
def test_reraised_exception_has_a_note_naming_task_id_and_function(task_decorator):
    handle = task_decorator(raise_key_error)()

    with pytest.raises(KeyError) as info:
        handle.get(WAIT)

    notes = getattr(info.value, "__notes__", [])
    assert any(
        handle.get_task_id() in note and "raise_key_error" in note for note in notes
    ), notes


def test_get_after_cancel_raises_task_cancelled_error(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)
    handle.cancel()

    with pytest.raises(mp.TaskCancelledError):
        handle.get(WAIT)


def test_get_after_own_timeout_raises_task_timeout_error(task_decorator, gate):
    handle = task_decorator(gate.enter)(timeout=0.1)

    with pytest.raises(mp.TaskTimeoutError):
        handle.get(WAIT)
    assert handle.status() == "timed_out"


def test_blocking_get_in_main_thread_is_interrupted_by_ctrl_c(run_python):
    result = run_python(
        """
        import os, signal, threading
        import makeParallel as mp

        release = threading.Event()
        handle = mp.parallel(release.wait)(60)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            handle.get()
        except KeyboardInterrupt:
            print("interrupted")
        finally:
            release.set()
        print(handle.get(10))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["interrupted", "True"]


def test_get_from_several_threads_gives_each_the_same_result(task_decorator, gate):
    result = object()

    def produce():
        gate.enter()
        return result

    handle = task_decorator(produce)()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(handle.get, WAIT) for _ in range(8)]
        time.sleep(0.05)
        gate.open()
        results = [f.result(WAIT) for f in futures]

    assert all(r is result for r in results)


def test_get_from_several_threads_raises_for_each(task_decorator, gate):
    def fail():
        gate.enter()
        raise CustomError("shared", code=3)

    handle = task_decorator(fail)()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(handle.get, WAIT) for _ in range(8)]
        gate.open()
        errors = [f.exception(WAIT) for f in futures]

    assert all(type(e) is CustomError and e.code == 3 for e in errors)


# try_get() -------------------------------------------------------------------


def test_try_get_returns_none_until_finished_then_the_result(task_decorator, gate):
    def work():
        gate.enter()
        return "result"

    handle = task_decorator(work)()
    gate.wait_entered(1)
    assert handle.try_get() is None
    gate.open()
    assert handle.wait(WAIT)
    assert handle.try_get() == "result"


def test_try_get_raises_like_get_after_a_failure(task_decorator):
    handle = task_decorator(raise_custom_error)()
    assert handle.wait(WAIT)
    with pytest.raises(CustomError):
        handle.try_get()


def test_try_get_raises_after_cancellation(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    handle.cancel()
    with pytest.raises(mp.TaskCancelledError):
        handle.try_get()


# wait() and is_ready() -----------------------------------------------------


def test_wait_returns_false_when_not_finished_in_time(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)
    assert handle.wait(0.05) is False
    assert handle.is_ready() is False
    gate.open()
    assert handle.wait(WAIT) is True
    assert handle.is_ready() is True


def test_wait_returns_as_soon_as_the_task_finishes(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    threading.Timer(0.2, gate.open).start()
    started = time.monotonic()

    assert handle.wait(60.0) is True
    assert time.monotonic() - started < 30.0


def test_wait_without_timeout_waits_for_the_result(task_decorator):
    handle = task_decorator(time.sleep)(0.05)
    assert handle.wait() is True


@pytest.mark.parametrize(
    "settle", ["result", "error", "cancel", "timeout"], ids=lambda s: s
)
def test_is_ready_once_outcome_is_settled(task_decorator, gate, settle):
    def work(fail):
        gate.enter()
        if fail:
            raise ValueError("failed")
        return 1

    timeout = 0.1 if settle == "timeout" else None
    handle = task_decorator(work)(settle == "error", timeout=timeout)
    gate.wait_entered(1)
    if settle in ("result", "error"):
        gate.open()
        assert handle.wait(WAIT)
    elif settle == "cancel":
        handle.cancel()
    else:
        handle.wait(WAIT)
    assert handle.is_ready()
    assert handle.done()


def test_outcome_settles_at_once_on_cancel_while_code_still_runs(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)

    assert handle.cancel() is True
    assert handle.is_ready()
    assert handle.status() == "cancelled"
    assert handle.running()

    gate.open()
    wait_until(lambda: not handle.running())
    assert handle.status() == "cancelled"


def test_outcome_settles_at_once_on_timeout_while_code_still_runs(task_decorator, gate):
    handle = task_decorator(gate.enter)(timeout=0.1)
    gate.wait_entered(1)

    assert handle.wait(WAIT)
    assert handle.status() == "timed_out"
    assert handle.running()
    gate.open()
    wait_until(lambda: not handle.running())
    assert handle.status() == "timed_out"


# cancel() and cancel_with_timeout() ---------------------------------------------


def test_cancel_returns_true_only_while_unsettled(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)

    assert handle.cancel() is True
    assert handle.cancel() is False


def test_cancel_of_a_finished_task_returns_false(task_decorator):
    handle = task_decorator(abs)(-3)
    assert handle.get(WAIT) == 3

    assert handle.cancel() is False
    assert handle.status() == "done"
    assert handle.get(WAIT) == 3


def test_cancel_after_own_timeout_returns_false(task_decorator, gate):
    handle = task_decorator(gate.enter)(timeout=0.05)
    assert handle.wait(WAIT)

    assert handle.cancel() is False
    assert handle.status() == "timed_out"


def test_elapsed_time_counts_from_submission_while_queued(
    queueing_decorator, block_queue
):
    handle = queueing_decorator(abs)(-1)
    time.sleep(0.1)

    assert handle.status() == "pending"
    assert handle.elapsed_time() >= 0.1
    block_queue.open()
    assert handle.get(WAIT) == 1


def test_cancel_of_a_queued_task_removes_it(queueing_decorator, block_queue, log):
    handle = queueing_decorator(log.record)("queued")
    after = queueing_decorator(log.record)("after")
    assert handle.status() == "pending"

    assert handle.cancel() is True
    block_queue.open()

    assert after.get(WAIT) == "after"
    assert handle.status() == "cancelled"
    assert log.snapshot() == ["after"]
    with pytest.raises(mp.TaskCancelledError):
        handle.get(WAIT)


def test_result_of_a_task_cancelled_while_running_is_discarded(task_decorator, gate):
    finished = threading.Event()

    def work():
        gate.enter()
        finished.set()
        return "late"

    handle = task_decorator(work)()
    gate.wait_entered(1)
    handle.cancel()
    gate.open()

    assert finished.wait(WAIT)
    wait_until(lambda: not handle.running())
    with pytest.raises(mp.TaskCancelledError):
        handle.get(WAIT)
    assert handle.status() == "cancelled"


def test_cancel_with_timeout_of_a_queued_task_is_true(
    queueing_decorator, block_queue, log
):
    handle = queueing_decorator(log.record)("queued")

    assert handle.cancel_with_timeout(1.0) is True
    assert handle.is_cancelled()
    block_queue.open()
    assert queueing_decorator(log.record)("after").get(WAIT) == "after"
    assert log.snapshot() == ["after"]


def test_cancel_with_timeout_of_a_cooperative_task_is_true(task_decorator, gate):
    def cooperative():
        gate.enter(timeout=0)
        while not mp.is_cancelled():
            time.sleep(0.005)
        return "noticed"

    handle = task_decorator(cooperative)()
    gate.wait_entered(1)

    assert handle.cancel_with_timeout(WAIT) is True
    assert not handle.running()
    assert handle.status() == "cancelled"


def test_cancel_with_timeout_of_a_stuck_task_is_false(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)

    assert handle.cancel_with_timeout(0.1) is False
    assert handle.running()
    assert handle.is_cancelled()
    gate.open()
    wait_until(lambda: not handle.running())


def test_cancel_with_timeout_of_a_finished_task_is_true(task_decorator):
    handle = task_decorator(abs)(-1)
    assert handle.get(WAIT) == 1
    assert handle.cancel_with_timeout(0.1) is True
    assert handle.status() == "done"


# is_cancelled() --------------------------------------------------------------


def test_is_cancelled_is_false_for_a_normal_task(task_decorator):
    handle = task_decorator(abs)(-1)
    assert handle.get(WAIT) == 1
    assert handle.is_cancelled() is False


@pytest.mark.parametrize("how", ["cancel", "cancel_with_timeout", "timeout"])
def test_is_cancelled_after_cancellation_request(task_decorator, gate, how):
    handle = task_decorator(gate.enter)(timeout=0.1 if how == "timeout" else None)
    gate.wait_entered(1)
    assert handle.is_cancelled() is False

    if how == "cancel":
        handle.cancel()
    elif how == "cancel_with_timeout":
        handle.cancel_with_timeout(0.01)
    else:
        handle.wait(WAIT)
    assert handle.is_cancelled() is True


def test_is_cancelled_after_shutdown_with_cancel_pending(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)
    try:
        assert mp.shutdown(timeout_secs=0.05, cancel_pending=True) is False
        assert handle.is_cancelled() is True
    finally:
        gate.open()
        mp.reset_shutdown()
    assert mp.parallel(abs)(-2).get(WAIT) == 2


# Introspection -------------------------------------------------------------------


def test_elapsed_time_grows_while_running_and_stops_when_finished(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)
    first = handle.elapsed_time()
    time.sleep(0.1)
    second = handle.elapsed_time()
    assert 0.0 <= first < second
    assert second - first >= 0.09

    gate.open()
    assert handle.wait(WAIT)
    finished = handle.elapsed_time()
    time.sleep(0.1)
    assert handle.elapsed_time() == finished
    assert finished >= second


def test_get_name_is_the_function_name(task_decorator):
    def my_function():
        return 42

    handle = task_decorator(my_function)()
    assert handle.get_name() == "my_function"
    assert handle.get(WAIT) == 42


def test_task_ids_are_unique_strings(task_decorator):
    handles = [task_decorator(abs)(i) for i in range(50)]
    ids = [h.get_task_id() for h in handles]

    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == len(ids)
    assert [h.get(WAIT) for h in handles] == list(range(50))


def test_status_of_a_queued_task_goes_pending_running_done(
    queueing_decorator, block_queue
):
    inner = threading.Event()

    def work():
        inner.wait(WAIT)
        return "ok"

    handle = queueing_decorator(work)()
    assert handle.status() == "pending"
    assert not handle.running()

    block_queue.open()
    wait_until(lambda: handle.status() == "running")
    assert handle.running()
    inner.set()
    assert handle.get(WAIT) == "ok"
    assert handle.status() == "done"
    assert not handle.running()


def test_status_failed(task_decorator):
    handle = task_decorator(raise_key_error)()
    assert handle.wait(WAIT)
    assert handle.status() == "failed"


def test_metadata_holds_any_object(task_decorator):
    handle = task_decorator(abs)(-1)
    value = {"nested": [1, 2]}

    handle.set_metadata("owner", value)
    handle.set_metadata("attempt", 3)

    assert handle.get_metadata("owner") is value
    assert handle.get_metadata("missing") is None
    assert handle.get_all_metadata() == {"owner": value, "attempt": 3}
    assert handle.get(WAIT) == 1


def test_callback_registration_returns_the_handle_for_chaining(task_decorator):
    seen = []
    handle = task_decorator(abs)(-5)

    same = (
        handle.on_complete(seen.append)
        .on_error(seen.append)
        .on_progress(lambda fraction: None)
    )

    assert same is handle
    assert handle.get(WAIT) == 5
    wait_until(lambda: seen == [5])


def test_on_error_receives_the_exception_object(task_decorator):
    errors = []
    handle = task_decorator(raise_custom_error)()
    handle.on_error(errors.append)

    with pytest.raises(CustomError) as info:
        handle.get(WAIT)
    wait_until(lambda: len(errors) == 1)
    assert type(errors[0]) is CustomError and errors[0].code == 7
    assert info.value.code == 7


def test_progress_is_reported_and_one_after_success(task_decorator, gate):
    fractions = []

    def work():
        gate.enter()
        mp.report_progress(0.5)
        return "done"

    handle = task_decorator(work)()
    handle.on_progress(fractions.append)
    gate.wait_entered(1)
    assert handle.get_progress() == 0.0
    gate.open()

    assert handle.get(WAIT) == "done"
    wait_until(lambda: 0.5 in fractions)
    assert handle.get_progress() == 1.0


# concurrent.futures vocabulary ------------------------------------------------------


def test_futures_vocabulary_on_success(task_decorator, gate):
    called = []
    handle = task_decorator(lambda: (gate.enter(), "value")[1])()
    handle.add_done_callback(called.append)
    gate.wait_entered(1)

    assert handle.done() is False
    assert handle.cancelled() is False
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.05)
    gate.open()

    assert handle.result(timeout=WAIT) == "value"
    assert handle.exception(timeout=WAIT) is None
    assert handle.done() is True
    assert handle.cancelled() is False
    wait_until(lambda: called == [handle])


def test_futures_vocabulary_on_failure(task_decorator):
    handle = task_decorator(raise_custom_error)()

    error = handle.exception(timeout=WAIT)
    assert type(error) is CustomError
    with pytest.raises(CustomError):
        handle.result(timeout=WAIT)
    assert handle.done() and not handle.cancelled()


def test_futures_vocabulary_on_cancellation(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)
    handle.cancel()

    assert handle.cancelled() is True
    assert handle.done() is True
    with pytest.raises(concurrent.futures.CancelledError):
        handle.result(timeout=WAIT)
    with pytest.raises(concurrent.futures.CancelledError):
        handle.exception(timeout=WAIT)


def test_done_callback_added_after_finish_runs_at_once(task_decorator):
    handle = task_decorator(abs)(-1)
    assert handle.get(WAIT) == 1
    called = []

    handle.add_done_callback(called.append)
    wait_until(lambda: called == [handle])


def test_done_callback_runs_once_without_anyone_calling_get(task_decorator):
    called = []
    handle = task_decorator(time.sleep)(0.05)
    handle.add_done_callback(called.append)

    wait_until(lambda: len(called) == 1)
    time.sleep(0.05)
    assert called == [handle]


# await ---------------------------------------------------------------------


def test_await_handle_does_not_block_the_event_loop(task_decorator, gate):
    opened_by = []

    def open_gate(who):
        if not opened_by:
            opened_by.append(who)
        gate.open()

    fallback = threading.Timer(5.0, open_gate, ("fallback timer",))

    async def main():
        handle = task_decorator(lambda: (gate.enter(), "awaited")[1])()

        async def ticker():
            for _ in range(5):
                await asyncio.sleep(0.01)
            open_gate("event loop")

        tick = asyncio.ensure_future(ticker())
        result = await asyncio.wait_for(handle, WAIT)
        await tick
        return result

    fallback.start()
    try:
        assert asyncio.run(main()) == "awaited"
    finally:
        fallback.cancel()
    assert opened_by == ["event loop"]


def test_await_handle_raises_the_task_exception(task_decorator):
    async def main():
        return await task_decorator(raise_custom_error)()

    with pytest.raises(CustomError):
        asyncio.run(asyncio.wait_for(main(), WAIT))


def test_await_many_handles_with_gather(task_decorator):
    async def main():
        handles = [task_decorator(abs)(-i) for i in range(10)]
        return await asyncio.gather(*handles)

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == list(range(10))


# repr ------------------------------------------------------------------------


def test_repr_shows_id_name_status_and_elapsed_time(task_decorator, gate):
    def named_task():
        gate.enter()

    handle = task_decorator(named_task)()
    gate.wait_entered(1)
    text = repr(handle)

    assert handle.get_task_id() in text
    assert "named_task" in text
    assert "running" in text
    assert re.search(r"\d+\.\d+", text), text
    gate.open()
    assert handle.wait(WAIT)
    assert "done" in repr(handle)


# Exception classes --------------------------------------------------------------


@pytest.mark.parametrize(
    "name, bases",
    [
        ("TaskCancelledError", (concurrent.futures.CancelledError,)),
        ("TaskTimeoutError", (TimeoutError,)),
        ("DependencyError", ()),
        ("ShutdownError", (RuntimeError,)),
    ],
)
def test_exception_classes_and_their_bases(name, bases):
    cls = getattr(mp, name)

    assert issubclass(cls, mp.TaskError)
    for base in bases:
        assert issubclass(cls, base)


def test_task_error_is_an_exception():
    assert issubclass(mp.TaskError, Exception)
    assert mp.TaskError is not Exception

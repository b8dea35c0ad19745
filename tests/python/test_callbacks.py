"""Callbacks, progress reports and the current task id (API §4 and §9).

The basics (chaining, the exception type passed to `on_error`, one progress
report) are in test_handle.py; this file covers when and where callbacks run,
what a failing callback does, callbacks that wait on other tasks, and the
argument checks of `report_progress`.
"""

import logging
import math
import threading

import makeParallel as mp
import pytest
from conftest import WAIT, wait_until


class Boom(Exception):
    pass


def fail():
    raise Boom("task failed")


#: (registration method, the task to run, what the callback is expected to get).
CALLBACK_CASES = {
    "on_complete": (lambda: 42, lambda handle: 42),
    "on_error": (fail, lambda handle: handle.exception(timeout=WAIT)),
    "add_done_callback": (lambda: 42, lambda handle: handle),
}


@pytest.fixture(params=sorted(CALLBACK_CASES))
def callback_case(request):
    """(method name, task function, expected argument) for each callback kind."""
    method = request.param
    func, expected = CALLBACK_CASES[method]
    return method, func, expected


# When and where callbacks run -------------------------------------------------------


def test_callback_fires_without_anyone_calling_get(task_decorator, callback_case, gate):
    method, func, expected = callback_case
    received = []
    fired = threading.Event()

    def body():
        gate.enter()
        return func()

    handle = task_decorator(body)()
    getattr(handle, method)(lambda arg: (received.append(arg), fired.set()))
    gate.wait_entered(1)
    assert not fired.is_set()
    gate.open()

    assert fired.wait(WAIT), f"{method} callback did not fire"
    assert len(received) == 1
    want = expected(handle)
    if isinstance(want, BaseException):
        assert received[0] is want
    else:
        assert received[0] == want


def test_callback_registered_after_finish_runs_at_once_in_the_registering_thread(
    task_decorator, callback_case
):
    method, func, _ = callback_case
    handle = task_decorator(func)()
    assert handle.wait(WAIT)
    threads = []

    getattr(handle, method)(lambda arg: threads.append(threading.get_ident()))

    assert threads == [threading.get_ident()]


def test_on_complete_and_on_error_fire_only_for_their_outcome(task_decorator):
    calls = []
    good = task_decorator(lambda: "ok")()
    bad = task_decorator(fail)()
    for handle in (good, bad):
        handle.on_complete(lambda value: calls.append(("complete", value)))
        handle.on_error(lambda error: calls.append(("error", type(error))))
    good.wait(WAIT)
    bad.wait(WAIT)

    wait_until(lambda: len(calls) == 2)
    assert sorted(calls, key=str) == [("complete", "ok"), ("error", Boom)]


def test_on_error_receives_the_very_exception_object_the_task_raised(task_decorator):
    raised = []
    received = []
    fired = threading.Event()

    def body():
        error = Boom("mine")
        raised.append(error)
        raise error

    handle = task_decorator(body)()
    handle.on_error(lambda error: (received.append(error), fired.set()))

    assert fired.wait(WAIT)
    assert received[0] is raised[0]
    with pytest.raises(Boom) as info:
        handle.get(WAIT)
    assert info.value is raised[0]


# A callback that raises -----------------------------------------------------------


@pytest.mark.parametrize("method", ["on_complete", "on_error", "add_done_callback"])
def test_raising_callback_is_logged_and_later_callbacks_still_run(
    task_decorator, caplog, method
):
    func = fail if method == "on_error" else (lambda: 7)
    later = threading.Event()

    def broken(arg):
        raise ValueError("callback bug")

    with caplog.at_level(logging.ERROR, logger="makeParallel"):
        handle = task_decorator(func)()
        getattr(handle, method)(broken)
        getattr(handle, method)(lambda arg: later.set())
        assert later.wait(WAIT), "the callback after the broken one did not run"

    records = [r for r in caplog.records if r.name == "makeParallel"]
    assert len(records) == 1
    assert records[0].exc_info[0] is ValueError
    if method == "on_error":
        with pytest.raises(Boom):
            handle.get(WAIT)
        assert handle.status() == "failed"
    else:
        assert handle.get(WAIT) == 7
        assert handle.status() == "done"


def test_raising_callback_registered_after_finish_is_logged_not_raised(caplog):
    handle = mp.parallel(lambda: 3)()
    assert handle.get(WAIT) == 3

    with caplog.at_level(logging.ERROR, logger="makeParallel"):
        handle.on_complete(lambda value: 1 / 0)

    assert [r.exc_info[0] for r in caplog.records] == [ZeroDivisionError]
    assert handle.get(WAIT) == 3


def test_raising_progress_callback_is_logged_and_the_task_goes_on(
    task_decorator, caplog, gate
):
    seen = []

    def body():
        gate.enter()
        mp.report_progress(0.5)
        return "finished"

    def broken(fraction):
        raise RuntimeError("progress bug")

    with caplog.at_level(logging.ERROR, logger="makeParallel"):
        handle = task_decorator(body)()
        handle.on_progress(broken).on_progress(seen.append)
        gate.open()
        assert handle.get(WAIT) == "finished"

    assert seen == [0.5]
    assert [r.exc_info[0] for r in caplog.records] == [RuntimeError]


# Callbacks that wait on other tasks ---------------------------------------------------


def test_callback_can_submit_a_task_and_wait_for_it(task_decorator):
    results = []
    fired = threading.Event()

    def follow_up(value):
        results.append(task_decorator(abs)(-value).get(timeout=WAIT))
        fired.set()

    mp.parallel(lambda: 5)().on_complete(follow_up)

    assert fired.wait(WAIT)
    assert results == [5]


@pytest.mark.parametrize("nested", ["parallel", "parallel_fast", "parallel_priority"])
def test_callback_of_a_single_thread_pool_task_can_wait_for_a_new_task(nested):
    mp.configure_thread_pool(num_threads=1)
    results = []
    fired = threading.Event()

    def follow_up(value):
        results.append(getattr(mp, nested)(abs)(-value).get(timeout=WAIT))
        fired.set()

    handle = mp.parallel_pool(lambda: 9)()
    handle.on_complete(follow_up)

    assert fired.wait(WAIT)
    assert results == [9]
    assert mp.parallel_pool(lambda: "pool still works")().get(WAIT) == (
        "pool still works"
    )


def test_callback_can_get_the_result_of_another_running_task(task_decorator, gate):
    results = []
    fired = threading.Event()
    other = task_decorator(lambda: (gate.enter(), "other")[1])()
    gate.wait_entered(1)

    def combine(value):
        results.append((value, other.get(timeout=WAIT)))
        fired.set()

    # "first" finishes only once the callback is registered, so the callback runs on
    # its worker thread; registered after it finished, it would run here at once and
    # wait for "other" before this thread could open the gate.
    registered = threading.Event()
    first = mp.parallel(lambda: (registered.wait(WAIT), "first")[1])()
    first.on_complete(combine)
    registered.set()
    gate.open()

    assert fired.wait(WAIT)
    assert results == [("first", "other")]


def test_callback_can_get_its_own_handle(task_decorator):
    results = []
    fired = threading.Event()
    handle = task_decorator(lambda: "own")()
    handle.add_done_callback(
        lambda h: (results.append(h.get(timeout=WAIT)), fired.set())
    )

    assert fired.wait(WAIT)
    assert results == ["own"]


# Timed-out and cancelled tasks --------------------------------------------------


def test_callbacks_of_a_timed_out_task_fire_while_its_code_still_runs(
    task_decorator, gate
):
    seen = []
    fired = threading.Event()
    handle = task_decorator(gate.enter)(timeout=0.05)
    handle.on_complete(lambda value: seen.append("complete"))

    def done(h):
        seen.append((h.status(), h.running(), threading.get_ident()))
        fired.set()

    handle.add_done_callback(done)

    assert fired.wait(WAIT), "the timeout did not fire the callback"
    status, running, thread = seen[-1]
    assert status == "timed_out"
    assert running is True
    assert thread != threading.get_ident()
    gate.open()
    wait_until(lambda: not handle.running())
    assert "complete" not in seen


@pytest.mark.parametrize("where", ["running", "queued"])
def test_callbacks_of_a_cancelled_task_fire(request, queueing_decorator, gate, where):
    if where == "queued":
        request.getfixturevalue("block_queue")
        handle = queueing_decorator(lambda: "never")()
    else:
        handle = queueing_decorator(gate.enter)()
        gate.wait_entered(1)
    seen = []
    fired = threading.Event()
    handle.on_complete(lambda value: seen.append("complete"))
    handle.on_error(lambda error: seen.append("error"))
    handle.add_done_callback(lambda h: (seen.append(h.cancelled()), fired.set()))

    assert handle.cancel() is True

    assert fired.wait(WAIT)
    assert seen == [True]
    gate.open()
    wait_until(lambda: not handle.running())
    assert seen == [True]


# Progress ---------------------------------------------------------------------


def test_progress_reaches_callbacks_in_order_and_get_progress(task_decorator, gate):
    steps = [0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9]
    seen = []
    ready = threading.Event()

    def body():
        ready.wait(WAIT)
        for fraction in steps:
            mp.report_progress(fraction)
        gate.enter()
        return "done"

    handle = task_decorator(body)()
    handle.on_progress(seen.append)
    ready.set()
    gate.wait_entered(1)

    assert seen == steps
    assert handle.get_progress() == 0.9
    gate.open()
    assert handle.get(WAIT) == "done"
    assert handle.get_progress() == 1.0


def test_progress_stays_where_it_was_when_the_task_fails(task_decorator):
    def body():
        mp.report_progress(0.3)
        fail()

    handle = task_decorator(body)()

    with pytest.raises(Boom):
        handle.get(WAIT)
    assert handle.get_progress() == 0.3


@pytest.mark.parametrize(
    "fraction, error",
    [
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        (-0.1, ValueError),
        (1.1, ValueError),
        ("0.5", TypeError),
        (None, TypeError),
    ],
)
def test_report_progress_rejects_bad_fractions(task_decorator, fraction, error):
    handle = task_decorator(mp.report_progress)(fraction)

    with pytest.raises(error, match="fraction"):
        handle.get(WAIT)
    assert handle.get_progress() == 0.0


@pytest.mark.parametrize("fraction", [0, 1, 0.0, 1.0])
def test_report_progress_accepts_the_bounds(fraction):
    seen = []
    ready = threading.Event()

    def body():
        ready.wait(WAIT)
        mp.report_progress(fraction)

    handle = mp.parallel(body)()
    handle.on_progress(seen.append)
    ready.set()

    assert handle.get(WAIT) is None
    assert seen == [float(fraction)]


def test_report_progress_outside_a_task_says_why():
    with pytest.raises(RuntimeError, match="outside a task"):
        mp.report_progress(0.5)


def test_report_progress_with_task_id_updates_that_running_task(task_decorator, gate):
    seen = []
    handle = task_decorator(gate.enter)()
    handle.on_progress(lambda fraction: seen.append((fraction, threading.get_ident())))
    gate.wait_entered(1)

    mp.report_progress(0.7, task_id=handle.get_task_id())

    assert handle.get_progress() == 0.7
    assert seen == [(0.7, threading.get_ident())]
    gate.open()
    handle.get(WAIT)
    assert handle.get_progress() == 1.0


def test_report_progress_from_one_task_for_another(gate):
    target = mp.parallel(gate.enter)()
    gate.wait_entered(1)

    reporter = mp.parallel(mp.report_progress)(0.4, task_id=target.get_task_id())

    assert reporter.get(WAIT) is None
    assert target.get_progress() == 0.4
    gate.open()
    target.get(WAIT)


# Current task id -------------------------------------------------------------------


def test_current_task_id_inside_a_task_is_its_handles_id(task_decorator):
    handle = task_decorator(mp.get_current_task_id)()

    assert handle.get(WAIT) == handle.get_task_id()


def test_current_task_id_differs_between_tasks(task_decorator):
    handles = [task_decorator(mp.get_current_task_id)() for _ in range(5)]

    ids = [h.get(WAIT) for h in handles]
    assert ids == [h.get_task_id() for h in handles]
    assert len(set(ids)) == 5


def test_current_task_id_outside_a_task_is_none():
    assert mp.get_current_task_id() is None


def test_add_done_callback_names_itself_when_given_no_callable():
    handle = mp.parallel(abs)(-1)
    with pytest.raises(TypeError, match="add_done_callback"):
        handle.add_done_callback(5)
    assert handle.get(WAIT) == 1


def test_ctrl_c_in_a_callback_on_the_main_thread_reaches_the_program(run_python):
    result = run_python(
        """
        import os, signal, threading, time
        import makeParallel as mp

        handle = mp.parallel_pool(abs)(-42)
        handle.wait(10)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            handle.on_complete(lambda value: time.sleep(2))  # runs here, at once
            time.sleep(2)
            print("swallowed")
        except KeyboardInterrupt:
            print("interrupted")
        print(handle.get(10))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["interrupted", "42"]

"""`shutdown`, `reset_shutdown`, `get_active_task_count` and interpreter exit (API §9).

Every test that shuts the library down accepts submissions again at the end
(the `_accept_again` fixture), so later tests can submit.
"""

import threading
import time

import makeParallel as mp
import pytest
from conftest import WAIT, wait_until


@pytest.fixture(autouse=True)
def _accept_again():
    yield
    mp.reset_shutdown()


def cooperative(entered):
    """Task code that runs until cancellation is requested, then stops."""
    entered.set()
    while not mp.is_cancelled():
        time.sleep(0.002)
    mp.check_cancelled()


def wait_for_no_task():
    wait_until(lambda: mp.get_active_task_count() == 0)


#: Every way to submit work: called with a function of no arguments and a
#: finished handle to depend on.
SUBMITTERS = {
    "parallel": lambda f, done: mp.parallel(f)(),
    "parallel_fast": lambda f, done: mp.parallel_fast(f)(),
    "parallel_pool": lambda f, done: mp.parallel_pool(f)(),
    "parallel_priority": lambda f, done: mp.parallel_priority(f)(),
    "parallel_with_deps": lambda f, done: mp.parallel_with_deps(lambda r: f())(
        depends_on=[done]
    ),
    "parallel_map": lambda f, done: mp.parallel_map(lambda x: f(), [1, 2]),
    "ParallelContext": lambda f, done: mp.ParallelContext().submit(f),
}


@pytest.fixture
def done():
    """A handle whose task finished."""
    handle = mp.parallel(abs)(0)
    assert handle.wait(WAIT)
    return handle


# What shutdown does to tasks -------------------------------------------------------


def test_shutdown_cancels_queued_stops_running_and_returns_true(log):
    mp.configure_thread_pool(num_threads=1)
    entered = threading.Event()
    running = mp.parallel_pool(cooperative)(entered)
    assert entered.wait(WAIT)
    queued = [mp.parallel_pool(log.record)(i) for i in range(5)]

    assert mp.shutdown(timeout_secs=WAIT) is True

    assert running.is_cancelled() is True
    assert not running.running()
    assert running.status() == "cancelled"
    assert [h.status() for h in queued] == ["cancelled"] * 5
    assert all(h.is_cancelled() for h in queued)
    assert mp.get_active_task_count() == 0
    assert log.snapshot() == []


def test_shutdown_cancels_tasks_waiting_on_dependencies(log):
    entered = threading.Event()
    dependency = mp.parallel(cooperative)(entered)
    assert entered.wait(WAIT)
    waiting = [
        mp.parallel_with_deps(lambda results, i: log.record(i))(
            i, depends_on=[dependency]
        )
        for i in range(5)
    ]

    assert mp.shutdown(timeout_secs=WAIT) is True

    assert [h.status() for h in waiting] == ["cancelled"] * 5
    assert all(h.is_cancelled() for h in waiting)
    for handle in waiting:
        with pytest.raises(mp.TaskCancelledError):
            handle.get(WAIT)
    assert log.snapshot() == []


def test_shutdown_requests_cancellation_of_every_kind_of_running_task(task_decorator):
    entered = [threading.Event() for _ in range(3)]
    handles = [mp.parallel(cooperative)(entered[0])]
    handles.append(task_decorator(cooperative)(entered[1]))
    for event in entered[:2]:
        assert event.wait(WAIT)

    assert mp.shutdown(timeout_secs=WAIT) is True

    assert all(h.is_cancelled() for h in handles)
    assert [h.status() for h in handles] == ["cancelled", "cancelled"]


def test_shutdown_returns_false_while_code_ignores_cancellation(gate):
    stuck = mp.parallel(gate.enter)()
    gate.wait_entered(1)

    assert mp.shutdown(timeout_secs=0.1) is False

    assert stuck.is_cancelled() is True
    assert stuck.running() is True
    assert mp.get_active_task_count() == 1
    gate.open()
    wait_for_no_task()
    with pytest.raises(mp.TaskCancelledError):
        stuck.get(WAIT)


def test_shutdown_with_nothing_running_returns_true_at_once():
    assert mp.shutdown(timeout_secs=0) is True


def test_shutdown_without_a_time_limit_waits_for_running_code(gate):
    handle = mp.parallel(lambda: (gate.enter(), "finished")[1])()
    gate.wait_entered(1)
    threading.Timer(0.2, gate.open).start()
    assert mp.shutdown(timeout_secs=None, cancel_pending=False) is True
    assert not handle.running()


def test_shutdown_twice_is_harmless():
    assert mp.shutdown(timeout_secs=WAIT) is True
    assert mp.shutdown(timeout_secs=WAIT) is True
    with pytest.raises(mp.ShutdownError):
        mp.parallel(abs)(-1)


def test_shutdown_keeps_finished_results():
    handle = mp.parallel(lambda: "kept")()
    assert handle.wait(WAIT)

    mp.shutdown(timeout_secs=WAIT)

    assert handle.get(WAIT) == "kept"
    assert handle.status() == "done"


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"timeout_secs": -1}, ValueError),
        ({"timeout_secs": float("nan")}, ValueError),
        ({"timeout_secs": "1"}, TypeError),
        ({"timeout_secs": True}, TypeError),
        ({"cancel_pending": 1}, TypeError),
    ],
)
def test_shutdown_rejects_bad_arguments_before_doing_anything(kwargs, error):
    with pytest.raises(error):
        mp.shutdown(**kwargs)

    assert mp.parallel(abs)(-1).get(WAIT) == 1


# cancel_pending=False ------------------------------------------------------------


def test_without_cancel_pending_queued_tasks_stay_and_run(block_pool, log):
    queued = [mp.parallel_pool(log.record)(i) for i in range(3)]

    assert mp.shutdown(timeout_secs=0.05, cancel_pending=False) is False

    assert [h.status() for h in queued] == ["pending"] * 3
    assert not any(h.is_cancelled() for h in queued)
    block_pool.open()
    assert [h.get(WAIT) for h in queued] == [0, 1, 2]
    assert log.snapshot() == [0, 1, 2]


def test_without_cancel_pending_running_tasks_are_still_asked_to_stop():
    entered = threading.Event()
    running = mp.parallel(cooperative)(entered)
    assert entered.wait(WAIT)

    assert mp.shutdown(timeout_secs=WAIT, cancel_pending=False) is True

    assert running.is_cancelled() is True
    assert running.status() == "cancelled"


def test_without_cancel_pending_queued_tasks_run_after_reset_shutdown(block_pool, log):
    queued = mp.parallel_pool(log.record)("queued")
    mp.shutdown(timeout_secs=0.05, cancel_pending=False)
    mp.reset_shutdown()

    later = mp.parallel_pool(log.record)("later")
    block_pool.open()

    assert queued.get(WAIT) == "queued"
    assert later.get(WAIT) == "later"
    assert log.snapshot() == ["queued", "later"]


# Refusing and accepting submissions ------------------------------------------------


@pytest.mark.parametrize("how", sorted(SUBMITTERS))
def test_submissions_after_shutdown_raise_shutdown_error(how, log, done):
    mp.shutdown(timeout_secs=WAIT)

    with pytest.raises(mp.ShutdownError) as info:
        SUBMITTERS[how](lambda: log.record("ran"), done)

    assert isinstance(info.value, RuntimeError)
    assert "reset_shutdown" in str(info.value)
    assert mp.get_active_task_count() == 0
    assert log.snapshot() == []


@pytest.mark.parametrize("how", sorted(SUBMITTERS))
def test_reset_shutdown_accepts_submissions_again(how, done):
    mp.shutdown(timeout_secs=WAIT)

    mp.reset_shutdown()

    result = SUBMITTERS[how](lambda: "again", done)
    if isinstance(result, list):  # parallel_map
        assert result == ["again", "again"]
    else:
        assert result.get(WAIT) == "again"


def test_shutdown_error_is_a_runtime_error():
    assert issubclass(mp.ShutdownError, RuntimeError)


def test_reset_shutdown_without_shutdown_does_nothing():
    mp.reset_shutdown()

    assert mp.parallel(abs)(-1).get(WAIT) == 1


def test_submissions_racing_with_shutdown_are_either_refused_or_complete():
    outcomes = []
    lock = threading.Lock()
    start = threading.Barrier(5)

    def submit_many():
        start.wait(WAIT)
        for i in range(200):
            try:
                handle = mp.parallel(abs)(-i)
            except mp.ShutdownError:
                with lock:
                    outcomes.append("refused")
                continue
            try:
                result = handle.get(WAIT)
            except mp.TaskCancelledError:
                result = "cancelled"
            with lock:
                outcomes.append(result)

    submitters = [threading.Thread(target=submit_many) for _ in range(4)]
    for t in submitters:
        t.start()
    start.wait(WAIT)
    mp.shutdown(timeout_secs=WAIT)
    for t in submitters:
        t.join(WAIT)
        assert not t.is_alive()

    assert len(outcomes) == 800
    wait_for_no_task()


# get_active_task_count --------------------------------------------------------------


def test_active_task_count_counts_submitted_unfinished_tasks(block_pool, gate):
    base = mp.get_active_task_count()
    running = [mp.parallel(gate.enter)() for _ in range(2)]
    queued = [mp.parallel_pool(abs)(-i) for i in range(3)]
    dependent = mp.parallel_with_deps(lambda results: results)(depends_on=running)
    gate.wait_entered(3)

    assert mp.get_active_task_count() == base + 6

    queued[0].cancel()
    assert mp.get_active_task_count() == base + 5
    gate.open()
    assert dependent.get(WAIT) == (None, None)
    wait_for_no_task()


def test_active_task_count_includes_cancelled_code_still_running(gate):
    handle = mp.parallel(gate.enter)()
    gate.wait_entered(1)

    handle.cancel()

    assert handle.is_ready()
    assert mp.get_active_task_count() == 1
    gate.open()
    wait_for_no_task()


def test_active_task_count_is_zero_when_idle():
    handles = [mp.parallel(abs)(-i) for i in range(10)]
    for handle in handles:
        handle.wait(WAIT)

    wait_for_no_task()


# Interpreter exit --------------------------------------------------------------------


def test_exit_completes_tasks_waiting_on_dependencies(run_python):
    result = run_python(
        """
        import atexit
        import threading
        import time

        lines = []

        # Registered before the library's own exit hook, so it runs after it.
        @atexit.register
        def report():
            print(sorted(lines))

        import makeParallel as mp

        lock = threading.Lock()

        def note(text):
            with lock:
                lines.append(text)

        @mp.parallel
        def root():
            time.sleep(0.2)
            return 1

        @mp.parallel_with_deps
        def step(results, name):
            time.sleep(0.05)
            note(name)
            return results[0] + 1

        first = root()
        second = step("second", depends_on=[first])
        step("third", depends_on=[second])
        step("sibling", depends_on=[first])
        cancelled = step("cancelled", depends_on=[first])
        cancelled.cancel()
        """
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['second', 'sibling', 'third']"
    assert result.stderr == ""


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_daemon_threads_waiting_at_exit_do_not_abort(run_python, backend):
    # Daemon threads blocked in get() (or about to take the GIL back) when the
    # interpreter finalizes must not turn CPython's thread exit into an abort.
    result = run_python(
        f"""
        import threading, time
        import makeParallel as mp

        task = mp.parallel_pool(backend={backend!r})(abs)

        def loop():
            while True:
                task(-1).get()

        for _ in range(3):
            threading.Thread(target=loop, daemon=True).start()
        time.sleep(0.5)
        print("main done")
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "terminate called" not in result.stderr
    assert result.stdout.splitlines() == ["main done"]


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_daemon_threads_submitting_in_a_loop_do_not_hold_up_exit(run_python, backend):
    # Exit waits for the work submitted so far, not for a daemon thread that
    # never stops submitting more: its further submissions are refused.
    result = run_python(
        f"""
        import threading, time
        import makeParallel as mp

        nap = mp.parallel_pool(backend={backend!r})(time.sleep)

        def loop():
            while True:
                nap(0.05).get()

        def mapper():
            while True:
                mp.parallel_map(abs, range(100), backend={backend!r})

        for target in (loop, loop, loop, mapper):  # never all idle at once
            threading.Thread(target=target, daemon=True).start()
        time.sleep(0.5)
        print("main done")
        """,
        timeout=30,  # a hang fails as subprocess.TimeoutExpired
    )
    assert result.returncode == 0, result.stderr
    assert "terminate called" not in result.stderr
    assert result.stdout.splitlines() == ["main done"]

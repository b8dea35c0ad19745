"""The process backend: tasks that run in worker processes (API §10)."""

import os
import pickle
import re
import signal
import sys
import threading
import time

import pytest

import makeParallel as mp
from makeParallel import _process

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0  # first calls start interpreters; leave room on a loaded machine


@pytest.fixture(autouse=True)
def _default_process_pool():
    yield
    mp.set_default_backend("thread")
    mp.reset_shutdown()


# Module-level functions: picklable by reference, found by the worker through
# the import path it inherits.


def double(x):
    return 2 * x


def pid_of(_=None):
    return os.getpid()


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def stamp(tag):
    return tag, time.monotonic()


def exit_hard(code):
    os._exit(code)


def exit_on_500(x):
    if x == 500:
        os._exit(3)
    return x


def segfault():
    import ctypes

    return ctypes.string_at(0)


def echo(data):
    return data


def sized(data):
    return len(data), data[:3], data[-3:]


class CustomError(Exception):
    pass


def raise_custom(message):
    raise CustomError(message)


class UnpicklableError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable():
    raise UnpicklableError("holds a lock")


def report_later(delay):
    time.sleep(delay)
    mp.report_progress(0.5)
    return "reported"


def report_twice():
    mp.report_progress(0.25)
    mp.report_progress(0.75)
    return mp.get_current_task_id()


@mp.parallel(backend="process")
def decorated_double(x):
    return 2 * x


# ---- what can be sent


def test_module_function_runs_in_another_process():
    h = mp.parallel(backend="process")(pid_of)()
    assert h.get(timeout=WAIT) != os.getpid()
    assert isinstance(h, mp.AsyncHandle)


def test_decorated_module_function_runs_its_body_not_its_wrapper():
    assert decorated_double(21).get(timeout=WAIT) == 42


def test_lambda_and_closure():
    offset = 10

    def add_offset(x):
        return x + offset

    assert mp.parallel(backend="process")(lambda x: x * 3)(5).get(timeout=WAIT) == 15
    assert mp.parallel(backend="process")(add_offset)(5).get(timeout=WAIT) == 15


def test_main_module_function(run_python):
    result = run_python(
        """
        import os
        import makeParallel as mp

        @mp.parallel(backend="process")
        def where(x):
            return x + 1, os.getpid()

        value, pid = where(1).get(timeout=30)
        assert value == 2 and pid != os.getpid(), (value, pid)
        print(mp.parallel_map(lambda v: v * v, range(5), backend="process"))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 1, 4, 9, 16]"
    assert result.stderr == ""


def test_methods_of_a_main_module_class(run_python):
    result = run_python(
        """
        import makeParallel as mp

        class Counter:
            def __init__(self, base):
                self.base = base

            @mp.parallel_pool(backend="process")
            def add(self, y):
                return self.base + y

            @classmethod
            def make(cls, base):
                return cls(base)

            @mp.profiled
            def twice(self, y):
                return 2 * y

        c = Counter.make(10)
        later = Counter.add.options(timeout=20)(c, 5)
        print(c.add(4).get(timeout=30), later.get(timeout=30))
        print(mp.parallel(backend="process")(c.twice)(3).get(timeout=30))
        """,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["14", "15", "6"]


def test_every_decorator_and_options_take_a_backend():
    parent = os.getpid()
    for decorator in (mp.parallel, mp.parallel_pool, mp.parallel_priority):
        assert decorator(backend="process")(pid_of)().get(timeout=WAIT) != parent
        caller = decorator(pid_of).options(backend="process")
        assert caller().get(timeout=WAIT) != parent
    threaded = mp.parallel(backend="process")(pid_of).options(backend="thread")
    assert threaded().get(timeout=WAIT) == parent


def test_default_backend_is_thread_and_can_be_switched():
    assert mp.get_default_backend() == "thread"
    f = mp.parallel(pid_of)
    assert f().get(timeout=WAIT) == os.getpid()
    mp.set_default_backend("process")
    assert f().get(timeout=WAIT) != os.getpid()  # resolved at call time
    assert mp.parallel(backend="thread")(pid_of)().get(timeout=WAIT) == os.getpid()


@pytest.mark.parametrize("bad", [1, b"process", ["process"]])
def test_backend_of_wrong_type_is_a_type_error(bad):
    with pytest.raises(TypeError, match="backend"):
        mp.parallel(backend=bad)
    with pytest.raises(TypeError, match="backend"):
        mp.set_default_backend(bad)
    with pytest.raises(TypeError, match="backend"):
        mp.parallel_map(double, [1], backend=bad)


@pytest.mark.parametrize("bad", ["processes", "", "THREAD"])
def test_unknown_backend_is_a_value_error(bad):
    with pytest.raises(ValueError, match="backend"):
        mp.parallel(backend=bad)
    with pytest.raises(ValueError, match="backend"):
        mp.parallel(double).options(backend=bad)
    with pytest.raises(ValueError, match="backend"):
        mp.set_default_backend(bad)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError),
                                        (True, TypeError), (2.5, TypeError),
                                        ("4", TypeError), (10**6, ValueError)])
def test_configure_process_pool_validates(bad, error):
    with pytest.raises(error, match="num_workers"):
        mp.configure_process_pool(bad)


def test_process_pool_info():
    mp.configure_process_pool()
    mp.parallel(backend="process")(double)(1).get(timeout=WAIT)
    info = mp.get_process_pool_info()
    assert info["configured"] is True
    assert info["num_workers"] == len(os.sched_getaffinity(0))
    assert 1 <= info["alive_workers"] <= info["num_workers"]
    assert info["queued_tasks"] == 0
    assert {"active_tasks", "queued_tasks"} <= set(info)


# ---- results and errors


def test_exception_keeps_its_type_and_the_worker_traceback():
    h = mp.parallel(backend="process")(raise_custom)("boom")
    with pytest.raises(CustomError, match="boom") as info:
        h.get(timeout=WAIT)
    assert "raise_custom" in str(info.value.__cause__)
    assert h.status() == "failed"


def test_unpicklable_exception_arrives_as_task_error():
    h = mp.parallel(backend="process")(raise_unpicklable)()
    with pytest.raises(mp.TaskError) as info:
        h.get(timeout=WAIT)
    err = info.value
    assert err.remote_type.endswith("UnpicklableError")
    assert err.remote_message == "holds a lock"
    assert "raise_unpicklable" in err.remote_traceback


def test_unpicklable_argument_fails_the_task_not_the_pool():
    h = mp.parallel(backend="process")(echo)(threading.Lock())
    with pytest.raises(TypeError):
        h.get(timeout=WAIT)
    assert mp.parallel(backend="process")(double)(2).get(timeout=WAIT) == 4


def test_hundred_megabyte_bytes_argument_and_result():
    data = os.urandom(1024) * (100 * 1024)
    assert len(data) == 100 * 1024 * 1024
    f = mp.parallel(backend="process")
    n, head, tail = f(sized)(data).get(timeout=WAIT)
    assert (n, head, tail) == (len(data), data[:3], data[-3:])
    back = f(echo)(data).get(timeout=WAIT)
    assert type(back) is bytes and back == data


def test_bytearray_and_numpy_round_trip():
    np = pytest.importorskip("numpy")
    arr = np.arange(1_000_000, dtype=np.float64)
    back = mp.parallel(backend="process")(echo)(arr).get(timeout=WAIT)
    assert back.dtype == arr.dtype and np.array_equal(back, arr)
    back[0] = -1.0  # rebuilt arrays are writable and independent of the sender
    assert arr[0] == 0.0
    blob = bytearray(b"x" * 200_000)
    out = mp.parallel(backend="process")(echo)(blob).get(timeout=WAIT)
    assert type(out) is bytearray and out == blob


# ---- large bytes nested in arguments and results go out of band


def big(tag):
    """Bytes just large enough to travel out of band."""
    return bytes([tag]) * _process.OOB_THRESHOLD


def deep(levels, value):
    for i in range(levels):
        value = [value] if i % 2 else (value,)
    return value


NESTED = {
    "list in a list in a dict": {"a": [[big(1)]]},
    "tuple in a list in a dict": {"k": [0, (1, big(2))]},
    "fifty levels down": deep(50, big(3)),
    "after a long list": (list(range(1000)), {"data": big(4)}),
    "after many short lists": ([[i] for i in range(100)], [[big(5)]]),
}


def sent_out_of_band(data, buffers):
    """The payload is small and each large bytes object went as a buffer."""
    return len(data) < _process.OOB_THRESHOLD and all(
        b.nbytes >= _process.OOB_THRESHOLD for b in buffers
    )


@pytest.mark.parametrize("value", NESTED.values(), ids=NESTED.keys())
def test_nested_large_bytes_go_out_of_band(value):
    data, buffers = _process._encode_call(echo, (value,), None, None)
    assert len(buffers) == 1 and sent_out_of_band(data, buffers)
    _fn, args, _kwargs = pickle.loads(data, buffers=buffers)
    assert args == (value,)

    data, buffers = _process._encode_call(echo, (), {"value": value}, None)
    assert len(buffers) == 1 and sent_out_of_band(data, buffers)

    data, buffers = _process._encode_result(value)
    assert len(buffers) == 1 and sent_out_of_band(data, buffers)
    assert pickle.loads(data, buffers=buffers) == value


def test_nested_large_bytes_round_trip_through_a_worker():
    f = mp.parallel(backend="process")(echo)
    for value in NESTED.values():
        assert f(value).get(timeout=WAIT) == value


def test_search_for_large_bytes_returns_what_it_does_not_change():
    value = {"a": [[b"small", (1, 2.0)]], "b": ("s", None), "c": list(range(1000))}
    args = (value, [value])
    assert _process._wrap_large(value) is value
    assert _process._wrap_large(args) is args


def test_wrapped_containers_keep_their_types_and_what_they_share():
    shared = [big(6)]
    value = ((shared, {"s": shared}), [shared, ()])
    data, buffers = _process._encode_result(value)
    assert len(buffers) == 1 and sent_out_of_band(data, buffers)
    back = pickle.loads(data, buffers=buffers)
    assert back == value
    assert type(back[0]) is tuple and type(back[0][1]) is dict
    assert type(back[1]) is list and type(back[1][1]) is tuple
    assert back[0][0] is back[0][1]["s"] is back[1][0]


def test_long_container_is_not_searched_but_what_follows_it_is():
    long = [big(7)] * (_process._SCAN_BUDGET + 1)
    after = big(8)
    _data, buffers = _process._encode_call(echo, (long, [[after]]), None, None)
    assert [bytes(b) for b in buffers] == [after]


def test_self_referencing_containers_keep_their_cycles():
    loop = [big(9)]
    loop.append(loop)
    table = {"data": big(10)}
    table["self"] = [table]
    value = (loop, table)
    data, buffers = _process._encode_call(echo, (value,), None, None)
    _fn, (sent,), _kwargs = pickle.loads(data, buffers=buffers)
    back = mp.parallel(backend="process")(echo)(value).get(timeout=WAIT)
    for copy in (sent, back):
        assert copy[0][1] is copy[0] and copy[0][0] == loop[0]
        assert copy[1]["self"][0] is copy[1] and copy[1]["data"] == table["data"]


# ---- crashes, cancellation, timeouts


@pytest.mark.parametrize("crash, expected", [
    ((exit_hard, (7,)), "exited with code 7"),
    ((segfault, ()), "SIGSEGV"),
])
def test_crashing_worker_fails_only_its_task(crash, expected):
    mp.configure_process_pool(2)
    f = mp.parallel(backend="process")
    others = [f(sleep_then)(0.5, i) for i in range(3)]
    fn, args = crash
    h = f(fn)(*args)
    with pytest.raises(mp.WorkerCrashedError, match=expected) as info:
        h.get(timeout=WAIT)
    assert isinstance(info.value, mp.TaskError)
    if expected.startswith("SIG"):
        assert info.value.signal == signal.SIGSEGV
    else:
        assert info.value.exitcode == 7
    assert [o.get(timeout=WAIT) for o in others] == [0, 1, 2]
    assert f(double)(4).get(timeout=WAIT) == 8  # the pool replaced the worker


def _wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_cancel_kills_a_running_worker():
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")
    worker = f(pid_of)().get(timeout=WAIT)
    h = f(time.sleep)(100)
    assert _eventually(h.running)
    time.sleep(0.2)  # let the worker enter the sleep
    start = time.monotonic()
    assert h.cancel_with_timeout(10.0) is True
    assert time.monotonic() - start < 5.0
    assert h.status() == "cancelled" and not h.running()
    assert _wait_gone(worker)
    assert f(pid_of)().get(timeout=WAIT) != worker


def test_timeout_kills_a_running_worker():
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")
    worker = f(pid_of)().get(timeout=WAIT)
    h = f(time.sleep).options(timeout=0.5)(100)
    with pytest.raises(mp.TaskTimeoutError):
        h.get(timeout=WAIT)
    assert h.status() == "timed_out"
    assert h.wait(WAIT)
    assert _wait_gone(worker)
    assert f(double)(3).get(timeout=WAIT) == 6


def test_cancel_of_a_queued_task_never_runs_it():
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")
    blocker = f(sleep_then)(0.5)
    queued = f(pid_of)()
    assert queued.cancel() is True
    assert blocker.get(timeout=WAIT) is None
    assert queued.status() == "cancelled"


def _eventually(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_parent_killed_leaves_no_worker(run_python, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "import makeParallel as mp\n"
        "mp.configure_process_pool(2)\n"
        "hs = [mp.parallel(backend='process')(time.sleep)(100) for _ in range(2)]\n"
        "deadline = time.monotonic() + 30\n"
        "pids = mp._core._process_worker_pids\n"
        "while len(pids()) < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print(*pids(), flush=True)\n"
        "time.sleep(100)\n"
    )
    import subprocess

    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              text=True, cwd=str(tmp_path))
    try:
        line = parent.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        parent.kill()
        parent.wait(WAIT)
        for pid in pids:
            assert _wait_gone(pid, 5.0), f"worker {pid} outlived its parent"
    finally:
        parent.kill()
        parent.wait(WAIT)
        parent.stdout.close()


def test_workers_are_reaped_at_exit(run_python):
    result = run_python(
        """
        import os
        import makeParallel as mp
        pids = {mp.parallel(backend="process")(os.getpid)().get(timeout=30)
                for _ in range(4)}
        print(*pids)
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for pid in map(int, result.stdout.split()):
        assert _wait_gone(pid, 5.0)


# ---- a caller waiting in get()/wait() may start a queued task itself


def test_a_waiting_caller_keeps_results_metrics_and_callbacks():
    mp.reset_metrics()
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")
    f(double)(0).get()  # a warm, idle worker, so the next waits take the short path
    done = []
    for i in range(50):
        h = f(double)(i).on_complete(done.append)
        assert h.get() == 2 * i
    h = f(report_twice)()
    seen = []
    h.on_progress(seen.append)
    assert h.wait() is True and h.get() == h.get_task_id()
    assert _eventually(lambda: len(done) == 50)
    assert sorted(done) == [2 * i for i in range(50)]
    assert mp.get_metrics("double").completed_tasks == 51
    with pytest.raises(CustomError):
        f(raise_custom)("here").get()
    assert mp.get_process_pool_info()["active_tasks"] == 0


def test_workers_outlive_the_threads_that_started_them():
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")(pid_of)
    got = []
    starter = threading.Thread(target=lambda: got.append(f().get(timeout=WAIT)))
    starter.start()
    starter.join(WAIT)
    mp.configure_process_pool(1)  # also replaces the executor's threads
    time.sleep(0.3)
    assert f().get(timeout=WAIT) == got[0]


def test_get_timeout_on_the_short_path_leaves_the_task_running():
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")
    f(double)(0).get()
    h = f(sleep_then)(0.6, "late")
    start = time.monotonic()
    with pytest.raises(mp.WaitTimeoutError):
        h.get(timeout=0.1)
    assert time.monotonic() - start < 0.5
    assert h.wait(0.05) is False and h.status() == "running"
    assert h.get(timeout=WAIT) == "late"
    assert _eventually(lambda: mp.get_process_pool_info()["active_tasks"] == 0)
    assert f(double)(4).get() == 8


def test_cancel_reaches_a_task_started_by_its_waiting_caller():
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")
    worker = f(pid_of)().get()
    h = f(time.sleep)(100)
    threading.Timer(0.3, h.cancel).start()
    start = time.monotonic()
    with pytest.raises(mp.TaskCancelledError):
        h.get()
    assert time.monotonic() - start < 5.0
    assert _wait_gone(worker)
    assert f(double)(2).get() == 4


def test_ctrl_c_interrupts_get_but_not_the_task(run_python):
    result = run_python(
        """
        import os, signal, threading, time
        import makeParallel as mp

        mp.configure_process_pool(1)
        f = mp.parallel(backend="process")
        f(os.getpid)().get()  # an idle worker: get() below starts the task itself
        h = f(time.sleep)(1.0)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            h.get()
        except KeyboardInterrupt:
            print("interrupted", time.monotonic() - start < 0.9)
        print(h.get(10), h.status(), f(abs)(-5).get(10))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["interrupted", "True", "None", "done", "5"]


def test_stopped_priority_workers_hold_process_tasks_until_restarted():
    mp.configure_process_pool(2)
    mp.stop_priority_worker()
    mp.start_priority_worker(1)
    f = mp.parallel_priority(backend="process")
    blocker = f(sleep_then).options(priority=100)(0.5)
    time.sleep(0.2)  # running: the batch below queues behind it
    handles = [f(stamp)(f"p{p}", priority=p) for p in (1, 3, 2)]
    mp.stop_priority_worker()
    assert blocker.get(timeout=WAIT) is None
    time.sleep(0.5)
    assert [h.status() for h in handles] == ["pending"] * 3
    assert mp.get_process_pool_info()["queued_tasks"] == 3
    info = mp.get_priority_queue_info()  # one priority queue, thread and process tasks
    assert info["queued_tasks"] == 3 and info["running"] is False
    # Waiting for one starts the workers again; the batch runs in priority order.
    handles[0].get(timeout=WAIT)
    ran = sorted((h.get(timeout=WAIT) for h in handles), key=lambda r: r[1])
    assert [tag for tag, _ in ran] == ["p3", "p2", "p1"]


def test_a_worker_killed_while_idle_is_replaced_without_failing_a_task():
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")(pid_of)
    first = f().get(timeout=WAIT)
    os.kill(first, signal.SIGKILL)
    time.sleep(0.3)  # dead (a zombie until the pool reaps it)
    second = f().get(timeout=WAIT)
    assert second != first
    assert f().get() == second


def test_a_task_nobody_waits_for_still_reports_progress_and_completes():
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")
    f(double)(0).get()  # an idle worker: the task below is sent at once
    seen, done = [], threading.Event()
    h = f(report_later)(0.3)
    h.on_progress(seen.append)
    h.on_complete(lambda value: done.set())
    assert done.wait(WAIT)  # no get(): the reply is collected in the background
    assert seen == [0.5]
    assert h.get() == "reported"


def test_threads_racing_to_submit_wait_cancel_and_drop_lose_nothing():
    mp.configure_process_pool(2)
    f = mp.parallel(backend="process")
    dropped = []
    errors = []

    def client(k):
        try:
            for i in range(150):
                h = f(double)(i)
                way = (i + k) % 5
                if way == 0:
                    assert h.get() == 2 * i
                elif way == 1:
                    assert h.get(timeout=WAIT) == 2 * i
                elif way == 2:  # gives up at once, then waits again
                    try:
                        h.get(timeout=0.0001)
                    except mp.WaitTimeoutError:
                        pass
                    assert h.get(timeout=WAIT) == 2 * i
                elif way == 3:
                    h.cancel()
                    try:
                        assert h.get(timeout=WAIT) == 2 * i
                    except mp.TaskCancelledError:
                        pass
                else:  # nobody waits: collected in the background
                    dropped.append(h)
        except BaseException as exc:  # reported below, with its traceback
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not errors, errors[0]
    assert all(h.wait(WAIT) for h in dropped)
    assert sorted(h.get() for h in dropped) == sorted(
        2 * i for k in range(6) for i in range(150) if (i + k) % 5 == 4
    )
    assert _eventually(
        lambda: mp.get_process_pool_info()["active_tasks"] == 0
        and mp.get_process_pool_info()["queued_tasks"] == 0
    )
    assert mp.get_process_pool_info()["alive_workers"] <= 2
    assert f(double)(21).get() == 42


# ---- scheduling, metrics, progress, callbacks, dependencies, shutdown


def test_ten_thousand_small_tasks():
    f = mp.parallel_pool(backend="process")(double)
    handles = [f(i) for i in range(10_000)]
    assert [h.get(timeout=WAIT) for h in handles] == [2 * i for i in range(10_000)]


def test_parallel_map_with_processes_keeps_order_and_reports_the_item():
    assert mp.parallel_map(double, range(10_001), backend="process") == [
        2 * i for i in range(10_001)
    ]
    with pytest.raises(ZeroDivisionError) as info:
        mp.parallel_map(lambda x: 1 / (x - 300), range(1000), chunksize=64,
                        backend="process")
    assert "item 300" in " ".join(getattr(info.value, "__notes__", []))


def test_parallel_map_names_the_items_whose_worker_died():
    with pytest.raises(mp.WorkerCrashedError) as info:
        mp.parallel_map(exit_on_500, range(1000), chunksize=64, backend="process")
    assert info.value.exitcode == 3
    notes = getattr(info.value, "__notes__", [])
    ranges = [
        (int(first), int(last))
        for note in notes
        for first, last in re.findall(r"items (\d+) to (\d+)", note)
    ]
    assert any(first <= 500 <= last for first, last in ranges), notes
    assert mp.parallel_map(double, range(5), backend="process") == [0, 2, 4, 6, 8]


def test_priorities_order_with_one_worker():
    mp.configure_process_pool(1)
    f = mp.parallel_priority(backend="process")
    blocker = f(sleep_then).options(priority=10**6)(1.0)
    time.sleep(0.3)  # the blocker is running; the rest queue behind it
    order = [3, 1, 2, 3, 0, 2]
    handles = [f(stamp)(f"p{p}-{i}", priority=p) for i, p in enumerate(order)]
    blocker.get(timeout=WAIT)
    ran = sorted((h.get(timeout=WAIT) for h in handles), key=lambda r: r[1])
    assert [tag for tag, _ in ran] == ["p3-0", "p3-3", "p2-2", "p2-5", "p1-1", "p0-4"]


def test_metrics_are_measured_in_the_worker():
    mp.reset_metrics()
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")(sleep_then)
    mp.parallel(backend="process")(double)(0).get(timeout=WAIT)  # start the worker
    handles = [f(0.2) for _ in range(3)]
    for h in handles:
        h.get(timeout=WAIT)
    m = mp.get_metrics("sleep_then")
    assert m.total_tasks == 3 and m.completed_tasks == 3 and m.failed_tasks == 0
    assert 200 <= m.min_execution_time_ms < 400
    # Queue time is separate: the third task waited for the first two.
    assert m.total_queue_time_ms >= 400
    mp.parallel(backend="process")(raise_custom)("x").wait(WAIT)
    assert mp.get_metrics("raise_custom").failed_tasks == 1


def test_progress_reaches_callbacks_in_the_parent():
    seen = []
    parent = os.getpid()
    gate = threading.Event()

    def record(fraction):
        seen.append((fraction, os.getpid()))

    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")
    f(sleep_then)(0.3)  # holds the worker while we register the callback
    h = f(report_twice)().on_progress(record)
    h.on_complete(lambda _: gate.set())
    task_id = h.get(timeout=WAIT)
    assert gate.wait(WAIT)
    assert task_id == h.get_task_id()
    assert [s for s, _ in seen] == [0.25, 0.75]
    assert {p for _, p in seen} == {parent}
    assert h.get_progress() == 1.0


def test_callbacks_run_in_the_parent():
    got = []
    done = threading.Event()

    def on_complete(value):
        got.append((value, os.getpid()))
        done.set()

    mp.parallel(backend="process")(double)(5).on_complete(on_complete)
    assert done.wait(WAIT)
    assert got == [(10, os.getpid())]


def test_dependencies_mix_threads_and_processes():
    first = mp.parallel(sleep_then)(0.1, 5)  # a thread task
    combine = mp.parallel_with_deps(backend="process")(lambda deps, k: sum(deps) * k)
    second = combine(3, depends_on=[first])
    back = mp.parallel_with_deps(lambda deps: deps[0] + 1)(depends_on=[second])
    assert second.get(timeout=WAIT) == 15
    assert back.get(timeout=WAIT) == 16
    failing = mp.parallel(backend="process")(raise_custom)("dep")
    never = combine(1, depends_on=[failing])
    with pytest.raises(mp.DependencyError):
        never.get(timeout=WAIT)


def test_shutdown_stops_running_process_tasks():
    f = mp.parallel(backend="process")
    h = f(time.sleep)(100)
    assert _eventually(h.running)
    start = time.monotonic()
    assert mp.shutdown(timeout_secs=10.0) is True
    assert time.monotonic() - start < 5.0
    assert h.status() == "cancelled"
    with pytest.raises(mp.ShutdownError):
        f(double)(1)
    mp.reset_shutdown()
    assert f(double)(1).get(timeout=WAIT) == 2


def test_reconfiguring_keeps_every_task():
    mp.configure_process_pool(1)
    f = mp.parallel_pool(backend="process")(sleep_then)
    handles = [f(0.05, i) for i in range(8)]
    mp.configure_process_pool(2)
    assert [h.get(timeout=WAIT) for h in handles] == list(range(8))
    assert _eventually(lambda: mp.get_process_pool_info()["alive_workers"] <= 2)


def test_parallel_map_and_parallel_context_keep_a_decorated_backend():
    remote = mp.parallel(backend="process")(pid_of)
    assert os.getpid() not in mp.parallel_map(remote, range(4))
    assert set(mp.parallel_map(remote, range(4), backend="thread")) == {os.getpid()}
    with mp.ParallelContext() as ctx:
        elsewhere = ctx.submit(remote)
        here = ctx.submit(pid_of)
    assert elsewhere.get() != os.getpid()
    assert here.get() == os.getpid()


def test_parallel_map_names_the_chunk_of_an_item_that_cannot_be_pickled():
    items = list(range(10)) + [threading.Lock()] + list(range(10))
    with pytest.raises(TypeError) as info:
        mp.parallel_map(repr, items, chunksize=4, backend="process")
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "parallel_map items 8 to 11" in notes


def test_ctrl_c_while_the_reply_is_unpickled_leaves_the_result_to_the_task(run_python):
    result = run_python(
        """
        import os, signal, threading, time
        import makeParallel as mp

        def slow_restore(value):
            # Runs in this process, while get() unpickles the reply: Ctrl-C lands
            # here, once (the unpickling is done again after it).
            if not os.environ.get("INTERRUPTED"):
                os.environ["INTERRUPTED"] = "1"
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
            return value

        class SlowToUnpickle:
            def __init__(self, value):
                self.value = value
            def __reduce__(self):
                return (slow_restore, (self.value,))

        mp.configure_process_pool(1)
        f = mp.parallel(backend="process")
        f(os.getpid)().get()
        h = f(SlowToUnpickle)(42)
        try:
            h.get(10)
            print("not-interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        print(h.status(), h.get(10))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    interrupted, status, value = result.stdout.split()
    assert interrupted == "interrupted"
    # Done, or (if another thread happened to collect the reply) still being read:
    # never failed with the KeyboardInterrupt.
    assert status in ("done", "running")
    assert value == "42"


def test_ctrl_c_while_the_call_is_pickled_reaches_the_caller(run_python):
    result = run_python(
        """
        import os, signal, threading, time
        import makeParallel as mp

        class SlowToPickle:
            def __reduce__(self):
                time.sleep(0.6)
                return (int, (7,))

        mp.configure_process_pool(1)
        f = mp.parallel(backend="process")
        f(os.getpid)().get()
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            f(abs)(SlowToPickle())
            print("not-interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        # The call was sent whole (its arguments pickled again): the pool goes on.
        print(f(abs)(-3).get(10))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["interrupted", "3"]


class _StrRaises(Exception):
    def __str__(self):
        return f"bad key {self.key}"  # never set: str() raises AttributeError


def _raise_str_raises():
    raise _StrRaises()


def test_an_exception_whose_str_raises_comes_back_and_the_worker_survives():
    mp.configure_process_pool(1)
    f = mp.parallel(backend="process")
    worker = f(pid_of)().get()
    with pytest.raises(_StrRaises):
        f(_raise_str_raises)().get(WAIT)
    assert f(pid_of)().get(WAIT) == worker


@pytest.mark.parametrize("options, level", [((), "0"), (("-O",), "1"), (("-OO",), "2")])
def test_workers_run_with_the_parents_optimisation_level_and_no_stdin(
    run_python, options, level
):
    result = run_python(
        """
        import sys
        import makeParallel as mp

        def probe(_):
            return sys.flags.optimize, sys.stdin.read(1) == ""

        print(*mp.parallel(backend="process")(probe)(0).get(30))
        """,
        timeout=60,
        options=options,
        stdin="the parent's input\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [level, "True"]


def test_a_function_that_cannot_travel_by_value_says_so(run_python):
    result = run_python(
        """
        import threading
        import makeParallel as mp

        lock = threading.Lock()

        def work(x):
            with lock:
                return x * 2

        try:
            mp.parallel(backend="process")(work)(1).get(30)
        except TypeError as exc:
            print(exc)
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "cannot send work to a worker process" in result.stdout
    assert "globals" in result.stdout

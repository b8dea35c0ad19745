"""Shared fixtures for the makeParallel test suite.

Every test gets the library back in a sane state: blocked tasks are
released, the priority worker is stopped with its queue cancelled, the
global pool is rebuilt with its defaults and metrics are cleared. Tests
that wait always pass a timeout, so a broken implementation fails quickly
instead of hanging until pytest-timeout fires.
"""

import os
import subprocess
import sys
import textwrap
import threading
import time

import makeParallel as mp
import pytest

#: Seconds a test waits for something that should happen at once.
WAIT = 10.0

#: The decorators that turn a call into a task and return an AsyncHandle.
TASK_DECORATOR_NAMES = (
    "parallel",
    "parallel_fast",
    "parallel_pool",
    "parallel_priority",
)

#: Task decorators that queue tasks (so a task can be observed as pending).
QUEUEING_DECORATOR_NAMES = ("parallel_pool", "parallel_priority")


@pytest.fixture(params=TASK_DECORATOR_NAMES)
def task_decorator(request):
    """Each task decorator in turn."""
    return getattr(mp, request.param)


@pytest.fixture(params=QUEUEING_DECORATOR_NAMES)
def queueing_decorator(request):
    """A task decorator whose tasks wait in a queue for a free worker."""
    return getattr(mp, request.param)


@pytest.fixture(autouse=True)
def _restore_global_state():
    yield
    mp.stop_priority_worker(cancel_pending=True)
    # Let tasks released at teardown finish, so that they do not record
    # metrics into the next test. Bounded: a stuck task was already reported.
    deadline = time.monotonic() + 5.0
    while _tasks_in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    mp.configure_thread_pool()
    mp.reset_metrics()


def _tasks_in_flight():
    pool = mp.get_thread_pool_info()
    cache = mp.get_thread_cache_info()
    busy_cache_threads = cache["current_threads"] - cache["idle_threads"]
    return (
        pool["active_tasks"]
        + pool["queued_tasks"]
        + cache["queued_tasks"]
        + busy_cache_threads
        + mp.get_priority_queue_info()["queued_tasks"]
    ) > 0


class Gate:
    """Holds tasks inside their code until the test opens it.

    `enter()` is called by the task; the test waits with `wait_entered(n)`
    until n tasks are inside, so it knows they are running, then `open()`
    lets them finish. Waiting on a `threading.Event` releases the GIL.
    """

    def __init__(self):
        self._opened = threading.Event()
        self._lock = threading.Lock()
        self._entered = 0
        self._changed = threading.Condition(self._lock)

    def enter(self, timeout=60.0):
        with self._lock:
            self._entered += 1
            self._changed.notify_all()
        self._opened.wait(timeout)

    def wait_entered(self, count=1, timeout=WAIT):
        with self._lock:
            done = self._changed.wait_for(lambda: self._entered >= count, timeout)
        assert done, f"only {self._entered} of {count} tasks started in {timeout}s"

    @property
    def entered(self):
        with self._lock:
            return self._entered

    def open(self):
        self._opened.set()


@pytest.fixture
def gate():
    """A `Gate` that is always opened when the test ends."""
    g = Gate()
    yield g
    g.open()


@pytest.fixture
def block_pool(gate):
    """Occupies every worker of a one-thread global pool with a gated task.

    Returns the gate; tasks submitted to `@parallel_pool` afterwards stay
    queued until the gate opens.
    """
    mp.configure_thread_pool(num_threads=1)
    blocker = mp.parallel_pool(gate.enter)()
    gate.wait_entered(1)
    yield gate
    gate.open()
    blocker.wait(WAIT)


@pytest.fixture
def block_priority_worker(gate):
    """Restarts the priority dispatcher with one worker and occupies it.

    Returns the gate; `@parallel_priority` tasks submitted afterwards stay
    queued until the gate opens.
    """
    mp.stop_priority_worker()
    mp.start_priority_worker(num_workers=1)
    blocker = mp.parallel_priority(gate.enter)(priority=2**63 - 1)
    gate.wait_entered(1)
    yield gate
    gate.open()
    blocker.wait(WAIT)


@pytest.fixture
def block_queue(request, queueing_decorator):
    """The blocking fixture that fits `queueing_decorator`."""
    name = queueing_decorator.__name__
    fixture = "block_pool" if name == "parallel_pool" else "block_priority_worker"
    return request.getfixturevalue(fixture)


def wait_until(predicate, timeout=WAIT, interval=0.005):
    """Polls `predicate` until it is true; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def until():
    """The `wait_until` helper, as a fixture."""
    return wait_until


def os_thread_count():
    """Number of OS threads of this process, C++ workers included."""
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def thread_count():
    """The `os_thread_count` helper, as a fixture."""
    return os_thread_count


@pytest.fixture
def run_python(tmp_path):
    """Runs a Python script in a fresh interpreter and returns the result.

    The script is dedented; `timeout` bounds the whole run (a hang fails
    the test with `subprocess.TimeoutExpired`); `options` go to the
    interpreter before the script; `stdin` is all the script can read.
    """

    def run(code, timeout=30.0, env=None, options=(), stdin=""):
        script = tmp_path / "script.py"
        script.write_text(textwrap.dedent(code))
        return subprocess.run(
            [sys.executable, *options, str(script)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(tmp_path),
            env=env,
        )

    return run


class ExecutionLog:
    """Thread-safe record of which task keys ran and how often."""

    def __init__(self):
        self._lock = threading.Lock()
        self.order = []

    def record(self, key):
        with self._lock:
            self.order.append(key)
        return key

    def count(self, key):
        with self._lock:
            return self.order.count(key)

    def snapshot(self):
        with self._lock:
            return list(self.order)


@pytest.fixture
def log():
    """A fresh `ExecutionLog`."""
    return ExecutionLog()

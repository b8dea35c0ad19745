"""Shared handles and functions hammered from many threads at once.

Written for free-threaded CPython (PEP 703), where nothing serialises the
binding's Python-facing state: many threads submit, cancel, register
callbacks, read metrics and resize the pool at the same moment, on the same
handles and functions. Every count is exact (each task ends in one final
status, each callback fires once, metric totals equal the executions), and
every wait is bounded. The file runs on GIL builds too, where it must pass
just the same; it takes well under a minute on two cores.
"""

import functools
import random
import sys
import threading

import makeParallel as mp
import pytest
from conftest import WAIT

#: Threads that hammer at once; several times the cores, to force interleaving.
THREADS = 8
#: The statuses a settled task may end in.
FINAL = {"done", "failed", "cancelled", "timed_out"}

pytestmark = pytest.mark.timeout(60)


def test_free_threaded_build_keeps_the_gil_off():
    # Importing the package must not switch the GIL back on (the extension
    # declares free-threading support). Meaningless, so skipped, with a GIL.
    if not getattr(sys, "_is_gil_enabled", None) or not _free_threaded_build():
        pytest.skip("not a free-threaded CPython build")
    assert sys._is_gil_enabled() is False


def _free_threaded_build():
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


class Tally:
    """A lock-protected counter per key."""

    def __init__(self):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.counts = {}

    def add(self, key, n=1):
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + n
            self._changed.notify_all()

    def total(self):
        with self._lock:
            return sum(self.counts.values())

    def wait_total(self, expected, timeout=WAIT):
        with self._lock:
            reached = self._changed.wait_for(
                lambda: sum(self.counts.values()) >= expected, timeout
            )
        assert reached, f"only {self.total()} of {expected} events in {timeout}s"


def _tick(tally, key, _ignored):
    """A callback that counts one event under `key`, whatever it is passed."""
    tally.add(key)


def run_threads(targets, timeout=45.0):
    """Starts one thread per callable, all released together, and joins them.

    Re-raises the first exception a thread raised; fails if one is still
    running after `timeout`.
    """
    barrier = threading.Barrier(len(targets))
    errors = []

    def body(target):
        try:
            barrier.wait(WAIT)
            target()
        except Exception as exc:  # noqa: BLE001 - re-raised by the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a thread ran over {timeout}s"
    if errors:
        raise errors[0]


def test_submit_cancel_callbacks_metrics_and_resizing_at_once():
    per_thread = 250
    executed = Tally()  # "ok" / "raised" per execution of the code
    done_calls = Tally()  # task id -> add_done_callback calls
    complete_calls = Tally()  # task id -> on_complete calls
    seen_status = {}  # task id -> status seen by the done callback
    cancels = Tally()  # task id -> cancel() calls that returned True
    handles = []
    handles_lock = threading.Lock()
    stop = threading.Event()

    @mp.parallel_pool
    def stress_work(i):
        total = sum(range(200))  # a little pure-Python work
        if i % 7 == 0:
            executed.add("raised")
            raise ValueError(i)
        executed.add("ok")
        return total + i

    def on_done(handle):
        done_calls.add(handle.get_task_id())
        seen_status[handle.get_task_id()] = handle.status()

    def submitter(seed):
        rng = random.Random(seed)
        for n in range(per_thread):
            h = stress_work(seed * per_thread + n)
            with handles_lock:
                handles.append(h)
                # A handle of any thread, maybe still queued, maybe running.
                other = rng.choice(handles)
            # Callbacks on our handle and on a shared one; both fire once.
            h.add_done_callback(on_done)
            h.on_complete(functools.partial(_tick, complete_calls, h.get_task_id()))
            if rng.random() < 0.3 and other.cancel():
                cancels.add(other.get_task_id())

    def metrics_reader():
        last = 0
        while not stop.is_set():
            m = mp.get_metrics(stress_work)
            if m is not None:
                assert m.total_tasks == m.completed_tasks + m.failed_tasks
                assert m.total_tasks >= last, "a metric total went backwards"
                last = m.total_tasks
            everything = mp.get_all_metrics()
            assert everything["_global_total"] >= 0

    def resizer():
        sizes = [1, 3, 2, 4]
        i = 0
        while not stop.is_set():
            mp.configure_thread_pool(num_threads=sizes[i % len(sizes)])
            mp.get_thread_pool_info()
            i += 1
            stop.wait(0.002)

    watcher_errors = []
    watchers = [
        threading.Thread(target=_capturing(f, watcher_errors), daemon=True)
        for f in (metrics_reader, resizer)
    ]
    for w in watchers:
        w.start()
    try:
        run_threads([lambda s=s: submitter(s) for s in range(THREADS)])
    finally:
        stop.set()
        for w in watchers:
            w.join(WAIT)
    assert not watcher_errors, watcher_errors[0]

    # Every task settles in exactly one final status, the one its callback saw.
    assert len(handles) == THREADS * per_thread
    for h in handles:
        assert h.wait(WAIT), f"{h!r} never settled"
    done_calls.wait_total(len(handles))
    statuses = {h.get_task_id(): h.status() for h in handles}
    assert set(statuses.values()) <= FINAL
    assert set(done_calls.counts.values()) == {1}
    assert seen_status == statuses

    # A successful cancel() happens at most once per task, only for cancelled ones.
    cancelled = {tid for tid, s in statuses.items() if s == "cancelled"}
    assert set(cancels.counts) == cancelled
    assert set(cancels.counts.values()) <= {1}

    # on_complete fires once for each task that succeeded, never for the others.
    succeeded = {tid for tid, s in statuses.items() if s == "done"}
    complete_calls.wait_total(len(succeeded))
    assert set(complete_calls.counts) == succeeded
    assert set(complete_calls.counts.values()) <= {1}

    # The metrics count every execution, including ones whose outcome a
    # cancel settled while the code was running.
    m = mp.get_metrics(stress_work)
    assert m.completed_tasks == executed.counts.get("ok", 0)
    assert m.failed_tasks == executed.counts.get("raised", 0)
    assert m.total_tasks == executed.total()
    failed = {tid for tid, s in statuses.items() if s == "failed"}
    assert len(failed) <= m.failed_tasks


def _capturing(run, errors):
    def wrapped():
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - re-raised by the test's own thread
            errors.append(exc)

    return wrapped


def test_parallel_map_from_many_threads_while_the_pool_resizes():
    stop = threading.Event()

    def cube(x):
        return x * x * x

    def mapper(seed):
        items = list(range(seed, seed + 4000))
        for _ in range(3):
            assert mp.parallel_map(cube, items) == [cube(x) for x in items]

    def resizer():
        i = 0
        while not stop.is_set():
            mp.configure_thread_pool(num_threads=1 + i % 3)
            i += 1
            stop.wait(0.005)

    w = threading.Thread(target=resizer, daemon=True)
    w.start()
    try:
        run_threads([lambda s=s: mapper(s) for s in range(THREADS)])
    finally:
        stop.set()
        w.join(WAIT)


def test_lazily_created_metadata_is_shared_by_racing_threads(gate):
    # The first set_metadata creates the handle's dict; racing first writers
    # must all end up in the same one.
    handles = [mp.parallel(gate.enter)() for _ in range(100)]
    try:
        for h in handles:
            run_threads([lambda k=k, h=h: h.set_metadata(k, k) for k in range(THREADS)])
            assert h.get_all_metadata() == {k: k for k in range(THREADS)}
    finally:
        gate.open()
    for h in handles:
        assert h.wait(WAIT)


#: The two errors of the dependencies that fail together.
DEPENDENCY_ERRORS = (ValueError, KeyError)


@mp.parallel
def _fail_when(go, kind):
    go.wait(WAIT)
    raise DEPENDENCY_ERRORS[kind]("boom")


@mp.parallel_with_deps
def _dependent(results):
    return results


def test_dependencies_failing_together_fail_the_dependent_once():
    # Both dependencies fail at the same moment, on two threads, so their
    # hooks race to fail the dependent task: exactly one must win.
    for _ in range(200):
        go = threading.Event()
        fired = Tally()
        a, b = _fail_when(go, 0), _fail_when(go, 1)
        c = _dependent(depends_on=[a, b])
        c.add_done_callback(functools.partial(_tick, fired, c.get_task_id()))
        go.set()

        with pytest.raises(mp.DependencyError) as info:
            c.get(WAIT)
        assert isinstance(info.value.__cause__, DEPENDENCY_ERRORS)
        assert c.status() == "failed"
        fired.wait_total(1)
        assert fired.counts == {c.get_task_id(): 1}


def test_interrupting_cancels_never_hit_another_task():
    # cancel(interrupt=True) races with tasks finishing on the same two pool
    # threads. An interrupt that lands after its task returned would raise in
    # the next task on that thread, which would then end "cancelled" without
    # anyone having cancelled it.
    mp.configure_thread_pool(num_threads=2)

    @mp.parallel_pool
    def short(i):
        total = 0
        for k in range(20_000):  # about a millisecond of bytecode
            total += k
        return total + i

    handles = [short(i) for i in range(300)]
    victims = random.Random(7).sample(handles, 120)

    def canceller(part):
        for h in part:
            # Catch it running if we can (that is the race), else as it is.
            for _ in range(100_000):
                if h.running() or h.is_ready():
                    break
            h.cancel(interrupt=True)

    # With a GIL, hand it over often so cancels land inside the tasks' code.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        run_threads([lambda p=victims[i::2]: canceller(p) for i in range(2)])
        for h in handles:
            assert h.wait(WAIT)
    finally:
        sys.setswitchinterval(interval)
    wrongly = [h for h in handles if h.status() == "cancelled" and not h.is_cancelled()]
    assert not wrongly, f"{len(wrongly)} tasks were interrupted without a cancel"
    for h in set(handles) - set(victims):
        assert h.status() == "done"

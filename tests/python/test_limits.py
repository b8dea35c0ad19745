"""`set_max_concurrent_tasks` and `configure_memory_limit` (API §9)."""

import math
import threading
import time

import makeParallel as mp
import pytest
from conftest import WAIT, wait_until

#: The smallest legal memory limit worth using: surely below any real usage.
TINY_MEMORY_PERCENT = 0.01


@pytest.fixture(autouse=True)
def _no_limits():
    yield
    mp.set_max_concurrent_tasks(None)
    mp.configure_memory_limit(None)


class ConcurrencyProbe:
    """Counts how many tasks are inside `run()` at once, and the maximum."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current = 0
        self.highest = 0

    def run(self, value):
        with self._lock:
            self.current += 1
            self.highest = max(self.highest, self.current)
        time.sleep(0.001)
        with self._lock:
            self.current -= 1
        return value


def start_submitter(function, *args):
    """Submits `function(*args)` from a new thread; returns (thread, handles)."""
    handles = []
    thread = threading.Thread(target=lambda: handles.append(function(*args)))
    thread.start()
    return thread, handles


def assert_blocked(thread):
    thread.join(0.1)
    assert thread.is_alive(), "the submission was not blocked by the limit"


# set_max_concurrent_tasks --------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
@pytest.mark.parametrize(
    "decorator", ["parallel", "parallel_pool", "parallel_with_deps"]
)
def test_concurrency_never_exceeds_the_limit(decorator, limit):
    mp.configure_thread_pool(num_threads=8)
    mp.set_max_concurrent_tasks(limit)
    probe = ConcurrencyProbe()
    options = {}
    if decorator == "parallel_with_deps":
        task = mp.parallel_with_deps(lambda results, i: probe.run(i))
        options["depends_on"] = [mp.parallel(abs)(0)]
    else:
        task = getattr(mp, decorator)(probe.run)
    results = [[] for _ in range(4)]

    def submit_many(out, base):
        for i in range(base, base + 250):
            out.append(task(i, **options))

    submitters = [
        threading.Thread(target=submit_many, args=(out, 250 * n))
        for n, out in enumerate(results)
    ]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join(60)
        assert not t.is_alive()

    values = sorted(h.get(WAIT) for out in results for h in out)
    assert values == list(range(1000))
    assert probe.highest <= limit


def test_limit_counts_tasks_of_every_decorator_together(gate):
    mp.set_max_concurrent_tasks(2)
    first = mp.parallel(gate.enter)()
    second = mp.parallel_pool(gate.enter)()
    gate.wait_entered(2)

    thread, handles = start_submitter(mp.parallel_priority(lambda: "third"))

    assert_blocked(thread)
    gate.open()
    thread.join(WAIT)
    assert handles[0].get(WAIT) == "third"
    first.get(WAIT)
    second.get(WAIT)


def test_blocked_submitter_is_released_when_a_slot_frees(task_decorator, gate):
    mp.set_max_concurrent_tasks(1)
    blocker = task_decorator(gate.enter)()
    gate.wait_entered(1)

    thread, handles = start_submitter(task_decorator(abs), -4)

    assert_blocked(thread)
    assert handles == []
    gate.open()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert handles[0].get(WAIT) == 4
    blocker.get(WAIT)


def test_parallel_map_chunks_count_against_the_limit(gate):
    mp.set_max_concurrent_tasks(1)
    blocker = mp.parallel_pool(gate.enter)()
    gate.wait_entered(1)

    thread, results = start_submitter(mp.parallel_map, abs, [-1, -2, -3])

    assert_blocked(thread)
    assert results == []
    gate.open()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert results == [[1, 2, 3]]
    blocker.get(WAIT)


def test_a_cancelled_queued_task_frees_its_slot(block_pool):
    # Tasks already in flight count against a new limit: the blocker and `queued`
    # fill both slots.
    mp.set_max_concurrent_tasks(2)
    queued = mp.parallel_pool(lambda: "queued")()

    thread, handles = start_submitter(mp.parallel(lambda: "next"))
    assert_blocked(thread)
    queued.cancel()

    thread.join(WAIT)
    assert handles[0].get(WAIT) == "next"


def test_tasks_already_in_flight_count_against_a_new_limit(gate):
    running = [mp.parallel(gate.enter)() for _ in range(3)]
    gate.wait_entered(3)

    mp.set_max_concurrent_tasks(2)
    thread, handles = start_submitter(mp.parallel(abs), -5)

    # Three are in flight, more than the new limit: the submission waits
    # until the count drops below it.
    assert_blocked(thread)
    gate.open()
    thread.join(WAIT)
    assert handles[0].get(WAIT) == 5
    for handle in running:
        handle.get(WAIT)


def test_raising_the_limit_releases_blocked_submitters(gate):
    mp.set_max_concurrent_tasks(1)
    mp.parallel(gate.enter)()
    gate.wait_entered(1)
    submitters = [start_submitter(mp.parallel(gate.enter)) for _ in range(3)]
    for thread, _ in submitters:
        assert_blocked(thread)

    mp.set_max_concurrent_tasks(4)

    gate.wait_entered(4)
    gate.open()
    for thread, handles in submitters:
        thread.join(WAIT)
        assert handles[0].get(WAIT) is None


def test_none_removes_the_limit(gate):
    mp.set_max_concurrent_tasks(1)
    mp.parallel(gate.enter)()
    gate.wait_entered(1)
    thread, handles = start_submitter(mp.parallel(gate.enter))
    assert_blocked(thread)

    mp.set_max_concurrent_tasks(None)

    thread.join(WAIT)
    more = [mp.parallel(gate.enter)() for _ in range(5)]
    gate.wait_entered(7)
    gate.open()
    assert [h.get(WAIT) for h in handles + more] == [None] * 6


def test_lowering_the_limit_lets_running_tasks_finish(gate):
    mp.set_max_concurrent_tasks(3)
    running = [mp.parallel(gate.enter)() for _ in range(3)]
    gate.wait_entered(3)

    mp.set_max_concurrent_tasks(1)
    thread, handles = start_submitter(mp.parallel(lambda: "after"))

    assert_blocked(thread)
    gate.open()
    assert [h.get(WAIT) for h in running] == [None] * 3
    thread.join(WAIT)
    assert handles[0].get(WAIT) == "after"


def test_failed_and_cancelled_tasks_give_their_slots_back(gate):
    mp.set_max_concurrent_tasks(1)

    def fail():
        raise ValueError("no")

    with pytest.raises(ValueError):
        mp.parallel(fail)().get(WAIT)
    running = mp.parallel(lambda: gate.enter() or mp.check_cancelled())()
    gate.wait_entered(1)
    running.cancel()
    gate.open()
    wait_until(lambda: not running.running())

    assert mp.parallel(lambda: "free")().get(WAIT) == "free"


@pytest.mark.parametrize("refusal", ["memory", "shutdown"])
def test_a_refused_submission_does_not_keep_a_slot(run_python, refusal):
    # In a fresh interpreter: a leaked slot would block every later test here.
    result = run_python(
        f"""
        import threading
        import makeParallel as mp

        mp.set_max_concurrent_tasks(1)
        if {refusal!r} == "memory":
            mp.configure_memory_limit({TINY_MEMORY_PERCENT})
        else:
            mp.shutdown(timeout_secs=5)
        try:
            mp.parallel(abs)(-1)
        except (MemoryError, mp.ShutdownError) as error:
            print("refused:", type(error).__name__)
        mp.configure_memory_limit(None)
        mp.reset_shutdown()

        handles = []
        submitter = threading.Thread(
            target=lambda: handles.append(mp.parallel(abs)(-2)), daemon=True
        )
        submitter.start()
        submitter.join({WAIT})
        print("result:", handles[0].get({WAIT}) if handles else "still blocked")
        """
    )

    expected = "MemoryError" if refusal == "memory" else "ShutdownError"
    assert result.stdout.splitlines() == [f"refused: {expected}", "result: 2"], (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize(
    "value, error",
    [
        (0, ValueError),
        (-1, ValueError),
        (2**40, ValueError),
        (1.5, TypeError),
        (2.0, TypeError),
        (True, TypeError),
        ("2", TypeError),
    ],
)
def test_set_max_concurrent_tasks_rejects_bad_values(gate, value, error):
    mp.set_max_concurrent_tasks(1)
    mp.parallel(gate.enter)()
    gate.wait_entered(1)

    with pytest.raises(error, match="^n must"):
        mp.set_max_concurrent_tasks(value)

    # The old limit of 1 still holds.
    thread, _ = start_submitter(mp.parallel(abs), -1)
    assert_blocked(thread)
    gate.open()
    thread.join(WAIT)


# configure_memory_limit ------------------------------------------------------------


@pytest.mark.parametrize(
    "value, error",
    [
        (0, ValueError),
        (0.0, ValueError),
        (-5, ValueError),
        (100.0001, ValueError),
        (101, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("50", TypeError),
        (True, TypeError),
        ([50], TypeError),
    ],
)
def test_configure_memory_limit_rejects_bad_values(value, error):
    with pytest.raises(error, match="max_memory_percent"):
        mp.configure_memory_limit(value)

    assert mp.parallel(abs)(-1).get(WAIT) == 1


@pytest.mark.parametrize("value", [100, 100.0, TINY_MEMORY_PERCENT, 50])
def test_configure_memory_limit_accepts_values_in_range(value):
    mp.configure_memory_limit(value)


def test_submissions_work_under_a_limit_above_current_use(task_decorator):
    mp.configure_memory_limit(100)

    assert task_decorator(abs)(-6).get(WAIT) == 6


#: Ways to submit `f`; `done` is a finished handle to depend on.
SUBMITTERS = {
    "parallel": lambda f, done: mp.parallel(f)(),
    "parallel_fast": lambda f, done: mp.parallel_fast(f)(),
    "parallel_pool": lambda f, done: mp.parallel_pool(f)(),
    "parallel_priority": lambda f, done: mp.parallel_priority(f)(),
    "parallel_with_deps": lambda f, done: mp.parallel_with_deps(lambda r: f())(
        depends_on=[done]
    ),
    "parallel_map": lambda f, done: mp.parallel_map(lambda x: f(), [1, 2, 3]),
}


@pytest.mark.parametrize("how", sorted(SUBMITTERS))
def test_submissions_raise_memory_error_above_the_limit(how, log):
    done = mp.parallel(abs)(0)
    assert done.wait(WAIT)
    before = mp.get_active_task_count()
    mp.configure_memory_limit(TINY_MEMORY_PERCENT)

    with pytest.raises(MemoryError, match="configure_memory_limit"):
        SUBMITTERS[how](lambda: log.record("ran"), done)

    assert mp.get_active_task_count() == before
    mp.configure_memory_limit(None)
    assert log.snapshot() == []


def test_tasks_submitted_before_the_limit_are_not_affected(gate):
    handle = mp.parallel(lambda: (gate.enter(), "kept")[1])()
    gate.wait_entered(1)
    mp.configure_memory_limit(TINY_MEMORY_PERCENT)

    gate.open()

    assert handle.get(WAIT) == "kept"


def test_none_turns_the_memory_limit_off(task_decorator):
    mp.configure_memory_limit(TINY_MEMORY_PERCENT)
    with pytest.raises(MemoryError):
        task_decorator(abs)(-1)

    mp.configure_memory_limit(None)

    assert task_decorator(abs)(-2).get(WAIT) == 2


def test_raising_the_memory_limit_takes_effect_at_once():
    mp.configure_memory_limit(TINY_MEMORY_PERCENT)
    with pytest.raises(MemoryError):
        mp.parallel(abs)(-1)

    mp.configure_memory_limit(100)

    assert mp.parallel(abs)(-3).get(WAIT) == 3

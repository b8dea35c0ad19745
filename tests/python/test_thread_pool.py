"""API §2 and §5: the global pool, its configuration, the thread cache, idle CPU."""

import ast
import itertools
import os
import threading
import time

import makeParallel as mp
import pytest
from conftest import WAIT, os_thread_count, wait_until

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
#: Slack allowed between a requested and a measured stack size (guard pages).
STACK_SLACK = 64 * 1024


def _stack_fits(requested, measured):
    """Whether a measured worker stack size honours the requested one.

    glibc hands a new thread a cached stack of an exited thread when it is
    at least the requested size and at most four times it, so inside a
    long-running process the measured size may exceed the request.
    """
    return requested - STACK_SLACK <= measured <= 4 * requested + STACK_SLACK


# Idle costs no CPU (§2) ---------------------------------------------------------


def test_idle_waiting_get_uses_no_cpu(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)

    before = time.process_time()
    with pytest.raises(TimeoutError):
        handle.get(timeout=1.0)
    used = time.process_time() - before

    assert used < 0.2, f"{used:.3f}s of CPU while waiting idle for 1s"


def test_idle_waiting_wait_uses_no_cpu(task_decorator, gate):
    handle = task_decorator(gate.enter)()
    gate.wait_entered(1)

    before = time.process_time()
    assert handle.wait(1.0) is False
    used = time.process_time() - before

    assert used < 0.2, f"{used:.3f}s of CPU while waiting idle for 1s"


@pytest.mark.parametrize("how", ["get", "wait"])
def test_blocked_caller_lets_other_python_threads_run(task_decorator, how):
    # The task finishes only after a plain Python thread has run Python code
    # while the main thread is blocked, so a waiter holding the GIL would
    # time out here.
    counted = threading.Event()

    def count_then_signal():
        total = 0
        for i in range(200_000):
            total += i
        counted.set()

    def wait_for_counter():
        return counted.wait(WAIT)

    handle = task_decorator(wait_for_counter)()
    counter = threading.Timer(0.1, count_then_signal)
    counter.start()
    try:
        if how == "get":
            assert handle.get(WAIT) is True
        else:
            assert handle.wait(WAIT) is True
    finally:
        counter.join(WAIT)
    assert counted.is_set()


def test_idle_workers_use_no_cpu():
    mp.configure_thread_pool(num_threads=8)
    mp.start_priority_worker(num_workers=2)
    assert mp.parallel_pool(abs)(-1).get(WAIT) == 1
    assert mp.parallel(abs)(-1).get(WAIT) == 1
    assert mp.parallel_priority(abs)(-1).get(WAIT) == 1

    before = time.process_time()
    time.sleep(1.0)
    used = time.process_time() - before

    assert used < 0.2, f"{used:.3f}s of CPU used by idle workers in 1s"


# configure_thread_pool / get_thread_pool_info --------------------------------------


def test_default_size_is_the_cpus_this_process_may_use():
    mp.configure_thread_pool()
    info = mp.get_thread_pool_info()
    assert info["current_num_threads"] == len(os.sched_getaffinity(0))


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell them apart"
)
def test_default_size_follows_cpu_affinity_not_machine_size(run_python):
    result = run_python(
        """
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        import makeParallel as mp
        mp.configure_thread_pool()
        print(mp.get_thread_pool_info()["current_num_threads"])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_configured_flag_is_false_until_configure_is_called(run_python):
    result = run_python(
        """
        import makeParallel as mp
        print(mp.get_thread_pool_info()["configured"])
        mp.configure_thread_pool(num_threads=2)
        print(mp.get_thread_pool_info()["configured"])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_pool_info_has_the_documented_keys():
    mp.configure_thread_pool(num_threads=3, stack_size=4 * MIB)
    info = mp.get_thread_pool_info()

    assert info["configured"] is True
    assert info["current_num_threads"] == 3
    assert info["stack_size"] == 4 * MIB
    assert isinstance(info["active_tasks"], int)
    assert isinstance(info["queued_tasks"], int)


def test_configured_number_of_threads_run_at_once():
    mp.configure_thread_pool(num_threads=3)
    barrier = threading.Barrier(3, timeout=WAIT)

    handles = [mp.parallel_pool(barrier.wait)() for _ in range(3)]

    assert sorted(h.get(WAIT) for h in handles) == [0, 1, 2]


def test_pool_info_counts_active_and_queued_tasks(gate):
    mp.configure_thread_pool(num_threads=2)
    handles = [mp.parallel_pool(gate.enter)() for _ in range(5)]
    gate.wait_entered(2)

    info = mp.get_thread_pool_info()
    assert info["active_tasks"] == 2
    assert info["queued_tasks"] == 3
    gate.open()
    assert all(h.wait(WAIT) for h in handles)
    wait_until(lambda: mp.get_thread_pool_info()["active_tasks"] == 0)
    assert mp.get_thread_pool_info()["queued_tasks"] == 0


def test_pool_never_runs_more_tasks_at_once_than_it_has_threads():
    mp.configure_thread_pool(num_threads=2)
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def work():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1
        return threading.get_ident()

    idents = {h.get(WAIT) for h in [mp.parallel_pool(work)() for _ in range(40)]}

    assert peak[0] == 2
    assert len(idents) <= 2


@pytest.mark.parametrize("value", [True, 2.5, "4", 4.0])
def test_num_threads_of_wrong_type_is_type_error(value):
    with pytest.raises(TypeError, match="num_threads"):
        mp.configure_thread_pool(num_threads=value)


@pytest.mark.parametrize("value", [0, -1, 10**9])
def test_num_threads_out_of_range_is_value_error(value):
    with pytest.raises(ValueError, match="num_threads"):
        mp.configure_thread_pool(num_threads=value)


@pytest.mark.parametrize("value", [True, 2.5 * MIB, str(2 * MIB)])
def test_stack_size_of_wrong_type_is_type_error(value):
    with pytest.raises(TypeError, match="stack_size"):
        mp.configure_thread_pool(num_threads=2, stack_size=value)


@pytest.mark.parametrize(
    "value", [0, -PAGE, PAGE, 4 * PAGE, 4 * MIB + 1, 4 * MIB + PAGE // 2]
)
def test_stack_size_too_small_or_not_page_multiple_is_value_error(value):
    with pytest.raises(ValueError, match="stack_size"):
        mp.configure_thread_pool(num_threads=2, stack_size=value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_threads": 0},
        {"num_threads": True},
        {"num_threads": 2, "stack_size": PAGE},
        {"num_threads": 2, "stack_size": "big"},
    ],
    ids=repr,
)
def test_bad_values_change_nothing(kwargs):
    mp.configure_thread_pool(num_threads=3, stack_size=8 * MIB)

    with pytest.raises((TypeError, ValueError)):
        mp.configure_thread_pool(**kwargs)

    info = mp.get_thread_pool_info()
    assert info["current_num_threads"] == 3
    assert info["stack_size"] == 8 * MIB
    sizes = {h.get(WAIT) for h in _stack_size_probes(6)}
    assert all(_stack_fits(8 * MIB, size) for size in sizes), sizes


def _stack_size_probes(count):
    return [
        mp.parallel_pool(mp._core.current_thread_stack_size)() for _ in range(count)
    ]


def test_current_thread_stack_size_is_positive_on_the_main_thread():
    assert mp._core.current_thread_stack_size() > 0


@pytest.mark.parametrize("size", [2 * MIB, 4 * MIB, 16 * MIB, 64 * MIB])
def test_stack_size_is_applied_to_the_worker_threads(size):
    mp.configure_thread_pool(num_threads=2, stack_size=size)

    measured = [h.get(WAIT) for h in _stack_size_probes(8)]

    assert all(_stack_fits(size, m) for m in measured), (size, measured)
    assert mp.get_thread_pool_info()["stack_size"] == size


@pytest.mark.parametrize("size", [1 * MIB, 2 * MIB, 3 * MIB, 32 * MIB])
def test_stack_size_is_exact_in_a_fresh_process(run_python, size):
    result = run_python(
        f"""
        import makeParallel as mp
        mp.configure_thread_pool(num_threads=2, stack_size={size})
        probe = mp.parallel_pool(mp._core.current_thread_stack_size)
        print(sorted({{probe().get(10) for _ in range(6)}}))
        """
    )
    assert result.returncode == 0, result.stderr
    measured = ast.literal_eval(result.stdout)
    assert all(abs(m - size) <= STACK_SLACK for m in measured), (size, measured)


# Reconfiguring while busy ------------------------------------------------------


def test_reconfigure_while_tasks_run_and_wait_loses_nothing(gate, log):
    mp.configure_thread_pool(num_threads=2)

    def work(i):
        if i < 2:
            gate.enter()
        return log.record(i)

    handles = [mp.parallel_pool(work)(i) for i in range(300)]
    gate.wait_entered(2)
    mp.configure_thread_pool(num_threads=4)
    assert handles[0].status() == "running"
    gate.open()

    assert [h.get(WAIT) for h in handles] == list(range(300))
    assert sorted(log.snapshot()) == list(range(300))


def test_reconfigure_repeatedly_during_submission_runs_each_task_once(log):
    stop = threading.Event()

    def reconfigure():
        for size in itertools.cycle([1, 3, 2, 4]):
            if stop.is_set():
                return
            mp.configure_thread_pool(num_threads=size)
            time.sleep(0.002)

    worker = threading.Thread(target=reconfigure)
    worker.start()
    try:
        handles = [mp.parallel_pool(log.record)(i) for i in range(3000)]
        results = [h.get(WAIT) for h in handles]
    finally:
        stop.set()
        worker.join(WAIT)

    assert results == list(range(3000))
    assert sorted(log.snapshot()) == list(range(3000))


def test_old_threads_exit_once_idle_after_shrinking():
    mp.configure_thread_pool(num_threads=8)
    barrier = threading.Barrier(8, timeout=WAIT)
    handles = [mp.parallel_pool(barrier.wait)() for _ in range(8)]
    assert all(h.wait(WAIT) for h in handles)
    peak = os_thread_count()

    mp.configure_thread_pool(num_threads=1)

    wait_until(lambda: os_thread_count() <= peak - 6)


# Thread cache behind @parallel -------------------------------------------------


@pytest.fixture
def restore_thread_cache():
    yield
    mp.configure_thread_cache()


def test_thread_cache_info_has_the_documented_keys(restore_thread_cache):
    mp.configure_thread_cache(max_threads=6)
    info = mp.get_thread_cache_info()

    assert info["max_threads"] == 6
    for key in ("current_threads", "idle_threads", "queued_tasks"):
        assert isinstance(info[key], int) and info[key] >= 0, key
    assert info["idle_threads"] <= info["current_threads"]


def test_thread_cache_reuses_idle_threads(restore_thread_cache):
    mp.configure_thread_cache(idle_timeout_secs=60.0)
    assert mp.parallel(abs)(-1).get(WAIT) == 1
    wait_until(lambda: mp.get_thread_cache_info()["idle_threads"] >= 1)
    before = mp.get_thread_cache_info()["current_threads"]

    idents = set()
    for _ in range(20):
        wait_until(lambda: mp.get_thread_cache_info()["idle_threads"] >= 1)
        idents.add(mp.parallel(threading.get_ident)().get(WAIT))

    assert len(idents) <= before
    assert mp.get_thread_cache_info()["current_threads"] <= before


def test_thread_cache_idle_threads_retire(restore_thread_cache):
    mp.configure_thread_cache(idle_timeout_secs=0.2)
    handles = [mp.parallel(time.sleep)(0.01) for _ in range(4)]
    assert all(h.wait(WAIT) for h in handles)

    wait_until(lambda: mp.get_thread_cache_info()["idle_threads"] == 0)


def test_parallel_tasks_start_at_once_each_on_its_own_thread():
    count = 12
    barrier = threading.Barrier(count, timeout=WAIT)

    handles = [mp.parallel(barrier.wait)() for _ in range(count)]

    assert sorted(h.get(WAIT) for h in handles) == list(range(count))

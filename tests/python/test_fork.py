"""fork() in a process with live workers leaves the child usable (API §9).

Forking a multi-threaded pytest process is itself fragile (and warns on newer
Pythons), so each test runs its scenario in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCENARIO = textwrap.dedent(
    """
    import os, sys, threading, time
    import makeParallel as mp

    release = threading.Event()

    @mp.parallel_pool
    def pool_task(x):
        return x * 2

    @mp.parallel
    def thread_task(x):
        return x + 1

    @mp.parallel_priority
    def priority_task(x):
        return -x

    @mp.parallel
    def busy():
        release.wait(10)   # still running in the parent while it forks
        return "parent"

    # Every kind of worker is alive in the parent, one of them mid-task.
    assert pool_task(1).get(5) == 2
    assert thread_task(1).get(5) == 2
    assert priority_task(1).get(5) == -1
    running = busy()
    pid = os.fork()
    if pid == 0:
        try:
            assert mp.get_thread_pool_info()["active_tasks"] == 0
            assert pool_task(21).get(5) == 42
            assert thread_task(41).get(5) == 42
            assert priority_task(7).get(5) == -7
            assert mp.parallel_map(pool_task, range(100)) == [2 * i for i in range(100)]
            slow = mp.parallel(time.sleep).options(timeout=0.1)(5)
            try:
                slow.get(5)
            except mp.TaskTimeoutError:
                pass
            else:
                raise AssertionError("the child's timer did not fire")
        except BaseException as exc:
            sys.stderr.write(f"child failed: {exc!r}\\n")
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    release.set()
    assert running.get(5) == "parent"
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


@pytest.mark.timeout(60)
def test_forked_child_gets_fresh_working_pools() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr

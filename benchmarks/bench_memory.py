"""Memory held per pending task: what a large backlog costs.

A one-thread pool is kept busy by a first task that waits on an event, then
100,000 more tasks are submitted and stay queued. The growth of the resident
set (``/proc/self/statm``) while submitting, divided by the number of tasks,
is the library's cost per pending task, handle included. The argument
objects and the list that keeps the handles are created before that
measurement starts, so what the user would have allocated anyway is not
charged to the library; their cost is shown as a separate baseline.

Every measurement runs in a fresh child process, because memory freed by one
run would be reused by the next and make it look cheaper than it is.

Run: ``python benchmarks/bench_memory.py [--quick] [--repeat N]
[--peer-python PATH]``. Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import _common
from _common import Check

#: Pending tasks: (full, quick).
TASKS = (100_000, 10_000)

#: Bytes per pending task that count as a pass.
TARGET_BYTES = 1024

#: Implementations measured with this interpreter, each in its own child.
CHILDREN = ("makeParallel", "executor")


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def task(x):
    """The queued task; it does nothing once it finally runs."""
    return x


def measure(submit, release, count: int) -> dict:
    """Measure the resident memory of ``count`` tasks queued by ``submit``.

    Args:
        submit: ``submit(arg)`` queues one task and returns its handle.
        release: Unblocks the pool so the backlog can drain.
        count: Number of tasks to queue.

    Returns:
        Bytes of resident growth for the arguments (``baseline``) and for the
        submissions (``tasks``), and the count.
    """
    # Collect now and keep the collector out of the measured window, so a
    # collection that happens to run does not shift the figures.
    gc.collect()
    gc.disable()

    before = rss_bytes()
    # Integers above 256 are fresh objects, as a user's arguments would be.
    arguments = [1_000_000 + i for i in range(count)]
    handles = [None] * count
    after_arguments = rss_bytes()

    for i, argument in enumerate(arguments):
        handles[i] = submit(argument)
    after_submit = rss_bytes()

    release()
    for handle in handles:
        wait = getattr(handle, "get", None) or handle.result
        wait()
    gc.enable()
    return {
        "count": count,
        "baseline": after_arguments - before,
        "tasks": after_submit - after_arguments,
    }


def blocked(start_blocker) -> tuple:
    """Start a blocking first task and return (release function, started event).

    Args:
        start_blocker: ``start_blocker(func)`` submits ``func`` to the pool
            under test and returns its handle.
    """
    started = threading.Event()
    gate = threading.Event()

    def blocker():
        started.set()
        gate.wait()

    start_blocker(blocker)
    if not started.wait(timeout=30):
        raise RuntimeError("the blocking task never started")
    return gate.set


def measure_library(lib, count: int) -> dict:
    """Queue ``count`` tasks behind a blocked one-thread pool of ``lib``."""
    lib.configure_thread_pool(num_threads=1)
    release = blocked(lambda func: lib.parallel_pool(func)())
    return measure(lib.parallel_pool(task), release, count)


def measure_executor(count: int) -> dict:
    """Queue ``count`` tasks behind a blocked one-thread ThreadPoolExecutor."""
    executor = ThreadPoolExecutor(max_workers=1)
    release = blocked(executor.submit)
    result = measure(lambda argument: executor.submit(task, argument), release, count)
    executor.shutdown()
    return result


def run_child(name: str, count: int) -> dict:
    """Body of a child process: one measurement of one implementation."""
    if name == "makeParallel":
        return measure_library(_common.import_makeparallel(), count)
    if name == "peer":
        return measure_library(_common.import_peer(), count)
    if name == "executor":
        return measure_executor(count)
    raise SystemExit(f"unknown child {name!r}")


def best_child(python: str, child: str, args, extra=()) -> tuple:
    """Run one child ``args.repeat`` times; keep the run with the least growth.

    Returns:
        ``(result, "")`` or ``(None, reason)``.
    """
    best, reason = None, ""
    for _ in range(args.repeat):
        result, reason = _common.run_child(
            python, os.path.abspath(__file__), child, ["--quick"] if args.quick else []
        )
        if result is None:
            return None, reason
        if best is None or result["tasks"] < best["tasks"]:
            best = result
    return best, reason


def main() -> int:
    """Measure, print the tables and return the exit status."""
    parser = _common.make_parser(__doc__.splitlines()[0], default_repeat=3)
    args = _common.parse_args(parser)
    count = TASKS[1] if args.quick else TASKS[0]

    if args.child is not None:
        _common.emit_child_result(run_child(args.child, count))
        return 0
    if not os.path.exists("/proc/self/statm"):
        print("bench_memory: skipped, /proc/self/statm is not available here")
        return 0

    _common.import_makeparallel()  # fail early, with a message that helps
    _common.print_header("bench_memory", args, threads=1)

    results = {}
    for name in CHILDREN:
        result, reason = best_child(sys.executable, name, args)
        if result is None:
            return _fail(f"the {name} measurement failed: {reason}")
        results[name] = result
    peer_name = f"makeparallel {_common.PEER_VERSION}"
    if args.peer_python is None:
        peer_note = "skipped: no --peer-python given"
    else:
        results[peer_name], peer_note = best_child(args.peer_python, "peer", args)
        if results[peer_name] is None:
            del results[peer_name]
            peer_note = f"skipped: {peer_note}"

    labels = {
        "makeParallel": "makeParallel @parallel_pool",
        "executor": "ThreadPoolExecutor.submit",
        peer_name: peer_name,
    }
    rows = []
    for name, result in results.items():
        rows.append(
            [
                labels[name],
                f"{result['count']:,}",
                f"{result['tasks'] / 2**20:.1f}",
                f"{result['tasks'] / result['count']:.0f}",
                f"{result['baseline'] / result['count']:.0f}",
            ]
        )
    _common.print_table(
        [
            "pending tasks, 1 blocked thread",
            "tasks",
            "growth MiB",
            "bytes/task",
            "args bytes/task",
        ],
        rows,
    )
    if peer_note:
        print(f"{peer_name}: {peer_note}")
        print()

    ours = results["makeParallel"]
    _common.print_checks(
        [
            Check(
                "makeParallel bytes per pending task",
                ours["tasks"] / ours["count"],
                "<=",
                TARGET_BYTES,
                unit="B",
            ),
        ]
    )
    return 0


def _fail(message: str) -> int:
    """Report a measurement that could not be made (not a MISS) and fail."""
    print(f"bench_memory: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Per-task overhead of makeParallel against concurrent.futures.

The tasks do nothing, so every measured microsecond is the cost of submitting,
dispatching, running and collecting a task: what a user pays on top of their
own work. Each makeParallel figure is held against the obvious alternative,
``ThreadPoolExecutor`` with the same number of threads, measured in the same
run.

Run: ``python benchmarks/bench_overhead.py [--quick] [--repeat N]
[--peer-python PATH]``.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import _common
from _common import Check, best_of, fmt_ms

#: Workload sizes: (full, quick).
SIZES = {
    "pool": (20_000, 2_000),
    "parallel": (5_000, 500),
    "map": (200_000, 20_000),
    "priority": (20_000, 2_000),
}


def noop(x):
    """The trivial task: return the argument untouched."""
    return x


def sizes(quick: bool) -> dict[str, int]:
    """The number of tasks of each workload."""
    return {name: pair[1] if quick else pair[0] for name, pair in SIZES.items()}


def time_library(lib, n: dict[str, int], repeat: int) -> dict:
    """Time every workload through ``lib``, makeParallel or the old package.

    Returns:
        Seconds per workload, keyed like :data:`SIZES`.
    """
    pool_noop = lib.parallel_pool(noop)
    thread_noop = lib.parallel(noop)
    priority_noop = lib.parallel_priority(noop)
    items = list(range(n["map"]))

    def submit_all(func, count: int) -> None:
        # Submit everything first, then collect: the pattern of a batch job,
        # and the one that exposes queueing cost rather than hiding it in
        # a round trip per task.
        handles = [func(i) for i in range(count)]
        for handle in handles:
            handle.get()

    def submit_prioritised(count: int) -> None:
        # Mixed priorities, so the queue's ordering is part of the cost.
        handles = [priority_noop(i, priority=i % 8) for i in range(count)]
        for handle in handles:
            handle.get()

    def map_all() -> None:
        lib.parallel_map(noop, items)

    # Check the results once, outside the timing: a fast wrong answer is
    # no result at all.
    decorated = {
        "parallel_pool": pool_noop,
        "parallel": thread_noop,
        "parallel_priority": priority_noop,
    }
    for name, func in decorated.items():
        if [handle.get() for handle in [func(i) for i in range(100)]] != items[:100]:
            raise AssertionError(f"@{name} returned wrong results")
    if lib.parallel_map(noop, items) != items:
        raise AssertionError("parallel_map returned wrong results")

    return {
        "pool": best_of(lambda: submit_all(pool_noop, n["pool"]), repeat),
        "parallel": best_of(lambda: submit_all(thread_noop, n["parallel"]), repeat),
        "map": best_of(map_all, repeat),
        "priority": best_of(lambda: submit_prioritised(n["priority"]), repeat),
    }


def time_baselines(n: dict[str, int], repeat: int, threads: int) -> dict:
    """Time the same workloads with concurrent.futures and plain Python.

    The priority workload is compared with a one-thread executor because
    makeParallel runs priority tasks on one worker by default.
    """
    items = list(range(n["map"]))

    def submit_all(executor: ThreadPoolExecutor, count: int) -> None:
        futures = [executor.submit(noop, i) for i in range(count)]
        for future in futures:
            future.result()

    with ThreadPoolExecutor(max_workers=threads) as executor:
        submit_all(executor, 100)  # start the threads outside the timing
        pool = best_of(lambda: submit_all(executor, n["pool"]), repeat)
        parallel = best_of(lambda: submit_all(executor, n["parallel"]), repeat)
        executor_map = best_of(lambda: list(executor.map(noop, items)), repeat)
    with ThreadPoolExecutor(max_workers=1) as executor:
        submit_all(executor, 100)
        single = best_of(lambda: submit_all(executor, n["priority"]), repeat)
    return {
        "pool": pool,
        "parallel": parallel,
        "executor_map": executor_map,
        "list_comp": best_of(lambda: [noop(x) for x in items], repeat),
        "priority": single,
    }


def ratio(numerator, denominator):
    """``numerator / denominator``, or ``None`` if either is missing."""
    if numerator is None or denominator is None:
        return None
    return numerator / denominator


def main() -> int:
    """Measure, print the tables and return the exit status."""
    parser = _common.make_parser(__doc__.splitlines()[0])
    args = _common.parse_args(parser)
    n = sizes(args.quick)

    if args.child == "peer":
        lib = _common.import_peer()
        _common.emit_child_result(time_library(lib, n, args.repeat))
        return 0

    mp = _common.import_makeparallel()
    threads = mp.get_thread_pool_info()["current_num_threads"]
    _common.print_header("bench_overhead", args, threads)

    ours = time_library(mp, n, args.repeat)
    base = time_baselines(n, args.repeat, threads)
    peer, peer_note = _common.run_peer(args, os.path.abspath(__file__))
    peer = peer or {}

    rows = [
        [
            f"{n['pool']:,} x @parallel_pool + get()",
            fmt_ms(ours["pool"]),
            fmt_ms(base["pool"]),
            f"executor, {threads} threads",
            fmt_ms(peer.get("pool")),
        ],
        [
            f"{n['parallel']:,} x @parallel + get()",
            fmt_ms(ours["parallel"]),
            fmt_ms(base["parallel"]),
            f"executor, {threads} threads",
            fmt_ms(peer.get("parallel")),
        ],
        [
            f"parallel_map over {n['map']:,} items",
            fmt_ms(ours["map"]),
            fmt_ms(base["list_comp"]),
            "list comprehension",
            fmt_ms(peer.get("map")),
        ],
        ["", "", fmt_ms(base["executor_map"]), f"executor.map, {threads} threads", ""],
        [
            f"{n['priority']:,} x @parallel_priority + get()",
            fmt_ms(ours["priority"]),
            fmt_ms(base["priority"]),
            "executor, 1 thread",
            fmt_ms(peer.get("priority")),
        ],
    ]
    headers = ["workload (times in ms)", "makeParallel", "baseline", "baseline is"]
    if peer:
        headers.append(f"makeparallel {_common.PEER_VERSION}")
    else:
        rows = [row[:4] for row in rows]
    _common.print_table(headers, rows, align="lrrlr")
    if peer_note:
        print(f"makeparallel {_common.PEER_VERSION}: {peer_note}")
        print()

    checks = [
        Check(
            "@parallel_pool / executor submit+result",
            ratio(ours["pool"], base["pool"]),
            "<=",
            0.25,
        ),
        Check(
            "@parallel / executor submit+result",
            ratio(ours["parallel"], base["parallel"]),
            "<=",
            1.0,
        ),
        Check(
            "parallel_map / list comprehension",
            ratio(ours["map"], base["list_comp"]),
            "<=",
            2.0,
        ),
        Check(
            "parallel_map / executor.map",
            ratio(ours["map"], base["executor_map"]),
            "<=",
            0.1,
        ),
        Check(
            "@parallel_priority / executor (1 thread)",
            ratio(ours["priority"], base["priority"]),
            "<=",
            0.5,
        ),
    ]
    _common.print_checks(checks)

    if peer:
        print()
        _common.print_table(
            ["makeParallel / makeparallel " + _common.PEER_VERSION, "ratio"],
            [
                [name, _common.fmt_number(ratio(ours[key], peer.get(key)))]
                for name, key in [
                    ("@parallel_pool", "pool"),
                    ("@parallel", "parallel"),
                    ("parallel_map", "map"),
                    ("@parallel_priority", "priority"),
                ]
            ],
            title="Against the earlier Rust-based package (below 1 is faster)",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

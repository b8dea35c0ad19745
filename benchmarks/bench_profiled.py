"""Cost of recording a call with @profiled, alone and from two threads at once.

A trivial function is called through ``@profiled`` and through the timing
decorator a user would write by hand (two ``perf_counter()`` reads and a dict
update), in the same run; the ratio of the two per-call times is held against
its target. The call without any decorator is timed too, so the table also
shows what recording adds on top of the call itself.

Then the same ``@profiled`` function is called by one thread, and by two
threads at once, each thread making the same number of calls. Recording is
meant to scale: per-thread throughput with two threads should stay at least
half of the one-thread figure. On a GIL build the two threads take turns
running Python, so one half is also the most that build can show by wall
time; there the target is held against calls per second of each thread's
own CPU time, which the turn-taking does not halve and contention on shared
counters would. Both figures are printed.

Run: ``python benchmarks/bench_profiled.py [--quick] [--repeat N]
[--peer-python PATH]``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import _common
from _common import Check, best_of

#: Calls per measurement: (full, quick).
CALLS = (300_000, 30_000)

#: Calls per thread when threads record at once: (full, quick). Each run has to
#: last many GIL switch intervals (5 ms), or the threads merely run in turn.
THREAD_CALLS = (1_000_000, 200_000)

#: Threads recording at once in the scaling measurement.
THREADS = 2


def trivial(x):
    """The function under test: it costs next to nothing itself."""
    return x


def hand_timed(func, totals: dict):
    """The timing decorator a user would write: two clock reads, a dict update."""
    name = func.__name__

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def call_loop(func, calls: int) -> None:
    """Calls ``func`` ``calls`` times; the loop costs the same for every func."""
    for i in range(calls):
        func(i)


def per_call_ns(func, calls: int, repeat: int) -> float:
    """Best time of one call of ``func`` in a loop, in nanoseconds."""
    return best_of(lambda: call_loop(func, calls), repeat) / calls * 1e9


def thread_rates(func, threads: int, calls: int) -> tuple[float, float]:
    """Runs ``threads`` threads of ``calls`` calls each, released together.

    Returns:
        Calls per second per thread: by wall time, over the whole run from
        the release to the end of the last thread (so threads that merely
        took turns do not each look as fast as one alone), and by each
        thread's own CPU time (``time.thread_time``), averaged.
    """
    ready = threading.Barrier(threads + 1)
    cpu: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        ready.wait(60)
        cpu_0 = time.thread_time()
        call_loop(func, calls)
        cpu_1 = time.thread_time()
        with lock:
            cpu.append(cpu_1 - cpu_0)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait(60)
    start = time.perf_counter()
    for worker in workers:
        worker.join(600)
    wall = time.perf_counter() - start
    # thread_time ticks coarsely on some kernels; never divide by zero.
    cpu_rate = sum(calls / max(t, 1e-9) for t in cpu) / threads
    return calls / wall, cpu_rate


def best_rates(func, threads: int, calls: int, repeat: int) -> tuple[float, float]:
    """The best of ``repeat`` runs of :func:`thread_rates`, each figure apart."""
    runs = [thread_rates(func, threads, calls) for _ in range(repeat)]
    return max(r[0] for r in runs), max(r[1] for r in runs)


def measure_library(lib, calls: int, thread_calls: int, repeat: int) -> dict:
    """Every figure of this benchmark through ``lib``.

    Returns:
        Per-call nanoseconds (``bare``, ``profiled``, ``hand``), per-thread
        rates for 1 and 2 threads, and ``recorded``: the calls ``lib`` counted
        for the profiled function, or ``None`` if it keeps no such count.
    """
    totals: dict = {}
    profiled = lib.profiled(trivial)
    by_hand = hand_timed(trivial, totals)
    call_loop(profiled, 1000)  # create the metrics entry before timing

    # Interleaved, so that a slow spell of the machine hits all three alike.
    bare = profiled_ns = hand_ns = float("inf")
    for _ in range(repeat):
        bare = min(bare, per_call_ns(trivial, calls, 1))
        profiled_ns = min(profiled_ns, per_call_ns(profiled, calls, 1))
        hand_ns = min(hand_ns, per_call_ns(by_hand, calls, 1))

    lib.reset_metrics()
    one_wall, one_cpu = best_rates(profiled, 1, thread_calls, repeat)
    two_wall, two_cpu = best_rates(profiled, THREADS, thread_calls, repeat)
    metrics = lib.get_metrics("trivial")
    recorded = getattr(metrics, "total_tasks", None)
    return {
        "bare": bare,
        "profiled": profiled_ns,
        "hand": hand_ns,
        "one_wall": one_wall,
        "one_cpu": one_cpu,
        "two_wall": two_wall,
        "two_cpu": two_cpu,
        "recorded": recorded,
        "expected": thread_calls * repeat * (1 + THREADS),
    }


def fmt_rate(rate: float | None) -> str:
    """Calls per second in millions, ``-`` if absent."""
    return "-" if rate is None else f"{rate / 1e6:.2f}"


def main() -> int:
    """Measure, print the tables and return the exit status."""
    parser = _common.make_parser(__doc__.splitlines()[0])
    args = _common.parse_args(parser)
    calls = CALLS[1] if args.quick else CALLS[0]
    thread_calls = THREAD_CALLS[1] if args.quick else THREAD_CALLS[0]

    if args.child == "peer":
        lib = _common.import_peer()
        _common.emit_child_result(
            measure_library(lib, calls, thread_calls, args.repeat)
        )
        return 0

    mp = _common.import_makeparallel()
    threads = mp.get_thread_pool_info()["current_num_threads"]
    _common.print_header("bench_profiled", args, threads)

    ours = measure_library(mp, calls, thread_calls, args.repeat)
    if ours["recorded"] != ours["expected"]:
        print(
            f"error: get_metrics counted {ours['recorded']} calls, "
            f"{ours['expected']} were made",
            file=sys.stderr,
        )
        return 1
    peer, peer_note = _common.run_peer(args, os.path.abspath(__file__))
    peer = peer or {}

    def ns(result: dict, key: str) -> str:
        return f"{result[key]:.0f}" if key in result else "-"

    rows = [
        ["plain call, no decorator", ns(ours, "bare"), ns(peer, "bare")],
        ["@profiled", ns(ours, "profiled"), ns(peer, "profiled")],
        ["hand-written timing decorator", ns(ours, "hand"), ns(peer, "hand")],
    ]
    peer_head = f"makeparallel {_common.PEER_VERSION}"
    # Without a peer its columns would be all dashes: leave them out.
    width = None if peer else 2
    _common.print_table(
        [
            f"one call, ns (best of {args.repeat} x {calls:,})",
            "makeParallel",
            peer_head,
        ][:width],
        [row[:width] for row in rows],
    )
    added = ours["profiled"] - ours["bare"]
    print(f"@profiled adds {added:.0f} ns to a call here")
    print()

    width = None if peer else 3
    rows = [
        [
            label,
            fmt_rate(ours[wall]),
            fmt_rate(ours[cpu]),
            fmt_rate(peer.get(wall)),
            fmt_rate(peer.get(cpu)),
        ]
        for label, wall, cpu in (
            ("1 thread", "one_wall", "one_cpu"),
            (f"{THREADS} threads at once", "two_wall", "two_cpu"),
        )
    ]
    _common.print_table(
        [
            "@profiled calls per thread, M/s",
            "wall",
            "thread CPU",
            f"{peer_head} wall",
            f"{peer_head} CPU",
        ][:width],
        [row[:width] for row in rows],
    )
    if peer_note:
        print(f"{peer_head}: {peer_note}")
        print()
    # With the GIL the threads take turns, which halves each one's wall-time
    # rate whatever the recorder does; the rate per second of the thread's
    # own CPU time is what contention in the recorder would still lower.
    gil = _common.gil_state() == "GIL enabled"
    basis = "thread CPU" if gil else "wall"
    key = "cpu" if gil else "wall"
    if gil:
        print(
            f"GIL enabled: the {THREADS} threads take turns, so by wall time "
            f"1/{THREADS} of the one-thread rate is the most this build can "
            "show; the target is held against thread CPU time instead."
        )
        print()

    _common.print_checks(
        [
            Check(
                "@profiled / hand-written decorator, per call",
                ours["profiled"] / ours["hand"],
                "<=",
                0.6,
            ),
            Check(
                f"per-thread rate, {THREADS} threads / 1 ({basis})",
                ours[f"two_{key}"] / ours[f"one_{key}"],
                ">=",
                0.5,
            ),
        ]
    )
    print(
        f"per-thread rate, {THREADS} threads / 1: "
        f"{ours['two_wall'] / ours['one_wall']:.3f} by wall time, "
        f"{ours['two_cpu'] / ours['one_cpu']:.3f} by thread CPU time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU used by idle workers: the priority worker must sleep, not poll.

After the priority worker has started and run a task, the process sits idle
for a while and its CPU time (all threads, ``time.process_time``) is read
before and after. A worker that sleeps on a condition variable costs next to
nothing; one that polls shows up at once. The same is then measured with
every kind of worker started (global pool, the cache of ``@parallel``
threads, priority worker), and right after import as a reference.

The target is under 10 ms of CPU over 2 idle seconds. The worst of the
repeats counts, since an occasional wake-up is exactly what is looked for.

Run: ``python benchmarks/bench_priority_idle.py [--quick] [--repeat N]
[--peer-python PATH]``.
"""

from __future__ import annotations

import os
import sys
import time

import _common
from _common import Check

#: Idle seconds per measurement: (full, quick).
IDLE_SECONDS = (2.0, 0.5)

#: CPU milliseconds allowed per 2 idle seconds.
TARGET_MS_PER_2S = 10.0


def noop(x):
    """A trivial task, run once to be sure a worker is really up."""
    return x


def idle_cpu_ms(seconds: float, repeat: int) -> float:
    """Worst CPU time of the whole process over ``seconds`` of idleness, in ms."""
    worst = 0.0
    for _ in range(repeat):
        start = time.process_time()
        time.sleep(seconds)
        worst = max(worst, (time.process_time() - start) * 1000.0)
    return worst


def settle() -> None:
    """Give workers that just finished a task time to go back to sleep."""
    time.sleep(0.2)


def measure_library(lib, seconds: float, repeat: int) -> dict:
    """Idle CPU of ``lib`` after import, with the priority worker, with all."""
    settle()
    result = {"import": idle_cpu_ms(seconds, repeat)}

    lib.start_priority_worker()
    lib.parallel_priority(noop)(1, priority=1).get()
    settle()
    result["priority"] = idle_cpu_ms(seconds, repeat)

    lib.parallel_pool(noop)(1).get()
    lib.parallel(noop)(1).get()
    settle()
    result["all"] = idle_cpu_ms(seconds, repeat)
    return result


def main() -> int:
    """Measure, print the tables and return the exit status."""
    parser = _common.make_parser(__doc__.splitlines()[0], default_repeat=3)
    args = _common.parse_args(parser)
    seconds = IDLE_SECONDS[1] if args.quick else IDLE_SECONDS[0]

    if args.child == "peer":
        lib = _common.import_peer()
        _common.emit_child_result(measure_library(lib, seconds, args.repeat))
        return 0

    mp = _common.import_makeparallel()
    threads = mp.get_thread_pool_info()["current_num_threads"]
    _common.print_header("bench_priority_idle", args, threads, statistic="worst")

    ours = measure_library(mp, seconds, args.repeat)
    peer, peer_note = _common.run_peer(args, os.path.abspath(__file__))
    peer = peer or {}

    rows = [
        [label, f"{ours[key]:.2f}", f"{peer[key]:.2f}" if key in peer else "-"]
        for label, key in [
            ("after import, nothing started", "import"),
            ("priority worker started", "priority"),
            ("pool, @parallel and priority workers", "all"),
        ]
    ]
    _common.print_table(
        [
            f"CPU ms over {seconds:g} idle seconds",
            "makeParallel",
            f"makeparallel {_common.PEER_VERSION}",
        ],
        rows,
    )
    if peer_note:
        print(f"makeparallel {_common.PEER_VERSION}: {peer_note}")
        print()

    # A quick run idles for less time, so its allowance shrinks with it.
    limit = TARGET_MS_PER_2S * seconds / 2.0
    _common.print_checks(
        [
            Check(
                "idle CPU, priority worker started",
                ours["priority"],
                "<",
                limit,
                unit="ms",
            ),
            Check("idle CPU, all workers started", ours["all"], "<", limit, unit="ms"),
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

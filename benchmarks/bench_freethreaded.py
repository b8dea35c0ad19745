"""Pure-Python CPU-bound work on a free-threaded CPython, and per-task overhead.

On a free-threaded build (PEP 703) threads run Python bytecode at the same
time, so ``@parallel_pool`` and ``parallel_map`` should divide pure-Python
work by the number of threads. This benchmark measures that speed-up against
a serial loop, and the library's per-task overhead against
``ThreadPoolExecutor`` and a list comprehension on the same interpreter. On a
GIL build it runs too, and the speed-up targets are expected to miss: that is
the GIL, not the library.

Run: ``python benchmarks/bench_freethreaded.py [--quick] [--repeat N]``.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import _common
from _common import Check, best_of, calibrate_spin, fmt_ms, noop, spin

#: Wall time one CPU-bound task should take, in seconds.
TASK_SECONDS = 0.050
#: CPU-bound tasks per pool thread in one measurement: (full, quick).
TASKS_PER_THREAD = (8, 2)
#: Trivial @parallel_pool submissions and parallel_map items: (full, quick).
SUBMISSIONS = (20_000, 2_000)
MAP_ITEMS = (200_000, 20_000)


def calibrate() -> int:
    """The ``spin`` argument that takes about :data:`TASK_SECONDS` here."""
    return calibrate_spin(TASK_SECONDS)


def main(argv=None) -> None:
    parser = _common.make_parser(__doc__.splitlines()[0], default_repeat=5)
    args = _common.parse_args(parser, argv)
    mp = _common.import_makeparallel()
    pick = 1 if args.quick else 0
    threads = _common.usable_cpus()
    mp.configure_thread_pool(num_threads=threads)
    _common.print_header("bench_freethreaded", args, threads)

    # CPU-bound: the same tasks serially, on @parallel_pool and parallel_map.
    n = calibrate()
    tasks = threads * TASKS_PER_THREAD[pick]
    pool_spin = mp.parallel_pool(spin)
    serial = best_of(lambda: [spin(n) for _ in range(tasks)], args.repeat)
    pool = best_of(
        lambda: [h.get() for h in [pool_spin(n) for _ in range(tasks)]], args.repeat
    )
    mapped = best_of(
        lambda: mp.parallel_map(spin, [n] * tasks, chunksize=1), args.repeat
    )

    # Overhead: trivial tasks, against the stdlib on this same interpreter.
    count = SUBMISSIONS[pick]
    pool_noop = mp.parallel_pool(noop)
    with ThreadPoolExecutor(max_workers=threads) as executor:
        futures = best_of(
            lambda: [
                f.result() for f in [executor.submit(noop, i) for i in range(count)]
            ],
            args.repeat,
        )
    handles = best_of(
        lambda: [h.get() for h in [pool_noop(i) for i in range(count)]], args.repeat
    )
    items = list(range(MAP_ITEMS[pick]))
    comprehension = best_of(lambda: [noop(x) for x in items], args.repeat)
    map_trivial = best_of(lambda: mp.parallel_map(noop, items), args.repeat)

    _common.print_table(
        ["workload", "makeParallel ms", "baseline ms", "baseline"],
        [
            [
                f"{tasks} x ~{TASK_SECONDS * 1000:.0f} ms spin, @parallel_pool",
                fmt_ms(pool),
                fmt_ms(serial),
                "serial loop",
            ],
            [
                f"{tasks} x ~{TASK_SECONDS * 1000:.0f} ms spin, parallel_map",
                fmt_ms(mapped),
                fmt_ms(serial),
                "serial loop",
            ],
            [
                f"{count} trivial @parallel_pool + get()",
                fmt_ms(handles),
                fmt_ms(futures),
                "executor submit+result",
            ],
            [
                f"parallel_map, {len(items)} trivial items",
                fmt_ms(map_trivial),
                fmt_ms(comprehension),
                "list comprehension",
            ],
        ],
        title="Times (best of the repeats)",
        align="lrrl",
    )
    target = 0.85 * threads
    _common.print_checks(
        [
            Check(
                "@parallel_pool speed-up over serial", serial / pool, ">=", target, "x"
            ),
            Check(
                "parallel_map speed-up over serial", serial / mapped, ">=", target, "x"
            ),
            Check("@parallel_pool / executor, trivial", handles / futures, "<=", 0.25),
            Check(
                "parallel_map / comprehension, trivial",
                map_trivial / comprehension,
                "<=",
                2.0,
            ),
        ]
    )
    if _common.gil_state() != "free-threaded":
        print(
            "note: GIL build; pure-Python speed-ups are not expected here",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()

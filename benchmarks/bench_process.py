"""The process backend against concurrent.futures.ProcessPoolExecutor.

Four workloads, each measured for makeParallel's process backend and for a
``ProcessPoolExecutor`` with the same number of workers, in the same run:

- CPU-bound pure-Python tasks of about 50 ms: the speed-up over a serial
  loop, which threads cannot give on a GIL build;
- the round trip of a trivial task (submit, run, get the result);
- ``parallel_map`` of a trivial function over 1,000,000 items, against
  ``ProcessPoolExecutor.map`` with the best of several chunk sizes;
- a 100 MB ``bytes`` argument sent to a worker and returned.

Workers are started before timing (both sides), so startup is not counted;
the README reports it separately.

Run: ``python benchmarks/bench_process.py [--quick] [--repeat N]``.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import _common
from _common import Check, best_of, calibrate_spin, fmt_ms

#: Workload sizes: (full, quick).
SIZES = {
    "cpu_tasks_per_worker": (4, 2),
    "round_trips": (2_000, 200),
    "map_items": (1_000_000, 100_000),
    "blob_mb": (100, 20),
}

#: Chunk sizes tried for ProcessPoolExecutor.map; its best one counts.
EXECUTOR_CHUNKSIZES = (1_000, 10_000, 50_000, 125_000)


def calibrate(target_secs: float = 0.05) -> int:
    """The ``spin`` argument that takes about ``target_secs`` here."""
    return calibrate_spin(target_secs)


def main() -> None:
    # Both sides get the functions from an imported module (_common), so they
    # pickle by reference; functions of __main__ would have to travel by value
    # (cloudpickle) to our fresh-interpreter workers at every call.
    spin, noop = _common.spin, _common.noop
    parser = _common.make_parser(__doc__.splitlines()[0], default_repeat=3)
    args = _common.parse_args(parser)
    mp = _common.import_makeparallel()
    quick = args.quick
    size = {k: v[1] if quick else v[0] for k, v in SIZES.items()}
    workers = _common.usable_cpus()
    _common.print_header("bench_process", args, workers)

    mp.configure_process_pool(workers)
    work = calibrate()
    n_cpu = size["cpu_tasks_per_worker"] * workers
    blob = os.urandom(1 << 20) * size["blob_mb"]
    items = list(range(size["map_items"]))
    rows = []
    figures = {}

    with ProcessPoolExecutor(max_workers=workers) as pool:
        # Start every worker on both sides before timing anything.
        list(pool.map(noop, range(workers * 4)))
        spin_p = mp.parallel_pool(backend="process")(spin)
        noop_p = mp.parallel_pool(backend="process")(noop)
        [h.get() for h in [spin_p(1) for _ in range(workers * 4)]]

        serial = best_of(lambda: [spin(work) for _ in range(n_cpu)], args.repeat)
        ours = best_of(lambda: [h.get() for h in [spin_p(work) for _ in range(n_cpu)]],
                       args.repeat)
        theirs = best_of(lambda: list(pool.map(spin, [work] * n_cpu)), args.repeat)
        figures["speedup"] = serial / ours
        rows.append([f"{n_cpu} CPU tasks of ~50 ms", fmt_ms(serial), fmt_ms(ours),
                     fmt_ms(theirs), f"{serial / ours:.2f}x vs serial"])

        k = size["round_trips"]
        ours = best_of(lambda: [noop_p(i).get() for i in range(k)], args.repeat) / k
        theirs = best_of(lambda: [pool.submit(noop, i).result() for i in range(k)],
                         args.repeat) / k
        figures["round_trip"] = ours / theirs
        rows.append(["trivial round trip (each)", "-", f"{ours * 1e6:.0f} us",
                     f"{theirs * 1e6:.0f} us", f"{ours / theirs:.2f}"])

        ours = best_of(lambda: mp.parallel_map(noop, items, backend="process"),
                       args.repeat)
        best_chunk, theirs = None, float("inf")
        for chunk in EXECUTOR_CHUNKSIZES:
            t = best_of(lambda: list(pool.map(noop, items, chunksize=chunk)),
                        args.repeat)
            if t < theirs:
                best_chunk, theirs = chunk, t
        figures["map"] = ours / theirs
        rows.append([f"map over {len(items):,} items", "-", fmt_ms(ours),
                     f"{fmt_ms(theirs)} (chunksize {best_chunk})",
                     f"{ours / theirs:.2f}"])

        echo_p = mp.parallel(backend="process")(noop)
        ours = best_of(lambda: echo_p(blob).get(), args.repeat)
        theirs = best_of(lambda: pool.submit(noop, blob).result(), args.repeat)
        figures["blob"] = ours / theirs
        rows.append([f"{size['blob_mb']} MB bytes round trip", "-", fmt_ms(ours),
                     fmt_ms(theirs), f"{ours / theirs:.2f}"])

    _common.print_table(
        ["workload", "serial ms", "makeParallel", "ProcessPoolExecutor", "ratio"], rows,
        title=f"Process backend, {workers} workers (ratio = makeParallel / executor)")
    _common.print_checks([
        Check("CPU speed-up over serial", figures["speedup"], ">=",
              0.85 * workers, "x"),
        Check("round trip / executor submit+result", figures["round_trip"], "<=",
              1 / 3),
        Check("parallel_map / executor.map (best chunksize)", figures["map"], "<=",
              1.0),
        Check("100 MB round trip / executor", figures["blob"], "<=", 0.5),
    ])


if __name__ == "__main__":
    sys.exit(main())

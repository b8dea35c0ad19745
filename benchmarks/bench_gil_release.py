"""Speed-up on work that releases the GIL: SHA-256 of large buffers.

``hashlib`` drops the GIL while it hashes a large buffer, so threads really
run side by side and the speed-up should approach the number of pool
threads. The target is 85 % of that ideal. This is the kind of work where
threads pay off on a GIL build of CPython; pure-Python code gets no such
speed-up there.

Run: ``python benchmarks/bench_gil_release.py [--quick] [--repeat N]
[--peer-python PATH]``.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor

import _common
from _common import Check, best_of, fmt_ms

#: Size of one buffer in bytes.
BUFFER_BYTES = 4 * 1024 * 1024

#: Number of buffers: (full, quick).
BUFFER_COUNT = (64, 8)

#: Fraction of the ideal speed-up (one per thread) that counts as a pass.
EFFICIENCY_TARGET = 0.85


def digest(buffer: bytes) -> bytes:
    """SHA-256 of one buffer; the GIL is released for most of it."""
    return hashlib.sha256(buffer).digest()


def make_buffers(count: int) -> list[bytes]:
    """Distinct pseudo-random buffers, so a mixed-up result order shows."""
    rng = random.Random(1234)
    return [rng.randbytes(BUFFER_BYTES) for _ in range(count)]


def time_library(lib, buffers: list[bytes], repeat: int) -> dict:
    """Time serial hashing and hashing through ``lib``.

    Returns:
        Seconds for ``serial``, ``map`` and ``pool``, and whether both
        parallel forms gave the serial digests in order (``correct``).
    """
    pool_digest = lib.parallel_pool(digest)
    expected = [digest(b) for b in buffers]
    outputs = {}

    def with_map() -> None:
        outputs["map"] = list(lib.parallel_map(digest, buffers))

    def with_pool() -> None:
        handles = [pool_digest(b) for b in buffers]
        outputs["pool"] = [h.get() for h in handles]

    timings = {
        "serial": best_of(lambda: [digest(b) for b in buffers], repeat),
        "map": best_of(with_map, repeat),
        "pool": best_of(with_pool, repeat),
    }
    timings["correct"] = outputs["map"] == expected and outputs["pool"] == expected
    return timings


def time_executor(buffers: list[bytes], repeat: int, threads: int) -> float:
    """Time ``executor.map`` over the buffers with ``threads`` threads."""
    with ThreadPoolExecutor(max_workers=threads) as executor:
        list(executor.map(digest, buffers[:threads]))  # start the threads
        return best_of(lambda: list(executor.map(digest, buffers)), repeat)


def main() -> int:
    """Measure, print the tables and return the exit status."""
    parser = _common.make_parser(__doc__.splitlines()[0])
    args = _common.parse_args(parser)
    buffers = make_buffers(BUFFER_COUNT[1] if args.quick else BUFFER_COUNT[0])

    if args.child == "peer":
        lib = _common.import_peer()
        result = time_library(lib, buffers, args.repeat)
        result["threads"] = lib.get_thread_pool_info()["current_num_threads"]
        _common.emit_child_result(result)
        return 0

    mp = _common.import_makeparallel()
    threads = mp.get_thread_pool_info()["current_num_threads"]
    _common.print_header("bench_gil_release", args, threads)

    ours = time_library(mp, buffers, args.repeat)
    executor = time_executor(buffers, args.repeat, threads)
    peer, peer_note = _common.run_peer(args, os.path.abspath(__file__))

    serial = ours["serial"]
    mib = len(buffers) * BUFFER_BYTES / 2**20
    rows = [
        ["serial loop", fmt_ms(serial), "1.00"],
        [
            "makeParallel parallel_map",
            fmt_ms(ours["map"]),
            f"{serial / ours['map']:.2f}",
        ],
        [
            "makeParallel @parallel_pool",
            fmt_ms(ours["pool"]),
            f"{serial / ours['pool']:.2f}",
        ],
        [
            f"ThreadPoolExecutor.map, {threads} threads",
            fmt_ms(executor),
            f"{serial / executor:.2f}",
        ],
    ]
    if peer:
        # The peer's speed-ups are against its own serial run, in its process.
        for key, label in [("map", "parallel_map"), ("pool", "@parallel_pool")]:
            rows.append(
                [
                    f"makeparallel {_common.PEER_VERSION} {label}",
                    fmt_ms(peer[key]),
                    f"{peer['serial'] / peer[key]:.2f}",
                ]
            )
    _common.print_table(
        [f"SHA-256 of {len(buffers)} x 4 MiB ({mib:.0f} MiB)", "time ms", "speed-up"],
        rows,
    )
    if peer_note:
        print(f"makeparallel {_common.PEER_VERSION}: {peer_note}")
        print()
    if not ours["correct"]:
        print("WRONG RESULT: makeParallel's digests differ from the serial ones")
        print()
    if peer and not peer["correct"]:
        print(f"WRONG RESULT: makeparallel {_common.PEER_VERSION}'s digests differ")
        print()

    goal = EFFICIENCY_TARGET * threads
    checks = [
        Check("parallel_map speed-up", serial / ours["map"], ">=", goal),
        Check("@parallel_pool speed-up", serial / ours["pool"], ">=", goal),
    ]
    _common.print_checks(checks)
    print(
        f"(target: {EFFICIENCY_TARGET} x {threads} threads; the executor and "
        "peer rows are for reference)"
    )
    # A miss is a figure to look at; a wrong digest is a bug.
    if not ours["correct"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

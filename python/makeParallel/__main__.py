"""Demo of makeParallel on real work: ``python -m makeParallel``.

It hashes (SHA-256) and compresses (zlib, level 6) every file of the Python
standard library three times, with a plain loop, with ``mp.parallel_map``
and with ``@mp.parallel_pool`` handles, then prints the times and checks
that the three runs agree. ``--help`` lists the options.

Threads speed this up because file reads, ``hashlib`` and ``zlib`` release
the GIL while they work on large buffers. Pure-Python code would not get
faster on threads of a CPython build with a GIL.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import sys
import sysconfig
import time
import zlib
from collections.abc import Sequence
from typing import Callable, Optional

import makeParallel as mp

#: zlib compression level: the library's default trade-off of speed and size.
COMPRESS_LEVEL = 6

#: Folders inside the standard library's directory that are not the standard
#: library: third-party packages and bytecode caches.
NOT_STDLIB = frozenset({"site-packages", "dist-packages", "__pycache__"})

#: What one file gives: SHA-256 hex digest, size and compressed size in
#: bytes; ``None`` for a file that could not be read.
Digest = Optional[tuple[str, int, int]]


def digest_file(path: str) -> Digest:
    """Read a file, hash it and compress it.

    Args:
        path: The file to read.

    Returns:
        ``(sha256_hex, size, compressed_size)``, or ``None`` if the file
        cannot be read (no permission, vanished since it was listed).
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    compressed = zlib.compress(data, COMPRESS_LEVEL)
    return hashlib.sha256(data).hexdigest(), len(data), len(compressed)


@mp.parallel_pool
def digest_file_task(path: str) -> Digest:
    """``digest_file`` as a pool task: a call returns a handle at once."""
    return digest_file(path)


def list_files(root: str, skip: frozenset = frozenset()) -> list[tuple[str, int]]:
    """Find every regular file under ``root``.

    Symbolic links are neither followed nor listed, which rules out loops
    and files counted twice.

    Args:
        root: Directory to walk.
        skip: Names of directories not to enter.

    Returns:
        ``(path, size)`` pairs, sorted by path so ``--limit`` is repeatable.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if name not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((path, info.st_size))
    found.sort()
    return found


def run_serial(paths: Sequence[str]) -> list[Digest]:
    """The baseline: one file after another in this thread."""
    return [digest_file(path) for path in paths]


def run_parallel_map(paths: Sequence[str]) -> list[Digest]:
    """All files through ``mp.parallel_map``.

    ``chunksize=1`` because file sizes differ by orders of magnitude: a
    chunk holding the one huge file would leave the other threads idle.
    """
    return mp.parallel_map(digest_file, paths, chunksize=1)


def run_pool_handles(paths: Sequence[str]) -> list[Digest]:
    """Submit every file to the pool first, then collect the results."""
    handles = [digest_file_task(path) for path in paths]
    return [handle.get() for handle in handles]


def timed(
    run: Callable[[Sequence[str]], list[Digest]], paths: Sequence[str]
) -> tuple[float, list[Digest]]:
    """Wall time in seconds and result of ``run(paths)``."""
    start = time.perf_counter()
    result = run(paths)
    return time.perf_counter() - start, result


def fmt_seconds(seconds: float) -> str:
    """A duration as ``1.23 s``, or in milliseconds below one second."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(count: float) -> str:
    """A byte count with a binary unit, e.g. ``97.5 MiB``."""
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def first_difference(
    paths: Sequence[str], expected: Sequence[Digest], got: Sequence[Digest]
) -> str | None:
    """Describe the first file whose results differ, or ``None`` if none do."""
    if len(got) != len(expected):
        return f"{len(got)} results for {len(expected)} files"
    for path, want, have in zip(paths, expected, got):
        if want != have:
            return f"{path}: serial {want}, parallel {have}"
    return None


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option has a default that needs no thought."""
    parser = argparse.ArgumentParser(
        prog="python -m makeParallel",
        description="Hash (SHA-256) and compress (zlib level 6) every file of "
        "the Python standard library, serially and on makeParallel's thread "
        "pool, and compare the times. The results of all runs must agree.",
        epilog="Threads speed this up because file reads, hashlib and zlib "
        "release the GIL; on a CPython build with a GIL, threads do not speed "
        "up pure-Python code.",
    )
    parser.add_argument(
        "--path",
        metavar="DIR",
        help="process the files under DIR instead of the standard library",
    )
    parser.add_argument(
        "--threads",
        metavar="N",
        type=int,
        help="size of the thread pool (default: the CPUs this process may use)",
    )
    parser.add_argument(
        "--limit",
        metavar="N",
        type=int,
        help="process at most N files (the first N by path)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status (1 if the runs disagree)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.path is not None and not os.path.isdir(args.path):
        parser.error(f"--path: {args.path!r} is not a directory")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit: must be at least 1, got {args.limit}")
    if args.threads is not None:
        try:
            mp.configure_thread_pool(num_threads=args.threads)
        except (TypeError, ValueError) as exc:  # the library names the problem
            parser.error(f"--threads: {exc}")

    if args.path is None:
        root = sysconfig.get_paths()["stdlib"]
        files = list_files(root, skip=NOT_STDLIB)
        origin = (
            f"{root}\n  (the standard library; its site-packages and "
            "__pycache__ folders left out)"
        )
    else:
        root = os.path.abspath(args.path)
        files = list_files(root)
        origin = root
    files = files[: args.limit]
    # Read before any work of ours starts, so the load is other programs'.
    load = os.getloadavg()[0]
    if not files:
        print(f"error: no regular files under {root}", file=sys.stderr)
        return 1

    # Largest first, so no thread is handed a big file when the others are
    # almost done. All three runs use this order, so they do the same work.
    files.sort(key=lambda entry: entry[1], reverse=True)
    paths = [path for path, _ in files]

    # Read everything once untimed, so the first run is not the only one
    # to pay for a cold disk cache.
    run_serial(paths)

    runs = [
        ("serial loop", run_serial),
        ("mp.parallel_map", run_parallel_map),
        ("@mp.parallel_pool", run_pool_handles),
    ]
    timings = [(label, *timed(run, paths)) for label, run in runs]

    serial = timings[0][2]
    for label, _, result in timings[1:]:
        problem = first_difference(paths, serial, result)
        if problem is not None:
            print(
                f"error: {label} disagrees with the serial loop: {problem}",
                file=sys.stderr,
            )
            return 1

    done = [entry for entry in serial if entry is not None]
    total = sum(size for _, size, _ in done)
    compressed = sum(size for _, _, size in done)
    threads = mp.get_thread_pool_info()["current_num_threads"]

    print(
        f"makeParallel demo: SHA-256 and zlib level {COMPRESS_LEVEL} of "
        f"{len(done):,} files, {fmt_bytes(total)}"
    )
    print(f"  from {origin}")
    if len(done) < len(paths):
        print(f"  ({len(paths) - len(done):,} unreadable files skipped)")
    print(f"  {threads} pool threads")
    cpus = len(os.sched_getaffinity(0))
    if load > cpus / 2:
        print(
            f"  (other programs kept the CPUs busy, load average {load:.1f} on "
            f"{cpus} CPUs: expect smaller speed-ups)"
        )
    print()
    print(f"  {'method':<20} {'time':>9} {'speed-up':>9}")
    base = timings[0][1]
    for label, seconds, _ in timings:
        print(f"  {label:<20} {fmt_seconds(seconds):>9} {base / seconds:>8.2f}x")
    print()
    print(
        f"  All three runs agree: {len(done):,} digests, "
        f"{fmt_bytes(compressed)} compressed."
    )
    print(
        "  Threads help here because file reads, hashlib and zlib release the "
        "GIL;\n  on a CPython build with a GIL, threads do not speed up "
        "pure-Python code."
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Ctrl-C is how a person stops a demo; a traceback would be noise.
        sys.exit(130)

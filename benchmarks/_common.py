"""Helpers shared by the benchmark scripts: options, timing, tables and peers.

Every benchmark measures makeParallel and its peers in one run on one machine
and prints ratios, because absolute times say little across machines while a
ratio against ``concurrent.futures`` measured a second earlier does.

The earlier Rust-based package ``makeparallel`` 0.2.0 is a peer too, but its
import name is the lower-case alias that makeParallel itself provides, so it
cannot live in the same environment. A benchmark therefore runs its own file
again under the interpreter given by ``--peer-python`` with ``--child peer``;
that child imports the old package, measures, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

#: Version of the earlier PyPI package that the peer column shows.
PEER_VERSION = "0.2.0"

#: How long one peer child may take before it is abandoned, in seconds.
PEER_TIMEOUT = 600.0


def make_parser(
    description: str, *, default_repeat: int = 5
) -> argparse.ArgumentParser:
    """Return a parser with the options every benchmark understands.

    Args:
        description: First line of ``--help``.
        default_repeat: Repeats when neither ``--repeat`` nor ``--quick``
            is given.

    Returns:
        A parser; call :func:`parse_args` on it rather than its own method,
        so ``--repeat`` gets its default from ``--quick``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=None,
        help=f"repeats per measurement; the best counts (the worst for idle CPU) "
        f"(default {default_repeat}, or 2 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repeats, for a smoke run; figures are noisy",
    )
    parser.add_argument(
        "--peer-python",
        metavar="PATH",
        default=None,
        help=f"interpreter of a virtual environment with makeparallel=={PEER_VERSION}"
        " (the Rust-based package, cp311 only); its column is skipped without it",
    )
    # Internal: the benchmark runs itself again in a child process.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.set_defaults(_default_repeat=default_repeat)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """Parse the command line and fill in ``repeat`` from ``--quick``."""
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 2 if args.quick else args._default_repeat
    return args


def positive_int(text: str) -> int:
    """Argparse type for an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def import_makeparallel():
    """Import makeParallel, or exit with a message that says how to get it."""
    try:
        return importlib.import_module("makeParallel")
    except ImportError as exc:
        sys.exit(
            f"error: cannot import makeParallel ({exc}); install it with "
            "`pip install .` from the repository root"
        )


def import_peer():
    """Import the Rust-based ``makeparallel`` 0.2.0 in a peer child process.

    Exits with status 3 and a one-line reason if what is importable under that
    name is something else, most likely makeParallel's own alias.
    """
    from importlib import metadata

    try:
        version = metadata.version("makeparallel")
        module = importlib.import_module("makeparallel")
    except Exception as exc:  # any failure only means "no peer here"
        print(f"cannot import makeparallel: {exc}", file=sys.stderr)
        sys.exit(3)
    if version != PEER_VERSION:
        print(
            f"makeparallel here is version {version}, not {PEER_VERSION}",
            file=sys.stderr,
        )
        sys.exit(3)
    return module


def best_of(func: Callable[[], Any], repeat: int) -> float:
    """Run ``func`` ``repeat`` times and return the shortest wall time in seconds.

    The minimum is the figure least disturbed by the rest of the machine;
    the first run also pays for warming caches and starting threads.
    """
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def usable_cpus() -> int:
    """CPUs this process may run on, which is what a pool should size to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gil_state() -> str:
    """``"GIL enabled"`` or ``"free-threaded"`` for the running interpreter."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    if is_enabled is not None and not is_enabled():
        return "free-threaded"
    return "GIL enabled"


def print_header(
    name: str, args: argparse.Namespace, threads: int, statistic: str = "best"
) -> None:
    """Print one line that identifies the run, so saved tables stay readable.

    Args:
        name: The benchmark's name.
        args: Parsed options (``repeat`` and ``quick`` are shown).
        threads: Size of the thread pool under test.
        statistic: Which of the repeats counts, ``"best"`` or ``"worst"``.
    """
    mode = "quick" if args.quick else "full"
    # Other programs on the machine skew every ratio; the load says so.
    load = os.getloadavg()[0]
    print(
        f"{name}: {platform.python_implementation()} {platform.python_version()}"
        f" ({gil_state()}), {usable_cpus()} usable CPUs, pool of {threads},"
        f" {statistic} of {args.repeat}, {mode} sizes, load {load:.2f} at start"
    )
    print()


def fmt_ms(seconds: float | None) -> str:
    """Seconds as milliseconds with three significant digits, ``-`` if absent."""
    if seconds is None:
        return "-"
    ms = seconds * 1000.0
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str | None = None,
    align: str | None = None,
) -> None:
    """Print a plain-text table.

    Args:
        headers: Column titles.
        rows: Cells, converted with ``str``.
        title: Printed above the table when given.
        align: One letter per column, ``l`` or ``r``; by default the first
            column is left-aligned (labels) and the others right (numbers).
    """
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if how == "l" else cell.rjust(width)
            for cell, width, how in zip(row, widths, align)
        ]
        return "  ".join(parts).rstrip()

    if title:
        print(title)
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    print()


@dataclass
class Check:
    """One measured figure held against its target.

    Attributes:
        name: What the figure is, e.g. ``"@parallel_pool / executor"``.
        measured: The figure, or ``None`` when it could not be measured.
        op: ``"<="``, ``"<"`` or ``">="``: how ``measured`` must relate to
            ``target`` to pass.
        target: The limit.
        unit: Printed after both numbers (``""`` for a plain ratio).
    """

    name: str
    measured: float | None
    op: str
    target: float
    unit: str = ""

    @property
    def result(self) -> str:
        """``PASS``, ``MISS`` or ``n/a``."""
        if self.measured is None:
            return "n/a"
        passed = {
            "<=": self.measured <= self.target,
            "<": self.measured < self.target,
            ">=": self.measured >= self.target,
        }[self.op]
        return "PASS" if passed else "MISS"


def fmt_number(value: float | None) -> str:
    """A ratio or small quantity with about three significant digits."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1 or value == 0:
        return f"{value:.2f}"
    # Tiny ratios (e.g. against executor.map) would all print as 0.00.
    return f"{value:.2g}"


def print_checks(checks: Sequence[Check], title: str = "Targets") -> None:
    """Print the targets table; a MISS is reported, never turned into a failure."""
    rows = []
    for check in checks:
        unit = f" {check.unit}" if check.unit else ""
        rows.append(
            [
                check.name,
                fmt_number(check.measured) + unit,
                f"{check.op} {fmt_number(check.target)}{unit}",
                check.result,
            ]
        )
    print_table(["measure", "measured", "target", "result"], rows, title=title)
    misses = sum(check.result == "MISS" for check in checks)
    print(
        f"{len(checks) - misses} of {len(checks)} targets met"
        + (" (benchmarks report; the test suite asserts)" if misses else "")
    )


def run_child(
    python: str,
    script: str,
    child: str,
    extra: Sequence[str] = (),
    timeout: float = PEER_TIMEOUT,
) -> tuple[dict | None, str]:
    """Run ``script --child CHILD`` under ``python`` and return its JSON result.

    Args:
        python: Interpreter to run the child with.
        script: Path of the benchmark file (normally ``__file__``).
        child: Value of ``--child``; the script knows what to do with it.
        extra: Further command-line arguments, e.g. ``["--quick"]``.
        timeout: Seconds before the child is abandoned.

    Returns:
        ``(result, "")`` on success, else ``(None, reason)``. A child that
        cannot run never stops the benchmark: its column is simply skipped.
    """
    command = [python, script, "--child", child, *extra]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return None, f"no interpreter at {python}"
    except subprocess.TimeoutExpired:
        return None, f"took more than {timeout:.0f} s"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return None, lines[-1]
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line), ""
    return None, "the child printed no result"


def run_peer(
    args: argparse.Namespace, script: str, extra: Sequence[str] = ()
) -> tuple[dict | None, str]:
    """Run the peer measurement of ``script`` if ``--peer-python`` was given.

    Returns:
        ``(result, "")``, or ``(None, reason)`` when the peer was skipped.
    """
    if args.peer_python is None:
        return None, "skipped: no --peer-python given"
    flags = ["--repeat", str(args.repeat), *(["--quick"] if args.quick else [])]
    result, reason = run_child(args.peer_python, script, "peer", [*flags, *extra])
    if result is None:
        return None, f"skipped: {reason}"
    return result, ""


def emit_child_result(result: dict) -> None:
    """Print a child's result as the one JSON line its parent looks for."""
    print(json.dumps(result), flush=True)


# ---- shared workloads --------------------------------------------------------


def spin(n: int) -> int:
    """Pure-Python arithmetic: holds the GIL the whole time on a GIL build."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def noop(x):
    """The trivial task: returns its argument untouched."""
    return x


def calibrate_spin(target_secs: float) -> int:
    """The ``spin`` argument that takes about ``target_secs`` on this machine."""
    n = 50_000
    while True:
        start = time.perf_counter()
        spin(n)
        took = time.perf_counter() - start
        if took > 0.01:
            return max(1, int(n * target_secs / took))
        n *= 4

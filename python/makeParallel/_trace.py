"""Readable views of what ran: a metrics table and a timeline of tasks."""

from __future__ import annotations

import json
import os
from typing import Any

from . import _core
from ._metrics import get_all_metrics

_OUTCOMES = {1: "done", 2: "failed", 3: "cancelled", 4: "timed_out"}


def metrics_report() -> str:
    """Returns a text table of every function's metrics.

    One row per name: calls, failures, mean, p50, p95, p99 and max execution
    time in milliseconds, sorted by total time spent, largest first.
    """
    rows = [
        (name, m) for name, m in get_all_metrics().items() if not name.startswith("_")
    ]
    rows.sort(key=lambda row: row[1]["total_execution_time_ms"], reverse=True)
    header = ("name", "calls", "failed", "mean ms", "p50 ms", "p95 ms", "p99 ms",
              "max ms")
    table = [header]
    for name, m in rows:
        table.append((
            name,
            str(m["total_tasks"]),
            str(m["failed_tasks"]),
            *(f"{m[key]:.3f}" for key in (
                "average_execution_time_ms", "p50_execution_time_ms",
                "p95_execution_time_ms", "p99_execution_time_ms",
                "max_execution_time_ms")),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


class trace:
    """Records when each task was submitted, started and finished, and where.

    Use as ``with mp.trace() as t: ...``; afterwards ``t.events`` lists the
    executions and ``t.save("trace.json")`` writes them in the Chrome trace
    event format, which Perfetto (ui.perfetto.dev) and ``chrome://tracing``
    draw as one lane per worker thread. Outside a ``with trace()`` block
    nothing is recorded and tasks pay nothing for the feature. One trace at a
    time per process.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._thread_names: dict[int, str] = {}

    def __enter__(self) -> trace:
        _core._trace_start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        raw, self._thread_names = _core._trace_stop()
        self.events = [
            {
                "task_id": f"task_{task_id}",
                "name": name,
                "submitted_ns": submit_ns,
                "started_ns": start_ns,
                "finished_ns": end_ns,
                "thread_id": tid,
                "outcome": _OUTCOMES.get(outcome, "unknown"),
            }
            for task_id, name, submit_ns, start_ns, end_ns, tid, outcome in raw
        ]

    def to_chrome(self) -> dict[str, Any]:
        """The trace as a Chrome trace event dict (times in microseconds)."""
        pid = os.getpid()
        origin = min((e["submitted_ns"] for e in self.events), default=0)
        events: list[dict[str, Any]] = []
        for tid, name in sorted(self._thread_names.items()):
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                           "args": {"name": f"{name} ({tid})"}})
        for e in self.events:
            events.append({
                "ph": "X",
                "cat": "task",
                "name": e["name"],
                "pid": pid,
                "tid": e["thread_id"],
                "ts": (e["started_ns"] - origin) / 1000,
                "dur": (e["finished_ns"] - e["started_ns"]) / 1000,
                "args": {
                    "task_id": e["task_id"],
                    "outcome": e["outcome"],
                    "queued_us": (e["started_ns"] - e["submitted_ns"]) / 1000,
                },
            })
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def save(self, path: str | os.PathLike) -> None:
        """Writes the trace to ``path`` as Chrome trace event JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_chrome(), f)

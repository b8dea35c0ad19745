"""Per-function metrics: snapshots of what the core records."""

from __future__ import annotations

from typing import Any, Callable, Union

from . import _core

_FIELDS = (
    "total_tasks",
    "completed_tasks",
    "failed_tasks",
    "total_execution_time_ms",
    "average_execution_time_ms",
    "min_execution_time_ms",
    "max_execution_time_ms",
    "p50_execution_time_ms",
    "p95_execution_time_ms",
    "p99_execution_time_ms",
    "total_queue_time_ms",
)


class PerformanceMetrics:
    """An immutable snapshot of one function's metrics.

    Attributes:
        total_tasks: executions recorded (completed + failed).
        completed_tasks: executions that returned.
        failed_tasks: executions that raised.
        total_execution_time_ms: summed execution time, in milliseconds.
        average_execution_time_ms: mean execution time, in milliseconds.
        min_execution_time_ms, max_execution_time_ms: extremes, exact, in ms.
        p50_execution_time_ms, p95_execution_time_ms, p99_execution_time_ms:
            percentiles in ms, from a fixed-size histogram (within 1 %).
        total_queue_time_ms: summed time tasks waited between submission and
            start, in ms (0 for ``@profiled`` calls, which do not queue).
    """

    __slots__ = _FIELDS

    def __init__(self, values: dict[str, Any]) -> None:
        for field in _FIELDS:
            object.__setattr__(self, field, values[field])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("PerformanceMetrics is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PerformanceMetrics is immutable")

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict."""
        return {field: getattr(self, field) for field in _FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PerformanceMetrics):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"PerformanceMetrics(total_tasks={self.total_tasks}, "
            f"completed_tasks={self.completed_tasks}, "
            f"failed_tasks={self.failed_tasks}, "
            f"average_execution_time_ms={self.average_execution_time_ms:.3f}, "
            f"p99_execution_time_ms={self.p99_execution_time_ms:.3f})"
        )


def _name_of(name_or_function: Union[str, Callable[..., Any]]) -> str:
    if isinstance(name_or_function, str):
        return name_or_function
    if callable(name_or_function):
        label = getattr(name_or_function, "_metrics_name", None)
        if isinstance(label, str):
            return label
        name = getattr(name_or_function, "__name__", None)
        if isinstance(name, str):
            return name
    raise TypeError(
        "get_metrics() expects a function name or a function, "
        f"got {type(name_or_function).__name__}"
    )


def get_metrics(name: Union[str, Callable[..., Any]]) -> PerformanceMetrics | None:
    """Returns the metrics recorded under ``name`` (or the function's name).

    Returns ``None`` if nothing was recorded under that name since the last
    ``reset_metrics()``.
    """
    values = _core._get_metrics(_name_of(name))
    return None if values is None else PerformanceMetrics(values)


def get_all_metrics() -> dict[str, Any]:
    """Returns ``{name: {metric: value}}`` for every name with data.

    Also has the int counters ``_global_total``, ``_global_completed`` and
    ``_global_failed``, summed over all names.
    """
    return _with_globals(_core._all_metrics())


def _with_globals(per_name: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(per_name)
    out["_global_total"] = sum(m["total_tasks"] for m in per_name.values())
    out["_global_completed"] = sum(m["completed_tasks"] for m in per_name.values())
    out["_global_failed"] = sum(m["failed_tasks"] for m in per_name.values())
    return out


reset_metrics = _core.reset_metrics

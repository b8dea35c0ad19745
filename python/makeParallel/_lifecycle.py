"""Limits on submission, and shutting the library down."""

from __future__ import annotations

import math

from . import _core
from ._validate import check_int


def set_max_concurrent_tasks(n: int | None) -> None:
    """Allows at most ``n`` tasks in flight at once across the task decorators.

    A task counts from its submission until its code stops (or it is dropped
    unstarted); tasks already in flight when the limit is set count too.
    Past the limit, a submission blocks its caller, with the GIL released and
    Ctrl-C honoured, until a slot frees up.

    Args:
        n: the limit, an int >= 1, or ``None`` for no limit.

    Raises:
        TypeError, ValueError: if ``n`` is not None or an int >= 1.
    """
    _core._set_max_concurrent(0 if n is None else check_int("n", n, 1, 2**31 - 1))


def configure_memory_limit(max_memory_percent: float | None) -> None:
    """Refuses new tasks while the system's memory use is above a percentage.

    Memory use is ``(MemTotal - MemAvailable) / MemTotal`` from
    ``/proc/meminfo``, read at most every 50 ms. While it is above the limit,
    submissions raise ``MemoryError``; tasks already submitted are not
    affected.

    Args:
        max_memory_percent: a number in ``(0, 100]``, or ``None`` to turn the
            check off.

    Raises:
        TypeError, ValueError: for a value of the wrong type or range.
    """
    if max_memory_percent is None:
        _core._set_memory_limit(0.0)
        return
    value = max_memory_percent
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"max_memory_percent must be a number, not {type(value).__name__}"
        )
    if not (math.isfinite(value) and 0 < value <= 100):
        raise ValueError(f"max_memory_percent must be in (0, 100], got {value!r}")
    _core._set_memory_limit(float(value))


def shutdown(timeout_secs: float | None = 30.0, cancel_pending: bool = True) -> bool:
    """Stops accepting tasks and winds down the ones in flight.

    New submissions raise ``ShutdownError`` until ``reset_shutdown()``.
    Tasks not started yet are cancelled if ``cancel_pending``; cancellation is
    requested for running ones (they stop when their code returns or checks
    ``check_cancelled()``).

    Args:
        timeout_secs: how long to wait for running code to stop; ``None``
            waits as long as it takes.
        cancel_pending: cancel queued tasks and tasks waiting on dependencies.

    Returns:
        True if no task code is left running.
    """
    if timeout_secs is not None:
        if isinstance(timeout_secs, bool) or not isinstance(timeout_secs, (int, float)):
            kind = type(timeout_secs).__name__
            raise TypeError(f"timeout_secs must be a number or None, not {kind}")
        if math.isnan(timeout_secs) or timeout_secs < 0:
            raise ValueError(f"timeout_secs must be >= 0, got {timeout_secs!r}")
    if not isinstance(cancel_pending, bool):
        raise TypeError(
            f"cancel_pending must be a bool, not {type(cancel_pending).__name__}"
        )
    return _core._shutdown(cancel_pending, timeout_secs)


def reset_shutdown() -> None:
    """Accepts submissions again after ``shutdown()``."""
    _core._reset_shutdown()


def get_active_task_count() -> int:
    """Tasks submitted whose code has not finished (and was not dropped)."""
    return _core._active_task_count()

"""Functions for code running inside a task."""

from __future__ import annotations

import math

from . import _core
from ._errors import TaskCancelledError


def is_cancelled() -> bool:
    """True if cancellation was requested for the task running this code.

    Outside a task it returns False.
    """
    return _core._is_cancelled()


def check_cancelled() -> None:
    """Raises ``TaskCancelledError`` if the current task should stop.

    Call it now and then in long loops: it is how a thread task cooperates
    with ``cancel()`` and with its timeout. Outside a task it does nothing.
    """
    if _core._is_cancelled():
        raise TaskCancelledError(
            f"task {_core._current_task_id()} was cancelled"
        )


def get_current_task_id() -> str | None:
    """The id of the task running this code (e.g. ``"task_17"``), or None."""
    return _core._current_task_id()


def report_progress(fraction: float, task_id: str | None = None) -> None:
    """Reports how far the current task (or the task ``task_id``) has got.

    Args:
        fraction: a finite number in ``[0, 1]``.
        task_id: the id of another running task; needed outside a task.

    Raises:
        TypeError: if fraction is not a number or task_id not a str.
        ValueError: if fraction is outside [0, 1] or task_id is unknown.
        RuntimeError: if called outside a task without ``task_id``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number, not {type(fraction).__name__}")
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
        raise ValueError(
            f"fraction must be a finite number in [0, 1], got {fraction!r}"
        )
    number = None
    if task_id is not None:
        if not isinstance(task_id, str):
            raise TypeError(f"task_id must be a str, not {type(task_id).__name__}")
        prefix, _, digits = task_id.partition("_")
        if prefix != "task" or not digits.isdigit():
            raise ValueError(f"task_id must look like 'task_17', got {task_id!r}")
        number = int(digits)
    callbacks = _core._report_progress(float(fraction), number)
    for callback in callbacks or ():
        callback(float(fraction))

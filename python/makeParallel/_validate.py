"""Argument checks shared by the public functions: each names the parameter."""

from __future__ import annotations

import math
from typing import Any, Callable


def check_callable(func: Any, where: str) -> Callable[..., Any]:
    """Returns ``func`` if it is callable, else raises ``TypeError``."""
    if not callable(func):
        raise TypeError(
            f"{where}() expects a callable, got {func!r} "
            f"of type {type(func).__name__}"
        )
    return func


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Returns ``value`` if it is an int (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_seconds(name: str, value: Any, *, allow_none: bool = True) -> float | None:
    """Returns a positive finite number of seconds (or ``None`` if allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number of seconds or None" if allow_none else "a number of seconds"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"{name} must be a positive finite number of seconds, got {value!r}"
        )
    return float(value)


def function_name(func: Any) -> str:
    """The name tasks and metrics use for ``func``.

    A bound method gives the method's name, a ``functools.partial`` the name of
    the function it wraps, any other callable its ``__name__`` or its type's.
    """
    while True:
        name = getattr(func, "__name__", None)
        if isinstance(name, str):
            return name
        inner = getattr(func, "func", None)  # functools.partial and friends
        if inner is None or inner is func:
            return type(func).__name__
        func = inner

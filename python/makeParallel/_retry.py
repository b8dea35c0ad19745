"""Retry decorators: ``@retry``, ``@retry_backoff`` and ``@retry_cached``.

Each attempt is a plain call of the function in the caller's thread. Waits
between attempts use ``time.sleep``, which releases the GIL, so a task
backing off does not stop other threads from running Python code.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from ._cache import cached_wrapper
from ._context import is_cancelled
from ._errors import TaskCancelledError
from ._validate import check_callable, check_int, function_name

logger = logging.getLogger("makeParallel")

BACKOFF_KINDS = ("exponential", "linear", "constant")


def _check_function(func: Any, decorator: str) -> None:
    check_callable(func, decorator)
    if inspect.iscoroutinefunction(func):
        # Calling it only creates a coroutine, so nothing would ever be retried.
        raise TypeError(f"{decorator}() does not support coroutine functions")


def _check_delay(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = type(value).__name__
        raise TypeError(f"{name} must be a number of seconds, not {kind}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_exceptions(value: Any) -> tuple[type[BaseException], ...]:
    kinds = value if isinstance(value, tuple) else (value,)
    if not kinds or not all(
        isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds
    ):
        raise TypeError(
            "exceptions must be an exception class or a non-empty tuple of them, "
            f"got {value!r}"
        )
    return kinds


def _attempts(
    func: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    attempts: int,
    retry_on: tuple[type[BaseException], ...],
    delay: Callable[[int], float] | None,
) -> Any:
    """Calls ``func`` up to ``attempts`` times; re-raises the last failure.

    ``delay(n)`` gives the seconds to sleep before retry number ``n``
    (1-based); ``None`` means retry at once.
    """
    name = function_name(func)
    attempt = 1
    while True:
        try:
            return func(*args, **kwargs)
        except TaskCancelledError:
            # Cancellation is a request to stop, not a transient failure.
            raise
        except retry_on as exc:
            if attempt >= attempts or is_cancelled():
                raise
            seconds = delay(attempt) if delay is not None else 0.0
            logger.debug(
                "%s: attempt %d of %d failed with %r; retrying in %.3f s",
                name,
                attempt,
                attempts,
                exc,
                seconds,
            )
        if seconds > 0:
            time.sleep(seconds)
            if is_cancelled():  # cancelled while we slept: no further attempt
                raise TaskCancelledError(f"{name} was cancelled between attempts")
        attempt += 1


def retry(max_retries: Any = 3) -> Any:
    """Calls the function again when it raises, up to ``max_retries`` times.

    Use as ``@retry``, ``@retry(5)`` or ``@retry(max_retries=5)``. The
    function runs once, and after each failure again at once, so at most
    ``max_retries + 1`` times; when the last attempt fails its exception is
    re-raised. Any ``Exception`` triggers a retry except
    ``TaskCancelledError``; ``KeyboardInterrupt`` and ``SystemExit`` pass
    through at once. Inside a task whose cancellation was requested no further
    attempt is made. Each retry is logged at DEBUG on the ``makeParallel``
    logger.

    Args:
        max_retries: the number of further attempts after the first failure
            (0 disables retrying); or the function itself when used bare.

    Returns:
        The retrying wrapper, or a decorator that makes one.

    Raises:
        TypeError: if ``max_retries`` is not an int, or what is decorated is
            not callable or is a coroutine function.
        ValueError: if ``max_retries`` is negative.
    """
    if callable(max_retries):
        return retry()(max_retries)
    check_int("max_retries", max_retries, 0)

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        _check_function(func, "retry")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return _attempts(func, args, kwargs, max_retries + 1, (Exception,), None)

        return wrapper

    return wrap


def backoff_delay(
    retry_number: int,
    backoff: str,
    initial_delay: float,
    max_delay: float,
    jitter: bool = False,
) -> float:
    """The seconds ``retry_backoff`` sleeps before a given retry.

    Before retry ``n`` (1 for the second attempt): ``initial_delay * 2**(n-1)``
    for ``"exponential"``, ``initial_delay * n`` for ``"linear"``,
    ``initial_delay`` for ``"constant"``; then capped at ``max_delay``. With
    ``jitter``, the capped delay is scaled by a random factor in
    ``[0.5, 1.0]``, so it spreads out retries of many callers yet never
    exceeds ``max_delay`` nor shrinks below half.

    Args:
        retry_number: which retry, from 1.
        backoff: ``"exponential"``, ``"linear"`` or ``"constant"``.
        initial_delay: seconds before the first retry.
        max_delay: the largest delay.
        jitter: whether to randomise the delay.

    Returns:
        The delay in seconds.

    Raises:
        ValueError: for an unknown ``backoff``.
    """
    if backoff == "exponential":
        exponent = retry_number - 1
        if exponent < 1000:
            seconds = initial_delay * 2.0**exponent
        else:
            # 2.0**1024 raises OverflowError; any such delay is past the cap.
            seconds = math.inf if initial_delay > 0 else 0.0
    elif backoff == "linear":
        seconds = initial_delay * retry_number
    elif backoff == "constant":
        seconds = initial_delay
    else:
        raise ValueError(f"backoff must be one of {BACKOFF_KINDS}, got {backoff!r}")
    seconds = min(seconds, max_delay)
    if jitter:
        seconds *= random.uniform(0.5, 1.0)
    return seconds


def retry_backoff(
    max_attempts: Any = 3,
    backoff: str = "exponential",
    initial_delay: float = 1.0,
    max_delay: float = 60.0,
    jitter: bool = False,
    exceptions: Any = (Exception,),
) -> Any:
    """Retries the function with growing waits between attempts.

    Use as ``@retry_backoff`` or ``@retry_backoff(max_attempts=5, ...)``.
    The function runs at most ``max_attempts`` times in all. After a failure
    whose type is in ``exceptions`` it sleeps (``time.sleep``, GIL released)
    and tries again; the delay before retry ``n`` is given by
    ``backoff_delay``: with the defaults 1 s, 2 s, 4 s, ... up to ``max_delay``.
    Exceptions of other types, ``TaskCancelledError``, and the failure of the
    last attempt propagate unchanged. Inside a task whose cancellation was
    requested no further attempt is made. Each retry is logged at DEBUG on the
    ``makeParallel`` logger.

    Args:
        max_attempts: the total number of attempts, at least 1; or the
            function itself when used bare.
        backoff: ``"exponential"``, ``"linear"`` or ``"constant"``.
        initial_delay: seconds before the first retry, ``>= 0``.
        max_delay: the cap on any delay, ``>= 0``.
        jitter: if true, scale each delay by a random factor in [0.5, 1.0].
        exceptions: an exception class or tuple of them that are retried.

    Returns:
        The retrying wrapper, or a decorator that makes one.

    Raises:
        TypeError: for a parameter of the wrong type, or if what is decorated
            is not callable or is a coroutine function.
        ValueError: for ``max_attempts < 1``, an unknown ``backoff``, or a
            negative or non-finite delay.
    """
    if callable(max_attempts):
        return retry_backoff()(max_attempts)
    check_int("max_attempts", max_attempts, 1)
    if not isinstance(backoff, str):
        raise TypeError(f"backoff must be a str, not {type(backoff).__name__}")
    if backoff not in BACKOFF_KINDS:
        raise ValueError(f"backoff must be one of {BACKOFF_KINDS}, got {backoff!r}")
    initial = _check_delay("initial_delay", initial_delay)
    cap = _check_delay("max_delay", max_delay)
    if not isinstance(jitter, bool):
        raise TypeError(f"jitter must be a bool, not {type(jitter).__name__}")
    retry_on = _check_exceptions(exceptions)

    def delay(retry_number: int) -> float:
        return backoff_delay(retry_number, backoff, initial, cap, jitter)

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        _check_function(func, "retry_backoff")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return _attempts(func, args, kwargs, max_attempts, retry_on, delay)

        return wrapper

    return wrap


def retry_cached(max_attempts: Any = 3, cache_failures: bool = False) -> Any:
    """Retries the function and caches its results by argument values.

    Use as ``@retry_cached`` or ``@retry_cached(max_attempts=5)``. A call
    whose arguments were seen before returns the cached result without
    running the function. Otherwise the function runs up to ``max_attempts``
    times, retrying at once after an ``Exception`` (not after
    ``TaskCancelledError``); a success is cached. When every attempt fails the
    last exception is raised, and with ``cache_failures=True`` it is also
    cached, so later calls with those arguments raise it again without
    running anything. The cache behaves as ``memoize``'s, without a size
    bound: keyed on hash and equality, concurrent calls with the same key
    share one computation, unhashable arguments bypass it, and the wrapper
    has ``cache_info()`` and ``cache_clear()``.

    Args:
        max_attempts: the total number of attempts per computation, at
            least 1; or the function itself when used bare.
        cache_failures: whether a final failure is cached too.

    Returns:
        The wrapper, or a decorator that makes one.

    Raises:
        TypeError: for a parameter of the wrong type, or if what is decorated
            is not callable or is a coroutine function.
        ValueError: if ``max_attempts < 1``.
    """
    if callable(max_attempts):
        return retry_cached()(max_attempts)
    check_int("max_attempts", max_attempts, 1)
    if not isinstance(cache_failures, bool):
        raise TypeError(
            f"cache_failures must be a bool, not {type(cache_failures).__name__}"
        )

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        _check_function(func, "retry_cached")

        def compute(*args: Any, **kwargs: Any) -> Any:
            return _attempts(func, args, kwargs, max_attempts, (Exception,), None)

        return cached_wrapper(func, "retry_cached", None, cache_failures, compute)

    return wrap

"""``@timer`` and ``CallCounter``: light instrumentation for single functions.

``@profiled`` feeds the library's metrics; these two are for a person
watching one function: ``@timer`` reports every call as it ends and
``CallCounter`` keeps a count that can be read and reset.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from ._decorators import _NO_FUNCTION
from ._validate import check_callable, function_name


def timer(
    func: Any = _NO_FUNCTION, *, logger: logging.Logger | None = None
) -> Any:
    """Reports how long each call of the function took.

    Use as ``@timer`` or ``@timer(logger=some_logger)``. Without a logger each
    call writes one line to ``sys.stderr``, e.g. ``"timer: load took
    0.012345 s"``; with one, the same text is logged at INFO level. Calls that
    raise are reported too (``"... raised ValueError after 0.001000 s"``) and
    the exception propagates unchanged. The clock is ``time.perf_counter``.

    Args:
        func: the function, when used bare.
        logger: a ``logging.Logger`` (or ``LoggerAdapter``) to report to
            instead of stderr.

    Returns:
        The timing wrapper, or a decorator that makes one.

    Raises:
        TypeError: if ``logger`` is not a logger, or what is decorated is not
            callable or is a coroutine function.
    """
    if logger is not None and not isinstance(
        logger, (logging.Logger, logging.LoggerAdapter)
    ):
        raise TypeError(f"logger must be a logging.Logger, not {type(logger).__name__}")

    def report(text: str) -> None:
        if logger is None:
            # Looked up at each call so that redirecting sys.stderr is honoured.
            sys.stderr.write(f"timer: {text}\n")
        else:
            logger.info("timer: %s", text)

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        check_callable(f, "timer")
        if inspect.iscoroutinefunction(f):
            # The call would only create the coroutine; its run is not timed.
            raise TypeError("timer() does not support coroutine functions")
        name = getattr(f, "__qualname__", None) or function_name(f)

        @functools.wraps(f)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                value = f(*args, **kwargs)
            except BaseException as exc:
                elapsed = time.perf_counter() - start
                report(f"{name} raised {type(exc).__name__} after {elapsed:.6f} s")
                raise
            report(f"{name} took {time.perf_counter() - start:.6f} s")
            return value

        return timed

    return wrap if func is _NO_FUNCTION else wrap(func)


class CallCounter:
    """Counts the calls of the function it decorates.

    Use as ``@CallCounter``; ``f.call_count`` is the number of calls so far
    (calls that raised included, counted as they start) and ``f.reset()``
    sets it back to 0. Counting is thread-safe. On a method the counter
    belongs to the function, so calls on every instance add to the one count
    while each call still gets its own ``self``; read it as
    ``Class.method.call_count`` or ``instance.method.call_count``.

    Args:
        func: the function to count.

    Raises:
        TypeError: if ``func`` is not callable.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        check_callable(func, "CallCounter")
        functools.update_wrapper(self, func)
        if "__qualname__" not in self.__dict__:  # e.g. a functools.partial
            self.__name__ = self.__qualname__ = function_name(func)
        self._func = func
        self._lock = threading.Lock()
        self._count = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # `+=` on an attribute is a read and a write; threads can interleave.
        with self._lock:
            self._count += 1
        return self._func(*args, **kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # Without this a CallCounter in a class body would not bind `self`.
        if instance is None:
            return self
        return types.MethodType(self, instance)

    @property
    def call_count(self) -> int:
        """The number of calls since creation or the last ``reset()``."""
        with self._lock:
            return self._count

    def reset(self) -> None:
        """Sets the count back to 0."""
        with self._lock:
            self._count = 0

    def __reduce__(self) -> str:
        # Pickle by reference, as the module-level function it replaced would be.
        return self.__qualname__

    def __repr__(self) -> str:
        return f"<CallCounter {self.__qualname__} calls={self.call_count}>"

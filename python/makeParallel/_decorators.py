"""The task decorators and ``@profiled``.

A decorated function is a ``TaskFunction``: calling it submits a task and
returns an ``AsyncHandle`` at once. The call itself is implemented in C++ (no
Python frame per submission); this module only builds and describes them.
"""

from __future__ import annotations

import functools
import inspect
import time
from typing import Any, Callable, TypeVar

from . import _core
from ._process import backend_code
from ._validate import check_callable, check_seconds, function_name

F = TypeVar("F", bound=Callable[..., Any])

# Default of the decorators' first parameter: distinguishes ``@parallel()``
# (options only) from ``parallel(None)`` (a non-callable, refused).
_NO_FUNCTION: Any = object()

# Where tasks run; the values are the core's mp::place.
POOL, CACHE, PRIORITY = 0, 1, 2


class TaskFunction(_core.TaskFunction):
    """A function whose calls run as background tasks.

    Calling it returns an ``AsyncHandle``. Per-call options are taken from the
    keywords ``timeout=`` (and ``priority=`` for priority tasks) and not passed
    on; use ``.options(...)`` when the function has parameters of those names.
    """

    def options(self, **opts: Any) -> TaskFunction:
        """Returns a caller with these options that forwards every keyword.

        Args:
            timeout: seconds after submission at which the task times out.
            priority: for ``@parallel_priority`` functions, the priority.
            backend: ``"thread"`` or ``"process"``; where the calls run.

        Raises:
            TypeError: for an option this kind of task does not have.
            ValueError: for an unknown backend.
        """
        allowed = {"timeout", "backend"}
        if self._where == PRIORITY:
            allowed.add("priority")
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise TypeError(
                f"options() got unexpected option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        priority = opts.get("priority", self._priority)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        caller = TaskFunction(
            self._fn,
            self._metrics_name,
            self._where,
            False,
            opts.get("timeout", self._timeout),
            priority,
            self._with_deps,
            backend_code(opts["backend"]) if "backend" in opts else self._backend,
        )
        _describe(caller, self._fn)
        return caller

    def __reduce__(self) -> Any:
        # By reference, as the module-level function it replaced would be; by
        # value where another process could not look it up (see _by_value).
        if not _by_value(self):
            return self.__qualname__
        return (_rebuild_task_function, (
            self._fn, self._metrics_name, self._where, self._consume_options,
            self._timeout, self._priority, self._with_deps, self._backend,
        ))

    def __repr__(self) -> str:
        return f"<TaskFunction {self.__qualname__}>"


class ProfiledFunction(_core.ProfiledFunction):
    """A function whose calls are timed and counted (see ``get_metrics``)."""

    def __reduce__(self) -> Any:
        if not _by_value(self):
            return self.__qualname__
        label = getattr(self, "_metrics_name", None) or function_name(self._fn)
        return (_rebuild_profiled_function, (self._fn, label))

    def __repr__(self) -> str:
        return f"<ProfiledFunction {self.__qualname__}>"


def _by_value(wrapper: Any) -> bool:
    """Whether a wrapper must be pickled by value: defined in ``__main__`` (a
    worker process's ``__main__`` is another module) or inside a function."""
    module = getattr(wrapper, "__module__", None)
    return module == "__main__" or "<locals>" in getattr(wrapper, "__qualname__", "")


def _rebuild_task_function(fn: Any, *config: Any) -> TaskFunction:
    """Unpickles a TaskFunction sent by value (see ``TaskFunction.__reduce__``)."""
    wrapper = TaskFunction(fn, *config)
    _describe(wrapper, fn)
    return wrapper


def _rebuild_profiled_function(fn: Any, label: str) -> ProfiledFunction:
    """Unpickles a ProfiledFunction sent by value."""
    wrapper = ProfiledFunction(fn, label)
    _describe(wrapper, fn)
    wrapper._metrics_name = label
    return wrapper


def _describe(wrapper: Any, func: Callable[..., Any]) -> None:
    """Copies the function's identity (as ``functools.wraps`` does)."""
    functools.update_wrapper(wrapper, func)
    if not hasattr(wrapper, "__name__"):
        wrapper.__name__ = function_name(func)
    if not hasattr(wrapper, "__qualname__"):
        wrapper.__qualname__ = wrapper.__name__


def _task_decorator(
    where: int, decorator: str, doc: str, with_deps: bool = False
) -> Callable[..., Any]:
    accepts_priority = where == PRIORITY

    def decorate(
        func: Any = _NO_FUNCTION,
        *,
        timeout: float | None = None,
        priority: int | None = None,
        backend: str | None = None,
    ) -> Any:
        if priority is not None and not accepts_priority:
            raise TypeError(f"{decorator}() has no priority option")
        check_seconds("timeout", timeout)
        code = backend_code(backend)

        def wrap(f: Callable[..., Any]) -> TaskFunction:
            check_callable(f, decorator)
            if inspect.iscoroutinefunction(f) or inspect.isgeneratorfunction(f):
                kind = "an async" if inspect.iscoroutinefunction(f) else "a generator"
                raise TypeError(
                    f"{decorator}() cannot run {kind} function ({f.__qualname__}): "
                    "its call only creates an object that must be driven elsewhere; "
                    "wrap it in a plain function (e.g. one calling asyncio.run)"
                )
            wrapper = TaskFunction(
                f, function_name(f), where, True, timeout, priority, with_deps, code
            )
            _describe(wrapper, f)
            return wrapper

        return wrap if func is _NO_FUNCTION else wrap(func)

    decorate.__name__ = decorate.__qualname__ = decorator
    decorate.__doc__ = doc
    return decorate


parallel = _task_decorator(
    CACHE,
    "parallel",
    """Runs each call of the function as a task on a thread of its own.

    Threads come from a cache of idle threads (see ``configure_thread_cache``).
    Use as ``@parallel`` or ``@parallel(timeout=5.0)``. Each call returns an
    ``AsyncHandle``; ``timeout=`` given to a call applies to that call only.

    Raises:
        TypeError: if what is decorated is not callable.
    """,
)

parallel_fast = _task_decorator(
    CACHE,
    "parallel_fast",
    """The same as ``parallel``; kept as a name for code written for it.""",
)

parallel_pool = _task_decorator(
    POOL,
    "parallel_pool",
    """Runs each call of the function as a task on the global thread pool.

    The pool has a fixed size (``configure_thread_pool``); tasks beyond it
    wait in first-in first-out order. Use as ``@parallel_pool`` or
    ``@parallel_pool(timeout=5.0)``.
    """,
)

parallel_priority = _task_decorator(
    PRIORITY,
    "parallel_priority",
    """Runs each call as a task of the priority queue.

    Each call takes ``priority=`` (an int, default 0; higher runs first, ties
    in submission order) and ``timeout=``. The priority worker starts on the
    first call (see ``start_priority_worker``).
    """,
)


parallel_with_deps = _task_decorator(
    CACHE,
    "parallel_with_deps",
    """Like ``parallel``, with dependencies: ``f(*args, depends_on=[h1, h2])``.

    The task starts only after every handle in ``depends_on`` succeeded, and
    receives their results as a tuple in its first positional argument. If
    one fails, is cancelled or times out, the task does not run and fails
    with ``DependencyError`` (its ``__cause__`` says why). While it waits it
    occupies no thread.
    """,
    with_deps=True,
)


def profiled(func: Any = _NO_FUNCTION, *, name: str | None = None) -> Any:
    """Times every call of the function and counts successes and failures.

    Use as ``@profiled`` or ``@profiled(name="custom")``. Works on plain and
    ``async def`` functions (for the latter, the awaited execution is timed).
    Read the figures with ``get_metrics(name)``. Exceptions pass through
    unchanged and count as failures.

    Raises:
        TypeError: if what is decorated is not callable or name is not a str.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")

    def wrap(f: Callable[..., Any]) -> Any:
        check_callable(f, "profiled")
        label = name if name is not None else function_name(f)
        if inspect.iscoroutinefunction(f):
            return _profile_coroutine(f, label)
        wrapper = ProfiledFunction(f, label)
        _describe(wrapper, f)
        wrapper._metrics_name = label
        return wrapper

    return wrap if func is _NO_FUNCTION else wrap(func)


def _profile_coroutine(f: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(f)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        ok = False
        try:
            value = await f(*args, **kwargs)
            ok = True
            return value
        finally:
            _core._record(label, time.perf_counter() - start, ok)

    timed._metrics_name = label  # type: ignore[attr-defined]
    return timed

"""Configuration of the places where tasks run."""

from __future__ import annotations

from typing import Any

from . import _core
from ._validate import check_int, check_seconds

#: Upper bound on thread counts; more is almost surely a mistake (each thread
#: reserves its stack's address space).
MAX_THREADS = 4096

#: Smallest accepted stack size for pool threads, in bytes: enough for the
#: interpreter's own frames plus modest recursion in task code.
MIN_STACK_SIZE: int = _core._min_stack_size

#: Default cap on the threads that ``@parallel`` tasks run on.
DEFAULT_CACHE_THREADS = 512
#: Default seconds an idle ``@parallel`` thread waits for work before exiting.
DEFAULT_IDLE_TIMEOUT = 10.0


def _select(info: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The documented keys of an info dict from the core, in that order."""
    return {key: info[key] for key in keys}


def configure_thread_pool(
    num_threads: int | None = None, stack_size: int | None = None
) -> None:
    """Sets the size and stack size of the global pool.

    The pool runs ``@parallel_pool`` tasks and ``parallel_map``. It is safe to
    call while tasks run or wait: running tasks finish on their old threads,
    which then exit, and queued tasks run on the new ones.

    Args:
        num_threads: number of worker threads; ``None`` means the CPUs this
            process may run on (its affinity mask).
        stack_size: bytes of stack per worker thread, a multiple of the page
            size and at least ``MIN_STACK_SIZE`` (256 KiB); ``None`` means the
            platform default.

    Raises:
        TypeError: if an argument is not an int (bools are refused too).
        ValueError: if an argument is out of range.
    """
    if num_threads is None:
        threads = _core._available_cpus()
    else:
        threads = check_int("num_threads", num_threads, 1, MAX_THREADS)
    stack = 0
    if stack_size is not None:
        stack = check_int("stack_size", stack_size, MIN_STACK_SIZE, 1 << 30)
        page = _core._page_size()
        if stack % page:
            raise ValueError(
                f"stack_size must be a multiple of the page size ({page} bytes), "
                f"got {stack_size}"
            )
    _core._configure_pool(threads, stack)


def get_thread_pool_info() -> dict[str, Any]:
    """Describes the global pool.

    Returns:
        A dict with ``configured`` (``configure_thread_pool`` was called),
        ``current_num_threads``, ``stack_size`` (bytes), ``active_tasks`` and
        ``queued_tasks``.
    """
    return _select(
        _core._pool_info(),
        "configured", "current_num_threads", "stack_size", "active_tasks",
        "queued_tasks",
    )


def configure_thread_cache(
    max_threads: int | None = None, idle_timeout_secs: float | None = None
) -> None:
    """Sets the limits of the thread cache behind ``@parallel``.

    Each ``@parallel`` task starts at once on an idle cached thread or a new
    one; past ``max_threads`` threads, further tasks wait for one to free up.

    Args:
        max_threads: the cap (default 512).
        idle_timeout_secs: how long an idle thread waits for work before it
            exits (default 10 s).

    Raises:
        TypeError, ValueError: for values of the wrong type or range.
    """
    cap = DEFAULT_CACHE_THREADS
    if max_threads is not None:
        cap = check_int("max_threads", max_threads, 1, MAX_THREADS)
    idle = check_seconds("idle_timeout_secs", idle_timeout_secs)
    _core._configure_cache(cap, DEFAULT_IDLE_TIMEOUT if idle is None else idle)


def get_thread_cache_info() -> dict[str, Any]:
    """Describes the thread cache behind ``@parallel``.

    Returns:
        A dict with ``max_threads``, ``idle_timeout_secs``,
        ``current_threads``, ``idle_threads``, ``active_tasks`` and
        ``queued_tasks``.
    """
    return _select(
        _core._cache_info(),
        "max_threads", "idle_timeout_secs", "current_threads", "idle_threads",
        "active_tasks", "queued_tasks",
    )


def start_priority_worker(num_workers: int = 1) -> None:
    """Starts the workers of the priority queue; does nothing if running.

    The first ``@parallel_priority`` call starts them automatically.

    Raises:
        TypeError, ValueError: if ``num_workers`` is not an int >= 1.
    """
    _core._start_priority(check_int("num_workers", num_workers, 1, MAX_THREADS))


def stop_priority_worker(cancel_pending: bool = False) -> None:
    """Stops the priority workers.

    Tasks already running finish. Queued tasks stay queued and run when the
    workers start again (explicitly, by the next ``@parallel_priority`` call,
    or by a ``get()``/``wait()`` on one of them), unless ``cancel_pending``
    is true, in which case they are cancelled.
    """
    if not isinstance(cancel_pending, bool):
        raise TypeError(
            f"cancel_pending must be a bool, not {type(cancel_pending).__name__}"
        )
    _core._stop_priority(cancel_pending)


def get_priority_queue_info() -> dict[str, Any]:
    """Describes the priority queue.

    Returns:
        A dict with ``running`` (bool), ``num_workers``, ``queued_tasks`` and
        ``active_tasks``.
    """
    return _select(
        _core._priority_info(), "running", "num_workers", "queued_tasks", "active_tasks"
    )

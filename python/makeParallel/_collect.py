"""Waiting on many handles: ``gather``, ``as_completed``, ``wait`` and
``ParallelContext``.

Nothing here polls. Each wait registers a callback on every handle with
``add_done_callback`` and sleeps on a condition variable that the callbacks
notify, so a waiter wakes exactly when a handle settles (or its deadline
passes). The functions use only the ``concurrent.futures.Future`` vocabulary
of the handles, so they accept ``concurrent.futures.Future`` objects too.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from typing import Any, NamedTuple

from ._decorators import POOL, TaskFunction
from ._errors import WaitTimeoutError
from ._validate import check_callable, check_seconds, function_name

ON_ERROR_MODES = ("raise", "skip", "none")
RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)


class DoneAndNotDone(NamedTuple):
    """What ``wait`` returns: two sets of handles.

    Attributes:
        done: the handles settled when ``wait`` returned.
        not_done: the others.
    """

    done: set
    not_done: set


def _check_timeout(timeout: Any) -> float | None:
    """A wait's timeout: ``None`` (no limit) or a finite number ``>= 0``."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if not (timeout >= 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a finite number >= 0, got {timeout!r}")
    return float(timeout)


def _unique_handles(handles: Any) -> tuple[list, list]:
    """Returns the handles as a list, and that list without repeats."""
    if isinstance(handles, (str, bytes)) or not isinstance(handles, Iterable):
        raise TypeError(f"handles must be an iterable of handles, got {handles!r}")
    items = list(handles)
    for index, handle in enumerate(items):
        if not callable(getattr(handle, "add_done_callback", None)):
            raise TypeError(
                f"handles[{index}] is not a handle: {type(handle).__name__} "
                "has no add_done_callback()"
            )
    unique = list({id(h): h for h in items}.values())
    return items, unique


def _failed(handle: Any) -> bool:
    """True if a settled handle did not succeed (error, cancelled, timed out)."""
    if handle.cancelled():
        return True
    return handle.exception(0) is not None


class _Waiter:
    """Collects handles in the order their outcomes settle.

    ``notify`` is the done-callback given to every handle. It can run on a
    worker thread, or at once inside ``add_done_callback`` on the caller's
    thread, so it takes the lock itself and calls nothing that could block.
    A handle that outlives an abandoned wait still calls it later; it then
    records into a waiter nobody reads, which is harmless.
    """

    def __init__(self, handles: list) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._settled: list = []
        # Counts of settled handles that were cancelled / that raised (a
        # timeout counts as raised, as exception() returns its error).
        self.cancelled = 0
        self.raised = 0
        for handle in handles:
            handle.add_done_callback(self.notify)
            # We are about to wait on it: a task queued for stopped priority
            # workers must restart them, as handle.wait() does.
            kick = getattr(handle, "_kick", None)
            if kick is not None:
                kick()

    def notify(self, handle: Any) -> None:
        # Classified here, outside the lock: the handle is settled, so this
        # does not block, and no handle method is ever called under the lock.
        try:
            cancelled = handle.cancelled()
            raised = not cancelled and handle.exception(0) is not None
        except BaseException:
            # A handle that cannot say how it ended must still wake the waiter.
            cancelled, raised = False, True
        with self._changed:
            self._settled.append(handle)
            self.cancelled += cancelled
            self.raised += raised
            self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[_Waiter], bool], deadline: float | None
    ) -> bool:
        """Sleeps until ``predicate(self)`` holds or the deadline passes.

        The predicate runs under the lock and reads ``count``, ``cancelled``
        and ``raised``. Returns whether it holds.
        """
        with self._changed:
            while not predicate(self):
                if deadline is None:
                    self._changed.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    # Longer than the lock allows (about 292 years) is forever.
                    self._changed.wait(min(remaining, threading.TIMEOUT_MAX))
            return True

    @property
    def count(self) -> int:
        """How many handles have settled (read it under the lock)."""
        return len(self._settled)

    def settled(self) -> list:
        """The handles settled so far, in settling order."""
        with self._changed:
            return list(self._settled)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def gather(
    handles: Iterable[Any], on_error: str = "raise", timeout: Any = None
) -> list:
    """Waits for the handles and returns their results in the handles' order.

    A handle "fails" if its task raised, was cancelled or timed out. With
    ``on_error="raise"`` the wait ends as soon as one fails and its exception
    is raised (the first failed one in the handles' order if several have);
    the other tasks go on. ``"skip"`` leaves failed handles out of the list,
    ``"none"`` puts ``None`` in their place. A handle given twice appears
    twice. Nothing is cancelled by ``gather``, also not on a timeout.

    Args:
        handles: an iterable of ``AsyncHandle`` (or ``concurrent.futures``
            futures).
        on_error: ``"raise"``, ``"skip"`` or ``"none"``.
        timeout: seconds for the whole wait, or ``None`` for no limit.

    Returns:
        The list of results.

    Raises:
        ValueError: for another ``on_error``, or a negative or non-finite
            timeout; raised before anything waits.
        TypeError: if ``handles`` is not an iterable of handles.
        TimeoutError: if the handles have not all settled within ``timeout``.
        Exception: with ``on_error="raise"``, the failed task's exception
            (``TaskCancelledError``, ``TaskTimeoutError`` or its own).
    """
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
    limit = _check_timeout(timeout)
    items, unique = _unique_handles(handles)
    deadline = _deadline(limit)
    total = len(unique)
    stop_on_failure = on_error == "raise"

    waiter = _Waiter(unique)
    finished = waiter.wait_for(
        lambda w: w.count == total or (stop_on_failure and w.cancelled + w.raised > 0),
        deadline,
    )
    if not finished:
        pending = total - len(waiter.settled())
        raise WaitTimeoutError(
            f"gather(): {pending} of {total} handles did not finish within {limit} s"
        )

    settled = {id(h) for h in waiter.settled()}
    results = []
    for handle in items:
        if id(handle) not in settled:
            continue  # only when raising: a later handle failed first
        if _failed(handle):
            if on_error == "raise":
                # result() re-raises the task's own exception (or the
                # cancellation / timeout error) with its traceback.
                handle.result(0)
            if on_error == "none":
                results.append(None)
            continue
        results.append(handle.result(0))
    return results


def as_completed(handles: Iterable[Any], timeout: Any = None) -> Iterator[Any]:
    """Yields the handles as their outcomes settle, first settled first.

    Handles already settled come first. A handle given twice is yielded
    once. Arguments are checked and the deadline starts when
    ``as_completed`` is called, not at the first ``next()``.

    Args:
        handles: an iterable of ``AsyncHandle`` (or ``concurrent.futures``
            futures).
        timeout: seconds from the call until the last handle must have
            settled, or ``None`` for no limit.

    Returns:
        An iterator over the handles.

    Raises:
        TypeError: if ``handles`` is not an iterable of handles.
        ValueError: for a negative or non-finite timeout.
        TimeoutError: from ``next()``, once the deadline passes with handles
            still unsettled.
    """
    limit = _check_timeout(timeout)
    _, unique = _unique_handles(handles)
    deadline = _deadline(limit)
    waiter = _Waiter(unique)
    return _yield_settled(waiter, len(unique), deadline, limit)


def _yield_settled(
    waiter: _Waiter, total: int, deadline: float | None, limit: float | None
) -> Iterator[Any]:
    yielded = 0
    while yielded < total:
        ready = waiter.wait_for(lambda w, seen=yielded: w.count > seen, deadline)
        if not ready:
            raise WaitTimeoutError(
                f"as_completed(): {total - yielded} of {total} handles did not "
                f"finish within {limit} s"
            )
        # The lock is not held while the consumer runs its loop body.
        for handle in waiter.settled()[yielded:]:
            yielded += 1
            yield handle


def wait(
    handles: Iterable[Any], timeout: Any = None, return_when: str = ALL_COMPLETED
) -> DoneAndNotDone:
    """Waits until some or all of the handles have settled.

    As ``concurrent.futures.wait``: ``return_when`` is ``FIRST_COMPLETED``
    (any handle settles), ``FIRST_EXCEPTION`` (any handle's task raises or
    times out, or all settle; a cancelled one does not count as an
    exception) or ``ALL_COMPLETED``. Reaching the timeout is not an error:
    the handles are then split as they are.

    Args:
        handles: an iterable of ``AsyncHandle`` (or ``concurrent.futures``
            futures).
        timeout: the most seconds to wait, or ``None`` for no limit.
        return_when: one of the constants above (from ``concurrent.futures``).

    Returns:
        ``DoneAndNotDone(done, not_done)``, two sets of handles.

    Raises:
        TypeError: if ``handles`` is not an iterable of handles.
        ValueError: for an unknown ``return_when``, or a negative or
            non-finite timeout.
    """
    if return_when not in RETURN_WHEN:
        raise ValueError(
            f"return_when must be FIRST_COMPLETED, FIRST_EXCEPTION or "
            f"ALL_COMPLETED, got {return_when!r}"
        )
    limit = _check_timeout(timeout)
    _, unique = _unique_handles(handles)
    deadline = _deadline(limit)
    total = len(unique)
    waiter = _Waiter(unique)

    def enough(w: _Waiter) -> bool:
        if w.count == total:
            return True
        if return_when == FIRST_COMPLETED:
            return w.count > 0
        if return_when == FIRST_EXCEPTION:
            return w.raised > 0
        return False

    waiter.wait_for(enough, deadline)
    done = set(waiter.settled())
    return DoneAndNotDone(done, {h for h in unique if h not in done})


class ParallelContext:
    """A block whose tasks are all finished when it is left.

    ``submit`` runs functions on the global thread pool (or in worker
    processes, for a function decorated with ``backend="process"`` or after
    ``set_default_backend("process")``). Leaving the block
    normally waits until every submitted task has settled; task failures are
    not raised there (read them from the handles, e.g. with ``gather``).
    Leaving it because of an exception first cancels the tasks that have not
    started yet (they never run), then waits for those already running; the
    exception propagates. A task that starts just as the block is left may
    be cancelled while running, which for thread tasks is cooperative.

    Args:
        timeout: if given, each task's timeout in seconds: a task not done
            that long after submission ends as ``"timed_out"``, so leaving the
            block waits at most that long after the last submission.
            ``None``: no limit.

    Raises:
        TypeError, ValueError: if ``timeout`` is not a positive finite
            number or ``None``.
    """

    def __init__(self, timeout: Any = None) -> None:
        self._timeout = check_seconds("timeout", timeout)
        self._lock = threading.Lock()
        self._handles: list = []
        self._closed = False

    def __enter__(self) -> ParallelContext:
        return self

    def submit(
        self, func: Callable[..., Any], args: Any = (), kwargs: Any = None
    ) -> Any:
        """Runs ``func(*args, **kwargs)`` as a task (see the class docstring).

        A function already decorated with a task decorator (``@parallel`` and
        the like) has its undecorated function run instead, so the task does
        not merely submit another task; its backend applies, and its default
        timeout when the context has none. Other functions run where
        ``set_default_backend`` says. Every keyword in ``kwargs`` reaches
        ``func``, including ``timeout`` and ``priority``.

        Args:
            func: the callable to run.
            args: its positional arguments, a tuple or list.
            kwargs: its keyword arguments, a dict, or ``None``.

        Returns:
            The task's ``AsyncHandle``.

        Raises:
            TypeError: if ``func`` is not callable, ``args`` not a tuple or
                list, or ``kwargs`` not a dict.
            RuntimeError: if the block has already been left.
        """
        check_callable(func, "ParallelContext.submit")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"args must be a tuple or list, not {type(args).__name__}")
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")
        timeout = self._timeout
        backend = 0  # the program's default
        if isinstance(func, TaskFunction):
            if timeout is None:
                timeout = func._timeout
            backend = func._backend
            func = func._fn

        # Holding the lock across the submission keeps a concurrent __exit__
        # from missing a handle that was created just before it closed.
        with self._lock:
            if self._closed:
                raise RuntimeError("ParallelContext.submit() after the block was left")
            task = TaskFunction(
                func, function_name(func), POOL, False, timeout, None, False, backend
            )
            handle = task(*args, **kwargs)
            self._handles.append(handle)
        return handle

    @property
    def handles(self) -> list:
        """The handles submitted so far, in submission order (a copy)."""
        with self._lock:
            return list(self._handles)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        with self._lock:
            self._closed = True
            handles = list(self._handles)
        if exc_type is not None:
            for handle in handles:
                # The core has no cancel-if-queued; a task may start between
                # the two calls, and is then cancelled cooperatively.
                if handle.status() == "pending":
                    handle.cancel()
        # No limit of its own: with a timeout every task settles by itself at
        # most that long after it was submitted (a second, separate limit here
        # would end the wait first whenever the timer thread runs late).
        wait(handles)

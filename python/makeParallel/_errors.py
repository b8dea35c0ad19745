"""Exception types raised by makeParallel, and how notes are added to exceptions."""

from __future__ import annotations

import concurrent.futures

__all__ = [
    "TaskError",
    "TaskCancelledError",
    "TaskTimeoutError",
    "DependencyError",
    "ShutdownError",
    "WorkerCrashedError",
]


class TaskError(Exception):
    """Base class of the errors that makeParallel itself raises."""


class TaskCancelledError(TaskError, concurrent.futures.CancelledError):
    """The task was cancelled before it finished.

    Raised by ``get()`` on a cancelled task, and by ``check_cancelled()`` inside
    a task whose cancellation was requested.
    """


# Before 3.11 concurrent.futures had its own TimeoutError; derive from both so
# that code written against either catches ours.
_TIMEOUT_BASES: tuple[type, ...] = (TimeoutError,)
if concurrent.futures.TimeoutError is not TimeoutError:
    _TIMEOUT_BASES = (TimeoutError, concurrent.futures.TimeoutError)


class TaskTimeoutError(TaskError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """The task's own ``timeout`` expired before it finished."""


class WaitTimeoutError(*_TIMEOUT_BASES):  # type: ignore[misc]
    """A wait (``get(timeout=...)``) ended before the task finished.

    The task itself goes on; this is the ``TimeoutError`` of
    ``concurrent.futures``, not a task failure.
    """


class DependencyError(TaskError):
    """A task did not run because a task it depends on failed or was cancelled."""


class ShutdownError(TaskError, RuntimeError):
    """The library is shut down (or the interpreter is exiting): no new tasks."""


class WorkerCrashedError(TaskError):
    """The worker process running the task died before it answered.

    Raised by ``get()`` on a process task whose worker exited (``os._exit``,
    a crash such as a segmentation fault, the out-of-memory killer). The
    message names the exit code or the signal; ``exitcode`` holds the exit
    status and ``signal`` the signal number (0 when it exited by itself).
    The pool replaces the worker; other tasks are not affected.
    """

    def __init__(self, message: str, exitcode: int | None = None, signal: int = 0):
        super().__init__(message)
        self.exitcode = exitcode
        self.signal = signal

    def __reduce__(self):  # keep the attributes when pickled
        return (type(self), (self.args[0], self.exitcode, self.signal))


def add_note(exc: BaseException, note: str) -> None:
    """Adds a PEP 678 note to exc, on any Python version.

    Before 3.11 the note still goes into ``exc.__notes__``, where code can read
    it, although the traceback printer of those versions does not show it.
    Never raises: an exception that takes no attributes is left without.
    """
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes.append(note)
        return
    try:
        exc.__notes__ = [note]
    except Exception:
        pass

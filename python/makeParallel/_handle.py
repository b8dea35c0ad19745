"""The Python half of ``AsyncHandle``.

The waiting, status and cancellation methods live in the C++ binding; the
methods here are the ones that are naturally Python: metadata, callbacks, the
``concurrent.futures.Future`` vocabulary and ``await`` support. They are
attached to the binding's class so that there is one handle type.
"""

from __future__ import annotations

import _thread
import asyncio
import logging
import threading
from typing import Any, Callable, Generator

from . import _core
from ._errors import TaskCancelledError, WaitTimeoutError
from ._validate import check_callable

logger = logging.getLogger("makeParallel")

AsyncHandle = _core.AsyncHandle

# Outcome codes of the core (mp::outcome).
_DONE, _FAILED, _CANCELLED, _TIMED_OUT = 1, 2, 3, 4


def _guarded(callback: Callable[..., Any], what: str) -> Callable[..., None]:
    """Wraps a user callback so an exception in it is logged, never raised.

    The one exception is Ctrl-C landing while the callback runs on the main
    thread (at once when registered, or inside ``get()``): that interrupt is
    the program's, so it is delivered again as soon as the callback returns.

    Raises:
        TypeError: at once, if ``callback`` is not callable (naming ``what``).
    """
    check_callable(callback, what)

    def call(*args: Any) -> None:
        try:
            callback(*args)
        except KeyboardInterrupt:
            if threading.current_thread() is threading.main_thread():
                _thread.interrupt_main()
            else:
                logger.exception("%s callback %r raised", what, callback)
        except BaseException:  # even SystemExit: a callback cannot end the worker
            logger.exception("%s callback %r raised", what, callback)

    return call


def set_metadata(self: Any, key: Any, value: Any) -> None:
    """Stores ``value`` under ``key`` in this handle's metadata."""
    self._metadata()[key] = value


def get_metadata(self: Any, key: Any) -> Any:
    """Returns the metadata value stored under ``key``, or ``None``."""
    return self._metadata().get(key)


def get_all_metadata(self: Any) -> dict:
    """Returns a copy of this handle's metadata."""
    return dict(self._metadata())


def add_done_callback(self: Any, fn: Callable[[Any], Any]) -> None:
    """Calls ``fn(handle)`` once the task's outcome is settled.

    Runs on the thread that settles the task, or at once in this thread if it
    is settled already. An exception raised by ``fn`` is logged and ignored.
    """
    self._add_settled_hook(_guarded(fn, "add_done_callback"))


def on_complete(self: Any, callback: Callable[[Any], Any]) -> Any:
    """Calls ``callback(result)`` if the task succeeds. Returns the handle."""
    cb = _guarded(callback, "on_complete")

    def hook(handle: Any) -> None:
        if handle._outcome() == _DONE:
            cb(handle._value())

    self._add_settled_hook(hook)
    return self


def on_error(self: Any, callback: Callable[[BaseException], Any]) -> Any:
    """Calls ``callback(exception)`` if the task raises. Returns the handle."""
    cb = _guarded(callback, "on_error")

    def hook(handle: Any) -> None:
        if handle._outcome() == _FAILED:
            cb(handle._value())

    self._add_settled_hook(hook)
    return self


def on_progress(self: Any, callback: Callable[[float], Any]) -> Any:
    """Calls ``callback(fraction)`` each time the task reports progress."""
    self._progress_callbacks().append(_guarded(callback, "on_progress"))
    return self


def result(self: Any, timeout: float | None = None) -> Any:
    """``concurrent.futures.Future.result``: the same as ``get(timeout)``."""
    return self.get(timeout)


def exception(self: Any, timeout: float | None = None) -> BaseException | None:
    """``concurrent.futures.Future.exception``.

    Returns the exception the task raised (or its ``TaskTimeoutError``), or
    ``None`` if it succeeded; raises ``TaskCancelledError`` if it was
    cancelled and ``TimeoutError`` if it does not finish in time.
    """
    if not self.wait(timeout):
        raise WaitTimeoutError(f"{self!r} did not finish within {timeout} s")
    try:
        self.get()
    except TaskCancelledError:
        raise
    except BaseException as exc:
        return exc
    return None


def done(self: Any) -> bool:
    """``concurrent.futures.Future.done``: the outcome is settled."""
    return self.is_ready()


def cancelled(self: Any) -> bool:
    """``concurrent.futures.Future.cancelled``: the task ended as cancelled."""
    return self._outcome() == _CANCELLED


def _as_asyncio_future(self: Any) -> asyncio.Future:
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def transfer(handle: Any) -> None:
        if future.cancelled():
            return
        try:
            future.set_result(handle.get())
        except BaseException as exc:  # handed to the awaiting coroutine
            future.set_exception(exc)

    def settled(handle: Any) -> None:
        try:
            loop.call_soon_threadsafe(transfer, handle)
        except RuntimeError:  # the loop is closed: nobody is awaiting any more
            pass

    def awaiter_cancelled(fut: asyncio.Future) -> None:
        if fut.cancelled():
            self.cancel()

    future.add_done_callback(awaiter_cancelled)
    self._add_settled_hook(settled)
    self._kick()  # awaiting is waiting: restart stopped priority workers if needed
    return future


def __await__(self: Any) -> Generator[Any, None, Any]:
    """``await handle`` waits without blocking the event loop."""
    return _as_asyncio_future(self).__await__()


def __repr__(self: Any) -> str:
    return (
        f"<AsyncHandle {self.get_task_id()} {self.get_name()!r} "
        f"status={self.status()} elapsed={self.elapsed_time():.3f}s>"
    )


for _fn in (
    set_metadata,
    get_metadata,
    get_all_metadata,
    add_done_callback,
    on_complete,
    on_error,
    on_progress,
    result,
    exception,
    done,
    cancelled,
    __await__,
    __repr__,
):
    setattr(AsyncHandle, _fn.__name__, _fn)
del _fn

"""The process backend's Python half.

The C++ core owns the worker processes, the sockets and the shared memory;
this module decides what goes through them: how a call, a result and an
exception are pickled (protocol 5, large buffers out of band), how a worker
is started, and the public configuration functions.

Pickling uses the standard ``pickle`` first, which is fastest, and falls back
to ``cloudpickle`` for what it cannot send by reference: lambdas, closures,
and anything defined in ``__main__`` (a worker's ``__main__`` is not the
parent's, so such objects must travel by value).
"""

from __future__ import annotations

import mmap
import operator
import os
import pickle
import sys
import traceback
from typing import Any, Callable

import cloudpickle

from . import _core
from ._errors import TaskError, WorkerCrashedError, add_note
from ._validate import check_int

#: Buffers (bytes, bytearray, NumPy arrays...) at least this large travel in
#: shared memory instead of through the socket.
OOB_THRESHOLD = 64 * 1024

#: How many items of lists, tuples and dicts one search for large bytes looks
#: at, at any depth: plenty for the arguments of a call, and a bound on the
#: time spent on long containers, which are not searched.
_SCAN_BUDGET = 256

#: Upper bound on worker processes; more is almost surely a mistake.
MAX_WORKERS = 1024

#: Backend names and their codes in the core (0 means "the default").
_BACKENDS = {"thread": 1, "process": 2}

#: Frame kinds of the core's transport (mp::ipc::frame_kind).
RESULT, ERROR = 2, 3


def backend_code(value: Any, *, allow_none: bool = True) -> int:
    """The core's code for a backend name: 0 for None, 1 thread, 2 process.

    Raises:
        TypeError: if value is not a str (or None where allowed).
        ValueError: for an unknown name.
    """
    if value is None and allow_none:
        return 0
    if not isinstance(value, str):
        kind = type(value).__name__
        raise TypeError(f"backend must be 'thread' or 'process', not {kind}")
    try:
        return _BACKENDS[value]
    except KeyError:
        raise ValueError(
            f"backend must be 'thread' or 'process', got {value!r}"
        ) from None


def set_default_backend(backend: str) -> None:
    """Chooses where task decorators without ``backend=`` run their calls.

    Args:
        backend: ``"thread"`` (the initial default) or ``"process"``.

    Raises:
        TypeError, ValueError: for anything else.
    """
    _core._set_default_backend(backend_code(backend, allow_none=False))


def get_default_backend() -> str:
    """The backend used by task decorators that were not given one."""
    return "process" if _core._default_backend() == 2 else "thread"


def configure_process_pool(num_workers: int | None = None) -> None:
    """Sets the number of worker processes.

    Workers start lazily, one per task slot, on first use, and are reused.
    Changing the number while tasks run is safe: running tasks finish in
    their workers, which then exit; queued tasks go to the new ones.

    Args:
        num_workers: how many processes; ``None`` means the CPUs this process
            may run on (its affinity mask).

    Raises:
        TypeError: if num_workers is not an int (bools are refused too).
        ValueError: if it is below 1 or above ``MAX_WORKERS``.
    """
    n = 0
    if num_workers is not None:
        n = check_int("num_workers", num_workers, 1, MAX_WORKERS)
    _core._configure_process_pool(n)


def get_process_pool_info() -> dict[str, Any]:
    """Describes the process pool.

    Returns:
        A dict with ``configured`` (``configure_process_pool`` was called),
        ``num_workers`` (the configured count), ``alive_workers`` (processes
        running now), ``active_tasks`` and ``queued_tasks``.
    """
    return dict(_core._process_pool_info())


# ---------------------------------------------------------------------------
# Pickling


class _LargeBytes:
    """Stands in for a large ``bytes`` object so that it goes out of band.

    ``pickle`` writes ``bytes`` in-band without consulting any hook, so large
    ones are wrapped before pickling; this reduces to ``bytes(buffer)``.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce_ex__(self, protocol: int) -> Any:
        return (bytes, (pickle.PickleBuffer(self.data),))


#: The types ``_wrap_large`` looks at: what it wraps and what it looks inside.
_SEARCHED = frozenset((bytes, tuple, list, dict))


class _Cyclic(Exception):
    """A container reached again while it is being searched: it contains itself."""


class _LargeBytesSearch:
    """One search of an object for large bytes; see ``_wrap_large``."""

    __slots__ = ("budget", "done", "path")

    def __init__(self) -> None:
        self.budget = _SCAN_BUDGET
        # Ids of the containers being searched, to notice one inside itself.
        self.path: set[int] = set()
        # id -> (object, replacement) for what was searched already: an object
        # reached twice gets one replacement, so pickle still sends it once.
        # Holding the object keeps its id from being reused during the search.
        self.done: dict[int, tuple] = {}

    def replace(self, obj: Any) -> Any:
        """Returns obj, or what pickles in its place."""
        kind = type(obj)
        if kind not in _SEARCHED or (kind is bytes and len(obj) < OOB_THRESHOLD):
            return obj
        key = id(obj)
        hit = self.done.get(key)
        if hit is not None:
            return hit[1]
        if key in self.path:
            raise _Cyclic
        if kind is bytes:
            new: Any = _LargeBytes(obj)
        elif len(obj) > self.budget:
            new = obj  # too long to search: leave it, and the budget, for the rest
        else:
            self.budget -= len(obj)
            values = obj.values() if kind is dict else obj
            if _SEARCHED.isdisjoint(map(type, values)):
                new = obj  # the common case, found without a call per item
            else:
                # map(), not a comprehension: before Python 3.12 that would be
                # two frames per level of nesting instead of one.
                self.path.add(key)
                items = list(map(self.replace, values))
                self.path.discard(key)
                if not any(map(operator.is_not, items, values)):
                    new = obj
                elif kind is dict:
                    new = dict(zip(obj, items))
                else:
                    new = items if kind is list else tuple(items)
        self.done[key] = (obj, new)
        return new


def _wrap_large(obj: Any) -> Any:
    """Returns obj with the large bytes in it wrapped in ``_LargeBytes``.

    Lists, tuples and dicts (those exact types, which can be rebuilt as they
    were) are searched at any depth, but no more than ``_SCAN_BUDGET`` of their
    items in all, so that the search stays cheap next to the pickling: a
    container with more items than the budget has left is not entered. What
    changed is copied; obj itself comes back when nothing did.

    Large bytes still travel in-band when they are past the budget, are dict
    keys, or are inside any other object (a set, an instance, a subclass of
    list). Nothing is wrapped if a searched container contains itself (a copy
    would leave the cycle running through the original) or if the nesting is
    deeper than the interpreter's recursion limit allows. And a copied
    container that is also referenced from a place the search did not enter
    arrives as two objects, the copy and the original.
    """
    if type(obj) not in _SEARCHED:
        return obj
    try:
        return _LargeBytesSearch().replace(obj)
    except (_Cyclic, RecursionError):
        return obj


def _dumps(obj: Any, out_of_band: bool = True) -> tuple[bytes, list]:
    """Pickles obj; returns the stream and the out-of-band buffers."""
    buffers: list = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        if raw.nbytes < OOB_THRESHOLD:
            return True
        buffers.append(raw)
        return False

    callback = keep if out_of_band else None
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=callback)
        # By reference, "__main__" names the worker's own __main__: send by value.
        if b"__main__" not in data:
            return data, buffers
    except Exception:
        pass
    buffers.clear()
    return cloudpickle.dumps(obj, protocol=5, buffer_callback=callback), buffers


def _map_buffers(fds: list, close: bool = True) -> list:
    """Maps received shared-memory descriptors (closing them, if asked) as buffers.

    The mappings are private copy-on-write, so what is rebuilt from them is
    writable (NumPy arrays) without touching the sender's memory.
    """
    maps: list = []
    error: BaseException | None = None
    for fd, size in fds:
        try:
            if error is None:
                if size == 0:
                    maps.append(b"")
                else:
                    maps.append(
                        mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
                    )
        except BaseException as exc:  # still close the remaining descriptors
            error = exc
        finally:
            if close:
                os.close(fd)
    if error is not None:
        raise error
    return maps


#: Functions that pickle by reference, with their pickle: id -> (fn, data).
#: Holding fn keeps its id from being reused while the entry exists.
_by_reference: dict = {}


def _decorated_owner(fn: Any) -> Any:
    """The TaskFunction that replaced ``fn`` under its own name, if any.

    A decorated module-level function is reachable by name only through its
    wrapper, so that is what pickles by reference; the worker unwraps it.
    """
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    qualname = getattr(fn, "__qualname__", None)
    if module is None or not isinstance(qualname, str) or "<" in qualname:
        return None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if isinstance(obj, _core.TaskFunction) and obj._fn is fn:
        return obj
    return None


def _dumps_fn(fn: Any) -> bytes:
    """Pickles the function of a call: by reference if possible, else by value."""
    hit = _by_reference.get(id(fn))
    if hit is not None and hit[0] is fn:
        return hit[1]
    target = _decorated_owner(fn) or fn
    try:
        data = pickle.dumps(target, protocol=5)
    except Exception:
        data = b"__main__"  # not by reference: fall through to by value
    if b"__main__" in data:
        # By value each time: a closure or __main__ function may change.
        try:
            return cloudpickle.dumps(fn, protocol=5)
        except Exception as exc:
            name = getattr(fn, "__qualname__", None) or repr(fn)
            raise TypeError(
                f"cannot send {name} to a worker process: {exc} (a function defined "
                "in __main__, a lambda or a closure is pickled by value, together with "
                "the globals it uses; move it to an importable module to send it by "
                "name)"
            ) from exc
    if len(_by_reference) >= 1024:
        _by_reference.clear()
    _by_reference[id(fn)] = (fn, data)
    return data


def _encode_call(fn: Callable[..., Any], args: tuple, kwargs: dict | None,
                 dep_results: tuple | None) -> tuple[bytes, list]:
    """Pickles a call for a worker (the parent side of ``_decode_call``)."""
    if dep_results is not None:
        args = (dep_results, *args)
    # One search for both, so that an object in each is still one object; skipped
    # when no argument is of a type it would look at (most calls, cheaply told).
    if not (_SEARCHED.isdisjoint(map(type, args))
            and (not kwargs or _SEARCHED.isdisjoint(map(type, kwargs.values())))):
        args, kwargs = _wrap_large((args, kwargs))
    return _dumps((_dumps_fn(fn), args, kwargs))


def _decode_call(payload: bytes, fds: list, functions: dict) -> tuple:
    """Unpickles a call in the worker; ``functions`` caches unpickled functions."""
    fn_data, args, kwargs = pickle.loads(payload, buffers=_map_buffers(fds))
    fn = functions.get(fn_data)
    if fn is None:
        fn = pickle.loads(fn_data)
        if isinstance(fn, _core.TaskFunction):  # run the function, not its wrapper
            fn = fn._fn
        if len(functions) >= 256:
            functions.clear()
        functions[fn_data] = fn
    return fn, args, kwargs or {}


def _encode_result(value: Any) -> tuple[bytes, list]:
    return _dumps(_wrap_large(value))


def _safe_str(obj: Any, formatter: Callable[[Any], str] = str) -> str:
    """``formatter(obj)``, or a placeholder if that raises: user code may."""
    try:
        return formatter(obj)
    except Exception:
        return f"<{formatter.__name__}() of the {type(obj).__name__} object failed>"


def _traceback_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _encode_error(exc: BaseException) -> bytes:
    """Pickles an exception with what is needed if it cannot be rebuilt.

    Nothing here may raise: an exception whose ``__str__`` (or pickling)
    fails still comes back, as a ``TaskError`` naming its type if need be.
    """
    kind = type(exc)
    text = _safe_str(exc, _traceback_text)
    try:
        exc_data: bytes | None = _dumps(exc, out_of_band=False)[0]
    except Exception:
        exc_data = None
    info = (exc_data, f"{kind.__module__}.{kind.__qualname__}", _safe_str(exc), text)
    return _dumps(info, out_of_band=False)[0]


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a worker process.

    Set as the ``__cause__`` of exceptions that come back from a worker, so
    the printed traceback shows where the worker raised it.
    """

    def __str__(self) -> str:
        return "\n\n" + str(self.args[0]) if self.args else ""


def _rebuild_error(info: tuple) -> BaseException:
    exc_data, type_name, message, text = info
    exc = None
    if exc_data is not None:
        try:
            exc = pickle.loads(exc_data)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = TaskError(
            f"{type_name}: {message} (the exception could not be sent back from the "
            "worker process; its type, message and traceback are kept as attributes)"
        )
        exc.remote_type = type_name
        exc.remote_message = message
        exc.remote_traceback = text
        return exc
    if exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(text)
    return exc


def _decode(payload: bytes, fds: list, is_error: bool) -> Any:
    """The parent's reading of a reply: the result, or the task's exception rebuilt.

    The descriptors stay open (the core closes them), so that a decode cut short
    by Ctrl-C can be done again.
    """
    value = pickle.loads(payload, buffers=_map_buffers(fds, close=False))
    return _rebuild_error(value) if is_error else value


def _crashed(message: str, exitcode: int, signal: int) -> None:
    raise WorkerCrashedError(message, None if exitcode < 0 else exitcode, signal)


def _spawn_spec() -> tuple[list, list]:
    """The command and environment of a new worker process.

    The worker is a fresh interpreter (``sys.executable``) that sees the same
    import path as this process, so it imports the same makeParallel and can
    find the modules that pickled functions refer to, and that runs with the
    same optimisation level (``-O``).
    """
    if not sys.executable:
        raise RuntimeError("cannot start worker processes: sys.executable is unknown")
    env = dict(os.environ)
    cwd = os.getcwd()
    paths = [p or cwd for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # -O/-OO change what code does (assert statements, __debug__), so the worker
    # runs the task's code with the same level.
    optimize = ["-O"] * sys.flags.optimize
    argv = [sys.executable, *optimize, "-m", "makeParallel._worker", "3",
            str(os.getpid())]
    return argv, [f"{k}={v}" for k, v in env.items()]


def _run_chunk(fn: Callable[[Any], Any], items: list, base: int) -> list:
    """One chunk of a process-backed parallel_map, run in the worker."""
    out: list = []
    append = out.append
    try:
        for item in items:
            append(fn(item))
    except BaseException as exc:
        add_note(exc, f"raised by parallel_map item {base + len(out)}")
        raise
    return out


_core._process_init(_encode_call, _decode, _crashed, _spawn_spec)

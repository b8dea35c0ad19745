"""``@memoize``: a thread-safe result cache with single-flight computation.

The cache is keyed on the values of the arguments, by hash and equality, the
way ``functools.lru_cache`` keys it. Unlike ``lru_cache`` it never computes
the same key twice at once: while one caller computes a value, the others
asking for that key wait for it instead of repeating the work, which is what
a cache in front of a thread pool needs.
"""

from __future__ import annotations

import collections
import functools
import inspect
import threading
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

from ._decorators import _NO_FUNCTION
from ._validate import check_callable, check_int


class CacheInfo(NamedTuple):
    """Statistics of a memoized function, as ``functools`` reports them.

    Attributes:
        hits: calls answered without running the function: from the cache,
            or by sharing the computation of a concurrent call.
        misses: calls that ran the function, including calls whose arguments
            could not be hashed and so bypassed the cache.
        maxsize: the bound on the number of entries, or ``None``.
        currsize: the number of entries held now.
    """

    hits: int
    misses: int
    maxsize: int | None
    currsize: int


class _Key(tuple):
    """The arguments of one call, hashed once.

    Hashing happens outside the cache's lock, so a user ``__hash__`` never
    runs while other threads wait for the lock; the dict then reuses the
    stored hash and only calls ``__eq__`` on a collision.
    """

    __slots__ = ()

    def __new__(cls, args: tuple, kwargs: dict) -> _Key:
        # The keyword names are unique, so sorting never compares two values.
        items = tuple(sorted(kwargs.items(), key=lambda item: item[0]))
        return super().__new__(cls, (args, items, hash((args, items))))

    def __hash__(self) -> int:  # type: ignore[override]
        return self[2]


class _Flight:
    """One computation in progress, shared by every caller of its key."""

    __slots__ = ("error", "finished", "owner", "traceback", "value")

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.finished = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.traceback: Any = None


class _Cache:
    """The state behind one memoized function.

    One lock guards the stored entries, the computations in flight and the
    counters. It is never held while the user's function runs, so a slow
    computation holds up only the callers of its own key.
    """

    def __init__(self, maxsize: int | None, cache_failures: bool = False) -> None:
        self.maxsize = maxsize
        self.cache_failures = cache_failures
        self.lock = threading.Lock()
        # key -> (succeeded, value or (exception, traceback)); ordered oldest
        # use first.
        self.entries: collections.OrderedDict[Hashable, tuple[bool, Any]] = (
            collections.OrderedDict()
        )
        self.flights: dict[Hashable, _Flight] = {}
        self.hits = 0
        self.misses = 0

    def call(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        try:
            key = _Key(args, kwargs)
        except TypeError:
            # Unhashable arguments cannot be looked up: compute every time.
            with self.lock:
                self.misses += 1
            return func(*args, **kwargs)

        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
                self.hits += 1
                return _deliver(*entry)
            flight = self.flights.get(key)
            leader = flight is None
            if leader:
                flight = self.flights[key] = _Flight()
                self.misses += 1
            else:
                self.hits += 1
        assert flight is not None

        if not leader:
            if flight.owner == threading.get_ident():
                # Waiting for our own unfinished computation would never end.
                raise RuntimeError(
                    f"{getattr(func, '__qualname__', func)!r} called itself "
                    "with the same arguments while computing them"
                )
            flight.finished.wait()
            if flight.error is not None:
                _reraise(flight.error, flight.traceback)
            return flight.value

        try:
            value = func(*args, **kwargs)
        except BaseException as exc:
            flight.error = exc
            flight.traceback = exc.__traceback__
            # Only ordinary failures are worth remembering; Ctrl-C is not.
            store = self.cache_failures and isinstance(exc, Exception)
            self._finish(key, flight, store)
            raise
        flight.value = value
        self._finish(key, flight, True)
        return value

    def _finish(self, key: Hashable, flight: _Flight, store: bool) -> None:
        with self.lock:
            # cache_clear() during the computation unregisters the flight; its
            # result then belongs to the cleared generation and is not stored.
            if self.flights.get(key) is flight:
                del self.flights[key]
                if store:
                    ok = flight.error is None
                    failure = (flight.error, flight.traceback)
                    self.entries[key] = (ok, flight.value if ok else failure)
                    limit = self.maxsize
                    while limit is not None and len(self.entries) > limit:
                        self.entries.popitem(last=False)
        flight.finished.set()

    def info(self) -> CacheInfo:
        with self.lock:
            return CacheInfo(self.hits, self.misses, self.maxsize, len(self.entries))

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.flights.clear()
            self.hits = self.misses = 0


def _deliver(succeeded: bool, value: Any) -> Any:
    if succeeded:
        return value
    _reraise(*value)


def _reraise(error: BaseException, traceback: Any) -> None:
    # One exception object is raised in many callers. Restarting from the
    # computing call's traceback each time keeps the frames of earlier raises
    # from piling up on it.
    raise error.with_traceback(traceback)


def cached_wrapper(
    func: Callable[..., Any],
    decorator: str,
    maxsize: int | None = None,
    cache_failures: bool = False,
    compute: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """Builds the caching wrapper of ``func`` (shared with ``retry_cached``).

    Args:
        func: the function whose identity the wrapper takes.
        decorator: the public name, for error messages.
        maxsize: the bound on entries, or ``None``.
        cache_failures: whether a raised ``Exception`` is cached too.
        compute: what actually runs on a miss; ``func`` if not given.

    Returns:
        The wrapper, with ``cache_info()`` and ``cache_clear()``.

    Raises:
        TypeError: if ``func`` is not callable or is a coroutine function.
    """
    check_callable(func, decorator)
    if inspect.iscoroutinefunction(func):
        # Caching the coroutine object would hand one awaitable to many callers.
        raise TypeError(f"{decorator}() does not support coroutine functions")
    cache = _Cache(maxsize, cache_failures)
    target = func if compute is None else compute

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return cache.call(target, args, kwargs)

    wrapper.cache_info = cache.info  # type: ignore[attr-defined]
    wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
    return wrapper


def _memoizer(decorator: str, doc: str) -> Callable[..., Any]:
    def decorate(
        func: Any = _NO_FUNCTION, *, maxsize: int | None = None
    ) -> Any:
        if maxsize is not None:
            check_int("maxsize", maxsize, 0)

        def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
            return cached_wrapper(f, decorator, maxsize)

        return wrap if func is _NO_FUNCTION else wrap(func)

    decorate.__name__ = decorate.__qualname__ = decorator
    decorate.__doc__ = doc
    return decorate


memoize = _memoizer(
    "memoize",
    """Caches the function's results, keyed on the values of its arguments.

    Use as ``@memoize`` or ``@memoize(maxsize=128)``. Two calls share an entry
    when their positional arguments and their keyword arguments (in any
    order) are equal and hash equal, as with ``functools.lru_cache(typed=
    False)``: ``f(1)`` and ``f(1.0)`` share one. Positional and keyword
    spellings of the same argument are different keys.

    Thread-safe. Concurrent calls with the same key run the function once:
    the first computes, the others wait and receive its result. If it
    raises, every waiting caller gets that exception and nothing is cached;
    the next call computes again. Calls with different keys never wait for
    each other. Calls whose arguments cannot be hashed bypass the cache and
    always run the function. With ``maxsize``, the least recently used entry
    is dropped when a new one would exceed it (``maxsize=0`` stores nothing
    but still merges concurrent calls).

    The wrapper has ``cache_info()``, returning ``CacheInfo(hits, misses,
    maxsize, currsize)``, and ``cache_clear()``, which empties the cache and
    resets the counters; a computation in progress during ``cache_clear()``
    returns its result to its callers without storing it. On methods,
    ``self`` is part of the key. Nothing is printed or logged.

    Args:
        func: the function, when used bare.
        maxsize: the largest number of entries kept, or ``None`` for no bound.

    Returns:
        The caching wrapper, or a decorator that makes one.

    Raises:
        TypeError: if what is decorated is not callable or is a coroutine
            function, or if ``maxsize`` is not an int.
        ValueError: if ``maxsize`` is negative.
        RuntimeError: if the function calls itself with the arguments it is
            computing (that would wait for itself forever).
    """,
)

memoize_fast = _memoizer(
    "memoize_fast",
    """The same as ``memoize``: one implementation, kept under both names.

    The earlier package had a separate faster variant; this one already
    hashes each key once and holds its lock only for dictionary operations,
    so there is nothing left to trade away.

    Args:
        func: the function, when used bare.
        maxsize: the largest number of entries kept, or ``None`` for no bound.

    Returns:
        The caching wrapper, or a decorator that makes one.

    Raises:
        TypeError: as ``memoize`` does.
        ValueError: if ``maxsize`` is negative.
    """,
)

"""``parallel_map``: a function over an iterable, in chunks, on the global pool."""

from __future__ import annotations

import collections
import itertools
import logging
from typing import Any, Callable, Iterable, Iterator, TypeVar

from . import _core
from ._validate import check_callable, check_int, function_name

logger = logging.getLogger("makeParallel")

T = TypeVar("T")
R = TypeVar("R")

#: Largest chunk chosen automatically. Past this, a chunk's fixed cost (about
#: a few microseconds) is already negligible per item.
MAX_AUTO_CHUNK = 2048
#: Chunks per pool thread that the automatic choice aims for, so that uneven
#: items still spread over the threads.
CHUNKS_PER_THREAD = 8
#: Chunks kept in flight per pool thread; bounds memory for endless inputs.
INFLIGHT_PER_THREAD = 4


def _auto_chunksize(n: int, threads: int) -> int:
    return max(1, min(MAX_AUTO_CHUNK, n // (threads * CHUNKS_PER_THREAD)))


def _chunks(
    items: Iterable[Any], chunksize: int | None, threads: int
) -> Iterator[list]:
    """Yields lists of consecutive items, reading the input lazily."""
    it = iter(items)
    if chunksize is None:
        try:
            n = len(items)  # type: ignore[arg-type]
        except TypeError:
            # Unknown length: look ahead a bounded window to choose the size.
            lookahead = threads * CHUNKS_PER_THREAD * MAX_AUTO_CHUNK
            window = list(itertools.islice(it, lookahead))
            chunksize = _auto_chunksize(len(window), threads)
            for i in range(0, len(window), chunksize):
                yield window[i : i + chunksize]
            del window
        else:
            chunksize = _auto_chunksize(n, threads)
    while True:
        chunk = list(itertools.islice(it, chunksize))
        if not chunk:
            return
        yield chunk


class _Progress:
    """Reports items done to a tqdm bar and/or an on_progress callback."""

    def __init__(self, items: Iterable[Any], bar: bool, callback: Any, name: str):
        try:
            self.total: int | None = len(items)  # type: ignore[arg-type]
        except TypeError:
            self.total = None
        self.done = 0
        self.callback = callback
        self.bar = None
        if bar:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError(
                    "parallel_map(progress=True) needs tqdm: "
                    "pip install 'makeparallel[progress]'"
                ) from None
            self.bar = tqdm(total=self.total, desc=name, unit="item")

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None and self.total:
            _call_progress(self.callback, self.done / self.total)

    def close(self, finished: bool) -> None:
        if self.bar is not None:
            self.bar.close()
        if finished and self.callback is not None and not self.total:
            _call_progress(self.callback, 1.0)


def _call_progress(callback: Any, fraction: float) -> None:
    try:
        callback(fraction)
    except Exception:
        logger.exception("on_progress callback %r raised", callback)


def parallel_map(
    func: Callable[[T], R],
    items: Iterable[T],
    *,
    chunksize: int | None = None,
    progress: bool = False,
    on_progress: Callable[[float], Any] | None = None,
) -> list[R]:
    """Returns ``[func(x) for x in items]``, computed on the global pool.

    The input is read lazily in chunks, with a bounded number of chunks in
    flight, so a long generator does not have to fit in memory (the results
    do). Each chunk runs as one task that calls ``func`` item by item without
    returning to the interpreter loop in between, so per-item overhead stays
    close to a plain loop's. Threads give a speed-up when ``func`` releases
    the GIL (NumPy, hashlib, zlib, I/O); for pure-Python work on a GIL build
    they do not.

    Args:
        func: called once per item.
        items: any iterable.
        chunksize: items per task; chosen from the input length and the pool
            size when ``None``.
        progress: show a tqdm progress bar (needs the ``progress`` extra).
        on_progress: called with the fraction of items done (0 to 1) as
            chunks complete; with an input of unknown length, once with 1.0
            at the end. Exceptions in it are logged, not raised.

    Returns:
        The results, in input order.

    Raises:
        The first exception raised by ``func`` (lowest item index), with a
        note naming the item's index; items not yet started then never run.
        TypeError, ValueError: for bad arguments.
    """
    check_callable(func, "parallel_map")
    if chunksize is not None:
        check_int("chunksize", chunksize, 1)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, not {type(progress).__name__}")
    if on_progress is not None:
        check_callable(on_progress, "parallel_map on_progress")
    try:
        iter(items)
    except TypeError:
        raise TypeError(
            f"parallel_map() items must be iterable, got {type(items).__name__}"
        ) from None

    threads = _core._pool_info()["current_num_threads"]
    name = function_name(func)
    report = None
    if progress or on_progress is not None:
        report = _Progress(items, progress, on_progress, name)
    state = _core._map_state()
    chunks = _chunks(items, chunksize, threads)
    inflight: collections.deque = collections.deque()
    results: list = []
    base = 0
    stopped = False
    try:
        while True:
            while not stopped and len(inflight) < threads * INFLIGHT_PER_THREAD:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                inflight.append(_core._map_chunk(func, name, chunk, base, state))
                base += len(chunk)
            if not inflight:
                break
            part = inflight.popleft().get()
            if part is None:
                # This chunk stopped because a later one failed: submit nothing
                # more, and the failing chunk raises when its turn comes.
                stopped = True
                continue
            results.extend(part)
            if report is not None:
                report.advance(len(part))
    except BaseException:
        _core._map_stop(state)
        for handle in inflight:
            handle.cancel()
        if report is not None:
            report.close(False)
        raise
    if report is not None:
        report.close(True)
    return results

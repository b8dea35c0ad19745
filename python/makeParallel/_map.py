"""``parallel_map``: a function over an iterable, in chunks, on the global pool."""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

from . import _core, _process
from ._errors import TaskCancelledError, WorkerCrashedError, add_note
from ._validate import check_callable, check_int, function_name

logger = logging.getLogger("makeParallel")

T = TypeVar("T")
R = TypeVar("R")

#: Largest chunk chosen automatically. Each chunk costs a few microseconds
#: of bookkeeping and a GIL hand-over; at this size that is a small fraction
#: of even a trivial function's per-item cost.
MAX_AUTO_CHUNK = 8192
#: Chunks per pool thread that the automatic choice aims for, so that uneven
#: items still spread over the threads.
CHUNKS_PER_THREAD = 8
#: Chunks queued or running per pool thread.
INFLIGHT_PER_THREAD = 4
#: Items submitted but not yet collected per pool thread (finished ones
#: waiting behind a slow first chunk included); bounds memory for long inputs.
MAX_UNCOLLECTED_ITEMS_PER_THREAD = 65536
#: Largest chunk chosen automatically for the process backend, where each
#: chunk also pays two pickles and a round trip to a worker.
MAX_AUTO_CHUNK_PROCESS = 65536


def _auto_chunksize(n: int, threads: int, cap: int = MAX_AUTO_CHUNK) -> int:
    return max(1, min(cap, n // (threads * CHUNKS_PER_THREAD)))


def _chunks(
    items: Iterable[Any], chunksize: int | None, threads: int, cap: int = MAX_AUTO_CHUNK
) -> Iterator[list]:
    """Yields lists of consecutive items, reading the input lazily."""
    it = iter(items)
    if chunksize is None:
        try:
            n = len(items)  # type: ignore[arg-type]
        except TypeError:
            # Unknown length: look ahead a bounded window to choose the size.
            lookahead = threads * CHUNKS_PER_THREAD * cap
            window = list(itertools.islice(it, lookahead))
            chunksize = _auto_chunksize(len(window), threads, cap)
            for i in range(0, len(window), chunksize):
                yield window[i : i + chunksize]
            del window
        else:
            chunksize = _auto_chunksize(n, threads, cap)
    if isinstance(items, (list, tuple, range)):
        # Slicing copies in C, several times faster than islice for big chunks.
        for i in range(0, len(items), chunksize):
            part = items[i : i + chunksize]
            yield part if isinstance(part, list) else list(part)
        return
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


#: Inside a task, how often a wait for chunks checks whether the task itself
#: was cancelled, in seconds.
CANCEL_POLL_SECS = 0.1


def _wait(wait: Callable[..., Any], in_task: bool) -> None:
    """Calls ``wait(timeout)`` until it returns true.

    Inside a task, stops with TaskCancelledError once that task is cancelled:
    its chunks may be queued behind it on the same pool and never run.
    """
    if not in_task:
        wait()
        return
    # TODO: a wait that the core wakes on the caller's own cancellation would
    # replace this periodic check; handles only wait on their own task now.
    while not wait(CANCEL_POLL_SECS):
        if _core._is_cancelled():
            raise TaskCancelledError(
                f"task {_core._current_task_id()} was cancelled in parallel_map"
            )


def _note_chunk(exc: BaseException, first: int, count: int) -> None:
    """Names the chunk's items on an error of a process chunk that no single
    item raised: the worker died, or the chunk could not be pickled."""
    notes = getattr(exc, "__notes__", None) or []
    if any("parallel_map item " in str(note) for note in notes):
        return  # raised by one item, which its note names already
    last = first + count - 1
    where = f"item {first}" if count == 1 else f"items {first} to {last}"
    if isinstance(exc, WorkerCrashedError):
        # Which of the chunk's items killed the worker is unknown.
        add_note(exc, f"the worker died while running parallel_map {where}")
    else:
        add_note(exc, f"raised while sending parallel_map {where} to a worker process "
                      "or their results back")


def parallel_map(
    func: Callable[[T], R],
    items: Iterable[T],
    *,
    chunksize: int | None = None,
    progress: bool = False,
    on_progress: Callable[[float], Any] | None = None,
    backend: str | None = None,
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
        backend: ``"thread"`` (the global pool) or ``"process"`` (the worker
            processes, for pure-Python work); ``None`` means the backend of
            ``func`` if it is a decorated task function, else the default set
            by ``set_default_backend``. With processes, ``func`` and the
            items must be picklable.

    Returns:
        The results, in input order.

    Raises:
        The first exception raised by ``func`` (lowest item index), with a
        note naming the item's index; items not yet started then never run.
        WorkerCrashedError: if a worker process dies (process backend), with
            a note naming the items of the chunk it was running; an item or
            result that cannot be pickled likewise gets a note naming its
            chunk's items.
        TypeError, ValueError: for bad arguments.
    """
    check_callable(func, "parallel_map")
    # A function decorated by a task decorator would return handles; map the
    # function itself, as ParallelContext.submit does, where its backend says.
    code = _process.backend_code(backend)
    if isinstance(func, _core.TaskFunction):
        code = code or func._backend
        func = func._fn
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

    use_processes = (code or _core._default_backend()) == 2
    if use_processes:
        threads = _core._process_pool_info()["num_workers"]
        cap = MAX_AUTO_CHUNK_PROCESS
    else:
        threads = _core._pool_info()["current_num_threads"]
        cap = MAX_AUTO_CHUNK
    name = function_name(func)
    report = None
    if progress or on_progress is not None:
        report = _Progress(items, progress, on_progress, name)
    state = _core._map_state()
    chunks = _chunks(items, chunksize, threads, cap)
    # Chunks are collected in input order, but refilled as soon as any chunk
    # finishes: a slow chunk at the head must not leave the other threads idle.
    # `running` counts chunks submitted and not finished; finished chunks
    # waiting behind the head are bounded by MAX_UNCOLLECTED_ITEMS_PER_THREAD
    # (past the few chunks that keep every thread busy). Each entry of
    # `inflight` is (handle, index of the chunk's first item, chunk length).
    inflight: collections.deque = collections.deque()
    finished = threading.Event()
    lock = threading.Lock()
    running = [0]

    refill_at = max(1, threads * INFLIGHT_PER_THREAD // 2)

    def chunk_finished(handle: Any) -> None:
        with lock:
            running[0] -= 1
            left = running[0]
        # Wake the collector when the head chunk is ready or half the chunks in
        # flight are done, not for every chunk: each wake-up costs the GIL.
        try:
            is_head = inflight[0][0] is handle
        except IndexError:  # the collector emptied the deque meanwhile
            is_head = True
        if left <= refill_at or is_head:
            finished.set()

    results: list = []
    base = 0

    def room_behind_head() -> bool:
        if len(inflight) < threads * INFLIGHT_PER_THREAD:
            return True
        return base - len(results) < threads * MAX_UNCOLLECTED_ITEMS_PER_THREAD

    stopped = exhausted = False
    in_task = _core._current_task_id() is not None
    try:
        while True:
            finished.clear()
            while (
                not stopped
                and not exhausted
                and running[0] < threads * INFLIGHT_PER_THREAD
                and room_behind_head()
            ):
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                if use_processes:
                    handle = _core._submit_process(
                        _process._run_chunk, name, (func, chunk, base)
                    )
                else:
                    handle = _core._map_chunk(func, name, chunk, base, state)
                with lock:
                    running[0] += 1
                handle._add_settled_hook(chunk_finished)
                inflight.append((handle, base, len(chunk)))
                base += len(chunk)
            if not inflight:
                break
            can_refill = not (stopped or exhausted) and room_behind_head()
            if not inflight[0][0].is_ready() and can_refill:
                # Some chunk finished: refill, then look again.
                _wait(finished.wait, in_task)
                continue
            if in_task:
                _wait(inflight[0][0].wait, in_task)
            handle, first, count = inflight.popleft()
            try:
                part = handle.get()
            except BaseException as exc:
                if use_processes:
                    _note_chunk(exc, first, count)
                raise
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
        for handle, _, _ in inflight:
            handle.cancel()
        if report is not None:
            report.close(False)
        raise
    if report is not None:
        report.close(True)
    return results

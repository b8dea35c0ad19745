"""The main loop of a worker process: ``python -m makeParallel._worker FD PPID``.

Started by the parent's core with its end of a private socket at descriptor
FD. It receives pickled calls, runs them, and sends back results or errors
with the execution time measured here. It prints nothing. It ends when the
socket reaches end of input, and dies with its parent (a thread of the
core watches it).
"""

from __future__ import annotations

import os
import signal
import sys
import time

# Importing the package gives tasks report_progress and friends, and the core.
from makeParallel import _core, _process


def _serve(fd: int) -> None:
    functions: dict = {}
    while True:
        message = _core._worker_recv(fd)
        if message is None:
            return
        _kind, task_id, payload, fds = message
        start = time.perf_counter_ns()
        try:
            fn, args, kwargs = _process._decode_call(payload, fds, functions)
            start = time.perf_counter_ns()
            result = fn(*args, **kwargs)
            elapsed = time.perf_counter_ns() - start
            del fn, args, kwargs
            data, buffers = _process._encode_result(result)
            del result
            _core._worker_send(fd, _process.RESULT, task_id, elapsed, data, buffers)
        except BaseException as exc:  # SystemExit too: only the parent ends a worker
            elapsed = time.perf_counter_ns() - start
            data = _process._encode_error(exc)
            del exc
            _core._worker_send(fd, _process.ERROR, task_id, elapsed, data, [])
        finally:
            _core._worker_done()
        del message, payload, fds


def main(argv: list) -> int:
    fd, parent = int(argv[1]), int(argv[2])
    # Ctrl-C in a terminal reaches the whole process group; the parent decides
    # what happens to its tasks, so the worker does not react to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _core._worker_init(fd, parent):
        return 0  # the parent is already gone
    os.set_inheritable(fd, False)  # processes the task starts must not hold it
    try:
        _serve(fd)
    except OSError:
        return 0  # the parent closed the socket mid-reply: it is gone or done with us
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""makeParallel: run Python functions in the background on C++ worker threads.

Put ``@parallel`` (a thread per task), ``@parallel_pool`` (a fixed pool) or
``@parallel_priority`` (a priority queue) on a function and each call returns
an ``AsyncHandle`` at once; ``parallel_map`` maps a function over an iterable.
Tasks can be cancelled, given timeouts, and are timed per function.

Threads run Python code one at a time on a CPython build with a GIL: they
speed up work that releases it (I/O, ``time.sleep``, hashlib, zlib, NumPy),
not pure-Python computation.
"""

import atexit as _atexit
import logging as _logging
import os as _os

from . import _core
from ._config import (
    configure_thread_cache,
    configure_thread_pool,
    get_priority_queue_info,
    get_thread_cache_info,
    get_thread_pool_info,
    start_priority_worker,
    stop_priority_worker,
)
from ._context import (
    check_cancelled,
    get_current_task_id,
    is_cancelled,
    report_progress,
)
from ._decorators import (
    ProfiledFunction,
    TaskFunction,
    parallel,
    parallel_fast,
    parallel_pool,
    parallel_priority,
    parallel_with_deps,
    profiled,
)
from ._errors import (
    DependencyError,
    ShutdownError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
    WaitTimeoutError,
    WorkerCrashedError,
)
from ._handle import AsyncHandle
from ._lifecycle import (
    configure_memory_limit,
    get_active_task_count,
    reset_shutdown,
    set_max_concurrent_tasks,
    shutdown,
)
from ._map import parallel_map
from ._process import (
    configure_process_pool,
    get_default_backend,
    get_process_pool_info,
    set_default_backend,
)
from ._metrics import PerformanceMetrics, get_all_metrics, get_metrics, reset_metrics
from ._trace import metrics_report, trace

__version__ = "0.3.0"

__all__ = [
    "AsyncHandle",
    "DependencyError",
    "PerformanceMetrics",
    "ProfiledFunction",
    "ShutdownError",
    "TaskCancelledError",
    "TaskError",
    "TaskFunction",
    "TaskTimeoutError",
    "WaitTimeoutError",
    "WorkerCrashedError",
    "check_cancelled",
    "configure_memory_limit",
    "configure_process_pool",
    "configure_thread_cache",
    "configure_thread_pool",
    "get_active_task_count",
    "get_all_metrics",
    "get_current_task_id",
    "get_default_backend",
    "get_metrics",
    "get_priority_queue_info",
    "get_process_pool_info",
    "get_thread_cache_info",
    "get_thread_pool_info",
    "is_cancelled",
    "metrics_report",
    "parallel",
    "parallel_fast",
    "parallel_map",
    "parallel_pool",
    "parallel_priority",
    "parallel_with_deps",
    "profiled",
    "report_progress",
    "reset_metrics",
    "reset_shutdown",
    "set_default_backend",
    "set_max_concurrent_tasks",
    "shutdown",
    "start_priority_worker",
    "stop_priority_worker",
    "trace",
]

# Pure-Python utilities: result caching, retries, timing, collecting handles.
from ._cache import CacheInfo, memoize, memoize_fast
from ._collect import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    DoneAndNotDone,
    ParallelContext,
    as_completed,
    gather,
    wait,
)
from ._retry import retry, retry_backoff, retry_cached
from ._timing import CallCounter, timer

__all__ += [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CacheInfo",
    "CallCounter",
    "DoneAndNotDone",
    "ParallelContext",
    "as_completed",
    "gather",
    "memoize",
    "memoize_fast",
    "retry",
    "retry_backoff",
    "retry_cached",
    "timer",
    "wait",
]
# End of the utilities block.

logger = _logging.getLogger("makeParallel")

_core._init(
    TaskCancelledError,
    TaskTimeoutError,
    WaitTimeoutError,
    ShutdownError,
    DependencyError,
)

# At exit, tasks not cancelled are completed first, as concurrent.futures does;
# cancelled or timed-out ones are not waited for (see _core._at_exit).
_atexit.register(_core._at_exit)
# A forked child gets fresh, empty pools: the parent's threads do not exist there.
_os.register_at_fork(after_in_child=_core._after_fork_child)

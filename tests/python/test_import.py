"""API §1: package, import names, silence and the logger."""

import inspect
import logging
import pathlib

import makeParallel as mp
import pytest
from conftest import WAIT, wait_until

#: Public names API.md and new-features.md promise, plus the thread cache pair.
PUBLIC_NAMES = (
    "parallel",
    "parallel_fast",
    "parallel_pool",
    "parallel_priority",
    "parallel_with_deps",
    "parallel_map",
    "profiled",
    "configure_thread_pool",
    "get_thread_pool_info",
    "configure_thread_cache",
    "get_thread_cache_info",
    "start_priority_worker",
    "stop_priority_worker",
    "get_priority_queue_info",
    "get_metrics",
    "get_all_metrics",
    "reset_metrics",
    "is_cancelled",
    "check_cancelled",
    "report_progress",
    "get_current_task_id",
    "gather",
    "ParallelContext",
    "memoize",
    "memoize_fast",
    "retry",
    "retry_backoff",
    "retry_cached",
    "timer",
    "CallCounter",
    "set_max_concurrent_tasks",
    "configure_memory_limit",
    "shutdown",
    "reset_shutdown",
    "get_active_task_count",
    "TaskError",
    "TaskCancelledError",
    "TaskTimeoutError",
    "DependencyError",
    "ShutdownError",
)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_exists_with_docstring(name):
    obj = getattr(mp, name)
    assert inspect.getdoc(obj), f"makeParallel.{name} has no docstring"


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_lowercase_package_gives_the_same_objects(name):
    import makeparallel

    assert getattr(makeparallel, name) is getattr(mp, name)


def test_lowercase_package_exports_everything_in_all():
    import makeparallel

    names = getattr(mp, "__all__", None)
    assert names, "makeParallel.__all__ is missing or empty"
    for name in names:
        assert getattr(makeparallel, name) is getattr(mp, name), name


def test_all_lists_the_public_names():
    assert set(PUBLIC_NAMES) <= set(mp.__all__)


def test_package_ships_py_typed_marker():
    package_dir = pathlib.Path(mp.__file__).parent
    assert (package_dir / "py.typed").is_file()


def test_extension_module_is_private_core():
    from makeParallel import _core

    assert callable(_core.current_thread_stack_size)


def test_import_prints_nothing(run_python):
    result = run_python(
        """
        import makeParallel
        import makeparallel
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_normal_use_prints_nothing(run_python):
    result = run_python(
        """
        import makeParallel as mp

        @mp.parallel
        def square(x):
            return x * x

        @mp.parallel_pool
        def fail():
            raise ValueError("expected")

        @mp.parallel_priority
        def low(x):
            return x

        @mp.profiled
        def plain(x):
            return x + 1

        assert square(3).get(10) == 9
        assert low(4, priority=-1).get(10) == 4
        assert plain(1) == 2
        try:
            fail().get(10)
        except ValueError:
            pass
        assert mp.parallel_map(abs, [-1, -2]) == [1, 2]
        mp.get_all_metrics()
        mp.stop_priority_worker()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_failing_callback_is_logged_on_the_package_logger(caplog):
    caplog.set_level(logging.DEBUG)

    def broken_callback(result):
        raise RuntimeError("callback failure")

    handle = mp.parallel(lambda: 7)()
    handle.on_complete(broken_callback)
    assert handle.get(WAIT) == 7

    def logged():
        return any("callback failure" in _record_text(r) for r in caplog.records)

    wait_until(logged)
    records = [r for r in caplog.records if "callback failure" in _record_text(r)]
    for record in records:
        assert record.name == "makeParallel" or record.name.startswith("makeParallel.")


def _record_text(record):
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        text += " " + str(record.exc_info[1])
    return text


def test_package_logger_has_no_output_handler_of_its_own():
    logger = logging.getLogger("makeParallel")
    own = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
    assert own == []

"""The runnable examples of new-features.md, run as written.

Each example is copied verbatim from the document. Examples that use names
the document leaves to the reader (`process`, `data1`, `task`, ...) get a
prelude defining them; an epilogue checks what the example promises. Every
example runs in a fresh interpreter, so its exit is exercised too.
"""

import re
import textwrap
import time

import pytest

IMPORTS = "import makeParallel as mp\nimport time\n"

# Lines of the document wider than 88 columns are split with a backslash at
# the end of a line inside the string literal: the running script still
# holds the original line.
EXAMPLES = [
    pytest.param(
        "",
        """
        import makeParallel as mp

        # Configure thread pool with 8 threads
        mp.configure_thread_pool(num_threads=8)

        # Configure with custom stack size (2MB)
        mp.configure_thread_pool(num_threads=4, stack_size=2*1024*1024)
        """,
        """
        info = mp.get_thread_pool_info()
        assert info["current_num_threads"] == 4, info
        assert info["configured"] is True, info
        """,
        r"",
        id="configure_thread_pool",
    ),
    pytest.param(
        IMPORTS,
        """
        info = mp.get_thread_pool_info()
        print(f"Thread pool has {info['current_num_threads']} threads")
        """,
        "",
        r"Thread pool has \d+ threads\n",
        id="get_thread_pool_info",
    ),
    pytest.param(
        IMPORTS
        + "def process(data):\n    return data * 2\n"
        + "data1, data2, data3 = 1, 2, 3\n",
        """
        @mp.parallel_priority
        def important_task(data):
            return process(data)

        # Higher priority number = executes first
        handle1 = important_task(data1, priority=10)  # Executes first
        handle2 = important_task(data2, priority=5)   # Executes second
        handle3 = important_task(data3, priority=1)   # Executes last

        results = [h.get() for h in [handle1, handle2, handle3]]
        """,
        "assert results == [2, 4, 6], results\n",
        r"",
        id="parallel_priority_usage",
    ),
    pytest.param(IMPORTS, "mp.start_priority_worker()\n", "", r"", id="start_worker"),
    pytest.param(IMPORTS, "mp.stop_priority_worker()\n", "", r"", id="stop_worker"),
    pytest.param(
        "",
        """
        import makeParallel as mp

        @mp.parallel_priority
        def batch_process(batch_id):
            # Process batch
            return f"Batch {batch_id} processed"

        # Start worker
        mp.start_priority_worker()

        # Submit tasks with different priorities
        urgent = batch_process(1, priority=100)      # Critical
        normal = batch_process(2, priority=50)       # Normal
        low = batch_process(3, priority=10)          # Low priority

        # Tasks execute in priority order: 1, 2, 3
        results = [urgent.get(), normal.get(), low.get()]

        # Clean up
        mp.stop_priority_worker()
        """,
        """
        assert results == [
            "Batch 1 processed", "Batch 2 processed", "Batch 3 processed"
        ], results
        assert mp.get_priority_queue_info()["running"] is False
        """,
        r"",
        id="priority_queue_example",
    ),
    pytest.param(
        IMPORTS,
        """
        @mp.parallel
        def long_task():
            time.sleep(100)
            return "done"

        handle = long_task()

        # Try to cancel within 2 seconds
        if handle.cancel_with_timeout(2.0):
            print("Successfully cancelled")
        else:
            print("Cancellation timed out")
        """,
        "assert handle.is_cancelled() and handle.status() == 'cancelled'\n",
        # True if the task had not started yet, False once it sleeps.
        r"(Successfully cancelled|Cancellation timed out)\n",
        id="cancel_with_timeout",
    ),
    pytest.param(
        IMPORTS
        + "@mp.parallel\ndef long_task():\n    time.sleep(100)\n    return 'done'\n",
        """
        handle = long_task()
        handle.cancel()

        if handle.is_cancelled():
            print("Task was cancelled")
        """,
        "",
        r"Task was cancelled\n",
        id="is_cancelled",
    ),
    pytest.param(
        IMPORTS + "@mp.parallel\ndef task():\n    time.sleep(0.1)\n    return 1\n",
        """
        handle = task()
        time.sleep(1)
        print(f"Task has been running for {handle.elapsed_time():.2f}s")
        """,
        "assert 0.09 <= handle.elapsed_time() < 1.0, handle.elapsed_time()\n",
        r"Task has been running for \d+\.\d\ds\n",
        id="elapsed_time",
    ),
    pytest.param(
        IMPORTS,
        """
        @mp.parallel
        def my_function():
            return 42

        handle = my_function()
        print(f"Running: {handle.get_name()}")  # Output: "Running: my_function"
        """,
        "assert handle.get(10) == 42\n",
        r"Running: my_function\n",
        id="get_name",
    ),
    pytest.param(
        "",
        """
        import makeParallel as mp
        import time

        @mp.parallel
        def long_computation(n):
            time.sleep(n)
            return f"Computed for {n}s"

        # Start task
        handle = long_computation(60)

        # Monitor progress
        while not handle.is_ready():
            elapsed = handle.elapsed_time()
            print(f"{handle.get_name()} running for {elapsed:.1f}s")

            # Cancel if taking too long
            if elapsed > 5:
                print("Taking too long, cancelling...")
                if handle.cancel_with_timeout(2.0):
                    print("Cancelled successfully")
                    break

            time.sleep(1)
        """,
        "assert handle.status() == 'cancelled'\n",
        r"(long_computation running for \d+\.\ds\n){6,8}"
        r"Taking too long, cancelling\.\.\.\n",
        id="complete_cancellation_example",
    ),
    pytest.param(
        IMPORTS,
        """
        @mp.profiled
        def expensive_operation(n):
            return sum(i**2 for i in range(n))

        # Function calls are automatically profiled
        for i in range(100):
            expensive_operation(10000)

        # Check metrics
        metrics = mp.get_metrics("expensive_operation")
        print(f"Average execution time: {metrics.average_execution_time_ms:.2f}ms")
        """,
        "assert metrics.total_tasks == 100 and metrics.failed_tasks == 0\n",
        r"Average execution time: \d+\.\d\dms\n",
        id="profiled",
    ),
    pytest.param(
        IMPORTS + "@mp.profiled\ndef my_function():\n    return 42\n"
        "my_function()\nmy_function()\n",
        """
        metrics = mp.get_metrics("my_function")
        if metrics:
            print(f"Executions: {metrics.total_tasks}")
            print(f"Success rate: {metrics.completed_tasks / metrics.total_tasks \
* 100:.1f}%")
            print(f"Avg time: {metrics.average_execution_time_ms:.2f}ms")
        """,
        "",
        r"Executions: 2\nSuccess rate: 100\.0%\nAvg time: \d+\.\d\dms\n",
        id="get_metrics",
    ),
    pytest.param(
        IMPORTS + "@mp.profiled\ndef counted(x):\n    return x\n"
        "counted(1)\ncounted(2)\n",
        """
        all_metrics = mp.get_all_metrics()

        for func_name, metrics in all_metrics.items():
            if not func_name.startswith('_global'):
                print(f"{func_name}:")
                print(f"  Total: {metrics['total_tasks']}")
                print(f"  Avg time: {metrics['average_execution_time_ms']:.2f}ms")

        # Global counters
        print(f"\\nGlobal total: {all_metrics['_global_total']}")
        print(f"Global completed: {all_metrics['_global_completed']}")
        print(f"Global failed: {all_metrics['_global_failed']}")
        """,
        "",
        r"counted:\n  Total: 2\n  Avg time: \d+\.\d\dms\n\n"
        r"Global total: 2\nGlobal completed: 2\nGlobal failed: 0\n",
        id="get_all_metrics",
    ),
    pytest.param(IMPORTS, "mp.reset_metrics()\n", "", r"", id="reset_metrics"),
    pytest.param(
        "",
        """
        import makeParallel as mp

        mp.reset_metrics()

        @mp.parallel
        def parallel_task(n):
            return sum(i**2 for i in range(n))

        # Run multiple parallel tasks
        handles = [parallel_task(1000000) for _ in range(10)]
        results = [h.get() for h in handles]

        # Check metrics
        metrics = mp.get_all_metrics()
        if 'parallel_task' in metrics:
            m = metrics['parallel_task']
            print(f"Ran {m['total_tasks']} tasks")
            print(f"Average time: {m['average_execution_time_ms']:.2f}ms")
            print(f"Total time: {m['total_execution_time_ms']:.2f}ms")
        """,
        "assert len(set(results)) == 1 and len(results) == 10\n",
        r"Ran 10 tasks\nAverage time: \d+\.\d\dms\nTotal time: \d+\.\d\dms\n",
        id="automatic_profiling_with_parallel",
    ),
    pytest.param(
        "",
        """
        import makeParallel as mp
        import time

        # Reset metrics
        mp.reset_metrics()

        @mp.profiled
        def database_query(query_id):
            \"\"\"Simulated database query\"\"\"
            time.sleep(0.1)  # Simulate query time
            if query_id % 10 == 0:
                raise ValueError("Simulated error")
            return f"Result {query_id}"

        @mp.profiled
        def process_data(data):
            \"\"\"Data processing\"\"\"
            time.sleep(0.05)
            return len(data) * 2

        # Run many operations
        for i in range(50):
            try:
                database_query(i)
            except ValueError:
                pass  # Expected occasional failures

            process_data(f"data_{i}")

        # Analyze performance
        all_metrics = mp.get_all_metrics()

        print("Performance Report")
        print("=" * 60)

        for func_name, metrics in all_metrics.items():
            if not func_name.startswith('_global'):
                print(f"\\n{func_name}:")
                print(f"  Total executions: {metrics['total_tasks']}")
                print(f"  Successful: {metrics['completed_tasks']}")
                print(f"  Failed: {metrics['failed_tasks']}")
                print(f"  Success rate: \
{metrics['completed_tasks']/metrics['total_tasks']*100:.1f}%")
                print(f"  Average time: {metrics['average_execution_time_ms']:.2f}ms")
                print(f"  Total time: {metrics['total_execution_time_ms']:.2f}ms")

        print(f"\\n{'=' * 60}")
        print(f"Overall Stats:")
        print(f"  Total tasks: {all_metrics['_global_total']}")
        print(f"  Completed: {all_metrics['_global_completed']}")
        print(f"  Failed: {all_metrics['_global_failed']}")
        """,
        """
        query = all_metrics["database_query"]
        process = all_metrics["process_data"]
        assert query["total_tasks"] == 50, query
        assert query["completed_tasks"] == 45, query
        assert query["failed_tasks"] == 5, query
        assert process["total_tasks"] == 50, process
        assert process["completed_tasks"] == 50, process
        assert process["failed_tasks"] == 0, process
        assert query["average_execution_time_ms"] >= 99.0, query
        assert process["average_execution_time_ms"] >= 49.0, process
        assert all_metrics["_global_total"] == 100, all_metrics
        assert all_metrics["_global_completed"] == 95, all_metrics
        assert all_metrics["_global_failed"] == 5, all_metrics
        """,
        r"Performance Report\n={60}\n"
        r"(\n(database_query|process_data):\n(  .*\n){6}){2}"
        r"\n={60}\nOverall Stats:\n"
        r"  Total tasks: 100\n  Completed: 95\n  Failed: 5\n",
        id="complete_profiling_example",
    ),
    pytest.param(
        "",
        """
        import makeParallel as mp
        import time

        # 1. Configure thread pool
        mp.configure_thread_pool(num_threads=8)
        print(f"Thread pool: {mp.get_thread_pool_info()}")

        # 2. Reset metrics for clean slate
        mp.reset_metrics()

        # 3. Define priority tasks with profiling
        @mp.parallel_priority
        def critical_task(task_id):
            time.sleep(0.1)
            return f"Critical task {task_id} complete"

        @mp.parallel
        def normal_task(task_id):
            time.sleep(0.1)
            return f"Normal task {task_id} complete"

        # 4. Start priority worker
        mp.start_priority_worker()

        # 5. Submit mixed priority tasks
        priority_handles = [
            critical_task(1, priority=100),
            critical_task(2, priority=50),
            critical_task(3, priority=10),
        ]

        normal_handles = [normal_task(i) for i in range(5)]

        # 6. Monitor progress
        all_handles = priority_handles + normal_handles

        while not all(h.is_ready() for h in all_handles):
            ready = sum(1 for h in all_handles if h.is_ready())
            print(f"Progress: {ready}/{len(all_handles)} tasks complete", end='\\r')
            time.sleep(0.1)

        print("\\nAll tasks complete!")

        # 7. Get results
        for h in all_handles:
            if not h.is_cancelled():
                print(f"  {h.get()} (took {h.elapsed_time():.2f}s)")

        # 8. Check performance metrics
        metrics = mp.get_all_metrics()
        for name, m in metrics.items():
            if not name.startswith('_global'):
                print(f"\\n{name}:")
                print(f"  Tasks: {m['total_tasks']}")
                print(f"  Avg time: {m['average_execution_time_ms']:.2f}ms")

        # 9. Cleanup
        mp.stop_priority_worker()
        """,
        """
        assert metrics["critical_task"]["total_tasks"] == 3, metrics
        assert metrics["normal_task"]["total_tasks"] == 5, metrics
        assert metrics["_global_total"] == 8, metrics
        """,
        r"Thread pool: \{.*'current_num_threads': 8.*\}\n(.|\n)*"
        r"All tasks complete!\n"
        r"  Critical task 1 complete \(took \d\.\d\ds\)\n"
        r"  Critical task 2 complete \(took \d\.\d\ds\)\n"
        r"  Critical task 3 complete \(took \d\.\d\ds\)\n"
        r"(  Normal task \d complete \(took \d\.\d\ds\)\n){5}"
        r"(\n(critical_task|normal_task):\n  Tasks: \d\n  Avg time: .*ms\n){2}",
        id="combined_usage_example",
    ),
    pytest.param(
        IMPORTS,
        """
        # Before: No configuration possible
        # Tasks used default thread pool

        # After: Configure as needed
        mp.configure_thread_pool(num_threads=16)
        """,
        "assert mp.get_thread_pool_info()['current_num_threads'] == 16\n",
        r"",
        id="migration_thread_pool",
    ),
    pytest.param(
        IMPORTS + "@mp.parallel\ndef task():\n    time.sleep(0.2)\n",
        """
        # Before: Basic cancellation
        handle = task()
        handle.cancel()  # Fire and forget

        # After: Better control
        handle = task()
        if handle.cancel_with_timeout(2.0):
            print("Cancelled successfully")

        # Check status
        if handle.is_cancelled():
            print("Task was cancelled")

        # Monitor progress
        print(f"Running for {handle.elapsed_time():.2f}s")
        """,
        "",
        r"Cancelled successfully\nTask was cancelled\nRunning for \d\.\d\ds\n",
        id="migration_cancellation",
    ),
    pytest.param(
        IMPORTS + "def my_function():\n    return 1\n",
        """
        # Before: Manual timing
        start = time.time()
        result = my_function()
        duration = time.time() - start
        print(f"Took {duration}s")

        # After: Automatic profiling
        @mp.profiled
        def my_function():
            # ... your code ...
            pass

        result = my_function()

        # Later, check metrics
        metrics = mp.get_metrics("my_function")
        print(f"Average time: {metrics.average_execution_time_ms}ms")
        """,
        "assert metrics.total_tasks == 1\n",
        r"Took .*s\nAverage time: \d+(\.\d+)?(e-?\d+)?ms\n",
        id="migration_profiling",
    ),
    pytest.param(
        IMPORTS,
        """
        # Check configuration
        info = mp.get_thread_pool_info()
        print(info)

        # Reconfigure if needed
        mp.configure_thread_pool(num_threads=8)
        """,
        "",
        r"\{.*'configured': False.*\}\n",
        id="troubleshooting_thread_pool",
    ),
    pytest.param(
        IMPORTS,
        """
        # Ensure worker is started
        mp.start_priority_worker()

        # Check if it's running
        # (It starts automatically on first @parallel_priority call)
        """,
        "assert mp.get_priority_queue_info()['running'] is True\n",
        r"",
        id="troubleshooting_priority",
    ),
    pytest.param(
        IMPORTS,
        """
        # Ensure function is decorated
        @mp.profiled  # Don't forget this!
        def my_func():
            pass

        # Check if function was called
        metrics = mp.get_all_metrics()
        print("Tracked functions:", [k for k in metrics.keys() \
if not k.startswith('_')])
        """,
        "",
        r"Tracked functions: \[\]\n",
        id="troubleshooting_metrics",
    ),
    pytest.param(
        IMPORTS
        + "@mp.parallel\ndef task():\n"
        + "    while not mp.is_cancelled():\n        time.sleep(0.01)\n",
        """
        # Remember: cancellation is cooperative
        # The task must have started and checked the cancel flag

        handle = task()
        time.sleep(0.1)  # Give it time to start
        handle.cancel()

        # Check status
        if handle.is_cancelled():
            print("Successfully cancelled")
        """,
        "assert handle.wait(10) and handle.status() == 'cancelled'\n",
        r"Successfully cancelled\n",
        id="troubleshooting_cancellation",
    ),
]


@pytest.mark.parametrize("prelude, example, epilogue, expected_stdout", EXAMPLES)
def test_example_runs_as_written(
    run_python, prelude, example, epilogue, expected_stdout
):
    script = prelude + textwrap.dedent(example) + textwrap.dedent(epilogue)

    started = time.monotonic()
    result = run_python(script, timeout=60)
    duration = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert re.fullmatch(expected_stdout, result.stdout), result.stdout
    # The longest example (complete profiling) needs about 7.5 s; the cancel
    # example about 8 s. Exit must not wait for cancelled 60-100 s sleeps.
    assert duration < 30.0, duration

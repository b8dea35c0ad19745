"""API §9: @timer and CallCounter."""

import functools
import logging
import pickle
import re
import threading

import pytest

import makeParallel as mp
from conftest import WAIT


@mp.CallCounter
def module_level_counted(x):
    return x


# timer ---------------------------------------------------------------------


def test_timer_writes_one_line_per_call_to_stderr(capsys):
    @mp.timer
    def add(a, b):
        return a + b

    assert add(2, 3) == 5
    assert add(4, 5) == 9

    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 2
    pattern = r"timer: .*add took \d+\.\d{6} s"
    assert all(re.fullmatch(pattern, line) for line in lines), lines


def test_timer_reports_a_failed_call_and_reraises(capsys):
    @mp.timer
    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom()
    err = capsys.readouterr().err
    assert re.fullmatch(r"timer: .*boom raised KeyError after \d+\.\d{6} s\n", err)


def test_timer_with_a_logger_logs_at_info_and_writes_nothing(capsys, caplog):
    log = logging.getLogger("test_timing.timer")

    @mp.timer(logger=log)
    def work():
        return "done"

    with caplog.at_level(logging.INFO, logger="test_timing.timer"):
        assert work() == "done"

    records = [r for r in caplog.records if r.name == "test_timing.timer"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert re.fullmatch(r"timer: .*work took \d+\.\d{6} s", records[0].getMessage())
    assert capsys.readouterr().err == ""


def test_timer_empty_parentheses_report_to_stderr(capsys):
    @mp.timer()
    def noop():
        return None

    noop()
    assert "noop took" in capsys.readouterr().err


def test_timer_keeps_the_identity_and_works_on_methods(capsys):
    class Box:
        def __init__(self, value):
            self.value = value

        @mp.timer
        def get(self):
            """Returns the value."""
            return self.value

    assert Box(1).get() == 1
    assert Box(2).get() == 2
    assert Box.get.__name__ == "get"
    assert Box.get.__doc__ == "Returns the value."
    assert capsys.readouterr().err.count("Box.get took") == 2


@pytest.mark.parametrize("bad", ["stderr", print, 3])
def test_timer_rejects_a_logger_that_is_not_one(bad):
    with pytest.raises(TypeError, match="logger"):
        mp.timer(logger=bad)


def test_timer_rejects_non_callables_and_coroutine_functions():
    async def fetch():
        return 1

    with pytest.raises(TypeError, match="callable"):
        mp.timer(5)
    with pytest.raises(TypeError, match="coroutine"):
        mp.timer(fetch)


# CallCounter ---------------------------------------------------------------


def test_call_counter_counts_and_resets():
    @mp.CallCounter
    def double(x):
        return 2 * x

    assert double.call_count == 0
    assert [double(i) for i in range(3)] == [0, 2, 4]
    assert double.call_count == 3
    double.reset()
    assert double.call_count == 0
    double(1)
    assert double.call_count == 1


def test_call_counter_counts_each_function_separately():
    first = mp.CallCounter(lambda: 1)
    second = mp.CallCounter(lambda: 2)
    first()
    first()
    second()
    assert (first.call_count, second.call_count) == (2, 1)


def test_call_counter_counts_calls_that_raise():
    @mp.CallCounter
    def boom():
        raise ValueError

    for _ in range(2):
        with pytest.raises(ValueError):
            boom()
    assert boom.call_count == 2


def test_call_counter_is_thread_safe():
    threads_n, calls = 8, 1000
    barrier = threading.Barrier(threads_n)

    @mp.CallCounter
    def tick():
        return None

    def hammer():
        barrier.wait(WAIT)
        for _ in range(calls):
            tick()

    threads = [threading.Thread(target=hammer) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert tick.call_count == threads_n * calls


def test_call_counter_on_methods_binds_self_and_shares_the_count():
    class Account:
        def __init__(self, balance):
            self.balance = balance

        @mp.CallCounter
        def deposit(self, amount):
            self.balance += amount
            return self.balance

    a, b = Account(0), Account(100)
    assert a.deposit(5) == 5
    assert b.deposit(5) == 105
    assert a.deposit(1) == 6
    assert (a.balance, b.balance) == (6, 105)
    assert Account.deposit.call_count == 3
    assert a.deposit.call_count == b.deposit.call_count == 3
    Account.deposit.reset()
    assert b.deposit.call_count == 0


def test_call_counter_keeps_the_identity():
    def greet(name):
        """Says hello."""
        return f"hello {name}"

    counted = mp.CallCounter(greet)
    assert counted.__name__ == "greet"
    assert counted.__doc__ == "Says hello."
    assert counted.__wrapped__ is greet
    assert "greet" in repr(counted)


def test_call_counter_on_a_partial_and_pickle_by_reference():
    counted = mp.CallCounter(functools.partial(max, 0))
    assert counted(5) == 5
    assert counted.__name__ == "max"
    assert pickle.loads(pickle.dumps(module_level_counted)) is module_level_counted


def test_call_counter_counts_tasks_run_on_workers():
    counted = mp.CallCounter(lambda x: x + 1)
    handles = [mp.parallel_pool(counted)(i) for i in range(20)]
    assert [h.get(WAIT) for h in handles] == list(range(1, 21))
    assert counted.call_count == 20


def test_call_counter_rejects_non_callables():
    with pytest.raises(TypeError, match="callable"):
        mp.CallCounter(3)

"""API §2 and §3: where tasks run, and what every decorator accepts and keeps."""

import functools
import inspect
import logging
import pickle
import subprocess
import sys
import threading

import makeParallel as mp
import pytest
from conftest import TASK_DECORATOR_NAMES, WAIT


def _sample(a, b=2, *args, c, d=4, **kwargs):
    """Docstring of the sample function."""
    return (a, b, args, c, d, kwargs)


def _add(x, y):
    return x + y


def _echo(*args, **kwargs):
    return args, kwargs


#: Every decorator, bare and with options, as (id, decorate) pairs.
def _bare(name):
    # Looked up at call time, so a missing decorator fails its own tests only.
    return lambda f: getattr(mp, name)(f)


DECORATOR_FORMS = [(name, _bare(name)) for name in TASK_DECORATOR_NAMES] + [
    ("parallel(timeout=5.0)", lambda f: mp.parallel(timeout=5.0)(f)),
    ("parallel_fast(timeout=5.0)", lambda f: mp.parallel_fast(timeout=5.0)(f)),
    ("parallel_pool(timeout=5.0)", lambda f: mp.parallel_pool(timeout=5.0)(f)),
    ("parallel_priority(timeout=5.0)", lambda f: mp.parallel_priority(timeout=5.0)(f)),
    ("parallel_with_deps", _bare("parallel_with_deps")),
    ("profiled", _bare("profiled")),
    ("profiled(name=...)", lambda f: mp.profiled(name="custom")(f)),
    ("memoize", _bare("memoize")),
    ("memoize(maxsize=8)", lambda f: mp.memoize(maxsize=8)(f)),
    ("memoize_fast", _bare("memoize_fast")),
    ("retry", _bare("retry")),
    ("retry(max_retries=2)", lambda f: mp.retry(max_retries=2)(f)),
    ("retry_backoff(max_attempts=2)", lambda f: mp.retry_backoff(max_attempts=2)(f)),
    ("retry_cached(max_attempts=2)", lambda f: mp.retry_cached(max_attempts=2)(f)),
    ("timer", _bare("timer")),
    ("timer(logger=...)", lambda f: mp.timer(logger=logging.getLogger("t"))(f)),
    ("CallCounter", _bare("CallCounter")),
]


@pytest.mark.parametrize(
    "decorate",
    [form for _, form in DECORATOR_FORMS],
    ids=[i for i, _ in DECORATOR_FORMS],
)
def test_decorator_keeps_function_attributes(decorate):
    decorated = decorate(_sample)

    assert decorated.__name__ == "_sample"
    assert decorated.__qualname__ == "_sample"
    assert decorated.__doc__ == "Docstring of the sample function."
    assert decorated.__module__ == __name__
    assert decorated.__wrapped__ is _sample
    assert inspect.signature(decorated) == inspect.signature(_sample)


#: Forms where a lone positional argument can only be the decorated function.
FUNCTION_ONLY_FORMS = [
    (i, form) for i, form in DECORATOR_FORMS if i in TASK_DECORATOR_NAMES or "(" in i
] + [("parallel_with_deps", _bare("parallel_with_deps"))]


@pytest.mark.parametrize(
    "decorate",
    [form for _, form in FUNCTION_ONLY_FORMS],
    ids=[i for i, _ in FUNCTION_ONLY_FORMS],
)
@pytest.mark.parametrize("value", [42, "not a function", [1, 2]], ids=repr)
def test_decorating_a_non_callable_raises_type_error_naming_it(decorate, value):
    with pytest.raises(TypeError) as info:
        decorate(value)
    message = str(info.value)
    assert repr(value) in message or type(value).__name__ in message


def test_task_runs_on_a_thread_that_is_not_the_callers(task_decorator):
    caller = threading.get_ident()
    handle = task_decorator(threading.get_ident)()
    assert handle.get(WAIT) != caller


def test_handles_of_all_task_decorators_share_one_type():
    types = {type(getattr(mp, name)(_add)(1, 2)) for name in TASK_DECORATOR_NAMES}
    with mp.ParallelContext() as ctx:
        types.add(type(ctx.submit(_add, args=(1, 2))))
    assert len(types) == 1


def test_plain_function_receives_args_and_kwargs(task_decorator):
    handle = task_decorator(_sample)(1, 3, 5, c=6, e=7)
    assert handle.get(WAIT) == (1, 3, (5,), 6, 4, {"e": 7})


class _Box:
    def __init__(self, value):
        self.value = value

    def read(self, extra):
        return (self.value, extra)


def test_method_runs_with_the_right_self_on_two_instances(task_decorator):
    class Box:
        def __init__(self, value):
            self.value = value

        @task_decorator
        def read(self, extra):
            return (self.value, extra)

    first, second = Box("first"), Box("second")
    h1, h2 = first.read(1), second.read(2)

    assert h1.get(WAIT) == ("first", 1)
    assert h2.get(WAIT) == ("second", 2)
    assert Box.read.__name__ == "read"
    assert h1.get_name() == "read"


def test_staticmethod_with_decorator_inside(task_decorator):
    class Tools:
        @staticmethod
        @task_decorator
        def add(x, y):
            return x + y

    assert Tools.add(1, 2).get(WAIT) == 3
    assert Tools().add(3, 4).get(WAIT) == 7


def test_classmethod_with_decorator_inside_gets_the_calling_class(task_decorator):
    class Base:
        @classmethod
        @task_decorator
        def make(cls, x):
            return (cls, x)

    class Child(Base):
        pass

    assert Base.make(1).get(WAIT) == (Base, 1)
    assert Child.make(2).get(WAIT) == (Child, 2)
    assert Child().make(3).get(WAIT) == (Child, 3)


def test_bound_method(task_decorator):
    box = _Box("bound")
    handle = task_decorator(box.read)(5)

    assert handle.get(WAIT) == ("bound", 5)
    assert handle.get_name() == "read"


def test_functools_partial(task_decorator):
    handle = task_decorator(functools.partial(_add, 10))(5)

    assert handle.get(WAIT) == 15
    assert handle.get_name() == "_add"


def test_lambda(task_decorator):
    handle = task_decorator(lambda x: x * 2)(21)

    assert handle.get(WAIT) == 42
    assert handle.get_name() == "<lambda>"


@pytest.mark.parametrize(
    "builtin, args, expected",
    [(len, ([1, 2, 3],), 3), (sorted, ([3, 1, 2],), [1, 2, 3]), (pow, (2, 10), 1024)],
    ids=["len", "sorted", "pow"],
)
def test_builtin_function(task_decorator, builtin, args, expected):
    handle = task_decorator(builtin)(*args)

    assert handle.get(WAIT) == expected
    assert handle.get_name() == builtin.__name__


def test_decorator_with_options_form(task_decorator):
    @task_decorator(timeout=5.0)
    def triple(x):
        return 3 * x

    handle = triple(4)
    assert handle.get(WAIT) == 12
    assert handle.get_timeout() == 5.0


def test_per_call_timeout_overrides_decorator_timeout(task_decorator):
    @task_decorator(timeout=5.0)
    def one():
        return 1

    handle = one(timeout=7.5)
    assert handle.get(WAIT) == 1
    assert handle.get_timeout() == 7.5


def test_without_timeout_handle_reports_none(task_decorator):
    handle = task_decorator(_add)(1, 1)
    assert handle.get(WAIT) == 2
    assert handle.get_timeout() is None


def test_per_call_timeout_is_consumed_not_forwarded(task_decorator):
    handle = task_decorator(_echo)(1, 2, timeout=5.0, key="value")

    assert handle.get(WAIT) == ((1, 2), {"key": "value"})
    assert handle.get_timeout() == 5.0


def test_per_call_priority_is_consumed_not_forwarded():
    handle = mp.parallel_priority(_echo)(1, priority=3, timeout=5.0)
    assert handle.get(WAIT) == ((1,), {})


def test_options_forwards_every_keyword_including_timeout(task_decorator):
    def takes_timeout(x, timeout, priority=None, depends_on=None):
        return (x, timeout, priority, depends_on)

    caller = task_decorator(takes_timeout).options(timeout=5.0)
    handle = caller(1, timeout="mine", priority="p", depends_on="d")

    assert handle.get(WAIT) == (1, "mine", "p", "d")
    assert handle.get_timeout() == 5.0


def test_options_without_options_still_forwards_everything(task_decorator):
    handle = task_decorator(_echo).options()(timeout=1, priority=2)
    assert handle.get(WAIT) == ((), {"timeout": 1, "priority": 2})
    assert handle.get_timeout() is None


def test_priority_options_forward_a_priority_keyword(block_priority_worker, log):
    def takes_priority(priority):
        return log.record(priority)

    decorated = mp.parallel_priority(takes_priority)
    low = decorated.options(priority=-5)(priority="low")
    high = decorated.options(priority=5)(priority="high")
    block_priority_worker.open()

    assert high.get(WAIT) == "high"
    assert low.get(WAIT) == "low"
    assert log.snapshot() == ["high", "low"]


# Module-level decorated functions: picklable by reference.
@mp.parallel
def double_parallel(x):
    return 2 * x


@mp.parallel_fast
def double_parallel_fast(x):
    return 2 * x


@mp.parallel_pool
def double_parallel_pool(x):
    return 2 * x


@mp.parallel_priority
def double_parallel_priority(x):
    return 2 * x


@mp.parallel(timeout=30.0)
def double_parallel_with_timeout(x):
    return 2 * x


@mp.profiled
def double_profiled(x):
    return 2 * x


def _decorator(name):
    """`mp.<name>`; if it is missing, a stand-in that fails the tests using it."""
    return getattr(mp, name, lambda f: f"makeParallel.{name} is missing")


@_decorator("parallel_with_deps")
def double_parallel_with_deps(x):
    return 2 * x


PICKLABLE = [
    double_parallel,
    double_parallel_fast,
    double_parallel_pool,
    double_parallel_priority,
    double_parallel_with_timeout,
    double_profiled,
    double_parallel_with_deps,
]
PICKLABLE_IDS = [
    "parallel",
    "parallel_fast",
    "parallel_pool",
    "parallel_priority",
    "parallel(timeout)",
    "profiled",
    "parallel_with_deps",
]


@pytest.mark.parametrize("func", PICKLABLE, ids=PICKLABLE_IDS)
@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_module_level_decorated_function_pickles_by_reference(func, protocol):
    assert pickle.loads(pickle.dumps(func, protocol=protocol)) is func


@pytest.mark.parametrize("func", PICKLABLE[:5], ids=PICKLABLE_IDS[:5])
def test_pickled_task_function_runs_in_another_process(func):
    here = str(__import__("pathlib").Path(__file__).parent)
    code = (
        "import pickle, sys\n"
        f"sys.path.insert(0, {here!r})\n"
        "func = pickle.loads(sys.stdin.buffer.read())\n"
        "print(func(21).get(10))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(func),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "42"

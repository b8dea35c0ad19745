// Shared by the binding's source files: the process-wide state the binding keeps, the
// Python helpers, and the task types that run Python code. See module.cpp for the GIL rules.
#pragma once

#include <unistd.h>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <pythread.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "makeparallel/executor.hpp"
#include "makeparallel/memory.hpp"
#include "makeparallel/metrics.hpp"
#include "makeparallel/os_thread.hpp"
#include "makeparallel/runtime.hpp"
#include "makeparallel/task.hpp"
#include "makeparallel/trace.hpp"

namespace mpb {

namespace nb = nanobind;
using namespace nb::literals;

// ---------------------------------------------------------------------------------------------
// Process-wide state. Heap-allocated and never freed: worker threads may outlive the module
// (a cancelled task stuck in C at exit), so nothing they use may be destroyed under them.

/// Exception types defined by the Python package, registered once at import.
struct exception_types {
  PyObject* cancelled = nullptr;     // TaskCancelledError
  PyObject* timed_out = nullptr;     // TaskTimeoutError
  PyObject* wait_timeout = nullptr;  // TimeoutError raised by get(timeout=...)
  PyObject* shutdown = nullptr;      // ShutdownError
  PyObject* dependency = nullptr;    // DependencyError
};
inline exception_types g_exc;

/// Set by the atexit hook: from then on no core thread takes the GIL.
inline std::atomic<bool> g_exiting{false};
/// Set while the interpreter shuts down: new submissions are refused.
inline std::atomic<bool> g_refusing{false};
/// Set when the atexit hook starts: from then on only code running inside a task may
/// submit (its follow-up work is part of what exit waits for), so that a daemon thread
/// submitting in a loop cannot keep the interpreter from exiting.
inline std::atomic<bool> g_exit_started{false};
/// Threads of Python's between deciding to take the GIL back and holding it (see
/// restore_thread); the atexit hook waits for them before it lets finalization start.
inline std::atomic<int> g_reacquiring{0};

/// Takes the GIL back, inside a call from Python, after a blocking section begun with
/// PyEval_SaveThread(). Once the interpreter is exiting it does not return: the thread
/// sleeps until the process ends. Before 3.14, CPython ends a thread that asks for the GIL
/// during finalization with pthread_exit(), whose forced unwind cannot cross the C++ frames
/// of a bound function (their catch-all handlers turn it into std::terminate, an abort).
/// Daemon threads are killed at that point anyway; this kills them more quietly.
inline void restore_thread(PyThreadState* ts) {
  g_reacquiring.fetch_add(1);
  if (g_exiting.load()) {
    if (g_reacquiring.fetch_sub(1) == 1) g_reacquiring.notify_all();
    for (;;) ::pause();  // ends with the process
  }
  PyEval_RestoreThread(ts);
  if (g_reacquiring.fetch_sub(1) == 1) g_reacquiring.notify_all();
}

/// Backends of a TaskFunction: 0 = the program's default (below), 1 = threads, 2 = processes.
enum backend_kind : int { backend_default = 0, backend_thread = 1, backend_process = 2 };
/// The backend that `backend_default` stands for; set by set_default_backend().
inline std::atomic<int> g_default_backend{backend_thread};

/// References dropped by threads that do not hold the GIL, released later by one that does.
class deferred_decrefs {
 public:
  void push(PyObject* o) {
    std::lock_guard<std::mutex> lk(mu_);
    items_.push_back(o);
    pending_.store(true, std::memory_order_release);
  }
  /// Releases the queued references. GIL held.
  void drain() {
    if (!pending_.load(std::memory_order_acquire)) return;
    std::vector<PyObject*> items;
    {
      std::lock_guard<std::mutex> lk(mu_);
      items.swap(items_);
      pending_.store(false, std::memory_order_release);
    }
    for (PyObject* o : items) Py_DECREF(o);
  }

 private:
  std::mutex mu_;
  std::vector<PyObject*> items_;
  std::atomic<bool> pending_{false};
};
inline deferred_decrefs* g_decrefs = new deferred_decrefs;

/// True when this thread has an attached Python thread state: it holds the GIL, or on a
/// free-threaded build it may run Python code. From 3.13 it asks for this thread's own
/// state rather than PyGILState_Check(), which answers 1 for every thread once a second
/// interpreter exists (its check gets disabled); a decref on a thread without a thread
/// state could run a destructor with none.
inline bool has_thread_state() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
  return PyThreadState_GetUnchecked() != nullptr;  // this thread's own, attached or not
#else
  // Before 3.13 the unchecked getter returns the thread state of whichever thread holds the
  // GIL, not this thread's, so it cannot answer the question; there is no free-threaded
  // build before 3.13 either, and only subinterpreters make PyGILState_Check() unreliable.
  return PyGILState_Check() != 0;
#endif
}

/// Drops `o` (if any): at once when this thread holds the GIL, later otherwise.
inline void release_ref(PyObject*& o) noexcept {
  PyObject* p = o;
  o = nullptr;
  if (!p || g_exiting.load(std::memory_order_acquire)) return;  // exiting: leak, never block
  if (has_thread_state()) {
    Py_DECREF(p);
  } else {
    try {
      g_decrefs->push(p);
    } catch (...) {
      // Out of memory while queueing: leaking one reference is the only safe choice.
    }
  }
}

/// Per worker thread: its Python thread state, created once and kept between batches, so a
/// batch costs one GIL hand-over rather than a thread-state allocation.
struct worker_thread_state {
  bool ready = false;    // PyGILState_Ensure was called on this thread
  bool entered = false;  // the GIL is held for the current batch
  PyGILState_STATE gstate{};
  PyThreadState* saved = nullptr;
};
inline thread_local worker_thread_state t_worker;

class gil_hooks final : public mp::runner_hooks {
 public:
  void enter() override {
    if (g_exiting.load(std::memory_order_acquire)) return;  // tasks see !entered and stop
    if (!t_worker.ready) {
      t_worker.gstate = PyGILState_Ensure();
      t_worker.ready = true;
    } else {
      PyEval_RestoreThread(t_worker.saved);
    }
    t_worker.entered = true;
    g_decrefs->drain();
  }
  void leave() override {
    if (!t_worker.entered) return;
    g_decrefs->drain();
    t_worker.entered = false;
    t_worker.saved = PyEval_SaveThread();
  }
  void thread_exit() override {
    if (!t_worker.ready || g_exiting.load(std::memory_order_acquire)) return;
    PyEval_RestoreThread(t_worker.saved);
    PyGILState_Release(t_worker.gstate);
    t_worker.ready = false;
  }
};
inline gil_hooks* g_hooks = new gil_hooks;
inline mp::runtime* g_runtime = new mp::runtime(g_hooks);
inline mp::metrics_registry* g_metrics = new mp::metrics_registry;

inline mp::runtime& rt() { return *g_runtime; }

// ---------------------------------------------------------------------------------------------
// Small Python helpers.

/// Takes the current Python exception as one normalised object with its traceback.
inline PyObject* fetch_exception() {
#if PY_VERSION_HEX >= 0x030C0000
  return PyErr_GetRaisedException();
#else
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return value;
#endif
}

/// Makes `exc` the current Python exception (new reference taken).
inline void restore_exception(PyObject* exc) {
#if PY_VERSION_HEX >= 0x030C0000
  Py_INCREF(exc);
  PyErr_SetRaisedException(exc);
#else
  PyObject* type = reinterpret_cast<PyObject*>(Py_TYPE(exc));
  Py_INCREF(type);
  Py_INCREF(exc);
  PyErr_Restore(type, exc, PyException_GetTraceback(exc));
#endif
}

/// Appends a PEP 678 note to `exc` (on Pythons before 3.11, to its __notes__ list, which the
/// traceback printer ignores there). Never raises.
inline void add_note(PyObject* exc, const std::string& note) {
  PyObject* saved = PyErr_Occurred() ? fetch_exception() : nullptr;
  PyObject* text = PyUnicode_FromStringAndSize(note.data(), static_cast<Py_ssize_t>(note.size()));
  if (text) {
    PyObject* notes = PyObject_GetAttrString(exc, "__notes__");
    if (!notes) {
      PyErr_Clear();
      notes = PyList_New(0);
      if (notes && PyObject_SetAttrString(exc, "__notes__", notes) != 0) Py_CLEAR(notes);
    }
    if (notes && PyList_Check(notes)) PyList_Append(notes, text);
    Py_XDECREF(notes);
    Py_DECREF(text);
  }
  PyErr_Clear();
  if (saved) {
    restore_exception(saved);
    Py_DECREF(saved);
  }
}

[[noreturn]] inline void raise(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw nb::python_error();
}

/// Raises ShutdownError unless new tasks may be submitted from this thread now.
inline void check_accepting() {
  if (g_refusing.load(std::memory_order_acquire) ||
      (g_exit_started.load(std::memory_order_acquire) && mp::task::current() == nullptr)) {
    raise(g_exc.shutdown, "cannot submit tasks while the interpreter is shutting down");
  }
}

inline std::string task_id_string(uint64_t id) { return "task_" + std::to_string(id); }

/// A wait's timeout as given by Python (None, or a number of seconds; negative means do not
/// wait) to an optional deadline. Bools and non-numbers are refused, as everywhere else.
inline std::optional<mp::clock::time_point> deadline_from(nb::handle seconds,
                                                          const char* param) {
  if (seconds.is_none()) return std::nullopt;
  PyObject* v = seconds.ptr();
  if (PyBool_Check(v) || !(PyLong_Check(v) || PyFloat_Check(v))) {
    raise(PyExc_TypeError, std::string(param) + " must be a number of seconds or None, not " +
                               Py_TYPE(v)->tp_name);
  }
  const double s = PyFloat_AsDouble(v);
  if (s == -1.0 && PyErr_Occurred()) throw nb::python_error();
  if (std::isnan(s)) raise(PyExc_ValueError, std::string(param) + " must not be NaN");
  return mp::deadline_after(std::fmax(s, 0.0));
}

/// Validates a task timeout: None (-1 returned) or a positive finite number of seconds.
inline double parse_timeout(PyObject* value, const char* param = "timeout") {
  if (value == Py_None) return -1;
  if (PyBool_Check(value) || !(PyLong_Check(value) || PyFloat_Check(value))) {
    raise(PyExc_TypeError, std::string(param) + " must be a number of seconds or None, not " +
                               Py_TYPE(value)->tp_name);
  }
  const double s = PyFloat_AsDouble(value);
  if (s == -1.0 && PyErr_Occurred()) throw nb::python_error();
  if (!(s > 0) || !std::isfinite(s)) {
    raise(PyExc_ValueError,
          std::string(param) + " must be a positive finite number of seconds, got " +
              nb::borrow<nb::str>(nb::repr(nb::handle(value))).c_str());
  }
  return s;
}

/// Validates a priority: an int (not a bool) that fits in 64 bits.
inline int64_t parse_priority(PyObject* value) {
  if (PyBool_Check(value) || !PyLong_Check(value)) {
    raise(PyExc_TypeError,
          std::string("priority must be an int, not ") + Py_TYPE(value)->tp_name);
  }
  int overflow = 0;
  const long long p = PyLong_AsLongLongAndOverflow(value, &overflow);
  if (overflow != 0) {
    raise(PyExc_ValueError, "priority must fit in a signed 64-bit integer, got " +
                                std::string(nb::repr(nb::handle(value)).c_str()));
  }
  if (p == -1 && PyErr_Occurred()) throw nb::python_error();
  return static_cast<int64_t>(p);
}

// ---------------------------------------------------------------------------------------------
// Tasks that run Python code.

/// What every Python task shares: its name, outcome value, metadata and progress.
class py_task : public mp::task {
 public:
  explicit py_task(PyObject* name) : name_(name) { Py_INCREF(name_); }
  ~py_task() override {
    release_ref(name_);
    PyObject* value = value_.exchange(nullptr);
    release_ref(value);
    PyObject* metadata = metadata_.exchange(nullptr);
    release_ref(metadata);
    PyObject* callbacks = progress_callbacks_.exchange(nullptr);
    release_ref(callbacks);
  }

  PyObject* name() const noexcept { return name_; }
  /// Result (done) or exception (failed). Borrowed. Read it only once the outcome is done or
  /// failed: the thread that publishes those outcomes stores it before publishing, and no
  /// other thread replaces a stored value (see claim_value).
  PyObject* value() const noexcept { return value_.load(std::memory_order_acquire); }
  double timeout = -1;
  /// Tasks whose results are passed first. Cleared once this task ran or was abandoned; they
  /// refer back to it through their hooks only until they settle, so no cycle outlives them.
  std::vector<std::shared_ptr<py_task>> deps;

  /// A new tuple of the dependencies' results (each is done, so its value is set), and the
  /// list cleared. Null with a Python error set on failure. GIL held.
  PyObject* take_dependency_results() {
    PyObject* results = PyTuple_New(static_cast<Py_ssize_t>(deps.size()));
    if (!results) return nullptr;
    for (size_t i = 0; i < deps.size(); ++i) {
      PyObject* v = deps[i]->value();
      Py_INCREF(v);
      PyTuple_SET_ITEM(results, static_cast<Py_ssize_t>(i), v);
    }
    deps.clear();
    return results;
  }
  std::atomic<double> progress{0.0};
  std::atomic<bool> interrupt_requested{false};
  std::atomic<unsigned long> thread_ident{0};
#ifdef Py_GIL_DISABLED
  /// Orders "the worker records or clears thread_ident" against "a canceller sends the
  /// interrupt to that thread" (see interrupt_guard). Free-threaded builds only.
  PyMutex interrupt_mu{};
#endif

  /// The per-handle metadata dict, created on first use. Thread state attached.
  PyObject* metadata() {
    return created_once(metadata_, [] { return PyDict_New(); });
  }
  /// Progress callbacks, a list created on first use. Thread state attached.
  PyObject* progress_callbacks() {
    return created_once(progress_callbacks_, [] { return PyList_New(0); });
  }
  bool has_progress_callbacks() const noexcept {
    return progress_callbacks_.load(std::memory_order_acquire) != nullptr;
  }

 protected:
  /// Publishes the code's result `r` (new reference), or the pending exception when `r` is
  /// null. A result that comes too late (cancelled or timed out meanwhile) is dropped.
  /// GIL held.
  void finish(PyObject* r) {
    mp::outcome o = mp::outcome::done;
    PyObject* v = r;
    if (!r) {
      PyObject* exc = fetch_exception();
      if (PyObject_IsInstance(exc, g_exc.cancelled) == 1) {
        o = mp::outcome::cancelled;
      } else {
        o = mp::outcome::failed;
        annotate(exc);
      }
      PyErr_Clear();
      v = exc;
    }
    if (o == mp::outcome::done) progress.store(1.0, std::memory_order_relaxed);
    // Only the worker running the code gets here, and a task that runs was never failed by a
    // dependency, so the slot is free; complete() still has to run if it were not, to account
    // for the code having stopped.
    const bool owned = claim_value(v);
    const bool kept = measured_ns_ ? complete(o, *measured_ns_) : complete(o);
    if (!kept && owned) drop_value();
  }

  /// Execution time measured where the code ran (a worker process); finish() records it
  /// instead of the time spent in execute().
  std::optional<uint64_t> measured_ns_;

 public:
  /// Fails this unstarted task with DependencyError because `dep` did not succeed. True if
  /// this call settled the task (only then may the caller touch its dependency list).
  /// Thread state attached.
  bool fail_dependency(py_task& dep) {
    const char* what = dep.get_outcome() == mp::outcome::failed      ? "failed"
                       : dep.get_outcome() == mp::outcome::timed_out ? "timed out"
                                                                     : "was cancelled";
    const std::string msg = "dependency " + describe_task(dep) + " " + what + ", so " +
                            describe_task(*this) + " did not run";
    PyObject* cause = nullptr;
    if (dep.get_outcome() == mp::outcome::failed) {
      cause = dep.value();
      Py_INCREF(cause);
    } else {
      PyObject* type = dep.get_outcome() == mp::outcome::timed_out ? g_exc.timed_out
                                                                   : g_exc.cancelled;
      cause = PyObject_CallFunction(type, "s", (describe_task(dep) + " " + what).c_str());
    }
    PyObject* exc = PyObject_CallFunction(g_exc.dependency, "s", msg.c_str());
    if (!exc) {  // could not even build the error (out of memory): keep what was raised
      exc = fetch_exception();
    } else if (cause) {
      PyException_SetCause(exc, cause);  // steals cause
      cause = nullptr;
    }
    Py_XDECREF(cause);
    PyErr_Clear();
    // Several dependencies can fail at once, each on its own thread (truly in parallel on a
    // free-threaded build): the first to claim the slot decides, the others drop their error.
    if (!claim_value(exc)) return false;
    if (abandon(mp::outcome::failed)) return true;
    drop_value();  // cancelled or timed out meanwhile: that outcome stands, without a value
    return false;
  }

  static std::string describe_task(const py_task& t) {
    return "task " + task_id_string(t.id()) + " (" + PyUnicode_AsUTF8(t.name()) + ")";
  }
 protected:
  /// complete() runs with the GIL held in this binding, so reading the str is safe.
  std::string label() const override { return PyUnicode_AsUTF8(name_); }

 public:
  /// Called by a caller about to wait for this task until `deadline` (none: no limit):
  /// starts the task on the caller's own thread if that is possible and overtakes nothing,
  /// which saves the hand-offs between threads. True if it ran here; if the caller stops
  /// waiting first (deadline, or a signal: then the error is thrown), another thread
  /// finishes it. `self` owns this task. GIL held.
  virtual bool run_here(const std::shared_ptr<py_task>& self,
                        const std::optional<mp::clock::time_point>& deadline) {
    (void)self;
    (void)deadline;
    return false;
  }

 protected:

  virtual void annotate(PyObject* exc) {
    add_note(exc, "raised in makeParallel task " + task_id_string(id()) + " (" +
                      PyUnicode_AsUTF8(name_) + ")");
  }

 private:
  /// Stores `v` (new reference) as the value unless one is stored already, in which case `v`
  /// is released. True if `v` was stored.
  bool claim_value(PyObject* v) noexcept {
    PyObject* expected = nullptr;
    if (value_.compare_exchange_strong(expected, v, std::memory_order_acq_rel)) return true;
    Py_DECREF(v);
    return false;
  }
  /// Releases the value this thread stored but could not publish.
  void drop_value() noexcept {
    PyObject* v = value_.exchange(nullptr, std::memory_order_acq_rel);
    Py_XDECREF(v);
  }

  /// Returns `slot`, filling it first with `make()` if it is empty. Lock-free on purpose: a
  /// lock (std::call_once included) held while `make` allocates could deadlock, because the
  /// allocation may run the garbage collector, which on a free-threaded build waits for every
  /// other thread to pause, one of them being blocked on that lock. Two threads may both
  /// build one; the loser releases its copy. Raises on allocation failure.
  template <typename Make>
  static PyObject* created_once(std::atomic<PyObject*>& slot, Make make) {
    PyObject* current = slot.load(std::memory_order_acquire);
    if (current) return current;
    PyObject* fresh = make();
    if (!fresh) throw nb::python_error();
    if (slot.compare_exchange_strong(current, fresh, std::memory_order_acq_rel)) return fresh;
    Py_DECREF(fresh);
    return current;
  }

  PyObject* name_;
  /// Result or exception; atomic because a dependency failure may store it on any thread.
  std::atomic<PyObject*> value_{nullptr};
  std::atomic<PyObject*> metadata_{nullptr};
  std::atomic<PyObject*> progress_callbacks_{nullptr};
};

/// Held around "record or clear the worker's thread ident" and around "send the interrupt",
/// so an interrupt reaches the task's own call and never the next task on that thread. With a
/// GIL both sides hold it throughout, which already orders them; a free-threaded build needs
/// the task's PyMutex. PyMutex rather than std::mutex because it detaches the thread state
/// while it blocks: the holder calls PyThreadState_SetAsyncExc, whose release of a replaced
/// exception can run arbitrary code and so a garbage collection, which stops the world and
/// would wait forever for a thread stuck on a std::mutex with its thread state attached.
class interrupt_guard {
 public:
#ifdef Py_GIL_DISABLED
  explicit interrupt_guard(py_task& t) : mu_(t.interrupt_mu) { PyMutex_Lock(&mu_); }
  ~interrupt_guard() { PyMutex_Unlock(&mu_); }

 private:
  PyMutex& mu_;
#else
  explicit interrupt_guard(py_task&) {}
#endif
  interrupt_guard(const interrupt_guard&) = delete;
  interrupt_guard& operator=(const interrupt_guard&) = delete;
};

/// `fn(*args, **kwargs)`, or `fn(dependency_results, *args, **kwargs)` when it has
/// dependencies.
class call_task final : public py_task {
 public:
  call_task(PyObject* name, PyObject* fn, PyObject* args, PyObject* kwargs)
      : py_task(name), fn_(fn), args_(args), kwargs_(kwargs) {
    Py_INCREF(fn_);
    Py_INCREF(args_);
    Py_XINCREF(kwargs_);
  }
  ~call_task() override {
    release_ref(fn_);
    release_ref(args_);
    release_ref(kwargs_);
  }

 protected:
  void execute() override {
    if (!t_worker.entered) {  // the interpreter is exiting: Python cannot run any more
      complete(mp::outcome::cancelled);
      return;
    }
    // Raw references rather than RAII on purpose: see task::run about forced unwinds.
    if (!deps.empty() && !prepend_dependency_results()) {
      finish(nullptr);
      return;
    }
    const unsigned long ident = PyThread_get_thread_ident();
    {
      interrupt_guard g(*this);
      thread_ident.store(ident, std::memory_order_release);
      // Without a GIL a canceller can run between run() marking us running and this point,
      // find no ident and send nothing: deliver its interrupt here instead.
      if (interrupt_requested.load(std::memory_order_acquire)) {
        PyThreadState_SetAsyncExc(ident, g_exc.cancelled);
      }
    }
    PyObject* r = PyObject_Call(fn_, args_, kwargs_);
    {
      interrupt_guard g(*this);
      thread_ident.store(0, std::memory_order_release);
      if (interrupt_requested.load(std::memory_order_acquire)) {
        // An interrupt that arrived after the code's last bytecode must not hit the next task.
        PyThreadState_SetAsyncExc(ident, nullptr);
      }
    }
    Py_CLEAR(fn_);
    Py_CLEAR(args_);
    Py_CLEAR(kwargs_);
    finish(r);
  }

 private:
  /// args_ = (tuple of dependency results,) + args_. False with a Python error set.
  bool prepend_dependency_results() {
    PyObject* results = take_dependency_results();
    if (!results) return false;
    const Py_ssize_t n = PyTuple_GET_SIZE(args_);
    PyObject* args = PyTuple_New(n + 1);
    if (!args) {
      Py_DECREF(results);
      return false;
    }
    PyTuple_SET_ITEM(args, 0, results);
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* a = PyTuple_GET_ITEM(args_, i);
      Py_INCREF(a);
      PyTuple_SET_ITEM(args, i + 1, a);
    }
    Py_SETREF(args_, args);
    return true;
  }

  PyObject* fn_;
  PyObject* args_;
  PyObject* kwargs_;
};

/// Shared by the chunks of one parallel_map: once an item fails, no chunk starts new items.
struct map_state {
  std::atomic<bool> stop{false};
};

/// `[fn(x) for x in items]` for one chunk of a parallel_map, stopping at the first failure.
/// Its result is the list of results, or None when it stopped because another chunk failed.
class map_chunk_task final : public py_task {
 public:
  map_chunk_task(PyObject* name, PyObject* fn, PyObject* items, Py_ssize_t base,
                 std::shared_ptr<map_state> state)
      : py_task(name), fn_(fn), items_(items), base_(base), state_(std::move(state)) {
    Py_INCREF(fn_);
    Py_INCREF(items_);
  }
  ~map_chunk_task() override {
    release_ref(fn_);
    release_ref(items_);
  }

 protected:
  void execute() override {
    if (!t_worker.entered) {
      complete(mp::outcome::cancelled);
      return;
    }
    const Py_ssize_t n = PyList_GET_SIZE(items_);
    PyObject* out = PyList_New(n);
    Py_ssize_t i = 0;
    for (; out && i < n; ++i) {
      if (state_->stop.load(std::memory_order_relaxed)) break;
      PyObject* r = PyObject_CallOneArg(fn_, PyList_GET_ITEM(items_, i));
      if (!r) {
        failed_index_ = base_ + i;
        state_->stop.store(true, std::memory_order_relaxed);
        Py_CLEAR(out);
        break;
      }
      PyList_SET_ITEM(out, i, r);
    }
    if (out && i < n) {  // stopped early because another chunk failed
      Py_DECREF(out);
      Py_INCREF(Py_None);
      out = Py_None;
    }
    Py_CLEAR(fn_);
    Py_CLEAR(items_);
    finish(out);
  }
  void annotate(PyObject* exc) override {
    add_note(exc, "raised by parallel_map item " + std::to_string(failed_index_) + " (" +
                      PyUnicode_AsUTF8(name()) + ")");
  }

 private:
  PyObject* fn_;
  PyObject* items_;
  Py_ssize_t base_;
  Py_ssize_t failed_index_ = -1;
  std::shared_ptr<map_state> state_;
};

// ---------------------------------------------------------------------------------------------
// AsyncHandle

struct async_handle {
  std::shared_ptr<py_task> t;
};

/// Waits (GIL released) for `t` to settle, or with `stopped` also for its code to stop.
/// Signals are handled while waiting, so Ctrl-C interrupts a wait in the main thread.
inline bool wait_for_task(py_task& t, const std::optional<mp::clock::time_point>& deadline,
                   bool stopped = false) {
  auto ready = [&] { return stopped ? t.settled() && !t.running() : t.settled(); };
  if (ready()) return true;
  for (;;) {
    PyThreadState* ts = PyEval_SaveThread();
    const mp::wait_status w = stopped ? t.wait_stopped(deadline, true) : t.wait(deadline, true);
    restore_thread(ts);
    if (w == mp::wait_status::ready) return true;
    if (w == mp::wait_status::timed_out) return false;
    if (PyErr_CheckSignals() != 0) throw nb::python_error();
  }
}

inline std::string describe(const py_task& t) { return py_task::describe_task(t); }

/// The settled outcome as Python sees it: the result, or the matching exception raised.
inline nb::object outcome_value(py_task& t) {
  switch (t.get_outcome()) {
    case mp::outcome::done:
      return nb::borrow(t.value());
    case mp::outcome::failed:
      restore_exception(t.value());
      throw nb::python_error();
    case mp::outcome::cancelled:
      raise(g_exc.cancelled, describe(t) + " was cancelled");
    case mp::outcome::timed_out: {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%g", t.timeout);
      raise(g_exc.timed_out, describe(t) + " timed out after " + buf + " s");
    }
    case mp::outcome::none:
      break;
  }
  raise(PyExc_RuntimeError, describe(t) + " has no outcome yet");
}

inline nb::object handle_get(async_handle& h, nb::handle timeout) {
  const auto deadline = deadline_from(timeout, "timeout");
  if (!h.t->settled()) h.t->run_here(h.t, deadline);
  if (!wait_for_task(*h.t, deadline)) {
    raise(g_exc.wait_timeout, describe(*h.t) + " did not finish within the timeout");
  }
  return outcome_value(*h.t);
}

inline const char* status_name(mp::status s) {
  switch (s) {
    case mp::status::pending: return "pending";
    case mp::status::running: return "running";
    case mp::status::done: return "done";
    case mp::status::failed: return "failed";
    case mp::status::cancelled: return "cancelled";
    case mp::status::timed_out: return "timed_out";
  }
  return "unknown";
}

/// Requests cancellation; with `interrupt`, also raises TaskCancelledError asynchronously in
/// the task's running Python code. The interrupt_guard pins the worker: while we hold it, a
/// recorded thread is still inside this task's call (the GIL did this alone before
/// free-threaded builds).
inline bool handle_cancel(async_handle& h, bool interrupt) {
  py_task& t = *h.t;
  const bool settled_now = t.cancel();
  if (interrupt && t.running()) {
    interrupt_guard g(t);
    t.interrupt_requested.store(true, std::memory_order_release);
    if (const unsigned long ident = t.thread_ident.load(std::memory_order_acquire)) {
      PyThreadState_SetAsyncExc(ident, g_exc.cancelled);
    }
  }
  return settled_now;
}

/// Deals with the error a callback `fn` left set (GIL held): a KeyboardInterrupt is Ctrl-C
/// landing while the callback ran on the main thread, which belongs to the program and is
/// delivered again once we are back in its code; anything else is reported as unraisable.
inline void callback_failed(PyObject* fn) {
  if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
    PyErr_Clear();
    PyErr_SetInterrupt();
  } else {
    PyErr_WriteUnraisable(fn);
  }
}

/// Runs `fn(handle)` when the task settles, with the GIL, on whichever thread settles it.
/// Errors are reported as unraisable: the Python layer wraps user callbacks to log them.
inline void add_settled_hook(nb::handle self, nb::callable fn) {
  py_task& t = *nb::inst_ptr<async_handle>(self)->t;
  PyObject* handle_ref = self.ptr();
  PyObject* fn_ref = fn.ptr();
  Py_INCREF(handle_ref);
  Py_INCREF(fn_ref);
  t.on_settled([handle_ref, fn_ref](mp::task&) mutable {
    if (g_exiting.load(std::memory_order_acquire)) return;  // leak rather than block at exit
    const PyGILState_STATE g = PyGILState_Ensure();
    PyObject* r = PyObject_CallOneArg(fn_ref, handle_ref);
    if (!r) callback_failed(fn_ref);
    Py_XDECREF(r);
    Py_DECREF(fn_ref);
    Py_DECREF(handle_ref);
    PyGILState_Release(g);
  });
}

// ---------------------------------------------------------------------------------------------
// Process backend (process.cpp).

/// Blocks until set_max_concurrent_tasks admits `t` (module.cpp).
void admit_task(mp::task& t);
/// Gives back the admission slot of a task the runtime refused before counting it, which
/// no one else would (it never ran, and no queue ever dropped it) (module.cpp).
void refused(mp::task& t);

/// Admits `t`, then runs `submit`, which hands it to the runtime. A refusal (shutdown, the
/// memory limit) gives the slot back and raises ShutdownError or MemoryError.
template <class Submit>
void admit_and_submit(mp::task& t, Submit&& submit) {
  admit_task(t);
  try {
    submit();
  } catch (const mp::shutdown_error& e) {
    refused(t);
    raise(g_exc.shutdown, e.what());
  } catch (const mp::memory_error& e) {
    refused(t);
    raise(PyExc_MemoryError, e.what());
  }
}

/// Submits `fn(*args, **kwargs)` to run in a worker process; returns an AsyncHandle.
/// `kwargs` and `metrics` may be null. With `deps`, runs once they all succeeded.
/// `prioritized`: a @parallel_priority task, queued for the priority workers.
nb::object submit_process(PyObject* name, PyObject* fn, PyObject* args, PyObject* kwargs,
                          mp::metrics_entry* metrics, double timeout, int64_t priority,
                          bool prioritized, std::vector<std::shared_ptr<py_task>> deps);
/// start_priority_worker / stop_priority_worker for the process tasks of @parallel_priority.
void process_start_priority(size_t num_workers);
void process_stop_priority(bool cancel_pending);
/// True if process tasks wait in the priority queue.
bool process_priority_queued();
/// The executor of @parallel_priority process tasks, described (zeros before first use).
mp::executor_info process_priority_info();
/// Defines the process backend's module functions.
void bind_process(nb::module_& m);
/// At interpreter exit, after the tasks were waited for: ends and reaps every worker.
void process_at_exit();
/// In a forked child: forget the parent's workers and executor.
void process_after_fork();
/// Inside a worker process: the id of the task it runs, or 0.
uint64_t worker_current_task();
/// Inside a worker process: sends a progress report for the running task to the parent.
void worker_report_progress(double fraction);

/// Registers `t` now and calls `enqueue()` once every dependency in `t->deps` succeeded, or
/// fails `t` with DependencyError as soon as one did not. No thread waits: the last
/// dependency to settle queues the task, from whichever thread settles it.
inline void submit_after(const std::shared_ptr<py_task>& t, double timeout,
                         std::function<void()> enqueue) {
  rt().adopt(t, timeout);
  auto remaining = std::make_shared<std::atomic<size_t>>(t->deps.size());
  auto run = std::make_shared<std::function<void()>>(std::move(enqueue));
  const auto deps = t->deps;  // the hooks may clear t->deps while we iterate
  for (const auto& dep : deps) {
    // The hook holds the task strongly: a task waiting on others must not vanish because
    // its handle was dropped. Hooks are freed once the dependency settles.
    dep->on_settled([t, run, remaining](mp::task& d) {
      if (d.get_outcome() != mp::outcome::done) {
        if (t->get_phase() != mp::phase::waiting || g_exiting.load()) return;
        const PyGILState_STATE g = PyGILState_Ensure();
        // Only the hook that settled the task clears its list: two dependencies failing at
        // once on two threads would otherwise both mutate it (without a GIL, a data race).
        if (t->fail_dependency(static_cast<py_task&>(d))) t->deps.clear();
        PyGILState_Release(g);
      } else if (remaining->fetch_sub(1) == 1 && t->get_phase() == mp::phase::waiting) {
        (*run)();
      }
    });
  }
}

}  // namespace mpb

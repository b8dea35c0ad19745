// Shared by the binding's source files: the process-wide state the binding keeps, the
// Python helpers, and the task types that run Python code. See module.cpp for the GIL rules.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <pythread.h>

#include <atomic>
#include <cmath>
#include <cstdint>
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

/// Drops `o` (if any): at once when this thread holds the GIL, later otherwise.
inline void release_ref(PyObject*& o) noexcept {
  PyObject* p = o;
  o = nullptr;
  if (!p || g_exiting.load(std::memory_order_acquire)) return;  // exiting: leak, never block
  if (PyGILState_Check()) {
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

inline std::string task_id_string(uint64_t id) { return "task_" + std::to_string(id); }

/// Seconds as given by Python (None or a non-negative number) to an optional deadline.
inline std::optional<mp::clock::time_point> deadline_from(std::optional<double> seconds,
                                                   const char* param) {
  if (!seconds) return std::nullopt;
  if (std::isnan(*seconds)) raise(PyExc_ValueError, std::string(param) + " must not be NaN");
  return mp::deadline_after(std::fmax(*seconds, 0.0));
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
    release_ref(value_);
    release_ref(metadata_);
    release_ref(progress_callbacks_);
  }

  PyObject* name() const noexcept { return name_; }
  /// Result (done) or exception (failed). Borrowed. Read it only once the outcome is done or
  /// failed: only the thread that publishes those outcomes writes it before publishing, while
  /// a thread that loses the race may still write and clear it.
  PyObject* value() const noexcept { return value_; }
  double timeout = -1;
  std::atomic<double> progress{0.0};
  std::atomic<bool> interrupt_requested{false};
  std::atomic<unsigned long> thread_ident{0};

  /// The per-handle metadata dict, created on first use. GIL held.
  PyObject* metadata() {
    std::call_once(metadata_once_, [this] { metadata_ = PyDict_New(); });
    return metadata_;
  }
  /// Progress callbacks, a list created on first use. GIL held.
  PyObject* progress_callbacks() {
    std::call_once(progress_once_, [this] { progress_callbacks_ = PyList_New(0); });
    return progress_callbacks_;
  }
  bool has_progress_callbacks() const noexcept { return progress_callbacks_ != nullptr; }

 protected:
  /// Publishes the code's result `r` (new reference), or the pending exception when `r` is
  /// null. A result that comes too late (cancelled or timed out meanwhile) is dropped.
  /// GIL held.
  void finish(PyObject* r) {
    mp::outcome o = mp::outcome::done;
    if (r) {
      value_ = r;
    } else {
      PyObject* exc = fetch_exception();
      if (PyObject_IsInstance(exc, g_exc.cancelled) == 1) {
        o = mp::outcome::cancelled;
      } else {
        o = mp::outcome::failed;
        annotate(exc);
      }
      PyErr_Clear();
      value_ = exc;
    }
    if (o == mp::outcome::done) progress.store(1.0, std::memory_order_relaxed);
    if (!complete(o)) Py_CLEAR(value_);
  }

 public:
  /// Fails this unstarted task with DependencyError because `dep` did not succeed. GIL held.
  void fail_dependency(py_task& dep) {
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
    value_ = exc;
    if (!abandon(mp::outcome::failed)) Py_CLEAR(value_);
  }

  static std::string describe_task(const py_task& t) {
    return "task " + task_id_string(t.id()) + " (" + PyUnicode_AsUTF8(t.name()) + ")";
  }
 protected:
  /// complete() runs with the GIL held in this binding, so reading the str is safe.
  std::string label() const override { return PyUnicode_AsUTF8(name_); }

  virtual void annotate(PyObject* exc) {
    add_note(exc, "raised in makeParallel task " + task_id_string(id()) + " (" +
                      PyUnicode_AsUTF8(name_) + ")");
  }

 private:
  PyObject* name_;
  PyObject* value_ = nullptr;
  PyObject* metadata_ = nullptr;
  PyObject* progress_callbacks_ = nullptr;
  std::once_flag metadata_once_, progress_once_;
};

/// `fn(*args, **kwargs)`, or `fn(dependency_results, *args, **kwargs)` when it has
/// dependencies.
class call_task final : public py_task {
 public:
  /// Tasks whose results are passed first. Cleared once this task ran or was abandoned; they
  /// refer back to it through their hooks only until they settle, so no cycle outlives them.
  std::vector<std::shared_ptr<py_task>> deps;

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
    thread_ident.store(ident, std::memory_order_release);
    PyObject* r = PyObject_Call(fn_, args_, kwargs_);
    thread_ident.store(0, std::memory_order_release);
    if (interrupt_requested.load(std::memory_order_acquire)) {
      // An interrupt that arrived after the code's last bytecode must not hit the next task.
      PyThreadState_SetAsyncExc(ident, nullptr);
    }
    Py_CLEAR(fn_);
    Py_CLEAR(args_);
    Py_CLEAR(kwargs_);
    finish(r);
  }

 private:
  /// args_ = (tuple of dependency results,) + args_. False with a Python error set.
  bool prepend_dependency_results() {
    PyObject* results = PyTuple_New(static_cast<Py_ssize_t>(deps.size()));
    if (!results) return false;
    for (size_t i = 0; i < deps.size(); ++i) {
      PyObject* v = deps[i]->value();  // every dependency is done, so its value is set
      Py_INCREF(v);
      PyTuple_SET_ITEM(results, static_cast<Py_ssize_t>(i), v);
    }
    deps.clear();
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
    mp::wait_status w;
    {
      nb::gil_scoped_release nogil;
      w = stopped ? t.wait_stopped(deadline, true) : t.wait(deadline, true);
    }
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

inline nb::object handle_get(async_handle& h, std::optional<double> timeout) {
  if (!wait_for_task(*h.t, deadline_from(timeout, "timeout"))) {
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
/// the task's running Python code. GIL held, which pins the worker: while we hold it, the
/// recorded thread is still inside this task's call.
inline bool handle_cancel(async_handle& h, bool interrupt) {
  py_task& t = *h.t;
  const bool settled_now = t.cancel();
  if (interrupt && t.running()) {
    t.interrupt_requested.store(true, std::memory_order_release);
    if (const unsigned long ident = t.thread_ident.load(std::memory_order_acquire)) {
      PyThreadState_SetAsyncExc(ident, g_exc.cancelled);
    }
  }
  return settled_now;
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
    if (!r) PyErr_WriteUnraisable(fn_ref);
    Py_XDECREF(r);
    Py_DECREF(fn_ref);
    Py_DECREF(handle_ref);
    PyGILState_Release(g);
  });
}

}  // namespace mpb

// The process backend: tasks whose code runs in worker processes.
//
// Worker processes live in the core's worker_pool: one slot per allowed worker, each slot
// keeping its process between tasks. A task's execute() pickles the call with the GIL (via
// makeParallel._process), sends it, waits for the reply with the GIL released, then
// unpickles the reply with the GIL and finishes like any task. The thread that does so is
// an executor thread (which took a slot before it took the task), or the caller itself:
// a task submitted while a worker is idle and nothing is queued is sent at once by the
// submitting thread, and a caller waiting in get() for it reads the reply itself; if no
// one waits, the core's reply_watcher notices the reply and a thread of the thread cache
// collects it. Cancelling or timing out a running process task shuts its socket down for
// reading, which wakes whoever waits for its reply to an end of input; that thread
// terminates the worker (SIGTERM, a short grace period, SIGKILL) and reaps it, and the
// slot's next holder starts a fresh one.
//
// The same module also serves the worker side (makeParallel._worker): receiving calls,
// sending replies, and forwarding report_progress to the parent.
#include <poll.h>
#include <unistd.h>

#include <nanobind/stl/vector.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>

#include "common.hpp"
#include "makeparallel/process_pool.hpp"
#include "makeparallel/transport.hpp"

namespace mpb {
namespace {

namespace ipc = mp::ipc;

/// Seconds a cancelled worker gets between SIGTERM and SIGKILL.
constexpr double terminate_grace_secs = 0.5;
/// Seconds a worker that lost its parent's socket (or is retired) gets to exit by itself.
constexpr double exit_grace_secs = 2.0;

/// Functions of makeParallel._process, registered at its import.
struct process_helpers {
  PyObject* encode_call = nullptr;  // (fn, args, kwargs, dep_results) -> (bytes, [buffers])
  PyObject* decode = nullptr;       // (payload, [(fd, size)], is_error) -> value, or raises
  PyObject* crashed = nullptr;      // (message, code, signal) -> raises WorkerCrashedError
  PyObject* spawn_spec = nullptr;   // () -> (argv, env)
};
process_helpers g_helpers;

mp::process_registry* g_registry = new mp::process_registry;

// The two executors that start process tasks: one for the task decorators, one for
// @parallel_priority (started and stopped with the priority workers). Their threads only
// pickle and wait. The worker pool bounds how many tasks run in processes at once, through
// a gate: an executor thread takes a slot before it takes a task from its queue, so queue
// order stays start order. A caller waiting in get() may also start a task itself
// (process_task::run_here). All are leaked in a forked child, like the runtime.
std::mutex g_exec_mu;  // guards creation and the settings below
std::atomic<mp::executor*> g_exec{nullptr};
std::atomic<mp::executor*> g_prio_exec{nullptr};
std::atomic<mp::worker_pool*> g_pool{nullptr};
size_t g_num_workers = 0;   // 0: the CPUs of the affinity mask
size_t g_prio_threads = 1;  // as start_priority_worker last set it
bool g_configured = false;

size_t configured_workers() {
  return g_num_workers != 0 ? g_num_workers : mp::available_cpus();
}

class pool_gate;
pool_gate* g_gate = nullptr;  // the gate of g_pool, made with it

mp::worker_pool& pool_locked();

mp::worker_pool& worker_pool() {
  if (mp::worker_pool* p = g_pool.load(std::memory_order_acquire)) return *p;
  std::lock_guard<std::mutex> lk(g_exec_mu);
  return pool_locked();
}

std::atomic<mp::reply_watcher*> g_replies{nullptr};

/// The reply watcher, created on first use.
mp::reply_watcher& replies() {
  if (mp::reply_watcher* w = g_replies.load(std::memory_order_acquire)) return *w;
  std::lock_guard<std::mutex> lk(g_exec_mu);
  if (!g_replies.load()) g_replies.store(new mp::reply_watcher);
  return *g_replies.load();
}

/// Returns a slot to the pool and tells the executors, whose threads may wait for one.
void give_back(mp::worker_slot* slot) {
  worker_pool().release(slot);
  for (auto* e : {g_exec.load(), g_prio_exec.load()}) {
    if (e) e->capacity_freed();
  }
}

/// The slot an executor thread took before taking its task; execute() keeps it.
thread_local mp::worker_slot* t_reserved = nullptr;

class pool_gate final : public mp::task_gate {
 public:
  explicit pool_gate(mp::worker_pool& pool) : pool_(pool) {}
  bool try_take() override {
    if (!t_reserved) t_reserved = pool_.try_acquire();
    return t_reserved != nullptr;
  }
  void after_run() override {
    if (mp::worker_slot* s = std::exchange(t_reserved, nullptr)) give_back(s);
  }

 private:
  mp::worker_pool& pool_;
};

mp::worker_pool& pool_locked() {
  if (!g_pool.load()) {
    auto* pool = new mp::worker_pool(configured_workers());
    g_gate = new pool_gate(*pool);
    g_pool.store(pool);
  }
  return *g_pool.load();
}

mp::executor& process_executor(bool prioritized) {
  std::atomic<mp::executor*>& e = prioritized ? g_prio_exec : g_exec;
  if (mp::executor* p = e.load(std::memory_order_acquire)) return *p;
  std::lock_guard<std::mutex> lk(g_exec_mu);
  if (!e.load()) {
    pool_locked();
    mp::executor_options o;
    o.name = prioritized ? "mp-procprio" : "mp-proc";
    o.num_threads = prioritized ? g_prio_threads : configured_workers();
    o.priority_order = prioritized;
    o.gate = g_gate;
    e.store(new mp::executor(o, g_hooks));
  }
  return *e.load();
}

/// Calls `fn(*args)` (new reference) with the GIL; null with an error set on failure.
PyObject* call_helper(PyObject* fn, PyObject* args) {
  if (!fn) {
    PyErr_SetString(PyExc_RuntimeError, "makeParallel._process is not initialised");
    return nullptr;
  }
  PyObject* r = PyObject_CallObject(fn, args);
  Py_DECREF(args);
  return r;
}

/// Calls a pickling helper (new reference; null with an error set on failure) so that a
/// Ctrl-C landing while it runs, which can only happen on the main thread, does not become
/// the task's outcome: the interrupt belongs to the program. The helper is called again and
/// the interrupt delivered afresh once it is done. Pickling has no effect to undo, so the
/// repeat is safe; a helper that keeps raising KeyboardInterrupt by itself gives up after a
/// few tries.
PyObject* call_helper_keeping_interrupts(PyObject* fn, PyObject* args) {
  bool interrupted = false;
  PyObject* r = nullptr;
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (!args) break;
    Py_INCREF(args);  // call_helper consumes one reference per call
    r = call_helper(fn, args);
    if (r || !PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) break;
    interrupted = true;
    if (attempt < 7) PyErr_Clear();
  }
  Py_XDECREF(args);
  if (interrupted) PyErr_SetInterrupt();
  return r;
}

/// The spawn command from makeParallel._process. GIL held; throws nb::python_error.
mp::spawn_spec current_spawn_spec() {
  PyObject* r = call_helper(g_helpers.spawn_spec, PyTuple_New(0));
  if (!r) throw nb::python_error();
  nb::object spec = nb::steal(r);
  mp::spawn_spec out;
  out.argv = nb::cast<std::vector<std::string>>(spec[0]);
  out.env = nb::cast<std::vector<std::string>>(spec[1]);
  return out;
}

/// Gives `slot` a live worker process, spawning one if needed. GIL held; false with a
/// Python error set if no process could be started.
bool ensure_worker(mp::worker_slot& slot) {
  // A worker that died while idle is found at the next send, which then replaces it: no
  // liveness check (a system call) before each task.
  if (slot.proc) return true;
  slot.proc.reset();
  try {
    const mp::spawn_spec spec = current_spawn_spec();
    PyThreadState* ts = PyEval_SaveThread();
    try {
      slot.proc = mp::worker_process::spawn(spec);
    } catch (...) {
      restore_thread(ts);
      throw;
    }
    restore_thread(ts);
    g_registry->add(slot.proc);
    return true;
  } catch (nb::python_error& e) {
    e.restore();
  } catch (const std::exception& e) {
    PyErr_Format(PyExc_OSError, "cannot start a worker process: %s", e.what());
  }
  return false;
}

/// Takes the GIL back after a blocking section. On an executor thread of an interpreter
/// that is exiting it does not (Python cannot run any more): the thread then leaves Python
/// alone for good and the caller must not touch Python objects.
bool reacquire(PyThreadState* ts, bool on_executor) {
  if (on_executor && g_exiting.load(std::memory_order_acquire)) {
    t_worker.entered = false;
    t_worker.saved = ts;
    return false;
  }
  restore_thread(ts);
  return true;
}

/// The pickled call and views of its out-of-band buffers, kept until the send is over.
struct encoded_call {
  PyObject* tuple = nullptr;  // (payload bytes, [buffers])
  std::vector<Py_buffer> views;
  size_t held = 0;

  PyObject* payload() const { return PyTuple_GET_ITEM(tuple, 0); }
  /// Takes the views; false with a Python error set if a buffer refused. GIL held.
  bool open() {
    PyObject* buffers = PyTuple_GET_ITEM(tuple, 1);
    views.resize(static_cast<size_t>(PyList_GET_SIZE(buffers)));
    for (; held < views.size(); ++held) {
      PyObject* b = PyList_GET_ITEM(buffers, static_cast<Py_ssize_t>(held));
      if (PyObject_GetBuffer(b, &views[held], PyBUF_SIMPLE) != 0) return false;
    }
    return true;
  }
  /// Releases everything. GIL held. Idempotent.
  void release() {
    for (size_t i = 0; i < held; ++i) PyBuffer_Release(&views[i]);
    held = 0;
    Py_CLEAR(tuple);
  }
};

/// What a caller that runs a task itself passes to its execute() (see run_here).
struct claimed_start {
  mp::worker_slot* slot = nullptr;
  std::shared_ptr<py_task> self;
  std::optional<mp::clock::time_point> deadline;  // when the caller stops waiting
  bool send_only = false;  // the submitting thread: send, then leave the reply to others
};
thread_local claimed_start t_claimed;

/// A call that runs in a worker process.
class process_task final : public py_task {
 public:
  process_task(PyObject* name, PyObject* fn, PyObject* args, PyObject* kwargs)
      : py_task(name), fn_(fn), args_(args), kwargs_(kwargs) {
    Py_INCREF(fn_);
    Py_INCREF(args_);
    Py_XINCREF(kwargs_);
  }
  ~process_task() override {
    release_ref(fn_);
    release_ref(args_);
    release_ref(kwargs_);
  }

  /// The settle hook: a cancel or timeout of a running task kills its worker.
  void settled_hook() noexcept {
    if (!running()) return;
    // Pairs with the fence in execute(): either we see the slot, or it sees the cancel.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // Whoever waits for the reply (a thread, or the reply watcher) also watches for this.
    if (mp::worker_slot* s = slot_.load()) s->request_kill(id());
  }

  /// Sends the call from the submitting thread, which must own a free `slot`; the reply is
  /// left to whoever waits for it, or to the reply watcher. GIL held.
  void send_now(const std::shared_ptr<py_task>& self, mp::worker_slot* slot);

  bool run_here(const std::shared_ptr<py_task>& self,
                const std::optional<mp::clock::time_point>& deadline) override;

 protected:
  void execute() override;

 private:
  enum class ending { sent, reply, killed, crashed, failed, interrupted };

  /// (fn, args, kwargs, dependency results) pickled. New reference, or null with an error.
  PyObject* encode();
  /// Sends the call. GIL released.
  ending send(mp::worker_slot& slot, const encoded_call& call, std::string& why);
  /// Waits for the reply, forwarding progress reports. GIL released (`ts` saved); with
  /// `interruptible`, returns `interrupted` when a signal arrives or `deadline` passes.
  ending await_reply(mp::worker_slot& slot, ipc::frame& reply, std::string& why,
                     PyThreadState*& ts, bool interruptible,
                     const std::optional<mp::clock::time_point>& deadline = std::nullopt);
  /// Hands the wait for the reply on `slot` to the reply watcher; false if it refused.
  bool watch_reply(const std::shared_ptr<py_task>& self, mp::worker_slot* slot);
  /// Takes the wait for the reply back from the reply watcher; the slot, or null if the
  /// watcher collects it (or nothing is watched).
  mp::worker_slot* take_watch();
  /// The reply watcher's handler: collects the reply on `slot` on a thread of the thread
  /// cache (or, if none can be started, on the watcher's own thread).
  static void collect_elsewhere(const std::shared_ptr<py_task>& self, mp::worker_slot* slot);
  /// After the call was sent: waits for the reply (as await_reply) and concludes, or if the
  /// waiting caller stops first (signal, deadline) hands the wait to the watcher. GIL
  /// released (`ts` saved) on entry; `how` is the send's result.
  void wait_and_conclude(const std::shared_ptr<py_task>& self, mp::worker_slot* slot,
                         encoded_call& call, ending how, PyThreadState* ts, bool on_executor,
                         const std::optional<mp::clock::time_point>& deadline);
  /// Ends the exchange on `slot` as `how`: stops a worker that was killed or broke, gives the
  /// slot back, takes the GIL back and publishes the outcome. GIL released on entry.
  void conclude(mp::worker_slot* slot, encoded_call& call, ending how, ipc::frame& reply,
                const std::string& why, PyThreadState* ts, bool on_executor);
  /// Waits for the reply on `slot` and finishes the task: the job collect_elsewhere() gives
  /// a thread of the thread cache. GIL held (or the interpreter is exiting).
  void resume(mp::worker_slot* slot);
  void report_progress(double fraction, PyThreadState*& ts);

  PyObject* fn_;
  PyObject* args_;
  PyObject* kwargs_;
  std::atomic<mp::worker_slot*> slot_{nullptr};
  // The slot whose reply the reply watcher waits for, armed with this task's id as key.
  std::atomic<mp::worker_slot*> watched_{nullptr};
  bool cancelled_early_ = false;
};

PyObject* process_task::encode() {
  PyObject* dep_results = Py_None;
  Py_INCREF(dep_results);
  if (!deps.empty()) {
    Py_DECREF(dep_results);
    dep_results = take_dependency_results();
    if (!dep_results) return nullptr;
  }
  PyObject* kwargs = kwargs_ ? kwargs_ : Py_None;
  return call_helper_keeping_interrupts(g_helpers.encode_call,
                     Py_BuildValue("(OOON)", fn_, args_, kwargs, dep_results));
}

void process_task::report_progress(double fraction, PyThreadState*& ts) {
  if (!(fraction >= 0.0 && fraction <= 1.0)) return;
  progress.store(fraction, std::memory_order_relaxed);
  if (!has_progress_callbacks() || g_exiting.load(std::memory_order_acquire)) return;
  restore_thread(ts);
  // A copy: callbacks may register further callbacks while we iterate.
  PyObject* callbacks = PySequence_List(progress_callbacks());
  if (callbacks) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(callbacks); ++i) {
      PyObject* r = PyObject_CallFunction(PyList_GET_ITEM(callbacks, i), "d", fraction);
      if (!r) callback_failed(PyList_GET_ITEM(callbacks, i));
      Py_XDECREF(r);
    }
    Py_DECREF(callbacks);
  }
  PyErr_Clear();
  ts = PyEval_SaveThread();
}

process_task::ending process_task::send(mp::worker_slot& slot, const encoded_call& call,
                                        std::string& why) {
  std::vector<ipc::out_buffer> bufs;
  for (const Py_buffer& v : call.views) bufs.push_back({v.buf, static_cast<size_t>(v.len)});
  PyObject* payload = call.payload();
  const ipc::io_result r =
      ipc::send_frame(slot.proc->socket(), ipc::frame_kind::call, id(), 0,
                      PyBytes_AS_STRING(payload),
                      static_cast<size_t>(PyBytes_GET_SIZE(payload)), bufs);
  if (r.status == ipc::io_status::eof) return ending::crashed;
  if (!r.ok()) {
    why = r.what;
    return ending::failed;
  }
  return ending::sent;
}

process_task::ending process_task::await_reply(
    mp::worker_slot& slot, ipc::frame& reply, std::string& why, PyThreadState*& ts,
    bool interruptible, const std::optional<mp::clock::time_point>& deadline) {
  const int sock = slot.proc->socket();
  for (;;) {
    if (interruptible && deadline) {
      const auto left = *deadline - mp::clock::now();
      if (left <= mp::clock::duration::zero()) return ending::interrupted;
      // Rounded up, so that we never wake just before the deadline and spin.
      const int wait_ms = static_cast<int>(std::min<int64_t>(
          std::chrono::ceil<std::chrono::milliseconds>(left).count(), 1 << 30));
      pollfd p{sock, POLLIN, 0};
      const int n = ::poll(&p, 1, wait_ms);
      if (n == 0) continue;  // the deadline: checked at the top
      if (n < 0) {
        if (errno == EINTR) return ending::interrupted;
        why = std::string("poll: ") + std::strerror(errno);
        return ending::failed;
      }
    }
    // Without a deadline, sleep in the read itself rather than in poll(): one system call
    // fewer per task, and measured faster on virtual machines, although the read also wakes
    // up once when the worker takes the call off the socket (room to write again).
    const ipc::io_result r = ipc::recv_frame(sock, reply, interruptible);
    if (r.status == ipc::io_status::interrupted) return ending::interrupted;
    // A kill shuts the socket down for reading (see worker_slot): the end of input it
    // causes is not a crash.
    if (slot.kill_requested(id())) return ending::killed;
    if (r.status == ipc::io_status::eof || r.status == ipc::io_status::error) {
      return ending::crashed;
    }
    if (!r.ok()) {
      why = r.what;
      return ending::failed;
    }
    if (reply.task_id != id()) continue;  // a late report of an earlier task
    if (reply.kind == ipc::frame_kind::progress) {
      double fraction = 0;
      std::memcpy(&fraction, &reply.aux, sizeof fraction);
      report_progress(fraction, ts);
      continue;
    }
    if (reply.kind == ipc::frame_kind::result || reply.kind == ipc::frame_kind::error) {
      return ending::reply;
    }
  }
}

bool process_task::watch_reply(const std::shared_ptr<py_task>& self,
                               mp::worker_slot* slot) {
  watched_.store(slot);
  try {
    replies().arm(id(), slot->proc->socket(), [self, slot] { collect_elsewhere(self, slot); });
  } catch (const std::exception&) {
    watched_.store(nullptr);
    return false;
  }
  return true;
}

mp::worker_slot* process_task::take_watch() {
  mp::worker_slot* slot = watched_.load();
  if (!slot || !replies().disarm(id())) return nullptr;
  watched_.store(nullptr);
  return slot;
}

void process_task::collect_elsewhere(const std::shared_ptr<py_task>& self,
                                     mp::worker_slot* slot) {
  auto& task = static_cast<process_task&>(*self);
  task.watched_.store(nullptr);
  auto job = std::make_shared<mp::function_task>([self, slot] {
    static_cast<process_task&>(*self).resume(slot);
    return mp::outcome::done;
  });
  try {
    rt().get(mp::place::cache).submit(job);
  } catch (const std::exception&) {
    // No thread can be started: collect here, taking the GIL like a worker thread does.
    g_hooks->enter();
    job->run();
    g_hooks->leave();
  }
}

bool process_task::run_here(const std::shared_ptr<py_task>& self,
                            const std::optional<mp::clock::time_point>& deadline) {
  if (deadline && *deadline <= mp::clock::now()) return false;  // a look, not a wait
  if (g_exiting.load(std::memory_order_acquire)) return false;
  // Sent already, and nobody waits for the reply yet: wait for it here.
  if (mp::worker_slot* slot = take_watch()) {
    PyThreadState* ts = PyEval_SaveThread();
    encoded_call none;
    wait_and_conclude(self, slot, none, ending::sent, ts, false, deadline);
    if (PyErr_Occurred()) throw nb::python_error();  // a signal came while waiting
    return true;
  }
  // Still queued: start it here if it is alone there and a worker is idle.
  auto* ex = dynamic_cast<mp::executor*>(queue_owner());
  if (!ex) return false;
  mp::worker_slot* slot = worker_pool().try_acquire();
  if (!slot) return false;
  if (!ex->claim_if_alone(*this)) {
    give_back(slot);
    return false;
  }
  t_claimed = {slot, self, deadline, false};
  run();  // a cancel that won the race leaves the task dropped: run() does nothing then
  if (t_claimed.slot) {
    give_back(t_claimed.slot);
    t_claimed = {};
  }
  if (PyErr_Occurred()) throw nb::python_error();  // a signal came while waiting
  return true;
}

void process_task::send_now(const std::shared_ptr<py_task>& self, mp::worker_slot* slot) {
  t_claimed = {slot, self, std::nullopt, true};
  run();
  if (t_claimed.slot) {  // dropped before it could start (cancelled at once)
    give_back(t_claimed.slot);
    t_claimed = {};
  }
}

void process_task::execute() {
  // Started by an executor thread, by a caller waiting in get(), or by the submitting
  // thread (the last two came with a slot).
  claimed_start claimed = std::exchange(t_claimed, claimed_start{});
  const bool on_executor = claimed.slot == nullptr;
  mp::worker_slot* slot = on_executor ? std::exchange(t_reserved, nullptr) : claimed.slot;
  if (on_executor && !t_worker.entered) {  // the interpreter is exiting
    if (slot) give_back(slot);
    complete(mp::outcome::cancelled);
    return;
  }
  // Raw references and no RAII around Python objects: see task::run about forced unwinds.
  encoded_call call;
  call.tuple = encode();
  Py_CLEAR(fn_);
  Py_CLEAR(args_);
  Py_CLEAR(kwargs_);
  if (!call.tuple || !call.open()) {
    call.release();
    if (slot) give_back(slot);
    finish(nullptr);
    return;
  }

  if (!slot) slot = worker_pool().try_acquire();
  if (!slot) {  // not reserved (a nested run): wait for a worker without the GIL
    PyThreadState* ts = PyEval_SaveThread();
    slot = worker_pool().acquire();
    if (!reacquire(ts, true)) {
      if (slot) give_back(slot);
      complete(mp::outcome::cancelled);
      return;
    }
    if (!slot) {  // the pool closed: the interpreter is exiting
      call.release();
      complete(mp::outcome::cancelled);
      return;
    }
  }
  if (!ensure_worker(*slot)) {
    give_back(slot);
    call.release();
    finish(nullptr);
    return;
  }

  slot->begin(id(), slot->proc->socket());
  slot_.store(slot);
  // Pairs with the fence in settled_hook(): a cancel that came before the slot was visible.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  cancelled_early_ = cancel_requested();

  std::string why;
  PyThreadState* ts = PyEval_SaveThread();
  ending how = cancelled_early_ ? ending::killed : send(*slot, call, why);
  if (how == ending::crashed || how == ending::failed) {
    // The worker died while idle (killed from outside, out of memory): it cannot have run a
    // call it did not receive whole, so the task gets one fresh worker instead of failing.
    slot->end();  // before the socket closes, so that no kill shuts down a reused number
    slot->proc->stop(exit_grace_secs, false);
    restore_thread(ts);
    slot->proc.reset();
    if (!ensure_worker(*slot)) {
      slot_.store(nullptr);
      give_back(slot);
      call.release();
      finish(nullptr);
      return;
    }
    slot->begin(id(), slot->proc->socket());
    // A kill requested while no task was on the slot did nothing: look for its cancel.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    cancelled_early_ = cancel_requested();
    ts = PyEval_SaveThread();
    how = cancelled_early_ ? ending::killed : send(*slot, call, why);
  }
  if (how == ending::sent && claimed.send_only) {
    restore_thread(ts);
    call.release();
    if (watch_reply(claimed.self, slot)) {
      hand_over();
      return;
    }
    ts = PyEval_SaveThread();  // the watcher refused: wait here after all
  }
  wait_and_conclude(claimed.self, slot, call, how, ts, on_executor, claimed.deadline);
}

void process_task::wait_and_conclude(const std::shared_ptr<py_task>& self,
                                      mp::worker_slot* slot, encoded_call& call, ending how,
                                      PyThreadState* ts, bool on_executor,
                                      const std::optional<mp::clock::time_point>& deadline) {
  ipc::frame reply;
  std::string why;
  // A caller waiting in get() stays responsive to Ctrl-C; executor threads block signals.
  const bool interruptible = !on_executor && self != nullptr;
  if (how == ending::sent) how = await_reply(*slot, reply, why, ts, interruptible, deadline);
  while (how == ending::interrupted) {
    restore_thread(ts);
    const bool signalled = PyErr_CheckSignals() != 0;
    if (signalled || (deadline && *deadline <= mp::clock::now())) {
      // The caller stops waiting (its get() raises KeyboardInterrupt or TimeoutError), but
      // the task goes on: the reply watcher takes over the wait.
      call.release();
      if (watch_reply(self, slot)) {
        if (mp::task::current() == this) hand_over();
        return;
      }
      // The watcher refused: wait here after all, and raise the signal's error after.
      PyObject* exc = signalled ? fetch_exception() : nullptr;
      ts = PyEval_SaveThread();
      how = await_reply(*slot, reply, why, ts, false);
      conclude(slot, call, how, reply, why, ts, false);
      if (exc) {
        restore_exception(exc);
        Py_DECREF(exc);
      }
      return;
    }
    ts = PyEval_SaveThread();
    how = await_reply(*slot, reply, why, ts, true, deadline);
  }
  conclude(slot, call, how, reply, why, ts, on_executor);
}

void process_task::resume(mp::worker_slot* slot) {
  ipc::frame reply;
  std::string why;
  encoded_call none;
  if (!t_worker.entered) {  // the interpreter is exiting: only stop the worker
    slot->proc->stop(terminate_grace_secs, true);
    slot->end();
    slot_.store(nullptr);
    give_back(slot);
    complete(mp::outcome::cancelled);
    return;
  }
  PyThreadState* ts = PyEval_SaveThread();
  const ending how = await_reply(*slot, reply, why, ts, false);
  conclude(slot, none, how, reply, why, ts, true);
}

void process_task::conclude(mp::worker_slot* slot, encoded_call& call, ending how,
                            ipc::frame& reply, const std::string& why, PyThreadState* ts,
                            bool on_executor) {
  // A kill shut the socket down for reading (see worker_slot): even if the reply came
  // first, the kill settled the task, and the worker cannot serve another one.
  const bool shut = slot->kill_requested(id());
  if (shut) how = ending::killed;
  // Only a worker that answered, or that never got the call, serves the next task.
  const bool keep =
      how == ending::reply || (how == ending::killed && cancelled_early_ && !shut);
  mp::exit_info gone;
  if (how == ending::killed && !keep) {
    gone = slot->proc->stop(terminate_grace_secs, true);
  } else if (how == ending::crashed || how == ending::failed) {
    gone = slot->proc->stop(exit_grace_secs, false);
  }
  slot->end();
  slot_.store(nullptr);
  // A worker that was killed or broke is replaced by the slot's next holder.
  std::shared_ptr<mp::worker_process> dead;
  if (!keep) dead = std::move(slot->proc);
  give_back(slot);
  if (!reacquire(ts, on_executor)) {
    // Python is gone: leak what we hold rather than wait for a GIL that never comes back.
    complete(mp::outcome::cancelled);
    return;
  }
  call.release();

  if (how == ending::killed) {
    complete(cancel_requested() ? mp::outcome::cancelled : mp::outcome::failed);
    return;
  }
  if (how != ending::reply) {
    std::string msg = "worker process " + std::to_string(dead->pid()) + " running " +
                      describe_task(*this) + " ";
    msg += how == ending::failed ? "stopped answering (" + why + ") and " + gone.describe()
                                 : gone.describe();
    PyObject* r = call_helper(g_helpers.crashed,
                              Py_BuildValue("(sii)", msg.c_str(), gone.signalled ? -1 : gone.code,
                                            gone.signalled ? gone.signal : 0));
    Py_XDECREF(r);  // it raises; a result would be a bug in the helper
    if (r) PyErr_SetString(PyExc_RuntimeError, msg.c_str());
    finish(nullptr);
    return;
  }

  // The reply: hand the payload and the shared-memory descriptors to the decoder, which
  // maps them (they stay ours, and are closed with `reply`, so that a decode interrupted by
  // Ctrl-C can be done again).
  measured_ns_ = reply.aux;
  const bool is_error = reply.kind == ipc::frame_kind::error;
  PyObject* fds = PyList_New(0);
  for (auto& b : reply.buffers) {
    PyObject* item = Py_BuildValue("(iK)", b.fd.get(), static_cast<unsigned long long>(b.size));
    if (fds && (!item || PyList_Append(fds, item) != 0)) Py_CLEAR(fds);
    Py_XDECREF(item);
  }
  PyObject* data = PyBytes_FromStringAndSize(reply.payload.data(),
                                             static_cast<Py_ssize_t>(reply.payload.size()));
  PyObject* r = nullptr;
  if (fds && data) {
    r = call_helper_keeping_interrupts(
        g_helpers.decode, Py_BuildValue("(OOO)", data, fds, is_error ? Py_True : Py_False));
  }
  Py_XDECREF(fds);
  Py_XDECREF(data);
  if (r && is_error) {  // the task's exception, rebuilt: it becomes the outcome
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(r)), r);
    Py_CLEAR(r);
  }
  finish(r);
}


// ---- worker side

std::atomic<uint64_t> g_worker_task{0};
int g_worker_fd = -1;
std::mutex g_worker_send_mu;  // report_progress may come from any thread of the task

/// Sends a frame with `payload` inline and `buffers` out of band. Releases the GIL.
void worker_send(int fd, int kind, uint64_t task_id, uint64_t aux, nb::bytes payload,
                 nb::list buffers) {
  std::vector<Py_buffer> views(buffers.size());
  size_t held = 0;
  for (; held < views.size(); ++held) {
    if (PyObject_GetBuffer(buffers[held].ptr(), &views[held], PyBUF_SIMPLE) != 0) break;
  }
  if (held != views.size()) {
    for (size_t i = 0; i < held; ++i) PyBuffer_Release(&views[i]);
    throw nb::python_error();
  }
  std::vector<ipc::out_buffer> bufs;
  for (const Py_buffer& v : views) bufs.push_back({v.buf, static_cast<size_t>(v.len)});
  ipc::io_result r;
  {
    nb::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lk(g_worker_send_mu);
    r = ipc::send_frame(fd, static_cast<ipc::frame_kind>(kind), task_id, aux, payload.c_str(),
                        payload.size(), bufs);
  }
  for (auto& v : views) PyBuffer_Release(&v);
  if (!r.ok()) raise(PyExc_OSError, "sending to the parent failed: " + r.what);
}

/// Receives the next call; None once the parent closed the socket.
nb::object worker_recv(int fd) {
  ipc::frame f;
  ipc::io_result r;
  {
    nb::gil_scoped_release nogil;
    // Sleeps in the read itself (see await_reply in the parent for why not in poll()).
    r = ipc::recv_frame(fd, f);
  }
  if (r.status == ipc::io_status::eof) return nb::none();
  if (!r.ok()) raise(PyExc_OSError, "receiving from the parent failed: " + r.what);
  nb::list fds;
  for (auto& b : f.buffers) {
    fds.append(nb::make_tuple(b.fd.get(), b.size));
    b.fd.release();  // the decoder closes it
  }
  g_worker_task.store(f.task_id);
  return nb::make_tuple(static_cast<int>(f.kind), f.task_id,
                        nb::bytes(f.payload.data(), f.payload.size()), fds);
}

}  // namespace

uint64_t worker_current_task() { return g_worker_task.load(); }

void worker_report_progress(double fraction) {
  uint64_t bits = 0;
  std::memcpy(&bits, &fraction, sizeof bits);
  const uint64_t task = g_worker_task.load();
  // Any thread of the task may report, so the GIL comes back through restore_thread().
  PyThreadState* ts = PyEval_SaveThread();
  ipc::io_result r;
  {
    std::lock_guard<std::mutex> lk(g_worker_send_mu);
    r = ipc::send_frame(g_worker_fd, ipc::frame_kind::progress, task, bits, nullptr, 0);
  }
  restore_thread(ts);
  if (!r.ok()) raise(PyExc_OSError, "sending progress to the parent failed: " + r.what);
}

nb::object submit_process(PyObject* name, PyObject* fn, PyObject* args, PyObject* kwargs,
                          mp::metrics_entry* metrics, double timeout, int64_t priority,
                          bool prioritized, std::vector<std::shared_ptr<py_task>> deps) {
  check_accepting();
  g_decrefs->drain();
  auto t = std::make_shared<process_task>(name, fn, args, kwargs);
  t->set_metrics(metrics);
  t->timeout = timeout;
  t->deps = std::move(deps);
  t->on_settled([](mp::task& x) { static_cast<process_task&>(x).settled_hook(); });
  mp::executor& ex = process_executor(prioritized);
  admit_and_submit(*t, [&] {
    if (t->deps.empty()) {
      rt().adopt(t, timeout);
      // A worker is idle and nothing waits before this task: send it from here, so that no
      // other thread has to wake up for it. Priority tasks always go through their queue,
      // whose workers decide how many of them run at once.
      mp::worker_slot* slot = nullptr;
      if (!prioritized && ex.info().queued_tasks == 0) slot = worker_pool().try_acquire();
      if (slot) {
        t->send_now(t, slot);
      } else {
        try {
          ex.submit(t, priority, true);
        } catch (...) {
          t->cancel();  // counted but never to run: keep the books straight
          throw;
        }
      }
    } else {
      submit_after(t, timeout, [t, priority, prioritized] {
        process_executor(prioritized).submit(t, priority);
      });
    }
  });
  return nb::cast(async_handle{std::move(t)});
}

void process_start_priority(size_t num_workers) {
  mp::executor* e = nullptr;
  {
    std::lock_guard<std::mutex> lk(g_exec_mu);
    if (num_workers != 0) g_prio_threads = num_workers;
    e = g_prio_exec.load();
  }
  if (e) e->start(num_workers);
}

void process_stop_priority(bool cancel_pending) {
  mp::executor* e = nullptr;
  {
    std::lock_guard<std::mutex> lk(g_exec_mu);
    e = g_prio_exec.load();
  }
  if (e) e->stop(cancel_pending);
}

mp::executor_info process_priority_info() {
  mp::executor* e = g_prio_exec.load();
  return e ? e->info() : mp::executor_info{0, 0, 0, 0, 0, 0, false};
}

bool process_priority_queued() {
  mp::executor* e = g_prio_exec.load();
  return e && e->info().queued_tasks != 0;
}

void process_at_exit() {
  nb::gil_scoped_release nogil;
  mp::worker_pool* pool = nullptr;
  {
    std::lock_guard<std::mutex> lk(g_exec_mu);
    pool = g_pool.load();
  }
  if (pool) pool->close();  // idle workers see end of input and exit; waiters give up
  // Workers still busy run tasks that exit does not wait for (cancelled, timed out, or
  // abandoned with Ctrl-C): end them now rather than after a grace period.
  g_registry->stop_all(terminate_grace_secs, true);
}

void process_after_fork() {
  // The parent's executor threads and workers are not ours: start from nothing.
  g_registry = new mp::process_registry;
  g_exec.store(nullptr);
  g_prio_exec.store(nullptr);
  g_pool.store(nullptr);
  g_replies.store(nullptr);
  g_worker_task.store(0);
}

void bind_process(nb::module_& m) {
  m.def(
      "_process_init",
      [](nb::callable encode_call, nb::callable decode, nb::callable crashed,
         nb::callable spawn_spec) {
        g_helpers = {encode_call.inc_ref().ptr(), decode.inc_ref().ptr(),
                     crashed.inc_ref().ptr(), spawn_spec.inc_ref().ptr()};
      },
      "encode_call"_a, "decode"_a, "crashed"_a, "spawn_spec"_a,
      "Registers makeParallel._process's helpers with the core.");
  m.def(
      "_submit_process",
      [](nb::callable fn, nb::str name, nb::tuple args, nb::handle kwargs, nb::handle timeout,
         int64_t priority) {
        const double t = parse_timeout(timeout.ptr());
        PyObject* kw = kwargs.is_none() ? nullptr : kwargs.ptr();
        return submit_process(name.ptr(), fn.ptr(), args.ptr(), kw, nullptr, t, priority,
                              false, {});
      },
      "fn"_a, "name"_a, "args"_a, "kwargs"_a = nb::none(), "timeout"_a = nb::none(),
      "priority"_a = 0, "Runs fn(*args, **kwargs) in a worker process; returns its handle.");
  m.def("_set_default_backend", [](int b) { g_default_backend.store(b); });
  m.def("_default_backend", [] { return g_default_backend.load(); });
  m.def("_configure_process_pool", [](size_t n) {
    mp::executor* e = nullptr;
    mp::worker_pool* pool = nullptr;
    {
      std::lock_guard<std::mutex> lk(g_exec_mu);
      g_num_workers = n;
      g_configured = true;
      e = g_exec.load();
      pool = g_pool.load();
    }
    if (pool) pool->set_max(configured_workers());
    if (e) e->reconfigure(configured_workers(), 0);
    if (mp::executor* p = g_prio_exec.load()) p->capacity_freed();  // a raised bound
  });
  m.def("_process_pool_info", [] {
    nb::dict d;
    mp::executor* execs[2] = {nullptr, nullptr};
    mp::worker_pool* pool = nullptr;
    {
      std::lock_guard<std::mutex> lk(g_exec_mu);
      d["configured"] = g_configured;
      d["num_workers"] = configured_workers();
      execs[0] = g_exec.load();
      execs[1] = g_prio_exec.load();
      pool = g_pool.load();
    }
    // Running: tasks holding a worker. Queued: waiting in a queue, or for a worker.
    size_t queued = pool ? pool->waiting() : 0;
    for (mp::executor* e : execs) queued += e ? e->info().queued_tasks : 0;
    d["alive_workers"] = g_registry->alive();
    d["active_tasks"] = pool ? pool->busy() : 0;
    d["queued_tasks"] = queued;
    return d;
  });
  m.def("_process_worker_pids", [] {
    nb::list out;
    for (pid_t p : g_registry->pids()) out.append(static_cast<long>(p));
    return out;
  });
  m.def("_process_at_exit", &process_at_exit);

  // ---- inside a worker process
  m.def(
      "_worker_init",
      [](int fd, long parent) {
        // Die with the parent, even if it is killed with no chance to clean up.
        g_worker_fd = fd;
        return mp::watch_parent(static_cast<pid_t>(parent));
      },
      "fd"_a, "parent"_a);
  m.def("_worker_recv", &worker_recv, "fd"_a);
  m.def("_worker_send", &worker_send, "fd"_a, "kind"_a, "task_id"_a, "aux"_a, "payload"_a,
        "buffers"_a);
  m.def("_worker_done", [] { g_worker_task.store(0); });
}

}  // namespace mpb

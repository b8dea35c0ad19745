// The process backend: tasks whose code runs in worker processes.
//
// A dedicated priority-ordered executor runs process tasks; each of its threads owns one
// worker process (spawned on the thread's first task, replaced when it dies). A task's
// execute() pickles the call with the GIL (via makeParallel._process), releases the GIL
// only around the blocking socket I/O, then unpickles the reply with the GIL and finishes
// like any task. Cancelling or timing out a running process task wakes its owner thread
// through the thread's eventfd; the owner then terminates the worker (SIGTERM, a short
// grace period, SIGKILL) and reaps it, and the next task gets a fresh worker.
//
// The same module also serves the worker side (makeParallel._worker): receiving calls,
// sending replies, and forwarding report_progress to the parent.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <nanobind/stl/vector.h>

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

/// Where a cancel finds the thread running a task. One per executor thread. Never freed:
/// a cancel may still look at it after the thread exited (closed_ tells it so).
class worker_slot {
 public:
  worker_slot() : wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!wake_) throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  int wake_fd() const noexcept { return wake_.get(); }

  /// The owner thread starts (id) or ends (0) running a task.
  void set_task(uint64_t id) noexcept { task_id_.store(id); }
  /// Asks the owner to kill the worker if it still runs task `id`. Any thread.
  void request_kill(uint64_t id) noexcept {
    std::lock_guard<std::mutex> lk(mu_);
    if (closed_ || task_id_.load() != id) return;
    kill_id_.store(id);
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof one);
  }
  /// Owner: consumes a wake-up; true if it asks to kill the worker of task `id`.
  bool kill_requested(uint64_t id) noexcept {
    uint64_t count = 0;
    [[maybe_unused]] const ssize_t n = ::read(wake_.get(), &count, sizeof count);
    return kill_id_.load() == id;
  }
  void close() noexcept {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
    wake_.reset();
  }

 private:
  std::mutex mu_;
  bool closed_ = false;
  ipc::unique_fd wake_;
  std::atomic<uint64_t> task_id_{0};
  std::atomic<uint64_t> kill_id_{0};
};

thread_local worker_slot* t_slot = nullptr;
thread_local std::shared_ptr<mp::worker_process> t_proc;

mp::process_registry* g_registry = new mp::process_registry;

/// Brackets tasks like the thread executors do (GIL per batch) and, when an executor thread
/// retires, ends its worker process with it.
class process_hooks final : public mp::runner_hooks {
 public:
  void enter() override { g_hooks->enter(); }
  void leave() override { g_hooks->leave(); }
  void thread_exit() override {
    if (t_proc) {
      t_proc->stop(exit_grace_secs, false);
      t_proc.reset();
    }
    if (t_slot) t_slot->close();
    t_slot = nullptr;
    g_hooks->thread_exit();
  }
};
process_hooks* g_process_hooks = new process_hooks;

std::mutex g_exec_mu;
mp::executor* g_exec = nullptr;  // leaked in a forked child, like the runtime
size_t g_num_workers = 0;        // 0: the CPUs of the affinity mask
bool g_configured = false;

size_t configured_workers() {
  return g_num_workers != 0 ? g_num_workers : mp::available_cpus();
}

// TODO: start_priority_worker/stop_priority_worker do not reach this executor, so
// @parallel_priority(backend="process") tasks always run; ParallelContext.submit (in
// _collect.py, not part of this backend) still runs everything on the thread pool.
mp::executor& process_executor() {
  std::lock_guard<std::mutex> lk(g_exec_mu);
  if (!g_exec) {
    mp::executor_options o;
    o.name = "mp-proc";
    o.num_threads = configured_workers();
    o.priority_order = true;
    g_exec = new mp::executor(o, g_process_hooks);
  }
  return *g_exec;
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
    if (worker_slot* s = slot_.load()) s->request_kill(id());
  }

 protected:
  void execute() override;

 private:
  /// (fn, args, kwargs, dependency results) pickled. New reference, or null with an error.
  PyObject* encode();
  /// Sends the call and waits for the reply, GIL released. Fills `reply` or `ended`.
  enum class ending { reply, killed, crashed, failed };
  ending exchange(const std::vector<Py_buffer>& views, PyObject* payload, ipc::frame& reply,
                  std::string& why);
  void report_progress(double fraction);

  PyObject* fn_;
  PyObject* args_;
  PyObject* kwargs_;
  std::atomic<worker_slot*> slot_{nullptr};
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
  return call_helper(g_helpers.encode_call,
                     Py_BuildValue("(OOON)", fn_, args_, kwargs, dep_results));
}

void process_task::report_progress(double fraction) {
  if (!(fraction >= 0.0 && fraction <= 1.0)) return;
  progress.store(fraction, std::memory_order_relaxed);
  if (!has_progress_callbacks() || g_exiting.load(std::memory_order_acquire)) return;
  PyEval_RestoreThread(t_worker.saved);
  // A copy: callbacks may register further callbacks while we iterate.
  PyObject* callbacks = PySequence_List(progress_callbacks());
  if (callbacks) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(callbacks); ++i) {
      PyObject* r = PyObject_CallFunction(PyList_GET_ITEM(callbacks, i), "d", fraction);
      if (!r) PyErr_WriteUnraisable(PyList_GET_ITEM(callbacks, i));
      Py_XDECREF(r);
    }
    Py_DECREF(callbacks);
  }
  PyErr_Clear();
  t_worker.saved = PyEval_SaveThread();
}

process_task::ending process_task::exchange(const std::vector<Py_buffer>& views,
                                            PyObject* payload, ipc::frame& reply,
                                            std::string& why) {
  std::vector<ipc::out_buffer> bufs;
  for (const Py_buffer& v : views) {
    bufs.push_back({v.buf, static_cast<size_t>(v.len)});
  }
  const int sock = t_proc->socket();
  ipc::io_result r = ipc::send_frame(sock, ipc::frame_kind::call, id(), 0,
                                     PyBytes_AS_STRING(payload),
                                     static_cast<size_t>(PyBytes_GET_SIZE(payload)), bufs);
  if (r.status == ipc::io_status::eof) return ending::crashed;
  if (!r.ok()) {
    why = r.what;
    return ending::failed;
  }
  pollfd fds[2] = {{sock, POLLIN, 0}, {t_slot->wake_fd(), POLLIN, 0}};
  for (;;) {
    fds[0].revents = fds[1].revents = 0;
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      why = std::string("poll: ") + std::strerror(errno);
      return ending::failed;
    }
    if (fds[1].revents & POLLIN) {
      if (t_slot->kill_requested(id())) return ending::killed;
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    r = ipc::recv_frame(sock, reply);
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
      report_progress(fraction);
      continue;
    }
    if (reply.kind == ipc::frame_kind::result || reply.kind == ipc::frame_kind::error) {
      return ending::reply;
    }
  }
}

void process_task::execute() {
  if (!t_worker.entered) {  // the interpreter is exiting: Python cannot run any more
    complete(mp::outcome::cancelled);
    return;
  }
  // Raw references and no RAII around Python objects: see task::run about forced unwinds.
  PyObject* encoded = encode();
  Py_CLEAR(fn_);
  Py_CLEAR(args_);
  Py_CLEAR(kwargs_);
  if (!encoded) {
    finish(nullptr);
    return;
  }
  PyObject* payload = PyTuple_GET_ITEM(encoded, 0);
  PyObject* buffers = PyTuple_GET_ITEM(encoded, 1);
  std::vector<Py_buffer> views(static_cast<size_t>(PyList_GET_SIZE(buffers)));
  size_t held = 0;
  for (; held < views.size(); ++held) {
    PyObject* b = PyList_GET_ITEM(buffers, static_cast<Py_ssize_t>(held));
    if (PyObject_GetBuffer(b, &views[held], PyBUF_SIMPLE) != 0) break;
  }
  auto release_views = [&] {
    for (size_t i = 0; i < held; ++i) PyBuffer_Release(&views[i]);
    Py_DECREF(encoded);
  };
  if (held != views.size()) {
    release_views();
    finish(nullptr);
    return;
  }

  // A worker for this thread: the one it has, or a fresh one.
  if (!t_slot) t_slot = new worker_slot;
  if (!t_proc || !t_proc->alive()) {
    t_proc.reset();
    try {
      const mp::spawn_spec spec = current_spawn_spec();
      t_worker.saved = PyEval_SaveThread();
      try {
        t_proc = mp::worker_process::spawn(spec);
      } catch (...) {
        PyEval_RestoreThread(t_worker.saved);
        throw;
      }
      PyEval_RestoreThread(t_worker.saved);
      g_registry->add(t_proc);
    } catch (nb::python_error& e) {
      e.restore();
    } catch (const std::exception& e) {
      PyErr_Format(PyExc_OSError, "cannot start a worker process: %s", e.what());
    }
    if (!t_proc) {
      release_views();
      finish(nullptr);
      return;
    }
  }

  t_slot->set_task(id());
  slot_.store(t_slot);
  // Pairs with the fence in settled_hook(): a cancel that came before the slot was visible.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const bool cancelled_early = cancel_requested();

  ipc::frame reply;
  std::string why;
  ending how = ending::killed;
  mp::exit_info gone;
  t_worker.saved = PyEval_SaveThread();
  if (!cancelled_early) how = exchange(views, payload, reply, why);
  if (how == ending::killed && !cancelled_early) {
    gone = t_proc->stop(terminate_grace_secs, true);
  } else if (how == ending::crashed || how == ending::failed) {
    gone = t_proc->stop(exit_grace_secs, false);
  }
  t_slot->set_task(0);
  slot_.store(nullptr);
  if (g_exiting.load(std::memory_order_acquire)) {
    // Python is gone: leak what we hold rather than wait for a GIL that never comes back.
    complete(mp::outcome::cancelled);
    return;
  }
  PyEval_RestoreThread(t_worker.saved);
  release_views();

  if (how == ending::killed) {
    if (!cancelled_early) t_proc.reset();  // replaced by the next task on this thread
    complete(cancel_requested() ? mp::outcome::cancelled : mp::outcome::failed);
    return;
  }
  if (how != ending::reply) {
    const pid_t pid = t_proc->pid();
    t_proc.reset();
    std::string msg = "worker process " + std::to_string(pid) + " running " +
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

  // The reply: hand the payload and the shared-memory descriptors to the decoder.
  measured_ns_ = reply.aux;
  PyObject* fds = PyList_New(0);
  for (auto& b : reply.buffers) {
    PyObject* item = Py_BuildValue("(iK)", b.fd.get(), static_cast<unsigned long long>(b.size));
    if (fds && item && PyList_Append(fds, item) == 0) b.fd.release();  // the decoder closes it
    Py_XDECREF(item);
  }
  PyObject* data = PyBytes_FromStringAndSize(reply.payload.data(),
                                             static_cast<Py_ssize_t>(reply.payload.size()));
  PyObject* r = nullptr;
  if (fds && data) {
    r = call_helper(g_helpers.decode,
                    Py_BuildValue("(OOO)", data, fds,
                                  reply.kind == ipc::frame_kind::error ? Py_True : Py_False));
  }
  Py_XDECREF(fds);
  Py_XDECREF(data);
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
  ipc::io_result r;
  {
    nb::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lk(g_worker_send_mu);
    r = ipc::send_frame(g_worker_fd, ipc::frame_kind::progress, task, bits, nullptr, 0);
  }
  if (!r.ok()) raise(PyExc_OSError, "sending progress to the parent failed: " + r.what);
}

nb::object submit_process(PyObject* name, PyObject* fn, PyObject* args, PyObject* kwargs,
                          mp::metrics_entry* metrics, double timeout, int64_t priority,
                          std::vector<std::shared_ptr<py_task>> deps) {
  if (g_refusing.load(std::memory_order_acquire)) {
    raise(g_exc.shutdown, "cannot submit tasks while the interpreter is shutting down");
  }
  g_decrefs->drain();
  auto t = std::make_shared<process_task>(name, fn, args, kwargs);
  t->set_metrics(metrics);
  t->timeout = timeout;
  t->deps = std::move(deps);
  t->on_settled([](mp::task& x) { static_cast<process_task&>(x).settled_hook(); });
  mp::executor& ex = process_executor();
  // A refused task must give its admission slot back: a task that was never registered
  // has no tracker to return it when it ends.
  admit_task(*t);
  try {
    if (t->deps.empty()) {
      rt().adopt(t, timeout);
      try {
        ex.submit(t, priority, true);
      } catch (...) {
        t->cancel();  // counted but never to run: keep the books straight
        throw;
      }
    } else {
      submit_after(t, timeout, [t, priority] { process_executor().submit(t, priority); });
    }
  } catch (const mp::shutdown_error& e) {
    if (t->admitted()) rt().tracker().release_slot();
    raise(g_exc.shutdown, e.what());
  } catch (const mp::memory_error& e) {
    if (t->admitted()) rt().tracker().release_slot();
    raise(PyExc_MemoryError, e.what());
  }
  return nb::cast(async_handle{std::move(t)});
}

void process_at_exit() {
  nb::gil_scoped_release nogil;
  g_registry->stop_all(exit_grace_secs);
}

void process_after_fork() {
  // The parent's executor threads and workers are not ours: start from nothing.
  g_registry = new mp::process_registry;
  g_exec = nullptr;
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
        return submit_process(name.ptr(), fn.ptr(), args.ptr(), kw, nullptr, t, priority, {});
      },
      "fn"_a, "name"_a, "args"_a, "kwargs"_a = nb::none(), "timeout"_a = nb::none(),
      "priority"_a = 0, "Runs fn(*args, **kwargs) in a worker process; returns its handle.");
  m.def("_set_default_backend", [](int b) { g_default_backend.store(b); });
  m.def("_default_backend", [] { return g_default_backend.load(); });
  m.def("_configure_process_pool", [](size_t n) {
    mp::executor* e = nullptr;
    {
      std::lock_guard<std::mutex> lk(g_exec_mu);
      g_num_workers = n;
      g_configured = true;
      e = g_exec;
    }
    if (e) e->reconfigure(configured_workers(), 0);
  });
  m.def("_process_pool_info", [] {
    nb::dict d;
    mp::executor* e = nullptr;
    {
      std::lock_guard<std::mutex> lk(g_exec_mu);
      d["configured"] = g_configured;
      d["num_workers"] = configured_workers();
      e = g_exec;
    }
    const mp::executor_info i = e ? e->info() : mp::executor_info{0, 0, 0, 0, 0, 0, false};
    d["alive_workers"] = g_registry->alive();
    d["active_tasks"] = i.active_tasks;
    d["queued_tasks"] = i.queued_tasks;
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
        // Die with the parent, even if it is killed with no chance to clean up; and if it
        // already died before prctl took effect, notice it now.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        g_worker_fd = fd;
        return static_cast<long>(::getppid()) == parent;
      },
      "fd"_a, "parent"_a);
  m.def("_worker_recv", &worker_recv, "fd"_a);
  m.def("_worker_send", &worker_send, "fd"_a, "kind"_a, "task_id"_a, "aux"_a, "payload"_a,
        "buffers"_a);
  m.def("_worker_done", [] { g_worker_task.store(0); });
}

}  // namespace mpb

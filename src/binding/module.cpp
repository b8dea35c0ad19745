// The binding layer: adapts the C++ core to Python. It owns every Python object a task
// holds and decides when the GIL is taken; the core never sees either.
//
// GIL rules, which keep the two lock worlds deadlock-free:
//  - a thread may take a core lock while holding the GIL, never the reverse: core code does
//    not wait for the GIL while it holds one of its own locks;
//  - worker threads take the GIL once per batch of tasks (runner hooks), not per task;
//  - a Python reference dropped on a thread without the GIL is queued and released by the
//    next thread that holds it, so destructors never block on the GIL;
//  - once the interpreter exits (our atexit hook has run), core threads never take the GIL
//    again and leak what they hold instead.
#include "common.hpp"

using namespace mpb;

namespace {

// ---------------------------------------------------------------------------------------------
// TaskFunction: the object a task decorator returns. Calling it submits a task. Its call and
// descriptor slots are plain C functions so a submission costs no argument parsing.

struct task_function {
  nb::object fn;
  nb::object name;
  int where;  // mp::place
  bool consume_options;
  bool with_deps;  // takes depends_on=
  double timeout;
  int64_t priority;
  mp::metrics_entry* metrics;
  int backend;  // backend_kind
};

PyObject* g_str_timeout = nullptr;
PyObject* g_str_priority = nullptr;
PyObject* g_str_depends_on = nullptr;

/// Blocks (GIL released, Ctrl-C honoured) until set_max_concurrent_tasks admits one more.
void admit(mp::task& t) {
  mp::task_tracker& tracker = rt().tracker();
  if (tracker.limit() == 0) return;
  for (;;) {
    PyThreadState* ts = PyEval_SaveThread();
    const mp::wait_status w = tracker.admit(std::nullopt, true);
    restore_thread(ts);
    if (w == mp::wait_status::ready) break;
    if (PyErr_CheckSignals() != 0) throw nb::python_error();
  }
  t.set_admitted();
}

/// Reads depends_on=: a list or tuple of handles.
std::vector<std::shared_ptr<py_task>> parse_dependencies(PyObject* value) {
  if (!PyList_Check(value) && !PyTuple_Check(value)) {
    raise(PyExc_TypeError, std::string("depends_on must be a list or tuple of AsyncHandle, not ") +
                               Py_TYPE(value)->tp_name);
  }
  std::vector<std::shared_ptr<py_task>> deps;
  nb::handle seq(value);
  for (nb::handle item : seq) {
    async_handle* h = nullptr;
    if (!nb::try_cast<async_handle*>(item, h) || h == nullptr) {
      raise(PyExc_TypeError, std::string("depends_on items must be AsyncHandle, got ") +
                                 Py_TYPE(item.ptr())->tp_name);
    }
    deps.push_back(h->t);
  }
  return deps;
}

nb::object submit_call(task_function& f, PyObject* args, PyObject* kwargs, double timeout,
                       int64_t priority, std::vector<std::shared_ptr<py_task>> deps) {
  check_accepting();
  g_decrefs->drain();
  auto t = std::make_shared<call_task>(f.name.ptr(), f.fn.ptr(), args, kwargs);
  t->set_metrics(f.metrics);
  t->timeout = timeout;
  t->deps = std::move(deps);
  admit_and_submit(*t, [&] {
    const auto where = static_cast<mp::place>(f.where);
    if (t->deps.empty()) {
      rt().submit(t, where, priority, timeout);
    } else {
      submit_after(t, timeout, [t, where] { rt().enqueue(t, where); });
    }
  });
  return nb::cast(async_handle{std::move(t)});
}

PyObject* task_function_call(PyObject* self, PyObject* args, PyObject* kwargs) {
  try {
    task_function& f = *nb::inst_ptr<task_function>(self);
    double timeout = f.timeout;
    int64_t priority = f.priority;
    nb::object kw;
    nb::object call_args;  // owns `args` when it had to be rebuilt
    std::vector<std::shared_ptr<py_task>> deps;
    if (kwargs && PyDict_GET_SIZE(kwargs) != 0) {
      // Copy: the task keeps the dict, and the caller may reuse the one it passed.
      kw = nb::steal(PyDict_Copy(kwargs));
      if (!kw.is_valid()) return nullptr;
      if (f.consume_options) {
        if (PyObject* v = PyDict_GetItemWithError(kw.ptr(), g_str_timeout)) {
          timeout = parse_timeout(v);
          PyDict_DelItem(kw.ptr(), g_str_timeout);
        }
        if (f.where == static_cast<int>(mp::place::priority)) {
          if (PyObject* v = PyDict_GetItemWithError(kw.ptr(), g_str_priority)) {
            priority = parse_priority(v);
            PyDict_DelItem(kw.ptr(), g_str_priority);
          }
        }
        if (f.with_deps) {
          if (PyObject* v = PyDict_GetItemWithError(kw.ptr(), g_str_depends_on)) {
            deps = parse_dependencies(v);
            PyDict_DelItem(kw.ptr(), g_str_depends_on);
            if (deps.empty()) {
              // No dependencies still means "results first": pass the empty tuple now.
              call_args = nb::steal(PySequence_Concat(nb::make_tuple(nb::tuple()).ptr(), args));
              if (!call_args.is_valid()) return nullptr;
              args = call_args.ptr();
            }
          }
        }
        if (PyErr_Occurred()) return nullptr;
      }
      if (PyDict_GET_SIZE(kw.ptr()) == 0) kw.reset();
    }
    const int backend = f.backend != backend_default ? f.backend : g_default_backend.load();
    if (backend == backend_process) {
      const bool prioritized = f.where == static_cast<int>(mp::place::priority);
      return submit_process(f.name.ptr(), f.fn.ptr(), args, kw.ptr(), f.metrics, timeout,
                            priority, prioritized, std::move(deps))
          .release()
          .ptr();
    }
    return submit_call(f, args, kw.ptr(), timeout, priority, std::move(deps)).release().ptr();
  } catch (nb::python_error& e) {
    e.restore();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

/// Binds the TaskFunction to an instance, like a function does, so methods work.
PyObject* task_function_get(PyObject* self, PyObject* obj, PyObject*) {
  if (!obj || obj == Py_None) {
    Py_INCREF(self);
    return self;
  }
  return PyMethod_New(self, obj);
}

PyType_Slot task_function_slots[] = {
    {Py_tp_call, reinterpret_cast<void*>(task_function_call)},
    {Py_tp_descr_get, reinterpret_cast<void*>(task_function_get)},
    {0, nullptr}};

// ---------------------------------------------------------------------------------------------
// ProfiledFunction: calls the function and records its time and outcome under a name.

struct profiled_function {
  nb::object fn;
  mp::metrics_entry* metrics;
};

PyObject* profiled_call(PyObject* self, PyObject* args, PyObject* kwargs) {
  profiled_function& p = *nb::inst_ptr<profiled_function>(self);
  const uint64_t start = mp::now_ns();
  PyObject* r = PyObject_Call(p.fn.ptr(), args, kwargs);
  p.metrics->record(mp::now_ns() - start, 0, r != nullptr);
  return r;
}

PyType_Slot profiled_slots[] = {
    {Py_tp_call, reinterpret_cast<void*>(profiled_call)},
    {Py_tp_descr_get, reinterpret_cast<void*>(task_function_get)},
    {0, nullptr}};

// ---------------------------------------------------------------------------------------------
// Module-level helpers.

nb::dict snapshot_dict(const mp::metrics_snapshot& s) {
  nb::dict d;
  const double ms = 1e-6;
  const uint64_t total = s.total();
  d["total_tasks"] = total;
  d["completed_tasks"] = s.completed;
  d["failed_tasks"] = s.failed;
  d["total_execution_time_ms"] = static_cast<double>(s.total_ns) * ms;
  d["average_execution_time_ms"] =
      total ? static_cast<double>(s.total_ns) * ms / static_cast<double>(total) : 0.0;
  d["min_execution_time_ms"] = static_cast<double>(s.min_ns) * ms;
  d["max_execution_time_ms"] = static_cast<double>(s.max_ns) * ms;
  d["p50_execution_time_ms"] = s.p50_ns * ms;
  d["p95_execution_time_ms"] = s.p95_ns * ms;
  d["p99_execution_time_ms"] = s.p99_ns * ms;
  d["total_queue_time_ms"] = static_cast<double>(s.queue_ns) * ms;
  return d;
}

nb::dict executor_info_dict(mp::place where) {
  nb::dict d;
  mp::executor* e = rt().peek(where);
  const mp::executor_info i = e ? e->info() : mp::executor_info{0, 0, 0, 0, 0, 0, false};
  d["current_threads"] = i.current_threads;
  d["idle_threads"] = i.idle_threads;
  d["active_tasks"] = i.active_tasks;
  d["queued_tasks"] = i.queued_tasks;
  d["running"] = i.running;
  return d;
}

py_task* current_py_task() { return dynamic_cast<py_task*>(mp::task::current()); }

/// Atexit: wait for every task that was not cancelled, then let the interpreter go.
void at_exit() {
  g_exit_started.store(true, std::memory_order_release);
  // Queued priority tasks are work the program submitted: run them even if the workers were
  // stopped, rather than wait for them forever.
  if (mp::executor* p = rt().peek(mp::place::priority)) {
    if (p->info().queued_tasks != 0) p->start();
  }
  if (process_priority_queued()) process_start_priority(0);
  for (;;) {
    mp::wait_status w;
    {
      nb::gil_scoped_release nogil;
      w = rt().tracker().wait_idle(false, std::nullopt, true);
    }
    if (w == mp::wait_status::interrupted) {
      if (PyErr_CheckSignals() != 0) {  // Ctrl-C: abandon the rest, as documented
        PyErr_Clear();
        break;
      }
      continue;
    }
    // Refuse new work, then make sure none slipped in between the wait and the refusal.
    g_refusing.store(true, std::memory_order_release);
    if (rt().tracker().unsettled() == 0) break;
    g_refusing.store(false, std::memory_order_release);
  }
  g_refusing.store(true, std::memory_order_release);
  process_at_exit();  // end and reap the worker processes while the GIL still works
  g_decrefs->drain();
  g_exiting.store(true);
  // Threads that decided to take the GIL back before they could see g_exiting must get it
  // before finalization starts, or CPython would end them inside our frames.
  Py_BEGIN_ALLOW_THREADS
  for (int n = g_reacquiring.load(); n != 0; n = g_reacquiring.load()) g_reacquiring.wait(n);
  Py_END_ALLOW_THREADS
}

}  // namespace

void mpb::admit_task(mp::task& t) { admit(t); }

void mpb::refused(mp::task& t) {
  if (t.admitted()) rt().tracker().release_slot();
}

NB_MODULE(_core, m) {
  m.doc() = "makeParallel's C++ core, bound for Python. Use the makeParallel package instead.";
  // Tasks stuck in C at exit keep references on purpose (see at_exit); don't report them.
  nb::set_leak_warnings(false);

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const mp::shutdown_error& e) {
      PyErr_SetString(g_exc.shutdown, e.what());
    } catch (const mp::memory_error& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });

  g_str_timeout = PyUnicode_InternFromString("timeout");
  g_str_priority = PyUnicode_InternFromString("priority");
  g_str_depends_on = PyUnicode_InternFromString("depends_on");

  m.def(
      "_init",
      [](nb::handle cancelled, nb::handle timed_out, nb::handle wait_timeout,
         nb::handle shutdown, nb::handle dependency) {
        g_exc = {cancelled.inc_ref().ptr(), timed_out.inc_ref().ptr(),
                 wait_timeout.inc_ref().ptr(), shutdown.inc_ref().ptr(),
                 dependency.inc_ref().ptr()};
      },
      "cancelled"_a, "timed_out"_a, "wait_timeout"_a, "shutdown"_a, "dependency"_a,
      "Registers the package's exception types with the core.");

  nb::class_<async_handle>(m, "AsyncHandle", nb::is_weak_referenceable(),
                           "The handle of a submitted task.")
      .def("get", &handle_get, "timeout"_a = nb::none())
      .def(
          "try_get",
          [](async_handle& h) -> nb::object {
            if (!h.t->settled()) return nb::none();
            return outcome_value(*h.t);
          },
          "Result if finished successfully, None if not finished; raises like get().")
      .def(
          "wait",
          [](async_handle& h, nb::handle timeout_secs) {
            const auto deadline = deadline_from(timeout_secs, "timeout_secs");
            if (!h.t->settled()) h.t->run_here(h.t, deadline);
            return wait_for_task(*h.t, deadline);
          },
          "timeout_secs"_a = nb::none(),
          "Waits until the task finishes or the timeout passes; returns is_ready().")
      .def("is_ready", [](async_handle& h) { return h.t->settled(); })
      .def("running", [](async_handle& h) { return h.t->running(); })
      .def("status", [](async_handle& h) { return status_name(h.t->get_status()); })
      .def("is_cancelled", [](async_handle& h) { return h.t->cancel_requested(); })
      .def(
          "cancel",
          [](async_handle& h, nb::handle interrupt) {
            if (!PyBool_Check(interrupt.ptr())) {
              raise(PyExc_TypeError, std::string("interrupt must be a bool, not ") +
                                         Py_TYPE(interrupt.ptr())->tp_name);
            }
            return handle_cancel(h, interrupt.ptr() == Py_True);
          },
          "interrupt"_a.none() = false)
      .def(
          "cancel_with_timeout",
          [](async_handle& h, nb::handle timeout_secs) {
            std::optional<mp::clock::time_point> deadline;  // None: no limit
            if (!timeout_secs.is_none()) {
              deadline = mp::deadline_after(parse_timeout(timeout_secs.ptr(), "timeout_secs"));
            }
            handle_cancel(h, false);
            return wait_for_task(*h.t, deadline, true);
          },
          "timeout_secs"_a.none())
      .def("elapsed_time", [](async_handle& h) { return h.t->elapsed_seconds(); })
      .def("get_name", [](async_handle& h) { return nb::borrow<nb::str>(h.t->name()); })
      .def("get_task_id", [](async_handle& h) { return task_id_string(h.t->id()); })
      .def("get_timeout",
           [](async_handle& h) -> nb::object {
             return h.t->timeout > 0 ? nb::object(nb::float_(h.t->timeout)) : nb::none();
           })
      .def("get_progress",
           [](async_handle& h) { return h.t->progress.load(std::memory_order_relaxed); })
      .def("_metadata", [](async_handle& h) { return nb::borrow<nb::dict>(h.t->metadata()); })
      .def("_progress_callbacks",
           [](async_handle& h) { return nb::borrow<nb::list>(h.t->progress_callbacks()); })
      .def("_add_settled_hook", &add_settled_hook, "fn"_a)
      .def(
          "_kick", [](async_handle& h) { h.t->note_waited(); },
          "Someone will wait for this task: restart stopped workers it is queued for.")
      .def("_outcome", [](async_handle& h) { return static_cast<int>(h.t->get_outcome()); })
      .def("_value", [](async_handle& h) -> nb::object {
        return h.t->value() ? nb::borrow(h.t->value()) : nb::none();
      });

  nb::class_<task_function>(m, "TaskFunction", nb::type_slots(task_function_slots),
                            nb::dynamic_attr(), nb::is_weak_referenceable(),
                            "A function whose calls run as tasks.")
      .def(
          "__init__",
          [](task_function* self, nb::callable fn, nb::str name, int where,
             bool consume_options, nb::handle timeout, nb::handle priority, bool with_deps,
             int backend) {
            const double t = parse_timeout(timeout.ptr());
            const int64_t p = priority.is_none() ? 0 : parse_priority(priority.ptr());
            if (where < 0 || where > 2) raise(PyExc_ValueError, "unknown execution place");
            if (backend < 0 || backend > 2) raise(PyExc_ValueError, "unknown backend");
            new (self) task_function{fn,        name, where, consume_options,
                                     with_deps, t,    p,     &g_metrics->entry(name.c_str()),
                                     backend};
          },
          "fn"_a, "name"_a, "where"_a, "consume_options"_a, "timeout"_a = nb::none(),
          "priority"_a = nb::none(), "with_deps"_a = false, "backend"_a = 0)
      .def_prop_ro("_with_deps", [](task_function& f) { return f.with_deps; })
      .def_prop_ro("_consume_options", [](task_function& f) { return f.consume_options; })
      .def_prop_ro("_fn", [](task_function& f) { return f.fn; })
      .def_prop_ro("_metrics_name", [](task_function& f) { return f.name; })
      .def_prop_ro("_where", [](task_function& f) { return f.where; })
      .def_prop_ro("_timeout",
                   [](task_function& f) -> nb::object {
                     return f.timeout > 0 ? nb::object(nb::float_(f.timeout)) : nb::none();
                   })
      .def_prop_ro("_priority", [](task_function& f) { return f.priority; })
      .def_prop_ro("_backend", [](task_function& f) { return f.backend; });

  nb::class_<profiled_function>(m, "ProfiledFunction", nb::type_slots(profiled_slots),
                                nb::dynamic_attr(), nb::is_weak_referenceable(),
                                "A function whose calls are timed and counted.")
      .def(
          "__init__",
          [](profiled_function* self, nb::callable fn, nb::str name) {
            new (self) profiled_function{fn, &g_metrics->entry(name.c_str())};
          },
          "fn"_a, "name"_a)
      .def_prop_ro("_fn", [](profiled_function& p) { return p.fn; });

  m.def(
      "_record",
      [](nb::str name, double seconds, bool ok) {
        const double ns = std::fmax(seconds, 0.0) * 1e9;
        g_metrics->entry(name.c_str()).record(static_cast<uint64_t>(ns), 0, ok);
      },
      "name"_a, "seconds"_a, "ok"_a, "Records one timed call under name.");

  m.def(
      "_map_chunk",
      [](nb::callable fn, nb::str name, nb::list items, Py_ssize_t base,
         nb::capsule state) {
        check_accepting();
        auto* st = static_cast<std::shared_ptr<map_state>*>(state.data());
        auto t = std::make_shared<map_chunk_task>(name.ptr(), fn.ptr(), items.ptr(), base, *st);
        // A chunk is a task: set_max_concurrent_tasks counts it.
        admit_and_submit(*t, [&] { rt().submit(t, mp::place::pool); });
        return async_handle{std::move(t)};
      },
      "fn"_a, "name"_a, "items"_a, "base"_a, "state"_a);
  m.def("_map_state", [] {
    return nb::capsule(new std::shared_ptr<map_state>(std::make_shared<map_state>()),
                       [](void* p) noexcept {
                         delete static_cast<std::shared_ptr<map_state>*>(p);
                       });
  });
  m.def("_map_stop", [](nb::capsule state) {
    (*static_cast<std::shared_ptr<map_state>*>(state.data()))->stop.store(true);
  });

  // ---- thread pool, thread cache, priority workers
  m.def("_configure_pool", [](size_t n, size_t stack) { rt().configure_pool(n, stack); });
  m.def("_pool_info", [] {
    nb::dict d = executor_info_dict(mp::place::pool);
    d["configured"] = rt().pool_configured();
    d["current_num_threads"] = rt().pool_threads();
    const size_t stack = rt().pool_stack_size();
    d["stack_size"] = stack ? stack : mp::default_stack_size();
    return d;
  });
  m.def("_configure_cache", [](size_t n, double idle) { rt().configure_cache(n, idle); });
  m.def("_cache_info", [] {
    nb::dict d = executor_info_dict(mp::place::cache);
    d["max_threads"] = rt().cache_max_threads();
    d["idle_timeout_secs"] = rt().cache_idle_timeout();
    return d;
  });
  m.def("_start_priority", [](size_t n) {
    rt().start_priority(n);
    process_start_priority(n);
  });
  m.def("_stop_priority", [](bool cancel_pending) {
    rt().stop_priority(cancel_pending);
    process_stop_priority(cancel_pending);
  });
  m.def("_priority_info", [] {
    // Thread and process tasks of @parallel_priority: one queue to the user.
    mp::executor* e = rt().peek(mp::place::priority);
    const mp::executor_info t = e ? e->info() : mp::executor_info{0, 0, 0, 0, 0, 0, false};
    const mp::executor_info p = process_priority_info();
    nb::dict d;
    d["running"] = t.running || p.running;
    d["num_workers"] = std::max(t.num_threads, p.num_threads);
    d["queued_tasks"] = t.queued_tasks + p.queued_tasks;
    d["active_tasks"] = t.active_tasks + p.active_tasks;
    return d;
  });

  // ---- metrics
  m.def("_get_metrics", [](nb::str name) -> nb::object {
    auto s = g_metrics->find(name.c_str());
    if (!s) return nb::none();
    return snapshot_dict(*s);
  });
  m.def("_all_metrics", [] {
    nb::dict out;
    for (const auto& [name, s] : g_metrics->all()) out[nb::str(name.c_str())] = snapshot_dict(s);
    return out;
  });
  m.def("reset_metrics", [] { g_metrics->reset(); }, "Clears every recorded metric.");

  // ---- trace
  m.def("_trace_start", [] {
    // Recorders are never freed: a worker may still be appending to one it saw installed.
    auto* r = new mp::trace_recorder;
    if (mp::trace_recorder* old = mp::trace_recorder::install(r)) {
      mp::trace_recorder::install(old);
      delete r;
      raise(PyExc_RuntimeError, "a trace is already being recorded");
    }
  });
  m.def("_trace_stop", [] {
    mp::trace_recorder* r = mp::trace_recorder::install(nullptr);
    nb::list events;
    nb::dict names;
    if (!r) return nb::make_tuple(events, names);
    for (const auto& e : r->take()) {
      events.append(nb::make_tuple(e.task_id, nb::str(e.name.c_str()), e.submit_ns, e.start_ns,
                                   e.end_ns, e.thread_id, static_cast<int>(e.outcome)));
    }
    for (const auto& [tid, name] : r->thread_names()) {
      names[nb::int_(tid)] = nb::str(name.c_str());
    }
    return nb::make_tuple(events, names);
  });

  // ---- inside a task
  m.def("_current_task_id", []() -> nb::object {
    py_task* t = current_py_task();
    if (!t && worker_current_task() != 0) {  // in a worker process, running a parent's task
      return nb::str(task_id_string(worker_current_task()).c_str());
    }
    if (!t) return nb::none();
    return nb::str(task_id_string(t->id()).c_str());
  });
  m.def("_is_cancelled", [] {
    py_task* t = current_py_task();
    return t != nullptr && t->cancel_requested();
  });
  m.def("_report_progress", [](double fraction, std::optional<uint64_t> id) -> nb::object {
    std::shared_ptr<mp::task> keep;
    py_task* t = nullptr;
    if (id) {
      keep = rt().find(*id);
      t = dynamic_cast<py_task*>(keep.get());
      if (!t) raise(PyExc_ValueError, "no running task has id " + task_id_string(*id));
    } else {
      t = current_py_task();
      if (!t && worker_current_task() != 0) {  // in a worker process: tell the parent
        worker_report_progress(fraction);
        return nb::none();
      }
      if (!t) {
        raise(PyExc_RuntimeError,
              "report_progress() was called outside a task; pass task_id= to report for one");
      }
    }
    t->progress.store(fraction, std::memory_order_relaxed);
    if (!t->has_progress_callbacks()) return nb::none();
    return nb::borrow<nb::list>(t->progress_callbacks());
  });

  // ---- lifetime
  m.def("_at_exit", &at_exit);
  m.def("_after_fork_child", [] {
    // The parent's worker threads do not exist here and their locks may be held forever:
    // start over with fresh, empty executors. The old runtime is leaked on purpose.
    g_decrefs = new deferred_decrefs;
    g_runtime = new mp::runtime(g_hooks);
    process_after_fork();
  });
  m.def("_active_task_count", [] { return rt().tracker().live(); });
  m.def("_shutdown", [](bool cancel_pending, nb::handle timeout) {
    rt().begin_shutdown(cancel_pending);
    const auto deadline = deadline_from(timeout, "timeout_secs");
    for (;;) {
      PyThreadState* ts = PyEval_SaveThread();
      const mp::wait_status w = rt().tracker().wait_idle(true, deadline, true);
      restore_thread(ts);
      if (w != mp::wait_status::interrupted) return w == mp::wait_status::ready;
      if (PyErr_CheckSignals() != 0) throw nb::python_error();
    }
  }, "cancel_pending"_a, "timeout"_a.none());
  m.def("_set_max_concurrent", [](uint32_t n) { rt().tracker().set_limit(n); });
  m.def("_max_concurrent", [] { return rt().tracker().limit(); });
  m.def("_set_memory_limit", [](double percent) { rt().memory().set(percent); });
  m.def("_memory_limit", [] { return rt().memory().get(); });
  m.def("_reset_shutdown", [] { rt().reset_shutdown(); });

  bind_process(m);

  m.def("current_thread_stack_size", &mp::current_thread_stack_size,
        "Stack size in bytes of the calling thread.");
  m.def("_available_cpus", &mp::available_cpus);
  m.def("_page_size", &mp::page_size);
  m.attr("_min_stack_size") = mp::min_stack_size;
}

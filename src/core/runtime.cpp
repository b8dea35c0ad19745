#include "makeparallel/runtime.hpp"

#include <algorithm>
#include <string>

#include "makeparallel/os_thread.hpp"

namespace mp {

runtime::runtime(runner_hooks* hooks) : hooks_(hooks), pool_threads_(available_cpus()) {}

// Executors first: their workers may still touch the timer or the metrics while exiting.
runtime::~runtime() {
  std::lock_guard<std::mutex> lk(mu_);
  pool_.reset();
  cache_.reset();
  priority_.reset();
}

executor* runtime::peek(place where) const noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  switch (where) {
    case place::pool: return pool_.get();
    case place::cache: return cache_.get();
    case place::priority: return priority_.get();
  }
  return nullptr;
}

executor& runtime::get(place where) {
  std::lock_guard<std::mutex> lk(mu_);
  executor_options o;
  switch (where) {
    case place::pool:
      if (!pool_) {
        o.name = "mp-pool";
        o.num_threads = pool_threads_.load();
        o.stack_size = pool_stack_.load();
        pool_ = std::make_unique<executor>(o, hooks_);
      }
      return *pool_;
    case place::cache:
      if (!cache_) {
        o.name = "mp-task";
        o.elastic = true;
        o.num_threads = cache_max_.load();
        o.idle_timeout_secs = cache_idle_.load();
        cache_ = std::make_unique<executor>(o, hooks_);
      }
      return *cache_;
    case place::priority:
      if (!priority_) {
        o.name = "mp-priority";
        o.priority_order = true;
        o.start_stopped = true;
        o.num_threads = priority_workers_.load();
        priority_ = std::make_unique<executor>(o, hooks_);
      }
      return *priority_;
  }
  throw std::logic_error("unknown place");
}

void runtime::track(const std::shared_ptr<task>& t, double timeout_secs) {
  if (shut_down_.load(std::memory_order_acquire)) {
    throw shutdown_error("makeParallel is shut down: call reset_shutdown() to submit again");
  }
  if (memory_.exceeded()) {
    throw memory_error("memory use is above the limit set by configure_memory_limit (" +
                       std::to_string(memory_.get()) + " %): task refused");
  }
  t->attach(&tracker_);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (live_.size() >= live_prune_at_) {
      live_.erase(std::remove_if(live_.begin(), live_.end(),
                                 [](const std::weak_ptr<task>& w) {
                                   auto p = w.lock();
                                   return !p || p->settled();
                                 }),
                  live_.end());
      live_prune_at_ = std::max<size_t>(1024, live_.size() * 2);
    }
    live_.push_back(t);
  }
  if (timeout_secs > 0) {
    if (auto deadline = deadline_after(timeout_secs)) timer_.schedule(*deadline, t);
  }
}

void runtime::adopt(const std::shared_ptr<task>& t, double timeout_secs) {
  track(t, timeout_secs);
}

void runtime::enqueue(const std::shared_ptr<task>& t, place where, int64_t priority) {
  if (t->get_phase() != phase::waiting) return;  // cancelled or timed out meanwhile
  get(where).submit(t, priority, true);
}

void runtime::submit(const std::shared_ptr<task>& t, place where, int64_t priority,
                     double timeout_secs) {
  executor& ex = get(where);
  track(t, timeout_secs);
  try {
    ex.submit(t, priority, true);
  } catch (...) {
    t->cancel();  // keep the books straight: it was counted but will never run
    throw;
  }
}

void runtime::configure_pool(size_t num_threads, size_t stack_size) {
  pool_threads_.store(num_threads);
  pool_stack_.store(stack_size);
  pool_configured_.store(true);
  if (executor* p = peek(place::pool)) p->reconfigure(num_threads, stack_size);
}

void runtime::configure_cache(size_t max_threads, double idle_timeout_secs) {
  cache_max_.store(max_threads);
  cache_idle_.store(idle_timeout_secs);
  if (executor* c = peek(place::cache)) c->set_elastic_limits(max_threads, idle_timeout_secs);
}

void runtime::start_priority(size_t num_workers) {
  if (num_workers != 0) priority_workers_.store(num_workers);
  get(place::priority).start(num_workers);
}

void runtime::stop_priority(bool cancel_pending) {
  if (executor* p = peek(place::priority)) p->stop(cancel_pending);
}

void runtime::cancel_tasks(bool waiting_too) {
  std::vector<std::shared_ptr<task>> tasks;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& w : live_) {
      if (auto p = w.lock()) tasks.push_back(std::move(p));
    }
  }
  // Outside the lock: cancel() runs hooks, and the last references may drop here.
  // Unstarted tasks first, newest first: a task waiting on dependencies was submitted after
  // them, so it is cancelled before a dependency's cancellation could fail it instead.
  if (waiting_too) {
    for (auto it = tasks.rbegin(); it != tasks.rend(); ++it) {
      if ((*it)->get_phase() == phase::waiting) (*it)->cancel();
    }
  }
  for (auto& t : tasks) {
    if (t->get_phase() == phase::running) t->cancel();
  }
}

std::shared_ptr<task> runtime::find(uint64_t id) const {
  std::lock_guard<std::mutex> lk(mu_);
  for (const auto& w : live_) {
    auto p = w.lock();
    if (p && p->id() == id && !p->settled()) return p;
  }
  return nullptr;
}

void runtime::begin_shutdown(bool cancel_pending) {
  shut_down_.store(true, std::memory_order_release);
  cancel_tasks(cancel_pending);
}

}  // namespace mp

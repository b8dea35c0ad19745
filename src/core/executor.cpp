#include "makeparallel/executor.hpp"

#include <algorithm>
#include <chrono>
#include <utility>

#include "makeparallel/os_thread.hpp"

namespace mp {
namespace {
// How long a worker may keep running queued tasks inside one enter()/leave() bracket. The
// Python binding holds the GIL for the bracket; code inside tasks still yields it on the
// interpreter's own switch interval, so this only bounds the gaps between tasks.
constexpr auto batch_slice = std::chrono::milliseconds(2);
}  // namespace

executor::executor(executor_options opts, runner_hooks* hooks)
    : opts_(std::move(opts)), hooks_(hooks) {
  std::unique_lock<std::mutex> lk(mu_);
  running_ = opts_.elastic || !opts_.start_stopped;
  if (opts_.elastic || !running_) return;
  try {
    for (size_t i = 0; i < opts_.num_threads; ++i) spawn_locked(lk);
  } catch (...) {
    // Do not leave threads behind that point at a half-built executor.
    closing_ = true;
    work_cv_.notify_all();
    exit_cv_.wait(lk, [this] { return all_threads_ == 0; });
    throw;
  }
}

executor::~executor() {
  {
    std::unique_lock<std::mutex> lk(mu_);
    closing_ = true;
    running_ = false;
    ++generation_;
    work_cv_.notify_all();
    exit_cv_.wait(lk, [this] { return all_threads_ == 0; });
  }
  cancel_queued();
}

void executor::spawn_locked(std::unique_lock<std::mutex>&) {
  const uint64_t gen = generation_;
  ++threads_;
  ++all_threads_;
  try {
    start_thread(opts_.name, opts_.stack_size, [this, gen] { worker_main(gen); });
  } catch (...) {
    --threads_;
    --all_threads_;
    throw;
  }
}

bool executor::has_work_locked() const noexcept {
  return opts_.priority_order ? !heap_.empty() : !fifo_.empty();
}

bool executor::can_take_locked() {
  return has_work_locked() && (opts_.gate == nullptr || opts_.gate->try_take());
}

bool executor::should_exit_locked(uint64_t generation) const noexcept {
  return closing_ || generation != generation_;
}

std::shared_ptr<task> executor::pop_locked() {
  while (has_work_locked()) {
    std::shared_ptr<task> t;
    if (opts_.priority_order) {
      std::pop_heap(heap_.begin(), heap_.end(), entry_order{});
      t = std::move(heap_.back().t);
      heap_.pop_back();
    } else {
      t = std::move(fifo_.front().t);
      fifo_.pop_front();
    }
    // A cancelled task already left the books through task_dropped(); skip its tombstone.
    if (t->release_queue() != nullptr) {
      queued_.fetch_sub(1, std::memory_order_relaxed);
      return t;
    }
  }
  return nullptr;
}

void executor::worker_main(uint64_t gen) {
  bool retire = false;
  std::unique_lock<std::mutex> lk(mu_);
  // Gives back the gate's unit taken by can_take_locked(), if the task did not keep it.
  auto after_run = [&] {
    if (!opts_.gate) return;
    lk.unlock();
    opts_.gate->after_run();
    lk.lock();
  };
  for (;;) {
    // Leaves the loop with a unit of the gate taken exactly when it does not exit.
    while (!should_exit_locked(gen) && !can_take_locked()) {
      if (opts_.elastic && threads_ > opts_.num_threads) {
        retire = true;  // the cap was lowered: surplus threads leave as they come idle
        break;
      }
      ++idle_;
      if (opts_.elastic) {
        const auto idle_for = std::chrono::duration<double>(opts_.idle_timeout_secs);
        retire = work_cv_.wait_for(lk, idle_for) == std::cv_status::timeout &&
                 !has_work_locked();
      } else {
        work_cv_.wait(lk);
      }
      --idle_;
      if (retire) break;
    }
    if (retire || should_exit_locked(gen)) break;
    if (opts_.elastic && threads_ > opts_.num_threads) break;  // over the lowered cap
    std::shared_ptr<task> t = pop_locked();
    if (!t) {  // only tombstones of tasks cancelled or claimed elsewhere
      after_run();
      continue;
    }
    ++active_;
    lk.unlock();

    // Run this task and, while the bracket is cheap to keep, the ones queued behind it.
    if (hooks_) hooks_->enter();
    const auto slice_end = clock::now() + batch_slice;
    for (;;) {
      t->run();
      t.reset();  // drop our reference inside the bracket, where releasing it is cheap
      if (opts_.gate) opts_.gate->after_run();
      if (clock::now() >= slice_end) break;
      lk.lock();
      if (!should_exit_locked(gen) && can_take_locked()) {
        t = pop_locked();
        if (!t) {
          lk.unlock();
          if (opts_.gate) opts_.gate->after_run();
          lk.lock();
        }
      }
      lk.unlock();
      if (!t) break;
    }
    if (hooks_) hooks_->leave();
    lk.lock();
    --active_;
  }
  if (gen == generation_) --threads_;
  lk.unlock();

  if (hooks_) hooks_->thread_exit();
  lk.lock();
  --all_threads_;
  // Notify under the lock: the destructor may free this executor as soon as it sees zero.
  if (all_threads_ == 0) exit_cv_.notify_all();
}

void executor::submit(std::shared_ptr<task> t, int64_t priority, bool autostart) {
  t->set_queue(this);
  std::unique_lock<std::mutex> lk(mu_);
  if (opts_.priority_order) {
    heap_.push_back(entry{priority, seq_++, std::move(t)});
    std::push_heap(heap_.begin(), heap_.end(), entry_order{});
  } else {
    fifo_.push_back(entry{priority, seq_++, std::move(t)});
  }
  queued_.fetch_add(1, std::memory_order_relaxed);

  if (!running_) {
    if (!autostart) return;
    running_ = true;
    for (size_t i = 0; i < opts_.num_threads; ++i) spawn_locked(lk);
    return;
  }
  const size_t waiting = opts_.priority_order ? heap_.size() : fifo_.size();
  if (idle_ > 0) {
    work_cv_.notify_one();
  }
  // Elastic: every queued task beyond the idle threads gets a thread of its own, up to the
  // cap; past the cap tasks wait for a thread to come free.
  if (opts_.elastic && waiting > idle_ && threads_ < opts_.num_threads) {
    try {
      spawn_locked(lk);
    } catch (...) {
      // Out of threads: the task stays queued for the threads that exist, if any.
      if (threads_ == 0) throw;
    }
  }
}

void executor::start(size_t num_threads) {
  std::unique_lock<std::mutex> lk(mu_);
  if (running_) return;  // idempotent: a running executor keeps its size
  if (num_threads != 0) opts_.num_threads = num_threads;
  running_ = true;
  for (size_t i = 0; i < opts_.num_threads; ++i) spawn_locked(lk);
}

void executor::stop(bool cancel_pending) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!opts_.elastic && running_) {
      running_ = false;
      ++generation_;  // current workers exit after their task; queued tasks stay
      threads_ = 0;
      work_cv_.notify_all();
    }
  }
  if (cancel_pending) cancel_queued();
}

void executor::reconfigure(size_t num_threads, size_t stack_size) {
  std::unique_lock<std::mutex> lk(mu_);
  opts_.num_threads = num_threads;
  opts_.stack_size = stack_size;
  if (opts_.elastic || !running_) return;
  // Old workers see the new generation, finish what they run, and exit; the queue is
  // shared, so queued tasks simply wait for the new workers.
  ++generation_;
  threads_ = 0;
  work_cv_.notify_all();
  for (size_t i = 0; i < num_threads; ++i) spawn_locked(lk);
}

void executor::set_elastic_limits(size_t max_threads, double idle_timeout_secs) {
  std::unique_lock<std::mutex> lk(mu_);
  opts_.num_threads = max_threads;
  opts_.idle_timeout_secs = idle_timeout_secs;
  work_cv_.notify_all();  // idle threads re-arm with the new timeout
  if (!opts_.elastic) return;
  // A raised cap must reach the tasks that queued at the old one: they may be the very
  // tasks that running ones wait for, and no further submission may come to spawn for them.
  const size_t waiting = opts_.priority_order ? heap_.size() : fifo_.size();
  try {
    for (size_t n = idle_; n < waiting && threads_ < opts_.num_threads; ++n) spawn_locked(lk);
  } catch (...) {
    // Out of threads: the tasks stay queued for the threads that exist, as in submit().
  }
}

bool executor::claim_if_alone(task& t) {
  std::lock_guard<std::mutex> lk(mu_);
  if (queued_.load(std::memory_order_relaxed) != 1 || t.queue_owner() != this) return false;
  // A cancel racing with us takes the queue back first (then we get null), or finds none.
  if (t.release_queue() == nullptr) return false;
  queued_.fetch_sub(1, std::memory_order_relaxed);
  return true;  // the heap entry is now a tombstone that pop_locked() skips
}

void executor::capacity_freed() {
  std::lock_guard<std::mutex> lk(mu_);
  if (idle_ > 0 && has_work_locked()) work_cv_.notify_one();
}

size_t executor::cancel_queued() {
  std::deque<entry> fifo;
  std::vector<entry> heap;
  {
    std::lock_guard<std::mutex> lk(mu_);
    fifo.swap(fifo_);
    heap.swap(heap_);
  }
  // Cancel outside the lock: cancel() runs the tasks' hooks.
  size_t n = 0;
  for (auto& e : fifo) n += e.t->cancel() ? 1 : 0;
  for (auto& e : heap) n += e.t->cancel() ? 1 : 0;
  return n;
}

executor_info executor::info() const {
  std::lock_guard<std::mutex> lk(mu_);
  return executor_info{opts_.num_threads,
                       threads_,
                       idle_,
                       active_,
                       queued_.load(std::memory_order_relaxed),
                       opts_.stack_size,
                       running_};
}

void executor::task_dropped(task&) noexcept { queued_.fetch_sub(1, std::memory_order_relaxed); }

void executor::task_waited(task&) {
  bool restart = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    restart = !running_ && !closing_;
  }
  if (restart) start();
}

}  // namespace mp

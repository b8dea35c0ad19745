// The runtime: the process-wide set of executors, the timer and the task accounting that
// the bindings submit into.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "makeparallel/executor.hpp"
#include "makeparallel/memory.hpp"
#include "makeparallel/task.hpp"
#include "makeparallel/timer.hpp"

namespace mp {

/// Which executor a task goes to.
enum class place : uint8_t { pool, cache, priority };

/// Thrown by submit once the runtime refuses new tasks.
struct shutdown_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Thrown by submit while the memory limit is exceeded.
struct memory_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Default cap on threads of the thread-per-task cache.
constexpr size_t default_cache_threads = 512;

/// Everything shared by the tasks of one process. Thread-safe.
class runtime {
 public:
  /// `hooks` (may be null) bracket task execution on every worker thread.
  explicit runtime(runner_hooks* hooks = nullptr);
  ~runtime();
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  /// Submits `t` to `where`. A positive `timeout_secs` settles it as timed out that long
  /// after submission. Throws shutdown_error after shutdown(), memory_error while the
  /// memory limit is exceeded.
  void submit(const std::shared_ptr<task>& t, place where, int64_t priority = 0,
              double timeout_secs = -1);
  /// Registers `t` (counted, timed) without queuing it; the caller queues it later with
  /// `enqueue` (used for tasks that wait on dependencies).
  void adopt(const std::shared_ptr<task>& t, double timeout_secs = -1);
  void enqueue(const std::shared_ptr<task>& t, place where, int64_t priority = 0);

  /// The executor for `where`, created on first use.
  executor& get(place where);
  /// Like get(), but null if it was never created.
  executor* peek(place where) const noexcept;

  /// Global pool: change size and stack size (applied at once if the pool exists).
  void configure_pool(size_t num_threads, size_t stack_size);
  size_t pool_threads() const noexcept { return pool_threads_.load(); }
  size_t pool_stack_size() const noexcept { return pool_stack_.load(); }
  bool pool_configured() const noexcept { return pool_configured_.load(); }

  /// Thread-per-task cache: change cap and idle timeout.
  void configure_cache(size_t max_threads, double idle_timeout_secs);
  size_t cache_max_threads() const noexcept { return cache_max_.load(); }
  double cache_idle_timeout() const noexcept { return cache_idle_.load(); }

  /// Priority workers: start (idempotent), stop.
  void start_priority(size_t num_workers);
  void stop_priority(bool cancel_pending);

  /// Refuses new submissions; cancels tasks not started yet if asked; requests cancellation
  /// of the running ones (they stop when their code returns).
  void begin_shutdown(bool cancel_pending);
  void reset_shutdown() noexcept { shut_down_.store(false); }
  bool is_shut_down() const noexcept { return shut_down_.load(); }
  /// Requests cancellation of every task whose code is running, and with `waiting_too` of
  /// every task not started yet (queued, or waiting for dependencies).
  void cancel_tasks(bool waiting_too);

  /// The unsettled task with this id, or null (a linear scan: for rare look-ups only).
  std::shared_ptr<task> find(uint64_t id) const;

  task_tracker& tracker() noexcept { return tracker_; }
  timer& timers() noexcept { return timer_; }
  memory_limit& memory() noexcept { return memory_; }

 private:
  void track(const std::shared_ptr<task>& t, double timeout_secs);

  runner_hooks* hooks_;
  task_tracker tracker_;
  timer timer_;
  memory_limit memory_;

  mutable std::mutex mu_;  // guards creation of the executors and the live-task list
  std::unique_ptr<executor> pool_, cache_, priority_;
  std::vector<std::weak_ptr<task>> live_;  // for cancel_all_running; pruned as it grows
  size_t live_prune_at_ = 1024;

  std::atomic<size_t> pool_threads_;
  std::atomic<size_t> pool_stack_{0};
  std::atomic<bool> pool_configured_{false};
  std::atomic<size_t> cache_max_{default_cache_threads};
  std::atomic<double> cache_idle_{10.0};
  std::atomic<size_t> priority_workers_{1};
  std::atomic<bool> shut_down_{false};
};

}  // namespace mp

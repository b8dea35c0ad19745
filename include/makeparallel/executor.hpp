// Executors: worker threads serving one queue of tasks.
//
// One class covers the three places that run tasks:
//  - a fixed pool (N threads, FIFO): the global pool;
//  - an elastic cache (threads spawned on demand up to a cap, idle ones retire): the
//    thread-per-task decorators;
//  - a priority executor (fixed threads that can be stopped and restarted, heap ordered by
//    priority then submission): the priority decorators.
// Idle workers sleep on a condition variable; nothing spins.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "makeparallel/task.hpp"

namespace mp {

/// Brackets the running of tasks on a worker thread. The Python binding takes the GIL in
/// `enter` and drops it in `leave`, once for a batch of consecutive tasks rather than once
/// per task. Hooks are called only from worker threads, never under an executor lock.
class runner_hooks {
 public:
  virtual ~runner_hooks() = default;
  /// Before running one or more tasks.
  virtual void enter() {}
  /// After the batch, before the worker may block.
  virtual void leave() {}
  /// The worker thread is about to exit (after `leave`).
  virtual void thread_exit() {}
};

/// Limits how many tasks run at once beyond an executor's thread count, possibly shared by
/// several executors (the process backend: one unit per worker process). A worker thread
/// takes a unit before it takes a task from the queue, so a task leaves the queue only when
/// it can start: queue order stays the start order. Whoever frees a unit must call
/// capacity_freed() on every executor that shares the gate.
class task_gate {
 public:
  virtual ~task_gate() = default;
  /// Takes a unit for the calling worker thread if one is free. Called under the executor's
  /// lock: must not block, nor call back into the executor.
  virtual bool try_take() = 0;
  /// After the task (if any) that followed try_take(): gives the unit back unless the task
  /// kept it. Called without the executor's lock.
  virtual void after_run() = 0;
};

/// How an executor runs its tasks.
struct executor_options {
  std::string name = "mp-worker";  ///< thread name prefix (at most 10 characters shown)
  size_t num_threads = 1;          ///< fixed: thread count; elastic: the cap
  bool elastic = false;            ///< spawn threads on demand and retire idle ones
  bool priority_order = false;     ///< heap by (priority desc, submission asc), else FIFO
  bool start_stopped = false;      ///< fixed executors: spawn nothing until start()
  size_t stack_size = 0;           ///< bytes per thread; 0 = platform default
  double idle_timeout_secs = 10.0;  ///< elastic: an idle thread retires after this long
  task_gate* gate = nullptr;       ///< fixed executors: bounds tasks running at once
};

/// A point-in-time view of an executor.
struct executor_info {
  size_t num_threads;     ///< configured count (fixed) or cap (elastic)
  size_t current_threads;  ///< threads alive in the current generation
  size_t idle_threads;    ///< threads waiting for work
  size_t active_tasks;    ///< tasks whose code is running on this executor
  size_t queued_tasks;    ///< tasks waiting in the queue (cancelled ones excluded)
  size_t stack_size;      ///< bytes per thread; 0 = platform default
  bool running;           ///< workers are started (always true for elastic)
};

/// Worker threads plus their queue. All methods are thread-safe.
class executor final : public task_queue_owner {
 public:
  explicit executor(executor_options opts, runner_hooks* hooks = nullptr);
  /// Stops the workers and waits for them to exit; queued tasks are cancelled.
  ~executor() override;
  executor(const executor&) = delete;
  executor& operator=(const executor&) = delete;

  /// Queues `t` (priority matters only for priority executors). Starts a stopped executor
  /// only if `autostart`. Throws std::system_error if no thread can be created at all.
  void submit(std::shared_ptr<task> t, int64_t priority = 0, bool autostart = true);

  /// Starts `num_threads` workers (0: the configured count) if stopped; no-op if running.
  void start(size_t num_threads = 0);
  /// Stops the workers: running tasks finish, queued ones stay (or are cancelled when
  /// `cancel_pending`). Does not wait for running tasks.
  void stop(bool cancel_pending);
  /// Changes thread count and stack size. Running tasks finish on their old threads, which
  /// then exit; queued tasks run on the new threads. Nothing is lost or run twice.
  void reconfigure(size_t num_threads, size_t stack_size);
  /// Elastic executors: changes the cap and the idle timeout.
  void set_elastic_limits(size_t max_threads, double idle_timeout_secs);
  /// Takes `t` out of this queue for the caller to run on its own thread, if `t` is queued
  /// here and is the only queued task (so running it first overtakes nobody). True: the
  /// caller owns the start of `t` and must call t.run().
  bool claim_if_alone(task& t);
  /// Tells the workers that the gate has a free unit again.
  void capacity_freed();
  /// Cancels every queued task; returns how many were cancelled.
  size_t cancel_queued();

  executor_info info() const;

  void task_dropped(task& t) noexcept override;
  void task_waited(task& t) override;

 private:
  struct entry {
    int64_t priority;
    uint64_t seq;
    std::shared_ptr<task> t;
  };
  struct entry_order {
    bool operator()(const entry& a, const entry& b) const noexcept {
      return a.priority != b.priority ? a.priority < b.priority : a.seq > b.seq;
    }
  };

  void spawn_locked(std::unique_lock<std::mutex>& lk);
  void worker_main(uint64_t generation);
  std::shared_ptr<task> pop_locked();
  bool has_work_locked() const noexcept;
  /// Work to take now: queued tasks, and a unit of the gate (taken) if there is one.
  bool can_take_locked();
  bool should_exit_locked(uint64_t generation) const noexcept;

  executor_options opts_;
  runner_hooks* hooks_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;   // workers wait here for tasks
  std::condition_variable exit_cv_;   // the destructor waits here for workers to exit
  std::deque<entry> fifo_;
  std::vector<entry> heap_;
  uint64_t seq_ = 0;
  uint64_t generation_ = 0;
  size_t threads_ = 0;        // alive in the current generation
  size_t all_threads_ = 0;    // alive in any generation
  size_t idle_ = 0;
  size_t active_ = 0;
  bool running_ = false;
  bool closing_ = false;
  std::atomic<size_t> queued_{0};
};

}  // namespace mp

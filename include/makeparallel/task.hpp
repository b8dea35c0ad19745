// A task: one unit of work owned by the core from submission until it ends.
//
// A task has two independent pieces of state packed into one atomic word:
//  - its *outcome* (none, done, failed, cancelled, timed_out), settled once by whoever gets
//    there first: the code finishing, a cancel, or a timeout;
//  - its *phase*: waiting (queued or not yet queued), running, finished (code returned), or
//    dropped (settled before it started, so it will never run).
// A cancelled task can thus be settled while its code still runs; the result it produces
// later is discarded. Waiters sleep on the word itself (futex), so a task costs no mutex
// or condition variable, and a waiting thread can be interrupted by a signal.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "makeparallel/sync.hpp"

namespace mp {

class metrics_entry;
class task;

/// How a task's outcome was settled; `none` while still open.
enum class outcome : uint8_t { none = 0, done, failed, cancelled, timed_out };

/// Where the task's code is.
enum class phase : uint8_t { waiting = 0, running, finished, dropped };

/// The public status, combining outcome and phase as users see it.
enum class status : uint8_t { pending, running, done, failed, cancelled, timed_out };

/// The queue a task waits in; told when a queued task is dropped or waited for.
class task_queue_owner {
 public:
  virtual ~task_queue_owner() = default;
  /// A queued task was settled before it started. Called once, on the settling thread.
  virtual void task_dropped(task& t) noexcept = 0;
  /// Someone is about to block on a queued task (the priority queue restarts its
  /// stopped workers here so that the wait cannot hang).
  virtual void task_waited(task&) {}
};

/// Counts live tasks for the runtime, and optionally limits how many are in flight at once.
/// Thread-safe, lock-free.
class task_tracker {
 public:
  /// Tasks submitted whose outcome is not settled yet, or whose settle hooks still run.
  uint32_t unsettled() const noexcept { return unsettled_.load(std::memory_order_acquire); }
  /// Tasks submitted whose code has neither finished nor been dropped.
  uint32_t live() const noexcept { return live_.load(std::memory_order_acquire); }

  /// Blocks until no task is unsettled (or, with `only_running`, until no task code runs).
  wait_status wait_idle(bool only_running, const std::optional<clock::time_point>& deadline,
                        bool interruptible);

  /// At most `n` tasks in flight (live: from submission until their code stops or they are
  /// dropped), counting those submitted before the limit was set; 0 removes the limit.
  /// Wakes blocked admissions to re-check.
  void set_limit(uint32_t n) noexcept;
  uint32_t limit() const noexcept { return limit_.load(std::memory_order_acquire); }
  /// Takes a slot (reserves one live task), blocking while the limit is reached. On `ready`
  /// the caller owns it and must hand it to a task with task::set_admitted() before
  /// attaching it (or give it back with release_slot()).
  wait_status admit(const std::optional<clock::time_point>& deadline, bool interruptible);
  void release_slot() noexcept;

 private:
  friend class task;
  void add(bool reserved) noexcept;
  void settled() noexcept;
  void stopped() noexcept;
  static void decrement(std::atomic<uint32_t>& counter, std::atomic<uint32_t>& waiters) noexcept;
  void wake_admissions() noexcept;

  std::atomic<uint32_t> unsettled_{0};
  std::atomic<uint32_t> live_{0};
  std::atomic<uint32_t> unsettled_waiters_{0};
  std::atomic<uint32_t> live_waiters_{0};
  std::atomic<uint32_t> limit_{0};
  std::atomic<uint32_t> admit_waiters_{0};
  // Blocked admissions sleep on this word, bumped whenever the limit changes or a slot is
  // given back: sleeping on the count alone would miss a raised limit (the count stays).
  std::atomic<uint32_t> admit_epoch_{0};
};

/// A unit of work. Subclasses implement `execute()`; the rest is shared. Thread-safe.
class task {
 public:
  task() noexcept;
  virtual ~task() = default;
  task(const task&) = delete;
  task& operator=(const task&) = delete;

  /// Unique id, increasing in submission order.
  uint64_t id() const noexcept { return id_; }

  outcome get_outcome() const noexcept {
    return outcome_of(state_.load(std::memory_order_acquire));
  }
  phase get_phase() const noexcept { return phase_of(state_.load(std::memory_order_acquire)); }
  status get_status() const noexcept;
  /// True once the outcome is settled (result, error, cancelled or timed out).
  bool settled() const noexcept { return get_outcome() != outcome::none; }
  /// True while the task's code executes, also after a cancel settled its outcome.
  bool running() const noexcept { return get_phase() == phase::running; }
  /// True once cancellation was requested (by cancel or by the timeout).
  bool cancel_requested() const noexcept;

  /// Requests cancellation and settles the outcome as `as` (cancelled or timed_out) unless
  /// it was settled already. A task that had not started is dropped and never runs.
  /// Returns true if this call settled the outcome.
  bool cancel(outcome as = outcome::cancelled);

  /// Settles a task that has not started as `o` without running it (e.g. failed because a
  /// task it depends on failed). Unlike cancel(), does not request cancellation. Returns
  /// false if the task had started or was settled already.
  bool abandon(outcome o);

  /// Tells the task's queue that someone waits for it (a stopped priority executor restarts),
  /// as wait() does; for waits that go through on_settled() hooks instead.
  void note_waited();

  /// Blocks until the outcome is settled.
  wait_status wait(const std::optional<clock::time_point>& deadline, bool interruptible = false);
  /// Blocks until the outcome is settled and the code is not running.
  wait_status wait_stopped(const std::optional<clock::time_point>& deadline,
                           bool interruptible = false);

  /// Seconds from submission until the outcome settled (or until now while open).
  double elapsed_seconds() const noexcept;
  /// Nanoseconds (on `clock`) when the task was submitted; 0 before submission.
  uint64_t submit_ns() const noexcept { return submit_ns_; }

  /// Runs `fn(*this)` once the outcome settles, on the thread that settles it, or right now
  /// on this thread if it is settled already. Hooks never run under a core lock.
  void on_settled(std::function<void(task&)> fn);

  /// Runs the task's code on the calling thread unless it was dropped. Executors call this.
  void run();

  /// The task running on this thread, if any.
  static task* current() noexcept;

  /// Marks the task submitted now and counted by `tracker` (may be null).
  void attach(task_tracker* tracker) noexcept;
  /// The entry that records the task's execution time (may be null). Set before submission.
  void set_metrics(metrics_entry* m) noexcept { metrics_ = m; }
  /// Records the queue now holding the task (null once a worker took it out).
  void set_queue(task_queue_owner* owner) noexcept {
    queue_.store(owner, std::memory_order_release);
  }
  /// Takes the task out of its queue's books. Exactly one caller, the worker that pops it or
  /// the cancel that drops it, gets the queue back; the other gets null.
  task_queue_owner* release_queue() noexcept {
    return queue_.exchange(nullptr, std::memory_order_acq_rel);
  }
  /// The queue holding the task, or null.
  task_queue_owner* queue_owner() const noexcept {
    return queue_.load(std::memory_order_acquire);
  }
  metrics_entry* metrics() const noexcept { return metrics_; }
  /// The task owns an admission slot of its tracker, given back when its code stops.
  void set_admitted() noexcept { admitted_ = true; }
  bool admitted() const noexcept { return admitted_; }

 protected:
  /// A name for the task in traces; called only while a trace recorder is installed, from
  /// the thread that calls complete().
  virtual std::string label() const { return {}; }

  /// Runs the code. Must end by calling `complete()` exactly once, after storing any result,
  /// or by handing the task over (see hand_over) to a thread that will.
  virtual void execute() = 0;
  /// Called by execute() before it returns with the code still running elsewhere, once it
  /// passed the duty to call complete() to another thread (whose start it must follow).
  void hand_over() noexcept { handed_over_ = true; }

  /// Reports that the code finished with `o` (done, failed, or cancelled when the code
  /// stopped because cancellation was requested). Records metrics, then settles the outcome
  /// unless a cancel or timeout settled it first. Returns true if `o` became the outcome;
  /// false means the caller must discard its result.
  bool complete(outcome o);
  /// Like complete(o), but records `exec_ns` as the execution time rather than the time
  /// spent in execute(): for code that ran elsewhere (a worker process) and timed itself.
  bool complete(outcome o, uint64_t exec_ns);

 private:
  static constexpr uint32_t outcome_mask = 0x7;
  static constexpr uint32_t phase_shift = 3;
  static constexpr uint32_t phase_mask = 0x3u << phase_shift;
  static constexpr uint32_t cancel_bit = 1u << 5;
  static constexpr uint32_t waiters_bit = 1u << 6;

  static outcome outcome_of(uint32_t s) noexcept { return static_cast<outcome>(s & outcome_mask); }
  static phase phase_of(uint32_t s) noexcept {
    return static_cast<phase>((s & phase_mask) >> phase_shift);
  }
  static uint32_t with_phase(uint32_t s, phase p) noexcept {
    return (s & ~phase_mask) | (static_cast<uint32_t>(p) << phase_shift);
  }

  template <class Ready>
  wait_status wait_for(Ready ready, const std::optional<clock::time_point>& deadline,
                       bool interruptible);
  /// Stores `next` if the word still holds `expected` and wakes waiters when needed.
  bool transition(uint32_t& expected, uint32_t next) noexcept;
  /// Records `ns` as the settle time unless a settler recorded one already. Called before
  /// the transition that settles the outcome, so that whoever sees the task settled also
  /// sees its final elapsed time; a settler that loses the race leaves a time within the
  /// race, which is as good.
  void claim_settle_time(uint64_t ns) noexcept;
  // Not noexcept, like every path that runs hooks: a hook may block on the interpreter's
  // lock, and an exiting interpreter ends such threads with a forced unwind, which must be
  // able to pass through (a noexcept frame would turn it into std::terminate).
  void after_settle();
  /// Settles an unstarted (waiting) task as `o`, dropping it; `request_cancel` also sets the
  /// cancellation flag. With `only_unstarted` a running task is left alone.
  bool settle_early(outcome o, bool request_cancel, bool only_unstarted);
  void code_stopped() noexcept;

  std::atomic<uint32_t> state_{0};
  uint64_t id_;
  uint64_t submit_ns_ = 0;
  uint64_t start_ns_ = 0;
  std::atomic<uint64_t> settle_ns_{0};
  task_tracker* tracker_ = nullptr;
  std::atomic<task_queue_owner*> queue_{nullptr};
  metrics_entry* metrics_ = nullptr;
  bool handed_over_ = false;  // written and read only by the thread inside run()
  bool admitted_ = false;

  std::mutex hooks_mu_;
  bool hooks_done_ = false;
  std::vector<std::function<void(task&)>> hooks_;
};

/// A task whose code is a C++ callable returning the outcome. Used by core tests and by
/// the binding for internal work.
class function_task final : public task {
 public:
  explicit function_task(std::function<outcome()> fn) : fn_(std::move(fn)) {}

 protected:
  void execute() override { complete(fn_()); }

 private:
  std::function<outcome()> fn_;
};

}  // namespace mp

// One timer thread serves every task timeout: a min-heap of deadlines.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "makeparallel/task.hpp"

namespace mp {

/// Settles tasks as timed out when their deadline passes. Thread-safe.
class timer {
 public:
  timer() = default;
  /// Stops the timer thread and waits for it.
  ~timer();
  timer(const timer&) = delete;
  timer& operator=(const timer&) = delete;

  /// Times `t` out at `deadline` unless it settles first. The timer holds only a weak
  /// reference, so a finished task is freed without waiting for its deadline.
  void schedule(clock::time_point deadline, const std::shared_ptr<task>& t);

  /// Deadlines not yet reached (including those of tasks that already settled).
  size_t pending() const;

 private:
  struct entry {
    clock::time_point deadline;
    std::weak_ptr<task> t;
  };
  struct later {
    bool operator()(const entry& a, const entry& b) const noexcept {
      return a.deadline > b.deadline;
    }
  };
  void run();
  void compact_locked();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<entry> heap_;
  size_t compact_at_ = 1024;
  bool started_ = false;
  bool stopping_ = false;
  bool exited_ = false;
};

}  // namespace mp

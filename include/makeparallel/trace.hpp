// A timeline of task executions for people to look at: when each task was submitted,
// started and finished, and on which thread. Off unless a recorder is installed; then each
// finished task appends one event under a mutex (tracing is a diagnostic, not a hot path).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace mp {

/// One task execution. Times in nanoseconds on mp::clock.
struct trace_event {
  uint64_t task_id;
  std::string name;     ///< the task's label (function name in the binding)
  uint64_t submit_ns;
  uint64_t start_ns;
  uint64_t end_ns;
  int thread_id;        ///< kernel thread id of the worker
  uint8_t outcome;      ///< mp::outcome the code finished with
};

/// Collects events while installed. Thread-safe.
class trace_recorder {
 public:
  void add(trace_event e);
  /// Events so far, and the name of every thread that appears in them.
  std::vector<trace_event> events() const;
  /// Moves the events out, leaving the recorder empty.
  std::vector<trace_event> take();
  std::unordered_map<int, std::string> thread_names() const;

  /// Installs `r` as the process's recorder (null removes it). Returns the previous one.
  static trace_recorder* install(trace_recorder* r) noexcept;
  /// The installed recorder, or null: one relaxed atomic load when tracing is off.
  static trace_recorder* active() noexcept;

 private:
  mutable std::mutex mu_;
  std::vector<trace_event> events_;
  std::unordered_map<int, std::string> thread_names_;
};

}  // namespace mp

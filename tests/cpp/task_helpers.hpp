// Small helpers shared by the core's tests: tasks from lambdas, deadlines, bulk waits.
#pragma once

#include <chrono>
#include <functional>
#include <latch>
#include <memory>
#include <optional>
#include <vector>

#include "makeparallel/task.hpp"

namespace mptest {

/// A task that runs `fn` and reports done.
inline std::shared_ptr<mp::function_task> make_task(std::function<void()> fn) {
  return std::make_shared<mp::function_task>([fn = std::move(fn)] {
    fn();
    return mp::outcome::done;
  });
}

/// The deadline `d` from now.
inline std::optional<mp::clock::time_point> in(mp::clock::duration d) {
  return mp::clock::now() + d;
}

/// Waits for every task to settle; true if all did within 30 s.
inline bool wait_all(const std::vector<std::shared_ptr<mp::function_task>>& tasks) {
  const auto deadline = in(std::chrono::seconds(30));
  for (const auto& t : tasks) {
    if (t->wait(deadline) != mp::wait_status::ready) return false;
  }
  return true;
}

/// A task that holds the worker running it: `started` opens when it runs, and it returns
/// once `release` is counted down. Keep it alive until the task has finished.
struct held_worker {
  std::latch started{1};
  std::latch release{1};
  std::shared_ptr<mp::function_task> task = make_task([this] {
    started.count_down();
    release.wait();
  });
};

}  // namespace mptest

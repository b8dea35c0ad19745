// Small helpers shared by the core's tests: tasks from lambdas, deadlines, bulk waits.
#pragma once

#include <chrono>
#include <functional>
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

}  // namespace mptest

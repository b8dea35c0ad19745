#include "makeparallel/trace.hpp"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <utility>

namespace mp {
namespace {
std::atomic<trace_recorder*> installed{nullptr};
}  // namespace

trace_recorder* trace_recorder::install(trace_recorder* r) noexcept {
  return installed.exchange(r, std::memory_order_acq_rel);
}

trace_recorder* trace_recorder::active() noexcept {
  return installed.load(std::memory_order_acquire);
}

void trace_recorder::add(trace_event e) {
  char name[32] = {};
  if (pthread_getname_np(pthread_self(), name, sizeof name) != 0) name[0] = '\0';
  std::lock_guard<std::mutex> lk(mu_);
  thread_names_.try_emplace(e.thread_id, name);
  events_.push_back(std::move(e));
}

std::vector<trace_event> trace_recorder::events() const {
  std::lock_guard<std::mutex> lk(mu_);
  return events_;
}

std::vector<trace_event> trace_recorder::take() {
  std::lock_guard<std::mutex> lk(mu_);
  return std::exchange(events_, {});
}

std::unordered_map<int, std::string> trace_recorder::thread_names() const {
  std::lock_guard<std::mutex> lk(mu_);
  return thread_names_;
}

}  // namespace mp

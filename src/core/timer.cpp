#include "makeparallel/timer.hpp"

#include <algorithm>

#include "makeparallel/os_thread.hpp"

namespace mp {

timer::~timer() {
  std::unique_lock<std::mutex> lk(mu_);
  stopping_ = true;
  cv_.notify_all();
  if (started_) cv_.wait(lk, [this] { return exited_; });
}

void timer::schedule(clock::time_point deadline, const std::shared_ptr<task>& t) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!started_) {
    start_thread("mp-timer", 0, [this] { run(); });
    started_ = true;
  }
  const bool earliest = heap_.empty() || deadline < heap_.front().deadline;
  heap_.push_back(entry{deadline, t});
  std::push_heap(heap_.begin(), heap_.end(), later{});
  if (heap_.size() >= compact_at_) compact_locked();
  if (earliest) cv_.notify_one();
}

size_t timer::pending() const {
  std::lock_guard<std::mutex> lk(mu_);
  return heap_.size();
}

void timer::compact_locked() {
  // Entries of tasks that already settled are dead weight until their deadline; drop them
  // when the heap has doubled, which keeps the cost amortised O(1) per schedule.
  auto dead = [](const entry& e) {
    auto t = e.t.lock();
    return !t || t->settled();
  };
  heap_.erase(std::remove_if(heap_.begin(), heap_.end(), dead), heap_.end());
  std::make_heap(heap_.begin(), heap_.end(), later{});
  compact_at_ = std::max<size_t>(1024, heap_.size() * 2);
}

void timer::run() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stopping_) {
    if (heap_.empty()) {
      cv_.wait(lk);
      continue;
    }
    const auto deadline = heap_.front().deadline;
    if (clock::now() < deadline) {
      cv_.wait_until(lk, deadline);
      continue;
    }
    std::pop_heap(heap_.begin(), heap_.end(), later{});
    std::weak_ptr<task> w = std::move(heap_.back().t);
    heap_.pop_back();
    lk.unlock();
    // Outside the lock: settling runs the task's hooks, and the last reference may drop here.
    if (auto t = w.lock()) t->cancel(outcome::timed_out);
    lk.lock();
  }
  exited_ = true;
  cv_.notify_all();
}

}  // namespace mp

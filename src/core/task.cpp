#include "makeparallel/task.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <ctime>

#include "makeparallel/metrics.hpp"
#include "makeparallel/trace.hpp"

namespace mp {

std::optional<clock::time_point> deadline_after(double seconds) noexcept {
  if (!(seconds >= 0)) return std::nullopt;
  // Clamp to about a century so that the conversion cannot overflow.
  const double capped = std::fmin(seconds, 3.0e9);
  return clock::now() +
         std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(capped));
}

namespace detail {

wait_status futex_wait(std::atomic<uint32_t>& word, uint32_t expected,
                       const std::optional<clock::time_point>& deadline) noexcept {
  timespec ts{};
  timespec* timeout = nullptr;
  if (deadline) {
    const auto left = *deadline - clock::now();
    if (left <= clock::duration::zero()) return wait_status::timed_out;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    ts.tv_sec = static_cast<time_t>(ns / 1000000000);
    ts.tv_nsec = static_cast<long>(ns % 1000000000);
    timeout = &ts;
  }
  // std::atomic<uint32_t> is lock-free and has the layout of uint32_t on Linux.
  const long r = syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE,
                         expected, timeout, nullptr, 0);
  if (r == 0) return wait_status::ready;
  if (errno == EINTR) return wait_status::interrupted;
  if (errno == ETIMEDOUT) return wait_status::timed_out;
  return wait_status::ready;  // EAGAIN: the word changed before we slept
}

void futex_wake_all(std::atomic<uint32_t>& word) noexcept {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

}  // namespace detail

// ---- task_tracker

void task_tracker::add(bool reserved) noexcept {
  unsettled_.fetch_add(1, std::memory_order_relaxed);
  if (!reserved) live_.fetch_add(1, std::memory_order_relaxed);  // admit() counted it already
}

void task_tracker::decrement(std::atomic<uint32_t>& counter,
                             std::atomic<uint32_t>& waiters) noexcept {
  // seq_cst pairs with wait_idle: either the waiter sees the new count, or we see it waiting.
  if (counter.fetch_sub(1) == 1 && waiters.load() != 0) detail::futex_wake_all(counter);
}

void task_tracker::settled() noexcept { decrement(unsettled_, unsettled_waiters_); }
void task_tracker::stopped() noexcept {
  decrement(live_, live_waiters_);
  if (admit_waiters_.load() != 0) wake_admissions();
}

wait_status task_tracker::wait_idle(bool only_running,
                                    const std::optional<clock::time_point>& deadline,
                                    bool interruptible) {
  auto& counter = only_running ? live_ : unsettled_;
  auto& waiters = only_running ? live_waiters_ : unsettled_waiters_;
  waiters.fetch_add(1);
  wait_status result = wait_status::ready;
  for (;;) {
    const uint32_t n = counter.load();
    if (n == 0) break;
    const wait_status w = detail::futex_wait(counter, n, deadline);
    if (w == wait_status::timed_out || (w == wait_status::interrupted && interruptible)) {
      result = counter.load() == 0 ? wait_status::ready : w;
      break;
    }
  }
  waiters.fetch_sub(1);
  return result;
}

void task_tracker::set_limit(uint32_t n) noexcept {
  limit_.store(n);
  wake_admissions();
}

void task_tracker::wake_admissions() noexcept {
  // The epoch changes before the wake, so an admission that read the old limit or count
  // cannot go to sleep on a word that still matches: its futex_wait fails at once.
  admit_epoch_.fetch_add(1);
  if (admit_waiters_.load() != 0) detail::futex_wake_all(admit_epoch_);
}

wait_status task_tracker::admit(const std::optional<clock::time_point>& deadline,
                                bool interruptible) {
  for (;;) {
    // Read the epoch first: a new limit or a slot given back after this bumps it.
    const uint32_t epoch = admit_epoch_.load();
    // The slot is a reservation in the live count itself, so tasks that were already in
    // flight when the limit was set count against it too.
    uint32_t in_flight = live_.load();
    const uint32_t cap = limit_.load();
    if (cap == 0 || in_flight < cap) {
      if (live_.compare_exchange_weak(in_flight, in_flight + 1)) return wait_status::ready;
      continue;
    }
    // seq_cst on both sides: either wake_admissions() sees us waiting, or we see its epoch.
    admit_waiters_.fetch_add(1);
    const wait_status w = detail::futex_wait(admit_epoch_, epoch, deadline);
    admit_waiters_.fetch_sub(1);
    if (w == wait_status::timed_out) return w;
    if (w == wait_status::interrupted && interruptible) return w;
  }
}

void task_tracker::release_slot() noexcept { stopped(); }

// ---- task

namespace {
std::atomic<uint64_t> next_task_id{1};
thread_local task* current_task = nullptr;
}  // namespace

task::task() noexcept : id_(next_task_id.fetch_add(1, std::memory_order_relaxed)) {}

task* task::current() noexcept { return current_task; }

void task::attach(task_tracker* tracker) noexcept {
  tracker_ = tracker;
  submit_ns_ = now_ns();
  if (tracker_) tracker_->add(admitted_);
}

status task::get_status() const noexcept {
  const uint32_t s = state_.load(std::memory_order_acquire);
  switch (outcome_of(s)) {
    case outcome::done: return status::done;
    case outcome::failed: return status::failed;
    case outcome::cancelled: return status::cancelled;
    case outcome::timed_out: return status::timed_out;
    case outcome::none: break;
  }
  return phase_of(s) == phase::running ? status::running : status::pending;
}

bool task::cancel_requested() const noexcept {
  return (state_.load(std::memory_order_acquire) & cancel_bit) != 0;
}

bool task::transition(uint32_t& expected, uint32_t next) noexcept {
  // Waiters set waiters_bit before sleeping; every change clears it and wakes them, and they
  // set it again if they still have to wait. So no wake-up is lost and none is wasted.
  if (!state_.compare_exchange_weak(expected, next & ~waiters_bit, std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
    return false;
  }
  if (expected & waiters_bit) detail::futex_wake_all(state_);
  return true;
}

bool task::cancel(outcome as) { return settle_early(as, true, false); }

bool task::abandon(outcome o) { return settle_early(o, false, true); }

bool task::settle_early(outcome o, bool request_cancel, bool only_unstarted) {
  uint32_t s = state_.load(std::memory_order_acquire);
  for (;;) {
    if (outcome_of(s) != outcome::none) return false;  // too late: the outcome stands
    const bool drop = phase_of(s) == phase::waiting;
    if (only_unstarted && !drop) return false;
    uint32_t next = (s & ~outcome_mask) | static_cast<uint32_t>(o);
    if (request_cancel) next |= cancel_bit;
    if (drop) next = with_phase(next, phase::dropped);
    claim_settle_time(now_ns());
    if (transition(s, next)) {
      if (drop) {
        if (auto* q = release_queue()) q->task_dropped(*this);
        code_stopped();
      }
      after_settle();
      return true;
    }
  }
}

void task::code_stopped() noexcept {
  if (tracker_) tracker_->stopped();  // also frees the admission slot, if it had one
}

bool task::complete(outcome o) { return complete(o, now_ns() - start_ns_); }

bool task::complete(outcome o, uint64_t exec_ns) {
  const uint64_t end = now_ns();
  if (metrics_) metrics_->record(exec_ns, start_ns_ - submit_ns_, o == outcome::done);
  if (trace_recorder* r = trace_recorder::active()) {
    r->add(trace_event{id_, label(), submit_ns_, start_ns_, end,
                       static_cast<int>(syscall(SYS_gettid)), static_cast<uint8_t>(o)});
  }
  uint32_t s = state_.load(std::memory_order_acquire);
  bool published = false;
  for (;;) {
    published = outcome_of(s) == outcome::none;
    uint32_t next = with_phase(s, phase::finished);
    if (published) {
      next = (next & ~outcome_mask) | static_cast<uint32_t>(o);
      claim_settle_time(end);
    }
    if (transition(s, next)) break;
  }
  if (published) after_settle();
  code_stopped();
  return published;
}

void task::claim_settle_time(uint64_t ns) noexcept {
  // Only the first claim counts, so the time never changes once a reader has seen it.
  uint64_t unset = 0;
  settle_ns_.compare_exchange_strong(unset, ns, std::memory_order_release,
                                     std::memory_order_relaxed);
}

void task::after_settle() {
  std::vector<std::function<void(task&)>> hooks;
  {
    std::lock_guard<std::mutex> lk(hooks_mu_);
    hooks_done_ = true;
    hooks.swap(hooks_);
  }
  for (auto& h : hooks) h(*this);
  // Counted as settled only once its hooks ran, so that waiting for every task to settle
  // (interpreter exit) also waits for their completion callbacks.
  if (tracker_) tracker_->settled();
}

void task::on_settled(std::function<void(task&)> fn) {
  {
    std::lock_guard<std::mutex> lk(hooks_mu_);
    // Settled but its hooks not taken yet (the settling thread is on its way to
    // after_settle): this one runs here and now all the same, as promised.
    if (!hooks_done_ && !settled()) {
      hooks_.push_back(std::move(fn));
      return;
    }
  }
  fn(*this);
}

void task::run() {
  uint32_t s = state_.load(std::memory_order_acquire);
  do {
    if (phase_of(s) != phase::waiting) return;  // dropped: settled before it could start
  } while (!transition(s, with_phase(s, phase::running)));

  start_ns_ = now_ns();
  task* const outer = current_task;
  current_task = this;
  // No RAII guard here on purpose: if the interpreter ends this thread with a forced unwind
  // while the code is blocked, nothing of ours must run on the way out.
  execute();
  current_task = outer;
  // A task handed over may be finished by its new owner already: leave it alone.
  if (handed_over_) return;
  if (get_phase() == phase::running) complete(outcome::failed);  // execute() broke its promise
}

void task::note_waited() {
  if (get_phase() != phase::waiting) return;
  if (auto* q = queue_.load(std::memory_order_acquire)) q->task_waited(*this);
}

template <class Ready>
wait_status task::wait_for(Ready ready, const std::optional<clock::time_point>& deadline,
                           bool interruptible) {
  uint32_t s = state_.load(std::memory_order_acquire);
  if (ready(s)) return wait_status::ready;
  if (phase_of(s) == phase::waiting) note_waited();
  for (;;) {
    s = state_.load(std::memory_order_acquire);
    if (ready(s)) return wait_status::ready;
    if (!(s & waiters_bit)) {
      if (!state_.compare_exchange_weak(s, s | waiters_bit, std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
        continue;
      }
      s |= waiters_bit;
    }
    const wait_status w = detail::futex_wait(state_, s, deadline);
    if (w == wait_status::timed_out || (w == wait_status::interrupted && interruptible)) {
      return ready(state_.load(std::memory_order_acquire)) ? wait_status::ready : w;
    }
  }
}

wait_status task::wait(const std::optional<clock::time_point>& deadline, bool interruptible) {
  return wait_for([](uint32_t s) { return outcome_of(s) != outcome::none; }, deadline,
                  interruptible);
}

wait_status task::wait_stopped(const std::optional<clock::time_point>& deadline,
                               bool interruptible) {
  return wait_for(
      [](uint32_t s) {
        return outcome_of(s) != outcome::none && phase_of(s) != phase::running;
      },
      deadline, interruptible);
}

double task::elapsed_seconds() const noexcept {
  if (submit_ns_ == 0) return 0.0;
  uint64_t end = settle_ns_.load(std::memory_order_acquire);
  if (end == 0) end = now_ns();
  return static_cast<double>(end - submit_ns_) * 1e-9;
}

}  // namespace mp

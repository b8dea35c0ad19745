// Tests of mp::task: the settle/wait state machine, hooks, timing and the tracker.
#include <atomic>
#include <chrono>
#include <functional>
#include <latch>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "check.hpp"
#include "task_helpers.hpp"
#include "makeparallel/task.hpp"

namespace {

using namespace std::chrono_literals;
using mptest::in;
using mp::outcome;
using mp::phase;
using mp::status;
using mp::wait_status;

/// A task whose code is a callable and that remembers what complete() answered, so tests
/// can see whether its result was kept or discarded.
class probe_task final : public mp::task {
 public:
  explicit probe_task(std::function<outcome(probe_task&)> fn) : fn_(std::move(fn)) {}
  /// -1 before the code finished, else 1 if complete() published the outcome, 0 if not.
  std::atomic<int> published{-1};
  /// Makes execute() return without calling complete(), breaking the contract.
  bool skip_complete = false;

 protected:
  void execute() override {
    const outcome o = fn_(*this);
    if (!skip_complete) published.store(complete(o) ? 1 : 0);
  }

 private:
  std::function<outcome(probe_task&)> fn_;
};

/// A deadline `d` from now.
double seconds_since(mp::clock::time_point start) {
  return std::chrono::duration<double>(mp::clock::now() - start).count();
}

}  // namespace

TEST_CASE(status_goes_pending_running_done) {
  std::latch started(1), release(1);
  auto t = std::make_shared<mp::function_task>([&] {
    started.count_down();
    release.wait();
    return outcome::done;
  });
  CHECK_EQ(t->get_status(), status::pending);
  CHECK_EQ(t->get_phase(), phase::waiting);
  CHECK(!t->settled());
  CHECK(!t->running());

  std::thread runner([&] { t->run(); });
  started.wait();
  CHECK_EQ(t->get_status(), status::running);
  CHECK(t->running());
  CHECK(!t->settled());
  release.count_down();
  runner.join();

  CHECK_EQ(t->get_status(), status::done);
  CHECK_EQ(t->get_outcome(), outcome::done);
  CHECK_EQ(t->get_phase(), phase::finished);
  CHECK(!t->running());
  CHECK(!t->cancel_requested());
}

TEST_CASE(code_reporting_failure_settles_failed) {
  mp::function_task t([] { return outcome::failed; });
  t.run();
  CHECK_EQ(t.get_status(), status::failed);
  CHECK_EQ(t.get_phase(), phase::finished);
}

TEST_CASE(code_that_never_calls_complete_settles_failed) {
  probe_task t([](probe_task&) { return outcome::done; });
  t.skip_complete = true;
  t.run();
  CHECK_EQ(t.get_status(), status::failed);
  CHECK_EQ(t.get_phase(), phase::finished);
  CHECK_EQ(t.wait(in(1s)), wait_status::ready);
}

TEST_CASE(ids_increase_in_creation_order) {
  mp::function_task a([] { return outcome::done; });
  mp::function_task b([] { return outcome::done; });
  CHECK(a.id() < b.id());
}

TEST_CASE(current_is_the_running_task_and_restored_after_nesting) {
  CHECK(mp::task::current() == nullptr);
  mp::task* seen_inner = nullptr;
  mp::task* seen_outer_after = nullptr;
  mp::function_task inner([&] {
    seen_inner = mp::task::current();
    return outcome::done;
  });
  mp::function_task outer([&] {
    inner.run();
    seen_outer_after = mp::task::current();
    return outcome::done;
  });
  outer.run();
  CHECK(seen_inner == &inner);
  CHECK(seen_outer_after == &outer);
  CHECK(mp::task::current() == nullptr);
}

TEST_CASE(cancel_before_start_drops_task_and_returns_true_once) {
  std::atomic<int> ran{0};
  mp::function_task t([&] {
    ran.fetch_add(1);
    return outcome::done;
  });
  CHECK(t.cancel());
  CHECK(!t.cancel());
  CHECK(!t.cancel(outcome::timed_out));
  CHECK_EQ(t.get_status(), status::cancelled);
  CHECK_EQ(t.get_phase(), phase::dropped);
  CHECK(t.cancel_requested());

  t.run();
  CHECK_EQ(ran.load(), 0);
  CHECK_EQ(t.get_status(), status::cancelled);
  CHECK_EQ(t.get_phase(), phase::dropped);
  CHECK_EQ(t.wait(std::nullopt), wait_status::ready);
  CHECK_EQ(t.wait_stopped(std::nullopt), wait_status::ready);
}

TEST_CASE(cancel_as_timed_out_before_start_settles_timed_out) {
  mp::function_task t([] { return outcome::done; });
  CHECK(t.cancel(outcome::timed_out));
  CHECK_EQ(t.get_status(), status::timed_out);
  CHECK(t.cancel_requested());
}

TEST_CASE(cancel_after_completion_returns_false_and_keeps_outcome) {
  mp::function_task done([] { return outcome::done; });
  done.run();
  CHECK(!done.cancel());
  CHECK(!done.cancel(outcome::timed_out));
  CHECK_EQ(done.get_status(), status::done);
  CHECK(!done.cancel_requested());

  mp::function_task failed([] { return outcome::failed; });
  failed.run();
  CHECK(!failed.cancel());
  CHECK_EQ(failed.get_status(), status::failed);
}

TEST_CASE(cancel_while_running_settles_at_once_and_discards_result) {
  std::latch started(1), release(1);
  std::atomic<bool> saw_cancel_flag{false};
  probe_task t([&](probe_task& self) {
    started.count_down();
    release.wait();
    saw_cancel_flag.store(self.cancel_requested());
    return outcome::done;
  });
  std::thread runner([&] { t.run(); });
  started.wait();

  CHECK(t.cancel());
  CHECK(!t.cancel());
  // Settled at once although the code still runs.
  CHECK_EQ(t.get_status(), status::cancelled);
  CHECK(t.settled());
  CHECK(t.running());
  CHECK(t.cancel_requested());
  CHECK_EQ(t.wait(in(0s)), wait_status::ready);
  CHECK_EQ(t.wait_stopped(in(20ms)), wait_status::timed_out);
  CHECK_EQ(t.published.load(), -1);

  release.count_down();
  runner.join();
  CHECK(saw_cancel_flag.load());
  CHECK_EQ(t.published.load(), 0);  // the late result was discarded
  CHECK_EQ(t.get_status(), status::cancelled);
  CHECK_EQ(t.get_phase(), phase::finished);
  CHECK(!t.running());
  CHECK_EQ(t.wait_stopped(in(0s)), wait_status::ready);
}

TEST_CASE(complete_publishes_when_nothing_settled_first) {
  probe_task t([](probe_task&) { return outcome::done; });
  t.run();
  CHECK_EQ(t.published.load(), 1);
  CHECK_EQ(t.get_status(), status::done);
}

TEST_CASE(wait_with_deadline_times_out_on_open_task) {
  mp::function_task t([] { return outcome::done; });
  const auto start = mp::clock::now();
  CHECK_EQ(t.wait(in(50ms)), wait_status::timed_out);
  const double took = seconds_since(start);
  CHECK(took >= 0.045);
  CHECK(took < 5.0);
  CHECK_EQ(t.wait_stopped(in(10ms)), wait_status::timed_out);
  CHECK_EQ(t.wait(in(-1s)), wait_status::timed_out);  // a past deadline does not block
}

TEST_CASE(wait_returns_promptly_when_settled_by_another_thread) {
  for (int round = 0; round < 20; ++round) {
    auto t = std::make_shared<mp::function_task>([] { return outcome::done; });
    std::atomic<bool> settled_before_return{false};
    std::thread settler([&] {
      // Give the waiter a chance to block so the wake-up path is exercised; correctness
      // does not depend on this pause.
      std::this_thread::sleep_for(2ms);
      if (round % 2 == 0) {
        t->run();
      } else {
        t->cancel();
      }
    });
    const auto start = mp::clock::now();
    const wait_status w = t->wait(in(30s));
    settled_before_return.store(t->settled());
    CHECK_EQ(w, wait_status::ready);
    CHECK(settled_before_return.load());
    CHECK(seconds_since(start) < 5.0);
    settler.join();
  }
}

TEST_CASE(many_waiters_all_wake_on_settle) {
  mp::function_task t([] { return outcome::done; });
  std::latch waiting(8);
  std::atomic<int> ready{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < 8; ++i) {
    waiters.emplace_back([&, i] {
      waiting.count_down();
      const wait_status w = i % 2 ? t.wait(in(30s)) : t.wait_stopped(in(30s));
      if (w == wait_status::ready && t.settled()) ready.fetch_add(1);
    });
  }
  waiting.wait();
  t.run();
  for (auto& w : waiters) w.join();
  CHECK_EQ(ready.load(), 8);
}

TEST_CASE(wait_stopped_blocks_until_cancelled_code_returns) {
  std::latch started(1), release(1);
  std::atomic<bool> released{false};
  mp::function_task t([&] {
    started.count_down();
    release.wait();
    return outcome::done;
  });
  std::thread runner([&] { t.run(); });
  started.wait();
  CHECK(t.cancel());

  std::atomic<bool> stopped_after_release{false};
  std::thread waiter([&] {
    const wait_status w = t.wait_stopped(in(30s));
    stopped_after_release.store(w == wait_status::ready && released.load());
  });
  CHECK_EQ(t.wait(in(0s)), wait_status::ready);  // plain wait does not wait for the code
  released.store(true);
  release.count_down();
  waiter.join();
  runner.join();
  CHECK(stopped_after_release.load());
  CHECK(!t.running());
}

TEST_CASE(on_settled_hooks_run_exactly_once_on_settling_thread) {
  mp::function_task t([] { return outcome::done; });
  std::atomic<int> calls{0};
  std::thread::id hook_thread;
  for (int i = 0; i < 3; ++i) {
    t.on_settled([&](mp::task& self) {
      calls.fetch_add(1);
      hook_thread = std::this_thread::get_id();
      CHECK(self.settled());
      CHECK(&self == &t);
    });
  }
  std::thread::id runner_id;
  std::thread runner([&] {
    runner_id = std::this_thread::get_id();
    t.run();
  });
  runner.join();
  CHECK_EQ(calls.load(), 3);
  CHECK(hook_thread == runner_id);

  // A late cancel must not run the hooks again.
  CHECK(!t.cancel());
  CHECK_EQ(calls.load(), 3);

  // Registered after settle: runs right away, on this thread.
  std::thread::id late_thread;
  t.on_settled([&](mp::task&) {
    calls.fetch_add(1);
    late_thread = std::this_thread::get_id();
  });
  CHECK_EQ(calls.load(), 4);
  CHECK(late_thread == std::this_thread::get_id());
}

TEST_CASE(a_hook_registered_as_soon_as_the_task_settled_runs_at_once_on_its_thread) {
  // The registering thread sees the outcome the moment it is published, which may be before
  // the settling thread took the hooks registered so far: the new one must not join them.
  int late_runs = 0, elsewhere = 0;
  for (int i = 0; i < 2000; ++i) {
    mp::function_task t([] { return outcome::done; });
    std::thread runner([&] { t.run(); });
    while (!t.settled()) {
    }
    bool ran = false;
    const auto me = std::this_thread::get_id();
    t.on_settled([&](mp::task&) {
      ran = true;
      if (std::this_thread::get_id() != me) ++elsewhere;
    });
    if (ran) ++late_runs;
    runner.join();
  }
  CHECK_EQ(late_runs, 2000);
  CHECK_EQ(elsewhere, 0);
}

TEST_CASE(on_settled_hooks_run_once_when_cancel_races_completion) {
  std::latch started(1), release(1);
  mp::function_task t([&] {
    started.count_down();
    release.wait();
    return outcome::done;
  });
  std::atomic<int> calls{0};
  t.on_settled([&](mp::task&) { calls.fetch_add(1); });
  std::thread runner([&] { t.run(); });
  started.wait();
  CHECK(t.cancel());
  CHECK_EQ(calls.load(), 1);  // ran on this thread, inside cancel()
  release.count_down();
  runner.join();
  CHECK_EQ(calls.load(), 1);  // completion after the cancel does not run them again
}

TEST_CASE(hooks_may_call_wait_cancel_and_on_settled_on_same_task) {
  // Settled by completion.
  {
    mp::function_task t([] { return outcome::done; });
    std::atomic<int> nested{0};
    wait_status w1 = wait_status::interrupted, w2 = wait_status::interrupted;
    bool cancelled_again = true;
    t.on_settled([&](mp::task& self) {
      w1 = self.wait(in(5s));
      w2 = self.wait_stopped(in(5s));
      cancelled_again = self.cancel();
      self.on_settled([&](mp::task&) { nested.fetch_add(1); });
    });
    t.run();
    CHECK_EQ(w1, wait_status::ready);
    CHECK_EQ(w2, wait_status::ready);
    CHECK(!cancelled_again);
    CHECK_EQ(nested.load(), 1);
    CHECK_EQ(t.get_status(), status::done);
  }
  // Settled by cancel of a task that has not started.
  {
    mp::function_task t([] { return outcome::done; });
    wait_status w = wait_status::interrupted;
    bool cancelled_again = true;
    t.on_settled([&](mp::task& self) {
      w = self.wait_stopped(in(5s));
      cancelled_again = self.cancel(outcome::timed_out);
    });
    CHECK(t.cancel());
    CHECK_EQ(w, wait_status::ready);
    CHECK(!cancelled_again);
    CHECK_EQ(t.get_status(), status::cancelled);
  }
}

TEST_CASE(elapsed_seconds_counts_from_submission_and_stops_at_settle) {
  mp::function_task t([] { return outcome::done; });
  CHECK_EQ(t.elapsed_seconds(), 0.0);  // not submitted yet
  CHECK_EQ(t.submit_ns(), uint64_t{0});
  t.attach(nullptr);
  CHECK(t.submit_ns() != 0);
  std::this_thread::sleep_for(10ms);  // let time pass, nothing to synchronise
  const double open1 = t.elapsed_seconds();
  CHECK(open1 >= 0.009);
  std::this_thread::sleep_for(5ms);
  CHECK(t.elapsed_seconds() > open1);

  t.run();
  const double settled1 = t.elapsed_seconds();
  CHECK(settled1 >= open1);
  std::this_thread::sleep_for(10ms);
  CHECK_EQ(t.elapsed_seconds(), settled1);
}

TEST_CASE(elapsed_seconds_is_frozen_once_settled_is_visible) {
  // A thread that sees the task settled must read the final elapsed time: the settle time
  // has to be published no later than the outcome.
  int changed = 0;
  for (int i = 0; i < 4000; ++i) {
    mp::function_task t([] { return outcome::done; });
    t.attach(nullptr);
    std::latch go(1);
    std::thread settler([&] {
      go.wait();
      if (i % 2 == 0) {
        t.run();
      } else {
        t.cancel();
      }
    });
    go.count_down();
    while (!t.settled()) std::this_thread::yield();
    const double first = t.elapsed_seconds();
    settler.join();
    if (t.elapsed_seconds() != first) ++changed;
  }
  CHECK_EQ(changed, 0);
}

TEST_CASE(tracker_counts_settled_and_stopped_tasks) {
  mp::task_tracker tracker;
  std::latch started(1), release(1);
  mp::function_task running([&] {
    started.count_down();
    release.wait();
    return outcome::done;
  });
  mp::function_task queued([] { return outcome::done; });
  running.attach(&tracker);
  queued.attach(&tracker);
  CHECK_EQ(tracker.unsettled(), 2u);
  CHECK_EQ(tracker.live(), 2u);

  queued.cancel();  // dropped: neither unsettled nor live
  CHECK_EQ(tracker.unsettled(), 1u);
  CHECK_EQ(tracker.live(), 1u);

  std::thread runner([&] { running.run(); });
  started.wait();
  running.cancel();  // settled, but its code still runs
  CHECK_EQ(tracker.unsettled(), 0u);
  CHECK_EQ(tracker.live(), 1u);
  CHECK_EQ(tracker.wait_idle(false, in(0s), false), wait_status::ready);
  CHECK_EQ(tracker.wait_idle(true, in(20ms), false), wait_status::timed_out);

  release.count_down();
  CHECK_EQ(tracker.wait_idle(true, in(30s), false), wait_status::ready);
  runner.join();
  CHECK_EQ(tracker.live(), 0u);
}

TEST_CASE_LIMIT(run_and_two_cancels_race_to_exactly_one_outcome, 120) {
  // One thread runs each task while two others cancel it at the same moment (one as the
  // timer would, as timed_out). Whatever the interleaving, each task ends with exactly one
  // outcome, hooks run once, the cancels agree with it, and the books balance.
  constexpr int n = 10000;
  struct slot {
    std::shared_ptr<mp::function_task> t;
    std::atomic<int> ran{0};
    std::atomic<int> hooks{0};
    std::atomic<int> cancel_wins{0};
    std::atomic<int> timeout_wins{0};
  };
  mp::task_tracker tracker;
  std::vector<slot> slots(n);
  for (auto& s : slots) {
    s.t = std::make_shared<mp::function_task>([&s] {
      s.ran.fetch_add(1);
      return outcome::done;
    });
    s.t->attach(&tracker);
    s.t->on_settled([&s](mp::task&) { s.hooks.fetch_add(1); });
  }
  CHECK_EQ(tracker.unsettled(), static_cast<uint32_t>(n));

  // A spinning start line rather than std::barrier: a blocking barrier lets its last
  // arrival run ahead while the others are still waking up, so it would always win.
  // A little random delay after the line varies who gets there first, also under TSan,
  // whose scheduling otherwise repeats the same interleaving.
  std::atomic<int> arrived{0};
  auto start_line = [&arrived](int round) {
    arrived.fetch_add(1);
    while (arrived.load() < 3 * (round + 1)) std::this_thread::yield();
    thread_local std::minstd_rand jitter(std::random_device{}());
    std::atomic<uint32_t> spins{static_cast<uint32_t>(jitter() % 2000)};
    while (spins.fetch_sub(1, std::memory_order_relaxed) > 1) {
    }
  };
  std::thread runner([&] {
    for (int i = 0; i < n; ++i) {
      start_line(i);
      slots[static_cast<size_t>(i)].t->run();
    }
  });
  std::thread canceller([&] {
    for (int i = 0; i < n; ++i) {
      start_line(i);
      auto& s = slots[static_cast<size_t>(i)];
      if (s.t->cancel()) s.cancel_wins.fetch_add(1);
    }
  });
  std::thread timer_like([&] {
    for (int i = 0; i < n; ++i) {
      start_line(i);
      auto& s = slots[static_cast<size_t>(i)];
      if (s.t->cancel(outcome::timed_out)) s.timeout_wins.fetch_add(1);
    }
  });
  runner.join();
  canceller.join();
  timer_like.join();

  int bad = 0, done = 0, cancelled = 0, timed_out = 0, cancelled_while_running = 0;
  for (auto& s : slots) {
    const outcome o = s.t->get_outcome();
    const phase p = s.t->get_phase();
    const int wins = s.cancel_wins.load() + s.timeout_wins.load();
    bool ok = s.hooks.load() == 1 && s.ran.load() <= 1 && wins <= 1;
    switch (o) {
      case outcome::done:
        ++done;
        ok = ok && wins == 0 && s.ran.load() == 1 && p == phase::finished;
        break;
      case outcome::cancelled:
        ++cancelled;
        ok = ok && s.cancel_wins.load() == 1;
        break;
      case outcome::timed_out:
        ++timed_out;
        ok = ok && s.timeout_wins.load() == 1;
        break;
      default:
        ok = false;
    }
    // Code that ran finished; code that never ran was dropped.
    ok = ok && (s.ran.load() == 1 ? p == phase::finished : p == phase::dropped);
    if (!ok) ++bad;
    if (o != outcome::done && s.ran.load() == 1) ++cancelled_while_running;
  }
  CHECK_EQ(bad, 0);
  CHECK_EQ(done + cancelled + timed_out, n);
  CHECK_EQ(tracker.unsettled(), 0u);
  CHECK_EQ(tracker.live(), 0u);
  std::printf("  race outcomes: %d done, %d cancelled, %d timed out (%d while running)\n",
              done, cancelled, timed_out, cancelled_while_running);
}

TEST_CASE(abandon_settles_an_unstarted_task_without_requesting_cancel) {
  mp::task_tracker tracker;
  std::atomic<int> ran{0};
  mp::function_task t([&] {
    ran.fetch_add(1);
    return outcome::done;
  });
  t.attach(&tracker);
  std::atomic<int> hooks{0};
  t.on_settled([&](mp::task&) { hooks.fetch_add(1); });
  CHECK(t.abandon(outcome::failed));
  CHECK(!t.abandon(outcome::failed));
  CHECK(!t.cancel());
  CHECK_EQ(t.get_status(), status::failed);
  CHECK_EQ(t.get_phase(), phase::dropped);
  CHECK(!t.cancel_requested());
  CHECK_EQ(hooks.load(), 1);
  t.run();
  CHECK_EQ(ran.load(), 0);
  CHECK_EQ(tracker.unsettled(), 0u);
  CHECK_EQ(tracker.live(), 0u);
}

TEST_CASE(abandon_leaves_a_running_task_alone) {
  std::latch started(1), release(1);
  mp::function_task t([&] {
    started.count_down();
    release.wait();
    return outcome::done;
  });
  std::thread runner([&] { t.run(); });
  started.wait();
  CHECK(!t.abandon(outcome::failed));
  CHECK(!t.settled());
  release.count_down();
  runner.join();
  CHECK_EQ(t.get_status(), status::done);
}

TEST_CASE(admission_limit_blocks_until_a_task_code_stops) {
  mp::task_tracker tracker;
  tracker.set_limit(2);
  CHECK_EQ(tracker.limit(), 2u);

  // Two slots, handed to two tasks.
  auto a = std::make_shared<mp::function_task>([] { return outcome::done; });
  auto b = std::make_shared<mp::function_task>([] { return outcome::done; });
  for (auto* t : {a.get(), b.get()}) {
    CHECK_EQ(tracker.admit(in(1s), false), wait_status::ready);
    t->set_admitted();
    t->attach(&tracker);
  }
  CHECK_EQ(tracker.admit(in(20ms), false), wait_status::timed_out);

  // A blocked admission wakes when a task's code stops ...
  std::atomic<int> admitted{-1};
  std::thread waiter([&] { admitted.store(static_cast<int>(tracker.admit(in(30s), false))); });
  a->run();
  waiter.join();
  CHECK_EQ(admitted.load(), static_cast<int>(wait_status::ready));

  // ... or when a task is dropped, or a slot is given back.
  CHECK_EQ(tracker.admit(in(10ms), false), wait_status::timed_out);
  b->cancel();
  CHECK_EQ(tracker.admit(in(1s), false), wait_status::ready);
  tracker.release_slot();
  CHECK_EQ(tracker.admit(in(1s), false), wait_status::ready);

  // Removing the limit admits at once.
  tracker.set_limit(0);
  CHECK_EQ(tracker.admit(in(1s), false), wait_status::ready);
  CHECK_EQ(tracker.admit(in(1s), false), wait_status::ready);
}

TEST_CASE_LIMIT(raising_the_admission_limit_wakes_blocked_admissions, 120) {
  // A thread blocked because the limit is reached must see a raised limit at once, even
  // when the raise lands just as it goes to sleep.
  int missed = 0;
  std::minstd_rand jitter(4242);
  for (int round = 0; round < 3000; ++round) {
    mp::task_tracker tracker;
    tracker.set_limit(1);
    CHECK_EQ(tracker.admit(in(1s), false), wait_status::ready);
    std::latch go(2);
    std::atomic<int> result{-1};
    std::thread waiter([&] {
      go.arrive_and_wait();
      result.store(static_cast<int>(tracker.admit(in(300ms), false)));
    });
    // Vary the moment of the raise around the waiter's check-then-sleep.
    std::atomic<uint32_t> spins{static_cast<uint32_t>(jitter() % 3000)};
    go.arrive_and_wait();
    while (spins.fetch_sub(1, std::memory_order_relaxed) > 1) {
    }
    tracker.set_limit(2);
    waiter.join();
    if (result.load() != static_cast<int>(wait_status::ready)) ++missed;
  }
  CHECK_EQ(missed, 0);
}

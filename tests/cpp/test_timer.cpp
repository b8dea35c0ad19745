// Tests of mp::timer: one thread settling tasks as timed out at their deadlines.
#include <atomic>
#include <chrono>
#include <fstream>
#include <latch>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"
#include "task_helpers.hpp"
#include "makeparallel/timer.hpp"

namespace {

using namespace std::chrono_literals;
using mptest::in;
using mp::outcome;
using mp::phase;
using mp::status;
using mp::wait_status;

std::shared_ptr<mp::function_task> idle_task() {
  return std::make_shared<mp::function_task>([] { return outcome::done; });
}

double seconds_since(mp::clock::time_point start) {
  return std::chrono::duration<double>(mp::clock::now() - start).count();
}

/// Threads of this process, from /proc (0 if unreadable).
int thread_count() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "Threads:") {
      int n = 0;
      status >> n;
      return n;
    }
  }
  return 0;
}

/// Sets a flag when destroyed, to see when a task's code (and the task) is freed.
struct destroy_flag {
  std::atomic<bool>* flag;
  ~destroy_flag() { flag->store(true); }
};

}  // namespace

TEST_CASE(short_deadline_settles_queued_task_as_timed_out) {
  mp::timer tm;
  auto t = idle_task();
  const auto start = mp::clock::now();
  tm.schedule(mp::clock::now() + 50ms, t);
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  const double took = seconds_since(start);
  CHECK(took >= 0.045);
  CHECK(took < 10.0);
  CHECK_EQ(t->get_status(), status::timed_out);
  CHECK_EQ(t->get_phase(), phase::dropped);  // it had not started, so it never runs
  CHECK(t->cancel_requested());
  CHECK(check::eventually([&] { return tm.pending() == 0; }));
}

TEST_CASE(running_task_times_out_at_once_and_its_result_is_discarded) {
  mp::timer tm;
  std::latch started(1), release(1);
  auto t = std::make_shared<mp::function_task>([&] {
    started.count_down();
    release.wait();
    return outcome::done;
  });
  std::thread runner([&] { t->run(); });
  started.wait();
  tm.schedule(mp::clock::now() + 30ms, t);
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  CHECK_EQ(t->get_status(), status::timed_out);
  CHECK(t->running());
  release.count_down();
  runner.join();
  CHECK_EQ(t->get_status(), status::timed_out);
  CHECK(!t->running());
}

TEST_CASE(task_that_finishes_first_is_not_affected) {
  mp::timer tm;
  auto t = idle_task();
  tm.schedule(mp::clock::now() + 20ms, t);
  t->run();
  CHECK_EQ(t->get_status(), status::done);
  CHECK(check::eventually([&] { return tm.pending() == 0; }));
  CHECK_EQ(t->get_status(), status::done);
  CHECK(!t->cancel_requested());
}

TEST_CASE(an_earlier_deadline_scheduled_later_fires_first) {
  mp::timer tm;
  auto late = idle_task();
  auto early = idle_task();
  tm.schedule(mp::clock::now() + 1h, late);
  const auto start = mp::clock::now();
  tm.schedule(mp::clock::now() + 30ms, early);
  CHECK_EQ(early->wait(in(30s)), wait_status::ready);
  CHECK(seconds_since(start) < 10.0);
  CHECK_EQ(early->get_status(), status::timed_out);
  CHECK(!late->settled());
  CHECK_EQ(tm.pending(), size_t{1});
}

TEST_CASE_LIMIT(ten_thousand_timers_share_one_thread, 90) {
  constexpr int n = 10000;
  const int threads_before = thread_count();
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  std::vector<mp::clock::time_point> deadlines;
  std::vector<std::atomic<int64_t>> settled_at(n);
  std::mt19937 rng(7);
  {
    mp::timer tm;
    for (int i = 0; i < n; ++i) {
      tasks.push_back(idle_task());
      deadlines.push_back(mp::clock::now() + 100ms + std::chrono::milliseconds(rng() % 200));
      tasks.back()->on_settled([&settled_at, i](mp::task&) {
        settled_at[i].store(mp::clock::now().time_since_epoch().count());
      });
      tm.schedule(deadlines.back(), tasks.back());
      if (i % 2 == 0) tasks.back()->run();  // finishes long before its deadline
    }
    const int threads_during = thread_count();
    if (threads_before != 0) CHECK(threads_during - threads_before <= 1);

    const auto deadline = in(60s);
    int not_ready = 0;
    for (auto& t : tasks) not_ready += t->wait(deadline) == wait_status::ready ? 0 : 1;
    CHECK_EQ(not_ready, 0);
    CHECK(check::eventually([&] { return tm.pending() == 0; }));
  }
  int wrong = 0, early = 0;
  for (int i = 0; i < n; ++i) {
    const status want = i % 2 == 0 ? status::done : status::timed_out;
    if (tasks[static_cast<size_t>(i)]->get_status() != want) ++wrong;
    const auto at = mp::clock::time_point(mp::clock::duration(settled_at[i].load()));
    if (i % 2 == 1 && at < deadlines[static_cast<size_t>(i)]) ++early;
  }
  CHECK_EQ(wrong, 0);
  CHECK_EQ(early, 0);  // nothing times out before its deadline
}

TEST_CASE(timer_does_not_keep_freed_tasks_alive) {
  std::atomic<bool> freed{false};
  mp::timer tm;
  {
    auto guard = std::make_shared<destroy_flag>(destroy_flag{&freed});
    auto t = std::make_shared<mp::function_task>([guard] { return outcome::done; });
    guard.reset();
    tm.schedule(mp::clock::now() + 1h, t);
    CHECK_EQ(t.use_count(), 1L);
    t->run();
  }
  CHECK(freed.load());
  CHECK_EQ(tm.pending(), size_t{1});  // the entry stays, harmlessly, until compaction
}

TEST_CASE(settled_entries_do_not_pile_up) {
  // Settled tasks with far deadlines are dropped from the heap as it grows, so a
  // long-running process with long timeouts on short tasks keeps a bounded timer.
  mp::timer tm;
  for (int i = 0; i < 5000; ++i) {
    auto t = idle_task();
    tm.schedule(mp::clock::now() + 1h, t);
    t->run();
  }
  CHECK(tm.pending() <= size_t{2048});
}

TEST_CASE(destroying_timer_with_far_deadlines_returns_promptly) {
  auto t = idle_task();
  const auto start = mp::clock::now();
  {
    mp::timer tm;
    tm.schedule(mp::clock::now() + 1h, t);
  }
  CHECK(seconds_since(start) < 5.0);
  CHECK(!t->settled());
}

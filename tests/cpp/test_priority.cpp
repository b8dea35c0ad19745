// Tests of mp::executor as the stoppable priority executor.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <latch>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "check.hpp"
#include "task_helpers.hpp"
#include "makeparallel/executor.hpp"

namespace {

using namespace std::chrono_literals;
using mptest::make_task;
using mptest::held_worker;
using mptest::in;
using mptest::wait_all;
using mp::outcome;
using mp::status;
using mp::wait_status;

struct exit_counter final : mp::runner_hooks {
  std::atomic<int> exits{0};
  void thread_exit() override { exits.fetch_add(1); }
};

mp::executor_options priority(size_t workers, bool start_stopped) {
  mp::executor_options o;
  o.name = "mp-prio";
  o.num_threads = workers;
  o.priority_order = true;
  o.start_stopped = start_stopped;
  return o;
}

/// Priorities with many ties and the extremes of the range, from a fixed seed.
std::vector<int64_t> random_priorities(size_t n) {
  constexpr int64_t lo = std::numeric_limits<int64_t>::min();
  constexpr int64_t hi = std::numeric_limits<int64_t>::max();
  const int64_t special[] = {lo, lo + 1, hi, hi - 1, 0, -1, 1};
  std::mt19937_64 rng(12345);
  std::vector<int64_t> out;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t r = rng() % 4;
    if (r == 0) {
      out.push_back(special[rng() % std::size(special)]);
    } else {
      out.push_back(static_cast<int64_t>(rng() % 11) - 5);  // small range: many ties
    }
  }
  return out;
}

/// Indices in the order the executor must run them: priority desc, submission asc.
std::vector<size_t> expected_order(const std::vector<int64_t>& prio) {
  std::vector<size_t> idx(prio.size());
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return prio[a] > prio[b]; });
  return idx;
}

/// Submits one task per priority; each records its index in `order` when it runs.
std::vector<std::shared_ptr<mp::function_task>> submit_batch(
    mp::executor& ex, const std::vector<int64_t>& prio, std::mutex& mu,
    std::vector<size_t>& order, bool autostart) {
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  for (size_t i = 0; i < prio.size(); ++i) {
    tasks.push_back(make_task([&mu, &order, i] {
      std::lock_guard<std::mutex> lk(mu);
      order.push_back(i);
    }));
    ex.submit(tasks.back(), prio[i], autostart);
  }
  return tasks;
}

}  // namespace

TEST_CASE(batch_runs_in_priority_then_submission_order) {
  mp::executor ex(priority(1, false));
  held_worker blocker;
  ex.submit(blocker.task, std::numeric_limits<int64_t>::min());
  blocker.started.wait();

  const auto prio = random_priorities(600);
  std::mutex mu;
  std::vector<size_t> order;
  auto tasks = submit_batch(ex, prio, mu, order, true);
  CHECK_EQ(ex.info().queued_tasks, prio.size());
  blocker.release.count_down();
  CHECK(wait_all(tasks));

  std::lock_guard<std::mutex> lk(mu);
  CHECK(order == expected_order(prio));
}

TEST_CASE(stopped_executor_spawns_nothing_until_start) {
  exit_counter hooks;
  mp::executor ex(priority(1, true), &hooks);
  CHECK(!ex.info().running);
  CHECK_EQ(ex.info().current_threads, size_t{0});

  const auto prio = random_priorities(100);
  std::mutex mu;
  std::vector<size_t> order;
  auto tasks = submit_batch(ex, prio, mu, order, /*autostart=*/false);
  CHECK(!ex.info().running);
  CHECK_EQ(ex.info().current_threads, size_t{0});
  CHECK_EQ(ex.info().queued_tasks, size_t{100});
  for (auto& t : tasks) CHECK_EQ(t->get_status(), status::pending);

  ex.start();
  CHECK(ex.info().running);
  CHECK_EQ(ex.info().current_threads, size_t{1});
  CHECK(wait_all(tasks));
  std::lock_guard<std::mutex> lk(mu);
  CHECK(order == expected_order(prio));
}

TEST_CASE(start_while_running_changes_nothing) {
  mp::executor ex(priority(1, false));
  ex.start(4);
  CHECK_EQ(ex.info().current_threads, size_t{1});
  CHECK(ex.info().running);
}

TEST_CASE(stop_keeps_queued_tasks_and_start_runs_them) {
  exit_counter hooks;
  mp::executor ex(priority(1, false), &hooks);
  held_worker blocker;
  ex.submit(blocker.task);
  blocker.started.wait();

  const auto prio = random_priorities(50);
  std::mutex mu;
  std::vector<size_t> order;
  auto tasks = submit_batch(ex, prio, mu, order, true);
  ex.stop(false);
  CHECK(!ex.info().running);

  // The running task finishes; then its worker exits without touching the queue.
  blocker.release.count_down();
  CHECK_EQ(blocker.task->wait(in(30s)), wait_status::ready);
  CHECK_EQ(blocker.task->get_status(), status::done);
  CHECK(check::eventually([&] { return hooks.exits.load() == 1; }));
  CHECK_EQ(ex.info().queued_tasks, size_t{50});
  for (auto& t : tasks) CHECK_EQ(t->get_status(), status::pending);
  {
    std::lock_guard<std::mutex> lk(mu);
    CHECK(order.empty());
  }

  ex.start();
  CHECK(wait_all(tasks));
  std::lock_guard<std::mutex> lk(mu);
  CHECK(order == expected_order(prio));
}

TEST_CASE(stop_with_cancel_pending_cancels_queued_tasks) {
  mp::executor ex(priority(1, false));
  held_worker blocker;
  ex.submit(blocker.task);
  blocker.started.wait();

  std::atomic<int> ran{0};
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  for (int i = 0; i < 30; ++i) {
    tasks.push_back(make_task([&] { ran.fetch_add(1); }));
    ex.submit(tasks.back(), i);
  }
  ex.stop(true);
  for (auto& t : tasks) CHECK_EQ(t->get_status(), status::cancelled);
  CHECK_EQ(ex.info().queued_tasks, size_t{0});
  CHECK(blocker.task->running());  // a running task is not cancelled by stop

  blocker.release.count_down();
  CHECK_EQ(blocker.task->wait(in(30s)), wait_status::ready);
  CHECK_EQ(blocker.task->get_status(), status::done);
  ex.start();
  auto after = make_task([] {});
  ex.submit(after);
  CHECK_EQ(after->wait(in(30s)), wait_status::ready);
  CHECK_EQ(ran.load(), 0);
}

TEST_CASE(wait_on_task_queued_while_stopped_restarts_executor) {
  mp::executor ex(priority(1, true));
  auto t = make_task([] {});
  ex.submit(t, 0, /*autostart=*/false);
  CHECK(!ex.info().running);
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  CHECK_EQ(t->get_status(), status::done);
  CHECK(ex.info().running);

  // Same after an explicit stop, and through wait_stopped.
  ex.stop(false);
  CHECK(!ex.info().running);
  auto u = make_task([] {});
  ex.submit(u, 0, /*autostart=*/false);
  CHECK_EQ(u->wait_stopped(in(30s)), wait_status::ready);
  CHECK_EQ(u->get_status(), status::done);
}

TEST_CASE(submit_with_autostart_restarts_a_stopped_executor) {
  mp::executor ex(priority(2, false));
  ex.stop(false);
  CHECK(!ex.info().running);
  auto t = make_task([] {});
  ex.submit(t, 7, /*autostart=*/true);
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  CHECK(ex.info().running);
  CHECK_EQ(ex.info().current_threads, size_t{2});
}

TEST_CASE_LIMIT(several_workers_with_stops_and_starts_run_each_task_once, 120) {
  constexpr int n = 3000;
  exit_counter hooks;
  std::vector<std::atomic<int>> runs(n);
  std::vector<std::shared_ptr<mp::function_task>> tasks(n);
  const auto prio = random_priorities(n);
  {
    mp::executor ex(priority(3, false), &hooks);
    std::atomic<int> submitted{0};
    std::thread submitter_a([&] {
      for (int i = 0; i < n; i += 2) {
        tasks[static_cast<size_t>(i)] = make_task([&runs, i] { runs[i].fetch_add(1); });
        ex.submit(tasks[static_cast<size_t>(i)], prio[static_cast<size_t>(i)], false);
        submitted.fetch_add(1);
      }
    });
    std::thread submitter_b([&] {
      for (int i = 1; i < n; i += 2) {
        tasks[static_cast<size_t>(i)] = make_task([&runs, i] { runs[i].fetch_add(1); });
        ex.submit(tasks[static_cast<size_t>(i)], prio[static_cast<size_t>(i)], false);
        submitted.fetch_add(1);
      }
    });
    while (submitted.load() < n) {
      ex.stop(false);
      std::this_thread::sleep_for(200us);  // pace the cycle, not a synchronisation
      ex.start();
    }
    submitter_a.join();
    submitter_b.join();
    ex.start();
    CHECK(wait_all(tasks));
  }
  int wrong = 0;
  for (int i = 0; i < n; ++i) wrong += runs[i].load() == 1 ? 0 : 1;
  CHECK_EQ(wrong, 0);
  CHECK(hooks.exits.load() >= 3);
}

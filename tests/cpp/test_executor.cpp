// Tests of mp::executor as a fixed FIFO pool and as an elastic thread cache.
#include <atomic>
#include <chrono>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "check.hpp"
#include "task_helpers.hpp"
#include "makeparallel/executor.hpp"
#include "makeparallel/os_thread.hpp"

namespace {

using namespace std::chrono_literals;
using mptest::make_task;
using mptest::held_worker;
using mptest::in;
using mptest::wait_all;
using mp::outcome;
using mp::status;
using mp::wait_status;

/// Counts hook calls and checks that they bracket task runs: every run happens between an
/// enter and a leave on its own thread, and no hook is called under the executor's lock
/// (each hook takes that lock through info(), which would deadlock if it were held).
struct counting_hooks final : mp::runner_hooks {
  std::atomic<int> enters{0}, leaves{0}, exits{0}, misuse{0};
  std::atomic<mp::executor*> ex{nullptr};
  static inline thread_local int depth = 0;

  void enter() override {
    if (depth != 0) misuse.fetch_add(1);
    depth = 1;
    enters.fetch_add(1);
    if (auto* e = ex.load()) (void)e->info();
  }
  void leave() override {
    if (depth != 1) misuse.fetch_add(1);
    depth = 0;
    leaves.fetch_add(1);
    if (auto* e = ex.load()) (void)e->info();
  }
  void thread_exit() override {
    if (depth != 0) misuse.fetch_add(1);
    exits.fetch_add(1);
  }
  static bool inside() { return depth == 1; }
};

/// A stack size, in whole pages, that the default-sized threads do not reach.
size_t larger_than_default_stack() {
  const size_t page = mp::page_size();
  return (mp::default_stack_size() + 2 * 1024 * 1024 + page - 1) / page * page;
}

mp::executor_options fixed(size_t threads) {
  mp::executor_options o;
  o.name = "mp-test";
  o.num_threads = threads;
  return o;
}

mp::executor_options elastic(size_t cap, double idle_secs) {
  mp::executor_options o;
  o.name = "mp-elastic";
  o.elastic = true;
  o.num_threads = cap;
  o.idle_timeout_secs = idle_secs;
  return o;
}

}  // namespace

TEST_CASE(fixed_pool_runs_every_task_exactly_once_from_many_submitters) {
  constexpr int submitters = 4, per_submitter = 2500, n = submitters * per_submitter;
  std::vector<std::atomic<int>> runs(n);
  std::vector<std::shared_ptr<mp::function_task>> tasks(n);
  mp::executor ex(fixed(3));
  std::vector<std::thread> threads;
  for (int s = 0; s < submitters; ++s) {
    threads.emplace_back([&, s] {
      for (int i = s * per_submitter; i < (s + 1) * per_submitter; ++i) {
        tasks[static_cast<size_t>(i)] = make_task([&runs, i] { runs[i].fetch_add(1); });
        ex.submit(tasks[static_cast<size_t>(i)]);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(wait_all(tasks));

  int wrong = 0;
  for (int i = 0; i < n; ++i) {
    if (runs[i].load() != 1 || tasks[static_cast<size_t>(i)]->get_status() != status::done) {
      ++wrong;
    }
  }
  CHECK_EQ(wrong, 0);
  CHECK(check::eventually([&] { return ex.info().active_tasks == 0; }));
  CHECK_EQ(ex.info().queued_tasks, size_t{0});
}

TEST_CASE(one_thread_runs_tasks_in_submission_order) {
  constexpr int n = 1000;
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  mp::executor ex(fixed(1));
  for (int i = 0; i < n; ++i) {
    tasks.push_back(make_task([&, i] {
      std::lock_guard<std::mutex> lk(mu);
      order.push_back(i);
    }));
    ex.submit(tasks.back(), /*priority=*/n - i);  // priorities are ignored by a FIFO pool
  }
  CHECK(wait_all(tasks));
  std::lock_guard<std::mutex> lk(mu);
  CHECK_EQ(order.size(), size_t{n});
  bool in_order = true;
  for (int i = 0; i < static_cast<int>(order.size()); ++i) in_order &= order[i] == i;
  CHECK(in_order);
}

TEST_CASE(stack_size_is_applied_to_worker_threads) {
  // Ask for more than the default so that an ignored request cannot pass. Only a lower
  // bound holds: glibc may hand out a larger cached stack, and sanitizers enlarge stacks.
  const size_t requested = larger_than_default_stack();
  auto opts = fixed(2);
  opts.stack_size = requested;
  mp::executor ex(opts);
  std::atomic<size_t> seen{0};
  auto t = make_task([&] { seen.store(mp::current_thread_stack_size()); });
  ex.submit(t);
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  CHECK(seen.load() >= requested);
  CHECK_EQ(ex.info().stack_size, requested);
}

TEST_CASE(reconfigure_while_tasks_run_and_wait_loses_nothing_and_runs_nothing_twice) {
  counting_hooks hooks;
  mp::executor ex(fixed(2), &hooks);
  hooks.ex.store(&ex);

  // Occupy both old threads, then queue work behind them.
  std::latch started(2), release(1);
  std::vector<std::shared_ptr<mp::function_task>> blockers;
  for (int i = 0; i < 2; ++i) {
    blockers.push_back(make_task([&] {
      started.count_down();
      release.wait();
    }));
    ex.submit(blockers.back());
  }
  started.wait();

  constexpr int n = 200;
  const size_t new_stack = larger_than_default_stack();
  std::vector<std::atomic<int>> runs(n);
  std::vector<std::atomic<size_t>> stacks(n);
  std::vector<std::shared_ptr<mp::function_task>> queued;
  for (int i = 0; i < n; ++i) {
    queued.push_back(make_task([&, i] {
      runs[i].fetch_add(1);
      stacks[i].store(mp::current_thread_stack_size());
    }));
    ex.submit(queued.back());
  }
  ex.reconfigure(3, new_stack);
  CHECK_EQ(ex.info().num_threads, size_t{3});

  // The old threads are still blocked, so the queue drains on the new threads alone.
  CHECK(wait_all(queued));
  CHECK(blockers[0]->running());
  CHECK(blockers[1]->running());
  int wrong = 0;
  for (int i = 0; i < n; ++i) {
    if (runs[i].load() != 1) ++wrong;
    if (stacks[i].load() < new_stack) ++wrong;
  }
  CHECK_EQ(wrong, 0);

  // Running tasks finish on their old threads, which then exit.
  release.count_down();
  CHECK(wait_all(blockers));
  CHECK_EQ(blockers[0]->get_status(), status::done);
  CHECK(check::eventually([&] { return hooks.exits.load() == 2; }));
  CHECK_EQ(ex.info().current_threads, size_t{3});
  CHECK_EQ(ex.info().queued_tasks, size_t{0});
  CHECK_EQ(hooks.misuse.load(), 0);
}

TEST_CASE_LIMIT(reconfigure_repeatedly_under_load_runs_each_task_once, 120) {
  counting_hooks hooks;
  constexpr int n = 4000;
  std::vector<std::atomic<int>> runs(n);
  std::vector<std::shared_ptr<mp::function_task>> tasks(n);
  {
    mp::executor ex(fixed(2), &hooks);
    std::atomic<bool> submitting{true};
    std::thread submitter([&] {
      for (int i = 0; i < n; ++i) {
        tasks[static_cast<size_t>(i)] = make_task([&runs, i] { runs[i].fetch_add(1); });
        ex.submit(tasks[static_cast<size_t>(i)]);
      }
      submitting.store(false);
    });
    size_t size = 1;
    while (submitting.load()) {
      ex.reconfigure(size, 0);
      size = size % 4 + 1;
      std::this_thread::sleep_for(1ms);  // pace the reconfigurations, not a synchronisation
    }
    submitter.join();
    CHECK(wait_all(tasks));
  }
  int wrong = 0;
  for (int i = 0; i < n; ++i) wrong += runs[i].load() == 1 ? 0 : 1;
  CHECK_EQ(wrong, 0);
  // The executor is gone: every thread of every generation has left and exited.
  CHECK_EQ(hooks.enters.load(), hooks.leaves.load());
  CHECK(hooks.exits.load() >= 2);
  CHECK_EQ(hooks.misuse.load(), 0);
}

TEST_CASE(runner_hooks_bracket_every_run_and_are_balanced) {
  counting_hooks hooks;
  constexpr int n = 2000;
  std::atomic<int> ran{0}, outside{0};
  {
    mp::executor ex(fixed(3), &hooks);
    hooks.ex.store(&ex);
    std::vector<std::shared_ptr<mp::function_task>> tasks;
    for (int i = 0; i < n; ++i) {
      tasks.push_back(make_task([&] {
        ran.fetch_add(1);
        if (!counting_hooks::inside()) outside.fetch_add(1);
      }));
      ex.submit(tasks.back());
    }
    CHECK(wait_all(tasks));
    hooks.ex.store(nullptr);
  }
  CHECK_EQ(ran.load(), n);
  CHECK_EQ(outside.load(), 0);
  CHECK(hooks.enters.load() >= 1);
  CHECK_EQ(hooks.enters.load(), hooks.leaves.load());
  CHECK_EQ(hooks.exits.load(), 3);
  CHECK_EQ(hooks.misuse.load(), 0);
}

TEST_CASE(cancel_queued_cancels_waiting_tasks_only) {
  mp::executor ex(fixed(1));
  held_worker blocker;
  ex.submit(blocker.task);
  blocker.started.wait();

  std::atomic<int> ran{0};
  std::vector<std::shared_ptr<mp::function_task>> queued;
  for (int i = 0; i < 10; ++i) {
    queued.push_back(make_task([&] { ran.fetch_add(1); }));
    ex.submit(queued.back());
  }
  CHECK_EQ(ex.info().queued_tasks, size_t{10});
  CHECK_EQ(ex.cancel_queued(), size_t{10});
  CHECK_EQ(ex.info().queued_tasks, size_t{0});
  CHECK_EQ(ex.cancel_queued(), size_t{0});
  for (auto& t : queued) CHECK_EQ(t->get_status(), status::cancelled);
  CHECK(blocker.task->running());
  CHECK(!blocker.task->settled());

  blocker.release.count_down();
  CHECK_EQ(blocker.task->wait(in(30s)), wait_status::ready);
  CHECK_EQ(blocker.task->get_status(), status::done);

  // The executor still works, and the cancelled tasks never ran.
  auto after = make_task([] {});
  ex.submit(after);
  CHECK_EQ(after->wait(in(30s)), wait_status::ready);
  CHECK_EQ(ran.load(), 0);
}

TEST_CASE(info_counts_threads_and_excludes_cancelled_tasks_from_queue) {
  auto opts = fixed(1);
  opts.stack_size = 512 * 1024;
  mp::executor ex(opts);
  held_worker blocker;
  ex.submit(blocker.task);
  blocker.started.wait();

  std::atomic<int> ran{0};
  std::vector<std::shared_ptr<mp::function_task>> queued;
  for (int i = 0; i < 10; ++i) {
    queued.push_back(make_task([&] { ran.fetch_add(1); }));
    ex.submit(queued.back());
  }
  for (int i = 0; i < 3; ++i) CHECK(queued[static_cast<size_t>(i * 3)]->cancel());

  const mp::executor_info info = ex.info();
  CHECK_EQ(info.num_threads, size_t{1});
  CHECK_EQ(info.current_threads, size_t{1});
  CHECK_EQ(info.idle_threads, size_t{0});
  CHECK_EQ(info.active_tasks, size_t{1});
  CHECK_EQ(info.queued_tasks, size_t{7});
  CHECK_EQ(info.stack_size, size_t{512 * 1024});
  CHECK(info.running);

  blocker.release.count_down();
  CHECK(wait_all(queued));
  CHECK_EQ(ran.load(), 7);
  CHECK_EQ(ex.info().queued_tasks, size_t{0});
  CHECK(check::eventually([&] {
    const auto i = ex.info();
    return i.active_tasks == 0 && i.idle_threads == 1;
  }));
}

TEST_CASE(destructor_settles_every_queued_task_and_joins_workers) {
  counting_hooks hooks;
  std::atomic<int> ran{0};
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  {
    mp::executor ex(fixed(2), &hooks);
    for (int i = 0; i < 500; ++i) {
      tasks.push_back(make_task([&] { ran.fetch_add(1); }));
      ex.submit(tasks.back());
    }
  }
  CHECK_EQ(hooks.exits.load(), 2);
  int done = 0, wrong = 0;
  for (auto& t : tasks) {
    if (t->get_status() == status::done) {
      ++done;
    } else if (t->get_status() != status::cancelled) {
      ++wrong;
    }
  }
  CHECK_EQ(wrong, 0);
  CHECK_EQ(done, ran.load());
}

TEST_CASE(elastic_cache_grows_to_its_cap_and_no_further) {
  counting_hooks hooks;
  mp::executor ex(elastic(4, 0.2), &hooks);
  CHECK_EQ(ex.info().current_threads, size_t{0});
  CHECK(ex.info().running);

  std::latch release(1);
  std::atomic<int> started{0};
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  for (int i = 0; i < 10; ++i) {
    tasks.push_back(make_task([&] {
      started.fetch_add(1);
      release.wait();
    }));
    ex.submit(tasks.back());
  }
  CHECK(check::eventually([&] { return ex.info().active_tasks == 4 && started.load() == 4; }));
  const mp::executor_info info = ex.info();
  CHECK_EQ(info.current_threads, size_t{4});
  CHECK_EQ(info.queued_tasks, size_t{6});

  // More work at the cap waits for a thread instead of creating one.
  for (int i = 0; i < 5; ++i) {
    tasks.push_back(make_task([&] { started.fetch_add(1); }));
    ex.submit(tasks.back());
  }
  CHECK_EQ(ex.info().current_threads, size_t{4});
  CHECK_EQ(ex.info().queued_tasks, size_t{11});

  release.count_down();
  CHECK(wait_all(tasks));
  CHECK_EQ(started.load(), 15);

  // Idle threads retire after the idle timeout.
  CHECK(check::eventually([&] { return ex.info().current_threads == 0; }, 10.0));
  CHECK(check::eventually([&] { return hooks.exits.load() == 4; }));
  CHECK_EQ(ex.info().idle_threads, size_t{0});
}

TEST_CASE(elastic_cache_gives_each_task_a_thread_up_to_the_cap) {
  // Tasks that wait for each other all start at once: each gets a thread of its own.
  mp::executor ex(elastic(16, 5.0));
  constexpr int n = 8;
  std::latch all_started(n);
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  for (int i = 0; i < n; ++i) {
    tasks.push_back(make_task([&] { all_started.arrive_and_wait(); }));
    ex.submit(tasks.back());
  }
  CHECK(wait_all(tasks));
  CHECK(ex.info().current_threads >= size_t{n});
}

TEST_CASE(elastic_cache_reuses_an_idle_thread) {
  mp::executor ex(elastic(8, 5.0));
  auto first = make_task([] {});
  ex.submit(first);
  CHECK_EQ(first->wait(in(30s)), wait_status::ready);
  CHECK(check::eventually([&] { return ex.info().idle_threads == 1; }));

  auto second = make_task([] {});
  ex.submit(second);
  CHECK_EQ(second->wait(in(30s)), wait_status::ready);
  CHECK_EQ(ex.info().current_threads, size_t{1});
}

TEST_CASE(raising_the_elastic_cap_starts_threads_for_queued_tasks) {
  // With a cap of one, a task waiting for a second one would wait forever; raising the cap
  // must give the queued task a thread without needing another submission.
  mp::executor ex(elastic(1, 5.0));
  held_worker blocker;
  ex.submit(blocker.task);
  blocker.started.wait();
  auto queued = make_task([] {});
  ex.submit(queued);
  CHECK_EQ(ex.info().queued_tasks, size_t{1});

  ex.set_elastic_limits(2, 5.0);
  CHECK_EQ(ex.info().num_threads, size_t{2});
  CHECK_EQ(queued->wait(in(5s)), wait_status::ready);
  blocker.release.count_down();
  CHECK_EQ(blocker.task->wait(in(30s)), wait_status::ready);
}

TEST_CASE(shortening_the_idle_timeout_retires_idle_threads) {
  mp::executor ex(elastic(4, 60.0));
  auto t = make_task([] {});
  ex.submit(t);
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  CHECK(check::eventually([&] { return ex.info().idle_threads == 1; }));
  ex.set_elastic_limits(4, 0.05);
  CHECK(check::eventually([&] { return ex.info().current_threads == 0; }, 10.0));
}

// Tests of mp::runtime: submission to the three places, timeouts, shutdown, accounting.
#include <atomic>
#include <chrono>
#include <functional>
#include <latch>
#include <memory>
#include <thread>
#include <vector>

#include "check.hpp"
#include "task_helpers.hpp"
#include "makeparallel/metrics.hpp"
#include "makeparallel/os_thread.hpp"
#include "makeparallel/runtime.hpp"

namespace {

using namespace std::chrono_literals;
using mptest::make_task;
using mptest::in;
using mp::outcome;
using mp::phase;
using mp::place;
using mp::status;
using mp::wait_status;

constexpr place all_places[] = {place::pool, place::cache, place::priority};

const char* name_of(place p) {
  switch (p) {
    case place::pool: return "pool";
    case place::cache: return "cache";
    case place::priority: return "priority";
  }
  return "?";
}

/// True if `fn` throws shutdown_error.
template <class Fn>
bool throws_shutdown(Fn fn) {
  try {
    fn();
  } catch (const mp::shutdown_error&) {
    return true;
  }
  return false;
}

}  // namespace

TEST_CASE(submit_to_each_place_runs_the_task) {
  mp::runtime rt;
  for (place p : all_places) {
    CHECK(rt.peek(p) == nullptr);
    std::atomic<int> ran{0};
    auto plain = make_task([&] { ran.fetch_add(1); });
    auto timed = make_task([&] { ran.fetch_add(1); });
    rt.submit(plain, p, 3);
    rt.submit(timed, p, 3, /*timeout_secs=*/30.0);
    CHECK_EQ(plain->wait(in(30s)), wait_status::ready);
    CHECK_EQ(timed->wait(in(30s)), wait_status::ready);
    CHECK_EQ(plain->get_status(), status::done);
    CHECK_EQ(timed->get_status(), status::done);
    CHECK_EQ(ran.load(), 2);
    CHECK(rt.peek(p) != nullptr);
    if (plain->get_status() != status::done) std::printf("  failing place: %s\n", name_of(p));
  }
  CHECK_EQ(rt.tracker().wait_idle(true, in(30s), false), wait_status::ready);
  CHECK_EQ(rt.tracker().unsettled(), 0u);
  CHECK_EQ(rt.tracker().live(), 0u);
}

TEST_CASE(timeout_on_each_place_settles_a_running_task_as_timed_out) {
  std::latch release(1);
  mp::runtime rt;
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  for (place p : all_places) {
    std::latch started(1);
    tasks.push_back(make_task([&] {
      started.count_down();
      release.wait();
    }));
    rt.submit(tasks.back(), p, 0, /*timeout_secs=*/0.05);
    started.wait();
    CHECK_EQ(tasks.back()->wait(in(30s)), wait_status::ready);
    CHECK_EQ(tasks.back()->get_status(), status::timed_out);
    CHECK(tasks.back()->running());
    CHECK(tasks.back()->cancel_requested());
  }
  // The timer settles them; the tracker follows right after the outcome, so wait for it.
  CHECK_EQ(rt.tracker().wait_idle(false, in(30s), false), wait_status::ready);
  CHECK_EQ(rt.tracker().live(), 3u);
  release.count_down();
  CHECK_EQ(rt.tracker().wait_idle(true, in(30s), false), wait_status::ready);
  for (auto& t : tasks) CHECK_EQ(t->get_status(), status::timed_out);
}

TEST_CASE(queued_task_that_times_out_never_runs) {
  std::latch started(1), release(1);
  mp::runtime rt;
  rt.configure_pool(1, 0);
  auto blocker = make_task([&] {
    started.count_down();
    release.wait();
  });
  rt.submit(blocker, place::pool);
  started.wait();

  std::atomic<int> ran{0};
  auto queued = make_task([&] { ran.fetch_add(1); });
  rt.submit(queued, place::pool, 0, /*timeout_secs=*/0.05);
  CHECK_EQ(queued->wait(in(30s)), wait_status::ready);
  CHECK_EQ(queued->get_status(), status::timed_out);
  CHECK_EQ(queued->get_phase(), phase::dropped);
  // The timer thread takes the task off the queue's books just after settling it.
  CHECK(check::eventually([&] { return rt.get(place::pool).info().queued_tasks == 0; }));

  release.count_down();
  CHECK_EQ(rt.tracker().wait_idle(true, in(30s), false), wait_status::ready);
  CHECK_EQ(ran.load(), 0);
}

TEST_CASE(shutdown_refuses_submissions_until_reset) {
  mp::runtime rt;
  rt.begin_shutdown(false);
  CHECK(rt.is_shut_down());
  for (place p : all_places) {
    auto t = make_task([] {});
    CHECK(throws_shutdown([&] { rt.submit(t, p); }));
    CHECK_EQ(t->submit_ns(), uint64_t{0});  // refused before it was counted
  }
  auto adopted = make_task([] {});
  CHECK(throws_shutdown([&] { rt.adopt(adopted); }));
  CHECK_EQ(rt.tracker().unsettled(), 0u);

  rt.reset_shutdown();
  CHECK(!rt.is_shut_down());
  for (place p : all_places) {
    auto t = make_task([] {});
    rt.submit(t, p);
    CHECK_EQ(t->wait(in(30s)), wait_status::ready);
    CHECK_EQ(t->get_status(), status::done);
  }
}

TEST_CASE(shutdown_with_cancel_pending_cancels_queued_and_running_tasks) {
  std::latch started(2), release(1);
  mp::runtime rt;
  rt.configure_pool(1, 0);
  // Occupy the single pool thread and the single priority worker, then queue behind them.
  std::vector<std::shared_ptr<mp::function_task>> running;
  for (place p : {place::pool, place::priority}) {
    running.push_back(make_task([&] {
      started.count_down();
      release.wait();
    }));
    rt.submit(running.back(), p);
  }
  started.wait();

  std::atomic<int> ran{0};
  std::vector<std::shared_ptr<mp::function_task>> queued;
  for (int i = 0; i < 10; ++i) {
    queued.push_back(make_task([&] { ran.fetch_add(1); }));
    rt.submit(queued.back(), i % 2 ? place::pool : place::priority, i);
  }

  rt.begin_shutdown(true);
  for (auto& t : queued) CHECK_EQ(t->get_status(), status::cancelled);
  for (auto& t : running) {
    CHECK_EQ(t->get_status(), status::cancelled);  // settled at once ...
    CHECK(t->running());                            // ... while its code runs on
    CHECK(t->cancel_requested());
  }
  CHECK_EQ(rt.tracker().unsettled(), 0u);

  release.count_down();
  CHECK_EQ(rt.tracker().wait_idle(true, in(30s), false), wait_status::ready);
  CHECK_EQ(ran.load(), 0);
}

TEST_CASE(tracker_wait_idle_waits_for_settled_and_for_stopped) {
  std::latch release(1);
  mp::runtime rt;
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  for (int i = 0; i < 4; ++i) {
    tasks.push_back(make_task([&] { release.wait(); }));
    rt.submit(tasks.back(), place::cache);
  }
  CHECK_EQ(rt.tracker().unsettled(), 4u);
  CHECK_EQ(rt.tracker().wait_idle(false, in(30ms), false), wait_status::timed_out);
  CHECK_EQ(rt.tracker().wait_idle(true, in(10ms), false), wait_status::timed_out);

  // Cancelling settles them, but their code still runs.
  for (auto& t : tasks) t->cancel();
  CHECK_EQ(rt.tracker().wait_idle(false, in(0s), false), wait_status::ready);
  CHECK_EQ(rt.tracker().wait_idle(true, in(10ms), false), wait_status::timed_out);

  std::thread waiter_thread;
  std::atomic<int> waited{-1};
  waiter_thread = std::thread([&] {
    waited.store(static_cast<int>(rt.tracker().wait_idle(true, in(30s), false)));
  });
  release.count_down();
  waiter_thread.join();
  CHECK_EQ(waited.load(), static_cast<int>(wait_status::ready));
  CHECK_EQ(rt.tracker().live(), 0u);
}

TEST_CASE(configure_pool_resizes_the_pool_and_applies_the_stack_size) {
  mp::runtime rt;
  CHECK(!rt.pool_configured());
  CHECK_EQ(rt.pool_threads(), mp::available_cpus());
  auto warm = make_task([] {});
  rt.submit(warm, place::pool);
  CHECK_EQ(warm->wait(in(30s)), wait_status::ready);

  const size_t page = mp::page_size();
  const size_t stack = (mp::default_stack_size() + 2 * 1024 * 1024 + page - 1) / page * page;
  rt.configure_pool(3, stack);
  CHECK(rt.pool_configured());
  CHECK_EQ(rt.pool_threads(), size_t{3});
  CHECK_EQ(rt.pool_stack_size(), stack);
  CHECK_EQ(rt.get(place::pool).info().num_threads, size_t{3});
  CHECK_EQ(rt.get(place::pool).info().current_threads, size_t{3});

  std::atomic<size_t> seen{0};
  auto t = make_task([&] { seen.store(mp::current_thread_stack_size()); });
  rt.submit(t, place::pool);
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  CHECK(seen.load() >= stack);
}

TEST_CASE(configure_cache_sets_cap_and_idle_timeout) {
  mp::runtime rt;
  CHECK_EQ(rt.cache_max_threads(), mp::default_cache_threads);
  rt.configure_cache(3, 0.1);  // before the cache exists: applied when it is created
  CHECK_EQ(rt.cache_max_threads(), size_t{3});
  CHECK_EQ(rt.cache_idle_timeout(), 0.1);
  CHECK_EQ(rt.get(place::cache).info().num_threads, size_t{3});
  rt.configure_cache(5, 0.1);  // after: applied to the live cache
  CHECK_EQ(rt.get(place::cache).info().num_threads, size_t{5});

  auto t = make_task([] {});
  rt.submit(t, place::cache);
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  CHECK(check::eventually([&] { return rt.get(place::cache).info().current_threads == 0; }));
}

TEST_CASE(priority_workers_start_stop_and_restart_on_submit) {
  mp::runtime rt;
  rt.start_priority(2);
  {
    const mp::executor_info info = rt.get(place::priority).info();
    CHECK(info.running);
    CHECK_EQ(info.current_threads, size_t{2});
  }
  rt.stop_priority(false);
  CHECK(!rt.get(place::priority).info().running);

  auto t = make_task([] {});
  rt.submit(t, place::priority, 5);  // the next submission starts the workers again
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  CHECK(rt.get(place::priority).info().running);
}

TEST_CASE(adopted_task_is_counted_but_runs_only_when_enqueued) {
  mp::runtime rt;
  std::atomic<int> ran{0};
  auto t = make_task([&] { ran.fetch_add(1); });
  rt.adopt(t);
  CHECK_EQ(rt.tracker().unsettled(), 1u);
  CHECK_EQ(t->get_status(), status::pending);
  rt.enqueue(t, place::pool);
  CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  CHECK_EQ(ran.load(), 1);

  // An adopted task that was cancelled before its turn is not queued at all.
  auto cancelled = make_task([&] { ran.fetch_add(1); });
  rt.adopt(cancelled);
  CHECK(cancelled->cancel());
  rt.enqueue(cancelled, place::pool);
  CHECK_EQ(rt.get(place::pool).info().queued_tasks, size_t{0});
  CHECK_EQ(rt.tracker().wait_idle(true, in(30s), false), wait_status::ready);
  CHECK_EQ(ran.load(), 1);

  // An adopted task with a timeout times out while it waits for its turn.
  auto timed = make_task([&] { ran.fetch_add(1); });
  rt.adopt(timed, 0.03);
  CHECK_EQ(timed->wait(in(30s)), wait_status::ready);
  CHECK_EQ(timed->get_status(), status::timed_out);
  rt.enqueue(timed, place::pool);
  CHECK_EQ(ran.load(), 1);
}

TEST_CASE(cancel_tasks_cancels_running_tasks_and_optionally_waiting_ones) {
  std::latch started(2), release(1);
  mp::runtime rt;
  rt.configure_pool(2, 0);
  std::vector<std::shared_ptr<mp::function_task>> running;
  for (int i = 0; i < 2; ++i) {
    running.push_back(make_task([&] {
      started.count_down();
      release.wait();
    }));
    rt.submit(running.back(), place::pool);
  }
  started.wait();
  std::atomic<int> ran{0};
  auto queued = make_task([&] { ran.fetch_add(1); });
  rt.submit(queued, place::pool);
  auto adopted = make_task([&] { ran.fetch_add(1); });  // waits for dependencies
  rt.adopt(adopted);

  rt.cancel_tasks(false);
  for (auto& t : running) CHECK_EQ(t->get_status(), status::cancelled);
  CHECK_EQ(queued->get_status(), status::pending);
  CHECK_EQ(adopted->get_status(), status::pending);

  rt.cancel_tasks(true);
  CHECK_EQ(queued->get_status(), status::cancelled);
  CHECK_EQ(adopted->get_status(), status::cancelled);
  CHECK(check::eventually([&] { return rt.get(place::pool).info().queued_tasks == 0; }));
  release.count_down();
  CHECK_EQ(rt.tracker().wait_idle(true, in(30s), false), wait_status::ready);
  CHECK_EQ(ran.load(), 0);
}

TEST_CASE(cancel_tasks_leaves_a_finished_task_alone) {
  mp::runtime rt;
  auto t = make_task([] {});
  rt.submit(t, place::pool);
  CHECK_EQ(t->wait_stopped(in(30s)), wait_status::ready);
  rt.cancel_tasks(true);
  CHECK_EQ(t->get_status(), status::done);
  CHECK(!t->cancel_requested());
}

TEST_CASE(memory_limit_refuses_submissions_while_exceeded) {
  const double used = mp::used_memory_percent();
  CHECK(used > 0.0);
  CHECK(used <= 100.0);

  mp::runtime rt;
  CHECK(!rt.memory().exceeded());  // no limit set
  rt.memory().set(1e-6);           // far below what any system uses
  CHECK_EQ(rt.memory().get(), 1e-6);
  auto refused = make_task([] {});
  bool threw = false;
  try {
    rt.submit(refused, place::pool);
  } catch (const mp::memory_error&) {
    threw = true;
  }
  CHECK(threw);
  CHECK_EQ(refused->submit_ns(), uint64_t{0});  // refused before it was counted
  CHECK_EQ(rt.tracker().unsettled(), 0u);

  rt.memory().set(0);  // off again
  auto accepted = make_task([] {});
  rt.submit(accepted, place::pool);
  CHECK_EQ(accepted->wait(in(30s)), wait_status::ready);
  CHECK_EQ(accepted->get_status(), status::done);
}

TEST_CASE(find_returns_unsettled_tasks_only) {
  std::latch started(1), release(1);
  mp::runtime rt;
  auto running = make_task([&] {
    started.count_down();
    release.wait();
  });
  rt.submit(running, place::cache);
  started.wait();
  CHECK(rt.find(running->id()) == running);
  CHECK(rt.find(running->id() + 1000000) == nullptr);

  auto finished = make_task([] {});
  rt.submit(finished, place::pool);
  CHECK_EQ(finished->wait(in(30s)), wait_status::ready);
  CHECK(rt.find(finished->id()) == nullptr);  // settled, though still referenced

  release.count_down();
  CHECK_EQ(running->wait(in(30s)), wait_status::ready);
}

TEST_CASE(task_metrics_record_executions_not_drops) {
  mp::metrics_registry registry;
  mp::runtime rt;
  mp::metrics_entry& entry = registry.entry("work");
  for (int i = 0; i < 10; ++i) {
    auto t = std::make_shared<mp::function_task>([i] {
      return i < 7 ? outcome::done : outcome::failed;
    });
    t->set_metrics(&entry);
    rt.submit(t, place::pool);
    CHECK_EQ(t->wait(in(30s)), wait_status::ready);
  }
  auto dropped = make_task([] {});
  dropped->set_metrics(&entry);
  rt.adopt(dropped);
  dropped->cancel();

  // The metrics are recorded before the outcome settles, so they are complete here.
  const auto s = registry.find("work");
  CHECK(s.has_value());
  if (s) {
    CHECK_EQ(s->completed, uint64_t{7});
    CHECK_EQ(s->failed, uint64_t{3});
    CHECK(s->max_ns >= s->min_ns);
  }
}

TEST_CASE_LIMIT(many_submitters_to_all_places_balance_the_books, 120) {
  mp::runtime rt;
  rt.configure_cache(8, 0.5);
  constexpr int per_thread = 1500;
  std::atomic<int> ran{0};
  std::vector<std::thread> submitters;
  for (int s = 0; s < 3; ++s) {
    submitters.emplace_back([&, s] {
      for (int i = 0; i < per_thread; ++i) {
        auto t = make_task([&] { ran.fetch_add(1); });
        const place p = all_places[(s + i) % 3];
        rt.submit(t, p, i % 7, i % 5 == 0 ? 30.0 : -1.0);
        if (i % 11 == 0) t->cancel();
      }
    });
  }
  for (auto& t : submitters) t.join();
  CHECK_EQ(rt.tracker().wait_idle(false, in(60s), false), wait_status::ready);
  CHECK_EQ(rt.tracker().wait_idle(true, in(60s), false), wait_status::ready);
  CHECK_EQ(rt.tracker().unsettled(), 0u);
  CHECK_EQ(rt.tracker().live(), 0u);
  CHECK(ran.load() <= 3 * per_thread);
  CHECK(ran.load() >= 3 * per_thread - 3 * (per_thread / 11 + 1));
}

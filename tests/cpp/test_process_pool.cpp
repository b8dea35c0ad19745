// The worker pool that bounds process tasks, the kill request that reaches a slot's holder, the
// reply watcher, and the two task hand-offs the process backend relies on: a caller claiming
// a queued task to run it itself, and a running task handed over to another thread.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <mutex>
#include <utility>
#include <thread>
#include <vector>

#include "check.hpp"
#include "makeparallel/executor.hpp"
#include "makeparallel/process_pool.hpp"
#include "makeparallel/transport.hpp"
#include "task_helpers.hpp"

namespace {

using mptest::make_task;

/// A worker that sits reading its socket until end of input, like an idle Python worker.
std::shared_ptr<mp::worker_process> idle_worker() {
  return mp::worker_process::spawn(
      {{"/bin/sh", "-c", "exec cat <&3 >/dev/null"}, {"PATH=/usr/bin:/bin"}});
}

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

TEST_CASE(pool_hands_out_at_most_max_slots_and_reuses_the_last_released) {
  mp::worker_pool pool(2);
  mp::worker_slot* a = pool.try_acquire();
  mp::worker_slot* b = pool.try_acquire();
  CHECK(a != nullptr);
  CHECK(b != nullptr);
  CHECK(a != b);
  CHECK(pool.try_acquire() == nullptr);
  CHECK_EQ(pool.busy(), size_t{2});
  pool.release(a);
  pool.release(b);
  CHECK_EQ(pool.busy(), size_t{0});
  // Most recently released first: its worker is the warmest.
  CHECK(pool.try_acquire() == b);
  CHECK(pool.try_acquire() == a);
  pool.release(a);
  pool.release(b);
}

TEST_CASE(acquire_waits_for_a_release_and_close_wakes_waiters_empty_handed) {
  mp::worker_pool pool(1);
  mp::worker_slot* held = pool.acquire();
  CHECK(held != nullptr);
  std::atomic<mp::worker_slot*> got{nullptr};
  std::thread waiter([&] { got.store(pool.acquire()); });
  CHECK(check::eventually([&] { return pool.waiting() == 1; }));
  CHECK(got.load() == nullptr);
  pool.release(held);
  waiter.join();
  CHECK(got.load() == held);
  CHECK_EQ(pool.waiting(), size_t{0});

  std::atomic<bool> returned{false};
  std::thread blocked([&] {
    CHECK(pool.acquire() == nullptr);
    returned.store(true);
  });
  CHECK(check::eventually([&] { return pool.waiting() == 1; }));
  pool.close();
  blocked.join();
  CHECK(returned.load());
  CHECK(pool.try_acquire() == nullptr);
  pool.release(got.load());
}

TEST_CASE(raising_the_bound_wakes_a_waiter) {
  mp::worker_pool pool(1);
  mp::worker_slot* held = pool.acquire();
  std::atomic<mp::worker_slot*> got{nullptr};
  std::thread waiter([&] { got.store(pool.acquire()); });
  CHECK(check::eventually([&] { return pool.waiting() == 1; }));
  pool.set_max(2);
  waiter.join();
  CHECK(got.load() != nullptr);
  CHECK(got.load() != held);
  pool.release(held);
  pool.release(got.load());
}

TEST_CASE(lowering_the_bound_retires_idle_workers_now_and_busy_ones_on_release) {
  mp::worker_pool pool(3);
  std::vector<mp::worker_slot*> slots;
  std::vector<std::shared_ptr<mp::worker_process>> procs;
  for (int i = 0; i < 3; ++i) {
    slots.push_back(pool.try_acquire());
    slots.back()->proc = idle_worker();
    procs.push_back(slots.back()->proc);
  }
  pool.release(slots[0]);  // idle, least recently used
  pool.release(slots[1]);  // idle
  pool.set_max(1);         // slots[2] is still busy: both idle ones go
  CHECK(!procs[0]->alive());
  CHECK(!procs[1]->alive());
  CHECK(procs[2]->alive());
  CHECK(slots[0]->proc == nullptr);
  CHECK(pool.try_acquire() == nullptr);  // the busy slot already fills the bound
  pool.release(slots[2]);                // within the bound again: it keeps its worker
  CHECK(procs[2]->alive());
  mp::worker_slot* again = pool.try_acquire();
  CHECK(again == slots[2]);
  CHECK(again->proc == procs[2]);
  pool.set_max(0);
  pool.release(again);  // over the bound now: its worker is stopped
  CHECK(!procs[2]->alive());
  const mp::exit_info e = procs[2]->stop(0, false);
  CHECK(!e.signalled);  // it saw end of input and exited by itself
}

TEST_CASE_LIMIT(many_threads_never_hold_more_slots_than_the_largest_bound, 120) {
  mp::worker_pool pool(2);
  std::atomic<int> held{0}, most{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      for (int n = 0; n < 3000; ++n) {
        mp::worker_slot* s = (n + i) % 3 == 0 ? pool.try_acquire() : pool.acquire();
        if (!s) continue;
        const int now = held.fetch_add(1) + 1;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        held.fetch_sub(1);
        pool.release(s);
      }
    });
  }
  std::thread tuner([&] {
    for (size_t n = 0; !stop.load(); ++n) {
      pool.set_max(1 + n % 3);  // between 1 and 3
      std::this_thread::yield();
    }
  });
  for (auto& t : threads) t.join();
  stop.store(true);
  tuner.join();
  CHECK(most.load() <= 3);
  CHECK(most.load() >= 1);
  CHECK_EQ(pool.busy(), size_t{0});
}

TEST_CASE(a_kill_request_shuts_the_socket_only_for_the_current_task) {
  mp::worker_pool pool(1);
  mp::worker_slot* s = pool.try_acquire();
  mp::ipc::unique_fd ours, theirs;
  mp::ipc::make_socket_pair(ours, theirs);
  s->request_kill(7);  // no task running: ignored
  CHECK(!readable(ours.get()));
  s->begin(7, ours.get());
  s->request_kill(8);  // another task: ignored
  CHECK(!readable(ours.get()));
  CHECK(!s->kill_requested(7));
  CHECK(::write(theirs.get(), "r", 1) == 1);  // a reply that came before the kill
  s->request_kill(7);
  CHECK(s->kill_requested(7));
  char buf[4] = {};
  CHECK(::read(ours.get(), buf, sizeof buf) == 1);  // still read first...
  CHECK(readable(ours.get()));
  CHECK(::read(ours.get(), buf, sizeof buf) == 0);  // ...then end of input
  s->end();
  s->request_kill(7);  // over: ignored
  s->begin(9, theirs.get());
  CHECK(!s->kill_requested(9));  // a stale request does not carry over to the next task
  CHECK(!readable(theirs.get()));
  s->end();
  pool.release(s);
}

TEST_CASE(a_kill_wakes_a_thread_blocked_reading_the_reply) {
  mp::worker_slot s;
  mp::ipc::unique_fd ours, theirs;
  mp::ipc::make_socket_pair(ours, theirs);
  s.begin(3, ours.get());
  std::atomic<long> got{-1};
  std::thread reader([&] {
    char c = 0;
    got.store(static_cast<long>(::read(ours.get(), &c, 1)));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // most likely blocked by now
  CHECK_EQ(got.load(), -1L);
  s.request_kill(3);
  reader.join();
  CHECK_EQ(got.load(), 0L);
  s.end();
}

TEST_CASE(a_caller_claims_a_queued_task_only_when_it_overtakes_nobody) {
  mp::executor_options o;
  o.num_threads = 1;
  o.priority_order = true;
  o.start_stopped = true;
  mp::executor ex(o);
  std::atomic<int> runs{0};
  std::atomic<std::thread::id> ran_on{};
  auto first = make_task([&] {
    runs.fetch_add(1);
    ran_on.store(std::this_thread::get_id());
  });
  ex.submit(first, 0, false);
  CHECK(ex.claim_if_alone(*first));
  CHECK_EQ(ex.info().queued_tasks, size_t{0});
  CHECK(!ex.claim_if_alone(*first));  // already taken
  first->run();
  CHECK(first->settled());
  CHECK(ran_on.load() == std::this_thread::get_id());

  auto low = make_task([&] { runs.fetch_add(1); });
  auto high = make_task([&] { runs.fetch_add(1); });
  ex.submit(low, 1, false);
  ex.submit(high, 5, false);
  CHECK(!ex.claim_if_alone(*low));  // `high` is queued too: it must go first
  CHECK(high->cancel());
  CHECK(ex.claim_if_alone(*low));
  low->run();

  auto cancelled = make_task([&] { runs.fetch_add(1); });
  ex.submit(cancelled, 0, false);
  CHECK(cancelled->cancel());
  CHECK(!ex.claim_if_alone(*cancelled));

  // The executor skips what was claimed or cancelled, and runs nothing twice.
  auto last = make_task([&] { runs.fetch_add(1); });
  ex.submit(last, 0, true);
  CHECK(mptest::wait_all({last}));
  CHECK_EQ(runs.load(), 3);
}

TEST_CASE(claiming_races_with_workers_and_cancels_without_running_anything_twice) {
  mp::executor_options o;
  o.num_threads = 2;
  o.priority_order = true;
  mp::executor ex(o);
  constexpr int n = 3000;
  std::vector<std::atomic<int>> runs(n);
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  for (int i = 0; i < n; ++i) {
    auto t = make_task([&runs, i] { runs[static_cast<size_t>(i)].fetch_add(1); });
    tasks.push_back(t);
    ex.submit(t, 0, true);
    if (i % 3 == 0) t->cancel();
    if (ex.claim_if_alone(*t)) t->run();
  }
  CHECK(mptest::wait_all(tasks));
  CHECK(ex.info().queued_tasks == 0);
  for (int i = 0; i < n; ++i) {
    const int r = runs[static_cast<size_t>(i)].load();
    CHECK(r <= 1);
    // Every task that was not cancelled ran exactly once, wherever it ran.
    if (tasks[static_cast<size_t>(i)]->get_outcome() == mp::outcome::done) CHECK_EQ(r, 1);
  }
}

/// A connected socket pair: a worker's socket as the parent and the worker hold it.
struct watched_pair {
  mp::ipc::unique_fd ours, theirs;
  watched_pair() { mp::ipc::make_socket_pair(ours, theirs); }
  void reply() const { CHECK(::write(theirs.get(), "r", 1) == 1); }
};

TEST_CASE(the_watcher_runs_a_handler_once_when_its_descriptor_is_readable) {
  mp::reply_watcher w;
  watched_pair a, b, c;
  std::atomic<int> ran_a{0}, ran_b{0}, ran_c{0};
  w.arm(1, a.ours.get(), [&] { ran_a.fetch_add(1); });
  w.arm(2, b.ours.get(), [&] { ran_b.fetch_add(1); });
  w.arm(3, c.ours.get(), [&] { ran_c.fetch_add(1); });
  a.reply();
  a.reply();  // still one call
  CHECK(::shutdown(b.ours.get(), SHUT_RD) == 0);  // as a kill request does
  c.theirs.reset();                               // as a worker that dies does
  CHECK(check::eventually(
      [&] { return ran_a.load() == 1 && ran_b.load() == 1 && ran_c.load() == 1; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_EQ(ran_a.load(), 1);
  CHECK_EQ(ran_b.load(), 1);
  CHECK_EQ(ran_c.load(), 1);
  CHECK(!w.disarm(1));  // already ran
  // The same descriptor can be armed again under a new key once the handler ran.
  std::atomic<int> again{0};
  w.arm(4, a.ours.get(), [&] { again.fetch_add(1); });
  CHECK(check::eventually([&] { return again.load() == 1; }));  // still readable
}

TEST_CASE(a_disarmed_handler_never_runs_and_an_old_key_disarms_nothing) {
  mp::reply_watcher w;
  watched_pair a;
  std::atomic<int> ran{0};
  w.arm(7, a.ours.get(), [&] { ran.fetch_add(1); });
  CHECK(w.disarm(7));
  CHECK(!w.disarm(7));
  a.reply();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_EQ(ran.load(), 0);
  char c = 0;
  CHECK(::read(a.ours.get(), &c, 1) == 1);  // the disarming side owns the read

  w.arm(8, a.ours.get(), [&] { ran.fetch_add(1); });
  CHECK(!w.disarm(7));  // a stale key leaves the new arm alone
  a.reply();
  CHECK(check::eventually([&] { return ran.load() == 1; }));
  CHECK(!w.disarm(8));
}

TEST_CASE_LIMIT(each_arm_is_either_handled_or_disarmed_never_both_under_races, 120) {
  mp::reply_watcher w;
  constexpr int threads = 4, rounds = 2000;
  std::atomic<int> handled{0}, disarmed{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < threads; ++i) {
    ts.emplace_back([&, i] {
      watched_pair p;
      for (int n = 0; n < rounds; ++n) {
        const uint64_t key = static_cast<uint64_t>(i) * rounds + static_cast<uint64_t>(n) + 1;
        std::atomic<bool> done{false};
        w.arm(key, p.ours.get(), [&] {
          handled.fetch_add(1);
          done.store(true);
        });
        p.reply();
        if (n % 2 == 0 && w.disarm(key)) {
          disarmed.fetch_add(1);
        } else {
          CHECK(check::eventually([&] { return done.load(); }));
        }
        char c = 0;
        CHECK(::read(p.ours.get(), &c, 1) == 1);
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK_EQ(handled.load() + disarmed.load(), threads * rounds);
}

/// A gate of `units` shared by executors, as the process backend shares its worker pool.
class counting_gate final : public mp::task_gate {
 public:
  explicit counting_gate(int units) : free_(units) {}
  std::vector<mp::executor*> executors;

  bool try_take() override {
    int f = free_.load();
    while (f > 0 && !free_.compare_exchange_weak(f, f - 1)) {
    }
    if (f <= 0) return false;
    t_held = true;
    return true;
  }
  void after_run() override {
    if (!std::exchange(t_held, false)) return;
    free_.fetch_add(1);
    for (mp::executor* e : executors) e->capacity_freed();
  }

 private:
  std::atomic<int> free_;
  static thread_local bool t_held;
};
thread_local bool counting_gate::t_held = false;

TEST_CASE(a_gate_bounds_running_tasks_and_keeps_priority_order_across_threads) {
  counting_gate gate(1);
  mp::executor_options o;
  o.num_threads = 3;  // more threads than units: the gate, not the threads, decides
  o.priority_order = true;
  o.gate = &gate;
  mp::executor ex(o);
  gate.executors = {&ex};
  mptest::held_worker blocker;
  ex.submit(blocker.task, 100);
  blocker.started.wait();

  std::mutex mu;
  std::vector<int> order;
  std::atomic<int> running{0}, most{0};
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  for (int p : {1, 5, 3, 5, 0, 4, 2}) {
    tasks.push_back(make_task([&, p] {
      const int now = running.fetch_add(1) + 1;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      {
        std::lock_guard<std::mutex> lk(mu);
        order.push_back(p);
      }
      running.fetch_sub(1);
    }));
    ex.submit(tasks.back(), p);
  }
  // Idle threads must not take tasks out of the queue while the only unit is held.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_EQ(ex.info().queued_tasks, size_t{7});
  blocker.release.count_down();
  CHECK(mptest::wait_all(tasks));
  CHECK_EQ(most.load(), 1);
  CHECK(order == std::vector<int>({5, 5, 4, 3, 2, 1, 0}));
}

TEST_CASE_LIMIT(executors_sharing_a_gate_under_load_run_every_task_once, 120) {
  counting_gate gate(2);
  mp::executor_options o;
  o.num_threads = 3;
  o.gate = &gate;
  mp::executor a(o);
  o.priority_order = true;
  mp::executor b(o);
  gate.executors = {&a, &b};
  constexpr int n = 4000;
  std::vector<std::atomic<int>> runs(n);
  std::atomic<int> running{0}, most{0};
  std::vector<std::shared_ptr<mp::function_task>> tasks;
  for (int i = 0; i < n; ++i) {
    tasks.push_back(make_task([&, i] {
      const int now = running.fetch_add(1) + 1;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      runs[static_cast<size_t>(i)].fetch_add(1);
      running.fetch_sub(1);
    }));
    (i % 2 ? a : b).submit(tasks.back(), i % 7);
    if (i % 500 == 0) a.reconfigure(1 + static_cast<size_t>(i / 500) % 3, 0);
  }
  CHECK(mptest::wait_all(tasks));
  CHECK(most.load() <= 2);
  int wrong = 0;
  for (auto& r : runs) wrong += r.load() != 1 ? 1 : 0;
  CHECK_EQ(wrong, 0);
}

/// A task whose execute() passes the duty to complete it to a thread of its own.
class handed_task final : public mp::task {
 public:
  std::thread finisher;
  std::latch may_finish{1};

 protected:
  void execute() override {
    finisher = std::thread([this] {
      may_finish.wait();
      complete(mp::outcome::done);
    });
    hand_over();
  }
};

TEST_CASE(a_task_handed_over_is_left_running_until_its_new_owner_completes_it) {
  auto t = std::make_shared<handed_task>();
  t->run();
  CHECK(t->running());
  CHECK(!t->settled());  // run() did not fail it for returning early
  t->may_finish.count_down();
  CHECK(t->wait(mptest::in(std::chrono::seconds(30))) == mp::wait_status::ready);
  t->finisher.join();
  CHECK(t->get_outcome() == mp::outcome::done);
}

}  // namespace

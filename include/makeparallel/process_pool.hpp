// Worker processes: spawning (posix_spawn, never fork() of the threaded parent), liveness,
// termination with a grace period, and reaping.
//
// Each worker is a fresh program started with its end of a private socket pair at a fixed
// descriptor (worker_fd); the parent keeps the other end, close-on-exec, so no other
// child inherits it. Only the parent can talk to a worker: nothing else has the socket.
//
// Reaping is the one operation that needs care: once a process is reaped its pid may be
// reused, so every signal and every waitpid() of a worker happens under the worker's own
// mutex, and nothing signals a pid after it was reaped.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "makeparallel/transport.hpp"

namespace mp {

/// In a worker process: starts a thread that ends this process (exit status 1, no cleanup)
/// as soon as `parent` exits, even if the parent was killed and had no chance to close
/// anything. Not PR_SET_PDEATHSIG: that follows the parent's *thread* that spawned the worker,
/// and the parent's threads come and go while its workers are reused. Watches a pidfd of the
/// parent; on kernels without pidfds (before 5.3) it checks getppid() twice a second.
/// Returns false if `parent` is already gone (the caller should exit).
bool watch_parent(pid_t parent);

/// The descriptor at which a worker finds its end of the socket.
constexpr int worker_fd = 3;

/// How to start a worker: argv[0] is the executable's path; env entries are "NAME=value".
struct spawn_spec {
  std::vector<std::string> argv;
  std::vector<std::string> env;
};

/// How a worker process ended.
struct exit_info {
  bool signalled = false;  ///< true: killed by `signal`; false: exited with `code`
  int code = 0;            ///< exit status when !signalled
  int signal = 0;          ///< signal number when signalled
  /// E.g. "exited with code 3" or "was killed by signal 11 (SIGSEGV)".
  std::string describe() const;
};

/// One worker process and the parent's end of its socket. Thread-safe: any thread may
/// stop it; reads and writes of the socket belong to one owner thread at a time.
class worker_process {
 public:
  /// Starts a worker. Throws std::system_error if the process cannot be created.
  static std::shared_ptr<worker_process> spawn(const spawn_spec& spec);
  /// Kills and reaps the process if it still runs, and closes the socket.
  ~worker_process();
  worker_process(const worker_process&) = delete;
  worker_process& operator=(const worker_process&) = delete;

  pid_t pid() const noexcept { return pid_; }
  /// The parent's end of the socket.
  int socket() const noexcept { return sock_.get(); }

  /// Ends the process and reaps it; returns how it ended. First waits up to `grace_secs`
  /// for it to exit by itself: with `sigterm` it is sent SIGTERM, otherwise its socket is
  /// shut down so that it sees end of input. Past the grace period it gets SIGKILL.
  /// Idempotent: later calls return the first result at once.
  exit_info stop(double grace_secs, bool sigterm);
  /// Shuts the socket down so the worker sees end of input and exits; does not wait.
  void close_input() noexcept;
  /// Sends SIGTERM unless the process was reaped already; does not wait.
  void terminate();
  /// Reaps the process if it has exited, without blocking; nullopt while it runs.
  std::optional<exit_info> poll_exit();
  /// True until the process is known to have exited.
  bool alive() { return !poll_exit().has_value(); }

 private:
  worker_process(pid_t pid, ipc::unique_fd sock, ipc::unique_fd pidfd) noexcept;
  /// waitpid() under mu_; `block` waits for the exit. True once reaped.
  bool reap_locked(bool block);
  /// Waits up to `secs` for the process to exit, without reaping it.
  void wait_exit(double secs);

  const pid_t pid_;
  ipc::unique_fd sock_;
  ipc::unique_fd pidfd_;  // readable once the process exits; -1 if the kernel lacks pidfd
  std::mutex mu_;
  bool reaped_ = false;
  exit_info info_;
};

/// Every worker process started by this process, for counting and for the cleanup at
/// exit. Holds weak references: the owner of a worker decides its lifetime. Thread-safe.
class process_registry {
 public:
  /// Records `w` (called right after spawning it).
  void add(const std::shared_ptr<worker_process>& w);
  /// Workers still running.
  size_t alive();
  /// Pids of the workers still running.
  std::vector<pid_t> pids();
  /// Stops every recorded worker and reaps them: each is sent SIGTERM (`sigterm`) or sees
  /// end of input, then SIGKILL after `grace_secs`. Used at interpreter exit.
  void stop_all(double grace_secs, bool sigterm = false);

 private:
  std::vector<std::shared_ptr<worker_process>> live_locked();

  std::mutex mu_;
  std::vector<std::weak_ptr<worker_process>> workers_;
};

/// The right to run one process task: a worker process (started lazily by the holder, kept
/// across tasks) and the task running on it, which any thread may ask to kill.
/// A slot is held by one thread at a time (see worker_pool); `request_kill` may come from
/// any thread. Slots live as long as their pool, so a pointer to one never dangles.
///
/// A kill reaches whoever waits for the reply (the holder, or the reply watcher on its
/// behalf) without a descriptor of its own: it shuts down the reading side of the parent's
/// end of the socket, so that a blocked read returns end of input. Data already received is
/// still read first. The socket is then no good for another task: the holder replaces the
/// worker of a task whose kill was requested, whatever the task's ending.
class worker_slot {
 public:
  worker_slot() = default;
  worker_slot(const worker_slot&) = delete;
  worker_slot& operator=(const worker_slot&) = delete;

  /// The worker process, or null before the first task or after it died. Holder only.
  std::shared_ptr<worker_process> proc;

  /// The holder starts task `id` (not 0) on socket `sock`, which must stay open until end().
  void begin(uint64_t id, int sock) noexcept;
  /// The holder is done with its task: from now on no kill request touches the socket.
  void end() noexcept;
  /// If task `id` runs on this slot now, records the request and shuts down the reading
  /// side of its socket; otherwise does nothing. Any thread.
  void request_kill(uint64_t id) noexcept;
  /// True if a kill of task `id` was requested (and its socket shut down). Any thread.
  bool kill_requested(uint64_t id) const noexcept {
    return id != 0 && kill_id_.load(std::memory_order_acquire) == id;
  }

 private:
  std::mutex mu_;
  uint64_t task_id_ = 0;  // under mu_
  int sock_ = -1;         // under mu_
  std::atomic<uint64_t> kill_id_{0};
};

/// A bounded set of worker slots: at most `max_workers` are held at once, and at most that
/// many keep a process. Idle slots are handed out most recently used first, so a warm worker
/// is preferred. Lowering the bound retires idle workers at once and busy ones as they are
/// released. Thread-safe.
class worker_pool {
 public:
  explicit worker_pool(size_t max_workers);
  /// Stops the processes of idle slots (busy ones belong to their holders).
  ~worker_pool();
  worker_pool(const worker_pool&) = delete;
  worker_pool& operator=(const worker_pool&) = delete;

  /// A slot if one is free now, else null. Never blocks.
  worker_slot* try_acquire();
  /// A slot, waiting for one to be released if all are held; null once closed.
  worker_slot* acquire();
  /// Gives a slot back. Its process is kept for the next holder, unless the bound was
  /// lowered meanwhile: then it is asked to exit and reaped here (an idle worker exits as
  /// soon as it sees end of input, so this is brief).
  void release(worker_slot* s);

  /// Changes the bound; waiting acquirers get the new slots.
  void set_max(size_t max_workers);
  /// Refuses every acquire from now on and wakes the waiting ones (interpreter exit).
  void close();

  /// Slots held now (tasks running in workers).
  size_t busy() const;
  /// Threads blocked in acquire().
  size_t waiting() const;

 private:
  /// A free slot (counted as busy), or null if all are held.
  worker_slot* take_locked();
  /// Takes the processes of idle slots beyond the bound; the caller stops them unlocked.
  std::vector<std::shared_ptr<worker_process>> trim_locked();
  /// Applies `change` under the lock, then retires the idle workers beyond the bound and
  /// wakes the waiting acquirers.
  void reshape(const std::function<void()>& change);

  mutable std::mutex mu_;
  std::condition_variable free_cv_;
  std::vector<std::unique_ptr<worker_slot>> all_;  // every slot ever made, for stable pointers
  std::vector<worker_slot*> idle_;   // free slots, most recently released last
  std::vector<worker_slot*> spare_;  // slots beyond the bound; they keep no process
  size_t max_;
  size_t busy_ = 0;
  size_t waiting_ = 0;
  bool closed_ = false;
};

/// Runs a handler, once, when a descriptor becomes readable or hung up: how replies that
/// nobody is waiting for get collected (a worker's socket, which a kill request also makes
/// readable). One thread, started on first use, sleeps in epoll_wait for all of them. A
/// waiter that wants to read the descriptor itself disarms it first; exactly one of the two,
/// the handler or that waiter, then owns the reads. Thread-safe.
class reply_watcher {
 public:
  reply_watcher();
  /// Stops the thread; handlers not run by then never run.
  ~reply_watcher();
  reply_watcher(const reply_watcher&) = delete;
  reply_watcher& operator=(const reply_watcher&) = delete;

  /// Runs `on_ready` on the watcher's thread once `fd` is readable or hung up, unless
  /// disarm(key) comes first. `key` (a task id, not 0) names the arm; a descriptor belongs
  /// to at most one arm at a time. The handler must not block for long: every other arm
  /// waits meanwhile. Throws std::system_error.
  void arm(uint64_t key, int fd, std::function<void()> on_ready);
  /// Cancels the arm `key`. True: the handler will never run and the caller owns the
  /// reads; false: the handler ran or runs now, or there is no such arm.
  bool disarm(uint64_t key);

 private:
  struct watch {
    int fd;
    std::function<void()> on_ready;
  };
  void run();

  ipc::unique_fd epoll_;
  ipc::unique_fd stop_;  // an eventfd that ends the thread; its epoll key is 0
  std::mutex mu_;
  std::condition_variable exited_cv_;
  std::unordered_map<uint64_t, watch> armed_;
  bool started_ = false;
  bool exited_ = false;
};

}  // namespace mp

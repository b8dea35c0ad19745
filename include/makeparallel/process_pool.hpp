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

#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "makeparallel/transport.hpp"

namespace mp {

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
  /// Stops every recorded worker (end of input, then SIGKILL after `grace_secs`) and
  /// reaps them. Used at interpreter exit.
  void stop_all(double grace_secs);

 private:
  std::vector<std::shared_ptr<worker_process>> live_locked();

  std::mutex mu_;
  std::vector<std::weak_ptr<worker_process>> workers_;
};

}  // namespace mp

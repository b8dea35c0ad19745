#include "makeparallel/process_pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <system_error>
#include <thread>

namespace mp {

namespace {

[[noreturn]] void throw_errno(int err, const char* what) {
  throw std::system_error(err, std::generic_category(), what);
}

/// Frees posix_spawn's attribute objects on every path out of spawn().
struct spawn_attrs {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  spawn_attrs() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
  }
  ~spawn_attrs() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
  spawn_attrs(const spawn_attrs&) = delete;
  spawn_attrs& operator=(const spawn_attrs&) = delete;
};

int open_pidfd(pid_t pid) noexcept {
#ifdef SYS_pidfd_open
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) {
    ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
    return static_cast<int>(fd);
  }
#else
  (void)pid;
#endif
  return -1;
}

}  // namespace

std::string exit_info::describe() const {
  if (!signalled) return "exited with code " + std::to_string(code);
  const char* abbrev = sigabbrev_np(signal);
  std::string s = "was killed by signal " + std::to_string(signal);
  if (abbrev) s += std::string(" (SIG") + abbrev + ")";
  return s;
}

worker_process::worker_process(pid_t pid, ipc::unique_fd sock, ipc::unique_fd pidfd) noexcept
    : pid_(pid), sock_(std::move(sock)), pidfd_(std::move(pidfd)) {}

std::shared_ptr<worker_process> worker_process::spawn(const spawn_spec& spec) {
  if (spec.argv.empty()) throw std::invalid_argument("spawn_spec.argv is empty");
  ipc::unique_fd parent_end, child_end;
  ipc::make_socket_pair(parent_end, child_end);
  // dup2 onto the same number would keep close-on-exec set, so move it out of the way.
  if (child_end.get() == worker_fd) {
    const int moved = ::fcntl(child_end.get(), F_DUPFD_CLOEXEC, worker_fd + 1);
    if (moved < 0) throw_errno(errno, "fcntl");
    child_end.reset(moved);
  }

  spawn_attrs sa;
  if (int e = posix_spawn_file_actions_adddup2(&sa.actions, child_end.get(), worker_fd)) {
    throw_errno(e, "posix_spawn_file_actions_adddup2");
  }
  // Our worker threads block asynchronous signals and Python ignores SIGPIPE; both
  // would be inherited through exec, so the worker starts from a clean slate instead.
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) {
    sigaddset(&defaults, s);
  }
  posix_spawnattr_setsigmask(&sa.attr, &none);
  posix_spawnattr_setsigdefault(&sa.attr, &defaults);
  posix_spawnattr_setflags(&sa.attr,
                           static_cast<short>(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF));

  std::vector<char*> argv, envp;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : spec.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  pid_t pid = 0;
  if (int e = posix_spawn(&pid, argv[0], &sa.actions, &sa.attr, argv.data(), envp.data())) {
    throw_errno(e, "posix_spawn");
  }
  child_end.reset();  // the child has its copy; ours would keep its input open forever
  ipc::unique_fd pidfd(open_pidfd(pid));
  return std::shared_ptr<worker_process>(
      new worker_process(pid, std::move(parent_end), std::move(pidfd)));
}

worker_process::~worker_process() { stop(0.0, false); }

void worker_process::close_input() noexcept { ::shutdown(sock_.get(), SHUT_RDWR); }

bool worker_process::reap_locked(bool block) {
  if (reaped_) return true;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
    if (r == pid_) break;
    if (r == 0) return false;
    if (errno == EINTR) continue;
    // ECHILD: someone else reaped it (e.g. a SIGCHLD handler set to SIG_IGN). It is gone.
    reaped_ = true;
    info_ = exit_info{false, -1, 0};
    return true;
  }
  reaped_ = true;
  if (WIFSIGNALED(status)) {
    info_ = exit_info{true, 0, WTERMSIG(status)};
  } else {
    info_ = exit_info{false, WEXITSTATUS(status), 0};
  }
  return true;
}

std::optional<exit_info> worker_process::poll_exit() {
  std::lock_guard<std::mutex> lk(mu_);
  if (reap_locked(false)) return info_;
  return std::nullopt;
}

void worker_process::wait_exit(double secs) {
  if (!(secs > 0)) return;
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(secs);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    if (pidfd_) {
      pollfd p{pidfd_.get(), POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r > 0) return;
      if (r == 0 || errno != EINTR) return;
      continue;
    }
    // No pidfd (kernel before 5.3): look every few milliseconds, for the grace period only.
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (reap_locked(false)) return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

exit_info worker_process::stop(double grace_secs, bool sigterm) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (reap_locked(false)) return info_;
    if (sigterm) {
      ::kill(pid_, SIGTERM);
    } else {
      close_input();
    }
  }
  wait_exit(grace_secs);
  std::lock_guard<std::mutex> lk(mu_);
  if (!reap_locked(false)) {
    ::kill(pid_, SIGKILL);
    reap_locked(true);
  }
  return info_;
}

void process_registry::add(const std::shared_ptr<worker_process>& w) {
  std::lock_guard<std::mutex> lk(mu_);
  // Prune entries of workers that are gone, so the list stays as long as the pool.
  std::erase_if(workers_, [](const std::weak_ptr<worker_process>& p) { return p.expired(); });
  workers_.push_back(w);
}

std::vector<std::shared_ptr<worker_process>> process_registry::live_locked() {
  std::vector<std::shared_ptr<worker_process>> out;
  for (const auto& p : workers_) {
    if (auto w = p.lock()) out.push_back(std::move(w));
  }
  return out;
}

size_t process_registry::alive() {
  std::vector<std::shared_ptr<worker_process>> ws;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ws = live_locked();
  }
  size_t n = 0;
  for (auto& w : ws) n += w->alive() ? 1 : 0;
  return n;
}

std::vector<pid_t> process_registry::pids() {
  std::vector<std::shared_ptr<worker_process>> ws;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ws = live_locked();
  }
  std::vector<pid_t> out;
  for (auto& w : ws) {
    if (w->alive()) out.push_back(w->pid());
  }
  return out;
}

void process_registry::stop_all(double grace_secs) {
  std::vector<std::shared_ptr<worker_process>> ws;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ws = live_locked();
  }
  // Tell them all first, so they wind down together and the grace period is paid once.
  for (auto& w : ws) w->close_input();
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_secs);
  for (auto& w : ws) {
    const std::chrono::duration<double> left = end - std::chrono::steady_clock::now();
    w->stop(std::fmax(left.count(), 0.0), false);
  }
}

}  // namespace mp

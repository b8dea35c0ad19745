#include "makeparallel/process_pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
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

#include "makeparallel/os_thread.hpp"

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

/// Seconds an idle worker that is retired gets to exit at end of input before SIGKILL.
constexpr double retire_grace_secs = 2.0;

void stop_all_of(std::vector<std::shared_ptr<worker_process>>& procs) {
  for (auto& p : procs) p->close_input();  // all at once, so they wind down together
  for (auto& p : procs) p->stop(retire_grace_secs, false);
  procs.clear();
}

}  // namespace

bool watch_parent(pid_t parent) {
  const int fd = open_pidfd(parent);
  // Checked after the pidfd exists: if the parent is still ours now, the pidfd refers to it
  // and not to a later process that reused its pid.
  if (::getppid() != parent) {
    if (fd >= 0) ::close(fd);
    return false;
  }
  start_thread("mp-watch", 0, [fd, parent] {
    if (fd >= 0) {
      pollfd p{fd, POLLIN, 0};
      while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
    } else {
      while (::getppid() == parent) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    ::_exit(1);
  });
  return true;
}

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
  // Standard input is the parent's terminal or pipe, not the worker's to read: a task that
  // reads it gets end of input at once instead of competing with the parent.
  if (int e = posix_spawn_file_actions_addopen(&sa.actions, STDIN_FILENO, "/dev/null",
                                               O_RDONLY, 0)) {
    throw_errno(e, "posix_spawn_file_actions_addopen");
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

void worker_process::terminate() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!reap_locked(false)) ::kill(pid_, SIGTERM);
}

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

void process_registry::stop_all(double grace_secs, bool sigterm) {
  std::vector<std::shared_ptr<worker_process>> ws;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ws = live_locked();
  }
  // Tell them all first, so they wind down together and the grace period is paid once.
  for (auto& w : ws) {
    if (sigterm) {
      w->terminate();
    } else {
      w->close_input();
    }
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_secs);
  for (auto& w : ws) {
    const std::chrono::duration<double> left = end - std::chrono::steady_clock::now();
    w->stop(std::fmax(left.count(), 0.0), sigterm);
  }
}

void worker_slot::begin(uint64_t id, int sock) noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  task_id_ = id;
  sock_ = sock;
}

void worker_slot::end() noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  task_id_ = 0;
  sock_ = -1;
}

void worker_slot::request_kill(uint64_t id) noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  if (id == 0 || task_id_ != id) return;
  kill_id_.store(id, std::memory_order_release);
  // Under mu_: the holder cannot end() the task, and so close the socket, meanwhile.
  ::shutdown(sock_, SHUT_RD);
}

worker_pool::worker_pool(size_t max_workers) : max_(max_workers) {}

worker_pool::~worker_pool() {
  std::vector<std::shared_ptr<worker_process>> procs;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (worker_slot* s : idle_) {
      if (s->proc) procs.push_back(std::move(s->proc));
    }
  }
  stop_all_of(procs);
}

worker_slot* worker_pool::take_locked() {
  worker_slot* s = nullptr;
  if (!idle_.empty()) {
    s = idle_.back();
    idle_.pop_back();
  } else if (busy_ < max_) {
    if (!spare_.empty()) {
      s = spare_.back();
      spare_.pop_back();
    } else {
      all_.push_back(std::make_unique<worker_slot>());
      s = all_.back().get();
    }
  } else {
    return nullptr;
  }
  ++busy_;
  return s;
}

worker_slot* worker_pool::try_acquire() {
  std::lock_guard<std::mutex> lk(mu_);
  return closed_ ? nullptr : take_locked();
}

worker_slot* worker_pool::acquire() {
  std::unique_lock<std::mutex> lk(mu_);
  ++waiting_;
  worker_slot* s = nullptr;
  free_cv_.wait(lk, [&] { return closed_ || (s = take_locked()) != nullptr; });
  --waiting_;
  return s;
}

void worker_pool::release(worker_slot* s) {
  std::shared_ptr<worker_process> retired;
  {
    std::lock_guard<std::mutex> lk(mu_);
    --busy_;
    if (closed_ || busy_ + idle_.size() >= max_) {
      retired = std::move(s->proc);  // over the bound: this slot keeps no process
      spare_.push_back(s);
    } else {
      idle_.push_back(s);
    }
    free_cv_.notify_one();
  }
  if (retired) retired->stop(retire_grace_secs, false);
}

std::vector<std::shared_ptr<worker_process>> worker_pool::trim_locked() {
  std::vector<std::shared_ptr<worker_process>> procs;
  // The least recently used idle slots go first.
  while (!idle_.empty() && (closed_ || busy_ + idle_.size() > max_)) {
    worker_slot* s = idle_.front();
    idle_.erase(idle_.begin());
    if (s->proc) procs.push_back(std::move(s->proc));
    spare_.push_back(s);
  }
  return procs;
}

void worker_pool::reshape(const std::function<void()>& change) {
  std::vector<std::shared_ptr<worker_process>> procs;
  {
    std::lock_guard<std::mutex> lk(mu_);
    change();
    procs = trim_locked();
    free_cv_.notify_all();
  }
  stop_all_of(procs);
}

void worker_pool::set_max(size_t max_workers) {
  reshape([&] { max_ = max_workers; });
}

void worker_pool::close() {
  reshape([&] { closed_ = true; });
}

size_t worker_pool::busy() const {
  std::lock_guard<std::mutex> lk(mu_);
  return busy_;
}

size_t worker_pool::waiting() const {
  std::lock_guard<std::mutex> lk(mu_);
  return waiting_;
}

reply_watcher::reply_watcher()
    : epoll_(::epoll_create1(EPOLL_CLOEXEC)), stop_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!epoll_) throw_errno(errno, "epoll_create1");
  if (!stop_) throw_errno(errno, "eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, stop_.get(), &ev) != 0) {
    throw_errno(errno, "epoll_ctl");
  }
}

reply_watcher::~reply_watcher() {
  std::unique_lock<std::mutex> lk(mu_);
  if (!started_) return;
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(stop_.get(), &one, sizeof one);
  exited_cv_.wait(lk, [this] { return exited_; });
}

void reply_watcher::arm(uint64_t key, int fd, std::function<void()> on_ready) {
  if (key == 0) throw std::invalid_argument("reply_watcher::arm: key 0 is reserved");
  std::lock_guard<std::mutex> lk(mu_);
  if (!started_) {
    start_thread("mp-replies", 0, [this] { run(); });
    started_ = true;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;  // EPOLLHUP and EPOLLERR are always reported
  ev.data.u64 = key;
  // Every path that ends an arm removes its descriptor, so it is not registered here.
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno(errno, "epoll_ctl");
  armed_[key] = watch{fd, std::move(on_ready)};
}

bool reply_watcher::disarm(uint64_t key) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = armed_.find(key);
  if (it == armed_.end()) return false;
  // Removed rather than disabled: the descriptor may be closed, and its number reused.
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd, nullptr);
  armed_.erase(it);
  return true;
}

void reply_watcher::run() {
  epoll_event events[16];
  bool stop = false;
  while (!stop) {
    const int n = ::epoll_wait(epoll_.get(), events, 16, -1);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      const uint64_t key = events[i].data.u64;
      if (key == 0) {
        stop = true;
        continue;
      }
      std::function<void()> handler;
      {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = armed_.find(key);
        if (it == armed_.end()) continue;  // disarmed by its waiter meanwhile
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd, nullptr);
        handler = std::move(it->second.on_ready);
        armed_.erase(it);
      }
      handler();
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  exited_ = true;
  exited_cv_.notify_all();
}

}  // namespace mp

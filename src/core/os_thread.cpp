#include "makeparallel/os_thread.hpp"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <memory>
#include <system_error>

namespace mp {
namespace {

struct thread_start {
  std::string name;
  std::function<void()> fn;
};

void* thread_main(void* arg) {
  std::unique_ptr<thread_start> start(static_cast<thread_start*>(arg));
  // Linux limits thread names to 15 characters.
  pthread_setname_np(pthread_self(), start->name.substr(0, 15).c_str());
  auto fn = std::move(start->fn);
  start.reset();
  fn();
  return nullptr;
}

}  // namespace

void start_thread(const std::string& name, size_t stack_size, std::function<void()> fn) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (stack_size != 0) {
    const int rc = pthread_attr_setstacksize(&attr, stack_size);
    if (rc != 0) {
      pthread_attr_destroy(&attr);
      throw std::system_error(rc, std::generic_category(), "pthread_attr_setstacksize");
    }
  }
  // Block asynchronous signals while creating the thread so that it inherits a full mask:
  // signals such as SIGINT must be delivered to the application's own threads, never to a
  // worker that cannot act on them.
  sigset_t all, old;
  sigfillset(&all);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP}) sigdelset(&all, sig);
  pthread_sigmask(SIG_BLOCK, &all, &old);

  auto* start = new thread_start{name, std::move(fn)};
  pthread_t th;
  const int rc = pthread_create(&th, &attr, thread_main, start);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    delete start;
    throw std::system_error(rc, std::generic_category(), "pthread_create");
  }
}

size_t current_thread_stack_size() {
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) != 0) return 0;
  size_t size = 0;
  pthread_attr_getstacksize(&attr, &size);
  pthread_attr_destroy(&attr);
  return size;
}

size_t default_stack_size() {
  pthread_attr_t attr;
  if (pthread_getattr_default_np(&attr) != 0) return 0;
  size_t size = 0;
  pthread_attr_getstacksize(&attr, &size);
  pthread_attr_destroy(&attr);
  return size;
}

size_t page_size() noexcept {
  const long p = sysconf(_SC_PAGESIZE);
  return p > 0 ? static_cast<size_t>(p) : 4096;
}

size_t available_cpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<size_t>(n);
  }
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<size_t>(n) : 1;
}

}  // namespace mp

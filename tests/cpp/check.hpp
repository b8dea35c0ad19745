// A minimal test harness for the C++ core: no framework to download, one executable per
// test file. CHECK counts a failure and goes on; TEST_CASE registers a case; main() runs
// the cases in file order, each under a watchdog that aborts the whole process if the case
// exceeds its time limit, so a deadlock shows up as a named failure instead of a hung CI.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace check {

/// One registered test case; `limit_secs` is the watchdog budget.
struct test_case {
  const char* name;
  void (*fn)();
  double limit_secs;
};

inline std::vector<test_case>& registry() {
  static std::vector<test_case> cases;
  return cases;
}

/// Failed checks in the running case; atomic because checks run on worker threads too.
inline std::atomic<int> failures{0};

/// Registers a case at static-initialisation time.
struct registrar {
  registrar(const char* name, void (*fn)(), double limit_secs) {
    registry().push_back(test_case{name, fn, limit_secs});
  }
};

inline void fail(const char* file, int line, const std::string& what) {
  failures.fetch_add(1);
  std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, what.c_str());
  std::fflush(stderr);
}

/// Prints a value if it can be streamed, so CHECK_EQ can show both sides.
template <class T>
std::string show(const T& v) {
  if constexpr (std::is_enum_v<T>) {
    return std::to_string(static_cast<long long>(v));
  } else if constexpr (requires(std::ostream& os) { os << v; }) {
    std::ostringstream os;
    os << v;
    return os.str();
  } else {
    return "?";
  }
}

/// Polls `pred` until it holds or `secs` pass. Only for state that the core exposes by
/// snapshot (thread counts, queue lengths), where there is nothing to block on.
template <class Pred>
bool eventually(Pred pred, double secs = 10.0) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(secs);
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= end) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

/// Aborts the process if a case overruns: a hung case must not hang the suite.
class watchdog {
 public:
  watchdog(const char* name, double limit_secs) : name_(name) {
    thread_ = std::thread([this, limit_secs] {
      std::unique_lock<std::mutex> lk(mu_);
      const auto limit = std::chrono::duration<double>(limit_secs);
      if (!cv_.wait_for(lk, limit, [this] { return done_; })) {
        std::fprintf(stderr, "watchdog: test case '%s' exceeded %.0f s, aborting\n", name_,
                     limit_secs);
        std::fflush(stderr);
        std::abort();
      }
    });
  }
  ~watchdog() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  watchdog(const watchdog&) = delete;
  watchdog& operator=(const watchdog&) = delete;

 private:
  const char* name_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

/// Runs every case (or those whose name contains argv[1]); non-zero if any failed.
inline int run_all(int argc, char** argv) {
  int passed = 0;
  int failed = 0;
  for (const test_case& tc : registry()) {
    if (argc > 1 && std::strstr(tc.name, argv[1]) == nullptr) continue;
    failures.store(0);
    const auto start = std::chrono::steady_clock::now();
    {
      watchdog dog(tc.name, tc.limit_secs);
      try {
        tc.fn();
      } catch (const std::exception& e) {
        fail(__FILE__, __LINE__, std::string("uncaught exception: ") + e.what());
      } catch (...) {
        fail(__FILE__, __LINE__, "uncaught non-standard exception");
      }
    }
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    const bool ok = failures.load() == 0;
    (ok ? passed : failed) += 1;
    std::printf("%s %s (%.3f s)\n", ok ? "[ ok ]" : "[FAIL]", tc.name, took.count());
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace check

#define CHECK(expr)                                          \
  do {                                                       \
    if (!(expr)) check::fail(__FILE__, __LINE__, #expr);     \
  } while (0)

#define CHECK_EQ(a, b)                                                                     \
  do {                                                                                     \
    /* copies: a reference could dangle when a side is a member of a temporary */          \
    const auto check_a_ = (a);                                                             \
    const auto check_b_ = (b);                                                             \
    if (!(check_a_ == check_b_)) {                                                         \
      check::fail(__FILE__, __LINE__,                                                      \
                  std::string(#a " == " #b "  (") + check::show(check_a_) + " vs " +       \
                      check::show(check_b_) + ")");                                        \
    }                                                                                      \
  } while (0)

/// Declares a test case with the default 60 s watchdog.
#define TEST_CASE(name) TEST_CASE_LIMIT(name, 60)

/// Declares a test case whose watchdog fires after `secs` seconds.
#define TEST_CASE_LIMIT(name, secs)                          \
  static void name();                                        \
  static const check::registrar name##_registrar_{#name, name, secs}; \
  static void name()

int main(int argc, char** argv) { return check::run_all(argc, argv); }

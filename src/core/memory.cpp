#include "makeparallel/memory.hpp"

#include <cstdio>
#include <cstring>

#include "makeparallel/sync.hpp"

namespace mp {

double used_memory_percent() noexcept {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return -1.0;
  unsigned long long total = 0, available = 0, value = 0;
  char key[64];
  while (std::fscanf(f, "%63s %llu %*s", key, &value) == 2) {
    if (std::strcmp(key, "MemTotal:") == 0) total = value;
    if (std::strcmp(key, "MemAvailable:") == 0) available = value;
  }
  std::fclose(f);
  if (total == 0 || available > total) return -1.0;
  return 100.0 * static_cast<double>(total - available) / static_cast<double>(total);
}

void memory_limit::set(double percent) noexcept {
  percent_.store(percent, std::memory_order_relaxed);
  checked_ns_.store(0, std::memory_order_relaxed);  // re-read at the next check
  over_.store(false, std::memory_order_relaxed);
}

bool memory_limit::exceeded() noexcept {
  const double limit = percent_.load(std::memory_order_relaxed);
  if (limit <= 0) return false;
  const uint64_t now = now_ns();
  uint64_t last = checked_ns_.load(std::memory_order_relaxed);
  // One thread re-reads when the reading is stale; the others use the last answer.
  if ((last == 0 || now - last >= recheck_ns) &&
      checked_ns_.compare_exchange_strong(last, now, std::memory_order_relaxed)) {
    const double used = used_memory_percent();
    over_.store(used >= 0 && used > limit, std::memory_order_relaxed);
  }
  return over_.load(std::memory_order_relaxed);
}

}  // namespace mp

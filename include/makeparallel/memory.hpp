// A guard that refuses new work while the system is short of memory.
#pragma once

#include <atomic>
#include <cstdint>

namespace mp {

/// Percentage of the system's memory in use, (MemTotal - MemAvailable) / MemTotal, from
/// /proc/meminfo; negative if it cannot be read.
double used_memory_percent() noexcept;

/// Says whether memory use is above a configured percentage. Reads /proc/meminfo at most
/// once per `recheck_ns`, so asking on every submission stays cheap. Thread-safe.
class memory_limit {
 public:
  static constexpr uint64_t recheck_ns = 50'000'000;  // 50 ms

  /// Sets the limit in percent, in (0, 100]; 0 turns the check off.
  void set(double percent) noexcept;
  double get() const noexcept { return percent_.load(std::memory_order_relaxed); }
  /// True if a limit is set and memory use was above it at the last reading.
  bool exceeded() noexcept;

 private:
  std::atomic<double> percent_{0.0};
  std::atomic<uint64_t> checked_ns_{0};
  std::atomic<bool> over_{false};
};

}  // namespace mp

// Per-name execution metrics: counters sharded across cache lines so that threads
// recording at once do not share a line, and a fixed-size log-linear histogram of
// execution times for percentiles. Recording takes no lock.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mp {

/// A consistent-enough copy of one entry's metrics. Times are in nanoseconds.
struct metrics_snapshot {
  uint64_t completed = 0;    ///< executions that returned
  uint64_t failed = 0;       ///< executions that raised
  uint64_t total_ns = 0;     ///< sum of execution times
  uint64_t queue_ns = 0;     ///< sum of times from submission to start (tasks only)
  uint64_t min_ns = 0;       ///< shortest execution (0 when none)
  uint64_t max_ns = 0;       ///< longest execution
  double p50_ns = 0;         ///< median execution time, within 1 % relative error
  double p95_ns = 0;         ///< 95th percentile, within 1 % relative error
  double p99_ns = 0;         ///< 99th percentile, within 1 % relative error
  uint64_t total() const noexcept { return completed + failed; }
};

/// Log-linear histogram: exact below 128 ns, then 64 linear buckets per power of two, so a
/// bucket's midpoint is within 1/128 of any value in it. Values past ~73 minutes share the
/// last bucket (max_ns stays exact).
class histogram {
 public:
  static constexpr unsigned sub_bits = 6;
  static constexpr uint64_t sub_count = 1u << sub_bits;  // 64
  static constexpr unsigned max_exponent = 42;
  static constexpr size_t bucket_count = sub_count + (max_exponent - sub_bits) * sub_count;

  static size_t index_of(uint64_t v) noexcept;
  /// Smallest value and width of bucket `i`.
  static std::pair<uint64_t, uint64_t> bounds_of(size_t i) noexcept;

  void record(uint64_t v) noexcept {
    buckets_[index_of(v)].fetch_add(1, std::memory_order_relaxed);
  }
  /// Value at quantile `q` in [0, 1]: the midpoint of the bucket holding that rank.
  double quantile(double q) const noexcept;
  void reset() noexcept;

 private:
  std::array<std::atomic<uint64_t>, bucket_count> buckets_{};
};

/// Metrics of one name. Stable address for the life of its registry.
class metrics_entry {
 public:
  /// Records one execution. Lock-free; safe from any thread.
  void record(uint64_t exec_ns, uint64_t queue_ns, bool ok) noexcept;
  metrics_snapshot snapshot() const noexcept;
  /// True once something was recorded since the last reset.
  bool seen() const noexcept { return seen_.load(std::memory_order_acquire); }
  void reset() noexcept;

 private:
  static constexpr size_t shard_count = 8;
  struct alignas(64) shard {
    std::atomic<uint64_t> completed{0};
    std::atomic<uint64_t> failed{0};
    std::atomic<uint64_t> total_ns{0};
    std::atomic<uint64_t> queue_ns{0};
  };
  static size_t shard_index() noexcept;

  std::array<shard, shard_count> shards_{};
  std::atomic<uint64_t> min_ns_{UINT64_MAX};
  std::atomic<uint64_t> max_ns_{0};
  std::atomic<bool> seen_{false};
  histogram hist_;
};

/// Name -> entry. Entries are created on first use and never freed, so callers may cache
/// the pointer; `reset` clears values, not entries.
class metrics_registry {
 public:
  /// The entry for `name`, created if needed. Takes a lock; cache the result.
  metrics_entry& entry(std::string_view name);
  /// The snapshot of `name`, or nullopt if nothing was recorded under it.
  std::optional<metrics_snapshot> find(std::string_view name) const;
  /// Every name with data, sorted by name.
  std::vector<std::pair<std::string, metrics_snapshot>> all() const;
  /// Clears every entry.
  void reset() noexcept;

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::unique_ptr<metrics_entry>> entries_;
};

}  // namespace mp

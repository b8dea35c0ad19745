#include "makeparallel/metrics.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <thread>

namespace mp {

// ---- histogram

size_t histogram::index_of(uint64_t v) noexcept {
  if (v < 2 * sub_count) return static_cast<size_t>(v);  // exact below 128 ns
  const unsigned e = static_cast<unsigned>(std::bit_width(v)) - 1;  // v in [2^e, 2^(e+1))
  if (e >= max_exponent) return bucket_count - 1;
  const unsigned shift = e - sub_bits;                  // keeps 7 significant bits
  const uint64_t mantissa = (v >> shift) - sub_count;   // in [0, 64)
  return static_cast<size_t>(sub_count + (e - sub_bits) * sub_count + mantissa);
}

std::pair<uint64_t, uint64_t> histogram::bounds_of(size_t i) noexcept {
  if (i < 2 * sub_count) return {i, 1};
  const size_t octave = (i - sub_count) / sub_count;  // e - sub_bits
  const uint64_t mantissa = (i - sub_count) % sub_count;
  const unsigned shift = static_cast<unsigned>(octave);
  return {(sub_count + mantissa) << shift, uint64_t{1} << shift};
}

double histogram::quantile(double q) const noexcept {
  uint64_t total = 0;
  for (const auto& b : buckets_) total += b.load(std::memory_order_relaxed);
  if (total == 0) return 0.0;
  // Rank of the q-quantile, 1-based, "nearest rank" definition.
  const auto rank = static_cast<uint64_t>(std::max(1.0, std::ceil(q * static_cast<double>(total))));
  uint64_t seen = 0;
  for (size_t i = 0; i < bucket_count; ++i) {
    seen += buckets_[i].load(std::memory_order_relaxed);
    if (seen >= rank) {
      const auto [low, width] = bounds_of(i);
      return static_cast<double>(low) + static_cast<double>(width - 1) / 2.0;
    }
  }
  const auto [low, width] = bounds_of(bucket_count - 1);
  return static_cast<double>(low);
}

void histogram::reset() noexcept {
  for (auto& b : buckets_) b.store(0, std::memory_order_relaxed);
}

// ---- metrics_entry

size_t metrics_entry::shard_index() noexcept {
  thread_local const size_t index = std::hash<std::thread::id>{}(std::this_thread::get_id());
  return index % shard_count;
}

void metrics_entry::record(uint64_t exec_ns, uint64_t queue_ns, bool ok) noexcept {
  shard& s = shards_[shard_index()];
  (ok ? s.completed : s.failed).fetch_add(1, std::memory_order_relaxed);
  s.total_ns.fetch_add(exec_ns, std::memory_order_relaxed);
  if (queue_ns) s.queue_ns.fetch_add(queue_ns, std::memory_order_relaxed);
  hist_.record(exec_ns);

  // min/max change rarely once warmed up, so the CAS loops almost never retry.
  uint64_t cur = min_ns_.load(std::memory_order_relaxed);
  while (exec_ns < cur && !min_ns_.compare_exchange_weak(cur, exec_ns, std::memory_order_relaxed)) {
  }
  cur = max_ns_.load(std::memory_order_relaxed);
  while (exec_ns > cur && !max_ns_.compare_exchange_weak(cur, exec_ns, std::memory_order_relaxed)) {
  }
  if (!seen_.load(std::memory_order_relaxed)) seen_.store(true, std::memory_order_release);
}

metrics_snapshot metrics_entry::snapshot() const noexcept {
  metrics_snapshot out;
  for (const auto& s : shards_) {
    out.completed += s.completed.load(std::memory_order_relaxed);
    out.failed += s.failed.load(std::memory_order_relaxed);
    out.total_ns += s.total_ns.load(std::memory_order_relaxed);
    out.queue_ns += s.queue_ns.load(std::memory_order_relaxed);
  }
  const uint64_t mn = min_ns_.load(std::memory_order_relaxed);
  out.min_ns = mn == UINT64_MAX ? 0 : mn;
  out.max_ns = max_ns_.load(std::memory_order_relaxed);
  // Percentiles come from bucket midpoints; clamping to the exact extremes keeps them
  // ordered and never outside the observed range.
  // A reset racing with this read can leave min above max for a moment; clamp only when the
  // range is sane (std::clamp requires low <= high).
  auto clamp = [&](double v) {
    if (out.min_ns > out.max_ns) return v;
    return std::clamp(v, static_cast<double>(out.min_ns), static_cast<double>(out.max_ns));
  };
  if (out.total() != 0) {
    out.p50_ns = clamp(hist_.quantile(0.50));
    out.p95_ns = clamp(hist_.quantile(0.95));
    out.p99_ns = clamp(hist_.quantile(0.99));
  }
  return out;
}

void metrics_entry::reset() noexcept {
  seen_.store(false, std::memory_order_release);
  for (auto& s : shards_) {
    s.completed.store(0, std::memory_order_relaxed);
    s.failed.store(0, std::memory_order_relaxed);
    s.total_ns.store(0, std::memory_order_relaxed);
    s.queue_ns.store(0, std::memory_order_relaxed);
  }
  min_ns_.store(UINT64_MAX, std::memory_order_relaxed);
  max_ns_.store(0, std::memory_order_relaxed);
  hist_.reset();
}

// ---- metrics_registry

metrics_entry& metrics_registry::entry(std::string_view name) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = entries_.find(std::string(name));
  if (it == entries_.end()) {
    it = entries_.emplace(std::string(name), std::make_unique<metrics_entry>()).first;
  }
  return *it->second;
}

std::optional<metrics_snapshot> metrics_registry::find(std::string_view name) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = entries_.find(std::string(name));
  if (it == entries_.end() || !it->second->seen()) return std::nullopt;
  return it->second->snapshot();
}

std::vector<std::pair<std::string, metrics_snapshot>> metrics_registry::all() const {
  std::vector<std::pair<std::string, metrics_snapshot>> out;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (const auto& [name, e] : entries_) {
      if (e->seen()) out.emplace_back(name, e->snapshot());
    }
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void metrics_registry::reset() noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [name, e] : entries_) e->reset();
}

}  // namespace mp

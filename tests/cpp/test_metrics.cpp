// Tests of the metrics: the log-linear histogram, sharded entries and the registry.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"
#include "makeparallel/metrics.hpp"

namespace {

using mp::histogram;

/// Nearest-rank percentile of sorted data, the definition the histogram follows.
double exact_quantile(const std::vector<uint64_t>& sorted, double q) {
  const auto n = static_cast<double>(sorted.size());
  const auto rank = static_cast<size_t>(std::max(1.0, std::ceil(q * n)));
  return static_cast<double>(sorted[rank - 1]);
}

double relative_error(double got, double want) { return std::fabs(got - want) / want; }

/// Log-uniform samples between `lo` and `hi` nanoseconds, from a fixed seed.
std::vector<uint64_t> log_uniform(size_t n, double lo, double hi) {
  std::mt19937_64 rng(2024);
  std::uniform_real_distribution<double> u(std::log(lo), std::log(hi));
  std::vector<uint64_t> out(n);
  for (auto& v : out) v = static_cast<uint64_t>(std::exp(u(rng)));
  return out;
}

}  // namespace

TEST_CASE(histogram_buckets_tile_the_range_and_round_trip) {
  int bad_round_trip = 0, gaps = 0, too_wide = 0;
  uint64_t expected_low = 0;
  for (size_t i = 0; i < histogram::bucket_count; ++i) {
    const auto [low, width] = histogram::bounds_of(i);
    if (histogram::index_of(low) != i || histogram::index_of(low + width - 1) != i) {
      ++bad_round_trip;
    }
    if (low != expected_low) ++gaps;  // each bucket starts where the previous one ended
    expected_low = low + width;
    // The midpoint is within 1/128 of any value in the bucket.
    if (low >= 128 && static_cast<double>(width) / static_cast<double>(low) > 1.0 / 64) {
      ++too_wide;
    }
  }
  CHECK_EQ(bad_round_trip, 0);
  CHECK_EQ(gaps, 0);
  CHECK_EQ(too_wide, 0);

  // Exact below 128 ns; everything past the last bucket shares it.
  for (uint64_t v = 0; v < 128; ++v) CHECK_EQ(histogram::index_of(v), static_cast<size_t>(v));
  CHECK_EQ(histogram::index_of(UINT64_MAX), histogram::bucket_count - 1);
  CHECK_EQ(histogram::index_of(uint64_t{1} << 50), histogram::bucket_count - 1);
}

TEST_CASE(histogram_index_is_monotonic_in_the_value) {
  std::vector<uint64_t> values;
  for (unsigned e = 0; e < 64; ++e) {
    const uint64_t p = uint64_t{1} << e;
    values.insert(values.end(), {p - 1, p, p + 1, p + p / 3});
  }
  std::mt19937_64 rng(99);
  for (int i = 0; i < 100000; ++i) values.push_back(rng() >> (rng() % 64));
  std::sort(values.begin(), values.end());
  int decreasing = 0;
  for (size_t i = 1; i < values.size(); ++i) {
    if (histogram::index_of(values[i]) < histogram::index_of(values[i - 1])) ++decreasing;
  }
  CHECK_EQ(decreasing, 0);
}

TEST_CASE(quantiles_are_within_one_percent_of_exact_percentiles) {
  auto data = log_uniform(100000, 100.0, 1e10);
  auto h = std::make_unique<histogram>();
  for (uint64_t v : data) h->record(v);
  std::sort(data.begin(), data.end());
  int off = 0;
  for (double q : {0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0}) {
    const double got = h->quantile(q);
    const double want = exact_quantile(data, q);
    if (relative_error(got, want) > 0.01) {
      ++off;
      std::printf("  q=%g: got %.0f, exact %.0f\n", q, got, want);
    }
  }
  CHECK_EQ(off, 0);

  // The same through an entry, whose snapshot also keeps exact extremes.
  auto e = std::make_unique<mp::metrics_entry>();
  for (uint64_t v : data) e->record(v, 0, true);
  const mp::metrics_snapshot s = e->snapshot();
  CHECK_EQ(s.completed, uint64_t{100000});
  CHECK_EQ(s.min_ns, data.front());
  CHECK_EQ(s.max_ns, data.back());
  CHECK(relative_error(s.p50_ns, exact_quantile(data, 0.50)) <= 0.01);
  CHECK(relative_error(s.p95_ns, exact_quantile(data, 0.95)) <= 0.01);
  CHECK(relative_error(s.p99_ns, exact_quantile(data, 0.99)) <= 0.01);
}

TEST_CASE(small_values_have_exact_quantiles) {
  auto h = std::make_unique<histogram>();
  CHECK_EQ(h->quantile(0.5), 0.0);  // empty
  for (uint64_t v = 1; v <= 100; ++v) h->record(v);
  CHECK_EQ(h->quantile(0.5), 50.0);
  CHECK_EQ(h->quantile(0.99), 99.0);
  CHECK_EQ(h->quantile(1.0), 100.0);
  CHECK_EQ(h->quantile(0.0), 1.0);
  h->reset();
  CHECK_EQ(h->quantile(0.5), 0.0);
}

TEST_CASE(empty_entry_snapshot_is_all_zero) {
  auto e = std::make_unique<mp::metrics_entry>();
  const mp::metrics_snapshot s = e->snapshot();
  CHECK(!e->seen());
  CHECK_EQ(s.total(), uint64_t{0});
  CHECK_EQ(s.min_ns, uint64_t{0});
  CHECK_EQ(s.max_ns, uint64_t{0});
  CHECK_EQ(s.p50_ns, 0.0);
  CHECK_EQ(s.p99_ns, 0.0);
}

TEST_CASE_LIMIT(eight_threads_recording_give_exact_counts, 120) {
  constexpr int threads = 8, per_thread = 100000;
  auto e = std::make_unique<mp::metrics_entry>();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&e] {
      for (int i = 0; i < per_thread; ++i) {
        e->record(static_cast<uint64_t>(i % 1000) + 1, 5, i % 4 != 0);
      }
    });
  }
  for (auto& t : pool) t.join();

  const mp::metrics_snapshot s = e->snapshot();
  uint64_t sum_per_thread = 0;
  for (int i = 0; i < per_thread; ++i) sum_per_thread += static_cast<uint64_t>(i % 1000) + 1;
  CHECK(e->seen());
  CHECK_EQ(s.completed, uint64_t{threads} * per_thread * 3 / 4);
  CHECK_EQ(s.failed, uint64_t{threads} * per_thread / 4);
  CHECK_EQ(s.total(), uint64_t{threads} * per_thread);
  CHECK_EQ(s.total_ns, sum_per_thread * threads);
  CHECK_EQ(s.queue_ns, uint64_t{5} * threads * per_thread);
  CHECK_EQ(s.min_ns, uint64_t{1});
  CHECK_EQ(s.max_ns, uint64_t{1000});
  CHECK(relative_error(s.p50_ns, 500.0) <= 0.01);
  CHECK(relative_error(s.p99_ns, 990.0) <= 0.01);
}

TEST_CASE_LIMIT(reset_while_recording_does_not_crash_and_counts_stay_bounded, 120) {
  constexpr int recorders = 4, per_thread = 50000;
  auto e = std::make_unique<mp::metrics_entry>();
  std::atomic<bool> stop{false};
  std::atomic<int> insane{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < recorders; ++t) {
    pool.emplace_back([&e] {
      for (int i = 0; i < per_thread; ++i) e->record(static_cast<uint64_t>(i % 500) + 100, 1, true);
    });
  }
  std::thread resetter([&] {
    while (!stop.load()) {
      e->reset();
      // Counts never exceed what was recorded, and values stay in the recorded range. (The
      // percentiles of a snapshot that races a reset come from different instants, so they
      // need not be ordered; only their range is checked.)
      const mp::metrics_snapshot s = e->snapshot();
      if (s.total() > uint64_t{recorders} * per_thread) insane.fetch_add(1);
      for (double p : {s.p50_ns, s.p95_ns, s.p99_ns}) {
        if (p != 0 && (p < 99 || p > 600)) insane.fetch_add(1);
      }
      if (s.max_ns > 599 || (s.min_ns != 0 && s.min_ns < 100)) insane.fetch_add(1);
    }
  });
  for (auto& t : pool) t.join();
  stop.store(true);
  resetter.join();
  CHECK_EQ(insane.load(), 0);
  CHECK(e->snapshot().total() <= uint64_t{recorders} * per_thread);

  // Once quiet, a reset clears everything and counting is exact again.
  e->reset();
  mp::metrics_snapshot s = e->snapshot();
  CHECK(!e->seen());
  CHECK_EQ(s.total(), uint64_t{0});
  CHECK_EQ(s.total_ns, uint64_t{0});
  CHECK_EQ(s.max_ns, uint64_t{0});
  for (int i = 0; i < 10; ++i) e->record(200, 0, i < 7);
  s = e->snapshot();
  CHECK_EQ(s.completed, uint64_t{7});
  CHECK_EQ(s.failed, uint64_t{3});
  CHECK_EQ(s.total_ns, uint64_t{2000});
  CHECK_EQ(s.min_ns, uint64_t{200});
  CHECK_EQ(s.max_ns, uint64_t{200});
  CHECK_EQ(s.p50_ns, 200.0);
}

TEST_CASE(registry_entries_have_stable_addresses) {
  mp::metrics_registry reg;
  mp::metrics_entry& a = reg.entry("alpha");
  CHECK(&reg.entry("alpha") == &a);
  CHECK(&reg.entry("beta") != &a);
  for (int i = 0; i < 10000; ++i) reg.entry("name" + std::to_string(i));  // forces rehashes
  CHECK(&reg.entry("alpha") == &a);
  std::string key = "alpha";
  CHECK(&reg.entry(std::string_view(key)) == &a);
}

TEST_CASE(registry_find_reports_only_names_with_data) {
  mp::metrics_registry reg;
  CHECK(!reg.find("unknown").has_value());
  mp::metrics_entry& a = reg.entry("a");
  CHECK(!reg.find("a").has_value());  // created but nothing recorded
  a.record(1000, 10, true);
  a.record(3000, 20, false);
  reg.entry("c").record(5, 0, true);
  reg.entry("b");

  const auto found = reg.find("a");
  CHECK(found.has_value());
  if (found) {
    CHECK_EQ(found->completed, uint64_t{1});
    CHECK_EQ(found->failed, uint64_t{1});
    CHECK_EQ(found->total_ns, uint64_t{4000});
    CHECK_EQ(found->queue_ns, uint64_t{30});
    CHECK_EQ(found->min_ns, uint64_t{1000});
    CHECK_EQ(found->max_ns, uint64_t{3000});
  }
  const auto all = reg.all();
  CHECK_EQ(all.size(), size_t{2});
  if (all.size() == 2) {
    CHECK_EQ(all[0].first, std::string("a"));
    CHECK_EQ(all[1].first, std::string("c"));
  }

  reg.reset();
  CHECK(!reg.find("a").has_value());
  CHECK(reg.all().empty());
  CHECK(&reg.entry("a") == &a);  // reset clears values, not entries
  a.record(7, 0, true);
  const auto again = reg.find("a");
  CHECK(again.has_value() && again->completed == 1);
}

TEST_CASE(registry_is_safe_from_many_threads) {
  mp::metrics_registry reg;
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t) {
    pool.emplace_back([&reg, t] {
      for (int i = 0; i < 2000; ++i) {
        reg.entry("f" + std::to_string(i % 50)).record(static_cast<uint64_t>(t + 1), 0, true);
        if (i % 100 == 0) (void)reg.all();
      }
    });
  }
  for (auto& t : pool) t.join();
  uint64_t total = 0;
  for (const auto& [name, s] : reg.all()) total += s.total();
  CHECK_EQ(total, uint64_t{4 * 2000});
}

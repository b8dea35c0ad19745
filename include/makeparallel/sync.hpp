// Low-level waiting primitives of the core: a futex wrapper that can be
// interrupted by signals, and deadline arithmetic. Linux only.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

namespace mp {

/// The core's clock: monotonic, nanosecond resolution.
using clock = std::chrono::steady_clock;

/// What ended a blocking wait.
enum class wait_status : uint8_t {
  ready,        ///< the awaited condition holds
  timed_out,    ///< the deadline passed first
  interrupted,  ///< a signal arrived (only for interruptible waits)
};

/// Nanoseconds on `clock` since its epoch.
inline uint64_t now_ns() noexcept {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   clock::now().time_since_epoch())
                                   .count());
}

/// A deadline `seconds` from now; `nullopt` when `seconds` is negative (wait forever).
std::optional<clock::time_point> deadline_after(double seconds) noexcept;

namespace detail {

/// Blocks while `word` holds `expected`, until woken, until `deadline`, or until a signal
/// arrives. Spurious returns are possible: callers re-check their condition.
wait_status futex_wait(std::atomic<uint32_t>& word, uint32_t expected,
                       const std::optional<clock::time_point>& deadline) noexcept;

/// Wakes every thread blocked in futex_wait on `word`.
void futex_wake_all(std::atomic<uint32_t>& word) noexcept;

}  // namespace detail
}  // namespace mp

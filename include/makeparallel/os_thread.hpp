// Thread creation with a chosen stack size and a name, and stack-size queries.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

namespace mp {

/// Starts a detached thread running `fn` with `stack_size` bytes of stack (0 = platform
/// default) and the given name. Asynchronous signals are blocked in the new thread so that
/// they reach the application's own threads. Throws std::system_error on failure.
void start_thread(const std::string& name, size_t stack_size, std::function<void()> fn);

/// Stack size in bytes of the calling thread.
size_t current_thread_stack_size();

/// Stack size in bytes that a thread created with stack_size 0 gets.
size_t default_stack_size();

/// The system page size in bytes.
size_t page_size() noexcept;

/// Smallest stack the core accepts for threads that run Python code, in bytes.
constexpr size_t min_stack_size = 256 * 1024;

/// CPUs this process may run on (its affinity mask), at least 1.
size_t available_cpus() noexcept;

}  // namespace mp

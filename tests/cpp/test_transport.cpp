// Tests of the process transport (framing, out-of-band shared memory) and of worker
// process control (spawn, stop, reap), without Python.
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"
#include "makeparallel/process_pool.hpp"
#include "makeparallel/transport.hpp"

namespace {

using mp::ipc::frame;
using mp::ipc::frame_kind;
using mp::ipc::io_status;
using mp::ipc::unique_fd;

size_t open_fd_count() {
  size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d) != nullptr) ++n;
    ::closedir(d);
  }
  return n;
}

/// Reads a received out-of-band buffer back through a private mapping.
std::string read_buffer(const mp::ipc::in_buffer& b) {
  if (b.size == 0) return {};
  void* p = ::mmap(nullptr, b.size, PROT_READ, MAP_PRIVATE, b.fd.get(), 0);
  if (p == MAP_FAILED) return "<mmap failed>";
  std::string s(static_cast<const char*>(p), b.size);
  ::munmap(p, b.size);
  return s;
}

TEST_CASE(small_frame_round_trip) {
  unique_fd a, b;
  mp::ipc::make_socket_pair(a, b);
  const std::string payload = "hello";
  auto r = mp::ipc::send_frame(a.get(), frame_kind::call, 42, 7, payload.data(), payload.size());
  CHECK(r.ok());
  frame f;
  r = mp::ipc::recv_frame(b.get(), f);
  CHECK(r.ok());
  CHECK(f.kind == frame_kind::call);
  CHECK_EQ(f.task_id, uint64_t{42});
  CHECK_EQ(f.aux, uint64_t{7});
  CHECK_EQ(f.payload, payload);
  CHECK(f.buffers.empty());
}

TEST_CASE(empty_payload_and_eof) {
  unique_fd a, b;
  mp::ipc::make_socket_pair(a, b);
  CHECK(mp::ipc::send_frame(a.get(), frame_kind::progress, 1, 0, nullptr, 0).ok());
  a.reset();
  frame f;
  CHECK(mp::ipc::recv_frame(b.get(), f).ok());
  CHECK(f.payload.empty());
  CHECK(mp::ipc::recv_frame(b.get(), f).status == io_status::eof);
}

TEST_CASE(large_payload_survives_partial_reads_and_writes) {
  // 8 MiB is far beyond the socket buffer, so both sides go through many partial
  // transfers while the reader runs concurrently.
  unique_fd a, b;
  mp::ipc::make_socket_pair(a, b);
  std::string payload(8u << 20, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 31 + 7);
  frame f;
  mp::ipc::io_result got;
  std::thread reader([&] { got = mp::ipc::recv_frame(b.get(), f); });
  CHECK(mp::ipc::send_frame(a.get(), frame_kind::result, 9, 0, payload.data(), payload.size())
            .ok());
  reader.join();
  CHECK(got.ok());
  CHECK(f.payload == payload);
}

TEST_CASE(out_of_band_buffers_arrive_in_shared_memory) {
  const size_t fds_before = open_fd_count();
  {
    unique_fd a, b;
    mp::ipc::make_socket_pair(a, b);
    const std::string big(3u << 20, 'x');
    const std::string small = "abc";
    std::vector<mp::ipc::out_buffer> bufs{{big.data(), big.size()},
                                          {small.data(), small.size()},
                                          {nullptr, 0}};
    frame f;
    mp::ipc::io_result got;
    std::thread reader([&] { got = mp::ipc::recv_frame(b.get(), f); });
    const std::string payload = "meta";
    CHECK(mp::ipc::send_frame(a.get(), frame_kind::call, 3, 0, payload.data(), payload.size(),
                              bufs)
              .ok());
    reader.join();
    CHECK(got.ok());
    CHECK_EQ(f.payload, payload);
    CHECK_EQ(f.buffers.size(), size_t{3});
    if (f.buffers.size() == 3) {
      CHECK(read_buffer(f.buffers[0]) == big);
      CHECK_EQ(read_buffer(f.buffers[1]), small);
      CHECK_EQ(f.buffers[2].size, uint64_t{0});
    }
  }
  // The sender closed its memfds after sending, the receiver's went with the frame.
  CHECK_EQ(open_fd_count(), fds_before);
}

TEST_CASE(bad_magic_is_a_protocol_error) {
  unique_fd a, b;
  mp::ipc::make_socket_pair(a, b);
  const char junk[32] = "this is not a frame header.....";
  CHECK_EQ(::write(a.get(), junk, sizeof junk), static_cast<ssize_t>(sizeof junk));
  frame f;
  CHECK(mp::ipc::recv_frame(b.get(), f).status == io_status::protocol);
}

TEST_CASE(truncated_frame_is_an_error_not_eof) {
  unique_fd a, b;
  mp::ipc::make_socket_pair(a, b);
  mp::ipc::frame_header h{mp::ipc::frame_magic, 2, 0, 1, 0, 100};
  CHECK_EQ(::write(a.get(), &h, sizeof h), static_cast<ssize_t>(sizeof h));
  CHECK_EQ(::write(a.get(), "12345", 5), ssize_t{5});
  a.reset();
  frame f;
  CHECK(mp::ipc::recv_frame(b.get(), f).status == io_status::error);
}

TEST_CASE(oversized_payload_is_refused_before_reading) {
  unique_fd a, b;
  mp::ipc::make_socket_pair(a, b);
  mp::ipc::frame_header h{mp::ipc::frame_magic, 2, 0, 1, 0, mp::ipc::max_payload + 1};
  CHECK_EQ(::write(a.get(), &h, sizeof h), static_cast<ssize_t>(sizeof h));
  frame f;
  CHECK(mp::ipc::recv_frame(b.get(), f).status == io_status::protocol);
}

TEST_CASE(send_to_closed_peer_reports_eof_without_sigpipe) {
  unique_fd a, b;
  mp::ipc::make_socket_pair(a, b);
  b.reset();
  const std::string payload(1 << 20, 'p');
  auto r = mp::ipc::send_frame(a.get(), frame_kind::call, 1, 0, payload.data(), payload.size());
  CHECK(r.status == io_status::eof);
}

void on_sigusr1(int) {}

TEST_CASE(a_signal_interrupts_only_an_interruptible_wait_for_a_frame) {
  // A handler without SA_RESTART, as CPython installs its own: the blocked read sees EINTR.
  struct sigaction sa {};
  sa.sa_handler = on_sigusr1;
  struct sigaction old {};
  CHECK(::sigaction(SIGUSR1, &sa, &old) == 0);
  unique_fd a, b;
  mp::ipc::make_socket_pair(a, b);
  for (const bool interruptible : {true, false}) {
    std::atomic<int> status{-1};
    frame f;
    std::thread reader([&] {
      status.store(static_cast<int>(mp::ipc::recv_frame(b.get(), f, interruptible).status));
    });
    const pthread_t handle = reader.native_handle();
    // Signal until the reader returns (interruptible) or for a while (not): a signal that
    // lands before the read blocks interrupts nothing, so one is not enough.
    for (int i = 0; i < 20 && status.load() < 0; ++i) {
      ::pthread_kill(handle, SIGUSR1);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (interruptible) {
      reader.join();
      CHECK(status.load() == static_cast<int>(io_status::interrupted));
    } else {
      CHECK_EQ(status.load(), -1);  // still waiting for its frame
      CHECK(mp::ipc::send_frame(a.get(), frame_kind::result, 5, 0, "x", 1).ok());
      reader.join();
      CHECK(status.load() == static_cast<int>(io_status::ok));
      CHECK_EQ(f.task_id, uint64_t{5});
    }
  }
  CHECK(::sigaction(SIGUSR1, &old, nullptr) == 0);
}

TEST_CASE(frames_in_both_directions_from_two_threads) {
  unique_fd a, b;
  mp::ipc::make_socket_pair(a, b);
  constexpr int count = 2000;
  std::atomic<int> bad{0};
  // Each side echoes what it receives; sends and receives of one side run on different
  // threads, as the parent's owner thread and a worker's progress thread would.
  std::thread echo([&] {
    frame f;
    for (int i = 0; i < count; ++i) {
      if (!mp::ipc::recv_frame(b.get(), f).ok()) {
        bad.fetch_add(1);
        return;
      }
      if (!mp::ipc::send_frame(b.get(), frame_kind::result, f.task_id, f.aux, f.payload.data(),
                               f.payload.size())
               .ok()) {
        bad.fetch_add(1);
        return;
      }
    }
  });
  std::thread sender([&] {
    for (int i = 0; i < count; ++i) {
      const std::string p(static_cast<size_t>(i % 97) * 13, static_cast<char>('a' + i % 26));
      if (!mp::ipc::send_frame(a.get(), frame_kind::call, static_cast<uint64_t>(i), 0, p.data(),
                               p.size())
               .ok()) {
        bad.fetch_add(1);
      }
    }
  });
  for (int i = 0; i < count; ++i) {
    frame f;
    if (!mp::ipc::recv_frame(a.get(), f).ok()) {
      bad.fetch_add(1);
      break;
    }
    if (f.task_id != static_cast<uint64_t>(i) ||
        f.payload.size() != static_cast<size_t>(i % 97) * 13) {
      bad.fetch_add(1);
    }
  }
  sender.join();
  echo.join();
  CHECK_EQ(bad.load(), 0);
}

TEST_CASE(spawned_worker_talks_over_its_fixed_descriptor) {
  // `cat` copies its socket back to itself: an echo server at worker_fd.
  mp::spawn_spec spec{{"/bin/sh", "-c", "exec cat <&3 >&3"}, {"PATH=/usr/bin:/bin"}};
  auto w = mp::worker_process::spawn(spec);
  CHECK(w->pid() > 0);
  const std::string payload = "ping";
  CHECK(mp::ipc::send_frame(w->socket(), frame_kind::call, 5, 0, payload.data(), payload.size())
            .ok());
  frame f;
  CHECK(mp::ipc::recv_frame(w->socket(), f).ok());
  CHECK_EQ(f.payload, payload);
  CHECK(w->alive());
  // Closing its input ends it normally.
  const mp::exit_info e = w->stop(5.0, false);
  CHECK(!e.signalled);
  CHECK_EQ(e.code, 0);
  CHECK(!w->alive());
}

TEST_CASE(exit_code_and_signal_are_reported) {
  auto quits = mp::worker_process::spawn({{"/bin/sh", "-c", "exit 3"}, {}});
  check::eventually([&] { return !quits->alive(); });
  const mp::exit_info e = quits->stop(1.0, false);
  CHECK(!e.signalled);
  CHECK_EQ(e.code, 3);
  CHECK_EQ(e.describe(), std::string("exited with code 3"));

  auto sleeper = mp::worker_process::spawn({{"/bin/sleep", "100"}, {}});
  const mp::exit_info t = sleeper->stop(5.0, true);
  CHECK(t.signalled);
  CHECK_EQ(t.signal, SIGTERM);
  CHECK(t.describe().find("SIGTERM") != std::string::npos);
}

TEST_CASE(a_worker_ignoring_sigterm_is_killed_after_the_grace_period) {
  auto stubborn = mp::worker_process::spawn(
      {{"/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"}, {"PATH=/usr/bin:/bin"}});
  // Give the shell time to install its trap, or SIGTERM would end it at once.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto start = std::chrono::steady_clock::now();
  const mp::exit_info e = stubborn->stop(0.3, true);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  CHECK(e.signalled);
  CHECK_EQ(e.signal, SIGKILL);
  CHECK(took.count() >= 0.25);
  CHECK(took.count() < 5.0);
}

TEST_CASE(registry_stops_every_worker) {
  mp::process_registry reg;
  std::vector<std::shared_ptr<mp::worker_process>> ws;
  for (int i = 0; i < 3; ++i) {
    ws.push_back(mp::worker_process::spawn({{"/bin/sh", "-c", "exec cat <&3 >/dev/null"},
                                            {"PATH=/usr/bin:/bin"}}));
    reg.add(ws.back());
  }
  CHECK_EQ(reg.alive(), size_t{3});
  CHECK_EQ(reg.pids().size(), size_t{3});
  reg.stop_all(5.0);
  CHECK_EQ(reg.alive(), size_t{0});
  for (auto& w : ws) {
    const mp::exit_info e = w->stop(0, false);
    CHECK(!e.signalled);
  }
}

TEST_CASE(registry_can_end_busy_workers_at_once_with_sigterm) {
  mp::process_registry reg;
  std::vector<std::shared_ptr<mp::worker_process>> ws;
  for (int i = 0; i < 2; ++i) {  // busy: they never read their socket
    ws.push_back(mp::worker_process::spawn({{"/bin/sleep", "100"}, {}}));
    reg.add(ws.back());
  }
  const auto start = std::chrono::steady_clock::now();
  reg.stop_all(5.0, true);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  CHECK(took.count() < 4.0);  // not the grace period: SIGTERM ends them at once
  CHECK_EQ(reg.alive(), size_t{0});
  for (auto& w : ws) {
    const mp::exit_info e = w->stop(0, false);
    CHECK(e.signalled);
    CHECK_EQ(e.signal, SIGTERM);
  }
}

TEST_CASE(spawn_of_a_missing_program_fails_cleanly) {
  bool threw = false;
  try {
    mp::worker_process::spawn({{"/nonexistent/program"}, {}});
  } catch (const std::system_error&) {
    threw = true;
  }
  CHECK(threw);
}

}  // namespace

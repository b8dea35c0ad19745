#include "makeparallel/transport.hpp"

#include <sys/mman.h>  // memfd_create
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

namespace mp::ipc {

void unique_fd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

namespace {

std::string os_error(const char* what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

/// Writes every byte of `iov` (adjusted in place), the descriptors going with the first
/// write that sends anything.
io_result write_all(int fd, std::vector<iovec>& iov, const std::vector<int>& fds) {
  std::vector<char> control;
  if (!fds.empty()) control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
  bool fds_sent = fds.empty();
  size_t first = 0;
  while (first < iov.size()) {
    if (iov[first].iov_len == 0) {
      ++first;
      continue;
    }
    msghdr msg{};
    msg.msg_iov = iov.data() + first;
    msg.msg_iovlen = iov.size() - first;  // at most three entries
    if (!fds_sent) {
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) return {io_status::eof, os_error("send", errno)};
      return {io_status::error, os_error("send", errno)};
    }
    fds_sent = true;  // the kernel attached them to the bytes just sent
    auto left = static_cast<size_t>(n);
    while (left > 0 && first < iov.size()) {
      const size_t step = std::min(left, iov[first].iov_len);
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + step;
      iov[first].iov_len -= step;
      left -= step;
      if (iov[first].iov_len == 0) ++first;
    }
  }
  return {};
}

/// Reads exactly `len` bytes. `got_any` tells whether the frame had started, which turns
/// an end of stream into an error instead of a clean EOF, and a signal with `interruptible`
/// into a restart instead of `interrupted`. Descriptors that arrive on the way are appended
/// to `fds` (owned by the caller from then on).
io_result read_all(int fd, void* dst, size_t len, bool& got_any, std::vector<unique_fd>& fds,
                   bool interruptible) {
  auto* p = static_cast<char*>(dst);
  char control[CMSG_SPACE(sizeof(int) * max_buffers)];
  while (len > 0) {
    iovec iov{p, len};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR && interruptible && !got_any) return {io_status::interrupted, "signal"};
      if (errno == EINTR) continue;
      if (errno == ECONNRESET && !got_any) return {io_status::eof, "connection reset"};
      return {io_status::error, os_error("recv", errno)};
    }
    // Take ownership of any descriptors before judging the frame, so none can leak.
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int received = -1;
        std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds.emplace_back(received);
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) return {io_status::protocol, "too many descriptors"};
    if (n == 0) {
      if (!got_any) return {io_status::eof, "end of stream"};
      return {io_status::error, "end of stream inside a frame"};
    }
    got_any = true;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return {};
}

}  // namespace

void make_socket_pair(unique_fd& a, unique_fd& b) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    throw std::system_error(errno, std::generic_category(), "socketpair");
  }
  a.reset(sv[0]);
  b.reset(sv[1]);
}

unique_fd make_shared_copy(const void* data, size_t size) {
  unique_fd fd(static_cast<int>(::memfd_create("makeparallel", MFD_CLOEXEC)));
  if (!fd) throw std::system_error(errno, std::generic_category(), "memfd_create");
  if (size == 0) return fd;
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    throw std::system_error(errno, std::generic_category(), "ftruncate");
  }
  // pwrite rather than mmap + memcpy: the kernel fills the pages as it allocates them,
  // about twice as fast as taking a page fault for each one in a fresh mapping.
  const auto* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pwrite(fd.get(), p + done, size - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "pwrite");
    }
    done += static_cast<size_t>(n);
  }
  return fd;
}

io_result send_frame(int fd, frame_kind kind, uint64_t task_id, uint64_t aux,
                     const void* payload, size_t payload_len,
                     const std::vector<out_buffer>& buffers) {
  if (payload_len > max_payload) return {io_status::protocol, "payload too large"};
  if (buffers.size() > max_buffers) return {io_status::protocol, "too many buffers"};

  std::vector<unique_fd> owned;
  std::vector<int> fds;
  std::vector<uint64_t> sizes;
  owned.reserve(buffers.size());
  for (const out_buffer& b : buffers) {
    try {
      owned.push_back(make_shared_copy(b.data, b.size));
    } catch (const std::system_error& e) {
      return {io_status::error, e.what()};
    }
    fds.push_back(owned.back().get());
    sizes.push_back(b.size);
  }

  frame_header h{frame_magic, static_cast<uint16_t>(kind),
                 static_cast<uint16_t>(buffers.size()), task_id, aux, payload_len};
  std::vector<iovec> iov;
  iov.push_back({&h, sizeof h});
  if (!sizes.empty()) iov.push_back({sizes.data(), sizes.size() * sizeof(uint64_t)});
  // sendmsg takes a non-const base but only reads from it.
  if (payload_len > 0) iov.push_back({const_cast<void*>(payload), payload_len});
  // `owned` closes our descriptors on return: the ones in flight stay alive in the kernel.
  return write_all(fd, iov, fds);
}

io_result recv_frame(int fd, frame& out, bool interruptible) {
  out = frame{};
  std::vector<unique_fd> fds;
  bool got_any = false;
  frame_header h{};
  io_result r = read_all(fd, &h, sizeof h, got_any, fds, interruptible);
  if (!r.ok()) return r;
  if (h.magic != frame_magic) return {io_status::protocol, "bad frame magic"};
  if (h.kind < 1 || h.kind > 4) return {io_status::protocol, "unknown frame kind"};
  if (h.num_buffers > max_buffers) return {io_status::protocol, "too many buffers"};
  if (h.payload_len > max_payload) return {io_status::protocol, "payload too large"};

  std::vector<uint64_t> sizes(h.num_buffers);
  if (!sizes.empty()) {
    r = read_all(fd, sizes.data(), sizes.size() * sizeof(uint64_t), got_any, fds, false);
    if (!r.ok()) return r;
  }
  out.payload.resize(h.payload_len);
  if (h.payload_len > 0) {
    r = read_all(fd, out.payload.data(), out.payload.size(), got_any, fds, false);
    if (!r.ok()) return r;
  }
  if (fds.size() != sizes.size()) return {io_status::protocol, "descriptor count mismatch"};
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] > max_buffer_size) return {io_status::protocol, "buffer too large"};
    out.buffers.push_back(in_buffer{std::move(fds[i]), sizes[i]});
  }
  out.kind = static_cast<frame_kind>(h.kind);
  out.task_id = h.task_id;
  out.aux = h.aux;
  return {};
}

}  // namespace mp::ipc

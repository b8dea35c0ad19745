// Framed messages between the parent and a worker process over a private AF_UNIX stream
// socket, with large binary buffers carried out of band in anonymous shared memory.
//
// A frame is a fixed header, then one 64-bit size per out-of-band buffer, then the inline
// payload. Each out-of-band buffer is a memfd (no name, so nothing to unlink and no other
// process can open it) written by the sender and passed with SCM_RIGHTS on the same
// sendmsg() as the header; the sender closes its descriptor once it is sent, the receiver
// once it has mapped the memory, so the memory lives exactly as long as the mappings.
//
// All functions are blocking, restart on EINTR (unless asked not to), and cope with partial
// reads and writes.
// They are safe to call from any thread, but one socket must not be read (or written) by
// two threads at once: callers serialise per direction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mp::ipc {

/// What a frame carries.
enum class frame_kind : uint16_t {
  call = 1,      ///< parent -> worker: run this pickled call
  result = 2,    ///< worker -> parent: the call returned; aux = execution time in ns
  error = 3,     ///< worker -> parent: the call raised; aux = execution time in ns
  progress = 4,  ///< worker -> parent: report_progress; aux = the fraction's bit pattern
};

/// Largest inline payload accepted, in bytes. Larger data must go out of band.
constexpr uint64_t max_payload = uint64_t{1} << 31;
/// Largest number of out-of-band buffers in one frame (SCM_RIGHTS allows 253 descriptors).
constexpr uint16_t max_buffers = 64;
/// Largest single out-of-band buffer, in bytes (a sanity bound, not a memory budget).
constexpr uint64_t max_buffer_size = uint64_t{1} << 40;

/// The fixed part of every frame, sent in native byte order (both ends share a machine).
struct frame_header {
  uint32_t magic;        ///< frame_magic; anything else means a corrupt stream
  uint16_t kind;         ///< a frame_kind
  uint16_t num_buffers;  ///< out-of-band buffers that follow
  uint64_t task_id;      ///< the task the frame belongs to
  uint64_t aux;          ///< kind-specific value (see frame_kind)
  uint64_t payload_len;  ///< bytes of inline payload after the buffer sizes
};
static_assert(sizeof(frame_header) == 32, "the header layout is part of the protocol");

constexpr uint32_t frame_magic = 0x3146504d;  // "MPF1" read as little-endian bytes

/// Owns one file descriptor; closes it on destruction.
class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  ~unique_fd() { reset(); }
  unique_fd(unique_fd&& o) noexcept : fd_(o.release()) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  /// Gives up ownership without closing.
  int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  /// Closes the held descriptor (if any) and takes `fd`.
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

/// A buffer to send out of band: the bytes are copied into a fresh memfd.
struct out_buffer {
  const void* data;
  size_t size;
};

/// An out-of-band buffer received: a memfd of `size` bytes, owned by the receiver.
struct in_buffer {
  unique_fd fd;
  uint64_t size = 0;
};

/// One frame as received.
struct frame {
  frame_kind kind{};
  uint64_t task_id = 0;
  uint64_t aux = 0;
  std::string payload;
  std::vector<in_buffer> buffers;
};

/// How a transfer ended.
enum class io_status : uint8_t {
  ok,
  eof,       ///< the peer closed its end (for recv: before any byte of a frame)
  error,     ///< an OS error, or the peer closed mid-frame; errno-style text in `what`
  protocol,  ///< the stream does not hold a valid frame (bad magic, limits exceeded)
  interrupted,  ///< a signal came before any byte of the frame (recv_frame, when asked)
};

/// Result of a transfer, with a message for the non-ok cases.
struct io_result {
  io_status status = io_status::ok;
  std::string what;
  bool ok() const noexcept { return status == io_status::ok; }
};

/// Creates a connected, close-on-exec AF_UNIX stream pair. Throws std::system_error.
void make_socket_pair(unique_fd& a, unique_fd& b);

/// Creates a memfd of `size` bytes holding a copy of `data`. Throws std::system_error.
unique_fd make_shared_copy(const void* data, size_t size);

/// Sends one frame. Out-of-band buffers are copied to memfds first. Never raises SIGPIPE.
io_result send_frame(int fd, frame_kind kind, uint64_t task_id, uint64_t aux,
                     const void* payload, size_t payload_len,
                     const std::vector<out_buffer>& buffers = {});

/// Receives one whole frame into `out`. Received descriptors are close-on-exec. With
/// `interruptible`, a signal handled by this thread while it waits for the frame to begin
/// returns `interrupted` (nothing consumed); once the frame has begun, it is read whole.
io_result recv_frame(int fd, frame& out, bool interruptible = false);

}  // namespace mp::ipc

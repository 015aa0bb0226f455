// pipe()/pipe2() carried by shared-memory rings; see pipes.h for the design.
// Every function here has libc's contract: -1 and errno on failure.
#include "pipes.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>

#include "intercepted.h"
#include "readiness.h"
#include "real_calls.h"
#include "runtime.h"
#include "signals.h"
#include "user_memory.h"

namespace netaccel::preload {
namespace {

constexpr uint32_t kPipeMagic = 0x4e415049;  // "NAPI"

// The segment's head; the ring follows at kRingOffset.
struct PipeHeader {
  uint32_t magic;
  uint32_t capacity;
  // Robust and process-shared: a holder killed inside a call blocks no one.
  // A downgrade takes both, writers' first. Lines apart: the writer and the
  // reader take theirs on every call.
  alignas(kFalseSharingRange) pthread_mutex_t write_lock;
  alignas(kFalseSharingRange) pthread_mutex_t read_lock;
  alignas(kFalseSharingRange) std::atomic<uint32_t> downgraded;
  std::atomic<uint32_t> read_holders;    // processes holding the read end
  std::atomic<uint32_t> nonblocking[2];  // O_NONBLOCK of each end's open file: [0] read, [1] write
  alignas(kFalseSharingRange) std::atomic<uint32_t> readers_waiting;
  std::atomic<uint32_t> writers_waiting;  // asleep for space
};
constexpr std::size_t kRingOffset =
    (sizeof(PipeHeader) + kFalseSharingRange - 1) / kFalseSharingRange * kFalseSharingRange;

// What this process did with pipes, printed at exit with NETACCEL_DEBUG:
// how a test knows that a pipe was really carried by a ring.
std::atomic<uint64_t> g_pipes_accelerated{0};
std::atomic<uint64_t> g_pipes_downgraded{0};
std::atomic<uint64_t> g_ring_bytes_written{0};

}  // namespace

// One pipe as this process maps it; its two table entries hold it.
struct Pipe {
  SharedMapping segment;
  PipeHeader* header = nullptr;
  ByteRing ring;
  // One eventfd per direction, each drained only by those who sleep on it:
  // a writer draining a wake-up meant for a reader would leave it asleep.
  UniqueFd data_wake;   // readers sleep on it
  UniqueFd space_wake;  // writers sleep on it
  std::atomic<int> ends{2};
};

namespace {

class RobustLock {
 public:
  explicit RobustLock(pthread_mutex_t* mutex) : mutex_(mutex) {
    // The previous owner died inside a call: the ring indices are published
    // only after the bytes, so what it left is consistent.
    if (pthread_mutex_lock(mutex_) == EOWNERDEAD) pthread_mutex_consistent(mutex_);
  }
  ~RobustLock() { pthread_mutex_unlock(mutex_); }
  RobustLock(const RobustLock&) = delete;
  RobustLock& operator=(const RobustLock&) = delete;

 private:
  pthread_mutex_t* mutex_;
};

bool init_robust_mutex(pthread_mutex_t* mutex) {
  pthread_mutexattr_t attributes;
  pthread_mutexattr_init(&attributes);
  pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
  const bool made = pthread_mutex_init(mutex, &attributes) == 0;
  pthread_mutexattr_destroy(&attributes);
  return made;
}

bool nonblocking(const Socket* end) {
  return end->pipe->header->nonblocking[end->pipe_write_end].load(std::memory_order_relaxed) != 0;
}

bool downgraded(const Pipe* pipe) {
  return pipe->header->downgraded.load(std::memory_order_acquire) != 0;
}

// Bytes the ring can take now; any process may ask.
uint32_t ring_room(const Pipe* pipe) {
  return pipe->ring.capacity() - pipe->ring.unread();
}

// The kernel's poll bits of the pipe end at `fd`, never waiting.
short kernel_revents(int fd, short events) {
  struct pollfd entry {
    fd, events, 0
  };
  return real().poll(&entry, 1, 0) > 0 ? entry.revents : 0;
}

// A segment and an eventfd beside the kernel pipe whose read end is
// `read_fd`; null when either cannot be made (the pipe stays the kernel's).
Pipe* make_pipe(int read_fd, bool read_nonblocking, bool write_nonblocking) {
  // As large as the kernel pipe: what the ring holds always fits there when
  // the pipe is downgraded, and a full pipe holds as much as the kernel's.
  const int capacity = real().fcntl(read_fd, F_GETPIPE_SZ);
  if (capacity <= 0 || (capacity & (capacity - 1)) != 0) return nullptr;
  const std::size_t bytes = kRingOffset + byte_ring_footprint(static_cast<uint32_t>(capacity));
  // The mapping travels with fork; the memfd itself is needed no longer.
  const UniqueFd memory(create_shared_memory("netaccel-pipe", bytes));
  if (!memory) return nullptr;
  SharedMapping segment = map_shared(memory.get(), bytes);
  UniqueFd data_wake(create_wake_fd());
  UniqueFd space_wake(create_wake_fd());
  if (!segment || !data_wake || !space_wake) return nullptr;
  auto* header = new (segment.get()) PipeHeader{};
  header->magic = kPipeMagic;
  header->capacity = static_cast<uint32_t>(capacity);
  if (!init_robust_mutex(&header->write_lock) || !init_robust_mutex(&header->read_lock)) {
    return nullptr;
  }
  header->read_holders.store(1, std::memory_order_relaxed);
  header->nonblocking[0].store(read_nonblocking, std::memory_order_relaxed);
  header->nonblocking[1].store(write_nonblocking, std::memory_order_relaxed);
  void* ring_memory = static_cast<unsigned char*>(segment.get()) + kRingOffset;
  byte_ring_init(ring_memory, static_cast<uint32_t>(capacity));
  auto* pipe = new Pipe;
  pipe->header = header;
  pipe->ring = ByteRing(ring_memory);
  pipe->segment = std::move(segment);
  keep_internal_fd(data_wake);
  keep_internal_fd(space_wake);
  pipe->data_wake = std::move(data_wake);
  pipe->space_wake = std::move(space_wake);
  return pipe;
}

void install_pipe_end(int fd, Pipe* pipe, bool write_end) {
  Socket* end = new_socket();
  end->state = SocketState::kPipe;
  end->pipe = pipe;
  end->pipe_write_end = write_end;
  install_socket(fd, end);
  release_socket(end);  // the table keeps its own reference
}

// Moves what the ring holds into the kernel pipe, through a write end of
// our own (the application's may be non-blocking or a read end). The kernel
// pipe is empty and as large as the ring, so it all fits. With no reader
// left (ENXIO) nobody will read it; if no descriptor can be opened the bytes
// stay, and preloaded readers take them before the kernel's.
void move_ring_to_kernel(int fd, Pipe* pipe) {
  char path[32];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  const UniqueFd kernel(open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC));
  if (!kernel) return;
  char buffer[4096];  // small: a vfork child runs on its parent's stack
  for (;;) {
    const std::size_t peeked = pipe->ring.read(buffer, sizeof buffer, /*peek=*/true);
    if (peeked == 0) return;
    const ssize_t written = real().write(kernel.get(), buffer, peeked);
    if (written <= 0) return;
    pipe->ring.discard(static_cast<std::size_t>(written));
  }
}

// Who holds which read end: each pipe once, as the table sees it now.
template <typename Visit>
void for_each_pipe_end(Visit visit) {
  const int highest = highest_socket_fd();
  for (int fd = 0; fd <= highest; ++fd) {
    SocketRef end = lookup_descriptor(fd);
    if (end && end->state == SocketState::kPipe) visit(fd, end.get());
  }
}

template <typename Visit>
void for_each_held_read_end(Visit visit) {
  std::vector<Pipe*> seen;
  for_each_pipe_end([&](int, Socket* end) {
    if (end->pipe_write_end || std::find(seen.begin(), seen.end(), end->pipe) != seen.end()) {
      return;
    }
    seen.push_back(end->pipe);
    visit(end->pipe);
  });
}

struct RingAttempt {
  std::size_t bytes = 0;
  bool downgraded = false;
  bool no_reader = false;
  // The program's buffer cannot take (or give) the bytes this copy would
  // move: the kernel's pipe copies a page whole or not at all, and moves
  // nothing then (user_memory.h).
  bool fault = false;
};

// `buffers_proven`: the program may write all of `iov` (user_memory.h);
// otherwise what this copy takes is checked first.
RingAttempt read_ring(Pipe* pipe, const struct iovec* iov, int iovcnt, bool buffers_proven) {
  RingAttempt attempt;
  {
    RobustLock lock(&pipe->header->read_lock);
    // Under the lock: a downgrade moves the ring's bytes while it holds it.
    attempt.downgraded = pipe->header->downgraded.load(std::memory_order_relaxed) != 0;
    struct iovec piece[64];
    if (!buffers_proven) {
      iovcnt = accessible_piece(iov, iovcnt, 0, readable_for(pipe->ring, iov_total(iov, iovcnt)),
                                Access::kWrite, piece);
      if (iovcnt < 0) {
        attempt.fault = true;
        return attempt;
      }
      iov = piece;
    }
    attempt.bytes = pipe->ring.read(iov, iovcnt);
  }
  if (attempt.bytes == 0) return attempt;
  PipeHeader* header = pipe->header;
  if (header->writers_waiting.load(std::memory_order_relaxed) != 0) {
    signal_wake_fd(pipe->space_wake.get());
  }
  // Another reader may have lost its wake-up to ours (one eventfd): what we
  // left is its to take.
  if (header->readers_waiting.load(std::memory_order_relaxed) != 0 && pipe->ring.unread() != 0) {
    signal_wake_fd(pipe->data_wake.get());
  }
  return attempt;
}

// Writes of at most PIPE_BUF bytes go in whole (`needed` is their size).
// `buffers_proven`: the program may read all of `iov` (user_memory.h).
RingAttempt write_ring(int fd, Pipe* pipe, const struct iovec* iov, int iovcnt, std::size_t skip,
                       std::size_t needed, bool buffers_proven) {
  RingAttempt attempt;
  PipeHeader* header = pipe->header;
  {
    RobustLock lock(&header->write_lock);
    if (header->downgraded.load(std::memory_order_relaxed) != 0) {
      attempt.downgraded = true;
      return attempt;
    }
    // The count spares a syscall per write; the kernel has the last word,
    // as a reader that was killed is still counted.
    if (header->read_holders.load(std::memory_order_acquire) == 0 &&
        (kernel_revents(fd, 0) & POLLERR)) {
      attempt.no_reader = true;
      return attempt;
    }
    const uint32_t room = pipe->ring.writable(static_cast<uint32_t>(needed));
    if (room < needed) return attempt;
    struct iovec rest[64];
    const int count = buffers_proven
                          ? iov_advance(iov, iovcnt, skip, room, rest)
                          : accessible_piece(iov, iovcnt, skip, room, Access::kRead, rest);
    if (count < 0) {
      attempt.fault = true;
      return attempt;
    }
    attempt.bytes = pipe->ring.write(rest, count);
  }
  // Statistics only when they are printed: no shared add on every write.
  if (config().debug) g_ring_bytes_written.fetch_add(attempt.bytes, std::memory_order_relaxed);
  fence_after_publishing_data();
  if (header->readers_waiting.load(std::memory_order_relaxed) != 0) {
    signal_wake_fd(pipe->data_wake.get());
  }
  return attempt;
}

enum class PipeWait { kRetry, kHangUp, kInterrupted };

// Waits until the ring has bytes (`reading`) or `room` free bytes, the pipe
// was downgraded, or the kernel reports the other end gone (kHangUp).
PipeWait wait_for_pipe(int fd, Pipe* pipe, bool reading, std::size_t room) {
  const auto satisfied = [&] {
    return downgraded(pipe) || (reading ? pipe->ring.unread() != 0 : ring_room(pipe) >= room);
  };
  SpinBudget spin(config().spin_ns);
  while (spin.keep_spinning()) {
    if (satisfied()) return PipeWait::kRetry;
  }
  PipeHeader* header = pipe->header;
  std::atomic<uint32_t>& waiting = reading ? header->readers_waiting : header->writers_waiting;
  waiting.fetch_add(1, std::memory_order_relaxed);
  const bool wake_may_be_missed = !fence_before_sleeping_for_data();
  if (satisfied()) {
    waiting.fetch_sub(1, std::memory_order_relaxed);
    return PipeWait::kRetry;
  }
  // Readers wake writers without a fence (as connections do): a writer
  // re-checks on a short timer.
  const int timeout_ms = !reading || wake_may_be_missed ? kSpaceRecheckMs : -1;
  // The kernel end says when the other side is gone: POLLHUP (read end,
  // in `revents` with POLLIN) or POLLERR (write end, always reported).
  const int wake = (reading ? pipe->data_wake : pipe->space_wake).get();
  struct pollfd waits[2] = {{wake, POLLIN, 0}, {fd, static_cast<short>(reading ? POLLIN : 0), 0}};
  forget_handled_signal();
  const int ready = real().poll(waits, 2, timeout_ms);
  const int error = errno;
  waiting.fetch_sub(1, std::memory_order_relaxed);
  if (waits[0].revents & POLLIN) drain_wake_fd(wake);
  if (ready < 0 && error == EINTR) return PipeWait::kInterrupted;
  if (waits[1].revents & (POLLHUP | POLLERR)) return PipeWait::kHangUp;
  return PipeWait::kRetry;
}

ssize_t fail_with_sigpipe() {
  raise_sigpipe(0);
  return fail(EPIPE);
}

}  // namespace

int intercepted_pipe2(int fds[2], int flags) {
  if (real().pipe2(fds, flags) != 0) return -1;
  // Packet mode (O_DIRECT) stays the kernel's, and so does a pipe at 0, 1
  // or 2, which stdio reaches without us. A vfork child may not change its
  // parent's tables.
  if ((flags & ~(O_CLOEXEC | O_NONBLOCK)) != 0 || fds[0] <= STDERR_FILENO ||
      fds[1] <= STDERR_FILENO || !holder_process()) {
    return 0;
  }
  const bool nonblocking_ends = (flags & O_NONBLOCK) != 0;
  Pipe* pipe = make_pipe(fds[0], nonblocking_ends, nonblocking_ends);
  if (pipe == nullptr) return 0;
  install_pipe_end(fds[0], pipe, /*write_end=*/false);
  install_pipe_end(fds[1], pipe, /*write_end=*/true);
  g_pipes_accelerated.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

int intercepted_pipe(int fds[2]) {
  return intercepted_pipe2(fds, 0);
}

ssize_t pipe_read(int fd, Socket* end, const struct iovec* iov, int iovcnt) {
  Pipe* pipe = end->pipe;
  // The kernel answers what needs no data: the wrong end (EBADF), a bad
  // vector (EINVAL), an empty read.
  if (end->pipe_write_end || iovcnt <= 0 || iovcnt > IOV_MAX || iov_total(iov, iovcnt) == 0) {
    return real().readv(fd, iov, iovcnt);
  }
  const bool buffers_proven = iov_proven(iov, iovcnt, Access::kWrite);
  bool hung_up = false;
  for (;;) {
    const RingAttempt attempt = read_ring(pipe, iov, iovcnt, buffers_proven);
    if (attempt.bytes > 0) return static_cast<ssize_t>(attempt.bytes);
    if (attempt.fault) return fail(EFAULT);
    if (attempt.downgraded) return real().readv(fd, iov, iovcnt);
    // No writer left, and what they published before closing is read.
    if (hung_up) return 0;
    if (nonblocking(end)) {
      if (!(kernel_revents(fd, POLLIN) & POLLHUP)) return fail(EAGAIN);
      hung_up = true;
      continue;
    }
    switch (wait_for_pipe(fd, pipe, /*reading=*/true, 1)) {
      case PipeWait::kHangUp:
        hung_up = true;
        break;
      case PipeWait::kInterrupted:
        if (!handled_signal_restarts()) return fail(EINTR);
        break;
      case PipeWait::kRetry:
        break;
    }
  }
}

ssize_t pipe_write(int fd, Socket* end, const struct iovec* iov, int iovcnt) {
  Pipe* pipe = end->pipe;
  if (!end->pipe_write_end || iovcnt <= 0 || iovcnt > IOV_MAX) {
    return real().writev(fd, iov, iovcnt);
  }
  const std::size_t total = iov_total(iov, iovcnt);
  if (total == 0) return real().writev(fd, iov, iovcnt);
  // Up to PIPE_BUF bytes never interleave with other writers' bytes.
  const std::size_t needed = total <= PIPE_BUF ? total : 1;
  const bool buffers_proven = iov_proven(iov, iovcnt, Access::kRead);
  std::size_t sent = 0;
  for (;;) {
    const RingAttempt attempt = write_ring(fd, pipe, iov, iovcnt, sent, needed, buffers_proven);
    if (attempt.downgraded) {
      struct iovec rest[64];
      const ssize_t written =
          real().writev(fd, rest, iov_advance(iov, iovcnt, sent, total - sent, rest));
      if (written < 0) return sent > 0 ? static_cast<ssize_t>(sent) : -1;
      sent += static_cast<std::size_t>(written);
      if (sent == total) return static_cast<ssize_t>(sent);
      continue;
    }
    if (attempt.no_reader) return sent > 0 ? static_cast<ssize_t>(sent) : fail_with_sigpipe();
    if (attempt.fault) return sent > 0 ? static_cast<ssize_t>(sent) : fail(EFAULT);
    sent += attempt.bytes;
    if (sent == total) return static_cast<ssize_t>(sent);
    if (attempt.bytes > 0) continue;
    if (nonblocking(end)) return sent > 0 ? static_cast<ssize_t>(sent) : fail(EAGAIN);
    switch (wait_for_pipe(fd, pipe, /*reading=*/false, needed)) {
      case PipeWait::kHangUp:
        return sent > 0 ? static_cast<ssize_t>(sent) : fail_with_sigpipe();
      case PipeWait::kInterrupted:
        if (sent > 0) return static_cast<ssize_t>(sent);
        if (!handled_signal_restarts()) return fail(EINTR);
        break;
      case PipeWait::kRetry:
        break;
    }
  }
}

bool pipe_downgraded(Socket* end) {
  return downgraded(end->pipe);
}

uint32_t pipe_kernel_half(int fd, Socket* end) {
  Pipe* pipe = end->pipe;
  // The read end: POLLHUP, and once downgraded the kernel's bytes.
  if (!end->pipe_write_end) return static_cast<uint16_t>(kernel_revents(fd, POLLIN | POLLRDNORM));
  if (downgraded(pipe)) return static_cast<uint16_t>(kernel_revents(fd, POLLOUT | POLLWRNORM));
  // The kernel pipe stays empty, so its POLLOUT means nothing; its POLLERR
  // (no reader) does, asked only when no reader is counted.
  if (pipe->header->read_holders.load(std::memory_order_acquire) != 0) return 0;
  return static_cast<uint16_t>(kernel_revents(fd, 0)) & POLLERR;
}

uint32_t pipe_readiness_with(uint32_t kernel_half, Socket* end) {
  Pipe* pipe = end->pipe;
  if (!end->pipe_write_end) {
    uint32_t ready = kernel_half;
    if (pipe->ring.unread() != 0) ready |= POLLIN | POLLRDNORM;
    return ready;
  }
  if (downgraded(pipe)) return kernel_half;
  uint32_t ready = kernel_half & POLLERR;
  // As the kernel, writable while a page's worth is free.
  if (ring_room(pipe) >= PIPE_BUF) ready |= POLLOUT | POLLWRNORM;
  return ready;
}

uint32_t pipe_readiness(int fd, Socket* end) {
  return pipe_readiness_with(fd >= 0 ? pipe_kernel_half(fd, end) : 0, end);
}

short pipe_kernel_events(Socket* end) {
  if (!end->pipe_write_end) return POLLIN;
  return downgraded(end->pipe) ? POLLOUT : 0;
}

int pipe_wake_fd(Socket* end) {
  return (end->pipe_write_end ? end->pipe->space_wake : end->pipe->data_wake).get();
}

uint32_t pipe_edge_position(Socket* end) {
  const ByteRingControl& control = end->pipe->ring.control();
  return (end->pipe_write_end ? control.tail : control.head).load(std::memory_order_acquire);
}

bool arm_pipe_end(Socket* end, uint32_t events, bool armed) {
  PipeHeader* header = end->pipe->header;
  const bool watched = (events & (end->pipe_write_end ? POLLOUT : POLLIN)) != 0;
  if (!watched) return false;
  std::atomic<uint32_t>& waiting =
      end->pipe_write_end ? header->writers_waiting : header->readers_waiting;
  if (armed) {
    waiting.fetch_add(1, std::memory_order_relaxed);
  } else {
    waiting.fetch_sub(1, std::memory_order_relaxed);
  }
  return end->pipe_write_end;
}

int pipe_fcntl(int fd, Socket* end, int command, unsigned long argument) {
  switch (command) {
    case F_SETFL: {
      const int result = real().fcntl(fd, F_SETFL, argument);
      if (result == 0) {
        end->pipe->header->nonblocking[end->pipe_write_end].store((argument & O_NONBLOCK) != 0,
                                                                  std::memory_order_relaxed);
      }
      return result;
    }
    case F_DUPFD:
    case F_DUPFD_CLOEXEC: {
      // A vfork child's copy is out of our sight (its parent's tables).
      if (!holder_process()) downgrade_pipe(fd, end);
      const int copy = real().fcntl(fd, command, argument);
      if (copy >= 0 && holder_process()) {
        install_socket(copy, end);
        // stdio and an exec'd image reach a pipe there behind our back.
        if (copy <= STDERR_FILENO) downgrade_pipe(copy, end);
      }
      return copy;
    }
    case F_SETPIPE_SZ:
      // The ring cannot grow or shrink: the kernel pipe carries on.
      downgrade_pipe(fd, end);
      return real().fcntl(fd, command, argument);
    default:
      return real().fcntl(fd, command, argument);
  }
}

int pipe_ioctl(int fd, Socket* end, unsigned long request, void* argument) {
  const int result = real().ioctl(fd, request, argument);
  if (result != 0 || argument == nullptr) return result;
  if (request == FIONREAD) {
    *static_cast<int*>(argument) += static_cast<int>(end->pipe->ring.unread());
  } else if (request == FIONBIO) {
    end->pipe->header->nonblocking[end->pipe_write_end].store(*static_cast<int*>(argument) != 0,
                                                              std::memory_order_relaxed);
  }
  return result;
}

void downgrade_pipe(int fd, Socket* end) {
  Pipe* pipe = end->pipe;
  PipeHeader* header = pipe->header;
  if (downgraded(pipe)) return;
  {
    RobustLock writers(&header->write_lock);
    RobustLock readers(&header->read_lock);
    if (header->downgraded.load(std::memory_order_relaxed) != 0) return;
    if (pipe->ring.unread() != 0) move_ring_to_kernel(fd, pipe);
    header->downgraded.store(1, std::memory_order_release);
  }
  g_pipes_downgraded.fetch_add(1, std::memory_order_relaxed);
  note_kernel_readiness_changed();  // its readiness is the kernel's from now on
  // Sleepers go to the kernel pipe now.
  fence_after_publishing();
  signal_wake_fd(pipe->data_wake.get());
  signal_wake_fd(pipe->space_wake.get());
}

void downgrade_pipe_at(int fd) {
  SocketRef end = lookup_descriptor(fd);
  if (end && end->state == SocketState::kPipe) downgrade_pipe(fd, end.get());
}

void downgrade_passed_pipes(const struct msghdr* message) {
  for_each_passed_descriptor(message, downgrade_pipe_at);
}

void downgrade_pipes_for_new_image(bool include_close_on_exec) {
  for_each_pipe_end([include_close_on_exec](int fd, Socket* end) {
    const int descriptor_flags = real().fcntl(fd, F_GETFD);
    if (descriptor_flags < 0) return;  // a vfork child closed it
    if (include_close_on_exec || (descriptor_flags & FD_CLOEXEC) == 0) downgrade_pipe(fd, end);
  });
}

void release_pipe_end(Socket* end) {
  Pipe* pipe = end->pipe;
  note_kernel_readiness_changed();  // the other end's hang-up, which only the kernel tells
  if (!end->pipe_write_end) pipe->header->read_holders.fetch_sub(1, std::memory_order_acq_rel);
  if (pipe->ends.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  mark_internal_fd(pipe->data_wake.get(), false);
  mark_internal_fd(pipe->space_wake.get(), false);
  delete pipe;
}

void share_pipes_with_child(bool shared) {
  for_each_held_read_end([shared](Pipe* pipe) {
    if (shared) {
      pipe->header->read_holders.fetch_add(1, std::memory_order_acq_rel);
    } else {
      pipe->header->read_holders.fetch_sub(1, std::memory_order_acq_rel);
    }
  });
}

std::vector<Pipe*> leave_pipes_for_exec() {
  std::vector<Pipe*> left;
  // A vfork child was never counted; a downgraded pipe's readers are the
  // kernel's to count.
  if (!holder_process()) return left;
  for_each_held_read_end([&left](Pipe* pipe) {
    if (downgraded(pipe)) return;
    pipe->header->read_holders.fetch_sub(1, std::memory_order_acq_rel);
    left.push_back(pipe);
  });
  return left;
}

void rejoin_pipes_after_failed_exec(const std::vector<Pipe*>& left) {
  for (Pipe* pipe : left) pipe->header->read_holders.fetch_add(1, std::memory_order_acq_rel);
}

void leave_pipes_at_exit() {
  // Once: a destructor or atexit handler may still call _exit() after ours ran.
  static std::atomic<bool> left{false};
  if (!holder_process() || left.exchange(true)) return;
  for_each_held_read_end(
      [](Pipe* pipe) { pipe->header->read_holders.fetch_sub(1, std::memory_order_acq_rel); });
  if (config().debug &&
      g_pipes_accelerated.load() + g_pipes_downgraded.load() + g_ring_bytes_written.load() != 0) {
    fprintf(stderr,
            "netaccel: pipes: %llu accelerated, %llu downgraded, %llu bytes written to rings\n",
            static_cast<unsigned long long>(g_pipes_accelerated.load()),
            static_cast<unsigned long long>(g_pipes_downgraded.load()),
            static_cast<unsigned long long>(g_ring_bytes_written.load()));
  }
}

void start_pipe_statistics_in_child() {
  g_pipes_accelerated.store(0, std::memory_order_relaxed);
  g_pipes_downgraded.store(0, std::memory_order_relaxed);
  g_ring_bytes_written.store(0, std::memory_order_relaxed);
}

ssize_t intercepted_tee(int in_fd, int out_fd, size_t length, unsigned int flags) {
  downgrade_pipe_at(in_fd);
  downgrade_pipe_at(out_fd);
  return real().tee(in_fd, out_fd, length, flags);
}

ssize_t intercepted_vmsplice(int fd, const struct iovec* iov, size_t count, unsigned int flags) {
  downgrade_pipe_at(fd);
  return real().vmsplice(fd, iov, count, flags);
}

// glibc spawns the shell of popen() and system() with its own internal
// posix_spawn, out of our reach: the pipes the shell inherits go back to
// the kernel here.
FILE* intercepted_popen(const char* command, const char* type) {
  downgrade_pipes_for_new_image(/*include_close_on_exec=*/false);
  return real().popen(command, type);
}

int intercepted_system(const char* command) {
  downgrade_pipes_for_new_image(/*include_close_on_exec=*/false);
  return real().system(command);
}

}  // namespace netaccel::preload

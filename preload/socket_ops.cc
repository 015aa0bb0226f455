// The socket API on netaccel descriptors. Every function here has libc's
// contract: -1 and errno on failure, never an exception. Calls on kernel
// descriptors go straight to the kernel.
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "intercepted.h"
#include "pipes.h"
#include "real_calls.h"
#include "runtime.h"
#include "signals.h"
#include "user_memory.h"

namespace netaccel::preload {
namespace {

bool accelerable(int domain, int type, int protocol) {
  return (domain == AF_INET || domain == AF_INET6) && type == SOCK_STREAM &&
         (protocol == 0 || protocol == IPPROTO_TCP);
}

// A kernel socket exists behind the descriptor (bound or listening).
bool kernel_backed(const Socket* socket) {
  return socket->state == SocketState::kBound || socket->state == SocketState::kListening;
}

// O_NONBLOCK as every process holding the socket sees it: a connection end's
// in its segment header, a listener's that others may hold in the kernel
// (where F_SETFL and FIONBIO set it too), otherwise our own note.
bool socket_nonblocking(int fd, Socket* socket) {
  if (socket->state == SocketState::kConnected) return socket->connection->nonblocking();
  if (socket->state == SocketState::kListening &&
      socket->listener_shared.load(std::memory_order_relaxed)) {
    const int flags = real().fcntl(fd, F_GETFL);
    return flags >= 0 && (flags & O_NONBLOCK) != 0;
  }
  return socket->nonblocking.load(std::memory_order_relaxed);
}

void set_socket_nonblocking(Socket* socket, bool nonblocking) {
  if (socket->state == SocketState::kConnected) {
    socket->connection->set_nonblocking(nonblocking);
  } else {
    socket->nonblocking.store(nonblocking, std::memory_order_relaxed);
  }
}

// The peer's reset is reported once, as ECONNRESET, by whichever of recv,
// send and SO_ERROR meets it first; after that the kernel's connection is
// simply closed (EOF, EPIPE).
bool take_reset(Socket* socket) {
  if (socket->reset_reported) return false;
  socket->reset_reported = true;
  return true;
}

// Kernel sockets of each family that validate and normalise options we only
// record: `probe` takes every setsockopt, `pristine` keeps the defaults.
struct OptionOracle {
  int probe = -1;
  int pristine = -1;
  // Values the probe accepted, of options it judges by their bytes alone:
  // programs set the same few on every socket, a syscall each otherwise.
  std::mutex accepted_mutex;
  std::vector<SavedOption> accepted;
};

OptionOracle& option_oracle(int domain) {
  static OptionOracle oracles[2];
  static std::mutex mutex;
  OptionOracle& oracle = oracles[domain == AF_INET6 ? 1 : 0];
  std::lock_guard lock(mutex);
  if (oracle.probe < 0) {
    oracle.probe = keep_internal_fd(real().socket(domain, SOCK_STREAM | SOCK_CLOEXEC, 0));
    oracle.pristine = keep_internal_fd(real().socket(domain, SOCK_STREAM | SOCK_CLOEXEC, 0));
  }
  return oracle;
}

// Options the kernel accepts or refuses by their value alone: no privilege,
// no limit that may change, no other state of the socket.
bool judged_by_value_alone(int level, int name) {
  if (level == SOL_SOCKET) {
    return name == SO_REUSEADDR || name == SO_REUSEPORT || name == SO_KEEPALIVE ||
           name == SO_LINGER || name == SO_RCVTIMEO || name == SO_SNDTIMEO;
  }
  // TCP_CORK: nginx corks and uncorks around every response.
  return level == IPPROTO_TCP &&
         (name == TCP_NODELAY || name == TCP_CORK || name == TCP_QUICKACK || name == TCP_KEEPIDLE ||
          name == TCP_KEEPINTVL || name == TCP_KEEPCNT);
}

// Whether the kernel takes this setsockopt (errno set if not).
bool option_accepted(OptionOracle& oracle, int level, int name, const void* value,
                     socklen_t length) {
  const bool remembered = judged_by_value_alone(level, name) && value != nullptr &&
                          length <= sizeof(SavedOption::value);
  const auto same = [&](const SavedOption& option) {
    return option.level == level && option.name == name && option.length == length &&
           memcmp(option.value, value, length) == 0;
  };
  if (remembered) {
    std::lock_guard lock(oracle.accepted_mutex);
    if (std::any_of(oracle.accepted.begin(), oracle.accepted.end(), same)) return true;
  }
  if (real().setsockopt(oracle.probe, level, name, value, length) != 0) return false;
  if (remembered) {
    SavedOption accepted{level, name, length, {}};
    memcpy(accepted.value, value, length);
    std::lock_guard lock(oracle.accepted_mutex);
    // Bounded: a program that sets ever new values pays the syscall.
    if (oracle.accepted.size() < 64) oracle.accepted.push_back(accepted);
  }
  return true;
}

// Replaces the placeholder at `fd` with a real kernel socket carrying every
// option recorded so far, keeping the descriptor's close-on-exec flag.
int materialize(int fd, Socket* socket, bool nonblocking) {
  const int kernel =
      real().socket(socket->domain, socket->type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0),
                    socket->protocol);
  if (kernel < 0) return -1;
  for (const SavedOption& option : socket->options) {
    real().setsockopt(kernel, option.level, option.name, option.value, option.length);
  }
  const int descriptor_flags = real().fcntl(fd, F_GETFD);
  const int moved = real().dup3(kernel, fd, (descriptor_flags & FD_CLOEXEC) ? O_CLOEXEC : 0);
  const int error = errno;
  real().close(kernel);
  if (moved < 0) return fail(error);
  return 0;
}

// The descriptor becomes a plain kernel socket that netaccel forgets.
int fall_back_to_kernel(int fd, Socket* socket) {
  if (socket->state == SocketState::kFresh &&
      materialize(fd, socket, socket->nonblocking.load(std::memory_order_relaxed)) != 0) {
    return -1;
  }
  epoll_forget(fd, socket, /*now_kernel=*/true);
  Socket* removed = uninstall_socket(fd);
  if (removed != nullptr) release_socket(removed);
  return 0;
}

// Puts the socket's SO_SNDBUF and SO_RCVBUF into its connection's rings.
void apply_buffer_sizes(Socket* socket) {
  Connection* c = socket->connection;
  if (socket->send_buffer != 0) {
    set_ring_buffer(c->header->ring_buffers[c->side], true, socket->send_buffer);
  }
  if (socket->receive_buffer != 0) {
    set_ring_buffer(c->header->ring_buffers[c->side ^ 1], false, socket->receive_buffer);
  }
}

int64_t timeval_to_ns(const void* value, socklen_t length) {
  if (length < sizeof(struct timeval)) return -1;
  struct timeval tv;
  memcpy(&tv, value, sizeof tv);
  if (tv.tv_sec < 0 || tv.tv_usec < 0 || tv.tv_usec >= 1000000) return -1;
  return static_cast<int64_t>(tv.tv_sec) * 1000000000 + static_cast<int64_t>(tv.tv_usec) * 1000;
}

// ---------------------------------------------------------------------------
// Waiting for a connection to become readable or writable.
enum class Want { kData, kSpace };

// Waiting for data, `amount` bytes must be readable; waiting for space,
// `amount` bytes must be free within the socket buffers.
bool wait_satisfied(Socket* socket, Connection* c, Want want, uint32_t amount = 1) {
  if (c->peer_aborted()) return true;
  if (want == Want::kData) {
    return c->rx.readable(amount) >= amount ||
           c->rx.control().writer_closed.load(std::memory_order_acquire) || socket->read_shut;
  }
  return c->send_room() >= amount || c->tx.control().reader_closed.load(std::memory_order_acquire);
}

// A blocking call whose sleep a signal handler interrupted starts again, as
// the kernel restarts it: after a handler with SA_RESTART, unless a timeout
// (SO_RCVTIMEO, SO_SNDTIMEO) bounds the call.
bool restarts_after_signal(int64_t deadline_ns) {
  return deadline_ns == 0 && handled_signal_restarts();
}

// A sender that found the ring full spins until a quarter of it is free (or
// all it has left fits, or all the socket buffers allow), as the kernel
// wakes a writer only once a third of its buffer is free: one message per
// freed slot would move the line of each index between the cores on every
// message.
uint32_t space_worth_spinning_for(const Connection* c, std::size_t unsent) {
  std::size_t most = c->tx.capacity() / 4;
  const uint32_t limit = ring_queue_limit(
      c->header->ring_buffers[c->side].load(std::memory_order_relaxed), c->tx.capacity());
  if (limit != 0) most = std::min<std::size_t>(most, limit);
  return static_cast<uint32_t>(std::min(unsent, most));
}

// 0 when the condition holds, -EAGAIN at the deadline, -EINTR on a signal.
// Waiting for data, `amount` bytes must be readable; waiting for space,
// `amount` is what the sender has left to write.
int wait_for(Socket* socket, Connection* c, Want want, int64_t deadline_ns,
             std::size_t amount = 1) {
  SpinBudget spin(config().spin_ns);
  const uint32_t target =
      want == Want::kData ? static_cast<uint32_t>(amount) : space_worth_spinning_for(c, amount);
  // After the announcement any space will do: the reader wakes us for it.
  const uint32_t after_sleep = want == Want::kData ? target : 1;
  while (spin.keep_spinning()) {
    if (wait_satisfied(socket, c, want, target)) return 0;
  }
  std::atomic<uint32_t>& flag =
      want == Want::kData ? c->rx.control().reader_waiting : c->tx.control().writer_waiting;
  for (;;) {
    flag.store(1, std::memory_order_relaxed);
    const bool wake_may_be_missed = !fence_before_sleeping_for_data();
    if (wait_satisfied(socket, c, want, after_sleep)) {
      flag.store(0, std::memory_order_relaxed);
      return 0;
    }
    int timeout_ms = -1;
    if (deadline_ns != 0) {
      const int64_t left = deadline_ns - monotonic_ns();
      if (left <= 0) {
        flag.store(0, std::memory_order_relaxed);
        return -EAGAIN;
      }
      timeout_ms = static_cast<int>((left + 999999) / 1000000);
    }
    // Another thread of ours may drain this eventfd first, and space
    // wake-ups are sent without a fence (see wake_peer_if_writing), as are
    // data wake-ups when our fence could not cover them: a bounded sleep
    // keeps each from losing the wake-up for long.
    int bound_ms = want == Want::kSpace || wake_may_be_missed ? kSpaceRecheckMs : -1;
    if (g_multithreaded.load(std::memory_order_relaxed) && (bound_ms < 0 || bound_ms > 20)) {
      bound_ms = 20;
    }
    if (bound_ms >= 0 && (timeout_ms < 0 || timeout_ms > bound_ms)) timeout_ms = bound_ms;
    struct pollfd wake {
      c->own_wake.get(), POLLIN, 0
    };
    forget_handled_signal();
    const int ready = real().poll(&wake, 1, timeout_ms);
    const int error = errno;
    flag.store(0, std::memory_order_relaxed);
    if (ready > 0) drain_wake_fd(c->own_wake.get());
    if (ready < 0 && error == EINTR) return -EINTR;
    // Woken: look before announcing again, which costs a membarrier.
    if (wait_satisfied(socket, c, want, after_sleep)) return 0;
  }
}

// The byte at `offset` of `iov`, which holds more than `offset` bytes.
unsigned char iov_byte(const struct iovec* iov, std::size_t offset) {
  for (; offset >= iov->iov_len; ++iov) offset -= iov->iov_len;
  return static_cast<const unsigned char*>(iov->iov_base)[offset];
}

int64_t deadline_after(int64_t timeout_ns) {
  return timeout_ns == 0 ? 0 : monotonic_ns() + timeout_ns;
}

}  // namespace

// ---------------------------------------------------------------------------
// Data path.

ssize_t stream_send(int fd, Socket* socket, const struct iovec* iov, int iovcnt, int flags);

namespace {

// MSG_OOB: all but the last byte go as usual; the last is the urgent byte,
// which the peer reads apart (recv MSG_OOB) and which never enters the ring.
ssize_t send_urgent(int fd, Socket* socket, const struct iovec* iov, int iovcnt, int flags) {
  flags &= ~MSG_OOB;
  Connection* c = socket->connection;
  const std::size_t total = iov_total(iov, iovcnt);
  // A buffer it cannot read fails as an ordinary send's does, nothing marked.
  if (total == 0 || !iov_accessible(iov, iovcnt, Access::kRead) || socket->write_shut ||
      c->peer_aborted() || c->tx.control().reader_closed.load(std::memory_order_acquire)) {
    return stream_send(fd, socket, iov, iovcnt, flags);  // nothing to mark, or its error
  }
  struct iovec normal[64];
  const int normal_count = iov_advance(iov, iovcnt, 0, total - 1, normal);
  if (total > 1) {
    const ssize_t sent = stream_send(fd, socket, normal, normal_count, flags);
    if (sent < static_cast<ssize_t>(total - 1)) return sent;
  }
  const uint32_t byte = iov_byte(iov, total - 1);
  c->header->urgent_mark[c->side].store(c->tx.control().head.load(std::memory_order_relaxed),
                                        std::memory_order_relaxed);
  // Release: the peer that sees the byte pending sees its mark.
  c->header->urgent[c->side].store(kUrgentPending | byte, std::memory_order_release);
  fence_after_publishing();
  signal_wake_fd(c->peer_wake.get());
  return static_cast<ssize_t>(total);
}

// recv MSG_OOB: the pending urgent byte, never waiting; EINVAL without one.
ssize_t receive_urgent(Socket* socket, const struct iovec* iov, int iovcnt, int flags) {
  Connection* c = socket->connection;
  std::atomic<uint32_t>& urgent = c->header->urgent[c->side ^ 1];
  uint32_t word = urgent.load(std::memory_order_acquire);
  if (!(word & kUrgentPending)) return fail(EINVAL);
  if (!(flags & MSG_PEEK) && !urgent.compare_exchange_strong(word, kUrgentRead)) {
    return fail(EINVAL);
  }
  if (iov_total(iov, iovcnt) == 0) return 0;
  if (flags & MSG_TRUNC) return 1;
  // The kernel takes the byte before it copies it: EFAULT loses it.
  struct iovec first[1];
  if (accessible_piece(iov, iovcnt, 0, 1, Access::kWrite, first) < 0) return fail(EFAULT);
  *static_cast<unsigned char*>(first[0].iov_base) = word & 0xff;
  return 1;
}

}  // namespace

ssize_t stream_send(int fd, Socket* socket, const struct iovec* iov, int iovcnt, int flags) {
  if ((flags & MSG_OOB) && socket->state == SocketState::kConnected) [[unlikely]] {
    return send_urgent(fd, socket, iov, iovcnt, flags);
  }
  if (socket->state != SocketState::kConnected) {
    if (kernel_backed(socket)) {
      struct msghdr message {};
      message.msg_iov = const_cast<struct iovec*>(iov);
      message.msg_iovlen = iovcnt;
      return real().sendmsg(fd, &message, flags);
    }
    raise_sigpipe(flags);
    return fail(EPIPE);
  }
  std::lock_guard guard(socket->send_lock);
  Connection* c = socket->connection;
  const std::size_t total = iov_total(iov, iovcnt);
  // Buffers not proven readable are checked copy by copy, over exactly the
  // bytes each takes (user_memory.h). Like the kernel's, whose copy of a
  // chunk is all or nothing: a copy that would fault sends none of its
  // bytes, and the call returns what earlier copies sent, or EFAULT.
  const bool buffers_proven = iov_proven(iov, iovcnt, Access::kRead);
  const bool nonblocking = c->nonblocking() || (flags & MSG_DONTWAIT);
  const int64_t deadline = deadline_after(socket->send_timeout_ns);
  std::size_t sent = 0;
  for (;;) {
    if (c->peer_aborted()) {
      if (sent > 0) return static_cast<ssize_t>(sent);
      if (take_reset(socket)) return fail(ECONNRESET);
      raise_sigpipe(flags);
      return fail(EPIPE);
    }
    // Another process holding this end may have shut it for writing: the
    // kernel's shutdown acts on the socket all copies share.
    if (c->tx.control().writer_closed.load(std::memory_order_relaxed)) socket->write_shut = true;
    if (socket->write_shut || c->tx.control().reader_closed.load(std::memory_order_acquire)) {
      if (sent > 0) return static_cast<ssize_t>(sent);
      if (!socket->write_shut && !socket->reset_by_peer) {
        // The kernel sends these bytes to the closed peer, which answers
        // with a reset: this send succeeds, the next one fails.
        if (total > 0) {
          socket->reset_by_peer = true;
          socket->pending_error = EPIPE;
        }
        return static_cast<ssize_t>(total);
      }
      socket->pending_error = 0;
      raise_sigpipe(flags);
      return fail(EPIPE);
    }
    if (total == 0) return 0;
    std::size_t written;
    const uint32_t limit = ring_queue_limit(
        c->header->ring_buffers[c->side].load(std::memory_order_relaxed), c->tx.capacity());
    if (sent == 0 && limit == 0 && buffers_proven) {
      written = c->tx.write(iov, iovcnt);
    } else {
      // Small socket buffers (SO_SNDBUF, the peer's SO_RCVBUF) leave less
      // room; an unproven copy takes exactly the room there is now.
      const std::size_t room = limit == 0 && buffers_proven ? total : c->send_room();
      struct iovec rest[64];
      const int count = buffers_proven
                            ? iov_advance(iov, iovcnt, sent, room, rest)
                            : accessible_piece(iov, iovcnt, sent, room, Access::kRead, rest);
      if (count < 0) return sent > 0 ? static_cast<ssize_t>(sent) : fail(EFAULT);
      written = room == 0 ? 0 : c->tx.write(rest, count);
    }
    if (written > 0) {
      sent += written;
      c->wake_peer_if_reading();
      if (sent == total) return static_cast<ssize_t>(sent);
      continue;
    }
    if (nonblocking) return sent > 0 ? static_cast<ssize_t>(sent) : fail(EAGAIN);
    const int waited = wait_for(socket, c, Want::kSpace, deadline, total - sent);
    if (waited < 0 && sent > 0) return static_cast<ssize_t>(sent);
    if (waited == -EINTR && restarts_after_signal(deadline)) continue;
    if (waited < 0) return fail(-waited);
  }
}

ssize_t stream_receive(int fd, Socket* socket, const struct iovec* iov, int iovcnt, int flags) {
  if (socket->state != SocketState::kConnected) {
    if (kernel_backed(socket)) {
      struct msghdr message {};
      message.msg_iov = const_cast<struct iovec*>(iov);
      message.msg_iovlen = iovcnt;
      return real().recvmsg(fd, &message, flags);
    }
    return fail(ENOTCONN);
  }
  if (flags & MSG_OOB) [[unlikely]]
    return receive_urgent(socket, iov, iovcnt, flags);
  std::lock_guard guard(socket->receive_lock);
  Connection* c = socket->connection;
  const std::size_t total = iov_total(iov, iovcnt);
  // As in stream_send: unproven buffers are checked over exactly what each
  // copy takes. The kernel copies a queued segment whole or not at all (the
  // ring is one segment): a copy that would fault takes nothing, and the
  // call returns what earlier copies took, or EFAULT.
  const bool buffers_proven = iov_proven(iov, iovcnt, Access::kWrite);
  const bool peek = flags & MSG_PEEK;
  // TCP's MSG_TRUNC drops the bytes without copying them (the buffer may be null).
  const bool drop = (flags & MSG_TRUNC) && !peek;
  const bool nonblocking = c->nonblocking() || (flags & MSG_DONTWAIT);
  const int64_t deadline = deadline_after(socket->receive_timeout_ns);
  std::size_t got = 0;
  if (total == 0) {
    // The kernel answers an empty read at once, but with EAGAIN when it
    // must not block and nothing is queued.
    const bool quiet = c->rx.readable() == 0 &&
                       !c->rx.control().writer_closed.load(std::memory_order_acquire) &&
                       !c->peer_aborted() && !socket->read_shut;
    return nonblocking && quiet ? fail(EAGAIN) : 0;
  }
  for (;;) {
    std::size_t taken;
    if (drop) {
      taken = c->rx.discard(total - got);
    } else if (got == 0 && buffers_proven) {
      taken = c->rx.read(iov, iovcnt, peek);
    } else {
      struct iovec rest[64];
      const int count = buffers_proven
                            ? iov_advance(iov, iovcnt, got, total, rest)
                            : accessible_piece(iov, iovcnt, got, readable_for(c->rx, total - got),
                                               Access::kWrite, rest);
      if (count < 0) return got > 0 ? static_cast<ssize_t>(got) : fail(EFAULT);
      taken = c->rx.read(rest, count, peek);
    }
    if (taken > 0) {
      got += taken;
      if (!peek) c->wake_peer_if_writing();
      if (got == total || !(flags & MSG_WAITALL)) return static_cast<ssize_t>(got);
      if (peek) {
        // MSG_PEEK|MSG_WAITALL waits until the whole length (at most a full
        // ring) can be peeked, then peeks again from the start.
        const uint32_t wanted =
            static_cast<uint32_t>(std::min<std::size_t>(total, c->rx.capacity()));
        if (got >= wanted || nonblocking || socket->read_shut || c->peer_aborted() ||
            c->rx.control().writer_closed.load(std::memory_order_acquire) ||
            wait_for(socket, c, Want::kData, deadline, wanted) < 0) {
          return static_cast<ssize_t>(got);
        }
        got = 0;
      }
      continue;
    }
    if (c->rx.control().writer_closed.load(std::memory_order_acquire)) {
      // Bytes published before the close are visible now; take them first.
      if (c->rx.readable() != 0) continue;
      if (got == 0 && c->peer_aborted() && take_reset(socket)) return fail(ECONNRESET);
      return static_cast<ssize_t>(got);
    }
    if (c->peer_aborted()) {
      return got > 0 || !take_reset(socket) ? static_cast<ssize_t>(got) : fail(ECONNRESET);
    }
    if (socket->read_shut) return static_cast<ssize_t>(got);
    if (nonblocking) return got > 0 ? static_cast<ssize_t>(got) : fail(EAGAIN);
    const int waited = wait_for(socket, c, Want::kData, deadline);
    if (waited < 0 && got > 0) return static_cast<ssize_t>(got);
    if (waited == -EINTR && restarts_after_signal(deadline)) continue;
    if (waited < 0) return fail(-waited);
  }
}

namespace {

// The kernel's copy of a msghdr and its vector (copy_msghdr_from_user,
// import_iovec, then sendmsg's copy of the control data): 0 or the errno
// it fails with. Only a send reads the name and the control data.
int message_error(const struct msghdr* message, bool sending) {
  if (!accessible(message, sizeof *message, Access::kRead)) return EFAULT;
  if (message->msg_name != nullptr) {
    const int name_length = static_cast<int>(message->msg_namelen);
    if (name_length < 0) return EINVAL;
    const std::size_t read_length =
        std::min<std::size_t>(static_cast<std::size_t>(name_length), sizeof(sockaddr_storage));
    if (sending && !accessible(message->msg_name, read_length, Access::kRead)) return EFAULT;
  }
  if (message->msg_iovlen > IOV_MAX) return EMSGSIZE;
  if (const int error = vector_error(message->msg_iov, message->msg_iovlen)) return error;
  if (sending && message->msg_controllen != 0) {
    if (message->msg_controllen > INT_MAX) return ENOBUFS;
    if (!accessible(message->msg_control, message->msg_controllen, Access::kRead)) return EFAULT;
  }
  return 0;
}

// readv and writev: the kernel refuses a bad count (EINVAL) or vector
// (vector_error) before it touches the file. 0 when both are fine; -1 when
// the kernel is to answer (a pipe's end, whose EBADF for the wrong end
// comes first), else the errno.
int vector_call_error(const Socket* socket, const struct iovec* iov, int iovcnt) {
  const int error =
      iovcnt < 0 || iovcnt > IOV_MAX ? EINVAL : vector_error(iov, static_cast<std::size_t>(iovcnt));
  return error != 0 && socket->state == SocketState::kPipe ? -1 : error;
}

}  // namespace

ssize_t intercepted_send(int fd, const void* buffer, size_t length, int flags) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) return real().send(fd, buffer, length, flags);
  struct iovec iov {
    const_cast<void*>(buffer), length
  };
  return stream_send(fd, socket.get(), &iov, 1, flags);
}

ssize_t intercepted_sendto(int fd, const void* buffer, size_t length, int flags,
                           const struct sockaddr* address, socklen_t address_length) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) return real().sendto(fd, buffer, length, flags, address, address_length);
  // A connected stream socket ignores the destination, as TCP does.
  struct iovec iov {
    const_cast<void*>(buffer), length
  };
  return stream_send(fd, socket.get(), &iov, 1, flags);
}

ssize_t intercepted_sendmsg(int fd, const struct msghdr* message, int flags) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) {
    // A message the kernel cannot read is its to refuse.
    if (!accessible(message, sizeof *message, Access::kRead) || message->msg_controllen == 0) {
      return real().sendmsg(fd, message, flags);
    }
    downgrade_passed_pipes(message);
    return send_with_anchors(fd, message, flags);
  }
  if (const int error = message_error(message, /*sending=*/true)) return fail(error);
  return stream_send(fd, socket.get(), message->msg_iov, static_cast<int>(message->msg_iovlen),
                     flags);
}

ssize_t intercepted_write(int fd, const void* buffer, size_t length) {
  SocketRef socket = lookup_descriptor(fd);
  if (!socket) return real().write(fd, buffer, length);
  struct iovec iov {
    const_cast<void*>(buffer), length
  };
  if (socket->state == SocketState::kPipe) return pipe_write(fd, socket.get(), &iov, 1);
  return stream_send(fd, socket.get(), &iov, 1, 0);
}

ssize_t intercepted_writev(int fd, const struct iovec* iov, int iovcnt) {
  SocketRef socket = lookup_descriptor(fd);
  if (!socket) return real().writev(fd, iov, iovcnt);
  if (const int error = vector_call_error(socket.get(), iov, iovcnt)) {
    return error < 0 ? real().writev(fd, iov, iovcnt) : fail(error);
  }
  if (socket->state == SocketState::kPipe) return pipe_write(fd, socket.get(), iov, iovcnt);
  return stream_send(fd, socket.get(), iov, iovcnt, 0);
}

// sendfile to a netaccel connection: the kernel cannot see the ring, so the
// file's bytes go through a buffer. Like the kernel's, the call raises
// SIGPIPE, returns what it sent before an error, and leaves the file
// position (or *offset) just past the bytes sent.
ssize_t intercepted_sendfile(int out_fd, int in_fd, off_t* offset, size_t count) {
  downgrade_pipe_at(out_fd);  // the kernel moves the bytes
  SocketRef socket = lookup_socket(out_fd);
  if (!socket || socket->state != SocketState::kConnected) {
    return real().sendfile(out_fd, in_fd, offset, count);
  }
  // As the kernel: the offset is read first and written back at the end.
  if (offset != nullptr && !accessible(offset, sizeof *offset, Access::kRead)) return fail(EFAULT);
  char buffer[16384];
  off_t position = offset != nullptr ? *offset : 0;
  size_t done = 0;
  while (done < count) {
    const size_t wanted = std::min(sizeof buffer, count - done);
    const ssize_t got = offset != nullptr ? pread(in_fd, buffer, wanted, position)
                                          : real().read(in_fd, buffer, wanted);
    if (got <= 0) {
      if (got < 0 && done == 0) return -1;
      break;
    }
    struct iovec iov {
      buffer, static_cast<size_t>(got)
    };
    const ssize_t sent = stream_send(out_fd, socket.get(), &iov, 1, 0);
    const ssize_t unsent = got - std::max<ssize_t>(sent, 0);
    if (offset == nullptr && unsent > 0) lseek(in_fd, -unsent, SEEK_CUR);
    if (sent < 0) {
      if (done == 0) return -1;
      break;
    }
    done += static_cast<size_t>(sent);
    position += sent;
    if (unsent > 0) break;
  }
  if (offset != nullptr) {
    if (!accessible(offset, sizeof *offset, Access::kWrite)) return fail(EFAULT);
    *offset = position;
  }
  return static_cast<ssize_t>(done);
}

// splice between a pipe and a netaccel connection: the kernel cannot see
// the ring, so the bytes go through a buffer, taken from the source only as
// far as the destination has room: a short write loses nothing.
ssize_t intercepted_splice(int in_fd, loff_t* in_offset, int out_fd, loff_t* out_offset,
                           size_t length, unsigned int flags) {
  // The kernel reads or writes the pipe's own buffer.
  downgrade_pipe_at(in_fd);
  downgrade_pipe_at(out_fd);
  SocketRef source = lookup_socket(in_fd);
  SocketRef destination = lookup_socket(out_fd);
  const bool from_ring = source && source->state == SocketState::kConnected;
  const bool to_ring = destination && destination->state == SocketState::kConnected;
  if (!from_ring && !to_ring) {
    return real().splice(in_fd, in_offset, out_fd, out_offset, length, flags);
  }
  // One end must be a pipe, and a socket cannot be read or written at an offset.
  if (from_ring == to_ring || (from_ring ? in_offset : out_offset) != nullptr) return fail(EINVAL);
  const int pipe_fd = from_ring ? out_fd : in_fd;
  struct stat pipe_status;
  if (fstat(pipe_fd, &pipe_status) != 0) return -1;
  if (!S_ISFIFO(pipe_status.st_mode)) return fail(EINVAL);
  if (length == 0) return 0;
  // SPLICE_F_NONBLOCK keeps the pipe from blocking; the socket follows O_NONBLOCK.
  const bool pipe_nonblocking = (flags & SPLICE_F_NONBLOCK) != 0;
  struct pollfd pipe_ready {
    pipe_fd, static_cast<short>(from_ring ? POLLOUT : POLLIN), 0
  };
  char buffer[16384];
  struct iovec iov {
    buffer, std::min(sizeof buffer, length)
  };
  if (from_ring) {
    // Peeked, written to the pipe, then dropped as far as the pipe took it.
    const ssize_t peeked = stream_receive(in_fd, source.get(), &iov, 1, MSG_PEEK);
    if (peeked <= 0) return peeked;
    if (pipe_nonblocking && real().poll(&pipe_ready, 1, 0) == 0) return fail(EAGAIN);
    const ssize_t written = real().write(out_fd, buffer, static_cast<size_t>(peeked));
    if (written <= 0) return written;
    source->connection->rx.discard(static_cast<size_t>(written));
    source->connection->wake_peer_if_writing();
    return written;
  }
  // Only as much is read from the pipe as the ring has room for.
  Connection* c = destination->connection;
  const bool may_wait = !c->nonblocking();
  const int64_t deadline = deadline_after(destination->send_timeout_ns);
  for (;;) {
    const uint32_t room = c->send_room();
    if (room != 0) {
      iov.iov_len = std::min<size_t>(iov.iov_len, room);
      break;
    }
    // A closed connection: the send below reports it as a send would.
    if (destination->write_shut || wait_satisfied(destination.get(), c, Want::kSpace)) break;
    if (!may_wait) return fail(EAGAIN);
    const int waited = wait_for(destination.get(), c, Want::kSpace, deadline);
    if (waited == -EINTR && restarts_after_signal(deadline)) continue;
    if (waited < 0) return fail(-waited);
  }
  if (pipe_nonblocking && real().poll(&pipe_ready, 1, 0) == 0) return fail(EAGAIN);
  const ssize_t got = real().read(in_fd, buffer, iov.iov_len);
  if (got <= 0) return got;
  iov.iov_len = static_cast<size_t>(got);
  return stream_send(out_fd, destination.get(), &iov, 1, 0);
}

ssize_t intercepted_recv(int fd, void* buffer, size_t length, int flags) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) return real().recv(fd, buffer, length, flags);
  struct iovec iov {
    buffer, length
  };
  return stream_receive(fd, socket.get(), &iov, 1, flags);
}

ssize_t intercepted_recvfrom(int fd, void* buffer, size_t length, int flags,
                             struct sockaddr* address, socklen_t* address_length) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) return real().recvfrom(fd, buffer, length, flags, address, address_length);
  struct iovec iov {
    buffer, length
  };
  const ssize_t got = stream_receive(fd, socket.get(), &iov, 1, flags);
  if (got < 0 || address == nullptr) return got;
  // TCP reports no source address: as the kernel (move_addr_to_user), after
  // the data is taken, the length is read, checked and set to 0.
  if (!accessible(address_length, sizeof *address_length, Access::kRead)) return fail(EFAULT);
  if (static_cast<int>(*address_length) < 0) return fail(EINVAL);
  if (!accessible(address_length, sizeof *address_length, Access::kWrite)) return fail(EFAULT);
  *address_length = 0;
  return got;
}

ssize_t intercepted_recvmsg(int fd, struct msghdr* message, int flags) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) {
    const ssize_t got = real().recvmsg(fd, message, flags);
    if (got >= 0 && message->msg_controllen != 0 && !is_internal_fd(fd)) {
      adopt_received_descriptors(message);
    }
    return got;
  }
  if (const int error = message_error(message, /*sending=*/false)) return fail(error);
  const ssize_t got = stream_receive(fd, socket.get(), message->msg_iov,
                                     static_cast<int>(message->msg_iovlen), flags);
  if (got < 0) return got;
  // The kernel writes these back once the data is taken (____sys_recvmsg):
  // a msghdr it cannot write fails the call then, the data gone. TCP has no
  // source address to report.
  if (!accessible(message, sizeof *message, Access::kWrite)) return fail(EFAULT);
  if (message->msg_name != nullptr) message->msg_namelen = 0;
  message->msg_controllen = 0;
  message->msg_flags = flags & MSG_OOB;
  return got;
}

ssize_t intercepted_read(int fd, void* buffer, size_t length) {
  SocketRef socket = lookup_descriptor(fd);
  if (!socket) return real().read(fd, buffer, length);
  struct iovec iov {
    buffer, length
  };
  if (socket->state == SocketState::kPipe) return pipe_read(fd, socket.get(), &iov, 1);
  return stream_receive(fd, socket.get(), &iov, 1, 0);
}

ssize_t intercepted_readv(int fd, const struct iovec* iov, int iovcnt) {
  SocketRef socket = lookup_descriptor(fd);
  if (!socket) return real().readv(fd, iov, iovcnt);
  if (const int error = vector_call_error(socket.get(), iov, iovcnt)) {
    return error < 0 ? real().readv(fd, iov, iovcnt) : fail(error);
  }
  if (socket->state == SocketState::kPipe) return pipe_read(fd, socket.get(), iov, iovcnt);
  return stream_receive(fd, socket.get(), iov, iovcnt, 0);
}

ssize_t intercepted___read_chk(int fd, void* buffer, size_t length, size_t buffer_size) {
  if (length > buffer_size) abort();  // what glibc's fortified read does
  return intercepted_read(fd, buffer, length);
}

ssize_t intercepted___recv_chk(int fd, void* buffer, size_t length, size_t buffer_size, int flags) {
  if (length > buffer_size) abort();
  return intercepted_recv(fd, buffer, length, flags);
}

ssize_t intercepted___recvfrom_chk(int fd, void* buffer, size_t length, size_t buffer_size,
                                   int flags, struct sockaddr* address, socklen_t* address_length) {
  if (length > buffer_size) abort();
  return intercepted_recvfrom(fd, buffer, length, flags, address, address_length);
}

// ---------------------------------------------------------------------------
// Control path.

int intercepted_socket(int domain, int type, int protocol) {
  const int base_type = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (!accelerable(domain, base_type, protocol) || !monitor_available()) {
    return real().socket(domain, type, protocol);
  }
  const int fd = new_placeholder_fd(type & SOCK_CLOEXEC);
  if (fd < 0) return real().socket(domain, type, protocol);
  Socket* socket = new_socket();
  socket->domain = domain;
  socket->type = base_type;
  socket->protocol = protocol;
  socket->id = next_socket_id();
  socket->nonblocking.store(type & SOCK_NONBLOCK, std::memory_order_relaxed);
  install_socket(fd, socket);
  release_socket(socket);  // the table keeps its own reference
  return fd;
}

int intercepted_bind(int fd, const struct sockaddr* address, socklen_t length) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) return real().bind(fd, address, length);
  if (socket->state == SocketState::kConnected) return fail(EINVAL);
  if (socket->state == SocketState::kFresh &&
      materialize(fd, socket.get(), socket->nonblocking.load(std::memory_order_relaxed)) != 0) {
    return -1;
  }
  socket->state = SocketState::kBound;  // the kernel socket now decides
  const int bound = real().bind(fd, address, length);
  if (bound != 0) return bound;
  struct sockaddr_storage local;
  socklen_t local_length = sizeof local;
  if (real().getsockname(fd, reinterpret_cast<struct sockaddr*>(&local), &local_length) == 0) {
    socket->local_known =
        to_inet_address(reinterpret_cast<struct sockaddr*>(&local), local_length, socket->local);
  }
  return 0;
}

// Announces a listening socket to the monitor; false if it will not carry it.
bool announce_listener(Socket* socket) {
  Request request{};
  request.op = RequestOp::kListen;
  request.socket_id = socket->id;
  request.address = socket->local;
  request.backlog = socket->listen_backlog;
  request.connection_id = socket->cookie;
  if (socket->listen_v6only) request.flags |= kRequestV6Only;
  Event reply{};
  return monitor_available() && monitor_call(request, reply, nullptr) && reply.status == 0;
}

void ensure_listener_announced(Socket* socket) {
  if (socket->state != SocketState::kListening) return;
  // Also how a listener learns, now and then, that a monitor died (its
  // clients then reach it through the kernel) or came back (announce again).
  if (!monitor_available() || socket->listener_announced.load(std::memory_order_acquire)) return;
  // Not the backlog's lock: the reply's wait pumps events, which fill the backlog.
  std::lock_guard lock(socket->announce_mutex);
  if (socket->listener_announced.load(std::memory_order_relaxed)) return;
  // Without the monitor, clients reach us through the kernel listener.
  if (!announce_listener(socket)) return;
  socket->listener_announced.store(true, std::memory_order_release);
  // What was queued while no holder was announced is ours to take now; from
  // the reply on, connections come to us.
  take_accept_queue(socket);
}

int intercepted_listen(int fd, int backlog) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) return real().listen(fd, backlog);
  if (socket->state == SocketState::kConnected) return fail(EINVAL);
  if (socket->state == SocketState::kFresh &&
      materialize(fd, socket.get(), socket->nonblocking.load(std::memory_order_relaxed)) != 0) {
    return -1;
  }
  if (real().listen(fd, backlog) != 0) return -1;
  if (socket->state == SocketState::kListening) return 0;  // a new backlog only
  socket->state = SocketState::kBound;

  struct sockaddr_storage local;
  socklen_t local_length = sizeof local;
  const int wake = keep_internal_fd(create_wake_fd());
  if (wake < 0 ||
      real().getsockname(fd, reinterpret_cast<struct sockaddr*>(&local), &local_length) != 0 ||
      !to_inet_address(reinterpret_cast<struct sockaddr*>(&local), local_length, socket->local)) {
    if (wake >= 0) {
      mark_internal_fd(wake, false);
      real().close(wake);
    }
    fall_back_to_kernel(fd, socket.get());
    return 0;
  }
  socket->local_known = true;
  socket->listener_wake.reset(wake);
  socket->cookie = socket_cookie(fd);

  socket->listen_backlog = static_cast<uint16_t>(std::clamp(backlog, 0, 65535));
  if (socket->domain == AF_INET6) {
    int v6only = 0;
    socklen_t v6only_length = sizeof v6only;
    real().getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &v6only_length);
    socket->listen_v6only = v6only != 0;
  }
  // Registered first so that a connection arriving right after the reply finds it.
  socket->state = SocketState::kListening;
  register_listener(socket.get());
  if (!announce_listener(socket.get())) {
    unregister_listener(socket.get());
    socket->state = SocketState::kBound;
    mark_internal_fd(wake, false);
    socket->listener_wake.reset();
    fall_back_to_kernel(fd, socket.get());
    return 0;
  }
  socket->listener_announced.store(true, std::memory_order_release);
  return 0;
}

namespace {

// The descriptor an accepted connection gets: a placeholder, or for one
// from the accept queue its anchor, which holds its share as an adopted
// socket's number does.
int accepted_descriptor(Connection* connection, bool close_on_exec) {
  if (!connection->anchor) return new_placeholder_fd(close_on_exec);
  const int fd =
      real().fcntl(connection->anchor.get(), close_on_exec ? F_DUPFD_CLOEXEC : F_DUPFD, 0);
  if (fd < 0) return -1;
  mark_internal_fd(connection->anchor.get(), false);
  connection->anchor.reset();
  return fd;
}

int accept_pending(Socket* listener, PendingConnection& pending, struct sockaddr* address,
                   socklen_t* length, int flags) {
  Connection* connection = pending.connection;
  const int fd = accepted_descriptor(connection, flags & SOCK_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    close_connection(connection, true);
    return fail(error);
  }
  Socket* socket = new_socket();
  socket->domain = listener->domain;
  socket->type = SOCK_STREAM;
  socket->protocol = listener->protocol;
  socket->id = next_socket_id();
  connection->set_nonblocking(flags & SOCK_NONBLOCK);
  socket->state = SocketState::kConnected;
  socket->connection = connection;
  socket->local = pending.local;
  socket->peer = pending.peer;
  socket->local_known = true;
  // From here on our death ends the connection rather than handing it on.
  connection->header->accepted.store(1, std::memory_order_relaxed);
  // Accepted sockets inherit these, as the kernel's do.
  socket->receive_timeout_ns = listener->receive_timeout_ns;
  socket->send_timeout_ns = listener->send_timeout_ns;
  socket->reset_on_close = listener->reset_on_close;
  socket->send_buffer = listener->send_buffer;
  socket->receive_buffer = listener->receive_buffer;
  apply_buffer_sizes(socket);
  install_socket(fd, socket);
  release_socket(socket);
  // The kernel accepts, then copies the peer's address; when that fails
  // the new connection is closed and the error returned.
  if (address != nullptr) {
    if (const int error = copy_out_address(pending.peer, listener->domain, address, length)) {
      intercepted_close(fd);
      return fail(error);
    }
  }
  return fd;
}

// The kernel listener's O_NONBLOCK is the application's (an exec'd image or
// a receiving process reads it there), so look before taking: accept() waits
// on both paths itself.
int accept_kernel_if_ready(int fd, struct sockaddr* address, socklen_t* length, int flags) {
  struct pollfd ready {
    fd, POLLIN, 0
  };
  if (real().poll(&ready, 1, 0) != 1) return fail(EAGAIN);
  return real().accept4(fd, address, length, flags);
}

// The oldest of what the monitor queued and what the channels queued, as
// the kernel's one accept queue would give them.
bool pop_pending(Socket* listener, PendingConnection& out) {
  bool monitor_queued = false;
  uint32_t monitor_queued_at = 0;
  {
    std::lock_guard lock(listener->backlog_mutex);
    monitor_queued = !listener->backlog.empty();
    if (monitor_queued) monitor_queued_at = listener->backlog.front().queued_at;
  }
  if (channel_accept(listener, out, monitor_queued ? &monitor_queued_at : nullptr)) return true;
  if (!monitor_queued) return false;
  std::lock_guard lock(listener->backlog_mutex);
  if (listener->backlog.empty()) return false;  // another thread took it
  out = std::move(listener->backlog.front());
  listener->backlog.pop_front();
  return true;
}

}  // namespace

int intercepted_accept4(int fd, struct sockaddr* address, socklen_t* length, int flags) {
  SocketRef socket = lookup_socket(fd);
  if (!socket || socket->state == SocketState::kBound) {
    return real().accept4(fd, address, length, flags);
  }
  // A TCP socket that is not listening: never listened, or connected.
  if (socket->state != SocketState::kListening) return fail(EINVAL);
  if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) return fail(EINVAL);
  ensure_listener_announced(socket.get());
  const int64_t deadline = deadline_after(socket->receive_timeout_ns);
  const bool nonblocking = socket_nonblocking(fd, socket.get());
  SpinBudget spin(config().spin_ns);
  bool spinning = true;
  for (uint32_t round = 0;; ++round) {
    if (events_pending()) pump_events();
    PendingConnection pending;
    if (pop_pending(socket.get(), pending)) {
      return accept_pending(socket.get(), pending, address, length, flags);
    }
    // Kernel clients (not under netaccel) arrive on the kernel listener: look
    // there at once when we may not wait, every 1024 rounds while spinning
    // (some tens of microseconds: each look is a syscall, and between
    // netaccel connections it was one for every second connection), and
    // after every sleep (the sleep watches that listener too).
    if (nonblocking || (round & 1023) == 1023 || !spinning) {
      if (take_accept_queue(socket.get()) && pop_pending(socket.get(), pending)) {
        return accept_pending(socket.get(), pending, address, length, flags);
      }
      const int kernel = accept_kernel_if_ready(fd, address, length, flags);
      if (kernel >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return kernel;
    }
    if (nonblocking) return fail(EAGAIN);
    if (spinning && (spinning = spin.keep_spinning())) continue;
    announce_event_wait(true);
    fence_before_sleeping();
    if (events_pending() || listener_has_pending(socket.get())) {
      announce_event_wait(false);
      continue;
    }
    int timeout_ms = -1;
    if (deadline != 0) {
      const int64_t left = deadline - monotonic_ns();
      if (left <= 0) {
        announce_event_wait(false);
        return fail(EAGAIN);
      }
      timeout_ms = static_cast<int>((left + 999999) / 1000000);
    }
    // The accept queue (-1 when none, which poll skips) wakes us too.
    struct pollfd waits[4] = {{fd, POLLIN, 0},
                              {socket->listener_wake.get(), POLLIN, 0},
                              {socket->accept_queue.get(), POLLIN, 0},
                              {event_wake_fd(), POLLIN, 0}};
    forget_handled_signal();
    const int ready = real().poll(waits, event_wake_fd() >= 0 ? 4 : 3, timeout_ms);
    const int error = errno;
    announce_event_wait(false);
    if (waits[1].revents & POLLIN) drain_wake_fd(socket->listener_wake.get());
    if (waits[3].revents & POLLIN) drain_event_wake();
    if (ready < 0 && error == EINTR && !restarts_after_signal(deadline)) return fail(EINTR);
  }
}

int intercepted_accept(int fd, struct sockaddr* address, socklen_t* length) {
  return intercepted_accept4(fd, address, length, 0);
}

int intercepted_connect(int fd, const struct sockaddr* address, socklen_t length) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) return real().connect(fd, address, length);
  // The kernel copies the address in before anything else.
  if (static_cast<int>(length) < 0 || length > sizeof(struct sockaddr_storage)) return fail(EINVAL);
  if (length > 0 && !accessible(address, length, Access::kRead)) return fail(EFAULT);
  if (socket->state == SocketState::kConnected) {
    // As in the kernel: the first call after a completed non-blocking connect
    // reports success, later ones EISCONN.
    if (socket->connect_pending) {
      socket->connect_pending = false;
      return 0;
    }
    return fail(EISCONN);
  }
  if (socket->state == SocketState::kListening) return real().connect(fd, address, length);
  InetAddress destination;
  const bool inet =
      to_inet_address(address, length, destination) && destination.family == socket->domain;
  Request request{};
  request.op = RequestOp::kConnect;
  request.socket_id = socket->id;
  request.address = destination;
  if (socket->state == SocketState::kBound && socket->local_known) request.source = socket->local;
  Event reply{};
  Connection* connection = nullptr;
  if (inet && destination.port != 0) {
    if (g_multithreaded.load(std::memory_order_relaxed)) {
      socket->connecting_thread.store(static_cast<uintptr_t>(pthread_self()),
                                      std::memory_order_relaxed);
    }
    // A socket bound to an address of its own needs the monitor to check it.
    if (socket->state == SocketState::kFresh) {
      connection = channel_connect(destination, reply.local, reply.peer);
    }
    if (connection == nullptr) {
      if (is_local_address(destination)) request.flags |= kRequestDestinationLocal;
      if (!monitor_call(request, reply, &connection) || reply.status != 0) connection = nullptr;
    }
  }
  if (connection == nullptr && reply.status == -ECONNREFUSED &&
      (reply.local.reserved & kEventPolicyDenied) != 0) {
    // The isolation policy refuses it; the kernel path must not carry it either.
    socket->connecting_thread.store(0, std::memory_order_release);
    return fail(ECONNREFUSED);
  }
  if (connection == nullptr) {
    socket->connecting_thread.store(0, std::memory_order_release);
    // Not a netaccel peer: exactly what the kernel would do.
    if (fall_back_to_kernel(fd, socket.get()) != 0) return -1;
    return real().connect(fd, address, length);
  }
  socket->connection = connection;
  connection->set_nonblocking(socket->nonblocking.load(std::memory_order_relaxed));
  socket->local = reply.local;
  socket->peer = reply.peer;
  socket->local_known = true;
  socket->state = SocketState::kConnected;
  apply_buffer_sizes(socket.get());
  epoll_connected(socket.get());
  socket->connecting_thread.store(0, std::memory_order_release);
  if (socket->nonblocking.load(std::memory_order_relaxed)) {
    // Like a kernel connect over loopback: in progress now, writable at once.
    socket->connect_pending = true;
    return fail(EINPROGRESS);
  }
  return 0;
}

namespace {
// The state the kernel's TCP would be in by now, for the calls that report
// it; over loopback the peer's FIN and ACK arrive at once.
int tcp_state_of(Socket* socket) {
  Connection* c = socket->connection;
  const bool peer_finished = c->rx.control().writer_closed.load(std::memory_order_acquire) != 0;
  if (socket->reset_by_peer || c->peer_aborted() || (socket->write_shut && peer_finished)) {
    return TCP_CLOSE;
  }
  if (peer_finished) return TCP_CLOSE_WAIT;
  if (socket->write_shut) return TCP_FIN_WAIT2;
  return TCP_ESTABLISHED;
}
}  // namespace

int intercepted_shutdown(int fd, int how) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) return real().shutdown(fd, how);
  if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR) return fail(EINVAL);
  if (socket->state != SocketState::kConnected) {
    if (kernel_backed(socket.get())) return real().shutdown(fd, how);
    return fail(ENOTCONN);
  }
  if (tcp_state_of(socket.get()) == TCP_CLOSE) return fail(ENOTCONN);
  Connection* c = socket->connection;
  if (how != SHUT_WR) socket->read_shut = true;
  if (how != SHUT_RD) {
    socket->write_shut = true;
    c->tx.control().writer_closed.store(1, std::memory_order_release);
  }
  signal_wake_fd(c->peer_wake.get());
  signal_wake_fd(c->own_wake.get());  // our own waiters re-check
  return 0;
}

// close_range and closefrom, as a daemon closes everything above stderr:
// the application's descriptors close as close() closes them (a netaccel
// socket's connection ends, an epoll set is forgotten), ours stay open. A
// vfork child's table is its own copy: the kernel may close anything there.
int intercepted_close_range(unsigned int first, unsigned int last, int flags) {
  const int highest = std::max(highest_socket_fd(), highest_internal_fd());
  if (!holder_process() || (flags & CLOSE_RANGE_CLOEXEC) != 0 || first > last || highest < 0) {
    return real().close_range(first, last, flags);
  }
  const auto known = static_cast<unsigned int>(highest);
  for (unsigned int fd = first; fd <= std::min(last, known); ++fd) {
    if (!is_internal_fd(static_cast<int>(fd))) intercepted_close(static_cast<int>(fd));
  }
  if (known >= last) return 0;
  return real().close_range(std::max(first, known + 1), last, flags);
}

void intercepted_closefrom(int first) {
  const int saved = errno;
  intercepted_close_range(static_cast<unsigned int>(std::max(first, 0)), ~0u, 0);
  errno = saved;
}

int intercepted_close(int fd) {
  if (is_internal_fd(fd)) return fail(EBADF);  // not the application's to close
  // A vfork child's descriptors are not the ones its parent's tables count.
  // (In that order: holder_process() is a system call, and most closes are of files.)
  if (lookup_descriptor(fd) && !holder_process()) return real().close(fd);
  Socket* socket = uninstall_socket(fd);
  if (socket == nullptr) {
    epoll_closed(fd);
    return real().close(fd);
  }
  epoll_forget(fd, socket, /*now_kernel=*/false);
  real().close(fd);
  release_socket(socket);
  return 0;
}

int intercepted_getsockname(int fd, struct sockaddr* address, socklen_t* length) {
  SocketRef socket = lookup_socket(fd);
  if (!socket || kernel_backed(socket.get())) return real().getsockname(fd, address, length);
  InetAddress local = socket->local;
  if (!socket->local_known) local = InetAddress{};
  if (const int error = copy_out_address(local, socket->domain, address, length)) {
    return fail(error);
  }
  return 0;
}

int intercepted_getpeername(int fd, struct sockaddr* address, socklen_t* length) {
  SocketRef socket = lookup_socket(fd);
  if (!socket || kernel_backed(socket.get())) return real().getpeername(fd, address, length);
  if (socket->state != SocketState::kConnected || tcp_state_of(socket.get()) == TCP_CLOSE) {
    return fail(ENOTCONN);
  }
  if (const int error = copy_out_address(socket->peer, socket->domain, address, length)) {
    return fail(error);
  }
  return 0;
}

namespace {

// The options whose effect netaccel carries out itself, once the kernel
// accepted them; `kernel` (the socket's own or the oracle's probe) gives the
// kernel's reading of a value. 0 or an errno.
int note_option(Socket* socket, int kernel, int level, int name, const void* value,
                socklen_t length) {
  if (level != SOL_SOCKET) return 0;
  switch (name) {
    case SO_RCVTIMEO:
    case SO_SNDTIMEO: {
      const int64_t timeout = timeval_to_ns(value, length);
      if (timeout < 0) return EDOM;
      (name == SO_RCVTIMEO ? socket->receive_timeout_ns : socket->send_timeout_ns) = timeout;
      return 0;
    }
    case SO_LINGER: {
      struct linger option;
      if (length < sizeof option) return 0;
      memcpy(&option, value, sizeof option);
      socket->reset_on_close = option.l_onoff != 0 && option.l_linger == 0;
      return 0;
    }
    case SO_SNDBUF:
    case SO_RCVBUF: {
      // The kernel's reading: doubled, within net.core.[wr]mem_max and its
      // minimum. Set again: the probe may hold another value.
      int bytes = 0;
      socklen_t bytes_length = sizeof bytes;
      if (real().setsockopt(kernel, level, name, value, length) != 0 ||
          real().getsockopt(kernel, level, name, &bytes, &bytes_length) != 0 || bytes <= 0) {
        return 0;
      }
      (name == SO_SNDBUF ? socket->send_buffer : socket->receive_buffer) =
          static_cast<uint32_t>(bytes);
      if (socket->state == SocketState::kConnected) apply_buffer_sizes(socket);
      return 0;
    }
    default:
      return 0;
  }
}

}  // namespace

int intercepted_setsockopt(int fd, int level, int name, const void* value, socklen_t length) {
  SocketRef socket = lookup_socket(fd);
  if (!socket) return real().setsockopt(fd, level, name, value, length);
  if (kernel_backed(socket.get())) {
    // A listener's options also go to the connections it accepts.
    if (real().setsockopt(fd, level, name, value, length) != 0) return -1;
    note_option(socket.get(), fd, level, name, value, length);
    return 0;
  }
  // The kernel validates and normalises; we keep the result for this socket.
  OptionOracle& oracle = option_oracle(socket->domain);
  if (!option_accepted(oracle, level, name, value, length)) return -1;
  if (const int error = note_option(socket.get(), oracle.probe, level, name, value, length)) {
    return fail(error);
  }
  SavedOption saved{level, name, 0, {}};
  saved.length = std::min<socklen_t>(length, sizeof saved.value);
  memcpy(saved.value, value, saved.length);
  auto& options = socket->options;
  auto same = std::find_if(options.begin(), options.end(), [&](const SavedOption& option) {
    return option.level == level && option.name == name;
  });
  if (same != options.end()) {
    *same = saved;
  } else {
    options.push_back(saved);
  }
  return 0;
}

int intercepted_getsockopt(int fd, int level, int name, void* value, socklen_t* length) {
  SocketRef socket = lookup_socket(fd);
  if (!socket || kernel_backed(socket.get()))
    return real().getsockopt(fd, level, name, value, length);
  // As the kernel: the length is read first (EFAULT), a negative one is
  // EINVAL; the value is written only as far as it is long.
  if (!accessible(length, sizeof *length, Access::kRead)) return fail(EFAULT);
  if (static_cast<int>(*length) < 0) return fail(EINVAL);
  const auto reply = [&](const void* option, socklen_t size) {
    const socklen_t copied = std::min<socklen_t>(*length, size);
    if ((copied > 0 && !accessible(value, copied, Access::kWrite)) ||
        !accessible(length, sizeof *length, Access::kWrite)) {
      return fail(EFAULT);
    }
    memcpy(value, option, copied);
    *length = copied;
    return 0;
  };
  if (level == SOL_SOCKET && name == SO_ERROR) {
    int error = socket->pending_error;
    socket->pending_error = 0;
    if (error == 0 && socket->state == SocketState::kConnected &&
        socket->connection->peer_aborted() && take_reset(socket.get())) {
      error = ECONNRESET;
    }
    return reply(&error, sizeof error);
  }
  if (level == IPPROTO_TCP && name == TCP_INFO && socket->state == SocketState::kConnected) {
    struct tcp_info info {};
    info.tcpi_state = static_cast<uint8_t>(tcp_state_of(socket.get()));
    info.tcpi_snd_mss = info.tcpi_rcv_mss = 65483;  // loopback's
    info.tcpi_snd_cwnd = 10;
    return reply(&info, sizeof info);
  }
  OptionOracle& oracle = option_oracle(socket->domain);
  // The kernel's answer for a socket of this family gives the format and the default...
  if (real().getsockopt(oracle.pristine, level, name, value, length) != 0) return -1;
  for (const SavedOption& option : socket->options) {
    if (option.level != level || option.name != name) continue;
    // ...and the probe, set to this socket's value, gives the kernel's reading of it.
    real().setsockopt(oracle.probe, level, name, option.value, option.length);
    return real().getsockopt(oracle.probe, level, name, value, length);
  }
  return 0;
}

namespace {
// `copy` is a new descriptor of `socket`; at 0, 1 or 2 (inetd's dup2, or
// close then dup) glibc's stdin, stdout or stderr must reach the connection.
void install_duplicate(int copy, Socket* socket) {
  install_socket(copy, socket);
  if (copy > STDERR_FILENO) return;
  if (socket->state == SocketState::kConnected) take_over_standard_stream(copy);
  // stdio and an exec'd image reach a pipe there behind our back.
  if (socket->state == SocketState::kPipe) downgrade_pipe(copy, socket);
}
}  // namespace

// A pipe end copied onto stdin, stdout or stderr is reached by stdio and
// by whatever image an exec puts there; one copied in a vfork child is out
// of our sight (its parent's tables). Either way it goes back to the kernel.
bool pipe_copy_leaves_our_sight(int fd, Socket* socket, int target) {
  if (socket->state != SocketState::kPipe) return false;
  const bool leaves = !holder_process() || (target >= 0 && target <= STDERR_FILENO);
  if (leaves) downgrade_pipe(fd, socket);
  return !holder_process();
}

int intercepted_dup(int fd) {
  SocketRef socket = lookup_descriptor(fd);
  if (socket && pipe_copy_leaves_our_sight(fd, socket.get(), -1)) return real().dup(fd);
  const int copy = real().dup(fd);
  if (copy >= 0 && socket) install_duplicate(copy, socket.get());
  return copy;
}

void forget_replaced_socket(int fd) {
  Socket* replaced = uninstall_socket(fd);
  if (replaced == nullptr) return;
  epoll_forget(fd, replaced, /*now_kernel=*/false);
  release_socket(replaced);
}

int intercepted_dup3(int fd, int target, int flags) {
  if (is_internal_fd(target)) return fail(EBADF);
  SocketRef socket = lookup_descriptor(fd);
  if (socket && pipe_copy_leaves_our_sight(fd, socket.get(), target)) {
    return real().dup3(fd, target, flags);
  }
  if (!socket && !is_netaccel_fd(target)) return real().dup3(fd, target, flags);
  const int copy = real().dup3(fd, target, flags);
  if (copy < 0) return -1;
  forget_replaced_socket(target);
  if (socket) install_duplicate(target, socket.get());
  return copy;
}

int intercepted_dup2(int fd, int target) {
  if (fd == target) return real().dup2(fd, target);
  return intercepted_dup3(fd, target, 0);
}

int netaccel_fcntl(int fd, int command, unsigned long argument) {
  SocketRef socket = lookup_descriptor(fd);
  if (!socket) return real().fcntl(fd, command, argument);
  if (socket->state == SocketState::kPipe) return pipe_fcntl(fd, socket.get(), command, argument);
  switch (command) {
    case F_GETFL: {
      const int flags = real().fcntl(fd, F_GETFL);
      // A kernel socket's own flag is the truth; a placeholder's is not ours.
      if (flags < 0 || kernel_backed(socket.get())) return flags;
      return (flags & ~O_NONBLOCK) | (socket_nonblocking(fd, socket.get()) ? O_NONBLOCK : 0);
    }
    case F_SETFL: {
      const int set = real().fcntl(fd, F_SETFL, argument);
      if (set == 0) set_socket_nonblocking(socket.get(), argument & O_NONBLOCK);
      return set;
    }
    case F_DUPFD:
    case F_DUPFD_CLOEXEC: {
      const int copy = real().fcntl(fd, command, argument);
      if (copy >= 0) install_duplicate(copy, socket.get());
      return copy;
    }
    default:
      return real().fcntl(fd, command, argument);
  }
}

int netaccel_ioctl(int fd, unsigned long request, void* argument) {
  SocketRef socket = lookup_descriptor(fd);
  if (socket && socket->state == SocketState::kPipe) {
    return pipe_ioctl(fd, socket.get(), request, argument);
  }
  if (!socket || kernel_backed(socket.get())) {
    const int result = real().ioctl(fd, request, argument);
    if (socket && request == FIONBIO && result == 0) {
      set_socket_nonblocking(socket.get(), *static_cast<int*>(argument) != 0);
    }
    return result;
  }
  // FIOCLEX and FIONCLEX take no argument and act on the descriptor itself,
  // which is a real kernel descriptor.
  if (request == FIOCLEX || request == FIONCLEX) return real().ioctl(fd, request, argument);
  // The requests answered here take an int: read for FIONBIO, written for
  // the others; the kernel answers EFAULT when it cannot reach it.
  const bool handled_here =
      request == FIONBIO || request == FIONREAD || request == SIOCOUTQ || request == SIOCATMARK;
  if (handled_here &&
      !accessible(argument, sizeof(int), request == FIONBIO ? Access::kRead : Access::kWrite)) {
    return fail(EFAULT);
  }
  switch (request) {
    case FIONBIO:
      set_socket_nonblocking(socket.get(), *static_cast<int*>(argument) != 0);
      return 0;
    case FIONREAD:  // also SIOCINQ
      *static_cast<int*>(argument) = socket->state == SocketState::kConnected
                                         ? static_cast<int>(socket->connection->rx.unread())
                                         : 0;
      return 0;
    case SIOCOUTQ:
      *static_cast<int*>(argument) = socket->state == SocketState::kConnected
                                         ? static_cast<int>(socket->connection->tx.unread())
                                         : 0;
      return 0;
    case SIOCATMARK: {  // the reader stands where urgent data was sent
      int at_mark = 0;
      if (socket->state == SocketState::kConnected) {
        Connection* c = socket->connection;
        at_mark = c->header->urgent[c->side ^ 1].load(std::memory_order_acquire) != 0 &&
                  c->header->urgent_mark[c->side ^ 1].load(std::memory_order_relaxed) ==
                      c->rx.control().tail.load(std::memory_order_relaxed);
      }
      *static_cast<int*>(argument) = at_mark;
      return 0;
    }
    default:
      return real().ioctl(fd, request, argument);
  }
}

// Runs one of the exec calls: the sockets the new image inherits go to it as
// anchors, and this process's shares of shared connections stay behind.
template <typename Exec>
int exec_handing_sockets_to_new_image(Exec exec) {
  anchor_sockets_for_new_image(/*include_close_on_exec=*/false);
  downgrade_pipes_for_new_image(/*include_close_on_exec=*/false);
  const std::vector<LeftForExec> left = leave_shared_connections_for_exec();
  const std::vector<Pipe*> left_pipes = leave_pipes_for_exec();
  const int result = exec();
  const int error = errno;
  rejoin_connections_after_failed_exec(left);
  rejoin_pipes_after_failed_exec(left_pipes);
  errno = error;
  return result;
}

int intercepted_execve(const char* path, char* const argv[], char* const envp[]) {
  return exec_handing_sockets_to_new_image([&] { return real().execve(path, argv, envp); });
}
int intercepted_execv(const char* path, char* const argv[]) {
  return exec_handing_sockets_to_new_image([&] { return real().execv(path, argv); });
}
int intercepted_execvp(const char* file, char* const argv[]) {
  return exec_handing_sockets_to_new_image([&] { return real().execvp(file, argv); });
}
int intercepted_execvpe(const char* file, char* const argv[], char* const envp[]) {
  return exec_handing_sockets_to_new_image([&] { return real().execvpe(file, argv, envp); });
}

// Interposed rather than left to pthread_atfork alone: the child must count
// as a holder of every connection before the parent can close its copy, and
// only here can a failed fork take that back.
pid_t intercepted_fork() {
  anchor_connections_for_fork();
  share_connections_with_child(true);
  share_pipes_with_child(true);
  const pid_t child = real().fork();
  if (child < 0) {
    const int error = errno;
    share_connections_with_child(false);
    share_pipes_with_child(false);
    errno = error;
  }
  return child;
}

int intercepted_pthread_create(pthread_t* thread, const pthread_attr_t* attributes,
                               void* (*start)(void*), void* argument) {
  g_multithreaded.store(true, std::memory_order_relaxed);
  return real().pthread_create(thread, attributes, start, argument);
}

}  // namespace netaccel::preload

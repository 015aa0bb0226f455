// Readiness of the descriptors netaccel carries, shared by the epoll
// emulation (epoll.cc) and poll/select (poll_select.cc).
//
// A netaccel connection's readiness lives in its rings, so it is computed in
// user space; the kernel still does the sleeping.
#include "readiness.h"

#include <stdlib.h>
#include <sys/epoll.h>

#include "pipes.h"
#include "runtime.h"

namespace netaccel::preload {

std::atomic<uint32_t> g_kernel_readiness_news{0};

int64_t kernel_check_interval_ns() {
  // 200 us: a few requests of a busy connection (a redis GET turn is 10-20
  // us), so the check costs a small fraction of a system call per request,
  // while a kernel descriptor waits less than a scheduler's time slice.
  static const int64_t interval = [] {
    const char* configured = getenv("NETACCEL_KERNEL_CHECK_US");
    return (configured != nullptr && *configured != '\0' ? atoll(configured) : 200) * 1000;
  }();
  return interval;
}

uint32_t socket_readiness(Socket* socket, uint32_t wanted) {
  switch (socket->state) {
    case SocketState::kFresh:
      return EPOLLOUT | EPOLLHUP;  // what the kernel says of an unconnected TCP socket
    case SocketState::kBound:
      return 0;
    case SocketState::kListening:
      return listener_has_pending(socket) ? EPOLLIN | EPOLLRDNORM : 0;
    case SocketState::kPipe:
      return pipe_readiness(-1, socket);
    case SocketState::kConnected:
      break;
  }
  Connection* c = socket->connection;
  uint32_t ready = 0;
  const bool eof = c->rx.control().writer_closed.load(std::memory_order_acquire) != 0;
  // An abort closes the ring after it (protocol.h): while the ring is open
  // the header's line need not be read.
  const bool aborted = eof && c->peer_aborted();
  // The ring indices are the lines the peer keeps writing: only what the
  // caller asks for is read (an event loop polls its sets in a tight spin).
  if (eof || aborted || socket->read_shut ||
      ((wanted & (EPOLLIN | EPOLLRDNORM)) && c->rx.has_unread())) {
    ready |= EPOLLIN | EPOLLRDNORM;
  }
  if (eof) ready |= EPOLLRDHUP;
  if ((wanted & (EPOLLOUT | EPOLLWRNORM)) &&
      (socket->write_shut || c->send_room() != 0 ||
       c->tx.control().reader_closed.load(std::memory_order_acquire))) {
    ready |= EPOLLOUT | EPOLLWRNORM;
  }
  if ((eof || socket->read_shut) && socket->write_shut) ready |= EPOLLHUP;
  if (aborted) ready |= EPOLLHUP | EPOLLRDHUP | EPOLLOUT | EPOLLWRNORM;
  if (aborted && !socket->reset_reported) ready |= EPOLLERR;
  if (socket->reset_by_peer) ready |= EPOLLIN | EPOLLRDNORM | EPOLLRDHUP | EPOLLOUT | EPOLLHUP;
  if (socket->pending_error != 0) ready |= EPOLLERR;
  if ((wanted & EPOLLPRI) &&
      (c->header->urgent[c->side ^ 1].load(std::memory_order_acquire) & kUrgentPending)) {
    ready |= EPOLLPRI;
  }
  return ready;
}

int wake_fd_of(Socket* socket) {
  if (socket->state == SocketState::kConnected) return socket->connection->own_wake.get();
  if (socket->state == SocketState::kPipe) return pipe_wake_fd(socket);
  if (socket->state == SocketState::kListening) return socket->listener_wake.get();
  return -1;
}

bool arm_connection(Connection* c, uint32_t events, bool armed) {
  if (events & EPOLLIN) c->rx.control().reader_waiting.store(armed, std::memory_order_relaxed);
  if ((events & EPOLLOUT) && (!armed || c->send_room() == 0)) {
    c->tx.control().writer_waiting.store(armed, std::memory_order_relaxed);
    return armed;
  }
  return false;
}

}  // namespace netaccel::preload

// Accept queues (protocol.h): a listening socket that several processes may
// hold gets one, so that a connection routed to it while none of its holders
// is announced waits there, as an anchor, for whichever holder waits first,
// rather than going through the kernel. Nothing here runs per connection
// while a holder is announced: connections then reach its own backlog.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

#include "real_calls.h"
#include "runtime.h"

namespace netaccel::preload {
namespace {

// The abstract name Qb is accepted under: its peer Qa reports it for life.
socklen_t accept_queue_address(uint64_t cookie, struct sockaddr_un& address) {
  address = {};
  address.sun_family = AF_UNIX;
  const int length = snprintf(address.sun_path + 1, sizeof address.sun_path - 1, "%s%016llx",
                              kAcceptQueueName, static_cast<unsigned long long>(cookie));
  return static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + 1 + length);
}

// A connected SOCK_SEQPACKET pair whose far end was accepted under the
// queue's name: socketpair() gives no name to find Qa by after an exec.
bool make_named_pair(uint64_t cookie, UniqueFd& near, UniqueFd& far) {
  struct sockaddr_un address;
  const socklen_t length = accept_queue_address(cookie, address);
  const auto* name = reinterpret_cast<const struct sockaddr*>(&address);
  const UniqueFd naming(real().socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!naming || real().bind(naming.get(), name, length) != 0 ||
      real().listen(naming.get(), 1) != 0) {
    return false;
  }
  near.reset(real().socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!near || real().connect(near.get(), name, length) != 0) return false;
  far.reset(real().accept4(naming.get(), nullptr, nullptr, SOCK_CLOEXEC));
  return static_cast<bool>(far);
}

}  // namespace

uint64_t socket_cookie(int fd) {
  uint64_t cookie = 0;
  socklen_t length = sizeof cookie;
  if (real().getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &length) != 0) return 0;
  return cookie;
}

bool open_accept_queue(Socket* listener) {
  std::lock_guard lock(listener->accept_queue_mutex);
  if (listener->accept_queue) return true;
  if (listener->cookie == 0 || listener->accept_queue_refused || !monitor_available()) {
    return false;
  }
  UniqueFd near;
  UniqueFd far;
  if (!make_named_pair(listener->cookie, near, far)) return false;
  AcceptQueueMessage message{};
  message.magic = kAcceptQueueMagic;
  message.version = kAcceptQueueVersion;
  message.cookie = listener->cookie;
  message.address = listener->local;
  message.backlog = listener->listen_backlog;
  message.flags = listener->listen_v6only ? kRequestV6Only : 0;
  if (!send_accept_queue(message, far.get())) return false;
  far.reset();
  Request request{};
  request.op = RequestOp::kShareListener;
  request.socket_id = listener->id;
  request.connection_id = listener->cookie;
  Event reply{};
  if (!monitor_call(request, reply, nullptr)) return false;
  if (reply.status != 0) {
    listener->accept_queue_refused = true;
    return false;
  }
  keep_internal_fd(near);
  listener->accept_queue = std::move(near);
  return true;
}

bool take_accept_queue(Socket* listener) {
  std::lock_guard lock(listener->accept_queue_mutex);
  bool added = false;
  while (listener->accept_queue) {
    AcceptQueueEntry entry{};
    int fds[1];
    std::size_t fd_count = 0;
    const ssize_t received =
        receive_with_fds(listener->accept_queue.get(), &entry, sizeof entry, fds, 1, &fd_count);
    if (received == -EAGAIN) break;
    if (received <= 0) {
      // The monitor that held Qb went: a fork gets the socket a new queue.
      mark_internal_fd(listener->accept_queue.get(), false);
      listener->accept_queue.reset();
      break;
    }
    // An entry we cannot adopt is dropped: its anchor's last copy closes,
    // and the client sees the end close, as a kernel queue's reset.
    UniqueFd anchor(fd_count == 1 ? fds[0] : -1);
    AnchorMessage message;
    UniqueFd carried[3];
    if (received != sizeof entry || entry.magic != kAcceptQueueMagic || !anchor ||
        !peek_anchor(anchor.get(), message, carried) || message.side != kServerSide) {
      continue;
    }
    Connection* connection = adopt_connection(message, carried);
    if (connection == nullptr) continue;
    keep_internal_fd(anchor);
    connection->anchor = std::move(anchor);
    const PendingConnection pending{connection, message.local, message.peer, entry.queued_at};
    std::lock_guard backlog(listener->backlog_mutex);
    auto place = listener->backlog.end();
    while (place != listener->backlog.begin() &&
           queued_before(pending.queued_at, std::prev(place)->queued_at)) {
      --place;
    }
    listener->backlog.insert(place, pending);
    added = true;
  }
  // Another thread may sleep in accept on this listener: the queue's
  // readiness that would have woken it is gone.
  if (added) signal_wake_fd(listener->listener_wake.get());
  return added;
}

bool give_back_to_accept_queue(Socket* listener, const PendingConnection& pending) {
  Connection* connection = pending.connection;
  std::lock_guard lock(listener->accept_queue_mutex);
  if (!listener->accept_queue || !connection->anchor) return false;
  const AcceptQueueEntry entry{kAcceptQueueMagic, pending.queued_at};
  const int anchor = connection->anchor.get();
  if (send_with_fds(listener->accept_queue.get(), &entry, sizeof entry, &anchor, 1) != 0) {
    return false;
  }
  close_connection(connection, false);  // an adopted end: the anchor in flight holds its share
  return true;
}

uint64_t accept_queue_cookie(int fd) {
  struct sockaddr_un peer;
  socklen_t length = sizeof peer;
  if (real().getpeername(fd, reinterpret_cast<struct sockaddr*>(&peer), &length) != 0 ||
      peer.sun_family != AF_UNIX) {
    return 0;
  }
  const std::size_t prefix = sizeof kAcceptQueueName - 1;
  const std::size_t name_length = length - offsetof(struct sockaddr_un, sun_path);
  if (name_length != 1 + prefix + 16 || peer.sun_path[0] != '\0' ||
      memcmp(peer.sun_path + 1, kAcceptQueueName, prefix) != 0) {
    return 0;
  }
  char hex[17];
  memcpy(hex, peer.sun_path + 1 + prefix, 16);
  hex[16] = '\0';
  char* end = nullptr;
  const unsigned long long cookie = strtoull(hex, &end, 16);
  return *end == '\0' ? cookie : 0;
}

}  // namespace netaccel::preload

// Sockets that leave this process's descriptor table — across exec,
// posix_spawn and SCM_RIGHTS — travel as anchors (protocol.h), and a
// preloaded process adopts what it inherits or receives. Nothing here runs
// on the data path: only where a descriptor leaves or arrives.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "intercepted.h"
#include "pipes.h"
#include "real_calls.h"
#include "runtime.h"

namespace netaccel::preload {
namespace {

// Where an end's segment lies: its own memfd, or a slot of its channel's.
struct SegmentPlace {
  int memory;
  uint64_t offset;
  uint64_t bytes;
  uint32_t channel_slot;
};

SegmentPlace place_of(const Connection* connection) {
  const Channel* channel = connection->channel;
  if (channel == nullptr) {
    return {connection->memory.get(), connection->memory_offset, connection->segment.size(),
            kAnchorNoSlot};
  }
  return {channel->memory.get(),
          channel->slot_offset + uint64_t{connection->slot} * channel->slot_bytes,
          channel->slot_bytes, connection->slot};
}

AnchorMessage describe(const Socket* socket, const SegmentPlace& place) {
  const Connection* connection = socket->connection;
  AnchorMessage message{};
  message.magic = kAnchorMagic;
  message.version = kAnchorVersion;
  message.connection_id = connection->header->connection_id;
  message.segment_offset = place.offset;
  message.segment_bytes = place.bytes;
  message.channel_slot = place.channel_slot;
  message.side = connection->side;
  const auto flag = [](bool set, AnchorFlags bit) { return set ? uint32_t{bit} : 0u; };
  message.flags =
      flag(socket->read_shut, kAnchorReadShut) | flag(socket->write_shut, kAnchorWriteShut);
  message.domain = socket->domain;
  message.local = socket->local;
  message.peer = socket->peer;
  for (const SavedOption& option : socket->options) {
    if (message.option_count == kAnchorOptions) break;
    AnchorOption& carried = message.options[message.option_count++];
    carried.level = option.level;
    carried.name = option.name;
    carried.length = std::min<uint32_t>(option.length, sizeof carried.value);
    memcpy(carried.value, option.value, carried.length);
  }
  return message;
}

// A new anchor (A, close-on-exec) for the socket's end, its share taken and
// B with the monitor; -1 if there is no monitor to watch it.
int make_anchor(const Socket* socket, bool may_register) {
  Connection* connection = socket->connection;
  const SegmentPlace place = place_of(connection);
  if (place.memory < 0) return -1;
  const AnchorMessage message = describe(socket, place);
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) return -1;
  UniqueFd anchor(pair[0]);
  const UniqueFd monitor_end(pair[1]);
  const int carried[3] = {place.memory, connection->own_wake.get(), connection->peer_wake.get()};
  if (send_with_fds(monitor_end.get(), &message, sizeof message, carried, 3) != 0) return -1;
  // Taken before the monitor holds B: it may let the share go at once.
  std::atomic<uint32_t>& holders = connection->header->holders[connection->side];
  holders.fetch_add(1, std::memory_order_acq_rel);
  const int watched[kAnchorWatchFds] = {monitor_end.get(), place.memory,
                                        connection->peer_wake.get()};
  if (!send_anchor_watch(message, watched, may_register)) {
    release_last_holder(holders);  // never the last: ours remains
    return -1;
  }
  return anchor.release();
}

std::mutex g_anchor_mutex;  // one anchor per end, whichever thread makes it

int64_t timeout_of(const AnchorOption& option) {
  struct timeval value {};
  if (option.length < sizeof value) return 0;
  memcpy(&value, option.value, sizeof value);
  return static_cast<int64_t>(value.tv_sec) * 1000000000 + int64_t{value.tv_usec} * 1000;
}

bool adopt_anchor(int fd) {
  AnchorMessage message;
  UniqueFd fds[3];
  if (!peek_anchor(fd, message, fds)) return false;
  if (message.domain != AF_INET && message.domain != AF_INET6) return false;
  Connection* connection = adopt_connection(message, fds);
  if (connection == nullptr) return false;
  Socket* socket = new_socket();
  socket->domain = message.domain;
  socket->type = SOCK_STREAM;
  socket->id = next_socket_id();
  socket->state = SocketState::kConnected;
  socket->connection = connection;
  socket->local = message.local;
  socket->peer = message.peer;
  socket->local_known = true;
  socket->read_shut = (message.flags & kAnchorReadShut) != 0;
  socket->write_shut = (message.flags & kAnchorWriteShut) != 0;
  for (uint32_t i = 0; i < std::min(message.option_count, kAnchorOptions); ++i) {
    const AnchorOption& carried = message.options[i];
    SavedOption option{
        carried.level, carried.name, std::min<socklen_t>(carried.length, sizeof option.value), {}};
    memcpy(option.value, carried.value, option.length);
    socket->options.push_back(option);
    if (carried.level == SOL_SOCKET && carried.name == SO_RCVTIMEO) {
      socket->receive_timeout_ns = timeout_of(carried);
    }
    if (carried.level == SOL_SOCKET && carried.name == SO_SNDTIMEO) {
      socket->send_timeout_ns = timeout_of(carried);
    }
  }
  install_socket(fd, socket);
  release_socket(socket);  // the table keeps its own reference
  return true;
}

// Accept queues (Qa) that arrived with listeners, by the sockets' cookies;
// an adopted listener takes its own (the entry's fd becomes -1).
using ArrivingQueues = std::vector<std::pair<uint64_t, int>>;

// A kernel TCP listener we did not make (an exec'd image's inheritance,
// systemd's socket activation, SCM_RIGHTS) becomes a netaccel listener,
// announced when it first waits for connections. Its O_NONBLOCK is the
// application's: netaccel leaves a listener's flag as the application set it.
bool adopt_listener(int fd, int domain, ArrivingQueues& queues) {
  int listening = 0;
  socklen_t length = sizeof listening;
  if (real().getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) != 0 || !listening) {
    return false;
  }
  struct sockaddr_storage local;
  socklen_t local_length = sizeof local;
  InetAddress address;
  if (real().getsockname(fd, reinterpret_cast<struct sockaddr*>(&local), &local_length) != 0 ||
      !to_inet_address(reinterpret_cast<struct sockaddr*>(&local), local_length, address)) {
    return false;
  }
  const int wake = keep_internal_fd(create_wake_fd());
  if (wake < 0) return false;
  Socket* socket = new_socket();
  socket->domain = domain;
  socket->type = SOCK_STREAM;
  socket->id = next_socket_id();
  const int flags = real().fcntl(fd, F_GETFL);
  socket->nonblocking.store(flags >= 0 && (flags & O_NONBLOCK) != 0, std::memory_order_relaxed);
  socket->listener_shared.store(true, std::memory_order_relaxed);
  socket->local = address;
  socket->local_known = true;
  socket->listener_wake.reset(wake);
  socket->listen_backlog = SOMAXCONN;
  if (domain == AF_INET6) {
    int v6only = 0;
    socklen_t v6only_length = sizeof v6only;
    real().getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &v6only_length);
    socket->listen_v6only = v6only != 0;
  }
  socket->cookie = socket_cookie(fd);
  for (auto& [cookie, queue] : queues) {
    if (cookie != socket->cookie || queue < 0 || socket->accept_queue) continue;
    socket->accept_queue.reset(keep_internal_fd(queue));
    queue = -1;
  }
  socket->state = SocketState::kListening;
  register_listener(socket);
  install_socket(fd, socket);
  release_socket(socket);
  g_listener_generation.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// An anchor for the socket's end, made once and kept; -1 if none can be.
int anchor_of(Socket* socket) {
  Connection* connection = socket->connection;
  std::lock_guard lock(g_anchor_mutex);
  if (!connection->anchor) {
    connection->anchor.reset(make_anchor(socket, /*may_register=*/true));
    keep_internal_fd(connection->anchor);
  }
  return connection->anchor.get();
}

// A socket descriptor we did not make, as the kernel describes it.
struct ArrivingSocket {
  int fd;
  int domain;
  int type;
};

bool describe_arriving(int fd, ArrivingSocket& out) {
  if (is_netaccel_fd(fd) || is_internal_fd(fd)) return false;
  struct stat status;
  if (fstat(fd, &status) != 0 || !S_ISSOCK(status.st_mode)) return false;
  out.fd = fd;
  socklen_t length = sizeof out.domain;
  if (real().getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &out.domain, &length) != 0) return false;
  length = sizeof out.type;
  return real().getsockopt(fd, SOL_SOCKET, SO_TYPE, &out.type, &length) == 0;
}

// Adopts what descriptors we did not make hold (an image's inheritance, one
// SCM_RIGHTS message): an anchor becomes a connected netaccel socket, a
// kernel TCP listener a netaccel listener with the accept queue that came
// with it. Queues are set apart first (peeking one's entry would install
// its anchor here). Returns the numbers the queues came at: a listener took
// its own elsewhere, the others are closed.
std::vector<int> adopt_descriptors(const std::vector<int>& fds) {
  std::vector<ArrivingSocket> sockets;
  ArrivingQueues queues;
  std::vector<int> arrived_at;
  for (const int fd : fds) {
    ArrivingSocket arriving;
    if (!describe_arriving(fd, arriving)) continue;
    const uint64_t queue_of =
        arriving.domain == AF_UNIX && arriving.type == SOCK_SEQPACKET ? accept_queue_cookie(fd) : 0;
    if (queue_of != 0) {
      queues.emplace_back(queue_of, fd);
      arrived_at.push_back(fd);
    } else {
      sockets.push_back(arriving);
    }
  }
  for (const ArrivingSocket& arriving : sockets) {
    if (arriving.domain == AF_UNIX && arriving.type == SOCK_SEQPACKET) {
      adopt_anchor(arriving.fd);
    } else if ((arriving.domain == AF_INET || arriving.domain == AF_INET6) &&
               arriving.type == SOCK_STREAM) {
      adopt_listener(arriving.fd, arriving.domain, queues);
    }
  }
  for (const auto& [cookie, queue] : queues) {
    if (queue >= 0) real().close(queue);
  }
  return arrived_at;
}

// Takes the descriptors `removed` out of the SCM_RIGHTS parts of a received
// message, as if they had never been sent.
void strip_passed_descriptors(struct msghdr* message, const std::vector<int>& removed) {
  if (removed.empty()) return;
  std::vector<unsigned char> kept;
  for (struct cmsghdr* part = CMSG_FIRSTHDR(message); part != nullptr;
       part = CMSG_NXTHDR(message, part)) {
    std::vector<int> fds;
    std::size_t data_bytes = part->cmsg_len - CMSG_LEN(0);
    if (part->cmsg_level == SOL_SOCKET && part->cmsg_type == SCM_RIGHTS) {
      for (std::size_t i = 0; i < data_bytes / sizeof(int); ++i) {
        int fd;
        memcpy(&fd, CMSG_DATA(part) + i * sizeof(int), sizeof fd);
        if (std::find(removed.begin(), removed.end(), fd) == removed.end()) fds.push_back(fd);
      }
      if (fds.empty()) continue;
      data_bytes = fds.size() * sizeof(int);
    }
    const std::size_t start = kept.size();
    kept.resize(start + CMSG_SPACE(data_bytes), 0);
    auto* copy = reinterpret_cast<struct cmsghdr*>(kept.data() + start);
    copy->cmsg_level = part->cmsg_level;
    copy->cmsg_type = part->cmsg_type;
    copy->cmsg_len = CMSG_LEN(data_bytes);
    memcpy(CMSG_DATA(copy),
           fds.empty() ? CMSG_DATA(part) : reinterpret_cast<unsigned char*>(fds.data()),
           data_bytes);
  }
  memcpy(message->msg_control, kept.data(), kept.size());
  message->msg_controllen = kept.size();
}

// The accept queues the listeners passed with `message` need: each one's
// Qa, opened now if the listener had none. The listeners may be shared from
// now on.
std::vector<int> accept_queues_to_pass(const struct msghdr* message) {
  std::vector<int> queues;
  for_each_passed_descriptor(message, [&](int passed) {
    SocketRef socket = lookup_socket(passed);
    if (!socket || socket->state != SocketState::kListening) return;
    socket->listener_shared.store(true, std::memory_order_relaxed);
    if (open_accept_queue(socket.get())) queues.push_back(socket->accept_queue.get());
  });
  return queues;
}

}  // namespace

// Never consumed: the next exec or pass finds the message again.
bool peek_anchor(int fd, AnchorMessage& message, UniqueFd (&fds)[3]) {
  struct iovec data {
    &message, sizeof message
  };
  struct msghdr header {};
  header.msg_iov = &data;
  header.msg_iovlen = 1;
  // No room for fds: a look at the magic installs nothing.
  if (real().recvmsg(fd, &header, MSG_PEEK | MSG_DONTWAIT) != sizeof message ||
      (header.msg_flags & MSG_TRUNC) != 0 || message.magic != kAnchorMagic ||
      message.version != kAnchorVersion) {
    return false;
  }
  alignas(struct cmsghdr) char control[CMSG_SPACE(3 * sizeof(int))];
  header.msg_control = control;
  header.msg_controllen = sizeof control;
  header.msg_flags = 0;
  if (real().recvmsg(fd, &header, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC) != sizeof message) {
    return false;
  }
  std::size_t count = 0;
  for (struct cmsghdr* part = CMSG_FIRSTHDR(&header); part != nullptr;
       part = CMSG_NXTHDR(&header, part)) {
    if (part->cmsg_level != SOL_SOCKET || part->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t passed = (part->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < passed; ++i) {
      int received;
      memcpy(&received, CMSG_DATA(part) + i * sizeof(int), sizeof received);
      if (count < 3) {
        fds[count++].reset(received);
      } else {
        real().close(received);
      }
    }
  }
  return count == 3 && (header.msg_flags & MSG_CTRUNC) == 0;
}

namespace {
// A listener the new image inherits takes its accept queue along: Qa stays
// open across the exec (a vfork child can only pass one that exists).
void pass_accept_queue_to_new_image(int fd, Socket* listener, bool include_close_on_exec) {
  const int descriptor_flags = real().fcntl(fd, F_GETFD);
  if (descriptor_flags < 0 || ((descriptor_flags & FD_CLOEXEC) != 0 && !include_close_on_exec)) {
    return;
  }
  if (holder_process()) open_accept_queue(listener);
  if (listener->accept_queue) real().fcntl(listener->accept_queue.get(), F_SETFD, 0);
}
}  // namespace

void anchor_sockets_for_new_image(bool include_close_on_exec) {
  const bool holder = holder_process();
  const int highest = highest_socket_fd();
  for (int fd = 0; fd <= highest; ++fd) {
    SocketRef socket = lookup_socket(fd);
    if (socket && socket->state == SocketState::kListening) {
      socket->listener_shared.store(true, std::memory_order_relaxed);
      pass_accept_queue_to_new_image(fd, socket.get(), include_close_on_exec);
      continue;
    }
    // An adopted socket's number holds its anchor already.
    if (!socket || socket->state != SocketState::kConnected || socket->connection->adopted) {
      continue;
    }
    const int descriptor_flags = real().fcntl(fd, F_GETFD);
    if (descriptor_flags < 0) continue;
    const bool close_on_exec = (descriptor_flags & FD_CLOEXEC) != 0;
    if (close_on_exec && !include_close_on_exec) continue;
    // A vfork child cannot keep what it makes (its descriptor table is its
    // own, its memory the parent's): it takes the parent's anchor, which its
    // table holds too, or gives each of its numbers one of its own.
    int anchor = socket->connection->anchor.get();
    const bool made_here = !holder && anchor < 0;
    if (holder) {
      anchor = anchor_of(socket.get());
    } else if (made_here) {
      anchor = make_anchor(socket.get(), /*may_register=*/false);
    }
    if (anchor < 0) continue;  // the new image gets the placeholder, as without a monitor
    real().dup3(anchor, fd, close_on_exec ? O_CLOEXEC : 0);
    if (made_here) real().close(anchor);
  }
}

void anchor_connections_for_fork() {
  if (!holder_process()) return;
  const int highest = highest_socket_fd();
  for (int fd = 0; fd <= highest; ++fd) {
    SocketRef socket = lookup_socket(fd);
    if (!socket || socket->state != SocketState::kConnected) continue;
    Connection* connection = socket->connection;
    // An adopted end's numbers hold copies of its anchor already.
    if (connection->adopted && !connection->anchor) continue;
    const int anchor = anchor_of(socket.get());
    if (anchor < 0) continue;
    if (!connection->adopted) hold_through_anchor(connection);
    // Every number of the end holds a copy: the kernel counts them all.
    const int descriptor_flags = real().fcntl(fd, F_GETFD);
    if (descriptor_flags >= 0) {
      real().dup3(anchor, fd, (descriptor_flags & FD_CLOEXEC) != 0 ? O_CLOEXEC : 0);
    }
  }
}

void adopt_inherited_descriptors() {
  DIR* directory = opendir("/proc/self/fd");
  if (directory == nullptr) return;
  std::vector<int> inherited;
  while (const struct dirent* entry = readdir(directory)) {
    char* end = nullptr;
    const long fd = strtol(entry->d_name, &end, 10);
    if (*end == '\0' && end != entry->d_name && fd != dirfd(directory)) {
      inherited.push_back(static_cast<int>(fd));
    }
  }
  closedir(directory);
  adopt_descriptors(inherited);
}

ssize_t send_with_anchors(int fd, const struct msghdr* message, int flags) {
  // The control data as the caller wrote it, each connected netaccel socket's
  // descriptor replaced by its anchor; copied only if one is.
  std::vector<unsigned char> control;
  auto* original = const_cast<struct msghdr*>(message);
  for (struct cmsghdr* part = CMSG_FIRSTHDR(original); part != nullptr;
       part = CMSG_NXTHDR(original, part)) {
    if (part->cmsg_level != SOL_SOCKET || part->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (part->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const std::size_t start = static_cast<std::size_t>(
        CMSG_DATA(part) - static_cast<unsigned char*>(message->msg_control));
    for (std::size_t i = 0; i < count; ++i) {
      int passed;
      memcpy(&passed, CMSG_DATA(part) + i * sizeof(int), sizeof passed);
      SocketRef socket = lookup_socket(passed);
      if (!socket || socket->state != SocketState::kConnected || socket->connection->adopted) {
        continue;
      }
      const int anchor = anchor_of(socket.get());
      if (anchor < 0) continue;
      if (control.empty()) {
        const auto* bytes = static_cast<const unsigned char*>(message->msg_control);
        control.assign(bytes, bytes + message->msg_controllen);
      }
      memcpy(control.data() + start + i * sizeof(int), &anchor, sizeof anchor);
    }
  }
  // Passed listeners take their accept queues along, in a part of their own
  // at the end; a preloaded receiver takes them out again.
  const std::vector<int> queues = accept_queues_to_pass(message);
  if (control.empty() && queues.empty()) return real().sendmsg(fd, message, flags);
  if (control.empty()) {
    const auto* bytes = static_cast<const unsigned char*>(message->msg_control);
    control.assign(bytes, bytes + message->msg_controllen);
  }
  if (!queues.empty()) {
    const std::size_t start = CMSG_ALIGN(control.size());
    control.resize(start + CMSG_SPACE(queues.size() * sizeof(int)), 0);
    auto* part = reinterpret_cast<struct cmsghdr*>(control.data() + start);
    part->cmsg_level = SOL_SOCKET;
    part->cmsg_type = SCM_RIGHTS;
    part->cmsg_len = CMSG_LEN(queues.size() * sizeof(int));
    memcpy(CMSG_DATA(part), queues.data(), queues.size() * sizeof(int));
  }
  struct msghdr substituted = *message;
  substituted.msg_control = control.data();
  substituted.msg_controllen = control.size();
  return real().sendmsg(fd, &substituted, flags);
}

void adopt_received_descriptors(struct msghdr* message) {
  std::vector<int> received;
  for_each_passed_descriptor(message, [&](int fd) { received.push_back(fd); });
  strip_passed_descriptors(message, adopt_descriptors(received));
}

// glibc's child runs its own internal execve, which we cannot reach: the
// anchors are made here, in the parent, which keeps using its sockets. With
// file actions the child may dup any descriptor, close-on-exec or not.
int intercepted_posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* actions,
                            const posix_spawnattr_t* attributes, char* const argv[],
                            char* const envp[]) {
  anchor_sockets_for_new_image(actions != nullptr);
  downgrade_pipes_for_new_image(actions != nullptr);
  return real().posix_spawn(pid, path, actions, attributes, argv, envp);
}

int intercepted_posix_spawnp(pid_t* pid, const char* file,
                             const posix_spawn_file_actions_t* actions,
                             const posix_spawnattr_t* attributes, char* const argv[],
                             char* const envp[]) {
  anchor_sockets_for_new_image(actions != nullptr);
  downgrade_pipes_for_new_image(actions != nullptr);
  return real().posix_spawnp(pid, file, actions, attributes, argv, envp);
}

}  // namespace netaccel::preload

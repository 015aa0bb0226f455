#include "netaccel/stack_client.h"

#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace netaccel::stack_client {
namespace {

// A blocking call polls this long before it sleeps on its eventfd, yielding
// the core between polls (see the worker's idle spin for why).
constexpr int64_t kSpinNs = 20'000;
constexpr int64_t kPureSpinNs = 5'000;

int64_t monotonic_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

void wake_if_announced(std::atomic<uint32_t>& announced, int fd) {
  if (announced.load(std::memory_order_relaxed) != 0 &&
      announced.exchange(0, std::memory_order_relaxed) != 0) {
    signal_wake_fd(fd);
  }
}

UniqueFd open_control(const std::string& socket_path, int* error) {
  UniqueFd control(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket_path.c_str(), sizeof address.sun_path - 1);
  if (!control ||
      ::connect(control.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    *error = errno;
    return UniqueFd();
  }
  return control;
}

// One reply and its fds; false with *error on a failure reply or a broken stack.
bool receive_reply(int control, StackReply* reply, int* fds, std::size_t* count, int* error) {
  const ssize_t got =
      receive_with_fds(control, reply, sizeof *reply, fds, kStackAcceptedFds, count);
  if (got != static_cast<ssize_t>(sizeof *reply) || reply->magic != kStackMagic) {
    for (std::size_t i = 0; i < *count; ++i) close(fds[i]);
    *error = got < 0 ? static_cast<int>(-got) : ECONNABORTED;
    return false;
  }
  if (reply->kind == kStackFailed) {
    for (std::size_t i = 0; i < *count; ++i) close(fds[i]);
    *error = reply->error != 0 ? reply->error : ECONNABORTED;
    return false;
  }
  return true;
}

}  // namespace

std::unique_ptr<Connection> adopt(const StackReply& reply, int* fds, unsigned count,
                                  UniqueFd lifetime, int* error) {
  UniqueFd memory(fds[0]);
  auto connection = std::unique_ptr<Connection>(new Connection());
  connection->info_ = reply;
  connection->own_wake_ = UniqueFd(fds[1]);
  connection->stack_wake_ = UniqueFd(fds[2]);
  for (unsigned i = 3; i < count; ++i) close(fds[i]);
  connection->lifetime_ = std::move(lifetime);
  const int64_t size = shared_memory_size(memory.get());
  if (count < kStackConnectionFds || size < static_cast<int64_t>(sizeof(ConnectionSegmentHeader)) ||
      !is_eventfd(connection->own_wake_.get()) || !is_eventfd(connection->stack_wake_.get())) {
    *error = EPROTO;
    return nullptr;
  }
  connection->mapping_ = map_shared(memory.get(), static_cast<std::size_t>(size));
  if (!connection->mapping_) {
    *error = errno;
    return nullptr;
  }
  auto* base = static_cast<unsigned char*>(connection->mapping_.get());
  connection->header_ = reinterpret_cast<ConnectionSegmentHeader*>(base);
  const ConnectionSegmentHeader& header = *connection->header_;
  const uint32_t side = reply.side & 1;
  for (const uint32_t offset : header.ring_offset) {
    if (header.magic != kSegmentMagic || offset >= size ||
        !byte_ring_valid(base + offset, static_cast<std::size_t>(size) - offset)) {
      *error = EPROTO;
      return nullptr;
    }
  }
  connection->tx_ = ByteRing(base + header.ring_offset[side]);
  connection->rx_ = ByteRing(base + header.ring_offset[side ^ 1]);
  return connection;
}

bool Connection::peer_aborted() const {
  return header_->aborted[(info_.side & 1) ^ 1].load(std::memory_order_acquire) != 0;
}

// Spins, then announces and sleeps on our eventfd; false when the stack went
// (the lifetime socket hung up): the connection is then reset.
bool Connection::wait(Want want) {
  const auto satisfied = [&] {
    if (peer_aborted()) return true;
    if (want == Want::kData) {
      return rx_.readable() > 0 || rx_.control().writer_closed.load(std::memory_order_acquire);
    }
    return tx_.writable() > 0 || tx_.control().reader_closed.load(std::memory_order_acquire);
  };
  const int64_t started = monotonic_ns();
  for (int64_t now = started; now - started < kSpinNs; now = monotonic_ns()) {
    if (satisfied()) return true;
    // A few microseconds without a system call, then yield the core.
    if (now - started < kPureSpinNs) {
      __builtin_ia32_pause();
    } else {
      sched_yield();
    }
  }
  std::atomic<uint32_t>& flag =
      want == Want::kData ? rx_.control().reader_waiting : tx_.control().writer_waiting;
  for (;;) {
    flag.store(1, std::memory_order_relaxed);
    // Store-load: the announcement before we look again (the stack fences
    // between publishing and reading it).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (satisfied()) {
      flag.store(0, std::memory_order_relaxed);
      return true;
    }
    pollfd fds[2] = {{own_wake_.get(), POLLIN, 0}, {lifetime_.get(), POLLRDHUP, 0}};
    const int ready = poll(fds, 2, 100);
    flag.store(0, std::memory_order_relaxed);
    if (ready > 0 && (fds[0].revents & POLLIN)) drain_wake_fd(own_wake_.get());
    if (ready > 0 && (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) && !satisfied()) {
      return false;
    }
  }
}

ssize_t Connection::send(const void* data, std::size_t length) {
  if (write_shut_) return -EPIPE;
  const auto* bytes = static_cast<const unsigned char*>(data);
  std::size_t sent = 0;
  while (sent < length) {
    if (peer_aborted()) return sent > 0 ? static_cast<ssize_t>(sent) : -ECONNRESET;
    if (tx_.control().reader_closed.load(std::memory_order_acquire)) {
      return sent > 0 ? static_cast<ssize_t>(sent) : -EPIPE;
    }
    const std::size_t written = tx_.write(bytes + sent, length - sent);
    if (written > 0) {
      sent += written;
      std::atomic_thread_fence(std::memory_order_seq_cst);
      wake_if_announced(tx_.control().reader_waiting, stack_wake_.get());
      continue;
    }
    if (!wait(Want::kSpace)) return sent > 0 ? static_cast<ssize_t>(sent) : -ECONNRESET;
  }
  return static_cast<ssize_t>(sent);
}

ssize_t Connection::receive(void* data, std::size_t length) {
  for (;;) {
    const std::size_t got = rx_.read(data, length);
    if (got > 0) {
      wake_if_announced(rx_.control().writer_waiting, stack_wake_.get());
      return static_cast<ssize_t>(got);
    }
    if (peer_aborted()) return -ECONNRESET;
    if (rx_.control().writer_closed.load(std::memory_order_acquire)) {
      if (rx_.readable() > 0) continue;  // bytes published before the close
      return 0;
    }
    if (!wait(Want::kData)) return -ECONNRESET;
  }
}

void Connection::shutdown_write() {
  if (write_shut_) return;
  write_shut_ = true;
  tx_.control().writer_closed.store(1, std::memory_order_release);
  signal_wake_fd(stack_wake_.get());
}

Connection::~Connection() {
  if (!header_) return;
  const uint32_t side = info_.side & 1;
  if (rx_.unread() != 0 && !peer_aborted()) {
    header_->aborted[side].store(1, std::memory_order_relaxed);
  }
  tx_.control().writer_closed.store(1, std::memory_order_release);
  rx_.control().reader_closed.store(1, std::memory_order_release);
  signal_wake_fd(stack_wake_.get());
}

namespace {

// Opens a control connection, sends `request` and receives the first reply
// and its fds; the connection on success, empty with *error set otherwise.
UniqueFd request_stack(const std::string& socket_path, const StackRequest& request,
                       StackReply* reply, int (&fds)[kStackAcceptedFds], std::size_t* count,
                       int* error) {
  UniqueFd control = open_control(socket_path, error);
  if (!control) return control;
  if (::send(control.get(), &request, sizeof request, MSG_NOSIGNAL) != sizeof request) {
    *error = errno;
    return UniqueFd();
  }
  if (!receive_reply(control.get(), reply, fds, count, error)) return UniqueFd();
  return control;
}

}  // namespace

std::unique_ptr<Connection> connect(const std::string& socket_path, uint32_t address, uint16_t port,
                                    int* error) {
  StackRequest request;
  request.op = kStackConnect;
  request.address = address;
  request.port = port;
  StackReply reply;
  int fds[kStackAcceptedFds];
  std::size_t count = 0;
  UniqueFd control = request_stack(socket_path, request, &reply, fds, &count, error);
  if (!control) return nullptr;
  if (reply.kind != kStackConnected || count != kStackConnectionFds) {
    for (std::size_t i = 0; i < count; ++i) close(fds[i]);
    *error = EPROTO;
    return nullptr;
  }
  return adopt(reply, fds, static_cast<unsigned>(count), std::move(control), error);
}

std::unique_ptr<Listener> Listener::listen(const std::string& socket_path, uint16_t port,
                                           unsigned backlog, int* error) {
  StackRequest request;
  request.op = kStackListen;
  request.port = port;
  request.backlog = static_cast<uint16_t>(backlog);
  StackReply reply;
  int fds[kStackAcceptedFds];
  std::size_t count = 0;
  UniqueFd control = request_stack(socket_path, request, &reply, fds, &count, error);
  if (!control) return nullptr;
  for (std::size_t i = 0; i < count; ++i) close(fds[i]);
  if (reply.kind != kStackListening) {
    *error = EPROTO;
    return nullptr;
  }
  auto listener = std::unique_ptr<Listener>(new Listener());
  listener->control_ = std::move(control);
  listener->port_ = reply.local_port;
  return listener;
}

std::unique_ptr<Connection> Listener::accept(int* error) {
  StackReply reply;
  int fds[kStackAcceptedFds];
  std::size_t count = 0;
  if (!receive_reply(control_.get(), &reply, fds, &count, error)) return nullptr;
  if (reply.kind != kStackAccepted || count != kStackAcceptedFds) {
    for (std::size_t i = 0; i < count; ++i) close(fds[i]);
    *error = EPROTO;
    return nullptr;
  }
  UniqueFd lifetime(fds[3]);
  return adopt(reply, fds, kStackConnectionFds, std::move(lifetime), error);
}

}  // namespace netaccel::stack_client

// Socket semantics an application relies on, checked the same way on the
// kernel and under netaccel: CTest runs this binary twice, plainly and under
// `netaccel run` with a private monitor. Under netaccel, NETACCEL_EXPECT_SOCKET
// names that monitor, and every test also checks that its connections really
// went through shared memory (the monitor's connections_total grew).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "loopback_address.h"
#include "netaccel/protocol.h"

namespace {

// connections_total from the monitor under test, when there is one.
std::optional<long> monitor_connections() {
  const char* path = getenv("NETACCEL_EXPECT_SOCKET");
  if (path == nullptr) return std::nullopt;
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  strncpy(address.sun_path, path, sizeof address.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    close(fd);
    return -1;
  }
  const netaccel::StatusRequest request{netaccel::kStatusMagic, netaccel::kProtocolVersion};
  send(fd, &request, sizeof request, 0);
  char reply[4096] = {};
  const ssize_t got = recv(fd, reply, sizeof reply - 1, 0);
  close(fd);
  if (got <= 0) return -1;
  const char* field = strstr(reply, "\"connections_total\":");
  return field == nullptr ? -1 : atol(field + strlen("\"connections_total\":"));
}

// System calls entered by the calling thread while it is counting, from the
// kernel's raw_syscalls:sys_enter tracepoint: what a call costs whatever a
// system call costs on this machine. Not available without tracefs or the
// right to trace (valid() is false then).
class SystemCallCounter {
 public:
  SystemCallCounter() {
    std::ifstream id_file("/sys/kernel/tracing/events/raw_syscalls/sys_enter/id");
    uint64_t id = 0;
    if (!(id_file >> id)) return;
    perf_event_attr attributes{};
    attributes.type = PERF_TYPE_TRACEPOINT;
    attributes.size = sizeof attributes;
    attributes.config = id;
    attributes.disabled = 1;
    attributes.exclude_hv = 1;
    fd_ = static_cast<int>(
        syscall(SYS_perf_event_open, &attributes, 0, -1, -1, PERF_FLAG_FD_CLOEXEC));
  }
  ~SystemCallCounter() {
    if (fd_ >= 0) close(fd_);
  }
  bool valid() const { return fd_ >= 0; }
  void start() {
    ioctl(fd_, PERF_EVENT_IOC_RESET, 0);
    ioctl(fd_, PERF_EVENT_IOC_ENABLE, 0);
  }
  // The calls since start(), the one that stops counting included.
  uint64_t stop() {
    ioctl(fd_, PERF_EVENT_IOC_DISABLE, 0);
    uint64_t count = 0;
    return read(fd_, &count, sizeof count) == sizeof count ? count : UINT64_MAX;
  }

 private:
  int fd_ = -1;
};

bool under_netaccel() {
  return getenv("NETACCEL_EXPECT_SOCKET") != nullptr;
}

class SocketSemantics : public ::testing::Test {
 protected:
  void SetUp() override {
    alarm(30);  // no test may hang the suite
    connections_before_ = monitor_connections();
  }
  void TearDown() override {
    alarm(0);
    if (connections_before_ && expected_netaccel_connections_ > 0) {
      const auto after = monitor_connections();
      ASSERT_TRUE(after.has_value());
      EXPECT_GE(*after - *connections_before_, expected_netaccel_connections_)
          << "connections did not go through netaccel";
    }
  }
  void expect_netaccel_connections(long count) { expected_netaccel_connections_ = count; }

  // A listener on 127.0.0.1 (or ::1) with an ephemeral port.
  int listen_on(int family = AF_INET, int type_flags = 0) {
    const int fd = socket(family, SOCK_STREAM | type_flags, 0);
    EXPECT_GE(fd, 0);
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_storage address = loopback(family, 0);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), length_of(family)), 0)
        << strerror(errno);
    EXPECT_EQ(listen(fd, 64), 0);
    return fd;
  }
  static sockaddr_storage loopback(int family, uint16_t port) {
    return netaccel::test::loopback_address(family, port);
  }
  static socklen_t length_of(int family) {
    return family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  }
  static uint16_t port_of(int fd) {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    return ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);  // same offset in v6
  }
  int connect_to(int family, uint16_t port, int type_flags = 0) {
    const int fd = socket(family, SOCK_STREAM | type_flags, 0);
    sockaddr_storage address = loopback(family, port);
    const int result = connect(fd, reinterpret_cast<sockaddr*>(&address), length_of(family));
    if (type_flags & SOCK_NONBLOCK) {
      EXPECT_TRUE(result == 0 || errno == EINPROGRESS) << strerror(errno);
    } else {
      EXPECT_EQ(result, 0) << strerror(errno);
    }
    return fd;
  }
  // A connected pair (client, server side) over a fresh listener.
  std::pair<int, int> connected_pair(int family = AF_INET) {
    const int listener = listen_on(family);
    const int client = connect_to(family, port_of(listener));
    const int server = accept(listener, nullptr, nullptr);
    EXPECT_GE(server, 0);
    close(listener);
    return {client, server};
  }

 private:
  std::optional<long> connections_before_;
  long expected_netaccel_connections_ = 0;
};

TEST_F(SocketSemantics, BlockingStreamCarriesEveryByteInOrder) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  std::vector<unsigned char> sent(3 * 1024 * 1024);
  for (std::size_t i = 0; i < sent.size(); ++i)
    sent[i] = static_cast<unsigned char>(i * 7 + i / 251);
  std::thread writer([&, client = client] {
    std::size_t done = 0;
    while (done < sent.size()) {
      const ssize_t n =
          send(client, sent.data() + done, std::min<std::size_t>(sent.size() - done, 70000), 0);
      ASSERT_GT(n, 0);
      done += static_cast<std::size_t>(n);
    }
    shutdown(client, SHUT_WR);
  });
  std::vector<unsigned char> received;
  unsigned char buffer[50000];
  for (;;) {
    const ssize_t n = recv(server, buffer, sizeof buffer, 0);
    ASSERT_GE(n, 0) << strerror(errno);
    if (n == 0) break;
    received.insert(received.end(), buffer, buffer + n);
  }
  writer.join();
  EXPECT_EQ(received, sent);
  close(client);
  close(server);
}

TEST_F(SocketSemantics, AddressesMatchOnBothEnds) {
  expect_netaccel_connections(1);
  const int listener = listen_on(AF_INET);
  const uint16_t port = port_of(listener);
  const int client = connect_to(AF_INET, port);
  sockaddr_in peer{};
  socklen_t peer_length = sizeof peer;
  const int server = accept(listener, reinterpret_cast<sockaddr*>(&peer), &peer_length);
  ASSERT_GE(server, 0);
  sockaddr_in client_local{}, client_peer{}, server_local{};
  socklen_t length = sizeof client_local;
  ASSERT_EQ(getsockname(client, reinterpret_cast<sockaddr*>(&client_local), &length), 0);
  length = sizeof client_peer;
  ASSERT_EQ(getpeername(client, reinterpret_cast<sockaddr*>(&client_peer), &length), 0);
  length = sizeof server_local;
  ASSERT_EQ(getsockname(server, reinterpret_cast<sockaddr*>(&server_local), &length), 0);
  EXPECT_EQ(peer_length, sizeof(sockaddr_in));
  EXPECT_EQ(ntohs(client_peer.sin_port), port);
  EXPECT_EQ(ntohs(server_local.sin_port), port);
  EXPECT_EQ(peer.sin_port, client_local.sin_port);
  EXPECT_EQ(client_local.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
  close(client);
  close(server);
  close(listener);
}

TEST_F(SocketSemantics, Ipv6ConnectionWorks) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair(AF_INET6);
  ASSERT_EQ(send(client, "six", 3, 0), 3);
  char buffer[8] = {};
  ASSERT_EQ(recv(server, buffer, sizeof buffer, 0), 3);
  EXPECT_STREQ(buffer, "six");
  sockaddr_in6 peer{};
  socklen_t length = sizeof peer;
  ASSERT_EQ(getpeername(server, reinterpret_cast<sockaddr*>(&peer), &length), 0);
  EXPECT_EQ(peer.sin6_family, AF_INET6);
  EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&peer.sin6_addr));
  close(client);
  close(server);
}

TEST_F(SocketSemantics, NonBlockingReadsSayEagainThenDataThenEof) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  ASSERT_EQ(fcntl(server, F_SETFL, fcntl(server, F_GETFL) | O_NONBLOCK), 0);
  EXPECT_TRUE(fcntl(server, F_GETFL) & O_NONBLOCK);
  char buffer[16];
  EXPECT_EQ(recv(server, buffer, sizeof buffer, 0), -1);
  EXPECT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK);
  ASSERT_EQ(send(client, "abc", 3, 0), 3);
  pollfd wait{server, POLLIN, 0};
  ASSERT_EQ(poll(&wait, 1, 5000), 1);
  EXPECT_EQ(recv(server, buffer, sizeof buffer, 0), 3);
  close(client);
  ASSERT_EQ(poll(&wait, 1, 5000), 1);
  EXPECT_EQ(recv(server, buffer, sizeof buffer, 0), 0);
  close(server);
}

TEST_F(SocketSemantics, PeekAndWaitAllAndFionread) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  ASSERT_EQ(send(client, "hello", 5, 0), 5);
  char buffer[16] = {};
  pollfd wait{server, POLLIN, 0};
  ASSERT_EQ(poll(&wait, 1, 5000), 1);
  int pending = 0;
  ASSERT_EQ(ioctl(server, FIONREAD, &pending), 0);
  EXPECT_EQ(pending, 5);
  EXPECT_EQ(recv(server, buffer, sizeof buffer, MSG_PEEK), 5);
  EXPECT_EQ(recv(server, buffer, 2, 0), 2);
  EXPECT_EQ(std::string(buffer, 2), "he");
  std::thread late([client = client] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    send(client, "world", 5, 0);
  });
  EXPECT_EQ(recv(server, buffer, 8, MSG_WAITALL), 8);
  EXPECT_EQ(std::string(buffer, 8), "lloworld");
  late.join();
  close(client);
  close(server);
}

TEST_F(SocketSemantics, ReceiveTimeoutExpires) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  timeval timeout{0, 100000};
  ASSERT_EQ(setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout), 0);
  timeval read_back{};
  socklen_t length = sizeof read_back;
  ASSERT_EQ(getsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &read_back, &length), 0);
  EXPECT_EQ(read_back.tv_usec, 100000);
  const auto start = std::chrono::steady_clock::now();
  char byte;
  EXPECT_EQ(recv(server, &byte, 1, 0), -1);
  EXPECT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(90));
  close(client);
  close(server);
}

TEST_F(SocketSemantics, OptionsAreAcceptedAndReported) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  const int one = 1;
  EXPECT_EQ(setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), 0);
  EXPECT_EQ(setsockopt(client, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one), 0);
  int value = 0;
  socklen_t length = sizeof value;
  EXPECT_EQ(getsockopt(client, IPPROTO_TCP, TCP_NODELAY, &value, &length), 0);
  EXPECT_EQ(value, 1);
  EXPECT_EQ(getsockopt(client, SOL_SOCKET, SO_TYPE, &value, &length), 0);
  EXPECT_EQ(value, SOCK_STREAM);
  EXPECT_EQ(getsockopt(client, SOL_SOCKET, SO_ERROR, &value, &length), 0);
  EXPECT_EQ(value, 0);
  EXPECT_EQ(setsockopt(client, SOL_SOCKET, 0x7fff, &one, sizeof one), -1);
  EXPECT_EQ(errno, ENOPROTOOPT);
  close(client);
  close(server);
}

// A fresh socket's options are checked on a probe socket, and the values it
// accepted are remembered: a refused value must stay refused.
TEST_F(SocketSemantics, OptionChecksRememberOnlyAcceptedValues) {
  const struct linger abort_on_close { 1, 0 };
  const struct timeval bad_timeout { 0, 2000000 };
  for (int round = 0; round < 2; ++round) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close), 0);
    EXPECT_EQ(setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(int)), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &bad_timeout, sizeof bad_timeout), -1);
    EXPECT_EQ(errno, EDOM);
    close(fd);
  }
}

TEST_F(SocketSemantics, NonBlockingConnectCompletesAsWritable) {
  expect_netaccel_connections(1);
  const int listener = listen_on(AF_INET);
  const int client = connect_to(AF_INET, port_of(listener), SOCK_NONBLOCK);
  pollfd wait{client, POLLOUT, 0};
  ASSERT_EQ(poll(&wait, 1, 5000), 1);
  EXPECT_TRUE(wait.revents & POLLOUT);
  int error = -1;
  socklen_t length = sizeof error;
  ASSERT_EQ(getsockopt(client, SOL_SOCKET, SO_ERROR, &error, &length), 0);
  EXPECT_EQ(error, 0);
  const int server = accept(listener, nullptr, nullptr);
  ASSERT_GE(server, 0);
  close(client);
  close(server);
  close(listener);
}

TEST_F(SocketSemantics, EpollLevelTriggeredMixesKernelAndNetaccel) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const int epoll = epoll_create1(EPOLL_CLOEXEC);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = 1;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, server, &event), 0);
  event.data.u64 = 2;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, pipe_fds[0], &event), 0);
  EXPECT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, server, &event), -1);
  EXPECT_EQ(errno, EEXIST);
  epoll_event ready[4];
  EXPECT_EQ(epoll_wait(epoll, ready, 4, 50), 0);
  ASSERT_EQ(write(pipe_fds[1], "p", 1), 1);
  ASSERT_EQ(send(client, "n", 1, 0), 1);
  int seen = 0;
  for (int round = 0; round < 10 && seen != 3; ++round) {
    const int n = epoll_wait(epoll, ready, 4, 1000);
    for (int i = 0; i < n; ++i) seen |= static_cast<int>(ready[i].data.u64);
  }
  EXPECT_EQ(seen, 3);
  // Level-triggered: still reported while unread.
  EXPECT_GE(epoll_wait(epoll, ready, 4, 0), 2);
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_DEL, server, nullptr), 0);
  EXPECT_EQ(epoll_ctl(epoll, EPOLL_CTL_DEL, server, nullptr), -1);
  EXPECT_EQ(errno, ENOENT);
  close(epoll);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  close(client);
  close(server);
}

TEST_F(SocketSemantics, EpollWakesASleepingWaiter) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  const int epoll = epoll_create1(0);
  epoll_event event{};
  event.events = EPOLLIN | EPOLLRDHUP;
  event.data.fd = server;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, server, &event), 0);
  std::thread late([client = client] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // past any spinning
    send(client, "x", 1, 0);
  });
  epoll_event ready{};
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(ready.data.fd, server);
  EXPECT_TRUE(ready.events & EPOLLIN);
  late.join();
  char byte;
  ASSERT_EQ(recv(server, &byte, 1, 0), 1);
  close(client);  // EOF shows as EPOLLRDHUP
  ASSERT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1);
  EXPECT_TRUE(ready.events & EPOLLRDHUP);
  close(epoll);
  close(server);
}

TEST_F(SocketSemantics, EpollEdgeTriggeredAndOneShot) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  const int epoll = epoll_create1(0);
  epoll_event event{};
  event.events = EPOLLIN | EPOLLET;
  event.data.fd = server;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, server, &event), 0);
  ASSERT_EQ(send(client, "a", 1, 0), 1);
  epoll_event ready{};
  ASSERT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1);
  EXPECT_EQ(epoll_wait(epoll, &ready, 1, 50), 0) << "edge-triggered reported twice";
  ASSERT_EQ(send(client, "b", 1, 0), 1);
  EXPECT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1) << "new data is a new edge";
  event.events = EPOLLIN | EPOLLONESHOT;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_MOD, server, &event), 0);
  EXPECT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1);
  EXPECT_EQ(epoll_wait(epoll, &ready, 1, 50), 0) << "one-shot fired twice";
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_MOD, server, &event), 0);
  EXPECT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1) << "re-armed one-shot";
  close(epoll);
  close(client);
  close(server);
}

TEST_F(SocketSemantics, EpollReportsIncomingConnectionsOnListener) {
  expect_netaccel_connections(1);
  const int listener = listen_on(AF_INET, SOCK_NONBLOCK);
  const int epoll = epoll_create1(0);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.fd = listener;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event), 0);
  EXPECT_EQ(accept(listener, nullptr, nullptr), -1);
  EXPECT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK);
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    close(connect_to(AF_INET, port_of(listener)));
  });
  epoll_event ready{};
  ASSERT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1);
  late.join();
  const int server = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  ASSERT_GE(server, 0) << strerror(errno);
  EXPECT_TRUE(fcntl(server, F_GETFD) & FD_CLOEXEC);
  char byte;
  pollfd wait{server, POLLIN, 0};
  ASSERT_EQ(poll(&wait, 1, 5000), 1);
  EXPECT_EQ(recv(server, &byte, 1, 0), 0);  // the client already closed
  close(server);
  close(epoll);
  close(listener);
}

// An event loop whose netaccel sockets keep it busy finds them without the
// kernel, yet a kernel descriptor in the same set is still reported, soon,
// and then shares the wait with them, even with room for one event a wait.
TEST_F(SocketSemantics, EpollFindsReadySocketsWithoutTheKernelAndStillReportsKernelDescriptors) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  const int kernel_fd = eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(kernel_fd, 0);
  const int epoll = epoll_create1(EPOLL_CLOEXEC);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = 1;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, server, &event), 0);
  event.data.u64 = 2;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, kernel_fd, &event), 0);
  ASSERT_EQ(send(client, "r", 1, 0), 1);  // left unread: level-triggered, ready every wait
  epoll_event ready{};
  ASSERT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1);

  constexpr int kWaits = 20000;
  SystemCallCounter counter;
  if (counter.valid()) counter.start();
  for (int i = 0; i < kWaits; ++i) {
    ASSERT_EQ(epoll_wait(epoll, &ready, 1, -1), 1);
    ASSERT_EQ(ready.data.u64, 1u);
  }
  if (counter.valid()) {
    const uint64_t calls = counter.stop();
    // The kernel makes one per wait; netaccel asks it on a budget in time.
    if (under_netaccel()) {
      EXPECT_LT(calls, kWaits / 20) << "system calls for " << kWaits << " waits";
    }
  } else {
    std::cerr << "(system calls not counted: no raw_syscalls tracepoint)\n";
  }

  const uint64_t one = 1;
  ASSERT_EQ(write(kernel_fd, &one, sizeof one), static_cast<ssize_t>(sizeof one));
  const auto written = std::chrono::steady_clock::now();
  bool kernel_seen = false;
  while (!kernel_seen && std::chrono::steady_clock::now() - written < std::chrono::seconds(1)) {
    ASSERT_EQ(epoll_wait(epoll, &ready, 1, -1), 1);
    kernel_seen = ready.data.u64 == 2;
  }
  EXPECT_TRUE(kernel_seen) << "the kernel descriptor starved beside a ready netaccel socket";
  // Both ready now: neither keeps the other out of a one-event wait.
  int reports[3] = {};
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(epoll_wait(epoll, &ready, 1, -1), 1);
    ++reports[ready.data.u64 == 2 ? 2 : 1];
  }
  EXPECT_GE(reports[1], 100);
  EXPECT_GE(reports[2], 100);
  close(epoll);
  close(kernel_fd);
  close(client);
  close(server);
}

// The same for poll: a ready netaccel socket is found without the kernel,
// and a kernel descriptor beside it is still reported soon.
TEST_F(SocketSemantics, PollFindsReadySocketsWithoutTheKernelAndStillReportsKernelDescriptors) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  const int kernel_fd = eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(kernel_fd, 0);
  ASSERT_EQ(send(client, "r", 1, 0), 1);  // left unread
  pollfd entries[2] = {{server, POLLIN, 0}, {kernel_fd, POLLIN, 0}};
  constexpr int kPolls = 20000;
  SystemCallCounter counter;
  if (counter.valid()) counter.start();
  for (int i = 0; i < kPolls; ++i) {
    ASSERT_EQ(poll(entries, 2, -1), 1);
    ASSERT_TRUE(entries[0].revents & POLLIN);
  }
  if (counter.valid() && under_netaccel()) {
    EXPECT_LT(counter.stop(), kPolls / 20u) << "system calls for " << kPolls << " polls";
  }
  const uint64_t one = 1;
  ASSERT_EQ(write(kernel_fd, &one, sizeof one), static_cast<ssize_t>(sizeof one));
  const auto written = std::chrono::steady_clock::now();
  bool kernel_seen = false;
  while (!kernel_seen && std::chrono::steady_clock::now() - written < std::chrono::seconds(1)) {
    ASSERT_GE(poll(entries, 2, -1), 1);
    kernel_seen = (entries[1].revents & POLLIN) != 0;
  }
  EXPECT_TRUE(kernel_seen) << "the kernel descriptor starved beside a ready netaccel socket";
  close(kernel_fd);
  close(client);
  close(server);
}

// Event loops take a connection out of their set and put it back on every
// request (redis-benchmark does); under netaccel that costs no system call.
TEST_F(SocketSemantics, EpollCtlInAndOutOfASetKeepsReporting) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  const int epoll = epoll_create1(EPOLL_CLOEXEC);
  epoll_event event{};
  event.data.fd = server;
  constexpr int kRounds = 1000;
  SystemCallCounter counter;
  if (counter.valid()) counter.start();
  for (int i = 0; i < kRounds; ++i) {
    event.events = EPOLLOUT;
    ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, server, &event), 0);
    ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, server, &event), -1);
    ASSERT_EQ(errno, EEXIST);
    event.events = EPOLLIN;
    ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_MOD, server, &event), 0);
    ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_DEL, server, nullptr), 0);
    ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_DEL, server, nullptr), -1);
    ASSERT_EQ(errno, ENOENT);
    ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_MOD, server, &event), -1);
    ASSERT_EQ(errno, ENOENT);
  }
  if (counter.valid() && under_netaccel()) {
    EXPECT_LT(counter.stop(), 10u) << "system calls for " << kRounds << " rounds";
  }
  // Out of the set: not reported, however ready.
  ASSERT_EQ(send(client, "x", 1, 0), 1);
  epoll_event ready{};
  EXPECT_EQ(epoll_wait(epoll, &ready, 1, 50), 0);
  // Back in, edge-triggered: the data already there is one edge, reported once.
  event.events = EPOLLIN | EPOLLET;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, server, &event), 0);
  ASSERT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1);
  EXPECT_EQ(ready.data.fd, server);
  EXPECT_EQ(epoll_wait(epoll, &ready, 1, 50), 0);
  // And a sleeping wait is still woken by the peer.
  std::thread late([client = client] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // past any spinning
    send(client, "y", 1, 0);
  });
  EXPECT_EQ(epoll_wait(epoll, &ready, 1, 5000), 1);
  late.join();
  close(epoll);
  close(client);
  close(server);
}

TEST_F(SocketSemantics, SelectSeesReadableAndWritable) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  fd_set readable, writable;
  FD_ZERO(&readable);
  FD_ZERO(&writable);
  FD_SET(server, &readable);
  FD_SET(client, &writable);
  timeval timeout{1, 0};
  EXPECT_EQ(select(std::max(client, server) + 1, &readable, &writable, nullptr, &timeout), 1);
  EXPECT_TRUE(FD_ISSET(client, &writable));
  EXPECT_FALSE(FD_ISSET(server, &readable));
  ASSERT_EQ(send(client, "s", 1, 0), 1);
  FD_ZERO(&readable);
  FD_SET(server, &readable);
  timeout = {5, 0};
  EXPECT_EQ(select(server + 1, &readable, nullptr, nullptr, &timeout), 1);
  EXPECT_TRUE(FD_ISSET(server, &readable));
  close(client);
  close(server);
}

TEST_F(SocketSemantics, HalfCloseKeepsTheOtherDirection) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  ASSERT_EQ(shutdown(client, SHUT_WR), 0);
  char buffer[8];
  EXPECT_EQ(recv(server, buffer, sizeof buffer, 0), 0);
  ASSERT_EQ(send(server, "back", 4, 0), 4);
  EXPECT_EQ(recv(client, buffer, sizeof buffer, 0), 4);
  signal(SIGPIPE, SIG_IGN);
  EXPECT_EQ(send(client, "x", 1, 0), -1);
  EXPECT_EQ(errno, EPIPE);
  close(client);
  close(server);
}

TEST_F(SocketSemantics, WritingToAClosedPeerFailsWithoutSignalWhenAsked) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  close(server);
  // The kernel may accept a first write before the reset; then it must fail.
  ssize_t result = 0;
  for (int i = 0; i < 100 && result >= 0; ++i) {
    result = send(client, "x", 1, MSG_NOSIGNAL);
    if (result >= 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(result, -1);
  EXPECT_TRUE(errno == EPIPE || errno == ECONNRESET) << strerror(errno);
  close(client);
}

TEST_F(SocketSemantics, ClosingWithUnreadDataResetsThePeer) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  ASSERT_EQ(send(client, "unread", 6, 0), 6);
  pollfd wait{server, POLLIN, 0};
  ASSERT_EQ(poll(&wait, 1, 5000), 1);
  close(server);
  char buffer[8];
  wait = {client, POLLIN, 0};
  ASSERT_EQ(poll(&wait, 1, 5000), 1);
  EXPECT_EQ(recv(client, buffer, sizeof buffer, 0), -1);
  EXPECT_EQ(errno, ECONNRESET);
  close(client);
}

// Under netaccel the first connection to a listener goes through the monitor
// and the rest over a channel with a handful of slots, each reused many times.
TEST_F(SocketSemantics, ManyShortConnectionsEachCarryTheirOwnBytes) {
  constexpr int kConnections = 300;
  expect_netaccel_connections(kConnections);
  const int listener = listen_on();
  const uint16_t port = port_of(listener);
  std::thread server([&] {
    for (int i = 0; i < kConnections; ++i) {
      const int fd = accept(listener, nullptr, nullptr);
      ASSERT_GE(fd, 0) << strerror(errno);
      char request[32] = {};
      const ssize_t n = recv(fd, request, sizeof request, 0);
      ASSERT_GT(n, 0);
      std::string reply = "echo " + std::string(request, static_cast<std::size_t>(n));
      ASSERT_EQ(send(fd, reply.data(), reply.size(), 0), static_cast<ssize_t>(reply.size()));
      close(fd);
    }
  });
  std::set<uint16_t> client_ports;
  for (int i = 0; i < kConnections; ++i) {
    const int fd = connect_to(AF_INET, port);
    sockaddr_in local{};
    socklen_t length = sizeof local;
    ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length), 0);
    client_ports.insert(ntohs(local.sin_port));
    const std::string request = "request " + std::to_string(i);
    ASSERT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
    char reply[64] = {};
    std::size_t got = 0;
    for (;;) {
      const ssize_t n = recv(fd, reply + got, sizeof reply - 1 - got, 0);
      ASSERT_GE(n, 0) << strerror(errno);
      if (n == 0) break;
      got += static_cast<std::size_t>(n);
    }
    EXPECT_EQ(std::string(reply, got), "echo " + request);
    close(fd);
  }
  server.join();
  EXPECT_GT(client_ports.size(), kConnections / 2u) << "client ports should vary";
  close(listener);
}

TEST_F(SocketSemantics, ClosingAListenerResetsConnectionsNeverAccepted) {
  expect_netaccel_connections(4);
  const int listener = listen_on();
  const uint16_t port = port_of(listener);
  std::vector<int> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(connect_to(AF_INET, port));
  close(listener);
  for (const int fd : clients) {
    char byte;
    EXPECT_EQ(recv(fd, &byte, 1, 0), -1);
    EXPECT_EQ(errno, ECONNRESET);
    close(fd);
  }
}

TEST_F(SocketSemantics, SendfileCarriesAFileAndMovesTheOffsets) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  char path[] = "/tmp/netaccel-sendfile-XXXXXX";
  const int file = mkstemp(path);
  ASSERT_GE(file, 0);
  unlink(path);
  std::vector<unsigned char> content(300 * 1024);
  for (std::size_t i = 0; i < content.size(); ++i) content[i] = static_cast<unsigned char>(i % 251);
  ASSERT_EQ(write(file, content.data(), content.size()), static_cast<ssize_t>(content.size()));

  // With an offset of our own: the file's position does not move.
  off_t offset = 1000;
  std::vector<unsigned char> received;
  std::thread reader([&, server = server] {
    unsigned char buffer[65536];
    while (received.size() < content.size() - 1000 + 5000) {
      const ssize_t n = recv(server, buffer, sizeof buffer, 0);
      ASSERT_GT(n, 0);
      received.insert(received.end(), buffer, buffer + n);
    }
  });
  std::size_t total = 0;
  while (total < content.size() - 1000) {
    const ssize_t n = sendfile(client, file, &offset, content.size());
    ASSERT_GT(n, 0) << strerror(errno);
    total += static_cast<std::size_t>(n);
  }
  EXPECT_EQ(offset, static_cast<off_t>(content.size()));
  EXPECT_EQ(lseek(file, 0, SEEK_CUR), static_cast<off_t>(content.size()));  // from write()
  // Without one: from the file's position, which moves.
  ASSERT_EQ(lseek(file, 0, SEEK_SET), 0);
  EXPECT_EQ(sendfile(client, file, nullptr, 5000), 5000);
  EXPECT_EQ(lseek(file, 0, SEEK_CUR), 5000);
  reader.join();
  ASSERT_EQ(received.size(), content.size() - 1000 + 5000);
  EXPECT_TRUE(std::equal(content.begin() + 1000, content.end(), received.begin()));
  EXPECT_TRUE(std::equal(content.begin(), content.begin() + 5000,
                         received.begin() + static_cast<std::ptrdiff_t>(content.size() - 1000)));
  close(file);
  close(client);
  close(server);
}

TEST_F(SocketSemantics, FionreadCountsEverythingQueued) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  char bytes[100] = {};
  ASSERT_EQ(send(client, bytes, 10, 0), 10);
  pollfd readable{server, POLLIN, 0};
  ASSERT_EQ(poll(&readable, 1, 5000), 1);
  int queued = 0;
  ASSERT_EQ(ioctl(server, FIONREAD, &queued), 0);
  EXPECT_EQ(queued, 10);
  // More arrives after the reader looked: FIONREAD must count it too.
  ASSERT_EQ(send(client, bytes, 90, 0), 90);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {
    ASSERT_EQ(ioctl(server, FIONREAD, &queued), 0);
  } while (queued < 100 && std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(queued, 100);
  close(client);
  close(server);
}

// A forked child that exits without closing lets go of the connection as
// the kernel does at exit: once the parent has closed its copy too, the peer
// reads EOF.
TEST_F(SocketSemantics, ChildExitingWithoutCloseReleasesTheConnection) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) exit(0);  // exit(), not _exit(): no close() of its own
  close(client);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  char byte;
  EXPECT_EQ(recv(server, &byte, 1, 0), 0);
  close(server);
}

// Two processes share a listener and both wait on it; one closes its copy
// with connections still queued: the other accepts every one of them, as from
// the kernel's one queue per listening socket (nginx's reload does this).
TEST_F(SocketSemantics, ClosingOneCopyOfASharedListenerLosesNoConnection) {
  constexpr int kClients = 24;
  expect_netaccel_connections(kClients);
  const int listener = listen_on();
  const uint16_t port = port_of(listener);
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    pollfd waiting{listener, POLLIN, 0};
    poll(&waiting, 1, 0);  // waits on the listener like a worker's event loop
    if (write(ready[1], "r", 1) != 1) _exit(2);
    for (int accepted = 0; accepted < kClients; ++accepted) {
      const int connection = accept(listener, nullptr, nullptr);
      unsigned char byte;
      if (connection < 0 || recv(connection, &byte, 1, MSG_WAITALL) != 1) _exit(3);
      byte = static_cast<unsigned char>(byte + 1);
      if (send(connection, &byte, 1, 0) != 1) _exit(4);
      close(connection);
    }
    _exit(0);
  }
  char signal_byte;
  ASSERT_EQ(read(ready[0], &signal_byte, 1), 1);
  pollfd waiting{listener, POLLIN, 0};
  poll(&waiting, 1, 0);  // the parent waits on it too, then never accepts
  std::vector<int> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(connect_to(AF_INET, port));
    const auto byte = static_cast<unsigned char>(i);
    ASSERT_EQ(send(clients.back(), &byte, 1, 0), 1);
  }
  close(listener);
  for (int i = 0; i < kClients; ++i) {
    unsigned char byte = 0;
    EXPECT_EQ(recv(clients[i], &byte, 1, MSG_WAITALL), 1)
        << "client " << i << ": " << strerror(errno);
    EXPECT_EQ(byte, static_cast<unsigned char>(i + 1));
    close(clients[i]);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  close(ready[0]);
  close(ready[1]);
}

// _exit() runs no exit handler, and a killed child runs nothing at all: the
// connection still ends when the last process holding it lets go.
TEST_F(SocketSemantics, ChildLeavingWithoutExitHandlersReleasesTheConnection) {
  expect_netaccel_connections(2);
  for (const bool killed : {false, true}) {
    auto [client, server] = connected_pair();
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      if (killed) pause();
      _exit(0);
    }
    if (killed) kill(child, SIGKILL);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_EQ(send(client, "x", 1, 0), 1);  // the parent's copy still works
    close(client);
    char bytes[2];
    EXPECT_EQ(recv(server, bytes, sizeof bytes, MSG_WAITALL), 1) << (killed ? "killed" : "_exit");
    close(server);
  }
}

// A connection made over a channel (a client's second to a listener) is
// shared by a fork like any other; when it ends, the channel goes on
// carrying new connections in its slots, a client asleep in recv included.
TEST_F(SocketSemantics, ChannelConnectionSharedByAForkEndsAndTheChannelGoesOn) {
  constexpr int kLater = 2 * 16;  // every slot of the channel, twice
  expect_netaccel_connections(2 + kLater);
  const int listener = listen_on();
  const uint16_t port = port_of(listener);
  const pid_t server = fork();
  ASSERT_GE(server, 0);
  if (server == 0) {
    // Answers each connection's byte a little later, until one says 'q'.
    for (;;) {
      const int connection = accept(listener, nullptr, nullptr);
      char byte = 0;
      if (connection < 0 || recv(connection, &byte, 1, MSG_WAITALL) != 1) _exit(1);
      if (byte == 'q') _exit(0);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      if (send(connection, &byte, 1, 0) != 1) _exit(2);
      close(connection);
    }
  }
  close(listener);
  const auto exchange = [](int client) {
    char byte = 'x';
    return send(client, &byte, 1, 0) == 1 && recv(client, &byte, 1, 0) == 1 && byte == 'x';
  };
  const int first = connect_to(AF_INET, port);
  ASSERT_TRUE(exchange(first));
  const int shared = connect_to(AF_INET, port);  // over the channel the first one opened
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(exchange(shared));
  close(shared);
  close(first);
  for (int i = 0; i < kLater; ++i) {
    const int client = connect_to(AF_INET, port);
    EXPECT_TRUE(exchange(client)) << "connection " << i;
    close(client);
  }
  const int quit = connect_to(AF_INET, port);
  ASSERT_EQ(send(quit, "q", 1, 0), 1);
  ASSERT_EQ(waitpid(server, &status, 0), server);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  close(quit);
}

TEST_F(SocketSemantics, ManyThreadsShareOneSocket) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  constexpr int kThreads = 4;
  constexpr int kMessages = 20000;
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([client = client, t] {
      uint32_t message[4];
      for (int i = 0; i < kMessages; ++i) {
        for (uint32_t& word : message) word = static_cast<uint32_t>(t);
        ASSERT_EQ(send(client, message, sizeof message, 0), static_cast<ssize_t>(sizeof message));
      }
    });
  }
  long counts[kThreads] = {};
  for (int received = 0; received < kThreads * kMessages; ++received) {
    uint32_t message[4];
    ASSERT_EQ(recv(server, message, sizeof message, MSG_WAITALL),
              static_cast<ssize_t>(sizeof message));
    // A message is written whole by one thread: no interleaving inside it.
    ASSERT_TRUE(message[0] == message[1] && message[1] == message[2] && message[2] == message[3]);
    ASSERT_LT(message[0], static_cast<uint32_t>(kThreads));
    ++counts[message[0]];
  }
  for (std::thread& sender : senders) sender.join();
  for (long count : counts) EXPECT_EQ(count, kMessages);
  close(client);
  close(server);
}

TEST_F(SocketSemantics, ConnectionRefusedWithoutListener) {
  const int probe = listen_on(AF_INET);
  const uint16_t port = port_of(probe);
  close(probe);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_storage address = loopback(AF_INET, port);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(sockaddr_in)), -1);
  EXPECT_EQ(errno, ECONNREFUSED);
  close(fd);
}

TEST_F(SocketSemantics, UnixAndUdpSocketsAreUntouched) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  ASSERT_EQ(write(pair[0], "u", 1), 1);
  char byte;
  ASSERT_EQ(read(pair[1], &byte, 1), 1);
  close(pair[0]);
  close(pair[1]);
  const int udp = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_storage address = loopback(AF_INET, 0);
  ASSERT_EQ(bind(udp, reinterpret_cast<sockaddr*>(&address), sizeof(sockaddr_in)), 0);
  address = loopback(AF_INET, port_of(udp));
  ASSERT_EQ(sendto(udp, "d", 1, 0, reinterpret_cast<sockaddr*>(&address), sizeof(sockaddr_in)), 1);
  ASSERT_EQ(recv(udp, &byte, 1, 0), 1);
  EXPECT_EQ(byte, 'd');
  close(udp);
}

TEST_F(SocketSemantics, DupSharesTheConnection) {
  expect_netaccel_connections(1);
  auto [client, server] = connected_pair();
  const int copy = dup(client);
  ASSERT_GE(copy, 0);
  close(client);  // the duplicate keeps the connection open
  ASSERT_EQ(send(copy, "d", 1, 0), 1);
  char byte;
  ASSERT_EQ(recv(server, &byte, 1, 0), 1);
  close(copy);
  EXPECT_EQ(recv(server, &byte, 1, 0), 0);
  close(server);
}

}  // namespace

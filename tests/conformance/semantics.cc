// Semantics: shutdown, hang-ups in epoll/poll/select, SIGPIPE, EINTR and
// SA_RESTART, timeouts, non-blocking connect, MSG_* flags, options,
// addresses, sendfile/splice, epoll sets.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "conformance.h"

namespace conformance {
namespace {

constexpr const char* kArea = "semantics";

// poll() on one descriptor, printing the revents.
void show_poll(const char* label, int fd, short events, int timeout_ms = 0) {
  pollfd entry{fd, events, 0};
  const int ready = poll(&entry, 1, timeout_ms);
  if (ready < 0) {
    report(label, ready);
    return;
  }
  say("%s: %d %s", label, ready, poll_events_text(entry.revents).c_str());
}

// epoll_wait on `epfd`, printing each event as "tag=EVENTS" in the order given.
void show_epoll_wait(const char* label, int epfd, int timeout_ms = 0) {
  epoll_event events[8];
  const int ready = epoll_wait(epfd, events, 8, timeout_ms);
  if (ready < 0) {
    report(label, ready);
    return;
  }
  // The order of events for different descriptors is not specified.
  std::vector<epoll_event> sorted(events, events + ready);
  std::sort(sorted.begin(), sorted.end(),
            [](const epoll_event& a, const epoll_event& b) { return a.data.u32 < b.data.u32; });
  std::string text;
  for (const epoll_event& event : sorted) {
    text += ' ';
    text += std::to_string(event.data.u32);
    text += '=';
    text += epoll_events_text(event.events);
  }
  say("%s: %d%s", label, ready, text.c_str());
}

int epoll_watching(int fd, uint32_t events, uint32_t tag = 1) {
  const int epfd = static_cast<int>(require("epoll_create1", epoll_create1(EPOLL_CLOEXEC)));
  epoll_event event{};
  event.events = events;
  event.data.u32 = tag;
  report("epoll_ctl ADD", epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event));
  return epfd;
}

// SO_LINGER {1, 0}: closing the socket resets its connection.
void set_linger_zero(int fd) {
  linger option{1, 0};
  report("SO_LINGER", setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, sizeof option));
}

// One send of 64 KiB (on a full buffer, in these cases): its errno, or that
// it sent something.
void show_send_of_64_kib(int fd) {
  const std::vector<unsigned char> chunk = pattern(65536, 1);
  const ssize_t sent = send(fd, chunk.data(), chunk.size(), 0);
  say("send: %s", sent < 0 ? errno_name(errno).c_str() : "partial or complete");
}

void show_select(const char* label, int fd) {
  fd_set readable, writable;
  FD_ZERO(&readable);
  FD_ZERO(&writable);
  FD_SET(fd, &readable);
  FD_SET(fd, &writable);
  timeval timeout{0, 0};
  const int ready = select(fd + 1, &readable, &writable, nullptr, &timeout);
  if (ready < 0) {
    report(label, ready);
    return;
  }
  say("%s: %d readable %d writable %d", label, ready, FD_ISSET(fd, &readable) != 0,
      FD_ISSET(fd, &writable) != 0);
}

void show_so_error(const char* label, int fd) {
  int error = -1;
  socklen_t length = sizeof error;
  report(label, getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length));
  say("%s value %s", label, error == 0 ? "0" : errno_name(error).c_str());
}

// Sets an int option and prints what getsockopt reports afterwards.
void show_option_roundtrip(const char* label, int fd, int level, int name, int value) {
  report(label, setsockopt(fd, level, name, &value, sizeof value));
  int reported = -1;
  socklen_t length = sizeof reported;
  report(label, getsockopt(fd, level, name, &reported, &length));
  say("%s set %d reported %d", label, value, reported);
}

void show_timeout_option(const char* label, int fd, int name) {
  timeval value{};
  socklen_t length = sizeof value;
  report(label, getsockopt(fd, SOL_SOCKET, name, &value, &length));
  say("%s %ld.%06ld", label, static_cast<long>(value.tv_sec), static_cast<long>(value.tv_usec));
}

void set_timeout_option(int fd, int name, int milliseconds) {
  timeval value{milliseconds / 1000, (milliseconds % 1000) * 1000};
  require("setsockopt timeout", setsockopt(fd, SOL_SOCKET, name, &value, sizeof value));
}

// The peer closes; the kernel learns of it through a reset only after our
// first send, so the case sends twice with a pause between.
void send_twice_after_peer_close(int fd, int flags) {
  report("first send", send(fd, "a", 1, flags));
  sleep_ms(50);
  report("second send", send(fd, "b", 1, flags));
  say("SIGPIPE caught: %d", signals_caught());
}

// Compares the two ends' addresses: each end's local is the other's peer.
void show_address_agreement(const TcpPair& pair, int family) {
  sockaddr_storage client_local{}, client_peer{}, server_local{}, server_peer{};
  socklen_t lengths[4] = {sizeof client_local, sizeof client_peer, sizeof server_local,
                          sizeof server_peer};
  report("client getsockname",
         getsockname(pair.client, reinterpret_cast<sockaddr*>(&client_local), &lengths[0]));
  report("client getpeername",
         getpeername(pair.client, reinterpret_cast<sockaddr*>(&client_peer), &lengths[1]));
  report("server getsockname",
         getsockname(pair.server, reinterpret_cast<sockaddr*>(&server_local), &lengths[2]));
  report("server getpeername",
         getpeername(pair.server, reinterpret_cast<sockaddr*>(&server_peer), &lengths[3]));
  say("lengths %u %u %u %u, family %d", lengths[0], lengths[1], lengths[2], lengths[3],
      client_local.ss_family);
  say("client local == server peer: %d",
      memcmp(&client_local, &server_peer, address_length(family)) == 0);
  say("server local == client peer: %d",
      memcmp(&server_local, &client_peer, address_length(family)) == 0);
  char text[INET6_ADDRSTRLEN] = {};
  const void* address =
      family == AF_INET
          ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&client_local)->sin_addr)
          : &reinterpret_cast<sockaddr_in6*>(&client_local)->sin6_addr;
  inet_ntop(family, address, text, sizeof text);
  say("client local address %s", text);
}

// A file of `length` pattern bytes, unlinked, positioned at 0.
int pattern_file(size_t length, unsigned seed) {
  char path[] = "/tmp/conformance-XXXXXX";
  const int fd = static_cast<int>(require("mkstemp", mkstemp(path)));
  unlink(path);
  const std::vector<unsigned char> bytes = pattern(length, seed);
  if (write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) die("write");
  lseek(fd, 0, SEEK_SET);
  return fd;
}

// The reading side of a transfer: a thread reads `pair.server` to EOF and
// prints the count and whether the bytes match pattern(expected, seed).
std::thread verify_in_background(const TcpPair& pair, size_t expected, unsigned seed) {
  return in_background([=] {
    const Drained drained = drain(pair.server);
    const std::vector<unsigned char> bytes = pattern(expected, seed);
    say("peer got %zu bytes, intact %d", drained.bytes,
        drained.digest == digest(bytes.data(), bytes.size()));
  });
}

}  // namespace

// ---------------------------------------------------------------------------
// shutdown

CONFORMANCE_CASE(kArea, shutdown_write_peer_reads_eof, 1,
                 "SHUT_WR: the peer reads the data, then EOF, and may still send back") {
  const TcpPair pair = tcp_pair();
  send_text(pair.client, "last");
  report("shutdown SHUT_WR", shutdown(pair.client, SHUT_WR));
  recv_once("peer recv", pair.server);
  recv_once("peer recv at EOF", pair.server);
  recv_once("peer recv at EOF again", pair.server);
  send_text(pair.server, "reply after EOF");
  recv_once("half-closed end recv", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shutdown_write_then_send_epipe, 1,
                 "after SHUT_WR our own send fails with EPIPE (MSG_NOSIGNAL)") {
  const TcpPair pair = tcp_pair();
  shutdown(pair.client, SHUT_WR);
  report("send after SHUT_WR", send(pair.client, "x", 1, MSG_NOSIGNAL));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shutdown_write_then_write_raises_sigpipe, 1,
                 "after SHUT_WR write() raises SIGPIPE and fails with EPIPE") {
  const TcpPair pair = tcp_pair();
  count_signal(SIGPIPE, true);
  shutdown(pair.client, SHUT_WR);
  report("write after SHUT_WR", write(pair.client, "x", 1));
  say("SIGPIPE caught: %d", signals_caught());
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shutdown_read_recv_returns_zero, 1,
                 "SHUT_RD: recv returns 0 at once; the peer may still send") {
  const TcpPair pair = tcp_pair();
  report("shutdown SHUT_RD", shutdown(pair.client, SHUT_RD));
  recv_once("recv after SHUT_RD", pair.client);
  report("peer send", send(pair.server, "x", 1, MSG_NOSIGNAL));
  send_text(pair.client, "still writing");
  show_exact("peer read", pair.server, 13);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shutdown_read_discards_nothing_queued, 1,
                 "SHUT_RD with data already queued: what recv returns afterwards") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "queued");
  sleep_ms(20);
  report("shutdown SHUT_RD", shutdown(pair.client, SHUT_RD));
  recv_once("recv", pair.client);
  recv_once("recv again", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shutdown_both_directions, 1,
                 "SHUT_RDWR: the peer sees EOF, our recv returns 0, send fails with EPIPE") {
  const TcpPair pair = tcp_pair();
  report("shutdown SHUT_RDWR", shutdown(pair.client, SHUT_RDWR));
  recv_once("peer recv", pair.server);
  recv_once("own recv", pair.client);
  report("own send", send(pair.client, "x", 1, MSG_NOSIGNAL));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shutdown_twice_and_both_ends, 1,
                 "shutdown repeated, and both ends shutting down writing") {
  const TcpPair pair = tcp_pair();
  report("client SHUT_WR", shutdown(pair.client, SHUT_WR));
  report("client SHUT_WR again", shutdown(pair.client, SHUT_WR));
  report("server SHUT_WR", shutdown(pair.server, SHUT_WR));
  recv_once("client recv", pair.client);
  recv_once("server recv", pair.server);
  report("client SHUT_RDWR", shutdown(pair.client, SHUT_RDWR));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shutdown_invalid_how_einval, 1, "shutdown with how=7 fails with EINVAL") {
  const TcpPair pair = tcp_pair();
  report("shutdown 7", shutdown(pair.client, 7));
  report("shutdown -1", shutdown(pair.client, -1));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shutdown_unconnected_enotconn, 0,
                 "shutdown on a fresh and on a listening socket") {
  const int fresh = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  report("shutdown fresh", shutdown(fresh, SHUT_RDWR));
  close(fresh);
  const int listener = tcp_listener();
  report("shutdown listener SHUT_WR", shutdown(listener, SHUT_WR));
  close(listener);
}

CONFORMANCE_CASE(kArea, shutdown_write_with_large_data_in_flight, 1,
                 "SHUT_WR after 1 MiB: the peer gets every byte before EOF") {
  const TcpPair pair = tcp_pair();
  std::thread reader = verify_in_background(pair, 1 << 20, 3);
  const std::vector<unsigned char> data = pattern(1 << 20, 3);
  send_all(pair.client, data.data(), data.size());
  report("shutdown SHUT_WR", shutdown(pair.client, SHUT_WR));
  reader.join();
  close(pair.server);
  close(pair.client);
}

// ---------------------------------------------------------------------------
// Hang-ups as poll, epoll and select report them.

CONFORMANCE_CASE(kArea, poll_fresh_connection_writable, 1,
                 "poll on a fresh connection: writable, not readable") {
  const TcpPair pair = tcp_pair();
  show_poll("client", pair.client, POLLIN | POLLOUT | POLLRDHUP);
  show_poll("server", pair.server, POLLIN | POLLOUT | POLLRDHUP);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, poll_readable_after_send, 1, "poll reports POLLIN once data arrives") {
  const TcpPair pair = tcp_pair();
  send_text(pair.client, "x");
  show_poll("server", pair.server, POLLIN | POLLOUT, 1000);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, poll_peer_shut_write_rdhup, 1,
                 "peer SHUT_WR: POLLIN|POLLRDHUP, not POLLHUP") {
  const TcpPair pair = tcp_pair();
  shutdown(pair.server, SHUT_WR);
  sleep_ms(20);
  show_poll("client", pair.client, POLLIN | POLLOUT | POLLRDHUP);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, poll_both_shut_hup, 1,
                 "both directions shut: POLLHUP with POLLIN|POLLRDHUP") {
  const TcpPair pair = tcp_pair();
  shutdown(pair.server, SHUT_WR);
  shutdown(pair.client, SHUT_WR);
  sleep_ms(20);
  show_poll("client", pair.client, POLLIN | POLLOUT | POLLRDHUP);
  show_poll("server", pair.server, POLLIN | POLLOUT | POLLRDHUP);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, poll_peer_closed, 1, "peer closed: poll events on the surviving end") {
  const TcpPair pair = tcp_pair();
  close(pair.server);
  sleep_ms(20);
  show_poll("client", pair.client, POLLIN | POLLOUT | POLLRDHUP);
  recv_once("recv", pair.client);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, poll_peer_closed_with_unread_data_resets, 1,
                 "the peer closes with our data unread: a reset, POLLERR and ECONNRESET") {
  const TcpPair pair = tcp_pair();
  send_text(pair.client, "never read");
  sleep_ms(20);
  close(pair.server);
  sleep_ms(20);
  show_poll("client", pair.client, POLLIN | POLLOUT | POLLRDHUP);
  show_so_error("SO_ERROR", pair.client);
  recv_once("recv", pair.client);
  recv_once("recv again", pair.client);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, poll_nval_on_closed_descriptor, 0,
                 "poll on a closed descriptor: POLLNVAL") {
  const int fd = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  close(fd);
  show_poll("closed", fd, POLLIN);
}

CONFORMANCE_CASE(kArea, poll_fresh_unconnected_socket, 0,
                 "poll on a socket that never connected: POLLOUT|POLLHUP") {
  const int fd = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  show_poll("fresh", fd, POLLIN | POLLOUT | POLLRDHUP);
  close(fd);
}

CONFORMANCE_CASE(kArea, poll_listener_readable_on_pending_connection, 1,
                 "a listener polls readable once a connection waits in its backlog") {
  const int listener = tcp_listener();
  show_poll("listener idle", listener, POLLIN | POLLOUT);
  const int client = tcp_connect(local_port(listener));
  show_poll("listener with pending", listener, POLLIN | POLLOUT, 1000);
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  show_poll("listener drained", listener, POLLIN | POLLOUT);
  close(server);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, poll_mixed_socket_and_pipe, 1,
                 "one poll over a socket and a pipe reports each correctly") {
  const TcpPair pair = tcp_pair();
  int pipe_ends[2];
  require("pipe", pipe(pipe_ends));
  require("write", write(pipe_ends[1], "p", 1));
  pollfd entries[2] = {{pair.client, POLLIN, 0}, {pipe_ends[0], POLLIN, 0}};
  report("poll", poll(entries, 2, 0));
  say("socket %s pipe %s", poll_events_text(entries[0].revents).c_str(),
      poll_events_text(entries[1].revents).c_str());
  send_text(pair.server, "s");
  report("poll", poll(entries, 2, 1000));
  say("socket %s pipe %s", poll_events_text(entries[0].revents).c_str(),
      poll_events_text(entries[1].revents).c_str());
  close(pipe_ends[0]);
  close(pipe_ends[1]);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, poll_waits_for_data, 1,
                 "poll with a timeout wakes when the peer sends from another thread") {
  const TcpPair pair = tcp_pair();
  std::thread helper = in_background([&] {
    sleep_ms(50);
    send_text(pair.server, "late");
  });
  show_poll("client", pair.client, POLLIN, 5000);
  helper.join();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, ppoll_with_signal_mask, 1,
                 "ppoll with a signal mask reports readiness like poll") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "x");
  pollfd entry{pair.client, POLLIN, 0};
  sigset_t mask;
  sigemptyset(&mask);
  timespec timeout{1, 0};
  report("ppoll", ppoll(&entry, 1, &timeout, &mask));
  say("revents %s", poll_events_text(entry.revents).c_str());
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, select_readable_and_writable, 1,
                 "select: writable at first, readable after data, both after EOF") {
  const TcpPair pair = tcp_pair();
  show_select("fresh", pair.client);
  send_text(pair.server, "x");
  sleep_ms(20);
  show_select("with data", pair.client);
  close(pair.server);
  sleep_ms(20);
  recv_once("recv", pair.client);
  show_select("after EOF", pair.client);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, select_timeout_expires, 1, "select with nothing ready returns 0") {
  const TcpPair pair = tcp_pair();
  fd_set readable;
  FD_ZERO(&readable);
  FD_SET(pair.client, &readable);
  timeval timeout{0, 50000};
  report("select", select(pair.client + 1, &readable, nullptr, nullptr, &timeout));
  say("readable %d", FD_ISSET(pair.client, &readable) != 0);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, pselect_readable, 1, "pselect reports a readable socket") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "x");
  fd_set readable;
  FD_ZERO(&readable);
  FD_SET(pair.client, &readable);
  timespec timeout{1, 0};
  sigset_t mask;
  sigemptyset(&mask);
  report("pselect", pselect(pair.client + 1, &readable, nullptr, nullptr, &timeout, &mask));
  say("readable %d", FD_ISSET(pair.client, &readable) != 0);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_fresh_connection_out, 1,
                 "epoll on a fresh connection: EPOLLOUT only") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
  show_epoll_wait("epoll_wait", epfd);
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_peer_shut_write_rdhup, 1,
                 "peer SHUT_WR: EPOLLIN|EPOLLRDHUP; both shut: EPOLLHUP too") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
  shutdown(pair.server, SHUT_WR);
  sleep_ms(20);
  show_epoll_wait("after peer SHUT_WR", epfd);
  shutdown(pair.client, SHUT_WR);
  sleep_ms(20);
  show_epoll_wait("after both SHUT_WR", epfd);
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_rdhup_not_requested, 1,
                 "peer SHUT_WR without EPOLLRDHUP in the mask: EPOLLIN only") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN);
  shutdown(pair.server, SHUT_WR);
  sleep_ms(20);
  show_epoll_wait("epoll_wait", epfd);
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_peer_closed_hup, 1, "peer closed: the events on the surviving end") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
  close(pair.server);
  sleep_ms(20);
  show_epoll_wait("after peer close", epfd);
  report("send", send(pair.client, "x", 1, MSG_NOSIGNAL));
  sleep_ms(20);
  show_epoll_wait("after send to closed peer", epfd);
  close(epfd);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, epoll_hup_and_err_always_reported, 1,
                 "EPOLLHUP and EPOLLERR are reported even with an empty event mask") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, 0);
  show_epoll_wait("idle", epfd);
  shutdown(pair.client, SHUT_RDWR);
  sleep_ms(20);
  show_epoll_wait("after SHUT_RDWR", epfd);
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_edge_triggered_once_per_arrival, 1,
                 "EPOLLET: one event per arrival, none while data stays unread") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN | EPOLLET);
  send_text(pair.server, "one");
  sleep_ms(20);
  show_epoll_wait("first arrival", epfd, 1000);
  show_epoll_wait("no new data", epfd);
  send_text(pair.server, "two");
  sleep_ms(20);
  show_epoll_wait("second arrival", epfd, 1000);
  recv_once("recv", pair.client);
  show_epoll_wait("after draining", epfd);
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_edge_triggered_reports_whole_mask, 1,
                 "EPOLLIN|EPOLLOUT|EPOLLET: a new arrival reports every ready event, IN and OUT") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN | EPOLLOUT | EPOLLET);
  show_epoll_wait("fresh", epfd, 1000);
  show_epoll_wait("nothing new", epfd);
  send_text(pair.server, "x");
  show_epoll_wait("after arrival", epfd, 1000);
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_level_triggered_repeats, 1,
                 "level-triggered: EPOLLIN repeats until the data is read") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN);
  send_text(pair.server, "data");
  show_epoll_wait("first", epfd, 1000);
  show_epoll_wait("second", epfd);
  recv_once("recv", pair.client);
  show_epoll_wait("after read", epfd);
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_oneshot_needs_rearm, 1,
                 "EPOLLONESHOT: one event, then nothing until EPOLL_CTL_MOD re-arms") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN | EPOLLONESHOT);
  send_text(pair.server, "a");
  show_epoll_wait("first", epfd, 1000);
  send_text(pair.server, "b");
  sleep_ms(20);
  show_epoll_wait("disarmed", epfd);
  epoll_event event{};
  event.events = EPOLLIN | EPOLLONESHOT;
  event.data.u32 = 2;
  report("epoll_ctl MOD", epoll_ctl(epfd, EPOLL_CTL_MOD, pair.client, &event));
  show_epoll_wait("re-armed", epfd);
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_ctl_mod_del_and_errors, 1,
                 "EPOLL_CTL_MOD changes the mask, DEL removes; EEXIST and ENOENT") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u32 = 1;
  report("ADD again", epoll_ctl(epfd, EPOLL_CTL_ADD, pair.client, &event));
  show_epoll_wait("EPOLLIN only", epfd);
  event.events = EPOLLOUT;
  report("MOD to EPOLLOUT", epoll_ctl(epfd, EPOLL_CTL_MOD, pair.client, &event));
  show_epoll_wait("EPOLLOUT", epfd);
  report("DEL", epoll_ctl(epfd, EPOLL_CTL_DEL, pair.client, nullptr));
  show_epoll_wait("after DEL", epfd);
  report("DEL again", epoll_ctl(epfd, EPOLL_CTL_DEL, pair.client, nullptr));
  report("MOD after DEL", epoll_ctl(epfd, EPOLL_CTL_MOD, pair.client, &event));
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_two_instances_watch_one_socket, 1,
                 "two epoll instances on one socket both report it") {
  const TcpPair pair = tcp_pair();
  const int first = epoll_watching(pair.client, EPOLLIN, 1);
  const int second = epoll_watching(pair.client, EPOLLIN | EPOLLET, 2);
  send_text(pair.server, "x");
  show_epoll_wait("first instance", first, 1000);
  show_epoll_wait("second instance", second, 1000);
  show_epoll_wait("second instance again", second);
  show_epoll_wait("first instance again", first);
  close(first);
  close(second);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_nested_instance, 1,
                 "an epoll instance inside another reports readiness of the inner socket") {
  const TcpPair pair = tcp_pair();
  const int inner = epoll_watching(pair.client, EPOLLIN, 1);
  const int outer = epoll_watching(inner, EPOLLIN, 9);
  show_epoll_wait("outer idle", outer);
  send_text(pair.server, "x");
  show_epoll_wait("outer", outer, 1000);
  show_epoll_wait("inner", inner);
  close(outer);
  close(inner);
  close_pair(pair);
}

CONFORMANCE_CASE(
    kArea, epoll_duplicate_descriptors_are_separate, 1,
    "a socket and its dup are two epoll registrations, both alive while the file is open") {
  const TcpPair pair = tcp_pair();
  const int copy = static_cast<int>(require("dup", dup(pair.client)));
  const int epfd = epoll_watching(pair.client, EPOLLIN, 1);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u32 = 2;
  report("ADD dup", epoll_ctl(epfd, EPOLL_CTL_ADD, copy, &event));
  send_text(pair.server, "x");
  sleep_ms(20);
  show_epoll_wait("both", epfd);
  close(copy);
  show_epoll_wait("after closing the dup", epfd);
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_nested_instance_wakes_blocked_wait, 1,
                 "an empty epoll nested first, the socket added to it later: the outer wakes") {
  const TcpPair pair = tcp_pair();
  const int inner = static_cast<int>(require("epoll_create1", epoll_create1(EPOLL_CLOEXEC)));
  const int outer = epoll_watching(inner, EPOLLIN, 9);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u32 = 1;
  report("ADD socket to inner", epoll_ctl(inner, EPOLL_CTL_ADD, pair.client, &event));
  std::thread helper = in_background([&] {
    sleep_ms(100);
    send_text(pair.server, "x");
  });
  show_epoll_wait("outer", outer, 5000);
  helper.join();
  show_epoll_wait("inner", inner);
  recv_once("recv", pair.client);
  show_epoll_wait("outer after reading", outer);
  report("DEL inner", epoll_ctl(outer, EPOLL_CTL_DEL, inner, nullptr));
  close(outer);
  close(inner);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_registration_outlives_its_descriptor, 1,
                 "a registration stays while a dup keeps the file open, keyed by the closed fd") {
  const TcpPair pair = tcp_pair();
  const int copy = static_cast<int>(require("dup", dup(pair.client)));
  const int epfd = epoll_watching(pair.client, EPOLLIN, 1);
  const int original = pair.client;
  close(original);
  send_text(pair.server, "x");
  show_epoll_wait("after closing the registered descriptor", epfd, 1000);
  report("DEL the dup", epoll_ctl(epfd, EPOLL_CTL_DEL, copy, nullptr));
  report("DEL the closed descriptor", epoll_ctl(epfd, EPOLL_CTL_DEL, original, nullptr));
  close(copy);
  show_epoll_wait("after closing the dup too", epfd);
  close(epfd);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, epoll_close_removes_registration, 1,
                 "closing the only descriptor of a socket removes it from epoll") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN | EPOLLOUT);
  show_epoll_wait("before close", epfd);
  close(pair.client);
  show_epoll_wait("after close", epfd);
  close(epfd);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, epoll_listener_and_connections, 2,
                 "one epoll set over a listener and its accepted connections") {
  const int listener = tcp_listener();
  const int epfd = epoll_watching(listener, EPOLLIN, 100);
  const int first = tcp_connect(local_port(listener));
  show_epoll_wait("pending connection", epfd, 1000);
  const int accepted = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  epoll_event event{};
  event.events = EPOLLIN | EPOLLRDHUP;
  event.data.u32 = 1;
  report("ADD accepted", epoll_ctl(epfd, EPOLL_CTL_ADD, accepted, &event));
  send_text(first, "req");
  show_epoll_wait("request", epfd, 1000);
  recv_once("recv", accepted);
  const int second = tcp_connect(local_port(listener));
  close(first);
  sleep_ms(20);
  show_epoll_wait("second pending and first closed", epfd, 1000);
  close(second);
  close(accepted);
  close(epfd);
  close(listener);
}

CONFORMANCE_CASE(kArea, epoll_writable_again_after_full, 1,
                 "EPOLLET EPOLLOUT: not writable when full, an event once the peer drains") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLOUT | EPOLLET);
  show_epoll_wait("fresh", epfd);
  const size_t filled = fill_until_blocked(pair.client);
  show_epoll_wait("full", epfd);
  std::thread helper = in_background([&] { drain(pair.server); });
  show_epoll_wait("drained", epfd, 5000);
  say("filled more than 0: %d", filled > 0);
  close(pair.client);
  helper.join();
  close(epfd);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, epoll_wait_blocks_until_data, 1,
                 "epoll_wait with a timeout wakes when another thread sends") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN);
  std::thread helper = in_background([&] {
    sleep_ms(50);
    send_text(pair.server, "x");
  });
  show_epoll_wait("epoll_wait", epfd, 5000);
  helper.join();
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_inherited_by_child, 1,
                 "a child waits on an epoll instance inherited from its parent") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN);
  const pid_t pid = fork_child([&] {
    show_epoll_wait("child epoll_wait", epfd, 5000);
    recv_once("child recv", pair.client);
  });
  sleep_ms(50);
  send_text(pair.server, "to child");
  wait_child("child", pid);
  close(epfd);
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// SIGPIPE and MSG_NOSIGNAL

CONFORMANCE_CASE(kArea, sigpipe_kills_by_default, 1,
                 "writing to a closed peer kills the process with SIGPIPE by default") {
  const TcpPair pair = tcp_pair();
  close(pair.server);
  const pid_t pid = fork_child([&] { send_twice_after_peer_close(pair.client, 0); });
  wait_child("writer", pid);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, sigpipe_caught_then_epipe, 1,
                 "with a SIGPIPE handler: the send fails with EPIPE and the handler ran once") {
  const TcpPair pair = tcp_pair();
  count_signal(SIGPIPE, true);
  close(pair.server);
  send_twice_after_peer_close(pair.client, 0);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, msg_nosignal_suppresses_sigpipe, 1, "MSG_NOSIGNAL: EPIPE without SIGPIPE") {
  const TcpPair pair = tcp_pair();
  count_signal(SIGPIPE, true);
  close(pair.server);
  send_twice_after_peer_close(pair.client, MSG_NOSIGNAL);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, sigpipe_ignored_gives_epipe, 1, "SIGPIPE ignored: write fails with EPIPE") {
  const TcpPair pair = tcp_pair();
  signal(SIGPIPE, SIG_IGN);
  close(pair.server);
  report("first write", write(pair.client, "a", 1));
  sleep_ms(50);
  report("second write", write(pair.client, "b", 1));
  report("third write", write(pair.client, "c", 1));
  close(pair.client);
}

CONFORMANCE_CASE(kArea, sigpipe_from_writev_and_sendmsg, 1,
                 "writev and sendmsg raise SIGPIPE too; sendmsg honours MSG_NOSIGNAL") {
  const TcpPair pair = tcp_pair();
  count_signal(SIGPIPE, true);
  shutdown(pair.client, SHUT_WR);
  char byte = 'x';
  iovec vector{&byte, 1};
  report("writev", writev(pair.client, &vector, 1));
  say("SIGPIPE caught: %d", signals_caught());
  msghdr message{};
  message.msg_iov = &vector;
  message.msg_iovlen = 1;
  report("sendmsg", sendmsg(pair.client, &message, 0));
  say("SIGPIPE caught: %d", signals_caught());
  report("sendmsg MSG_NOSIGNAL", sendmsg(pair.client, &message, MSG_NOSIGNAL));
  say("SIGPIPE caught: %d", signals_caught());
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// EINTR and SA_RESTART

CONFORMANCE_CASE(kArea, recv_interrupted_without_restart, 1,
                 "a signal without SA_RESTART interrupts a blocking recv with EINTR") {
  const TcpPair pair = tcp_pair();
  count_signal(SIGALRM, false);
  alarm_after_ms(50);
  recv_once("recv", pair.client);
  say("signals caught: %d", signals_caught());
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, recv_restarted_with_sa_restart, 1,
                 "with SA_RESTART a blocking recv survives a signal and returns the data") {
  const TcpPair pair = tcp_pair();
  count_signal(SIGALRM, true);
  std::thread helper = in_background([&] {
    sleep_ms(150);
    send_text(pair.server, "after signal");
  });
  alarm_after_ms(50);
  recv_once("recv", pair.client);
  say("signals caught: %d", signals_caught());
  helper.join();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, read_interrupted_without_restart, 1,
                 "read(2) on a socket is interrupted with EINTR as well") {
  const TcpPair pair = tcp_pair();
  count_signal(SIGALRM, false);
  alarm_after_ms(50);
  char byte;
  report("read", read(pair.client, &byte, 1));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, send_interrupted_on_full_buffer, 1,
                 "a send blocked on a full buffer is interrupted by a signal") {
  const TcpPair pair = tcp_pair();
  fill_until_blocked(pair.client);
  count_signal(SIGALRM, false);
  alarm_after_ms(50);
  show_send_of_64_kib(pair.client);
  say("signals caught: %d", signals_caught());
  close_pair(pair);
}

CONFORMANCE_CASE(
    kArea, send_restarted_with_sa_restart, 1,
    "with SA_RESTART a send blocked on a full buffer completes after the reader drains") {
  const TcpPair pair = tcp_pair();
  const size_t filled = fill_until_blocked(pair.client);
  count_signal(SIGALRM, true);
  std::thread helper = in_background([&] {
    sleep_ms(150);
    const Drained drained = drain(pair.server);
    say("reader got all: %d", drained.bytes == filled + 65536);
  });
  alarm_after_ms(50);
  const std::vector<unsigned char> chunk = pattern(65536, 7);
  send_all(pair.client, chunk.data(), chunk.size());
  say("signals caught: %d", signals_caught());
  close(pair.client);
  helper.join();
  close(pair.server);
}

CONFORMANCE_CASE(kArea, accept_interrupted_without_restart, 0,
                 "a blocking accept is interrupted with EINTR") {
  const int listener = tcp_listener();
  count_signal(SIGALRM, false);
  alarm_after_ms(50);
  report("accept", accept(listener, nullptr, nullptr));
  close(listener);
}

CONFORMANCE_CASE(kArea, accept_restarted_with_sa_restart, 1,
                 "with SA_RESTART a blocking accept survives a signal") {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  count_signal(SIGALRM, true);
  std::thread helper = in_background([&] {
    sleep_ms(150);
    close(tcp_connect(port));
  });
  alarm_after_ms(50);
  const int server = accept(listener, nullptr, nullptr);
  say("accept succeeded: %d", server >= 0);
  say("signals caught: %d", signals_caught());
  helper.join();
  close(server);
  close(listener);
}

volatile sig_atomic_t g_info_signals = 0;
void on_info_signal(int, siginfo_t* info, void*) {
  g_info_signals = g_info_signals + (info->si_signo == SIGALRM);
}

CONFORMANCE_CASE(kArea, recv_restarted_after_signal_function, 1,
                 "a handler installed with signal() restarts a blocking recv (BSD semantics)") {
  const TcpPair pair = tcp_pair();
  signal(SIGALRM, [](int) {});
  std::thread helper = in_background([&] {
    sleep_ms(150);
    send_text(pair.server, "restarted");
  });
  alarm_after_ms(50);
  recv_once("recv", pair.client);
  helper.join();
  signal(SIGALRM, SIG_DFL);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, recv_interrupted_after_clearing_sa_restart, 1,
                 "signal(), then SA_RESTART cleared as CPython's siginterrupt does: EINTR") {
  const TcpPair pair = tcp_pair();
  signal(SIGALRM, [](int) {});
  struct sigaction action {};
  sigaction(SIGALRM, nullptr, &action);
  action.sa_flags &= ~SA_RESTART;
  require("sigaction", sigaction(SIGALRM, &action, nullptr));
  alarm_after_ms(50);
  recv_once("recv", pair.client);
  signal(SIGALRM, SIG_DFL);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, recv_restarted_with_siginfo_handler, 1,
                 "an SA_SIGINFO|SA_RESTART handler gets its siginfo and the recv restarts") {
  const TcpPair pair = tcp_pair();
  struct sigaction action {};
  action.sa_sigaction = on_info_signal;
  action.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&action.sa_mask);
  require("sigaction", sigaction(SIGALRM, &action, nullptr));
  struct sigaction reported {};
  sigaction(SIGALRM, nullptr, &reported);
  say("handler reported as installed: %d",
      (reported.sa_flags & SA_SIGINFO) != 0 && reported.sa_sigaction == on_info_signal);
  std::thread helper = in_background([&] {
    sleep_ms(150);
    send_text(pair.server, "after siginfo");
  });
  alarm_after_ms(50);
  recv_once("recv", pair.client);
  say("siginfo signals: %d", static_cast<int>(g_info_signals));
  helper.join();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, send_with_timeout_not_restarted, 1,
                 "SO_SNDTIMEO set: a send on a full buffer is interrupted despite SA_RESTART") {
  const TcpPair pair = tcp_pair();
  fill_until_blocked(pair.client);
  set_timeout_option(pair.client, SO_SNDTIMEO, 2000);
  count_signal(SIGALRM, true);
  alarm_after_ms(50);
  show_send_of_64_kib(pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, accept_with_timeout_not_restarted, 0,
                 "SO_RCVTIMEO on a listener: accept is interrupted despite SA_RESTART") {
  const int listener = tcp_listener();
  set_timeout_option(listener, SO_RCVTIMEO, 2000);
  count_signal(SIGALRM, true);
  alarm_after_ms(50);
  report("accept", accept(listener, nullptr, nullptr));
  close(listener);
}

CONFORMANCE_CASE(kArea, poll_interrupted_even_with_sa_restart, 1,
                 "poll is never restarted: EINTR even with SA_RESTART") {
  const TcpPair pair = tcp_pair();
  count_signal(SIGALRM, true);
  alarm_after_ms(50);
  pollfd entry{pair.client, POLLIN, 0};
  report("poll", poll(&entry, 1, 5000));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_wait_interrupted_even_with_sa_restart, 1,
                 "epoll_wait is never restarted: EINTR even with SA_RESTART") {
  const TcpPair pair = tcp_pair();
  const int epfd = epoll_watching(pair.client, EPOLLIN);
  count_signal(SIGALRM, true);
  alarm_after_ms(50);
  epoll_event event;
  report("epoll_wait", epoll_wait(epfd, &event, 1, 5000));
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, select_interrupted_even_with_sa_restart, 1,
                 "select is never restarted: EINTR even with SA_RESTART") {
  const TcpPair pair = tcp_pair();
  count_signal(SIGALRM, true);
  alarm_after_ms(50);
  fd_set readable;
  FD_ZERO(&readable);
  FD_SET(pair.client, &readable);
  timeval timeout{5, 0};
  report("select", select(pair.client + 1, &readable, nullptr, nullptr, &timeout));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, recv_with_timeout_not_restarted, 1,
                 "SO_RCVTIMEO set: recv is interrupted with EINTR despite SA_RESTART") {
  const TcpPair pair = tcp_pair();
  set_timeout_option(pair.client, SO_RCVTIMEO, 2000);
  count_signal(SIGALRM, true);
  alarm_after_ms(50);
  recv_once("recv", pair.client);
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// SO_RCVTIMEO / SO_SNDTIMEO

CONFORMANCE_CASE(kArea, rcvtimeo_recv_times_out_eagain, 1,
                 "SO_RCVTIMEO: a blocking recv gives up with EAGAIN") {
  const TcpPair pair = tcp_pair();
  set_timeout_option(pair.client, SO_RCVTIMEO, 100);
  recv_once("recv", pair.client);
  send_text(pair.server, "now");
  recv_once("recv with data", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, timeout_options_reported, 1,
                 "SO_RCVTIMEO and SO_SNDTIMEO read back as set") {
  const TcpPair pair = tcp_pair();
  show_timeout_option("SO_RCVTIMEO default", pair.client, SO_RCVTIMEO);
  set_timeout_option(pair.client, SO_RCVTIMEO, 1500);
  set_timeout_option(pair.client, SO_SNDTIMEO, 250);
  show_timeout_option("SO_RCVTIMEO", pair.client, SO_RCVTIMEO);
  show_timeout_option("SO_SNDTIMEO", pair.client, SO_SNDTIMEO);
  timeval invalid{0, 2000000};
  report("SO_RCVTIMEO invalid usec",
         setsockopt(pair.client, SOL_SOCKET, SO_RCVTIMEO, &invalid, sizeof invalid));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, sndtimeo_send_times_out, 1,
                 "SO_SNDTIMEO: a send on a full buffer gives up with EAGAIN") {
  const TcpPair pair = tcp_pair();
  fill_until_blocked(pair.client);
  set_timeout_option(pair.client, SO_SNDTIMEO, 100);
  show_send_of_64_kib(pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, rcvtimeo_accept_times_out, 0,
                 "SO_RCVTIMEO on a listener: accept gives up with EAGAIN") {
  const int listener = tcp_listener();
  set_timeout_option(listener, SO_RCVTIMEO, 100);
  report("accept", accept(listener, nullptr, nullptr));
  close(listener);
}

CONFORMANCE_CASE(kArea, rcvtimeo_set_before_connect, 1,
                 "SO_RCVTIMEO set before connect still applies afterwards") {
  const int listener = tcp_listener();
  const int client = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  set_timeout_option(client, SO_RCVTIMEO, 100);
  report("connect", tcp_connect_result(client, local_port(listener)));
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  show_timeout_option("SO_RCVTIMEO", client, SO_RCVTIMEO);
  recv_once("recv", client);
  close(server);
  close(client);
  close(listener);
}

// ---------------------------------------------------------------------------
// connect

CONFORMANCE_CASE(kArea, nonblocking_connect_completes, 1,
                 "non-blocking connect: EINPROGRESS, then writable with SO_ERROR 0") {
  const int listener = tcp_listener();
  const int client =
      static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)));
  const int result = tcp_connect_result(client, local_port(listener));
  say("connect: %s", result == 0 ? "0" : errno_name(errno).c_str());
  show_poll("poll", client, POLLOUT, 5000);
  show_so_error("SO_ERROR", client);
  const int again = tcp_connect_result(client, local_port(listener));
  say("connect again: %s", again == 0 ? "0" : errno_name(errno).c_str());
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  send_text(client, "nb");
  show_exact("server read", server, 2);
  close(server);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, nonblocking_connect_refused, 0,
                 "non-blocking connect to a closed port: SO_ERROR ECONNREFUSED") {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  close(listener);
  const int client =
      static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)));
  const int result = tcp_connect_result(client, port);
  say("connect: %s", result == 0 ? "0" : errno_name(errno).c_str());
  show_poll("poll", client, POLLIN | POLLOUT, 5000);
  show_so_error("SO_ERROR", client);
  show_so_error("SO_ERROR again", client);
  close(client);
}

CONFORMANCE_CASE(kArea, nonblocking_connect_epoll_out, 1,
                 "non-blocking connect watched by epoll reports EPOLLOUT") {
  const int listener = tcp_listener();
  const int client =
      static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)));
  tcp_connect_result(client, local_port(listener));
  const int epfd = epoll_watching(client, EPOLLOUT | EPOLLET);
  show_epoll_wait("epoll_wait", epfd, 5000);
  show_so_error("SO_ERROR", client);
  close(epfd);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, blocking_connect_refused, 0,
                 "blocking connect to a closed port fails with ECONNREFUSED") {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  close(listener);
  const int client = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  report("connect", tcp_connect_result(client, port));
  report("connect again", tcp_connect_result(client, port));
  close(client);
}

CONFORMANCE_CASE(kArea, connect_twice_eisconn, 1,
                 "connect on a connected socket fails with EISCONN") {
  const int listener = tcp_listener();
  const int client = tcp_connect(local_port(listener));
  report("connect again", tcp_connect_result(client, local_port(listener)));
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, connect_wrong_family_and_length, 0,
                 "connect with a wrong address family or short length") {
  const int client = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  const sockaddr_storage six = loopback_address(AF_INET6, 9);
  report("connect AF_INET6 address",
         connect(client, reinterpret_cast<const sockaddr*>(&six), address_length(AF_INET6)));
  const sockaddr_storage four = loopback_address(AF_INET, 9);
  report("connect short length", connect(client, reinterpret_cast<const sockaddr*>(&four), 4));
  close(client);
}

CONFORMANCE_CASE(kArea, unconnected_socket_operations, 0,
                 "send, recv and getpeername on a socket that never connected") {
  const int fd = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  char byte = 0;
  report("send", send(fd, &byte, 1, MSG_NOSIGNAL));
  report("recv", recv(fd, &byte, 1, MSG_DONTWAIT));
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  report("getpeername", getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length));
  length = sizeof address;
  report("getsockname", getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length));
  say("getsockname family %d port %d", address.ss_family,
      ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port));
  close(fd);
}

CONFORMANCE_CASE(kArea, connect_from_bound_port, 1,
                 "a client bound to a chosen port connects from that port") {
  const int listener = tcp_listener();
  const int reserve = tcp_listener();
  const uint16_t chosen = local_port(reserve);
  close(reserve);
  const int client = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  set_int_option(client, SOL_SOCKET, SO_REUSEADDR, 1);
  const sockaddr_storage address = loopback_address(AF_INET, chosen);
  report("bind", bind(client, reinterpret_cast<const sockaddr*>(&address), sizeof(sockaddr_in)));
  report("connect", tcp_connect_result(client, local_port(listener)));
  sockaddr_in peer{};
  socklen_t length = sizeof peer;
  const int server = static_cast<int>(
      require("accept", accept(listener, reinterpret_cast<sockaddr*>(&peer), &length)));
  say("server sees the chosen port: %d", ntohs(peer.sin_port) == chosen);
  say("client local port is the chosen one: %d", local_port(client) == chosen);
  close(server);
  close(client);
  close(listener);
}

// ---------------------------------------------------------------------------
// MSG_PEEK / MSG_WAITALL / MSG_DONTWAIT / other flags

CONFORMANCE_CASE(kArea, msg_peek_leaves_data, 1, "MSG_PEEK returns data and leaves it queued") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "peekaboo");
  sleep_ms(20);
  recv_once("peek 4", pair.client, 4, MSG_PEEK);
  recv_once("peek all", pair.client, 64, MSG_PEEK);
  recv_once("recv 3", pair.client, 3);
  recv_once("peek rest", pair.client, 64, MSG_PEEK);
  recv_once("recv rest", pair.client, 64);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, msg_peek_blocks_for_data, 1,
                 "a blocking MSG_PEEK waits for data, then leaves it for recv") {
  const TcpPair pair = tcp_pair();
  std::thread helper = in_background([&] {
    sleep_ms(50);
    send_text(pair.server, "later");
  });
  recv_once("peek", pair.client, 64, MSG_PEEK);
  helper.join();
  recv_once("recv", pair.client, 64);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, msg_peek_at_eof_and_empty, 1,
                 "MSG_PEEK|MSG_DONTWAIT on an empty socket, then at EOF") {
  const TcpPair pair = tcp_pair();
  recv_once("peek empty", pair.client, 8, MSG_PEEK | MSG_DONTWAIT);
  close(pair.server);
  sleep_ms(20);
  recv_once("peek at EOF", pair.client, 8, MSG_PEEK);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, msg_peek_with_waitall, 1,
                 "MSG_PEEK|MSG_WAITALL waits until the whole length can be peeked") {
  const TcpPair pair = tcp_pair();
  std::thread helper = in_background([&] {
    send_text(pair.server, "ab");
    sleep_ms(50);
    send_text(pair.server, "cd");
  });
  recv_once("peek waitall 4", pair.client, 4, MSG_PEEK | MSG_WAITALL);
  helper.join();
  recv_once("recv", pair.client, 4);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, msg_peek_with_waitall_short, 1,
                 "MSG_PEEK|MSG_WAITALL returns short without waiting (DONTWAIT) or at EOF") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "ab");
  sleep_ms(20);
  recv_once("peek waitall dontwait 4", pair.client, 4, MSG_PEEK | MSG_WAITALL | MSG_DONTWAIT);
  close(pair.server);
  sleep_ms(20);
  recv_once("peek waitall at EOF 4", pair.client, 4, MSG_PEEK | MSG_WAITALL);
  recv_once("recv", pair.client, 4);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, msg_waitall_collects_pieces, 1,
                 "MSG_WAITALL returns only when every requested byte arrived") {
  const TcpPair pair = tcp_pair();
  std::thread helper = in_background([&] {
    for (const char* piece : {"one-", "two-", "three"}) {
      send_text(pair.server, piece);
      sleep_ms(30);
    }
  });
  recv_once("recv waitall 13", pair.client, 13, MSG_WAITALL);
  helper.join();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, msg_waitall_short_at_eof, 1,
                 "MSG_WAITALL returns short when the peer closes first") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "short");
  close(pair.server);
  recv_once("recv waitall 100", pair.client, 100, MSG_WAITALL);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, msg_waitall_large, 1, "MSG_WAITALL of 2 MiB arriving in many writes") {
  const TcpPair pair = tcp_pair();
  const std::vector<unsigned char> data = pattern(2 << 20, 5);
  std::thread helper = in_background([&] {
    for (size_t offset = 0; offset < data.size(); offset += 10000) {
      send_all(pair.server, data.data() + offset, std::min<size_t>(10000, data.size() - offset));
    }
  });
  std::vector<unsigned char> received(data.size());
  report("recv waitall", recv(pair.client, received.data(), received.size(), MSG_WAITALL));
  say("intact %d", received == data);
  helper.join();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, msg_dontwait_on_blocking_socket, 1,
                 "MSG_DONTWAIT makes one recv non-blocking without changing the socket") {
  const TcpPair pair = tcp_pair();
  recv_once("recv MSG_DONTWAIT", pair.client, 8, MSG_DONTWAIT);
  say("O_NONBLOCK afterwards: %d", (fcntl(pair.client, F_GETFL) & O_NONBLOCK) != 0);
  send_text(pair.server, "ready");
  sleep_ms(20);
  recv_once("recv MSG_DONTWAIT with data", pair.client, 8, MSG_DONTWAIT);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, msg_dontwait_send_on_full_buffer, 1,
                 "send MSG_DONTWAIT on a full buffer fails with EAGAIN") {
  const TcpPair pair = tcp_pair();
  fill_until_blocked(pair.client);
  char byte = 'x';
  report("send MSG_DONTWAIT", send(pair.client, &byte, 1, MSG_DONTWAIT));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, msg_trunc_discards_bytes, 1,
                 "recv MSG_TRUNC on TCP discards the bytes without copying them") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "discard-keep");
  sleep_ms(20);
  report("recv MSG_TRUNC 8", recv(pair.client, nullptr, 8, MSG_TRUNC));
  recv_once("recv rest", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, msg_oob_urgent_byte, 1, "MSG_OOB: the urgent byte read out of band") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "normal");
  report("send MSG_OOB", send(pair.server, "U", 1, MSG_OOB));
  sleep_ms(20);
  char urgent = 0;
  report("recv MSG_OOB", recv(pair.client, &urgent, 1, MSG_OOB));
  say("urgent byte %c", urgent);
  recv_once("recv", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, msg_oob_readiness_and_mark, 1,
                 "urgent data: POLLPRI, select's exceptional set, SIOCATMARK, read only once") {
  const TcpPair pair = tcp_pair();
  char urgent = 0;
  report("recv MSG_OOB before any", recv(pair.client, &urgent, 1, MSG_OOB));
  report("send MSG_OOB", send(pair.server, "abU", 3, MSG_OOB));
  sleep_ms(20);
  show_poll("poll", pair.client, POLLIN | POLLPRI);
  fd_set exceptional;
  FD_ZERO(&exceptional);
  FD_SET(pair.client, &exceptional);
  timeval timeout{0, 0};
  report("select exceptional", select(pair.client + 1, nullptr, nullptr, &exceptional, &timeout));
  int at_mark = -1;
  ioctl(pair.client, SIOCATMARK, &at_mark);
  say("at mark before reading: %d", at_mark);
  report("recv MSG_OOB|MSG_PEEK", recv(pair.client, &urgent, 1, MSG_OOB | MSG_PEEK));
  report("recv MSG_OOB", recv(pair.client, &urgent, 1, MSG_OOB));
  say("urgent byte %c", urgent);
  report("recv MSG_OOB again", recv(pair.client, &urgent, 1, MSG_OOB));
  show_poll("poll after", pair.client, POLLIN | POLLPRI);
  recv_once("recv", pair.client);
  ioctl(pair.client, SIOCATMARK, &at_mark);
  say("at mark after reading: %d", at_mark);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, zero_length_send_and_recv, 1,
                 "zero-length send, and a zero-length recv(MSG_DONTWAIT) on an empty socket") {
  const TcpPair pair = tcp_pair();
  report("send 0", send(pair.client, "", 0, 0));
  char byte;
  report("recv 0", recv(pair.server, &byte, 0, MSG_DONTWAIT));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, unknown_send_flag, 1, "send with MSG_CONFIRM and MSG_MORE still delivers") {
  const TcpPair pair = tcp_pair();
  report("send MSG_MORE", send(pair.client, "more-", 5, MSG_MORE));
  report("send", send(pair.client, "done", 4, 0));
  show_exact("peer read", pair.server, 9);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, recvmsg_scatter_and_flags, 1,
                 "sendmsg gathers, recvmsg scatters; msg_flags 0 and msg_namelen 0") {
  const TcpPair pair = tcp_pair();
  char first[] = "gather-", second[] = "scatter";
  iovec out[2] = {{first, 7}, {second, 7}};
  msghdr message{};
  message.msg_iov = out;
  message.msg_iovlen = 2;
  report("sendmsg", sendmsg(pair.client, &message, 0));
  sleep_ms(20);
  char a[5] = {}, b[20] = {};
  iovec in[2] = {{a, 4}, {b, 19}};
  sockaddr_storage name{};
  msghdr received{};
  received.msg_name = &name;
  received.msg_namelen = sizeof name;
  received.msg_iov = in;
  received.msg_iovlen = 2;
  report("recvmsg", recvmsg(pair.server, &received, 0));
  say("parts %s %s flags %d namelen %u", quoted(a).c_str(), quoted(b).c_str(), received.msg_flags,
      received.msg_namelen);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, readv_writev_many_vectors, 1, "writev of 64 pieces, readv into 3") {
  const TcpPair pair = tcp_pair();
  std::vector<std::string> pieces;
  std::vector<iovec> out;
  for (int i = 0; i < 64; ++i) pieces.push_back(std::to_string(i % 10));
  for (auto& piece : pieces) out.push_back({piece.data(), piece.size()});
  report("writev", writev(pair.client, out.data(), static_cast<int>(out.size())));
  sleep_ms(20);
  char a[10] = {}, b[20] = {}, c[40] = {};
  iovec in[3] = {{a, 9}, {b, 19}, {c, 39}};
  report("readv", readv(pair.server, in, 3));
  say("parts %s %s %s", a, b, c);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, sendto_and_recvfrom_on_stream, 1,
                 "sendto with no address and recvfrom on a connected stream socket") {
  const TcpPair pair = tcp_pair();
  report("sendto", sendto(pair.client, "st", 2, 0, nullptr, 0));
  sockaddr_storage from{};
  socklen_t length = sizeof from;
  char buffer[8] = {};
  report("recvfrom", recvfrom(pair.server, buffer, sizeof buffer, 0,
                              reinterpret_cast<sockaddr*>(&from), &length));
  say("data %s length %u", quoted(buffer).c_str(), length);
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// Options

CONFORMANCE_CASE(kArea, so_linger_zero_resets_peer, 1,
                 "SO_LINGER {1, 0} then close: the peer sees ECONNRESET") {
  const TcpPair pair = tcp_pair();
  set_linger_zero(pair.client);
  close(pair.client);
  sleep_ms(20);
  show_poll("peer", pair.server, POLLIN | POLLOUT | POLLRDHUP);
  recv_once("peer recv", pair.server);
  recv_once("peer recv again", pair.server);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, so_linger_zero_peer_keeps_unread_data, 1,
                 "SO_LINGER {1, 0} after sending: the peer reads the data, then ECONNRESET") {
  const TcpPair pair = tcp_pair();
  send_text(pair.client, "before reset");
  set_linger_zero(pair.client);
  close(pair.client);
  sleep_ms(20);
  sockaddr_storage peer{};
  socklen_t length = sizeof peer;
  report("peer getpeername", getpeername(pair.server, reinterpret_cast<sockaddr*>(&peer), &length));
  recv_once("peer recv", pair.server);
  recv_once("peer recv again", pair.server);
  recv_once("peer recv at the end", pair.server);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, so_linger_zero_inherited_from_listener, 1,
                 "SO_LINGER {1, 0} on a listener: its accepted connection resets on close") {
  const int listener = tcp_listener();
  set_linger_zero(listener);
  const int client = tcp_connect(local_port(listener));
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  close(server);
  sleep_ms(20);
  recv_once("client recv", client);
  recv_once("client recv again", client);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, so_linger_reported, 1, "SO_LINGER reads back as set") {
  const TcpPair pair = tcp_pair();
  linger option{1, 5};
  report("set", setsockopt(pair.client, SOL_SOCKET, SO_LINGER, &option, sizeof option));
  linger reported{};
  socklen_t length = sizeof reported;
  report("get", getsockopt(pair.client, SOL_SOCKET, SO_LINGER, &reported, &length));
  say("onoff %d linger %d length %u", reported.l_onoff, reported.l_linger, length);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, so_linger_with_data_delivers, 1,
                 "SO_LINGER {1, 2} with data queued: close delivers the data, then EOF") {
  const TcpPair pair = tcp_pair();
  linger option{1, 2};
  setsockopt(pair.client, SOL_SOCKET, SO_LINGER, &option, sizeof option);
  send_text(pair.client, "lingering");
  report("close", close(pair.client));
  show_exact("peer read", pair.server, 64);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, tcp_nodelay_roundtrip, 1, "TCP_NODELAY reads back as set (0 default)") {
  const TcpPair pair = tcp_pair();
  show_option_roundtrip("TCP_NODELAY", pair.client, IPPROTO_TCP, TCP_NODELAY, 1);
  show_option_roundtrip("TCP_NODELAY", pair.client, IPPROTO_TCP, TCP_NODELAY, 0);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, tcp_nodelay_before_connect, 1,
                 "TCP_NODELAY set before connect is still set afterwards") {
  const int listener = tcp_listener();
  const int client = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  set_int_option(client, IPPROTO_TCP, TCP_NODELAY, 1);
  report("connect", tcp_connect_result(client, local_port(listener)));
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  int value = -1;
  socklen_t length = sizeof value;
  report("get", getsockopt(client, IPPROTO_TCP, TCP_NODELAY, &value, &length));
  say("TCP_NODELAY %d", value);
  close(server);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, keepalive_options_roundtrip, 1,
                 "SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT read back as set") {
  const TcpPair pair = tcp_pair();
  show_option_roundtrip("SO_KEEPALIVE", pair.client, SOL_SOCKET, SO_KEEPALIVE, 1);
  show_option_roundtrip("TCP_KEEPIDLE", pair.client, IPPROTO_TCP, TCP_KEEPIDLE, 30);
  show_option_roundtrip("TCP_KEEPINTVL", pair.client, IPPROTO_TCP, TCP_KEEPINTVL, 5);
  show_option_roundtrip("TCP_KEEPCNT", pair.client, IPPROTO_TCP, TCP_KEEPCNT, 4);
  show_option_roundtrip("TCP_KEEPIDLE 0", pair.client, IPPROTO_TCP, TCP_KEEPIDLE, 0);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, buffer_sizes_doubled, 1,
                 "SO_SNDBUF and SO_RCVBUF report twice the value set, as the kernel does") {
  const TcpPair pair = tcp_pair();
  show_option_roundtrip("SO_SNDBUF", pair.client, SOL_SOCKET, SO_SNDBUF, 65536);
  show_option_roundtrip("SO_RCVBUF", pair.client, SOL_SOCKET, SO_RCVBUF, 32768);
  show_option_roundtrip("SO_RCVBUF tiny", pair.client, SOL_SOCKET, SO_RCVBUF, 1);
  send_text(pair.server, "still works");
  show_exact("read", pair.client, 11);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, small_send_buffer_still_carries_data, 1,
                 "SO_SNDBUF 4096 on the sender: 1 MiB still arrives intact") {
  const TcpPair pair = tcp_pair();
  set_int_option(pair.client, SOL_SOCKET, SO_SNDBUF, 4096);
  std::thread reader = verify_in_background(pair, 1 << 20, 9);
  const std::vector<unsigned char> data = pattern(1 << 20, 9);
  send_all(pair.client, data.data(), data.size());
  close(pair.client);
  reader.join();
  close(pair.server);
}

CONFORMANCE_CASE(kArea, small_buffers_limit_data_in_flight, 1,
                 "SO_SNDBUF and SO_RCVBUF of 4096: a writer blocks after far less than 64 KiB") {
  const TcpPair pair = tcp_pair();
  set_int_option(pair.client, SOL_SOCKET, SO_SNDBUF, 4096);
  set_int_option(pair.server, SOL_SOCKET, SO_RCVBUF, 4096);
  const size_t filled = fill_until_blocked(pair.client);
  say("bytes in flight below 64 KiB: %d", filled < 65536);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, small_buffers_reader_closes_mid_transfer, 1,
                 "small buffers, the reader closes with data unread: the blocked writer fails") {
  const int listener = tcp_listener();
  set_int_option(listener, SOL_SOCKET, SO_RCVBUF, 4096);  // inherited by the accepted socket
  const int client = tcp_connect(local_port(listener));
  set_int_option(client, SOL_SOCKET, SO_SNDBUF, 4096);
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  std::thread reader = in_background([&] {
    sleep_ms(50);
    show_exact("reader", server, 4);
    close(server);
  });
  const std::vector<unsigned char> data = pattern(192 << 10, 3);  // less than a ring
  size_t sent = 0;
  ssize_t result = 0;
  while (sent < data.size() &&
         (result = send(client, data.data() + sent, data.size() - sent, MSG_NOSIGNAL)) > 0) {
    sent += static_cast<size_t>(result);
  }
  say("writer stopped early: %d", sent < data.size());
  say("writer error is ECONNRESET or EPIPE: %d",
      result < 0 && (errno == ECONNRESET || errno == EPIPE));
  reader.join();
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, misc_socket_options_roundtrip, 1,
                 "SO_REUSEADDR, SO_PRIORITY, SO_RCVLOWAT, IP_TOS, TCP_CORK read back as set") {
  const TcpPair pair = tcp_pair();
  show_option_roundtrip("SO_REUSEADDR", pair.client, SOL_SOCKET, SO_REUSEADDR, 1);
  show_option_roundtrip("SO_PRIORITY", pair.client, SOL_SOCKET, SO_PRIORITY, 3);
  show_option_roundtrip("SO_RCVLOWAT", pair.client, SOL_SOCKET, SO_RCVLOWAT, 1);
  show_option_roundtrip("IP_TOS", pair.client, IPPROTO_IP, IP_TOS, 0x10);
  show_option_roundtrip("TCP_CORK", pair.client, IPPROTO_TCP, TCP_CORK, 1);
  show_option_roundtrip("TCP_CORK off", pair.client, IPPROTO_TCP, TCP_CORK, 0);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, socket_option_defaults, 1,
                 "default values of common options on a connected socket") {
  const TcpPair pair = tcp_pair();
  for (const auto& [label, level, name] : std::initializer_list<std::tuple<const char*, int, int>>{
           {"SO_KEEPALIVE", SOL_SOCKET, SO_KEEPALIVE},
           {"SO_REUSEADDR", SOL_SOCKET, SO_REUSEADDR},
           {"SO_OOBINLINE", SOL_SOCKET, SO_OOBINLINE},
           {"SO_RCVLOWAT", SOL_SOCKET, SO_RCVLOWAT},
           {"TCP_NODELAY", IPPROTO_TCP, TCP_NODELAY},
           {"TCP_KEEPIDLE", IPPROTO_TCP, TCP_KEEPIDLE},
           {"TCP_KEEPCNT", IPPROTO_TCP, TCP_KEEPCNT},
           {"IP_TTL", IPPROTO_IP, IP_TTL}}) {
    int value = -1;
    socklen_t length = sizeof value;
    report(label, getsockopt(pair.client, level, name, &value, &length));
    say("%s = %d", label, value);
  }
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, tcp_congestion_name, 1, "TCP_CONGESTION reports an algorithm name") {
  const TcpPair pair = tcp_pair();
  char name[16] = {};
  socklen_t length = sizeof name;
  report("TCP_CONGESTION", getsockopt(pair.client, IPPROTO_TCP, TCP_CONGESTION, name, &length));
  say("algorithm %s", name);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, tcp_info_state_established, 1,
                 "TCP_INFO reports ESTABLISHED, then CLOSE_WAIT after the peer closes") {
  const TcpPair pair = tcp_pair();
  tcp_info info{};
  socklen_t length = sizeof info;
  report("TCP_INFO", getsockopt(pair.client, IPPROTO_TCP, TCP_INFO, &info, &length));
  say("state %d", info.tcpi_state);
  close(pair.server);
  sleep_ms(20);
  length = sizeof info;
  report("TCP_INFO", getsockopt(pair.client, IPPROTO_TCP, TCP_INFO, &info, &length));
  say("state %d", info.tcpi_state);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, invalid_option_errors, 1,
                 "unknown options and short option lengths give the kernel's errors") {
  const TcpPair pair = tcp_pair();
  int value = 1;
  report("set unknown SOL_SOCKET option", setsockopt(pair.client, SOL_SOCKET, 9999, &value, 4));
  report("set unknown level", setsockopt(pair.client, 9999, 1, &value, 4));
  report("set TCP_NODELAY length 2", setsockopt(pair.client, IPPROTO_TCP, TCP_NODELAY, &value, 2));
  socklen_t length = sizeof value;
  report("get unknown TCP option", getsockopt(pair.client, IPPROTO_TCP, 9999, &value, &length));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, so_error_clear_on_connected, 1, "SO_ERROR on a healthy connection is 0") {
  const TcpPair pair = tcp_pair();
  show_so_error("client SO_ERROR", pair.client);
  show_so_error("server SO_ERROR", pair.server);
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// Addresses

CONFORMANCE_CASE(kArea, addresses_agree_ipv4, 1,
                 "IPv4: each end's getsockname equals the other's getpeername") {
  const TcpPair pair = tcp_pair(AF_INET);
  show_address_agreement(pair, AF_INET);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, addresses_agree_ipv6, 1,
                 "IPv6: each end's getsockname equals the other's getpeername") {
  const TcpPair pair = tcp_pair(AF_INET6);
  show_address_agreement(pair, AF_INET6);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, accept_address_matches_peer, 1,
                 "the address accept fills in equals getpeername of the accepted socket") {
  const int listener = tcp_listener();
  const int client = tcp_connect(local_port(listener));
  sockaddr_storage from_accept{}, from_peer{};
  socklen_t accept_length = sizeof from_accept, peer_length = sizeof from_peer;
  const int server = static_cast<int>(require(
      "accept", accept(listener, reinterpret_cast<sockaddr*>(&from_accept), &accept_length)));
  report("getpeername", getpeername(server, reinterpret_cast<sockaddr*>(&from_peer), &peer_length));
  say("lengths %u %u equal %d", accept_length, peer_length,
      memcmp(&from_accept, &from_peer, accept_length) == 0);
  close(server);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, accept_address_truncated, 1,
                 "accept with a short address buffer reports the full length") {
  const int listener = tcp_listener();
  const int client = tcp_connect(local_port(listener));
  char small[4] = {};
  socklen_t length = sizeof small;
  const int server = static_cast<int>(
      require("accept", accept(listener, reinterpret_cast<sockaddr*>(small), &length)));
  say("reported length %u, family %d", length, reinterpret_cast<sockaddr*>(small)->sa_family);
  sockaddr_in peer{};
  socklen_t peer_length = 2;
  report("getpeername short",
         getpeername(server, reinterpret_cast<sockaddr*>(&peer), &peer_length));
  say("getpeername length %u", peer_length);
  close(server);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, ipv4_mapped_from_dual_stack_listener, 1,
                 "an IPv6 any-address listener accepts an IPv4 client as ::ffff:127.0.0.1") {
  const int listener = static_cast<int>(require("socket", socket(AF_INET6, SOCK_STREAM, 0)));
  sockaddr_in6 any{};
  any.sin6_family = AF_INET6;
  any.sin6_addr = in6addr_any;
  require("bind", bind(listener, reinterpret_cast<sockaddr*>(&any), sizeof any));
  require("listen", listen(listener, 8));
  const int client = tcp_connect(local_port(listener), AF_INET);
  sockaddr_in6 peer{};
  socklen_t length = sizeof peer;
  const int server = static_cast<int>(
      require("accept", accept(listener, reinterpret_cast<sockaddr*>(&peer), &length)));
  char text[INET6_ADDRSTRLEN] = {};
  inet_ntop(AF_INET6, &peer.sin6_addr, text, sizeof text);
  say("family %d length %u address %s", peer.sin6_family, length, text);
  send_text(client, "v4 to v6");
  show_exact("server read", server, 8);
  close(server);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, ipv6_v6only_refuses_ipv4, 0,
                 "IPV6_V6ONLY on an any-address listener: IPv4 clients are refused") {
  const int listener = static_cast<int>(require("socket", socket(AF_INET6, SOCK_STREAM, 0)));
  set_int_option(listener, IPPROTO_IPV6, IPV6_V6ONLY, 1);
  sockaddr_in6 any{};
  any.sin6_family = AF_INET6;
  any.sin6_addr = in6addr_any;
  require("bind", bind(listener, reinterpret_cast<sockaddr*>(&any), sizeof any));
  require("listen", listen(listener, 8));
  const int client = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  report("IPv4 connect", tcp_connect_result(client, local_port(listener), AF_INET));
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, getpeername_after_peer_closed, 1,
                 "getpeername still works after the peer closed, fails after our shutdown") {
  const TcpPair pair = tcp_pair();
  close(pair.server);
  sleep_ms(20);
  sockaddr_storage peer{};
  socklen_t length = sizeof peer;
  report("getpeername after peer close",
         getpeername(pair.client, reinterpret_cast<sockaddr*>(&peer), &length));
  recv_once("recv", pair.client);
  shutdown(pair.client, SHUT_RDWR);
  length = sizeof peer;
  report("getpeername after own shutdown",
         getpeername(pair.client, reinterpret_cast<sockaddr*>(&peer), &length));
  close(pair.client);
}

CONFORMANCE_CASE(kArea, connect_to_any_address_reaches_loopback, 1,
                 "connect to 0.0.0.0 reaches a loopback listener") {
  const int listener = tcp_listener();
  const int client = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  sockaddr_in any{};
  any.sin_family = AF_INET;
  any.sin_port = htons(local_port(listener));
  any.sin_addr.s_addr = htonl(INADDR_ANY);
  report("connect", connect(client, reinterpret_cast<sockaddr*>(&any), sizeof any));
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  sockaddr_in peer{};
  socklen_t length = sizeof peer;
  getpeername(client, reinterpret_cast<sockaddr*>(&peer), &length);
  char text[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &peer.sin_addr, text, sizeof text);
  say("client peer address %s", text);
  close(server);
  close(client);
  close(listener);
}

// ---------------------------------------------------------------------------
// Listeners

CONFORMANCE_CASE(kArea, listener_backlog_of_fifty, 50,
                 "50 clients connect before any accept; all are accepted and served in order") {
  const int listener = tcp_listener(AF_INET, 0, 128);
  std::vector<int> clients;
  for (int i = 0; i < 50; ++i) {
    clients.push_back(tcp_connect(local_port(listener)));
    send_text(clients.back(), std::to_string(1000 + i));
  }
  int in_order = 0;
  for (int i = 0; i < 50; ++i) {
    const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
    in_order += recv_exact(server, 4) == std::to_string(1000 + i);
    close(server);
  }
  say("accepted in connect order: %d of 50", in_order);
  for (int client : clients) close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, nonblocking_accept_eagain, 0,
                 "accept on an idle non-blocking listener fails with EAGAIN") {
  const int listener = tcp_listener(AF_INET, SOCK_NONBLOCK);
  report("accept", accept(listener, nullptr, nullptr));
  report("accept4", accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  close(listener);
}

CONFORMANCE_CASE(kArea, accept_on_connected_socket, 1,
                 "accept on a connected socket fails with EINVAL") {
  const TcpPair pair = tcp_pair();
  report("accept on the client", accept(pair.client, nullptr, nullptr));
  report("accept4 on the server", accept4(pair.server, nullptr, nullptr, SOCK_CLOEXEC));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, accept_on_non_listening_socket, 0,
                 "accept on a socket that does not listen fails with EINVAL") {
  const int fd = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  report("accept", accept(fd, nullptr, nullptr));
  close(fd);
}

CONFORMANCE_CASE(kArea, bind_errors, 0,
                 "bind twice, bind to a foreign address, bind an in-use port") {
  const int listener = tcp_listener();
  const int fd = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  const sockaddr_storage used = loopback_address(AF_INET, local_port(listener));
  report("bind in-use port",
         bind(fd, reinterpret_cast<const sockaddr*>(&used), sizeof(sockaddr_in)));
  const sockaddr_storage free_port = loopback_address(AF_INET, 0);
  report("bind any port",
         bind(fd, reinterpret_cast<const sockaddr*>(&free_port), sizeof(sockaddr_in)));
  report("bind again",
         bind(fd, reinterpret_cast<const sockaddr*>(&free_port), sizeof(sockaddr_in)));
  sockaddr_in foreign{};
  foreign.sin_family = AF_INET;
  foreign.sin_addr.s_addr = inet_addr("192.0.2.1");
  const int other = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  report("bind foreign address",
         bind(other, reinterpret_cast<sockaddr*>(&foreign), sizeof foreign));
  close(other);
  close(fd);
  close(listener);
}

CONFORMANCE_CASE(kArea, reuseaddr_rebinds_after_close, 2,
                 "SO_REUSEADDR lets a new listener bind a port with connections in TIME_WAIT") {
  const int listener = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  set_int_option(listener, SOL_SOCKET, SO_REUSEADDR, 1);
  const sockaddr_storage any_port = loopback_address(AF_INET, 0);
  require("bind",
          bind(listener, reinterpret_cast<const sockaddr*>(&any_port), sizeof(sockaddr_in)));
  require("listen", listen(listener, 8));
  const uint16_t port = local_port(listener);
  const int client = tcp_connect(port);
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  close(server);
  close(client);
  close(listener);
  sleep_ms(20);
  const int again = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  set_int_option(again, SOL_SOCKET, SO_REUSEADDR, 1);
  const sockaddr_storage address = loopback_address(AF_INET, port);
  report("bind", bind(again, reinterpret_cast<const sockaddr*>(&address), sizeof(sockaddr_in)));
  report("listen", listen(again, 8));
  const int second = tcp_connect(port);
  const int accepted = static_cast<int>(require("accept", accept(again, nullptr, nullptr)));
  send_text(second, "again");
  show_exact("read", accepted, 5);
  close(accepted);
  close(second);
  close(again);
}

CONFORMANCE_CASE(kArea, listen_twice_and_after_connect, 1,
                 "listen twice on a listener succeeds; listen on a connected socket fails") {
  const int listener = tcp_listener();
  report("listen again", listen(listener, 128));
  const int client = tcp_connect(local_port(listener));
  report("listen on connected", listen(client, 8));
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, listener_close_resets_pending_clients, 1,
                 "closing a listener with an unaccepted connection resets that client") {
  const int listener = tcp_listener();
  const int client = tcp_connect(local_port(listener));
  sleep_ms(20);
  close(listener);
  sleep_ms(20);
  recv_once("client recv", client);
  close(client);
}

CONFORMANCE_CASE(kArea, listen_without_bind_picks_port, 1,
                 "listen on an unbound socket binds an ephemeral port that clients reach") {
  const int listener = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  report("listen", listen(listener, 8));
  const uint16_t port = local_port(listener);
  say("port assigned: %d", port != 0);
  const int client = tcp_connect(port);
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  send_text(client, "hi");
  show_exact("read", server, 2);
  close(server);
  close(client);
  close(listener);
}

// ---------------------------------------------------------------------------
// Data volume and files

CONFORMANCE_CASE(kArea, large_transfer_intact, 1, "16 MiB in one direction arrives intact") {
  const TcpPair pair = tcp_pair();
  std::thread reader = verify_in_background(pair, 16 << 20, 11);
  const std::vector<unsigned char> data = pattern(16 << 20, 11);
  send_all(pair.client, data.data(), data.size());
  close(pair.client);
  reader.join();
  close(pair.server);
}

CONFORMANCE_CASE(kArea, many_small_messages_in_order, 1,
                 "10000 small writes arrive in order as one byte stream") {
  const TcpPair pair = tcp_pair();
  std::thread helper = in_background([&] {
    for (int i = 0; i < 10000; ++i) {
      const std::string message = std::to_string(i) + ",";
      send_all(pair.client, message.data(), message.size());
    }
    close(pair.client);
  });
  std::string expected;
  for (int i = 0; i < 10000; ++i) expected += std::to_string(i) + ",";
  const std::string received = recv_exact(pair.server, expected.size() + 1);
  say("received %zu bytes, in order %d", received.size(), received == expected);
  helper.join();
  close(pair.server);
}

CONFORMANCE_CASE(kArea, request_response_turns, 1,
                 "1000 request/response turns of 100 bytes between two threads") {
  const TcpPair pair = tcp_pair();
  std::thread helper = in_background([&] {
    for (int i = 0; i < 1000; ++i) send_text(pair.server, recv_exact(pair.server, 100));
  });
  int correct = 0;
  for (int i = 0; i < 1000; ++i) {
    const std::vector<unsigned char> request = pattern(100, i);
    send_all(pair.client, request.data(), request.size());
    const std::string response = recv_exact(pair.client, 100);
    correct += memcmp(response.data(), request.data(), 100) == 0;
  }
  say("correct responses: %d", correct);
  helper.join();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, sendfile_file_to_socket, 1, "sendfile copies a 3 MiB file to the socket") {
  const TcpPair pair = tcp_pair();
  const int file = pattern_file(3 << 20, 21);
  std::thread reader = verify_in_background(pair, 3 << 20, 21);
  size_t total = 0;
  for (;;) {
    const ssize_t sent = sendfile(pair.client, file, nullptr, 1 << 20);
    if (sent <= 0) {
      if (sent < 0) report("sendfile", sent);
      break;
    }
    total += static_cast<size_t>(sent);
  }
  say("sendfile total %zu", total);
  close(pair.client);
  reader.join();
  close(pair.server);
  close(file);
}

CONFORMANCE_CASE(kArea, sendfile_with_offset, 1,
                 "sendfile with an offset sends that range and leaves the file position alone") {
  const TcpPair pair = tcp_pair();
  const int file = pattern_file(4096, 22);
  off_t offset = 1000;
  report("sendfile", sendfile(pair.client, file, &offset, 100));
  say("offset now %ld, file position %ld", static_cast<long>(offset),
      static_cast<long>(lseek(file, 0, SEEK_CUR)));
  const std::string got = recv_exact(pair.server, 100);
  const std::vector<unsigned char> bytes = pattern(4096, 22);
  say("range intact %d", memcmp(got.data(), bytes.data() + 1000, 100) == 0);
  close(file);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, splice_file_to_socket_through_pipe, 1,
                 "splice file -> pipe -> socket carries 1 MiB intact") {
  const TcpPair pair = tcp_pair();
  const int file = pattern_file(1 << 20, 23);
  std::thread reader = verify_in_background(pair, 1 << 20, 23);
  int pipe_ends[2];
  require("pipe", pipe(pipe_ends));
  size_t total = 0;
  for (;;) {
    const ssize_t in = splice(file, nullptr, pipe_ends[1], nullptr, 65536, 0);
    if (in <= 0) break;
    ssize_t left = in;
    while (left > 0) {
      const ssize_t out = splice(pipe_ends[0], nullptr, pair.client, nullptr, left, 0);
      if (out <= 0) {
        report("splice to socket", out);
        left = 0;
        break;
      }
      left -= out;
      total += static_cast<size_t>(out);
    }
  }
  say("spliced %zu", total);
  close(pair.client);
  reader.join();
  close(pair.server);
  close(pipe_ends[0]);
  close(pipe_ends[1]);
  close(file);
}

CONFORMANCE_CASE(kArea, splice_socket_to_pipe_large, 1,
                 "splice socket -> pipe -> reader carries 1 MiB intact through a full pipe") {
  const TcpPair pair = tcp_pair();
  int pipe_ends[2];
  require("pipe", pipe(pipe_ends));
  const std::vector<unsigned char> data = pattern(1 << 20, 29);
  std::thread writer = in_background([&] {
    send_all(pair.client, data.data(), data.size());
    close(pair.client);
  });
  std::thread reader = in_background([&] {
    const Drained drained = drain(pipe_ends[0]);
    say("pipe reader intact: %d",
        drained.bytes == data.size() && drained.digest == digest(data.data(), data.size()));
  });
  size_t total = 0;
  ssize_t moved;
  while ((moved = splice(pair.server, nullptr, pipe_ends[1], nullptr, 65536, 0)) > 0) {
    total += static_cast<size_t>(moved);
  }
  report("last splice", moved);
  say("spliced %zu", total);
  close(pipe_ends[1]);
  writer.join();
  reader.join();
  close(pipe_ends[0]);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, splice_socket_errors, 1,
                 "splice: socket to socket, an offset on the socket, nothing to move yet") {
  const TcpPair pair = tcp_pair();
  int pipe_ends[2];
  require("pipe", pipe(pipe_ends));
  report("socket to socket", splice(pair.server, nullptr, pair.client, nullptr, 8, 0));
  loff_t offset = 0;
  report("offset on the socket", splice(pair.server, &offset, pipe_ends[1], nullptr, 8, 0));
  report("empty pipe, SPLICE_F_NONBLOCK",
         splice(pipe_ends[0], nullptr, pair.client, nullptr, 8, SPLICE_F_NONBLOCK));
  set_nonblocking(pair.server, true);
  report("non-blocking socket, no data", splice(pair.server, nullptr, pipe_ends[1], nullptr, 8, 0));
  send_text(pair.client, "late");
  sleep_ms(20);
  report("with data", splice(pair.server, nullptr, pipe_ends[1], nullptr, 8, SPLICE_F_NONBLOCK));
  close(pipe_ends[0]);
  close(pipe_ends[1]);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, splice_socket_to_pipe, 1, "splice from a socket into a pipe") {
  const TcpPair pair = tcp_pair();
  int pipe_ends[2];
  require("pipe", pipe(pipe_ends));
  send_text(pair.client, "spliced from socket");
  close(pair.client);
  report("splice", splice(pair.server, nullptr, pipe_ends[1], nullptr, 64, 0));
  char buffer[64] = {};
  report("read pipe", read(pipe_ends[0], buffer, sizeof buffer));
  say("data %s", quoted(buffer).c_str());
  close(pipe_ends[0]);
  close(pipe_ends[1]);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, stdio_fdopen_on_socket, 1, "fdopen + fprintf/fgets over a socket") {
  const TcpPair pair = tcp_pair();
  FILE* out = fdopen(pair.client, "w");
  FILE* in = fdopen(pair.server, "r");
  fprintf(out, "line %d\nline %d\n", 1, 2);
  fflush(out);
  char line[32];
  while (fgets(line, sizeof line, in) != nullptr) {
    say("got %s", quoted(line).c_str());
    if (strcmp(line, "line 2\n") == 0) break;
  }
  fclose(out);
  fclose(in);
}

namespace {
// Everything the socket holds now, without waiting: what a stream flushed.
std::string take_pending(int fd) {
  std::string taken;
  char buffer[8192];
  ssize_t got;
  while ((got = recv(fd, buffer, sizeof buffer, MSG_DONTWAIT)) > 0) taken.append(buffer, got);
  return taken;
}
}  // namespace

CONFORMANCE_CASE(kArea, stdio_fdopen_mode_fileno_and_fclose, 1,
                 "fdopen refuses a bad mode (EINVAL); fileno names the socket; fclose closes it "
                 "exactly once and the peer reads EOF") {
  const TcpPair pair = tcp_pair();
  errno = 0;
  FILE* refused = fdopen(pair.client, "q");
  say("fdopen mode q: %s %s", refused == nullptr ? "NULL" : "stream", errno_name(errno).c_str());
  FILE* stream = fdopen(pair.client, "r+");
  if (stream == nullptr) die("fdopen r+");
  say("fileno is the socket: %d", fileno(stream) == pair.client);
  say("fprintf: %d", fprintf(stream, "through %s", "r+"));
  report("fclose", fclose(stream));
  report("close after fclose", close(pair.client));
  show_exact("peer read", pair.server, 64);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, stdio_socket_stream_buffering, 1,
                 "a socket stream is fully buffered by default (a block at a time), line "
                 "buffered or unbuffered after setvbuf; fflush sends the rest") {
  const TcpPair pair = tcp_pair();
  FILE* stream = fdopen(pair.client, "w");
  if (stream == nullptr) die("fdopen");
  fputs("held", stream);
  say("full, before fflush: %zu", take_pending(pair.server).size());
  const std::string block(5000, 'b');
  fwrite(block.data(), 1, block.size(), stream);
  say("full, after 5004 bytes: %zu", take_pending(pair.server).size());
  report("fflush", fflush(stream));
  say("full, after fflush: %zu", take_pending(pair.server).size());
  report("setvbuf line", setvbuf(stream, nullptr, _IOLBF, 0));
  fputs("partial", stream);
  say("line, before newline: %s", quoted(take_pending(pair.server)).c_str());
  fputs(" line\n", stream);
  say("line, after newline: %s", quoted(take_pending(pair.server)).c_str());
  report("setvbuf none", setvbuf(stream, nullptr, _IONBF, 0));
  fputc('x', stream);
  say("unbuffered: %s", quoted(take_pending(pair.server)).c_str());
  report("fclose", fclose(stream));
  close(pair.server);
}

CONFORMANCE_CASE(kArea, stdio_getline_and_fscanf_on_socket, 1,
                 "getline, fscanf and fgetc read a socket stream; feof at EOF, ferror clear") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "alpha beta\n42 7\nlast");
  shutdown(pair.server, SHUT_WR);
  FILE* stream = fdopen(pair.client, "r");
  if (stream == nullptr) die("fdopen");
  char* line = nullptr;
  size_t capacity = 0;
  ssize_t got = getline(&line, &capacity, stream);
  say("getline: %zd %s", got, quoted(got > 0 ? line : "").c_str());
  int first = 0;
  int second = 0;
  const int matched = fscanf(stream, "%d %d", &first, &second);
  say("fscanf: %d (%d, %d)", matched, first, second);
  while ((got = getline(&line, &capacity, stream)) > 0)
    say("getline: %zd %s", got, quoted(line).c_str());
  say("getline at EOF: %zd feof %d ferror %d", got, feof(stream) != 0, ferror(stream) != 0);
  say("fgetc at EOF: %d", fgetc(stream));
  free(line);
  report("fclose", fclose(stream));
  close(pair.server);
}

CONFORMANCE_CASE(kArea, stdio_errors_on_socket_stream, 1,
                 "a non-blocking socket stream with nothing to read sets ferror (EAGAIN); "
                 "writing after the peer closed fails with EPIPE") {
  const TcpPair pair = tcp_pair();
  set_nonblocking(pair.client, true);
  FILE* stream = fdopen(pair.client, "r+");
  if (stream == nullptr) die("fdopen");
  errno = 0;
  const int got = fgetc(stream);
  say("fgetc: %d %s feof %d ferror %d", got, errno_name(errno).c_str(), feof(stream) != 0,
      ferror(stream) != 0);
  clearerr(stream);
  send_text(pair.server, "z");
  sleep_ms(20);
  say("fgetc after data: %c", fgetc(stream));
  close(pair.server);
  signal(SIGPIPE, SIG_IGN);
  // The first write reaches the closed peer, which resets; the next fails.
  fputs("to a closed peer", stream);
  fflush(stream);
  sleep_ms(20);
  errno = 0;
  fputs("again", stream);
  const int flushed = fflush(stream);
  say("fflush: %d %s ferror %d", flushed, errno_name(errno).c_str(), ferror(stream) != 0);
  fclose(stream);
  signal(SIGPIPE, SIG_DFL);
}

namespace {
// A child connects to `listener` (announced first: a forked listener waits
// to be) and runs `use` on the connection, a connection of its own, so that
// its exit ends it; the parent prints what it reads, to EOF.
void show_child_connection_at_exit(int listener, const std::function<void(int)>& use) {
  const uint16_t port = local_port(listener);
  Baton listening;
  const pid_t pid = fork_child([&] {
    close(listener);
    listening.wait();
    use(tcp_connect(port));
  });
  pollfd waiting{listener, POLLIN, 0};
  poll(&waiting, 1, 0);
  listening.pass();
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  close(listener);
  wait_child("child", pid);
  show_exact("peer read", server, 64);
  close(server);
}
}  // namespace

CONFORMANCE_CASE(kArea, stdio_stream_flushed_at_exit, 1,
                 "a child's socket stream left unflushed is flushed by exit(); the peer reads it, "
                 "then EOF") {
  show_child_connection_at_exit(tcp_listener(), [](int fd) {
    FILE* stream = fdopen(fd, "w");
    if (stream == nullptr) die("fdopen");
    fputs("flushed by exit", stream);
  });
}

CONFORMANCE_CASE(kArea, stdio_exit_while_a_thread_reads_a_stream, 1,
                 "exit() while another thread is blocked in fgets on a socket stream (holding its "
                 "lock): the unflushed output still goes, and the exit does not hang") {
  show_child_connection_at_exit(tcp_listener(), [](int fd) {
    FILE* in = fdopen(fd, "r");
    FILE* out = fdopen(dup(fd), "w");
    if (in == nullptr || out == nullptr) die("fdopen");
    std::thread([in] {
      char line[16];
      fgets(line, sizeof line, in);
    }).detach();
    sleep_ms(50);
    fputs("flushed past a reader", out);
  });
}

}  // namespace conformance

// Descriptors: dup family, fcntl flags, close-on-exec, ioctl, SCM_RIGHTS,
// closing one of several duplicates.
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conformance.h"

namespace conformance {
namespace {

constexpr const char* kArea = "descriptors";

// Sends `fds` over the AF_UNIX socket `channel` with one byte of payload.
void send_fds(int channel, const std::vector<int>& fds) {
  char payload = 'F';
  iovec data{&payload, 1};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  msghdr message{};
  message.msg_iov = &data;
  message.msg_iovlen = 1;
  message.msg_control = control.data();
  message.msg_controllen = control.size();
  cmsghdr* header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  memcpy(CMSG_DATA(header), fds.data(), sizeof(int) * fds.size());
  report("sendmsg SCM_RIGHTS", sendmsg(channel, &message, 0));
}

// Receives descriptors sent by send_fds.
std::vector<int> receive_fds(int channel) {
  char payload = 0;
  iovec data{&payload, 1};
  char control[CMSG_SPACE(sizeof(int) * 8)];
  msghdr message{};
  message.msg_iov = &data;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  report("recvmsg SCM_RIGHTS", recvmsg(channel, &message, MSG_CMSG_CLOEXEC));
  std::vector<int> fds;
  for (cmsghdr* header = CMSG_FIRSTHDR(&message); header != nullptr;
       header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    fds.resize(count);
    memcpy(fds.data(), CMSG_DATA(header), count * sizeof(int));
  }
  say("descriptors received: %zu", fds.size());
  return fds;
}

struct UnixChannel {
  int near;
  int far;
};
UnixChannel unix_channel() {
  int ends[2];
  require("socketpair", socketpair(AF_UNIX, SOCK_STREAM, 0, ends));
  return {ends[0], ends[1]};
}

// Both descriptors reach the same connection: data in through one is seen
// by the peer, the peer's data out through the other.
void show_same_connection(int first, int second, int peer) {
  send_text(first, "via first");
  show_exact("peer read", peer, 9);
  send_text(peer, "to second");
  show_exact("second read", second, 9);
}

void show_descriptor_flags(const char* label, int fd) {
  const int flags = fcntl(fd, F_GETFD);
  if (flags < 0) {
    report(label, flags);
    return;
  }
  say("%s: FD_CLOEXEC %d", label, (flags & FD_CLOEXEC) != 0);
}

void show_int_option(const char* label, int fd, int level, int name) {
  int value = -1;
  socklen_t length = sizeof value;
  if (report(label, getsockopt(fd, level, name, &value, &length)) == 0) {
    say("%s value %d length %u", label, value, length);
  }
}

}  // namespace

CONFORMANCE_CASE(kArea, dup_both_descriptors_work, 1, "dup: the copy and the original both work") {
  const TcpPair pair = tcp_pair();
  const int copy = static_cast<int>(require("dup", dup(pair.client)));
  show_same_connection(pair.client, copy, pair.server);
  close(copy);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, dup_close_original_copy_works, 1,
                 "closing the original leaves a dup'd copy working, no EOF at the peer") {
  const TcpPair pair = tcp_pair();
  const int copy = static_cast<int>(require("dup", dup(pair.client)));
  report("close original", close(pair.client));
  set_nonblocking(pair.server, true);
  recv_once("peer recv", pair.server);
  set_nonblocking(pair.server, false);
  show_same_connection(copy, copy, pair.server);
  close(copy);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, dup_close_all_peer_sees_eof, 1,
                 "the peer sees EOF once every duplicate is closed") {
  const TcpPair pair = tcp_pair();
  const int copy = static_cast<int>(require("dup", dup(pair.client)));
  close(pair.client);
  close(copy);
  recv_once("peer recv", pair.server);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, dup2_onto_open_descriptor, 1,
                 "dup2 onto an open file replaces it with the socket") {
  const TcpPair pair = tcp_pair();
  const int target = static_cast<int>(require("open", open("/dev/null", O_RDONLY)));
  report("dup2 returns target", dup2(pair.client, target) == target ? 1 : -1);
  show_same_connection(pair.client, target, pair.server);
  close(target);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, dup2_same_descriptor_is_noop, 1,
                 "dup2(fd, fd) returns fd and changes nothing") {
  const TcpPair pair = tcp_pair();
  report("dup2 same returns fd", dup2(pair.client, pair.client) == pair.client ? 1 : -1);
  show_same_connection(pair.client, pair.client, pair.server);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, dup2_replaces_other_socket, 2,
                 "dup2 of one connection onto another closes the latter (its peer sees EOF)") {
  const TcpPair first = tcp_pair();
  const TcpPair second = tcp_pair();
  require("dup2", dup2(first.client, second.client));
  recv_once("second peer recv", second.server);
  show_same_connection(second.client, first.client, first.server);
  close_pair(first);
  close_pair(second);
}

CONFORMANCE_CASE(kArea, dup2_socket_onto_stdin_then_read, 1,
                 "a socket dup2'd onto stdin reads with read(0)") {
  const TcpPair pair = tcp_pair();
  require("dup2", dup2(pair.client, STDIN_FILENO));
  send_text(pair.server, "stdin!");
  char buffer[16] = {};
  report("read(0)", read(STDIN_FILENO, buffer, sizeof buffer));
  say("data %s", quoted(buffer).c_str());
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, dup3_sets_cloexec, 1,
                 "dup3 with O_CLOEXEC sets FD_CLOEXEC on the copy only") {
  const TcpPair pair = tcp_pair();
  const int target = static_cast<int>(require("open", open("/dev/null", O_RDONLY)));
  report("dup3 returns target", dup3(pair.client, target, O_CLOEXEC) == target ? 1 : -1);
  show_descriptor_flags("copy", target);
  show_descriptor_flags("original", pair.client);
  show_same_connection(target, pair.client, pair.server);
  close(target);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, dup3_same_descriptor_einval, 1, "dup3(fd, fd, 0) fails with EINVAL") {
  const TcpPair pair = tcp_pair();
  report("dup3 same", dup3(pair.client, pair.client, 0));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, dup_clears_cloexec, 1,
                 "dup never copies FD_CLOEXEC; fcntl F_DUPFD_CLOEXEC sets it") {
  const int fd =
      static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)));
  show_descriptor_flags("SOCK_CLOEXEC socket", fd);
  const int copy = static_cast<int>(require("dup", dup(fd)));
  show_descriptor_flags("dup copy", copy);
  const int cloexec_copy =
      static_cast<int>(require("F_DUPFD_CLOEXEC", fcntl(fd, F_DUPFD_CLOEXEC, 0)));
  show_descriptor_flags("F_DUPFD_CLOEXEC copy", cloexec_copy);
  close(fd);
  close(copy);
  close(cloexec_copy);
  const TcpPair pair = tcp_pair();
  show_same_connection(pair.client, pair.client, pair.server);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fcntl_dupfd_minimum_number, 1,
                 "F_DUPFD returns a descriptor at or above the requested minimum, and it works") {
  const TcpPair pair = tcp_pair();
  const int copy = fcntl(pair.client, F_DUPFD, 500);
  say("F_DUPFD >= 500: %d", copy >= 500);
  show_same_connection(copy, pair.client, pair.server);
  close(copy);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fcntl_dupfd_shares_status_flags, 1,
                 "F_DUPFD copies share O_NONBLOCK with the original") {
  const TcpPair pair = tcp_pair();
  const int copy = static_cast<int>(require("F_DUPFD", fcntl(pair.client, F_DUPFD, 0)));
  set_nonblocking(copy, true);
  show_status_flags("original", pair.client);
  recv_once("original recv", pair.client);
  close(copy);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fd_cloexec_set_and_clear, 1, "F_SETFD toggles FD_CLOEXEC") {
  const TcpPair pair = tcp_pair();
  show_descriptor_flags("initial", pair.client);
  report("F_SETFD cloexec", fcntl(pair.client, F_SETFD, FD_CLOEXEC));
  show_descriptor_flags("after set", pair.client);
  report("F_SETFD 0", fcntl(pair.client, F_SETFD, 0));
  show_descriptor_flags("after clear", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, sock_cloexec_and_nonblock_type_flags, 0,
                 "SOCK_CLOEXEC | SOCK_NONBLOCK show in F_GETFD and F_GETFL") {
  const int fd = static_cast<int>(
      require("socket", socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)));
  show_descriptor_flags("F_GETFD", fd);
  show_status_flags("F_GETFL", fd);
  close(fd);
}

CONFORMANCE_CASE(kArea, accept4_flags_on_accepted_socket, 1,
                 "accept4 SOCK_NONBLOCK|SOCK_CLOEXEC flags show on the accepted socket") {
  const int listener = tcp_listener();
  const int client = tcp_connect(local_port(listener));
  const int server = static_cast<int>(
      require("accept4", accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)));
  show_descriptor_flags("accepted F_GETFD", server);
  show_status_flags("accepted F_GETFL", server);
  recv_once("accepted recv", server);
  close(server);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, accept_does_not_inherit_nonblocking, 1,
                 "accept on a non-blocking listener returns a blocking socket") {
  const int listener = tcp_listener(AF_INET, SOCK_NONBLOCK);
  const int client = tcp_connect(local_port(listener));
  sleep_ms(20);
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  show_status_flags("accepted", server);
  close(server);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, setfl_nonblock_recv_eagain, 1,
                 "O_NONBLOCK set with F_SETFL: recv on an empty socket fails with EAGAIN") {
  const TcpPair pair = tcp_pair();
  set_nonblocking(pair.client, true);
  show_status_flags("after F_SETFL", pair.client);
  recv_once("recv", pair.client);
  char byte;
  report("read", read(pair.client, &byte, 1));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, setfl_clear_nonblock_blocks_again, 1,
                 "clearing O_NONBLOCK makes recv wait for data again") {
  const TcpPair pair = tcp_pair();
  set_nonblocking(pair.client, true);
  set_nonblocking(pair.client, false);
  show_status_flags("after clearing", pair.client);
  const pid_t pid = fork_child([&] {
    sleep_ms(50);
    send_text(pair.server, "late");
  });
  recv_once("blocking recv", pair.client);
  wait_child("sender", pid);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, setfl_o_append_ignored_on_socket, 1,
                 "F_SETFL with O_APPEND on a socket: what F_GETFL reports afterwards") {
  const TcpPair pair = tcp_pair();
  report("F_SETFL O_APPEND", fcntl(pair.client, F_SETFL, O_APPEND));
  show_status_flags("after", pair.client);
  show_same_connection(pair.client, pair.client, pair.server);
  close_pair(pair);
}

CONFORMANCE_CASE(
    kArea, ioctl_fioclex_and_fionclex, 1,
    "ioctl FIOCLEX/FIONCLEX with a null argument (as CPython calls them) toggle FD_CLOEXEC") {
  const TcpPair pair = tcp_pair();
  report("FIOCLEX", ioctl(pair.client, FIOCLEX, nullptr));
  show_descriptor_flags("after FIOCLEX", pair.client);
  report("FIONCLEX", ioctl(pair.client, FIONCLEX, nullptr));
  show_descriptor_flags("after FIONCLEX", pair.client);
  show_same_connection(pair.client, pair.client, pair.server);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, ioctl_fionbio_sets_and_clears, 1,
                 "ioctl FIONBIO toggles non-blocking mode as F_GETFL shows") {
  const TcpPair pair = tcp_pair();
  int on = 1;
  report("FIONBIO 1", ioctl(pair.client, FIONBIO, &on));
  show_status_flags("after FIONBIO 1", pair.client);
  recv_once("recv", pair.client);
  int off = 0;
  report("FIONBIO 0", ioctl(pair.client, FIONBIO, &off));
  show_status_flags("after FIONBIO 0", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, ioctl_fionread_counts_pending_bytes, 1,
                 "FIONREAD reports the bytes waiting, before and after a partial read") {
  const TcpPair pair = tcp_pair();
  int pending = -1;
  report("FIONREAD empty", ioctl(pair.client, FIONREAD, &pending));
  say("pending %d", pending);
  send_text(pair.server, "0123456789");
  sleep_ms(20);
  report("FIONREAD", ioctl(pair.client, FIONREAD, &pending));
  say("pending %d", pending);
  recv_once("recv 4", pair.client, 4);
  report("FIONREAD after read", ioctl(pair.client, FIONREAD, &pending));
  say("pending %d", pending);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, ioctl_fionread_after_eof, 1,
                 "FIONREAD after the peer closed with data still queued") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "last words");
  close(pair.server);
  sleep_ms(20);
  int pending = -1;
  report("FIONREAD", ioctl(pair.client, FIONREAD, &pending));
  say("pending %d", pending);
  close(pair.client);
}

CONFORMANCE_CASE(kArea, ioctl_siocatmark_without_urgent_data, 1,
                 "SIOCATMARK on a connection without urgent data reports 0") {
  const TcpPair pair = tcp_pair();
  int at_mark = -1;
  report("SIOCATMARK", ioctl(pair.client, SIOCATMARK, &at_mark));
  say("at mark %d", at_mark);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, ioctl_unknown_request_enotty, 1,
                 "an ioctl a socket does not know fails with ENOTTY") {
  const TcpPair pair = tcp_pair();
  int value = 0;
  report("ioctl TIOCGPGRP", ioctl(pair.client, TIOCGPGRP, &value));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, scm_rights_pass_connected_socket, 1,
                 "a connected socket passed over AF_UNIX works in the receiving process") {
  const TcpPair pair = tcp_pair();
  const UnixChannel channel = unix_channel();
  Baton sent;  // keeps the two processes' transcript lines in order
  const pid_t pid = fork_child([&] {
    close(pair.client);
    sent.wait();
    const std::vector<int> fds = receive_fds(channel.far);
    if (fds.size() != 1) die("no descriptor");
    send_text(fds[0], "passed along");
    show_exact("receiver read", fds[0], 5);
  });
  send_fds(channel.near, {pair.client});
  sent.pass();
  close(pair.client);
  show_exact("peer read", pair.server, 12);
  send_text(pair.server, "reply");
  wait_child("receiver", pid);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, scm_rights_receiver_sets_nonblocking_seen_by_sender, 1,
                 "O_NONBLOCK set by the process that received a socket with SCM_RIGHTS is seen "
                 "by the sender, which kept its copy") {
  const UnixChannel channel = unix_channel();
  Baton sent;  // keeps the two processes' transcript lines in order
  const pid_t pid = fork_child([&] {
    sent.wait();
    const std::vector<int> fds = receive_fds(channel.far);
    if (fds.size() != 1) die("no descriptor");
    set_nonblocking(fds[0], true);
    send_text(channel.far, "set");
  });
  // Made after the fork: the receiver holds it only through the message.
  const TcpPair pair = tcp_pair();
  send_fds(channel.near, {pair.client});
  sent.pass();
  show_exact("receiver says", channel.near, 3);
  wait_child("receiver", pid);
  show_status_flags("sender", pair.client);
  recv_once("sender recv", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, scm_rights_never_received_socket_ends, 1,
                 "a socket passed but never received goes with the channel: the peer reads EOF") {
  const TcpPair pair = tcp_pair();
  const UnixChannel channel = unix_channel();
  send_fds(channel.near, {pair.client});
  close(pair.client);
  close(channel.far);
  close(channel.near);
  recv_once("peer recv", pair.server);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, scm_rights_passed_socket_outlives_sender, 1,
                 "a connection passed to a process survives the sender's exit; the receiver's "
                 "close ends it") {
  const TcpPair pair = tcp_pair();
  const UnixChannel channel = unix_channel();
  const pid_t sender = fork_child([&] {
    close(pair.server);
    send_fds(channel.near, {pair.client});
  });
  wait_child("sender", sender);
  close(pair.client);
  const std::vector<int> fds = receive_fds(channel.far);
  if (fds.size() != 1) die("no descriptor");
  send_text(fds[0], "still here");
  show_exact("peer read", pair.server, 10);
  close(fds[0]);
  recv_once("peer recv after the receiver closed", pair.server);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, scm_rights_pass_listener, 1,
                 "a listener passed over AF_UNIX accepts in the receiving process") {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  const UnixChannel channel = unix_channel();
  Baton sent;  // keeps the two processes' transcript lines in order
  const pid_t pid = fork_child([&] {
    close(listener);
    sent.wait();
    const std::vector<int> fds = receive_fds(channel.far);
    if (fds.size() != 1) die("no descriptor");
    const int server = static_cast<int>(require("accept", accept(fds[0], nullptr, nullptr)));
    send_text(server, "from receiver");
    close(server);
  });
  send_fds(channel.near, {listener});
  sent.pass();
  close(listener);
  const int client = tcp_connect(port);
  show_exact("client read", client, 13);
  wait_child("receiver", pid);
  close(client);
}

CONFORMANCE_CASE(kArea, scm_rights_handoff_between_workers, 1,
                 "an accepting process hands each connection to a worker process") {
  const int listener = tcp_listener();
  const UnixChannel channel = unix_channel();
  Baton sent;  // keeps the two processes' transcript lines in order
  const pid_t worker = fork_child([&] {
    close(listener);
    sent.wait();
    const std::vector<int> fds = receive_fds(channel.far);
    if (fds.size() != 1) die("no descriptor");
    send_text(fds[0], "worker: " + recv_exact(fds[0], 4));
    close(fds[0]);
  });
  const int client = tcp_connect(local_port(listener));
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  send_fds(channel.near, {server});
  sent.pass();
  close(server);
  send_text(client, "work");
  show_exact("client read", client, 12);
  recv_once("client recv after worker closed", client);
  wait_child("worker", worker);
  close(client);
  close(listener);
}

CONFORMANCE_CASE(kArea, scm_rights_several_sockets_in_one_message, 2,
                 "two sockets passed in one SCM_RIGHTS message both work") {
  const TcpPair first = tcp_pair();
  const TcpPair second = tcp_pair();
  const UnixChannel channel = unix_channel();
  Baton sent;  // keeps the two processes' transcript lines in order
  const pid_t pid = fork_child([&] {
    sent.wait();
    const std::vector<int> fds = receive_fds(channel.far);
    if (fds.size() != 2) die("descriptors missing");
    send_text(fds[0], "one");
    send_text(fds[1], "two");
  });
  send_fds(channel.near, {first.client, second.client});
  sent.pass();
  wait_child("receiver", pid);
  show_exact("first peer read", first.server, 3);
  show_exact("second peer read", second.server, 3);
  close_pair(first);
  close_pair(second);
}

CONFORMANCE_CASE(kArea, scm_rights_within_one_process, 1,
                 "passing a socket to ourselves yields a working duplicate") {
  const TcpPair pair = tcp_pair();
  const UnixChannel channel = unix_channel();
  send_fds(channel.near, {pair.client});
  const std::vector<int> fds = receive_fds(channel.far);
  if (fds.size() != 1) die("no descriptor");
  show_descriptor_flags("received", fds[0]);
  show_same_connection(fds[0], pair.client, pair.server);
  close(fds[0]);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, close_range_and_closefrom, 2,
                 "close_range closes a connected socket (the peer reads EOF); after closefrom(3), "
                 "as a daemon closes all it inherited, new connections work") {
  const TcpPair first = tcp_pair();
  report("close_range",
         close_range(static_cast<unsigned>(first.client), static_cast<unsigned>(first.client), 0));
  recv_once("peer recv after close_range", first.server);
  closefrom(3);
  report("fcntl on a closed number", fcntl(first.server, F_GETFD));
  const TcpPair second = tcp_pair();
  send_text(second.client, "after closefrom");
  show_exact("peer read", second.server, 15);
  close_pair(second);
}

CONFORMANCE_CASE(kArea, close_one_duplicate_no_eof, 1,
                 "closing one of three duplicates: the peer sees no EOF, the others work") {
  const TcpPair pair = tcp_pair();
  const int second = static_cast<int>(require("dup", dup(pair.client)));
  const int third = static_cast<int>(require("dup", dup(pair.client)));
  report("close second", close(second));
  set_nonblocking(pair.server, true);
  recv_once("peer recv", pair.server);
  set_nonblocking(pair.server, false);
  show_same_connection(third, pair.client, pair.server);
  close(third);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shutdown_through_duplicate_affects_all, 1,
                 "shutdown on a duplicate ends writing for every descriptor of the socket") {
  const TcpPair pair = tcp_pair();
  const int copy = static_cast<int>(require("dup", dup(pair.client)));
  report("shutdown copy SHUT_WR", shutdown(copy, SHUT_WR));
  recv_once("peer recv", pair.server);
  report("send on original", send(pair.client, "x", 1, MSG_NOSIGNAL));
  close(copy);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, close_twice_ebadf, 1, "the second close of a socket fails with EBADF") {
  const TcpPair pair = tcp_pair();
  report("close", close(pair.client));
  report("close again", close(pair.client));
  char byte;
  report("recv on closed", recv(pair.client, &byte, 1, 0));
  close(pair.server);
}

CONFORMANCE_CASE(kArea, fstat_reports_socket, 1, "fstat on a connected socket reports S_IFSOCK") {
  const TcpPair pair = tcp_pair();
  struct stat status {};
  report("fstat", fstat(pair.client, &status));
  say("S_ISSOCK %d", S_ISSOCK(status.st_mode));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, proc_fd_link_names_socket, 1,
                 "/proc/self/fd/N of a connected socket reads 'socket:[...]'") {
  const TcpPair pair = tcp_pair();
  char target[PATH_MAX] = {};
  const std::string link = "/proc/self/fd/" + std::to_string(pair.client);
  say("readlink succeeds: %d", readlink(link.c_str(), target, sizeof target - 1) > 0);
  say("starts with socket:[ %d", strncmp(target, "socket:[", 8) == 0);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, socket_options_describe_socket, 2,
                 "SO_TYPE, SO_DOMAIN, SO_PROTOCOL and SO_ACCEPTCONN of listeners and connections") {
  const int listener = tcp_listener(AF_INET6);
  show_int_option("listener SO_TYPE", listener, SOL_SOCKET, SO_TYPE);
  show_int_option("listener SO_DOMAIN", listener, SOL_SOCKET, SO_DOMAIN);
  show_int_option("listener SO_PROTOCOL", listener, SOL_SOCKET, SO_PROTOCOL);
  show_int_option("listener SO_ACCEPTCONN", listener, SOL_SOCKET, SO_ACCEPTCONN);
  close(listener);
  const TcpPair pair = tcp_pair();
  show_int_option("connected SO_TYPE", pair.client, SOL_SOCKET, SO_TYPE);
  show_int_option("connected SO_DOMAIN", pair.client, SOL_SOCKET, SO_DOMAIN);
  show_int_option("connected SO_PROTOCOL", pair.client, SOL_SOCKET, SO_PROTOCOL);
  show_int_option("accepted SO_ACCEPTCONN", pair.server, SOL_SOCKET, SO_ACCEPTCONN);
  close_pair(pair);
  const TcpPair six = tcp_pair(AF_INET6);
  show_int_option("v6 connected SO_DOMAIN", six.client, SOL_SOCKET, SO_DOMAIN);
  close_pair(six);
}

CONFORMANCE_CASE(kArea, high_descriptor_in_select, 1,
                 "a socket dup2'd to descriptor 1000 works with select") {
  const TcpPair pair = tcp_pair();
  require("dup2", dup2(pair.client, 1000));
  send_text(pair.server, "high");
  fd_set readable;
  FD_ZERO(&readable);
  FD_SET(1000, &readable);
  timeval timeout{2, 0};
  report("select", select(1001, &readable, nullptr, nullptr, &timeout));
  say("readable %d", FD_ISSET(1000, &readable) != 0);
  show_exact("read", 1000, 4);
  close(1000);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, read_write_on_socket, 1,
                 "read(2)/write(2) on a socket behave like recv/send") {
  const TcpPair pair = tcp_pair();
  report("write", write(pair.client, "plain write", 11));
  char buffer[32] = {};
  report("read", read(pair.server, buffer, sizeof buffer));
  say("data %s", quoted(buffer).c_str());
  report("write 0 bytes", write(pair.client, "", 0));
  report("read 0 bytes", read(pair.server, buffer, 0));
  close_pair(pair);
}

CONFORMANCE_CASE(
    kArea, operations_on_closed_descriptor_ebadf, 0,
    "send, recv, fcntl, getsockopt and shutdown on a closed descriptor fail with EBADF") {
  const int fd = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  close(fd);
  char byte = 0;
  report("send", send(fd, &byte, 1, 0));
  report("recv", recv(fd, &byte, 1, 0));
  report("fcntl F_GETFL", fcntl(fd, F_GETFL));
  int value = 0;
  socklen_t length = sizeof value;
  report("getsockopt", getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &length));
  report("shutdown", shutdown(fd, SHUT_RDWR));
}

CONFORMANCE_CASE(kArea, socket_calls_on_regular_file_enotsock, 0,
                 "socket calls on a regular file fail with ENOTSOCK") {
  const int fd = static_cast<int>(require("open", open("/dev/null", O_RDWR)));
  char byte = 0;
  report("send", send(fd, &byte, 1, 0));
  report("recv", recv(fd, &byte, 1, 0));
  report("shutdown", shutdown(fd, SHUT_RDWR));
  report("listen", listen(fd, 1));
  close(fd);
}

}  // namespace conformance

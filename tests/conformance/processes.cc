// Processes: fork, vfork, posix_spawn, exec, daemon, threads, SO_REUSEPORT.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "conformance.h"

extern char** environ;

namespace conformance {
namespace {

constexpr const char* kArea = "processes";

// Echoes the one 4-byte line of an accepted connection; true if it was "stop".
bool echo_line(int connection) {
  const std::string line = recv_exact(connection, 4);
  send_text(connection, line);
  close(connection);
  return line == "stop";
}

// Each worker accepts from its listener and echoes one 4-byte line per
// connection until a client sends "stop"; returns how many it echoed.
int serve_echo_until_stop(int listener) {
  int served = 0;
  while (!echo_line(static_cast<int>(require("accept", accept(listener, nullptr, nullptr))))) {
    ++served;
  }
  return served;
}

// As serve_echo_until_stop, the way event-driven workers (nginx) do it: wait
// until the non-blocking listener is readable (`wait_readable`), then accept
// until EAGAIN. Another worker may have taken what woke this one.
int serve_echo_when_readable(int listener, const std::function<void(int)>& wait_readable) {
  set_nonblocking(listener, true);
  int served = 0;
  for (;;) {
    wait_readable(listener);
    for (;;) {
      const int connection = accept(listener, nullptr, nullptr);
      if (connection < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (echo_line(static_cast<int>(require("accept", connection)))) return served;
      ++served;
    }
  }
}

void wait_in_epoll(int listener) {
  static const int epoll = [listener] {
    const int created = static_cast<int>(require("epoll_create1", epoll_create1(EPOLL_CLOEXEC)));
    struct epoll_event event {};
    event.events = EPOLLIN;
    event.data.fd = listener;
    require("epoll_ctl", epoll_ctl(created, EPOLL_CTL_ADD, listener, &event));
    return created;
  }();
  struct epoll_event ready {};
  require("epoll_wait", epoll_wait(epoll, &ready, 1, -1));
}

void wait_in_poll(int listener) {
  struct pollfd ready {
    listener, POLLIN, 0
  };
  require("poll", poll(&ready, 1, -1));
}

// Connects `count` clients to `port` and checks every echo.
void run_echo_clients(uint16_t port, int count) {
  int echoed = 0;
  for (int i = 0; i < count; ++i) {
    const int client = tcp_connect(port);
    std::string line = std::to_string(100 + i);
    line.insert(0, 1, 'c');
    send_text(client, line);
    if (recv_exact(client, 4) == line) ++echoed;
    close(client);
  }
  say("echoed correctly: %d of %d", echoed, count);
}

// Stops `workers` workers, one echoed "stop" connection each, and waits for
// them; prints how many echoes they served together. A stop that reaches a
// worker already stopping (SO_REUSEPORT hashes it to that worker's closing
// listener: a reset) is sent again.
void stop_workers(uint16_t port, const std::vector<pid_t>& workers, int served_pipe) {
  for (size_t stopped = 0; stopped < workers.size();) {
    const int client = tcp_connect(port);
    send_text(client, "stop");
    char echo[4];
    if (recv(client, echo, sizeof echo, MSG_WAITALL) == sizeof echo) ++stopped;
    close(client);
  }
  int total = 0;
  for (pid_t pid : workers) {
    wait_child("worker", pid);
    int served = 0;
    require("read", read(served_pipe, &served, sizeof served));
    total += served;
  }
  say("served in total: %d", total);
}

using Serve = std::function<int(int listener)>;

// Runs `serve` on `listener` in a child that reports its count.
pid_t start_worker(int listener, int served_pipe, const Serve& serve) {
  return fork_child([=] {
    const int served = serve(listener);
    require("write", write(served_pipe, &served, sizeof served));
  });
}

// Pre-fork server: `workers` processes accept on one inherited listener,
// which the parent closes at once; the clients connect right away.
void prefork_echo(int workers, int clients, const Serve& serve = serve_echo_until_stop) {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  int served_pipe[2];
  require("pipe", pipe(served_pipe));
  std::vector<pid_t> pids;
  for (int i = 0; i < workers; ++i) pids.push_back(start_worker(listener, served_pipe[1], serve));
  close(listener);
  run_echo_clients(port, clients);
  stop_workers(port, pids, served_pipe[0]);
}

}  // namespace

CONFORMANCE_CASE(kArea, fork_child_sends_parent_receives, 1,
                 "a forked child writes on an inherited connected socket, the peer reads it") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] { send_text(pair.client, "from child"); });
  wait_child("child", pid);
  recv_once("peer recv", pair.server);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fork_child_receives_parent_sent, 1,
                 "data sent before fork is read by the child") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "before fork");
  const pid_t pid = fork_child([&] { recv_once("child recv", pair.client); });
  wait_child("child", pid);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fork_parent_and_child_alternate, 1,
                 "parent and child take turns writing on one inherited socket") {
  const TcpPair pair = tcp_pair();
  Baton child_turn, parent_turn;
  const pid_t pid = fork_child([&] {
    for (int i = 0; i < 3; ++i) {
      child_turn.wait();
      send_text(pair.client, "C");
      parent_turn.pass();
    }
  });
  for (int i = 0; i < 3; ++i) {
    send_text(pair.client, "P");
    child_turn.pass();
    parent_turn.wait();
  }
  wait_child("child", pid);
  show_exact("peer read", pair.server, 6);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fork_child_reads_parent_writes, 1,
                 "after fork the child reads while the parent writes on the other end") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] { show_exact("child got", pair.client, 8); });
  send_text(pair.server, "abcd");
  sleep_ms(20);
  send_text(pair.server, "efgh");
  wait_child("child", pid);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fork_child_close_keeps_parent_connection, 1,
                 "a child closing its copy neither ends the parent's connection nor signals EOF") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] { report("child close", close(pair.client)); });
  wait_child("child", pid);
  set_nonblocking(pair.server, true);
  recv_once("peer recv after child close", pair.server);
  send_text(pair.client, "still here");
  set_nonblocking(pair.server, false);
  recv_once("peer recv", pair.server);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fork_parent_close_child_keeps_connection, 1,
                 "the child keeps using a connection the parent closed") {
  const TcpPair pair = tcp_pair();
  Baton closed;
  const pid_t pid = fork_child([&] {
    closed.wait();
    send_text(pair.client, "child alone");
    recv_once("child recv", pair.client);
  });
  report("parent close", close(pair.client));
  closed.pass();
  recv_once("peer recv", pair.server);
  send_text(pair.server, "reply");
  wait_child("child", pid);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, fork_both_close_peer_sees_eof, 1,
                 "EOF reaches the peer only after parent and child both closed") {
  const TcpPair pair = tcp_pair();
  Baton go;
  const pid_t pid = fork_child([&] {
    go.wait();
    close(pair.client);
  });
  close(pair.client);
  set_nonblocking(pair.server, true);
  recv_once("peer recv with one copy open", pair.server);
  go.pass();
  wait_child("child", pid);
  set_nonblocking(pair.server, false);
  recv_once("peer recv after both closed", pair.server);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, fork_child_exit_keeps_parent_connection, 1,
                 "a child exiting without closing leaves the parent's connection open") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([] { _exit(0); });
  wait_child("child", pid);
  send_text(pair.server, "ping");
  recv_once("parent recv", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fork_child_shutdown_reaches_parent_copy, 1,
                 "shutdown in the child ends the shared connection for the parent too") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] { report("child shutdown", shutdown(pair.client, SHUT_WR)); });
  wait_child("child", pid);
  recv_once("peer recv", pair.server);
  signal(SIGPIPE, SIG_IGN);
  report("parent send after child shutdown", send(pair.client, "x", 1, 0));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fork_child_connects_new_socket, 1,
                 "a child makes its own connection to the parent's listener") {
  const int listener = tcp_listener();
  const pid_t pid = fork_child([&] {
    const int client = tcp_connect(local_port(listener));
    send_text(client, "new in child");
    close(client);
  });
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  show_exact("parent read", server, 12);
  wait_child("child", pid);
  close(server);
  close(listener);
}

CONFORMANCE_CASE(kArea, fork_child_accepts_on_inherited_listener, 1,
                 "the child accepts on a listener created before fork and echoes the parent") {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  const pid_t pid = fork_child([&] {
    const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
    send_text(server, recv_exact(server, 5) + "!");
    close(server);
  });
  close(listener);
  const int client = tcp_connect(port);
  send_text(client, "hello");
  show_exact("echo", client, 6);
  wait_child("child", pid);
  close(client);
}

CONFORMANCE_CASE(kArea, prefork_two_workers_share_listener, 14,
                 "pre-fork server: two workers accept on one listener, 12 clients") {
  prefork_echo(2, 12);
}

CONFORMANCE_CASE(kArea, prefork_four_workers_share_listener, 28,
                 "pre-fork server: four workers accept on one listener, 24 clients") {
  prefork_echo(4, 24);
}

CONFORMANCE_CASE(kArea, prefork_epoll_workers_share_listener, 14,
                 "pre-fork server: two workers wait in epoll and accept until EAGAIN, 12 clients") {
  prefork_echo(2, 12,
               [](int listener) { return serve_echo_when_readable(listener, wait_in_epoll); });
}

CONFORMANCE_CASE(kArea, prefork_poll_workers_share_listener, 14,
                 "pre-fork server: two workers wait in poll and accept until EAGAIN, 12 clients") {
  prefork_echo(2, 12,
               [](int listener) { return serve_echo_when_readable(listener, wait_in_poll); });
}

CONFORMANCE_CASE(kArea, listener_closed_after_poll_leaves_connection_to_sibling, 1,
                 "a worker sees the queued connection in poll and closes its listener: the other "
                 "worker accepts it") {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  Baton first_turn, second_turn;
  const pid_t first = fork_child([&] {
    first_turn.wait();
    wait_in_poll(listener);
    say("first worker saw a connection, closes its listener");
    close(listener);
  });
  const pid_t second = fork_child([&] {
    second_turn.wait();
    const int connection = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
    send_text(connection, "second: " + recv_exact(connection, 5));
    close(connection);
  });
  close(listener);
  const int client = tcp_connect(port);
  send_text(client, "hello");
  first_turn.pass();
  wait_child("first worker", first);
  second_turn.pass();
  show_exact("client read", client, 13);
  wait_child("second worker", second);
  close(client);
}

namespace {
// A worker sees the queued connection in poll and closes its listener while
// the other one sleeps in `wait_readable`: that one wakes and accepts it.
void sibling_wakes_for_given_back_connection(const std::function<void(int)>& wait_readable) {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  Baton first_turn, second_turn, first_closes;
  const pid_t first = fork_child([&] {
    first_turn.wait();
    wait_in_poll(listener);
    second_turn.pass();
    first_closes.wait();
    say("first worker closes its listener");
    close(listener);
  });
  const pid_t second = fork_child([&] {
    second_turn.wait();
    set_nonblocking(listener, true);
    for (;;) {
      wait_readable(listener);
      const int connection = accept(listener, nullptr, nullptr);
      if (connection < 0) continue;  // the first worker still held it
      set_nonblocking(connection, false);
      send_text(connection, "second: " + recv_exact(connection, 5));
      close(connection);
      return;
    }
  });
  close(listener);
  const int client = tcp_connect(port);
  send_text(client, "hello");
  first_turn.pass();
  sleep_ms(100);  // the second worker is asleep by then
  first_closes.pass();
  wait_child("first worker", first);
  show_exact("client read", client, 13);
  wait_child("second worker", second);
  close(client);
}

}  // namespace

CONFORMANCE_CASE(kArea, listener_closed_after_poll_wakes_sibling_in_epoll, 1,
                 "a worker sees the queued connection in poll and closes its listener while the "
                 "other worker sleeps in epoll: that one wakes and accepts it") {
  sibling_wakes_for_given_back_connection(wait_in_epoll);
}

CONFORMANCE_CASE(kArea, listener_closed_after_poll_wakes_sibling_in_poll, 1,
                 "a worker sees the queued connection in poll and closes its listener while the "
                 "other worker sleeps in poll: that one wakes and accepts it") {
  sibling_wakes_for_given_back_connection(wait_in_poll);
}

CONFORMANCE_CASE(kArea, fork_nonblocking_flag_is_shared, 1,
                 "O_NONBLOCK set in the child is seen by the parent (one open file)") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] { set_nonblocking(pair.client, true); });
  wait_child("child", pid);
  say("parent sees O_NONBLOCK: %d", (fcntl(pair.client, F_GETFL) & O_NONBLOCK) != 0);
  recv_once("parent recv", pair.client);
  close_pair(pair);
}

namespace {
// A recv that must wait: the peer sends only after a while.
void show_recv_waits_for_late_data(const char* label, int fd, int peer) {
  std::thread sender = in_background([peer] {
    sleep_ms(50);
    send_text(peer, "late");
  });
  recv_once(label, fd);
  sender.join();
}

// A forked child finds `fd` non-blocking and clears the flag with F_SETFL:
// the parent finds it cleared, and its recv waits for `peer`'s data.
void show_child_clears_nonblocking(int fd, int peer) {
  const pid_t pid = fork_child([&] {
    show_status_flags("child", fd);
    report("child F_SETFL", fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK));
  });
  wait_child("child", pid);
  show_status_flags("parent", fd);
  show_recv_waits_for_late_data("parent recv", fd, peer);
}
}  // namespace

CONFORMANCE_CASE(kArea, fork_child_clears_nonblocking_parent_waits, 1,
                 "FIONBIO 0 in a child clears O_NONBLOCK for the parent too: its recv waits") {
  const TcpPair pair = tcp_pair();
  set_nonblocking(pair.client, true);
  const pid_t pid = fork_child([&] {
    int off = 0;
    report("child FIONBIO 0", ioctl(pair.client, FIONBIO, &off));
  });
  wait_child("child", pid);
  show_status_flags("parent", pair.client);
  show_recv_waits_for_late_data("parent recv", pair.client, pair.server);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, accept4_nonblock_shared_with_forked_child, 1,
                 "accept4(SOCK_NONBLOCK): a forked child sees the flag and clears it with F_SETFL "
                 "for the parent too") {
  const int listener = tcp_listener();
  const int client = tcp_connect(local_port(listener));
  const int server =
      static_cast<int>(require("accept4", accept4(listener, nullptr, nullptr, SOCK_NONBLOCK)));
  close(listener);
  show_child_clears_nonblocking(server, client);
  close(client);
  close(server);
}

CONFORMANCE_CASE(kArea, socket_nonblock_flag_shared_after_fork, 1,
                 "socket(SOCK_NONBLOCK), connected: a forked child sees O_NONBLOCK and clears it "
                 "for the parent too") {
  const int listener = tcp_listener();
  const int client =
      static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)));
  tcp_connect_result(client, local_port(listener));
  pollfd connected{client, POLLOUT, 0};
  require("poll", poll(&connected, 1, 5000));
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  close(listener);
  show_child_clears_nonblocking(client, server);
  close(client);
  close(server);
}

CONFORMANCE_CASE(kArea, fork_child_sets_listener_nonblocking, 0,
                 "FIONBIO 1 on a listener in a child: the parent's accept fails with EAGAIN") {
  const int listener = tcp_listener();
  const pid_t pid = fork_child([&] {
    int on = 1;
    report("child FIONBIO 1", ioctl(listener, FIONBIO, &on));
  });
  wait_child("child", pid);
  show_status_flags("parent", listener);
  report("parent accept", accept(listener, nullptr, nullptr));
  close(listener);
}

CONFORMANCE_CASE(kArea, fork_after_thread_child_uses_socket, 1,
                 "fork after a thread was created; the child uses the inherited socket") {
  const TcpPair pair = tcp_pair();
  std::thread([] {}).join();
  const pid_t pid = fork_child([&] { send_text(pair.client, "after thread"); });
  wait_child("child", pid);
  show_exact("peer read", pair.server, 12);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fork_grandchild_uses_socket, 1,
                 "a grandchild writes on a socket created two forks earlier") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] {
    const pid_t grandchild = fork_child([&] { send_text(pair.client, "grandchild"); });
    wait_child("grandchild", grandchild);
  });
  wait_child("child", pid);
  show_exact("peer read", pair.server, 10);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, fork_child_killed_peer_keeps_parent_copy, 1,
                 "a SIGKILLed child holding a copy does not end the parent's connection") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([] { pause(); });
  kill(pid, SIGKILL);
  wait_child("child", pid);
  send_text(pair.client, "alive");
  show_exact("peer read", pair.server, 5);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, system_shell_with_open_socket, 1,
                 "system() runs a shell while a connection is open; the connection survives") {
  const TcpPair pair = tcp_pair();
  report("system", system("exit 3"));
  send_text(pair.client, "after system");
  show_exact("peer read", pair.server, 12);
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// exec, vfork, posix_spawn: the new image gets descriptor numbers as argv.

CONFORMANCE_HELPER(write_text_to_fd) {
  const int fd = std::stoi(arguments.at(0));
  send_text(fd, arguments.at(1));
}

CONFORMANCE_HELPER(echo_once_on_fd) {
  const int fd = std::stoi(arguments.at(0));
  send_text(fd, "exec got " + recv_exact(fd, 4));
}

CONFORMANCE_HELPER(report_fd_state) {
  const int fd = std::stoi(arguments.at(0));
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0) {
    report("F_GETFL after exec", flags);
    return;
  }
  say("after exec O_NONBLOCK: %d", (flags & O_NONBLOCK) != 0);
  int type = 0;
  socklen_t length = sizeof type;
  report("SO_TYPE after exec",
         getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 ? type : -1);
}

CONFORMANCE_HELPER(set_nonblocking_on_fd) {
  const int fd = std::stoi(arguments.at(0));
  report("F_SETFL in the new image", fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK));
}

CONFORMANCE_HELPER(accept_and_greet) {
  const int listener = std::stoi(arguments.at(0));
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  send_text(server, "greetings from exec");
  close(server);
}

CONFORMANCE_HELPER(exec_again_then_write) {
  exec_helper("write_text_to_fd", {arguments.at(0), "twice"});
}

CONFORMANCE_CASE(kArea, exec_keeps_socket_without_cloexec, 1,
                 "a socket without FD_CLOEXEC survives exec and carries data both ways") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] {
    close(pair.server);
    exec_helper("echo_once_on_fd", {std::to_string(pair.client)});
  });
  send_text(pair.server, "ping");
  show_exact("peer read", pair.server, 13);
  wait_child("exec child", pid);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, exec_closes_cloexec_socket, 1,
                 "FD_CLOEXEC closes the socket at exec; the peer then sees EOF") {
  const TcpPair pair = tcp_pair();
  require("F_SETFD", fcntl(pair.client, F_SETFD, FD_CLOEXEC));
  const pid_t pid = fork_child([&] {
    close(pair.server);
    exec_helper("report_fd_state", {std::to_string(pair.client)});
  });
  wait_child("exec child", pid);
  close(pair.client);
  recv_once("peer recv", pair.server);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, exec_preserves_nonblocking_flag, 1,
                 "O_NONBLOCK and the socket type are still reported after exec") {
  const TcpPair pair = tcp_pair();
  set_nonblocking(pair.client, true);
  const pid_t pid =
      fork_child([&] { exec_helper("report_fd_state", {std::to_string(pair.client)}); });
  wait_child("exec child", pid);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, exec_listener_accepts_in_new_image, 1,
                 "an inherited listener accepts in the exec'd image") {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  const pid_t pid =
      fork_child([&] { exec_helper("accept_and_greet", {std::to_string(listener)}); });
  close(listener);
  const int client = tcp_connect(port);
  show_exact("client read", client, 19);
  wait_child("exec child", pid);
  close(client);
}

CONFORMANCE_CASE(kArea, exec_twice_socket_still_works, 1, "a socket survives two execs in a row") {
  const TcpPair pair = tcp_pair();
  const pid_t pid =
      fork_child([&] { exec_helper("exec_again_then_write", {std::to_string(pair.client)}); });
  wait_child("exec child", pid);
  show_exact("peer read", pair.server, 5);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, exec_image_exit_gives_peer_eof, 1,
                 "the peer reads EOF once the exec'd image, the socket's last holder, exits") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] {
    close(pair.server);
    exec_helper("write_text_to_fd", {std::to_string(pair.client), "bye"});
  });
  close(pair.client);
  show_exact("peer read", pair.server, 3);
  recv_once("peer recv after the image exited", pair.server);
  wait_child("exec child", pid);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, exec_keeps_second_connection_to_a_listener, 2,
                 "the second connection to one listener (a channel's, under netaccel) survives "
                 "exec; the peer reads EOF when the image exits") {
  const int listener = tcp_listener();
  const int first = tcp_connect(local_port(listener));
  const int first_server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  const int second = tcp_connect(local_port(listener));
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  const pid_t pid = fork_child([&] {
    close(server);
    exec_helper("echo_once_on_fd", {std::to_string(second)});
  });
  close(second);
  send_text(server, "ping");
  show_exact("peer read", server, 13);
  recv_once("peer recv after the image exited", server);
  wait_child("exec child", pid);
  for (const int fd : {first, first_server, server, listener}) close(fd);
}

CONFORMANCE_HELPER(exchange_then_close) {
  const int client = std::stoi(arguments.at(0));
  const int server = std::stoi(arguments.at(1));
  send_text(client, "across exec");
  show_exact("server read", server, 11);
  send_text(server, "back");
  show_exact("client read", client, 4);
  close(client);
  recv_once("server recv after the client closed", server);
  close(server);
}

CONFORMANCE_CASE(kArea, exec_in_place_keeps_both_ends, 1,
                 "a process that execs itself keeps both ends of its connection working") {
  const TcpPair pair = tcp_pair();
  exec_helper("exchange_then_close", {std::to_string(pair.client), std::to_string(pair.server)});
}

CONFORMANCE_HELPER(write_text_then_pause) {
  send_text(std::stoi(arguments.at(0)), "ready");
  pause();
}

CONFORMANCE_CASE(
    kArea, exec_image_killed_gives_peer_eof, 1,
    "SIGKILL of the exec'd image holding the socket ends the connection for the peer") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] {
    close(pair.server);
    exec_helper("write_text_then_pause", {std::to_string(pair.client)});
  });
  close(pair.client);
  show_exact("peer read", pair.server, 5);
  kill(pid, SIGKILL);
  recv_once("peer recv after the kill", pair.server);
  wait_child("exec child", pid);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, vfork_exec_child_writes_socket, 1,
                 "vfork + exec: the new image writes on the inherited socket") {
  const TcpPair pair = tcp_pair();
  const std::vector<std::string> command =
      helper_command("write_text_to_fd", {std::to_string(pair.client), "vforked"});
  std::vector<char*> argv;
  for (const std::string& argument : command) argv.push_back(const_cast<char*>(argument.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = vfork();
  if (pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  wait_child("vfork child", pid);
  show_exact("peer read", pair.server, 7);
  close_pair(pair);
}

namespace {
pid_t spawn_helper(const std::vector<std::string>& command, posix_spawn_file_actions_t* actions) {
  std::vector<char*> argv;
  for (const std::string& argument : command) argv.push_back(const_cast<char*>(argument.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int error = posix_spawn(&pid, argv[0], actions, nullptr, argv.data(), environ);
  if (error != 0) {
    errno = error;
    die("posix_spawn");
  }
  return pid;
}
}  // namespace

CONFORMANCE_CASE(kArea, posix_spawn_child_inherits_socket, 1,
                 "posix_spawn: the child writes on an inherited socket") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = spawn_helper(
      helper_command("write_text_to_fd", {std::to_string(pair.client), "spawned"}), nullptr);
  wait_child("spawned child", pid);
  show_exact("peer read", pair.server, 7);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, posix_spawn_child_outlives_parent_copy, 1,
                 "posix_spawn: the parent closes its copy, the child still writes, the peer reads "
                 "EOF when the child exits") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = spawn_helper(
      helper_command("write_text_to_fd", {std::to_string(pair.client), "spawned"}), nullptr);
  close(pair.client);
  show_exact("peer read", pair.server, 7);
  recv_once("peer recv after the child exited", pair.server);
  wait_child("spawned child", pid);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, posix_spawn_image_sets_nonblocking_seen_by_parent, 1,
                 "O_NONBLOCK set by a spawned image on an inherited socket: the parent's recv "
                 "fails with EAGAIN") {
  const TcpPair pair = tcp_pair();
  const pid_t pid =
      spawn_helper(helper_command("set_nonblocking_on_fd", {std::to_string(pair.client)}), nullptr);
  wait_child("spawned child", pid);
  show_status_flags("parent", pair.client);
  recv_once("parent recv", pair.client);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, exec_image_sees_flag_changed_after_fork, 1,
                 "O_NONBLOCK cleared after a fork had shared the socket: a spawned image sees "
                 "it cleared") {
  const TcpPair pair = tcp_pair();
  set_nonblocking(pair.client, true);
  wait_child("forked child", fork_child([] {}));
  set_nonblocking(pair.client, false);
  const pid_t pid =
      spawn_helper(helper_command("report_fd_state", {std::to_string(pair.client)}), nullptr);
  wait_child("spawned child", pid);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, posix_spawn_dup2_socket_to_stdout, 1,
                 "posix_spawn with a dup2 file action makes the socket the child's stdout") {
  const TcpPair pair = tcp_pair();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pair.client, STDOUT_FILENO);
  const pid_t pid = spawn_helper({"/bin/echo", "spawned echo"}, &actions);
  posix_spawn_file_actions_destroy(&actions);
  wait_child("echo", pid);
  close(pair.client);
  const Drained drained = drain(pair.server);
  say("peer read %zu bytes", drained.bytes);
  close(pair.server);
}

CONFORMANCE_HELPER(freopen_stdout_to_file) {
  printf("before freopen\n");
  if (freopen(arguments.at(0).c_str(), "w", stdout) == nullptr) die("freopen");
  printf("printf after freopen\n");
  const char written[] = "write(1) after freopen\n";
  if (write(STDOUT_FILENO, written, sizeof written - 1) < 0) die("write");
  fclose(stdout);
}

CONFORMANCE_CASE(kArea, posix_spawn_socket_stdout_freopen_to_file, 1,
                 "an image whose stdout is a socket reopens stdout on a file: what it printed "
                 "before goes to the socket, everything after (printf, write(1)) to the file") {
  const TcpPair pair = tcp_pair();
  char path[] = "/tmp/conformance-freopen.XXXXXX";
  close(static_cast<int>(require("mkstemp", mkstemp(path))));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pair.client, STDOUT_FILENO);
  const pid_t pid = spawn_helper(helper_command("freopen_stdout_to_file", {path}), &actions);
  posix_spawn_file_actions_destroy(&actions);
  wait_child("helper", pid);
  close(pair.client);
  show_exact("peer read", pair.server, 256);
  const int file = static_cast<int>(require("open", open(path, O_RDONLY)));
  char contents[256] = {};
  report("read file", read(file, contents, sizeof contents - 1));
  say("file %s", quoted(contents).c_str());
  close(file);
  unlink(path);
  close(pair.server);
}

namespace {
// inetd: accept, fork, the connection on stdin and stdout, exec `command`;
// the client sends `input`, shuts down writing and reads the reply to EOF.
void serve_inetd_style(const std::vector<const char*>& command, const std::string& input) {
  const int listener = tcp_listener();
  const int client = tcp_connect(local_port(listener));
  const int connection = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  const pid_t pid = require("fork", fork());
  if (pid == 0) {
    dup2(connection, STDIN_FILENO);
    dup2(connection, STDOUT_FILENO);
    close(connection);
    close(listener);
    close(client);
    std::vector<char*> argv;
    for (const char* argument : command) argv.push_back(const_cast<char*>(argument));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(connection);
  close(listener);
  send_text(client, input);
  shutdown(client, SHUT_WR);
  show_exact("client read", client, 4096);
  wait_child("server", pid);
  close(client);
}
}  // namespace

CONFORMANCE_CASE(kArea, inetd_cat_echoes_connection, 1,
                 "inetd style: cat with the connection on stdin and stdout echoes it") {
  serve_inetd_style({"/bin/cat"}, "first line\nsecond line\n");
}

CONFORMANCE_CASE(kArea, inetd_sed_filters_connection, 1,
                 "inetd style: sed (stdio: fdopen'd stdin, buffered stdout) filters the "
                 "connection") {
  serve_inetd_style({"/bin/sed", "-e", "s/o/0/g", "-e", "2q"}, "one\ntwo\nthree\n");
}

CONFORMANCE_CASE(kArea, inetd_python_upper_cases_connection, 1,
                 "inetd style: python3 -c reads stdin to EOF and writes it back upper-cased") {
  serve_inetd_style(
      {"/usr/bin/python3", "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"},
      "python on a socket\n");
}

CONFORMANCE_CASE(kArea, posix_spawn_sed_socket_on_stdin_and_stdout, 1,
                 "posix_spawn with dup2 actions: sed reads the socket and writes back to it, "
                 "its stderr the socket too (unbuffered)") {
  const TcpPair pair = tcp_pair();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  for (const int fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}) {
    posix_spawn_file_actions_adddup2(&actions, pair.client, fd);
  }
  const pid_t pid =
      spawn_helper({"/bin/sed", "-e", "s/^/sed: /", "-e", "$w /dev/stderr"}, &actions);
  posix_spawn_file_actions_destroy(&actions);
  close(pair.client);
  send_text(pair.server, "a\nb\n");
  shutdown(pair.server, SHUT_WR);
  show_exact("peer read", pair.server, 4096);
  wait_child("sed", pid);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, fork_child_dup2_socket_onto_stdout_then_printf, 1,
                 "a forked child dup2s the socket onto stdout and prints without exec: what "
                 "stdout buffered before and after goes to the peer") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] {
    printf("buffered before dup2\n");
    dup2(pair.client, STDOUT_FILENO);
    printf("printf after dup2\n");
  });
  wait_child("child", pid);
  close(pair.client);
  show_exact("peer read", pair.server, 128);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, fork_child_close_then_dup_socket_onto_stdin, 1,
                 "a forked child closes stdin and dups the socket into its place: fgets and fread "
                 "on stdin read the connection") {
  const TcpPair pair = tcp_pair();
  send_text(pair.server, "a line\nthe rest");
  shutdown(pair.server, SHUT_WR);
  const pid_t pid = fork_child([&] {
    close(STDIN_FILENO);
    if (dup(pair.client) != STDIN_FILENO) die("dup onto stdin");
    char line[32] = {};
    say("fgets: %s", quoted(fgets(line, sizeof line, stdin) != nullptr ? line : "NULL").c_str());
    char rest[32] = {};
    const size_t got = fread(rest, 1, sizeof rest - 1, stdin);
    say("fread: %zu %s feof %d", got, quoted(rest).c_str(), feof(stdin) != 0);
  });
  wait_child("child", pid);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, shell_redirects_to_socket, 1,
                 "a shell command writes to the socket through its inherited stdout") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] {
    dup2(pair.client, STDOUT_FILENO);
    close(pair.client);
    close(pair.server);
    execl("/bin/sh", "sh", "-c", "printf 'shell line\\n'; printf 'second\\n'", nullptr);
    _exit(127);
  });
  wait_child("shell", pid);
  close(pair.client);
  show_exact("peer read", pair.server, 64);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, daemon_process_keeps_socket, 1,
                 "daemon(1, 1) in a child: the daemonised process writes on the socket") {
  const TcpPair pair = tcp_pair();
  const pid_t pid = fork_child([&] {
    if (daemon(1, 1) != 0) die("daemon");
    send_text(pair.client, "from daemon");
  });
  wait_child("child", pid);
  show_exact("peer read", pair.server, 11);
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// Threads.

CONFORMANCE_CASE(kArea, thread_sends_main_receives, 1,
                 "a thread writes, the main thread reads the other end") {
  const TcpPair pair = tcp_pair();
  std::thread writer([&] { send_text(pair.client, "from thread"); });
  show_exact("main read", pair.server, 11);
  writer.join();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, thread_created_after_connection, 1,
                 "a connection made single-threaded is used from a thread created later") {
  const TcpPair pair = tcp_pair();
  send_text(pair.client, "a");
  std::thread worker([&] {
    send_text(pair.client, "b");
    show_exact("thread read", pair.client, 2);
  });
  show_exact("main read", pair.server, 2);
  send_text(pair.server, "ok");
  worker.join();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, thread_blocked_in_recv_woken_by_peer, 1,
                 "a thread blocked in recv wakes when the main thread's peer sends") {
  const TcpPair pair = tcp_pair();
  std::string got;
  std::thread reader([&] { got = recv_exact(pair.server, 5); });
  sleep_ms(50);
  send_text(pair.client, "wake!");
  reader.join();
  say("thread read: %s", quoted(got).c_str());
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, threads_each_own_connection, 8,
                 "eight threads each connect, echo 64 KiB and close") {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  std::thread server([&] {
    std::vector<std::thread> handlers;
    for (int i = 0; i < 8; ++i) {
      const int connection =
          static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
      handlers.emplace_back([connection] {
        const std::string data = recv_exact(connection, 65536);
        send_text(connection, data);
        close(connection);
      });
    }
    for (auto& handler : handlers) handler.join();
  });
  std::vector<std::thread> clients;
  std::vector<int> correct(8, 0);
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&, i] {
      const int client = tcp_connect(port);
      const std::vector<unsigned char> data = pattern(65536, i);
      send_all(client, data.data(), data.size());
      const std::string echo = recv_exact(client, data.size());
      correct[i] = echo.size() == data.size() && memcmp(echo.data(), data.data(), data.size()) == 0;
      close(client);
    });
  }
  for (auto& client : clients) client.join();
  server.join();
  int total = 0;
  for (int value : correct) total += value;
  say("correct echoes: %d of 8", total);
  close(listener);
}

CONFORMANCE_CASE(kArea, threads_send_and_receive_simultaneously, 1,
                 "both directions at once, 4 MiB each, from two threads per end") {
  const TcpPair pair = tcp_pair();
  const std::vector<unsigned char> up = pattern(4 << 20, 1), down = pattern(4 << 20, 2);
  std::thread up_writer([&] {
    send_all(pair.client, up.data(), up.size());
    shutdown(pair.client, SHUT_WR);
  });
  std::thread down_writer([&] {
    send_all(pair.server, down.data(), down.size());
    shutdown(pair.server, SHUT_WR);
  });
  Drained at_client{}, at_server{};
  std::thread up_reader([&] { at_server = drain(pair.server); });
  at_client = drain(pair.client);
  up_reader.join();
  up_writer.join();
  down_writer.join();
  say("server got %zu bytes, intact %d", at_server.bytes,
      at_server.digest == digest(up.data(), up.size()));
  say("client got %zu bytes, intact %d", at_client.bytes,
      at_client.digest == digest(down.data(), down.size()));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, pthread_detached_thread_uses_socket, 1,
                 "a detached pthread writes and signals completion") {
  const TcpPair pair = tcp_pair();
  pthread_t thread;
  static int client_fd;
  client_fd = pair.client;
  pthread_attr_t attributes;
  pthread_attr_init(&attributes);
  pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
  report("pthread_create", pthread_create(
                               &thread, &attributes,
                               [](void*) -> void* {
                                 send_text(client_fd, "detached");
                                 return nullptr;
                               },
                               nullptr));
  pthread_attr_destroy(&attributes);
  show_exact("peer read", pair.server, 8);
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// SO_REUSEPORT across processes.

namespace {
// A SO_REUSEPORT socket bound to `port` on loopback (0: any port).
int reuseport_socket(uint16_t port) {
  const int fd = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1);
  const sockaddr_storage address = loopback_address(AF_INET, port);
  report("bind", bind(fd, reinterpret_cast<const sockaddr*>(&address), address_length(AF_INET)));
  return fd;
}
}  // namespace

CONFORMANCE_CASE(kArea, reuseport_listeners_in_two_processes, 18,
                 "two processes each bind and listen on one port with SO_REUSEPORT; 16 clients") {
  // The parent's bound, never listening socket only reserves the port.
  const int reservation = reuseport_socket(0);
  const uint16_t port = local_port(reservation);
  int served_pipe[2];
  require("pipe", pipe(served_pipe));
  std::vector<pid_t> workers;
  for (int i = 0; i < 2; ++i) {
    Baton listening;
    workers.push_back(fork_child([&] {
      const int listener = reuseport_socket(port);
      require("listen", listen(listener, 64));
      listening.pass();
      const int served = serve_echo_until_stop(listener);
      require("write", write(served_pipe[1], &served, sizeof served));
    }));
    listening.wait();
  }
  run_echo_clients(port, 16);
  stop_workers(port, workers, served_pipe[0]);
  close(reservation);
}

CONFORMANCE_CASE(kArea, reuseport_missing_gives_eaddrinuse, 0,
                 "binding a listening port again without SO_REUSEPORT fails with EADDRINUSE") {
  const int listener = tcp_listener();
  const int second = static_cast<int>(require("socket", socket(AF_INET, SOCK_STREAM, 0)));
  sockaddr_storage same = loopback_address(AF_INET, local_port(listener));
  report("second bind", bind(second, reinterpret_cast<sockaddr*>(&same), address_length(AF_INET)));
  close(second);
  close(listener);
}

}  // namespace conformance

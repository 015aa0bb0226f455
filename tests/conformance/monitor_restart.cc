// Monitor restart: killing and restarting the monitor breaks no established
// connection, and while it is down new connections fall back to the kernel.
// On the kernel monitor_stop/monitor_start do nothing, so the transcripts
// must match. The runner adds up what each monitor carried (a stopped one's
// counter is recorded at the stop).
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conformance.h"

namespace conformance {
namespace {

constexpr const char* kArea = "monitor-restart";

void exchange(const char* label, const TcpPair& pair) {
  const std::string there = std::string(label) + " ->";
  const std::string back = std::string(label) + " <-";
  send_text(pair.client, there);
  say("%s server read %s", label, quoted(recv_exact(pair.server, there.size())).c_str());
  send_text(pair.server, back);
  say("%s client read %s", label, quoted(recv_exact(pair.client, back.size())).c_str());
}

}  // namespace

CONFORMANCE_CASE(kArea, restart_established_connection_keeps_working, 1,
                 "a connection carries data before, during and after a monitor restart") {
  const TcpPair pair = tcp_pair();
  exchange("before", pair);
  monitor_stop();
  exchange("down", pair);
  monitor_start();
  exchange("after", pair);
  close(pair.client);
  recv_once("server recv after close", pair.server);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, restart_new_connection_while_down_falls_back, 1,
                 "while the monitor is down a new connection still works (on the kernel)") {
  const TcpPair before = tcp_pair();
  monitor_stop();
  const TcpPair during = tcp_pair();
  exchange("during", during);
  exchange("before", before);
  close_pair(during);
  monitor_start();
  close_pair(before);
}

CONFORMANCE_CASE(kArea, restart_listener_keeps_accepting, 1,
                 "a listener made before the stop accepts while down and after the restart") {
  const int listener = tcp_listener();
  const uint16_t port = local_port(listener);
  auto connect_and_greet = [&](const char* label) {
    const int client = tcp_connect(port);
    const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
    send_text(client, label);
    say("server read %s", quoted(recv_exact(server, 5)).c_str());
    close(server);
    close(client);
  };
  connect_and_greet("first");
  monitor_stop();
  connect_and_greet("down!");
  monitor_start();
  connect_and_greet("again");
  close(listener);
}

CONFORMANCE_CASE(kArea, restart_during_bulk_transfer, 1,
                 "8 MiB stream stays intact while the monitor is stopped and started mid-way") {
  const TcpPair pair = tcp_pair();
  const std::vector<unsigned char> data = pattern(8 << 20, 31);
  std::thread writer = in_background([&] {
    send_all(pair.client, data.data(), data.size());
    close(pair.client);
  });
  std::vector<unsigned char> first_half(4 << 20);
  report("recv first half", recv(pair.server, first_half.data(), first_half.size(), MSG_WAITALL));
  monitor_stop();
  monitor_start();
  const Drained rest = drain(pair.server);
  say("rest %zu bytes, first half intact %d", rest.bytes,
      memcmp(first_half.data(), data.data(), first_half.size()) == 0);
  const std::vector<unsigned char> second_half(data.begin() + first_half.size(), data.end());
  say("second half intact %d", rest.digest == digest(second_half.data(), second_half.size()));
  writer.join();
  close(pair.server);
}

CONFORMANCE_CASE(kArea, restart_close_while_down_gives_eof, 1,
                 "closing one end while the monitor is down still gives the peer EOF") {
  const TcpPair pair = tcp_pair();
  monitor_stop();
  send_text(pair.client, "bye");
  close(pair.client);
  recv_once("server recv", pair.server);
  recv_once("server recv at EOF", pair.server);
  close(pair.server);
  monitor_start();
}

CONFORMANCE_CASE(kArea, restart_shutdown_while_down, 1,
                 "shutdown(SHUT_WR) while the monitor is down: EOF one way, data the other") {
  const TcpPair pair = tcp_pair();
  monitor_stop();
  report("shutdown", shutdown(pair.client, SHUT_WR));
  recv_once("server recv", pair.server);
  send_text(pair.server, "reply");
  recv_once("client recv", pair.client);
  monitor_start();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, restart_epoll_keeps_reporting, 1,
                 "an epoll set made before the stop reports readiness while down") {
  const TcpPair pair = tcp_pair();
  const int epfd = static_cast<int>(require("epoll_create1", epoll_create1(0)));
  epoll_event event{};
  event.events = EPOLLIN;
  require("epoll_ctl", epoll_ctl(epfd, EPOLL_CTL_ADD, pair.server, &event));
  monitor_stop();
  std::thread sender = in_background([&] {
    sleep_ms(50);
    send_text(pair.client, "x");
  });
  epoll_event ready{};
  report("epoll_wait", epoll_wait(epfd, &ready, 1, 5000));
  say("events %s", epoll_events_text(ready.events).c_str());
  sender.join();
  monitor_start();
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, restart_fork_while_down, 1,
                 "a child forked while the monitor is down uses the inherited connection") {
  const TcpPair pair = tcp_pair();
  monitor_stop();
  const pid_t child = fork_child([&] { send_text(pair.client, "child while down"); });
  wait_child("child", child);
  say("server read %s", quoted(recv_exact(pair.server, 16)).c_str());
  monitor_start();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, restart_blocked_reader_survives, 1,
                 "a reader blocked in recv across the restart gets the data sent afterwards") {
  const TcpPair pair = tcp_pair();
  std::thread reader =
      in_background([&] { say("reader got %s", quoted(recv_exact(pair.server, 5)).c_str()); });
  sleep_ms(50);
  monitor_stop();
  monitor_start();
  send_text(pair.client, "after");
  reader.join();
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, restart_then_new_connections_work, 4,
                 "after a restart, new connections work and go through netaccel again") {
  const TcpPair before = tcp_pair();
  monitor_stop();
  monitor_start();
  for (int i = 0; i < 3; ++i) {
    const TcpPair after = tcp_pair();
    exchange("after restart", after);
    close_pair(after);
  }
  exchange("old", before);
  close_pair(before);
}

CONFORMANCE_CASE(kArea, restart_sigpipe_semantics_unchanged, 1,
                 "with the monitor down, writing to a closed peer still gives EPIPE") {
  const TcpPair pair = tcp_pair();
  monitor_stop();
  count_signal(SIGPIPE, true);
  close(pair.server);
  report("first send", send(pair.client, "a", 1, 0));
  sleep_ms(50);
  report("second send", send(pair.client, "b", 1, 0));
  say("SIGPIPE caught: %d", signals_caught());
  monitor_start();
  close(pair.client);
}

CONFORMANCE_CASE(kArea, restart_fork_shared_end_closes_with_last_holder, 1,
                 "an end shared with a child before a restart ends, with EOF, when the last "
                 "holder lets go after it") {
  const TcpPair pair = tcp_pair();
  Baton restarted;
  const pid_t child = fork_child([&] {
    restarted.wait();
    send_text(pair.client, "from child");
  });
  monitor_stop();
  monitor_start();
  close(pair.client);
  restarted.pass();
  wait_child("child", child);
  say("server read %s", quoted(recv_exact(pair.server, 10)).c_str());
  recv_once("server recv after the last holder", pair.server);
  close(pair.server);
}

CONFORMANCE_CASE(kArea, restart_shared_end_killed_while_down, 1,
                 "with the monitor down, the last holder of a fork-shared end is killed: "
                 "the peer gets EOF") {
  const TcpPair pair = tcp_pair();
  Baton forever;
  const pid_t child = fork_child([&] { forever.wait(); });
  monitor_stop();
  close(pair.client);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  recv_once("server recv after the kill", pair.server);
  monitor_start();
  close(pair.server);
}

}  // namespace conformance

// Pipes: pipe/pipe2 with the same fork, exec, dup and readiness semantics
// applications rely on. Under netaccel a pipe's data goes through a ring
// while only preloaded forks of its creator hold it, and through the kernel
// pipe once something else may reach it (exec, stdio, SCM_RIGHTS, splice):
// the cases cover both and the hand-over between them.
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "conformance.h"

namespace conformance {
namespace {

constexpr const char* kArea = "pipes";

struct Pipe {
  int read_end;
  int write_end;
};

Pipe make_pipe(int flags = 0) {
  int ends[2];
  require("pipe2", pipe2(ends, flags));
  return {ends[0], ends[1]};
}

void close_pipe(const Pipe& p) {
  close(p.read_end);
  close(p.write_end);
}

std::string read_some(const char* label, int fd, size_t capacity = 256) {
  std::string buffer(capacity, '\0');
  const ssize_t got = read(fd, buffer.data(), capacity);
  return report_data(label, got, std::move(buffer));
}

void write_all(int fd, const void* data, size_t length) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  size_t done = 0;
  while (done < length) {
    const ssize_t wrote = write(fd, bytes + done, length - done);
    if (wrote < 0 && errno == EINTR) continue;
    require("write", wrote);
    done += static_cast<size_t>(wrote);
  }
}

// A one-byte write with a SIGPIPE handler installed, and whether it ran.
void show_write_with_sigpipe_caught(const char* label, int fd) {
  count_signal(SIGPIPE, true);
  report(label, write(fd, "x", 1));
  say("SIGPIPE caught: %d", signals_caught());
}

void show_poll_of(const char* label, int fd, short events) {
  pollfd entry{fd, events, 0};
  const int ready = poll(&entry, 1, 0);
  say("%s: %d %s", label, ready, poll_events_text(entry.revents).c_str());
}

// A new epoll instance watching `fd` for `events`.
int epoll_watching(int fd, uint32_t events) {
  const int epfd = static_cast<int>(require("epoll_create1", epoll_create1(0)));
  epoll_event event{};
  event.events = events;
  require("epoll_ctl", epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event));
  return epfd;
}

// One epoll_wait for one event, printed; returns the events (0 if none).
uint32_t show_epoll_wait(const char* label, int epfd, int timeout_ms) {
  epoll_event ready{};
  const int count = epoll_wait(epfd, &ready, 1, timeout_ms);
  say("%s: %d %s", label, count, count > 0 ? epoll_events_text(ready.events).c_str() : "");
  return count > 0 ? ready.events : 0;
}

void show_epoll_of(const char* label, int fd, uint32_t events) {
  const int epfd = epoll_watching(fd, events);
  show_epoll_wait(label, epfd, 0);
  close(epfd);
}

// Runs `command` through /bin/bash -c and prints its stdout's size and
// digest (read through a pipe), then its exit status.
void run_shell_pipeline(const char* command) {
  const Pipe output = make_pipe();
  const pid_t pid = fork_child([&] {
    dup2(output.write_end, STDOUT_FILENO);
    close_pipe(output);
    execl("/bin/bash", "bash", "-c", command, nullptr);
    _exit(127);
  });
  close(output.write_end);
  const Drained drained = drain(output.read_end);
  say("pipeline output %zu bytes, digest %016llx", drained.bytes,
      static_cast<unsigned long long>(drained.digest));
  wait_child("pipeline", pid);
  close(output.read_end);
}

}  // namespace

CONFORMANCE_CASE(kArea, pipe_write_then_read, 0, "bytes written to a pipe are read back in order") {
  const Pipe p = make_pipe();
  report("write", write(p.write_end, "hello pipe", 10));
  read_some("read", p.read_end);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_eof_after_writer_closes, 0,
                 "read returns the remaining data, then 0 once every writer closed") {
  const Pipe p = make_pipe();
  write_all(p.write_end, "tail", 4);
  close(p.write_end);
  read_some("read", p.read_end);
  read_some("read at EOF", p.read_end);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_write_without_reader_sigpipe, 0,
                 "write with no reader: SIGPIPE, and EPIPE when it is caught") {
  const Pipe p = make_pipe();
  close(p.read_end);
  const pid_t pid = fork_child([&] { write(p.write_end, "x", 1); });
  wait_child("default action", pid);
  show_write_with_sigpipe_caught("write with handler", p.write_end);
  close(p.write_end);
}

CONFORMANCE_CASE(kArea, pipe2_flags_reported, 0,
                 "pipe2 O_CLOEXEC|O_NONBLOCK show in F_GETFD/F_GETFL on both ends") {
  const Pipe p = make_pipe(O_CLOEXEC | O_NONBLOCK);
  for (const auto& [label, fd] : {std::pair{"read end", p.read_end}, {"write end", p.write_end}}) {
    say("%s: FD_CLOEXEC %d O_NONBLOCK %d accmode %d", label, (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0,
        (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0, fcntl(fd, F_GETFL) & O_ACCMODE);
  }
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_nonblocking_empty_eagain, 0,
                 "read on an empty non-blocking pipe fails with EAGAIN") {
  const Pipe p = make_pipe(O_NONBLOCK);
  read_some("read", p.read_end);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_nonblocking_full_eagain, 0,
                 "a non-blocking pipe fills to its capacity, then EAGAIN") {
  const Pipe p = make_pipe(O_NONBLOCK);
  const std::vector<unsigned char> chunk = pattern(4096, 1);
  size_t total = 0;
  ssize_t wrote;
  while ((wrote = write(p.write_end, chunk.data(), chunk.size())) > 0) total += wrote;
  say("filled %zu bytes, then %s", total, errno_name(errno).c_str());
  say("F_GETPIPE_SZ %d", fcntl(p.write_end, F_GETPIPE_SZ));
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_partial_nonblocking_write, 0,
                 "a non-blocking write larger than the free space writes part of it") {
  const Pipe p = make_pipe(O_NONBLOCK);
  const std::vector<unsigned char> big = pattern(100000, 2);
  report("write 100000", write(p.write_end, big.data(), big.size()));
  report("write again", write(p.write_end, big.data(), big.size()));
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_capacity_set_and_get, 0,
                 "F_SETPIPE_SZ rounds up; F_GETPIPE_SZ reports it") {
  const Pipe p = make_pipe();
  report("F_SETPIPE_SZ 100000", fcntl(p.write_end, F_SETPIPE_SZ, 100000));
  report("F_GETPIPE_SZ", fcntl(p.read_end, F_GETPIPE_SZ));
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_fionread, 0, "FIONREAD on a pipe counts the unread bytes") {
  const Pipe p = make_pipe();
  write_all(p.write_end, "0123456789", 10);
  int pending = -1;
  report("FIONREAD", ioctl(p.read_end, FIONREAD, &pending));
  say("pending %d", pending);
  read_some("read 3", p.read_end, 3);
  report("FIONREAD", ioctl(p.read_end, FIONREAD, &pending));
  say("pending %d", pending);
  close_pipe(p);
}

CONFORMANCE_CASE(
    kArea, pipe_poll_states, 0,
    "poll on both ends: empty, with data, writer closed (POLLHUP), reader closed (POLLERR)") {
  Pipe p = make_pipe();
  show_poll_of("read end empty", p.read_end, POLLIN);
  show_poll_of("write end empty", p.write_end, POLLOUT);
  write_all(p.write_end, "x", 1);
  show_poll_of("read end with data", p.read_end, POLLIN);
  close(p.write_end);
  show_poll_of("read end, writer closed, data left", p.read_end, POLLIN);
  read_some("read", p.read_end);
  show_poll_of("read end, writer closed, drained", p.read_end, POLLIN);
  close(p.read_end);
  p = make_pipe();
  close(p.read_end);
  show_poll_of("write end, reader closed", p.write_end, POLLOUT);
  close(p.write_end);
}

CONFORMANCE_CASE(kArea, pipe_epoll_states, 0,
                 "epoll on a pipe: EPOLLIN, EPOLLOUT, EPOLLHUP, EPOLLERR") {
  Pipe p = make_pipe();
  show_epoll_of("read end empty", p.read_end, EPOLLIN);
  show_epoll_of("write end", p.write_end, EPOLLOUT);
  write_all(p.write_end, "x", 1);
  show_epoll_of("read end with data", p.read_end, EPOLLIN | EPOLLRDHUP);
  close(p.write_end);
  show_epoll_of("read end, writer closed", p.read_end, EPOLLIN | EPOLLRDHUP);
  close(p.read_end);
  p = make_pipe();
  close(p.read_end);
  show_epoll_of("write end, reader closed", p.write_end, EPOLLOUT);
  close(p.write_end);
}

CONFORMANCE_CASE(kArea, pipe_epoll_edge_triggered, 0,
                 "EPOLLET on a pipe: one event per write, none while unread") {
  const Pipe p = make_pipe();
  const int epfd = epoll_watching(p.read_end, EPOLLIN | EPOLLET);
  epoll_event ready{};
  write_all(p.write_end, "a", 1);
  report("first", epoll_wait(epfd, &ready, 1, 0));
  report("nothing new", epoll_wait(epfd, &ready, 1, 0));
  write_all(p.write_end, "b", 1);
  report("second write", epoll_wait(epfd, &ready, 1, 0));
  close(epfd);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_select_readable_writable, 0, "select on a pipe's two ends") {
  const Pipe p = make_pipe();
  write_all(p.write_end, "x", 1);
  fd_set readable, writable;
  FD_ZERO(&readable);
  FD_ZERO(&writable);
  FD_SET(p.read_end, &readable);
  FD_SET(p.write_end, &writable);
  timeval timeout{0, 0};
  report("select",
         select(std::max(p.read_end, p.write_end) + 1, &readable, &writable, nullptr, &timeout));
  say("readable %d writable %d", FD_ISSET(p.read_end, &readable) != 0,
      FD_ISSET(p.write_end, &writable) != 0);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_fork_parent_writes_child_reads, 0,
                 "after fork the child reads what the parent writes, EOF when the parent closes") {
  const Pipe p = make_pipe();
  const pid_t pid = fork_child([&] {
    close(p.write_end);
    const Drained drained = drain(p.read_end);
    say("child read %zu bytes", drained.bytes);
  });
  close(p.read_end);
  const std::vector<unsigned char> data = pattern(300000, 3);
  write_all(p.write_end, data.data(), data.size());
  close(p.write_end);
  wait_child("child", pid);
}

CONFORMANCE_CASE(kArea, pipe_child_writer_left_open_blocks_eof, 0,
                 "a write end still open in a child delays EOF until the child exits") {
  const Pipe p = make_pipe();
  Baton go;
  const pid_t pid = fork_child([&] {
    close(p.read_end);
    go.wait();
  });
  close(p.write_end);
  set_nonblocking(p.read_end, true);
  read_some("read while the child holds the write end", p.read_end);
  go.pass();
  wait_child("child", pid);
  read_some("read after the child exited", p.read_end);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_exec_child_writes_inherited_end, 0,
                 "an exec'd image writes to an inherited pipe end") {
  const Pipe p = make_pipe();
  const pid_t pid = fork_child([&] {
    close(p.read_end);
    dup2(p.write_end, STDOUT_FILENO);
    execl("/bin/echo", "echo", "through exec", nullptr);
    _exit(127);
  });
  close(p.write_end);
  const Drained drained = drain(p.read_end);
  say("read %zu bytes", drained.bytes);
  wait_child("echo", pid);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_cloexec_end_closed_at_exec, 0,
                 "an O_CLOEXEC write end does not survive exec, so the reader sees EOF") {
  const Pipe p = make_pipe(O_CLOEXEC);
  const pid_t pid = fork_child([&] {
    close(p.read_end);
    execl("/bin/sleep", "sleep", "0.2", nullptr);
    _exit(127);
  });
  close(p.write_end);
  read_some("read", p.read_end);
  wait_child("sleep", pid);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_dup_close_one_writer, 0,
                 "closing one of two duplicate write ends does not signal EOF") {
  const Pipe p = make_pipe(O_NONBLOCK);
  const int copy = static_cast<int>(require("dup", dup(p.write_end)));
  close(p.write_end);
  read_some("read with a writer left", p.read_end);
  write_all(copy, "dup", 3);
  close(copy);
  read_some("read", p.read_end);
  read_some("read at EOF", p.read_end);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_dup2_onto_stdout_with_stdio, 0,
                 "a pipe dup2'd onto stdout carries printf output") {
  const Pipe p = make_pipe();
  const pid_t pid = fork_child([&] {
    dup2(p.write_end, STDOUT_FILENO);
    close_pipe(p);
    printf("formatted %d\n", 42);
    fflush(stdout);
  });
  close(p.write_end);
  read_some("read", p.read_end);
  wait_child("printer", pid);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_read_interrupted_without_restart, 0,
                 "a blocking pipe read is interrupted with EINTR") {
  const Pipe p = make_pipe();
  count_signal(SIGALRM, false);
  alarm_after_ms(50);
  read_some("read", p.read_end);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_read_restarted_with_sa_restart, 0,
                 "with SA_RESTART a blocking pipe read survives a signal") {
  const Pipe p = make_pipe();
  count_signal(SIGALRM, true);
  const pid_t pid = fork_child([&] {
    sleep_ms(150);
    write_all(p.write_end, "later", 5);
  });
  alarm_after_ms(50);
  read_some("read", p.read_end);
  say("signals caught: %d", signals_caught());
  wait_child("writer", pid);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_atomic_writes_from_threads, 0,
                 "writes up to PIPE_BUF from four threads never interleave") {
  const Pipe p = make_pipe();
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      const std::string record(PIPE_BUF, static_cast<char>('a' + t));
      for (int i = 0; i < 50; ++i) write_all(p.write_end, record.data(), record.size());
    });
  }
  std::thread closer([&] {
    for (auto& writer : writers) writer.join();
    close(p.write_end);
  });
  int records = 0, whole = 0;
  for (std::string record; !(record = recv_exact(p.read_end, PIPE_BUF)).empty();) {
    ++records;
    whole += record.size() == PIPE_BUF && record.find_first_not_of(record[0]) == std::string::npos;
  }
  closer.join();
  say("records %d, whole %d", records, whole);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_pass_end_over_scm_rights, 0,
                 "a pipe end passed over AF_UNIX keeps working in the receiver") {
  const Pipe p = make_pipe();
  int channel[2];
  require("socketpair", socketpair(AF_UNIX, SOCK_STREAM, 0, channel));
  const pid_t pid = fork_child([&] {
    close_pipe(p);
    char payload;
    iovec data{&payload, 1};
    char control[CMSG_SPACE(sizeof(int))];
    msghdr message{};
    message.msg_iov = &data;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    require("recvmsg", recvmsg(channel[1], &message, 0));
    int received;
    memcpy(&received, CMSG_DATA(CMSG_FIRSTHDR(&message)), sizeof received);
    write_all(received, "via unix socket", 15);
  });
  char payload = 'F';
  iovec data{&payload, 1};
  char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &data;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  cmsghdr* header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(header), &p.write_end, sizeof(int));
  report("sendmsg", sendmsg(channel[0], &message, 0));
  close(p.write_end);
  wait_child("receiver", pid);
  read_some("read", p.read_end);
  read_some("read at EOF", p.read_end);
  close(p.read_end);
  close(channel[0]);
  close(channel[1]);
}

CONFORMANCE_CASE(kArea, pipe_packet_mode, 0, "pipe2 O_DIRECT keeps write boundaries") {
  const Pipe p = make_pipe(O_DIRECT);
  write_all(p.write_end, "first", 5);
  write_all(p.write_end, "second", 6);
  read_some("read 64", p.read_end, 64);
  read_some("read 64", p.read_end, 64);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_splice_and_tee, 0, "tee duplicates pipe data; splice moves it") {
  const Pipe first = make_pipe(), second = make_pipe(), third = make_pipe();
  write_all(first.write_end, "teed data", 9);
  report("tee", tee(first.read_end, second.write_end, 64, 0));
  report("splice", splice(first.read_end, nullptr, third.write_end, nullptr, 64, 0));
  read_some("from tee", second.read_end);
  read_some("from splice", third.read_end);
  close_pipe(first);
  close_pipe(second);
  close_pipe(third);
}

CONFORMANCE_CASE(kArea, pipe_readv_writev, 0, "writev and readv on a pipe") {
  const Pipe p = make_pipe();
  char a[] = "vec", b[] = "tors";
  iovec out[2] = {{a, 3}, {b, 4}};
  report("writev", writev(p.write_end, out, 2));
  char x[3] = {}, y[8] = {};
  iovec in[2] = {{x, 2}, {y, 7}};
  report("readv", readv(p.read_end, in, 2));
  say("parts %s %s", quoted(x).c_str(), quoted(y).c_str());
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_popen_reads_command_output, 0, "popen reads a command's output") {
  FILE* command = popen("seq 1 5", "r");
  if (command == nullptr) die("popen");
  char line[16];
  std::string all;
  while (fgets(line, sizeof line, command) != nullptr) all += line;
  say("read %s", quoted(all).c_str());
  report("pclose", pclose(command));
}

CONFORMANCE_CASE(kArea, bash_pipeline_large_data, 0,
                 "bash 'cmd1 | cmd2 | cmd3' over 64 MiB gives the same bytes") {
  run_shell_pipeline(
      "head -c 67108864 /dev/zero | tr '\\0' 'a' | fold -w 100 | sed 's/^/x/' | sort | uniq -c");
}

CONFORMANCE_CASE(kArea, bash_pipeline_checksum, 0,
                 "bash pipeline: seq | sha256sum over 1 million lines, and PIPESTATUS") {
  run_shell_pipeline(
      "seq 1 1000000 | sha256sum; seq 1 10 | head -1 >/dev/null; "
      "echo \"${PIPESTATUS[*]}\"");
}

CONFORMANCE_CASE(kArea, bash_process_substitution, 0,
                 "bash process substitution and a here-string through pipes") {
  run_shell_pipeline(
      "diff <(seq 1 1000) <(seq 1 1000 | cat) && echo same; "
      "tr a-z A-Z <<<'here string'");
}

CONFORMANCE_CASE(kArea, pipe_reader_gone_mid_pipeline, 0,
                 "yes | head -3: the writer dies of SIGPIPE when the reader exits") {
  run_shell_pipeline("yes | head -3; echo \"${PIPESTATUS[*]}\"");
}

// ---------------------------------------------------------------------------
// Ring-carried pipes shared by forked processes.

CONFORMANCE_CASE(kArea, pipe_fork_both_ends_in_both_processes, 0,
                 "parent and child both hold both ends and take turns on one pipe") {
  const Pipe p = make_pipe();
  Baton to_child, to_parent;
  const pid_t pid = fork_child([&] {
    to_child.wait();
    read_some("child reads", p.read_end);
    write_all(p.write_end, "from child", 10);
    to_parent.pass();
    close_pipe(p);
  });
  write_all(p.write_end, "from parent", 11);
  to_child.pass();
  to_parent.wait();
  read_some("parent reads", p.read_end);
  close(p.write_end);
  wait_child("child", pid);
  read_some("parent reads at EOF", p.read_end);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_atomic_records_from_processes, 0,
                 "four forked writers' PIPE_BUF records never interleave") {
  const Pipe p = make_pipe();
  constexpr int kWriters = 4, kRecords = 300;
  std::vector<pid_t> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.push_back(fork_child([&, w] {
      close(p.read_end);
      const std::string record(PIPE_BUF, static_cast<char>('a' + w));
      for (int i = 0; i < kRecords; ++i) write_all(p.write_end, record.data(), record.size());
    }));
  }
  close(p.write_end);
  int records = 0, whole = 0, per_writer[kWriters] = {};
  for (std::string record; !(record = recv_exact(p.read_end, PIPE_BUF)).empty();) {
    ++records;
    if (record.size() == PIPE_BUF && record.find_first_not_of(record[0]) == std::string::npos) {
      ++whole;
      if (record[0] >= 'a' && record[0] < 'a' + kWriters) ++per_writer[record[0] - 'a'];
    }
  }
  say("records %d, whole %d, per writer %d %d %d %d", records, whole, per_writer[0], per_writer[1],
      per_writer[2], per_writer[3]);
  for (const pid_t pid : writers) wait_child("writer", pid);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_eof_when_last_writer_killed, 0,
                 "the reader gets the killed writer's data, then EOF") {
  const Pipe p = make_pipe();
  Baton written;
  const pid_t pid = fork_child([&] {
    close(p.read_end);
    write_all(p.write_end, "before the kill", 15);
    written.pass();
    for (;;) pause();
  });
  close(p.write_end);
  written.wait();
  kill(pid, SIGKILL);
  wait_child("writer", pid);
  read_some("read", p.read_end);
  read_some("read at EOF", p.read_end);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_epipe_right_after_reader_closed, 0,
                 "a write fails with EPIPE and SIGPIPE as soon as the last reader closed") {
  const Pipe p = make_pipe();
  Baton closed, done;
  const pid_t pid = fork_child([&] {
    close(p.write_end);
    read_some("child reads", p.read_end);
    close(p.read_end);
    closed.pass();
    done.wait();
  });
  close(p.read_end);
  write_all(p.write_end, "one", 3);
  closed.wait();
  show_write_with_sigpipe_caught("write after the reader closed", p.write_end);
  done.pass();
  wait_child("reader", pid);
  close(p.write_end);
}

CONFORMANCE_CASE(kArea, pipe_epipe_after_reader_exits, 0,
                 "EPIPE once the only reader, a forked child, exited with _exit") {
  const Pipe p = make_pipe();
  const pid_t pid = fork();
  if (pid == 0) {
    close(p.write_end);
    char byte;
    const ssize_t got = read(p.read_end, &byte, 1);
    _exit(got == 1 ? 0 : 1);
  }
  close(p.read_end);
  write_all(p.write_end, "x", 1);
  wait_child("reader", pid);
  show_write_with_sigpipe_caught("write", p.write_end);
  close(p.write_end);
}

CONFORMANCE_CASE(kArea, pipe_nonblocking_shared_across_fork, 0,
                 "O_NONBLOCK set by a child on an inherited end shows in the parent") {
  const Pipe p = make_pipe();
  const pid_t pid = fork_child([&] { set_nonblocking(p.read_end, true); });
  wait_child("child", pid);
  say("parent sees O_NONBLOCK %d", (fcntl(p.read_end, F_GETFL) & O_NONBLOCK) != 0);
  read_some("read", p.read_end);
  int off = 0;
  report("FIONBIO 0", ioctl(p.read_end, FIONBIO, &off));
  const pid_t writer = fork_child([&] {
    sleep_ms(50);
    write_all(p.write_end, "late", 4);
  });
  read_some("blocking read", p.read_end);
  wait_child("writer", writer);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_readiness_with_forked_writer, 0,
                 "epoll, poll and select wake for a forked writer's data and its exit") {
  const Pipe p = make_pipe();
  Baton go;
  const pid_t pid = fork_child([&] {
    close(p.read_end);
    for (int round = 0; round < 3; ++round) {
      go.wait();
      sleep_ms(30);
      write_all(p.write_end, "z", 1);
    }
    go.wait();
  });
  close(p.write_end);
  const int epfd = epoll_watching(p.read_end, EPOLLIN);
  go.pass();
  show_epoll_wait("epoll_wait", epfd, 5000);
  read_some("read", p.read_end);
  go.pass();
  pollfd entry{p.read_end, POLLIN, 0};
  report("poll", poll(&entry, 1, 5000));
  say("revents %s", poll_events_text(entry.revents).c_str());
  read_some("read", p.read_end);
  go.pass();
  fd_set readable;
  FD_ZERO(&readable);
  FD_SET(p.read_end, &readable);
  report("select", select(p.read_end + 1, &readable, nullptr, nullptr, nullptr));
  read_some("read", p.read_end);
  go.pass();
  show_epoll_wait("epoll_wait after exit", epfd, 5000);
  wait_child("writer", pid);
  close(epfd);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_epoll_write_end_reader_closes, 0,
                 "a write end in epoll reports EPOLLERR when a forked reader exits") {
  const Pipe p = make_pipe(O_NONBLOCK);
  Baton go;
  const pid_t pid = fork_child([&] {
    close(p.write_end);
    go.wait();
  });
  close(p.read_end);
  say("filled %zu bytes", fill_until_blocked(p.write_end));
  const int epfd = epoll_watching(p.write_end, EPOLLOUT);
  show_epoll_wait("epoll_wait while full", epfd, 0);
  go.pass();
  show_epoll_wait("epoll_wait after the reader left", epfd, 5000);
  wait_child("reader", pid);
  close(epfd);
  close(p.write_end);
}

CONFORMANCE_CASE(kArea, pipe_epoll_edge_triggered_from_exec_writer, 0,
                 "EPOLLET on a read end whose writer an exec'd shell holds: each write an edge") {
  const Pipe p = make_pipe();
  const pid_t pid = fork_child([&] {
    dup2(p.write_end, STDOUT_FILENO);
    close_pipe(p);
    execl("/bin/sh", "sh", "-c", "echo first; sleep 0.2; echo second; sleep 0.3", nullptr);
    _exit(127);
  });
  close(p.write_end);
  const int epfd = epoll_watching(p.read_end, EPOLLIN | EPOLLET);
  for (const char* label : {"first", "second", "writer gone"}) {
    if (show_epoll_wait(label, epfd, 5000) & EPOLLIN) read_some("read", p.read_end);
  }
  wait_child("sh", pid);
  close(epfd);
  close(p.read_end);
}

CONFORMANCE_CASE(kArea, pipe_partial_reads, 0,
                 "reads smaller than what is queued take it in order, a piece at a time") {
  const Pipe p = make_pipe();
  write_all(p.write_end, "0123456789abcdefghij", 20);
  read_some("read 3", p.read_end, 3);
  read_some("read 7", p.read_end, 7);
  char x[4] = {}, y[4] = {};
  iovec in[2] = {{x, 4}, {y, 4}};
  report("readv 4+4", readv(p.read_end, in, 2));
  say("parts %s %s", quoted(std::string(x, 4)).c_str(), quoted(std::string(y, 4)).c_str());
  read_some("read the rest", p.read_end, 64);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_large_transfer_both_ways, 0,
                 "32 MiB each way between parent and child, checksummed") {
  const Pipe down = make_pipe(), up = make_pipe();
  constexpr size_t kBytes = 32 << 20;
  const pid_t pid = fork_child([&] {
    close(down.write_end);
    close(up.read_end);
    const Drained drained = drain(down.read_end);
    say("child read %zu bytes, digest %016llx", drained.bytes,
        static_cast<unsigned long long>(drained.digest));
    const std::vector<unsigned char> data = pattern(kBytes, 7);
    write_all(up.write_end, data.data(), data.size());
  });
  close(down.read_end);
  close(up.write_end);
  const std::vector<unsigned char> data = pattern(kBytes, 6);
  // In pieces of odd sizes, so that records straddle the ring's end.
  for (size_t done = 0; done < data.size();) {
    const size_t piece = std::min<size_t>(data.size() - done, 12345);
    write_all(down.write_end, data.data() + done, piece);
    done += piece;
  }
  close(down.write_end);
  const Drained drained = drain(up.read_end);
  say("parent read %zu bytes, digest %016llx", drained.bytes,
      static_cast<unsigned long long>(drained.digest));
  wait_child("child", pid);
  close(up.read_end);
}

CONFORMANCE_CASE(kArea, pipe_dup2_stdin_exec_wc_with_queued_data, 0,
                 "bytes queued before a child makes the read end its stdin reach wc") {
  const Pipe input = make_pipe(), output = make_pipe();
  const std::vector<unsigned char> data = pattern(20000, 8);
  write_all(input.write_end, data.data(), data.size());
  const pid_t pid = fork_child([&] {
    dup2(input.read_end, STDIN_FILENO);
    dup2(output.write_end, STDOUT_FILENO);
    close_pipe(input);
    close_pipe(output);
    execl("/usr/bin/wc", "wc", "-c", nullptr);
    _exit(127);
  });
  close(input.read_end);
  close(output.write_end);
  write_all(input.write_end, "and more", 8);
  close(input.write_end);
  read_some("wc says", output.read_end);
  wait_child("wc", pid);
  close(output.read_end);
}

CONFORMANCE_CASE(kArea, pipe_dup2_stdout_exec_cat_after_ring_writes, 0,
                 "a child writes, then execs cat on its stdout: the bytes arrive in order") {
  const Pipe input = make_pipe(), output = make_pipe();
  const pid_t pid = fork_child([&] {
    close(output.read_end);
    write_all(output.write_end, "written before exec; ", 21);
    dup2(input.read_end, STDIN_FILENO);
    dup2(output.write_end, STDOUT_FILENO);
    close_pipe(input);
    close(output.write_end);
    execl("/bin/cat", "cat", nullptr);
    _exit(127);
  });
  close(input.read_end);
  close(output.write_end);
  write_all(input.write_end, "copied by cat", 13);
  close(input.write_end);
  const std::string all = recv_exact(output.read_end, 64);
  say("read %s", quoted(all).c_str());
  wait_child("cat", pid);
  close(output.read_end);
}

CONFORMANCE_CASE(kArea, pipe_exec_keeps_end_with_queued_data, 0,
                 "bytes a parent queued reach an exec'd image reading the inherited end") {
  const Pipe p = make_pipe();
  write_all(p.write_end, "queued\n", 7);
  const pid_t pid = fork_child([&] {
    close(p.write_end);
    const std::string descriptor = "/dev/fd/" + std::to_string(p.read_end);
    execl("/usr/bin/head", "head", "-c", "7", descriptor.c_str(), nullptr);
    _exit(127);
  });
  wait_child("head", pid);
  close_pipe(p);
}

CONFORMANCE_CASE(kArea, pipe_python_subprocess, 0,
                 "Python's subprocess: run, communicate, and a failed exec's error pipe") {
  run_shell_pipeline(
      "python3 -c \"import subprocess\n"
      "print(subprocess.run(['seq', '1', '5'], capture_output=True).stdout)\n"
      "p = subprocess.Popen(['tr', 'a-z', 'A-Z'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
      "print(p.communicate(b'x' * 200000)[0].count(b'X'))\n"
      "try:\n subprocess.run(['/nonexistent/program'])\n"
      "except FileNotFoundError as error:\n print('exec failed', error.errno)\n\"");
}

CONFORMANCE_CASE(kArea, bash_tee_process_substitution_checksums, 0,
                 "head -c 50M | tee >(sha256sum) | cat | sha256sum: the two sums agree") {
  run_shell_pipeline(
      "{ head -c 52428800 /dev/urandom | tee >(sha256sum >&3) | cat | sha256sum; } 3>&1 "
      "| cut -d' ' -f1 | sort | uniq -c | awk '{print $1}'");
}

}  // namespace conformance

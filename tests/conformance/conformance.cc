// The shared helpers of the conformance cases and the program's entry point:
//   conformance --list               area, name, connections, description (tab-separated)
//   conformance CASE                 runs one case, printing its transcript
//   conformance --helper NAME ARGS   a program image that cases exec
#include "conformance.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <map>

#include "loopback_address.h"

namespace conformance {
namespace {

std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}

std::map<std::string, void (*)(const std::vector<std::string>&)>& helpers() {
  static std::map<std::string, void (*)(const std::vector<std::string>&)> all;
  return all;
}

std::string flags_text(uint32_t value, const std::vector<std::pair<uint32_t, const char*>>& names) {
  std::string text;
  for (const auto& [bit, name] : names) {
    if ((value & bit) == 0) continue;
    if (!text.empty()) text += '|';
    text += name;
    value &= ~bit;
  }
  if (value != 0) {
    if (!text.empty()) text += '|';
    text += "0x" + std::to_string(value);
  }
  return text.empty() ? "0" : text;
}

volatile sig_atomic_t g_signals_caught = 0;
void on_counted_signal(int) {
  g_signals_caught = g_signals_caught + 1;
}

}  // namespace

CaseRegistration::CaseRegistration(const char* area, const char* name, int connections,
                                   const char* description, void (*run)()) {
  cases().push_back({area, name, connections, description, run});
}

HelperRegistration::HelperRegistration(const char* name,
                                       void (*run)(const std::vector<std::string>&)) {
  helpers()[name] = run;
}

// ---------------------------------------------------------------------------
void say(const char* format, ...) {
  char line[1024];
  va_list arguments;
  va_start(arguments, format);
  int length = vsnprintf(line, sizeof line - 1, format, arguments);
  va_end(arguments);
  length = std::min<int>(length, sizeof line - 2);
  line[length] = '\n';
  const int saved = errno;
  if (write(STDOUT_FILENO, line, length + 1) < 0) _exit(3);
  errno = saved;
}

long report(const char* label, long result) {
  if (result < 0) {
    say("%s: -1 %s", label, errno_name(errno).c_str());
  } else {
    say("%s: %ld", label, result);
  }
  return result;
}

void die(const char* what) {
  say("set-up failed: %s: %s", what, errno_name(errno).c_str());
  exit(2);
}

long require(const char* what, long result) {
  if (result < 0) die(what);
  return result;
}

std::string errno_name(int error) {
  const char* name = strerrorname_np(error);
  return name != nullptr ? name : "errno " + std::to_string(error);
}

std::string quoted(const std::string& text) {
  std::string out = "'";
  for (const unsigned char byte : text) {
    if (byte >= 0x20 && byte < 0x7f && byte != '\\') {
      out += static_cast<char>(byte);
    } else {
      char escape[8];
      snprintf(escape, sizeof escape, "\\x%02x", byte);
      out += escape;
    }
  }
  return out + "'";
}

std::string epoll_events_text(uint32_t events) {
  return flags_text(events, {{EPOLLIN, "IN"},
                             {EPOLLPRI, "PRI"},
                             {EPOLLOUT, "OUT"},
                             {EPOLLERR, "ERR"},
                             {EPOLLHUP, "HUP"},
                             {EPOLLRDNORM, "RDNORM"},
                             {EPOLLWRNORM, "WRNORM"},
                             {EPOLLRDHUP, "RDHUP"}});
}

std::string poll_events_text(short events) {
  return flags_text(static_cast<uint16_t>(events), {{POLLIN, "IN"},
                                                    {POLLPRI, "PRI"},
                                                    {POLLOUT, "OUT"},
                                                    {POLLERR, "ERR"},
                                                    {POLLHUP, "HUP"},
                                                    {POLLNVAL, "NVAL"},
                                                    {POLLRDHUP, "RDHUP"}});
}

std::string signal_name(int signal_number) {
  const char* abbreviation = sigabbrev_np(signal_number);
  return abbreviation != nullptr ? std::string("SIG") + abbreviation
                                 : "signal " + std::to_string(signal_number);
}

// ---------------------------------------------------------------------------
sockaddr_storage loopback_address(int family, uint16_t port) {
  return netaccel::test::loopback_address(family, port);
}

socklen_t address_length(int family) {
  return family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
}

int tcp_listener(int family, int type_flags, int backlog) {
  const int fd = static_cast<int>(require("socket", socket(family, SOCK_STREAM | type_flags, 0)));
  const sockaddr_storage address = loopback_address(family, 0);
  require("bind", bind(fd, reinterpret_cast<const sockaddr*>(&address), address_length(family)));
  require("listen", listen(fd, backlog));
  return fd;
}

uint16_t local_port(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  require("getsockname", getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length));
  // sin_port and sin6_port sit at the same offset.
  return ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
}

int tcp_connect_result(int fd, uint16_t port, int family) {
  const sockaddr_storage address = loopback_address(family, port);
  return connect(fd, reinterpret_cast<const sockaddr*>(&address), address_length(family));
}

int tcp_connect(uint16_t port, int family, int type_flags) {
  const int fd = static_cast<int>(require("socket", socket(family, SOCK_STREAM | type_flags, 0)));
  require("connect", tcp_connect_result(fd, port, family));
  return fd;
}

TcpPair tcp_pair(int family) {
  const int listener = tcp_listener(family);
  const int client = tcp_connect(local_port(listener), family);
  const int server = static_cast<int>(require("accept", accept(listener, nullptr, nullptr)));
  close(listener);
  return {client, server};
}

void close_pair(const TcpPair& pair) {
  close(pair.client);
  close(pair.server);
}

// ---------------------------------------------------------------------------
void send_all(int fd, const void* data, size_t length) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  size_t done = 0;
  while (done < length) {
    const ssize_t sent = send(fd, bytes + done, length - done, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    require("send", sent);
    done += static_cast<size_t>(sent);
  }
}

void send_text(int fd, const std::string& text) {
  send_all(fd, text.data(), text.size());
}

std::string report_data(const char* label, ssize_t got, std::string buffer) {
  if (got < 0) {
    say("%s: -1 %s", label, errno_name(errno).c_str());
    return {};
  }
  buffer.resize(static_cast<size_t>(got));
  say("%s: %zd %s", label, got, quoted(buffer).c_str());
  return buffer;
}

std::string recv_once(const char* label, int fd, size_t capacity, int flags) {
  std::string buffer(capacity, '\0');
  const ssize_t got = recv(fd, buffer.data(), capacity, flags);
  return report_data(label, got, std::move(buffer));
}

std::string recv_exact(int fd, size_t length) {
  std::string buffer(length, '\0');
  size_t done = 0;
  while (done < length) {
    // read(), which a socket takes as recv(0) and a pipe takes too.
    const ssize_t got = read(fd, buffer.data() + done, length - done);
    if (got < 0 && errno == EINTR) continue;
    require("read", got);
    if (got == 0) break;
    done += static_cast<size_t>(got);
  }
  buffer.resize(done);
  return buffer;
}

void show_exact(const char* label, int fd, size_t length) {
  say("%s: %s", label, quoted(recv_exact(fd, length)).c_str());
}

std::vector<unsigned char> pattern(size_t length, unsigned seed) {
  std::vector<unsigned char> bytes(length);
  uint32_t state = seed * 2654435761u + 1;
  for (auto& byte : bytes) {
    state = state * 1664525u + 1013904223u;
    byte = static_cast<unsigned char>(state >> 24);
  }
  return bytes;
}

uint64_t digest(const unsigned char* data, size_t length) {
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (size_t i = 0; i < length; ++i) hash = (hash ^ data[i]) * 1099511628211ull;
  return hash;
}

Drained drain(int fd) {
  Drained result{0, 1469598103934665603ull};
  unsigned char buffer[65536];
  for (;;) {
    const ssize_t got = read(fd, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    require("read", got);
    if (got == 0) return result;
    for (ssize_t i = 0; i < got; ++i)
      result.digest = (result.digest ^ buffer[i]) * 1099511628211ull;
    result.bytes += static_cast<size_t>(got);
  }
}

size_t fill_until_blocked(int fd) {
  const int flags = static_cast<int>(require("F_GETFL", fcntl(fd, F_GETFL)));
  require("F_SETFL", fcntl(fd, F_SETFL, flags | O_NONBLOCK));
  static const std::vector<unsigned char> chunk = pattern(65536, 7);
  size_t total = 0;
  for (;;) {
    const ssize_t sent = write(fd, chunk.data(), chunk.size());
    if (sent < 0) {
      if (errno != EAGAIN) die("write while filling");
      break;
    }
    total += static_cast<size_t>(sent);
  }
  require("F_SETFL", fcntl(fd, F_SETFL, flags));
  return total;
}

void show_status_flags(const char* label, int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0) {
    report(label, flags);
    return;
  }
  say("%s: accmode %d O_NONBLOCK %d O_APPEND %d", label, flags & O_ACCMODE,
      (flags & O_NONBLOCK) != 0, (flags & O_APPEND) != 0);
}

void set_nonblocking(int fd, bool nonblocking) {
  const int flags = static_cast<int>(require("F_GETFL", fcntl(fd, F_GETFL)));
  require("F_SETFL",
          fcntl(fd, F_SETFL, nonblocking ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK)));
}

void set_int_option(int fd, int level, int name, int value) {
  require("setsockopt", setsockopt(fd, level, name, &value, sizeof value));
}

void sleep_ms(int milliseconds) {
  timespec delay{milliseconds / 1000, (milliseconds % 1000) * 1000000L};
  while (nanosleep(&delay, &delay) != 0 && errno == EINTR) {
  }
}

// ---------------------------------------------------------------------------
pid_t fork_child(const std::function<void()>& child) {
  const pid_t pid = static_cast<pid_t>(require("fork", fork()));
  if (pid == 0) {
    child();
    exit(0);
  }
  return pid;
}

std::thread in_background(std::function<void()> work) {
  return std::thread([work = std::move(work)] {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    work();
  });
}

void wait_child(const char* label, pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) die("waitpid");
  }
  if (WIFEXITED(status)) {
    say("%s: exit %d", label, WEXITSTATUS(status));
  } else {
    say("%s: signal %s", label, signal_name(WTERMSIG(status)).c_str());
  }
}

std::vector<std::string> helper_command(const std::string& name,
                                        const std::vector<std::string>& arguments) {
  std::vector<std::string> command = {"/proc/self/exe", "--helper", name};
  command.insert(command.end(), arguments.begin(), arguments.end());
  return command;
}

void exec_helper(const std::string& name, const std::vector<std::string>& arguments) {
  const std::vector<std::string> command = helper_command(name, arguments);
  std::vector<char*> argv;
  for (const std::string& argument : command) argv.push_back(const_cast<char*>(argument.c_str()));
  argv.push_back(nullptr);
  execv("/proc/self/exe", argv.data());
  die("execv");
}

Baton::Baton() {
  int ends[2];
  require("pipe", pipe2(ends, O_CLOEXEC));
  read_end_ = ends[0];
  write_end_ = ends[1];
}

void Baton::pass() {
  require("baton write", write(write_end_, "x", 1));
}

void Baton::wait() {
  char token;
  ssize_t got;
  while ((got = read(read_end_, &token, 1)) < 0 && errno == EINTR) {
  }
  if (got != 1) die("baton read");
}

void count_signal(int signal_number, bool restart) {
  struct sigaction action {};
  action.sa_handler = on_counted_signal;
  action.sa_flags = restart ? SA_RESTART : 0;
  sigemptyset(&action.sa_mask);
  require("sigaction", sigaction(signal_number, &action, nullptr));
}

int signals_caught() {
  return g_signals_caught;
}

void alarm_after_ms(int milliseconds) {
  itimerval timer{};
  timer.it_value.tv_sec = milliseconds / 1000;
  timer.it_value.tv_usec = (milliseconds % 1000) * 1000;
  require("setitimer", setitimer(ITIMER_REAL, &timer, nullptr));
}

namespace {
void run_monitor_control(const char* action) {
  const char* control = getenv("CONFORMANCE_MONITOR_CONTROL");
  if (control == nullptr || *control == '\0') return;
  const std::string command = std::string(control) + " " + action;
  if (system(command.c_str()) != 0) die(command.c_str());
}
}  // namespace

void monitor_stop() {
  run_monitor_control("stop");
}
void monitor_start() {
  run_monitor_control("start");
}

}  // namespace conformance

int main(int argc, char** argv) {
  using conformance::cases;
  using conformance::helpers;
  if (argc >= 2 && strcmp(argv[1], "--list") == 0) {
    for (const conformance::Case& each : cases()) {
      printf("%s\t%s\t%d\t%s\n", each.area, each.name, each.connections, each.description);
    }
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "--helper") == 0) {
    const auto helper = helpers().find(argv[2]);
    if (helper == helpers().end()) {
      fprintf(stderr, "no helper %s\n", argv[2]);
      return 2;
    }
    helper->second(std::vector<std::string>(argv + 3, argv + argc));
    return 0;
  }
  if (argc == 2) {
    for (const conformance::Case& each : cases()) {
      if (strcmp(each.name, argv[1]) != 0) continue;
      each.run();
      return 0;
    }
  }
  fprintf(stderr, "usage: %s --list | CASE | --helper NAME ARGS...\n", argv[0]);
  return 2;
}

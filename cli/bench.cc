// `netaccel bench`: every test runs twice in one go, first on kernel TCP over
// loopback, then under the preload library with a private monitor, on the
// same unmodified peer program (netaccel-bench-peer). The netaccel column
// may fail or fall back without failing the run; only a failed kernel run
// makes the exit code non-zero.
#include "bench.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bench_floor.h"
#include "bench_plot.h"
#include "netaccel/protocol.h"

extern char** environ;

namespace netaccel::cli {
namespace {

namespace fs = std::filesystem;

// Set by SIGINT/SIGTERM: every wait below gives up, and the normal clean-up
// path stops the children and the monitor.
volatile sig_atomic_t g_interrupted = 0;
void on_interrupt(int) {
  g_interrupted = 1;
}

double now_seconds() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

void sleep_seconds(double seconds) {
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(seconds);
  ts.tv_nsec = static_cast<long>((seconds - static_cast<double>(ts.tv_sec)) * 1e9);
  nanosleep(&ts, nullptr);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = strsignal(WTERMSIG(status));
    return std::string("killed by signal ") + (name != nullptr ? name : "?");
  }
  return "stopped";
}

// The last non-empty line of a log file, shortened: the likeliest reason.
std::string last_line_of(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") != std::string::npos) last = line;
  }
  if (last.size() > 160) last = last.substr(0, 157) + "...";
  return last;
}

// ---------------------------------------------------------------------------
// Child processes: always killed and reaped, whichever way we leave.

class Child {
 public:
  Child() = default;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { stop(0); }

  // Starts `argv` with `env`. Its stdout comes back through a pipe when
  // `capture_stdout`; otherwise it goes to `log_path` with its stderr.
  bool start(const std::vector<std::string>& argv, const std::vector<std::string>& env,
             const std::string& log_path, bool capture_stdout, std::string* error) {
    // Everything the child needs is built before fork(): no allocation after.
    std::vector<char*> args, envp;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);

    const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log < 0) {
      *error = "cannot create " + log_path + ": " + std::strerror(errno);
      return false;
    }
    int pipe_fds[2] = {-1, -1};
    if (capture_stdout && pipe2(pipe_fds, O_CLOEXEC) != 0) {
      *error = std::string("pipe: ") + std::strerror(errno);
      close(log);
      return false;
    }
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
      *error = std::string("fork: ") + std::strerror(errno);
      close(log);
      if (capture_stdout) {
        close(pipe_fds[0]);
        close(pipe_fds[1]);
      }
      return false;
    }
    if (pid == 0) {
      // Die with the bench, even if it is killed outright.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      const int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (null >= 0) dup2(null, STDIN_FILENO);
      dup2(capture_stdout ? pipe_fds[1] : log, STDOUT_FILENO);
      dup2(log, STDERR_FILENO);
      execve(args[0], args.data(), envp.data());
      const char* reason = std::strerror(errno);
      [[maybe_unused]] ssize_t ignored = write(STDERR_FILENO, "exec ", 5);
      ignored = write(STDERR_FILENO, args[0], std::strlen(args[0]));
      ignored = write(STDERR_FILENO, ": ", 2);
      ignored = write(STDERR_FILENO, reason, std::strlen(reason));
      ignored = write(STDERR_FILENO, "\n", 1);
      _exit(127);
    }
    close(log);
    if (capture_stdout) {
      close(pipe_fds[1]);
      stdout_fd_ = pipe_fds[0];
    }
    pid_ = pid;
    buffer_.clear();
    eof_ = false;
    return true;
  }

  bool started() const { return pid_ > 0; }

  // True while the process has not exited; reaps it when it has.
  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
      status_ = status;
      pid_ = -1;
      return false;
    }
    return true;
  }

  // Waits up to `seconds` for the process to exit.
  bool wait_exit(double seconds) {
    const double deadline = now_seconds() + seconds;
    while (running()) {
      if (now_seconds() >= deadline || g_interrupted) return false;
      sleep_seconds(0.005);
    }
    return true;
  }

  // SIGTERM, `grace` seconds, then SIGKILL; always reaps.
  void stop(double grace) {
    if (running()) {
      if (grace > 0) {
        kill(pid_, SIGTERM);
        const double deadline = now_seconds() + grace;
        while (running() && now_seconds() < deadline) sleep_seconds(0.005);
      }
      if (pid_ > 0) {
        kill(pid_, SIGKILL);
        int status = 0;
        while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        status_ = status;
        pid_ = -1;
      }
    }
    if (stdout_fd_ >= 0) {
      close(stdout_fd_);
      stdout_fd_ = -1;
    }
  }

  // The next line of stdout (without '\n'), or nothing on EOF or timeout.
  std::optional<std::string> read_line(double seconds) {
    const double deadline = now_seconds() + seconds;
    for (;;) {
      const std::size_t newline = buffer_.find('\n');
      if (newline != std::string::npos) {
        std::string line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        return line;
      }
      if (eof_ || stdout_fd_ < 0 || g_interrupted) return std::nullopt;
      const double left = deadline - now_seconds();
      if (left <= 0) return std::nullopt;
      struct pollfd pfd {
        stdout_fd_, POLLIN, 0
      };
      const int ready = poll(&pfd, 1, static_cast<int>(std::min(left, 0.2) * 1000) + 1);
      if (ready < 0 && errno != EINTR) return std::nullopt;
      if (ready <= 0) continue;
      char chunk[4096];
      const ssize_t n = read(stdout_fd_, chunk, sizeof chunk);
      if (n > 0) {
        buffer_.append(chunk, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        eof_ = true;
      }
    }
  }

  // The first line of stdout that `wanted` accepts; other lines (say, a
  // library's chatter) are skipped.
  template <typename Predicate>
  std::optional<std::string> read_line_where(double seconds, Predicate wanted) {
    const double deadline = now_seconds() + seconds;
    for (;;) {
      auto line = read_line(deadline - now_seconds());
      if (!line || wanted(*line)) return line;
    }
  }

  std::optional<int> exit_status() const {
    return pid_ < 0 && status_ != -1 ? std::optional<int>(status_) : std::nullopt;
  }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;
  bool eof_ = false;
};

// ---------------------------------------------------------------------------
// Small helpers

// `"key": value` anywhere in a line of JSON: the number, if any.
std::optional<double> json_number(const std::string& json, const std::string& key) {
  const std::string quoted = "\"" + key + "\"";
  std::size_t at = json.find(quoted);
  if (at == std::string::npos) return std::nullopt;
  at = json.find(':', at + quoted.size());
  if (at == std::string::npos) return std::nullopt;
  const char* start = json.c_str() + at + 1;
  char* end = nullptr;
  const double value = std::strtod(start, &end);
  if (end == start) return std::nullopt;
  return value;
}

std::optional<std::string> json_string(const std::string& json, const std::string& key) {
  const std::string quoted = "\"" + key + "\"";
  std::size_t at = json.find(quoted);
  if (at == std::string::npos) return std::nullopt;
  at = json.find('"', json.find(':', at + quoted.size()));
  if (at == std::string::npos) return std::nullopt;
  const std::size_t end = json.find('"', at + 1);
  if (end == std::string::npos) return std::nullopt;
  return json.substr(at + 1, end - at - 1);
}

bool json_true(const std::string& json, const std::string& key) {
  const std::string quoted = "\"" + key + "\"";
  const std::size_t at = json.find(quoted);
  if (at == std::string::npos) return false;
  const std::size_t colon = json.find(':', at + quoted.size());
  if (colon == std::string::npos) return false;
  const std::size_t value = json.find_first_not_of(' ', colon + 1);
  return value != std::string::npos && json.compare(value, 4, "true") == 0;
}

// A loopback port nobody listens on right now (the server binds it with
// SO_REUSEADDR a moment later).
std::optional<int> free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  struct sockaddr_in address {};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  std::optional<int> port;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0)
    port = ntohs(address.sin_port);
  close(fd);
  return port;
}

std::string format_fixed(double value, int decimals) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

// 3 significant digits with k/M/G: "1.23 M", "456 k", "12.3".
std::string format_si(double value) {
  const char* suffix = "";
  if (value >= 1e9) {
    value /= 1e9;
    suffix = " G";
  } else if (value >= 1e6) {
    value /= 1e6;
    suffix = " M";
  } else if (value >= 1e3) {
    value /= 1e3;
    suffix = " k";
  }
  const int decimals = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return format_fixed(value, decimals) + suffix;
}

std::string format_latency(double us) {
  return format_fixed(us, us >= 100 ? 0 : 1) + " us";
}

// ---------------------------------------------------------------------------
// The monitor netaccel mode talks to: private to this run.

// Connects to a unix socket of the monitor; the protocol says SEQPACKET.
int connect_monitor(const std::string& path) {
  struct sockaddr_un address {};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof address.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    const int error = errno;
    close(fd);
    errno = error;
    return -1;
  }
  return fd;
}

class Monitor {
 public:
  // Starts `netaccel daemon` on `socket_path` and waits until it accepts.
  std::optional<std::string> start(const std::string& netaccel, const std::string& socket_path,
                                   const std::string& log_path,
                                   const std::vector<std::string>& env) {
    socket_path_ = socket_path;
    log_path_ = log_path;
    unlink(socket_path.c_str());
    if (access(netaccel.c_str(), X_OK) != 0)
      return "monitor: " + netaccel + " not found (" + std::strerror(errno) + ")";
    std::string error;
    if (!process_.start({netaccel, "daemon", "--socket", socket_path}, env, log_path, false,
                        &error))
      return "monitor: " + error;
    const double deadline = now_seconds() + 10.0;
    for (;;) {
      if (!process_.running()) {
        const std::string why = last_line_of(log_path);
        return "monitor " + describe_status(process_.exit_status().value_or(0)) +
               (why.empty() ? "" : ": " + why);
      }
      const int fd = connect_monitor(socket_path);
      if (fd >= 0) {
        close(fd);
        return std::nullopt;
      }
      if (now_seconds() > deadline || g_interrupted) {
        process_.stop(1.0);
        return "monitor did not accept on " + socket_path + " within 10 s";
      }
      sleep_seconds(0.02);
    }
  }

  bool running() { return process_.running(); }

  std::string death_reason() {
    const std::string why = last_line_of(log_path_);
    return "monitor " +
           (process_.exit_status() ? describe_status(*process_.exit_status()) : "not running") +
           (why.empty() ? "" : ": " + why);
  }

  // connections_total from the monitor's JSON status, or why not.
  std::optional<uint64_t> connections_total(std::string* error) {
    const int fd = connect_monitor(socket_path_);
    if (fd < 0) {
      *error = std::string("status connect: ") + std::strerror(errno);
      return std::nullopt;
    }
    const struct timeval timeout { 2, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    const StatusRequest request{kStatusMagic, kProtocolVersion};
    if (send(fd, &request, sizeof request, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof request)) {
      *error = std::string("status send: ") + std::strerror(errno);
      close(fd);
      return std::nullopt;
    }
    std::string reply(1 << 16, '\0');
    const ssize_t n = recv(fd, reply.data(), reply.size(), 0);
    const int recv_errno = errno;
    close(fd);
    if (n <= 0) {
      *error =
          n == 0 ? "status: no reply" : std::string("status recv: ") + std::strerror(recv_errno);
      return std::nullopt;
    }
    reply.resize(static_cast<std::size_t>(n));
    const auto total = json_number(reply, "connections_total");
    if (!total) {
      *error = "status reply has no connections_total";
      return std::nullopt;
    }
    return static_cast<uint64_t>(*total);
  }

  void stop() {
    process_.stop(3.0);
    if (!socket_path_.empty()) unlink(socket_path_.c_str());
  }

 private:
  Child process_;
  std::string socket_path_;
  std::string log_path_;
};

// ---------------------------------------------------------------------------
// Tests, runs and their results

enum class Mode { kKernel, kNetaccel };
const char* mode_name(Mode mode) {
  return mode == Mode::kKernel ? "kernel" : "netaccel";
}

struct TestSpec {
  std::string label;      // "rtt 64 B"
  std::string peer_test;  // netaccel-bench-peer --test
  std::size_t size;
  bool over_pipes = false;  // a process and its forked child over two pipes, no sockets
};

// One row of the table: a figure read from one test's JSON.
struct Metric {
  std::size_t test;  // index into the tests
  std::string label;
  std::string key;
  bool higher_is_better;
  std::string (*format)(const std::string& json);
};

// One run, or the combination of a test's rounds in one mode.
struct RunResult {
  bool ok = false;
  std::string error = "not run";
  std::string json;  // the client's figures; the medians once combined
  // netaccel mode only: growth of the monitor's connections_total.
  std::optional<uint64_t> netaccel_connections;
  std::string verify_error;  // why the growth is unknown
  std::string warning;       // the figures stand, but something misbehaved
  int runs = 1;
  int failed_runs = 0;
  int fell_back_runs = 0;  // runs that succeeded without a netaccel connection
  bool fell_back() const {
    return ok && (fell_back_runs > 0 || (netaccel_connections && *netaccel_connections == 0));
  }
};

// Every figure a table cell or a summary reads.
const char* const kFigures[] = {"messages_per_s", "mbytes_per_s",      "gbit_per_s",       "p50_us",
                                "p99_us",         "round_trips_per_s", "connections_per_s"};

// Median of each figure over the successful runs; connections summed.
RunResult combine(const std::vector<RunResult>& runs) {
  RunResult combined;
  combined.runs = static_cast<int>(runs.size());
  std::vector<const RunResult*> good;
  bool verified = true;
  uint64_t connections = 0;
  for (const RunResult& run : runs) {
    if (!run.ok) {
      ++combined.failed_runs;
      if (combined.error == "not run") combined.error = run.error;
      continue;
    }
    good.push_back(&run);
    if (run.netaccel_connections) {
      connections += *run.netaccel_connections;
      if (*run.netaccel_connections == 0) ++combined.fell_back_runs;
    } else {
      if (verified) combined.verify_error = run.verify_error;
      verified = false;
    }
  }
  if (good.empty()) return combined;
  combined.ok = true;
  if (verified) combined.netaccel_connections = connections;
  std::string json = "{";
  for (const char* key : kFigures) {
    std::vector<double> values;
    for (const RunResult* run : good) {
      if (const auto value = json_number(run->json, key)) values.push_back(*value);
    }
    if (values.empty()) continue;
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    const double median = n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
    char text[96];
    std::snprintf(text, sizeof text, "%s\"%s\":%.6f", json.size() > 1 ? "," : "", key, median);
    json += text;
  }
  combined.json = json + "}";
  return combined;
}

std::string format_messages(const std::string& json) {
  return format_si(json_number(json, "messages_per_s").value_or(0)) + " msg/s";
}
std::string format_throughput(const std::string& json) {
  return format_fixed(json_number(json, "gbit_per_s").value_or(0), 2) + " Gbit/s (" +
         format_fixed(json_number(json, "mbytes_per_s").value_or(0), 0) + " MB/s)";
}
std::string format_p50(const std::string& json) {
  return format_latency(json_number(json, "p50_us").value_or(0));
}
std::string format_p99(const std::string& json) {
  return format_latency(json_number(json, "p99_us").value_or(0));
}
std::string format_round_trips(const std::string& json) {
  return format_si(json_number(json, "round_trips_per_s").value_or(0)) + " rt/s";
}
std::string format_connections(const std::string& json) {
  return format_si(json_number(json, "connections_per_s").value_or(0)) + " conn/s";
}

// One line for the progress output.
std::string summarize(const TestSpec& test, const std::string& json) {
  if (test.peer_test == "rtt")
    return format_p50(json) + " p50, " + format_p99(json) + " p99, " + format_round_trips(json);
  if (test.peer_test == "connect") return format_connections(json);
  if (test.peer_test == "msgrate") return format_messages(json);
  return format_throughput(json);
}

struct Setup {
  std::string peer;
  std::string netaccel;
  std::string preload;
  std::string work_dir;
  std::vector<std::string> kernel_env;
  std::vector<std::string> netaccel_env;
  double seconds = 2.0;  // one run
  int rounds = 1;
};

// Runs one test once: a server process, then a client process; both are
// stopped and reaped before this returns.
RunResult run_once(const Setup& setup, const TestSpec& test, Mode mode, int step) {
  RunResult result;
  const auto port = free_port();
  if (!port) {
    result.error = std::string("no free port: ") + std::strerror(errno);
    return result;
  }
  const auto& env = mode == Mode::kKernel ? setup.kernel_env : setup.netaccel_env;
  const std::string base = setup.work_dir + "/" + std::to_string(step) + "-" + mode_name(mode);
  const std::string size = std::to_string(test.size);
  const std::string port_text = std::to_string(*port);

  Child server, client;
  std::string error;
  std::vector<std::string> server_args = {setup.peer, "server", "--port",
                                          port_text,  "--test", test.peer_test};
  if (test.size > 0) server_args.insert(server_args.end(), {"--size", size});
  if (!server.start(server_args, env, base + "-server.log", true, &error)) {
    result.error = "server: " + error;
    return result;
  }
  const auto ready =
      server.read_line_where(10.0, [](const std::string& line) { return line == "ready"; });
  if (!ready) {
    server.stop(0.5);
    const std::string why = last_line_of(base + "-server.log");
    result.error = "server did not start" + (why.empty() ? std::string() : ": " + why);
    return result;
  }

  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%.3f", setup.seconds);
  std::vector<std::string> client_args = {setup.peer, "client",       "--port",    port_text,
                                          "--test",   test.peer_test, "--seconds", seconds};
  if (test.size > 0) client_args.insert(client_args.end(), {"--size", size});
  if (!client.start(client_args, env, base + "-client.log", true, &error)) {
    result.error = "client: " + error;
    return result;
  }
  // Generous: a slow connect path or a stuck preload must not hang the bench.
  const double limit = setup.seconds * 3 + 20;
  const auto line = client.read_line_where(
      limit, [](const std::string& text) { return text.rfind("{", 0) == 0; });
  const bool exited = client.wait_exit(line ? 5.0 : 0.0);
  if (!exited) client.stop(0.5);

  // The stream and rtt servers leave when their client does; the connect
  // server accepts until told to stop.
  if (test.peer_test != "connect" && !server.wait_exit(2.0)) {
    result.warning = "server did not see the client's close within 2 s";
  }
  server.stop(0.5);
  if (result.warning.empty() && test.peer_test != "connect" && server.exit_status() &&
      *server.exit_status() != 0) {
    const std::string why = last_line_of(base + "-server.log");
    result.warning =
        "server " + describe_status(*server.exit_status()) + (why.empty() ? "" : ": " + why);
  }
  if (result.warning.empty() && exited && client.exit_status() && *client.exit_status() != 0 &&
      line && json_true(*line, "ok")) {
    result.warning = "client " + describe_status(*client.exit_status()) + " after its report";
  }

  if (g_interrupted) {
    result.error = "interrupted";
    return result;
  }
  if (line && json_true(*line, "ok")) {
    result.ok = true;
    result.json = *line;
    return result;
  }
  if (line) {
    result.error = json_string(*line, "error").value_or("client said: " + *line);
  } else if (!exited) {
    result.error = "client timed out after " + format_fixed(limit, 0) + " s";
  } else {
    const std::string why = last_line_of(base + "-client.log");
    result.error = "client " + describe_status(client.exit_status().value_or(0)) +
                   (why.empty() ? "" : ": " + why);
  }
  return result;
}

// The pipes the preload carried on rings in a pipe test, from the counts
// each process prints at exit with NETACCEL_DEBUG (pipes.cc); 0 when any was
// downgraded or no byte went through a ring; none when no count was printed.
std::optional<uint64_t> pipes_on_rings(const std::string& log_path) {
  std::ifstream log(log_path);
  std::string line;
  bool counted = false;
  unsigned long long pipes = 0, downgraded = 0, bytes = 0;
  while (std::getline(log, line)) {
    unsigned long long made = 0, dropped = 0, written = 0;
    if (std::sscanf(line.c_str(),
                    "netaccel: pipes: %llu accelerated, %llu downgraded, %llu bytes written", &made,
                    &dropped, &written) != 3) {
      continue;
    }
    counted = true;
    pipes += made;
    downgraded += dropped;
    bytes += written;
  }
  if (!counted) return std::nullopt;
  return downgraded == 0 && bytes > 0 ? pipes : 0;
}

// Runs one pipe test once: `netaccel-bench-peer pipe` forks its own peer.
// No monitor takes part; under netaccel the preload's statistics stand where
// the monitor's connection count does for sockets.
RunResult run_pipe_once(const Setup& setup, const TestSpec& test, Mode mode, int step) {
  RunResult result;
  std::vector<std::string> env = mode == Mode::kKernel ? setup.kernel_env : setup.netaccel_env;
  if (mode == Mode::kNetaccel) env.push_back("NETACCEL_DEBUG=1");
  const std::string log =
      setup.work_dir + "/" + std::to_string(step) + "-" + mode_name(mode) + "-pipe.log";
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%.3f", setup.seconds);
  Child peer;
  std::string error;
  if (!peer.start({setup.peer, "pipe", "--test", test.peer_test, "--size",
                   std::to_string(test.size), "--seconds", seconds},
                  env, log, true, &error)) {
    result.error = "peer: " + error;
    return result;
  }
  const double limit = setup.seconds * 3 + 20;
  const auto line =
      peer.read_line_where(limit, [](const std::string& text) { return text.rfind("{", 0) == 0; });
  // Its statistics come at exit, after the figures.
  const bool exited = peer.wait_exit(line ? 5.0 : 0.0);
  if (!exited) peer.stop(0.5);
  if (g_interrupted) {
    result.error = "interrupted";
    return result;
  }
  if (!line || !json_true(*line, "ok")) {
    const std::string why = last_line_of(log);
    result.error = line ? json_string(*line, "error").value_or("peer said: " + *line)
                        : (exited ? "peer " + describe_status(peer.exit_status().value_or(0))
                                  : "peer timed out") +
                              (why.empty() ? "" : ": " + why);
    return result;
  }
  result.ok = true;
  result.json = *line;
  if (mode == Mode::kNetaccel) {
    result.netaccel_connections = pipes_on_rings(log);
    if (!result.netaccel_connections) result.verify_error = "no pipe statistics in " + log;
  }
  return result;
}

// ---------------------------------------------------------------------------
// Machine description and output

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const std::size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

std::string kernel_release() {
  struct utsname name {};
  return uname(&name) == 0 ? name.release : "unknown";
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one.empty() ? "unknown" : one + " " + five + " " + fifteen;
}

// More runnable work than half the CPUs before we even start.
bool busy(const std::string& load) {
  return std::atof(load.c_str()) > 0.5 * static_cast<double>(sysconf(_SC_NPROCESSORS_ONLN));
}

std::string utc_now() {
  const time_t now = time(nullptr);
  struct tm utc {};
  gmtime_r(&now, &utc);
  char text[64];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M UTC", &utc);
  return text;
}

struct Row {
  std::string test, kernel, netaccel, ratio, connections;
};

std::string ratio_text(const Metric& metric, const RunResult& kernel, const RunResult& netaccel) {
  if (!kernel.ok || !netaccel.ok) return "n/a";
  if (netaccel.fell_back()) return "n/a (fell back)";
  const double k = json_number(kernel.json, metric.key).value_or(0);
  const double n = json_number(netaccel.json, metric.key).value_or(0);
  const double ratio = metric.higher_is_better ? (k > 0 ? n / k : 0) : (n > 0 ? k / n : 0);
  if (ratio <= 0 || !std::isfinite(ratio)) return "n/a";
  if (ratio < 0.1) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2gx", ratio);  // two significant digits
    return text;
  }
  return format_fixed(ratio, ratio >= 10 ? 1 : 2) + "x";
}

std::string connections_text(const RunResult& netaccel) {
  if (netaccel.netaccel_connections) return std::to_string(*netaccel.netaccel_connections);
  if (!netaccel.ok) return "-";
  return "unknown";
}

std::string failed_runs_note(const RunResult& result) {
  if (result.failed_runs == 0) return "";
  return " (" + std::to_string(result.failed_runs) + " of " + std::to_string(result.runs) +
         " runs failed: " + result.error + ")";
}

std::vector<Row> build_rows(const std::vector<Metric>& metrics,
                            const std::vector<RunResult>& kernel,
                            const std::vector<RunResult>& netaccel) {
  std::vector<Row> rows;
  for (const Metric& metric : metrics) {
    const RunResult& k = kernel[metric.test];
    const RunResult& n = netaccel[metric.test];
    Row row;
    row.test = metric.label;
    row.kernel = k.ok ? metric.format(k.json) + failed_runs_note(k) : "failed: " + k.error;
    if (!n.ok) {
      row.netaccel = "failed: " + n.error;
    } else {
      row.netaccel = metric.format(n.json);
      if (n.fell_back()) {
        row.netaccel += n.runs > 1
                            ? " (fell back to kernel in " + std::to_string(n.fell_back_runs) +
                                  " of " + std::to_string(n.runs) + " runs)"
                            : " (fell back to kernel)";
      }
      if (!n.netaccel_connections) row.netaccel += " (unverified: " + n.verify_error + ")";
      row.netaccel += failed_runs_note(n);
    }
    row.ratio = ratio_text(metric, k, n);
    row.connections = connections_text(n);
    rows.push_back(row);
  }
  return rows;
}

const char* const kHeaders[] = {"test", "kernel", "netaccel", "ratio", "netaccel conns"};

void print_table(const std::vector<Row>& rows) {
  std::size_t width[5];
  for (int i = 0; i < 5; ++i) width[i] = std::strlen(kHeaders[i]);
  for (const Row& row : rows) {
    const std::string* cells[] = {&row.test, &row.kernel, &row.netaccel, &row.ratio,
                                  &row.connections};
    for (int i = 0; i < 5; ++i) width[i] = std::max(width[i], cells[i]->size());
  }
  auto line = [&](const std::string* cells[5]) {
    for (int i = 0; i < 5; ++i) {
      std::printf("%s%-*s", i == 0 ? "" : " | ", static_cast<int>(width[i]), cells[i]->c_str());
    }
    std::printf("\n");
  };
  std::string headers[5];
  for (int i = 0; i < 5; ++i) headers[i] = kHeaders[i];
  const std::string* header_cells[] = {&headers[0], &headers[1], &headers[2], &headers[3],
                                       &headers[4]};
  line(header_cells);
  std::string rule;
  for (int i = 0; i < 5; ++i) rule += (i == 0 ? "" : "-+-") + std::string(width[i], '-');
  std::printf("%s\n", rule.c_str());
  for (const Row& row : rows) {
    const std::string* cells[] = {&row.test, &row.kernel, &row.netaccel, &row.ratio,
                                  &row.connections};
    line(cells);
  }
}

std::string markdown_cell(std::string text) {
  for (char& c : text) {
    if (c == '|') c = '/';
    if (c == '\n') c = ' ';
  }
  return text;
}

// Other benchmarks write their own sections of the same file (between
// <!-- NAME:begin --> and <!-- NAME:end -->, as scripts/replace_section.py
// does): replace ours, or append it, and keep theirs.
bool replace_section(const std::string& path, const std::string& name, const std::string& body) {
  const std::string begin_marker = "<!-- " + name + ":begin -->";
  const std::string end_marker = "<!-- " + name + ":end -->";
  const std::string section = begin_marker + "\n" + body + end_marker + "\n";
  std::string text = "# netaccel benchmarks\n";
  if (std::ifstream existing(path); existing) {
    text.assign(std::istreambuf_iterator<char>(existing), std::istreambuf_iterator<char>());
  }
  const std::size_t begin = text.find(begin_marker);
  const std::size_t end = text.find(end_marker);
  if (begin != std::string::npos && end != std::string::npos && end > begin) {
    std::size_t after = end + end_marker.size();
    while (after < text.size() && text[after] == '\n') ++after;
    const std::string rest = text.substr(after);
    text = text.substr(0, begin) + section + (rest.empty() ? "" : "\n" + rest);
  } else {
    while (!text.empty() && text.back() == '\n') text.pop_back();
    text += "\n\n" + section;
  }
  std::error_code ignored;
  const fs::path target(path);
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ignored);
  std::ofstream file(path, std::ios::trunc);
  file << text;
  file.close();
  return static_cast<bool>(file);
}

// The floor beside the kernel's message rate and round trip: the largest
// ratio any shared-memory transport could show on this machine.
std::string describe_floor(const HardwareFloor& floor, const RunResult& kernel_messages,
                           const RunResult& kernel_round_trips) {
  std::string text;
  const auto kernel_rate = json_number(kernel_messages.json, "messages_per_s");
  const auto kernel_p50 = json_number(kernel_round_trips.json, "p50_us");
  text +=
      "- 64-byte messages through a bare shared-memory ring (no socket API, two spinning "
      "processes): " +
      format_si(floor.messages_per_s) + " msg/s";
  if (kernel_messages.ok && kernel_rate && *kernel_rate > 0 && floor.messages_per_s > 0) {
    text += ", " + format_fixed(floor.messages_per_s / *kernel_rate, 1) +
            "x the kernel's rate above: the most any shared-memory socket could reach here";
  }
  text += "\n- one cache line bounced between two processes: " +
          format_latency(floor.round_trip_p50_us) + " p50 per round trip";
  if (kernel_round_trips.ok && kernel_p50 && floor.round_trip_p50_us > 0) {
    text += ", " + format_fixed(*kernel_p50 / floor.round_trip_p50_us, 1) +
            "x below the kernel's p50 above: the most any shared-memory transport could gain";
  }
  return text + "\n";
}

bool write_markdown(const std::string& path, const std::vector<Row>& rows,
                    const std::vector<std::string>& notes, const std::string& floor_text,
                    const Setup& setup, const BenchOptions& options, const std::string& started,
                    const std::string& load) {
  std::ostringstream out;
  out << "## Same-host sockets: kernel TCP loopback vs netaccel\n\n"
      << "Measured by `netaccel bench` on " << started << (options.quick ? " (quick mode)" : "")
      << ".\n\n"
      << "### Machine\n\n"
      << "- CPUs online: " << sysconf(_SC_NPROCESSORS_ONLN) << "\n"
      << "- CPU: " << cpu_model() << "\n"
      << "- Kernel: " << kernel_release() << "\n"
      << "- Load average when the run started: " << load
      << (busy(load) ? " (busy: other work shared the CPUs, so the figures are noisy)" : "")
      << "\n\n"
      << "### Method\n\n"
      << "- Every test runs two processes of one unmodified program, `netaccel-bench-peer` "
         "(plain POSIX sockets, blocking calls): a server and a client, talking over "
         "127.0.0.1 on a fresh port.\n"
      << "- **kernel**: the two processes use Linux TCP over loopback.\n"
      << "- **netaccel**: the same binaries with the same arguments, started with "
         "`LD_PRELOAD=libnetaccel_preload.so` and `NETACCEL_SOCKET` pointing to a private "
         "`netaccel daemon` that the bench starts for the run and stops at its end.\n"
      << "- Each test runs in " << setup.rounds << (setup.rounds == 1 ? " round" : " rounds")
      << "; a round runs the kernel mode, then the netaccel mode, "
      << format_fixed(setup.seconds, 2) << " s each. "
      << (setup.rounds > 1 ? "The table shows the median of the rounds for each figure; "
                             "alternating the modes spreads any outside load over both.\n"
                           : "\n")
      << "- msgrate: the client sends 64-byte messages with one blocking `write()` each; the "
         "server `read()`s exactly 64 bytes per message and counts them. At the end the client "
         "sends an end message and stops its clock when the server's count comes back, so the "
         "rate is messages the server received per second (the client checks the count equals "
         "what it sent).\n"
      << "- rtt: 64-byte ping-pong with `TCP_NODELAY`; the client times every round trip with "
         "`CLOCK_MONOTONIC`; p50 and p99 of all round trips, and round trips per second.\n"
      << "- throughput: as msgrate with 4 KiB and 64 KiB messages; data the server received, "
         "in Gbit/s and MB/s (10^6 bytes).\n"
      << "- connect: the client loops `socket`, `connect`, `close`; the server loops `accept`, "
         "`close`; connections the client completed per second. The client sets `SO_LINGER` "
         "to 0 in both modes so that kernel TCP does not exhaust ephemeral ports in "
         "TIME_WAIT.\n"
      << "- ratio: netaccel over kernel for rates, kernel over netaccel for latencies; above 1 "
         "means netaccel is better.\n"
      << "- pipe msgrate and pipe rtt: the same two tests between a process and its forked "
         "child over two pipes, one each way (`netaccel-bench-peer pipe`, `write()` and "
         "`read()`); kernel pipes against pipes that netaccel carries on shared-memory "
         "rings. No monitor takes part.\n"
      << "- netaccel conns: growth of the monitor's `connections_total` during the netaccel "
         "run; for the pipe tests, the pipes carried on rings, as the preload counts them "
         "at exit with `NETACCEL_DEBUG`. A run where it did not grow used kernel TCP (or kernel "
         "pipes): it is marked \"fell back to kernel\" and has no ratio.\n"
      << "- Nothing is pinned: on a 2-core machine the server and the client each get a core "
         "and the monitor sleeps while idle.\n\n"
      << "### Results\n\n";
  out << "|";
  for (const char* header : kHeaders) out << " " << header << " |";
  out << "\n|";
  for (int i = 0; i < 5; ++i) out << (i == 0 ? " --- |" : " ---: |");
  out << "\n";
  for (const Row& row : rows) {
    out << "| " << markdown_cell(row.test) << " | " << markdown_cell(row.kernel) << " | "
        << markdown_cell(row.netaccel) << " | " << markdown_cell(row.ratio) << " | "
        << markdown_cell(row.connections) << " |\n";
  }
  out << "\nEvery ratio above is measured in this same run, kernel and netaccel side by side "
         "on the same machine with the same binaries; none is carried over from another run.\n";
  if (!options.plot_svg.empty()) {
    const std::filesystem::path markdown_directory = std::filesystem::absolute(path).parent_path();
    out << "\n![netaccel against the kernel, per test]("
        << std::filesystem::absolute(options.plot_svg)
               .lexically_relative(markdown_directory)
               .string()
        << ")\n";
  }
  if (!floor_text.empty()) {
    out << "\n### What this machine allows\n\nMeasured right after the table by the same "
           "command:\n\n"
        << floor_text;
  }
  if (!notes.empty()) {
    out << "\n### Notes\n\nRuns whose figures stand but where a peer misbehaved:\n\n";
    for (const auto& note : notes) out << "- " << markdown_cell(note) << "\n";
  }

  return replace_section(path, "bench", out.str());
}

// The environment of the children: ours without any preload, plus the
// preload and the monitor's socket for netaccel mode.
std::vector<std::string> child_environment(const std::string& preload,
                                           const std::string& socket_path) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    if (entry.rfind("LD_PRELOAD=", 0) == 0) continue;
    if (entry.rfind(std::string(kMonitorSocketEnv) + "=", 0) == 0) continue;
    env.push_back(entry);
  }
  if (!preload.empty()) {
    env.push_back("LD_PRELOAD=" + preload);
    env.push_back(std::string(kMonitorSocketEnv) + "=" + socket_path);
  }
  return env;
}

// SIGINT/SIGTERM handlers for the duration of the run.
class InterruptGuard {
 public:
  InterruptGuard() {
    g_interrupted = 0;
    struct sigaction action {};
    action.sa_handler = on_interrupt;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~InterruptGuard() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

}  // namespace

int run_bench(const BenchOptions& options) {
  InterruptGuard interrupts;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    std::fprintf(stderr, "netaccel bench: cannot resolve /proc/self/exe: %s\n",
                 ec.message().c_str());
    return 1;
  }
  const fs::path bin_dir = fs::weakly_canonical(self, ec).parent_path();

  Setup setup;
  setup.peer = (bin_dir / "netaccel-bench-peer").string();
  setup.netaccel = (bin_dir / "netaccel").string();
  const char* preload_override = std::getenv("NETACCEL_PRELOAD");
  setup.preload =
      preload_override != nullptr && *preload_override != '\0'
          ? std::string(preload_override)
          : fs::weakly_canonical(bin_dir / "../lib/netaccel/libnetaccel_preload.so", ec).string();
  // seconds_per_test is shared by a test's rounds in each mode.
  const int rounds = setup.rounds = options.quick ? 1 : 3;
  setup.seconds = options.quick ? std::min(options.seconds_per_test, 0.3)
                                : std::max(options.seconds_per_test / rounds, 0.25);

  if (access(setup.peer.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "netaccel bench: %s: %s\n", setup.peer.c_str(), std::strerror(errno));
    return 1;
  }
  char work_template[] = "/tmp/netaccel-bench-XXXXXX";
  if (mkdtemp(work_template) == nullptr) {
    std::fprintf(stderr, "netaccel bench: mkdtemp: %s\n", std::strerror(errno));
    return 1;
  }
  setup.work_dir = work_template;
  const std::string socket_path = setup.work_dir + "/monitor.sock";
  setup.kernel_env = child_environment("", "");
  setup.netaccel_env = child_environment(setup.preload, socket_path);

  const std::vector<TestSpec> tests = {
      {"msgrate 64 B", "msgrate", 64},
      {"rtt 64 B", "rtt", 64},
      {"throughput 4 KiB", "stream", 4096},
      {"throughput 64 KiB", "stream", 65536},
      {"connect", "connect", 0},
      {"pipe msgrate 64 B", "msgrate", 64, true},
      {"pipe rtt 64 B", "rtt", 64, true},
  };
  const std::vector<Metric> metrics = {
      {0, "msgrate 64 B (messages/s)", "messages_per_s", true, format_messages},
      {1, "rtt 64 B p50", "p50_us", false, format_p50},
      {1, "rtt 64 B p99", "p99_us", false, format_p99},
      {1, "rtt 64 B round trips/s", "round_trips_per_s", true, format_round_trips},
      {2, "throughput 4 KiB", "gbit_per_s", true, format_throughput},
      {3, "throughput 64 KiB", "gbit_per_s", true, format_throughput},
      {4, "connect (connections/s)", "connections_per_s", true, format_connections},
      {5, "pipe msgrate 64 B (messages/s)", "messages_per_s", true, format_messages},
      {6, "pipe rtt 64 B p50", "p50_us", false, format_p50},
      {6, "pipe rtt 64 B round trips/s", "round_trips_per_s", true, format_round_trips},
  };

  const std::string started = utc_now();
  const std::string load = load_average();
  std::printf("netaccel bench: %zu tests x {kernel, netaccel} x %d round%s, %.2f s each%s\n",
              tests.size(), rounds, rounds == 1 ? "" : "s", setup.seconds,
              options.quick ? " (quick)" : "");
  if (busy(load)) {
    std::printf("  warning: load average %s on %ld CPUs; the figures will be noisy\n", load.c_str(),
                sysconf(_SC_NPROCESSORS_ONLN));
  }
  std::printf("  peer:    %s\n  preload: %s\n  work:    %s\n", setup.peer.c_str(),
              setup.preload.c_str(), setup.work_dir.c_str());

  // netaccel mode needs the preload and a monitor; without them its column
  // shows why, and the kernel column is still measured.
  Monitor monitor;
  std::optional<std::string> netaccel_unavailable;
  int monitor_starts = 0;
  if (access(setup.preload.c_str(), R_OK) != 0)
    netaccel_unavailable = "no preload library at " + setup.preload;
  auto ensure_monitor = [&]() -> std::optional<std::string> {
    if (netaccel_unavailable) return netaccel_unavailable;
    if (monitor_starts > 0 && monitor.running()) return std::nullopt;
    if (monitor_starts > 0) {
      std::printf("  monitor stopped (%s); restarting it\n", monitor.death_reason().c_str());
    }
    if (monitor_starts >= 3) return netaccel_unavailable = "monitor keeps dying";
    ++monitor_starts;
    const auto error = monitor.start(setup.netaccel, socket_path, setup.work_dir + "/monitor.log",
                                     setup.kernel_env);
    if (error && monitor_starts == 1) netaccel_unavailable = error;  // will not get better
    return error;
  };

  std::vector<std::string> notes;  // misbehaviour that did not void a run
  // One run of one test in one mode, with its progress line.
  auto measure = [&](const TestSpec& test, Mode mode, int step, const std::string& label) {
    std::printf("%s ... ", label.c_str());
    std::fflush(stdout);
    RunResult result;
    if (test.over_pipes) {
      result = run_pipe_once(setup, test, mode, step);
    } else if (mode == Mode::kKernel) {
      result = run_once(setup, test, mode, step);
    } else if (const auto unavailable = ensure_monitor()) {
      result.error = *unavailable;
    } else {
      std::string error;
      const auto before = monitor.connections_total(&error);
      result = run_once(setup, test, mode, step);
      const auto after = before ? monitor.connections_total(&error) : std::nullopt;
      if (before && after) {
        result.netaccel_connections = *after >= *before ? *after - *before : 0;
      } else {
        result.verify_error = error;
      }
      if (!result.ok && !monitor.running()) result.error += " (" + monitor.death_reason() + ")";
    }
    if (!result.warning.empty()) {
      notes.push_back(label.substr(label.find(']') + 2) + ": " + result.warning);
    }
    if (!result.ok) {
      std::printf("failed: %s\n", result.error.c_str());
      return result;
    }
    std::printf("%s", summarize(test, result.json).c_str());
    if (mode == Mode::kNetaccel) {
      if (result.fell_back()) {
        std::printf("  [fell back to kernel: 0 netaccel connections]");
      } else if (result.netaccel_connections) {
        std::printf("  [%llu %s]", static_cast<unsigned long long>(*result.netaccel_connections),
                    test.over_pipes ? "pipes on rings" : "netaccel connections");
      } else {
        std::printf("  [unverified: %s]", result.verify_error.c_str());
      }
    }
    if (!result.warning.empty()) std::printf("  [warning: %s]", result.warning.c_str());
    std::printf("\n");
    return result;
  };

  // Rounds alternate the modes, so that a burst of load from elsewhere on
  // the machine hits both columns alike; the table keeps the medians.
  std::vector<RunResult> kernel(tests.size()), netaccel(tests.size());
  const int steps = static_cast<int>(tests.size()) * 2 * rounds;
  int step = 0;
  for (std::size_t i = 0; i < tests.size() && !g_interrupted; ++i) {
    std::vector<RunResult> kernel_runs, netaccel_runs;
    for (int round = 1; round <= rounds && !g_interrupted; ++round) {
      for (Mode mode : {Mode::kKernel, Mode::kNetaccel}) {
        if (g_interrupted) break;
        ++step;
        char counter[32];
        std::snprintf(counter, sizeof counter, "[%d/%d] ", step, steps);
        std::string label = counter + tests[i].label + " " + mode_name(mode);
        if (rounds > 1) label += " (round " + std::to_string(round) + ")";
        (mode == Mode::kKernel ? kernel_runs : netaccel_runs)
            .push_back(measure(tests[i], mode, step, label));
      }
    }
    kernel[i] = combine(kernel_runs);
    netaccel[i] = combine(netaccel_runs);
    if (g_interrupted) break;
    if (rounds > 1) {
      auto median = [&](const RunResult& r) {
        return r.ok ? summarize(tests[i], r.json) : "failed: " + r.error;
      };
      std::printf("      %s median: kernel %s | netaccel %s\n", tests[i].label.c_str(),
                  median(kernel[i]).c_str(), median(netaccel[i]).c_str());
    }
  }
  monitor.stop();

  if (g_interrupted) {
    std::printf("\ninterrupted; every child stopped\n");
  }
  const std::vector<Row> rows = build_rows(metrics, kernel, netaccel);
  std::printf("\n");
  print_table(rows);
  std::string floor_text;
  if (!g_interrupted) {
    std::printf(
        "\nmeasuring what the machine allows (two processes sharing memory, no sockets)...\n");
    floor_text = describe_floor(measure_hardware_floor(setup.seconds), kernel[0], kernel[1]);
    std::printf("%s", floor_text.c_str());
  }
  if (!notes.empty()) {
    std::printf("\nnotes:\n");
    for (const auto& note : notes) std::printf("  - %s\n", note.c_str());
  }
  std::printf("\nratio: above 1 means netaccel is better; every ratio is measured in this run.\n");

  if (!g_interrupted && !options.plot_svg.empty()) {
    std::vector<PlotRow> plot;
    for (const Row& row : rows) {
      plot.push_back({row.test, row.kernel, row.netaccel, std::strtod(row.ratio.c_str(), nullptr)});
    }
    std::ofstream svg(options.plot_svg);
    svg << ratio_chart_svg("Same-host sockets: kernel TCP loopback vs netaccel", plot);
    if (svg) {
      std::printf("wrote %s\n", options.plot_svg.c_str());
    } else {
      std::fprintf(stderr, "netaccel bench: cannot write %s\n", options.plot_svg.c_str());
    }
  }
  if (!g_interrupted && !options.output_markdown.empty()) {
    if (write_markdown(options.output_markdown, rows, notes, floor_text, setup, options, started,
                       load)) {
      std::printf("wrote %s\n", options.output_markdown.c_str());
    } else {
      std::fprintf(stderr, "netaccel bench: cannot write %s\n", options.output_markdown.c_str());
    }
  }

  const char* keep = std::getenv("NETACCEL_BENCH_KEEP");
  if (keep != nullptr && *keep != '\0' && *keep != '0') {
    std::printf("logs kept in %s\n", setup.work_dir.c_str());
  } else {
    fs::remove_all(setup.work_dir, ec);
  }

  if (g_interrupted) return 130;
  bool kernel_failed = false;
  for (const RunResult& result : kernel) kernel_failed |= !result.ok;
  return kernel_failed ? 1 : 0;
}

}  // namespace netaccel::cli

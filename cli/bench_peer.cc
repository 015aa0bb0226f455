// netaccel-bench-peer: the two ends of every `netaccel bench` test.
//
// A plain POSIX sockets program on purpose: `netaccel bench` runs this same
// binary once on kernel TCP and once under the preload library, so whatever
// it measures is what an unmodified application would get.
//
//   netaccel-bench-peer server --port P --test T [--size N]
//   netaccel-bench-peer client --port P --test T --seconds S [--size N]
//   netaccel-bench-peer pipe --test T --seconds S [--size N]
//
// Tests: stream, alias throughput (N-byte messages one way; msgrate is
// stream with N = 64), rtt (N-byte ping-pong), connect (connect+close loop).
// The server prints "ready" once it listens; the client prints one JSON line
// with its results. `pipe` runs stream or rtt between itself (the client)
// and a forked child (the server) over two pipes, one each way.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

// Every stream message starts with one of these; the rest is payload.
constexpr unsigned char kDataMark = 'D';
constexpr unsigned char kEndMark = 'E';

struct Options {
  std::string role;
  std::string test;
  int port = 0;
  double seconds = 1.0;
  std::size_t size = 64;
};

double now_seconds() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

int64_t now_nanoseconds() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The client reports failures as JSON too, so that the bench can show why.
[[noreturn]] void fail(const Options& options, const char* what, int error) {
  if (options.role != "server") {
    std::printf("{\"test\":\"%s\",\"ok\":false,\"error\":\"%s: %s\"}\n", options.test.c_str(), what,
                std::strerror(error));
    std::fflush(stdout);
  }
  std::fprintf(stderr, "netaccel-bench-peer %s: %s: %s\n", options.role.c_str(), what,
               std::strerror(error));
  std::exit(1);
}

struct sockaddr_in loopback(int port) {
  struct sockaddr_in address {};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return address;
}

// The descriptors a test reads and writes: one socket, or two pipes.
struct Link {
  int in;
  int out;
};

// Blocking write of all `n` bytes; false on error (errno set). write() and
// read(), not send() and recv(): the same calls on sockets and pipes.
bool send_all(int fd, const unsigned char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t sent = write(fd, data, n);
    if (sent < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += sent;
    n -= static_cast<std::size_t>(sent);
  }
  return true;
}

// Blocking receive of exactly `n` bytes: 1 when done, 0 on EOF before any
// byte, -1 on error or EOF mid-message (errno set).
int recv_exact(int fd, unsigned char* data, std::size_t n) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = read(fd, data + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) {
      if (got == 0) return 0;
      errno = ECONNRESET;
      return -1;
    }
    got += static_cast<std::size_t>(r);
  }
  return 1;
}

void set_nodelay(int fd) {
  const int one = 1;
  // Best effort: a failure only changes kernel batching, not correctness.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int listen_on(const Options& options) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail(options, "socket", errno);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const struct sockaddr_in address = loopback(options.port);
  if (bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0)
    fail(options, "bind", errno);
  if (listen(fd, 1024) != 0) fail(options, "listen", errno);
  std::printf("ready\n");
  std::fflush(stdout);
  return fd;
}

// Connects to the server, retrying briefly while it is not yet listening.
int connect_to(const Options& options) {
  const double give_up = now_seconds() + 5.0;
  for (;;) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) fail(options, "socket", errno);
    const struct sockaddr_in address = loopback(options.port);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0) return fd;
    const int error = errno;
    close(fd);
    if (error != ECONNREFUSED || now_seconds() > give_up) fail(options, "connect", error);
    usleep(10'000);
  }
}

int accept_one(const Options& options, int listener) {
  for (;;) {
    const int fd = accept(listener, nullptr, nullptr);
    if (fd >= 0) return fd;
    if (errno != EINTR && errno != ECONNABORTED) fail(options, "accept", errno);
  }
}

// ---------------------------------------------------------------------------
// stream: the client sends N-byte messages for S seconds, then an end
// message; the server receives exactly N bytes at a time, counts data
// messages and answers the end message with its count. The client's clock
// stops when that answer arrives, so the rate counts messages the server
// actually received.

void serve_stream(const Options& options, const Link& link) {
  std::vector<unsigned char> message(options.size);
  uint64_t received = 0;
  for (;;) {
    const int r = recv_exact(link.in, message.data(), message.size());
    if (r == 0) break;  // the client left without an end message
    if (r < 0) fail(options, "recv", errno);
    if (message[0] == kDataMark) {
      ++received;
    } else if (message[0] == kEndMark) {
      if (!send_all(link.out, reinterpret_cast<const unsigned char*>(&received), sizeof received))
        fail(options, "send", errno);
    } else {
      fail(options, "stream out of step", EPROTO);
    }
  }
}

int stream_server(const Options& options, int listener) {
  const int fd = accept_one(options, listener);
  serve_stream(options, {fd, fd});
  close(fd);
  return 0;
}

// Sends for the test's duration, then prints the results.
void drive_stream(const Options& options, const Link& link) {
  std::vector<unsigned char> message(options.size, 0x5a);
  message[0] = kDataMark;
  const double start = now_seconds();
  const double stop = start + options.seconds;
  // Reading the clock costs about as much as a shared-memory send; look at
  // it every few messages only.
  const uint64_t check_every = options.size >= 16384 ? 1 : options.size >= 1024 ? 8 : 64;
  uint64_t sent = 0;
  for (;;) {
    if (!send_all(link.out, message.data(), message.size())) fail(options, "send", errno);
    if (++sent % check_every == 0 && now_seconds() >= stop) break;
  }
  message[0] = kEndMark;
  if (!send_all(link.out, message.data(), message.size())) fail(options, "send", errno);
  uint64_t received = 0;
  const int r = recv_exact(link.in, reinterpret_cast<unsigned char*>(&received), sizeof received);
  if (r <= 0) fail(options, "recv count", r == 0 ? ECONNRESET : errno);
  const double elapsed = now_seconds() - start;
  if (received != sent) fail(options, "server received a different count", EPROTO);
  const double bytes = static_cast<double>(received) * static_cast<double>(options.size);
  std::printf(
      "{\"test\":\"%s\",\"ok\":true,\"size\":%zu,\"seconds\":%.6f,\"messages\":%llu,"
      "\"messages_per_s\":%.1f,\"bytes\":%.0f,\"mbytes_per_s\":%.2f,\"gbit_per_s\":%.4f}\n",
      options.test.c_str(), options.size, elapsed, static_cast<unsigned long long>(received),
      static_cast<double>(received) / elapsed, bytes, bytes / elapsed / 1e6,
      bytes * 8 / elapsed / 1e9);
}

int stream_client(const Options& options) {
  const int fd = connect_to(options);
  drive_stream(options, {fd, fd});
  close(fd);
  return 0;
}

// ---------------------------------------------------------------------------
// rtt: N-byte ping-pong; the client times every round trip.

void serve_rtt(const Options& options, const Link& link) {
  std::vector<unsigned char> message(options.size);
  for (;;) {
    const int r = recv_exact(link.in, message.data(), message.size());
    if (r == 0) break;
    if (r < 0) fail(options, "recv", errno);
    if (!send_all(link.out, message.data(), message.size())) fail(options, "send", errno);
  }
}

int rtt_server(const Options& options, int listener) {
  const int fd = accept_one(options, listener);
  set_nodelay(fd);
  serve_rtt(options, {fd, fd});
  close(fd);
  return 0;
}

// Times round trips for the test's duration, then prints the results.
void drive_rtt(const Options& options, const Link& link) {
  std::vector<unsigned char> message(options.size, 0x5a), reply(options.size);
  std::vector<int64_t> samples;
  samples.reserve(1 << 20);
  const int64_t start = now_nanoseconds();
  const int64_t stop = start + static_cast<int64_t>(options.seconds * 1e9);
  int64_t end = start;
  while (end < stop) {
    const int64_t before = end;
    if (!send_all(link.out, message.data(), message.size())) fail(options, "send", errno);
    const int r = recv_exact(link.in, reply.data(), reply.size());
    if (r <= 0) fail(options, "recv", r == 0 ? ECONNRESET : errno);
    end = now_nanoseconds();
    samples.push_back(end - before);
  }
  const double elapsed = static_cast<double>(end - start) * 1e-9;
  std::sort(samples.begin(), samples.end());
  auto percentile = [&](double p) {
    const std::size_t index = std::min(
        samples.size() - 1, static_cast<std::size_t>(p * static_cast<double>(samples.size())));
    return static_cast<double>(samples[index]) / 1e3;
  };
  double sum = 0;
  for (const int64_t s : samples) sum += static_cast<double>(s);
  std::printf(
      "{\"test\":\"%s\",\"ok\":true,\"size\":%zu,\"seconds\":%.6f,\"round_trips\":%zu,"
      "\"round_trips_per_s\":%.1f,\"p50_us\":%.3f,\"p99_us\":%.3f,\"mean_us\":%.3f,"
      "\"max_us\":%.3f}\n",
      options.test.c_str(), options.size, elapsed, samples.size(),
      static_cast<double>(samples.size()) / elapsed, percentile(0.50), percentile(0.99),
      sum / static_cast<double>(samples.size()) / 1e3, static_cast<double>(samples.back()) / 1e3);
}

int rtt_client(const Options& options) {
  const int fd = connect_to(options);
  set_nodelay(fd);
  drive_rtt(options, {fd, fd});
  close(fd);
  return 0;
}

// ---------------------------------------------------------------------------
// pipe: the same stream and rtt tests between this process and a forked
// child, over a pipe each way.

int pipe_test(const Options& options, bool stream) {
  int down[2], up[2];
  if (pipe(down) != 0 || pipe(up) != 0) fail(options, "pipe", errno);
  const pid_t child = fork();
  if (child < 0) fail(options, "fork", errno);
  if (child == 0) {
    close(down[1]);
    close(up[0]);
    const Link link{down[0], up[1]};
    stream ? serve_stream(options, link) : serve_rtt(options, link);
    std::exit(0);
  }
  close(down[0]);
  close(up[1]);
  const Link link{up[0], down[1]};
  stream ? drive_stream(options, link) : drive_rtt(options, link);
  close(down[1]);  // the child's end of file
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------
// connect: the client opens and closes connections for S seconds; the server
// accepts and closes until it is stopped. SO_LINGER 0 makes the client's
// close an abort in both modes, so kernel TCP does not run out of ephemeral
// ports in TIME_WAIT; the bench says so beside the figures.

int connect_server(const Options& options, int listener) {
  for (;;) close(accept_one(options, listener));
}

int connect_client(const Options& options) {
  const struct sockaddr_in address = loopback(options.port);
  const struct linger abort_on_close { 1, 0 };
  const double start = now_seconds();
  const double stop = start + options.seconds;
  uint64_t connections = 0;
  double end = start;
  while (end < stop) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) fail(options, "socket", errno);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
      const int error = errno;
      close(fd);
      // The first attempt may race the server's listen(); later ones may not.
      if (connections == 0 && error == ECONNREFUSED && now_seconds() < start + 5.0) {
        usleep(10'000);
        continue;
      }
      fail(options, "connect", error);
    }
    close(fd);
    ++connections;
    end = now_seconds();
  }
  const double elapsed = end - start;
  std::printf(
      "{\"test\":\"%s\",\"ok\":true,\"seconds\":%.6f,\"connections\":%llu,"
      "\"connections_per_s\":%.1f}\n",
      options.test.c_str(), elapsed, static_cast<unsigned long long>(connections),
      static_cast<double>(connections) / elapsed);
  return 0;
}

// ---------------------------------------------------------------------------

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: netaccel-bench-peer server --port P --test T [--size N]\n"
               "       netaccel-bench-peer client --port P --test T --seconds S [--size N]\n"
               "       netaccel-bench-peer pipe --test T --seconds S [--size N]\n"
               "tests: msgrate (64 B stream), stream or throughput [--size N], rtt [--size N], "
               "connect\n");
  std::exit(2);
}

Options parse(int argc, char** argv) {
  if (argc < 2) usage();
  Options options;
  options.role = argv[1];
  if (options.role != "server" && options.role != "client" && options.role != "pipe") usage();
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage();
    const char* value = argv[++i];
    if (flag == "--port") {
      options.port = std::atoi(value);
    } else if (flag == "--test") {
      options.test = value;
    } else if (flag == "--seconds") {
      options.seconds = std::atof(value);
    } else if (flag == "--size") {
      options.size = static_cast<std::size_t>(std::strtoull(value, nullptr, 10));
    } else {
      usage();
    }
  }
  const bool needs_port = options.role != "pipe";
  if ((needs_port && (options.port <= 0 || options.port > 65535)) || options.seconds <= 0) usage();
  if (options.test == "throughput") options.test = "stream";
  if (options.test == "msgrate") options.size = 64;
  if (options.size < 1 || options.size > (64u << 20)) usage();
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  // A vanished peer must show as an error from send(), not kill us silently.
  signal(SIGPIPE, SIG_IGN);
  const bool stream = options.test == "msgrate" || options.test == "stream";
  if (!stream && options.test != "rtt" && options.test != "connect") usage();
  if (options.role == "pipe") {
    if (options.test == "connect") usage();
    return pipe_test(options, stream);
  }

  if (options.role == "server") {
    const int listener = listen_on(options);
    if (stream) return stream_server(options, listener);
    if (options.test == "rtt") return rtt_server(options, listener);
    return connect_server(options, listener);
  }
  if (stream) return stream_client(options);
  if (options.test == "rtt") return rtt_client(options);
  return connect_client(options);
}

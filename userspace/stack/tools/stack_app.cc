// netaccel-stack-app: the project's own small servers and clients, run on
// the user-space stack (--stack CONTAINER) or on kernel sockets (--kernel),
// so that tests and benchmarks drive both paths with the same program.
//
//   serve-http --port P --root DIR     HTTP/1.1 GET of files, one thread per connection
//   get --to ADDR --port P --path /F   HTTP GET; the body to stdout
//   send --to ADDR --port P            stdin to the peer, then EOF; waits for the peer's EOF
//   receive --port P                   accepts one connection; its bytes to stdout
//   echo --port P                      echoes every connection, one thread each
//   pingpong --to ADDR --port P [--size 64] [--count N]   request/response; JSON result
//   sink --port P                      accepts one connection, counts bytes; JSON result
//   blast --to ADDR --port P --bytes N sends N bytes; JSON result
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "netaccel/stack_client.h"

namespace {

// One connection, on either path.
class Stream {
 public:
  virtual ~Stream() = default;
  virtual ssize_t send(const void* data, std::size_t length) = 0;
  virtual ssize_t receive(void* data, std::size_t length) = 0;
  virtual void shutdown_write() = 0;
};

class StackStream final : public Stream {
 public:
  explicit StackStream(std::unique_ptr<netaccel::stack_client::Connection> connection)
      : connection_(std::move(connection)) {}
  ssize_t send(const void* data, std::size_t length) override {
    return connection_->send(data, length);
  }
  ssize_t receive(void* data, std::size_t length) override {
    return connection_->receive(data, length);
  }
  void shutdown_write() override { connection_->shutdown_write(); }

 private:
  std::unique_ptr<netaccel::stack_client::Connection> connection_;
};

class KernelStream final : public Stream {
 public:
  explicit KernelStream(int fd) : fd_(fd) {
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~KernelStream() override { close(fd_); }
  ssize_t send(const void* data, std::size_t length) override {
    std::size_t sent = 0;
    while (sent < length) {
      const ssize_t n =
          ::send(fd_, static_cast<const char*>(data) + sent, length - sent, MSG_NOSIGNAL);
      if (n < 0) return errno == EINTR ? 0 : -errno;
      sent += static_cast<std::size_t>(n);
    }
    return static_cast<ssize_t>(sent);
  }
  ssize_t receive(void* data, std::size_t length) override {
    const ssize_t n = recv(fd_, data, length, 0);
    return n < 0 ? -errno : n;
  }
  void shutdown_write() override { shutdown(fd_, SHUT_WR); }

 private:
  int fd_;
};

struct Options {
  std::string mode;
  std::string stack;  // container, or empty for --kernel
  std::string to;
  uint16_t port = 0;
  std::string root = ".";
  std::string path = "/";
  std::size_t size = 64;
  uint64_t count = 10000;
  uint64_t bytes = 0;
};

[[noreturn]] void fail(const std::string& message) {
  std::cerr << "netaccel-stack-app: " << message << std::endl;
  std::exit(1);
}

uint32_t parse_address(const std::string& text) {
  in_addr address{};
  if (inet_pton(AF_INET, text.c_str(), &address) != 1) fail("not an IPv4 address: " + text);
  return address.s_addr;
}

std::unique_ptr<Stream> open_stream(const Options& options) {
  const uint32_t address = parse_address(options.to);
  if (!options.stack.empty()) {
    int error = 0;
    auto connection = netaccel::stack_client::connect(netaccel::stack_socket_path(options.stack),
                                                      address, options.port, &error);
    if (!connection) fail("connect through the stack: " + std::string(std::strerror(error)));
    return std::make_unique<StackStream>(std::move(connection));
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(options.port);
  peer.sin_addr.s_addr = address;
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof peer) != 0) {
    fail("connect: " + std::string(std::strerror(errno)));
  }
  return std::make_unique<KernelStream>(fd);
}

// Accepts connections on either path.
class Acceptor {
 public:
  explicit Acceptor(const Options& options) {
    if (!options.stack.empty()) {
      int error = 0;
      stack_ = netaccel::stack_client::Listener::listen(netaccel::stack_socket_path(options.stack),
                                                        options.port, 128, &error);
      if (!stack_) fail("listen through the stack: " + std::string(std::strerror(error)));
      return;
    }
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_port = htons(options.port);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
        listen(fd_, 128) != 0) {
      fail("listen: " + std::string(std::strerror(errno)));
    }
  }
  std::unique_ptr<Stream> accept() {
    if (stack_) {
      int error = 0;
      auto connection = stack_->accept(&error);
      if (!connection) fail("accept: " + std::string(std::strerror(error)));
      return std::make_unique<StackStream>(std::move(connection));
    }
    const int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) fail("accept: " + std::string(std::strerror(errno)));
    return std::make_unique<KernelStream>(fd);
  }

 private:
  std::unique_ptr<netaccel::stack_client::Listener> stack_;
  int fd_ = -1;
};

bool send_all(Stream& stream, const void* data, std::size_t length) {
  return stream.send(data, length) == static_cast<ssize_t>(length);
}

bool receive_exactly(Stream& stream, void* data, std::size_t length) {
  std::size_t got = 0;
  while (got < length) {
    const ssize_t n = stream.receive(static_cast<char*>(data) + got, length - got);
    if (n <= 0) return false;
    got += static_cast<std::size_t>(n);
  }
  return true;
}

// Reads until EOF, passing each piece on; false on a reset.
template <typename Sink>
bool drain(Stream& stream, Sink&& sink) {
  std::vector<char> buffer(256 * 1024);
  for (;;) {
    const ssize_t n = stream.receive(buffer.data(), buffer.size());
    if (n == 0) return true;
    if (n < 0) {
      std::cerr << "netaccel-stack-app: receive: " << std::strerror(static_cast<int>(-n)) << "\n";
      return false;
    }
    sink(buffer.data(), static_cast<std::size_t>(n));
  }
}

void serve_http_connection(std::unique_ptr<Stream> stream, std::string root) {
  std::string request;
  char buffer[4096];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < 65536) {
    const ssize_t n = stream->receive(buffer, sizeof buffer);
    if (n <= 0) return;
    request.append(buffer, static_cast<std::size_t>(n));
  }
  std::string path;
  if (request.rfind("GET ", 0) == 0) path = request.substr(4, request.find(' ', 4) - 4);
  std::ifstream file;
  if (!path.empty() && path[0] == '/' && path.find("..") == std::string::npos) {
    file.open(root + path, std::ios::binary);
  }
  if (!file) {
    const std::string missing =
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    send_all(*stream, missing.data(), missing.size());
    stream->shutdown_write();
    drain(*stream, [](const char*, std::size_t) {});
    return;
  }
  file.seekg(0, std::ios::end);
  const auto size = static_cast<uint64_t>(file.tellg());
  file.seekg(0);
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(size) +
                           "\r\nConnection: close\r\n\r\n";
  if (!send_all(*stream, head.data(), head.size())) return;
  std::vector<char> chunk(256 * 1024);
  while (file) {
    file.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    const auto got = static_cast<std::size_t>(file.gcount());
    if (got == 0 || !send_all(*stream, chunk.data(), got)) break;
  }
  stream->shutdown_write();
  drain(*stream, [](const char*, std::size_t) {});  // until the client closes
}

int http_get(const Options& options) {
  auto stream = open_stream(options);
  const std::string request =
      "GET " + options.path + " HTTP/1.1\r\nHost: " + options.to + "\r\nConnection: close\r\n\r\n";
  if (!send_all(*stream, request.data(), request.size())) fail("send failed");
  std::string head;
  bool in_body = false;
  uint64_t body = 0;
  uint64_t expected = UINT64_MAX;
  const bool clean = drain(*stream, [&](const char* data, std::size_t length) {
    if (in_body) {
      fwrite(data, 1, length, stdout);
      body += length;
      return;
    }
    head.append(data, length);
    const std::size_t end = head.find("\r\n\r\n");
    if (end == std::string::npos) return;
    in_body = true;
    const std::size_t field = head.find("Content-Length: ");
    if (field != std::string::npos && field < end) expected = std::stoull(head.substr(field + 16));
    fwrite(head.data() + end + 4, 1, head.size() - end - 4, stdout);
    body += head.size() - end - 4;
  });
  fflush(stdout);
  if (!clean || !in_body) fail("GET failed: the connection ended before the response did");
  if (head.compare(0, 12, "HTTP/1.1 200") != 0)
    fail("GET failed: " + head.substr(0, head.find('\r')));
  if (expected != UINT64_MAX && body != expected) {
    fail("short body: " + std::to_string(body) + " of " + std::to_string(expected) + " bytes");
  }
  return 0;
}

int send_stdin(const Options& options) {
  auto stream = open_stream(options);
  std::vector<char> buffer(256 * 1024);
  for (;;) {
    const ssize_t n = read(STDIN_FILENO, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (!send_all(*stream, buffer.data(), static_cast<std::size_t>(n))) fail("send failed");
  }
  stream->shutdown_write();
  return drain(*stream, [](const char*, std::size_t) {}) ? 0 : 1;
}

int receive_one(const Options& options) {
  Acceptor acceptor(options);
  auto stream = acceptor.accept();
  const bool clean =
      drain(*stream, [](const char* data, std::size_t length) { fwrite(data, 1, length, stdout); });
  fflush(stdout);
  return clean ? 0 : 1;
}

int echo(const Options& options) {
  Acceptor acceptor(options);
  for (;;) {
    std::thread([stream = acceptor.accept()]() mutable {
      std::vector<char> buffer(64 * 1024);
      for (;;) {
        const ssize_t n = stream->receive(buffer.data(), buffer.size());
        if (n <= 0 || !send_all(*stream, buffer.data(), static_cast<std::size_t>(n))) break;
      }
      stream->shutdown_write();
    }).detach();
  }
}

int serve_http(const Options& options) {
  Acceptor acceptor(options);
  for (;;) std::thread(serve_http_connection, acceptor.accept(), options.root).detach();
}

double percentile(std::vector<double>& values, double fraction) {
  if (values.empty()) return 0;
  const auto index = static_cast<std::size_t>(fraction * static_cast<double>(values.size() - 1));
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(index),
                   values.end());
  return values[index];
}

int pingpong(const Options& options) {
  auto stream = open_stream(options);
  std::vector<char> request(options.size, 'x');
  std::vector<char> response(options.size);
  std::vector<double> rtt_us;
  rtt_us.reserve(options.count);
  const auto start = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < options.count; ++i) {
    const auto sent = std::chrono::steady_clock::now();
    if (!send_all(*stream, request.data(), request.size()) ||
        !receive_exactly(*stream, response.data(), response.size())) {
      fail("exchange " + std::to_string(i) + " failed");
    }
    rtt_us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - sent).count());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stream->shutdown_write();
  std::printf("{\"exchanges\":%llu,\"rate\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
              static_cast<unsigned long long>(options.count),
              static_cast<double>(options.count) / seconds, percentile(rtt_us, 0.5),
              percentile(rtt_us, 0.99));
  return 0;
}

int sink(const Options& options) {
  Acceptor acceptor(options);
  auto stream = acceptor.accept();
  uint64_t total = 0;
  const auto start = std::chrono::steady_clock::now();
  const bool clean = drain(*stream, [&](const char*, std::size_t length) { total += length; });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stream->shutdown_write();
  std::printf("{\"bytes\":%llu,\"gbit_per_s\":%.3f}\n", static_cast<unsigned long long>(total),
              static_cast<double>(total) * 8 / seconds / 1e9);
  return clean ? 0 : 1;
}

int blast(const Options& options) {
  auto stream = open_stream(options);
  std::vector<char> chunk(256 * 1024, 'b');
  uint64_t left = options.bytes;
  const auto start = std::chrono::steady_clock::now();
  while (left > 0) {
    const std::size_t n = static_cast<std::size_t>(std::min<uint64_t>(left, chunk.size()));
    if (!send_all(*stream, chunk.data(), n)) fail("send failed");
    left -= n;
  }
  stream->shutdown_write();
  drain(*stream, [](const char*, std::size_t) {});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"bytes\":%llu,\"gbit_per_s\":%.3f}\n",
              static_cast<unsigned long long>(options.bytes),
              static_cast<double>(options.bytes) * 8 / seconds / 1e9);
  return 0;
}

Options parse(int argc, char** argv) {
  Options options;
  bool path_chosen = false;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(argument + " needs a value");
      return argv[++i];
    };
    if (argument == "--stack") {
      options.stack = value();
      path_chosen = true;
    } else if (argument == "--kernel") {
      path_chosen = true;
    } else if (argument == "--to") {
      options.to = value();
    } else if (argument == "--port") {
      options.port = static_cast<uint16_t>(std::stoul(value()));
    } else if (argument == "--root") {
      options.root = value();
    } else if (argument == "--path") {
      options.path = value();
    } else if (argument == "--size") {
      options.size = std::stoul(value());
    } else if (argument == "--count") {
      options.count = std::stoull(value());
    } else if (argument == "--bytes") {
      options.bytes = std::stoull(value());
    } else if (options.mode.empty() && argument[0] != '-') {
      options.mode = argument;
    } else {
      fail("unknown argument " + argument + " (see the top of stack_app.cc)");
    }
  }
  if (!path_chosen) fail("say --stack CONTAINER or --kernel");
  if (options.mode.empty())
    fail("say what to do: serve-http, get, send, receive, echo, pingpong, sink, blast");
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const Options options = parse(argc, argv);
  const std::map<std::string, int (*)(const Options&)> modes = {{"serve-http", serve_http},
                                                                {"get", http_get},
                                                                {"send", send_stdin},
                                                                {"receive", receive_one},
                                                                {"echo", echo},
                                                                {"pingpong", pingpong},
                                                                {"sink", sink},
                                                                {"blast", blast}};
  const auto mode = modes.find(options.mode);
  if (mode == modes.end()) fail("unknown mode " + options.mode);
  if (options.mode != "receive" && options.mode != "echo" && options.mode != "serve-http" &&
      options.mode != "sink" && options.to.empty()) {
    fail(options.mode + " needs --to ADDRESS");
  }
  return mode->second(options);
}

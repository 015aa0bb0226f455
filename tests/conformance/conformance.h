// Differential conformance cases: each case is an ordinary program fragment
// that uses the socket and pipe API the way applications do and prints what
// it observed. run.sh runs every case on the plain kernel and under netaccel
// and requires identical transcripts, so a transcript holds only what must
// not differ: return values, errno names, bytes, event masks, ordering —
// never timings, pids, ports or descriptor numbers.
#pragma once

#include <netinet/in.h>
#include <stdint.h>
#include <sys/types.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace conformance {

// ---------------------------------------------------------------------------
// Registry. `connections` is how many connections the case makes that
// netaccel must carry when it runs under netaccel (the runner checks the
// monitor's connections_total), 0 when it makes none.
struct Case {
  const char* area;
  const char* name;
  int connections;
  const char* description;
  void (*run)();
};

struct CaseRegistration {
  CaseRegistration(const char* area, const char* name, int connections, const char* description,
                   void (*run)());
};

// A program image the cases exec (`conformance --helper NAME ARGS...`).
struct HelperRegistration {
  HelperRegistration(const char* name, void (*run)(const std::vector<std::string>& arguments));
};

#define CONFORMANCE_CASE(area, name, connections, description)                               \
  static void name();                                                                        \
  static const ::conformance::CaseRegistration name##_registration{area, #name, connections, \
                                                                   description, name};       \
  static void name()

#define CONFORMANCE_HELPER(name)                                                   \
  static void name(const std::vector<std::string>& arguments);                     \
  static const ::conformance::HelperRegistration name##_registration{#name, name}; \
  static void name([[maybe_unused]] const std::vector<std::string>& arguments)

// ---------------------------------------------------------------------------
// Transcript. Each line is written with one write(2) so that forked
// processes sharing stdout never split each other's lines.
void say(const char* format, ...) __attribute__((format(printf, 1, 2)));
// Prints "label: RESULT" or "label: -1 ENAME" and returns `result`.
long report(const char* label, long result);
// Ends the case with a transcript line when a set-up step fails.
[[noreturn]] void die(const char* what);
// Like report, but dies when `result` is negative: for set-up steps whose
// success is not itself an observation.
long require(const char* what, long result);

std::string errno_name(int error);
// `text` in single quotes with control bytes escaped, for transcripts.
std::string quoted(const std::string& text);
std::string epoll_events_text(uint32_t events);
std::string poll_events_text(short events);
std::string signal_name(int signal_number);

// ---------------------------------------------------------------------------
// TCP over loopback.
int tcp_listener(int family = AF_INET, int type_flags = 0, int backlog = 64);
uint16_t local_port(int fd);
sockaddr_storage loopback_address(int family, uint16_t port);
socklen_t address_length(int family);
// A connected socket to `port`; dies when the connect fails.
int tcp_connect(uint16_t port, int family = AF_INET, int type_flags = 0);
// connect()'s own result, for cases that observe it.
int tcp_connect_result(int fd, uint16_t port, int family = AF_INET);
struct TcpPair {
  int client;
  int server;
};
// A connected pair over a listener that is closed again.
TcpPair tcp_pair(int family = AF_INET);
void close_pair(const TcpPair& pair);

// ---------------------------------------------------------------------------
// Data.
void send_all(int fd, const void* data, size_t length);
void send_text(int fd, const std::string& text);
// Prints what a read-like call returned: "label: N 'bytes'" or
// "label: -1 ENAME"; returns the bytes (`buffer` cut to `got`).
std::string report_data(const char* label, ssize_t got, std::string buffer);
// One recv of up to `capacity` bytes, printed as by report_data.
std::string recv_once(const char* label, int fd, size_t capacity = 256, int flags = 0);
// Reads exactly `length` bytes (or to EOF) from a socket or a pipe;
// returns what arrived.
std::string recv_exact(int fd, size_t length);
// Reads exactly `length` bytes (or to EOF) and prints "label: 'bytes'".
void show_exact(const char* label, int fd, size_t length);
// A deterministic byte pattern and a digest to compare large transfers.
std::vector<unsigned char> pattern(size_t length, unsigned seed);
uint64_t digest(const unsigned char* data, size_t length);
// Reads to EOF and returns the byte count and digest of everything read.
struct Drained {
  size_t bytes;
  uint64_t digest;
};
Drained drain(int fd);
// Fills the socket's send path until a non-blocking send would block;
// returns the bytes written. Leaves the descriptor's blocking mode as it was.
size_t fill_until_blocked(int fd);
void set_nonblocking(int fd, bool nonblocking);
// Prints "label: accmode N O_NONBLOCK 0|1 O_APPEND 0|1" from F_GETFL.
void show_status_flags(const char* label, int fd);
void set_int_option(int fd, int level, int name, int value);
void sleep_ms(int milliseconds);

// ---------------------------------------------------------------------------
// Processes and signals.
// Runs `child` in a forked process that exits with 0 afterwards.
pid_t fork_child(const std::function<void()>& child);
// Runs `work` on a thread with every signal blocked, so that signals aimed
// at the process (SIGALRM, SIGPIPE from another thread) reach the main one.
std::thread in_background(std::function<void()> work);
// Waits for `pid` and prints "label: exit N" or "label: signal NAME".
void wait_child(const char* label, pid_t pid);
// Replaces this image with `conformance --helper NAME ARGUMENTS...`.
[[noreturn]] void exec_helper(const std::string& name, const std::vector<std::string>& arguments);
// argv for the same, for posix_spawn and friends.
std::vector<std::string> helper_command(const std::string& name,
                                        const std::vector<std::string>& arguments);

// One-way go signal between processes over a kernel pipe.
class Baton {
 public:
  Baton();
  void pass();
  void wait();

 private:
  int read_end_;
  int write_end_;
};

// Installs a counting handler for `signal_number` (with or without SA_RESTART).
void count_signal(int signal_number, bool restart);
int signals_caught();
// Delivers SIGALRM to this process once, after `milliseconds`.
void alarm_after_ms(int milliseconds);

// The monitor under test, stopped and started by the runner's control
// script (CONFORMANCE_MONITOR_CONTROL); without it — on the kernel — no-ops.
void monitor_stop();
void monitor_start();

}  // namespace conformance

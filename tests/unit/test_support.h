// Helpers shared by the unit tests.
#pragma once

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "netaccel/protocol.h"

namespace netaccel::test {

// Every test that forks or waits runs under a deadline, so that a bug fails
// the test instead of hanging the suite. SIGALRM's handler reports and leaves
// at once; a forked child dies with us through PR_SET_PDEATHSIG.
class Deadline {
 public:
  explicit Deadline(unsigned seconds) {
    signal(SIGALRM, &Deadline::expired);
    alarm(seconds);
  }
  ~Deadline() { alarm(0); }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

 private:
  static void expired(int) {
    static const char message[] = "test exceeded its deadline\n";
    [[maybe_unused]] const ssize_t ignored = write(STDERR_FILENO, message, sizeof message - 1);
    _exit(124);
  }
};

// A well-mixed 64-bit function of `x` (splitmix64's finaliser).
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Small PRNG for sizes and choices (xorshift64*).
class Random {
 public:
  explicit Random(uint64_t seed) : state_(splitmix64(seed) | 1) {}
  uint64_t next() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545f4914f6cdd1dULL;
  }
  // Uniform enough in [low, high].
  std::size_t between(std::size_t low, std::size_t high) { return low + next() % (high - low + 1); }

 private:
  uint64_t state_;
};

// Moves every index of a fresh ring (byte or descriptor) to `start`, as if
// that much had already passed through it: exercises the 32-bit wrap.
template <typename RingControl>
void start_indices_at(RingControl& control, uint32_t start) {
  control.head.store(start, std::memory_order_relaxed);
  control.tail.store(start, std::memory_order_relaxed);
  control.producer_cached_tail = start;
  control.consumer_cached_head = start;
}

// a.b.c.d:port as the protocol carries it (IPv4-mapped).
inline InetAddress ipv4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint16_t port) {
  InetAddress address{};
  address.bytes[10] = 0xff;
  address.bytes[11] = 0xff;
  address.bytes[12] = a;
  address.bytes[13] = b;
  address.bytes[14] = c;
  address.bytes[15] = d;
  address.port = port;
  address.family = AF_INET;
  return address;
}

}  // namespace netaccel::test

#include "bench_floor.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "netaccel/byte_ring.h"

namespace netaccel::cli {
namespace {

int64_t now_ns() {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

// Shared with the partner process; the two words on separate lines.
struct PingPong {
  alignas(kFalseSharingRange) std::atomic<uint64_t> ping;
  alignas(kFalseSharingRange) std::atomic<uint64_t> pong;
  alignas(kFalseSharingRange) std::atomic<uint32_t> stop;
};

constexpr uint32_t kFloorRingBytes = 256 * 1024;
constexpr std::size_t kMessageBytes = 64;

struct RingArea {
  alignas(kFalseSharingRange) std::atomic<uint32_t> stop;
  alignas(kFalseSharingRange) std::atomic<uint64_t> received;
  alignas(kFalseSharingRange) unsigned char ring[];
};

void* shared_area(std::size_t bytes) {
  void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return memory == MAP_FAILED ? nullptr : memory;
}

// Runs `partner` in a child process until it returns; the parent measures.
template <typename Partner, typename Measure>
bool with_partner(Partner partner, Measure measure) {
  const pid_t child = fork();
  if (child < 0) return false;
  if (child == 0) {
    partner();
    _exit(0);
  }
  measure();
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

double round_trip_p50_us(double seconds) {
  auto* shared = static_cast<PingPong*>(shared_area(sizeof(PingPong)));
  if (shared == nullptr) return 0;
  new (shared) PingPong{};
  std::vector<int64_t> samples;
  samples.reserve(1 << 20);
  const bool ok = with_partner(
      [&] {
        uint64_t seen = 0;
        while (shared->stop.load(std::memory_order_relaxed) == 0) {
          const uint64_t ping = shared->ping.load(std::memory_order_acquire);
          if (ping != seen) {
            seen = ping;
            shared->pong.store(ping, std::memory_order_release);
          }
        }
      },
      [&] {
        const int64_t stop = now_ns() + static_cast<int64_t>(seconds * 1e9);
        for (uint64_t round = 1; samples.size() < samples.capacity(); ++round) {
          const int64_t start = now_ns();
          if (start > stop) break;
          shared->ping.store(round, std::memory_order_release);
          while (shared->pong.load(std::memory_order_acquire) != round) {
          }
          samples.push_back(now_ns() - start);
        }
        shared->stop.store(1, std::memory_order_relaxed);
      });
  munmap(shared, sizeof(PingPong));
  if (!ok || samples.empty()) return 0;
  std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
  return static_cast<double>(samples[samples.size() / 2]) / 1e3;
}

double ring_messages_per_s(double seconds) {
  const std::size_t bytes = sizeof(RingArea) + byte_ring_footprint(kFloorRingBytes);
  auto* area = static_cast<RingArea*>(shared_area(bytes));
  if (area == nullptr) return 0;
  new (area) RingArea{};
  byte_ring_init(area->ring, kFloorRingBytes);
  double rate = 0;
  const bool ok = with_partner(
      [&] {
        ByteRing ring(area->ring);
        unsigned char message[kMessageBytes];
        uint64_t received = 0;
        while (area->stop.load(std::memory_order_relaxed) == 0) {
          if (ring.readable(kMessageBytes) < kMessageBytes) continue;
          ring.read(message, kMessageBytes);
          area->received.store(++received, std::memory_order_relaxed);
        }
      },
      [&] {
        ByteRing ring(area->ring);
        unsigned char message[kMessageBytes];
        std::memset(message, 0x5a, sizeof message);
        const int64_t start = now_ns();
        const int64_t stop = start + static_cast<int64_t>(seconds * 1e9);
        for (uint32_t sent = 0;; ++sent) {
          if ((sent & 1023) == 0 && now_ns() > stop) break;
          while (ring.writable(kMessageBytes) < kMessageBytes) {
          }
          ring.write(message, kMessageBytes);
        }
        const int64_t elapsed = now_ns() - start;
        rate = static_cast<double>(area->received.load(std::memory_order_relaxed)) /
               (static_cast<double>(elapsed) / 1e9);
        area->stop.store(1, std::memory_order_relaxed);
      });
  munmap(area, bytes);
  return ok ? rate : 0;
}

}  // namespace

HardwareFloor measure_hardware_floor(double seconds) {
  return HardwareFloor{round_trip_p50_us(seconds), ring_messages_per_s(seconds)};
}

}  // namespace netaccel::cli

// What the epoll emulation and poll/select share about the descriptors
// netaccel carries (socket_readiness itself is in runtime.h).
#pragma once

#include <stdint.h>

#include <atomic>

namespace netaccel::preload {

struct Connection;
struct Socket;

// The kernel object that wakes sleepers for this socket, or -1.
int wake_fd_of(Socket* socket);

// Announces (or withdraws) that we are about to sleep for `events` on `c`.
// Returns true when it waits for space in a full ring: such a sleep must be
// bounded (see Connection::wake_peer_if_writing).
bool arm_connection(Connection* c, uint32_t events, bool armed);

// How long a wait whose netaccel descriptors keep it busy may go without
// asking the kernel about the rest (NETACCEL_KERNEL_CHECK_US; 0 asks on
// every wait).
int64_t kernel_check_interval_ns();

// Bumped when this process did something that changes what the kernel says
// of a descriptor a wait may be watching (it closed or downgraded a pipe
// end): the next wait asks the kernel whatever the budget says, as a
// program that closed its pipe's write end expects to see the read end's
// hang-up at once.
extern std::atomic<uint32_t> g_kernel_readiness_news;
inline void note_kernel_readiness_changed() {
  g_kernel_readiness_news.fetch_add(1, std::memory_order_relaxed);
}

// When an emulated wait asks the kernel about the kernel descriptors beside
// ours. Ours are found in memory; asking the kernel is a system call, which
// on the data path would cost more than the rest of a request. So while ours
// keep the wait busy the kernel is asked at most once per interval, and at
// once again while it keeps reporting events (a level-triggered descriptor
// still ready, a busy kernel socket). A wait that sleeps asks it anyway, so
// a kernel descriptor is reported late by at most the interval, never lost.
// Shared by the threads waiting on one set; a lost update only moves a check.
class KernelCheckBudget {
 public:
  bool due(int64_t now_ns) const {
    return kernel_had_events_.load(std::memory_order_relaxed) ||
           news_seen_.load(std::memory_order_relaxed) !=
               g_kernel_readiness_news.load(std::memory_order_relaxed) ||
           now_ns - last_asked_ns_.load(std::memory_order_relaxed) >= kernel_check_interval_ns();
  }
  void asked(int64_t now_ns, bool kernel_had_events) {
    last_asked_ns_.store(now_ns, std::memory_order_relaxed);
    kernel_had_events_.store(kernel_had_events, std::memory_order_relaxed);
    news_seen_.store(g_kernel_readiness_news.load(std::memory_order_relaxed),
                     std::memory_order_relaxed);
  }
  void forget() { asked(kNever, false); }

 private:
  static constexpr int64_t kNever = INT64_MIN / 2;  // long ago: the first wait asks
  std::atomic<int64_t> last_asked_ns_{kNever};
  std::atomic<bool> kernel_had_events_{false};
  std::atomic<uint32_t> news_seen_{0};
};

}  // namespace netaccel::preload

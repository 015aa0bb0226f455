#include "worker.h"

#include <poll.h>
#include <sched.h>
#include <time.h>

#include <algorithm>
#include <cstring>

#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/stats.h"
#include "lwip/sys.h"
#include "lwip/timeouts.h"
#include "lwip_port.h"
#include "receive_checksum.h"

namespace netaccel::stack {
namespace {

constexpr unsigned kRxBatch = 64;
// Received buffers lwIP may hold at once (out-of-order segments, data a
// program has not read yet): a bound, so that a stalled program or a flood
// of out-of-order frames costs dropped frames, not memory.
constexpr std::size_t kMaxLentBuffers = 8192;
// An idle worker polls this long before it sleeps: a request/response
// exchange keeps it awake, a quiet stack costs no core. Between two idle
// polls it yields the core: on a machine with fewer cores than busy
// threads (two programs and their stacks on two cores), a pure spin holds
// the core the thread it waits for needs, and exchanges slow down fourfold.
constexpr int64_t kIdleSpinNs = 50'000;
constexpr uint32_t kPublishIntervalMs = 100;

int64_t monotonic_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

}  // namespace

// The pbuf holders of received buffers, recycled through a free list.
struct RxPbufPool {
  std::vector<RxPbuf> holders = std::vector<RxPbuf>(kMaxLentBuffers);
  std::vector<RxPbuf*> free;
  RxPbufPool() {
    free.reserve(kMaxLentBuffers);
    for (RxPbuf& holder : holders) free.push_back(&holder);
  }
};

namespace {
RxPbufPool& rx_pool() {
  static RxPbufPool pool;  // one worker, one lwIP instance per process
  return pool;
}
}  // namespace

Worker::Worker(InterfaceConfig interface, std::unique_ptr<PacketPort> port, int steering_map_fd,
               uint32_t owner, WatchLifetime watch)
    : interface_(std::move(interface)),
      port_(std::move(port)),
      netif_(std::make_unique<netif>()),
      wake_(create_wake_fd()),
      host_(steering_map_fd, owner, interface_.address, wake_.get(), std::move(watch)),
      rx_batch_(kRxBatch) {
  initialise_lwip();
  add_interface(netif_.get(), interface_, this);
}

Worker::~Worker() {
  if (partial_frame_ != nullptr) pbuf_free(partial_frame_);
  netif_remove(netif_.get());
}

void Worker::post(Command command) {
  {
    std::lock_guard lock(commands_mutex_);
    commands_.push_back(std::move(command));
  }
  commands_pending_.store(true, std::memory_order_release);
  signal_wake_fd(wake_.get());
}

void Worker::release_rx(RxPbuf* holder) {
  port_->release(holder->handle);
  rx_pool().free.push_back(holder);
}

bool Worker::receive_frames() {
  const unsigned count = port_->receive(rx_batch_.data(), kRxBatch);
  RxPbufPool& pool = rx_pool();
  for (unsigned i = 0; i < count; ++i) {
    const RxBuffer& buffer = rx_batch_[i];
    pbuf* piece = nullptr;
    if (!pool.free.empty()) {
      RxPbuf* holder = pool.free.back();
      pool.free.pop_back();
      piece = wrap_received(this, buffer, holder);
      if (piece == nullptr) pool.free.push_back(holder);
    }
    if (piece == nullptr) {
      // Out of holders: the frame is dropped, as a NIC drops without buffers.
      port_->release(buffer.handle);
      ++published_dropped_;
      if (partial_frame_ != nullptr) {
        pbuf_free(partial_frame_);
        partial_frame_ = nullptr;
      }
      continue;
    }
    if (partial_frame_ != nullptr) {
      pbuf_cat(partial_frame_, piece);
      piece = partial_frame_;
      partial_frame_ = nullptr;
    }
    if (buffer.continues) {
      partial_frame_ = piece;
      continue;
    }
    const ReceiveChecksum checksum = check_tcp_checksum(piece);
    if (checksum == ReceiveChecksum::kInvalid) {
      pbuf_free(piece);
      ++checksum_errors_;
      continue;
    }
    if (checksum == ReceiveChecksum::kPartial) ++partial_checksums_;
    if (netif_->input(piece, netif_.get()) != ERR_OK) {
      pbuf_free(piece);
      ++published_dropped_;
    }
  }
  return count != 0;
}

void Worker::take_commands() {
  if (!commands_pending_.load(std::memory_order_acquire)) return;
  std::deque<Command> taken;
  {
    std::lock_guard lock(commands_mutex_);
    taken.swap(commands_);
    commands_pending_.store(false, std::memory_order_relaxed);
  }
  for (Command& command : taken) {
    switch (command.kind) {
      case Command::kRequest:
        if (command.request.op == kStackConnect) {
          host_.connect(std::move(command.control), command.request);
        } else {
          host_.listen(std::move(command.control), command.request);
        }
        break;
      case Command::kHangup:
        host_.hangup(command.id);
        break;
      case Command::kArpFrame: {
        pbuf* frame = pbuf_alloc(PBUF_RAW, static_cast<u16_t>(command.frame.size()), PBUF_RAM);
        if (frame == nullptr) break;
        pbuf_take(frame, command.frame.data(), static_cast<u16_t>(command.frame.size()));
        if (netif_->input(frame, netif_.get()) != ERR_OK) pbuf_free(frame);
        break;
      }
    }
  }
}

bool Worker::poll_once() {
  bool worked = receive_frames();
  take_commands();
  worked |= host_.pump();
  port_->flush();
  return worked;
}

bool Worker::sleep_until_work() {
  if (!host_.announce_sleep()) return false;
  sleeping_.store(true, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (commands_pending_.load(std::memory_order_acquire)) {
    sleeping_.store(false, std::memory_order_relaxed);
    host_.withdraw_sleep();
    return false;
  }
  u32_t timeout = sys_timeouts_sleeptime();
  if (timeout == SYS_TIMEOUTS_SLEEPTIME_INFINITE || timeout > kPublishIntervalMs) {
    timeout = kPublishIntervalMs;
  }
  pollfd fds[2] = {{wake_.get(), POLLIN, 0}, {port_->wait_fd(), POLLIN, 0}};
  const nfds_t count = port_->wait_fd() >= 0 ? 2 : 1;
  // A port that can only be polled is polled every millisecond.
  const int wait_ms = count == 2 ? static_cast<int>(timeout) : std::min<int>(1, timeout);
  ++wakeups_;
  poll(fds, count, wait_ms);
  drain_wake_fd(wake_.get());
  sleeping_.store(false, std::memory_order_relaxed);
  host_.withdraw_sleep();
  return true;
}

void Worker::run(const std::atomic<bool>& stop) {
  int64_t idle_since = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    const bool worked = poll_once();
    sys_check_timeouts();
    const uint32_t now_ms = sys_now();
    if (now_ms - last_publish_ms_ >= kPublishIntervalMs) {
      publish_counters();
      last_publish_ms_ = now_ms;
    }
    if (worked) {
      idle_since = 0;
      continue;
    }
    sched_yield();
    const int64_t now = monotonic_ns();
    if (idle_since == 0) {
      idle_since = now;
    } else if (now - idle_since >= kIdleSpinNs) {
      sleep_until_work();
      idle_since = 0;
    }
  }
  publish_counters();
}

void Worker::publish_counters() {
  StackCounters counters;
  counters.port = port_->counters();
  counters.connections_opened = host_.opened();
  counters.connections_active = host_.active();
  counters.listeners = host_.listeners();
  counters.rx_frames_dropped = published_dropped_ + lwip_stats.link.drop;
  counters.checksum_errors = checksum_errors_ + lwip_stats.ip.chkerr + lwip_stats.tcp.chkerr;
  counters.partial_checksums = partial_checksums_;
  counters.tcp_retransmissions = lwip_stats.mib2.tcpretranssegs;
  counters.lwip_memory_errors = lwip_stats.tcp.memerr + lwip_stats.ip.memerr +
                                lwip_stats.link.memerr + lwip_stats.etharp.memerr;
  for (const stats_mem* pool : lwip_stats.memp) {
    if (pool != nullptr) counters.lwip_memory_errors += pool->err;
  }
  counters.tcp_dropped = lwip_stats.tcp.drop;
  counters.wakeups = wakeups_;
  std::lock_guard lock(counters_mutex_);
  published_ = counters;
}

StackCounters Worker::counters() const {
  std::lock_guard lock(counters_mutex_);
  return published_;
}

}  // namespace netaccel::stack

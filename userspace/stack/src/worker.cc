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
// program has not read yet), for all lanes: a bound, so that a stalled
// program or a flood of out-of-order frames costs dropped frames, not memory.
constexpr std::size_t kMaxLentBuffers = 8192;
// An idle worker polls this long before it sleeps: a request/response
// exchange keeps it awake, a quiet stack costs no core. Between two idle
// polls it yields the core: on a machine with fewer cores than busy
// threads (two programs and their stacks on two cores), a pure spin holds
// the core the thread it waits for needs, and exchanges slow down fourfold.
constexpr int64_t kIdleSpinNs = 50'000;
// The first microseconds of it spin without a system call: the next frame
// of an exchange usually comes that soon, and sched_yield is a system call.
constexpr int64_t kPureSpinNs = 5'000;
constexpr uint32_t kPublishIntervalMs = 100;
// Ports that can only be polled (DPDK) are polled this often while asleep.
constexpr int kPollOnlyIntervalMs = 1;

int64_t monotonic_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

// The pbuf holders of received buffers, recycled through a free list: one
// worker, one lwIP instance per process.
struct RxPbufPool {
  std::vector<RxPbuf> holders = std::vector<RxPbuf>(kMaxLentBuffers);
  std::vector<RxPbuf*> free;
  RxPbufPool() {
    free.reserve(kMaxLentBuffers);
    for (RxPbuf& holder : holders) free.push_back(&holder);
  }
};

RxPbufPool& rx_pool() {
  static RxPbufPool pool;
  return pool;
}

}  // namespace

Lane::Lane(std::string container_name, InterfaceConfig config, std::unique_ptr<PacketPort> packets)
    : container(std::move(container_name)),
      interface(std::move(config)),
      port(std::move(packets)),
      lwip_netif(std::make_unique<netif>()) {}

Worker::Worker(WatchLifetime watch)
    : watch_(std::move(watch)), wake_(create_wake_fd()), rx_batch_(kRxBatch) {
  initialise_lwip();
}

Worker::~Worker() {
  for (auto& lane : lanes_) {
    lane->host.reset();  // closes its pcbs while the netif still exists
    if (lane->partial_frame != nullptr) pbuf_free(lane->partial_frame);
    netif_remove(lane->lwip_netif.get());
  }
}

unsigned Worker::add_lane(std::string container, InterfaceConfig interface,
                          std::unique_ptr<PacketPort> port, PortTable ports) {
  const auto index = static_cast<unsigned>(lanes_.size());
  auto lane = std::make_unique<Lane>(std::move(container), std::move(interface), std::move(port));
  add_interface(lane->lwip_netif.get(), lane->interface, lane.get());
  lane->host = std::make_unique<ConnectionHost>(
      std::move(ports), lane->lwip_netif.get(), lane->interface.address, wake_.get(),
      [this, index](int fd, uint64_t id) { watch_(index, fd, id); });
  lanes_.push_back(std::move(lane));
  published_.resize(lanes_.size());
  return index;
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
  holder->port->release(holder->handle);
  rx_pool().free.push_back(holder);
}

bool Worker::receive_frames(Lane& lane) {
  PacketPort& port = *lane.port;
  const unsigned count = port.receive(rx_batch_.data(), kRxBatch);
  RxPbufPool& pool = rx_pool();
  for (unsigned i = 0; i < count; ++i) {
    const RxBuffer& buffer = rx_batch_[i];
    pbuf* piece = nullptr;
    if (!pool.free.empty()) {
      RxPbuf* holder = pool.free.back();
      pool.free.pop_back();
      piece = wrap_received(this, &port, buffer, holder);
      if (piece == nullptr) pool.free.push_back(holder);
    }
    if (piece == nullptr) {
      // Out of holders: the frame is dropped, as a NIC drops without buffers.
      port.release(buffer.handle);
      ++lane.dropped_frames;
      if (lane.partial_frame != nullptr) {
        pbuf_free(lane.partial_frame);
        lane.partial_frame = nullptr;
      }
      continue;
    }
    if (lane.partial_frame != nullptr) {
      pbuf_cat(lane.partial_frame, piece);
      piece = lane.partial_frame;
      lane.partial_frame = nullptr;
    }
    if (buffer.continues) {
      lane.partial_frame = piece;
      continue;
    }
    const ReceiveChecksum checksum = check_tcp_checksum(piece);
    if (checksum == ReceiveChecksum::kInvalid) {
      pbuf_free(piece);
      ++lane.checksum_errors;
      continue;
    }
    if (checksum == ReceiveChecksum::kPartial) ++lane.partial_checksums;
    if (lane.lwip_netif->input(piece, lane.lwip_netif.get()) != ERR_OK) {
      pbuf_free(piece);
      ++lane.dropped_frames;
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
    if (command.lane >= lanes_.size()) continue;
    Lane& lane = *lanes_[command.lane];
    switch (command.kind) {
      case Command::kRequest:
        if (command.request.op == kStackConnect) {
          lane.host->connect(std::move(command.control), command.request);
        } else {
          lane.host->listen(std::move(command.control), command.request);
        }
        break;
      case Command::kHangup:
        lane.host->hangup(command.id);
        break;
      case Command::kArpFrame: {
        pbuf* frame = pbuf_alloc(PBUF_RAW, static_cast<u16_t>(command.frame.size()), PBUF_RAM);
        if (frame == nullptr) break;
        pbuf_take(frame, command.frame.data(), static_cast<u16_t>(command.frame.size()));
        if (lane.lwip_netif->input(frame, lane.lwip_netif.get()) != ERR_OK) pbuf_free(frame);
        break;
      }
    }
  }
}

bool Worker::poll_once() {
  bool worked = false;
  for (auto& lane : lanes_) worked |= receive_frames(*lane);
  take_commands();
  for (auto& lane : lanes_) {
    worked |= lane->host->pump();
    lane->port->flush();
  }
  return worked;
}

bool Worker::sleep_until_work() {
  std::size_t announced = 0;
  for (; announced < lanes_.size(); ++announced) {
    if (!lanes_[announced]->host->announce_sleep()) break;
  }
  const auto withdraw = [&] {
    for (std::size_t i = 0; i < announced; ++i) lanes_[i]->host->withdraw_sleep();
  };
  if (announced < lanes_.size() || commands_pending_.load(std::memory_order_acquire)) {
    withdraw();
    return false;
  }
  u32_t timeout = sys_timeouts_sleeptime();
  if (timeout == SYS_TIMEOUTS_SLEEPTIME_INFINITE || timeout > kPublishIntervalMs) {
    timeout = kPublishIntervalMs;
  }
  std::vector<pollfd> fds{{wake_.get(), POLLIN, 0}};
  bool poll_only = false;
  for (auto& lane : lanes_) {
    if (lane->port->wait_fd() >= 0) {
      fds.push_back({lane->port->wait_fd(), POLLIN, 0});
    } else {
      poll_only = true;
    }
  }
  const int wait_ms = poll_only ? std::min<int>(kPollOnlyIntervalMs, static_cast<int>(timeout))
                                : static_cast<int>(timeout);
  ++sleeps_;
  poll(fds.data(), fds.size(), wait_ms);
  drain_wake_fd(wake_.get());
  withdraw();
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
    const int64_t now = monotonic_ns();
    if (idle_since == 0) {
      idle_since = now;
    } else if (now - idle_since < kPureSpinNs) {
      __builtin_ia32_pause();
    } else if (now - idle_since < kIdleSpinNs) {
      sched_yield();
    } else {
      sleep_until_work();
      idle_since = 0;
    }
  }
  publish_counters();
}

void Worker::publish_counters() {
  uint64_t memory_errors = lwip_stats.tcp.memerr + lwip_stats.ip.memerr + lwip_stats.link.memerr +
                           lwip_stats.etharp.memerr;
  for (const stats_mem* pool : lwip_stats.memp) {
    if (pool != nullptr) memory_errors += pool->err;
  }
  std::vector<StackCounters> all(lanes_.size());
  for (std::size_t i = 0; i < lanes_.size(); ++i) {
    const Lane& lane = *lanes_[i];
    StackCounters& counters = all[i];
    counters.port = lane.port->counters();
    counters.connections_opened = lane.host->opened();
    counters.connections_active = lane.host->active();
    counters.listeners = lane.host->listeners();
    // lwIP's IP input drops what it refuses (a total length past the frame,
    // a fragment, another destination) with ERR_OK: only ip.drop tells, and
    // it counts the IP checksum drops too, which are checksum_errors.
    counters.rx_frames_dropped =
        lane.dropped_frames + lwip_stats.ip.drop - lwip_stats.ip.chkerr + lwip_stats.link.drop;
    counters.checksum_errors = lane.checksum_errors + lwip_stats.ip.chkerr;
    counters.partial_checksums = lane.partial_checksums;
    counters.tcp_retransmissions = lwip_stats.mib2.tcpretranssegs;
    counters.lwip_memory_errors = memory_errors;
    counters.tcp_dropped = lwip_stats.tcp.drop;
    counters.worker_sleeps = sleeps_;
  }
  std::lock_guard lock(counters_mutex_);
  published_ = std::move(all);
}

StackCounters Worker::counters(unsigned lane) const {
  std::lock_guard lock(counters_mutex_);
  return lane < published_.size() ? published_[lane] : StackCounters{};
}

}  // namespace netaccel::stack

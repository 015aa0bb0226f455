// AF_XDP through libxdp: a UMEM of fixed-size frames shared by receive and
// transmit, the four rings, need_wakeup so that system calls happen only
// when the kernel asks for them, zero-copy where the driver offers it.
#include "af_xdp_port.h"

#include <linux/if_xdp.h>
#include <net/if.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <xdp/xsk.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace netaccel::stack {
namespace {

// Kernel 6.6 and later; the headers Debian 12 ships predate them.
#ifndef XDP_USE_SG
#define XDP_USE_SG (1 << 4)
#endif
#ifndef XDP_PKT_CONTD
#define XDP_PKT_CONTD (1 << 0)
#endif

constexpr uint32_t kFrameSize = XSK_UMEM__DEFAULT_FRAME_SIZE;  // 4096: one page per frame
constexpr uint32_t kFrameCount = 16384;                        // 64 MiB of UMEM
constexpr uint32_t kRingSize = 4096;
// Frames kept back from the fill ring for transmission.
constexpr uint32_t kTxReserve = 4096;
constexpr uint32_t kFillBatch = 64;

std::string errno_text(int error) {
  return std::strerror(error);
}

class AfXdpPort final : public PacketPort {
 public:
  explicit AfXdpPort(const AfXdpPortConfig& config) : config_(config) {
    const std::size_t bytes = std::size_t{kFrameSize} * kFrameCount;
    // Huge pages when there are some (fewer TLB misses); plain pages otherwise.
    area_ = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB,
                 -1, 0);
    if (area_ == MAP_FAILED) {
      area_ = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (area_ == MAP_FAILED)
      throw std::runtime_error("cannot map the AF_XDP packet buffers: " + errno_text(errno));
    area_bytes_ = bytes;
    const xsk_umem_config umem_config{kRingSize, kRingSize, kFrameSize, 0, 0};
    int error = xsk_umem__create(&umem_, area_, bytes, &fill_, &completion_, &umem_config);
    if (error != 0) {
      release_all();
      throw std::runtime_error("cannot register the AF_XDP packet buffers (UMEM): " +
                               errno_text(-error));
    }
    free_frames_.reserve(kFrameCount);
    for (uint32_t i = 0; i < kFrameCount; ++i) free_frames_.push_back(uint64_t{i} * kFrameSize);

    // Zero-copy first, then copy mode (veth and drivers without XSK support);
    // multi-buffer frames (a veth peer's GSO) where the kernel has them.
    const uint16_t modes[] = {XDP_ZEROCOPY, XDP_COPY};
    for (const uint16_t mode : modes) {
      if (config.force_copy && mode == XDP_ZEROCOPY) continue;
      for (const uint16_t scatter : {uint16_t{XDP_USE_SG}, uint16_t{0}}) {
        xsk_socket_config socket_config{};
        socket_config.rx_size = kRingSize;
        socket_config.tx_size = kRingSize;
        // Never let libxdp load its own redirect program: it would take
        // every packet of the queue from the kernel (our classifier steers).
        socket_config.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD;
        socket_config.bind_flags = static_cast<uint16_t>(XDP_USE_NEED_WAKEUP | mode | scatter);
        error = xsk_socket__create(&socket_, config.interface.c_str(), config.queue, umem_, &rx_,
                                   &tx_, &socket_config);
        if (error == 0) {
          zero_copy_ = mode == XDP_ZEROCOPY;
          scatter_gather_ = scatter != 0;
          break;
        }
      }
      if (socket_) break;
    }
    if (!socket_) {
      release_all();
      throw std::runtime_error("cannot create an AF_XDP socket on " + config.interface + " queue " +
                               std::to_string(config.queue) + ": " + errno_text(-error));
    }
    error = xsk_socket__update_xskmap(socket_, config.xsk_map_fd);
    if (error != 0) {
      release_all();
      throw std::runtime_error(
          "cannot enter the AF_XDP socket in the container's xsk_sockets map: " +
          errno_text(-error));
    }
    refill(kRingSize);
  }

  ~AfXdpPort() override { release_all(); }

  unsigned receive(RxBuffer* buffers, unsigned max) override {
    refill(kFillBatch);
    uint32_t index = 0;
    const unsigned ready = xsk_ring_cons__peek(&rx_, max, &index);
    if (ready == 0) {
      // The kernel stopped for want of fill descriptors: say there are some.
      if (xsk_ring_prod__needs_wakeup(&fill_)) {
        ++counters_.rx_wakeups;
        recvfrom(xsk_socket__fd(socket_), nullptr, 0, MSG_DONTWAIT, nullptr, nullptr);
      }
      return 0;
    }
    unsigned given = 0;
    for (unsigned i = 0; i < ready; ++i) {
      const xdp_desc* descriptor = xsk_ring_cons__rx_desc(&rx_, index + i);
      const uint64_t address = descriptor->addr;
      const uint64_t frame = address - address % kFrameSize;
      if (address + descriptor->len > area_bytes_ ||
          address % kFrameSize + descriptor->len > kFrameSize) {
        ++counters_.rx_invalid;
        continue;  // not ours to give back: it points at no frame
      }
      RxBuffer& buffer = buffers[given++];
      buffer.data = static_cast<unsigned char*>(xsk_umem__get_data(area_, address));
      buffer.length = descriptor->len;
      buffer.continues = (descriptor->options & XDP_PKT_CONTD) != 0;
      buffer.handle = frame;
      if (!buffer.continues) ++counters_.rx_packets;
      counters_.rx_bytes += descriptor->len;
    }
    // Release pairs with the kernel's acquire: it may reuse the slots.
    xsk_ring_cons__release(&rx_, ready);
    return given;
  }

  void release(uint64_t handle) override { free_frames_.push_back(handle); }

  unsigned char* claim_tx() override {
    if (claimed_) return claimed_data_;
    reclaim_completed();
    if (free_frames_.empty() || xsk_prod_nb_free(&tx_, 1) == 0) {
      flush();
      reclaim_completed();
      if (free_frames_.empty() || xsk_prod_nb_free(&tx_, 1) == 0) {
        ++counters_.tx_ring_full;
        return nullptr;
      }
    }
    claimed_frame_ = free_frames_.back();
    free_frames_.pop_back();
    claimed_ = true;
    claimed_data_ = static_cast<unsigned char*>(xsk_umem__get_data(area_, claimed_frame_));
    return claimed_data_;
  }

  void commit_tx(uint32_t length) override {
    if (!claimed_) return;
    claimed_ = false;
    uint32_t index = 0;
    if (xsk_ring_prod__reserve(&tx_, 1, &index) != 1) {  // claim_tx checked for room
      free_frames_.push_back(claimed_frame_);
      ++counters_.tx_ring_full;
      return;
    }
    xdp_desc* descriptor = xsk_ring_prod__tx_desc(&tx_, index);
    descriptor->addr = claimed_frame_;
    descriptor->len = length;
    descriptor->options = 0;
    ++queued_tx_;
    ++counters_.tx_packets;
    counters_.tx_bytes += length;
  }

  void flush() override {
    if (queued_tx_ != 0) {
      // Release publishes the descriptors before the kernel sees the new producer index.
      xsk_ring_prod__submit(&tx_, queued_tx_);
      queued_tx_ = 0;
      in_flight_ = true;
    }
    // Copy mode sends only inside a system call; zero-copy drivers ask for
    // one only when they went idle.
    if (in_flight_ && xsk_ring_prod__needs_wakeup(&tx_)) {
      ++counters_.tx_kicks;
      const ssize_t sent = sendto(xsk_socket__fd(socket_), nullptr, 0, MSG_DONTWAIT, nullptr, 0);
      if (sent >= 0 || (errno != EAGAIN && errno != EBUSY && errno != ENOBUFS)) in_flight_ = false;
    }
    reclaim_completed();
  }

  uint32_t frame_capacity() const override { return kFrameSize; }
  int wait_fd() const override { return xsk_socket__fd(socket_); }

  const PortCounters& counters() const override {
    xdp_statistics statistics{};
    socklen_t length = sizeof statistics;
    if (getsockopt(xsk_socket__fd(socket_), SOL_XDP, XDP_STATISTICS, &statistics, &length) == 0) {
      counters_.rx_fill_empty = statistics.rx_fill_ring_empty_descs;
      counters_.rx_ring_full = statistics.rx_ring_full;
    }
    return counters_;
  }

  std::string describe() const override {
    return "af_xdp " + config_.interface + " queue " + std::to_string(config_.queue) +
           (zero_copy_ ? " zero-copy" : " copy mode") + (scatter_gather_ ? ", multi-buffer" : "");
  }

 private:
  // Gives free frames to the kernel for receiving, keeping kTxReserve back.
  void refill(uint32_t wanted) {
    if (free_frames_.size() <= kTxReserve) return;
    uint32_t count =
        std::min<uint32_t>(wanted, static_cast<uint32_t>(free_frames_.size() - kTxReserve));
    count = xsk_prod_nb_free(&fill_, count) >= count ? count : xsk_prod_nb_free(&fill_, count);
    if (count == 0) return;
    uint32_t index = 0;
    if (xsk_ring_prod__reserve(&fill_, count, &index) != count) return;
    for (uint32_t i = 0; i < count; ++i) {
      *xsk_ring_prod__fill_addr(&fill_, index + i) = free_frames_.back();
      free_frames_.pop_back();
    }
    xsk_ring_prod__submit(&fill_, count);
  }

  void reclaim_completed() {
    uint32_t index = 0;
    const uint32_t done = xsk_ring_cons__peek(&completion_, kRingSize, &index);
    if (done == 0) return;
    for (uint32_t i = 0; i < done; ++i) {
      const uint64_t address = *xsk_ring_cons__comp_addr(&completion_, index + i);
      free_frames_.push_back(address - address % kFrameSize);
    }
    xsk_ring_cons__release(&completion_, done);
  }

  void release_all() {
    if (socket_) xsk_socket__delete(socket_);
    socket_ = nullptr;
    if (umem_) xsk_umem__delete(umem_);
    umem_ = nullptr;
    if (area_ != nullptr && area_ != MAP_FAILED) munmap(area_, area_bytes_);
    area_ = nullptr;
  }

  AfXdpPortConfig config_;
  void* area_ = nullptr;
  std::size_t area_bytes_ = 0;
  xsk_umem* umem_ = nullptr;
  xsk_socket* socket_ = nullptr;
  xsk_ring_prod fill_{};
  xsk_ring_cons completion_{};
  xsk_ring_cons rx_{};
  xsk_ring_prod tx_{};
  std::vector<uint64_t> free_frames_;
  bool claimed_ = false;
  uint64_t claimed_frame_ = 0;
  unsigned char* claimed_data_ = nullptr;
  uint32_t queued_tx_ = 0;
  bool in_flight_ = false;
  bool zero_copy_ = false;
  bool scatter_gather_ = false;
  mutable PortCounters counters_;
};

}  // namespace

std::unique_ptr<PacketPort> open_af_xdp_port(const AfXdpPortConfig& config) {
  return std::make_unique<AfXdpPort>(config);
}

}  // namespace netaccel::stack

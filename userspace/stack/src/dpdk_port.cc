// The DPDK backend of PacketPort over DPDK 22.11's net_af_xdp driver.
//
// Why the driver is held back
// ---------------------------
// netaccel's classifier (bpf/xdp_classifier.bpf.c) is the interface's XDP
// program: it redirects the stack's flows to xsk_sockets[rx queue] and
// passes everything else to the kernel. Left to itself, the af_xdp driver
// of 22.11 (drivers/net/af_xdp/rte_eth_af_xdp.c) breaks that three ways:
//
//  - Queue setup calls libxdp's xsk_socket__create() without
//    XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD unless the `xdp_prog=` devarg names
//    a program for the driver to load and attach itself. libxdp then looks
//    on the interface for a program named "xsk_def_prog" with a map named
//    "xsks_map" and, finding none, loads its own, which redirects every
//    packet of the queue it sees to the socket: into libxdp's dispatcher
//    where the kernel allows the dispatcher, at priority 20, chained on
//    XDP_PASS, so it takes everything that ours (priority 15) passes on to
//    the kernel. Where ours is attached alone (by a BPF link, or by
//    libxdp's fallback through netlink when the kernel refuses the
//    dispatcher's freplace programs, as here), libxdp cannot add it, says
//    "Existing program is not using a dispatcher", and queue setup fails.
//    `xdp_prog=` is no way out: the driver attaches that program with
//    XDP_FLAGS_UPDATE_IF_NOEXIST, which fails while ours is attached.
//    22.11 has no devarg that only inhibits the load; later releases have
//    `use_cni` and `use_pinned_map`.
//  - Closing the device calls bpf_xdp_detach() on the interface's ifindex,
//    unconditionally: that detaches whatever was attached through netlink
//    (libxdp's dispatcher, or our classifier alone), only a BPF link
//    refuses. The ifindex is resolved in the closing thread's namespace, so
//    it may even hit another namespace's interface.
//  - Closing the device deletes the socket but not the UMEM the driver made
//    for it (its test `__atomic_sub_fetch(&refcnt, 1) - 1 == 0` holds only
//    for a shared UMEM). The first socket of a UMEM is the UMEM's own
//    descriptor, so the socket stays open: bound to the queue (no socket can
//    bind there again), still in the XSK map (steered frames vanish into
//    it), and free to write into buffers of the freed pool.
//
// What this file does about it
// ----------------------------
// It defines xsk_socket__create and bpf_xdp_detach itself, exported from
// the executable (dpdk.cmake adds the link options). The driver is a
// plugin whose calls go through its PLT, and the dynamic linker resolves
// them to the executable's definitions first. Those forward to libxdp and
// libbpf (dlsym RTLD_NEXT) unchanged, except while this thread is inside
// one of the port's own calls into the driver (a PmdCallScope): then
// xsk_socket__create adds INHIBIT_PROG_LOAD and records the socket and its
// UMEM, and bpf_xdp_detach detaches nothing. The port puts the socket into
// the container's xsk_sockets map itself once the device has started, and
// after closing the device deletes the UMEM if the driver left it (checked:
// its descriptor is still the same socket). Closing the socket takes it
// out of the map (the kernel does that when an AF_XDP socket is released),
// so the port never deletes an entry that may meanwhile be another
// socket's. Before calling into the driver, open checks that the driver's
// calls really reach these definitions (dlsym RTLD_DEFAULT), and after
// queue setup that the socket came through the hook; otherwise it fails
// and removes the device.
#include "dpdk_port.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dlfcn.h>
#include <linux/bpf.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <pthread.h>
#include <rte_bus_vdev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xdp/xsk.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace netaccel::stack {
namespace {

// What the hooks below do for the thread that set it: only our own calls
// into the driver are changed.
struct PmdCallScope {
  xsk_socket* socket = nullptr;  // made by the driver, inhibited
  xsk_umem* umem = nullptr;      // the socket's
  unsigned sockets_made = 0;
  uint32_t socket_queue = 0;
  char socket_interface[IF_NAMESIZE] = {};
  int socket_error = 0;  // what libxdp returned, which the driver does not pass on
};

thread_local PmdCallScope* current_pmd_call = nullptr;

// Sets current_pmd_call for the lifetime of the object.
class PmdCallGuard {
 public:
  explicit PmdCallGuard(PmdCallScope& scope) : previous_(current_pmd_call) {
    current_pmd_call = &scope;
  }
  ~PmdCallGuard() { current_pmd_call = previous_; }
  PmdCallGuard(const PmdCallGuard&) = delete;
  PmdCallGuard& operator=(const PmdCallGuard&) = delete;

 private:
  PmdCallScope* previous_;
};

// The next definition after ours (libxdp's, libbpf's), looked up once.
template <typename Function>
Function* next_definition(const char* name) noexcept {
  return reinterpret_cast<Function*>(dlsym(RTLD_NEXT, name));
}

}  // namespace
}  // namespace netaccel::stack

// C entry points called by the driver (and by anything else in the process):
// nothing in them throws (their declarations in xsk.h and libbpf.h carry no
// noexcept to add).
extern "C" __attribute__((visibility("default"))) int xsk_socket__create(
    xsk_socket** xsk, const char* ifname, __u32 queue_id, xsk_umem* umem, xsk_ring_cons* rx,
    xsk_ring_prod* tx, const xsk_socket_config* config) {
  using Create = int(xsk_socket**, const char*, __u32, xsk_umem*, xsk_ring_cons*, xsk_ring_prod*,
                     const xsk_socket_config*);
  static Create* const libxdp_create =
      netaccel::stack::next_definition<Create>("xsk_socket__create");
  if (libxdp_create == nullptr) return -ENOSYS;
  netaccel::stack::PmdCallScope* scope = netaccel::stack::current_pmd_call;
  if (scope == nullptr) return libxdp_create(xsk, ifname, queue_id, umem, rx, tx, config);

  xsk_socket_config inhibited{};
  if (config != nullptr) {
    inhibited = *config;
  } else {  // libxdp's defaults, which a null config stands for
    inhibited.rx_size = XSK_RING_CONS__DEFAULT_NUM_DESCS;
    inhibited.tx_size = XSK_RING_PROD__DEFAULT_NUM_DESCS;
  }
  inhibited.libxdp_flags |= XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD;
  // The kernel frees a closed socket's hold on its queue in deferred work:
  // a port reopened right after one closed finds the queue busy for a few
  // milliseconds. Retried here, since each failed queue setup costs the
  // driver the buffers it had put in the fill ring.
  int result = libxdp_create(xsk, ifname, queue_id, umem, rx, tx, &inhibited);
  for (int retry = 0; result == -EBUSY && retry < 200; ++retry) {
    usleep(10'000);
    result = libxdp_create(xsk, ifname, queue_id, umem, rx, tx, &inhibited);
  }
  scope->socket_error = result;
  if (result == 0) {
    ++scope->sockets_made;
    scope->socket = *xsk;
    scope->umem = umem;
    scope->socket_queue = queue_id;
    std::snprintf(scope->socket_interface, sizeof scope->socket_interface, "%s",
                  ifname != nullptr ? ifname : "");
  }
  return result;
}

extern "C" __attribute__((visibility("default"))) int bpf_xdp_detach(
    int ifindex, __u32 flags, const bpf_xdp_attach_opts* opts) {
  using Detach = int(int, __u32, const bpf_xdp_attach_opts*);
  static Detach* const libbpf_detach = netaccel::stack::next_definition<Detach>("bpf_xdp_detach");
  if (libbpf_detach == nullptr) return -ENOSYS;
  if (netaccel::stack::current_pmd_call == nullptr) return libbpf_detach(ifindex, flags, opts);
  // The driver closing its device: the program on the interface is not its
  // own. Success, so that it logs no error.
  return 0;
}

namespace netaccel::stack {
namespace {

constexpr uint16_t kRxBurst = 32;
constexpr unsigned kTxBatch = 64;
constexpr unsigned kMempoolCache = 256;
// The driver puts this many buffers into the fill ring when it sets the
// queue up, whatever the ring size (ETH_AF_XDP_DFLT_NUM_DESCS in 22.11).
constexpr unsigned kDriverFillBuffers = 2048;
// --no-huge gives DPDK one anonymous region of this size, reserved up front.
constexpr unsigned kNoHugeMemoryMegabytes = 512;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what);
}

std::string dpdk_error(int error) {
  return rte_strerror(error < 0 ? -error : error);
}

// The hooks must be what the driver's calls resolve to, or the driver would
// load libxdp's program: a definition later in the lookup order (a shared
// library loaded after libxdp, or a link without our export options) is not.
void require_driver_calls_hooked() {
  const std::pair<const char*, void*> hooks[] = {
      {"xsk_socket__create", reinterpret_cast<void*>(&::xsk_socket__create)},
      {"bpf_xdp_detach", reinterpret_cast<void*>(&::bpf_xdp_detach)},
  };
  for (const auto& [name, ours] : hooks) {
    if (dlsym(RTLD_DEFAULT, name) != ours) {
      fail(std::string("netaccel's ") + name +
           " is not what DPDK's af_xdp driver would call (link the executable with "
           "netaccel_stack_dpdk's options, which export it): refusing to let the driver manage "
           "XDP programs");
    }
  }
}

struct EalState {
  std::mutex mutex;
  bool initialised = false;
  bool hugepages = false;
  // rte_eal_init keeps pointers into its arguments.
  std::vector<std::string> arguments;
  std::vector<char*> argv;
};

EalState& eal_state() {
  static EalState state;
  return state;
}

// Serialises opening and closing ports: device names, the driver's own
// lists, and one PmdCallScope at a time per device.
// Recursive: a port that fails half-way is removed by AfXdpDevice's
// destructor while open_dpdk_port holds it.
std::recursive_mutex& port_lifecycle_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

struct MempoolDeleter {
  void operator()(rte_mempool* pool) const { rte_mempool_free(pool); }
};
using Mempool = std::unique_ptr<rte_mempool, MempoolDeleter>;

// Which socket a descriptor is: after the driver's close, the same number
// may be another file.
struct SocketIdentity {
  dev_t device = 0;
  ino_t inode = 0;
  bool operator==(const SocketIdentity&) const = default;
};

std::optional<SocketIdentity> identify(int fd) {
  struct stat status;
  if (fd < 0 || fstat(fd, &status) != 0 || !S_ISSOCK(status.st_mode)) return std::nullopt;
  return SocketIdentity{status.st_dev, status.st_ino};
}

// The ethdev of one net_af_xdp vdev: stopped and removed when destroyed,
// which must close the AF_XDP socket (the kernel then takes it out of the
// XSK map).
class AfXdpDevice {
 public:
  AfXdpDevice(std::string name, uint16_t port_id) : name_(std::move(name)), port_id_(port_id) {}
  ~AfXdpDevice() {
    std::lock_guard lock(port_lifecycle_mutex());
    PmdCallScope scope;
    PmdCallGuard guard(scope);
    rte_eth_dev_stop(port_id_);
    rte_vdev_uninit(name_.c_str());
    // 22.11 leaves the UMEM, and with it the socket (see the top of this
    // file): deleted here when the descriptor is still that socket, i.e.
    // when the driver did not do it.
    if (umem_ != nullptr && socket_ && identify(socket_fd_) == socket_) xsk_umem__delete(umem_);
  }
  AfXdpDevice(const AfXdpDevice&) = delete;
  AfXdpDevice& operator=(const AfXdpDevice&) = delete;

  // The socket the driver made for the queue, as the hook saw it.
  void adopt_socket(int fd, xsk_umem* umem) {
    socket_fd_ = fd;
    socket_ = identify(fd);
    umem_ = umem;
  }

  uint16_t port_id() const { return port_id_; }
  int socket_fd() const { return socket_fd_; }

 private:
  std::string name_;
  uint16_t port_id_;
  int socket_fd_ = -1;
  std::optional<SocketIdentity> socket_;
  xsk_umem* umem_ = nullptr;
};

bool interface_is_promiscuous(const std::string& interface) {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ifreq request{};
  std::snprintf(request.ifr_name, sizeof request.ifr_name, "%s", interface.c_str());
  const bool promiscuous =
      ioctl(fd, SIOCGIFFLAGS, &request) == 0 && (request.ifr_flags & IFF_PROMISC);
  close(fd);
  return promiscuous;
}

void check_xsk_map(int map_fd, uint32_t queue) {
  bpf_map_info info{};
  uint32_t length = sizeof info;
  if (map_fd < 0 || bpf_obj_get_info_by_fd(map_fd, &info, &length) != 0) {
    fail("the XSK map descriptor " + std::to_string(map_fd) + " is not a BPF map");
  }
  if (info.type != BPF_MAP_TYPE_XSKMAP || info.key_size != 4 || info.value_size != 4) {
    fail(std::string("BPF map ") + info.name + " is not an XSK map keyed by queue");
  }
  if (queue >= info.max_entries) {
    fail("queue " + std::to_string(queue) + " is beyond the XSK map's " +
         std::to_string(info.max_entries) + " entries");
  }
}

class DpdkPort final : public PacketPort {
 public:
  DpdkPort(const DpdkPortConfig& config, Mempool pool, std::unique_ptr<AfXdpDevice> device,
           int socket_fd, bool zero_copy)
      : interface_(config.interface),
        queue_(config.queue),
        hugepages_(config.hugepages),
        pool_(std::move(pool)),
        device_(std::move(device)),
        port_id_(device_->port_id()),
        socket_fd_(socket_fd),
        zero_copy_(zero_copy),
        frame_capacity_(rte_pktmbuf_data_room_size(pool_.get()) - RTE_PKTMBUF_HEADROOM) {}

  ~DpdkPort() override {
    for (unsigned i = rx_next_; i < rx_count_; ++i) rte_pktmbuf_free(rx_stash_[i]);
    for (unsigned i = 0; i < tx_count_; ++i) rte_pktmbuf_free(tx_pending_[i]);
    rte_pktmbuf_free(claimed_);
    device_.reset();
    if (lent_ != 0) {
      // Freeing the pool would let a late release() write into freed memory.
      std::fprintf(stderr,
                   "netaccel: DPDK port %s queue %u destroyed with %lu received buffers not "
                   "released: its buffer pool is leaked\n",
                   interface_.c_str(), queue_, static_cast<unsigned long>(lent_));
      static_cast<void>(pool_.release());
    }
  }

  unsigned receive(RxBuffer* buffers, unsigned max) override {
    unsigned filled = 0;
    bool polled = false;
    while (filled < max) {
      if (rx_next_ == rx_count_) {
        // Poll again only while the device fills whole bursts: an empty
        // poll can cost the driver a system call.
        if (polled && rx_count_ < kRxBurst) break;
        polled = true;
        rx_next_ = 0;
        rx_count_ = rte_eth_rx_burst(port_id_, 0, rx_stash_.data(), kRxBurst);
        if (rx_count_ == 0) break;
        for (unsigned i = 0; i < rx_count_; ++i) {
          ++counters_.rx_packets;
          counters_.rx_bytes += rte_pktmbuf_pkt_len(rx_stash_[i]);
        }
      }
      // One RxBuffer per segment, each released on its own; the chain is
      // followed before the segment is lent, since freeing it unlinks it.
      rte_mbuf* segment = rx_stash_[rx_next_];
      rte_mbuf* next = segment->next;
      buffers[filled++] =
          RxBuffer{rte_pktmbuf_mtod(segment, unsigned char*), rte_pktmbuf_data_len(segment),
                   next != nullptr, reinterpret_cast<uint64_t>(segment)};
      ++lent_;
      if (next != nullptr) {
        rx_stash_[rx_next_] = next;  // a frame may continue in the next call
      } else {
        ++rx_next_;
      }
    }
    return filled;
  }

  void release(uint64_t handle) override {
    // One segment: rte_pktmbuf_free() would free the rest of a chain, whose
    // segments are lent and released separately.
    rte_pktmbuf_free_seg(reinterpret_cast<rte_mbuf*>(handle));
    --lent_;
  }

  unsigned char* claim_tx() override {
    if (claimed_ == nullptr) {
      if (tx_count_ == kTxBatch) flush();
      claimed_ = rte_pktmbuf_alloc(pool_.get());
      if (claimed_ == nullptr) {
        // Sent frames return to the pool when the driver reaps its
        // completion ring, which it does in every transmit burst, even an
        // empty one.
        flush();
        rte_eth_tx_burst(port_id_, 0, tx_pending_.data(), 0);
        claimed_ = rte_pktmbuf_alloc(pool_.get());
      }
      if (claimed_ == nullptr) {
        // Every buffer is in a ring or held by the stack.
        ++counters_.tx_ring_full;
        return nullptr;
      }
    }
    return rte_pktmbuf_mtod(claimed_, unsigned char*);
  }

  void commit_tx(uint32_t length) override {
    if (claimed_ == nullptr) return;
    if (length == 0 || length > frame_capacity_) {
      // Nothing to send, or more than the buffer holds: the claim is undone.
      rte_pktmbuf_free(claimed_);
      claimed_ = nullptr;
      return;
    }
    claimed_->data_len = static_cast<uint16_t>(length);
    claimed_->pkt_len = length;
    tx_pending_[tx_count_] = claimed_;
    tx_lengths_[tx_count_] = length;
    ++tx_count_;
    claimed_ = nullptr;
  }

  void flush() override {
    if (tx_count_ == 0) return;
    const uint16_t sent = rte_eth_tx_burst(port_id_, 0, tx_pending_.data(), tx_count_);
    for (unsigned i = 0; i < sent; ++i) counters_.tx_bytes += tx_lengths_[i];
    counters_.tx_packets += sent;
    for (unsigned i = sent; i < tx_count_; ++i) rte_pktmbuf_free(tx_pending_[i]);
    counters_.tx_ring_full += tx_count_ - sent;
    tx_count_ = 0;
  }

  uint32_t frame_capacity() const override { return frame_capacity_; }

  // The driver offers no descriptor to sleep on (its socket's readiness is
  // the driver's business): a worker polls.
  int wait_fd() const override { return -1; }

  const PortCounters& counters() const override {
    // The socket's own drop counts; tx_kicks and rx_wakeups stay 0: the
    // driver makes those system calls inside its bursts and does not count
    // them.
    xdp_statistics statistics{};
    socklen_t length = sizeof statistics;
    if (getsockopt(socket_fd_, SOL_XDP, XDP_STATISTICS, &statistics, &length) == 0) {
      counters_.rx_fill_empty = statistics.rx_fill_ring_empty_descs;
      counters_.rx_ring_full = statistics.rx_ring_full;
      counters_.rx_invalid = statistics.rx_invalid_descs;
    }
    return counters_;
  }

  std::string describe() const override {
    return "dpdk net_af_xdp " + interface_ + " queue " + std::to_string(queue_) + " (port " +
           std::to_string(port_id_) + ", " + (zero_copy_ ? "zero-copy" : "copy") + " mode, " +
           (hugepages_ ? "hugepages" : "no hugepages") + ")";
  }

 private:
  const std::string interface_;
  const uint32_t queue_;
  const bool hugepages_;
  Mempool pool_;  // outlives the device: its memory is the socket's UMEM
  std::unique_ptr<AfXdpDevice> device_;
  const uint16_t port_id_;
  const int socket_fd_;  // the driver's; valid while device_ lives
  const bool zero_copy_;
  const uint32_t frame_capacity_;

  mutable PortCounters counters_;
  uint64_t lent_ = 0;

  // Received, not yet lent: the head of each frame, or the segment of a
  // chain that a previous call could not fit.
  std::array<rte_mbuf*, kRxBurst> rx_stash_{};
  unsigned rx_next_ = 0;
  unsigned rx_count_ = 0;

  rte_mbuf* claimed_ = nullptr;
  std::array<rte_mbuf*, kTxBatch> tx_pending_{};
  std::array<uint32_t, kTxBatch> tx_lengths_{};
  unsigned tx_count_ = 0;
};

}  // namespace

void initialise_dpdk_eal(bool hugepages) {
  EalState& state = eal_state();
  std::lock_guard lock(state.mutex);
  if (state.initialised) {
    if (state.hugepages != hugepages) {
      fail(std::string("DPDK's EAL is already initialised ") +
           (state.hugepages ? "with" : "without") +
           " hugepages in this process and cannot be initialised again");
    }
    return;
  }

  // rte_eal_init pins the calling thread to its main lcore's CPU: the main
  // lcore is the first CPU this thread may run on, and the thread's own set
  // is put back afterwards.
  cpu_set_t affinity;
  CPU_ZERO(&affinity);
  if (pthread_getaffinity_np(pthread_self(), sizeof affinity, &affinity) != 0) {
    fail("cannot read the calling thread's CPU affinity");
  }
  int main_cpu = 0;
  while (main_cpu < CPU_SETSIZE && !CPU_ISSET(main_cpu, &affinity)) ++main_cpu;

  state.arguments = {
      "netaccel-stack",
      "--no-pci",  // ports are vdevs made by open_dpdk_port
      "--no-telemetry",
      "-l",
      std::to_string(main_cpu),
      "--log-level=warning",
      // Device addresses are virtual addresses (no PCI device needs physical
      // ones), so that a buffer pool can be one chunk of memory, as the
      // af_xdp driver needs, across hugepages that are not physically
      // contiguous.
      "--iova-mode=va",
  };
  if (hugepages) {
    // No hugepage or configuration files: nothing to share, nothing left
    // behind.
    state.arguments.push_back("--in-memory");
  } else {
    // 22.11 counts --no-huge as legacy memory, which --in-memory refuses;
    // --no-shconf is the part of it that applies (no shared configuration
    // files, no secondary processes).
    state.arguments.insert(state.arguments.end(), {"--no-huge", "--no-shconf", "-m",
                                                   std::to_string(kNoHugeMemoryMegabytes)});
  }
  state.argv.clear();
  for (std::string& argument : state.arguments) state.argv.push_back(argument.data());
  state.argv.push_back(nullptr);

  const int result = rte_eal_init(static_cast<int>(state.arguments.size()), state.argv.data());
  const int error = rte_errno;
  pthread_setaffinity_np(pthread_self(), sizeof affinity, &affinity);
  if (result < 0) {
    if (error == EALREADY) {
      fail("DPDK's EAL was initialised in this process by something other than netaccel");
    }
    fail("DPDK's EAL did not initialise" + std::string(hugepages ? " with hugepages" : "") + ": " +
         dpdk_error(error));
  }
  state.initialised = true;
  state.hugepages = hugepages;
}

std::unique_ptr<PacketPort> open_dpdk_port(const DpdkPortConfig& config) {
  const std::string where = config.interface + " queue " + std::to_string(config.queue);
  if (config.interface.empty() || config.interface.size() >= IF_NAMESIZE) {
    fail("DPDK port: invalid interface name '" + config.interface + "'");
  }
  const unsigned ifindex = if_nametoindex(config.interface.c_str());
  if (ifindex == 0 || ifindex != config.ifindex) {
    fail("DPDK port: interface " + config.interface + " is " +
         (ifindex == 0 ? "absent" : "ifindex " + std::to_string(ifindex)) +
         " in this thread's network namespace, not ifindex " + std::to_string(config.ifindex) +
         " (open the port from inside the container's namespace)");
  }
  if (config.ring_size == 0 || (config.ring_size & (config.ring_size - 1)) != 0) {
    fail("DPDK port " + where + ": ring size " + std::to_string(config.ring_size) +
         " is not a power of two");
  }
  const unsigned fewest_buffers = kDriverFillBuffers + config.ring_size + kMempoolCache;
  if (config.buffers < fewest_buffers) {
    fail("DPDK port " + where + ": " + std::to_string(config.buffers) +
         " buffers, fewer than the " + std::to_string(fewest_buffers) + " that rings of " +
         std::to_string(config.ring_size) + " need");
  }
  check_xsk_map(config.xsk_map_fd, config.queue);

  initialise_dpdk_eal(config.hugepages);
  require_driver_calls_hooked();

  std::lock_guard lock(port_lifecycle_mutex());
  static unsigned next_device = 0;
  const unsigned device_number = next_device++;

  // The driver uses the pool's memory as the socket's UMEM, base to end, so
  // it must be one virtually contiguous chunk.
  const std::string pool_name = "netaccel_xdp" + std::to_string(device_number);
  Mempool pool(rte_pktmbuf_pool_create(pool_name.c_str(), config.buffers, kMempoolCache, 0,
                                       RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id()));
  if (!pool) {
    fail("DPDK port " + where + ": no buffer pool of " + std::to_string(config.buffers) +
         " buffers: " + dpdk_error(rte_errno));
  }
  if (pool->nb_mem_chunks != 1) {
    fail("DPDK port " + where + ": the buffer pool is in " + std::to_string(pool->nb_mem_chunks) +
         " pieces of memory; the af_xdp driver needs one (more hugepages, or fewer buffers)");
  }

  const std::string device_name = "net_af_xdp" + std::to_string(device_number);
  std::string device_arguments =
      "iface=" + config.interface + ",start_queue=" + std::to_string(config.queue) +
      ",queue_count=1,busy_budget=" + std::to_string(config.busy_poll_budget);
  if (config.force_copy) device_arguments += ",force_copy=1";

  PmdCallScope scope;
  PmdCallGuard guard(scope);
  const int probed = rte_vdev_init(device_name.c_str(), device_arguments.c_str());
  if (probed > 0) {
    fail("DPDK has no net_af_xdp driver (librte_net_af_xdp is not among the EAL's drivers)");
  }
  if (probed < 0) {
    fail("DPDK's af_xdp driver refused " + where + ": " + dpdk_error(probed));
  }
  uint16_t port_id = 0;
  if (rte_eth_dev_get_port_by_name(device_name.c_str(), &port_id) != 0) {
    rte_vdev_uninit(device_name.c_str());
    fail("DPDK port " + where + ": the af_xdp device made no ethdev");
  }
  // From here the device is removed on any failure (the guard of its
  // destructor nests inside ours).
  auto device = std::make_unique<AfXdpDevice>(device_name, port_id);

  rte_eth_conf port_conf{};
  int result = rte_eth_dev_configure(port_id, 1, 1, &port_conf);
  if (result != 0) fail("DPDK port " + where + ": configure failed: " + dpdk_error(result));
  const int socket_id = rte_eth_dev_socket_id(port_id);
  result = rte_eth_rx_queue_setup(port_id, 0, config.ring_size,
                                  static_cast<unsigned>(socket_id < 0 ? SOCKET_ID_ANY : socket_id),
                                  nullptr, pool.get());
  if (result != 0) {
    if (scope.socket_error == -EBUSY) {
      fail("DPDK port " + where + ": the queue already has an AF_XDP socket (another stack?)");
    }
    fail("DPDK's af_xdp driver could not make its AF_XDP socket on " + where + ": " +
         (scope.socket_error != 0 ? std::strerror(-scope.socket_error) : dpdk_error(result)));
  }
  if (scope.socket != nullptr) device->adopt_socket(xsk_socket__fd(scope.socket), scope.umem);
  if (scope.sockets_made != 1 || scope.socket_queue != config.queue ||
      config.interface != scope.socket_interface) {
    fail("DPDK port " + where + ": the af_xdp driver's socket did not come through netaccel's " +
         "xsk_socket__create (" + std::to_string(scope.sockets_made) + " made)");
  }
  result = rte_eth_tx_queue_setup(port_id, 0, config.ring_size,
                                  static_cast<unsigned>(socket_id < 0 ? SOCKET_ID_ANY : socket_id),
                                  nullptr);
  if (result != 0) fail("DPDK port " + where + ": transmit queue: " + dpdk_error(result));

  // Starting replays the ethdev's promiscuous setting onto the interface,
  // which would clear a flag set by someone else: make it the interface's.
  if (interface_is_promiscuous(config.interface)) rte_eth_promiscuous_enable(port_id);
  result = rte_eth_dev_start(port_id);
  if (result != 0) fail("DPDK port " + where + ": start failed: " + dpdk_error(result));

  const int socket_fd = device->socket_fd();
  if (bpf_map_update_elem(config.xsk_map_fd, &config.queue, &socket_fd, BPF_ANY) != 0) {
    fail("DPDK port " + where +
         ": cannot put the AF_XDP socket into the XSK map: " + std::strerror(errno));
  }
  xdp_options options{};
  socklen_t options_length = sizeof options;
  const bool zero_copy =
      getsockopt(socket_fd, SOL_XDP, XDP_OPTIONS, &options, &options_length) == 0 &&
      (options.flags & XDP_OPTIONS_ZEROCOPY) != 0;
  return std::make_unique<DpdkPort>(config, std::move(pool), std::move(device), socket_fd,
                                    zero_copy);
}

}  // namespace netaccel::stack

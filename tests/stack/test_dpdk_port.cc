// The DPDK packet port on a real interface, next to netaccel's classifier.
//
// A container as a runtime makes one (a network namespace with a veth to
// the test's own namespace, a process in a cgroup v2 of its own) is
// attached with netaccel::bpf::attach_container, which pins the classifier
// and its maps; a port is then steered to the AF_XDP socket of a DPDK
// port opened inside the container. The test runs in private mount and
// network namespaces, so the namespaces, veths and BPF pins it makes vanish
// with it. Needs root; skips without it, without cgroup v2, `ip`, or
// DPDK's af_xdp driver. Hugepages are used when at least 128 are free
// (NETACCEL_TEST_DPDK_HUGEPAGES=0 or 1 decides instead).
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netaccel/bpf_loader.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xdp/libxdp.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dpdk_port.h"
#include "netaccel_bpf.h"
#include "xdp_classifier.skel.h"

namespace {

using netaccel::stack::DpdkPortConfig;
using netaccel::stack::PacketPort;
using netaccel::stack::PortCounters;
using netaccel::stack::RxBuffer;
using namespace std::chrono_literals;

constexpr const char* kContainer = "na-dpdk-test";
constexpr const char* kLibxdpNamespace = "na-dpdk-libxdp";
constexpr const char* kInterface = "eth0";
constexpr uint16_t kSteeredPort = 7101;
constexpr uint16_t kKernelPort = 7102;
constexpr uint16_t kPeerPort = 7103;

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) close(fd_);
  }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_;
};

// `command` through the shell; true when it exits 0.
bool run(const std::string& command) {
  const int status = std::system((command + " >/dev/null 2>&1").c_str());
  return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// The calling thread in another network namespace until destroyed.
class InNetns {
 public:
  explicit InNetns(int target) : original_(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) {
    if (!original_ || setns(target, CLONE_NEWNET) != 0) {
      throw std::runtime_error(std::string("setns: ") + std::strerror(errno));
    }
  }
  ~InNetns() { setns(original_.get(), CLONE_NEWNET); }
  InNetns(const InNetns&) = delete;
  InNetns& operator=(const InNetns&) = delete;

 private:
  UniqueFd original_;
};

std::array<unsigned char, 6> mac_address(const std::string& interface) {
  UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq request{};
  std::snprintf(request.ifr_name, sizeof request.ifr_name, "%s", interface.c_str());
  std::array<unsigned char, 6> mac{};
  if (ioctl(fd.get(), SIOCGIFHWADDR, &request) == 0) {
    std::memcpy(mac.data(), request.ifr_hwaddr.sa_data, mac.size());
  }
  return mac;
}

UniqueFd udp_socket(const char* address, uint16_t port) {
  UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in local{};
  local.sin_family = AF_INET;
  local.sin_port = htons(port);
  inet_pton(AF_INET, address, &local.sin_addr);
  if (!fd || bind(fd.get(), reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) {
    throw std::runtime_error("cannot bind UDP " + std::string(address) + ":" +
                             std::to_string(port) + ": " + std::strerror(errno));
  }
  return fd;
}

void send_udp(int fd, const char* address, uint16_t port, const std::string& payload) {
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(port);
  inet_pton(AF_INET, address, &remote.sin_addr);
  sendto(fd, payload.data(), payload.size(), 0, reinterpret_cast<sockaddr*>(&remote),
         sizeof remote);
}

// The next datagram within `timeout`, if any.
std::optional<std::string> receive_udp(int fd, std::chrono::milliseconds timeout,
                                       sockaddr_in* sender = nullptr) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char data[2048];
  do {
    sockaddr_in from{};
    socklen_t from_length = sizeof from;
    const ssize_t length = recvfrom(fd, data, sizeof data, MSG_DONTWAIT,
                                    reinterpret_cast<sockaddr*>(&from), &from_length);
    if (length >= 0) {
      if (sender != nullptr) *sender = from;
      return std::string(data, static_cast<std::size_t>(length));
    }
    std::this_thread::sleep_for(5ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return std::nullopt;
}

struct UdpFrame {
  uint16_t destination_port = 0;
  std::string payload;
};

// Ethernet + IPv4 + UDP, or nothing.
std::optional<UdpFrame> parse_udp(const std::vector<unsigned char>& frame) {
  constexpr std::size_t kEthernet = 14;
  if (frame.size() < kEthernet + sizeof(iphdr) + sizeof(udphdr)) return std::nullopt;
  if (frame[12] != 0x08 || frame[13] != 0x00) return std::nullopt;
  iphdr ip;
  std::memcpy(&ip, frame.data() + kEthernet, sizeof ip);
  const std::size_t udp_offset = kEthernet + ip.ihl * 4u;
  if (ip.protocol != IPPROTO_UDP || frame.size() < udp_offset + sizeof(udphdr)) return std::nullopt;
  udphdr udp;
  std::memcpy(&udp, frame.data() + udp_offset, sizeof udp);
  const std::size_t payload_offset = udp_offset + sizeof udp;
  const std::size_t payload_length = ntohs(udp.len) - sizeof udp;
  if (frame.size() < payload_offset + payload_length) return std::nullopt;
  return UdpFrame{
      ntohs(udp.dest),
      std::string(reinterpret_cast<const char*>(frame.data() + payload_offset), payload_length)};
}

// Frames received within `timeout`; every buffer is released.
std::vector<std::vector<unsigned char>> receive_frames(PacketPort& port,
                                                       std::chrono::milliseconds timeout,
                                                       std::size_t enough = 1) {
  std::vector<std::vector<unsigned char>> frames;
  std::vector<unsigned char> partial;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (frames.size() < enough && std::chrono::steady_clock::now() < deadline) {
    RxBuffer buffers[16];
    const unsigned count = port.receive(buffers, 16);
    for (unsigned i = 0; i < count; ++i) {
      partial.insert(partial.end(), buffers[i].data, buffers[i].data + buffers[i].length);
      if (!buffers[i].continues) frames.push_back(std::exchange(partial, {}));
      port.release(buffers[i].handle);
    }
    if (count == 0) std::this_thread::sleep_for(1ms);
  }
  return frames;
}

uint16_t ipv4_checksum(const void* header, std::size_t length) {
  uint32_t sum = 0;
  const auto* bytes = static_cast<const unsigned char*>(header);
  for (std::size_t i = 0; i + 1 < length; i += 2) sum += (bytes[i] << 8) | bytes[i + 1];
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return htons(static_cast<uint16_t>(~sum));
}

// Ethernet + IPv4 + UDP (checksum 0: none, as IPv4 allows).
std::vector<unsigned char> build_udp_frame(const std::array<unsigned char, 6>& destination_mac,
                                           const std::array<unsigned char, 6>& source_mac,
                                           const char* source, uint16_t source_port,
                                           const char* destination, uint16_t destination_port,
                                           const std::string& payload) {
  std::vector<unsigned char> frame(14 + sizeof(iphdr) + sizeof(udphdr) + payload.size());
  std::memcpy(frame.data(), destination_mac.data(), 6);
  std::memcpy(frame.data() + 6, source_mac.data(), 6);
  frame[12] = 0x08;
  frame[13] = 0x00;
  iphdr ip{};
  ip.version = 4;
  ip.ihl = 5;
  ip.ttl = 64;
  ip.protocol = IPPROTO_UDP;
  ip.tot_len = htons(static_cast<uint16_t>(frame.size() - 14));
  inet_pton(AF_INET, source, &ip.saddr);
  inet_pton(AF_INET, destination, &ip.daddr);
  ip.check = ipv4_checksum(&ip, sizeof ip);
  std::memcpy(frame.data() + 14, &ip, sizeof ip);
  udphdr udp{};
  udp.source = htons(source_port);
  udp.dest = htons(destination_port);
  udp.len = htons(static_cast<uint16_t>(sizeof udp + payload.size()));
  std::memcpy(frame.data() + 14 + sizeof ip, &udp, sizeof udp);
  std::memcpy(frame.data() + 14 + sizeof ip + sizeof udp, payload.data(), payload.size());
  return frame;
}

std::string cgroup2_mount() {
  std::ifstream mounts("/proc/self/mounts");
  std::string device, directory, type;
  std::string rest;
  while (mounts >> device >> directory >> type && std::getline(mounts, rest)) {
    if (type == "cgroup2") return directory;
  }
  return "";
}

unsigned free_hugepages() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  unsigned long value = 0;
  while (meminfo >> key >> value) {
    if (key == "HugePages_Free:") return static_cast<unsigned>(value);
    meminfo.ignore(1024, '\n');
  }
  return 0;
}

// A network namespace with a veth to the test's namespace: `kInterface`
// (container_address/24) inside, `peer` (peer_address/24) outside.
struct Namespace {
  std::string name;
  std::string peer;
  std::string container_address;
  std::string peer_address;
  UniqueFd netns;
  unsigned ifindex = 0;  // of kInterface, inside
};

// Everything made once for the whole test program.
struct TestWorld {
  std::string skip_reason;  // set when the test cannot run here
  std::string setup_error;  // set when making the world failed
  bool hugepages = false;
  std::string cgroup;
  pid_t container_process = -1;
  Namespace attached;         // attached with netaccel::bpf::attach_container
  Namespace libxdp_attached;  // the classifier attached by the test through libxdp
  UniqueFd steering;
  UniqueFd xsk_sockets;
};

TestWorld& world() {
  static TestWorld instance;
  return instance;
}

Namespace make_namespace(const std::string& name, const std::string& peer, int subnet) {
  Namespace made{name,
                 peer,
                 "10.199." + std::to_string(subnet) + ".2",
                 "10.199." + std::to_string(subnet) + ".1",
                 UniqueFd(),
                 0};
  const bool ok =
      run("ip netns add " + name) && run("ip -n " + name + " link set lo up") &&
      run("ip link add " + peer + " type veth peer name " + kInterface + " netns " + name) &&
      run("ip addr add " + made.peer_address + "/24 dev " + peer) &&
      run("ip link set " + peer + " up") &&
      run("ip -n " + name + " addr add " + made.container_address + "/24 dev " + kInterface) &&
      run("ip -n " + name + " link set " + kInterface + " up");
  if (!ok) throw std::runtime_error("cannot make network namespace " + name + " with ip");
  made.netns = UniqueFd(open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC));
  InNetns inside(made.netns.get());
  made.ifindex = if_nametoindex(kInterface);
  return made;
}

class DpdkPortEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    TestWorld& w = world();
    if (geteuid() != 0) {
      w.skip_reason = "needs root (AF_XDP, BPF, namespaces)";
      return;
    }
    if (!run("ip -V")) {
      w.skip_reason = "needs iproute2's ip";
      return;
    }
    const std::string cgroup_root = cgroup2_mount();
    if (cgroup_root.empty()) {
      w.skip_reason = "needs a cgroup v2 hierarchy (the container's cgroup)";
      return;
    }
    if (const char* forced = std::getenv("NETACCEL_TEST_DPDK_HUGEPAGES")) {
      w.hugepages = std::string(forced) == "1";
    } else {
      w.hugepages = free_hugepages() >= 128;
    }
    try {
      // Single-threaded still: new mount and network namespaces for the
      // whole process, so that nothing made here outlives it.
      if (unshare(CLONE_NEWNS | CLONE_NEWNET) != 0) throw std::runtime_error("unshare failed");
      if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
          (mkdir("/run/netns", 0755) != 0 && errno != EEXIST) ||
          mount("netaccel-test", "/run/netns", "tmpfs", 0, "mode=0755") != 0 ||
          mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") != 0) {
        throw std::runtime_error(std::string("private mounts: ") + std::strerror(errno));
      }
      run("ip link set lo up");
      w.attached = make_namespace(kContainer, "na-dpdk-peer", 1);
      w.libxdp_attached = make_namespace(kLibxdpNamespace, "na-dpdk-peer2", 2);

      // The container's process, in a cgroup of its own.
      w.cgroup = cgroup_root + "/netaccel-dpdk-test-" + std::to_string(getpid());
      if (mkdir(w.cgroup.c_str(), 0755) != 0) {
        throw std::runtime_error("cannot make cgroup " + w.cgroup);
      }
      const int netns = w.attached.netns.get();
      const std::string procs = w.cgroup + "/cgroup.procs";
      w.container_process = fork();
      if (w.container_process == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        const int fd = open(procs.c_str(), O_WRONLY);
        const std::string pid = std::to_string(getpid());
        if (fd < 0 || write(fd, pid.data(), pid.size()) < 0 || setns(netns, CLONE_NEWNET) != 0) {
          _exit(1);
        }
        for (;;) pause();
      }
      // Attach finds the container by this process: wait until it is in
      // the namespace (it joins the cgroup first).
      struct stat container_netns, process_netns;
      fstat(netns, &container_netns);
      const std::string process_netns_path =
          "/proc/" + std::to_string(w.container_process) + "/ns/net";
      for (int i = 0; i < 400; ++i) {
        if (stat(process_netns_path.c_str(), &process_netns) == 0 &&
            process_netns.st_ino == container_netns.st_ino) {
          break;
        }
        std::this_thread::sleep_for(5ms);
      }

      netaccel::bpf::attach_container(std::string("/run/netns/") + kContainer);
      const std::string pins = std::string(netaccel::bpf::kPinRoot) + "/" + kContainer;
      w.steering = UniqueFd(bpf_obj_get((pins + "/steering").c_str()));
      w.xsk_sockets = UniqueFd(bpf_obj_get((pins + "/xsk_sockets").c_str()));
      if (!w.steering || !w.xsk_sockets) throw std::runtime_error("cannot open the pinned maps");
    } catch (const std::exception& error) {
      w.setup_error = error.what();
    }
  }

  void TearDown() override {
    TestWorld& w = world();
    if (w.steering) {
      try {
        netaccel::bpf::detach_container(kContainer);
      } catch (const std::exception& error) {
        ADD_FAILURE() << "detach: " << error.what();
      }
    }
    if (w.container_process > 0) {
      kill(w.container_process, SIGKILL);
      waitpid(w.container_process, nullptr, 0);
    }
    // The cgroup stays busy for a moment after its last process is reaped.
    for (int attempt = 0; !w.cgroup.empty() && attempt < 100; ++attempt) {
      if (rmdir(w.cgroup.c_str()) == 0 || errno != EBUSY) break;
      std::this_thread::sleep_for(10ms);
    }
  }
};

const auto* const kEnvironment = ::testing::AddGlobalTestEnvironment(new DpdkPortEnvironment);

#define NETACCEL_REQUIRE_WORLD()                                                  \
  do {                                                                            \
    if (!world().skip_reason.empty()) GTEST_SKIP() << world().skip_reason;        \
    ASSERT_TRUE(world().setup_error.empty()) << "setup: " << world().setup_error; \
  } while (0)

void steer(int steering_map, uint16_t port, uint32_t verdict) {
  netaccel_steer_key key{};
  key.port = port;
  key.protocol = IPPROTO_UDP;
  netaccel_steer_action action{};
  action.verdict = verdict;
  action.owner = static_cast<uint32_t>(getpid());
  ASSERT_EQ(bpf_map_update_elem(steering_map, &key, &action, BPF_ANY), 0) << std::strerror(errno);
}

void unsteer(int steering_map, uint16_t port) {
  netaccel_steer_key key{};
  key.port = port;
  key.protocol = IPPROTO_UDP;
  bpf_map_delete_elem(steering_map, &key);
}

netaccel_container_counters container_counters() {
  for (const auto& stats : netaccel::bpf::read_stats()) {
    if (stats.name == kContainer) return stats.xdp;
  }
  return {};
}

// The program attached to the interface, from inside its namespace.
struct AttachedXdp {
  uint32_t program_id = 0;
  std::string program_name;
};

AttachedXdp attached_xdp(const Namespace& ns) {
  InNetns inside(ns.netns.get());
  AttachedXdp attached;
  bpf_xdp_query_opts query{};
  query.sz = sizeof query;
  if (bpf_xdp_query(static_cast<int>(ns.ifindex), 0, &query) != 0) return attached;
  attached.program_id = query.prog_id;
  UniqueFd program(bpf_prog_get_fd_by_id(query.prog_id));
  bpf_prog_info info{};
  uint32_t length = sizeof info;
  if (program && bpf_obj_get_info_by_fd(program.get(), &info, &length) == 0) {
    attached.program_name = info.name;
  }
  return attached;
}

std::unique_ptr<PacketPort> open_port(const Namespace& ns, int xsk_map,
                                      unsigned buffers = DpdkPortConfig{}.buffers) {
  DpdkPortConfig config;
  config.buffers = buffers;
  config.interface = kInterface;
  config.ifindex = ns.ifindex;
  config.queue = 0;
  config.xsk_map_fd = xsk_map;
  config.hugepages = world().hugepages;
  InNetns inside(ns.netns.get());
  return netaccel::stack::open_dpdk_port(config);
}

class DpdkPortTest : public ::testing::Test {
 protected:
  void SetUp() override {
    alarm(60);  // a hung test is killed instead of stalling the suite
    NETACCEL_REQUIRE_WORLD();
    try {
      port_ = open_port(world().attached, world().xsk_sockets.get());
    } catch (const std::runtime_error& error) {
      if (std::string(error.what()).find("no net_af_xdp driver") != std::string::npos) {
        GTEST_SKIP() << error.what();
      }
      FAIL() << error.what();
    }
  }
  void TearDown() override {
    port_.reset();
    if (world().steering) {
      for (uint16_t port : {kSteeredPort, kKernelPort}) unsteer(world().steering.get(), port);
    }
    alarm(0);
  }

  // A UDP socket of the container's kernel.
  UniqueFd container_socket(uint16_t port) {
    InNetns inside(world().attached.netns.get());
    return udp_socket(world().attached.container_address.c_str(), port);
  }

  std::unique_ptr<PacketPort> port_;
};

TEST_F(DpdkPortTest, SteeredUdpArrivesThroughReceiveAndNotInTheKernel) {
  steer(world().steering.get(), kSteeredPort, NETACCEL_STEER_XSK);
  UniqueFd kernel_side = container_socket(kSteeredPort);
  UniqueFd peer = udp_socket(world().attached.peer_address.c_str(), 0);
  const auto before = container_counters();

  // Sent until it arrives: the first may wait for ARP.
  std::optional<UdpFrame> arrived;
  for (int attempt = 0; attempt < 20 && !arrived; ++attempt) {
    send_udp(peer.get(), world().attached.container_address.c_str(), kSteeredPort,
             "steered datagram");
    for (const auto& frame : receive_frames(*port_, 200ms)) {
      auto udp = parse_udp(frame);
      if (udp && udp->destination_port == kSteeredPort) arrived = udp;
    }
  }
  ASSERT_TRUE(arrived) << "no frame through the DPDK port; " << port_->describe();
  EXPECT_EQ(arrived->payload, "steered datagram");
  EXPECT_FALSE(receive_udp(kernel_side.get(), 100ms)) << "the container's kernel got it too";
  EXPECT_GE(port_->counters().rx_packets, 1u);
  EXPECT_GT(port_->counters().rx_bytes, 0u);
  EXPECT_GE(container_counters().to_xsk, before.to_xsk + 1);
}

TEST_F(DpdkPortTest, TransmittedFrameReachesThePeer) {
  UniqueFd peer = udp_socket(world().attached.peer_address.c_str(), kPeerPort);
  std::array<unsigned char, 6> container_mac, peer_mac;
  {
    InNetns inside(world().attached.netns.get());
    container_mac = mac_address(kInterface);
  }
  peer_mac = mac_address(world().attached.peer);
  const auto frame = build_udp_frame(
      peer_mac, container_mac, world().attached.container_address.c_str(), kSteeredPort,
      world().attached.peer_address.c_str(), kPeerPort, "sent by DPDK");
  ASSERT_LE(frame.size(), port_->frame_capacity());

  unsigned char* buffer = port_->claim_tx();
  ASSERT_NE(buffer, nullptr);
  std::memcpy(buffer, frame.data(), frame.size());
  port_->commit_tx(static_cast<uint32_t>(frame.size()));
  port_->flush();

  sockaddr_in sender{};
  const auto received = receive_udp(peer.get(), 3s, &sender);
  ASSERT_TRUE(received) << "the peer received nothing; " << port_->describe();
  EXPECT_EQ(*received, "sent by DPDK");
  EXPECT_EQ(ntohs(sender.sin_port), kSteeredPort);
  EXPECT_EQ(port_->counters().tx_packets, 1u);
  EXPECT_EQ(port_->counters().tx_bytes, frame.size());
  EXPECT_EQ(port_->counters().tx_ring_full, 0u);
}

TEST_F(DpdkPortTest, ManyFramesBothWays) {
  constexpr int kFrames = 2000;
  steer(world().steering.get(), kSteeredPort, NETACCEL_STEER_XSK);
  UniqueFd peer = udp_socket(world().attached.peer_address.c_str(), kPeerPort);
  const int receive_buffer = 16 << 20;
  setsockopt(peer.get(), SOL_SOCKET, SO_RCVBUFFORCE, &receive_buffer, sizeof receive_buffer);

  std::size_t received = 0;
  for (int i = 0; i < kFrames; ++i) {
    send_udp(peer.get(), world().attached.container_address.c_str(), kSteeredPort,
             "frame " + std::to_string(i));
    if (i % 100 == 99) received += receive_frames(*port_, 10ms, 100).size();
  }
  received += receive_frames(*port_, 1s, kFrames - received).size();
  EXPECT_EQ(received, static_cast<std::size_t>(kFrames));
  EXPECT_EQ(port_->counters().rx_packets, static_cast<uint64_t>(received));

  std::array<unsigned char, 6> container_mac;
  {
    InNetns inside(world().attached.netns.get());
    container_mac = mac_address(kInterface);
  }
  const auto peer_mac = mac_address(world().attached.peer);
  int committed = 0;
  for (int i = 0; i < kFrames; ++i) {
    const auto frame = build_udp_frame(
        peer_mac, container_mac, world().attached.container_address.c_str(), kSteeredPort,
        world().attached.peer_address.c_str(), kPeerPort, "tx " + std::to_string(i));
    unsigned char* buffer = port_->claim_tx();
    ASSERT_NE(buffer, nullptr) << "out of buffers after " << i << " frames";
    std::memcpy(buffer, frame.data(), frame.size());
    port_->commit_tx(static_cast<uint32_t>(frame.size()));
    ++committed;
    if (i % 32 == 31) port_->flush();
  }
  port_->flush();
  const PortCounters counters = port_->counters();
  EXPECT_EQ(counters.tx_packets + counters.tx_ring_full, static_cast<uint64_t>(committed));
  int delivered = 0;
  while (receive_udp(peer.get(), 300ms)) ++delivered;
  EXPECT_EQ(static_cast<uint64_t>(delivered), counters.tx_packets) << port_->describe();
  EXPECT_GE(delivered, kFrames * 9 / 10) << "tx_ring_full " << counters.tx_ring_full;
}

TEST_F(DpdkPortTest, UnsteeredTrafficStillReachesTheKernel) {
  steer(world().steering.get(), kSteeredPort, NETACCEL_STEER_XSK);
  UniqueFd kernel_side = container_socket(kKernelPort);
  UniqueFd peer = udp_socket(world().attached.peer_address.c_str(), 0);
  send_udp(peer.get(), world().attached.container_address.c_str(), kKernelPort, "for the kernel");
  const auto received = receive_udp(kernel_side.get(), 3s);
  ASSERT_TRUE(received) << "the container's kernel socket received nothing";
  EXPECT_EQ(*received, "for the kernel");
  for (const auto& frame : receive_frames(*port_, 200ms, 100)) {
    auto udp = parse_udp(frame);
    EXPECT_FALSE(udp && udp->destination_port == kKernelPort) << "unsteered frame in the port";
  }
}

TEST_F(DpdkPortTest, DriverLeavesTheClassifierAttachedAndTheSocketLeavesTheMapOnClose) {
  const AttachedXdp with_port = attached_xdp(world().attached);
  EXPECT_EQ(with_port.program_name, "xdp_classify");
  EXPECT_NE(port_->describe().find("net_af_xdp eth0 queue 0"), std::string::npos)
      << port_->describe();

  {
    // Closed where the driver would detach a program: its bpf_xdp_detach
    // goes to the ifindex in the calling thread's namespace.
    InNetns inside(world().attached.netns.get());
    port_.reset();
  }
  const AttachedXdp after_close = attached_xdp(world().attached);
  EXPECT_EQ(after_close.program_id, with_port.program_id) << "the driver detached the classifier";

  // With the socket gone, a steered flow falls back to the kernel.
  steer(world().steering.get(), kSteeredPort, NETACCEL_STEER_XSK);
  UniqueFd kernel_side = container_socket(kSteeredPort);
  UniqueFd peer = udp_socket(world().attached.peer_address.c_str(), 0);
  const auto before = container_counters();
  send_udp(peer.get(), world().attached.container_address.c_str(), kSteeredPort, "no socket");
  const auto received = receive_udp(kernel_side.get(), 3s);
  ASSERT_TRUE(received);
  EXPECT_EQ(*received, "no socket");
  EXPECT_GE(container_counters().xsk_missing, before.xsk_missing + 1);
}

TEST_F(DpdkPortTest, SecondPortOnTheSameQueueIsRefusedAndTheFirstKeepsWorking) {
  try {
    open_port(world().attached, world().xsk_sockets.get());
    ADD_FAILURE() << "a second port bound the same queue";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("already has an AF_XDP socket"), std::string::npos)
        << error.what();
  }
  steer(world().steering.get(), kSteeredPort, NETACCEL_STEER_XSK);
  UniqueFd peer = udp_socket(world().attached.peer_address.c_str(), 0);
  bool arrived = false;
  for (int attempt = 0; attempt < 20 && !arrived; ++attempt) {
    send_udp(peer.get(), world().attached.container_address.c_str(), kSteeredPort, "still here");
    for (const auto& frame : receive_frames(*port_, 200ms)) {
      auto udp = parse_udp(frame);
      arrived = arrived || (udp && udp->payload == "still here");
    }
  }
  EXPECT_TRUE(arrived) << "the first port stopped receiving";
  EXPECT_EQ(attached_xdp(world().attached).program_name, "xdp_classify");
}

// Received buffers the stack holds come from the port's pool: with enough
// of them held the driver cannot refill the device's fill ring and frames
// are dropped (and counted); released, reception resumes.
TEST_F(DpdkPortTest, HeldBuffersStallReceptionAndReleasingThemRecovers) {
  port_.reset();
  constexpr unsigned kSmallPool = 2048 + 2048 + 256;  // the fewest the port accepts
  port_ = open_port(world().attached, world().xsk_sockets.get(), kSmallPool);
  steer(world().steering.get(), kSteeredPort, NETACCEL_STEER_XSK);
  UniqueFd peer = udp_socket(world().attached.peer_address.c_str(), 0);

  std::vector<RxBuffer> held;
  for (int round = 0, idle_rounds = 0; round < 200 && idle_rounds < 5; ++round) {
    for (int i = 0; i < 100; ++i) {
      send_udp(peer.get(), world().attached.container_address.c_str(), kSteeredPort, "hold");
    }
    std::this_thread::sleep_for(2ms);
    const std::size_t before = held.size();
    RxBuffer buffers[64];
    for (unsigned count; (count = port_->receive(buffers, 64)) > 0;) {
      held.insert(held.end(), buffers, buffers + count);
    }
    idle_rounds = held.size() == before ? idle_rounds + 1 : 0;
  }
  EXPECT_GE(held.size(), kSmallPool - 2048 - 256 - 64) << "reception stopped early";
  // Enough more to use up the fill ring and the receive ring behind it.
  for (int i = 0; i < 5000; ++i) {
    send_udp(peer.get(), world().attached.container_address.c_str(), kSteeredPort, "dropped");
    if (i % 100 == 99) std::this_thread::sleep_for(2ms);
  }
  const PortCounters stalled = port_->counters();
  EXPECT_GT(stalled.rx_fill_empty + stalled.rx_ring_full, 0u) << "no drop counted";

  for (const RxBuffer& buffer : held) port_->release(buffer.handle);
  receive_frames(*port_, 200ms, 100000);  // what was left in the rings
  bool arrived = false;
  for (int attempt = 0; attempt < 20 && !arrived; ++attempt) {
    send_udp(peer.get(), world().attached.container_address.c_str(), kSteeredPort, "again");
    for (const auto& frame : receive_frames(*port_, 200ms, 100)) {
      auto udp = parse_udp(frame);
      arrived = arrived || (udp && udp->payload == "again");
    }
  }
  EXPECT_TRUE(arrived) << "reception did not resume";
  EXPECT_NE(port_->claim_tx(), nullptr);
  port_->commit_tx(0);
}

TEST_F(DpdkPortTest, RefusesTheWrongNamespaceAndABadMap) {
  DpdkPortConfig config;
  config.interface = kInterface;
  config.ifindex = world().attached.ifindex;
  config.xsk_map_fd = world().xsk_sockets.get();
  config.hugepages = world().hugepages;
  // This thread is in the test's namespace, which has no eth0.
  EXPECT_THROW(netaccel::stack::open_dpdk_port(config), std::runtime_error);
  InNetns inside(world().attached.netns.get());
  config.xsk_map_fd = world().steering.get();
  try {
    netaccel::stack::open_dpdk_port(config);
    ADD_FAILURE() << "opened with a hash map for an XSK map";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("not an XSK map"), std::string::npos) << error.what();
  }
}

// The classifier attached through libxdp (its dispatcher, or the program
// alone through netlink where the kernel refuses the dispatcher's freplace
// programs), as `netaccel attach` does: the driver must neither add
// libxdp's redirect program nor, when the port closes, detach what is
// attached (a netlink attachment, unlike a BPF link, would let it).
TEST(DpdkPortLibxdpTest, ClassifierAttachedByLibxdpKeepsItsPlace) {
  alarm(60);
  NETACCEL_REQUIRE_WORLD();
  const Namespace& ns = world().libxdp_attached;
  std::size_t elf_size = 0;
  const void* elf = xdp_classifier__elf_bytes(&elf_size);
  LIBBPF_OPTS(bpf_object_open_opts, open_options, .object_name = "xdp_classifier");
  bpf_object* object = bpf_object__open_mem(elf, elf_size, &open_options);
  ASSERT_NE(object, nullptr);
  xdp_program* classifier = xdp_program__from_bpf_obj(object, "xdp.frags");
  ASSERT_FALSE(libxdp_get_error(classifier)) << "libxdp cannot use the classifier";
  {
    InNetns inside(ns.netns.get());
    const int attached =
        xdp_program__attach(classifier, static_cast<int>(ns.ifindex), XDP_MODE_NATIVE, 0);
    if (attached != 0) {
      xdp_program__close(classifier);
      bpf_object__close(object);
      GTEST_SKIP() << "libxdp cannot attach the classifier here: " << std::strerror(-attached);
    }
  }
  const int steering_map = bpf_map__fd(bpf_object__find_map_by_name(object, "steering"));
  const int xsk_map = bpf_map__fd(bpf_object__find_map_by_name(object, "xsk_sockets"));
  auto attached_programs = [&] {
    InNetns inside(ns.netns.get());
    std::vector<std::string> names;
    xdp_multiprog* multiprog = xdp_multiprog__get_from_ifindex(static_cast<int>(ns.ifindex));
    if (libxdp_get_error(multiprog)) return names;
    if (xdp_multiprog__is_legacy(multiprog)) {
      names.push_back(std::string("legacy:") +
                      xdp_program__name(xdp_multiprog__main_prog(multiprog)));
    } else {
      for (xdp_program* program = xdp_multiprog__next_prog(nullptr, multiprog); program;
           program = xdp_multiprog__next_prog(program, multiprog)) {
        names.emplace_back(xdp_program__name(program));
      }
    }
    xdp_multiprog__close(multiprog);
    return names;
  };
  const std::vector<std::string> attached_before = attached_programs();
  ASSERT_TRUE(attached_before == std::vector<std::string>{"xdp_classify"} ||
              attached_before == std::vector<std::string>{"legacy:xdp_classify"});

  {
    std::unique_ptr<PacketPort> port;
    try {
      port = open_port(ns, xsk_map);
    } catch (const std::runtime_error& error) {
      ADD_FAILURE() << error.what();
    }
    if (port) {
      EXPECT_EQ(attached_programs(), attached_before) << "the driver added a program";
      steer(steering_map, kSteeredPort, NETACCEL_STEER_XSK);
      UniqueFd peer = udp_socket(ns.peer_address.c_str(), 0);
      bool arrived = false;
      for (int attempt = 0; attempt < 20 && !arrived; ++attempt) {
        send_udp(peer.get(), ns.container_address.c_str(), kSteeredPort, "via libxdp");
        for (const auto& frame : receive_frames(*port, 200ms)) {
          auto udp = parse_udp(frame);
          arrived = arrived || (udp && udp->payload == "via libxdp");
        }
      }
      EXPECT_TRUE(arrived) << port->describe();

      // A second port in the process, on the other container, at the same time.
      std::unique_ptr<PacketPort> other;
      try {
        other = open_port(world().attached, world().xsk_sockets.get());
      } catch (const std::runtime_error& error) {
        ADD_FAILURE() << error.what();
      }
      if (other) {
        steer(world().steering.get(), kSteeredPort, NETACCEL_STEER_XSK);
        UniqueFd other_peer = udp_socket(world().attached.peer_address.c_str(), 0);
        bool other_arrived = false;
        for (int attempt = 0; attempt < 20 && !other_arrived; ++attempt) {
          send_udp(other_peer.get(), world().attached.container_address.c_str(), kSteeredPort,
                   "to the other port");
          for (const auto& frame : receive_frames(*other, 200ms)) {
            auto udp = parse_udp(frame);
            other_arrived = other_arrived || (udp && udp->payload == "to the other port");
          }
        }
        EXPECT_TRUE(other_arrived) << other->describe();
        EXPECT_TRUE(receive_frames(*port, 100ms).empty()) << "a frame went to the wrong port";
        unsteer(world().steering.get(), kSteeredPort);
        InNetns inside(world().attached.netns.get());
        other.reset();
      }

      // And the kernel still gets what is not steered.
      UniqueFd kernel_side;
      {
        InNetns inside(ns.netns.get());
        kernel_side = udp_socket(ns.container_address.c_str(), kKernelPort);
      }
      send_udp(peer.get(), ns.container_address.c_str(), kKernelPort, "kernel");
      EXPECT_TRUE(receive_udp(kernel_side.get(), 3s));
      InNetns inside(ns.netns.get());  // closed where a detach would hit the classifier
      port.reset();
    }
  }
  EXPECT_EQ(attached_programs(), attached_before) << "closing the port changed what is attached";
  {
    InNetns inside(ns.netns.get());
    xdp_program__detach(classifier, static_cast<int>(ns.ifindex), XDP_MODE_NATIVE, 0);
  }
  xdp_program__close(classifier);
  bpf_object__close(object);
  alarm(0);
}

}  // namespace

// The stack's master thread: finds the container and its pins, enters its
// network namespace, opens the packet port, starts the worker, and then
// serves the control socket (programs' requests), relays ARP frames the
// kernel sees to lwIP, watches the programs' lifetime ends, and publishes
// counters, until SIGINT or SIGTERM.
#include "netaccel/stack.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "af_xdp_port.h"
#include "netaccel/bpf_loader.h"
#include "netaccel/shm.h"
#include "netaccel/stack_protocol.h"
#include "worker.h"
#ifdef NETACCEL_HAVE_DPDK
#include "dpdk_port.h"
#endif

namespace netaccel::stack {
namespace {

// epoll data: what an event is about (4 bits), for which lane (12 bits),
// and an id (48 bits: a request, or a connection's or listener's).
enum EventKind : uint64_t {
  kSignals = 1,
  kControlListener = 2,  // a lane's control socket
  kArpSocket = 3,        // a lane's ARP packet socket
  kRequest = 4,          // a control connection whose request is not read yet
  kLifetime = 5,         // a connection's or listener's lifetime end
};
constexpr uint64_t event_data(EventKind kind, unsigned lane, uint64_t id = 0) {
  return (uint64_t{kind} << 60) | (uint64_t{lane} << 48) | (id & ((uint64_t{1} << 48) - 1));
}
constexpr EventKind event_kind(uint64_t data) {
  return static_cast<EventKind>(data >> 60);
}
constexpr unsigned event_lane(uint64_t data) {
  return static_cast<unsigned>((data >> 48) & 0xfff);
}
constexpr uint64_t event_id(uint64_t data) {
  return data & ((uint64_t{1} << 48) - 1);
}
constexpr std::size_t kMaxContainers = 4096;

class StackError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string text(int error) {
  return std::strerror(error);
}

struct ResolvedContainer {
  std::string name;
  std::string netns_path;
  netaccel_container_record record{};
};

// A path to the network namespace with `inode`: one of its processes'.
std::string find_netns_path(uint64_t inode) {
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return {};
  std::string found;
  while (dirent* entry = readdir(proc)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    const std::string path = std::string("/proc/") + entry->d_name + "/ns/net";
    struct stat status {};
    if (stat(path.c_str(), &status) == 0 && status.st_ino == inode) {
      found = path;
      break;
    }
  }
  closedir(proc);
  return found;
}

ResolvedContainer resolve(const std::string& spec) {
  const std::vector<bpf::AttachedContainer> attached = bpf::list_attached();
  for (const bpf::AttachedContainer& container : attached) {
    if (spec == container.record.name) {
      ResolvedContainer resolved{container.record.name, {}, container.record};
      const std::string netns = "/run/netns/" + spec;
      struct stat status {};
      resolved.netns_path =
          stat(netns.c_str(), &status) == 0 && status.st_ino == container.record.netns_inode
              ? netns
              : find_netns_path(container.record.netns_inode);
      if (resolved.netns_path.empty()) {
        throw StackError("container '" + spec +
                         "' has no process left to find its network "
                         "namespace by; give its netns path instead");
      }
      return resolved;
    }
  }
  bpf::Container container;
  try {
    container = bpf::resolve_container(spec);
  } catch (const bpf::BpfError& error) {
    throw StackError(error.what());
  }
  for (const bpf::AttachedContainer& candidate : attached) {
    if (candidate.record.netns_inode == container.netns_inode) {
      return ResolvedContainer{candidate.record.name, container.netns_path, candidate.record};
    }
  }
  throw StackError("container '" + spec + "' is not attached: run `netaccel attach " + spec +
                   "` first (the stack needs its XDP classifier and steering map)");
}

UniqueFd open_pinned_map(const std::string& container, const char* map) {
  const std::string path = std::string(bpf::kPinRoot) + "/" + container + "/" + map;
  const int fd = bpf_obj_get(path.c_str());
  if (fd < 0) throw StackError("cannot open " + path + ": " + text(errno));
  return UniqueFd(fd);
}

void enter_netns(int netns, const std::string& path) {
  if (setns(netns, CLONE_NEWNET) != 0) {
    throw StackError("cannot enter the container's network namespace " + path + ": " + text(errno));
  }
}

// The IPv4 default gateway of the current network namespace, 0 when none.
uint32_t default_gateway(const std::string& interface) {
  std::ifstream routes("/proc/net/route");
  std::string line;
  std::getline(routes, line);  // header
  while (std::getline(routes, line)) {
    std::istringstream fields(line);
    std::string name;
    std::string destination;
    std::string gateway;
    fields >> name >> destination >> gateway;
    if (name == interface && destination == "00000000") {
      return static_cast<uint32_t>(std::stoul(gateway, nullptr, 16));  // already network order
    }
  }
  return 0;
}

InterfaceConfig read_interface(const std::string& name) {
  InterfaceConfig config;
  config.name = name;
  const UniqueFd probe(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq request{};
  std::strncpy(request.ifr_name, name.c_str(), IFNAMSIZ - 1);
  const auto query = [&](unsigned long what, const char* describe) {
    if (ioctl(probe.get(), what, &request) != 0) {
      throw StackError("cannot read the " + std::string(describe) + " of " + name + ": " +
                       text(errno));
    }
  };
  query(SIOCGIFINDEX, "index");
  config.ifindex = static_cast<unsigned>(request.ifr_ifindex);
  query(SIOCGIFHWADDR, "hardware address");
  std::memcpy(config.mac.data(), request.ifr_hwaddr.sa_data, 6);
  query(SIOCGIFMTU, "MTU");
  config.mtu = static_cast<unsigned>(request.ifr_mtu);
  if (ioctl(probe.get(), SIOCGIFADDR, &request) != 0) {
    throw StackError("interface " + name + " has no IPv4 address: the stack carries IPv4 TCP");
  }
  config.address = reinterpret_cast<sockaddr_in*>(&request.ifr_addr)->sin_addr.s_addr;
  query(SIOCGIFNETMASK, "netmask");
  config.netmask = reinterpret_cast<sockaddr_in*>(&request.ifr_netmask)->sin_addr.s_addr;
  config.gateway = default_gateway(name);
  return config;
}

// The stack receives only what the container's classifier steers to it: on
// an interface `netaccel attach` did not put it on, the stack would carry
// nothing (and its AF_XDP socket would take the container's xsk_sockets slot).
// The index too must match: a veth made again under the same name has none.
void require_classifier(const ResolvedContainer& container, const InterfaceConfig& interface) {
  const netaccel_container_record& record = container.record;
  std::string attached;
  for (uint32_t i = 0; i < record.interface_count && i < NETACCEL_MAX_INTERFACES; ++i) {
    const std::string name(record.ifname[i], strnlen(record.ifname[i], NETACCEL_IFNAME_BYTES));
    if (name == interface.name && record.ifindex[i] == interface.ifindex) return;
    attached += (attached.empty() ? "" : ", ") + name;
  }
  throw StackError("interface " + interface.name + " of container '" + container.name +
                   "' has no netaccel XDP classifier (attach put it on: " + attached +
                   "), so nothing would reach the stack there");
}

// Steering entries whose owner is no longer running: a stack that was
// killed cannot remove its own.
void remove_stale_steering(int steering_map_fd) {
  netaccel_steer_key key{};
  netaccel_steer_key next{};
  std::vector<netaccel_steer_key> stale;
  const void* previous = nullptr;
  while (bpf_map_get_next_key(steering_map_fd, previous, &next) == 0) {
    netaccel_steer_action action{};
    if (bpf_map_lookup_elem(steering_map_fd, &next, &action) == 0 &&
        action.verdict == NETACCEL_STEER_XSK && action.owner != 0 &&
        kill(static_cast<pid_t>(action.owner), 0) != 0 && errno == ESRCH) {
      stale.push_back(next);
    }
    key = next;
    previous = &key;
  }
  for (const netaccel_steer_key& entry : stale) bpf_map_delete_elem(steering_map_fd, &entry);
}

UniqueFd bind_control_socket(const std::string& path) {
  mkdir("/run/netaccel", 0755);
  mkdir(kStackSocketDirectory, 0755);
  UniqueFd listener(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
  // A socket file nobody answers on is a dead stack's: take its place.
  UniqueFd probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (connect(probe.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
    throw StackError("a stack already serves this container (" + path + ")");
  }
  unlink(path.c_str());
  if (bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::listen(listener.get(), 1024) != 0) {
    throw StackError("cannot listen on " + path + ": " + text(errno));
  }
  // Programs of any user in the container may use their stack, as they may
  // open kernel sockets.
  chmod(path.c_str(), 0666);
  return listener;
}

UniqueFd open_arp_socket(unsigned ifindex) {
  UniqueFd arp(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ARP)));
  sockaddr_ll address{};
  address.sll_family = AF_PACKET;
  address.sll_protocol = htons(ETH_P_ARP);
  address.sll_ifindex = static_cast<int>(ifindex);
  if (!arp || bind(arp.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    throw StackError("cannot open a packet socket for ARP: " + text(errno));
  }
  return arp;
}

#ifdef NETACCEL_HAVE_DPDK
// DPDK's memory on huge pages when there are enough (scripts/setup.sh sets
// some aside); else it runs with --no-huge.
constexpr long kDpdkHugepages = 128;
long hugepages_free() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  long value = 0;
  while (meminfo >> key >> value) {
    if (key == "HugePages_Free:") return value;
    meminfo.ignore(256, '\n');
  }
  return 0;
}
#endif

std::unique_ptr<PacketPort> open_port(const StackOptions& options, const InterfaceConfig& interface,
                                      int xsk_map_fd) {
  if (options.io == "af_xdp") {
    return open_af_xdp_port(AfXdpPortConfig{interface.name, 0, xsk_map_fd, options.force_copy});
  }
#ifdef NETACCEL_HAVE_DPDK
  if (options.io == "dpdk") {
    DpdkPortConfig config;
    config.interface = interface.name;
    config.ifindex = interface.ifindex;
    config.xsk_map_fd = xsk_map_fd;
    config.force_copy = options.force_copy;
    config.hugepages = hugepages_free() >= kDpdkHugepages;
    return open_dpdk_port(config);
  }
#else
  if (options.io == "dpdk") throw StackError("this build of netaccel has no DPDK (libdpdk-dev)");
#endif
  throw StackError("unknown --io '" + options.io + "': af_xdp or dpdk");
}

void write_counters(const std::string& path, const Worker& worker, unsigned lane) {
  const StackCounters c = worker.counters(lane);
  std::ostringstream json;
  json << "{\"container\":\"" << worker.lane(lane).container << "\",\"port\":\""
       << worker.lane(lane).port->describe() << "\",\"containers_served\":" << worker.lanes() << ","
       << "\"pid\":" << getpid() << ",\"rx_packets\":" << c.port.rx_packets
       << ",\"rx_bytes\":" << c.port.rx_bytes << ",\"tx_packets\":" << c.port.tx_packets
       << ",\"tx_bytes\":" << c.port.tx_bytes
       << ",\"drops\":{\"fill_ring_empty\":" << c.port.rx_fill_empty
       << ",\"rx_ring_full\":" << c.port.rx_ring_full << ",\"tx_ring_full\":" << c.port.tx_ring_full
       << ",\"invalid_descriptor\":" << c.port.rx_invalid << ",\"checksum\":" << c.checksum_errors
       << ",\"refused_frames\":" << c.rx_frames_dropped << ",\"tcp_segments\":" << c.tcp_dropped
       << "},\"partial_checksums\":" << c.partial_checksums
       << ",\"tcp_retransmissions\":" << c.tcp_retransmissions
       << ",\"lwip_memory_errors\":" << c.lwip_memory_errors
       << ",\"connections_opened\":" << c.connections_opened
       << ",\"connections_active\":" << c.connections_active << ",\"listeners\":" << c.listeners
       << ",\"tx_kicks\":" << c.port.tx_kicks << ",\"rx_wakeups\":" << c.port.rx_wakeups
       << ",\"worker_sleeps\":" << c.worker_sleeps << "}\n";
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << json.str();
  }
  rename(temporary.c_str(), path.c_str());
}

// What the master serves for one container.
struct ContainerEndpoint {
  std::string name;
  std::string socket_path;
  std::string counters_path;
  UniqueFd listener;
  UniqueFd arp;
};

class Master {
 public:
  Master(std::vector<ContainerEndpoint>& endpoints, Worker& worker, int epoll_fd)
      : endpoints_(endpoints), worker_(worker), epoll_(epoll_fd) {}

  void run(std::atomic<bool>& stop, int signal_fd) {
    add(signal_fd, event_data(kSignals, 0), EPOLLIN);
    for (unsigned lane = 0; lane < endpoints_.size(); ++lane) {
      add(endpoints_[lane].listener.get(), event_data(kControlListener, lane), EPOLLIN);
      add(endpoints_[lane].arp.get(), event_data(kArpSocket, lane), EPOLLIN);
    }
    epoll_event events[64];
    // The worker publishes its counters every 100 ms; writing them more
    // often (after every request or hang-up) would only cost system calls.
    auto written_at = std::chrono::steady_clock::time_point{};
    while (!stop.load()) {
      const int ready = epoll_wait(epoll_, events, 64, 100);
      for (int i = 0; i < ready; ++i) handle(events[i].data.u64, stop, signal_fd);
      const auto now = std::chrono::steady_clock::now();
      if (now - written_at < std::chrono::milliseconds(100)) continue;
      written_at = now;
      for (unsigned lane = 0; lane < endpoints_.size(); ++lane) {
        write_counters(endpoints_[lane].counters_path, worker_, lane);
      }
    }
  }

 private:
  void add(int fd, uint64_t data, uint32_t events) {
    epoll_event event{};
    event.events = events;
    event.data.u64 = data;
    epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &event);
  }

  void handle(uint64_t data, std::atomic<bool>& stop, int signal_fd) {
    const unsigned lane = event_lane(data);
    switch (event_kind(data)) {
      case kSignals: {
        signalfd_siginfo info{};
        if (read(signal_fd, &info, sizeof info) > 0) stop = true;
        break;
      }
      case kControlListener:
        for (;;) {
          const int client = accept4(endpoints_[lane].listener.get(), nullptr, nullptr,
                                     SOCK_CLOEXEC | SOCK_NONBLOCK);
          if (client < 0) break;
          const uint64_t id = next_request_++;
          pending_.emplace(id, UniqueFd(client));
          add(client, event_data(kRequest, lane, id), EPOLLIN | EPOLLRDHUP);
        }
        break;
      case kArpSocket:
        relay_arp(lane);
        break;
      case kLifetime: {
        Command command;
        command.kind = Command::kHangup;
        command.lane = lane;
        command.id = event_id(data);
        worker_.post(std::move(command));
        break;
      }
      case kRequest:
        read_request(lane, event_id(data));
        break;
    }
  }

  void read_request(unsigned lane, uint64_t id) {
    auto found = pending_.find(id);
    if (found == pending_.end()) return;
    UniqueFd control = std::move(found->second);
    pending_.erase(found);
    epoll_ctl(epoll_, EPOLL_CTL_DEL, control.get(), nullptr);
    StackRequest request;
    const ssize_t got = recv(control.get(), &request, sizeof request, MSG_DONTWAIT);
    const bool valid = got == static_cast<ssize_t>(sizeof request) &&
                       request.magic == kStackMagic && request.version == kStackVersion &&
                       (request.op == kStackConnect || request.op == kStackListen);
    if (!valid) {
      // Garbage or another version: one clear answer, then the door closes.
      if (got > 0) {
        StackReply reply;
        reply.kind = kStackFailed;
        reply.error = EPROTO;
        send(control.get(), &reply, sizeof reply, MSG_DONTWAIT | MSG_NOSIGNAL);
      }
      return;
    }
    Command command;
    command.kind = Command::kRequest;
    command.lane = lane;
    command.control = std::move(control);
    command.request = request;
    worker_.post(std::move(command));
  }

  void relay_arp(unsigned lane) {
    unsigned char frame[ETH_FRAME_LEN];
    for (;;) {
      sockaddr_ll from{};
      socklen_t length = sizeof from;
      const ssize_t got = recvfrom(endpoints_[lane].arp.get(), frame, sizeof frame, MSG_DONTWAIT,
                                   reinterpret_cast<sockaddr*>(&from), &length);
      if (got <= 0) return;
      // Our own requests come back as outgoing copies: lwIP sent them.
      if (from.sll_pkttype == PACKET_OUTGOING) continue;
      Command command;
      command.kind = Command::kArpFrame;
      command.lane = lane;
      command.frame.assign(frame, frame + got);
      worker_.post(std::move(command));
    }
  }

  std::vector<ContainerEndpoint>& endpoints_;
  Worker& worker_;
  int epoll_;
  uint64_t next_request_ = 1;
  std::map<uint64_t, UniqueFd> pending_;
};

// Removes the control sockets and counters files made so far, however
// run_stack ends.
class EndpointFiles {
 public:
  explicit EndpointFiles(const std::vector<ContainerEndpoint>& endpoints) : endpoints_(endpoints) {}
  ~EndpointFiles() {
    // Only a container's own stack made them: a stack refused because
    // another serves the container (no listener) must leave the other's be.
    for (const ContainerEndpoint& endpoint : endpoints_) {
      if (!endpoint.listener) continue;
      unlink(endpoint.socket_path.c_str());
      unlink(endpoint.counters_path.c_str());
    }
  }

 private:
  const std::vector<ContainerEndpoint>& endpoints_;
};

}  // namespace

std::string stack_counters_path(const std::string& container_name) {
  return std::string(kStackSocketDirectory) + "/" + container_name + ".json";
}

namespace {

// One stack process: a master and a worker thread for `options.containers`.
int run_one_stack(const StackOptions& options) {
  try {
    if (options.containers.empty()) throw StackError("name at least one container");
    if (options.containers.size() > kMaxContainers) throw StackError("too many containers");
    bpf::require_privileges();
    // Blocked before any thread starts, so that only signalfd sees them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    signal(SIGPIPE, SIG_IGN);
    const UniqueFd signal_fd(signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
    const UniqueFd home(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    const UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
    const int epoll_fd = epoll.get();
    Worker worker([epoll_fd](unsigned lane, int fd, uint64_t id) {
      epoll_event event{};
      event.events = EPOLLRDHUP | EPOLLHUP;
      event.data.u64 = event_data(kLifetime, lane, id);
      epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
    });

    std::vector<ContainerEndpoint> endpoints;
    endpoints.reserve(options.containers.size());
    const EndpointFiles files(endpoints);
    for (const std::string& spec : options.containers) {
      ResolvedContainer container = resolve(spec);
      for (const ContainerEndpoint& other : endpoints) {
        if (other.name == container.name) throw StackError("container '" + spec + "' named twice");
      }
      UniqueFd steering = open_pinned_map(container.name, "steering");
      UniqueFd xsk_map = open_pinned_map(container.name, "xsk_sockets");
      std::string interface_name = options.interface;
      if (interface_name.empty()) {
        if (container.record.interface_count == 0) {
          throw StackError("container '" + container.name + "' has no interface to carry");
        }
        interface_name = container.record.ifname[0];
      }
      UniqueFd netns(open(container.netns_path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!netns) {
        throw StackError("cannot open the network namespace " + container.netns_path + ": " +
                         text(errno));
      }
      // The container's interface, its sockets and its packet port are made
      // from inside its namespace; then back home for the next one.
      enter_netns(netns.get(), container.netns_path);
      ContainerEndpoint& endpoint = endpoints.emplace_back();
      endpoint.name = container.name;
      endpoint.socket_path = stack_socket_path(container.name);
      endpoint.counters_path = stack_counters_path(container.name);
      const InterfaceConfig interface = read_interface(interface_name);
      require_classifier(container, interface);
      remove_stale_steering(steering.get());
      endpoint.listener = bind_control_socket(endpoint.socket_path);
      endpoint.arp = open_arp_socket(interface.ifindex);
      std::unique_ptr<PacketPort> port = open_port(options, interface, xsk_map.get());
      if (setns(home.get(), CLONE_NEWNET) != 0) throw StackError("cannot return to our namespace");
      PortTable ports(std::move(steering), std::move(netns), static_cast<uint32_t>(getpid()),
                      interface.address);
      const unsigned lane =
          worker.add_lane(container.name, interface, std::move(port), std::move(ports));
      char address[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &interface.address, address, sizeof address);
      std::cerr << "netaccel stack: container " << container.name << ", " << address << " on "
                << worker.lane(lane).port->describe() << "; programs connect at "
                << endpoint.socket_path << std::endl;
    }

    std::atomic<bool> stop{false};
    std::thread data_plane([&] { worker.run(stop); });
    if (options.worker_cpu >= 0) {
      // A polling worker on a core of its own does not wait for the
      // scheduler to bring back the programs it serves, nor they for it.
      cpu_set_t cpus;
      CPU_ZERO(&cpus);
      CPU_SET(options.worker_cpu, &cpus);
      const int error = pthread_setaffinity_np(data_plane.native_handle(), sizeof cpus, &cpus);
      if (error != 0) {
        stop = true;
        data_plane.join();
        throw StackError("--cpu " + std::to_string(options.worker_cpu) + ": " + text(error));
      }
    }
    Master master(endpoints, worker, epoll_fd);
    master.run(stop, signal_fd.get());
    data_plane.join();
    return 0;
  } catch (const std::exception& error) {
    std::cerr << "netaccel stack: " << error.what() << std::endl;
    return 1;
  }
}

// --workers N: lwIP keeps its state per process, so each worker is a stack
// process of its own (a master and a worker thread), and the containers are
// dealt to them in turn: each worker runs TCP for the flows of its
// containers. A container's interface has one queue on a veth, so a
// container is the unit a worker takes. This process waits for them,
// passes SIGINT and SIGTERM on, and stops them all when one fails.
int run_worker_processes(const StackOptions& options) {
  if (options.workers > options.containers.size()) {
    std::cerr << "netaccel stack: --workers " << options.workers << " needs at least as many "
              << "containers (each worker serves whole containers; " << options.containers.size()
              << " given)" << std::endl;
    return 1;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  const UniqueFd signal_fd(signalfd(-1, &signals, SFD_CLOEXEC));
  std::vector<pid_t> children;
  for (unsigned worker = 0; worker < options.workers; ++worker) {
    StackOptions share = options;
    share.workers = 1;
    share.containers.clear();
    for (std::size_t i = worker; i < options.containers.size(); i += options.workers) {
      share.containers.push_back(options.containers[i]);
    }
    if (options.worker_cpu >= 0) share.worker_cpu = options.worker_cpu + static_cast<int>(worker);
    const pid_t child = fork();
    if (child == 0) _exit(run_one_stack(share));
    if (child < 0) {
      std::cerr << "netaccel stack: cannot start worker " << worker << ": " << text(errno)
                << std::endl;
      break;
    }
    children.push_back(child);
  }
  int status = children.size() == options.workers ? 0 : 1;
  bool stopping = status != 0;
  const auto stop_all = [&] {
    for (const pid_t child : children) kill(child, SIGTERM);
    stopping = true;
  };
  if (stopping) stop_all();
  std::size_t running = children.size();
  while (running > 0) {
    signalfd_siginfo info{};
    if (read(signal_fd.get(), &info, sizeof info) != sizeof info) continue;
    if (info.ssi_signo != SIGCHLD) {
      stop_all();
      continue;
    }
    int child_status = 0;
    while (waitpid(-1, &child_status, WNOHANG) > 0) {
      --running;
      const int code = WIFEXITED(child_status) ? WEXITSTATUS(child_status) : 1;
      if (code != 0 && status == 0) status = code;
      // A worker that ends on its own (it failed) ends the others.
      if (!stopping) stop_all();
    }
  }
  return status;
}

}  // namespace

int run_stack(const StackOptions& options) {
  return options.workers > 1 ? run_worker_processes(options) : run_one_stack(options);
}

}  // namespace netaccel::stack

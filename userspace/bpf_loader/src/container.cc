// Resolving CONTAINER (netns name or path, PID, cgroup v2 directory) to its
// network namespace (identity and cookie), interfaces and addresses.
#include <dirent.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "internal.h"
#include "netaccel/bpf_loader.h"

namespace netaccel::bpf {

namespace {

constexpr const char* kNamedNetnsDirectory = "/run/netns";
constexpr int kCapNetAdmin = 12;
constexpr int kCapSysAdmin = 21;

bool all_digits(const std::string& text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

struct NetnsIdentity {
  std::uint64_t inode = 0;
  std::uint64_t device = 0;
};

std::optional<NetnsIdentity> netns_of(const std::string& path) {
  struct stat status {};
  if (stat(path.c_str(), &status) != 0) return std::nullopt;
  return NetnsIdentity{status.st_ino, status.st_dev};
}

std::vector<std::string> process_ids() {
  std::vector<std::string> pids;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) throw BpfError("cannot list /proc: " + error_text(errno));
  while (dirent* entry = readdir(proc)) {
    if (all_digits(entry->d_name)) pids.emplace_back(entry->d_name);
  }
  closedir(proc);
  return pids;
}

// The name of the netns in /run/netns, else netns-<inode>: the same
// container gets the same name whichever way the user names it.
std::string container_name(const NetnsIdentity& netns) {
  if (DIR* named = opendir(kNamedNetnsDirectory)) {
    std::string found;
    while (dirent* entry = readdir(named)) {
      const std::string name = entry->d_name;
      if (name == "." || name == "..") continue;
      const auto identity = netns_of(std::string(kNamedNetnsDirectory) + "/" + name);
      if (identity && identity->inode == netns.inode && identity->device == netns.device) {
        found = name;
        break;
      }
    }
    closedir(named);
    if (!found.empty()) return found;
  }
  return "netns-" + std::to_string(netns.inode);
}

bool is_network_namespace(const std::string& path) {
  struct statfs filesystem {};
  if (statfs(path.c_str(), &filesystem) != 0 || filesystem.f_type != NSFS_MAGIC) return false;
  const UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  return fd && ioctl(fd.get(), NS_GET_NSTYPE) == CLONE_NEWNET;
}

void check_not_host(const NetnsIdentity& netns, const std::string& spec) {
  const auto host = netns_of("/proc/self/ns/net");
  if (host && host->inode == netns.inode && host->device == netns.device) {
    throw BpfError("'" + spec +
                   "' is in this host's own network namespace, not a container's: "
                   "netaccel attaches containers only");
  }
}

void set_netns(Container& container, const std::string& path, const NetnsIdentity& netns,
               const std::string& spec) {
  check_not_host(netns, spec);
  container.netns_path = path;
  container.netns_inode = netns.inode;
  container.netns_device = netns.device;
  container.name = container_name(netns);
}

Container from_netns_path(const std::string& path, const std::string& spec) {
  const auto netns = netns_of(path);
  if (!netns || !is_network_namespace(path)) {
    throw BpfError("'" + spec + "' is not a network namespace (" + path + ")");
  }
  Container container;
  set_netns(container, path, *netns, spec);
  return container;
}

Container from_pid(const std::string& pid) {
  const std::string netns_path = "/proc/" + pid + "/ns/net";
  const auto netns = netns_of(netns_path);
  if (!netns) throw BpfError("no process with PID " + pid);
  Container container;
  set_netns(container, netns_path, *netns, "PID " + pid);
  return container;
}

Container from_cgroup(const std::string& directory) {
  std::ifstream procs(directory + "/cgroup.procs");
  std::string pid;
  std::set<std::pair<std::uint64_t, std::uint64_t>> namespaces;
  std::string netns_path;
  NetnsIdentity netns;
  while (procs >> pid) {
    const std::string path = "/proc/" + pid + "/ns/net";
    if (const auto identity = netns_of(path)) {
      namespaces.emplace(identity->inode, identity->device);
      netns_path = path;
      netns = *identity;
    }
  }
  if (namespaces.empty()) {
    throw BpfError("cgroup " + directory +
                   " holds no process, so its network namespace is unknown: start the "
                   "container's processes first");
  }
  if (namespaces.size() > 1) {
    throw BpfError("the processes of cgroup " + directory +
                   " are in several network namespaces: a container has one");
  }
  Container container;
  set_netns(container, netns_path, netns, directory);
  return container;
}

bool is_link_local(const in6_addr& address) {
  return address.s6_addr[0] == 0xfe && (address.s6_addr[1] & 0xc0) == 0x80;
}

// The cookie by which the BPF programs know the namespace
// (bpf_get_netns_cookie): any socket of the namespace reports it.
std::uint64_t current_netns_cookie(const std::string& container) {
  const UniqueFd probe(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  std::uint64_t cookie = 0;
  socklen_t length = sizeof cookie;
  if (!probe || getsockopt(probe.get(), SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &length) != 0) {
    throw BpfError("cannot read the network namespace cookie of '" + container +
                   "' (SO_NETNS_COOKIE, Linux 5.14): " + error_text(errno));
  }
  return cookie;
}

// Cookie, interfaces and addresses, read inside the container's netns.
void read_interfaces(Container& container) {
  NetnsScope inside(container.netns_path);
  container.netns_cookie = current_netns_cookie(container.name);
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) {
    throw BpfError("cannot list the interfaces of '" + container.name + "': " + error_text(errno));
  }
  std::set<std::string> names;
  std::set<Address> addresses;
  for (const ifaddrs* entry = list; entry != nullptr; entry = entry->ifa_next) {
    if ((entry->ifa_flags & IFF_LOOPBACK) != 0) continue;
    names.insert(entry->ifa_name);
    if (entry->ifa_addr == nullptr) continue;
    Address address{};
    if (entry->ifa_addr->sa_family == AF_INET) {
      const auto* ipv4 = reinterpret_cast<const sockaddr_in*>(entry->ifa_addr);
      address[10] = address[11] = 0xff;
      std::memcpy(address.data() + 12, &ipv4->sin_addr, 4);
      addresses.insert(address);
    } else if (entry->ifa_addr->sa_family == AF_INET6) {
      const auto* ipv6 = reinterpret_cast<const sockaddr_in6*>(entry->ifa_addr);
      if (is_link_local(ipv6->sin6_addr)) continue;
      std::memcpy(address.data(), &ipv6->sin6_addr, address.size());
      addresses.insert(address);
    }
  }
  freeifaddrs(list);
  for (const std::string& name : names) {
    container.interfaces.push_back({name, if_nametoindex(name.c_str())});
  }
  container.addresses.assign(addresses.begin(), addresses.end());
  if (container.interfaces.empty()) {
    throw BpfError("container '" + container.name + "' has no network interface but loopback");
  }
  if (container.interfaces.size() > NETACCEL_MAX_INTERFACES ||
      container.addresses.size() > NETACCEL_MAX_ADDRESSES) {
    throw BpfError("container '" + container.name + "' has more than " +
                   std::to_string(NETACCEL_MAX_INTERFACES) + " interfaces or " +
                   std::to_string(NETACCEL_MAX_ADDRESSES) + " addresses");
  }
}

}  // namespace

// The mount point of the cgroup v2 hierarchy ("" when there is none).
std::string cgroup2_mount() {
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    // "... MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS"
    const std::size_t separator = line.find(" - ");
    if (separator == std::string::npos) continue;
    std::istringstream after(line.substr(separator + 3));
    std::string fstype;
    after >> fstype;
    if (fstype != "cgroup2") continue;
    std::istringstream before(line.substr(0, separator));
    std::string field, mount_point;
    for (int i = 0; i < 5 && before >> field; ++i) {
      if (i == 4) mount_point = field;
    }
    return mount_point;
  }
  return {};
}

std::string find_netns_path(std::uint64_t inode, std::uint64_t device,
                            const std::string& attached_by) {
  const auto is_it = [&](const std::string& path) {
    const auto identity = netns_of(path);
    return identity && identity->inode == inode && identity->device == device;
  };
  if (!attached_by.empty() && is_it(attached_by)) return attached_by;
  if (DIR* named = opendir(kNamedNetnsDirectory)) {
    std::string found;
    while (const dirent* entry = readdir(named)) {
      const std::string path = std::string(kNamedNetnsDirectory) + "/" + entry->d_name;
      if (entry->d_name[0] != '.' && is_it(path)) {
        found = path;
        break;
      }
    }
    closedir(named);
    if (!found.empty()) return found;
  }
  for (const std::string& pid : process_ids()) {
    const std::string path = "/proc/" + pid + "/ns/net";
    if (is_it(path)) return path;
  }
  return {};
}

std::string error_text(int error) {
  return std::strerror(error);
}

NetnsScope::NetnsScope(const std::string& netns_path)
    : original_(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) {
  const UniqueFd target(open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!original_ || !target || setns(target.get(), CLONE_NEWNET) != 0) {
    throw BpfError("cannot enter network namespace " + netns_path + ": " + error_text(errno));
  }
}

NetnsScope::~NetnsScope() {
  setns(original_.get(), CLONE_NEWNET);
}

void require_privileges() {
  std::ifstream status("/proc/self/status");
  std::string line;
  std::uint64_t effective = 0;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) == 0) effective = std::stoull(line.substr(7), nullptr, 16);
  }
  const bool privileged =
      (effective >> kCapSysAdmin & 1) != 0 && (effective >> kCapNetAdmin & 1) != 0;
  if (!privileged) {
    throw BpfError(
        "needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN: to load BPF programs, enter containers' "
        "network namespaces and read the pins)");
  }
}

Container resolve_container(const std::string& spec) {
  Container container;
  if (spec.empty()) throw BpfError("no container given");
  if (all_digits(spec)) {
    container = from_pid(spec);
  } else if (spec.front() == '/') {
    struct statfs filesystem {};
    if (statfs(spec.c_str(), &filesystem) != 0) {
      throw BpfError("container '" + spec + "': " + error_text(errno));
    }
    container =
        filesystem.f_type == CGROUP2_SUPER_MAGIC ? from_cgroup(spec) : from_netns_path(spec, spec);
  } else if (spec.find('/') == std::string::npos && spec != "." && spec != "..") {
    const std::string path = std::string(kNamedNetnsDirectory) + "/" + spec;
    if (access(path.c_str(), F_OK) != 0) {
      throw BpfError("no container '" + spec + "': not a PID, a path, or a network namespace in " +
                     kNamedNetnsDirectory);
    }
    container = from_netns_path(path, spec);
  } else {
    throw BpfError("container '" + spec +
                   "': give a netns name, an absolute netns or cgroup path, or a PID");
  }
  read_interfaces(container);
  return container;
}

}  // namespace netaccel::bpf

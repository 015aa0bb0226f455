// netaccel attach / detach: load, attach and pin the BPF programs of a
// container, and remove exactly what was pinned.
#include <dirent.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <thread>

#include "internal.h"
#include "netaccel/bpf_loader.h"
#include "sockmap.skel.h"
#include "xdp_classifier.skel.h"

namespace netaccel::bpf {

namespace {

constexpr long kBpfFsMagic = 0xcafe4a11;  // BPF_FS_MAGIC
constexpr std::chrono::milliseconds kDrainBeforeFree{200};

// libbpf's warnings (verifier logs among them) go to our stderr; its
// informational chatter does not. libbpf starts its lines with "libbpf: ".
int print_libbpf_log(libbpf_print_level level, const char* format, va_list arguments) {
  if (level != LIBBPF_WARN) return 0;
  return std::vfprintf(stderr, format, arguments);
}

void route_libbpf_log() {
  libbpf_set_print(print_libbpf_log);
  route_libxdp_log();
}

// Serialises attach and detach across processes.
class AttachLock {
 public:
  AttachLock() {
    mkdir("/run/netaccel", 0755);
    fd_ = UniqueFd(open(kLockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!fd_ || flock(fd_.get(), LOCK_EX) != 0) {
      throw BpfError(std::string("cannot take the lock ") + kLockPath + ": " + error_text(errno));
    }
  }

 private:
  UniqueFd fd_;  // closing it releases the lock
};

// The BPF filesystem at /sys/fs/bpf, mounted if it is not (as bpftool does).
void ensure_bpffs() {
  struct statfs filesystem {};
  if (statfs(kBpfFsRoot, &filesystem) == 0 && filesystem.f_type == kBpfFsMagic) return;
  if (mount("bpf", kBpfFsRoot, "bpf", 0, "mode=0700") != 0) {
    throw BpfError(std::string("cannot mount the BPF filesystem on ") + kBpfFsRoot + ": " +
                   error_text(errno));
  }
  // `ip netns exec` and the like give a mount namespace of their own: pins
  // in a BPF filesystem mounted there vanish with it, and so do the programs.
  struct stat ours {};
  struct stat init {};
  if (stat("/proc/self/ns/mnt", &ours) == 0 && stat("/proc/1/ns/mnt", &init) == 0 &&
      ours.st_ino != init.st_ino) {
    std::cerr << "netaccel: warning: mounted a BPF filesystem on " << kBpfFsRoot
              << " in a private mount namespace: the pins (and the attachment) last only as "
                 "long as that namespace\n";
  }
}

bool exists(const std::string& path) {
  return access(path.c_str(), F_OK) == 0;
}

void check(int error, const std::string& what) {
  if (error < 0) throw BpfError(what + ": " + error_text(-error));
}

template <typename Skeleton, void (*Destroy)(Skeleton*)>
struct SkeletonDeleter {
  void operator()(Skeleton* skeleton) const { Destroy(skeleton); }
};
using SockmapSkeleton = std::unique_ptr<sockmap, SkeletonDeleter<sockmap, sockmap::destroy>>;
using XdpSkeleton =
    std::unique_ptr<xdp_classifier, SkeletonDeleter<xdp_classifier, xdp_classifier::destroy>>;

void pin_link(bpf_link* link, const std::string& path, const std::string& what) {
  const long error = libbpf_get_error(link);
  if (link == nullptr || error != 0) {
    throw BpfError("cannot attach " + what + ": " +
                   error_text(static_cast<int>(error != 0 ? -error : errno)));
  }
  const int pinned = bpf_link__pin(link, path.c_str());
  bpf_link__destroy(link);  // the pin keeps it attached
  check(pinned, "cannot pin " + what + " at " + path);
}

// Refuses addresses that another attached container registered.
void check_addresses_free(const Container& container) {
  const UniqueFd endpoints = open_pin(shared_pin(kEndpointsPin));
  if (!endpoints) return;
  for (const Address& address : container.addresses) {
    netaccel_endpoint owner{};
    if (bpf_map_lookup_elem(endpoints.get(), address.data(), &owner) == 0) {
      throw BpfError("address " + address_to_string(address) + " of container '" + container.name +
                     "' is already registered by attached container id " +
                     std::to_string(owner.container_id) +
                     ": the short-circuit tells containers apart by address");
    }
  }
}

// Copies `text` into a record's field, refusing what does not fit.
template <std::size_t Size>
void set_field(char (&field)[Size], const std::string& text, const std::string& container,
               const char* what) {
  if (text.size() >= Size) {
    throw BpfError("container '" + container + "': its " + what + " '" + text +
                   "' is longer than " + std::to_string(Size - 1) + " bytes");
  }
  std::snprintf(field, Size, "%s", text.c_str());
}

netaccel_container_record make_record(const Container& container, const AttachOptions& options) {
  netaccel_container_record record{};
  set_field(record.name, container.name, container.name, "name");
  set_field(record.netns_path, container.netns_path, container.name, "network namespace path");
  set_field(record.cni_container_id, options.cni_container_id, container.name, "CNI container id");
  set_field(record.cni_network, options.cni_network, container.name, "CNI network name");
  const std::string cgroup_root = cgroup2_mount();
  if (cgroup_root.empty())
    throw BpfError("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)");
  set_field(record.cgroup_path, cgroup_root, container.name, "cgroup v2 root");
  struct stat root {};
  if (stat(cgroup_root.c_str(), &root) != 0)
    throw BpfError("cgroup v2 root " + cgroup_root + ": " + error_text(errno));
  // The inode number of a cgroup v2 directory is its cgroup id.
  record.cgroup_id = root.st_ino;
  record.netns_inode = container.netns_inode;
  record.netns_device = container.netns_device;
  record.netns_cookie = container.netns_cookie;
  // A netns inode is unique among live namespaces and fits 32 bits (proc inums).
  record.container_id = static_cast<__u32>(container.netns_inode);
  record.interface_count = static_cast<__u32>(container.interfaces.size());
  for (std::size_t i = 0; i < container.interfaces.size(); ++i) {
    record.ifindex[i] = container.interfaces[i].ifindex;
    std::snprintf(record.ifname[i], sizeof record.ifname[i], "%s",
                  container.interfaces[i].name.c_str());
  }
  record.address_count = static_cast<__u32>(container.addresses.size());
  for (std::size_t i = 0; i < container.addresses.size(); ++i) {
    std::memcpy(record.addresses[i], container.addresses[i].data(), NETACCEL_ADDRESS_BYTES);
  }
  return record;
}

// The short-circuit: shared maps and the sock_ops link at the cgroup v2 root
// (created by the first attach, reused after), sk_msg on the sockhash, and
// the container's namespace cookie and addresses registered.
void attach_sockmap(const Container& container, const netaccel_container_record& record) {
  SockmapSkeleton skeleton(sockmap::open());
  if (!skeleton) throw BpfError("cannot open the sockmap BPF object: " + error_text(errno));
  check(bpf_map__set_pin_path(skeleton->maps.established_sockets, shared_pin(kSockhashPin).c_str()),
        "sockhash pin path");
  check(bpf_map__set_pin_path(skeleton->maps.local_endpoints, shared_pin(kEndpointsPin).c_str()),
        "endpoint map pin path");
  check(bpf_map__set_pin_path(skeleton->maps.sockmap_stats, shared_pin(kSockmapStatsPin).c_str()),
        "sockmap counters pin path");
  check(bpf_map__set_pin_path(skeleton->maps.attached_netns, shared_pin(kAttachedNetnsPin).c_str()),
        "attached namespace map pin path");
  check(bpf_map__set_pin_path(skeleton->maps.socket_generations,
                              shared_pin(kSocketGenerationsPin).c_str()),
        "socket generation map pin path");
  check(sockmap::load(skeleton.get()), "cannot load the sockmap programs");

  // Attaching again replaces the sk_msg program with this identical one;
  // sockets already in the sockhash keep the one they started with.
  check(bpf_prog_attach(bpf_program__fd(skeleton->progs.sk_msg_redirect),
                        bpf_map__fd(skeleton->maps.established_sockets), BPF_SK_MSG_VERDICT, 0),
        "cannot attach sk_msg to the sockhash");

  // At the root, sock_ops sees the sockets of every process, in whichever
  // cgroup a runtime puts it and whenever it starts: the namespace cookie
  // tells the containers apart.
  const std::string link_pin = shared_pin(kSockOpsLinkPin);
  if (!exists(link_pin)) {
    const UniqueFd root(open(record.cgroup_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root) {
      throw BpfError(std::string("cannot open the cgroup v2 root ") + record.cgroup_path + ": " +
                     error_text(errno));
    }
    pin_link(bpf_program__attach_cgroup(skeleton->progs.sockops_track, root.get()), link_pin,
             std::string("sock_ops to the cgroup v2 root ") + record.cgroup_path);
  }

  const std::vector<netaccel_sockmap_counters> zeros(
      static_cast<std::size_t>(libbpf_num_possible_cpus()));
  check(bpf_map_update_elem(bpf_map__fd(skeleton->maps.sockmap_stats), &record.container_id,
                            zeros.data(), BPF_NOEXIST),
        "cannot create the container's sockmap counters");
  // A new generation for this attachment: sockets left in the sockhash by
  // an earlier one are not redirected again (netaccel_bpf.h says why).
  std::random_device random;
  const netaccel_endpoint endpoint{record.container_id, std::max(1u, static_cast<__u32>(random()))};
  for (const Address& address : container.addresses) {
    if (bpf_map_update_elem(bpf_map__fd(skeleton->maps.local_endpoints), address.data(), &endpoint,
                            BPF_NOEXIST) != 0) {
      throw BpfError("cannot register address " + address_to_string(address) + ": " +
                     error_text(errno));
    }
  }
  // Registering the namespace comes last: it switches the short-circuit on.
  const netaccel_attached_netns netns{record.container_id};
  if (bpf_map_update_elem(bpf_map__fd(skeleton->maps.attached_netns), &record.netns_cookie, &netns,
                          BPF_NOEXIST) != 0) {
    throw BpfError("cannot register the network namespace (cookie " +
                   std::to_string(record.netns_cookie) + "): " + error_text(errno));
  }
}

// The classifier: one instance per container, its maps pinned in the
// container's directory, attached to each interface through libxdp's
// dispatcher (xdp_dispatcher.cc says where it runs there). libxdp loads the
// object itself, as an extension of its dispatcher, and libbpf pins the maps
// as it loads. The program is pinned beside them and the record written as
// soon as it is attached somewhere: detach finds the program by its id in the
// dispatchers, and the container's namespace by the record, even when a later
// interface fails. Returns whether the kernel runs it in generic (skb) mode.
bool attach_xdp(const Container& container, netaccel_container_record& record) {
  XdpSkeleton skeleton(xdp_classifier::open());
  if (!skeleton) throw BpfError("cannot open the XDP BPF object: " + error_text(errno));
  bpf_map* map = nullptr;
  bpf_object__for_each_map(map, skeleton->obj) {
    check(bpf_map__set_pin_path(map, container_pin(container.name, bpf_map__name(map)).c_str()),
          std::string("pin path of ") + bpf_map__name(map));
  }
  const XdpProgram classifier =
      classifier_program(skeleton->obj, bpf_program__name(skeleton->progs.xdp_classify));
  const std::string program_pin = container_pin(container.name, kXdpProgramPin);
  const auto write_record = [&] {
    const __u32 zero = 0;
    if (bpf_map_update_elem(bpf_map__fd(skeleton->maps.container_record), &zero, &record,
                            BPF_ANY) != 0) {
      throw BpfError("cannot write the container record: " + error_text(errno));
    }
  };

  bool generic = false;
  std::string alone;  // interfaces where libxdp attached the classifier without a dispatcher
  {
    NetnsScope inside(container.netns_path);
    for (const ContainerInterface& interface : container.interfaces) {
      if (!attach_classifier(classifier.get(), interface)) {
        alone += (alone.empty() ? "" : ", ") + interface.name;
      }
      if (!exists(program_pin)) {
        check(bpf_program__pin(skeleton->progs.xdp_classify, program_pin.c_str()),
              "cannot pin the XDP classifier at " + program_pin);
        write_record();
      }
      LIBBPF_OPTS(bpf_xdp_query_opts, query);
      if (bpf_xdp_query(static_cast<int>(interface.ifindex), 0, &query) == 0 &&
          query.attach_mode == XDP_ATTACHED_SKB) {
        generic = true;
      }
    }
  }
  if (!alone.empty()) {
    std::cerr << "netaccel: note: libxdp attached the XDP classifier to " << alone
              << " without its dispatcher (this kernel refuses the freplace programs the "
                 "dispatcher is made of): no other XDP program can run there while the "
                 "container is attached\n";
  }
  record.xdp_generic = generic ? 1 : 0;
  write_record();
  return generic;
}

void remove_pin(const std::string& path) {
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    std::cerr << "netaccel: cannot remove " << path << ": " << error_text(errno) << "\n";
  }
}

void remove_shared_maps_if_last();

// Removes whatever of the container is pinned, from a complete attach or a
// failed one, then the shared maps once no container is left.
void remove_container(const std::string& name) {
  netaccel_container_record record{};
  const bool have_record = read_record(name, record);
  if (have_record) {
    // Unregistering the namespace stops new sockets from entering the
    // sockhash; unregistering the addresses switches the short-circuit off
    // for those already there. They stay in the sockhash until they close:
    // taking a socket out drops bytes already handed to it and not yet read.
    if (const UniqueFd namespaces = open_pin(shared_pin(kAttachedNetnsPin))) {
      netaccel_attached_netns owner{};
      if (bpf_map_lookup_elem(namespaces.get(), &record.netns_cookie, &owner) == 0 &&
          owner.container_id == record.container_id) {
        bpf_map_delete_elem(namespaces.get(), &record.netns_cookie);
      }
    }
    if (const UniqueFd endpoints = open_pin(shared_pin(kEndpointsPin))) {
      for (__u32 i = 0; i < record.address_count && i < NETACCEL_MAX_ADDRESSES; ++i) {
        netaccel_endpoint owner{};
        if (bpf_map_lookup_elem(endpoints.get(), record.addresses[i], &owner) == 0 &&
            owner.container_id == record.container_id) {
          bpf_map_delete_elem(endpoints.get(), record.addresses[i]);
        }
      }
    }
    if (const UniqueFd counters = open_pin(shared_pin(kSockmapStatsPin))) {
      bpf_map_delete_elem(counters.get(), &record.container_id);
    }
  }
  // The classifier leaves the interfaces before its pins go; what it could
  // not leave is reported once everything else is removed.
  std::string xdp_failure;
  if (have_record) {
    try {
      detach_classifier(name, record);
    } catch (const BpfError& error) {
      xdp_failure = error.what();
    }
  }
  const std::string directory = std::string(kPinRoot) + "/" + name;
  if (DIR* pins = opendir(directory.c_str())) {
    std::vector<std::string> files;
    while (dirent* entry = readdir(pins)) {
      if (entry->d_type != DT_DIR) files.push_back(directory + "/" + entry->d_name);
    }
    closedir(pins);
    for (const std::string& file : files) remove_pin(file);
  }
  if (rmdir(directory.c_str()) != 0 && errno != ENOENT) {
    throw BpfError("cannot remove " + directory + ": " + error_text(errno));
  }
  remove_shared_maps_if_last();
  if (!xdp_failure.empty()) throw BpfError(xdp_failure);
}

// The link and maps shared by all containers, once no container is attached.
void remove_shared_maps_if_last() {
  if (!attached_names().empty()) return;
  // sock_ops leaves the cgroup root with its last pin.
  remove_pin(shared_pin(kSockOpsLinkPin));
  // Freeing the sockhash takes its sockets out, and the kernel discards what
  // was redirected to them and not yet read. Redirection stopped above; give
  // the applications a moment to read what is already in their queues.
  if (const UniqueFd sockhash = open_pin(shared_pin(kSockhashPin))) {
    netaccel_socket_key first{};
    if (bpf_map_get_next_key(sockhash.get(), nullptr, &first) == 0) {
      std::this_thread::sleep_for(kDrainBeforeFree);
    }
  }
  for (const char* pin :
       {kSockhashPin, kEndpointsPin, kSockmapStatsPin, kAttachedNetnsPin, kSocketGenerationsPin})
    remove_pin(shared_pin(pin));
  rmdir(kPinRoot);
}

// The name under which the container's namespace is attached, if it is.
std::optional<std::string> attached_as(const Container& container) {
  for (const std::string& name : attached_names()) {
    netaccel_container_record record{};
    if (read_record(name, record) && record.netns_inode == container.netns_inode &&
        record.netns_device == container.netns_device) {
      return name;
    }
  }
  return std::nullopt;
}

// Detaches each attached container that `matches` its record; the first
// failure is thrown once all were tried. Returns the names detached.
template <typename Matches>
std::vector<std::string> detach_where(Matches matches) {
  std::vector<std::string> detached;
  std::optional<BpfError> failure;
  for (const std::string& name : attached_names()) {
    netaccel_container_record record{};
    if (!read_record(name, record) || !matches(record)) continue;
    try {
      remove_container(name);
      detached.push_back(name);
    } catch (const BpfError& error) {
      if (!failure) failure = error;
    }
  }
  if (failure) throw *failure;
  return detached;
}

}  // namespace

Container attach_container(const std::string& spec, const AttachOptions& options) {
  require_privileges();
  route_libbpf_log();
  AttachLock lock;
  Container container = resolve_container(spec);
  if (const std::optional<std::string> attached = attached_as(container)) {
    if (options.reuse_attached) {
      container.name = *attached;
      return container;
    }
    throw BpfError("network namespace of '" + spec + "' is already attached as '" + *attached +
                   "'");
  }
  const std::string directory = std::string(kPinRoot) + "/" + container.name;
  if (exists(directory)) {
    throw BpfError("container '" + container.name + "' is already attached (pins in " + directory +
                   "); detach it first");
  }
  check_addresses_free(container);
  netaccel_container_record record = make_record(container, options);
  // Refusals are over: from here on, attach changes the system.
  ensure_bpffs();
  if (mkdir(kPinRoot, 0700) != 0 && errno != EEXIST) {
    throw BpfError(std::string("cannot create ") + kPinRoot + ": " + error_text(errno));
  }
  if (mkdir(directory.c_str(), 0700) != 0) {
    throw BpfError("cannot create " + directory + ": " + error_text(errno));
  }
  try {
    attach_xdp(container, record);
    attach_sockmap(container, record);
  } catch (...) {
    // The reason attach failed is what the user needs; what the clean-up
    // could not undo is said beside it.
    try {
      remove_container(container.name);
    } catch (const BpfError& error) {
      std::cerr << "netaccel: " << error.what() << "\n";
    }
    throw;
  }
  return container;
}

std::string detach_container(const std::string& spec) {
  require_privileges();
  route_libbpf_log();
  AttachLock lock;
  std::string name = spec;
  const bool plain_name =
      !spec.empty() && spec.find('/') == std::string::npos && spec != "." && spec != "..";
  if (!plain_name || !exists(std::string(kPinRoot) + "/" + spec)) {
    name = resolve_container(spec).name;
  }
  if (!exists(std::string(kPinRoot) + "/" + name)) {
    throw BpfError("container '" + name + "' is not attached");
  }
  remove_container(name);
  return name;
}

std::vector<std::string> detach_cni_container(const std::string& netns_path,
                                              const std::string& cni_container_id,
                                              const std::string& cni_network) {
  require_privileges();
  route_libbpf_log();
  AttachLock lock;
  std::vector<std::string> detached = detach_where([&](const netaccel_container_record& record) {
    return !cni_container_id.empty() && cni_container_id == record.cni_container_id &&
           cni_network == record.cni_network;
  });
  if (!detached.empty() || netns_path.empty()) return detached;
  // A live namespace's inode is unique, so this cannot match another one;
  // one that another CNI network attached is left to that network's DEL.
  struct stat netns {};
  if (stat(netns_path.c_str(), &netns) != 0) return detached;
  return detach_where([&](const netaccel_container_record& record) {
    return record.cni_container_id[0] == '\0' && record.netns_inode == netns.st_ino &&
           record.netns_device == netns.st_dev;
  });
}

std::vector<std::string> detach_cni_garbage(const std::string& cni_network,
                                            const std::set<std::string>& valid_container_ids) {
  require_privileges();
  route_libbpf_log();
  AttachLock lock;
  return detach_where([&](const netaccel_container_record& record) {
    return record.cni_container_id[0] != '\0' && cni_network == record.cni_network &&
           valid_container_ids.count(record.cni_container_id) == 0;
  });
}

std::vector<std::string> check_attachment(const std::string& netns_path) {
  require_privileges();
  AttachLock lock;  // not half-way through an attach or a detach
  const Container current = resolve_container(netns_path);
  const std::optional<std::string> name = attached_as(current);
  if (!name) return {"network namespace " + netns_path + " is not attached"};
  netaccel_container_record record{};
  read_record(*name, record);
  std::vector<std::string> problems;
  const auto missing = [&](const std::string& what) { problems.push_back(what + " is missing"); };

  for (const char* pin :
       {kSockhashPin, kEndpointsPin, kSockmapStatsPin, kAttachedNetnsPin, kSocketGenerationsPin}) {
    if (!open_pin(shared_pin(pin))) missing(std::string("shared map ") + shared_pin(pin));
  }
  if (const UniqueFd link = open_pin(shared_pin(kSockOpsLinkPin))) {
    bpf_link_info info{};
    __u32 length = sizeof info;
    if (bpf_obj_get_info_by_fd(link.get(), &info, &length) != 0 ||
        info.cgroup.cgroup_id != record.cgroup_id) {
      problems.push_back("the sock_ops link is not attached to cgroup " +
                         std::string(record.cgroup_path));
    }
  } else {
    missing("the sock_ops link " + shared_pin(kSockOpsLinkPin));
  }
  if (record.netns_cookie != current.netns_cookie) {
    problems.push_back("the recorded namespace cookie " + std::to_string(record.netns_cookie) +
                       " is not the namespace's (" + std::to_string(current.netns_cookie) + ")");
  }
  if (const UniqueFd namespaces = open_pin(shared_pin(kAttachedNetnsPin))) {
    netaccel_attached_netns entry{};
    if (bpf_map_lookup_elem(namespaces.get(), &current.netns_cookie, &entry) != 0 ||
        entry.container_id != record.container_id) {
      missing("the namespace's entry in attached_netns");
    }
  }
  std::set<Address> recorded;
  for (__u32 i = 0; i < record.address_count && i < NETACCEL_MAX_ADDRESSES; ++i) {
    Address address{};
    std::memcpy(address.data(), record.addresses[i], address.size());
    recorded.insert(address);
  }
  const UniqueFd endpoints = open_pin(shared_pin(kEndpointsPin));
  for (const Address& address : recorded) {
    netaccel_endpoint owner{};
    if (endpoints && (bpf_map_lookup_elem(endpoints.get(), address.data(), &owner) != 0 ||
                      owner.container_id != record.container_id)) {
      missing("address " + address_to_string(address) + " in local_endpoints");
    }
  }
  for (const Address& address : current.addresses) {
    if (recorded.count(address) == 0) {
      problems.push_back("address " + address_to_string(address) +
                         " was added after attach: it is not short-circuited");
    }
  }
  std::set<std::string> recorded_interfaces;
  for (const XdpInterface& interface : xdp_interfaces(*name, record)) {
    recorded_interfaces.insert(interface.name);
    if (interface.chain.empty()) missing("the XDP classifier on " + interface.name);
  }
  for (const ContainerInterface& interface : current.interfaces) {
    if (recorded_interfaces.count(interface.name) == 0) {
      problems.push_back("interface " + interface.name +
                         " was added after attach: it runs no XDP classifier");
    }
  }
  for (const std::string& interface : recorded_interfaces) {
    const bool present =
        std::any_of(current.interfaces.begin(), current.interfaces.end(),
                    [&](const ContainerInterface& now) { return now.name == interface; });
    if (!present) problems.push_back("interface " + interface + " is gone");
  }
  return problems;
}

}  // namespace netaccel::bpf

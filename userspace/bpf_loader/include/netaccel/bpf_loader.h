// Attaching netaccel's BPF programs to containers and reading them back.
//
// A container is a network namespace; it may hold no process yet (a CNI
// runtime attaches before the first one starts). Attaching it loads the XDP
// classifier on each of its interfaces (through libxdp's dispatcher, beside
// other XDP programs), registers its namespace cookie and addresses with the
// shared sockmap short-circuit, whose sock_ops program the first attach puts
// on the cgroup v2 root for all containers, and pins everything under
// /sys/fs/bpf/netaccel/<name>/ so that it outlives the command. Detaching
// removes exactly that (and the shared maps and link with the last
// container). Real failures throw BpfError with a message meant for the
// user; nothing is left half-attached.
#pragma once

#include <array>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "netaccel_bpf.h"

namespace netaccel::bpf {

inline constexpr const char* kBpfFsRoot = "/sys/fs/bpf";
inline constexpr const char* kPinRoot = "/sys/fs/bpf/netaccel";
// Attach and detach take this lock: they read and change shared maps.
inline constexpr const char* kLockPath = "/run/netaccel/bpf.lock";

class BpfError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using Address = std::array<std::uint8_t, NETACCEL_ADDRESS_BYTES>;

struct ContainerInterface {
  std::string name;
  unsigned ifindex = 0;
};

struct Container {
  std::string name;        // its directory under kPinRoot
  std::string netns_path;  // a path that opens its network namespace
  std::uint64_t netns_inode = 0;
  std::uint64_t netns_device = 0;
  std::uint64_t netns_cookie = 0;              // bpf_get_netns_cookie's value for it
  std::vector<ContainerInterface> interfaces;  // all but loopback
  std::vector<Address> addresses;              // IPv4-mapped or IPv6, no link-local
};

// Throws BpfError when the process lacks CAP_SYS_ADMIN or CAP_NET_ADMIN
// (loading programs, entering namespaces, reading pins).
void require_privileges();

// CONTAINER as the user gives it: a netns name (/run/netns/NAME), a netns
// path, a PID, or a cgroup v2 directory.
Container resolve_container(const std::string& spec);

struct AttachOptions {
  // A CNI runtime's container id and network name, recorded so that DEL and
  // GC find the container once its namespace is gone.
  std::string cni_container_id;
  std::string cni_network;
  // An attached namespace is left as it is and returned instead of refused
  // (CNI ADD again, or from a second network of the same container).
  bool reuse_attached = false;
};

// Needs CAP_SYS_ADMIN and CAP_NET_ADMIN; serialised with other attaches and
// detaches. Returns what was attached.
Container attach_container(const std::string& spec, const AttachOptions& options = {});
// CONTAINER as for attach, or the name shown by `netaccel status`. Returns
// the name of the container detached.
std::string detach_container(const std::string& spec);

// CNI DEL: detaches what ADD attached for the runtime's container on
// `cni_network`: found by its id in the records, so that it works when the
// namespace is gone; else the namespace at `netns_path` (may be empty) if
// `netaccel attach` attached it. Nothing attached is no error. Returns the
// names detached.
std::vector<std::string> detach_cni_container(const std::string& netns_path,
                                              const std::string& cni_container_id,
                                              const std::string& cni_network);
// CNI GC: detaches the containers attached for `cni_network` whose runtime
// container id is not in `valid_container_ids`. Returns their names.
std::vector<std::string> detach_cni_garbage(const std::string& cni_network,
                                            const std::set<std::string>& valid_container_ids);
// CNI CHECK: what is missing from the attachment of the namespace at
// `netns_path`, one line each (empty when it is complete): the record, the
// shared link and maps, its cookie and addresses there, XDP on its
// interfaces, addresses or interfaces the namespace gained or lost since.
std::vector<std::string> check_attachment(const std::string& netns_path);

struct PinnedObject {
  std::string pin;   // file name under the container's directory (or kPinRoot)
  std::string kind;  // "map", "link" or "program"
  std::uint32_t id = 0;
  std::string detail;  // map type and name, link type and program, or program type and name
};

// One program of the XDP that an interface runs, in run order.
struct XdpChainEntry {
  std::string program;  // its BPF name
  std::uint32_t id = 0;
  unsigned priority = 0;            // libxdp's run priority, lower first (0: alone)
  std::uint32_t chain_actions = 0;  // a bit per XDP verdict after which the next one runs
  bool netaccel = false;            // the container's classifier
};

// The classifier on one of the container's interfaces.
struct XdpInterface {
  std::string name;
  unsigned ifindex = 0;
  bool reachable = false;              // its network namespace was found
  std::uint32_t attached_program = 0;  // what the interface runs, 0 for nothing
  std::string mode;                    // native or generic, when reachable
  std::uint32_t dispatcher_id = 0;     // libxdp's dispatcher running the classifier, 0 if alone
  std::string dispatcher_pins;         // that dispatcher's directory (libxdp's, in the BPF fs)
  bool frags = false;                  // that dispatcher is loaded with frags (multi-buffer)
  std::vector<XdpChainEntry> chain;    // empty when the classifier is not attached there
};

struct AttachedContainer {
  netaccel_container_record record{};
  std::vector<PinnedObject> pins;
  std::vector<XdpInterface> xdp;
};

// Attached containers from the pins; empty when nothing is attached.
std::vector<AttachedContainer> list_attached();
// Only their records, without entering namespaces: cheap enough for the
// monitor to poll. Containers still being attached are left out.
std::vector<netaccel_container_record> read_container_records();
// The maps shared by all containers, when any container is attached.
std::vector<PinnedObject> list_shared_pins();

struct ContainerStats {
  std::string name;
  netaccel_container_counters xdp{};
  netaccel_sockmap_counters sockmap{};
  std::size_t flows = 0;    // entries in its flow_stats
  std::size_t sockets = 0;  // its sockets in the shared sockhash
};

std::vector<ContainerStats> read_stats();

std::string address_to_string(const Address& address);
std::string address_to_string(const std::uint8_t (&address)[NETACCEL_ADDRESS_BYTES]);

}  // namespace netaccel::bpf

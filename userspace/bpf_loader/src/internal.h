// Helpers shared by the loader's files; not part of its interface.
#pragma once

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "netaccel/bpf_loader.h"
#include "netaccel/shm.h"
#include "netaccel_bpf.h"

namespace netaccel::bpf {

// Runs the calling thread in another network namespace for its lifetime
// (interface names and indexes, addresses and XDP attachment are per netns).
class NetnsScope {
 public:
  explicit NetnsScope(const std::string& netns_path);
  ~NetnsScope();
  NetnsScope(const NetnsScope&) = delete;
  NetnsScope& operator=(const NetnsScope&) = delete;

 private:
  UniqueFd original_;
};

// errno as text, for messages.
std::string error_text(int error);

// A path that opens the network namespace (`attached_by` if it still does,
// else its /run/netns name, else a process's /proc/PID/ns/net); empty when
// none is found: gone.
std::string find_netns_path(std::uint64_t inode, std::uint64_t device,
                            const std::string& attached_by);

// The mount point of the cgroup v2 hierarchy ("" when there is none): its
// root is where the sock_ops program is attached.
std::string cgroup2_mount();

}  // namespace netaccel::bpf

namespace netaccel::bpf {

// Pins of the maps shared by all containers, and each container's own.
inline constexpr const char* kSockhashPin = "established_sockets";
inline constexpr const char* kEndpointsPin = "local_endpoints";
inline constexpr const char* kSockmapStatsPin = "sockmap_stats";
inline constexpr const char* kAttachedNetnsPin = "attached_netns";
inline constexpr const char* kSocketGenerationsPin = "socket_generations";
// sockops_track at the cgroup v2 root: one link for all containers, made by
// the first attach, removed by the last detach.
inline constexpr const char* kSockOpsLinkPin = "sock_ops_link";
inline constexpr const char* kContainerRecordPin = "container_record";
inline constexpr const char* kContainerStatsPin = "container_stats";
inline constexpr const char* kFlowStatsPin = "flow_stats";
// The classifier's program, as libxdp's dispatchers run it.
inline constexpr const char* kXdpProgramPin = "xdp_program";

std::string shared_pin(const char* name);
std::string container_pin(const std::string& container, const std::string& name);

// The fd of a pinned object; empty when it is not pinned.
UniqueFd open_pin(const std::string& path);

// Sums a per-CPU map's value of `Counters` (all __u64 fields) at `key`;
// false when the key is absent.
template <typename Counters>
bool read_per_cpu_sum(int map_fd, const void* key, Counters& sum) {
  static_assert(sizeof(Counters) % sizeof(__u64) == 0);
  constexpr std::size_t kFields = sizeof(Counters) / sizeof(__u64);
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return false;
  // The kernel hands one value per possible CPU, each rounded up to 8 bytes.
  std::vector<__u64> values(kFields * static_cast<std::size_t>(cpus));
  if (bpf_map_lookup_elem(map_fd, key, values.data()) != 0) return false;
  __u64 total[kFields] = {};
  for (std::size_t cpu = 0; cpu < static_cast<std::size_t>(cpus); ++cpu) {
    for (std::size_t field = 0; field < kFields; ++field)
      total[field] += values[cpu * kFields + field];
  }
  std::memcpy(&sum, total, sizeof sum);
  return true;
}

// The container's record, read from its pinned container_record map.
bool read_record(const std::string& container, netaccel_container_record& record);

// Names of the directories under kPinRoot: the attached containers.
std::vector<std::string> attached_names();

}  // namespace netaccel::bpf

// libxdp (xdp_dispatcher.cc).
struct bpf_object;
struct xdp_program;

namespace netaccel::bpf {

struct XdpProgramDeleter {
  void operator()(xdp_program* program) const;
};
using XdpProgram = std::unique_ptr<xdp_program, XdpProgramDeleter>;

// libxdp's warnings go to our stderr; its informational chatter does not.
void route_libxdp_log();

// The classifier `name` of the opened (not loaded) object, with its run
// priority, chain-call actions and frags support set for libxdp.
XdpProgram classifier_program(bpf_object* classifier, const char* name);

// Attaches the classifier to an interface of the current network namespace
// (the first attach loads its object). Returns true when it runs in libxdp's
// dispatcher, false when libxdp attached it alone (a kernel that refuses
// freplace programs). Throws BpfError, saying why, when it cannot.
bool attach_classifier(xdp_program* classifier, const ContainerInterface& interface);

// Takes the container's classifier off every interface that runs it, leaving
// the other programs of each dispatcher in place (a dispatcher goes with its
// last program), and removes the dispatchers left behind by interfaces that
// are gone. Throws BpfError listing what it could not detach.
void detach_classifier(const std::string& container, const netaccel_container_record& record);

// How the classifier sits on each of the container's interfaces.
std::vector<XdpInterface> xdp_interfaces(const std::string& container,
                                         const netaccel_container_record& record);

}  // namespace netaccel::bpf

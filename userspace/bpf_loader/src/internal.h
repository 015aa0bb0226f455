// Helpers shared by the loader's files; not part of its interface.
#pragma once

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cstring>
#include <string>
#include <vector>

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

}  // namespace netaccel::bpf

namespace netaccel::bpf {

// Pins of the maps shared by all containers, and each container's own.
inline constexpr const char* kSockhashPin = "established_sockets";
inline constexpr const char* kEndpointsPin = "local_endpoints";
inline constexpr const char* kSockmapStatsPin = "sockmap_stats";
inline constexpr const char* kContainerRecordPin = "container_record";
inline constexpr const char* kContainerStatsPin = "container_stats";
inline constexpr const char* kFlowStatsPin = "flow_stats";
inline constexpr const char* kSockOpsLinkPin = "sock_ops_link";
inline constexpr const char* kXdpLinkPinPrefix = "xdp_link_";

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

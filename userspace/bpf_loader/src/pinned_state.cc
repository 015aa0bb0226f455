// Reading attached containers back from their pins: what `netaccel status`
// and `netaccel stats` show, and what the monitor can read.
#include <arpa/inet.h>
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

#include "internal.h"
#include "netaccel/bpf_loader.h"

namespace netaccel::bpf {

std::string shared_pin(const char* name) {
  return std::string(kPinRoot) + "/" + name;
}

std::string container_pin(const std::string& container, const std::string& name) {
  return std::string(kPinRoot) + "/" + container + "/" + name;
}

UniqueFd open_pin(const std::string& path) {
  return UniqueFd(bpf_obj_get(path.c_str()));
}

bool read_record(const std::string& container, netaccel_container_record& record) {
  const UniqueFd map = open_pin(container_pin(container, kContainerRecordPin));
  const __u32 zero = 0;
  return map && bpf_map_lookup_elem(map.get(), &zero, &record) == 0;
}

namespace {

std::vector<std::string> directory_entries(const std::string& path, bool directories) {
  std::vector<std::string> names;
  DIR* directory = opendir(path.c_str());
  if (directory == nullptr) {
    if (errno == ENOENT) return names;
    throw BpfError("cannot read " + path + ": " + error_text(errno));
  }
  while (dirent* entry = readdir(directory)) {
    const std::string name = entry->d_name;
    if (name == "." || name == ".." || (entry->d_type == DT_DIR) != directories) continue;
    names.push_back(name);
  }
  closedir(directory);
  std::sort(names.begin(), names.end());
  return names;
}

const char* map_type_name(__u32 type) {
  const char* name = libbpf_bpf_map_type_str(static_cast<bpf_map_type>(type));
  return name != nullptr ? name : "unknown";
}

enum class BpfObjectKind { map, program, link, unknown };

// What kind of BPF object an fd refers to, as its anonymous inode says
// (bpf_obj_get_info_by_fd would fill a map's info from a program).
BpfObjectKind kind_of(int fd) {
  char target[64] = {};
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  if (readlink(link.c_str(), target, sizeof target - 1) < 0) return BpfObjectKind::unknown;
  const std::string name = target;
  if (name == "anon_inode:bpf-map") return BpfObjectKind::map;
  if (name == "anon_inode:bpf-prog") return BpfObjectKind::program;
  if (name == "anon_inode:bpf-link") return BpfObjectKind::link;
  return BpfObjectKind::unknown;
}

// What a pin is: a map (type, name), a link (type, program) or a program.
PinnedObject describe_pin(const std::string& directory, const std::string& pin) {
  PinnedObject object{pin, "unreadable", 0, ""};
  const UniqueFd fd = open_pin(directory + "/" + pin);
  if (!fd) {
    object.detail = error_text(errno);
    return object;
  }
  switch (kind_of(fd.get())) {
    case BpfObjectKind::map: {
      bpf_map_info map{};
      __u32 length = sizeof map;
      if (bpf_obj_get_info_by_fd(fd.get(), &map, &length) != 0) break;
      object.kind = "map";
      object.id = map.id;
      object.detail = std::string(map_type_name(map.type)) + " " + map.name;
      return object;
    }
    case BpfObjectKind::program: {
      bpf_prog_info info{};
      __u32 length = sizeof info;
      if (bpf_obj_get_info_by_fd(fd.get(), &info, &length) != 0) break;
      object.kind = "program";
      object.id = info.id;
      const char* type = libbpf_bpf_prog_type_str(static_cast<bpf_prog_type>(info.type));
      object.detail = std::string(type != nullptr ? type : "unknown") + " program " + info.name;
      return object;
    }
    case BpfObjectKind::link: {
      bpf_link_info link{};
      __u32 length = sizeof link;
      if (bpf_obj_get_info_by_fd(fd.get(), &link, &length) != 0) break;
      object.kind = "link";
      object.id = link.id;
      const char* type = libbpf_bpf_link_type_str(static_cast<bpf_link_type>(link.type));
      object.detail = type != nullptr ? type : "unknown";
      const UniqueFd program(bpf_prog_get_fd_by_id(link.prog_id));
      bpf_prog_info info{};
      length = sizeof info;
      if (program && bpf_obj_get_info_by_fd(program.get(), &info, &length) == 0) {
        object.detail +=
            " program " + std::string(info.name) + " (id " + std::to_string(info.id) + ")";
      }
      return object;
    }
    case BpfObjectKind::unknown:
      break;
  }
  object.detail = error_text(errno);
  return object;
}

template <typename Key, typename Visit>
void for_each_key(int map_fd, Visit visit) {
  Key key{};
  Key next{};
  const Key* previous = nullptr;
  while (bpf_map_get_next_key(map_fd, previous, &next) == 0) {
    visit(next);
    key = next;
    previous = &key;
  }
}

bool owns(const netaccel_container_record& record, const __u8 (&address)[NETACCEL_ADDRESS_BYTES]) {
  for (__u32 i = 0; i < record.address_count && i < NETACCEL_MAX_ADDRESSES; ++i) {
    if (std::memcmp(record.addresses[i], address, NETACCEL_ADDRESS_BYTES) == 0) return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> attached_names() {
  return directory_entries(kPinRoot, true);
}

std::vector<AttachedContainer> list_attached() {
  std::vector<AttachedContainer> containers;
  for (const std::string& name : attached_names()) {
    AttachedContainer container;
    if (!read_record(name, container.record)) {
      // Half-made by an attach that is still running or died: show the name.
      std::snprintf(container.record.name, sizeof container.record.name, "%s", name.c_str());
    }
    const std::string directory = std::string(kPinRoot) + "/" + name;
    for (const std::string& pin : directory_entries(directory, false)) {
      container.pins.push_back(describe_pin(directory, pin));
    }
    container.xdp = xdp_interfaces(name, container.record);
    containers.push_back(std::move(container));
  }
  return containers;
}

std::vector<netaccel_container_record> read_container_records() {
  std::vector<netaccel_container_record> records;
  for (const std::string& name : attached_names()) {
    netaccel_container_record record{};
    if (read_record(name, record)) records.push_back(record);
  }
  return records;
}

std::vector<PinnedObject> list_shared_pins() {
  std::vector<PinnedObject> pins;
  for (const std::string& pin : directory_entries(kPinRoot, false)) {
    pins.push_back(describe_pin(kPinRoot, pin));
  }
  return pins;
}

std::vector<ContainerStats> read_stats() {
  std::vector<ContainerStats> all;
  const UniqueFd sockhash = open_pin(shared_pin(kSockhashPin));
  const UniqueFd sockmap_stats = open_pin(shared_pin(kSockmapStatsPin));
  for (const std::string& name : attached_names()) {
    ContainerStats stats;
    stats.name = name;
    netaccel_container_record record{};
    const bool have_record = read_record(name, record);
    const __u32 zero = 0;
    if (const UniqueFd counters = open_pin(container_pin(name, kContainerStatsPin))) {
      read_per_cpu_sum(counters.get(), &zero, stats.xdp);
    }
    if (const UniqueFd flows = open_pin(container_pin(name, kFlowStatsPin))) {
      for_each_key<netaccel_flow_key>(flows.get(), [&](const auto&) { ++stats.flows; });
    }
    if (have_record && sockmap_stats) {
      read_per_cpu_sum(sockmap_stats.get(), &record.container_id, stats.sockmap);
    }
    if (have_record && sockhash) {
      for_each_key<netaccel_socket_key>(sockhash.get(), [&](const netaccel_socket_key& key) {
        if (owns(record, key.local_address)) ++stats.sockets;
      });
    }
    all.push_back(stats);
  }
  return all;
}

std::string address_to_string(const std::uint8_t (&address)[NETACCEL_ADDRESS_BYTES]) {
  static constexpr std::uint8_t kIpv4Mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  char text[INET6_ADDRSTRLEN] = {};
  if (std::memcmp(address, kIpv4Mapped, sizeof kIpv4Mapped) == 0) {
    inet_ntop(AF_INET, address + 12, text, sizeof text);
  } else {
    inet_ntop(AF_INET6, address, text, sizeof text);
  }
  return text;
}

std::string address_to_string(const Address& address) {
  std::uint8_t bytes[NETACCEL_ADDRESS_BYTES];
  std::memcpy(bytes, address.data(), sizeof bytes);
  return address_to_string(bytes);
}

}  // namespace netaccel::bpf

#include "container_registry.h"

#include <bpf/bpf.h>
#include <dirent.h>
#include <errno.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "netaccel/bpf_loader.h"
#include "netaccel/log.h"

namespace netaccel {
namespace {

// An attach writes its record after its first pins appear: read the pins
// again this long after the last change seen, and while a directory still
// has no record, again after twice as long each time, up to a second.
constexpr long kSettleNs = 50'000'000;
constexpr long kSettleMaxNs = 1'000'000'000;
constexpr uint32_t kDirectoryChanges =
    IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR;

void log_registry(const std::string& message) {
  log_line("monitor", "warning", message);
}

InetAddress container_address(const uint8_t (&bytes)[NETACCEL_ADDRESS_BYTES]) {
  InetAddress address{};
  std::memcpy(address.bytes, bytes, sizeof address.bytes);
  static constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  address.family =
      std::memcmp(bytes, kMappedPrefix, sizeof kMappedPrefix) == 0 ? AF_INET : AF_INET6;
  return address;
}

// The directories under the pin root: one per attached container, complete or not.
std::vector<std::string> container_directories() {
  std::vector<std::string> names;
  DIR* directory = opendir(bpf::kPinRoot);
  if (directory == nullptr) return names;
  while (const dirent* entry = readdir(directory)) {
    const std::string name = entry->d_name;
    if (entry->d_type == DT_DIR && name != "." && name != "..") names.push_back(name);
  }
  closedir(directory);
  return names;
}

bool valid_container_name(const std::string& name) {
  return !name.empty() && name.size() < NETACCEL_NAME_BYTES &&
         name.find_first_of("/ \t\n") == std::string::npos && name != "." && name != "..";
}

}  // namespace

bool ContainerRegistry::Container::operator==(const Container& other) const {
  return netns_id == other.netns_id && addresses.size() == other.addresses.size() &&
         std::equal(addresses.begin(), addresses.end(), other.addresses.begin(),
                    [](const InetAddress& a, const InetAddress& b) {
                      return std::memcmp(&a, &b, sizeof a) == 0;
                    });
}

ContainerRegistry::ContainerRegistry(ControlPlaneEngine& engine, std::string policy_path)
    : engine_(engine), policy_path_(std::move(policy_path)) {
  events_.reset(epoll_create1(EPOLL_CLOEXEC));
  inotify_.reset(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  settle_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  for (const int fd : {inotify_.get(), settle_.get()}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (events_ && fd >= 0) epoll_ctl(events_.get(), EPOLL_CTL_ADD, fd, &event);
  }
  load_rules();
  if (refresh()) arm_settle_timer(kSettleNs);
}

// Returns how many container directories there are.
std::size_t ContainerRegistry::watch_pins() {
  // Watching a directory again only updates its watch; the kernel drops the
  // watches of directories that go.
  if (inotify_) inotify_add_watch(inotify_.get(), bpf::kBpfFsRoot, kDirectoryChanges);
  if (inotify_ && inotify_add_watch(inotify_.get(), bpf::kPinRoot, kDirectoryChanges) < 0) {
    return 0;
  }
  std::size_t directories = 0;
  for (const std::string& name : container_directories()) {
    ++directories;
    if (inotify_) {
      inotify_add_watch(inotify_.get(), (std::string(bpf::kPinRoot) + "/" + name).c_str(),
                        kDirectoryChanges);
    }
  }
  return directories;
}

void ContainerRegistry::arm_settle_timer(long delay_ns) {
  settle_delay_ns_ = delay_ns;
  itimerspec once{};
  once.it_value.tv_sec = delay_ns / 1'000'000'000;
  once.it_value.tv_nsec = delay_ns % 1'000'000'000;
  timerfd_settime(settle_.get(), 0, &once, nullptr);
}

void ContainerRegistry::on_change() {
  alignas(inotify_event) char buffer[4096];
  bool pins_changed = false;
  while (read(inotify_.get(), buffer, sizeof buffer) > 0) pins_changed = true;
  uint64_t expirations;
  const bool settled = read(settle_.get(), &expirations, sizeof expirations) > 0;
  if (!pins_changed && !settled) return;
  const bool incomplete = refresh();
  if (pins_changed) {
    arm_settle_timer(kSettleNs);  // a record may follow its last pin
  } else if (incomplete) {
    arm_settle_timer(std::min(settle_delay_ns_ * 2, kSettleMaxNs));
  }
}

bool ContainerRegistry::refresh() {
  const std::size_t directories = watch_pins();
  std::vector<netaccel_container_record> records;
  try {
    records = bpf::read_container_records();
    read_error_logged_ = false;
  } catch (const bpf::BpfError& error) {
    if (!read_error_logged_)
      log_registry(std::string("cannot read attached containers: ") + error.what());
    read_error_logged_ = true;
    return false;
  }
  std::map<std::string, Container> now;
  for (const netaccel_container_record& record : records) {
    const std::string name(record.name, strnlen(record.name, sizeof record.name));
    // A record is written after its pins appear; the settle timer reads it again.
    if (record.netns_inode == 0) continue;
    Container container;
    container.netns_id = network_namespace_id(record.netns_device, record.netns_inode);
    const uint32_t count = std::min<uint32_t>(record.address_count, NETACCEL_MAX_ADDRESSES);
    for (uint32_t i = 0; i < count; ++i) {
      container.addresses.push_back(container_address(record.addresses[i]));
    }
    now.emplace(name, std::move(container));
  }
  for (const auto& [name, container] : containers_) {
    const auto kept = now.find(name);
    if (kept == now.end() || !(kept->second == container))
      engine_.remove_container(container.netns_id);
  }
  for (const auto& [name, container] : now) {
    const auto known = containers_.find(name);
    if (known != containers_.end() && known->second == container) continue;
    for (const InetAddress& address : container.addresses) {
      if (!engine_.add_container_address(container.netns_id, address)) {
        log_registry("the " + std::string(engine_.name()) +
                     " engine has no room for an address of '" + name +
                     "': connects to it go through the kernel");
      }
    }
  }
  containers_ = std::move(now);
  apply_rules();
  return containers_.size() < directories;
}

void ContainerRegistry::apply_rules() {
  std::set<EngineRule> wanted;
  for (const PolicyRule& rule : rules_) {
    const auto client = containers_.find(rule.client);
    const auto server = containers_.find(rule.server);
    if (client == containers_.end() || server == containers_.end()) continue;
    wanted.emplace(client->second.netns_id, server->second.netns_id, rule.port);
  }
  for (const EngineRule& rule : enforced_) {
    if (!wanted.contains(rule)) {
      engine_.allow_connections(std::get<0>(rule), std::get<1>(rule), std::get<2>(rule));
    }
  }
  std::set<EngineRule> enforced;
  for (const EngineRule& rule : wanted) {
    const auto [client, server, port] = rule;
    if (enforced_.contains(rule)) {
      enforced.insert(rule);
      continue;
    }
    if (!engine_.deny_connections(client, server, port)) {
      log_registry("the " + std::string(engine_.name()) +
                   " engine has no room for another deny rule: it is not enforced");
      continue;
    }
    enforced.insert(rule);
    new_separations_.emplace_back(client, server);
  }
  enforced_ = std::move(enforced);
  write_xdp_policy();
}

// Clients that are not preloaded meet the rules on the server's interface:
// the XDP classifier answers their SYN with a reset (policy_deny, one map
// per container, keyed by client address and port).
void ContainerRegistry::write_xdp_policy() {
  using Key = std::array<uint8_t, sizeof(netaccel_policy_key)>;
  std::map<std::string, std::set<Key>> wanted;
  for (const PolicyRule& rule : rules_) {
    const auto client = containers_.find(rule.client);
    if (client == containers_.end() || !containers_.contains(rule.server)) continue;
    for (const InetAddress& address : client->second.addresses) {
      netaccel_policy_key key{};
      std::memcpy(key.source, address.bytes, sizeof key.source);
      key.port = rule.port;
      Key bytes;
      std::memcpy(bytes.data(), &key, sizeof key);
      wanted[rule.server].insert(bytes);
    }
  }
  for (const auto& [name, container] : containers_) {
    const std::string pin = std::string(bpf::kPinRoot) + "/" + name + "/policy_deny";
    const UniqueFd map(bpf_obj_get(pin.c_str()));
    if (!map) continue;  // attached by a netaccel without it
    const std::set<Key>& keys = wanted[name];
    std::vector<Key> stale;
    Key key, next;
    const void* previous = nullptr;
    while (bpf_map_get_next_key(map.get(), previous, next.data()) == 0) {
      if (!keys.contains(next)) stale.push_back(next);
      key = next;
      previous = key.data();
    }
    for (const Key& gone : stale) bpf_map_delete_elem(map.get(), gone.data());
    const uint32_t present = 1;
    for (const Key& rule : keys) {
      if (bpf_map_update_elem(map.get(), rule.data(), &present, BPF_ANY) != 0) {
        log_registry("cannot write the isolation policy into " + pin + ": " + std::strerror(errno));
      }
    }
  }
}

std::vector<std::pair<uint64_t, uint64_t>> ContainerRegistry::take_new_separations() {
  return std::exchange(new_separations_, {});
}

std::string ContainerRegistry::deny(const PolicyRule& rule) {
  refresh();  // the names are checked against what is attached now
  for (const std::string* name : {&rule.client, &rule.server}) {
    if (!valid_container_name(*name)) return "'" + *name + "' is not a container name";
    if (!containers_.contains(*name)) {
      return "no attached container '" + *name + "' (netaccel status lists them)";
    }
  }
  if (rule.client == rule.server) return "a container always reaches itself";
  if (!rules_.insert(rule).second) return "";
  apply_rules();
  const EngineRule added{containers_.at(rule.client).netns_id, containers_.at(rule.server).netns_id,
                         rule.port};
  std::string error = enforced_.contains(added) ? save_rules()
                                                : "the " + std::string(engine_.name()) +
                                                      " engine has no room for another rule";
  if (!error.empty()) {
    rules_.erase(rule);
    apply_rules();
  }
  return error;
}

std::string ContainerRegistry::allow(const PolicyRule& rule) {
  if (rules_.erase(rule) == 0) {
    return "no rule denies '" + rule.client + "' -> '" + rule.server + "'" +
           (rule.port != 0 ? " port " + std::to_string(rule.port) : "") +
           " (netaccel policy list shows the rules)";
  }
  apply_rules();
  if (std::string error = save_rules(); !error.empty()) {
    rules_.insert(rule);
    apply_rules();
    return error;
  }
  return "";
}

std::string ContainerRegistry::describe_json() const {
  std::ostringstream out;
  out << "{\"containers\":[";
  bool first = true;
  for (const auto& [name, container] : containers_) {
    out << (first ? "" : ",") << "\"" << json_escaped(name) << "\"";
    first = false;
  }
  out << "],\"rules\":[";
  first = true;
  for (const PolicyRule& rule : rules_) {
    const auto client = containers_.find(rule.client);
    const auto server = containers_.find(rule.server);
    const bool enforced =
        client != containers_.end() && server != containers_.end() &&
        enforced_.contains(EngineRule{client->second.netns_id, server->second.netns_id, rule.port});
    out << (first ? "" : ",") << "{\"action\":\"deny\",\"from\":\"" << json_escaped(rule.client)
        << "\",\"to\":\"" << json_escaped(rule.server) << "\",\"port\":" << rule.port
        << ",\"enforced\":" << (enforced ? "true" : "false") << "}";
    first = false;
  }
  out << "]}";
  return out.str();
}

// One rule per line: `deny CLIENT SERVER PORT`. A line that does not parse
// is reported and skipped; the file keeps it until the next change.
void ContainerRegistry::load_rules() {
  if (policy_path_.empty()) return;
  std::ifstream file(policy_path_);
  if (!file) {
    if (errno != ENOENT) log_registry("cannot read " + policy_path_ + ": " + std::strerror(errno));
    return;
  }
  std::string line;
  for (int number = 1; std::getline(file, line); ++number) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string action, trailing;
    PolicyRule rule;
    unsigned port = 0;
    if (!(fields >> action >> rule.client >> rule.server >> port) || (fields >> trailing) ||
        action != "deny" || port > 65535 || !valid_container_name(rule.client) ||
        !valid_container_name(rule.server)) {
      log_registry(policy_path_ + ":" + std::to_string(number) + ": not a rule, skipped: " + line);
      continue;
    }
    rule.port = static_cast<uint16_t>(port);
    rules_.insert(rule);
  }
}

std::string ContainerRegistry::save_rules() const {
  if (policy_path_.empty()) return "";
  std::error_code error;
  const std::filesystem::path path(policy_path_);
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), error);
  if (error) return "cannot create " + path.parent_path().string() + ": " + error.message();
  const std::string staging = policy_path_ + ".new";
  {
    std::ofstream file(staging, std::ios::trunc);
    file << "# netaccel isolation policy (netaccel policy): deny CLIENT SERVER PORT (0: all)\n";
    for (const PolicyRule& rule : rules_) {
      file << "deny " << rule.client << " " << rule.server << " " << rule.port << "\n";
    }
    file.flush();
    if (!file) return "cannot write " + staging + ": " + std::strerror(errno);
  }
  if (rename(staging.c_str(), policy_path_.c_str()) != 0) {
    return "cannot replace " + policy_path_ + ": " + std::strerror(errno);
  }
  return "";
}

}  // namespace netaccel

// The attached containers as the monitor knows them, and the isolation policy
// between them. `netaccel attach` pins a record per container (its network
// namespace and addresses); the registry reads those records, watches the pin
// directory for changes and keeps the engine's container address table and
// deny rules current, so that connects between containers are admitted, or
// refused, by the engine itself. Rules name containers as `netaccel status`
// does and persist in a file, so they survive a monitor restart and apply
// again when a container of that name is attached again.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "netaccel/engine.h"
#include "netaccel/shm.h"

namespace netaccel {

struct PolicyRule {
  std::string client;  // container names
  std::string server;
  uint16_t port = 0;  // 0: every port
  auto operator<=>(const PolicyRule&) const = default;
};

class ContainerRegistry {
 public:
  // `policy_path`: the rules' file ("" keeps them in memory only).
  ContainerRegistry(ControlPlaneEngine& engine, std::string policy_path);

  // Readable when the pins may have changed; the monitor then calls on_change().
  int change_fd() const { return events_.get(); }
  void on_change();
  // Reads the pins again and brings the engine up to date. True when some
  // container directory has no complete record yet (an attach under way).
  bool refresh();

  // "" when done, else what to tell the user.
  std::string deny(const PolicyRule& rule);
  std::string allow(const PolicyRule& rule);
  // {"containers":[...],"rules":[...]} for `netaccel policy list`.
  std::string describe_json() const;
  std::size_t container_count() const { return containers_.size(); }

  // Namespace pairs (client, server) that a rule started to separate since
  // the last call: channels already open between them must close.
  std::vector<std::pair<uint64_t, uint64_t>> take_new_separations();

 private:
  struct Container {
    uint64_t netns_id = 0;
    std::vector<InetAddress> addresses;
    bool operator==(const Container& other) const;
  };
  using EngineRule = std::tuple<uint64_t, uint64_t, uint16_t>;  // client netns, server netns, port

  std::size_t watch_pins();
  void arm_settle_timer(long delay_ns);
  void apply_rules();
  void write_xdp_policy();
  void load_rules();
  std::string save_rules() const;

  ControlPlaneEngine& engine_;
  std::string policy_path_;
  UniqueFd events_;   // epoll over the two below
  UniqueFd inotify_;  // the pin directories
  UniqueFd settle_;   // timerfd: read again once an attach has written its record
  std::map<std::string, Container> containers_;  // by name
  std::set<PolicyRule> rules_;
  std::set<EngineRule> enforced_;  // in the engine now
  std::vector<std::pair<uint64_t, uint64_t>> new_separations_;
  long settle_delay_ns_ = 0;
  bool read_error_logged_ = false;
};

}  // namespace netaccel

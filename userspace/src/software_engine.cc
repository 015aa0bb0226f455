// The software control-plane engine: listener and connection tables in plain
// hash maps, run on the monitor's thread. Everything a descriptor carries is
// untrusted (it comes from a process's shared memory), so every field is
// checked before it touches a table.
#include <errno.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "netaccel/engine.h"

namespace netaccel {
namespace {

// ---- address classification (IPv4 travels IPv4-mapped) --------------------

bool is_ipv4_mapped(const InetAddress& address) {
  static constexpr uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(address.bytes, kPrefix, sizeof kPrefix) == 0;
}

bool is_all_zero(const uint8_t* bytes, std::size_t count) {
  return std::all_of(bytes, bytes + count, [](uint8_t b) { return b == 0; });
}

// `::`: every IPv6 destination, and IPv4 ones unless the socket is v6-only.
bool is_ipv6_wildcard(const InetAddress& address) {
  return is_all_zero(address.bytes, 16);
}

// `0.0.0.0` (as ::ffff:0.0.0.0): IPv4 destinations only.
bool is_ipv4_wildcard(const InetAddress& address) {
  return is_ipv4_mapped(address) && is_all_zero(address.bytes + 12, 4);
}

bool is_wildcard(const InetAddress& address) {
  return is_ipv6_wildcard(address) || is_ipv4_wildcard(address);
}

bool is_loopback(const InetAddress& address) {
  if (is_ipv4_mapped(address)) return address.bytes[12] == 127;
  return is_all_zero(address.bytes, 15) && address.bytes[15] == 1;
}

bool same_host_address(const InetAddress& a, const InetAddress& b) {
  return std::memcmp(a.bytes, b.bytes, sizeof a.bytes) == 0;
}

// The family must be one we speak, and an AF_INET address must be mapped.
bool is_well_formed(const InetAddress& address) {
  if (address.family == AF_INET6) return true;
  return address.family == AF_INET && is_ipv4_mapped(address);
}

// Linux sends a connect() to the unspecified address to the loopback.
InetAddress unspecified_to_loopback(InetAddress address) {
  if (is_ipv4_wildcard(address)) {
    address.bytes[12] = 127;
    address.bytes[15] = 1;
  } else if (is_ipv6_wildcard(address)) {
    address.bytes[15] = 1;
  }
  return address;
}

// ---- table keys ------------------------------------------------------------

struct ListenerId {
  uint32_t process_id;
  uint64_t socket_id;
  bool operator==(const ListenerId&) const = default;
};

struct PortKey {
  uint64_t netns_id;
  uint16_t port;
  bool operator==(const PortKey&) const = default;
};

struct KeyHash {
  static std::size_t mix(uint64_t a, uint64_t b) {
    return std::hash<uint64_t>{}(a * 0x9e3779b97f4a7c15ull ^ b);
  }
  std::size_t operator()(const ListenerId& id) const { return mix(id.process_id, id.socket_id); }
  std::size_t operator()(const PortKey& key) const { return mix(key.netns_id, key.port); }
};

struct Listener {
  uint64_t netns_id;
  InetAddress address;
  bool v6only;
};

// Several sockets may listen on one port (SO_REUSEPORT, or different bound
// addresses); connects rotate among those that accept the destination.
struct PortListeners {
  std::vector<ListenerId> listeners;
  std::size_t next = 0;  // round-robin cursor
};

struct Connection {
  uint32_t process_id[2];  // indexed by ConnectionSide
  bool open[2];
};

// An address of an attached container, in the order added: the first of a
// family is the namespace's own address for connects it makes to others.
struct ContainerAddress {
  uint64_t netns_id;
  InetAddress address;
};

struct DenyRule {
  uint64_t client_netns;
  uint64_t server_netns;
  uint16_t port;  // 0: every port
  bool operator==(const DenyRule&) const = default;
};

struct ProcessState {
  uint64_t netns_id;
  std::unordered_set<uint64_t> listening_sockets;
  std::unordered_set<uint64_t> connections;  // those with an end of ours still open
};

Event reply_to(const Request& request, int status) {
  Event event{};
  event.type = EventType::kReply;
  event.op = request.op;
  event.status = static_cast<int16_t>(status);
  event.request_id = request.request_id;
  event.socket_id = request.socket_id;
  event.connection_id = request.connection_id;
  return event;
}

EngineOutput deliver(uint32_t process_id, const Event& event) {
  return EngineOutput{EngineNotice::kDeliver, process_id, 0, event};
}

EngineOutput notice(EngineNotice kind, uint32_t destination, uint64_t connection_id) {
  EngineOutput output{kind, destination, 0, Event{}};
  output.event.connection_id = connection_id;
  return output;
}

class SoftwareEngine final : public ControlPlaneEngine {
 public:
  explicit SoftwareEngine(const SoftwareEngineLimits& limits) : limits_(limits) {}

  std::string_view name() const override { return "software"; }

  void add_process(uint32_t process_id, uint64_t netns_id) override {
    processes_[process_id] = ProcessState{netns_id, {}, {}};
  }

  void remove_process(uint32_t process_id, std::vector<EngineOutput>& out) override {
    const auto found = processes_.find(process_id);
    if (found == processes_.end()) return;
    ProcessState& process = found->second;
    for (const uint64_t socket_id : process.listening_sockets) {
      remove_listener(ListenerId{process_id, socket_id});
    }
    for (const uint64_t connection_id : process.connections) {
      Connection& connection = connections_.at(connection_id);
      // A process connected to itself owns both ends.
      for (const ConnectionSide side : {kClientSide, kServerSide}) {
        if (connection.process_id[side] != process_id || !connection.open[side]) continue;
        connection.open[side] = false;
        out.push_back(notice(EngineNotice::kEndpointAbandoned, process_id, connection_id));
      }
      release_if_closed(connection_id, connection, out);
    }
    processes_.erase(found);
  }

  bool add_container_address(uint64_t netns_id, const InetAddress& address) override {
    for (ContainerAddress& known : container_addresses_) {
      if (same_host_address(known.address, address)) {
        known.netns_id = netns_id;  // the address moved to another namespace
        return true;
      }
    }
    if (container_addresses_.size() >= limits_.max_container_addresses) return false;
    container_addresses_.push_back(ContainerAddress{netns_id, address});
    return true;
  }

  void remove_container(uint64_t netns_id) override {
    std::erase_if(container_addresses_,
                  [netns_id](const ContainerAddress& known) { return known.netns_id == netns_id; });
  }

  bool deny_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) override {
    const DenyRule rule{client_netns, server_netns, port};
    if (std::find(deny_rules_.begin(), deny_rules_.end(), rule) != deny_rules_.end()) return true;
    if (deny_rules_.size() >= limits_.max_policy_rules) return false;
    deny_rules_.push_back(rule);
    return true;
  }

  void allow_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) override {
    std::erase(deny_rules_, DenyRule{client_netns, server_netns, port});
  }

  void submit(uint32_t process_id, const Request& request,
              std::vector<EngineOutput>& out) override {
    ++requests_;
    const auto found = processes_.find(process_id);
    if (found == processes_.end()) {
      reject_malformed(process_id, request, -ESRCH, out);
      return;
    }
    switch (request.op) {
      case RequestOp::kListen:
        return listen(process_id, found->second, request, out);
      case RequestOp::kUnlisten:
        return unlisten(process_id, found->second, request, out);
      case RequestOp::kConnect:
        return connect(process_id, found->second, request, out);
      case RequestOp::kClose:
        return close(process_id, found->second, request, out);
      case RequestOp::kCloseChannel:
      case RequestOp::kRequeue:
      case RequestOp::kShareListener:
        break;  // the monitor's own business; it never passes these on
    }
    reject_malformed(process_id, request, -EINVAL, out);
  }

  EngineCounters counters() const override {
    EngineCounters counters;
    counters.processes = processes_.size();
    counters.listeners = listeners_.size();
    counters.connections_open = connections_.size();
    counters.connections_total = connections_total_;
    counters.requests = requests_;
    counters.rejected_requests = rejected_requests_;
    counters.container_addresses = container_addresses_.size();
    counters.policy_rules = deny_rules_.size();
    counters.policy_denials = policy_denials_;
    return counters;
  }

 private:
  void reply(uint32_t process_id, const Request& request, int status,
             std::vector<EngineOutput>& out) {
    if (status != 0) ++rejected_requests_;
    out.push_back(deliver(process_id, reply_to(request, status)));
  }

  // The descriptor itself makes no sense: unknown op or unusable fields.
  void reject_malformed(uint32_t process_id, const Request& request, int status,
                        std::vector<EngineOutput>& out) {
    ++rejected_requests_;
    Event event = reply_to(request, status);
    event.type = EventType::kError;
    out.push_back(deliver(process_id, event));
  }

  void listen(uint32_t process_id, ProcessState& process, const Request& request,
              std::vector<EngineOutput>& out) {
    if (!is_well_formed(request.address) || request.address.port == 0) {
      return reject_malformed(process_id, request, -EINVAL, out);
    }
    const ListenerId id{process_id, request.socket_id};
    if (listeners_.contains(id)) return reply(process_id, request, -EADDRINUSE, out);
    if (listeners_.size() >= limits_.max_listeners) {
      return reply(process_id, request, -ENOBUFS, out);
    }
    // The kernel already arbitrated bind() conflicts, so sharing is legitimate.
    const bool v6only = (request.flags & kRequestV6Only) != 0;
    listeners_.emplace(id, Listener{process.netns_id, request.address, v6only});
    ports_[PortKey{process.netns_id, request.address.port}].listeners.push_back(id);
    process.listening_sockets.insert(request.socket_id);
    reply(process_id, request, 0, out);
  }

  void unlisten(uint32_t process_id, ProcessState& process, const Request& request,
                std::vector<EngineOutput>& out) {
    if (process.listening_sockets.erase(request.socket_id) == 0) {
      return reply(process_id, request, -EBADF, out);
    }
    remove_listener(ListenerId{process_id, request.socket_id});
    reply(process_id, request, 0, out);
  }

  void remove_listener(const ListenerId& id) {
    const auto found = listeners_.find(id);
    if (found == listeners_.end()) return;
    const PortKey key{found->second.netns_id, found->second.address.port};
    listeners_.erase(found);
    PortListeners& port = ports_.at(key);
    std::erase(port.listeners, id);
    if (port.listeners.empty()) ports_.erase(key);
  }

  bool accepts(const Listener& listener, const InetAddress& destination, uint8_t flags) const {
    const InetAddress& bound = listener.address;
    bool address_matches;
    if (is_ipv4_wildcard(bound)) {
      address_matches = is_ipv4_mapped(destination);
    } else if (is_ipv6_wildcard(bound)) {
      address_matches = !(listener.v6only && is_ipv4_mapped(destination));
    } else {
      address_matches = same_host_address(bound, destination);
    }
    if (!address_matches) return false;
    // A wildcard listener only proves the port; the destination must also be
    // an address of this netns, or the kernel would have routed it elsewhere.
    return !is_wildcard(bound) || is_loopback(destination) ||
           (flags & kRequestDestinationLocal) != 0;
  }

  // Round robin among the listeners on the port that accept the destination.
  const std::pair<const ListenerId, Listener>* pick_listener(uint64_t netns_id,
                                                             const InetAddress& destination,
                                                             uint8_t flags) {
    const auto found = ports_.find(PortKey{netns_id, destination.port});
    if (found == ports_.end()) return nullptr;
    PortListeners& port = found->second;
    const std::size_t count = port.listeners.size();
    for (std::size_t i = 0; i < count; ++i) {
      const std::size_t index = (port.next + i) % count;
      const auto listener = listeners_.find(port.listeners[index]);
      if (accepts(listener->second, destination, flags)) {
        port.next = (index + 1) % count;
        return &*listener;
      }
    }
    return nullptr;
  }

  // The namespace of the attached container that has `address`, or 0.
  uint64_t container_of(const InetAddress& address) const {
    for (const ContainerAddress& known : container_addresses_) {
      if (same_host_address(known.address, address)) return known.netns_id;
    }
    return 0;
  }

  // The namespace's own address for a connect to `destination`: its first
  // container address of the same family.
  const InetAddress* own_address_for(uint64_t netns_id, const InetAddress& destination) const {
    for (const ContainerAddress& known : container_addresses_) {
      if (known.netns_id == netns_id &&
          is_ipv4_mapped(known.address) == is_ipv4_mapped(destination)) {
        return &known.address;
      }
    }
    return nullptr;
  }

  bool denied(uint64_t client_netns, uint64_t server_netns, uint16_t port) const {
    return std::any_of(deny_rules_.begin(), deny_rules_.end(), [&](const DenyRule& rule) {
      return rule.client_netns == client_netns && rule.server_netns == server_netns &&
             (rule.port == 0 || rule.port == port);
    });
  }

  // Rotates through the kernel's ephemeral range, skipping ports we know are
  // listened on in the namespace.
  uint16_t next_ephemeral_port(uint64_t netns_id) {
    uint16_t& next = next_ephemeral_[netns_id];
    if (next < kEphemeralPortFirst || next > kEphemeralPortLast) next = kEphemeralPortFirst;
    uint16_t port = next;
    for (int tries = 0; tries <= kEphemeralPortLast - kEphemeralPortFirst; ++tries) {
      port = next;
      next = next == kEphemeralPortLast ? kEphemeralPortFirst : next + 1;
      if (!ports_.contains(PortKey{netns_id, port})) break;
    }
    return port;
  }

  void connect(uint32_t process_id, ProcessState& process, const Request& request,
               std::vector<EngineOutput>& out) {
    const InetAddress& source = request.source;
    const bool source_given = source.family == AF_INET || source.family == AF_INET6;
    if (!is_well_formed(request.address) || request.address.port == 0 ||
        (source.port != 0 && !is_well_formed(source))) {
      return reject_malformed(process_id, request, -EINVAL, out);
    }
    if (connections_.size() >= limits_.max_connections) {
      return reply(process_id, request, -ENOBUFS, out);
    }
    InetAddress destination = unspecified_to_loopback(request.address);
    destination.reserved = 0;  // carries EventFlags in events: nothing of the requester's
    // A destination the requester's namespace does not have may be another
    // attached container's: the connect crosses to that namespace.
    uint64_t server_netns = process.netns_id;
    uint8_t flags = request.flags;
    const InetAddress* crossing_from = nullptr;
    if (!is_loopback(destination) && (flags & kRequestDestinationLocal) == 0) {
      const uint64_t owner = container_of(destination);
      if (owner != 0 && owner != process.netns_id) {
        if (denied(process.netns_id, owner, destination.port)) {
          ++policy_denials_;
          Event refused = reply_to(request, -ECONNREFUSED);
          refused.local.reserved = kEventPolicyDenied;
          ++rejected_requests_;
          return out.push_back(deliver(process_id, refused));
        }
        crossing_from = own_address_for(process.netns_id, destination);
        // Not attached itself: the engine cannot say what address the
        // kernel would give the client, so the kernel carries it.
        if (crossing_from == nullptr) return reply(process_id, request, -ECONNREFUSED, out);
        server_netns = owner;
        flags |= kRequestDestinationLocal;
      }
    }
    const auto* listener = pick_listener(server_netns, destination, flags);
    if (listener == nullptr) return reply(process_id, request, -ECONNREFUSED, out);

    // The client's view uses its socket's family, the server's view its
    // listener's: an IPv6 listener sees IPv4 peers as AF_INET6 ::ffff:a.b.c.d.
    InetAddress client_address;
    if (source.port != 0) {
      client_address = source;
    } else {
      if (source_given && !is_wildcard(source)) {
        client_address = source;
      } else {
        client_address = crossing_from != nullptr ? *crossing_from : destination;
      }
      client_address.port = next_ephemeral_port(process.netns_id);
    }
    client_address.family = destination.family;
    client_address.reserved = 0;
    const uint8_t server_family = listener->second.address.family;

    const uint64_t connection_id = next_connection_id_++;
    const uint32_t server_process_id = listener->first.process_id;
    connections_.emplace(connection_id, Connection{{process_id, server_process_id}, {true, true}});
    ++connections_total_;
    process.connections.insert(connection_id);
    processes_.at(server_process_id).connections.insert(connection_id);

    EngineOutput created = notice(EngineNotice::kConnectionCreated, process_id, connection_id);
    created.peer_process = server_process_id;
    out.push_back(created);

    Event connected = reply_to(request, 0);
    connected.connection_id = connection_id;
    connected.local = client_address;
    connected.peer = destination;
    out.push_back(deliver(process_id, connected));

    Event incoming{};
    incoming.type = EventType::kIncoming;
    incoming.op = RequestOp::kConnect;
    incoming.socket_id = listener->first.socket_id;
    incoming.connection_id = connection_id;
    incoming.local = destination;
    incoming.local.family = server_family;
    incoming.peer = client_address;
    incoming.peer.family = server_family;
    out.push_back(deliver(server_process_id, incoming));
  }

  void close(uint32_t process_id, ProcessState& process, const Request& request,
             std::vector<EngineOutput>& out) {
    const auto found = connections_.find(request.connection_id);
    if (found == connections_.end()) return reply(process_id, request, -EBADF, out);
    Connection& connection = found->second;
    // A process connected to itself closes its client end first.
    int side = -1;
    for (const ConnectionSide candidate : {kClientSide, kServerSide}) {
      if (connection.process_id[candidate] == process_id && connection.open[candidate]) {
        side = candidate;
        break;
      }
    }
    if (side < 0) return reply(process_id, request, -EBADF, out);
    connection.open[side] = false;
    const bool still_ours =
        (connection.process_id[kClientSide] == process_id && connection.open[kClientSide]) ||
        (connection.process_id[kServerSide] == process_id && connection.open[kServerSide]);
    if (!still_ours) process.connections.erase(request.connection_id);
    reply(process_id, request, 0, out);
    release_if_closed(request.connection_id, connection, out);
  }

  void release_if_closed(uint64_t connection_id, const Connection& connection,
                         std::vector<EngineOutput>& out) {
    if (connection.open[kClientSide] || connection.open[kServerSide]) return;
    out.push_back(notice(EngineNotice::kConnectionReleased, kMonitorDestination, connection_id));
    connections_.erase(connection_id);
  }

  SoftwareEngineLimits limits_;
  std::unordered_map<uint32_t, ProcessState> processes_;
  std::unordered_map<ListenerId, Listener, KeyHash> listeners_;
  std::unordered_map<PortKey, PortListeners, KeyHash> ports_;
  std::unordered_map<uint64_t, Connection> connections_;
  std::unordered_map<uint64_t, uint16_t> next_ephemeral_;  // per netns
  std::vector<ContainerAddress> container_addresses_;
  std::vector<DenyRule> deny_rules_;
  uint64_t policy_denials_ = 0;
  uint64_t next_connection_id_ = 1;
  uint64_t connections_total_ = 0;
  uint64_t requests_ = 0;
  uint64_t rejected_requests_ = 0;
};

}  // namespace

std::unique_ptr<ControlPlaneEngine> make_software_engine() {
  return make_software_engine(SoftwareEngineLimits{});
}

std::unique_ptr<ControlPlaneEngine> make_software_engine(const SoftwareEngineLimits& limits) {
  return std::make_unique<SoftwareEngine>(limits);
}

}  // namespace netaccel

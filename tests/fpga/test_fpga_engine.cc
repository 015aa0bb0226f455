// The FPGA engine's RTL against the software engine: long random sequences
// of control-plane requests, valid and not (unknown processes and ids,
// double closes, port conflicts, full tables, garbage), mixed with attached
// containers' addresses and deny rules coming and going, must give both the
// same outputs in the same order, the same answers and the same counters.
#include <errno.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "../unit/test_support.h"
#include "netaccel/engine.h"
#include "netaccel/fpga_sim_engine.h"

namespace netaccel {
namespace {

using test::ipv4;
using test::Random;

std::string describe(const EngineOutput& output) {
  char text[260];
  const Event& event = output.event;
  std::snprintf(text, sizeof text,
                "notice %d to %u peer %u: type %d op %d status %d request %u socket %llu "
                "connection %llu local ..%u.%u port %u family %u flags %u peer ..%u.%u port %u",
                static_cast<int>(output.notice), output.destination, output.peer_process,
                static_cast<int>(event.type), static_cast<int>(event.op), event.status,
                event.request_id, static_cast<unsigned long long>(event.socket_id),
                static_cast<unsigned long long>(event.connection_id), event.local.bytes[14],
                event.local.bytes[15], event.local.port, event.local.family, event.local.reserved,
                event.peer.bytes[14], event.peer.bytes[15], event.peer.port);
  return text;
}

bool same_output(const EngineOutput& a, const EngineOutput& b) {
  return a.notice == b.notice && a.destination == b.destination &&
         a.peer_process == b.peer_process && std::memcmp(&a.event, &b.event, sizeof a.event) == 0;
}

void expect_same_counters(const EngineCounters& software, const EngineCounters& fpga) {
  EXPECT_EQ(software.processes, fpga.processes);
  EXPECT_EQ(software.listeners, fpga.listeners);
  EXPECT_EQ(software.connections_open, fpga.connections_open);
  EXPECT_EQ(software.connections_total, fpga.connections_total);
  EXPECT_EQ(software.requests, fpga.requests);
  EXPECT_EQ(software.rejected_requests, fpga.rejected_requests);
  EXPECT_EQ(software.container_addresses, fpga.container_addresses);
  EXPECT_EQ(software.policy_rules, fpga.policy_rules);
  EXPECT_EQ(software.policy_denials, fpga.policy_denials);
}

// The software engine with the RTL's table sizes.
SoftwareEngineLimits fpga_sized_limits(uint32_t max_listeners, uint32_t max_connections) {
  SoftwareEngineLimits limits;
  limits.max_listeners = max_listeners;
  limits.max_connections = max_connections;
  limits.max_container_addresses = kFpgaContainerAddresses;
  limits.max_policy_rules = kFpgaPolicyRules;
  return limits;
}

// fd00::n, an attached container's IPv6 address.
InetAddress ipv6_unique_local(uint8_t n, uint16_t port) {
  InetAddress address{};
  address.family = AF_INET6;
  address.bytes[0] = 0xfd;
  address.bytes[15] = n;
  address.port = port;
  return address;
}

// `::`, every IPv6 destination.
InetAddress ipv6_any() {
  InetAddress address{};
  address.family = AF_INET6;
  return address;
}

// Addresses attached containers may have: more than the RTL's table holds,
// so that it fills up. 10.0.0.1, 10.0.0.2 and fd00::7 are pick_address's too.
constexpr std::size_t kContainerAddressPool = 22;
InetAddress container_address(std::size_t index, uint16_t port) {
  if (index < 14) return ipv4(10, 0, 0, static_cast<uint8_t>(1 + index), port);
  return ipv6_unique_local(static_cast<uint8_t>(index - 13), port);
}

// The software engine walks a dead process's connections in hash order; the
// RTL in table order. Within one connection the order is fixed, so compare
// a removal's outputs ordered by connection (stable: notices keep theirs).
void order_by_connection(std::vector<EngineOutput>& outputs) {
  std::stable_sort(outputs.begin(), outputs.end(), [](const auto& a, const auto& b) {
    return a.event.connection_id < b.event.connection_id;
  });
}

// Addresses that exercise every admission rule, including malformed ones.
InetAddress pick_address(Random& random) {
  static const uint16_t kPorts[] = {
      0, 80, 8080, 8081, kEphemeralPortFirst, kEphemeralPortFirst + 1};
  InetAddress address{};
  switch (random.between(0, 8)) {
    case 0:
      address = ipv4(0, 0, 0, 0, 0);
      break;
    case 1:
      address = ipv4(127, 0, 0, 1, 0);
      break;
    case 2:
      address = ipv4(10, 0, 0, 1, 0);
      break;
    case 3:
      address = ipv4(10, 0, 0, 2, 0);
      break;
    case 4:
      address.family = AF_INET6;
      break;  // ::
    case 5:
      address.family = AF_INET6;
      address.bytes[15] = 1;
      break;  // ::1
    case 6:
      address.family = AF_INET6;
      address.bytes[0] = 0xfd;
      address.bytes[15] = 7;
      break;
    case 7:
      address = ipv4(10, 0, 0, 1, 0);
      address.bytes[10] = 0;
      break;  // AF_INET, unmapped
    default:
      address = ipv4(127, 0, 0, 1, 0);
      address.family = 99;
      break;  // no such family
  }
  address.port = kPorts[random.between(0, std::size(kPorts) - 1)];
  if (random.between(0, 15) == 0) address.reserved = static_cast<uint8_t>(random.next());
  return address;
}

class Differential {
 public:
  Differential(uint64_t seed, uint32_t max_listeners, uint32_t max_connections,
               uint32_t doorbell_batch)
      : random_(seed),
        software_(make_software_engine(fpga_sized_limits(max_listeners, max_connections))),
        fpga_(make_fpga_sim_engine(FpgaSimOptions{std::chrono::nanoseconds(0), doorbell_batch,
                                                  max_listeners, max_connections})) {}

  void run(int steps) {
    for (int step = 0; step < steps && !::testing::Test::HasFailure(); ++step) {
      const std::size_t choice = random_.between(0, 199);
      if (choice < 6) {
        remove_random_process();
      } else if (choice < 16) {
        add_random_process();
      } else if (choice < 24) {
        flush_and_compare();
      } else if (choice < 30) {
        add_random_container_address();
      } else if (choice < 31) {
        remove_random_container();
      } else if (choice < 35) {
        deny_random_connections();
      } else if (choice < 39) {
        allow_random_connections();
      } else {
        submit_random_request();
      }
    }
    flush_and_compare();
  }

  // How often the software engine gave each answer: proof that the sequence
  // reached the cases it is meant to compare.
  struct Coverage {
    std::size_t connected = 0, incoming = 0, released = 0, abandoned = 0, closed = 0;
    std::size_t in_use = 0, no_buffers = 0, bad_fd = 0, refused = 0, no_process = 0, invalid = 0;
    // Attached containers: connects across namespaces, refusals by a deny
    // rule, addresses moved to another namespace, additions a full table
    // refused, namespaces detached while they had addresses.
    std::size_t crossed = 0, policy_denied = 0, moved = 0, addresses_full = 0, rules_full = 0;
    std::size_t detached = 0;
  };
  Coverage coverage() const {
    Coverage c = container_coverage_;
    for (const EngineOutput& output : software_stream_) {
      const Event& event = output.event;
      c.released += output.notice == EngineNotice::kConnectionReleased;
      c.abandoned += output.notice == EngineNotice::kEndpointAbandoned;
      if (output.notice != EngineNotice::kDeliver) continue;
      c.incoming += event.type == EventType::kIncoming;
      c.connected +=
          event.op == RequestOp::kConnect && event.type == EventType::kReply && event.status == 0;
      c.closed += event.op == RequestOp::kClose && event.status == 0;
      c.in_use += event.status == -EADDRINUSE;
      c.no_buffers += event.status == -ENOBUFS;
      c.bad_fd += event.status == -EBADF;
      c.refused += event.status == -ECONNREFUSED;
      c.no_process += event.status == -ESRCH;
      c.invalid += event.status == -EINVAL;
      c.policy_denied += (event.local.reserved & kEventPolicyDenied) != 0;
    }
    return c;
  }

 private:
  static constexpr uint32_t kMaxProcessId = 12;  // below the RTL's process table size
  static constexpr uint64_t kNamespaces[] = {4026531840, 4026532001, 4026532002, 4026532003};

  // A namespace for the container tables: mostly one with processes,
  // sometimes one without, or 0 (which the engines take for "no container").
  uint64_t pick_container_netns() {
    switch (random_.between(0, 19)) {
      case 0:
        return 0;
      case 1:
        return 4026532099;
      default:
        return kNamespaces[random_.between(0, std::size(kNamespaces) - 1)];
    }
  }

  uint16_t pick_service_port() {
    static const uint16_t kServicePorts[] = {80, 8080, 8081};
    return kServicePorts[random_.between(0, std::size(kServicePorts) - 1)];
  }

  uint16_t pick_rule_port() {
    static const uint16_t kRulePorts[] = {0, 0, 80, 8080, 8081, kEphemeralPortFirst};
    return kRulePorts[random_.between(0, std::size(kRulePorts) - 1)];
  }

  void add_random_container_address() {
    const uint64_t netns = pick_container_netns();
    // Mostly the pool's, with any port; now and then loopback, wildcards, garbage.
    const InetAddress address =
        random_.between(0, 9) != 0
            ? container_address(random_.between(0, kContainerAddressPool - 1),
                                static_cast<uint16_t>(random_.next()))
            : pick_address(random_);
    const uint64_t before = software_->counters().container_addresses;
    const bool software_added = software_->add_container_address(netns, address);
    const bool fpga_added = fpga_->add_container_address(netns, address);
    ASSERT_EQ(software_added, fpga_added) << "adding an address of netns " << netns;
    container_coverage_.addresses_full += !software_added;
    container_coverage_.moved +=
        software_added && software_->counters().container_addresses == before;
  }

  void remove_random_container() {
    const uint64_t netns = pick_container_netns();
    const uint64_t before = software_->counters().container_addresses;
    software_->remove_container(netns);
    fpga_->remove_container(netns);
    container_coverage_.detached += software_->counters().container_addresses < before;
  }

  void deny_random_connections() {
    const Rule rule{pick_container_netns(), pick_container_netns(), pick_rule_port()};
    const bool software_added =
        software_->deny_connections(rule.client_netns, rule.server_netns, rule.port);
    const bool fpga_added =
        fpga_->deny_connections(rule.client_netns, rule.server_netns, rule.port);
    ASSERT_EQ(software_added, fpga_added)
        << "denying " << rule.client_netns << " -> " << rule.server_netns << " port " << rule.port;
    container_coverage_.rules_full += !software_added;
    if (software_added) rules_.push_back(rule);
  }

  void allow_random_connections() {
    // Mostly a rule that was denied (perhaps already allowed), else any.
    Rule rule{pick_container_netns(), pick_container_netns(), pick_rule_port()};
    if (!rules_.empty() && random_.between(0, 9) < 8) {
      const std::size_t index = random_.between(0, rules_.size() - 1);
      rule = rules_[index];
      rules_.erase(rules_.begin() + static_cast<std::ptrdiff_t>(index));
    }
    software_->allow_connections(rule.client_netns, rule.server_netns, rule.port);
    fpga_->allow_connections(rule.client_netns, rule.server_netns, rule.port);
  }

  void add_random_process() {
    const uint32_t process_id = static_cast<uint32_t>(random_.between(1, kMaxProcessId));
    // The monitor never registers a live process twice.
    if (std::find(live_.begin(), live_.end(), process_id) != live_.end()) return;
    const uint64_t netns = kNamespaces[random_.between(0, std::size(kNamespaces) - 1)];
    software_->add_process(process_id, netns);
    fpga_->add_process(process_id, netns);
    live_.push_back(process_id);
    netns_of_[process_id] = netns;
  }

  void remove_random_process() {
    // Unknown processes too: both must ignore them.
    const uint32_t process_id = static_cast<uint32_t>(random_.between(1, kMaxProcessId));
    flush_and_compare();  // the removal's outputs alone, to reorder them
    std::vector<EngineOutput> software_out, fpga_out;
    software_->remove_process(process_id, software_out);
    fpga_->remove_process(process_id, fpga_out);
    order_by_connection(software_out);
    order_by_connection(fpga_out);
    software_stream_.insert(software_stream_.end(), software_out.begin(), software_out.end());
    fpga_stream_.insert(fpga_stream_.end(), fpga_out.begin(), fpga_out.end());
    std::erase(live_, process_id);
    compare_streams();
  }

  void submit_random_request() {
    uint32_t process_override = 0;
    bool to_container = false;
    Request request{};
    request.request_id = ++last_request_id_;
    request.socket_id = random_.between(0, 5);
    switch (random_.between(0, 19)) {
      case 0:
      case 1:
      case 2:
      case 3:
        request.op = RequestOp::kListen;
        request.address = pick_address(random_);
        if (random_.between(0, 2) != 0) {  // a server of an attached container
          request.address = random_.between(0, 2) == 0
                                ? container_address(random_.between(0, kContainerAddressPool - 1),
                                                    pick_service_port())
                                : (random_.between(0, 1) == 0 ? ipv4(0, 0, 0, 0, 0) : ipv6_any());
          request.address.port = pick_service_port();
        }
        request.backlog = static_cast<uint16_t>(random_.next());
        break;
      case 4:
      case 5:
        request.op = RequestOp::kUnlisten;
        break;
      case 6:
      case 7:
      case 8:
      case 9:
      case 10:
      case 11:
      case 12:
        request.op = RequestOp::kConnect;
        // Often an attached container's address, maybe another namespace's.
        to_container = random_.between(0, 1) == 0;
        request.address = to_container
                              ? container_address(random_.between(0, kContainerAddressPool - 1),
                                                  pick_service_port())
                              : pick_address(random_);
        if (random_.between(0, 2) == 0) request.source = pick_address(random_);
        if (random_.between(0, 4) == 0) request.source.port = 0;
        break;
      case 13:
      case 14:
      case 15:
      case 16:
      case 17:
        request.op = RequestOp::kClose;
        request.connection_id =
            random_.between(0, 9) == 0 ? random_.next() : random_.between(0, created_.size() + 1);
        if (!created_.empty() && random_.between(0, 9) < 7) {
          // One end of a recent connection closes (or closes again).
          const Created& recent =
              created_[created_.size() - 1 -
                       random_.between(0, std::min<std::size_t>(created_.size(), 16) - 1)];
          request.connection_id = recent.connection_id;
          process_override = random_.between(0, 1) == 0 ? recent.client : recent.server;
        }
        break;
      case 18:
        request.op = static_cast<RequestOp>(random_.next());
        break;
      default:  // bytes from nowhere
        for (auto& byte : std::span(reinterpret_cast<uint8_t*>(&request), sizeof request)) {
          byte = static_cast<uint8_t>(random_.next());
        }
        break;
    }
    request.flags = static_cast<uint8_t>(random_.between(0, 3));
    // The preload marks a container's address local only in its own namespace.
    if (to_container && random_.between(0, 3) != 0) request.flags &= ~kRequestDestinationLocal;
    // Mostly live processes, sometimes strangers.
    uint32_t process_id = !live_.empty() && random_.between(0, 9) != 0
                              ? live_[random_.between(0, live_.size() - 1)]
                              : static_cast<uint32_t>(random_.between(1, kMaxProcessId + 3));
    if (process_override != 0) process_id = process_override;
    const std::size_t before = software_stream_.size();
    software_->submit(process_id, request, software_stream_);
    fpga_->submit(process_id, request, fpga_stream_);
    for (std::size_t i = before; i < software_stream_.size(); ++i) {
      const EngineOutput& output = software_stream_[i];
      if (output.notice == EngineNotice::kConnectionCreated) {
        created_.push_back(
            Created{output.event.connection_id, output.destination, output.peer_process});
        container_coverage_.crossed +=
            netns_of_[output.destination] != netns_of_[output.peer_process];
      }
    }
  }

  void flush_and_compare() {
    software_->flush(software_stream_);
    fpga_->flush(fpga_stream_);
    compare_streams();
    expect_same_counters(software_->counters(), fpga_->counters());
  }

  void compare_streams() {
    ASSERT_EQ(software_stream_.size(), fpga_stream_.size()) << "after request " << last_request_id_;
    for (std::size_t i = compared_; i < software_stream_.size(); ++i) {
      ASSERT_TRUE(same_output(software_stream_[i], fpga_stream_[i]))
          << "output " << i << " after request " << last_request_id_
          << "\n  software: " << describe(software_stream_[i])
          << "\n  fpga:     " << describe(fpga_stream_[i]);
    }
    compared_ = software_stream_.size();
  }

  Random random_;
  std::unique_ptr<ControlPlaneEngine> software_;
  std::unique_ptr<FpgaSimEngine> fpga_;
  std::vector<uint32_t> live_;
  std::vector<EngineOutput> software_stream_, fpga_stream_;
  std::size_t compared_ = 0;
  struct Created {
    uint64_t connection_id;
    uint32_t client, server;
  };
  std::vector<Created> created_;
  uint32_t last_request_id_ = 0;
  uint64_t netns_of_[kMaxProcessId + 1] = {};
  struct Rule {
    uint64_t client_netns, server_netns;
    uint16_t port;
  };
  std::vector<Rule> rules_;  // denied, perhaps allowed since
  Coverage container_coverage_;
};

// Roomy tables: long-lived state, round robin, ephemeral ports.
// With full tables few connects succeed, and fewer still across namespaces.
void expect_everything_covered(const Differential::Coverage& c, std::size_t crossed = 50) {
  std::printf(
      "coverage: %zu connected, %zu closed, %zu released, %zu abandoned; %zu EADDRINUSE, "
      "%zu ENOBUFS, %zu EBADF, %zu ECONNREFUSED, %zu ESRCH, %zu EINVAL; %zu across namespaces, "
      "%zu denied by policy, %zu addresses moved, %zu refused (table full), %zu rules refused "
      "(table full), %zu detached\n",
      c.connected, c.closed, c.released, c.abandoned, c.in_use, c.no_buffers, c.bad_fd, c.refused,
      c.no_process, c.invalid, c.crossed, c.policy_denied, c.moved, c.addresses_full, c.rules_full,
      c.detached);
  EXPECT_GT(c.connected, 100u);
  EXPECT_EQ(c.incoming, c.connected);
  EXPECT_GT(c.closed, 100u);
  EXPECT_GT(c.released, 10u);
  EXPECT_GT(c.abandoned, 10u);
  EXPECT_GT(c.in_use, 10u);
  EXPECT_GT(c.bad_fd, 100u);
  EXPECT_GT(c.refused, 100u);
  EXPECT_GT(c.no_process, 100u);
  EXPECT_GT(c.invalid, 100u);
  EXPECT_GT(c.crossed, crossed);
  EXPECT_GT(c.policy_denied, 100u);
  EXPECT_GT(c.moved, 10u);
  EXPECT_GT(c.addresses_full, 10u);
  EXPECT_GT(c.rules_full, 10u);
  EXPECT_GT(c.detached, 10u);
}

TEST(FpgaEngineDifferential, RandomRequestsRoomyTables) {
  for (const uint64_t seed : {1, 2, 3}) {
    Differential differential(seed, kFpgaListeners, kFpgaConnections, 1 + seed * 5);
    differential.run(20000);
    expect_everything_covered(differential.coverage());
  }
}

// Small limits: the tables are full most of the time.
TEST(FpgaEngineDifferential, RandomRequestsFullTables) {
  for (const uint64_t seed : {11, 12, 13}) {
    Differential differential(seed, 4, 6, seed % 3 == 0 ? 1 : kFpgaRequestSlots);
    differential.run(20000);
    expect_everything_covered(differential.coverage(), 10);
    EXPECT_GT(differential.coverage().no_buffers, 100u);
  }
}

// Both engines fed the same scripted requests, every answer compared.
class Lockstep {
 public:
  explicit Lockstep(uint32_t max_connections = kFpgaConnections)
      : software_(make_software_engine(fpga_sized_limits(kFpgaListeners, max_connections))),
        fpga_(make_fpga_sim_engine(
            FpgaSimOptions{std::chrono::nanoseconds(0), 1, UINT32_MAX, max_connections})) {}

  void add_process(uint32_t process_id, uint64_t netns) {
    software_->add_process(process_id, netns);
    fpga_->add_process(process_id, netns);
  }

  bool add_container_address(uint64_t netns, const InetAddress& address) {
    const bool added = software_->add_container_address(netns, address);
    EXPECT_EQ(added, fpga_->add_container_address(netns, address));
    return added;
  }

  void remove_container(uint64_t netns) {
    software_->remove_container(netns);
    fpga_->remove_container(netns);
  }

  bool deny_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) {
    const bool added = software_->deny_connections(client_netns, server_netns, port);
    EXPECT_EQ(added, fpga_->deny_connections(client_netns, server_netns, port));
    return added;
  }

  void allow_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) {
    software_->allow_connections(client_netns, server_netns, port);
    fpga_->allow_connections(client_netns, server_netns, port);
  }

  // The software engine's, once the RTL's are found equal (the host's
  // descriptors are all processed: every submit flushes).
  EngineCounters counters() {
    std::vector<EngineOutput> fpga_out;
    fpga_->flush(fpga_out);
    EXPECT_TRUE(fpga_out.empty());
    expect_same_counters(software_->counters(), fpga_->counters());
    return software_->counters();
  }

  std::vector<EngineOutput> submit(uint32_t process_id, const Request& request) {
    std::vector<EngineOutput> software_out, fpga_out;
    software_->submit(process_id, request, software_out);
    fpga_->submit(process_id, request, fpga_out);
    fpga_->flush(fpga_out);
    EXPECT_EQ(software_out.size(), fpga_out.size());
    for (std::size_t i = 0; i < std::min(software_out.size(), fpga_out.size()); ++i) {
      EXPECT_TRUE(same_output(software_out[i], fpga_out[i]))
          << "software: " << describe(software_out[i]) << "\nfpga:     " << describe(fpga_out[i]);
    }
    return software_out;
  }

 private:
  std::unique_ptr<ControlPlaneEngine> software_;
  std::unique_ptr<FpgaSimEngine> fpga_;
};

// A connection that outlives a whole table's worth of ids makes its
// successor's slot taken: the RTL must probe past it, on insertion and on
// every lookup after.
TEST(FpgaEngineDifferential, ConnectionTableProbesPastOccupiedSlots) {
  Lockstep engines;
  engines.add_process(1, 7);
  engines.add_process(2, 7);
  Request listen{};
  listen.op = RequestOp::kListen;
  listen.address = ipv4(127, 0, 0, 1, 8080);
  engines.submit(1, listen);
  Request connect{};
  connect.op = RequestOp::kConnect;
  connect.address = listen.address;
  auto close = [](uint64_t connection_id) {
    Request request{};
    request.op = RequestOp::kClose;
    request.connection_id = connection_id;
    return request;
  };

  std::vector<uint64_t> long_lived;
  for (uint64_t id = 1; id <= 3 * kFpgaConnections + 5 && !::testing::Test::HasFailure(); ++id) {
    ASSERT_EQ(engines.submit(2, connect).size(), 3u);
    // Every 1024th id stays open, so the ids after it collide with it.
    if (id % kFpgaConnections == 1) {
      long_lived.push_back(id);
      continue;
    }
    engines.submit(2, close(id));
    engines.submit(1, close(id));
  }
  for (const uint64_t id : long_lived) {
    engines.submit(1, close(id));
    engines.submit(1, close(id));  // twice: -EBADF after a probe
    engines.submit(2, close(id));
  }
  engines.submit(2, close(5 * kFpgaConnections));  // never existed
}

// Two attached containers on one bridge, as in the software engine's
// CrossContainerTest: 10.0.0.2 and fd00::2 (kClientNetns), 10.0.0.3
// (kServerNetns), with a listener on [::]:6379 in the latter.
class CrossContainerLockstep : public ::testing::Test {
 protected:
  static constexpr uint64_t kClientNetns = 4026532001;
  static constexpr uint64_t kServerNetns = 4026532002;
  static constexpr uint64_t kThirdNetns = 4026532100;

  explicit CrossContainerLockstep(uint32_t max_connections = kFpgaConnections)
      : engines(max_connections) {}

  void SetUp() override {
    engines.add_process(1, kClientNetns);
    engines.add_process(2, kServerNetns);
    ASSERT_TRUE(engines.add_container_address(kClientNetns, ipv4(10, 0, 0, 2, 0)));
    ASSERT_TRUE(engines.add_container_address(kClientNetns, ipv6_unique_local(2, 0)));
    ASSERT_TRUE(engines.add_container_address(kServerNetns, ipv4(10, 0, 0, 3, 0)));
    listen(2, 5, [] {
      InetAddress any = ipv6_any();
      any.port = 6379;
      return any;
    }());
  }

  void listen(uint32_t process_id, uint64_t socket_id, const InetAddress& address) {
    Request request{};
    request.op = RequestOp::kListen;
    request.request_id = ++request_id;
    request.socket_id = socket_id;
    request.address = address;
    const auto out = engines.submit(process_id, request);
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(out[0].event.status, 0);
  }

  // The connect's outputs (both engines' compared); the reply is the last
  // but one of three, or the only one.
  std::vector<EngineOutput> connect(uint32_t process_id, const InetAddress& destination,
                                    uint8_t flags = 0, const InetAddress& source = {}) {
    Request request{};
    request.op = RequestOp::kConnect;
    request.request_id = ++request_id;
    request.socket_id = 40 + request_id;
    request.flags = flags;
    request.address = destination;
    request.source = source;
    return engines.submit(process_id, request);
  }

  // The server process a connect reached, or 0.
  uint32_t server_of(uint32_t process_id, const InetAddress& destination, uint8_t flags = 0) {
    const auto out = connect(process_id, destination, flags);
    return out.size() == 3 ? out[0].peer_process : 0;
  }

  Lockstep engines;
  uint32_t request_id = 0;
};

bool same_host(const InetAddress& a, const InetAddress& b) {
  return std::memcmp(a.bytes, b.bytes, sizeof a.bytes) == 0;
}

TEST_F(CrossContainerLockstep, ConnectToAnotherContainersAddressReachesItsListener) {
  const auto out = connect(1, ipv4(10, 0, 0, 3, 6379));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].peer_process, 2u);
  const Event& reply = out[1].event;
  EXPECT_TRUE(same_host(reply.local, ipv4(10, 0, 0, 2, 0)));
  EXPECT_EQ(reply.local.port, kEphemeralPortFirst);
  EXPECT_EQ(out[2].event.local.family, AF_INET6);
  // IPv6: the server's namespace has no IPv6 address yet.
  EXPECT_EQ(server_of(1, ipv6_unique_local(3, 6379)), 0u);
  ASSERT_TRUE(engines.add_container_address(kServerNetns, ipv6_unique_local(3, 0)));
  const auto v6 = connect(1, ipv6_unique_local(3, 6379));
  ASSERT_EQ(v6.size(), 3u);
  EXPECT_TRUE(same_host(v6[1].event.local, ipv6_unique_local(2, 0)));
  EXPECT_EQ(v6[1].event.local.port, kEphemeralPortFirst + 1);
  EXPECT_EQ(engines.counters().container_addresses, 4u);
}

TEST_F(CrossContainerLockstep, LoopbackLocalAndUnknownAddressesStayInTheNamespace) {
  EXPECT_EQ(server_of(1, ipv4(127, 0, 0, 1, 6379)), 0u);
  EXPECT_EQ(server_of(1, ipv4(0, 0, 0, 0, 6379)), 0u);  // the loopback, too
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 4, 6379)), 0u);
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379), kRequestDestinationLocal), 0u);
  EXPECT_EQ(server_of(2, ipv4(10, 0, 0, 3, 6379), kRequestDestinationLocal), 2u);
  // Its own namespace's address, not marked local: no crossing, and the
  // wildcard listener does not take it.
  EXPECT_EQ(server_of(2, ipv4(10, 0, 0, 3, 6379)), 0u);
}

TEST_F(CrossContainerLockstep, AClientWithoutAnAddressOfTheFamilyGoesToTheKernel) {
  engines.remove_container(kClientNetns);
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 0u);
  ASSERT_TRUE(engines.add_container_address(kClientNetns, ipv6_unique_local(2, 0)));
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 0u);
  ASSERT_TRUE(engines.add_container_address(kClientNetns, ipv4(10, 0, 0, 2, 0)));
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 2u);
  // Namespace 0 is nobody's: its addresses are not routed to.
  ASSERT_TRUE(engines.add_container_address(0, ipv4(10, 0, 0, 9, 0)));
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 9, 6379)), 0u);
  engines.remove_container(kServerNetns);
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 0u);
  EXPECT_EQ(engines.counters().container_addresses, 3u);
}

TEST_F(CrossContainerLockstep, DenyRulesRefuseWithThePolicyFlagUntilAllowed) {
  ASSERT_TRUE(engines.deny_connections(kClientNetns, kServerNetns, 6379));
  ASSERT_TRUE(engines.deny_connections(kClientNetns, kServerNetns, 6379));  // once is enough
  EXPECT_EQ(engines.counters().policy_rules, 1u);
  auto out = connect(1, ipv4(10, 0, 0, 3, 6379));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].event.status, -ECONNREFUSED);
  EXPECT_EQ(out[0].event.local.reserved, kEventPolicyDenied);
  out = connect(1, ipv4(10, 0, 0, 3, 6380));  // not that port: no listener there
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].event.local.reserved, 0);
  // A rule has a direction and a port.
  listen(1, 6, ipv4(0, 0, 0, 0, 6379));
  EXPECT_EQ(server_of(2, ipv4(10, 0, 0, 2, 6379)), 1u);
  listen(2, 7, ipv4(0, 0, 0, 0, 80));
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 80)), 2u);
  // Port 0 denies every port, even where the client has no address.
  ASSERT_TRUE(engines.deny_connections(kClientNetns, kServerNetns, 0));
  out = connect(1, ipv4(10, 0, 0, 3, 80));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].event.local.reserved, kEventPolicyDenied);
  // Denied before the listener is looked for.
  out = connect(1, ipv4(10, 0, 0, 3, 6380));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].event.local.reserved, kEventPolicyDenied);
  ASSERT_TRUE(engines.add_container_address(kServerNetns, ipv6_unique_local(3, 0)));
  engines.remove_container(kClientNetns);
  out = connect(1, ipv6_unique_local(3, 80));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].event.local.reserved, kEventPolicyDenied);
  ASSERT_TRUE(engines.add_container_address(kClientNetns, ipv4(10, 0, 0, 2, 0)));
  // Not within the namespace, nor to the loopback.
  ASSERT_TRUE(engines.deny_connections(kServerNetns, kServerNetns, 0));
  EXPECT_EQ(server_of(2, ipv4(10, 0, 0, 3, 80), kRequestDestinationLocal), 2u);
  EXPECT_EQ(server_of(2, ipv4(127, 0, 0, 1, 80)), 2u);
  engines.allow_connections(kClientNetns, kServerNetns, 0);
  engines.allow_connections(kClientNetns, kServerNetns, 0);  // gone already
  engines.allow_connections(kClientNetns, kServerNetns, 6379);
  engines.allow_connections(kClientNetns, kServerNetns, 1);  // never there
  EXPECT_EQ(engines.counters().policy_rules, 1u);
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 2u);
  EXPECT_EQ(engines.counters().policy_denials, 4u);
}

// The first address of a family, in the order added, is the namespace's own;
// an address added again moves in place, a detached namespace's addresses
// leave the others' order as it was.
TEST_F(CrossContainerLockstep, AddressesKeepTheirOrder) {
  engines.add_process(3, kThirdNetns);
  ASSERT_TRUE(engines.add_container_address(kThirdNetns, ipv4(10, 0, 0, 7, 0)));
  ASSERT_TRUE(engines.add_container_address(kClientNetns, ipv4(10, 0, 0, 4, 0)));
  ASSERT_TRUE(engines.add_container_address(kThirdNetns, ipv4(10, 0, 0, 8, 0)));
  ASSERT_TRUE(engines.add_container_address(kClientNetns, ipv4(10, 0, 0, 5, 0)));
  auto client_host = [&] {
    const auto out = connect(1, ipv4(10, 0, 0, 3, 6379));
    return out.size() == 3 ? out[1].event.local.bytes[15] : 0;
  };
  EXPECT_EQ(client_host(), 2);
  ASSERT_TRUE(engines.add_container_address(kThirdNetns, ipv4(10, 0, 0, 2, 0)));  // moves
  EXPECT_EQ(client_host(), 4);
  engines.remove_container(kThirdNetns);  // 10.0.0.7, 10.0.0.2 and 10.0.0.8
  EXPECT_EQ(client_host(), 4);
  ASSERT_TRUE(engines.add_container_address(kThirdNetns, ipv4(10, 0, 0, 4, 0)));
  EXPECT_EQ(client_host(), 5);
  ASSERT_TRUE(engines.add_container_address(kClientNetns, ipv4(10, 0, 0, 4, 0)));  // back
  EXPECT_EQ(client_host(), 4);
  // The server's address moves to the third namespace: its listeners now.
  listen(3, 9, ipv4(0, 0, 0, 0, 6379));
  ASSERT_TRUE(engines.add_container_address(kThirdNetns, ipv4(10, 0, 0, 3, 0)));
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 3u);
  EXPECT_EQ(engines.counters().container_addresses, 4u);
}

// A crossing client's port comes from its own namespace's ephemeral range;
// its bound address, when it has one, is kept.
TEST_F(CrossContainerLockstep, ClientAddressAndPortAreTheClientNamespaces) {
  listen(2, 8, ipv4(0, 0, 0, 0, kEphemeralPortFirst));  // in the server's namespace
  auto out = connect(1, ipv4(10, 0, 0, 3, 6379));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].event.local.port, kEphemeralPortFirst);
  listen(1, 9, ipv4(0, 0, 0, 0, kEphemeralPortFirst + 1));  // in the client's
  out = connect(1, ipv4(10, 0, 0, 3, 6379));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].event.local.port, kEphemeralPortFirst + 2);
  // Bound to an address without a port, to a wildcard, to address and port.
  out = connect(1, ipv4(10, 0, 0, 3, 6379), 0, ipv4(10, 0, 0, 99, 0));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].event.local.bytes[15], 99);
  out = connect(1, ipv4(10, 0, 0, 3, 6379), 0, ipv4(0, 0, 0, 0, 0));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].event.local.bytes[15], 2);
  out = connect(1, ipv4(10, 0, 0, 3, 6379), 0, ipv4(10, 0, 0, 98, 4000));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].event.local.port, 4000);
  // An IPv6 wildcard listener sees the IPv4 client as ::ffff:10.0.0.2.
  EXPECT_EQ(out[2].event.peer.family, AF_INET6);
}

// The RTL's tables hold 16 entries each: the host refuses the 17th, but an
// address added again or a rule denied again is no new entry.
TEST_F(CrossContainerLockstep, FullTablesRefuseNewEntries) {
  for (uint8_t i = 0; engines.counters().container_addresses < kFpgaContainerAddresses; ++i) {
    ASSERT_TRUE(engines.add_container_address(kThirdNetns, ipv4(10, 0, 1, i, 0)));
  }
  EXPECT_FALSE(engines.add_container_address(kThirdNetns, ipv4(10, 0, 2, 1, 0)));
  EXPECT_TRUE(engines.add_container_address(kThirdNetns, ipv4(10, 0, 0, 3, 0)));  // moved
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 0u);  // no listener there
  EXPECT_TRUE(engines.add_container_address(kServerNetns, ipv4(10, 0, 0, 3, 0)));
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 2u);
  EXPECT_EQ(server_of(1, ipv4(10, 0, 2, 1, 6379)), 0u);  // refused: not known
  engines.remove_container(kClientNetns);
  EXPECT_TRUE(engines.add_container_address(kServerNetns, ipv4(10, 0, 2, 1, 0)));
  EXPECT_TRUE(engines.add_container_address(kClientNetns, ipv4(10, 0, 0, 2, 0)));
  EXPECT_FALSE(engines.add_container_address(kClientNetns, ipv6_unique_local(2, 0)));
  EXPECT_EQ(server_of(1, ipv4(10, 0, 2, 1, 6379)), 2u);
  EXPECT_EQ(engines.counters().container_addresses, kFpgaContainerAddresses);

  for (uint16_t port = 1; engines.counters().policy_rules < kFpgaPolicyRules; ++port) {
    ASSERT_TRUE(engines.deny_connections(kClientNetns, kThirdNetns, port));
  }
  EXPECT_FALSE(engines.deny_connections(kClientNetns, kServerNetns, 6379));
  EXPECT_TRUE(engines.deny_connections(kClientNetns, kThirdNetns, 1));
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 2u);
  engines.allow_connections(kClientNetns, kThirdNetns, 1);
  EXPECT_TRUE(engines.deny_connections(kClientNetns, kServerNetns, 6379));
  EXPECT_EQ(server_of(1, ipv4(10, 0, 0, 3, 6379)), 0u);
  EXPECT_EQ(engines.counters().policy_rules, kFpgaPolicyRules);
  EXPECT_EQ(engines.counters().policy_denials, 1u);
}

// A full connection table answers -ENOBUFS before any rule is looked at.
class CrossContainerFullLockstep : public CrossContainerLockstep {
 protected:
  CrossContainerFullLockstep() : CrossContainerLockstep(1) {}
};

TEST_F(CrossContainerFullLockstep, NoBuffersComesBeforeTheRules) {
  ASSERT_TRUE(engines.deny_connections(kClientNetns, kServerNetns, 0));
  ASSERT_EQ(server_of(2, ipv4(127, 0, 0, 1, 6379)), 2u);
  const auto out = connect(1, ipv4(10, 0, 0, 3, 6379));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].event.status, -ENOBUFS);
  EXPECT_EQ(out[0].event.local.reserved, 0);
  EXPECT_EQ(engines.counters().policy_denials, 0u);
}

// Table changes take effect in order with the requests around them, though
// a doorbell carries them all at once.
TEST(FpgaEngine, ContainerTablesChangeInOrderWithRequests) {
  auto software = make_software_engine(fpga_sized_limits(kFpgaListeners, kFpgaConnections));
  auto fpga = make_fpga_sim_engine(FpgaSimOptions{std::chrono::nanoseconds(0), 64});
  std::vector<EngineOutput> software_out, fpga_out;
  for (ControlPlaneEngine* engine :
       {software.get(), static_cast<ControlPlaneEngine*>(fpga.get())}) {
    std::vector<EngineOutput>& out = engine == software.get() ? software_out : fpga_out;
    engine->add_process(1, 11);
    engine->add_process(2, 12);
    Request request{};
    request.op = RequestOp::kListen;
    request.address = ipv4(0, 0, 0, 0, 80);
    engine->submit(2, request, out);
    request.op = RequestOp::kConnect;
    request.address = ipv4(10, 0, 0, 3, 80);
    engine->submit(1, request, out);  // refused: nobody has the address yet
    EXPECT_TRUE(engine->add_container_address(11, ipv4(10, 0, 0, 2, 0)));
    EXPECT_TRUE(engine->add_container_address(12, ipv4(10, 0, 0, 3, 0)));
    engine->submit(1, request, out);  // connects
    EXPECT_TRUE(engine->deny_connections(11, 12, 80));
    engine->submit(1, request, out);  // denied
    engine->allow_connections(11, 12, 80);
    engine->remove_container(11);
    engine->submit(1, request, out);  // refused: the client has no address
    engine->flush(out);
  }
  ASSERT_EQ(software_out.size(), fpga_out.size());
  ASSERT_EQ(software_out.size(), 1u + 1 + 3 + 1 + 1);
  for (std::size_t i = 0; i < software_out.size(); ++i) {
    EXPECT_TRUE(same_output(software_out[i], fpga_out[i]))
        << "software: " << describe(software_out[i]) << "\nfpga:     " << describe(fpga_out[i]);
  }
  EXPECT_EQ(fpga->stats().doorbells, 1u);
  expect_same_counters(software->counters(), fpga->counters());
}

// Requests wait for the doorbell: nothing comes back until the batch is full
// or the host flushes.
TEST(FpgaEngine, OutputsWaitForTheDoorbell) {
  auto engine = make_fpga_sim_engine(FpgaSimOptions{std::chrono::nanoseconds(0), 3});
  engine->add_process(1, 7);
  Request listen{};
  listen.op = RequestOp::kListen;
  listen.address = ipv4(0, 0, 0, 0, 8080);
  std::vector<EngineOutput> out;
  engine->submit(1, listen, out);
  EXPECT_TRUE(out.empty());
  listen.socket_id = 1;
  engine->submit(1, listen, out);  // the third descriptor, with the registration
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(engine->stats().doorbells, 1u);
  listen.socket_id = 2;
  engine->submit(1, listen, out);
  EXPECT_EQ(out.size(), 2u);
  engine->flush(out);
  ASSERT_EQ(out.size(), 3u);
  for (const EngineOutput& output : out) EXPECT_EQ(output.event.status, 0);
  EXPECT_EQ(engine->counters().listeners, 3u);
  EXPECT_EQ(engine->stats().descriptors, 4u);
  EXPECT_GT(engine->stats().busy_cycles, 0u);
}

}  // namespace
}  // namespace netaccel

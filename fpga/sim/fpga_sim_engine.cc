// The host side of the simulated NIC: writes descriptors into the model's
// request ring, rings its doorbell and collects its outputs, one clock cycle
// at a time.
#include "netaccel/fpga_sim_engine.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <span>
#include <stdexcept>

#include "Vna_engine_top.h"
#include "host_descriptor.h"
#include "verilated.h"

namespace netaccel {

namespace {

using fpga::HostDescriptorKind;

struct HostDescriptor {
  HostDescriptorKind kind;
  uint32_t process_id;
  Request request;
};

struct DenyRule {
  uint64_t client_netns;
  uint64_t server_netns;
  uint16_t port;  // 0: every port
  bool operator==(const DenyRule&) const = default;
};

// Verilator keeps a wide signal as 32-bit words, least significant first;
// on a little-endian host that is the descriptor's own byte order.
static_assert(std::endian::native == std::endian::little);
constexpr std::size_t kWordBytes = sizeof(uint32_t);
constexpr std::size_t kEventWords = sizeof(Event) / kWordBytes;
// output_word = {notice, destination, peer process, event}, event lowest.
constexpr std::size_t kPeerWord = kEventWords;
constexpr std::size_t kDestinationWord = kEventWords + 1;
constexpr std::size_t kNoticeWord = kEventWords + 2;

// Far beyond any batch (a process removal walks the connection table in about
// two cycles a slot): a model that runs this long is stuck.
constexpr uint64_t kMaxCyclesPerDoorbell = 100 * kFpgaConnections * kFpgaRequestSlots;

}  // namespace

class FpgaSimEngine::Model {
 public:
  explicit Model(const FpgaSimOptions& options)
      : options_(options), context_(std::make_unique<VerilatedContext>()) {
    options_.doorbell_batch = std::clamp<uint32_t>(options_.doorbell_batch, 1, kFpgaRequestSlots);
    top_ = std::make_unique<Vna_engine_top>(context_.get(), "engine");
    top_->max_listeners = options_.max_listeners;
    top_->max_connections = options_.max_connections;
    top_->rst_n = 0;
    tick();
    tick();
    top_->rst_n = 1;
    // The connection table clears itself, one word per cycle.
    for (uint32_t i = 0; i < kFpgaConnections + 1; ++i) tick();
  }

  ~Model() { top_->final(); }

  void queue(HostDescriptorKind kind, uint32_t process_id, const Request& request) {
    pending_.push_back(HostDescriptor{kind, process_id, request});
  }

  bool batch_full() const { return pending_.size() >= options_.doorbell_batch; }

  // The host's copy of the container address and deny-rule tables, kept as
  // the RTL keeps them: an address known already moves to the new namespace
  // in place, a rule present already is not added again.
  bool add_container_address(uint64_t netns_id, const InetAddress& address) {
    const auto known = std::find_if(
        container_addresses_.begin(), container_addresses_.end(), [&](const ContainerAddress& c) {
          return std::memcmp(c.bytes.data(), address.bytes, sizeof address.bytes) == 0;
        });
    if (known != container_addresses_.end()) {
      known->netns_id = netns_id;
    } else if (container_addresses_.size() < kFpgaContainerAddresses) {
      ContainerAddress added{netns_id, {}};
      std::memcpy(added.bytes.data(), address.bytes, sizeof address.bytes);
      container_addresses_.push_back(added);
    } else {
      return false;
    }
    Request descriptor{};
    descriptor.socket_id = netns_id;
    descriptor.address = address;
    queue(HostDescriptorKind::kAddContainerAddress, 0, descriptor);
    return true;
  }

  void remove_container(uint64_t netns_id) {
    std::erase_if(container_addresses_,
                  [netns_id](const ContainerAddress& c) { return c.netns_id == netns_id; });
    Request descriptor{};
    descriptor.socket_id = netns_id;
    queue(HostDescriptorKind::kRemoveContainer, 0, descriptor);
  }

  bool deny_connections(const DenyRule& rule) {
    if (std::find(deny_rules_.begin(), deny_rules_.end(), rule) == deny_rules_.end()) {
      if (deny_rules_.size() >= kFpgaPolicyRules) return false;
      deny_rules_.push_back(rule);
    }
    queue(HostDescriptorKind::kDenyConnections, 0, rule_descriptor(rule));
    return true;
  }

  void allow_connections(const DenyRule& rule) {
    std::erase(deny_rules_, rule);
    queue(HostDescriptorKind::kAllowConnections, 0, rule_descriptor(rule));
  }

  // Hands everything queued to the engine, at most a ring's worth per doorbell.
  void ring_doorbell(std::vector<EngineOutput>& out) {
    for (std::size_t sent = 0; sent < pending_.size();) {
      const std::size_t count = std::min<std::size_t>(pending_.size() - sent, kFpgaRequestSlots);
      ring_doorbell(std::span(pending_).subspan(sent, count), out);
      sent += count;
    }
    pending_.clear();
  }

  EngineCounters counters() const {
    EngineCounters counters;
    counters.processes = top_->processes;
    counters.listeners = top_->listeners;
    counters.connections_open = top_->connections_open;
    counters.connections_total = top_->connections_total;
    counters.requests = top_->requests;
    counters.rejected_requests = top_->rejected_requests;
    counters.container_addresses = top_->container_addresses;
    counters.policy_rules = top_->policy_rules;
    counters.policy_denials = top_->policy_denials;
    return counters;
  }

  const FpgaSimStats& stats() const { return stats_; }

 private:
  static Request rule_descriptor(const DenyRule& rule) {
    Request descriptor{};
    descriptor.socket_id = rule.client_netns;
    descriptor.connection_id = rule.server_netns;
    descriptor.address.port = rule.port;
    return descriptor;
  }

  void ring_doorbell(std::span<const HostDescriptor> batch, std::vector<EngineOutput>& out) {
    // Posted writes into the ring: invisible to the engine until the doorbell.
    for (const HostDescriptor& descriptor : batch) {
      top_->host_write = 1;
      top_->host_kind = static_cast<uint8_t>(descriptor.kind);
      top_->host_process = descriptor.process_id;
      std::memcpy(top_->host_descriptor.data(), &descriptor.request, sizeof(Request));
      tick();
    }
    top_->host_write = 0;
    top_->doorbell = 1;
    top_->doorbell_count = static_cast<uint32_t>(batch.size());
    tick();
    top_->doorbell = 0;
    ++stats_.doorbells;
    stats_.descriptors += batch.size();
    spend_doorbell_latency();

    for (uint64_t cycles = 0;; ++cycles) {
      const bool popping = top_->output_valid;
      if (popping) out.push_back(decode_output());
      top_->output_pop = popping;
      if (!popping && top_->idle) break;
      if (cycles == kMaxCyclesPerDoorbell) throw std::runtime_error("the FPGA model hangs");
      tick();
      ++stats_.busy_cycles;
    }
    top_->output_pop = 0;
  }

  void tick() {
    top_->clk = 0;
    top_->eval();
    top_->clk = 1;
    top_->eval();
  }

  void spend_doorbell_latency() const {
    if (options_.doorbell_latency.count() <= 0) return;
    const auto until = std::chrono::steady_clock::now() + options_.doorbell_latency;
    while (std::chrono::steady_clock::now() < until) {
    }
  }

  EngineOutput decode_output() const {
    EngineOutput output;
    const auto& word = top_->output_word;
    output.notice = static_cast<EngineNotice>(word[kNoticeWord] & 0xff);
    output.destination = word[kDestinationWord];
    output.peer_process = word[kPeerWord];
    std::memcpy(&output.event, word.data(), sizeof(Event));
    return output;
  }

  FpgaSimOptions options_;
  std::unique_ptr<VerilatedContext> context_;
  std::unique_ptr<Vna_engine_top> top_;
  std::vector<HostDescriptor> pending_;
  FpgaSimStats stats_;
  struct ContainerAddress {
    uint64_t netns_id;
    std::array<uint8_t, sizeof InetAddress::bytes> bytes;
  };
  std::vector<ContainerAddress> container_addresses_;
  std::vector<DenyRule> deny_rules_;
};

FpgaSimEngine::FpgaSimEngine(const FpgaSimOptions& options)
    : model_(std::make_unique<Model>(options)) {}

FpgaSimEngine::~FpgaSimEngine() = default;

void FpgaSimEngine::add_process(uint32_t process_id, uint64_t netns_id) {
  // Queued like a request, so it takes effect in order with them; it never
  // rings the doorbell itself, having nowhere to put the outputs.
  Request registration{};
  registration.socket_id = netns_id;
  model_->queue(HostDescriptorKind::kAddProcess, process_id, registration);
}

void FpgaSimEngine::remove_process(uint32_t process_id, std::vector<EngineOutput>& out) {
  model_->queue(HostDescriptorKind::kRemoveProcess, process_id, Request{});
  model_->ring_doorbell(out);  // the caller acts on the process's outputs now
}

bool FpgaSimEngine::add_container_address(uint64_t netns_id, const InetAddress& address) {
  return model_->add_container_address(netns_id, address);
}

void FpgaSimEngine::remove_container(uint64_t netns_id) {
  model_->remove_container(netns_id);
}

bool FpgaSimEngine::deny_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) {
  return model_->deny_connections(DenyRule{client_netns, server_netns, port});
}

void FpgaSimEngine::allow_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) {
  model_->allow_connections(DenyRule{client_netns, server_netns, port});
}

void FpgaSimEngine::submit(uint32_t process_id, const Request& request,
                           std::vector<EngineOutput>& out) {
  model_->queue(HostDescriptorKind::kRequest, process_id, request);
  if (model_->batch_full()) model_->ring_doorbell(out);
}

void FpgaSimEngine::flush(std::vector<EngineOutput>& out) {
  model_->ring_doorbell(out);
}

EngineCounters FpgaSimEngine::counters() const {
  return model_->counters();
}

FpgaSimStats FpgaSimEngine::stats() const {
  return model_->stats();
}

std::unique_ptr<FpgaSimEngine> make_fpga_sim_engine(const FpgaSimOptions& options) {
  return std::make_unique<FpgaSimEngine>(options);
}

}  // namespace netaccel

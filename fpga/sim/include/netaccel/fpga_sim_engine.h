// The FPGA control-plane engine, simulated: the RTL in fpga/rtl runs cycle by
// cycle under Verilator, standing in for a NIC reached over PCIe. Requests
// gather into a doorbell batch in the NIC's descriptor ring; when the batch
// is full (or the monitor flushes at the end of a polling round) the host
// rings the doorbell, pays the doorbell latency, and clocks the model until
// every output of the batch has come back.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "netaccel/engine.h"

namespace netaccel {

struct FpgaSimOptions {
  // A doorbell's cost over PCIe: the posted write, the descriptor fetch and
  // the events' write-back, spent spinning (the seed design measures ~1 us).
  std::chrono::nanoseconds doorbell_latency{1000};
  uint32_t doorbell_batch = 16;  // descriptors per doorbell, 1..kFpgaRequestSlots
  // As SoftwareEngineLimits; clamped to the RTL's table sizes below.
  uint32_t max_listeners = UINT32_MAX;
  uint32_t max_connections = UINT32_MAX;
};

// Table sizes the RTL is built with (fpga/CMakeLists.txt passes them to both).
inline constexpr uint32_t kFpgaProcesses = NETACCEL_FPGA_PROCESSES;
inline constexpr uint32_t kFpgaNamespaces = NETACCEL_FPGA_NAMESPACES;
inline constexpr uint32_t kFpgaListeners = NETACCEL_FPGA_LISTENERS;
inline constexpr uint32_t kFpgaConnections = NETACCEL_FPGA_CONNECTIONS;
inline constexpr uint32_t kFpgaContainerAddresses = NETACCEL_FPGA_CONTAINER_ADDRESSES;
inline constexpr uint32_t kFpgaPolicyRules = NETACCEL_FPGA_POLICY_RULES;
inline constexpr uint32_t kFpgaRequestSlots = NETACCEL_FPGA_REQUEST_SLOTS;

struct FpgaSimStats {
  uint64_t doorbells = 0;
  uint64_t descriptors = 0;  // requests and process registrations/removals
  uint64_t busy_cycles = 0;  // from each doorbell until the engine was idle again
};

class FpgaSimEngine : public ControlPlaneEngine {
 public:
  explicit FpgaSimEngine(const FpgaSimOptions& options);
  ~FpgaSimEngine() override;

  std::string_view name() const override { return "fpga-sim"; }
  void add_process(uint32_t process_id, uint64_t netns_id) override;
  void remove_process(uint32_t process_id, std::vector<EngineOutput>& out) override;
  // Queued like requests, so they take effect in order with them. The host
  // keeps a copy of both tables' keys (nothing else changes them), so a full
  // table is refused here, at once, without asking the NIC.
  bool add_container_address(uint64_t netns_id, const InetAddress& address) override;
  void remove_container(uint64_t netns_id) override;
  bool deny_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) override;
  void allow_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) override;
  void submit(uint32_t process_id, const Request& request, std::vector<EngineOutput>& out) override;
  void flush(std::vector<EngineOutput>& out) override;
  EngineCounters counters() const override;

  FpgaSimStats stats() const;

 private:
  class Model;
  std::unique_ptr<Model> model_;
};

std::unique_ptr<FpgaSimEngine> make_fpga_sim_engine(const FpgaSimOptions& options);

}  // namespace netaccel

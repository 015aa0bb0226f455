// The control-plane engine: the part of the monitor that owns socket state
// (listener table, connection table, admission). It is pure state: requests
// in, events out. The monitor around it owns memory, fds and wake-ups. The
// software engine runs on a CPU core; the FPGA engine (fpga/) runs the same
// state machine as RTL. Both must turn the same inputs into the same outputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "netaccel/protocol.h"

namespace netaccel {

// Connects without a bound port get one from Linux's default
// net.ipv4.ip_local_port_range, rotating per network namespace.
inline constexpr uint16_t kEphemeralPortFirst = 32768;
inline constexpr uint16_t kEphemeralPortLast = 60999;

// How the engine names a network namespace: from the device and inode of
// its nsfs file (/proc/PID/ns/net), unique on the host while it lives.
inline uint64_t network_namespace_id(uint64_t device, uint64_t inode) {
  return device << 32 ^ inode;
}

// Destination of an engine output that is meant for the monitor itself.
inline constexpr uint32_t kMonitorDestination = 0;

enum class EngineNotice : uint8_t {
  kDeliver = 0,             // push `event` onto the event queue of `destination`
  kConnectionCreated = 1,   // monitor: make a segment for event.connection_id
                            // between client `destination` and server `peer_process`
  kConnectionReleased = 2,  // monitor: both ends closed, free the segment
  kEndpointAbandoned = 3,   // monitor: `destination`'s end died; abort it in the segment
};

struct EngineOutput {
  EngineNotice notice;
  uint32_t destination;   // process id, or kMonitorDestination
  uint32_t peer_process;  // for kConnectionCreated
  Event event;
};

struct EngineCounters {
  uint64_t processes = 0;
  uint64_t listeners = 0;
  uint64_t connections_open = 0;     // at least one end still open
  uint64_t connections_total = 0;    // ever created
  uint64_t requests = 0;             // ever submitted
  uint64_t rejected_requests = 0;    // answered with an error
  uint64_t container_addresses = 0;  // addresses of attached containers known
  uint64_t policy_rules = 0;         // deny rules in force
  uint64_t policy_denials = 0;       // connects refused by a deny rule
};

class ControlPlaneEngine {
 public:
  virtual ~ControlPlaneEngine() = default;
  virtual std::string_view name() const = 0;

  // A registered process and the network namespace it lives in.
  virtual void add_process(uint32_t process_id, uint64_t netns_id) = 0;
  // The process is gone: its listeners close and its connection ends abort.
  virtual void remove_process(uint32_t process_id, std::vector<EngineOutput>& out) = 0;
  // Attached containers. A connect to an address of another network
  // namespace that was added here reaches that namespace's listeners (the
  // host's bridge would carry it there); the client's address is then its
  // own namespace's address of the same family. Returns false when the
  // engine has no room left (the FPGA's table is fixed in size): connects
  // to that address go to the kernel.
  virtual bool add_container_address(uint64_t netns_id, const InetAddress& address) = 0;
  // Forgets every address of the namespace (detached, or its addresses changed).
  virtual void remove_container(uint64_t netns_id) = 0;
  // Isolation policy: connects from a process of client_netns to a listener
  // of server_netns on `port` (0: any port) are answered -ECONNREFUSED with
  // kEventPolicyDenied, as a REJECT --reject-with tcp-reset rule would.
  // Returns false when the engine has no room left for the rule.
  virtual bool deny_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) = 0;
  // Removes exactly that rule, if present.
  virtual void allow_connections(uint64_t client_netns, uint64_t server_netns, uint16_t port) = 0;

  // One request from a registered process; appends what follows from it.
  virtual void submit(uint32_t process_id, const Request& request,
                      std::vector<EngineOutput>& out) = 0;
  // An engine may hold requests back (the FPGA engine gathers a doorbell
  // batch); flush processes them now. Any call may append the outputs of
  // requests held back earlier; outputs always come in request order.
  virtual void flush(std::vector<EngineOutput>& /*out*/) {}
  virtual EngineCounters counters() const = 0;
};

// Table sizes of the software engine; a full table answers -ENOBUFS.
struct SoftwareEngineLimits {
  std::size_t max_listeners = 4096;
  std::size_t max_connections = 65536;  // connections with at least one end open
  std::size_t max_container_addresses = 1024;
  std::size_t max_policy_rules = 1024;
};

std::unique_ptr<ControlPlaneEngine> make_software_engine();
std::unique_ptr<ControlPlaneEngine> make_software_engine(const SoftwareEngineLimits& limits);

}  // namespace netaccel

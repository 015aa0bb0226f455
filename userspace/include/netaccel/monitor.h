// The monitor (`netaccel daemon`): registers preloaded processes on a unix
// socket, polls their request queues, runs the control-plane engine and turns
// its outputs into event-queue pushes, fd deliveries and connection segments.
// One thread; it spins while there is work and sleeps in epoll otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "netaccel/engine.h"
#include "netaccel/fpga_sim_engine.h"
#include "netaccel/protocol.h"

namespace netaccel {

inline constexpr const char* kDefaultStateDirectory = "/var/lib/netaccel";

struct MonitorOptions {
  std::string socket_path = kDefaultMonitorSocket;
  std::string engine = "software";
  uint32_t ring_bytes = kDefaultRingBytes;   // per direction of a connection, power of two
  std::chrono::microseconds idle_spin{500};  // keep polling this long after the last work
  FpgaSimOptions fpga_sim;                   // for engine "fpga-sim"
  // What outlives the monitor (the isolation policy); "" keeps it in memory.
  std::string state_directory = kDefaultStateDirectory;
};

// The engines `--engine` accepts, by name; throws std::invalid_argument for others.
std::unique_ptr<ControlPlaneEngine> make_engine(std::string_view name,
                                                const FpgaSimOptions& fpga_sim = {});

class Monitor {
 public:
  // Binds the socket (replacing a stale one) or throws: std::system_error for
  // kernel failures, std::runtime_error when a live monitor already answers
  // there, std::invalid_argument for bad options.
  explicit Monitor(MonitorOptions options);
  ~Monitor();  // unlinks the socket if it is still ours
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // Serves until request_stop(); throws std::system_error on fatal failures.
  void run();
  // Safe from any thread and from a signal handler.
  void request_stop();

  const std::string& socket_path() const;
  std::string_view engine_name() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace netaccel

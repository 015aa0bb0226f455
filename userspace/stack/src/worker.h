// The stack's worker thread: the one place lwIP runs. It moves frames
// between the packet port and lwIP, and bytes between lwIP's connections and
// the programs' shared-memory rings; it sleeps when none of them has work.
// The master thread (stack.cc) hands it requests, ARP frames and hang-ups
// through a command queue and reads its counters.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "netaccel/shm.h"
#include "netaccel/stack_protocol.h"
#include "packet_port.h"
#include "stack_connection.h"

struct netif;
struct pbuf;

namespace netaccel::stack {

struct InterfaceConfig {
  std::string name;
  unsigned ifindex = 0;
  std::array<uint8_t, 6> mac{};
  unsigned mtu = 1500;
  uint32_t address = 0;  // IPv4, network order
  uint32_t netmask = 0;
  uint32_t gateway = 0;  // 0: none
};

// Counters the worker publishes for `netaccel stats` (read by the master).
struct StackCounters {
  PortCounters port;
  uint64_t connections_opened = 0;   // connects and accepts carried
  uint64_t connections_active = 0;
  uint64_t listeners = 0;
  uint64_t rx_frames_dropped = 0;    // lwIP refused them (malformed, no netif)
  uint64_t checksum_errors = 0;      // IP and TCP checksum failures (dropped)
  uint64_t partial_checksums = 0;    // local senders' unfinished TCP checksums (accepted)
  uint64_t tcp_retransmissions = 0;  // segments sent again
  uint64_t lwip_memory_errors = 0;   // allocations lwIP could not make (a SYN flood shows here)
  uint64_t tcp_dropped = 0;          // segments lwIP's TCP dropped
  uint64_t wakeups = 0;              // times the worker slept and woke
};

struct Command {
  enum Kind { kRequest, kHangup, kArpFrame } kind = kRequest;
  UniqueFd control;       // kRequest: the program's control connection
  StackRequest request;   // kRequest
  uint64_t id = 0;        // kHangup: connection or listener whose lifetime end closed
  std::vector<unsigned char> frame;  // kArpFrame
};

class Worker {
 public:
  // Tells the master to watch a lifetime end (it hands the hang-up back as a
  // kHangup command).
  using WatchLifetime = ConnectionHost::WatchLifetime;

  Worker(InterfaceConfig interface, std::unique_ptr<PacketPort> port, int steering_map_fd,
         uint32_t owner, WatchLifetime watch);
  ~Worker();

  void run(const std::atomic<bool>& stop);
  void post(Command command);  // from any thread
  StackCounters counters() const;
  int wake_fd() const { return wake_.get(); }
  std::string describe() const { return port_->describe(); }

  // Used by lwIP's callbacks (lwip_port.cc, stack_connection.cc).
  PacketPort& port() { return *port_; }
  netif* interface_netif() { return netif_.get(); }
  void release_rx(struct RxPbuf* buffer);
  ConnectionHost& host() { return host_; }

 private:
  bool poll_once();
  bool receive_frames();
  void take_commands();
  bool sleep_until_work();
  void publish_counters();

  InterfaceConfig interface_;
  std::unique_ptr<PacketPort> port_;
  std::unique_ptr<netif> netif_;
  UniqueFd wake_;  // before host_, which is given its number
  ConnectionHost host_;
  std::vector<RxBuffer> rx_batch_;
  struct pbuf* partial_frame_ = nullptr;  // a multi-buffer frame still arriving

  std::mutex commands_mutex_;
  std::deque<Command> commands_;
  std::atomic<bool> commands_pending_{false};
  std::atomic<bool> sleeping_{false};

  mutable std::mutex counters_mutex_;
  StackCounters published_;
  uint64_t wakeups_ = 0;
  uint64_t published_dropped_ = 0;
  uint64_t checksum_errors_ = 0;
  uint64_t partial_checksums_ = 0;  // frames dropped before lwIP saw them, or refused by it
  uint32_t last_publish_ms_ = 0;
};

}  // namespace netaccel::stack

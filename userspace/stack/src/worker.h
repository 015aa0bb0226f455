// The stack's worker thread: the one place lwIP runs. It serves one or more
// containers, each a lane: its packet port, its lwIP netif and its sockets.
// It moves frames between the ports and lwIP, and bytes between lwIP's
// connections and the programs' shared-memory rings, and sleeps when none
// of them has work. One worker for several containers means one core polls
// for all of them, and traffic between two of them crosses from one lane's
// transmit to the other's receive without waking anything. The master
// thread (stack.cc) hands it requests, ARP frames and hang-ups through a
// command queue and reads its counters.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
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

// Counters of one lane, which the worker publishes for `netaccel stats`.
struct StackCounters {
  PortCounters port;
  uint64_t connections_opened = 0;  // connects and accepts carried
  uint64_t connections_active = 0;
  uint64_t listeners = 0;
  uint64_t rx_frames_dropped = 0;  // dropped before lwIP saw them (no holder) or refused by it
  uint64_t checksum_errors = 0;    // TCP checksums wrong (dropped), and lwIP's IP checksum drops
  uint64_t partial_checksums = 0;  // local senders' unfinished TCP checksums (accepted)
  // lwIP's own, for the whole stack (all lanes share one lwIP).
  uint64_t tcp_retransmissions = 0;  // segments sent again
  uint64_t lwip_memory_errors = 0;   // allocations lwIP could not make
  uint64_t tcp_dropped = 0;          // segments lwIP's TCP dropped, SYNs past a full backlog too
  uint64_t worker_sleeps = 0;        // times the worker slept and woke
};

// One container's data plane inside the worker.
struct Lane {
  Lane(std::string container, InterfaceConfig interface, std::unique_ptr<PacketPort> port);
  std::string container;
  InterfaceConfig interface;
  std::unique_ptr<PacketPort> port;
  std::unique_ptr<netif> lwip_netif;
  std::unique_ptr<ConnectionHost> host;  // made once the netif is in lwIP
  pbuf* partial_frame = nullptr;         // a multi-buffer frame still arriving
  uint64_t dropped_frames = 0;
  uint64_t checksum_errors = 0;
  uint64_t partial_checksums = 0;
};

struct Command {
  enum Kind { kRequest, kHangup, kArpFrame } kind = kRequest;
  unsigned lane = 0;
  UniqueFd control;                  // kRequest: the program's control connection
  StackRequest request;              // kRequest
  uint64_t id = 0;                   // kHangup: connection or listener whose lifetime end closed
  std::vector<unsigned char> frame;  // kArpFrame
};

class Worker {
 public:
  // Tells the master to watch a lifetime end of `lane`; the master hands
  // its hang-up back as a kHangup command.
  using WatchLifetime = std::function<void(unsigned lane, int fd, uint64_t id)>;

  explicit Worker(WatchLifetime watch);
  ~Worker();

  // Before run(): adds a container. Returns its lane number.
  unsigned add_lane(std::string container, InterfaceConfig interface,
                    std::unique_ptr<PacketPort> port, PortTable ports);
  std::size_t lanes() const { return lanes_.size(); }
  const Lane& lane(unsigned index) const { return *lanes_[index]; }

  void run(const std::atomic<bool>& stop);
  void post(Command command);  // from any thread
  StackCounters counters(unsigned lane) const;

  // lwIP's receive path gives buffers back through this (lwip_port.cc).
  void release_rx(struct RxPbuf* buffer);

 private:
  bool poll_once();
  bool receive_frames(Lane& lane);
  void take_commands();
  bool sleep_until_work();
  void publish_counters();

  WatchLifetime watch_;
  UniqueFd wake_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::vector<RxBuffer> rx_batch_;

  std::mutex commands_mutex_;
  std::deque<Command> commands_;
  std::atomic<bool> commands_pending_{false};

  mutable std::mutex counters_mutex_;
  std::vector<StackCounters> published_;
  uint64_t sleeps_ = 0;
  uint32_t last_publish_ms_ = 0;
};

}  // namespace netaccel::stack

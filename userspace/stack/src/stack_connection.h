// The stack's sockets: each lwIP connection is the peer end of one
// shared-memory segment (protocol.h's layout), so a program reads and writes
// it as it would a tier-0 connection. Bytes the program writes stay in its
// ring until TCP has them acknowledged (lwIP sends them without copying);
// bytes that arrive go into the program's ring and are acknowledged to the
// sender's window only once they are there, so a program that stops reading
// closes the window instead of growing memory.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>

#include "netaccel/byte_ring.h"
#include "netaccel/protocol.h"
#include "netaccel/shm.h"
#include "netaccel/stack_protocol.h"

struct tcp_pcb;
struct pbuf;
struct netif;

namespace netaccel::stack {

// The stack's TCP ports, one space with the container kernel's: each is held
// by a kernel socket bound to it (so the kernel never hands it out) and
// steered to the stack by the classifier's map while anything uses it.
class PortTable {
 public:
  // `netns`: the container's network namespace, where the placeholders are
  // made (the worker thread may serve several containers).
  PortTable(UniqueFd steering_map, UniqueFd netns, uint32_t owner, uint32_t address)
      : steering_map_(std::move(steering_map)),
        netns_(std::move(netns)),
        owner_(owner),
        address_(address) {}
  PortTable(PortTable&&) = default;
  ~PortTable();
  // A port of the stack's own: `port` 0 picks one from the kernel's
  // ephemeral range. The port in host order, or -errno (EADDRINUSE).
  int acquire(uint16_t port);
  void add_reference(uint16_t port);
  // Drops a reference; `linger` keeps the port (TIME_WAIT) that long.
  void release(uint16_t port, std::chrono::seconds linger = std::chrono::seconds(0));
  void expire_lingering();

 private:
  struct Entry {
    UniqueFd placeholder;
    unsigned references = 0;
  };
  void drop(uint16_t port);
  int placeholder_socket() const;

  UniqueFd steering_map_;
  UniqueFd netns_;
  uint32_t owner_;
  uint32_t address_;
  std::map<uint16_t, Entry> ports_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, uint16_t>> lingering_;
};

struct StackConnection;
struct StackListener;

// Owns the stack's connections and listeners; all of it runs on the worker.
class ConnectionHost {
 public:
  using WatchLifetime = std::function<void(int fd, uint64_t id)>;

  // The sockets of one container: its ports, its lwIP interface.
  ConnectionHost(PortTable ports, netif* interface, uint32_t address, int stack_wake_fd,
                 WatchLifetime watch);
  ~ConnectionHost();

  void connect(UniqueFd control, const StackRequest& request);
  void listen(UniqueFd control, const StackRequest& request);
  void hangup(uint64_t id);
  // Moves bytes both ways on every connection; true when any moved.
  bool pump();
  // Before sleeping: announce it on every ring the worker waits on, then
  // look again. False when work turned up (the announcements are withdrawn).
  bool announce_sleep();
  void withdraw_sleep();

  uint64_t opened() const { return opened_; }
  std::size_t active() const { return connections_.size(); }
  std::size_t listeners() const { return listeners_.size(); }

  // lwIP's callbacks (stack_connection.cc).
  void on_connected(StackConnection* connection);
  void on_error(StackConnection* connection, int lwip_error);
  void on_received(StackConnection* connection, pbuf* data);
  void on_sent(StackConnection* connection, uint16_t bytes);
  int on_accept(StackListener* listener, tcp_pcb* pcb);

 private:
  StackConnection* make_connection(tcp_pcb* pcb, uint32_t stack_side, uint16_t port);
  bool pump_connection(StackConnection& connection);
  bool deliver(StackConnection& connection);
  bool transmit(StackConnection& connection);
  bool finished(const StackConnection& connection) const;
  void close_pcb(StackConnection& connection, bool abort);
  void fail_connect(StackConnection& connection, int error);

  PortTable ports_;
  netif* interface_;
  uint32_t address_;
  int stack_wake_fd_;
  WatchLifetime watch_;
  uint64_t next_id_ = 1;
  uint64_t opened_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<StackConnection>> connections_;
  std::unordered_map<uint64_t, std::unique_ptr<StackListener>> listeners_;
};

}  // namespace netaccel::stack

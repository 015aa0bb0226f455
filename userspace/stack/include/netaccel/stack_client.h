// A program's side of the stack's socket API (stack_protocol.h): blocking
// connect, listen, accept, send and receive over the connection's
// shared-memory rings. The project's own programs use it directly; the
// preload will put unmodified programs on the same protocol.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "netaccel/byte_ring.h"
#include "netaccel/protocol.h"
#include "netaccel/shm.h"
#include "netaccel/stack_protocol.h"

namespace netaccel::stack_client {

class Connection {
 public:
  // Sends all of `data` (blocking); bytes sent or -errno (EPIPE, ECONNRESET).
  ssize_t send(const void* data, std::size_t length);
  // At least one byte (blocking); 0 at EOF; -ECONNRESET after a reset.
  ssize_t receive(void* data, std::size_t length);
  // No more sends: the peer reads EOF after what was sent.
  void shutdown_write();
  // Ends the connection: a FIN, or a reset when received bytes are unread.
  ~Connection();

  const StackReply& info() const { return info_; }

 private:
  friend std::unique_ptr<Connection> adopt(const StackReply& reply, int* fds, unsigned count,
                                           UniqueFd lifetime, int* error);
  enum class Want { kData, kSpace };
  bool wait(Want want);
  bool peer_aborted() const;

  StackReply info_{};
  SharedMapping mapping_;
  ConnectionSegmentHeader* header_ = nullptr;
  ByteRing tx_;
  ByteRing rx_;
  UniqueFd own_wake_;
  UniqueFd stack_wake_;
  UniqueFd lifetime_;
  bool write_shut_ = false;
};

// Connects to `address` (IPv4, network order):`port` through the stack at
// `socket_path`; nullptr with *error set (ECONNREFUSED, ETIMEDOUT, ENOENT
// when no stack runs...).
std::unique_ptr<Connection> connect(const std::string& socket_path, uint32_t address, uint16_t port,
                                    int* error);

class Listener {
 public:
  static std::unique_ptr<Listener> listen(const std::string& socket_path, uint16_t port,
                                          unsigned backlog, int* error);
  // The next connection (blocking); nullptr with *error when the stack went.
  std::unique_ptr<Connection> accept(int* error);
  uint16_t port() const { return port_; }

 private:
  UniqueFd control_;
  uint16_t port_ = 0;
};

}  // namespace netaccel::stack_client

// How a program reaches the user-space stack of its container. Each stack
// socket is one SOCK_SEQPACKET connection to the stack's control socket,
// and lives as long as it: the stack aborts what a vanished program left.
//
//   connect: StackRequest{kStackConnect, address, port} -> StackReply
//            kStackConnected with the connection's fds, or kStackFailed.
//   listen:  StackRequest{kStackListen, port, backlog} -> kStackListening,
//            then one kStackAccepted per connection, each with its fds.
//
// A connection's fds: its shared segment (protocol.h's layout: header and
// two byte rings, the stack on one side), the eventfd the program sleeps on
// (the stack signals it), the eventfd the stack sleeps on (the program
// signals it), and for an accepted connection a SOCK_SEQPACKET end whose
// closing tells the stack that the program let go of it.
#pragma once

#include <cstdint>
#include <string>

namespace netaccel {

inline constexpr uint32_t kStackMagic = 0x4e415354;  // "NAST"
inline constexpr uint32_t kStackVersion = 1;
inline constexpr const char* kStackSocketDirectory = "/run/netaccel/stack";

// Where the stack of `container` (its name under /sys/fs/bpf/netaccel) listens.
inline std::string stack_socket_path(const std::string& container) {
  return std::string(kStackSocketDirectory) + "/" + container + ".sock";
}

enum StackOp : uint32_t { kStackConnect = 1, kStackListen = 2 };

struct StackRequest {
  uint32_t magic = kStackMagic;
  uint32_t version = kStackVersion;
  uint32_t op = 0;
  uint32_t address = 0;  // IPv4, network order; kStackConnect only
  uint16_t port = 0;     // host order
  uint16_t backlog = 0;  // kStackListen only
};

enum StackReplyKind : uint32_t {
  kStackConnected = 1,
  kStackListening = 2,
  kStackAccepted = 3,
  kStackFailed = 4,
};

inline constexpr unsigned kStackConnectionFds = 3;  // segment, program's wake, stack's wake
inline constexpr unsigned kStackAcceptedFds = 4;    // those and the lifetime end

struct StackReply {
  uint32_t magic = kStackMagic;
  uint32_t version = kStackVersion;
  uint32_t kind = 0;
  int32_t error = 0;           // errno for kStackFailed
  uint32_t local_address = 0;  // IPv4, network order
  uint32_t peer_address = 0;
  uint16_t local_port = 0;  // host order
  uint16_t peer_port = 0;
  uint32_t side = 0;  // the program's ConnectionSide in the segment
  uint64_t connection_id = 0;
  uint64_t segment_bytes = 0;
};

}  // namespace netaccel

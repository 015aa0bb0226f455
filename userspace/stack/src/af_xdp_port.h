// The AF_XDP packet port: one libxdp socket on one queue of the container's
// interface, in the container's network namespace. It loads no XDP program:
// netaccel's classifier, already attached, redirects the stack's flows to
// the socket it finds in the pinned xsk_sockets map.
#pragma once

#include <memory>
#include <string>

#include "packet_port.h"

namespace netaccel::stack {

struct AfXdpPortConfig {
  std::string interface;  // in the calling thread's network namespace
  unsigned queue = 0;
  int xsk_map_fd = -1;  // the container's pinned xsk_sockets
  bool force_copy = false;
};

// Throws std::runtime_error with one line for the user on failure.
std::unique_ptr<PacketPort> open_af_xdp_port(const AfXdpPortConfig& config);

}  // namespace netaccel::stack

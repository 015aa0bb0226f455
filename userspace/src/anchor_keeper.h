// The watcher of anchors (protocol.h): a process of its own, started by the
// monitor on the first anchor it is sent. The anchored ends it holds shares
// of are shared by several processes, and their last holder may go while no
// monitor runs (a restart, an upgrade): a keeper that outlives the monitor
// still closes such an end, so its peer sees EOF as with a kernel socket.
#pragma once

#include <sys/types.h>

#include <cstddef>

#include "netaccel/protocol.h"
#include "netaccel/shm.h"

namespace netaccel {

class AnchorKeeperLink {
 public:
  // Passes an anchor as a process sent it (`fds` are consumed) to the keeper,
  // starting one if there is none or the last one died. The keeper checks
  // everything in it: the sender is untrusted.
  void watch(const AnchorMessage& message, ssize_t bytes, int* fds, std::size_t fd_count);

 private:
  UniqueFd control_;  // our end of the keeper's socket
};

}  // namespace netaccel

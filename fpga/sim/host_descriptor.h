// What the host hands the FPGA engine besides process requests: the
// front end's descriptor ring carries a kind and a process id with each
// 64-byte descriptor. Shared with the RTL through the generated package.
#pragma once

#include <cstdint>

namespace netaccel::fpga {

enum class HostDescriptorKind : uint8_t {
  kRequest = 0,        // a Request from the process
  kAddProcess = 1,     // the process registered; Request::socket_id carries its netns id
  kRemoveProcess = 2,  // the process is gone
  // Attached containers: socket_id = the netns, address = its address (a
  // known address moves to that netns in place; a full table ignores it).
  kAddContainerAddress = 3,
  kRemoveContainer = 4,  // socket_id = the netns: every address of it goes
  // Deny rules: socket_id = client netns, connection_id = server netns,
  // address.port = port (0: every port). Duplicates are not added.
  kDenyConnections = 5,
  kAllowConnections = 6,  // removes exactly that rule, if present
};
// Bits of a kind in the descriptor ring.
inline constexpr int kHostDescriptorKindBits = 3;
static_assert(static_cast<int>(HostDescriptorKind::kAllowConnections) <
              (1 << kHostDescriptorKindBits));

}  // namespace netaccel::fpga

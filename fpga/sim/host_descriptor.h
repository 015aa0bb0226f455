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
};

}  // namespace netaccel::fpga

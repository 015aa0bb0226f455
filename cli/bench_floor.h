// What the machine itself allows two processes that share memory: the floor
// under any shared-memory transport, netaccel's included. `netaccel bench`
// reports it beside the kernel so that a ratio can be read against the most
// this machine could give.
#pragma once

namespace netaccel::cli {

struct HardwareFloor {
  double round_trip_p50_us = 0;  // one cache line bounced between two processes
  double messages_per_s = 0;     // 64-byte messages through a bare ByteRing, no socket layer
};

// Forks a partner process for each measurement; `seconds` each.
HardwareFloor measure_hardware_floor(double seconds);

}  // namespace netaccel::cli

// The TCP checksum of a received frame, checked before lwIP sees it.
//
// A frame a local kernel sends over a veth (another container, the host)
// carries CHECKSUM_PARTIAL: the kernel never filled in the TCP checksum,
// which holds only the pseudo-header's sum, since no wire lies between the
// two ends; XDP and AF_XDP hand the frame over as it is. So a checksum that
// is not valid but is exactly that partial sum is accepted as a local
// frame's. A corrupted frame from a wire passes that test with the same
// odds (2^-16) as it passes the checksum itself; everything else is
// dropped and counted.
#pragma once

#include "lwip/pbuf.h"

namespace netaccel::stack {

enum class ReceiveChecksum {
  kValid,    // a complete, correct TCP checksum
  kPartial,  // a local sender's unfinished checksum (see above)
  kInvalid,  // wrong: drop the frame
  kNotTcp,   // not IPv4 TCP, or too short to tell: lwIP decides
};

ReceiveChecksum check_tcp_checksum(const pbuf* frame);

}  // namespace netaccel::stack

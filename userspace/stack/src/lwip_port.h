// lwIP's side of the worker: the network interface lwIP sends through and
// receives from, and received frames as pbufs that wrap the port's buffers.
#pragma once

#include <cstdint>

#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "packet_port.h"

namespace netaccel::stack {

class Worker;
struct InterfaceConfig;
struct Lane;

// lwIP's process-wide state: lwip_init() once, before any netif.
void initialise_lwip();

// Adds a lane's interface to lwIP, up; the first is the default.
void add_interface(netif* interface, const InterfaceConfig& config, Lane* lane);

// A received buffer as a pbuf (no copy); freeing it gives the buffer back
// to the port. nullptr when too many buffers are lent already.
struct RxPbuf {
  pbuf_custom custom;
  Worker* worker;
  PacketPort* port;
  uint64_t handle;
};
pbuf* wrap_received(Worker* worker, PacketPort* port, const RxBuffer& buffer, RxPbuf* holder);

}  // namespace netaccel::stack

// The DPDK backend of PacketPort: one queue of a kernel interface through
// DPDK's net_af_xdp poll-mode driver, alongside netaccel's own XDP
// classifier.
//
// The classifier stays the only XDP program on the interface: it redirects
// the flows the stack owns to xsk_sockets[rx queue] and passes everything
// else to the container's kernel. The port's AF_XDP socket goes into that
// map; the driver loads, attaches and detaches no XDP program (see
// dpdk_port.cc for how, since DPDK 22.11 has no option for it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "packet_port.h"

namespace netaccel::stack {

struct DpdkPortConfig {
  // The interface as the calling thread's network namespace names it: open
  // the port from inside the container's namespace.
  std::string interface;
  // Checked against `interface`: a mismatch means the wrong namespace.
  unsigned ifindex = 0;
  // The device queue the socket binds to, and its key in the XSK map.
  uint32_t queue = 0;
  // The container's pinned xsk_sockets (BPF_MAP_TYPE_XSKMAP keyed by rx
  // queue), e.g. bpf_obj_get("/sys/fs/bpf/netaccel/<container>/xsk_sockets").
  // Borrowed: used while opening, not kept.
  int xsk_map_fd = -1;
  // Hugepages for DPDK's memory, else --no-huge. Only the first port of a
  // process decides (see initialise_dpdk_eal).
  bool hugepages = false;
  // Packet buffers of the port (receive, transmit, and those the stack
  // holds); at least twice the ring size.
  unsigned buffers = 8191;
  // Entries of the socket's receive and transmit rings (a power of two).
  unsigned ring_size = 2048;
  // Copy mode even where the driver could do zero-copy.
  bool force_copy = false;
  // The driver's busy polling (SO_PREFER_BUSY_POLL and SO_BUSY_POLL_BUDGET
  // on its socket). 0: a receive that finds nothing makes no system call in
  // copy mode (veth), but in zero-copy mode 22.11 then waits in poll(), up
  // to a second, whenever the fill ring asks for a wakeup. Above 0: every
  // receive that finds nothing makes a non-blocking recvfrom() that
  // busy-polls the queue (the driver's default is 64).
  unsigned busy_poll_budget = 0;
};

// Opens and starts the port and puts its socket into the XSK map: steered
// frames arrive from then on. Throws std::runtime_error with one line saying
// what failed. Every buffer receive() lent must be released before the port
// is destroyed. Needs CAP_NET_ADMIN, CAP_SYS_ADMIN (AF_XDP, BPF) and
// CAP_IPC_LOCK (the socket's buffers are locked in memory).
std::unique_ptr<PacketPort> open_dpdk_port(const DpdkPortConfig& config);

// DPDK's environment (rte_eal_init) exists once per process and cannot be
// made again, even after rte_eal_cleanup. The first call initialises it
// in memory (no files under /var/run/dpdk, no PCI scan, no telemetry
// socket), with hugepages or --no-huge; later calls only check that the
// choice matches, and throw if it does not. open_dpdk_port calls it with the
// port's choice, so a program only calls it to decide early. It leaves the
// calling thread's CPU affinity as it found it.
void initialise_dpdk_eal(bool hugepages);

}  // namespace netaccel::stack

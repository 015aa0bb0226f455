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
  // Packet buffers of the port: 2048 in the fill ring (the driver's fixed
  // reservation), those in the receive and transmit rings, and those the
  // stack holds. At least 2048 + ring_size + 256.
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
// is destroyed (from any thread); destroying it closes the socket, which
// takes it out of the map. Run as root: AF_XDP needs CAP_NET_RAW, and the
// socket's buffers are pinned (CAP_IPC_LOCK or RLIMIT_MEMLOCK).
std::unique_ptr<PacketPort> open_dpdk_port(const DpdkPortConfig& config);

// DPDK's environment (rte_eal_init) exists once per process and cannot be
// made again, even after rte_eal_cleanup. The first call initialises it,
// with hugepages (--in-memory) or without (--no-huge --no-shconf: 22.11
// refuses --in-memory with --no-huge): no shared configuration files, no
// PCI scan, no telemetry socket, IOVA as virtual addresses, the calling
// thread as its main lcore (its CPU affinity left as it was). Later calls
// only check that the choice matches, and throw if it does not; so does a
// call after something else in the process initialised DPDK.
// open_dpdk_port calls it with the port's choice, so a program only calls
// it to decide early.
void initialise_dpdk_eal(bool hugepages);

}  // namespace netaccel::stack

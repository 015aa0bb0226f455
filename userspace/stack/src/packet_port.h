// Packet I/O of the user-space stack behind one small interface: the worker
// that runs lwIP neither knows nor cares whether frames come from an AF_XDP
// socket (libxdp) or a DPDK port. A port is used by one thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace netaccel::stack {

// What a port counts; the stack publishes them per container.
struct PortCounters {
  uint64_t rx_packets = 0;
  uint64_t rx_bytes = 0;
  uint64_t tx_packets = 0;
  uint64_t tx_bytes = 0;
  uint64_t rx_fill_empty = 0;  // frames the device dropped: no buffer to receive into
  uint64_t rx_ring_full = 0;   // frames the device dropped: the receive ring was full
  uint64_t rx_invalid = 0;     // descriptors the device gave that point outside the buffers
  uint64_t tx_ring_full = 0;   // frames not sent: the transmit ring was full
  uint64_t tx_kicks = 0;       // system calls made to start transmission
  uint64_t rx_wakeups = 0;     // system calls made to ask for more receive buffers
};

// One received buffer, lent by the port until released. A frame larger than
// one buffer (a multi-buffer frame) arrives as several with `continues` set
// on all but the last.
struct RxBuffer {
  unsigned char* data = nullptr;
  uint32_t length = 0;
  bool continues = false;
  uint64_t handle = 0;  // what release() takes back
};

class PacketPort {
 public:
  virtual ~PacketPort() = default;

  // Up to `max` received buffers; every one must be released, in any order,
  // from this thread.
  virtual unsigned receive(RxBuffer* buffers, unsigned max) = 0;
  virtual void release(uint64_t handle) = 0;

  // A buffer of frame_capacity() bytes for the next frame to send, or
  // nullptr when the transmit ring is full (counted). commit() queues it
  // with its length; flush() hands what is queued to the device, with at
  // most one system call and only when the device needs one.
  virtual unsigned char* claim_tx() = 0;
  virtual void commit_tx(uint32_t length) = 0;
  virtual void flush() = 0;
  virtual uint32_t frame_capacity() const = 0;

  // A descriptor that polls readable when frames arrive, so that an idle
  // worker can sleep; -1 when the port can only be polled.
  virtual int wait_fd() const = 0;

  virtual const PortCounters& counters() const = 0;
  // One line for logs and `netaccel stats`: backend, interface, queue, mode.
  virtual std::string describe() const = 0;
};

}  // namespace netaccel::stack

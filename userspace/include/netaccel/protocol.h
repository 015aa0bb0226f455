// Everything the monitor and the preload library exchange: the registration
// handshake on the unix socket, the request/event descriptors on the shared
// queues, the fd deliveries that follow connection events, and the layout of
// a connection's shared segment. One definition for both sides (and for the
// FPGA engine's RTL, which is checked against these layouts).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "netaccel/byte_ring.h"
#include "netaccel/descriptor_ring.h"

namespace netaccel {

inline constexpr uint32_t kProtocolMagic = 0x4e41434d;  // "NACM"
inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr const char* kDefaultMonitorSocket = "/run/netaccel/monitor.sock";
inline constexpr const char* kMonitorSocketEnv = "NETACCEL_SOCKET";

// ---------------------------------------------------------------------------
// Addresses: IPv4 is carried as an IPv4-mapped IPv6 address so that one
// comparison serves both families; `family` remembers what the caller used.
struct InetAddress {
  uint8_t bytes[16];
  uint16_t port;     // host byte order
  uint8_t family;    // AF_INET or AF_INET6
  uint8_t reserved;  // zero in requests; EventFlags in Event::local
};
static_assert(sizeof(InetAddress) == 20);

// ---------------------------------------------------------------------------
// Requests: process -> monitor, one cache line each.
enum class RequestOp : uint8_t {
  kListen = 1,    // socket_id, address = bound address, backlog
  kUnlisten = 2,  // socket_id
  kConnect = 3,   // socket_id, address = destination, source = bound local address or unspecified
  kClose = 4,     // connection_id: this process's endpoint is closed
};

enum RequestFlags : uint8_t {
  kRequestV6Only = 1 << 0,  // listener: IPV6_V6ONLY, no IPv4-mapped peers
  kRequestDestinationLocal =
      1 << 1,  // connect: the monitor found the destination local to the netns
};

struct Request {
  RequestOp op;
  uint8_t flags;
  uint16_t backlog;     // kListen; clamped to 65535 (it must share the cache line)
  uint32_t request_id;  // echoed in the reply
  uint64_t socket_id;   // chosen by the process, unique within it
  uint64_t connection_id;
  InetAddress address;
  InetAddress source;
};
static_assert(sizeof(Request) == kDescriptorBytes);

// ---------------------------------------------------------------------------
// Events: monitor -> process, one cache line each.
enum class EventType : uint8_t {
  kReply = 1,           // answer to request_id; status 0 or -errno
  kIncoming = 2,        // a connection for listener socket_id; an fd delivery follows
  kError = 3,           // a request could not be parsed; status -errno, request_id echoed if any
  kSegmentDropped = 4,  // free the cached segment whose header says connection_id
};

// Carried in Event::local.reserved of a connect reply or kIncoming.
enum EventFlags : uint8_t {
  // No fd delivery follows: the connection reuses a segment this process
  // already holds from a closed connection with the same peer process. The
  // monitor re-initialised it and wrote the new connection_id into its header.
  kEventSegmentReused = 1 << 0,
};

struct Event {
  EventType type;
  RequestOp op;    // the request this answers (kReply, kError)
  int16_t status;  // 0 or -errno
  uint32_t request_id;
  uint64_t socket_id;
  uint64_t connection_id;
  InetAddress local;  // kConnect reply: the client's address; kIncoming: the server's
  InetAddress peer;   // kConnect reply: the server's address; kIncoming: the client's
};
static_assert(sizeof(Event) == kDescriptorBytes);

// ---------------------------------------------------------------------------
// Registration on the monitor's unix socket (SOCK_SEQPACKET).
//
// process -> monitor: RegisterRequest + SCM_RIGHTS [wake eventfd of the process]
// monitor -> process: RegisterReply   + SCM_RIGHTS [queues memfd, monitor doorbell eventfd]
// later, monitor -> process: FdDelivery + SCM_RIGHTS [segment memfd, this end's wake
//   eventfd, the other end's wake eventfd], one per successful kConnect reply or
//   kIncoming event, sent before that event is pushed. The monitor creates the
//   two eventfds with the segment: a waiter on one connection end sleeps on its
//   own eventfd, so wake-ups for different sockets never steal from each other.
//   The process's own wake eventfd is only for its event queue.
struct RegisterRequest {
  uint32_t magic;
  uint32_t version;
};

struct RegisterReply {
  uint32_t magic;
  uint32_t version;
  int32_t status;  // 0 or -errno
  uint32_t process_id;
  uint32_t request_slots;
  uint32_t event_slots;
  uint32_t request_ring_offset;  // within the queues memfd
  uint32_t event_ring_offset;
  uint64_t queues_bytes;
};

struct FdDelivery {
  uint32_t magic;
  uint32_t side;  // which end of the segment this process is (ConnectionSide)
  uint64_t connection_id;
  uint64_t segment_bytes;
};

// Anyone may ask a running monitor for its state: StatusRequest on a fresh
// connection, answered by one message of JSON text.
inline constexpr uint32_t kStatusMagic = 0x4e415354;  // "NAST"
struct StatusRequest {
  uint32_t magic;  // kStatusMagic
  uint32_t version;
};

inline constexpr uint32_t kRequestSlots = 256;
inline constexpr uint32_t kEventSlots = 1024;

// ---------------------------------------------------------------------------
// A connection's shared segment: header, then two byte rings. Side 0 is the
// connecting end, side 1 the accepting end; ring i carries side i's bytes.
enum ConnectionSide : uint32_t { kClientSide = 0, kServerSide = 1 };

inline constexpr uint32_t kSegmentMagic = 0x4e414353;  // "NACS"
inline constexpr uint32_t kSegmentVersion = 1;
inline constexpr uint32_t kDefaultRingBytes = 256 * 1024;

struct ConnectionSegmentHeader {
  alignas(kFalseSharingRange) uint32_t magic;
  uint32_t version;
  uint64_t connection_id;
  uint32_t ring_offset[2];  // from the start of the segment
  uint32_t ring_capacity;

  // Set when side i aborted (closed with unread data, or died): the other
  // side's reads and writes fail with ECONNRESET.
  alignas(kFalseSharingRange) std::atomic<uint32_t> aborted[2];
};
static_assert(sizeof(ConnectionSegmentHeader) == 2 * kFalseSharingRange);

inline constexpr std::size_t connection_segment_bytes(uint32_t ring_capacity) {
  return sizeof(ConnectionSegmentHeader) + 2 * byte_ring_footprint(ring_capacity);
}

}  // namespace netaccel

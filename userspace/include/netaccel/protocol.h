// Everything the monitor and the preload library exchange: the registration
// handshake on the unix socket, the request/event descriptors on the shared
// queues, the fd deliveries that follow connection events, and the layout of
// a connection's shared segment. One definition for both sides (and for the
// FPGA engine's RTL, which is checked against these layouts).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

#include "netaccel/byte_ring.h"
#include "netaccel/descriptor_ring.h"
#include "netaccel/shm.h"

namespace netaccel {

inline constexpr uint32_t kProtocolMagic = 0x4e41434d;  // "NACM"
inline constexpr uint32_t kProtocolVersion = 2;
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
  kCloseChannel = 5,  // connection_id = channel id: this process cannot use it
  // connection_id: a connection queued for one of this process's listeners
  // that it will never accept (the listener closed). The monitor hands the
  // server end to another process listening there, as the kernel's shared
  // queue would, or resets it when there is none.
  kRequeue = 6,
  // connection_id = the listener's socket cookie: the AcceptQueueMessage
  // this process sent just before on its registration socket opens the
  // socket's accept queue (below). Status 0 when the queue is open.
  kShareListener = 7,
};

enum RequestFlags : uint8_t {
  kRequestV6Only = 1 << 0,  // listener: IPV6_V6ONLY, no IPv4-mapped peers
  kRequestDestinationLocal =
      1 << 1,  // connect: the monitor found the destination local to the netns
  // unlisten after a fork: the process keeps taking what its channels
  // already queued; only new connections go elsewhere.
  kRequestKeepQueued = 1 << 2,
};

// kListen's connection_id is the kernel listener's socket cookie (SO_COOKIE),
// or 0: copies of one listening socket announced by several processes.
struct Request {
  RequestOp op;
  uint8_t flags;
  uint16_t backlog;     // kListen; clamped to 65535 (it must share the cache line)
  uint32_t request_id;  // echoed in the reply; below kMonitorRequestBit
  uint64_t socket_id;   // chosen by the process, unique within it
  uint64_t connection_id;
  InetAddress address;
  InetAddress source;
};
static_assert(sizeof(Request) == kDescriptorBytes);

// Request ids with this bit are the monitor's own: requests it makes to the
// engine on a process's behalf, whose replies it keeps.
inline constexpr uint32_t kMonitorRequestBit = 1u << 31;

// ---------------------------------------------------------------------------
// Events: monitor -> process, one cache line each.
enum class EventType : uint8_t {
  kReply = 1,           // answer to request_id; status 0 or -errno
  kIncoming = 2,        // a connection for listener socket_id; an fd delivery follows;
                        // request_id: its queue stamp (below)
  kError = 3,           // a request could not be parsed; status -errno, request_id echoed if any
  kSegmentDropped = 4,  // free the cached segment whose header says connection_id
  kChannelOpened = 5,   // a ChannelDelivery follows; socket_id is the listener (server
                        // side) or 0 (client side: `peer` is the destination it serves,
                        // `local` the client's address)
};

// Carried in Event::local.reserved of a connect reply or kIncoming.
enum EventFlags : uint8_t {
  // No fd delivery follows: the connection reuses a segment this process
  // already holds from a closed connection with the same peer process. The
  // monitor re-initialised it and wrote the new connection_id into its header.
  kEventSegmentReused = 1 << 0,
  // A connect reply (-ECONNREFUSED): the isolation policy forbids it. The
  // kernel path is not tried either: the application gets the refusal.
  kEventPolicyDenied = 1 << 1,
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

// When a connection was queued for a listener: accept takes connections in
// that order across the monitor's queue and the channels' (the kernel's
// accept queue is one FIFO). Microseconds of CLOCK_MONOTONIC, which every
// process on the host reads alike, compared modulo 2^32.
inline uint32_t queue_stamp_now() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint32_t>(static_cast<uint64_t>(now.tv_sec) * 1000000u +
                               static_cast<uint64_t>(now.tv_nsec) / 1000u);
}
inline bool queued_before(uint32_t stamp, uint32_t other) {
  return static_cast<int32_t>(stamp - other) < 0;
}

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
  // Where the segment starts in the memfd (page aligned), and the connection
  // id its header bears. Both differ from the defaults (0, connection_id) for
  // a server end handed on from a listener that closed: the segment may be
  // a channel's slot, laid out under the id of its first connection.
  uint64_t segment_offset;
  uint64_t segment_connection_id;
};

// Anyone may ask a running monitor for its state: StatusRequest on a fresh
// connection, answered by one message of JSON text.
inline constexpr uint32_t kStatusMagic = 0x4e415354;  // "NAST"
struct StatusRequest {
  uint32_t magic;  // kStatusMagic
  uint32_t version;
};

// A channel's fds follow a kChannelOpened event: [channel memfd, then for each
// slot its client end's and its server end's wake eventfds, then, for the
// client only, the server process's event-queue wake eventfd].
struct ChannelDelivery {
  uint32_t magic;
  uint32_t side;  // ConnectionSide of this process in every slot
  uint64_t channel_id;
  uint64_t channel_bytes;
};

// `netaccel policy` asks a running monitor to change or show the isolation
// policy between attached containers: a PolicyRequest on a fresh connection,
// answered by one message of text: "ok", "error: WHY", or for kList the
// JSON {"containers":[names],"rules":[{"action","from","to","port","enforced"}]}.
// Only root (or the monitor's own user) may change the policy.
inline constexpr uint32_t kPolicyMagic = 0x4e41504c;  // "NAPL"
enum class PolicyOp : uint32_t { kList = 0, kDeny = 1, kAllow = 2 };
inline constexpr std::size_t kContainerNameBytes = 64;
struct PolicyRequest {
  uint32_t magic;  // kPolicyMagic
  uint32_t version;
  PolicyOp op;
  uint32_t port;                     // 0: every port
  char client[kContainerNameBytes];  // NUL-terminated container names
  char server[kContainerNameBytes];
};

inline constexpr uint32_t kRequestSlots = 256;
inline constexpr uint32_t kEventSlots = 1024;

// ---------------------------------------------------------------------------
// A connection's shared segment: header, then two byte rings. Side 0 is the
// connecting end, side 1 the accepting end; ring i carries side i's bytes.
enum ConnectionSide : uint32_t { kClientSide = 0, kServerSide = 1 };

inline constexpr uint32_t kSegmentMagic = 0x4e414353;  // "NACS"
inline constexpr uint32_t kSegmentVersion = 4;
inline constexpr uint32_t kDefaultRingBytes = 256 * 1024;

struct ConnectionSegmentHeader {
  alignas(kFalseSharingRange) uint32_t magic;
  uint32_t version;
  uint64_t connection_id;
  uint32_t ring_offset[2];  // from the start of the segment
  uint32_t ring_capacity;

  // This block is a connection's state: each new connection in the segment
  // starts it zeroed but for `holders` (relayout_connection_segment).
  // Set when side i aborted (closed with unread data, or died): the other
  // side's reads and writes fail with ECONNRESET. Whoever sets it then
  // closes ring i (writer_closed, with release): a reader that finds ring i
  // open may take side i as not aborted (readiness scans read less so).
  alignas(kFalseSharingRange) std::atomic<uint32_t> aborted[2];
  // Side i's O_NONBLOCK (1 when set). It belongs to the open file
  // description, and a connection end has exactly one, which dup, fork, exec
  // and SCM_RIGHTS only duplicate: kept here, a change made by any process
  // holding the end is seen by all, as the kernel's F_SETFL on the shared
  // file is. Beside `aborted` (the same cache line), which every send and
  // receive reads already.
  std::atomic<uint32_t> nonblocking[2];
  // What ring i may hold, as the kernel would buffer it: side i's SO_SNDBUF
  // (high half) and side i ^ 1's SO_RCVBUF (low half), each as getsockopt
  // reports it, 0 when unset. Beside `aborted`, which every send reads.
  std::atomic<uint64_t> ring_buffers[2];
  // Processes holding side i: a fork shares every connection end with the
  // child, and only the last holder's close (or death) ends it, as with a
  // kernel socket shared by two processes.
  std::atomic<uint32_t> holders[2];
  // Set when the server end was accepted. A server end that dies queued,
  // never accepted, goes to another listener (a closed listener's queue).
  std::atomic<uint32_t> accepted;
  // TCP urgent data side i sent (MSG_OOB): kUrgentPending with the byte until
  // the peer reads it out of band, kUrgentRead after; 0 when none was sent.
  // The byte stays out of the ring; urgent_mark[i] is where it stood in it.
  std::atomic<uint32_t> urgent[2];
  std::atomic<uint32_t> urgent_mark[2];
  // Set when the process the monitor knows as side i's owner let go of its
  // share while a forked process still holds it: the owner's death then
  // leaves the end alone.
  std::atomic<uint32_t> owner_left[2];
};
// The fields every send and receive reads share one cache line.
static_assert(offsetof(ConnectionSegmentHeader, ring_buffers) + sizeof(uint64_t[2]) <=
              offsetof(ConnectionSegmentHeader, aborted) + 64);
static_assert(sizeof(ConnectionSegmentHeader) == 2 * kFalseSharingRange);

// The bytes ring `capacity` may hold under `ring_buffers` (see above): each
// buffer that was set stands for itself (at most half the ring), one that
// was not for half the ring. 0 when neither was set: the whole ring.
inline uint32_t ring_queue_limit(uint64_t ring_buffers, uint32_t capacity) {
  if (ring_buffers == 0) return 0;
  const uint32_t half = capacity / 2;
  const auto part = [half](uint32_t buffer) { return buffer == 0 ? half : std::min(buffer, half); };
  return part(static_cast<uint32_t>(ring_buffers >> 32)) +
         part(static_cast<uint32_t>(ring_buffers));
}

// Sets one half of `ring_buffers`: the sender's (`send` true) or the receiver's.
inline void set_ring_buffer(std::atomic<uint64_t>& ring_buffers, bool send, uint32_t bytes) {
  const uint64_t mask = send ? ~uint64_t{0} << 32 : uint64_t{0xffffffff};
  const uint64_t value = send ? uint64_t{bytes} << 32 : bytes;
  uint64_t old = ring_buffers.load(std::memory_order_relaxed);
  while (
      !ring_buffers.compare_exchange_weak(old, (old & ~mask) | value, std::memory_order_relaxed)) {
  }
}

inline constexpr uint32_t kUrgentPending = 1 << 8;
inline constexpr uint32_t kUrgentRead = 1 << 9;

inline constexpr std::size_t connection_segment_bytes(uint32_t ring_capacity) {
  return sizeof(ConnectionSegmentHeader) + 2 * byte_ring_footprint(ring_capacity);
}

// ---------------------------------------------------------------------------
// A channel: connections between one client process and one listener, made
// without the monitor. The first connect from a process to a listener goes
// through the monitor (admission, engine); its success also opens a channel,
// one memfd mapped only by the two processes, holding kChannelSlots connection
// segments and an accept queue. Later connects claim a free slot, lay out its
// segment and push an kIncoming event onto the accept queue: no monitor, no
// sleeping process in between. The monitor still owns the channel's life:
// it closes it when the listener or either process goes, and then consumes
// what is left on the accept queue.
inline constexpr uint32_t kChannelMagic = 0x4e414348;  // "NACH"
inline constexpr uint32_t kChannelVersion = 2;         // its slots hold segments of kSegmentVersion
// Each slot costs both processes two eventfds, so a channel stays small.
inline constexpr uint32_t kChannelSlots = 16;
static_assert(2 + 2 * kChannelSlots <= kMaxPassedFds);
// Room for every slot twice: a cancelled entry stays queued until popped.
// An entry is a kIncoming Event as the server sees it, with request_id the
// slot and socket_id the queue stamp.
inline constexpr uint32_t kChannelQueueSlots = 2 * kChannelSlots;

// Bits of ChannelHeader::slot_state. 0 is a free slot.
enum ChannelSlotBits : uint32_t {
  kSlotClientOpen = 1 << 0,
  kSlotServerOpen = 1 << 1,  // from the claim on: the accept queue holds the server end
  kSlotQueued = 1 << 2,      // cleared by whoever takes the queue entry or cancels it
};

struct ChannelHeader {
  alignas(kFalseSharingRange) uint32_t magic;
  uint32_t version;
  uint64_t channel_id;
  uint32_t slot_count;
  uint32_t queue_offset;   // accept queue (DescriptorRing<Event>) from the channel start
  uint32_t slot_offset;    // first slot's segment
  uint32_t slot_bytes;     // segment stride
  uint32_t ring_capacity;  // of each slot's two rings

  // Set by the monitor: no new connections; the queue belongs to the monitor.
  alignas(kFalseSharingRange) std::atomic<uint32_t> closed;
  // Set while the server process may sleep with this listener in its waits.
  alignas(kFalseSharingRange) std::atomic<uint32_t> acceptor_sleeping;
  // Written by the client only; the monitor reads it for its status.
  alignas(kFalseSharingRange) std::atomic<uint64_t> connections_total;
  alignas(kFalseSharingRange) std::atomic<uint32_t> slot_state[kChannelSlots];
};
static_assert(sizeof(ChannelHeader) == 5 * kFalseSharingRange);

inline constexpr std::size_t channel_page_round_up(std::size_t bytes) {
  return (bytes + 4095) & ~std::size_t{4095};
}
inline constexpr std::size_t channel_queue_offset() {
  return sizeof(ChannelHeader);
}
inline constexpr std::size_t channel_slot_offset() {
  return channel_page_round_up(channel_queue_offset() +
                               descriptor_ring_footprint(kChannelQueueSlots));
}
inline constexpr std::size_t channel_slot_stride(uint32_t ring_capacity) {
  return channel_page_round_up(connection_segment_bytes(ring_capacity));
}
inline constexpr std::size_t channel_bytes(uint32_t ring_capacity) {
  return channel_slot_offset() + kChannelSlots * channel_slot_stride(ring_capacity);
}

// Lets go of one holder of a connection end; true when it was the last, so
// the end is now closed (never true twice, and never below zero).
inline bool release_last_holder(std::atomic<uint32_t>& holders) {
  uint32_t count = holders.load(std::memory_order_acquire);
  while (count != 0 &&
         !holders.compare_exchange_weak(count, count - 1, std::memory_order_acq_rel)) {
  }
  return count == 1;
}

// Lays out a connection segment at `base`: header, two empty rings. Used by
// the monitor for its segments and by a channel's client for each slot.
inline ConnectionSegmentHeader* layout_connection_segment(void* base, uint64_t connection_id,
                                                          uint32_t ring_capacity) {
  auto* bytes = static_cast<unsigned char*>(base);
  auto* header = new (base) ConnectionSegmentHeader{};
  header->magic = kSegmentMagic;
  header->version = kSegmentVersion;
  header->connection_id = connection_id;
  header->ring_offset[kClientSide] = sizeof(ConnectionSegmentHeader);
  header->ring_offset[kServerSide] =
      static_cast<uint32_t>(sizeof(ConnectionSegmentHeader) + byte_ring_footprint(ring_capacity));
  header->ring_capacity = ring_capacity;
  for (std::atomic<uint32_t>& holders : header->holders)
    holders.store(1, std::memory_order_relaxed);
  byte_ring_init(bytes + header->ring_offset[kClientSide], ring_capacity);
  byte_ring_init(bytes + header->ring_offset[kServerSide], ring_capacity);
  return header;
}

// As layout_connection_segment, for a channel's slot, which its client lays
// out anew for every connection: only what changes is written (the
// connection id, the second block of the header, the rings' indices and
// flags as byte_ring_reopen keeps them), so that the lines the accepting
// process still caches from the slot's last connection stay valid. Memory
// not laid out this shape before gets the full layout. The caller owns the
// slot: both ends of its last connection let go of it.
inline ConnectionSegmentHeader* relayout_connection_segment(void* base, uint64_t connection_id,
                                                            uint32_t ring_capacity) {
  auto* bytes = static_cast<unsigned char*>(base);
  auto* header = static_cast<ConnectionSegmentHeader*>(base);
  const uint32_t client_ring = sizeof(ConnectionSegmentHeader);
  const uint32_t server_ring =
      static_cast<uint32_t>(client_ring + byte_ring_footprint(ring_capacity));
  if (header->magic != kSegmentMagic || header->version != kSegmentVersion ||
      header->ring_offset[kClientSide] != client_ring ||
      header->ring_offset[kServerSide] != server_ring || header->ring_capacity != ring_capacity) {
    return layout_connection_segment(base, connection_id, ring_capacity);
  }
  header->connection_id = connection_id;
  // Everything from `aborted` on starts at zero, as in a fresh header.
  std::memset(bytes + offsetof(ConnectionSegmentHeader, aborted), 0,
              sizeof(ConnectionSegmentHeader) - offsetof(ConnectionSegmentHeader, aborted));
  for (std::atomic<uint32_t>& holders : header->holders)
    holders.store(1, std::memory_order_relaxed);
  byte_ring_reopen(bytes + client_ring, ring_capacity);
  byte_ring_reopen(bytes + server_ring, ring_capacity);
  return header;
}

// ---------------------------------------------------------------------------
// Anchors: how a connection end leaves this process's table (exec,
// posix_spawn, SCM_RIGHTS). An anchor is a SOCK_SEQPACKET socketpair (A, B):
// A takes the place of the placeholder at the socket's descriptor number, B
// goes to the monitor, which passes it to its anchor keeper. A's receive queue holds one
// AnchorMessage from B with SCM_RIGHTS [the memfd holding the segment, this end's wake eventfd, the
// other end's], which a preloaded process finds on an inherited or received
// descriptor and peeks (never consumes), so every later exec or pass finds it
// again. The anchor holds one share of the end (`holders`); every copy of A
// is that share, as a kernel socket's open file is: when the last copy
// closes (an exit, a SIGKILL, a message never received), B hangs up and the
// keeper lets the share go, closing the end if it was the last.
inline constexpr uint32_t kAnchorMagic = 0x4e41414e;  // "NAAN"
inline constexpr uint32_t kAnchorVersion = 2;
// AnchorMessage::channel_slot of a segment of its own (not a channel's slot).
inline constexpr uint32_t kAnchorNoSlot = 0xffffffff;

// O_NONBLOCK is not among them: it lives in the segment header.
enum AnchorFlags : uint32_t {
  kAnchorReadShut = 1 << 0,
  kAnchorWriteShut = 1 << 1,
};

// A socket option set on the socket, replayed by whoever adopts it.
struct AnchorOption {
  int32_t level;
  int32_t name;
  uint32_t length;
  unsigned char value[32];
};
inline constexpr uint32_t kAnchorOptions = 8;

struct AnchorMessage {
  uint32_t magic;  // kAnchorMagic
  uint32_t version;
  uint64_t connection_id;   // as the segment's header bears it
  uint64_t segment_offset;  // of the ConnectionSegmentHeader within the memfd
  uint64_t segment_bytes;
  uint32_t channel_slot;  // the slot in the channel at the memfd's start, or kAnchorNoSlot
  uint32_t side;          // ConnectionSide of this end
  uint32_t flags;         // AnchorFlags
  int32_t domain;         // AF_INET or AF_INET6
  InetAddress local;
  InetAddress peer;
  uint32_t option_count;
  AnchorOption options[kAnchorOptions];
};

// process -> monitor on its registration socket: the same AnchorMessage with
// SCM_RIGHTS [B, memfd, the other end's wake eventfd], passed on as it is to
// the anchor keeper (anchor_keeper.h), which watches B and lets the anchor's
// share go when B hangs up.
inline constexpr std::size_t kAnchorWatchFds = 3;

// ---------------------------------------------------------------------------
// Accept queues. The kernel keeps one accept queue per listening socket,
// shared by every process holding it; our listeners queue per process, and a
// process is announced (routed connections) only once it waits for them. A
// socket that may be held by several processes (fork, exec, SCM_RIGHTS) gets
// an accept queue for the time none of them is announced: a SOCK_SEQPACKET
// pair (Qa, Qb). Every holder keeps a copy of Qa beside the listener; the
// monitor holds Qb and, while no holder is announced, listens for the socket
// under an engine process of its own. Each connection routed there becomes
// an anchor (A, B): B goes to the anchor keeper, A to Qb with an
// AcceptQueueEntry. Any holder that waits receives A from Qa and adopts it
// as a queued connection. A holder that closes its listener with such
// connections unaccepted sends them back on Qa, and the monitor queues them
// again. Qb hangs up when the last copy of Qa closes: the queue ends.
inline constexpr uint32_t kAcceptQueueMagic = 0x4e414151;  // "NAAQ"
inline constexpr uint32_t kAcceptQueueVersion = 1;
// Qa's peer is bound to this abstract name followed by the socket's cookie
// in hex, so that an image inheriting Qa (exec) or receiving it
// (SCM_RIGHTS) knows which listener it serves.
inline constexpr char kAcceptQueueName[] = "netaccel-accept-queue-";

// process -> monitor on its registration socket, SCM_RIGHTS [Qb]; a
// kShareListener request follows on the request queue.
struct AcceptQueueMessage {
  uint32_t magic;  // kAcceptQueueMagic
  uint32_t version;
  uint64_t cookie;      // SO_COOKIE of the kernel listener
  InetAddress address;  // its bound address
  uint16_t backlog;
  uint8_t flags;  // RequestFlags: kRequestV6Only
  uint8_t reserved;
};

// One queued connection, SCM_RIGHTS [A]: monitor -> holders on Qb, and a
// holder giving one back -> monitor on Qa.
struct AcceptQueueEntry {
  uint32_t magic;      // kAcceptQueueMagic
  uint32_t queued_at;  // queue stamp
};

}  // namespace netaccel

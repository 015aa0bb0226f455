// Process-wide state of the preload library: the link to the monitor, the
// table of descriptors netaccel owns, and the waiting discipline shared by
// every blocking call.
#pragma once

#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

#include "netaccel/byte_ring.h"
#include "netaccel/descriptor_ring.h"
#include "netaccel/protocol.h"
#include "netaccel/shm.h"

namespace netaccel::preload {

// ---------------------------------------------------------------------------
// Tunables read once from the environment.
struct Config {
  char socket_path[108];
  int64_t spin_ns;  // how long a blocking call polls before it sleeps
  bool debug;
};
const Config& config();

int64_t monotonic_ns();

// Lock that costs nothing while the process has a single thread: pthread_create
// is interposed, and no thread can be inside our calls when the first
// additional thread is created.
extern std::atomic<bool> g_multithreaded;
class OptionalSpinLock {
 public:
  void lock() {
    if (!g_multithreaded.load(std::memory_order_relaxed)) return;
    while (locked_.exchange(true, std::memory_order_acquire)) {
      while (locked_.load(std::memory_order_relaxed)) __builtin_ia32_pause();
    }
  }
  void unlock() {
    if (!g_multithreaded.load(std::memory_order_relaxed)) return;
    locked_.store(false, std::memory_order_release);
  }

 private:
  std::atomic<bool> locked_{false};
};

// ---------------------------------------------------------------------------
// The announce/check pair around sleeping is the one store->load edge: a
// sleeper stores its waiting flag then re-reads the ring; a waker publishes
// then reads the flag. Both sides need a full fence between the two.
//
// The fence is asymmetric where the kernel allows: a full fence on every send
// stalls the sender until the peer's copy of the ring's lines is invalidated
// (most of a 64-byte send's cost), while sleeping is rare (after a spin
// budget). So the sleeper issues membarrier(GLOBAL_EXPEDITED), which runs a
// full fence on every CPU running a registered process, and a registered
// waker's data sends need only stop the compiler.
extern bool g_publish_without_fence;  // this process is registered for that
// Registers this process; at start and in every forked child, since a fork
// does not inherit the registration.
void register_for_asymmetric_fence();
// Before sleeping for a connection's data. False when the fence could not
// cover wakers that skip theirs (membarrier failed here): the caller then
// sleeps in slices of kSpaceRecheckMs.
[[nodiscard]] bool fence_before_sleeping_for_data();
// Before sleeping for wakers that always fence (the monitor, channel peers).
void fence_before_sleeping();
void fence_after_publishing();
inline void fence_after_publishing_data() {
  if (g_publish_without_fence) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    fence_after_publishing();
  }
}

// A writer asleep for space in a full ring re-checks this often.
inline constexpr int kSpaceRecheckMs = 1;

// How long a blocking call polls before it sleeps: pause-spins at first, then
// yields the core between checks, and gives up after `budget_ns`. The clock
// is read every 16 rounds, starting at the first check: most waits on a busy
// connection end before it, and reading it costs as much as a 64-byte receive.
// A yield is a system call, so its pace follows what yields do on this
// thread (see keep_spinning): they stop while they find no one to give the
// core to, and a spin whose yields keep handing the core over sleeps.
class SpinBudget {
 public:
  explicit SpinBudget(int64_t budget_ns) : budget_ns_(budget_ns > 0 ? budget_ns : 0) {}
  bool keep_spinning();

 private:
  int64_t budget_ns_;
  int64_t start_ = -1;
  int64_t next_yield_ns_ = 0;
  uint32_t rounds_ = 0;
  uint32_t hand_overs_ = 0;  // yields that let another task run
};

struct Channel;
struct Pipe;

// ---------------------------------------------------------------------------
// One end of a shared-memory connection: its own segment from the monitor, or
// a slot of a channel (then `segment` is empty and the channel owns the fds).
struct Connection {
  SharedMapping segment;
  Channel* channel = nullptr;
  uint32_t slot = 0;
  bool inherited = false;  // came with a fork: the monitor knows another owner
  // Handed on from another process whose listener closed before accepting
  // it: the segment is never cached for reuse.
  bool handed_on = false;
  // Came with an anchor (exec, posix_spawn, SCM_RIGHTS): our share is the
  // anchor's, which the kernel keeps with the anchor descriptor at our number.
  bool adopted = false;
  UniqueFd memory;             // the segment's memfd (not a channel's slot): anchors pass it on
  uint64_t memory_offset = 0;  // where `segment` starts in `memory`
  UniqueFd anchor;             // made the first time the end leaves this process; reused after
  ConnectionSegmentHeader* header = nullptr;
  ByteRing tx;         // our bytes to the peer
  ByteRing rx;         // the peer's bytes to us
  UniqueFd own_wake;   // we sleep on it, the peer signals it
  UniqueFd peer_wake;  // the peer sleeps on it
  uint64_t connection_id = 0;
  uint32_t side = 0;

  bool peer_aborted() const {
    return header->aborted[side ^ 1].load(std::memory_order_acquire) != 0;
  }
  // O_NONBLOCK of the end's one open file, whichever process set it.
  bool nonblocking() const {
    return header->nonblocking[side].load(std::memory_order_relaxed) != 0;
  }
  void set_nonblocking(bool nonblocking) {
    header->nonblocking[side].store(nonblocking ? 1 : 0, std::memory_order_relaxed);
  }
  // Bytes a send may add now: free ring space, within what SO_SNDBUF and
  // the peer's SO_RCVBUF let the ring hold (only when one was set).
  uint32_t send_room() {
    const uint32_t free_space = tx.writable();
    const uint32_t limit =
        ring_queue_limit(header->ring_buffers[side].load(std::memory_order_relaxed), tx.capacity());
    if (limit == 0) return free_space;
    const uint32_t queued = tx.unread();
    return queued >= limit ? 0 : std::min(free_space, limit - queued);
  }
  // The first waker takes the announcement down, so that a sleeper costs one
  // eventfd write rather than one per message until it runs again.
  void wake_peer_if_reading() {
    fence_after_publishing_data();
    wake_if_announced(tx.control().reader_waiting);
  }
  // No fence here, unlike the data direction: a writer waiting for space
  // re-checks on a short timer (kSpaceRecheckMs), so the rare lost race costs
  // a millisecond, while a fence on every receive costs a fifth of its time.
  void wake_peer_if_writing() { wake_if_announced(rx.control().writer_waiting); }
  void wake_if_announced(std::atomic<uint32_t>& announced) {
    if (announced.load(std::memory_order_relaxed) != 0 &&
        announced.exchange(0, std::memory_order_relaxed) != 0) {
      signal_wake_fd(peer_wake.get());
    }
  }
};

// Our end is done: EOF for the peer (a reset with `abort`, or when unread
// data remains, as the kernel does), the monitor told. The segment stays
// mapped in a cache: the monitor may hand it back for a later connection
// with the same peer process, which spares a new memfd, mapping and fds.
void close_connection(Connection* connection, bool abort);
// Our listener closed before accepting `connection`: the monitor hands it to
// another process listening there, or resets it when there is none.
void requeue_unaccepted(Connection* connection);

// ---------------------------------------------------------------------------
enum class SocketState : uint8_t {
  kFresh,      // placeholder descriptor, nothing decided yet
  kBound,      // a real kernel socket, bound; may still listen or connect via netaccel
  kListening,  // kernel listener plus a netaccel listener
  kConnected,  // a netaccel connection
  kPipe,       // not a socket: one end of a pipe carried by a ring (pipes.h)
};

struct PendingConnection {
  Connection* connection;
  InetAddress local;
  InetAddress peer;
  uint32_t queued_at;  // queue_stamp_now() when it was queued
};

// A channel (protocol.h) as one of its two processes holds it.
struct Channel {
  SharedMapping mapping;
  UniqueFd memory;  // anchors of its slots pass it on
  ChannelHeader* header = nullptr;
  DescriptorRing<Event> queue;  // we produce (client) or consume (server)
  uint32_t side = 0;
  uint64_t channel_id = 0;
  // The layout as checked when the channel came: the other process can
  // rewrite the header, never what we index the mapping with.
  uint32_t slot_offset = 0;
  uint32_t slot_bytes = 0;
  uint32_t ring_capacity = 0;
  std::vector<UniqueFd> wake;      // [slot * 2 + side]
  UniqueFd acceptor_wake;          // client: the server process's event-queue eventfd
  InetAddress destination{};       // client: the address it connects to
  InetAddress client_address{};    // client: our address in its connections
  uint64_t listener_id = 0;        // server: the listening socket it feeds
  std::atomic<int> references{1};  // its holder, plus each open connection in it
  OptionalSpinLock lock;           // client: claims and pushes; server: pops
  uint32_t next_slot = 0;
  uint32_t connections = 0;  // client: picks local ports

  bool closed() const { return header->closed.load(std::memory_order_acquire) != 0; }
};

// Connects over a channel to `destination`, if this process holds an open one
// with a free slot; null otherwise (the monitor is asked then).
Connection* channel_connect(const InetAddress& destination, InetAddress& local, InetAddress& peer);
// Takes the oldest connection queued on the listener's channels, if it was
// queued before `older_than` (when given).
bool channel_accept(struct Socket* listener, PendingConnection& out,
                    const uint32_t* older_than = nullptr);
// fork(): every connection end this process holds gains the child as a
// holder before the fork, and loses it again if the fork fails.
void share_connections_with_child(bool shared);
// exec: this process's share of every end it shares with others goes
// (returned, to rejoin if the exec fails); an end only we hold stays as it
// is. An end the monitor knows us to own is marked `owner_left` too, so
// that the monitor, seeing our link close at exec, leaves it to its other
// holders (an anchor the new image may close first: that close is then the
// last, a clean one). Adopted ends are the kernel's to count.
struct LeftForExec {
  Connection* connection;
  bool as_owner;  // we set owner_left
};
std::vector<LeftForExec> leave_shared_connections_for_exec();
void rejoin_connections_after_failed_exec(const std::vector<LeftForExec>& left);
// exit: every share goes, and an end whose last share this was closes.
void leave_connections_at_exit();

// Announces a listener that a fork left unannounced; see Socket::listener_announced.
void ensure_listener_announced(struct Socket* socket);

// Accept queues (accept_queue.cc, protocol.h).
// The kernel listener's SO_COOKIE; 0 if it has none.
uint64_t socket_cookie(int fd);
// Gives the listener an accept queue before another process may hold it;
// false if it has none (no monitor): its holders then announce themselves.
bool open_accept_queue(struct Socket* listener);
// Before a fork: every listener gets its queue.
void open_accept_queues_for_fork();
// Moves what the listener's accept queue holds into its backlog; true if it
// added any. A queue whose monitor went is closed.
bool take_accept_queue(struct Socket* listener);
// The listener closes: a queued connection it took from the accept queue
// goes back there for another holder (false if it could not).
bool give_back_to_accept_queue(struct Socket* listener, const PendingConnection& pending);
// Qa of an accept queue, as a descriptor inherited or received shows it:
// the listening socket's cookie, or 0 if `fd` is no accept queue.
uint64_t accept_queue_cookie(int fd);
// Counts the events that leave listeners unannounced (a fork, a new
// monitor), so that epoll sets know to look for them.
extern std::atomic<uint32_t> g_listener_generation;

// A connection waits in the listener's backlog or on one of its channels.
bool listener_has_pending(struct Socket* listener);
// The listener closes: its channels go (the monitor hands on what they queue).
void drop_listener_channels(struct Socket* listener);

struct SavedOption {
  int level;
  int name;
  socklen_t length;
  unsigned char value[32];
};

struct Socket {
  std::atomic<int> references{0};  // table slots + calls in progress
  // The thread (pthread_self) whose connect is setting this socket up over
  // netaccel, or 0. The server may accept before that connect returns,
  // while the kernel's client is connected by the time accept returns: the
  // other threads' calls wait for it (lookup_socket).
  std::atomic<uintptr_t> connecting_thread{0};
  std::atomic<int> descriptors{0};  // table slots: the open file's descriptors
  int domain = AF_INET;
  int type = SOCK_STREAM;
  int protocol = 0;
  uint64_t id = 0;
  // O_NONBLOCK until the socket connects (a connection end's is its
  // Connection's) and of a listener no other process may hold.
  std::atomic<bool> nonblocking{false};
  SocketState state = SocketState::kFresh;
  bool local_known = false;
  InetAddress local{};
  InetAddress peer{};
  bool read_shut = false;
  bool write_shut = false;
  bool connect_pending = false;  // non-blocking connect not yet observed
  // The kernel accepts one send to a peer that has closed; the peer's reset
  // then fails the next send (EPIPE) and shows in poll and SO_ERROR.
  bool reset_by_peer = false;
  int pending_error = 0;  // what SO_ERROR or the next send reports, once
  // The peer's reset was reported (ECONNRESET) once already.
  bool reset_reported = false;
  int64_t receive_timeout_ns = 0;  // 0: none
  int64_t send_timeout_ns = 0;
  bool reset_on_close = false;  // SO_LINGER {1, 0}
  // SO_SNDBUF and SO_RCVBUF as getsockopt reports them; 0 when unset.
  uint32_t send_buffer = 0;
  uint32_t receive_buffer = 0;
  std::vector<SavedOption> options;

  Connection* connection = nullptr;
  // kPipe: the pipe and which of its ends the descriptors hold.
  Pipe* pipe = nullptr;
  bool pipe_write_end = false;
  std::atomic<int> epoll_memberships{0};  // emulated epoll sets watching it
  OptionalSpinLock send_lock;
  OptionalSpinLock receive_lock;

  // Listener state.
  UniqueFd listener_wake;  // signalled when the backlog gains a connection
  uint16_t listen_backlog = 0;
  bool listen_v6only = false;
  // Whether the monitor routes connections to this process's listener. After
  // a fork neither process is announced: each announces itself again when it
  // next waits for connections (accept, epoll, poll, select), so those go to
  // the processes that take them (an nginx worker, not its master).
  std::atomic<bool> listener_announced{false};
  // Another process may hold this listener (it was forked, exec'd, spawned or
  // passed with it, or adopted it): its O_NONBLOCK is read from the kernel
  // listener, where every holder sets it.
  std::atomic<bool> listener_shared{false};
  std::mutex announce_mutex;
  std::mutex backlog_mutex;
  std::deque<PendingConnection> backlog;
  std::vector<Channel*> channels;  // under backlog_mutex
  // The kernel listener's SO_COOKIE: names the socket, whichever process
  // holds it, to the monitor and to its accept queue.
  uint64_t cookie = 0;
  // Qa of the socket's accept queue (protocol.h), once it may be shared.
  UniqueFd accept_queue;
  // The monitor refused one (another holder's queue serves the socket): not
  // asked again for this socket.
  bool accept_queue_refused = false;
  std::mutex accept_queue_mutex;

  void reset();
};

// The table of descriptors netaccel owns. A descriptor number is always a
// real kernel descriptor too (a placeholder until a kernel socket replaces it),
// so numbers never collide with the kernel's.
// While the process has one thread no close can race a call, so the
// reference is not counted: two atomic operations fewer on every send and recv.
void release_socket(Socket* socket);  // drops one reference
class SocketRef {
 public:
  SocketRef() = default;
  SocketRef(Socket* socket, bool counted) : socket_(socket), counted_(counted) {}
  SocketRef(SocketRef&& other) noexcept : socket_(other.socket_), counted_(other.counted_) {
    other.socket_ = nullptr;
  }
  SocketRef& operator=(SocketRef&&) = delete;
  // Inline: it runs on every send and receive.
  ~SocketRef() {
    if (socket_ != nullptr && counted_) release_socket(socket_);
  }
  Socket* operator->() const { return socket_; }
  Socket* get() const { return socket_; }
  explicit operator bool() const { return socket_ != nullptr; }

 private:
  Socket* socket_ = nullptr;
  bool counted_ = false;
};

// Every descriptor in the table: sockets and pipe ends.
SocketRef lookup_descriptor(int fd);
// Sockets only: socket calls on a pipe end go to the kernel, which refuses them.
SocketRef lookup_socket(int fd);
bool is_netaccel_fd(int fd);
Socket* new_socket();
// Installs `socket` at `fd` (which must be free in the table).
void install_socket(int fd, Socket* socket);
// Removes and returns the socket at `fd` (the caller owns the table reference).
Socket* uninstall_socket(int fd);
// Listener lookup by the id the monitor echoes in kIncoming.
void register_listener(Socket* socket);
void unregister_listener(Socket* socket);

// Takes one of our own descriptors (monitor link, wake fds) out of the
// application's way and marks it ours; returns its new number.
int keep_internal_fd(int fd);
void keep_internal_fd(UniqueFd& fd);
// Our own descriptors refuse application calls.
void mark_internal_fd(int fd, bool internal);
bool is_internal_fd(int fd);
// The highest number one of our own descriptors has ever had; -1 if none.
int highest_internal_fd();

// A placeholder descriptor for a new netaccel socket; -1 with errno set.
int new_placeholder_fd(bool close_on_exec);
// The highest descriptor number the table has ever held.
int highest_socket_fd();
// False in a vfork child, which runs in its parent's memory: it must change
// neither the parent's shares nor its tables.
bool holder_process();

// Anchors (anchor.cc, protocol.h).
// Gives each connected socket that the new image will inherit an anchor at
// its number (`include_close_on_exec`: also those the image closes, which a
// posix_spawn file action may still dup).
void anchor_sockets_for_new_image(bool include_close_on_exec);
// fork: every connection end this process holds goes to an anchor that the
// two processes share, as a kernel socket's open file; the last copy to go
// (a close, an exit, an _exit, a kill) ends it. An end that cannot be
// anchored (no monitor) is shared by count (share_connections_with_child).
void anchor_connections_for_fork();
// Our share of the end passes to the anchor just made for it: we hold the
// end through the anchor's copies, as an adopter does.
void hold_through_anchor(Connection* connection);
// The preload's start in a new image: adopts every inherited descriptor.
void adopt_inherited_descriptors();
// Then stdin, stdout and stderr that are netaccel sockets become streams that
// reach their connections (streams.cc): glibc's own would write the anchor.
void adopt_standard_streams();
// A connected netaccel socket was dup'd onto `fd` (0, 1 or 2): glibc's
// stream there becomes a socket stream, taking over what it buffered.
void take_over_standard_stream(int fd);
// exit(): glibc flushes its streams only after every library's destructor,
// when our connections are no longer ours; streams on sockets go first.
void flush_socket_streams_at_exit();
// Hands the monitor B of an anchor with the message it carries; false if no
// monitor will watch it. `may_register`: false in a vfork child.
bool send_anchor_watch(const AnchorMessage& message, const int (&fds)[kAnchorWatchFds],
                       bool may_register);
// Hands the monitor Qb of a new accept queue; false if no monitor took it.
bool send_accept_queue(const AcceptQueueMessage& message, int queue);
// Reads the anchor message at `fd` without taking it off its queue; its fds
// in `fds` (own copies).
bool peek_anchor(int fd, AnchorMessage& message, UniqueFd (&fds)[3]);
// sendmsg on a kernel socket with control data: connected netaccel sockets
// passed with SCM_RIGHTS travel as their anchors.
ssize_t send_with_anchors(int fd, const struct msghdr* message, int flags);
// recvmsg: adopts every descriptor received with SCM_RIGHTS.
void adopt_received_descriptors(struct msghdr* message);
// A connection end from an anchor's message and fds [memfd, own wake, peer wake].
Connection* adopt_connection(const AnchorMessage& message, UniqueFd (&fds)[3]);

// ---------------------------------------------------------------------------
// The link to the monitor: registration, request/event queues.
bool monitor_available();  // registers on first use
uint64_t next_socket_id();
// Sends `request` and waits for its reply. False if the monitor is unreachable.
// A successful kConnect reply comes with its connection in `*connection`.
bool monitor_call(Request& request, Event& reply, Connection** connection);
// Sends `request` without waiting for its reply; false if it could not.
bool monitor_post(Request& request);
// Consumes pending events: replies, incoming connections.
void pump_events();
bool events_pending();
// The process-wide wake fd the monitor signals after posting events; -1 if none.
int event_wake_fd();
// Consumes the signals on event_wake_fd(); call after a sleep it ended.
void drain_event_wake();
void announce_event_wait(bool waiting);

// ---------------------------------------------------------------------------
// Address helpers.
bool to_inet_address(const struct sockaddr* address, socklen_t length, InetAddress& out);
socklen_t from_inet_address(const InetAddress& address, int domain, struct sockaddr_storage& out);
// Writes `address` to a program's (out, length) as the kernel does; 0, or
// EFAULT or EINVAL for what the kernel refuses.
int copy_out_address(const InetAddress& address, int domain, struct sockaddr* out,
                     socklen_t* length);
bool is_loopback(const InetAddress& address);
bool is_local_address(const InetAddress& address);

// Readiness as epoll reports it (EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLHUP,
// EPOLLERR); poll's bits have the same values. A listener's kernel half is
// not included: the kernel reports it on the listener's own descriptor.
// `wanted`: the bits the caller looks at; others may be missing (saves
// reading the lines the peer writes).
uint32_t socket_readiness(Socket* socket, uint32_t wanted = ~0u);

// Scatter/gather helpers shared by the socket and pipe data paths.
std::size_t iov_total(const struct iovec* iov, int iovcnt);
// At most `most` bytes of `iov` after its first `skip`, in `out` (at most 64 entries).
int iov_advance(const struct iovec* iov, int iovcnt, std::size_t skip, std::size_t most,
                struct iovec* out);

// How many of `wanted` bytes a read of `ring` would take now.
inline std::size_t readable_for(ByteRing& ring, std::size_t wanted) {
  const auto asked = static_cast<uint32_t>(std::min<std::size_t>(wanted, ring.capacity()));
  return std::min<std::size_t>(wanted, ring.readable(asked));
}

// Calls `visit(fd)` for every descriptor that SCM_RIGHTS parts of
// `message` carry.
template <typename Visit>
void for_each_passed_descriptor(const struct msghdr* message, Visit visit) {
  auto* header = const_cast<struct msghdr*>(message);
  for (struct cmsghdr* part = CMSG_FIRSTHDR(header); part != nullptr;
       part = CMSG_NXTHDR(header, part)) {
    if (part->cmsg_level != SOL_SOCKET || part->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (part->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int passed;
      memcpy(&passed, CMSG_DATA(part) + i * sizeof(int), sizeof passed);
      visit(passed);
    }
  }
}

// errno-style return helpers.
inline int fail(int error) {
  errno = error;
  return -1;
}

}  // namespace netaccel::preload

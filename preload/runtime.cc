#include "runtime.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/membarrier.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "pipes.h"
#include "real_calls.h"
#include "user_memory.h"

namespace netaccel::preload {

std::atomic<bool> g_multithreaded{false};
std::atomic<uint32_t> g_listener_generation{0};

// ---------------------------------------------------------------------------
const Config& config() {
  static const Config loaded = [] {
    Config c{};
    const char* path = getenv(kMonitorSocketEnv);
    snprintf(c.socket_path, sizeof c.socket_path, "%s",
             path != nullptr && *path != '\0' ? path : kDefaultMonitorSocket);
    const char* spin = getenv("NETACCEL_SPIN_US");
    c.spin_ns = (spin != nullptr ? atoll(spin) : 500) * 1000;
    const char* debug = getenv("NETACCEL_DEBUG");
    c.debug = debug != nullptr && strcmp(debug, "0") != 0;
    return c;
  }();
  return loaded;
}

int64_t monotonic_ns() {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

#define NETACCEL_DEBUG_LOG(...)                                    \
  do {                                                             \
    if (config().debug) fprintf(stderr, "netaccel: " __VA_ARGS__); \
  } while (0)

// ---------------------------------------------------------------------------
// Store->load ordering on both sides of the announce/check pair. One
// GLOBAL_EXPEDITED call costs 0.2 us to tens of us (an interrupt for each CPU
// running a registered process), paid only on the way to sleep.
bool g_publish_without_fence = false;

void register_for_asymmetric_fence() {
  g_publish_without_fence =
      syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
}

bool fence_before_sleeping_for_data() {
  if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0) return true;
  fence_before_sleeping();
  return false;
}
void fence_before_sleeping() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
void fence_after_publishing() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

std::size_t iov_total(const struct iovec* iov, int iovcnt) {
  std::size_t total = 0;
  for (int i = 0; i < iovcnt; ++i) total += iov[i].iov_len;
  return total;
}

int iov_advance(const struct iovec* iov, int iovcnt, std::size_t skip, std::size_t most,
                struct iovec* out) {
  int count = 0;
  for (int i = 0; i < iovcnt && count < 64 && most > 0; ++i) {
    if (skip >= iov[i].iov_len) {
      skip -= iov[i].iov_len;
      continue;
    }
    out[count].iov_base = static_cast<char*>(iov[i].iov_base) + skip;
    out[count].iov_len = std::min(iov[i].iov_len - skip, most);
    most -= out[count].iov_len;
    skip = 0;
    ++count;
  }
  return count;
}

namespace {

// What this thread's yields have been doing. A yield that returns about as
// fast as a trivial system call found no one waiting for the core (the peer
// runs on another one): the next comes twice as late, up to
// kLongestYieldGapNs, for on a machine where a system call costs
// microseconds a spinner that yields every few rounds makes a yield storm
// of every short wait. A yield that took longer let another task run: the
// peer may share our core, so yields come at every check again.
struct YieldPace {
  int64_t gap_ns = 0;
  int64_t handed_over_ns = -1;  // a yield longer than this let another task run
};
thread_local YieldPace t_yield_pace;

// Twice what a trivial system call takes on this thread's machine, and half
// a microsecond more: a yield that finds the core free costs about one
// (measured 2.1 us against getppid's 1.7 us on a VM with page-table
// isolation), one that lets another task run two context switches more
// (5 us there, with that task doing nothing but yield back). Measured once
// per thread, three calls, the fastest kept; not from yields themselves, as
// on a core shared with the peer every yield hands it over.
int64_t yield_hand_over_threshold_ns() {
  int64_t fastest = INT64_MAX;
  for (int i = 0; i < 3; ++i) {
    const int64_t before = monotonic_ns();
    syscall(SYS_getppid);
    fastest = std::min(fastest, monotonic_ns() - before);
  }
  return 2 * fastest + 500;
}
constexpr int64_t kLongestYieldGapNs = 32000;
// A spin whose yields handed the core over this often is on a busy core:
// sleeping costs the wait fewer system calls than yielding on.
constexpr uint32_t kHandOversBeforeSleeping = 4;

}  // namespace

bool SpinBudget::keep_spinning() {
  if ((++rounds_ & 15) != 0) {
    __builtin_ia32_pause();
    return true;
  }
  const int64_t now = monotonic_ns();
  if (start_ < 0) start_ = now;
  if (now - start_ >= budget_ns_) return false;
  // Past the first microsecond the peer may be waiting for our core: on a
  // two-core machine two spinners and a monitor do not fit otherwise. (With
  // both ends of a 64-byte ping-pong on one core, yielding after 5 us made
  // a round trip 13 us; after 1 us, 4.5 us. Alone on two cores it is 0.6 us
  // and never gets this far.)
  YieldPace& pace = t_yield_pace;
  if (now - start_ <= std::max<int64_t>(1000, pace.gap_ns) || now < next_yield_ns_) return true;
  if (pace.handed_over_ns < 0) pace.handed_over_ns = yield_hand_over_threshold_ns();
  const int64_t before = monotonic_ns();
  sched_yield();
  const int64_t after = monotonic_ns();
  if (after - before > pace.handed_over_ns) {
    pace.gap_ns = 0;
    if (++hand_overs_ >= kHandOversBeforeSleeping) return false;
  } else {
    pace.gap_ns = std::min(kLongestYieldGapNs, std::max<int64_t>(1000, 2 * pace.gap_ns));
  }
  next_yield_ns_ = after + pace.gap_ns;
  return true;
}

// ---------------------------------------------------------------------------
// Descriptor tables, indexed by fd number, sized by the hard RLIMIT_NOFILE
// ceiling we accept; reserved lazily so untouched pages cost nothing.
namespace {
constexpr int kMaxFds = 1 << 20;

template <typename T>
T* reserve_table() {
  void* memory = mmap(nullptr, sizeof(T) * kMaxFds, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (memory == MAP_FAILED) abort();
  return static_cast<T*>(memory);
}

std::atomic<Socket*>* sockets() {
  static std::atomic<Socket*>* table = reserve_table<std::atomic<Socket*>>();
  return table;
}
std::atomic<uint8_t>* internal_fds() {
  static std::atomic<uint8_t>* table = reserve_table<std::atomic<uint8_t>>();
  return table;
}

// Socket objects are never returned to the allocator: a racing lookup may
// touch a socket that was just closed, and type-stable memory makes that safe.
std::mutex g_free_sockets_mutex;
std::vector<Socket*> g_free_sockets;

std::mutex g_listeners_mutex;
std::unordered_map<uint64_t, Socket*> g_listeners;
}  // namespace

void Socket::reset() {
  domain = AF_INET;
  type = SOCK_STREAM;
  protocol = 0;
  id = 0;
  nonblocking.store(false, std::memory_order_relaxed);
  state = SocketState::kFresh;
  local_known = false;
  local = {};
  peer = {};
  read_shut = write_shut = connect_pending = reset_by_peer = reset_reported = false;
  pending_error = 0;
  receive_timeout_ns = send_timeout_ns = 0;
  reset_on_close = false;
  send_buffer = receive_buffer = 0;
  options.clear();
  connection = nullptr;
  pipe = nullptr;
  pipe_write_end = false;
  epoll_memberships.store(0, std::memory_order_relaxed);
  listener_wake.reset();
  listen_backlog = 0;
  listen_v6only = false;
  listener_announced.store(false, std::memory_order_relaxed);
  listener_shared.store(false, std::memory_order_relaxed);
  backlog.clear();
  cookie = 0;
  if (accept_queue) mark_internal_fd(accept_queue.get(), false);
  accept_queue.reset();
  accept_queue_refused = false;
}

namespace {
// Over loopback the kernel's connect takes microseconds; ours as long as a
// channel claim or a monitor round trip.
void wait_for_other_threads_connect(Socket* socket) {
  const uintptr_t connecting = socket->connecting_thread.load(std::memory_order_acquire);
  if (connecting == 0 || connecting == static_cast<uintptr_t>(pthread_self())) return;
  while (socket->connecting_thread.load(std::memory_order_acquire) != 0) sched_yield();
}
}  // namespace

SocketRef lookup_socket(int fd) {
  SocketRef socket = lookup_descriptor(fd);
  if (socket && socket->state == SocketState::kPipe) return SocketRef();
  return socket;
}

SocketRef lookup_descriptor(int fd) {
  if (fd < 0 || fd >= kMaxFds) return SocketRef();
  std::atomic<Socket*>& slot = sockets()[fd];
  if (!g_multithreaded.load(std::memory_order_relaxed)) {
    return SocketRef(slot.load(std::memory_order_acquire), false);
  }
  for (;;) {
    Socket* socket = slot.load(std::memory_order_acquire);
    if (socket == nullptr) return SocketRef();
    socket->references.fetch_add(1, std::memory_order_acquire);
    // The slot may have changed between the load and the increment.
    if (slot.load(std::memory_order_acquire) == socket) {
      wait_for_other_threads_connect(socket);
      return SocketRef(socket, true);
    }
    release_socket(socket);
  }
}

bool is_netaccel_fd(int fd) {
  return fd >= 0 && fd < kMaxFds && sockets()[fd].load(std::memory_order_relaxed) != nullptr;
}

Socket* new_socket() {
  Socket* socket = nullptr;
  {
    std::lock_guard lock(g_free_sockets_mutex);
    if (!g_free_sockets.empty()) {
      socket = g_free_sockets.back();
      g_free_sockets.pop_back();
    }
  }
  if (socket == nullptr) socket = new Socket;
  socket->reset();
  socket->references.store(1, std::memory_order_relaxed);
  return socket;
}

std::atomic<int> g_highest_fd{-1};

void install_socket(int fd, Socket* socket) {
  socket->references.fetch_add(1, std::memory_order_relaxed);
  socket->descriptors.fetch_add(1, std::memory_order_relaxed);
  sockets()[fd].store(socket, std::memory_order_release);
  int highest = g_highest_fd.load(std::memory_order_relaxed);
  while (fd > highest && !g_highest_fd.compare_exchange_weak(highest, fd)) {
  }
}

int highest_socket_fd() {
  return g_highest_fd.load(std::memory_order_acquire);
}

namespace {
// Each connection end held through one of our descriptors, once. Adopted ends
// are left out: the kernel counts their holders (copies of the anchor).
template <typename Visit>
void for_each_held_connection(Visit visit) {
  std::vector<Connection*> seen;
  const int highest = g_highest_fd.load(std::memory_order_acquire);
  for (int fd = 0; fd <= highest; ++fd) {
    Socket* socket = sockets()[fd].load(std::memory_order_acquire);
    if (socket == nullptr || socket->state != SocketState::kConnected) continue;
    Connection* connection = socket->connection;
    if (connection->adopted) continue;
    if (std::find(seen.begin(), seen.end(), connection) != seen.end()) continue;
    seen.push_back(connection);
    visit(connection);
  }
}
}  // namespace

void share_connections_with_child(bool shared) {
  for_each_held_connection([shared](Connection* connection) {
    std::atomic<uint32_t>& holders = connection->header->holders[connection->side];
    if (shared) {
      holders.fetch_add(1, std::memory_order_acq_rel);
    } else {
      release_last_holder(holders);
    }
  });
}

namespace {
// The process whose shares our bookkeeping counts: a vfork child runs in
// its parent's memory and must not give away the parent's shares.
pid_t g_holder_process = getpid();
bool monitor_registered();
}  // namespace

// Set by our vfork (interpose.cc) and never cleared: telling a vfork child
// from its parent takes getpid(), a system call on every close, which a
// process that never vforked need not pay. (A child made by a raw clone
// with CLONE_VM, not through vfork(), is not seen.)
extern "C" {
std::atomic<bool> netaccel_vfork_called{false};
}

bool holder_process() {
  if (!netaccel_vfork_called.load(std::memory_order_relaxed)) return true;
  return getpid() == g_holder_process;
}

std::vector<LeftForExec> leave_shared_connections_for_exec() {
  std::vector<LeftForExec> left;
  if (!holder_process()) return left;
  const bool monitor_knows_owned = monitor_registered();
  for_each_held_connection([&left, monitor_knows_owned](Connection* connection) {
    const ConnectionSide side = static_cast<ConnectionSide>(connection->side);
    std::atomic<uint32_t>& holders = connection->header->holders[side];
    std::atomic<uint32_t>& owner_left = connection->header->owner_left[side];
    const bool as_owner = !connection->inherited && monitor_knows_owned;
    // Left as owner already: we hold no share of it to give up.
    if (as_owner && owner_left.load(std::memory_order_acquire) != 0) return;
    uint32_t count = holders.load(std::memory_order_acquire);
    while (count > 1 &&
           !holders.compare_exchange_weak(count, count - 1, std::memory_order_acq_rel)) {
    }
    // Without anchors or forks we are its only holder: the monitor ends it.
    if (count <= 1) return;
    if (as_owner) owner_left.store(1, std::memory_order_release);
    left.push_back({connection, as_owner});
  });
  return left;
}

void rejoin_connections_after_failed_exec(const std::vector<LeftForExec>& left) {
  for (const LeftForExec& entry : left) {
    Connection* connection = entry.connection;
    connection->header->holders[connection->side].fetch_add(1, std::memory_order_acq_rel);
    if (entry.as_owner) {
      connection->header->owner_left[connection->side].store(0, std::memory_order_release);
    }
  }
}

void leave_connections_at_exit() {
  if (!holder_process()) return;
  for_each_held_connection([](Connection* connection) {
    if (!release_last_holder(connection->header->holders[connection->side])) return;
    // Ours was the last share: the peer reads EOF after the data (a reset if
    // we leave unread data, as the kernel's close at exit does). Memory is
    // left alone: other threads may still be running.
    if (connection->rx.unread() != 0) {
      connection->header->aborted[connection->side].store(1, std::memory_order_release);
    }
    connection->rx.control().reader_closed.store(1, std::memory_order_release);
    connection->tx.control().writer_closed.store(1, std::memory_order_release);
    fence_after_publishing();
    signal_wake_fd(connection->peer_wake.get());
  });
}

Socket* uninstall_socket(int fd) {
  if (fd < 0 || fd >= kMaxFds) return nullptr;
  Socket* socket = sockets()[fd].exchange(nullptr, std::memory_order_acq_rel);
  if (socket != nullptr) socket->descriptors.fetch_sub(1, std::memory_order_relaxed);
  return socket;
}

void release_socket(Socket* socket) {
  if (socket->references.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (socket->pipe != nullptr) release_pipe_end(socket);
  if (socket->connection != nullptr) close_connection(socket->connection, socket->reset_on_close);
  if (socket->state == SocketState::kListening) {
    // Unannounced first, so that what we queued goes to another listener.
    if (socket->listener_announced.load(std::memory_order_acquire)) {
      Request request{};
      request.op = RequestOp::kUnlisten;
      request.socket_id = socket->id;
      monitor_post(request);
    }
    drop_listener_channels(socket);
    unregister_listener(socket);
  }
  // Never accepted: another process listening there takes it, as from a
  // kernel listener's shared queue; with none, the client sees a reset.
  for (PendingConnection& pending : socket->backlog) {
    if (pending.connection->adopted && give_back_to_accept_queue(socket, pending)) continue;
    requeue_unaccepted(pending.connection);
  }
  if (socket->listener_wake) mark_internal_fd(socket->listener_wake.get(), false);
  socket->reset();
  std::lock_guard lock(g_free_sockets_mutex);
  g_free_sockets.push_back(socket);
}

void register_listener(Socket* socket) {
  std::lock_guard lock(g_listeners_mutex);
  g_listeners[socket->id] = socket;
}

void unregister_listener(Socket* socket) {
  std::lock_guard lock(g_listeners_mutex);
  g_listeners.erase(socket->id);
}

namespace {
std::atomic<int> g_highest_internal_fd{-1};
}  // namespace

void mark_internal_fd(int fd, bool internal) {
  if (fd < 0 || fd >= kMaxFds) return;
  internal_fds()[fd].store(internal ? 1 : 0, std::memory_order_relaxed);
  int highest = g_highest_internal_fd.load(std::memory_order_relaxed);
  while (internal && fd > highest &&
         !g_highest_internal_fd.compare_exchange_weak(highest, fd, std::memory_order_relaxed)) {
  }
}

int highest_internal_fd() {
  return g_highest_internal_fd.load(std::memory_order_relaxed);
}

namespace {
// Where our own descriptors go: near the top of the application's range,
// out of its way. Programs expect theirs to get the lowest free numbers, and
// some size tables by how many they open (wrk's event loop, select()).
int internal_fd_floor() {
  static const int floor = [] {
    struct rlimit limit {};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
    const rlim_t top = std::min<rlim_t>(limit.rlim_cur, 4096);
    return static_cast<int>(top > 512 ? top - 384 : top / 2);
  }();
  return floor;
}
}  // namespace

int keep_internal_fd(int fd) {
  if (fd < 0) return fd;
  int kept = fd;
  // Close-on-exec as every descriptor of ours already is. No room up there
  // (EMFILE): it stays where it is.
  const int moved = real().fcntl(fd, F_DUPFD_CLOEXEC, internal_fd_floor());
  if (moved >= 0) {
    real().close(fd);
    kept = moved;
  }
  mark_internal_fd(kept, true);
  return kept;
}

void keep_internal_fd(UniqueFd& fd) {
  fd.reset(keep_internal_fd(fd.release()));
}

bool is_internal_fd(int fd) {
  return fd >= 0 && fd < kMaxFds && internal_fds()[fd].load(std::memory_order_relaxed) != 0;
}

int new_placeholder_fd(bool close_on_exec) {
  // An unbound AF_UNIX datagram socket: a cheap kernel object that keeps the
  // number reserved and still looks like a socket to fstat().
  static const int placeholder = [] {
    return keep_internal_fd(real().socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  }();
  if (placeholder < 0) return fail(EMFILE);
  return real().fcntl(placeholder, close_on_exec ? F_DUPFD_CLOEXEC : F_DUPFD, 0);
}

// ---------------------------------------------------------------------------
// The monitor link.
namespace {

enum class LinkState { kUnknown, kRegistered, kUnavailable };

// A process without a monitor looks for one again this often: a restarted
// monitor gets new connections back.
constexpr int64_t kMonitorRetryNs = 1'000'000'000;

// Connection ids a channel's client makes up: never equal to the engine's.
constexpr uint64_t kDirectConnectionBit = uint64_t{1} << 63;
// Local ports of channel connections rotate through the kernel's default
// ephemeral range (getsockname and getpeername show them).
constexpr uint32_t kEphemeralFirst = 32768;
constexpr uint32_t kEphemeralCount = 60999 - 32768 + 1;
// How long a connect waits for a channel slot before it asks the monitor.
constexpr int64_t kSlotWaitNs = 50'000;

struct MonitorLink {
  std::mutex mutex;  // one thread at a time produces requests and consumes events
  std::atomic<LinkState> state{LinkState::kUnknown};
  UniqueFd control;
  UniqueFd wake;
  UniqueFd doorbell;
  SharedMapping queues;
  DescriptorRing<Request> requests;
  DescriptorRing<Event> events;
  uint32_t process_id = 0;
  uint32_t next_request_id = 1;
  std::atomic<int64_t> retry_at{0};  // while unavailable: when to look for a monitor again
  bool registered_before = false;
  // The monitor socket file we last tried: a new file there is a restarted
  // monitor, worth trying at once.
  std::atomic<uint64_t> tried_socket_file{0};
  // The one reply a thread holding `mutex` waits for.
  uint32_t awaited_request_id = 0;
  bool reply_arrived = false;
  Event reply{};
  Connection** reply_connection = nullptr;
};

MonitorLink& link() {
  static MonitorLink* instance = new MonitorLink;  // never destroyed: used until exit
  return *instance;
}

std::atomic<uint64_t> g_next_socket_id{1};

void forget_link(MonitorLink& l) {
  for (int fd : {l.control.get(), l.wake.get(), l.doorbell.get()}) mark_internal_fd(fd, false);
  l.control.reset();
  l.wake.reset();
  l.doorbell.reset();
  l.queues.reset();
  l.requests = {};
  l.events = {};
}

void mark_unavailable(MonitorLink& l) {
  forget_link(l);
  l.retry_at.store(monotonic_ns() + kMonitorRetryNs, std::memory_order_relaxed);
  l.state.store(LinkState::kUnavailable, std::memory_order_release);
}

// Which file is at the monitor's socket path: inode and change time (a
// file system may give a new file the inode an unlinked one had); 0: none.
uint64_t monitor_socket_file() {
  struct stat status {};
  if (stat(config().socket_path, &status) != 0) return 0;
  return (uint64_t{status.st_ino} * 1000003) ^
         static_cast<uint64_t>(status.st_ctim.tv_sec * 1000000000 + status.st_ctim.tv_nsec);
}

bool register_with_monitor(MonitorLink& l) {
  l.tried_socket_file.store(monitor_socket_file(), std::memory_order_relaxed);
  UniqueFd control(real().socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!control) return false;
  struct sockaddr_un address {};
  address.sun_family = AF_UNIX;
  static_assert(sizeof address.sun_path == sizeof config().socket_path);
  memcpy(address.sun_path, config().socket_path, sizeof address.sun_path);
  if (real().connect(control.get(), reinterpret_cast<struct sockaddr*>(&address), sizeof address) !=
      0) {
    NETACCEL_DEBUG_LOG("no monitor at %s (%s): kernel sockets only\n", config().socket_path,
                       strerror(errno));
    return false;
  }
  UniqueFd wake(create_wake_fd());
  if (!wake) return false;
  const RegisterRequest hello{kProtocolMagic, kProtocolVersion};
  const int wake_fd = wake.get();
  if (send_with_fds(control.get(), &hello, sizeof hello, &wake_fd, 1) != 0) return false;
  RegisterReply reply{};
  int fds[2] = {-1, -1};
  std::size_t fd_count = 0;
  const ssize_t got = receive_with_fds(control.get(), &reply, sizeof reply, fds, 2, &fd_count);
  UniqueFd queues_fd(fd_count > 0 ? fds[0] : -1);
  UniqueFd doorbell(fd_count > 1 ? fds[1] : -1);
  if (got != sizeof reply || reply.magic != kProtocolMagic || reply.version != kProtocolVersion ||
      reply.status != 0 || fd_count != 2) {
    NETACCEL_DEBUG_LOG("monitor refused registration (status %d)\n", reply.status);
    return false;
  }
  const int64_t size = shared_memory_size(queues_fd.get());
  if (size < 0 || static_cast<uint64_t>(size) != reply.queues_bytes ||
      reply.request_ring_offset >= size || reply.event_ring_offset >= size) {
    return false;
  }
  SharedMapping queues = map_shared(queues_fd.get(), static_cast<std::size_t>(size));
  if (!queues) return false;
  auto* base = static_cast<unsigned char*>(queues.get());
  if (!descriptor_ring_valid(base + reply.request_ring_offset, size - reply.request_ring_offset) ||
      !descriptor_ring_valid(base + reply.event_ring_offset, size - reply.event_ring_offset)) {
    return false;
  }
  l.requests = DescriptorRing<Request>(base + reply.request_ring_offset);
  l.events = DescriptorRing<Event>(base + reply.event_ring_offset);
  l.queues = std::move(queues);
  l.control = std::move(control);
  l.wake = std::move(wake);
  l.doorbell = std::move(doorbell);
  l.process_id = reply.process_id;
  for (UniqueFd* fd : {&l.control, &l.wake, &l.doorbell}) keep_internal_fd(*fd);
  NETACCEL_DEBUG_LOG("registered with the monitor as process %u\n", l.process_id);
  return true;
}

// A connection the monitor handed us, with the fds that came with it.
struct Delivery {
  FdDelivery header{};
  UniqueFd segment;
  UniqueFd own_wake;
  UniqueFd peer_wake;
};

// Receives the fds that the monitor sent ahead of `event`.
bool receive_delivery(MonitorLink& l, const Event& event, Delivery& delivery) {
  int fds[3] = {-1, -1, -1};
  std::size_t fd_count = 0;
  const ssize_t got = receive_with_fds(l.control.get(), &delivery.header, sizeof delivery.header,
                                       fds, 3, &fd_count);
  delivery.segment.reset(fd_count > 0 ? fds[0] : -1);
  delivery.own_wake.reset(fd_count > 1 ? fds[1] : -1);
  delivery.peer_wake.reset(fd_count > 2 ? fds[2] : -1);
  return got == sizeof delivery.header && fd_count == 3 &&
         delivery.header.magic == kProtocolMagic &&
         delivery.header.connection_id == event.connection_id;
}

// Points the connection's views at its rings for `side`.
void bind_rings(Connection* connection, uint32_t side) {
  auto* base = reinterpret_cast<unsigned char*>(connection->header);
  connection->tx = ByteRing(base + connection->header->ring_offset[side]);
  connection->rx = ByteRing(base + connection->header->ring_offset[side ^ 1]);
  connection->side = side;
}

// True when `header` starts a segment of `bytes` whose rings fit in it.
bool segment_valid(const ConnectionSegmentHeader* header, std::size_t bytes) {
  if (header->magic != kSegmentMagic || header->version != kSegmentVersion) return false;
  const auto* base = reinterpret_cast<const unsigned char*>(header);
  for (uint32_t ring = 0; ring < 2; ++ring) {
    const uint32_t offset = header->ring_offset[ring];
    if (offset >= bytes || !byte_ring_valid(base + offset, bytes - offset)) return false;
  }
  return true;
}

// Maps a delivered segment after checking that it is one; null otherwise.
Connection* attach_delivered(Delivery& delivery) {
  const int64_t size = shared_memory_size(delivery.segment.get());
  const uint64_t bytes = delivery.header.segment_bytes;
  const uint64_t offset = delivery.header.segment_offset;
  if (size < 0 || bytes < sizeof(ConnectionSegmentHeader) || offset > static_cast<uint64_t>(size) ||
      bytes > static_cast<uint64_t>(size) - offset || delivery.header.side > 1) {
    return nullptr;
  }
  SharedMapping mapping = map_shared(delivery.segment.get(), bytes, offset);
  if (!mapping) return nullptr;
  auto* header = static_cast<ConnectionSegmentHeader*>(mapping.get());
  if (!segment_valid(header, bytes) ||
      header->connection_id != delivery.header.segment_connection_id) {
    return nullptr;
  }
  auto* connection = new Connection;
  connection->header = header;
  connection->segment = std::move(mapping);
  connection->own_wake = std::move(delivery.own_wake);
  connection->peer_wake = std::move(delivery.peer_wake);
  connection->memory = std::move(delivery.segment);
  connection->memory_offset = offset;
  connection->connection_id = delivery.header.connection_id;
  connection->handed_on = delivery.header.segment_connection_id != delivery.header.connection_id;
  bind_rings(connection, delivery.header.side);
  keep_internal_fd(connection->own_wake);
  keep_internal_fd(connection->peer_wake);
  keep_internal_fd(connection->memory);
  return connection;
}

// Segments of our closed connections, kept mapped for the monitor to reuse.
std::mutex g_cache_mutex;
std::vector<Connection*> g_segment_cache;

// Our descriptors of a connection end that are not a channel's.
void forget_own_fds(Connection* connection) {
  mark_internal_fd(connection->memory.get(), false);
  mark_internal_fd(connection->anchor.get(), false);
}

void free_connection(Connection* connection) {
  mark_internal_fd(connection->own_wake.get(), false);
  mark_internal_fd(connection->peer_wake.get(), false);
  forget_own_fds(connection);
  delete connection;
}

// ---------------------------------------------------------------------------
// Channels.

OptionalSpinLock g_client_channels_lock;
std::vector<Channel*> g_client_channels;

void drop_channel_reference(Channel* channel) {
  if (channel->references.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  for (const UniqueFd& wake : channel->wake) mark_internal_fd(wake.get(), false);
  mark_internal_fd(channel->acceptor_wake.get(), false);
  mark_internal_fd(channel->memory.get(), false);
  delete channel;
}

// Lets go of our view of a channel slot; the channel owns the eventfds.
void forget_channel_slot(Connection* connection) {
  Channel* channel = connection->channel;
  (void)connection->own_wake.release();
  (void)connection->peer_wake.release();
  forget_own_fds(connection);
  delete connection;
  drop_channel_reference(channel);
}

// Our end of a channel slot is done; the last of the two ends frees the slot.
void release_channel_slot(Connection* connection) {
  const uint32_t own = connection->side == kClientSide ? kSlotClientOpen : kSlotServerOpen;
  // Release: the next user of the slot sees all our use of it done.
  connection->channel->header->slot_state[connection->slot].fetch_and(~own,
                                                                      std::memory_order_acq_rel);
  forget_channel_slot(connection);
}

Connection* slot_connection(Channel* channel, uint32_t slot, uint32_t side) {
  auto* base = static_cast<unsigned char*>(channel->mapping.get());
  auto* connection = new Connection;
  connection->channel = channel;
  connection->slot = slot;
  connection->header = reinterpret_cast<ConnectionSegmentHeader*>(
      base + channel->slot_offset + std::size_t{slot} * channel->slot_bytes);
  connection->connection_id = connection->header->connection_id;
  connection->own_wake.reset(channel->wake[slot * 2 + side].get());
  connection->peer_wake.reset(channel->wake[slot * 2 + (side ^ 1)].get());
  channel->references.fetch_add(1, std::memory_order_relaxed);
  return connection;
}

// Takes the cached segment the monitor re-initialised for `event`.
Connection* attach_reused(const Event& event, uint32_t side) {
  Connection* connection = nullptr;
  {
    std::lock_guard lock(g_cache_mutex);
    auto found = std::find_if(g_segment_cache.begin(), g_segment_cache.end(), [&](Connection* c) {
      return c->header->connection_id == event.connection_id;
    });
    if (found == g_segment_cache.end()) return nullptr;
    connection = *found;
    *found = g_segment_cache.back();
    g_segment_cache.pop_back();
  }
  // Each end's eventfd belongs to a side; we may have changed sides.
  if (side != connection->side) std::swap(connection->own_wake, connection->peer_wake);
  connection->connection_id = event.connection_id;
  bind_rings(connection, side);
  drain_wake_fd(connection->own_wake.get());
  return connection;
}

void drop_cached(uint64_t connection_id) {
  Connection* connection = nullptr;
  {
    std::lock_guard lock(g_cache_mutex);
    auto found = std::find_if(g_segment_cache.begin(), g_segment_cache.end(), [&](Connection* c) {
      return c->header->connection_id == connection_id;
    });
    if (found == g_segment_cache.end()) return;
    connection = *found;
    *found = g_segment_cache.back();
    g_segment_cache.pop_back();
  }
  free_connection(connection);
}

bool post_locked(MonitorLink& l, Request& request);

// Posts with the link locked by the caller (`locked`) or not (null).
bool post_to_monitor(MonitorLink* locked, Request& request) {
  if (locked == nullptr) return monitor_post(request);
  return locked->state.load(std::memory_order_relaxed) == LinkState::kRegistered &&
         post_locked(*locked, request);
}

// The owner the monitor knows lets go of the end while others hold it: its
// death must leave the end alone, and the engine forgets its copy.
void leave_as_owner(MonitorLink* locked, Connection* connection) {
  if (connection->inherited) return;
  connection->header->owner_left[connection->side].store(1, std::memory_order_release);
  if (connection->channel == nullptr) {
    Request request{};
    request.op = RequestOp::kClose;
    request.connection_id = connection->connection_id;
    post_to_monitor(locked, request);
  }
}

// Another process still holds the end: only our share goes.
void leave_shared_connection(MonitorLink* locked, Connection* connection) {
  leave_as_owner(locked, connection);
  if (connection->channel != nullptr) return forget_channel_slot(connection);
  free_connection(connection);
}

void close_connection_locked(MonitorLink* locked, Connection* connection, bool abort) {
  // Its share goes with the last copy of the anchor: the monitor's anchor keeper watches that.
  // A channel's slot (anchored at a fork) leaves the channel its fds.
  if (connection->adopted) {
    if (connection->channel != nullptr) return forget_channel_slot(connection);
    return free_connection(connection);
  }
  if (!release_last_holder(connection->header->holders[connection->side])) {
    return leave_shared_connection(locked, connection);
  }
  if (abort || connection->rx.unread() != 0) {
    connection->header->aborted[connection->side].store(1, std::memory_order_release);
  }
  connection->rx.control().reader_closed.store(1, std::memory_order_release);
  connection->tx.control().writer_closed.store(1, std::memory_order_release);
  // A peer asleep for data or for space must hear of the close. Both sleep
  // behind fence_before_sleeping_for_data, so the data path's fence will do.
  fence_after_publishing_data();
  if (connection->tx.control().reader_waiting.load(std::memory_order_relaxed) ||
      connection->rx.control().writer_waiting.load(std::memory_order_relaxed)) {
    signal_wake_fd(connection->peer_wake.get());
  }
  if (connection->channel != nullptr) return release_channel_slot(connection);
  // The monitor hands segments back to the process it gave them to.
  if (connection->inherited) return free_connection(connection);
  // Cached before the monitor hears of the close: another thread may see the
  // segment handed back the moment it does. One handed on from another
  // process is never handed back.
  const bool cached = !connection->handed_on;
  if (cached) {
    std::lock_guard lock(g_cache_mutex);
    g_segment_cache.push_back(connection);
  }
  const uint64_t connection_id = connection->connection_id;
  Request request{};
  request.op = RequestOp::kClose;
  request.connection_id = connection_id;
  const bool told = post_to_monitor(locked, request);
  if (!cached) return free_connection(connection);
  if (!told) drop_cached(connection_id);  // no monitor to hand it back
}

void requeue_unaccepted_locked(MonitorLink* locked, Connection* connection) {
  Request request{};
  request.op = RequestOp::kRequeue;
  request.connection_id = connection->connection_id;
  if (connection->channel != nullptr || !post_to_monitor(locked, request))
    return close_connection_locked(locked, connection, true);
  free_connection(connection);
}

// The connection an event announces, attached; null if it cannot be.
Connection* connection_for(MonitorLink& l, const Event& event, uint32_t side, bool* link_broken) {
  if (event.local.reserved & kEventSegmentReused) return attach_reused(event, side);
  Delivery delivery;
  if (!receive_delivery(l, event, delivery)) {
    *link_broken = true;
    return nullptr;
  }
  return attach_delivered(delivery);
}

// Receives and maps the channel a kChannelOpened event announces, and hands
// it to its holder: our client table, or the listener it feeds. One we cannot
// use goes back to the monitor, which then refuses what its queue holds.
void adopt_channel(MonitorLink& l, const Event& event, bool* link_broken) {
  constexpr std::size_t kMostFds = 2 + 2 * kChannelSlots;
  ChannelDelivery delivery{};
  int fds[kMostFds];
  std::size_t fd_count = 0;
  const ssize_t got =
      receive_with_fds(l.control.get(), &delivery, sizeof delivery, fds, kMostFds, &fd_count);
  std::vector<UniqueFd> received;
  for (std::size_t i = 0; i < fd_count; ++i) received.emplace_back(fds[i]);
  if (got != sizeof delivery || delivery.magic != kProtocolMagic ||
      delivery.channel_id != event.connection_id) {
    *link_broken = true;
    return;
  }
  const bool client = event.socket_id == 0;
  auto refuse = [&] {
    Request request{};
    request.op = RequestOp::kCloseChannel;
    request.connection_id = event.connection_id;
    post_locked(l, request);
  };
  const std::size_t expected_fds = 1 + 2 * kChannelSlots + (client ? 1 : 0);
  const int64_t bytes = fd_count == expected_fds ? shared_memory_size(received[0].get()) : -1;
  if (delivery.side != (client ? kClientSide : kServerSide) || bytes < 0 ||
      static_cast<uint64_t>(bytes) != delivery.channel_bytes) {
    return refuse();
  }
  SharedMapping mapping = map_shared(received[0].get(), static_cast<std::size_t>(bytes));
  if (!mapping) return refuse();
  auto* header = static_cast<ChannelHeader*>(mapping.get());
  auto* base = static_cast<unsigned char*>(mapping.get());
  const uint64_t slots_end =
      uint64_t{header->slot_offset} + uint64_t{kChannelSlots} * header->slot_bytes;
  if (header->magic != kChannelMagic || header->version != kChannelVersion ||
      header->channel_id != delivery.channel_id || header->slot_count != kChannelSlots ||
      header->ring_capacity == 0 || (header->ring_capacity & (header->ring_capacity - 1)) != 0 ||
      header->slot_bytes < connection_segment_bytes(header->ring_capacity) ||
      slots_end > static_cast<uint64_t>(bytes) || header->queue_offset >= header->slot_offset ||
      !descriptor_ring_valid(base + header->queue_offset,
                             header->slot_offset - header->queue_offset)) {
    return refuse();
  }
  auto* channel = new Channel;
  channel->header = header;
  channel->queue = DescriptorRing<Event>(base + header->queue_offset);
  channel->slot_offset = header->slot_offset;
  channel->slot_bytes = header->slot_bytes;
  channel->ring_capacity = header->ring_capacity;
  channel->mapping = std::move(mapping);
  channel->memory = std::move(received[0]);
  keep_internal_fd(channel->memory);
  channel->side = delivery.side;
  channel->channel_id = delivery.channel_id;
  for (std::size_t i = 1; i <= 2 * kChannelSlots; ++i) {
    keep_internal_fd(received[i]);
    channel->wake.push_back(std::move(received[i]));
  }
  if (client) {
    channel->acceptor_wake = std::move(received.back());
    keep_internal_fd(channel->acceptor_wake);
    channel->destination = event.peer;
    channel->client_address = event.local;
    std::lock_guard lock(g_client_channels_lock);
    g_client_channels.push_back(channel);
    return;
  }
  channel->listener_id = event.socket_id;
  std::lock_guard listeners(g_listeners_mutex);
  const auto found = g_listeners.find(event.socket_id);
  if (found == g_listeners.end()) {
    drop_channel_reference(channel);
    return refuse();
  }
  std::lock_guard backlog(found->second->backlog_mutex);
  found->second->channels.push_back(channel);
}

bool carries_connection(const Event& event) {
  return event.type == EventType::kIncoming ||
         (event.type == EventType::kReply && event.op == RequestOp::kConnect && event.status == 0);
}

// Called with l.mutex held.
void dispatch(MonitorLink& l, const Event& event) {
  Connection* connection = nullptr;
  if (carries_connection(event)) {
    bool link_broken = false;
    const uint32_t side = event.type == EventType::kIncoming ? kServerSide : kClientSide;
    connection = connection_for(l, event, side, &link_broken);
    if (link_broken) {
      NETACCEL_DEBUG_LOG("lost the fds of connection %llu: monitor link broken\n",
                         static_cast<unsigned long long>(event.connection_id));
      mark_unavailable(l);
      return;
    }
    if (connection == nullptr) {
      // Unusable memory: tell the monitor this end is gone so the peer hears of it.
      Request request{};
      request.op = RequestOp::kClose;
      request.connection_id = event.connection_id;
      post_locked(l, request);
      if (event.type == EventType::kIncoming) return;
    }
  }
  switch (event.type) {
    case EventType::kReply:
      if (event.request_id == l.awaited_request_id && !l.reply_arrived) {
        l.reply = event;
        l.reply_arrived = true;
        if (l.reply_connection != nullptr) *l.reply_connection = connection;
      } else if (connection != nullptr) {
        close_connection_locked(&l, connection, true);  // its requester gave up
      }
      return;
    case EventType::kIncoming: {
      std::lock_guard listeners(g_listeners_mutex);
      auto found = g_listeners.find(event.socket_id);
      if (found == g_listeners.end()) {
        // The listener closed while this was on its way.
        requeue_unaccepted_locked(&l, connection);
        return;
      }
      Socket* listener = found->second;
      {
        std::lock_guard backlog(listener->backlog_mutex);
        listener->backlog.push_back(
            PendingConnection{connection, event.local, event.peer, event.request_id});
      }
      signal_wake_fd(listener->listener_wake.get());
      return;
    }
    case EventType::kSegmentDropped:
      drop_cached(event.connection_id);
      return;
    case EventType::kChannelOpened: {
      bool link_broken = false;
      adopt_channel(l, event, &link_broken);
      if (link_broken) mark_unavailable(l);
      return;
    }
    case EventType::kError:
      NETACCEL_DEBUG_LOG("monitor rejected request %u: %s\n", event.request_id,
                         strerror(-event.status));
      // Refused outright, the request we wait for has its answer: an engine
      // with a full process table does not know us (-ESRCH), and the caller
      // falls back to the kernel at once rather than waiting for a reply.
      if (event.request_id != 0 && event.request_id == l.awaited_request_id && !l.reply_arrived) {
        l.reply = event;
        l.reply_arrived = true;
      }
      return;
  }
}

void pump_locked(MonitorLink& l) {
  if (l.state.load(std::memory_order_acquire) != LinkState::kRegistered) return;
  Event event;
  while (l.state.load(std::memory_order_relaxed) == LinkState::kRegistered &&
         l.events.try_pop(event)) {
    dispatch(l, event);
  }
}

bool post_locked(MonitorLink& l, Request& request) {
  // Ids run from 1 below kMonitorRequestBit, then wrap.
  if (l.next_request_id == 0 || l.next_request_id >= kMonitorRequestBit) l.next_request_id = 1;
  request.request_id = l.next_request_id++;
  const int64_t deadline = monotonic_ns() + 2'000'000'000;
  while (!l.requests.try_push(request)) {
    // The monitor is behind; make room by consuming our events meanwhile.
    pump_locked(l);
    if (l.state.load(std::memory_order_relaxed) != LinkState::kRegistered) return false;
    if (monotonic_ns() > deadline) {
      NETACCEL_DEBUG_LOG("monitor not draining its queue: giving up on it\n");
      mark_unavailable(l);
      return false;
    }
    sched_yield();
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);  // publish, then look for a sleeper
  if (l.requests.control().consumer_sleeping.load(std::memory_order_relaxed)) {
    signal_wake_fd(l.doorbell.get());
  }
  return true;
}

}  // namespace

namespace {

// Registered with a monitor that does not know us (it restarted, or we are
// a forked child): what the last one handed us for reuse is gone, and our
// listeners wait to be announced to this one.
void forget_previous_monitor() {
  std::vector<Connection*> cached;
  {
    std::lock_guard lock(g_cache_mutex);
    cached.swap(g_segment_cache);
  }
  for (Connection* connection : cached) free_connection(connection);
  // Channels from the last monitor have nobody to close them when a process
  // dies: new connections go through the new one, which opens new channels.
  // Closed, they still carry their connections and drain their queues.
  std::vector<Channel*> clients;
  {
    std::lock_guard lock(g_client_channels_lock);
    clients.swap(g_client_channels);
  }
  for (Channel* channel : clients) {
    channel->header->closed.store(1, std::memory_order_release);
    drop_channel_reference(channel);
  }
  {
    std::lock_guard listeners(g_listeners_mutex);
    for (const auto& [id, listener] : g_listeners) {
      listener->listener_announced.store(false, std::memory_order_release);
      std::lock_guard backlog(listener->backlog_mutex);
      for (Channel* channel : listener->channels) {
        channel->header->closed.store(1, std::memory_order_release);
      }
    }
  }
  g_listener_generation.fetch_add(1, std::memory_order_relaxed);
}

// Whether the monitor we registered with still holds its end of our socket;
// asked at most once per kMonitorRetryNs.
bool monitor_still_there(MonitorLink& l) {
  const int64_t now = monotonic_ns();
  if (now < l.retry_at.load(std::memory_order_relaxed)) return true;
  l.retry_at.store(now + kMonitorRetryNs, std::memory_order_relaxed);
  std::lock_guard lock(l.mutex);
  if (l.state.load(std::memory_order_relaxed) != LinkState::kRegistered) return false;
  struct pollfd hangup {
    l.control.get(), 0, 0
  };
  if (real().poll(&hangup, 1, 0) == 1 && (hangup.revents & (POLLHUP | POLLERR))) {
    NETACCEL_DEBUG_LOG("the monitor went away: kernel sockets until it is back\n");
    mark_unavailable(l);
    return false;
  }
  return true;
}

}  // namespace

bool monitor_available() {
  MonitorLink& l = link();
  auto retry_due = [&l] {
    if (l.state.load(std::memory_order_acquire) == LinkState::kUnknown ||
        monotonic_ns() >= l.retry_at.load(std::memory_order_relaxed)) {
      return true;
    }
    // Only a process that lost its monitor looks for a new one this eagerly
    // (one stat per call): a restart must bring its connections back at once.
    if (!l.registered_before) return false;
    const uint64_t file = monitor_socket_file();
    return file != 0 && file != l.tried_socket_file.load(std::memory_order_relaxed);
  };
  const LinkState state = l.state.load(std::memory_order_acquire);
  if (state == LinkState::kRegistered && monitor_still_there(l)) return true;
  if (!retry_due()) return false;
  bool new_monitor = false;
  {
    std::lock_guard lock(l.mutex);
    if (l.state.load(std::memory_order_relaxed) != LinkState::kRegistered && retry_due()) {
      if (register_with_monitor(l)) {
        new_monitor = l.registered_before;
        l.registered_before = true;
        l.state.store(LinkState::kRegistered, std::memory_order_release);
      } else {
        mark_unavailable(l);
      }
    }
  }
  if (new_monitor) forget_previous_monitor();
  return l.state.load(std::memory_order_acquire) == LinkState::kRegistered;
}

uint64_t next_socket_id() {
  return g_next_socket_id.fetch_add(1, std::memory_order_relaxed);
}

namespace {
bool monitor_call_once(Request& request, Event& reply, Connection** connection) {
  MonitorLink& l = link();
  std::lock_guard lock(l.mutex);
  if (!post_locked(l, request)) return false;
  l.awaited_request_id = request.request_id;
  l.reply_arrived = false;
  l.reply_connection = connection;
  // The monitor answers within microseconds when it is awake: spin briefly,
  // then yield the core (it may need ours), then sleep on our wake fd.
  const int64_t start = monotonic_ns();
  const int64_t give_up = start + 5'000'000'000;
  bool ok = true;
  for (uint32_t round = 0;; ++round) {
    pump_locked(l);
    if (l.reply_arrived) break;
    if (l.state.load(std::memory_order_relaxed) != LinkState::kRegistered) {
      ok = false;
      break;
    }
    const int64_t now = monotonic_ns();
    if (now > give_up) {
      NETACCEL_DEBUG_LOG("monitor did not answer request %u: giving up on it\n",
                         request.request_id);
      mark_unavailable(l);
      ok = false;
      break;
    }
    if (now - start < 2000) {
      __builtin_ia32_pause();
    } else if (now - start < 50000) {
      sched_yield();
    } else {
      l.events.control().consumer_sleeping.store(1, std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (l.events.empty()) {
        struct pollfd wait[2] = {{l.wake.get(), POLLIN, 0},
                                 {l.control.get(), 0, 0}};  // hang-up only
        real().poll(wait, 2, 100);
        if (wait[0].revents & POLLIN) drain_wake_fd(l.wake.get());
        if (wait[1].revents & (POLLHUP | POLLERR)) {
          mark_unavailable(l);  // unmaps the queues: touch them no more
          ok = false;
          break;
        }
      }
      l.events.control().consumer_sleeping.store(0, std::memory_order_relaxed);
    }
  }
  l.awaited_request_id = 0;
  l.reply_connection = nullptr;
  if (ok) reply = l.reply;
  return ok;
}
}  // namespace

bool monitor_call(Request& request, Event& reply, Connection** connection) {
  if (monitor_call_once(request, reply, connection)) return true;
  // The monitor we knew went away during the call: a restarted one may
  // serve already, and the call goes to it.
  return monitor_available() && monitor_call_once(request, reply, connection);
}

bool monitor_post(Request& request) {
  MonitorLink& l = link();
  if (l.state.load(std::memory_order_acquire) != LinkState::kRegistered) return false;
  std::lock_guard lock(l.mutex);
  return l.state.load(std::memory_order_relaxed) == LinkState::kRegistered &&
         post_locked(l, request);
}

void close_connection(Connection* connection, bool abort) {
  close_connection_locked(nullptr, connection, abort);
}

void hold_through_anchor(Connection* connection) {
  leave_as_owner(nullptr, connection);
  release_last_holder(connection->header->holders[connection->side]);  // the anchor's remains
  connection->adopted = true;
}

void requeue_unaccepted(Connection* connection) {
  requeue_unaccepted_locked(nullptr, connection);
}

void drain_event_wake() {
  const int wake = event_wake_fd();
  if (wake >= 0) drain_wake_fd(wake);
}

void pump_events() {
  MonitorLink& l = link();
  if (l.state.load(std::memory_order_acquire) != LinkState::kRegistered) return;
  std::lock_guard lock(l.mutex);
  pump_locked(l);
}

bool events_pending() {
  MonitorLink& l = link();
  return l.state.load(std::memory_order_acquire) == LinkState::kRegistered && !l.events.empty();
}

int event_wake_fd() {
  MonitorLink& l = link();
  return l.state.load(std::memory_order_acquire) == LinkState::kRegistered ? l.wake.get() : -1;
}

void announce_event_wait(bool waiting) {
  MonitorLink& l = link();
  if (l.state.load(std::memory_order_acquire) != LinkState::kRegistered) return;
  l.events.control().consumer_sleeping.store(waiting ? 1 : 0, std::memory_order_relaxed);
  // Channel clients wake us through the same eventfd as the monitor.
  std::lock_guard listeners(g_listeners_mutex);
  for (const auto& [id, listener] : g_listeners) {
    std::lock_guard backlog(listener->backlog_mutex);
    for (Channel* channel : listener->channels) {
      channel->header->acceptor_sleeping.store(waiting ? 1 : 0, std::memory_order_relaxed);
    }
  }
}

// One attempt at a free slot of `channel`; null when none is free now (then
// `*busy`) or the connection could not be queued.
Connection* claim_channel_slot(Channel* channel, const InetAddress& destination, InetAddress& local,
                               InetAddress& peer, bool* busy) {
  std::lock_guard lock(channel->lock);
  Connection* connection = nullptr;
  ChannelHeader* header = channel->header;
  *busy = true;
  for (uint32_t tried = 0; tried < kChannelSlots && connection == nullptr; ++tried) {
    const uint32_t slot = channel->next_slot++ % kChannelSlots;
    uint32_t free = 0;
    // Acquire: both ends' last use of the slot happened before we lay it out.
    if (!header->slot_state[slot].compare_exchange_strong(
            free, kSlotClientOpen | kSlotServerOpen | kSlotQueued, std::memory_order_acquire,
            std::memory_order_relaxed)) {
      continue;
    }
    auto* base = static_cast<unsigned char*>(channel->mapping.get());
    const uint64_t number = ++channel->connections;
    relayout_connection_segment(
        base + channel->slot_offset + std::size_t{slot} * channel->slot_bytes,
        kDirectConnectionBit | channel->channel_id << 24 | (number & 0xffffff),
        channel->ring_capacity);
    connection = slot_connection(channel, slot, kClientSide);
    bind_rings(connection, kClientSide);
    local = channel->client_address;
    local.port = static_cast<uint16_t>(kEphemeralFirst +
                                       (channel->channel_id * 7919 + number) % kEphemeralCount);
    peer = destination;
    Event entry{};
    entry.type = EventType::kIncoming;
    entry.request_id = slot;
    entry.socket_id = queue_stamp_now();
    entry.connection_id = connection->connection_id;
    entry.local = peer;
    entry.peer = local;
    // Release (inside try_push): the layout is visible with the entry.
    if (!channel->queue.try_push(entry)) {
      release_channel_slot(connection);
      header->slot_state[slot].store(0, std::memory_order_release);
      connection = nullptr;
      *busy = false;
      break;
    }
    // Dekker pair with the monitor's close (closed, fence, drain) and with
    // the acceptor's announcement (sleeping, fence, re-check the queue).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (channel->closed()) {
      const uint32_t before = header->slot_state[slot].fetch_and(
          ~static_cast<uint32_t>(kSlotQueued), std::memory_order_acq_rel);
      if (before & kSlotQueued) {
        // Ours to withdraw: nobody took the entry. Free the whole slot.
        release_channel_slot(connection);
        header->slot_state[slot].store(0, std::memory_order_release);
        connection = nullptr;
      }
      *busy = false;
      break;
    }
    if (header->acceptor_sleeping.load(std::memory_order_relaxed)) {
      signal_wake_fd(channel->acceptor_wake.get());
    }
  }
  if (connection != nullptr) {
    *busy = false;
    header->connections_total.fetch_add(1, std::memory_order_relaxed);
  }
  return connection;
}

Connection* channel_connect(const InetAddress& destination, InetAddress& local, InetAddress& peer) {
  // One channel per process listening there: connects take turns over them.
  static uint32_t next_turn = 0;
  std::vector<Channel*> serving;
  {
    std::lock_guard lock(g_client_channels_lock);
    // A closed channel's listener or process is gone: the monitor decides anew.
    std::erase_if(g_client_channels, [](Channel* channel) {
      if (!channel->closed()) return false;
      drop_channel_reference(channel);
      return true;
    });
    for (Channel* channel : g_client_channels) {
      if (channel->destination.port != destination.port ||
          memcmp(channel->destination.bytes, destination.bytes, 16) != 0) {
        continue;
      }
      channel->references.fetch_add(1, std::memory_order_relaxed);
      serving.push_back(channel);
    }
    if (!serving.empty())
      std::rotate(serving.begin(), serving.begin() + next_turn++ % serving.size(), serving.end());
  }
  if (serving.empty()) return nullptr;
  Connection* connection = nullptr;
  bool busy = true;
  for (Channel* channel : serving) {
    if (connection == nullptr)
      connection = claim_channel_slot(channel, destination, local, peer, &busy);
  }
  // Every slot busy means the servers are behind: give them our core for a
  // moment, as a kernel client waits for room in a full backlog, rather than
  // load the monitor too.
  const int64_t give_up = monotonic_ns() + kSlotWaitNs;
  while (connection == nullptr && busy && !serving.front()->closed() && monotonic_ns() < give_up) {
    sched_yield();
    connection = claim_channel_slot(serving.front(), destination, local, peer, &busy);
  }
  for (Channel* channel : serving) drop_channel_reference(channel);
  return connection;
}

bool channel_accept(Socket* listener, PendingConnection& out, const uint32_t* older_than) {
  std::lock_guard backlog(listener->backlog_mutex);
  // A closed channel gets no new entries: once drained, it goes.
  std::erase_if(listener->channels, [](Channel* channel) {
    if (!channel->closed() || !channel->queue.empty()) return false;
    drop_channel_reference(channel);
    return true;
  });
  for (;;) {
    Channel* oldest = nullptr;
    uint32_t oldest_stamp = 0;
    for (Channel* channel : listener->channels) {
      std::lock_guard lock(channel->lock);
      Event head;
      if (!channel->queue.try_peek(head)) continue;
      const auto stamp = static_cast<uint32_t>(head.socket_id);
      if (oldest == nullptr || queued_before(stamp, oldest_stamp)) {
        oldest = channel;
        oldest_stamp = stamp;
      }
    }
    if (oldest == nullptr) return false;
    if (older_than != nullptr && !queued_before(oldest_stamp, *older_than)) return false;
    std::lock_guard lock(oldest->lock);
    Event entry;
    if (!oldest->queue.try_pop(entry)) continue;
    const uint32_t slot = entry.request_id;
    if (slot >= kChannelSlots) continue;  // garbage from the client
    const uint32_t before = oldest->header->slot_state[slot].fetch_and(
        ~static_cast<uint32_t>(kSlotQueued), std::memory_order_acq_rel);
    if ((before & kSlotQueued) == 0) continue;  // withdrawn by the client
    Connection* connection = slot_connection(oldest, slot, kServerSide);
    // The client wrote this segment: check it as we check the monitor's.
    if (!segment_valid(connection->header, oldest->slot_bytes)) {
      release_channel_slot(connection);
      continue;
    }
    bind_rings(connection, kServerSide);
    out = PendingConnection{connection, entry.local, entry.peer, oldest_stamp};
    return true;
  }
}

bool listener_has_pending(Socket* listener) {
  std::lock_guard backlog(listener->backlog_mutex);
  if (!listener->backlog.empty()) return true;
  for (Channel* channel : listener->channels) {
    if (!channel->queue.empty()) return true;
  }
  return false;
}

void drop_listener_channels(Socket* listener) {
  std::vector<uint64_t> closing;
  {
    std::lock_guard backlog(listener->backlog_mutex);
    for (Channel* channel : listener->channels) {
      // Closed at once, not when the monitor gets to it: a connect made
      // right after this close must not find the channel open (the kernel
      // refuses it). What a client queued before it saw the flag, the
      // monitor hands on.
      channel->header->closed.store(1, std::memory_order_seq_cst);
      closing.push_back(channel->channel_id);
      drop_channel_reference(channel);
    }
    listener->channels.clear();
  }
  // The monitor hands on what the channels still queue. Posted without the
  // backlog lock: event dispatch takes the two locks the other way round.
  for (const uint64_t channel_id : closing) {
    Request request{};
    request.op = RequestOp::kCloseChannel;
    request.connection_id = channel_id;
    monitor_post(request);
  }
}

// A forked child shares the parent's queues, which have one producer and one
// consumer each: the child registers anew on its first netaccel call.
void reset_link_in_child() {
  g_holder_process = getpid();
  g_listener_generation.fetch_add(1, std::memory_order_relaxed);
  for_each_held_connection([](Connection* connection) { connection->inherited = true; });
  // What the parent was handed is the parent's: its channels (it alone
  // produces and consumes on their queues; their memory stays mapped for
  // inherited connections) and the connections queued for its listeners.
  // No locks: another thread of the parent may have held them at the fork.
  g_client_channels.clear();
  for (const auto& [id, listener] : g_listeners) {
    listener->channels.clear();
    listener->backlog.clear();
    listener->listener_announced.store(false, std::memory_order_relaxed);
    listener->listener_shared.store(true, std::memory_order_relaxed);
  }
  MonitorLink& l = link();
  new (&l.mutex) std::mutex;
  l.awaited_request_id = 0;
  l.reply_connection = nullptr;
  forget_link(l);
  l.state.store(LinkState::kUnknown, std::memory_order_relaxed);
}

void open_accept_queues_for_fork() {
  if (!holder_process()) return;
  std::vector<Socket*> listeners;
  {
    std::lock_guard lock(g_listeners_mutex);
    for (const auto& [id, listener] : g_listeners) {
      if (listener->accept_queue) continue;
      listener->references.fetch_add(1, std::memory_order_relaxed);
      listeners.push_back(listener);
    }
  }
  for (Socket* listener : listeners) {
    open_accept_queue(listener);
    release_socket(listener);
  }
}

void lock_link_for_fork() {
  open_accept_queues_for_fork();
  link().mutex.lock();
}
void withdraw_listeners_after_fork() {
  link().mutex.unlock();
  g_listener_generation.fetch_add(1, std::memory_order_relaxed);
  std::vector<Socket*> announced;
  {
    std::lock_guard listeners(g_listeners_mutex);
    for (const auto& [id, listener] : g_listeners) {
      listener->listener_shared.store(true, std::memory_order_relaxed);
      if (listener->listener_announced.exchange(false, std::memory_order_acq_rel)) {
        listener->references.fetch_add(1, std::memory_order_relaxed);
        announced.push_back(listener);
      }
    }
  }
  for (Socket* listener : announced) {
    // Its channels close to new connections; what they queued is still ours.
    Request request{};
    request.op = RequestOp::kUnlisten;
    request.flags = kRequestKeepQueued;
    request.socket_id = listener->id;
    monitor_post(request);
    release_socket(listener);
  }
}

// ---------------------------------------------------------------------------
// Anchors: the monitor's half, and the end an anchor carries.

namespace {
bool monitor_registered() {
  return link().state.load(std::memory_order_acquire) == LinkState::kRegistered;
}

bool send_to_monitor_socket(const void* message, std::size_t bytes, const int* fds,
                            std::size_t fd_count, bool may_register) {
  MonitorLink& l = link();
  if (!may_register) {
    // A vfork child: its parent, whose memory it runs in, is stopped.
    return monitor_registered() &&
           send_with_fds(l.control.get(), message, bytes, fds, fd_count) == 0;
  }
  if (!monitor_available()) return false;
  std::lock_guard lock(l.mutex);
  return monitor_registered() && send_with_fds(l.control.get(), message, bytes, fds, fd_count) == 0;
}
}  // namespace

bool send_anchor_watch(const AnchorMessage& message, const int (&fds)[kAnchorWatchFds],
                       bool may_register) {
  return send_to_monitor_socket(&message, sizeof message, fds, kAnchorWatchFds, may_register);
}

bool send_accept_queue(const AcceptQueueMessage& message, int queue) {
  return send_to_monitor_socket(&message, sizeof message, &queue, 1, /*may_register=*/true);
}

Connection* adopt_connection(const AnchorMessage& message, UniqueFd (&fds)[3]) {
  const int64_t bytes = shared_memory_size(fds[0].get());
  if (bytes < 0 || message.side > kServerSide || message.segment_offset % 64 != 0 ||
      message.segment_bytes < sizeof(ConnectionSegmentHeader) ||
      message.segment_offset + message.segment_bytes > static_cast<uint64_t>(bytes)) {
    return nullptr;
  }
  SharedMapping mapping = map_shared(fds[0].get(), static_cast<std::size_t>(bytes));
  if (!mapping) return nullptr;
  auto* header = reinterpret_cast<ConnectionSegmentHeader*>(
      static_cast<unsigned char*>(mapping.get()) + message.segment_offset);
  if (!segment_valid(header, message.segment_bytes) ||
      header->connection_id != message.connection_id) {
    return nullptr;
  }
  auto* connection = new Connection;
  connection->adopted = true;
  connection->header = header;
  connection->segment = std::move(mapping);
  connection->own_wake = std::move(fds[1]);
  connection->peer_wake = std::move(fds[2]);
  connection->connection_id = message.connection_id;
  bind_rings(connection, message.side);
  keep_internal_fd(connection->own_wake);
  keep_internal_fd(connection->peer_wake);
  return connection;
}

// ---------------------------------------------------------------------------
bool to_inet_address(const struct sockaddr* address, socklen_t length, InetAddress& out) {
  out = {};
  if (address == nullptr) return false;
  if (address->sa_family == AF_INET && length >= sizeof(struct sockaddr_in)) {
    struct sockaddr_in v4;
    memcpy(&v4, address, sizeof v4);
    out.bytes[10] = out.bytes[11] = 0xff;
    memcpy(out.bytes + 12, &v4.sin_addr, 4);
    out.port = ntohs(v4.sin_port);
    out.family = AF_INET;
    return true;
  }
  if (address->sa_family == AF_INET6 && length >= sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 v6;
    memcpy(&v6, address, sizeof v6);
    memcpy(out.bytes, &v6.sin6_addr, 16);
    out.port = ntohs(v6.sin6_port);
    out.family = AF_INET6;
    return true;
  }
  return false;
}

static bool is_v4_mapped(const InetAddress& address) {
  static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return memcmp(address.bytes, prefix, 12) == 0;
}

socklen_t from_inet_address(const InetAddress& address, int domain, struct sockaddr_storage& out) {
  memset(&out, 0, sizeof out);
  if (domain == AF_INET) {
    auto* v4 = reinterpret_cast<struct sockaddr_in*>(&out);
    v4->sin_family = AF_INET;
    v4->sin_port = htons(address.port);
    memcpy(&v4->sin_addr, address.bytes + 12, 4);
    return sizeof *v4;
  }
  auto* v6 = reinterpret_cast<struct sockaddr_in6*>(&out);
  v6->sin6_family = AF_INET6;
  v6->sin6_port = htons(address.port);
  memcpy(&v6->sin6_addr, address.bytes, 16);
  return sizeof *v6;
}

int copy_out_address(const InetAddress& address, int domain, struct sockaddr* out,
                     socklen_t* length) {
  // The kernel's move_addr_to_user: read the length, refuse a negative one,
  // copy what fits (nothing for a length of 0, whatever `out` is), then
  // write the full length back; each unreachable step is EFAULT.
  if (!accessible(length, sizeof *length, Access::kRead)) return EFAULT;
  const int wanted = static_cast<int>(*length);
  if (wanted < 0) return EINVAL;
  struct sockaddr_storage storage;
  const socklen_t full = from_inet_address(address, domain, storage);
  const socklen_t copied = std::min<socklen_t>(static_cast<socklen_t>(wanted), full);
  if (copied > 0) {
    if (!accessible(out, copied, Access::kWrite)) return EFAULT;
    memcpy(out, &storage, copied);
  }
  if (!accessible(length, sizeof *length, Access::kWrite)) return EFAULT;
  *length = full;
  return 0;
}

bool is_loopback(const InetAddress& address) {
  if (is_v4_mapped(address)) return address.bytes[12] == 127;
  static const uint8_t v6_loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return memcmp(address.bytes, v6_loopback, 16) == 0;
}

bool is_local_address(const InetAddress& address) {
  if (is_loopback(address)) return true;
  // The namespace's addresses change rarely; look them up at most once a second.
  static std::mutex mutex;
  static std::vector<InetAddress> cached;
  static int64_t fetched_at = 0;
  std::lock_guard lock(mutex);
  const int64_t now = monotonic_ns();
  if (fetched_at == 0 || now - fetched_at > 1'000'000'000) {
    cached.clear();
    struct ifaddrs* list = nullptr;
    if (getifaddrs(&list) == 0) {
      for (struct ifaddrs* entry = list; entry != nullptr; entry = entry->ifa_next) {
        InetAddress found;
        if (entry->ifa_addr != nullptr &&
            to_inet_address(entry->ifa_addr, sizeof(struct sockaddr_in6), found)) {
          cached.push_back(found);
        }
      }
      freeifaddrs(list);
    }
    fetched_at = now;
  }
  for (const InetAddress& candidate : cached) {
    if (memcmp(candidate.bytes, address.bytes, 16) == 0) return true;
  }
  return false;
}

namespace {
// The preload's start in a new image adopts what it inherited. A static
// object rather than a constructor function: the tables it fills are
// initialised before it in this file, which nothing guarantees across files.
struct AdoptAtLoad {
  AdoptAtLoad() {
    adopt_inherited_descriptors();
    adopt_standard_streams();
  }
} g_adopt_at_load;
}  // namespace

}  // namespace netaccel::preload

#include "netaccel/monitor.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

#include "anchor_keeper.h"
#include "netaccel/shm.h"

namespace netaccel {
namespace {

using Clock = std::chrono::steady_clock;

// While busy, sockets (new processes, deaths) are still looked at this often.
constexpr auto kSocketPollInterval = std::chrono::milliseconds(1);
constexpr auto kPureSpin = std::chrono::microseconds(5);
// While an event backlog waits for its process, sleep no longer than this.
constexpr int kBacklogRetryMs = 1;
// Requests taken from one process before moving on to the next.
constexpr int kRequestBatch = 64;
// A process with this many undelivered events is not served until it reads
// some: its requests would only grow the backlog.
constexpr std::size_t kBacklogLimit = 4 * kEventSlots;
// Segments of closed connections kept for the next connection between the
// same two processes (both still hold them mapped): bounded per pair and per
// process, since each pins 2 * ring_bytes of memory.
constexpr std::size_t kPooledSegmentsPerPair = 8;
constexpr std::size_t kPooledSegmentsPerProcess = 32;
// Channels a process may hold in each role: each costs it 2 * kChannelSlots
// eventfds, which live among the application's own descriptors.
constexpr std::size_t kChannelsPerProcessRole = 8;
// An accept queue takes connections for this long after the last announced
// holder of its socket went (a fork, an exec). Holders that wait announce
// within milliseconds; ones that never do (an image without the preload)
// would leave clients queued for nobody, so after it they go through the
// kernel listener again.
constexpr auto kAcceptQueueWindow = std::chrono::seconds(2);
// Each queue holds a descriptor of ours; processes may not open them without end.
constexpr std::size_t kMaxAcceptQueues = 1024;
constexpr uint32_t kMinRingBytes = 4096;
constexpr uint32_t kMaxRingBytes = 1u << 30;  // segment offsets are 32-bit

[[noreturn]] void throw_errno(int error, const std::string& what) {
  throw std::system_error(error, std::generic_category(), what);
}

void log_error(const char* what, int error) {
  std::fprintf(stderr, "netaccel monitor: %s: %s\n", what, std::strerror(error));
}

std::size_t page_round_up(std::size_t bytes) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

// A memfd its users cannot resize: the monitor maps process-held memory, and
// a mapping whose file was truncated under it would SIGBUS the monitor.
int create_sealed_memory(const char* name, std::size_t bytes) {
  UniqueFd fd(memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return -errno;
  if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0 ||
      fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return -errno;
  }
  return fd.release();
}

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof address.sun_path) {
    throw std::invalid_argument("socket path '" + path + "' is empty or too long");
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  return address;
}

// epoll_event.data: what the fd is, and which one.
enum class Source : uint64_t {
  kListener = 1,
  kDoorbell = 2,
  kNewcomer = 3,
  kProcess = 4,
  kAcceptQueue = 5,
};
uint64_t tag(Source source, uint32_t id) {
  return static_cast<uint64_t>(source) << 32 | id;
}

uint64_t pair_key(uint32_t a, uint32_t b) {
  return a < b ? static_cast<uint64_t>(a) << 32 | b : static_cast<uint64_t>(b) << 32 | a;
}

ConnectionSide other_side(ConnectionSide side) {
  return side == kClientSide ? kServerSide : kClientSide;
}

// The owner of `dead`'s end died: true when that ends the end. A process it
// forked may still hold it, or the owner had let go of its share already.
bool release_dead_owner_share(unsigned char* segment, ConnectionSide dead) {
  auto* header = reinterpret_cast<ConnectionSegmentHeader*>(segment);
  if (header->owner_left[dead].load(std::memory_order_acquire) != 0) return false;
  return release_last_holder(header->holders[dead]);
}

}  // namespace

std::unique_ptr<ControlPlaneEngine> make_engine(std::string_view name,
                                                const FpgaSimOptions& fpga_sim) {
  if (name == "software") return make_software_engine();
  if (name == "fpga-sim") return make_fpga_sim_engine(fpga_sim);
  throw std::invalid_argument("unknown engine '" + std::string(name) +
                              "' (available: software, fpga-sim)");
}

class Monitor::Impl {
 public:
  explicit Impl(MonitorOptions options);
  ~Impl();

  void run();
  void request_stop() {
    stop_requested_.store(true, std::memory_order_relaxed);
    signal_wake_fd(doorbell_.get());
  }
  const std::string& socket_path() const { return options_.socket_path; }
  std::string_view engine_name() const { return engine_->name(); }

 private:
  // An event on its way to a process's event queue. Events leave in order;
  // one that carries a connection or a channel first needs its fds sent.
  enum class Attachment : uint8_t { kNone, kConnection, kChannel };
  struct PendingEvent {
    Event event;
    Attachment attachment;
    ConnectionSide side;
  };

  struct Process {
    pid_t pid = 0;
    UniqueFd socket;
    UniqueFd wake;  // the process's eventfd for its event queue
    SharedMapping queues;
    DescriptorRing<Request> requests;
    DescriptorRing<Event> events;
    std::deque<PendingEvent> backlog;
    bool events_pushed = false;  // since its last wake check
    uint64_t netns_id = 0;
  };

  // A listening socket's accept queue (protocol.h): Qb, and the engine
  // process under which we listen for the socket while none of its holders
  // is announced.
  struct AcceptQueue {
    UniqueFd queue;
    uint32_t engine_process = 0;
    uint64_t cookie = 0;
    Request listen{};
    bool listening = false;
    Clock::time_point listening_until{};
  };

  // A connection's shared memory and its two ends' eventfds. A segment we
  // made starts the memfd; a channel's slot lies further in.
  struct Segment {
    UniqueFd memory;
    UniqueFd wake[2];  // one eventfd per connection end, by ConnectionSide
    uint64_t offset = 0;
    std::size_t bytes = 0;
    uint64_t header_connection_id = 0;  // the id its header bears
  };

  struct Connection {
    Segment segment;
    uint32_t process_id[2];  // by ConnectionSide
    bool reused;             // both ends already hold the segment: no fd delivery
    // Its server end went to another process (the listener closed before
    // accepting it): the segment is never pooled.
    bool handed_on = false;
    InetAddress server_address{};  // as kIncoming told the server
    InetAddress client_address{};
    // A process connected to itself dies as two notices, one end each: each
    // end's share goes once (an anchor may hold another).
    bool abandoned[2] = {false, false};
  };

  // A server end on its way to another listener, as the client reached it.
  struct HandOff {
    Segment segment;
    uint32_t client;
    InetAddress destination;
    InetAddress client_address;
  };

  // A released segment both processes keep cached under `held_as`, the
  // connection id its header still bears.
  struct PooledSegment {
    Segment segment;
    uint64_t held_as;
    uint32_t process_id[2];
  };

  // A channel between a client process and a listener (see protocol.h). We
  // keep it mapped: we close it, drain its accept queue and abort the ends
  // of a process that died.
  struct Channel {
    UniqueFd memory;
    SharedMapping mapping;
    std::vector<UniqueFd> wake;  // [slot * 2 + side]
    uint32_t process_id[2];      // by ConnectionSide
    uint64_t listener_id;        // the server's socket id
    InetAddress destination;     // what the client connects to
    std::string client_key;      // in channel_by_client_ while open
    // Closed to new connections, kept while it still carries some: the
    // death of either process must still reach the other end.
    bool retired = false;
    ChannelHeader* header() const { return static_cast<ChannelHeader*>(mapping.get()); }
  };

  void bind_socket();
  void watch(int fd, Source source, uint32_t id, uint32_t events);

  bool serve_request_queues();
  bool flush_backlogs();
  bool flush_backlog(Process& process);
  void check_wakeups();
  void sleep_until_work();
  void set_consumers_sleeping(uint32_t sleeping);
  bool any_request_pending() const;
  bool any_backlog() const;

  void poll_sockets(int timeout_ms);
  void accept_newcomers();
  void greet_newcomer(uint32_t newcomer_id);
  void register_process(UniqueFd socket, UniqueFd wake);
  void send_status(int socket);
  void on_process_socket(uint32_t process_id, uint32_t events);
  bool take_process_messages(uint32_t process_id, int socket);
  void remove_process(uint32_t process_id);

  void open_accept_queue(uint32_t process_id, const AcceptQueueMessage& message, UniqueFd queue);
  void share_listener(uint32_t process_id, const Request& request);
  void note_announcement(uint32_t process_id, const Request& request);
  void forget_announcements_of(uint32_t process_id);
  void update_accept_queue(uint64_t cookie);
  void queue_anchor(AcceptQueue& queue, const Event& incoming);
  void on_accept_queue(uint32_t engine_process, uint32_t events);
  void close_accept_queue(uint32_t engine_process);
  void expire_accept_queues();
  int accept_queue_expiry_ms() const;

  void handle_outputs();
  void create_connection(const EngineOutput& output);
  void deliver_event(uint32_t process_id, const Event& event);
  int send_delivery(Process& process, const PendingEvent& pending);
  void abandon_endpoint(const EngineOutput& output);
  void release_connection(uint64_t connection_id);
  void drop_segment(uint64_t held_as, const uint32_t (&process_id)[2]);
  void drop_pooled_segments_of(uint32_t process_id);
  bool take_pooled_segment(uint32_t client, uint32_t server, Segment& segment);
  bool segment_left_to_a_fork(const Segment& segment) const;
  void layout_segment(int memory, uint64_t connection_id);
  struct UnbackedConnection {
    int error;
    uint32_t process_id[2];
  };
  void close_unbacked_connection(uint64_t connection_id, const UnbackedConnection& connection);

  void requeue(uint32_t process_id, uint64_t connection_id);
  HandOff detach_server_end(Connection& connection);
  void hand_on_server_end(HandOff hand_off);
  void submit_on_behalf(uint32_t process_id, Request& request);
  bool take_hand_off(const std::vector<EngineOutput>& outputs, std::size_t created);
  void finish_hand_off(const Event& reply);
  void reset_server_end(const Segment& segment);

  void open_channel_after_connect(uint32_t client, const Request& request);
  int send_channel(Process& process, const PendingEvent& pending);
  void close_channel(uint64_t channel_id, bool queue_is_ours, uint32_t dead_process = 0);
  void forget_retired_channels();
  std::size_t channels_open() const;
  void abort_channel_ends(Channel& channel, ConnectionSide dead);
  void abort_slot_end(Channel& channel, uint32_t slot, ConnectionSide dead);
  void abort_segment_end(unsigned char* segment, ConnectionSide dead) const;
  void drain_channel_queue(Channel& channel);
  void close_channels_of_listener(uint32_t process_id, uint64_t listener_id, bool hand_on_queued);
  void close_channel_of(uint32_t process_id, uint64_t channel_id);
  void close_channels_of_process(uint32_t process_id);
  uint64_t direct_connections_total() const;

  MonitorOptions options_;
  std::unique_ptr<ControlPlaneEngine> engine_;
  uint64_t segments_created_ = 0;  // shown by status: how often reuse saved a new segment
  uint64_t segments_reused_ = 0;
  std::size_t segment_bytes_;
  std::size_t event_ring_offset_;
  std::size_t queues_bytes_;

  UniqueFd listener_;
  UniqueFd doorbell_;  // processes ring it when they find the monitor asleep
  UniqueFd epoll_;
  ino_t socket_inode_ = 0;
  std::atomic<bool> stop_requested_{false};

  std::unordered_map<uint32_t, UniqueFd> newcomers_;  // accepted, not yet registered
  uint32_t next_newcomer_id_ = 1;
  std::unordered_map<uint32_t, Process> processes_;
  uint32_t next_process_id_ = 1;
  std::unordered_map<uint64_t, Connection> connections_;
  std::unordered_map<uint64_t, std::vector<PooledSegment>> segment_pool_;  // by pair_key
  std::unordered_map<uint32_t, std::size_t> pooled_per_process_;
  // Connections the engine created but we could not back with memory.
  std::unordered_map<uint64_t, UnbackedConnection> unbacked_connections_;
  std::vector<EngineOutput> outputs_;
  bool events_pushed_ = false;
  std::size_t channel_bytes_;
  std::unordered_map<uint64_t, Channel> channels_;
  std::unordered_map<std::string, uint64_t> channel_by_client_;  // client + destination
  uint64_t next_channel_id_ = 1;
  uint64_t direct_connections_of_closed_channels_ = 0;
  std::unordered_map<uint32_t, HandOff> hand_offs_;  // by our request id
  uint32_t next_own_request_ = 0;
  uint64_t connections_handed_on_ = 0;  // shown by status
  AnchorKeeperLink anchor_keeper_;
  std::unordered_map<uint32_t, AcceptQueue> accept_queues_;  // by engine process
  std::unordered_map<uint64_t, uint32_t> accept_queue_of_cookie_;
  // Announced listeners that are copies of a socket with a cookie:
  // (process, socket id) -> cookie.
  std::map<std::pair<uint32_t, uint64_t>, uint64_t> announced_cookies_;
};

Monitor::Impl::Impl(MonitorOptions options)
    : options_(std::move(options)), engine_(make_engine(options_.engine, options_.fpga_sim)) {
  const uint32_t ring_bytes = options_.ring_bytes;
  if (ring_bytes < kMinRingBytes || ring_bytes > kMaxRingBytes ||
      (ring_bytes & (ring_bytes - 1)) != 0) {
    throw std::invalid_argument("ring bytes must be a power of two between 4096 and 2^30");
  }
  segment_bytes_ = connection_segment_bytes(ring_bytes);
  channel_bytes_ = channel_bytes(ring_bytes);
  event_ring_offset_ = page_round_up(descriptor_ring_footprint(kRequestSlots));
  queues_bytes_ = page_round_up(event_ring_offset_ + descriptor_ring_footprint(kEventSlots));

  const int doorbell = create_wake_fd();
  if (doorbell < 0) throw_errno(-doorbell, "eventfd");
  doorbell_.reset(doorbell);
  epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) throw_errno(errno, "epoll_create1");
  bind_socket();
  watch(listener_.get(), Source::kListener, 0, EPOLLIN);
  watch(doorbell_.get(), Source::kDoorbell, 0, EPOLLIN);
}

Monitor::Impl::~Impl() {
  // Another monitor may have replaced our socket file since; leave it alone then.
  struct stat status {};
  if (socket_inode_ != 0 && lstat(options_.socket_path.c_str(), &status) == 0 &&
      status.st_ino == socket_inode_) {
    unlink(options_.socket_path.c_str());
  }
}

void Monitor::Impl::bind_socket() {
  const std::string& path = options_.socket_path;
  const sockaddr_un address = unix_address(path);

  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code error;
    std::filesystem::create_directories(parent, error);
    if (error) throw std::system_error(error, "cannot create " + parent.string());
  }

  struct stat status {};
  if (lstat(path.c_str(), &status) == 0) {
    if (!S_ISSOCK(status.st_mode)) {
      throw std::runtime_error(path + " exists and is not a socket");
    }
    // A socket file nobody answers on is left over from a monitor that died.
    UniqueFd probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!probe) throw_errno(errno, "socket");
    if (connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0) {
      throw std::runtime_error("a monitor is already running at " + path);
    }
    if (errno != ECONNREFUSED) throw_errno(errno, "cannot probe " + path);
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      throw_errno(errno, "cannot remove stale " + path);
    }
  }

  listener_.reset(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listener_) throw_errno(errno, "socket");
  if (bind(listener_.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    throw_errno(errno, "cannot bind " + path);
  }
  if (lstat(path.c_str(), &status) == 0) socket_inode_ = status.st_ino;
  // Any user's processes may register; SO_PEERCRED tells us who they are.
  if (chmod(path.c_str(), 0666) != 0) throw_errno(errno, "chmod " + path);
  if (listen(listener_.get(), SOMAXCONN) != 0) throw_errno(errno, "listen");
}

void Monitor::Impl::watch(int fd, Source source, uint32_t id, uint32_t events) {
  epoll_event event{};
  event.events = events;
  event.data.u64 = tag(source, id);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) throw_errno(errno, "epoll_ctl");
}

// ---------------------------------------------------------------------------
// Main loop

void Monitor::Impl::run() {
  std::fprintf(stderr, "netaccel monitor (%.*s engine) listening on %s\n",
               static_cast<int>(engine_name().size()), engine_name().data(),
               options_.socket_path.c_str());
  Clock::time_point last_work = Clock::now();
  Clock::time_point last_socket_poll = last_work;
  while (!stop_requested_.load(std::memory_order_relaxed)) {
    bool worked = serve_request_queues();
    worked |= flush_backlogs();
    if (events_pushed_) check_wakeups();

    const Clock::time_point now = Clock::now();
    if (worked) last_work = now;
    if (now - last_socket_poll >= kSocketPollInterval) {
      poll_sockets(0);
      expire_accept_queues();
      last_socket_poll = now;
    }
    if (worked) continue;
    if (now - last_work < options_.idle_spin) {
      // Two cores, two applications and us: let a runnable process have the
      // core rather than burn it polling empty queues.
      if (now - last_work > kPureSpin) sched_yield();
      continue;
    }

    sleep_until_work();
    last_work = last_socket_poll = Clock::now();
  }
}

bool Monitor::Impl::serve_request_queues() {
  bool worked = false;
  for (auto& [process_id, process] : processes_) {
    // Every descriptor is untrusted; the ring masks its indices, the engine
    // checks its fields.
    Request request;
    for (int taken = 0; taken < kRequestBatch && process.backlog.size() < kBacklogLimit &&
                        process.requests.try_pop(request);
         ++taken) {
      if (request.op == RequestOp::kCloseChannel) {
        close_channel_of(process_id, request.connection_id);
        worked = true;
        continue;
      }
      if (request.op == RequestOp::kRequeue) {
        requeue(process_id, request.connection_id);
        worked = true;
        continue;
      }
      if (request.op == RequestOp::kShareListener) {
        share_listener(process_id, request);
        worked = true;
        continue;
      }
      outputs_.clear();
      engine_->submit(process_id, request, outputs_);
      // The channel's fds reach both processes ahead of the connection itself.
      if (request.op == RequestOp::kConnect) open_channel_after_connect(process_id, request);
      handle_outputs();
      if (request.op == RequestOp::kUnlisten)
        close_channels_of_listener(process_id, request.socket_id,
                                   (request.flags & kRequestKeepQueued) == 0);
      note_announcement(process_id, request);
      worked = true;
    }
  }
  // The end of a polling round rings the FPGA engine's doorbell.
  outputs_.clear();
  engine_->flush(outputs_);
  handle_outputs();
  return worked;
}

bool Monitor::Impl::flush_backlogs() {
  bool progress = false;
  for (auto& [process_id, process] : processes_) {
    if (!process.backlog.empty()) progress |= flush_backlog(process);
  }
  return progress;
}

bool Monitor::Impl::flush_backlog(Process& process) {
  bool progress = false;
  while (!process.backlog.empty()) {
    PendingEvent& pending = process.backlog.front();
    if (pending.attachment != Attachment::kNone) {
      const int sent = pending.attachment == Attachment::kConnection
                           ? send_delivery(process, pending)
                           : send_channel(process, pending);
      if (sent == -EAGAIN || sent == -ENOBUFS || sent == -ETOOMANYREFS) break;  // retry later
      progress = true;
      if (sent < 0) {
        // The process is going away (its hang-up is on the way to epoll), or
        // the connection is; an event without its fds would only confuse it.
        process.backlog.pop_front();
        continue;
      }
      pending.attachment = Attachment::kNone;
    }
    if (!process.events.try_push(pending.event)) break;  // full: never block, retry later
    process.backlog.pop_front();
    process.events_pushed = true;
    events_pushed_ = true;
    progress = true;
  }
  return progress;
}

// The process announces sleep (consumer_sleeping = 1, fence, re-check); we
// publish, fence, check the announcement. One of the two sees the other.
void Monitor::Impl::check_wakeups() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (auto& [process_id, process] : processes_) {
    if (!process.events_pushed) continue;
    process.events_pushed = false;
    if (process.events.control().consumer_sleeping.load(std::memory_order_relaxed) != 0) {
      signal_wake_fd(process.wake.get());
    }
  }
  events_pushed_ = false;
}

void Monitor::Impl::set_consumers_sleeping(uint32_t sleeping) {
  for (auto& [process_id, process] : processes_) {
    process.requests.control().consumer_sleeping.store(sleeping, std::memory_order_relaxed);
  }
}

bool Monitor::Impl::any_request_pending() const {
  for (const auto& [process_id, process] : processes_) {
    if (!process.requests.empty() && process.backlog.size() < kBacklogLimit) return true;
  }
  return false;
}

bool Monitor::Impl::any_backlog() const {
  for (const auto& [process_id, process] : processes_) {
    if (!process.backlog.empty()) return true;
  }
  return false;
}

// Announce sleep on every request queue, then look once more: a process that
// pushed before seeing the announcement is caught by the re-scan, one that
// pushed after it rings the doorbell.
void Monitor::Impl::sleep_until_work() {
  set_consumers_sleeping(1);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!any_request_pending() && !stop_requested_.load(std::memory_order_relaxed)) {
    // Processes do not ring us when they drain their event queues, so a
    // backlog is retried on a timer; an accept queue's window closes on one.
    int timeout_ms = accept_queue_expiry_ms();
    if (any_backlog() && (timeout_ms < 0 || timeout_ms > kBacklogRetryMs)) {
      timeout_ms = kBacklogRetryMs;
    }
    poll_sockets(timeout_ms);
  }
  expire_accept_queues();
  drain_wake_fd(doorbell_.get());
  set_consumers_sleeping(0);
}

// ---------------------------------------------------------------------------
// Sockets: registration, status, process death

void Monitor::Impl::poll_sockets(int timeout_ms) {
  epoll_event events[64];
  const int count = epoll_wait(epoll_.get(), events, 64, timeout_ms);
  if (count < 0) {
    if (errno == EINTR) return;
    throw_errno(errno, "epoll_wait");
  }
  for (int i = 0; i < count; ++i) {
    const auto source = static_cast<Source>(events[i].data.u64 >> 32);
    const auto id = static_cast<uint32_t>(events[i].data.u64);
    switch (source) {
      case Source::kListener:
        accept_newcomers();
        break;
      case Source::kDoorbell:
        drain_wake_fd(doorbell_.get());
        break;
      case Source::kNewcomer:
        greet_newcomer(id);
        break;
      case Source::kProcess:
        on_process_socket(id, events[i].events);
        break;
      case Source::kAcceptQueue:
        on_accept_queue(id, events[i].events);
        break;
    }
  }
}

void Monitor::Impl::accept_newcomers() {
  for (;;) {
    UniqueFd socket(accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!socket) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) log_error("accept", errno);
      return;
    }
    const uint32_t id = next_newcomer_id_++;
    watch(socket.get(), Source::kNewcomer, id, EPOLLIN | EPOLLRDHUP);
    newcomers_.emplace(id, std::move(socket));
  }
}

// The first message says what the connection is for: a process registering
// (with its wake eventfd) or someone asking for status.
void Monitor::Impl::greet_newcomer(uint32_t newcomer_id) {
  const auto found = newcomers_.find(newcomer_id);
  if (found == newcomers_.end()) return;
  alignas(8) unsigned char message[64];
  int fds[1];
  std::size_t fd_count = 0;
  const ssize_t received =
      receive_with_fds(found->second.get(), message, sizeof message, fds, 1, &fd_count);
  UniqueFd wake(fd_count == 1 ? fds[0] : -1);
  if (received == -EAGAIN) return;

  UniqueFd socket = std::move(found->second);
  newcomers_.erase(found);
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, socket.get(), nullptr);
  if (received < static_cast<ssize_t>(sizeof(RegisterRequest))) return;  // gone or garbage

  uint32_t magic;
  uint32_t version;
  std::memcpy(&magic, message, sizeof magic);
  std::memcpy(&version, message + sizeof magic, sizeof version);
  if (magic == kStatusMagic) {
    if (version == kProtocolVersion) send_status(socket.get());
    return;
  }
  if (magic == kProtocolMagic && version == kProtocolVersion) {
    register_process(std::move(socket), std::move(wake));
    return;
  }
  const RegisterReply refusal{kProtocolMagic, kProtocolVersion, -EPROTO, 0, 0, 0, 0, 0, 0};
  send_with_fds(socket.get(), &refusal, sizeof refusal, nullptr, 0);
}

void Monitor::Impl::register_process(UniqueFd socket, UniqueFd wake) {
  RegisterReply reply{kProtocolMagic, kProtocolVersion, 0, 0, 0, 0, 0, 0, 0};
  auto refuse = [&](int error) {
    reply.status = -error;
    send_with_fds(socket.get(), &reply, sizeof reply, nullptr, 0);
  };
  if (!wake || !is_eventfd(wake.get())) return refuse(EINVAL);
  if (next_process_id_ == 0) return refuse(EUSERS);  // ids are never reused

  ucred credentials{};
  socklen_t length = sizeof credentials;
  if (getsockopt(socket.get(), SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) {
    return refuse(errno);
  }
  // The network namespace is the container's identity: same-netns peers
  // reach each other's listeners.
  struct stat netns {};
  const std::string netns_path = "/proc/" + std::to_string(credentials.pid) + "/ns/net";
  if (stat(netns_path.c_str(), &netns) != 0) return refuse(errno);
  const uint64_t netns_id = static_cast<uint64_t>(netns.st_dev) << 32 ^ netns.st_ino;

  const int queues_fd = create_sealed_memory("netaccel-queues", queues_bytes_);
  if (queues_fd < 0) return refuse(-queues_fd);
  const UniqueFd queues(queues_fd);
  SharedMapping mapping = map_shared(queues.get(), queues_bytes_);
  if (!mapping) return refuse(errno);
  auto* base = static_cast<unsigned char*>(mapping.get());
  descriptor_ring_init(base, kRequestSlots);
  descriptor_ring_init(base + event_ring_offset_, kEventSlots);

  const uint32_t process_id = next_process_id_++;
  reply.process_id = process_id;
  reply.request_slots = kRequestSlots;
  reply.event_slots = kEventSlots;
  reply.request_ring_offset = 0;
  reply.event_ring_offset = static_cast<uint32_t>(event_ring_offset_);
  reply.queues_bytes = queues_bytes_;
  const int fds[2] = {queues.get(), doorbell_.get()};
  if (send_with_fds(socket.get(), &reply, sizeof reply, fds, 2) != 0) return;

  Process process;
  process.pid = credentials.pid;
  process.netns_id = netns_id;
  process.socket = std::move(socket);
  process.wake = std::move(wake);
  // Ring views are built now, from the layout we just wrote; what the process
  // later scribbles over the control blocks cannot move them.
  process.requests = DescriptorRing<Request>(base);
  process.events = DescriptorRing<Event>(base + event_ring_offset_);
  process.queues = std::move(mapping);
  watch(process.socket.get(), Source::kProcess, process_id, EPOLLIN | EPOLLRDHUP);
  processes_.emplace(process_id, std::move(process));
  engine_->add_process(process_id, netns_id);
}

void Monitor::Impl::send_status(int socket) {
  const EngineCounters counters = engine_->counters();
  const uint64_t direct = direct_connections_total();
  char json[768];
  const int length = std::snprintf(
      json, sizeof json,
      "{\"engine\":\"%.*s\",\"processes\":%llu,\"listeners\":%llu,\"connections_open\":%llu,"
      "\"connections_total\":%llu,\"requests\":%llu,\"rejected_requests\":%llu,"
      "\"ring_bytes\":%u,\"segments_created\":%llu,\"segments_reused\":%llu,"
      "\"channels_open\":%zu,\"direct_connections_total\":%llu,"
      "\"connections_handed_on\":%llu,\"accept_queues\":%zu}",
      static_cast<int>(engine_name().size()), engine_name().data(),
      // Our own listening for accept queues is no process.
      static_cast<unsigned long long>(counters.processes - accept_queues_.size()),
      static_cast<unsigned long long>(counters.listeners),
      static_cast<unsigned long long>(counters.connections_open),
      // A hand-off is a second engine connection for one real connection.
      static_cast<unsigned long long>(counters.connections_total + direct - connections_handed_on_),
      static_cast<unsigned long long>(counters.requests),
      static_cast<unsigned long long>(counters.rejected_requests), options_.ring_bytes,
      static_cast<unsigned long long>(segments_created_),
      static_cast<unsigned long long>(segments_reused_), channels_open(),
      static_cast<unsigned long long>(direct),
      static_cast<unsigned long long>(connections_handed_on_), accept_queues_.size());
  if (length > 0) send(socket, json, static_cast<std::size_t>(length), MSG_NOSIGNAL);
}

void Monitor::Impl::on_process_socket(uint32_t process_id, uint32_t events) {
  const auto found = processes_.find(process_id);
  if (found == processes_.end()) return;
  // Anchors handed over just before an exec arrive with the hang-up: taken first.
  const bool open = take_process_messages(process_id, found->second.socket.get());
  if (open && (events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) == 0) return;
  remove_process(process_id);
}

// After registering, a process sends anchors and accept queues. False once
// the socket reached its end.
bool Monitor::Impl::take_process_messages(uint32_t process_id, int socket) {
  for (;;) {
    union {
      AnchorMessage anchor;
      AcceptQueueMessage accept_queue;
    } message{};
    int fds[kAnchorWatchFds];
    std::size_t fd_count = 0;
    const ssize_t received =
        receive_with_fds(socket, &message, sizeof message, fds, kAnchorWatchFds, &fd_count);
    if (received <= 0) return received == -EAGAIN || received == -EINTR;
    if (message.accept_queue.magic != kAcceptQueueMagic) {
      anchor_keeper_.watch(message.anchor, received, fds, fd_count);
      continue;
    }
    UniqueFd queue(fd_count == 1 ? fds[0] : -1);
    for (std::size_t i = 1; i < fd_count; ++i) close(fds[i]);
    if (received == sizeof message.accept_queue &&
        message.accept_queue.version == kAcceptQueueVersion) {
      open_accept_queue(process_id, message.accept_queue, std::move(queue));
    }
  }
}

void Monitor::Impl::remove_process(uint32_t process_id) {
  const auto found = processes_.find(process_id);
  if (found == processes_.end()) return;
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, found->second.socket.get(), nullptr);
  processes_.erase(found);  // first: nothing more is delivered to it
  outputs_.clear();
  engine_->remove_process(process_id, outputs_);
  handle_outputs();
  forget_announcements_of(process_id);
  drop_pooled_segments_of(process_id);
  close_channels_of_process(process_id);
}

// ---------------------------------------------------------------------------
// Engine outputs

void Monitor::Impl::handle_outputs() {
  // Handling an output may submit more requests (a hand-off): they bring
  // their own outputs.
  std::vector<EngineOutput> outputs;
  outputs.swap(outputs_);
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const EngineOutput& output = outputs[i];
    switch (output.notice) {
      case EngineNotice::kDeliver:
        if (output.event.type == EventType::kReply &&
            (output.event.request_id & kMonitorRequestBit) != 0) {
          finish_hand_off(output.event);
        } else {
          deliver_event(output.destination, output.event);
        }
        break;
      case EngineNotice::kConnectionCreated:
        if (!take_hand_off(outputs, i)) create_connection(output);
        break;
      case EngineNotice::kEndpointAbandoned:
        abandon_endpoint(output);
        break;
      case EngineNotice::kConnectionReleased:
        release_connection(output.event.connection_id);
        break;
    }
  }
}

void Monitor::Impl::create_connection(const EngineOutput& output) {
  const uint64_t connection_id = output.event.connection_id;
  Connection connection;
  connection.process_id[kClientSide] = output.destination;
  connection.process_id[kServerSide] = output.peer_process;
  connection.reused =
      take_pooled_segment(output.destination, output.peer_process, connection.segment);
  ++(connection.reused ? segments_reused_ : segments_created_);
  if (!connection.reused) {
    int error = 0;
    const int memory = create_sealed_memory("netaccel-connection", segment_bytes_);
    if (memory < 0) error = -memory;
    connection.segment.memory.reset(memory < 0 ? -1 : memory);
    for (UniqueFd& wake : connection.segment.wake) {
      const int fd = create_wake_fd();
      if (fd < 0) error = -fd;
      wake.reset(fd < 0 ? -1 : fd);
    }
    if (error != 0) {
      log_error("cannot create connection memory", error);
      unbacked_connections_.emplace(
          connection_id, UnbackedConnection{error, {output.destination, output.peer_process}});
      return;
    }
  }
  connection.segment.bytes = segment_bytes_;
  connection.segment.header_connection_id = connection_id;
  layout_segment(connection.segment.memory.get(), connection_id);
  connections_.emplace(connection_id, std::move(connection));
}

// Writes a fresh header and two empty rings. Only the two endpoints keep the
// connection mapped; we write the layout and let go. A pooled segment is
// written only after both endpoints closed it, so nobody else touches it.
void Monitor::Impl::layout_segment(int memory, uint64_t connection_id) {
  const SharedMapping mapping = map_shared(memory, segment_bytes_);
  if (!mapping) {
    // Both endpoints will find the segment invalid and close their ends.
    log_error("cannot map connection memory", errno);
    return;
  }
  layout_connection_segment(mapping.get(), connection_id, options_.ring_bytes);
  // Release: an endpoint that reads the new connection id from the header
  // (after popping the event that names it) sees the whole layout.
  std::atomic_thread_fence(std::memory_order_release);
}

bool Monitor::Impl::segment_left_to_a_fork(const Segment& segment) const {
  const SharedMapping mapping = map_shared(segment.memory.get(), segment.bytes, segment.offset);
  if (!mapping) return true;  // cannot tell: do not reuse it
  // An owner that left its end to a process it forked unmapped the segment
  // (nothing to reuse there), and that process may still be using it.
  const auto* header = static_cast<const ConnectionSegmentHeader*>(mapping.get());
  return header->owner_left[kClientSide].load(std::memory_order_acquire) != 0 ||
         header->owner_left[kServerSide].load(std::memory_order_acquire) != 0;
}

bool Monitor::Impl::take_pooled_segment(uint32_t client, uint32_t server, Segment& segment) {
  const auto found = segment_pool_.find(pair_key(client, server));
  if (found == segment_pool_.end()) return false;
  PooledSegment& pooled = found->second.back();
  segment = std::move(pooled.segment);
  --pooled_per_process_[client];
  if (server != client) --pooled_per_process_[server];
  found->second.pop_back();
  if (found->second.empty()) segment_pool_.erase(found);
  return true;
}

// Both ends closed: keep the segment for the same two processes' next
// connection, or tell them to let it go.
void Monitor::Impl::release_connection(uint64_t connection_id) {
  const auto found = connections_.find(connection_id);
  if (found == connections_.end()) return;
  Connection& connection = found->second;
  const uint32_t client = connection.process_id[kClientSide];
  const uint32_t server = connection.process_id[kServerSide];
  // A process forked from one of the two may still use the segment, or
  // hold the only mapping of it.
  const bool both_alive = processes_.contains(client) && processes_.contains(server) &&
                          !connection.handed_on && !segment_left_to_a_fork(connection.segment);
  std::vector<PooledSegment>& pool = segment_pool_[pair_key(client, server)];
  if (both_alive && pool.size() < kPooledSegmentsPerPair &&
      pooled_per_process_[client] < kPooledSegmentsPerProcess &&
      pooled_per_process_[server] < kPooledSegmentsPerProcess) {
    pool.push_back(PooledSegment{std::move(connection.segment), connection_id, {client, server}});
    ++pooled_per_process_[client];
    if (server != client) ++pooled_per_process_[server];
  } else {
    if (pool.empty()) segment_pool_.erase(pair_key(client, server));
    drop_segment(connection_id, connection.process_id);
  }
  connections_.erase(found);
}

// Each live end frees its cached mapping; one event per end, so a process
// connected to itself hears it twice.
void Monitor::Impl::drop_segment(uint64_t held_as, const uint32_t (&process_id)[2]) {
  Event dropped{};
  dropped.type = EventType::kSegmentDropped;
  dropped.connection_id = held_as;
  for (const uint32_t end : process_id) deliver_event(end, dropped);
}

void Monitor::Impl::drop_pooled_segments_of(uint32_t process_id) {
  for (auto pool = segment_pool_.begin(); pool != segment_pool_.end();) {
    std::vector<PooledSegment>& segments = pool->second;
    std::erase_if(segments, [&](const PooledSegment& pooled) {
      if (pooled.process_id[0] != process_id && pooled.process_id[1] != process_id) return false;
      for (const uint32_t end : pooled.process_id) {
        if (end != process_id) --pooled_per_process_[end];
      }
      drop_segment(pooled.held_as, pooled.process_id);  // reaches only the survivor
      return true;
    });
    pool = segments.empty() ? segment_pool_.erase(pool) : std::next(pool);
  }
  pooled_per_process_.erase(process_id);
}

void Monitor::Impl::deliver_event(uint32_t process_id, const Event& event) {
  const bool connect_succeeded =
      event.type == EventType::kReply && event.op == RequestOp::kConnect && event.status == 0;
  const bool carries_connection = connect_succeeded || event.type == EventType::kIncoming;
  Event delivered = event;
  if (event.type == EventType::kIncoming) delivered.request_id = queue_stamp_now();
  if (carries_connection) {
    const auto unbacked = unbacked_connections_.find(event.connection_id);
    if (unbacked != unbacked_connections_.end()) {
      if (event.type == EventType::kIncoming) {
        // The server never hears of it, and the engine forgets it: this is
        // the last event of the engine's connect triple.
        const UnbackedConnection connection = unbacked->second;
        unbacked_connections_.erase(unbacked);
        close_unbacked_connection(event.connection_id, connection);
        return;
      }
      // The client learns of the failure and falls back to the kernel.
      delivered.status = static_cast<int16_t>(-unbacked->second.error);
      delivered.connection_id = 0;
    }
  }
  const auto queue = accept_queues_.find(process_id);
  if (queue != accept_queues_.end()) {
    // Our own listening: replies need nothing, connections join the queue.
    if (event.type == EventType::kIncoming && delivered.status == 0) {
      queue_anchor(queue->second, delivered);
    }
    return;
  }
  const auto found = processes_.find(process_id);
  if (found == processes_.end()) return;  // it died; the engine is told by remove_process
  Process& process = found->second;
  const ConnectionSide side = event.type == EventType::kIncoming ? kServerSide : kClientSide;
  bool needs_delivery = carries_connection && delivered.status == 0;
  if (carries_connection && delivered.status == 0) {
    const auto connection = connections_.find(event.connection_id);
    if (connection != connections_.end()) {
      if (connection->second.reused) {
        delivered.local.reserved |= kEventSegmentReused;
        needs_delivery = false;
      }
      if (event.type == EventType::kIncoming) {
        connection->second.server_address = event.local;
        connection->second.client_address = event.peer;
      }
    }
  }
  process.backlog.push_back(
      PendingEvent{delivered, needs_delivery ? Attachment::kConnection : Attachment::kNone, side});
  // Straight through unless older events are still waiting.
  if (process.backlog.size() == 1) flush_backlog(process);
}

// Closes both ends in the engine as if the processes had; the replies go nowhere.
void Monitor::Impl::close_unbacked_connection(uint64_t connection_id,
                                              const UnbackedConnection& connection) {
  std::vector<EngineOutput> outputs;
  for (const uint32_t process_id : connection.process_id) {
    Request close{};
    close.op = RequestOp::kClose;
    close.connection_id = connection_id;
    engine_->submit(process_id, close, outputs);
  }
  // Outputs only come from a doorbell, which leaves nothing else held back:
  // this returns the closes' outputs alone.
  engine_->flush(outputs);
}

// ---------------------------------------------------------------------------
// Handing on what a closed listener queued
//
// The kernel keeps one queue per listening socket, shared by every process
// that holds it: when one of them closes its descriptor (an nginx worker
// retiring at a reload), the connections queued there go to the others. Our
// queues are per process, so a server end queued for a process that will
// never accept it goes back to the engine, which picks another listener as
// for a new connect by the same client. The client keeps its end untouched.

namespace {

// A copy of `fd` for a second owner; invalid if the process is out of fds.
UniqueFd duplicate_fd(int fd) {
  return UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0));
}

}  // namespace

// `process_id` closed the listener `connection_id` was queued for.
void Monitor::Impl::requeue(uint32_t process_id, uint64_t connection_id) {
  const auto found = connections_.find(connection_id);
  if (found == connections_.end()) return;
  Connection& connection = found->second;
  if (connection.process_id[kServerSide] != process_id) return;  // not its to give
  HandOff hand_off = detach_server_end(connection);
  // The engine forgets the old server end (which may release the connection:
  // `connection` is not used after this). A process connected to itself
  // closes its client end in the engine's books instead, which comes to the
  // same: both ends are its own.
  Request close{};
  close.op = RequestOp::kClose;
  close.connection_id = connection_id;
  submit_on_behalf(process_id, close);
  hand_on_server_end(std::move(hand_off));
}

// The server end leaves its process: the segment is copied for the next one,
// and the old owner's death no longer concerns it.
Monitor::Impl::HandOff Monitor::Impl::detach_server_end(Connection& connection) {
  HandOff hand_off{
      {}, connection.process_id[kClientSide], connection.server_address, connection.client_address};
  Segment& segment = hand_off.segment;
  segment.memory = duplicate_fd(connection.segment.memory.get());
  for (const ConnectionSide side : {kClientSide, kServerSide})
    segment.wake[side] = duplicate_fd(connection.segment.wake[side].get());
  segment.offset = connection.segment.offset;
  segment.bytes = connection.segment.bytes;
  segment.header_connection_id = connection.segment.header_connection_id;
  connection.handed_on = true;
  connection.process_id[kServerSide] = 0;
  return hand_off;
}

void Monitor::Impl::hand_on_server_end(HandOff hand_off) {
  const Segment& segment = hand_off.segment;
  const bool copied = segment.memory && segment.wake[kClientSide] && segment.wake[kServerSide];
  if (!copied) log_error("cannot hand on a queued connection", errno);
  if (!copied || !processes_.contains(hand_off.client)) return reset_server_end(segment);
  Request connect{};
  connect.op = RequestOp::kConnect;
  // The client reached this destination once already.
  connect.flags = kRequestDestinationLocal;
  connect.address = hand_off.destination;
  connect.address.reserved = 0;
  connect.source = hand_off.client_address;
  connect.source.reserved = 0;
  connect.request_id = kMonitorRequestBit | (next_own_request_++ & ~kMonitorRequestBit);
  const uint32_t client = hand_off.client;
  hand_offs_.emplace(connect.request_id, std::move(hand_off));
  submit_on_behalf(client, connect);
}

void Monitor::Impl::submit_on_behalf(uint32_t process_id, Request& request) {
  if ((request.request_id & kMonitorRequestBit) == 0)
    request.request_id = kMonitorRequestBit | (next_own_request_++ & ~kMonitorRequestBit);
  outputs_.clear();
  engine_->submit(process_id, request, outputs_);
  handle_outputs();
}

// The engine made connection `created` for a hand-off: it gets the handed-on
// segment rather than a new one. Its reply follows among the same outputs.
bool Monitor::Impl::take_hand_off(const std::vector<EngineOutput>& outputs, std::size_t created) {
  const uint64_t connection_id = outputs[created].event.connection_id;
  for (std::size_t i = created + 1; i < outputs.size(); ++i) {
    const Event& event = outputs[i].event;
    if (outputs[i].notice != EngineNotice::kDeliver || event.type != EventType::kReply ||
        event.connection_id != connection_id) {
      continue;
    }
    const auto found = hand_offs_.find(event.request_id);
    if (found == hand_offs_.end()) return false;
    Connection connection{};
    connection.segment = std::move(found->second.segment);
    connection.process_id[kClientSide] = outputs[created].destination;
    connection.process_id[kServerSide] = outputs[created].peer_process;
    connection.reused = false;
    connection.handed_on = true;
    connections_.emplace(connection_id, std::move(connection));
    return true;
  }
  return false;
}

// Our connect's reply: the new server's kIncoming follows; the client keeps
// the end it has, so the engine's copy of it closes at once.
void Monitor::Impl::finish_hand_off(const Event& reply) {
  if (reply.op != RequestOp::kConnect) return;  // our closes need nothing more
  const auto found = hand_offs_.find(reply.request_id);
  if (found == hand_offs_.end()) return;
  HandOff hand_off = std::move(found->second);
  hand_offs_.erase(found);
  // No other process listens there: a reset, as a kernel listener's last
  // close gives its queue.
  if (reply.status != 0) return reset_server_end(hand_off.segment);
  ++connections_handed_on_;
  Request close{};
  close.op = RequestOp::kClose;
  close.connection_id = reply.connection_id;
  submit_on_behalf(hand_off.client, close);
}

void Monitor::Impl::reset_server_end(const Segment& segment) {
  if (!segment.memory) return;
  const SharedMapping mapping = map_shared(segment.memory.get(), segment.bytes, segment.offset);
  if (!mapping) return log_error("cannot map connection memory", errno);
  auto* base = static_cast<unsigned char*>(mapping.get());
  if (!release_dead_owner_share(base, kServerSide)) return;
  abort_segment_end(base, kServerSide);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  signal_wake_fd(segment.wake[kClientSide].get());
}

int Monitor::Impl::send_delivery(Process& process, const PendingEvent& pending) {
  const auto found = connections_.find(pending.event.connection_id);
  if (found == connections_.end()) return -ENOENT;
  const Segment& segment = found->second.segment;
  const FdDelivery delivery{kProtocolMagic, pending.side,   pending.event.connection_id,
                            segment.bytes,  segment.offset, segment.header_connection_id};
  const int fds[3] = {segment.memory.get(), segment.wake[pending.side].get(),
                      segment.wake[other_side(pending.side)].get()};
  return send_with_fds(process.socket.get(), &delivery, sizeof delivery, fds, 3);
}

// A dead end can neither read nor write again: its peer's reads end (EOF
// after the data, ECONNRESET by `aborted`) and its writes fail.
void Monitor::Impl::abandon_endpoint(const EngineOutput& output) {
  const auto found = connections_.find(output.event.connection_id);
  if (found == connections_.end()) return;
  Connection& connection = found->second;
  const SharedMapping mapping = map_shared(connection.segment.memory.get(),
                                           connection.segment.bytes, connection.segment.offset);
  if (!mapping) {
    log_error("cannot map connection memory", errno);
    return;
  }
  auto* segment = static_cast<unsigned char*>(mapping.get());
  const auto* header = reinterpret_cast<const ConnectionSegmentHeader*>(segment);
  for (const ConnectionSide dead : {kClientSide, kServerSide}) {
    if (connection.process_id[dead] != output.destination || connection.abandoned[dead]) continue;
    connection.abandoned[dead] = true;
    // Queued for a process that died before accepting it (or exited with
    // its event queue unread): another listener takes it.
    if (dead == kServerSide && header->accepted.load(std::memory_order_acquire) == 0 &&
        processes_.contains(connection.process_id[kClientSide])) {
      return hand_on_server_end(detach_server_end(connection));
    }
    if (release_dead_owner_share(segment, dead)) {
      abort_segment_end(segment, dead);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      signal_wake_fd(connection.segment.wake[other_side(dead)].get());
    }
    return;
  }
}

// ---------------------------------------------------------------------------
// Channels

namespace {

// A client holds one channel per process listening at a destination, and
// spreads its connects over them as the engine spreads over the listeners.
std::string client_channel_key(uint32_t client, const InetAddress& destination, uint32_t server) {
  std::string key;
  key.append(reinterpret_cast<const char*>(&client), sizeof client);
  key.append(reinterpret_cast<const char*>(destination.bytes), sizeof destination.bytes);
  key.append(reinterpret_cast<const char*>(&destination.port), sizeof destination.port);
  key.append(reinterpret_cast<const char*>(&server), sizeof server);
  return key;
}

}  // namespace

// A connect the engine accepted proves the client may reach that listener;
// the channel lets its next connects to the same destination skip us.
void Monitor::Impl::open_channel_after_connect(uint32_t client, const Request& request) {
  uint32_t server = 0;
  uint64_t listener_id = 0;
  InetAddress client_address{};
  for (const EngineOutput& output : outputs_) {
    if (output.notice == EngineNotice::kConnectionCreated) server = output.peer_process;
    if (output.notice != EngineNotice::kDeliver) continue;
    if (output.event.type == EventType::kIncoming) listener_id = output.event.socket_id;
    if (output.event.type == EventType::kReply) client_address = output.event.local;
  }
  if (server == 0 || listener_id == 0 || !processes_.contains(server)) return;
  std::string key = client_channel_key(client, request.address, server);
  if (channel_by_client_.contains(key)) return;
  std::size_t as_client = 0;
  std::size_t as_server = 0;
  for (const auto& [id, channel] : channels_) {
    if (channel.retired) continue;
    as_client += channel.process_id[kClientSide] == client;
    as_server += channel.process_id[kServerSide] == server;
  }
  if (as_client >= kChannelsPerProcessRole || as_server >= kChannelsPerProcessRole) return;

  Channel channel;
  const int memory = create_sealed_memory("netaccel-channel", channel_bytes_);
  if (memory < 0) return log_error("cannot create channel memory", -memory);
  channel.memory.reset(memory);
  channel.mapping = map_shared(memory, channel_bytes_);
  if (!channel.mapping) return log_error("cannot map channel memory", errno);
  for (uint32_t i = 0; i < 2 * kChannelSlots; ++i) {
    const int wake = create_wake_fd();
    if (wake < 0) return log_error("cannot create channel eventfds", -wake);
    channel.wake.emplace_back(wake);
  }
  const uint64_t channel_id = next_channel_id_++;
  auto* header = new (channel.mapping.get()) ChannelHeader{};
  header->magic = kChannelMagic;
  header->version = kChannelVersion;
  header->channel_id = channel_id;
  header->slot_count = kChannelSlots;
  header->queue_offset = static_cast<uint32_t>(channel_queue_offset());
  header->slot_offset = static_cast<uint32_t>(channel_slot_offset());
  header->slot_bytes = static_cast<uint32_t>(channel_slot_stride(options_.ring_bytes));
  header->ring_capacity = options_.ring_bytes;
  // Until the server adopts the channel it cannot announce anything: clients
  // wake it for every connection meanwhile.
  header->acceptor_sleeping.store(1, std::memory_order_relaxed);
  descriptor_ring_init(static_cast<unsigned char*>(channel.mapping.get()) + header->queue_offset,
                       kChannelQueueSlots);
  // Release: the layout is complete before either process can map it.
  std::atomic_thread_fence(std::memory_order_release);
  channel.process_id[kClientSide] = client;
  channel.process_id[kServerSide] = server;
  channel.listener_id = listener_id;
  channel.destination = request.address;
  channel.client_key = key;

  Event opened{};
  opened.type = EventType::kChannelOpened;
  opened.connection_id = channel_id;
  opened.socket_id = listener_id;
  processes_.at(server).backlog.push_back(PendingEvent{opened, Attachment::kChannel, kServerSide});
  opened.socket_id = 0;
  opened.local = client_address;
  opened.local.reserved = 0;
  opened.peer = request.address;
  processes_.at(client).backlog.push_back(PendingEvent{opened, Attachment::kChannel, kClientSide});
  channel_by_client_.emplace(std::move(key), channel_id);
  channels_.emplace(channel_id, std::move(channel));
  for (const uint32_t end : {server, client}) flush_backlog(processes_.at(end));
}

int Monitor::Impl::send_channel(Process& process, const PendingEvent& pending) {
  const auto found = channels_.find(pending.event.connection_id);
  if (found == channels_.end()) return -ENOENT;
  const Channel& channel = found->second;
  const ChannelDelivery delivery{kProtocolMagic, pending.side, pending.event.connection_id,
                                 channel_bytes_};
  std::vector<int> fds{channel.memory.get()};
  for (const UniqueFd& wake : channel.wake) fds.push_back(wake.get());
  if (pending.side == kClientSide) {
    const auto server = processes_.find(channel.process_id[kServerSide]);
    if (server == processes_.end()) return -ENOENT;
    fds.push_back(server->second.wake.get());
  }
  return send_with_fds(process.socket.get(), &delivery, sizeof delivery, fds.data(), fds.size());
}

// No new connections from now on. `queue_is_ours` when the server can no
// longer consume its accept queue (it closed the listener, or died): what is
// still queued goes to another listener (drain_channel_queue). The ends of
// `dead_process`, if it is one of the two, are aborted.
void Monitor::Impl::close_channel(uint64_t channel_id, bool queue_is_ours, uint32_t dead_process) {
  const auto found = channels_.find(channel_id);
  if (found == channels_.end()) return;
  Channel& channel = found->second;
  ChannelHeader* header = channel.header();
  if (!channel.retired) {
    header->closed.store(1, std::memory_order_relaxed);
    // Pairs with the client's fence between pushing and reading `closed`:
    // either it sees the flag and cancels its entry, or the drain sees it.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    channel.retired = true;
    channel_by_client_.erase(channel.client_key);
  }
  if (queue_is_ours) drain_channel_queue(channel);
  for (const ConnectionSide side : {kClientSide, kServerSide}) {
    if (dead_process != 0 && channel.process_id[side] == dead_process)
      abort_channel_ends(channel, side);
  }
  forget_retired_channels();
}

// A retired channel goes when no slot is in use, or when neither of its
// processes is left to hear of the other's death.
void Monitor::Impl::forget_retired_channels() {
  std::erase_if(channels_, [&](const auto& entry) {
    const Channel& channel = entry.second;
    if (!channel.retired) return false;
    bool in_use = false;
    for (const std::atomic<uint32_t>& state : channel.header()->slot_state)
      in_use |= state.load(std::memory_order_acquire) != 0;
    if (in_use && (processes_.contains(channel.process_id[kClientSide]) ||
                   processes_.contains(channel.process_id[kServerSide]))) {
      return false;
    }
    direct_connections_of_closed_channels_ +=
        channel.header()->connections_total.load(std::memory_order_relaxed);
    return true;
  });
}

void Monitor::Impl::drain_channel_queue(Channel& channel) {
  ChannelHeader* header = channel.header();
  auto* base = static_cast<unsigned char*>(channel.mapping.get());
  DescriptorRing<Event> queue(base + channel_queue_offset());
  Event entry;
  while (queue.try_pop(entry)) {
    const uint32_t slot = entry.request_id;
    if (slot >= kChannelSlots) continue;  // garbage from the client
    const uint32_t before = header->slot_state[slot].fetch_and(~static_cast<uint32_t>(kSlotQueued),
                                                               std::memory_order_acq_rel);
    if ((before & kSlotQueued) == 0) continue;  // the client cancelled it
    // Never accepted: it leaves this channel's server for another listener.
    HandOff hand_off{{}, channel.process_id[kClientSide], channel.destination, entry.peer};
    Segment& segment = hand_off.segment;
    segment.memory = duplicate_fd(channel.memory.get());
    for (const ConnectionSide side : {kClientSide, kServerSide})
      segment.wake[side] = duplicate_fd(channel.wake[slot * 2 + side].get());
    segment.bytes = channel_slot_stride(options_.ring_bytes);
    segment.offset = channel_slot_offset() + slot * segment.bytes;
    segment.header_connection_id =
        reinterpret_cast<const ConnectionSegmentHeader*>(base + segment.offset)->connection_id;
    header->slot_state[slot].fetch_and(~static_cast<uint32_t>(kSlotServerOpen),
                                       std::memory_order_acq_rel);
    hand_on_server_end(std::move(hand_off));
  }
}

void Monitor::Impl::abort_channel_ends(Channel& channel, ConnectionSide dead) {
  for (uint32_t slot = 0; slot < kChannelSlots; ++slot) abort_slot_end(channel, slot, dead);
}

// The `dead` end of a slot, if it is open: the peer reads EOF after the
// data, then ECONNRESET; its writes fail. The slot frees when the peer closes.
void Monitor::Impl::abort_slot_end(Channel& channel, uint32_t slot, ConnectionSide dead) {
  std::atomic<uint32_t>& state = channel.header()->slot_state[slot];
  const uint32_t dead_bit = dead == kClientSide ? kSlotClientOpen : kSlotServerOpen;
  if ((state.load(std::memory_order_acquire) & dead_bit) == 0) return;
  // Offsets from our own layout, never from what the processes wrote.
  unsigned char* segment = static_cast<unsigned char*>(channel.mapping.get()) +
                           channel_slot_offset() + slot * channel_slot_stride(options_.ring_bytes);
  if (!release_dead_owner_share(segment, dead)) return;
  abort_segment_end(segment, dead);
  state.fetch_and(~dead_bit, std::memory_order_acq_rel);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  signal_wake_fd(channel.wake[slot * 2 + other_side(dead)].get());
}

// Marks `dead`'s end of a segment laid out by layout_connection_segment.
void Monitor::Impl::abort_segment_end(unsigned char* segment, ConnectionSide dead) const {
  auto* header = reinterpret_cast<ConnectionSegmentHeader*>(segment);
  auto ring = [&](ConnectionSide side) {
    const std::size_t offset = sizeof(ConnectionSegmentHeader) +
                               (side == kClientSide ? 0 : byte_ring_footprint(options_.ring_bytes));
    return reinterpret_cast<ByteRingControl*>(segment + offset);
  };
  // Release: a peer that sees a flag also sees everything written before it.
  header->aborted[dead].store(1, std::memory_order_release);
  ring(dead)->writer_closed.store(1, std::memory_order_release);
  ring(other_side(dead))->reader_closed.store(1, std::memory_order_release);
}

void Monitor::Impl::close_channels_of_listener(uint32_t process_id, uint64_t listener_id,
                                               bool hand_on_queued) {
  std::vector<uint64_t> closing;
  for (const auto& [id, channel] : channels_) {
    if (channel.process_id[kServerSide] == process_id && channel.listener_id == listener_id) {
      closing.push_back(id);
    }
  }
  for (const uint64_t id : closing) close_channel(id, hand_on_queued);
}

// A process could not take the channel: nobody would consume its queue.
void Monitor::Impl::close_channel_of(uint32_t process_id, uint64_t channel_id) {
  const auto found = channels_.find(channel_id);
  if (found == channels_.end()) return;
  const uint32_t* ends = found->second.process_id;
  if (ends[kClientSide] != process_id && ends[kServerSide] != process_id) return;
  close_channel(channel_id, ends[kServerSide] == process_id);
}

void Monitor::Impl::close_channels_of_process(uint32_t process_id) {
  std::vector<uint64_t> closing;
  for (const auto& [id, channel] : channels_) {
    if (channel.process_id[kClientSide] == process_id ||
        channel.process_id[kServerSide] == process_id) {
      closing.push_back(id);
    }
  }
  for (const uint64_t id : closing) {
    const auto found = channels_.find(id);  // closing one may forget others
    if (found == channels_.end()) continue;
    close_channel(id, found->second.process_id[kServerSide] == process_id, process_id);
  }
}

std::size_t Monitor::Impl::channels_open() const {
  return static_cast<std::size_t>(std::count_if(
      channels_.begin(), channels_.end(), [](const auto& entry) { return !entry.second.retired; }));
}

uint64_t Monitor::Impl::direct_connections_total() const {
  uint64_t total = direct_connections_of_closed_channels_;
  for (const auto& [id, channel] : channels_) {
    total += channel.header()->connections_total.load(std::memory_order_relaxed);
  }
  return total;
}

// ---------------------------------------------------------------------------
// Accept queues (protocol.h)

namespace {

// Qb as a process sent it: a SOCK_SEQPACKET unix socket, or nothing we use.
bool is_seqpacket_unix_socket(int fd) {
  int domain = 0;
  int type = 0;
  socklen_t length = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) != 0) return false;
  length = sizeof type;
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 && domain == AF_UNIX &&
         type == SOCK_SEQPACKET;
}

}  // namespace

void Monitor::Impl::open_accept_queue(uint32_t process_id, const AcceptQueueMessage& message,
                                      UniqueFd queue) {
  const auto process = processes_.find(process_id);
  // One queue per socket: its holders already share the first.
  if (process == processes_.end() || !queue || message.cookie == 0 ||
      accept_queue_of_cookie_.contains(message.cookie) || next_process_id_ == 0 ||
      accept_queues_.size() >= kMaxAcceptQueues || !is_seqpacket_unix_socket(queue.get()) ||
      fcntl(queue.get(), F_SETFL, fcntl(queue.get(), F_GETFL) | O_NONBLOCK) != 0) {
    return;
  }
  AcceptQueue accept_queue;
  accept_queue.engine_process = next_process_id_++;
  accept_queue.cookie = message.cookie;
  // The engine checks the address as it checks any process's listen.
  accept_queue.listen.op = RequestOp::kListen;
  accept_queue.listen.flags = message.flags & kRequestV6Only;
  accept_queue.listen.backlog = message.backlog;
  accept_queue.listen.socket_id = message.cookie;
  accept_queue.listen.address = message.address;
  accept_queue.queue = std::move(queue);
  watch(accept_queue.queue.get(), Source::kAcceptQueue, accept_queue.engine_process,
        EPOLLIN | EPOLLRDHUP);
  engine_->add_process(accept_queue.engine_process, process->second.netns_id);
  accept_queue_of_cookie_.emplace(message.cookie, accept_queue.engine_process);
  accept_queues_.emplace(accept_queue.engine_process, std::move(accept_queue));
  update_accept_queue(message.cookie);
}

// The message with Qb came just before the request: take it, then say
// whether the socket has its queue now.
void Monitor::Impl::share_listener(uint32_t process_id, const Request& request) {
  const auto process = processes_.find(process_id);
  if (process == processes_.end()) return;
  take_process_messages(process_id, process->second.socket.get());
  Event reply{};
  reply.type = EventType::kReply;
  reply.op = request.op;
  reply.request_id = request.request_id;
  reply.socket_id = request.socket_id;
  reply.connection_id = request.connection_id;
  reply.status = accept_queue_of_cookie_.contains(request.connection_id) ? 0 : -EINVAL;
  deliver_event(process_id, reply);
}

// Which announced listeners are copies of which socket: its queue takes
// connections only while none is.
void Monitor::Impl::note_announcement(uint32_t process_id, const Request& request) {
  const std::pair<uint32_t, uint64_t> listener{process_id, request.socket_id};
  if (request.op == RequestOp::kListen && request.connection_id != 0 &&
      announced_cookies_.emplace(listener, request.connection_id).second) {
    update_accept_queue(request.connection_id);
  } else if (request.op == RequestOp::kUnlisten) {
    const auto found = announced_cookies_.find(listener);
    if (found == announced_cookies_.end()) return;
    const uint64_t cookie = found->second;
    announced_cookies_.erase(found);
    update_accept_queue(cookie);
  }
}

void Monitor::Impl::forget_announcements_of(uint32_t process_id) {
  std::vector<uint64_t> socket_ids;
  for (auto it = announced_cookies_.lower_bound({process_id, 0});
       it != announced_cookies_.end() && it->first.first == process_id; ++it) {
    socket_ids.push_back(it->first.second);
  }
  for (const uint64_t socket_id : socket_ids) {
    Request unlisten{};
    unlisten.op = RequestOp::kUnlisten;
    unlisten.socket_id = socket_id;
    note_announcement(process_id, unlisten);
  }
}

void Monitor::Impl::update_accept_queue(uint64_t cookie) {
  const auto engine_process = accept_queue_of_cookie_.find(cookie);
  if (engine_process == accept_queue_of_cookie_.end()) return;
  AcceptQueue& queue = accept_queues_.at(engine_process->second);
  const bool listen = std::none_of(announced_cookies_.begin(), announced_cookies_.end(),
                                   [cookie](const auto& entry) { return entry.second == cookie; });
  if (listen == queue.listening) return;
  queue.listening = listen;
  queue.listening_until = Clock::now() + kAcceptQueueWindow;
  Request request = queue.listen;
  if (!listen) {
    request = Request{};
    request.op = RequestOp::kUnlisten;
    request.socket_id = queue.listen.socket_id;
  }
  submit_on_behalf(queue.engine_process, request);
}

// A connection for a socket none of whose holders is announced: an anchor
// on the queue, which whichever holder waits first adopts.
void Monitor::Impl::queue_anchor(AcceptQueue& queue, const Event& incoming) {
  const auto found = connections_.find(incoming.connection_id);
  if (found == connections_.end()) return;
  Connection& connection = found->second;
  connection.handed_on = true;  // never pooled: the holder is no process of ours
  const Segment& segment = connection.segment;
  AnchorMessage message{};
  message.magic = kAnchorMagic;
  message.version = kAnchorVersion;
  message.connection_id = segment.header_connection_id;
  message.segment_offset = segment.offset;
  message.segment_bytes = segment.bytes;
  message.channel_slot = kAnchorNoSlot;
  message.side = kServerSide;
  message.domain = incoming.local.family;
  message.local = incoming.local;
  message.local.reserved = 0;
  message.peer = incoming.peer;
  const AcceptQueueEntry entry{kAcceptQueueMagic, incoming.request_id};
  // Everything the keeper needs first: once A is on the queue, B must reach it.
  UniqueFd memory = duplicate_fd(segment.memory.get());
  UniqueFd client_wake = duplicate_fd(segment.wake[kClientSide].get());
  int pair[2];
  bool queued =
      memory && client_wake && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0;
  const UniqueFd anchor(queued ? pair[0] : -1);
  UniqueFd keeper_end(queued ? pair[1] : -1);
  const int carried[3] = {segment.memory.get(), segment.wake[kServerSide].get(),
                          segment.wake[kClientSide].get()};
  queued = queued && send_with_fds(keeper_end.get(), &message, sizeof message, carried, 3) == 0;
  const int entry_fds[1] = {anchor.get()};
  queued = queued && send_with_fds(queue.queue.get(), &entry, sizeof entry, entry_fds, 1) == 0;
  if (queued) {
    int watched[kAnchorWatchFds] = {keeper_end.release(), memory.release(), client_wake.release()};
    anchor_keeper_.watch(message, sizeof message, watched, kAnchorWatchFds);
  } else {
    // A full queue, as the kernel's full backlog: the client's connect fails late.
    log_error("cannot queue a connection on an accept queue", errno);
    reset_server_end(segment);
  }
  // The server end is the anchor's from here on (or reset): ours closes in
  // the engine, so that the queue's end never aborts it.
  Request close{};
  close.op = RequestOp::kClose;
  close.connection_id = incoming.connection_id;
  submit_on_behalf(queue.engine_process, close);
}

// Entries a holder gave back (it closed its listener unaccepted) queue
// again; the last Qa's close ends the queue.
void Monitor::Impl::on_accept_queue(uint32_t engine_process, uint32_t events) {
  const auto found = accept_queues_.find(engine_process);
  if (found == accept_queues_.end()) return;
  const int queue = found->second.queue.get();
  for (;;) {
    AcceptQueueEntry entry{};
    int fds[1];
    std::size_t fd_count = 0;
    const ssize_t received = receive_with_fds(queue, &entry, sizeof entry, fds, 1, &fd_count);
    if (received == -EAGAIN && (events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) == 0) return;
    if (received <= 0) break;  // every Qa closed
    const UniqueFd anchor(fd_count == 1 ? fds[0] : -1);
    if (received != sizeof entry || entry.magic != kAcceptQueueMagic || !anchor) continue;
    const int entry_fds[1] = {anchor.get()};
    send_with_fds(queue, &entry, sizeof entry, entry_fds, 1);
  }
  close_accept_queue(engine_process);
}

void Monitor::Impl::expire_accept_queues() {
  const Clock::time_point now = Clock::now();
  for (auto& [engine_process, queue] : accept_queues_) {
    if (!queue.listening || now < queue.listening_until) continue;
    queue.listening = false;
    Request unlisten{};
    unlisten.op = RequestOp::kUnlisten;
    unlisten.socket_id = queue.listen.socket_id;
    submit_on_behalf(engine_process, unlisten);
  }
}

// How long a sleep may last before a queue's window closes; -1: forever.
int Monitor::Impl::accept_queue_expiry_ms() const {
  int soonest = -1;
  const Clock::time_point now = Clock::now();
  for (const auto& [engine_process, queue] : accept_queues_) {
    if (!queue.listening) continue;
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(queue.listening_until - now).count();
    const int ms = static_cast<int>(std::max<int64_t>(left, 0));
    if (soonest < 0 || ms < soonest) soonest = ms;
  }
  return soonest;
}

void Monitor::Impl::close_accept_queue(uint32_t engine_process) {
  const auto found = accept_queues_.find(engine_process);
  if (found == accept_queues_.end()) return;
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, found->second.queue.get(), nullptr);
  accept_queue_of_cookie_.erase(found->second.cookie);
  accept_queues_.erase(found);
  // Its listener goes; the ends it had are the anchors' already.
  outputs_.clear();
  engine_->remove_process(engine_process, outputs_);
  handle_outputs();
}

// ---------------------------------------------------------------------------

Monitor::Monitor(MonitorOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Monitor::~Monitor() = default;
void Monitor::run() {
  impl_->run();
}
void Monitor::request_stop() {
  impl_->request_stop();
}
const std::string& Monitor::socket_path() const {
  return impl_->socket_path();
}
std::string_view Monitor::engine_name() const {
  return impl_->engine_name();
}

}  // namespace netaccel

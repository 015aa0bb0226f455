// The monitor's insides, shared by the files that implement it along its
// concerns: monitor.cc (main loop, registration, status, process death,
// containers and policy), monitor_connections.cc (engine outputs, segments,
// hand-offs), monitor_channels.cc and monitor_accept_queues.cc.
#pragma once

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
#include "container_registry.h"
#include "netaccel/log.h"
#include "netaccel/monitor.h"
#include "netaccel/shm.h"

namespace netaccel {
namespace monitor_detail {

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

[[noreturn]] inline void throw_errno(int error, const std::string& what) {
  throw std::system_error(error, std::generic_category(), what);
}

inline void log_error(const char* what, int error) {
  log_line("monitor", "error", std::string(what) + ": " + std::strerror(error));
}

inline std::size_t page_round_up(std::size_t bytes) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

// A memfd its users cannot resize: the monitor maps process-held memory, and
// a mapping whose file was truncated under it would SIGBUS the monitor.
inline int create_sealed_memory(const char* name, std::size_t bytes) {
  UniqueFd fd(memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return -errno;
  if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0 ||
      fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return -errno;
  }
  return fd.release();
}

inline sockaddr_un unix_address(const std::string& path) {
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
  kContainers = 6,
};
inline uint64_t tag(Source source, uint32_t id) {
  return static_cast<uint64_t>(source) << 32 | id;
}

inline uint64_t pair_key(uint32_t a, uint32_t b) {
  return a < b ? static_cast<uint64_t>(a) << 32 | b : static_cast<uint64_t>(b) << 32 | a;
}

inline ConnectionSide other_side(ConnectionSide side) {
  return side == kClientSide ? kServerSide : kClientSide;
}

// The owner of `dead`'s end died: true when that ends the end. A process it
// forked may still hold it, or the owner had let go of its share already.
inline bool release_dead_owner_share(unsigned char* segment, ConnectionSide dead) {
  auto* header = reinterpret_cast<ConnectionSegmentHeader*>(segment);
  if (header->owner_left[dead].load(std::memory_order_acquire) != 0) return false;
  return release_last_holder(header->holders[dead]);
}

// A copy of `fd` for a second owner; invalid if the process is out of fds.
inline UniqueFd duplicate_fd(int fd) {
  return UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0));
}

}  // namespace monitor_detail

using namespace monitor_detail;

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
  // A listening socket as processes name it: socket cookies are host-wide
  // and guessable (they count up), so each is scoped by the network
  // namespace of the process that names it: a process of another container
  // cannot reach a queue by a cookie it guessed.
  using ListenerCookie = std::pair<uint64_t, uint64_t>;  // netns, cookie

  struct AcceptQueue {
    UniqueFd queue;
    uint32_t engine_process = 0;
    ListenerCookie cookie{};
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
  void answer_policy_request(int socket, const unsigned char* message, std::size_t length);
  void on_containers_changed();
  void close_separated_channels();
  void on_process_socket(uint32_t process_id, uint32_t events);
  bool take_process_messages(uint32_t process_id, int socket);
  void remove_process(uint32_t process_id);

  void open_accept_queue(uint32_t process_id, const AcceptQueueMessage& message, UniqueFd queue);
  void share_listener(uint32_t process_id, const Request& request);
  void note_announcement(uint32_t process_id, const Request& request);
  void forget_announcements_of(uint32_t process_id);
  void update_accept_queue(const ListenerCookie& cookie);
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
  ContainerRegistry containers_;
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
  std::map<ListenerCookie, uint32_t> accept_queue_of_cookie_;
  // Announced listeners that are copies of a socket with a cookie:
  // (process, socket id) -> cookie.
  std::map<std::pair<uint32_t, uint64_t>, ListenerCookie> announced_cookies_;
};

}  // namespace netaccel

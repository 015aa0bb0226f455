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
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

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

// Only an eventfd may serve as a wake fd: the monitor writes to it.
bool is_eventfd(int fd) {
  char link[64];
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t length = readlink(path.c_str(), link, sizeof link - 1);
  if (length < 0) return false;
  link[length] = '\0';
  return std::strcmp(link, "anon_inode:[eventfd]") == 0;
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
enum class Source : uint64_t { kListener = 1, kDoorbell = 2, kNewcomer = 3, kProcess = 4 };
uint64_t tag(Source source, uint32_t id) {
  return static_cast<uint64_t>(source) << 32 | id;
}

uint64_t pair_key(uint32_t a, uint32_t b) {
  return a < b ? static_cast<uint64_t>(a) << 32 | b : static_cast<uint64_t>(b) << 32 | a;
}

ConnectionSide other_side(ConnectionSide side) {
  return side == kClientSide ? kServerSide : kClientSide;
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
  // one that carries a connection first needs its FdDelivery sent.
  struct PendingEvent {
    Event event;
    bool delivery_pending;
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
  };

  // A connection's shared memory and its two ends' eventfds.
  struct Segment {
    UniqueFd memory;
    UniqueFd wake[2];  // one eventfd per connection end, by ConnectionSide
  };

  struct Connection {
    Segment segment;
    uint32_t process_id[2];  // by ConnectionSide
    bool reused;             // both ends already hold the segment: no fd delivery
  };

  // A released segment both processes keep cached under `held_as`, the
  // connection id its header still bears.
  struct PooledSegment {
    Segment segment;
    uint64_t held_as;
    uint32_t process_id[2];
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
  void remove_process(uint32_t process_id);

  void handle_outputs();
  void create_connection(const EngineOutput& output);
  void deliver_event(uint32_t process_id, const Event& event);
  int send_delivery(Process& process, const PendingEvent& pending);
  void abandon_endpoint(const EngineOutput& output);
  void release_connection(uint64_t connection_id);
  void drop_segment(uint64_t held_as, const uint32_t (&process_id)[2]);
  void drop_pooled_segments_of(uint32_t process_id);
  bool take_pooled_segment(uint32_t client, uint32_t server, Segment& segment);
  void layout_segment(int memory, uint64_t connection_id);
  struct UnbackedConnection {
    int error;
    uint32_t process_id[2];
  };
  void close_unbacked_connection(uint64_t connection_id, const UnbackedConnection& connection);

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
};

Monitor::Impl::Impl(MonitorOptions options)
    : options_(std::move(options)), engine_(make_engine(options_.engine, options_.fpga_sim)) {
  const uint32_t ring_bytes = options_.ring_bytes;
  if (ring_bytes < kMinRingBytes || ring_bytes > kMaxRingBytes ||
      (ring_bytes & (ring_bytes - 1)) != 0) {
    throw std::invalid_argument("ring bytes must be a power of two between 4096 and 2^30");
  }
  segment_bytes_ = connection_segment_bytes(ring_bytes);
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
      outputs_.clear();
      engine_->submit(process_id, request, outputs_);
      handle_outputs();
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
    if (pending.delivery_pending) {
      const int sent = send_delivery(process, pending);
      if (sent == -EAGAIN || sent == -ENOBUFS || sent == -ETOOMANYREFS) break;  // retry later
      progress = true;
      if (sent < 0) {
        // The process is going away (its hang-up is on the way to epoll), or
        // the connection is; an event without its fds would only confuse it.
        process.backlog.pop_front();
        continue;
      }
      pending.delivery_pending = false;
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
    // backlog is retried on a timer.
    poll_sockets(any_backlog() ? kBacklogRetryMs : -1);
  }
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
  char json[512];
  const int length = std::snprintf(
      json, sizeof json,
      "{\"engine\":\"%.*s\",\"processes\":%llu,\"listeners\":%llu,\"connections_open\":%llu,"
      "\"connections_total\":%llu,\"requests\":%llu,\"rejected_requests\":%llu,"
      "\"ring_bytes\":%u,\"segments_created\":%llu,\"segments_reused\":%llu}",
      static_cast<int>(engine_name().size()), engine_name().data(),
      static_cast<unsigned long long>(counters.processes),
      static_cast<unsigned long long>(counters.listeners),
      static_cast<unsigned long long>(counters.connections_open),
      static_cast<unsigned long long>(counters.connections_total),
      static_cast<unsigned long long>(counters.requests),
      static_cast<unsigned long long>(counters.rejected_requests), options_.ring_bytes,
      static_cast<unsigned long long>(segments_created_),
      static_cast<unsigned long long>(segments_reused_));
  if (length > 0) send(socket, json, static_cast<std::size_t>(length), MSG_NOSIGNAL);
}

void Monitor::Impl::on_process_socket(uint32_t process_id, uint32_t events) {
  const auto found = processes_.find(process_id);
  if (found == processes_.end()) return;
  if ((events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) == 0) {
    // Processes send nothing after registering; read what they do to find
    // out whether they are still there.
    char ignored[64];
    const ssize_t received = recv(found->second.socket.get(), ignored, sizeof ignored, 0);
    if (received > 0 || (received < 0 && (errno == EAGAIN || errno == EINTR))) return;
  }
  remove_process(process_id);
}

void Monitor::Impl::remove_process(uint32_t process_id) {
  const auto found = processes_.find(process_id);
  if (found == processes_.end()) return;
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, found->second.socket.get(), nullptr);
  processes_.erase(found);  // first: nothing more is delivered to it
  outputs_.clear();
  engine_->remove_process(process_id, outputs_);
  handle_outputs();
  drop_pooled_segments_of(process_id);
}

// ---------------------------------------------------------------------------
// Engine outputs

void Monitor::Impl::handle_outputs() {
  for (const EngineOutput& output : outputs_) {
    switch (output.notice) {
      case EngineNotice::kDeliver:
        deliver_event(output.destination, output.event);
        break;
      case EngineNotice::kConnectionCreated:
        create_connection(output);
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
  auto* base = static_cast<unsigned char*>(mapping.get());
  const uint32_t ring_bytes = options_.ring_bytes;
  auto* header = new (base) ConnectionSegmentHeader{};
  header->magic = kSegmentMagic;
  header->version = kSegmentVersion;
  header->connection_id = connection_id;
  header->ring_offset[kClientSide] = sizeof(ConnectionSegmentHeader);
  header->ring_offset[kServerSide] =
      static_cast<uint32_t>(sizeof(ConnectionSegmentHeader) + byte_ring_footprint(ring_bytes));
  header->ring_capacity = ring_bytes;
  byte_ring_init(base + header->ring_offset[kClientSide], ring_bytes);
  byte_ring_init(base + header->ring_offset[kServerSide], ring_bytes);
  // Release: an endpoint that reads the new connection id from the header
  // (after popping the event that names it) sees the whole layout.
  std::atomic_thread_fence(std::memory_order_release);
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
  const bool both_alive = processes_.contains(client) && processes_.contains(server);
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
  const auto found = processes_.find(process_id);
  if (found == processes_.end()) return;  // it died; the engine is told by remove_process
  Process& process = found->second;
  const ConnectionSide side = event.type == EventType::kIncoming ? kServerSide : kClientSide;
  bool needs_delivery = carries_connection && delivered.status == 0;
  if (needs_delivery) {
    const auto connection = connections_.find(event.connection_id);
    if (connection != connections_.end() && connection->second.reused) {
      delivered.local.reserved |= kEventSegmentReused;
      needs_delivery = false;
    }
  }
  process.backlog.push_back(PendingEvent{delivered, needs_delivery, side});
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

int Monitor::Impl::send_delivery(Process& process, const PendingEvent& pending) {
  const auto found = connections_.find(pending.event.connection_id);
  if (found == connections_.end()) return -ENOENT;
  const Segment& segment = found->second.segment;
  const FdDelivery delivery{kProtocolMagic, pending.side, pending.event.connection_id,
                            segment_bytes_};
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
  const SharedMapping mapping = map_shared(connection.segment.memory.get(), segment_bytes_);
  if (!mapping) {
    log_error("cannot map connection memory", errno);
    return;
  }
  // Offsets come from our own layout, not from the header the endpoints can write.
  auto* base = static_cast<unsigned char*>(mapping.get());
  auto* header = reinterpret_cast<ConnectionSegmentHeader*>(base);
  auto ring = [&](ConnectionSide side) {
    const std::size_t offset = sizeof(ConnectionSegmentHeader) +
                               (side == kClientSide ? 0 : byte_ring_footprint(options_.ring_bytes));
    return reinterpret_cast<ByteRingControl*>(base + offset);
  };
  for (const ConnectionSide dead : {kClientSide, kServerSide}) {
    if (connection.process_id[dead] != output.destination) continue;
    const ConnectionSide other = other_side(dead);
    // Release: a peer that sees a flag also sees everything written before it.
    header->aborted[dead].store(1, std::memory_order_release);
    ring(dead)->writer_closed.store(1, std::memory_order_release);
    ring(other)->reader_closed.store(1, std::memory_order_release);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    signal_wake_fd(connection.segment.wake[other].get());
  }
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

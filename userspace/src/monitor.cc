// The monitor: main loop, registration, status, process death, and the
// attached containers with their isolation policy.
#include "monitor_impl.h"

namespace netaccel {

std::unique_ptr<ControlPlaneEngine> make_engine(std::string_view name,
                                                const FpgaSimOptions& fpga_sim) {
  if (name == "software") return make_software_engine();
  if (name == "fpga-sim") return make_fpga_sim_engine(fpga_sim);
  throw std::invalid_argument("unknown engine '" + std::string(name) +
                              "' (available: software, fpga-sim)");
}

Monitor::Impl::Impl(MonitorOptions options)
    : options_(std::move(options)),
      engine_(make_engine(options_.engine, options_.fpga_sim)),
      containers_(*engine_, options_.state_directory.empty()
                                ? std::string()
                                : options_.state_directory + "/policy") {
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
  if (containers_.change_fd() >= 0) watch(containers_.change_fd(), Source::kContainers, 0, EPOLLIN);
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
  log_line("monitor", "info",
           "listening on " + options_.socket_path + " (" + std::string(engine_name()) + " engine)");
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
      case Source::kContainers:
        on_containers_changed();
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
  alignas(8) unsigned char message[sizeof(PolicyRequest)];
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
  if (magic == kPolicyMagic && version == kProtocolVersion) {
    answer_policy_request(socket.get(), message, static_cast<std::size_t>(received));
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
  const uint64_t netns_id = network_namespace_id(netns.st_dev, netns.st_ino);

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
  char json[1024];
  const int length = std::snprintf(
      json, sizeof json,
      "{\"engine\":\"%.*s\",\"processes\":%llu,\"listeners\":%llu,\"connections_open\":%llu,"
      "\"connections_total\":%llu,\"requests\":%llu,\"rejected_requests\":%llu,"
      "\"ring_bytes\":%u,\"segments_created\":%llu,\"segments_reused\":%llu,"
      "\"channels_open\":%zu,\"direct_connections_total\":%llu,"
      "\"connections_handed_on\":%llu,\"accept_queues\":%zu,\"containers\":%zu,"
      "\"policy_rules\":%llu,\"policy_denials\":%llu}",
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
      static_cast<unsigned long long>(connections_handed_on_), accept_queues_.size(),
      containers_.container_count(), static_cast<unsigned long long>(counters.policy_rules),
      static_cast<unsigned long long>(counters.policy_denials));
  if (length > 0) send(socket, json, static_cast<std::size_t>(length), MSG_NOSIGNAL);
}

// ---------------------------------------------------------------------------
// Containers and their isolation policy

void Monitor::Impl::answer_policy_request(int socket, const unsigned char* message,
                                          std::size_t length) {
  auto answer = [socket](const std::string& text) {
    send(socket, text.data(), text.size(), MSG_NOSIGNAL);
  };
  if (length != sizeof(PolicyRequest)) return answer("error: malformed policy request");
  PolicyRequest request;
  std::memcpy(&request, message, sizeof request);
  if (request.op == PolicyOp::kList) return answer(containers_.describe_json());
  if (request.op != PolicyOp::kDeny && request.op != PolicyOp::kAllow) {
    return answer("error: unknown policy operation");
  }
  // Isolation is the host's to set, not any local user's.
  ucred credentials{};
  socklen_t credentials_length = sizeof credentials;
  if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &credentials_length) != 0 ||
      (credentials.uid != 0 && credentials.uid != geteuid())) {
    return answer("error: only root may change the isolation policy");
  }
  if (request.port > 65535)
    return answer("error: port " + std::to_string(request.port) + " is out of range");
  PolicyRule rule;
  rule.client.assign(request.client, strnlen(request.client, sizeof request.client));
  rule.server.assign(request.server, strnlen(request.server, sizeof request.server));
  rule.port = static_cast<uint16_t>(request.port);
  const std::string error =
      request.op == PolicyOp::kDeny ? containers_.deny(rule) : containers_.allow(rule);
  close_separated_channels();
  answer(error.empty() ? "ok" : "error: " + error);
}

void Monitor::Impl::on_containers_changed() {
  containers_.on_change();
  close_separated_channels();
}

// A channel lets its client connect without asking the engine: one between
// two namespaces that a rule now separates must close, so that the next
// connect meets the rule. Connections already made stay, as a firewall rule
// on new connections leaves established ones alone.
void Monitor::Impl::close_separated_channels() {
  for (const auto& [client_netns, server_netns] : containers_.take_new_separations()) {
    std::vector<uint64_t> closing;
    for (const auto& [id, channel] : channels_) {
      const auto client = processes_.find(channel.process_id[kClientSide]);
      const auto server = processes_.find(channel.process_id[kServerSide]);
      if (!channel.retired && client != processes_.end() && server != processes_.end() &&
          client->second.netns_id == client_netns && server->second.netns_id == server_netns) {
        closing.push_back(id);
      }
    }
    for (const uint64_t id : closing) close_channel(id, /*queue_is_ours=*/false);
  }
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

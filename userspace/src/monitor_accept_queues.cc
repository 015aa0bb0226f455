// The monitor: accept queues of listening sockets shared across processes.
#include "monitor_impl.h"

namespace netaccel {

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
  if (process == processes_.end()) return;
  const ListenerCookie cookie{process->second.netns_id, message.cookie};
  // One queue per socket: its holders already share the first.
  if (!queue || message.cookie == 0 || accept_queue_of_cookie_.contains(cookie) ||
      next_process_id_ == 0 || accept_queues_.size() >= kMaxAcceptQueues ||
      !is_seqpacket_unix_socket(queue.get()) ||
      fcntl(queue.get(), F_SETFL, fcntl(queue.get(), F_GETFL) | O_NONBLOCK) != 0) {
    return;
  }
  AcceptQueue accept_queue;
  accept_queue.engine_process = next_process_id_++;
  accept_queue.cookie = cookie;
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
  accept_queue_of_cookie_.emplace(cookie, accept_queue.engine_process);
  accept_queues_.emplace(accept_queue.engine_process, std::move(accept_queue));
  update_accept_queue(cookie);
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
  const ListenerCookie cookie{process->second.netns_id, request.connection_id};
  reply.status = accept_queue_of_cookie_.contains(cookie) ? 0 : -EINVAL;
  deliver_event(process_id, reply);
}

// Which announced listeners are copies of which socket: its queue takes
// connections only while none is.
void Monitor::Impl::note_announcement(uint32_t process_id, const Request& request) {
  const std::pair<uint32_t, uint64_t> listener{process_id, request.socket_id};
  const auto process = processes_.find(process_id);
  if (request.op == RequestOp::kListen && request.connection_id != 0 &&
      process != processes_.end()) {
    const ListenerCookie cookie{process->second.netns_id, request.connection_id};
    if (announced_cookies_.emplace(listener, cookie).second) update_accept_queue(cookie);
  } else if (request.op == RequestOp::kUnlisten) {
    const auto found = announced_cookies_.find(listener);
    if (found == announced_cookies_.end()) return;
    const ListenerCookie announced = found->second;
    announced_cookies_.erase(found);
    update_accept_queue(announced);
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

void Monitor::Impl::update_accept_queue(const ListenerCookie& cookie) {
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
}  // namespace netaccel

// The monitor: engine outputs turned into segments and events, and server
// ends handed on from listeners that closed.
#include "monitor_impl.h"

namespace netaccel {

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

}  // namespace netaccel

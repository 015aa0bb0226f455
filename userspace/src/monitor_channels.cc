// The monitor: channels, connection setup between two processes without it.
#include "monitor_impl.h"

namespace netaccel {

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

}  // namespace netaccel

// lwIP's raw TCP API on one side, shared-memory rings on the other.
#include "stack_connection.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>

#include "lwip/err.h"
#include "lwip/pbuf.h"
#include "lwip/priv/tcp_priv.h"  // TCP_MSL, tcp_recv_null
#include "lwip/tcp.h"
#include "netaccel_bpf.h"

namespace netaccel::stack {

// A closed connection's port stays ours while TCP may still hear of it
// (TIME_WAIT), as the kernel keeps it: 2 * lwIP's TCP_MSL.
constexpr std::chrono::seconds kTimeWait{2 * TCP_MSL / 1000};

struct StackConnection {
  ConnectionHost* host = nullptr;
  uint64_t id = 0;
  tcp_pcb* pcb = nullptr;
  uint16_t port = 0;    // the local port, held in the PortTable
  bool active = false;  // we connected (the port is ours alone)
  UniqueFd memory;
  SharedMapping mapping;
  ConnectionSegmentHeader* header = nullptr;
  uint32_t side = 0;        // the stack's side in the segment
  ByteRing to_app;          // ring[side]: what the peer sent, for the program
  ByteRing from_app;        // ring[side ^ 1]: what the program sends
  UniqueFd app_wake;        // the program sleeps on it
  UniqueFd lifetime;        // the program's end closing means it let go
  uint32_t in_flight = 0;   // from_app bytes handed to lwIP, not yet acknowledged
  pbuf* pending = nullptr;  // received, not yet in to_app
  bool connecting = false;
  bool peer_finished = false;  // the peer's FIN arrived
  bool eof_published = false;  // to_app is closed for writing
  bool fin_queued = false;     // our FIN is queued behind the data
  bool program_gone = false;   // the lifetime end closed
  bool pcb_gone = false;       // lwIP freed the pcb (error) or we let it go

  uint32_t program_side() const { return side ^ 1; }
};

struct StackListener {
  ConnectionHost* host = nullptr;
  uint64_t id = 0;
  tcp_pcb* pcb = nullptr;
  uint16_t port = 0;
  UniqueFd control;
};

namespace {

// Inside a callback `arg` is what tcp_arg() set; lwIP is C, no exception
// may leave a callback (none is thrown below).
err_t connected_callback(void* arg, tcp_pcb*, err_t) {
  auto* connection = static_cast<StackConnection*>(arg);
  connection->host->on_connected(connection);
  return ERR_OK;
}

void error_callback(void* arg, err_t error) {
  if (arg == nullptr) return;
  auto* connection = static_cast<StackConnection*>(arg);
  connection->host->on_error(connection, error);
}

err_t receive_callback(void* arg, tcp_pcb* pcb, pbuf* data, err_t) {
  if (arg == nullptr) {  // a connection we let go: lwIP's default
    return tcp_recv_null(nullptr, pcb, data, ERR_OK);
  }
  auto* connection = static_cast<StackConnection*>(arg);
  if (connection->program_gone && data != nullptr && data->tot_len > 0) {
    // Data for a closed socket: the kernel resets the connection.
    pbuf_free(data);
    tcp_abort(pcb);
    return ERR_ABRT;
  }
  connection->host->on_received(connection, data);
  return ERR_OK;
}

err_t sent_callback(void* arg, tcp_pcb*, u16_t bytes) {
  if (arg == nullptr) return ERR_OK;
  auto* connection = static_cast<StackConnection*>(arg);
  connection->host->on_sent(connection, bytes);
  return ERR_OK;
}

err_t accept_callback(void* arg, tcp_pcb* pcb, err_t error) {
  if (arg == nullptr || error != ERR_OK || pcb == nullptr) return ERR_VAL;
  auto* listener = static_cast<StackListener*>(arg);
  return static_cast<err_t>(listener->host->on_accept(listener, pcb));
}

void wake_if_announced(std::atomic<uint32_t>& announced, int fd) {
  if (announced.load(std::memory_order_relaxed) != 0 &&
      announced.exchange(0, std::memory_order_relaxed) != 0) {
    signal_wake_fd(fd);
  }
}

int lwip_error_to_errno(int error) {
  switch (error) {
    case ERR_RST:
      return ECONNREFUSED;
    case ERR_ABRT:
      return ETIMEDOUT;
    case ERR_MEM:
    case ERR_BUF:
      return ENOBUFS;
    case ERR_RTE:
      return ENETUNREACH;
    case ERR_USE:
      return EADDRINUSE;
    default:
      return ECONNABORTED;
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Ports

PortTable::~PortTable() {
  for (auto& [port, entry] : ports_) {
    const netaccel_steer_key key{port, IPPROTO_TCP, 0};
    bpf_map_delete_elem(steering_map_.get(), &key);
  }
}

// A TCP socket in the container's namespace: the calling thread steps into
// it for the socket() call only (a socket stays in the namespace it was
// made in).
int PortTable::placeholder_socket() const {
  thread_local const UniqueFd home(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!netns_ || !home) return socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (setns(netns_.get(), CLONE_NEWNET) != 0) return -1;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int error = errno;
  setns(home.get(), CLONE_NEWNET);
  errno = error;
  return fd;
}

int PortTable::acquire(uint16_t port) {
  UniqueFd placeholder(placeholder_socket());
  if (!placeholder) return -errno;
  // A fixed port shares with nothing, as a kernel bind without
  // SO_REUSEADDR would not while a socket holds it.
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = port == 0 ? address_ : htonl(INADDR_ANY);
  if (bind(placeholder.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    return -errno;
  }
  socklen_t length = sizeof address;
  if (getsockname(placeholder.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return -errno;
  }
  const uint16_t bound = ntohs(address.sin_port);
  if (ports_.count(bound) != 0) return -EADDRINUSE;  // lingering, still ours
  const netaccel_steer_key key{bound, IPPROTO_TCP, 0};
  const netaccel_steer_action action{NETACCEL_STEER_XSK, owner_};
  if (bpf_map_update_elem(steering_map_.get(), &key, &action, BPF_ANY) != 0) return -errno;
  ports_[bound] = Entry{std::move(placeholder), 1};
  return bound;
}

void PortTable::add_reference(uint16_t port) {
  auto entry = ports_.find(port);
  if (entry != ports_.end()) ++entry->second.references;
}

void PortTable::release(uint16_t port, std::chrono::seconds linger) {
  if (linger.count() > 0) {
    lingering_.emplace_back(std::chrono::steady_clock::now() + linger, port);
    return;
  }
  drop(port);
}

void PortTable::drop(uint16_t port) {
  auto entry = ports_.find(port);
  if (entry == ports_.end() || --entry->second.references > 0) return;
  const netaccel_steer_key key{port, IPPROTO_TCP, 0};
  bpf_map_delete_elem(steering_map_.get(), &key);
  ports_.erase(entry);  // closes the placeholder: the kernel may use the port again
}

void PortTable::expire_lingering() {
  const auto now = std::chrono::steady_clock::now();
  while (!lingering_.empty() && lingering_.front().first <= now) {
    drop(lingering_.front().second);
    lingering_.pop_front();
  }
}

// ---------------------------------------------------------------------------
// Connections

ConnectionHost::ConnectionHost(PortTable ports, netif* interface, uint32_t address,
                               int stack_wake_fd, WatchLifetime watch)
    : ports_(std::move(ports)),
      interface_(interface),
      address_(address),
      stack_wake_fd_(stack_wake_fd),
      watch_(std::move(watch)) {}

ConnectionHost::~ConnectionHost() {
  for (auto& [id, connection] : connections_) {
    if (!connection->pcb_gone) close_pcb(*connection, true);
    if (connection->pending) pbuf_free(connection->pending);
  }
  for (auto& [id, listener] : listeners_) {
    tcp_arg(listener->pcb, nullptr);
    tcp_close(listener->pcb);
  }
}

StackConnection* ConnectionHost::make_connection(tcp_pcb* pcb, uint32_t stack_side, uint16_t port) {
  auto connection = std::make_unique<StackConnection>();
  connection->host = this;
  connection->id = next_id_++;
  connection->pcb = pcb;
  connection->port = port;
  connection->side = stack_side;
  const std::size_t bytes = connection_segment_bytes(kDefaultRingBytes);
  const int memory = create_shared_memory("netaccel-stack", bytes);
  if (memory < 0) return nullptr;
  connection->memory = UniqueFd(memory);
  connection->mapping = map_shared(memory, bytes);
  const int wake = create_wake_fd();
  if (!connection->mapping || wake < 0) return nullptr;
  connection->app_wake = UniqueFd(wake);
  connection->header =
      layout_connection_segment(connection->mapping.get(), connection->id, kDefaultRingBytes);
  auto* base = static_cast<unsigned char*>(connection->mapping.get());
  connection->to_app = ByteRing(base + connection->header->ring_offset[stack_side]);
  connection->from_app = ByteRing(base + connection->header->ring_offset[stack_side ^ 1]);
  tcp_arg(pcb, connection.get());
  tcp_err(pcb, error_callback);
  tcp_recv(pcb, receive_callback);
  tcp_sent(pcb, sent_callback);
  // The rings batch what the program writes between two passes of the
  // worker; Nagle's delay on top would only add latency.
  tcp_nagle_disable(pcb);
  StackConnection* raw = connection.get();
  connections_.emplace(raw->id, std::move(connection));
  ++opened_;
  return raw;
}

namespace {

StackReply reply_for(const StackConnection& connection, uint32_t kind) {
  StackReply reply;
  reply.kind = kind;
  reply.local_address = connection.pcb->local_ip.addr;
  reply.peer_address = connection.pcb->remote_ip.addr;
  reply.local_port = connection.pcb->local_port;
  reply.peer_port = connection.pcb->remote_port;
  reply.side = connection.program_side();
  reply.connection_id = connection.id;
  reply.segment_bytes = connection.mapping.size();
  return reply;
}

void send_failure(int control, int error) {
  StackReply reply;
  reply.kind = kStackFailed;
  reply.error = error;
  send(control, &reply, sizeof reply, MSG_DONTWAIT | MSG_NOSIGNAL);
}

}  // namespace

void ConnectionHost::connect(UniqueFd control, const StackRequest& request) {
  ip_addr_t remote{};
  remote.addr = request.address;
  // No SYN where the kernel sends none (tcp_v4_connect refuses a broadcast
  // or multicast route: ENETUNREACH) or where the stack cannot reach (the
  // container's loopback, "any"): lwIP would send SYNs there until its
  // retries ran out and answer ETIMEDOUT 18 s later.
  if (ip4_addr_isbroadcast(&remote, interface_) || ip4_addr_ismulticast(&remote) ||
      ip4_addr_isloopback(&remote)) {
    return send_failure(control.get(), ENETUNREACH);
  }
  const int port = ports_.acquire(0);
  if (port < 0) return send_failure(control.get(), -port);
  tcp_pcb* pcb = tcp_new();
  if (pcb == nullptr) {
    ports_.release(static_cast<uint16_t>(port));
    return send_failure(control.get(), ENOBUFS);
  }
  ip_addr_t local{};
  local.addr = address_;
  StackConnection* connection = nullptr;
  tcp_bind_netif(pcb, interface_);
  if (tcp_bind(pcb, &local, static_cast<u16_t>(port)) != ERR_OK ||
      (connection = make_connection(pcb, kServerSide, static_cast<uint16_t>(port))) == nullptr) {
    tcp_abort(pcb);
    ports_.release(static_cast<uint16_t>(port));
    return send_failure(control.get(), ENOBUFS);
  }
  connection->active = true;
  connection->connecting = true;
  connection->lifetime = std::move(control);
  watch_(connection->lifetime.get(), connection->id);
  const err_t error = tcp_connect(pcb, &remote, request.port, connected_callback);
  if (error != ERR_OK) fail_connect(*connection, lwip_error_to_errno(error));
}

void ConnectionHost::on_connected(StackConnection* connection) {
  connection->connecting = false;
  const StackReply reply = reply_for(*connection, kStackConnected);
  const int fds[kStackConnectionFds] = {connection->memory.get(), connection->app_wake.get(),
                                        stack_wake_fd_};
  if (send_with_fds(connection->lifetime.get(), &reply, sizeof reply, fds, kStackConnectionFds) <
      0) {
    connection->program_gone = true;  // it asked and left: reset
    connection->header->aborted[connection->program_side()].store(1, std::memory_order_relaxed);
  }
}

void ConnectionHost::fail_connect(StackConnection& connection, int error) {
  send_failure(connection.lifetime.get(), error);
  if (!connection.pcb_gone) close_pcb(connection, true);
  connection.program_gone = true;
}

void ConnectionHost::listen(UniqueFd control, const StackRequest& request) {
  const int port = ports_.acquire(request.port);
  if (port < 0) return send_failure(control.get(), -port);
  tcp_pcb* pcb = tcp_new();
  if (pcb == nullptr) {
    ports_.release(static_cast<uint16_t>(port));
    return send_failure(control.get(), ENOBUFS);
  }
  ip_set_option(pcb, SOF_REUSEADDR);
  tcp_bind_netif(pcb, interface_);  // this container's address only
  ip_addr_t local{};
  local.addr = address_;
  const u8_t backlog = static_cast<u8_t>(std::clamp<unsigned>(request.backlog, 1, 255));
  tcp_pcb* listening = nullptr;
  if (tcp_bind(pcb, &local, static_cast<u16_t>(port)) != ERR_OK ||
      (listening = tcp_listen_with_backlog(pcb, backlog)) == nullptr) {
    tcp_abort(pcb);
    ports_.release(static_cast<uint16_t>(port));
    return send_failure(control.get(), EADDRINUSE);
  }
  auto listener = std::make_unique<StackListener>();
  listener->host = this;
  listener->id = next_id_++;
  listener->pcb = listening;
  listener->port = static_cast<uint16_t>(port);
  listener->control = std::move(control);
  tcp_arg(listening, listener.get());
  tcp_accept(listening, accept_callback);
  StackReply reply;
  reply.kind = kStackListening;
  reply.local_address = address_;
  reply.local_port = static_cast<uint16_t>(port);
  if (send(listener->control.get(), &reply, sizeof reply, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
    tcp_arg(listening, nullptr);
    tcp_close(listening);
    ports_.release(static_cast<uint16_t>(port));
    return;
  }
  watch_(listener->control.get(), listener->id);
  listeners_.emplace(listener->id, std::move(listener));
}

int ConnectionHost::on_accept(StackListener* listener, tcp_pcb* pcb) {
  tcp_backlog_accepted(pcb);
  int lifetime[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, lifetime) != 0) {
    tcp_abort(pcb);
    return ERR_ABRT;
  }
  UniqueFd ours(lifetime[0]);
  UniqueFd theirs(lifetime[1]);
  // The stack is the connecting end here: the program accepts.
  StackConnection* connection = make_connection(pcb, kClientSide, listener->port);
  if (connection == nullptr) {
    tcp_abort(pcb);
    return ERR_ABRT;
  }
  ports_.add_reference(listener->port);
  connection->lifetime = std::move(ours);
  const StackReply reply = reply_for(*connection, kStackAccepted);
  const int fds[kStackAcceptedFds] = {connection->memory.get(), connection->app_wake.get(),
                                      stack_wake_fd_, theirs.get()};
  if (send_with_fds(listener->control.get(), &reply, sizeof reply, fds, kStackAcceptedFds) < 0) {
    // The program's accept queue is full or it is gone: refuse, as a full
    // kernel backlog would.
    tcp_arg(pcb, nullptr);
    connection->pcb_gone = true;
    connection->program_gone = true;
    tcp_abort(pcb);
    return ERR_ABRT;
  }
  watch_(connection->lifetime.get(), connection->id);
  return ERR_OK;
}

void ConnectionHost::on_error(StackConnection* connection, int lwip_error) {
  // lwIP has freed the pcb already.
  connection->pcb = nullptr;
  connection->pcb_gone = true;
  if (connection->pending) {
    pbuf_free(connection->pending);
    connection->pending = nullptr;
  }
  if (connection->connecting) {
    connection->connecting = false;
    send_failure(connection->lifetime.get(), lwip_error_to_errno(lwip_error));
    connection->program_gone = true;
    return;
  }
  // Reset (or given up on): the program's reads and writes fail with ECONNRESET.
  connection->header->aborted[connection->side].store(1, std::memory_order_relaxed);
  connection->to_app.control().writer_closed.store(1, std::memory_order_release);
  connection->eof_published = true;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  wake_if_announced(connection->to_app.control().reader_waiting, connection->app_wake.get());
  wake_if_announced(connection->from_app.control().writer_waiting, connection->app_wake.get());
}

void ConnectionHost::on_received(StackConnection* connection, pbuf* data) {
  if (data == nullptr) {
    connection->peer_finished = true;
  } else if (connection->pending == nullptr) {
    connection->pending = data;
  } else {
    pbuf_cat(connection->pending, data);
  }
  deliver(*connection);
}

void ConnectionHost::on_sent(StackConnection* connection, uint16_t bytes) {
  const uint32_t acknowledged = std::min<uint32_t>(bytes, connection->in_flight);
  connection->from_app.discard(acknowledged);
  connection->in_flight -= acknowledged;
  wake_if_announced(connection->from_app.control().writer_waiting, connection->app_wake.get());
}

bool ConnectionHost::deliver(StackConnection& connection) {
  bool moved = false;
  uint32_t delivered = 0;
  while (connection.pending != nullptr) {
    const std::size_t written =
        connection.to_app.write(connection.pending->payload, connection.pending->len);
    if (written == 0) break;
    delivered += static_cast<uint32_t>(written);
    connection.pending = pbuf_free_header(connection.pending, static_cast<u16_t>(written));
    moved = true;
  }
  // The window opens by what the program's ring took.
  while (delivered > 0 && connection.pcb != nullptr) {
    const uint16_t part = static_cast<uint16_t>(std::min<uint32_t>(delivered, 0xffff));
    tcp_recved(connection.pcb, part);
    delivered -= part;
  }
  if (connection.pending == nullptr && connection.peer_finished && !connection.eof_published) {
    connection.to_app.control().writer_closed.store(1, std::memory_order_release);
    connection.eof_published = true;
    moved = true;
  }
  if (moved) {
    // Store-load: the bytes (or EOF) before the reader's sleep announcement.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    wake_if_announced(connection.to_app.control().reader_waiting, connection.app_wake.get());
  }
  return moved;
}

bool ConnectionHost::transmit(StackConnection& connection) {
  tcp_pcb* pcb = connection.pcb;
  if (pcb == nullptr || connection.connecting || connection.fin_queued) return false;
  bool wrote = false;
  for (;;) {
    uint32_t length = 0;
    const unsigned char* data = connection.from_app.contiguous_at(connection.in_flight, &length);
    const uint32_t room = tcp_sndbuf(pcb);
    if (length == 0 || room == 0 || tcp_sndqueuelen(pcb) >= TCP_SND_QUEUELEN - 1) break;
    const uint32_t chunk = std::min<uint32_t>({length, room, 0xffff});
    // No copy: the ring keeps the bytes until on_sent() consumes them.
    if (tcp_write(pcb, data, static_cast<u16_t>(chunk), TCP_WRITE_FLAG_MORE) != ERR_OK) break;
    connection.in_flight += chunk;
    wrote = true;
  }
  const bool program_done =
      connection.program_gone ||
      connection.from_app.control().writer_closed.load(std::memory_order_acquire) != 0;
  if (program_done && connection.from_app.readable() == connection.in_flight) {
    tcp_shutdown(pcb, 0, 1);  // FIN after the data
    connection.fin_queued = true;
    wrote = true;
  }
  if (wrote) tcp_output(pcb);
  return wrote;
}

void ConnectionHost::close_pcb(StackConnection& connection, bool abort) {
  tcp_pcb* pcb = connection.pcb;
  connection.pcb = nullptr;
  connection.pcb_gone = true;
  if (pcb == nullptr) return;
  tcp_arg(pcb, nullptr);
  tcp_err(pcb, nullptr);
  tcp_sent(pcb, nullptr);
  tcp_recv(pcb, nullptr);
  if (abort || tcp_close(pcb) != ERR_OK) tcp_abort(pcb);
}

bool ConnectionHost::finished(const StackConnection& connection) const {
  if (connection.pcb_gone) return connection.program_gone || connection.eof_published;
  // Everything the program wrote was acknowledged, our FIN is out, and the
  // program has let go: lwIP finishes the close on its own (its pcb then
  // refers to none of our memory).
  return connection.program_gone && connection.fin_queued && connection.in_flight == 0;
}

bool ConnectionHost::pump_connection(StackConnection& connection) {
  bool moved = false;
  if (connection.pcb != nullptr &&
      connection.header->aborted[connection.program_side()].load(std::memory_order_relaxed) != 0) {
    close_pcb(connection, true);  // the program reset it (close with unread data, SO_LINGER 0)
    connection.program_gone = true;
    return true;
  }
  if (connection.pending != nullptr || (connection.peer_finished && !connection.eof_published)) {
    moved |= deliver(connection);
  }
  moved |= transmit(connection);
  return moved;
}

bool ConnectionHost::pump() {
  bool moved = false;
  for (auto it = connections_.begin(); it != connections_.end();) {
    StackConnection& connection = *it->second;
    moved |= pump_connection(connection);
    if (finished(connection)) {
      if (!connection.pcb_gone) close_pcb(connection, false);
      if (connection.pending) pbuf_free(connection.pending);
      ports_.release(connection.port, connection.active ? kTimeWait : std::chrono::seconds(0));
      it = connections_.erase(it);
      continue;
    }
    ++it;
  }
  ports_.expire_lingering();
  return moved;
}

void ConnectionHost::hangup(uint64_t id) {
  if (auto listener = listeners_.find(id); listener != listeners_.end()) {
    tcp_arg(listener->second->pcb, nullptr);
    tcp_close(listener->second->pcb);
    ports_.release(listener->second->port);
    listeners_.erase(listener);
    return;
  }
  auto found = connections_.find(id);
  if (found == connections_.end()) return;
  StackConnection& connection = *found->second;
  connection.program_gone = true;
  if (connection.pcb_gone) return;
  // A program that goes with bytes unread resets the connection, as a
  // kernel socket closed with unread data does.
  if (connection.pending != nullptr || connection.to_app.unread() != 0) {
    close_pcb(connection, true);
  }
}

bool ConnectionHost::announce_sleep() {
  for (auto& [id, connection] : connections_) {
    connection->from_app.control().reader_waiting.store(1, std::memory_order_relaxed);
    if (connection->pending != nullptr) {
      connection->to_app.control().writer_waiting.store(1, std::memory_order_relaxed);
    }
  }
  // Store-load: our announcements before we look at the rings again.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (auto& [id, connection] : connections_) {
    // Bytes lwIP cannot take yet (window or send buffer full) are not work:
    // the acknowledgement that makes room arrives as a frame and wakes us.
    const bool data_waits =
        connection->pcb != nullptr && !connection->connecting && tcp_sndbuf(connection->pcb) > 0 &&
        connection->from_app.readable(connection->in_flight + 1) > connection->in_flight;
    const bool room_waits = connection->pending != nullptr && connection->to_app.writable() > 0;
    const bool closing =
        connection->from_app.control().writer_closed.load(std::memory_order_acquire) != 0 &&
        !connection->fin_queued && connection->pcb != nullptr;
    const bool aborted = connection->header->aborted[connection->program_side()].load(
                             std::memory_order_relaxed) != 0 &&
                         connection->pcb != nullptr;
    if (data_waits || room_waits || closing || aborted) {
      withdraw_sleep();
      return false;
    }
  }
  return true;
}

void ConnectionHost::withdraw_sleep() {
  for (auto& [id, connection] : connections_) {
    connection->from_app.control().reader_waiting.store(0, std::memory_order_relaxed);
    connection->to_app.control().writer_waiting.store(0, std::memory_order_relaxed);
  }
}

}  // namespace netaccel::stack

#include "anchor_keeper.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "netaccel/byte_ring.h"
#include "netaccel/log.h"

namespace netaccel {
namespace {

// The keeper's end of its socket with the monitor.
constexpr int kControlFd = 3;
constexpr uint32_t kControlTag = 0;

void log_error(const char* what, int error) {
  log_line("anchor keeper", "error", std::string(what) + ": " + std::strerror(error));
}

// The half (B) of an anchor a process sent: when every copy of A is gone,
// the anchor's share of the end goes. It keeps what it needs mapped itself.
struct Anchor {
  UniqueFd socket;  // B
  SharedMapping memory;
  UniqueFd peer_wake;  // the other end's: it hears of the close
  uint64_t segment_offset;
  uint32_t channel_slot;
  ConnectionSide side;
};

class Keeper {
 public:
  explicit Keeper(int control) : control_(control), epoll_(epoll_create1(EPOLL_CLOEXEC)) {}
  void run();

 private:
  void take_messages();
  void watch(const AnchorMessage& message, ssize_t bytes, int* fds, std::size_t fd_count);
  void on_anchor_socket(uint32_t anchor_id, uint32_t events);
  void release_share(Anchor& anchor);

  UniqueFd control_;
  UniqueFd epoll_;
  std::unordered_map<uint32_t, Anchor> anchors_;
  uint32_t next_anchor_id_ = kControlTag + 1;
};

// Runs until the monitor has let go of its end and no anchor is left.
void Keeper::run() {
  if (!epoll_) return log_error("epoll_create1", errno);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u32 = kControlTag;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, control_.get(), &event) != 0) {
    return log_error("epoll_ctl", errno);
  }
  while (control_ || !anchors_.empty()) {
    epoll_event events[64];
    const int ready = epoll_wait(epoll_.get(), events, 64, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return log_error("epoll_wait", errno);
    }
    for (int i = 0; i < ready; ++i) {
      if (events[i].data.u32 == kControlTag) {
        take_messages();
      } else {
        on_anchor_socket(events[i].data.u32, events[i].events);
      }
    }
  }
}

void Keeper::take_messages() {
  for (;;) {
    AnchorMessage message{};
    int fds[kAnchorWatchFds];
    std::size_t fd_count = 0;
    const ssize_t received =
        receive_with_fds(control_.get(), &message, sizeof message, fds, kAnchorWatchFds, &fd_count);
    if (received == -EAGAIN || received == -EINTR) return;
    if (received <= 0) {
      // The monitor is gone: what we hold still closes when its holders go.
      epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, control_.get(), nullptr);
      control_.reset();
      return;
    }
    watch(message, received, fds, fd_count);
  }
}

void Keeper::watch(const AnchorMessage& message, ssize_t bytes, int* fds, std::size_t fd_count) {
  UniqueFd owned[kAnchorWatchFds];
  for (std::size_t i = 0; i < fd_count; ++i) owned[i].reset(fds[i]);
  if (bytes != sizeof message || fd_count != kAnchorWatchFds || message.magic != kAnchorMagic ||
      message.version != kAnchorVersion || message.side > kServerSide ||
      (message.channel_slot != kAnchorNoSlot && message.channel_slot >= kChannelSlots)) {
    return;
  }
  // Everything we will touch must lie inside the memfd: the process wrote the message.
  const int64_t size = shared_memory_size(owned[1].get());
  const uint64_t header_end = message.segment_offset + sizeof(ConnectionSegmentHeader);
  const uint64_t needed = std::max<uint64_t>(
      header_end, message.channel_slot != kAnchorNoSlot ? sizeof(ChannelHeader) : 0);
  if (size < 0 || message.segment_offset > static_cast<uint64_t>(size) ||
      needed > static_cast<uint64_t>(size) ||
      message.segment_offset % alignof(ConnectionSegmentHeader) != 0 ||
      !is_eventfd(owned[2].get())) {
    return;
  }
  Anchor anchor;
  anchor.memory = map_shared(owned[1].get(), static_cast<std::size_t>(size));
  if (!anchor.memory) return log_error("cannot map an anchored connection", errno);
  anchor.socket = std::move(owned[0]);
  anchor.peer_wake = std::move(owned[2]);
  anchor.segment_offset = message.segment_offset;
  anchor.channel_slot = message.channel_slot;
  anchor.side = static_cast<ConnectionSide>(message.side);
  const uint32_t id = next_anchor_id_++;
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u32 = id;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, anchor.socket.get(), &event) != 0) {
    return log_error("epoll_ctl", errno);
  }
  anchors_.emplace(id, std::move(anchor));
}

void Keeper::on_anchor_socket(uint32_t anchor_id, uint32_t events) {
  const auto found = anchors_.find(anchor_id);
  if (found == anchors_.end()) return;
  if ((events & (EPOLLHUP | EPOLLERR)) == 0) {
    // Only a program that does not know A (not preloaded) writes to it.
    char ignored[64];
    recv(found->second.socket.get(), ignored, sizeof ignored, MSG_DONTWAIT);
    return;
  }
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, found->second.socket.get(), nullptr);
  release_share(found->second);
  anchors_.erase(found);
}

// Every copy of A is closed: as the close of a holder's last descriptor, the
// anchor's share goes, and if it was the last one the end closes (EOF for
// the peer; a reset if data was left unread, as the kernel does).
void Keeper::release_share(Anchor& anchor) {
  auto* base = static_cast<unsigned char*>(anchor.memory.get());
  auto* segment = base + anchor.segment_offset;
  auto* header = reinterpret_cast<ConnectionSegmentHeader*>(segment);
  const ConnectionSide side = anchor.side;
  if (!release_last_holder(header->holders[side])) return;
  const std::size_t bytes = anchor.memory.size() - anchor.segment_offset;
  auto ring_at = [&](uint32_t ring) -> unsigned char* {
    const uint32_t offset = header->ring_offset[ring];
    return offset < bytes && byte_ring_valid(segment + offset, bytes - offset) ? segment + offset
                                                                               : nullptr;
  };
  unsigned char* own = ring_at(side);
  unsigned char* received = ring_at(side ^ 1);
  if (own == nullptr || received == nullptr || ByteRing(received).unread() != 0) {
    header->aborted[side].store(1, std::memory_order_release);
  }
  if (own != nullptr) ByteRing(own).control().writer_closed.store(1, std::memory_order_release);
  if (received != nullptr) {
    ByteRing(received).control().reader_closed.store(1, std::memory_order_release);
  }
  if (anchor.channel_slot != kAnchorNoSlot) {
    // Last: the slot frees once the other end closes too.
    auto* channel = reinterpret_cast<ChannelHeader*>(base);
    const uint32_t own_bit = side == kClientSide ? kSlotClientOpen : kSlotServerOpen;
    channel->slot_state[anchor.channel_slot].fetch_and(~own_bit, std::memory_order_acq_rel);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  signal_wake_fd(anchor.peer_wake.get());
}

// A keeper detached from the monitor (its own session, reparented): a
// monitor that stops, or is stopped with its process group, leaves it be.
UniqueFd start_keeper() {
  int ends[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ends) != 0) {
    log_error("socketpair", errno);
    return UniqueFd();
  }
  UniqueFd ours(ends[0]);
  UniqueFd theirs(ends[1]);
  const pid_t middle = fork();
  if (middle < 0) {
    log_error("fork", errno);
    return UniqueFd();
  }
  if (middle == 0) {
    // The middle process exits at once, so that nobody has to reap the keeper.
    if (fork() != 0) _exit(0);
    setsid();
    prctl(PR_SET_NAME, "netaccel-anchor");
    // Nothing of the monitor's stays open here: its socket and the links to
    // its processes would look alive to them after the monitor is gone.
    if (dup2(theirs.get(), kControlFd) < 0) _exit(1);
    close_range(kControlFd + 1, ~0u, 0);
    const int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      dup2(null, STDIN_FILENO);
      dup2(null, STDOUT_FILENO);
    }
    fcntl(kControlFd, F_SETFL, O_NONBLOCK);
    Keeper(kControlFd).run();
    _exit(0);
  }
  int status = 0;
  while (waitpid(middle, &status, 0) < 0 && errno == EINTR) {
  }
  return ours;
}

}  // namespace

void AnchorKeeperLink::watch(const AnchorMessage& message, ssize_t bytes, int* fds,
                             std::size_t fd_count) {
  UniqueFd owned[kAnchorWatchFds];
  for (std::size_t i = 0; i < fd_count; ++i) owned[i].reset(fds[i]);
  if (bytes != sizeof message || fd_count != kAnchorWatchFds) return;
  // A keeper that died (killed by hand) is replaced: the anchors it held are
  // lost with it, the ones sent from now on are not.
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!control_) control_ = start_keeper();
    if (!control_) return;
    const int raw[kAnchorWatchFds] = {owned[0].get(), owned[1].get(), owned[2].get()};
    const int sent = send_with_fds(control_.get(), &message, sizeof message, raw, kAnchorWatchFds);
    if (sent == 0) return;
    log_error("cannot pass an anchor to the keeper", -sent);
    control_.reset();
  }
}

}  // namespace netaccel

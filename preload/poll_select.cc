// poll and select over sets that mix kernel and netaccel descriptors.
#include <errno.h>
#include <poll.h>
#include <sys/select.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "intercepted.h"
#include "pipes.h"
#include "readiness.h"
#include "real_calls.h"
#include "runtime.h"
#include "user_memory.h"

namespace netaccel::preload {

namespace {

struct PollSlot {
  nfds_t index;
  Socket* socket;  // referenced for the duration of the call
};

// poll and select keep no set from one call to the next, so a thread keeps
// the budget of its kernel looks (readiness.h) for each of the last few
// arrays it polled, told apart by their content: a loop over two arrays in
// turn keeps two budgets, and neither array's kernel descriptors wait on the
// other's looks.
KernelCheckBudget& budget_for(const struct pollfd* fds, nfds_t count) {
  struct KeptBudget {
    uint64_t key = 0;
    uint64_t last_used = 0;
    KernelCheckBudget budget;
  };
  constexpr int kKept = 4;
  static thread_local KeptBudget kept[kKept];
  static thread_local uint64_t uses = 0;
  uint64_t key = 0xcbf29ce484222325ull ^ count;  // FNV-1a over (fd, events)
  for (nfds_t i = 0; i < count; ++i) {
    key = (key ^ static_cast<uint32_t>(fds[i].fd)) * 0x100000001b3ull;
    key = (key ^ static_cast<uint16_t>(fds[i].events)) * 0x100000001b3ull;
  }
  KeptBudget* oldest = &kept[0];
  for (KeptBudget& entry : kept) {
    if (entry.last_used != 0 && entry.key == key) {
      entry.last_used = ++uses;
      return entry.budget;
    }
    if (entry.last_used < oldest->last_used) oldest = &entry;
  }
  oldest->key = key;
  oldest->last_used = ++uses;
  oldest->budget.forget();
  return oldest->budget;
}

// What a pipe end's kernel pipe is asked, with the RDNORM/WRNORM twins that
// pipe_readiness reports beside POLLIN/POLLOUT.
short pipe_kernel_poll_events(Socket* end) {
  const short events = pipe_kernel_events(end);
  return static_cast<short>(events | ((events & POLLIN) ? POLLRDNORM : 0) |
                            ((events & POLLOUT) ? POLLWRNORM : 0));
}

// Kernel half of a poll: netaccel entries other than listeners and pipes
// are hidden from the kernel (a negative fd is ignored by poll) and
// restored after; a pipe end is asked what its kernel pipe adds
// (pipe_kernel_poll_events), which netaccel_poll_half then takes as its
// kernel half.
int kernel_poll(struct pollfd* fds, nfds_t count, const std::vector<PollSlot>& slots,
                const struct timespec* timeout, const sigset_t* mask) {
  std::vector<struct pollfd> hidden;
  hidden.reserve(slots.size());
  for (const PollSlot& slot : slots) {
    struct pollfd& entry = fds[slot.index];
    hidden.push_back(entry);
    if (slot.socket->state == SocketState::kPipe) {
      entry.events = pipe_kernel_poll_events(slot.socket);
    } else if (slot.socket->state != SocketState::kListening) {
      entry.fd = -1;
    }
  }
  const int got = real().ppoll(fds, count, timeout, mask);
  const int error = errno;
  for (std::size_t i = 0; i < slots.size(); ++i) {
    fds[slots[i].index].fd = hidden[i].fd;
    fds[slots[i].index].events = hidden[i].events;
  }
  errno = error;
  return got;
}

// Our half: ORs netaccel readiness into revents; returns how many entries it
// made ready. With `kernel_asked`, a pipe end's revents hold what the
// kernel said of its kernel pipe; without, that half is left out until the
// next look.
int netaccel_poll_half(struct pollfd* fds, const std::vector<PollSlot>& slots, bool kernel_asked) {
  int newly_ready = 0;
  for (const PollSlot& slot : slots) {
    struct pollfd& entry = fds[slot.index];
    const uint32_t wanted = static_cast<uint32_t>(entry.events) | POLLERR | POLLHUP;
    uint32_t ours;
    if (slot.socket->state == SocketState::kPipe) {
      const uint32_t kernel_half = kernel_asked ? static_cast<uint16_t>(entry.revents) : 0;
      entry.revents = 0;
      ours = pipe_readiness_with(kernel_half, slot.socket) & wanted;
    } else {
      ours = socket_readiness(slot.socket, wanted) & wanted;
    }
    if (ours != 0 && entry.revents == 0) ++newly_ready;
    entry.revents = static_cast<short>(entry.revents | ours);
  }
  return newly_ready;
}

int count_ready(const struct pollfd* fds, nfds_t count) {
  int ready = 0;
  for (nfds_t i = 0; i < count; ++i) ready += fds[i].revents != 0;
  return ready;
}

bool arm_slots(const std::vector<PollSlot>& slots, const struct pollfd* fds, bool armed) {
  bool listeners = false;
  bool space_wait = false;
  for (const PollSlot& slot : slots) {
    if (slot.socket->state == SocketState::kListening) listeners = true;
    if (slot.socket->state == SocketState::kPipe) {
      space_wait |= arm_pipe_end(slot.socket, static_cast<uint16_t>(fds[slot.index].events), armed);
    }
    if (slot.socket->state != SocketState::kConnected) continue;
    space_wait |= arm_connection(slot.socket->connection,
                                 static_cast<uint16_t>(fds[slot.index].events), armed);
  }
  if (listeners) announce_event_wait(armed);
  return space_wait;
}

int poll_mixed(struct pollfd* fds, nfds_t count, int64_t timeout_ns, const sigset_t* mask) {
  std::vector<PollSlot> slots;
  for (nfds_t i = 0; i < count; ++i) {
    SocketRef socket = lookup_descriptor(fds[i].fd);
    if (socket && socket->state != SocketState::kBound) {
      socket->references.fetch_add(1, std::memory_order_relaxed);  // released below
      slots.push_back({i, socket.get()});
      ensure_listener_announced(socket.get());
    }
  }
  struct timespec timeout_spec;
  const struct timespec* timeout_pointer = nullptr;
  if (timeout_ns >= 0) {
    timeout_spec = {static_cast<time_t>(timeout_ns / 1000000000),
                    static_cast<long>(timeout_ns % 1000000000)};
    timeout_pointer = &timeout_spec;
  }
  if (slots.empty()) return real().ppoll(fds, count, timeout_pointer, mask);

  bool listeners = false;
  for (const PollSlot& slot : slots) listeners |= slot.socket->state == SocketState::kListening;
  const int64_t start = monotonic_ns();
  const int64_t deadline = timeout_ns < 0 ? -1 : start + timeout_ns;
  SpinBudget spin(timeout_ns < 0 ? config().spin_ns : std::min(config().spin_ns, timeout_ns));
  bool spinning = timeout_ns != 0;
  const struct timespec zero { 0, 0 };
  KernelCheckBudget& kernel_check = budget_for(fds, count);
  int result = 0;
  for (uint32_t round = 0;; ++round) {
    if (listeners && events_pending()) pump_events();
    // A call asks the kernel when it begins if the budget says so. A spin
    // asks every 256 rounds: by then nothing of ours was ready all along, so
    // the budget, which keeps ready sockets of ours from paying for the
    // kernel's, has nothing to save, and a kernel descriptor may be all the
    // call is for (a client that is not preloaded) and should not wait.
    bool ask_kernel = false;
    int64_t now = start;
    if ((round & 255) == 0) {
      if (round != 0) now = monotonic_ns();
      ask_kernel = round != 0 || kernel_check.due(now);
    }
    for (nfds_t i = 0; i < count; ++i) fds[i].revents = 0;
    if (!ask_kernel) {
      if (netaccel_poll_half(fds, slots, false) > 0) {
        result = count_ready(fds, count);
        break;
      }
      // Nothing of ours: a look that must not wait asks the kernel anyway,
      // as a program that made one of its descriptors ready expects to see it.
      ask_kernel = timeout_ns == 0;
    }
    if (ask_kernel) {
      const int got = kernel_poll(fds, count, slots, &zero, nullptr);
      if (got < 0) {
        result = -1;
        break;
      }
      kernel_check.asked(now, got > 0);
      netaccel_poll_half(fds, slots, true);
      result = count_ready(fds, count);
      if (result > 0 || timeout_ns == 0) break;
    }
    if (spinning && (spinning = spin.keep_spinning())) continue;
    // Sleep: the kernel entries as they are, plus the eventfds that wake us.
    std::vector<struct pollfd> sleeping(fds, fds + count);
    for (const PollSlot& slot : slots) {
      if (slot.socket->state == SocketState::kPipe) {
        // Its kernel end tells of hang-ups (and, once downgraded, of data).
        sleeping[slot.index].events = pipe_kernel_poll_events(slot.socket);
      } else if (slot.socket->state != SocketState::kListening) {
        sleeping[slot.index].fd = -1;
      }
      const int wake = wake_fd_of(slot.socket);
      if (wake >= 0) sleeping.push_back({wake, POLLIN, 0});
    }
    if (listeners && event_wake_fd() >= 0) sleeping.push_back({event_wake_fd(), POLLIN, 0});
    // Accept queues last: they are read by take_accept_queue, not drained.
    const std::size_t first_queue = sleeping.size();
    for (const PollSlot& slot : slots) {
      if (slot.socket->state == SocketState::kListening && slot.socket->accept_queue) {
        sleeping.push_back({slot.socket->accept_queue.get(), POLLIN, 0});
      }
    }
    const bool space_wait = arm_slots(slots, fds, true);
    const bool wake_may_be_missed = !fence_before_sleeping_for_data();
    for (nfds_t i = 0; i < count; ++i) fds[i].revents = 0;
    if (netaccel_poll_half(fds, slots, false) > 0) {
      arm_slots(slots, fds, false);
      continue;
    }
    struct timespec left;
    const struct timespec* left_pointer = nullptr;
    if (deadline >= 0 || space_wait || wake_may_be_missed) {
      int64_t remaining =
          deadline >= 0 ? std::max<int64_t>(0, deadline - monotonic_ns()) : INT64_MAX;
      if (space_wait || wake_may_be_missed)
        remaining = std::min<int64_t>(remaining, kSpaceRecheckMs * 1000000LL);
      left = {static_cast<time_t>(remaining / 1000000000),
              static_cast<long>(remaining % 1000000000)};
      left_pointer = &left;
    }
    const int got = real().ppoll(sleeping.data(), sleeping.size(), left_pointer, mask);
    const int error = errno;
    arm_slots(slots, fds, false);
    if (got < 0) {
      errno = error;
      result = -1;
      break;
    }
    if (std::any_of(sleeping.begin() + static_cast<std::ptrdiff_t>(first_queue), sleeping.end(),
                    [](const struct pollfd& entry) { return entry.revents != 0; })) {
      for (const PollSlot& slot : slots) {
        if (slot.socket->state == SocketState::kListening) take_accept_queue(slot.socket);
      }
    }
    for (std::size_t i = count; i < first_queue; ++i) {
      if (sleeping[i].revents == 0) continue;
      if (sleeping[i].fd == event_wake_fd()) {
        drain_event_wake();
        pump_events();
      } else {
        drain_wake_fd(sleeping[i].fd);
      }
    }
    for (nfds_t i = 0; i < count; ++i) fds[i].revents = sleeping[i].revents;
    kernel_check.asked(monotonic_ns(), got > 0);
    for (const PollSlot& slot : slots) {
      const SocketState state = slot.socket->state;
      if (state != SocketState::kListening && state != SocketState::kPipe) {
        fds[slot.index].revents = 0;
      }
    }
    netaccel_poll_half(fds, slots, true);
    result = count_ready(fds, count);
    if (result > 0) break;
    if (deadline >= 0 && monotonic_ns() >= deadline) break;
  }
  const int error = errno;
  for (const PollSlot& slot : slots) release_socket(slot.socket);
  errno = error;
  return result;
}

int64_t timespec_to_ns(const struct timespec* timeout) {
  if (timeout == nullptr) return -1;
  return static_cast<int64_t>(timeout->tv_sec) * 1000000000 + timeout->tv_nsec;
}

}  // namespace

namespace {

// The kernel copies the array in (EINVAL beyond RLIMIT_NOFILE entries,
// EFAULT when it cannot read them all) before it polls, and writes every
// revents back at the end: into an array it cannot write, as far as it can,
// and then it fails with EFAULT, however the poll went (do_sys_poll).
int poll_user_array(struct pollfd* fds, nfds_t count, int64_t timeout_ns, const sigset_t* mask) {
  const bool too_many = count > SIZE_MAX / sizeof *fds;
  const std::size_t bytes = count * sizeof *fds;
  const std::size_t writable = too_many ? 0 : accessible_prefix(fds, bytes, Access::kWrite);
  if (writable == bytes) return poll_mixed(fds, count, timeout_ns, mask);
  if (too_many || !accessible(fds, bytes, Access::kRead)) {
    // Refused before anything is polled: the kernel says why.
    const struct timespec zero {};
    return real().ppoll(fds, count, &zero, mask);
  }
  std::vector<struct pollfd> copy(fds, fds + count);
  poll_mixed(copy.data(), count, timeout_ns, mask);
  for (nfds_t i = 0; (i + 1) * sizeof *fds <= writable; ++i) fds[i].revents = copy[i].revents;
  return fail(EFAULT);
}

}  // namespace

int intercepted_poll(struct pollfd* fds, nfds_t count, int timeout) {
  return poll_user_array(fds, count, timeout < 0 ? -1 : int64_t{timeout} * 1000000, nullptr);
}

int intercepted___poll_chk(struct pollfd* fds, nfds_t count, int timeout, size_t fds_size) {
  if (fds_size / sizeof(struct pollfd) < count) abort();  // what glibc's check does
  return intercepted_poll(fds, count, timeout);
}

int intercepted_ppoll(struct pollfd* fds, nfds_t count, const struct timespec* timeout,
                      const sigset_t* mask) {
  if (timeout != nullptr &&
      (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000)) {
    return fail(EINVAL);
  }
  return poll_user_array(fds, count, timespec_to_ns(timeout), mask);
}

namespace {

// The bytes of each fd_set that select reads and writes for `nfds`
// descriptors (the kernel's FDS_BYTES), within the FD_SETSIZE we handle.
std::size_t fd_set_bytes(int nfds) {
  const std::size_t bits = static_cast<std::size_t>(std::clamp(nfds, 0, FD_SETSIZE));
  constexpr std::size_t kWordBits = 8 * sizeof(long);
  return (bits + kWordBits - 1) / kWordBits * sizeof(long);
}

// Whether the kernel could read every set given: otherwise it fails the
// call with EFAULT before it looks at a descriptor.
bool fd_sets_readable(int nfds, const fd_set* readable, const fd_set* writable,
                      const fd_set* exceptional) {
  const std::size_t bytes = fd_set_bytes(nfds);
  const fd_set* const sets[3] = {readable, writable, exceptional};
  return std::all_of(std::begin(sets), std::end(sets), [bytes](const fd_set* set) {
    return set == nullptr || accessible(set, bytes, Access::kRead);
  });
}

int select_mixed(int nfds, fd_set* readable, fd_set* writable, fd_set* exceptional,
                 int64_t timeout_ns, const sigset_t* mask) {
  std::vector<struct pollfd> entries;
  for (int fd = 0; fd < nfds && fd < FD_SETSIZE; ++fd) {
    short events = 0;
    if (readable != nullptr && FD_ISSET(fd, readable)) events |= POLLIN;
    if (writable != nullptr && FD_ISSET(fd, writable)) events |= POLLOUT;
    if (exceptional != nullptr && FD_ISSET(fd, exceptional)) events |= POLLPRI;
    if (events != 0) entries.push_back({fd, events, 0});
  }
  const int got = poll_mixed(entries.data(), entries.size(), timeout_ns, mask);
  if (got < 0) return -1;
  for (const struct pollfd& entry : entries) {
    if (entry.revents & POLLNVAL) return fail(EBADF);
  }
  fd_set results[3];
  for (fd_set& result : results) FD_ZERO(&result);
  int bits = 0;
  for (const struct pollfd& entry : entries) {
    if ((entry.events & POLLIN) && (entry.revents & (POLLIN | POLLHUP | POLLERR))) {
      FD_SET(entry.fd, &results[0]);
      ++bits;
    }
    if ((entry.events & POLLOUT) && (entry.revents & (POLLOUT | POLLERR))) {
      FD_SET(entry.fd, &results[1]);
      ++bits;
    }
    if ((entry.events & POLLPRI) && (entry.revents & POLLPRI)) {
      FD_SET(entry.fd, &results[2]);
      ++bits;
    }
  }
  // As the kernel: only the bytes `nfds` covers are written back, set by
  // set, and a set it cannot write fails the call with EFAULT.
  const std::size_t bytes = fd_set_bytes(nfds);
  fd_set* const sets[3] = {readable, writable, exceptional};
  for (int i = 0; i < 3; ++i) {
    if (sets[i] == nullptr) continue;
    if (!accessible(sets[i], bytes, Access::kWrite)) return fail(EFAULT);
    memcpy(sets[i], &results[i], bytes);
  }
  return bits;
}

bool any_netaccel(int nfds, const fd_set* readable, const fd_set* writable,
                  const fd_set* exceptional) {
  for (int fd = 0; fd < nfds && fd < FD_SETSIZE; ++fd) {
    if (((readable != nullptr && FD_ISSET(fd, readable)) ||
         (writable != nullptr && FD_ISSET(fd, writable)) ||
         (exceptional != nullptr && FD_ISSET(fd, exceptional))) &&
        is_netaccel_fd(fd)) {
      return true;
    }
  }
  return false;
}

}  // namespace

int intercepted_select(int nfds, fd_set* readable, fd_set* writable, fd_set* exceptional,
                       struct timeval* timeout) {
  if (!fd_sets_readable(nfds, readable, writable, exceptional) ||
      !any_netaccel(nfds, readable, writable, exceptional)) {
    return real().select(nfds, readable, writable, exceptional, timeout);
  }
  if (timeout != nullptr && (timeout->tv_sec < 0 || timeout->tv_usec < 0)) return fail(EINVAL);
  const int64_t timeout_ns =
      timeout == nullptr
          ? -1
          : static_cast<int64_t>(timeout->tv_sec) * 1000000000 + timeout->tv_usec * 1000;
  const int64_t start = monotonic_ns();
  const int got = select_mixed(nfds, readable, writable, exceptional, timeout_ns, nullptr);
  if (timeout != nullptr) {
    // Linux reports the time not slept.
    const int64_t left = std::max<int64_t>(0, timeout_ns - (monotonic_ns() - start));
    timeout->tv_sec = left / 1000000000;
    timeout->tv_usec = (left % 1000000000) / 1000;
  }
  return got;
}

int intercepted_pselect(int nfds, fd_set* readable, fd_set* writable, fd_set* exceptional,
                        const struct timespec* timeout, const sigset_t* mask) {
  if (!fd_sets_readable(nfds, readable, writable, exceptional) ||
      !any_netaccel(nfds, readable, writable, exceptional)) {
    return real().pselect(nfds, readable, writable, exceptional, timeout, mask);
  }
  return select_mixed(nfds, readable, writable, exceptional, timespec_to_ns(timeout), mask);
}

}  // namespace netaccel::preload

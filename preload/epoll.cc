// epoll over sets that mix kernel and netaccel descriptors.
//
// Each emulated epoll set registers, in the application's real epoll
// instance, the eventfd that the peer signals when we announced that we
// sleep, tagged so that we recognise it; kernel descriptors stay registered
// exactly as the application asked.
#include <errno.h>
#include <sys/epoll.h>
#include <sys/mman.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <mutex>
#include <vector>

#include "intercepted.h"
#include "pipes.h"
#include "readiness.h"
#include "real_calls.h"
#include "runtime.h"
#include "user_memory.h"

namespace netaccel::preload {

namespace {

// Our registrations in the application's kernel epoll instances carry tags
// in place of its data: a wake eventfd (kWakeTag), an epoll instance nested
// in the set (kNestedTag), the process's event-queue wake fd.
constexpr uint64_t kTagBase = 0x4e41ull << 48;
constexpr uint64_t kNestedTag = kTagBase | (1ull << 32);
// A pipe end's own kernel descriptor, registered edge-triggered: its
// POLLHUP, POLLERR and, once downgraded, its data wake the wait.
constexpr uint64_t kPipeKernelTag = kTagBase | (2ull << 32);
// A listener's accept queue (Qa), registered edge-triggered: a connection
// queued or given back while we sleep wakes the wait, which takes it.
constexpr uint64_t kAcceptQueueTag = kTagBase | (4ull << 32);  // a bit of its own
constexpr uint64_t kEventWakeTag = kTagBase | 0xffffffffull;
bool is_tag(uint64_t data) {
  return (data >> 48) == 0x4e41;
}
uint64_t wake_tag(int wake_fd) {
  return kTagBase | static_cast<uint32_t>(wake_fd);
}

// One registration, keyed as the kernel keys it: by descriptor and open
// file. It lives while the file is open, even after that descriptor closed.
struct EpollMember {
  int fd;
  Socket* socket;  // the open file; null for a nested epoll instance
  uint32_t events;
  epoll_data_t data;
  uint32_t last_ready = 0;  // edge-triggered: what we saw last time
  uint32_t last_head = 0;
  uint32_t last_tail = 0;
  bool disarmed = false;     // EPOLLONESHOT already fired
  int registered_wake = -1;  // the eventfd it needs in the kernel epoll (shared by its dups)
  bool listener = false;
  bool pipe_registered = false;  // its pipe end's kernel descriptor (kPipeKernelTag)
  // That descriptor reported an edge: news the ring positions cannot show
  // (a hang-up, or data in a downgraded pipe).
  bool kernel_edge = false;
  // A pipe end's kernel half (pipe_kernel_half), asked again only after that
  // descriptor reported a change: otherwise every scan would be a poll().
  bool kernel_half_stale = true;
  uint32_t kernel_half = 0;
  uint32_t armed_events = 0;  // a pipe end: what arm_members announced, to withdraw
  int registered_queue = -1;  // a listener: its accept queue (kAcceptQueueTag)
  // Taken out by EPOLL_CTL_DEL, kept with its wake registration until its
  // file closes: event loops take a connection out and put it back on every
  // request (redis-benchmark: two epoll_ctl per request), which would be two
  // system calls each time for a registration no one signals meanwhile.
  bool removed = false;

  bool watched() const { return !disarmed && !removed; }
};

struct EpollSet {
  std::mutex mutex;
  std::vector<EpollMember> members;
  int listeners = 0;
  uint32_t listener_generation = 0;  // its listeners announced as of this generation
  bool event_wake_registered = false;
  uint32_t rotation = 0;
  KernelCheckBudget kernel_check;
  std::atomic<uint32_t> turns{0};  // look_for_events: whose turn the odd slot is
};

// The kernel refuses deeper nesting (EP_MAX_NESTS).
constexpr int kMaxEpollNesting = 4;

constexpr int kMaxEpollFds = 1 << 20;
std::mutex g_sets_mutex;
std::vector<int> g_set_fds;  // the epoll fds that have a set, under g_sets_mutex
template <typename T>
T* descriptor_table() {
  return static_cast<T*>(mmap(nullptr, sizeof(T) * kMaxEpollFds, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
}
std::atomic<EpollSet*>* epoll_sets() {
  static auto* table = descriptor_table<std::atomic<EpollSet*>>();
  return table;
}
// Every epoll instance the application created: one may be nested in a set.
std::atomic<uint8_t>* epoll_instances() {
  static auto* table = descriptor_table<std::atomic<uint8_t>>();
  return table;
}

bool is_epoll_instance(int fd) {
  return fd >= 0 && fd < kMaxEpollFds && epoll_instances()[fd].load(std::memory_order_relaxed) != 0;
}

EpollSet* find_set(int epfd) {
  if (epfd < 0 || epfd >= kMaxEpollFds) return nullptr;
  return epoll_sets()[epfd].load(std::memory_order_acquire);
}

EpollSet* find_or_create_set(int epfd) {
  if (epfd < 0 || epfd >= kMaxEpollFds) return nullptr;
  std::lock_guard lock(g_sets_mutex);
  EpollSet* set = epoll_sets()[epfd].load(std::memory_order_relaxed);
  if (set == nullptr) {
    set = new EpollSet;  // kept until the epoll fd closes; see epoll_closed
    epoll_sets()[epfd].store(set, std::memory_order_release);
    g_set_fds.push_back(epfd);
  }
  return set;
}

template <typename Visit>
void for_each_set(Visit visit) {
  std::lock_guard lock(g_sets_mutex);
  for (const int epfd : g_set_fds) visit(epfd, epoll_sets()[epfd].load(std::memory_order_relaxed));
}

int add_kernel_registration(int epfd, int fd, uint32_t events, uint64_t data) {
  struct epoll_event event {};
  event.events = events;
  event.data.u64 = data;
  return real().epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event);
}

bool wake_registered(const EpollSet* set, int wake) {
  return std::any_of(set->members.begin(), set->members.end(),
                     [wake](const EpollMember& m) { return m.registered_wake == wake; });
}

// Registers `member`'s wake eventfd in the set's kernel epoll, once for all
// the descriptors of one socket.
void register_wake(int epfd, EpollSet* set, EpollMember& member) {
  const int wake = wake_fd_of(member.socket);
  if (wake < 0) return;
  if (wake_registered(set, wake) ||
      add_kernel_registration(epfd, wake, EPOLLIN, wake_tag(wake)) == 0) {
    member.registered_wake = wake;
  }
}

bool queue_registered(const EpollSet* set, int queue) {
  return std::any_of(set->members.begin(), set->members.end(),
                     [queue](const EpollMember& m) { return m.registered_queue == queue; });
}

// Registers a listener member's accept queue, once for all its descriptors.
// Edge-triggered: a queue whose monitor went stays readable (its hang-up),
// and once take_accept_queue closed it here the registration cannot be
// removed while another process still holds the queue.
void register_accept_queue(int epfd, EpollSet* set, EpollMember& member) {
  const int queue = member.socket->accept_queue.get();
  if (queue < 0 || member.registered_queue >= 0) return;
  if (queue_registered(set, queue) ||
      add_kernel_registration(epfd, queue, EPOLLIN | EPOLLET,
                              kAcceptQueueTag | static_cast<uint32_t>(queue)) == 0) {
    member.registered_queue = queue;
  }
}

// Takes `member` out of the set (under its lock) with what it registered.
void erase_member(int epfd, EpollSet* set, std::vector<EpollMember>::iterator member) {
  const int wake = member->registered_wake;
  if (member->listener) {
    // A closed descriptor's number may hold another file by now; the
    // kernel drops the listener's own registration when its file closes.
    if (lookup_socket(member->fd).get() == member->socket) {
      real().epoll_ctl(epfd, EPOLL_CTL_DEL, member->fd, nullptr);
    }
    --set->listeners;
  }
  if (member->pipe_registered && lookup_descriptor(member->fd).get() == member->socket) {
    real().epoll_ctl(epfd, EPOLL_CTL_DEL, member->fd, nullptr);
  }
  if (member->socket != nullptr) {
    member->socket->epoll_memberships.fetch_sub(1, std::memory_order_relaxed);
  }
  const int queue = member->registered_queue;
  // Only while the number still holds the queue we registered.
  const bool queue_open = queue >= 0 && member->socket->accept_queue.get() == queue;
  set->members.erase(member);
  if (queue_open && !queue_registered(set, queue)) {
    real().epoll_ctl(epfd, EPOLL_CTL_DEL, queue, nullptr);
  }
  if (wake >= 0 && !wake_registered(set, wake)) {
    real().epoll_ctl(epfd, EPOLL_CTL_DEL, wake, nullptr);
  }
}

void drain_tagged(EpollSet* set, uint64_t tag) {
  if (tag == kEventWakeTag) {
    drain_event_wake();
    pump_events();
    return;
  }
  if ((tag & kNestedTag) == kNestedTag) return;  // the nested set's own wait drains it
  const int fd = static_cast<int>(tag & 0xffffffffu);
  std::lock_guard lock(set->mutex);
  if ((tag & kAcceptQueueTag) == kAcceptQueueTag) {
    for (EpollMember& member : set->members) {
      if (member.registered_queue == fd) take_accept_queue(member.socket);
    }
    return;
  }
  if ((tag & kPipeKernelTag) == kPipeKernelTag) {
    for (EpollMember& member : set->members) {
      if (member.pipe_registered && member.fd == fd) {
        member.kernel_edge = true;
        member.kernel_half_stale = true;
      }
    }
    return;
  }
  // Only a wake fd a member still holds is ours to read.
  const int wake = fd;
  if (wake_registered(set, wake)) drain_wake_fd(wake);
}

// Moves the application's kernel events to the front, draining our tags.
int filter_kernel_events(EpollSet* set, struct epoll_event* events, int count) {
  int kept = 0;
  for (int i = 0; i < count; ++i) {
    if (is_tag(events[i].data.u64)) {
      drain_tagged(set, events[i].data.u64);
    } else {
      events[kept++] = events[i];
    }
  }
  return kept;
}

bool set_has_events(int epfd, EpollSet* set, int depth);

// A pipe member's readiness. Its kernel half is read through the member's
// descriptor while that still holds this end. A read end's, while the ring
// carries the pipe, is only the hang-up, which that descriptor's
// edge-triggered registration reports: it is asked once per report, not on
// every scan. (A write end asks only once no reader is counted.)
uint32_t pipe_member_readiness(EpollMember& member) {
  Socket* end = member.socket;
  const int fd = lookup_descriptor(member.fd).get() == end ? member.fd : -1;
  if (fd < 0 || !member.pipe_registered || end->pipe_write_end || pipe_downgraded(end)) {
    return pipe_readiness(fd, end);
  }
  if (member.kernel_half_stale) {
    member.kernel_half_stale = false;  // a report from now on marks it again
    member.kernel_half = pipe_kernel_half(fd, end);
  }
  return pipe_readiness_with(member.kernel_half, end);
}

// What `member` reports now, with its edge-triggered rules applied; with
// `consume` its edge state advances (a real report, not a look).
uint32_t member_report(EpollMember& member, bool consume, int depth) {
  const uint32_t wanted = member.events | EPOLLERR | EPOLLHUP;
  uint32_t ready = 0;
  uint32_t head = 0, tail = 0;
  if (member.socket == nullptr) {
    // An epoll instance is readable while it has an event to report.
    EpollSet* inner = find_set(member.fd);
    if (inner != nullptr && depth < kMaxEpollNesting && set_has_events(member.fd, inner, depth + 1))
      ready = (EPOLLIN | EPOLLRDNORM) & wanted;
  } else if (member.socket->state == SocketState::kPipe) {
    ready = pipe_member_readiness(member) & wanted;
    head = tail = pipe_edge_position(member.socket);
  } else {
    Socket* socket = member.socket;
    ready = socket_readiness(socket, wanted) & wanted;
    if ((member.events & EPOLLET) && socket->state == SocketState::kConnected) {
      head = socket->connection->rx.control().head.load(std::memory_order_acquire);
      tail = socket->connection->tx.control().tail.load(std::memory_order_acquire);
    }
  }
  if (!(member.events & EPOLLET)) return ready;
  // Report what became ready, or new bytes / new space since last time.
  uint32_t report = ready & ~member.last_ready;
  if ((ready & EPOLLIN) && head != member.last_head) report |= ready & EPOLLIN;
  if ((ready & EPOLLOUT) && tail != member.last_tail) report |= ready & EPOLLOUT;
  if (member.kernel_edge) report |= ready;
  if (consume) {
    member.last_ready = ready;
    member.last_head = head;
    member.last_tail = tail;
    member.kernel_edge = false;
  }
  // Like the kernel, an edge reports everything that is ready, not only
  // what changed.
  return report != 0 ? ready : 0;
}

// Whether a set nested in another has an event to report, without taking
// it: one of our members, or one of the kernel's once our wake signals are
// drained from its kernel epoll (else they would keep it readable).
bool set_has_events(int epfd, EpollSet* set, int depth) {
  {
    std::lock_guard lock(set->mutex);
    for (EpollMember& member : set->members) {
      if (member.watched() && member_report(member, false, depth) != 0) return true;
      if (member.registered_wake >= 0) drain_wake_fd(member.registered_wake);
    }
  }
  struct pollfd kernel {
    epfd, POLLIN, 0
  };
  return real().poll(&kernel, 1, 0) > 0;
}

// Where a look at the members goes on from: a look in two parts (before and
// after the kernel's events) visits each member once, so none is reported
// twice in one wait.
struct MemberScan {
  bool started = false;
  std::size_t next = 0;
  std::size_t left = 0;     // members not visited yet
  std::size_t members = 0;  // how many the set had when the look began
};

// Ready members, with edge-triggered and one-shot rules applied.
int collect_ready(EpollSet* set, struct epoll_event* out, int capacity, MemberScan& scan) {
  std::lock_guard lock(set->mutex);
  const std::size_t count = set->members.size();
  if (!scan.started) {
    // Each look starts one member further: no member starves another.
    scan = {true, count == 0 ? 0 : set->rotation++ % count, count, count};
  } else if (count != scan.members) {
    scan.left = 0;  // the set changed in between: the rest waits for the next look
  }
  int found = 0;
  while (scan.left > 0 && found < capacity) {
    EpollMember& member = set->members[scan.next];
    if (++scan.next == count) scan.next = 0;  // a division per member showed in scans of 25
    --scan.left;
    if (!member.watched()) continue;
    const uint32_t report = member_report(member, true, 0);
    if (report == 0) continue;
    out[found].events = report;
    out[found].data = member.data;
    ++found;
    if (member.events & EPOLLONESHOT) member.disarmed = true;
  }
  return found;
}

int collect_ready(EpollSet* set, struct epoll_event* out, int capacity) {
  MemberScan scan;
  return collect_ready(set, out, capacity, scan);
}

// One look for events: ours, found in memory, and when `ask_kernel` the
// kernel's, by a system call. Each side keeps part of the array for the
// other (an odd slot goes to each in turn, so with room for one event they
// alternate) and may take what the other leaves: neither can keep the other
// out. Returns the events found, or -1 when the kernel failed and nothing
// was found.
int look_for_events(int epfd, EpollSet* set, struct epoll_event* events, int max_events,
                    bool ask_kernel, int64_t now_ns) {
  MemberScan scan;
  if (!ask_kernel) return collect_ready(set, events, max_events, scan);
  const uint32_t turn = set->turns.fetch_add(1, std::memory_order_relaxed) & 1;
  const int kernel_share = (max_events + static_cast<int>(turn)) / 2;
  int found = collect_ready(set, events, max_events - kernel_share, scan);
  if (found == max_events) return found;  // ours took their turn's slot: the kernel stays due
  const int got = real().epoll_pwait(epfd, events + found, max_events - found, 0, nullptr);
  if (got < 0) return found > 0 ? found : -1;
  const int kept = filter_kernel_events(set, events + found, got);
  set->kernel_check.asked(now_ns, kept > 0);
  found += kept;
  return found + collect_ready(set, events + found, max_events - found, scan);
}

// A nested set's members are armed too: their wake fds make it readable.
bool arm_members(EpollSet* set, bool armed, int depth = 0) {
  std::lock_guard lock(set->mutex);
  bool space_wait = false;
  for (EpollMember& member : set->members) {
    // A pipe end counts its sleepers: each announcement is withdrawn as made,
    // even if the member was disarmed or changed in between.
    if (member.socket != nullptr && member.socket->state == SocketState::kPipe) {
      if (armed && !member.disarmed) member.armed_events = member.events;
      space_wait |= arm_pipe_end(member.socket, member.armed_events, armed);
      if (!armed) member.armed_events = 0;
      continue;
    }
    if (!member.watched()) continue;
    if (member.socket == nullptr) {
      EpollSet* inner = find_set(member.fd);
      if (inner != nullptr && depth < kMaxEpollNesting) {
        space_wait |= arm_members(inner, armed, depth + 1);
      }
    } else if (member.socket->state == SocketState::kConnected) {
      space_wait |= arm_connection(member.socket->connection, member.events, armed);
    }
  }
  if (set->listeners > 0) announce_event_wait(armed);
  return space_wait;
}

// A set that watched listeners before a fork (or before the monitor came
// back) waits for connections now: whichever process waits on it takes them.
void announce_unannounced_listeners(int epfd, EpollSet* set) {
  const uint32_t generation = g_listener_generation.load(std::memory_order_relaxed);
  if (set->listeners == 0 || set->listener_generation == generation) return;
  std::vector<int> listeners;
  {
    std::lock_guard lock(set->mutex);
    for (EpollMember& member : set->members) {
      if (!member.listener) continue;
      listeners.push_back(member.fd);
      // Its accept queue may be new (made at the fork).
      register_accept_queue(epfd, set, member);
    }
    set->listener_generation = generation;
  }
  for (const int fd : listeners) {
    SocketRef socket = lookup_socket(fd);
    if (socket) ensure_listener_announced(socket.get());
  }
}

int timeout_left_ms(int64_t deadline_ns) {
  if (deadline_ns < 0) return -1;
  const int64_t left = deadline_ns - monotonic_ns();
  return left <= 0 ? 0 : static_cast<int>((left + 999999) / 1000000);
}

// epoll_ctl for an epoll instance `fd` inside the set `epfd`. The kernel
// keeps nesting it (and refuses loops); our tag there wakes the outer wait,
// which works out the inner set's readiness itself.
int nested_epoll_ctl(int epfd, int op, int fd, struct epoll_event* event) {
  if (op != EPOLL_CTL_DEL && !accessible(event, sizeof *event, Access::kRead)) {
    return fail(EFAULT);
  }
  EpollSet* set = op == EPOLL_CTL_ADD ? find_or_create_set(epfd) : find_set(epfd);
  if (set == nullptr) return real().epoll_ctl(epfd, op, fd, event);
  if (op == EPOLL_CTL_ADD) find_or_create_set(fd);  // its readiness is worked out from it
  struct epoll_event tagged {};
  if (event != nullptr) {
    tagged.events = EPOLLIN | EPOLLET;
    tagged.data.u64 = kNestedTag | static_cast<uint32_t>(fd);
  }
  std::lock_guard lock(set->mutex);
  if (real().epoll_ctl(epfd, op, fd, event != nullptr ? &tagged : nullptr) != 0) return -1;
  auto member = std::find_if(set->members.begin(), set->members.end(), [fd](const EpollMember& m) {
    return m.socket == nullptr && m.fd == fd;
  });
  switch (op) {
    case EPOLL_CTL_ADD:
      set->members.push_back(EpollMember{fd, nullptr, event->events, event->data});
      return 0;
    case EPOLL_CTL_MOD:
      if (member != set->members.end()) {
        member->events = event->events;
        member->data = event->data;
        member->disarmed = false;
        member->last_ready = 0;
      }
      return 0;
    default:
      if (member != set->members.end()) set->members.erase(member);
      return 0;
  }
}

// The kernel's largest max_events (EP_MAX_EVENTS).
constexpr int kMaxEpollEvents = INT_MAX / sizeof(struct epoll_event);

// The events array has no room for one event: the kernel then fails with
// EFAULT as soon as it has an event to report, keeping it for a later wait,
// and returns 0 when none came before the timeout (ep_send_events).
int wait_without_room(int epfd, EpollSet* set, struct epoll_event* events, int max_events,
                      int timeout, const sigset_t* mask) {
  const int64_t deadline = timeout < 0 ? -1 : monotonic_ns() + int64_t{timeout} * 1000000;
  for (;;) {
    if (set->event_wake_registered) {
      // The monitor's signal would count as news of the kernel's below.
      drain_event_wake();
      pump_events();
    }
    // Looks that take nothing: ours, then the kernel's.
    if (set_has_events(epfd, set, 0)) return fail(EFAULT);
    int sleep_ms = timeout_left_ms(deadline);
    if (sleep_ms == 0) return 0;
    const bool space_wait = arm_members(set, true);
    const bool wake_may_be_missed = !fence_before_sleeping_for_data();
    if (set_has_events(epfd, set, 0)) {
      arm_members(set, false);
      return fail(EFAULT);
    }
    if ((space_wait || wake_may_be_missed) && (sleep_ms < 0 || sleep_ms > kSpaceRecheckMs)) {
      sleep_ms = kSpaceRecheckMs;
    }
    // Whatever becomes ready, a wake descriptor of ours included, ends this
    // sleep with EFAULT and is looked at again above.
    const int got = real().epoll_pwait(epfd, events, max_events, sleep_ms, mask);
    const int error = errno;
    arm_members(set, false);
    if (got < 0 && error != EFAULT) return fail(error);
  }
}

}  // namespace

int intercepted_epoll_create(int size) {
  const int epfd = real().epoll_create(size);
  if (epfd >= 0 && epfd < kMaxEpollFds) epoll_instances()[epfd].store(1, std::memory_order_relaxed);
  return epfd;
}

int intercepted_epoll_create1(int flags) {
  const int epfd = real().epoll_create1(flags);
  if (epfd >= 0 && epfd < kMaxEpollFds) epoll_instances()[epfd].store(1, std::memory_order_relaxed);
  return epfd;
}

int intercepted_epoll_ctl(int epfd, int op, int fd, struct epoll_event* event) {
  SocketRef socket = lookup_descriptor(fd);
  if (!socket || socket->state == SocketState::kBound) {
    if (!socket && is_epoll_instance(fd) && fd != epfd) {
      return nested_epoll_ctl(epfd, op, fd, event);
    }
    return real().epoll_ctl(epfd, op, fd, event);
  }
  if (op != EPOLL_CTL_DEL && !accessible(event, sizeof *event, Access::kRead)) {
    return fail(EFAULT);
  }
  if (epfd == fd) return fail(EINVAL);
  EpollSet* set = op == EPOLL_CTL_ADD ? find_or_create_set(epfd) : find_set(epfd);
  if (set == nullptr) return op == EPOLL_CTL_ADD ? fail(EBADF) : fail(ENOENT);
  std::lock_guard lock(set->mutex);
  auto member = std::find_if(set->members.begin(), set->members.end(), [&](const EpollMember& m) {
    return m.fd == fd && m.socket == socket.get();
  });
  const bool listener = socket->state == SocketState::kListening;
  if (listener) ensure_listener_announced(socket.get());
  switch (op) {
    case EPOLL_CTL_ADD: {
      if (member != set->members.end() && !member->removed) return fail(EEXIST);
      if (member != set->members.end()) {
        if (socket->state == SocketState::kConnected) {
          // Back in: its wake registration never left the kernel.
          const int wake = member->registered_wake;
          *member = EpollMember{fd, socket.get(), event->events, event->data};
          member->registered_wake = wake;
          return 0;
        }
        erase_member(epfd, set, member);
      }
      EpollMember added{fd, socket.get(), event->events, event->data};
      added.listener = listener;
      if (listener && real().epoll_ctl(epfd, EPOLL_CTL_ADD, fd, event) != 0) return -1;
      register_wake(epfd, set, added);
      if (wake_fd_of(socket.get()) >= 0 && added.registered_wake < 0) {
        const int error = errno;
        if (listener) real().epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
        return fail(error);
      }
      if (socket->state == SocketState::kPipe) {
        // Both directions: each end reports only what its mode allows, and
        // a write end's kernel pipe, empty until downgraded, changes never.
        added.pipe_registered =
            add_kernel_registration(epfd, fd, EPOLLIN | EPOLLOUT | EPOLLET,
                                    kPipeKernelTag | static_cast<uint32_t>(fd)) == 0;
      }
      if (listener) {
        register_accept_queue(epfd, set, added);
        ++set->listeners;
        if (!set->event_wake_registered && event_wake_fd() >= 0 &&
            add_kernel_registration(epfd, event_wake_fd(), EPOLLIN, kEventWakeTag) == 0) {
          set->event_wake_registered = true;
        }
      }
      set->members.push_back(added);
      socket->epoll_memberships.fetch_add(1, std::memory_order_relaxed);
      return 0;
    }
    case EPOLL_CTL_MOD:
      if (member == set->members.end() || member->removed) return fail(ENOENT);
      if (listener && real().epoll_ctl(epfd, EPOLL_CTL_MOD, fd, event) != 0) return -1;
      member->events = event->events;
      member->data = event->data;
      member->disarmed = false;
      member->last_ready = 0;
      return 0;
    case EPOLL_CTL_DEL:
      if (member == set->members.end() || member->removed) return fail(ENOENT);
      if (socket->state == SocketState::kConnected && member->registered_wake >= 0) {
        member->removed = true;
        return 0;
      }
      erase_member(epfd, set, member);
      return 0;
    default:
      return fail(EINVAL);
  }
}

int intercepted_epoll_pwait(int epfd, struct epoll_event* events, int max_events, int timeout,
                            const sigset_t* mask) {
  EpollSet* set = find_set(epfd);
  if (set == nullptr || max_events <= 0 || max_events > kMaxEpollEvents) {
    // Only kernel descriptors, but the results must still hide our tags.
    for (;;) {
      const int got = real().epoll_pwait(epfd, events, max_events, timeout, mask);
      if (got <= 0 || set == nullptr) return got;
      const int kept = filter_kernel_events(set, events, got);
      if (kept > 0 || timeout == 0) return kept;
    }
  }
  announce_unannounced_listeners(epfd, set);
  // The kernel writes the events one by one and stops at the first it
  // cannot write: as many are reported as fit before that.
  const int room = static_cast<int>(
      accessible_prefix(events, static_cast<std::size_t>(max_events) * sizeof *events,
                        Access::kWrite) /
      sizeof *events);
  if (room == 0) return wait_without_room(epfd, set, events, max_events, timeout, mask);
  max_events = room;
  const int64_t start = monotonic_ns();
  const int64_t deadline = timeout < 0 ? -1 : start + static_cast<int64_t>(timeout) * 1000000;
  SpinBudget spin(timeout < 0 ? config().spin_ns
                              : std::min<int64_t>(config().spin_ns, int64_t{timeout} * 1000000));
  bool spinning = timeout != 0;
  for (uint32_t round = 0;; ++round) {
    if (set->listeners > 0 && events_pending()) pump_events();
    // A wait asks the kernel when it begins if the budget says so. A spin
    // asks every 256 rounds: by then nothing of ours was ready all along, so
    // the budget, which keeps ready sockets of ours from paying for the
    // kernel's, has nothing to save, and a kernel descriptor may be all the
    // wait is for (a client that is not preloaded) and should not wait.
    bool ask_kernel = false;
    int64_t now = start;
    if ((round & 255) == 0) {
      if (round != 0) now = monotonic_ns();
      ask_kernel = round != 0 || set->kernel_check.due(now);
    }
    int found = look_for_events(epfd, set, events, max_events, ask_kernel, now);
    if (found != 0) return found;
    if (timeout == 0) {
      // Nothing of ours: a look that must not wait asks the kernel anyway,
      // as a program that made one of its descriptors ready expects to see it.
      if (ask_kernel) return 0;
      const int got = real().epoll_pwait(epfd, events, max_events, 0, nullptr);
      if (got < 0) return -1;
      const int kept = filter_kernel_events(set, events, got);
      set->kernel_check.asked(now, kept > 0);
      return kept;
    }
    if (spinning && (spinning = spin.keep_spinning())) continue;
    const bool space_wait = arm_members(set, true);
    const bool wake_may_be_missed = !fence_before_sleeping_for_data();
    found = collect_ready(set, events, max_events);
    if (found > 0) {
      arm_members(set, false);
      return found;
    }
    int sleep_ms = timeout_left_ms(deadline);
    if ((space_wait || wake_may_be_missed) && (sleep_ms < 0 || sleep_ms > kSpaceRecheckMs)) {
      sleep_ms = kSpaceRecheckMs;
    }
    const int got = real().epoll_pwait(epfd, events, max_events, sleep_ms, mask);
    const int error = errno;
    arm_members(set, false);
    if (got < 0) return fail(error);
    int kept = filter_kernel_events(set, events, got);
    set->kernel_check.asked(monotonic_ns(), kept > 0);
    kept += collect_ready(set, events + kept, max_events - kept);
    if (kept > 0) return kept;
    if (deadline >= 0 && monotonic_ns() >= deadline) return 0;
  }
}

int intercepted_epoll_wait(int epfd, struct epoll_event* events, int max_events, int timeout) {
  return intercepted_epoll_pwait(epfd, events, max_events, timeout, nullptr);
}

// Called when descriptor `fd` of `socket` leaves our table. The kernel keeps
// a registration while its file is open, so only the last descriptor's
// going removes them all; `now_kernel` (the number now holds a kernel
// socket) moves that descriptor's registrations to the kernel.
void epoll_forget(int fd, Socket* socket, bool now_kernel) {
  if (socket->epoll_memberships.load(std::memory_order_relaxed) == 0) return;
  // A descriptor that turns into a kernel socket is still in our table.
  const int others = socket->descriptors.load(std::memory_order_relaxed) - (now_kernel ? 1 : 0);
  const bool file_closed = others <= 0;
  if (!now_kernel && !file_closed) return;
  for_each_set([&](int epfd, EpollSet* set) {
    std::lock_guard lock(set->mutex);
    for (auto member = set->members.begin(); member != set->members.end();) {
      if (member->socket != socket || (!file_closed && member->fd != fd)) {
        ++member;
        continue;
      }
      if (now_kernel && member->fd == fd && !member->listener && !member->removed) {
        struct epoll_event event {
          member->events, member->data
        };
        real().epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event);
      }
      const auto index = member - set->members.begin();
      erase_member(epfd, set, member);
      member = set->members.begin() + index;
    }
  });
}

void epoll_connected(Socket* socket) {
  if (socket->epoll_memberships.load(std::memory_order_relaxed) == 0) return;
  for_each_set([&](int epfd, EpollSet* set) {
    std::lock_guard lock(set->mutex);
    for (EpollMember& member : set->members) {
      if (member.socket == socket && member.registered_wake < 0) register_wake(epfd, set, member);
    }
  });
}

void epoll_closed(int fd) {
  if (fd < 0 || fd >= kMaxEpollFds) return;
  if (epoll_instances()[fd].exchange(0, std::memory_order_relaxed) != 0) {
    // The kernel drops a closed instance from the sets it was nested in.
    for_each_set([fd](int, EpollSet* set) {
      std::lock_guard lock(set->mutex);
      std::erase_if(set->members,
                    [fd](const EpollMember& m) { return m.socket == nullptr && m.fd == fd; });
    });
  }
  EpollSet* set;
  {
    std::lock_guard lock(g_sets_mutex);
    set = epoll_sets()[fd].exchange(nullptr, std::memory_order_acq_rel);
    if (set != nullptr) std::erase(g_set_fds, fd);
  }
  if (set == nullptr) return;
  std::lock_guard lock(set->mutex);
  for (const EpollMember& member : set->members) {
    if (member.socket != nullptr) {
      member.socket->epoll_memberships.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  set->members.clear();
  // The set itself stays allocated: a racing epoll_wait may still hold it.
}

}  // namespace netaccel::preload

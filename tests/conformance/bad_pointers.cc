// Bad pointers: the data and readiness calls handed memory they may not
// touch — a null or tiny address, an unmapped page, a PROT_NONE page, a
// read-only page to receive into, a length that runs past the end of a
// mapping. The kernel answers EFAULT (or EINVAL, EMSGSIZE, POLLNVAL) and
// leaves the data where it was; a library in between must not crash.
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <climits>

#include "conformance.h"

namespace conformance {
namespace {

constexpr const char* kArea = "bad_pointers";

// Four pages mapped together, each made bad its own way. `writable` is an
// ordinary page with the hole right after it, so that a buffer at its end
// runs into unmapped memory. Made after the case's connections, so that
// nothing the set-up maps fills the hole.
struct BadPages {
  char* writable;
  char* hole;       // unmapped
  char* no_access;  // PROT_NONE
  char* read_only;  // PROT_READ, holding 'r's
  size_t page;
};

BadPages bad_pages() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* memory =
      mmap(nullptr, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) die("mmap");
  auto* base = static_cast<char*>(memory);
  memset(base, 'w', page);
  memset(base + 3 * page, 'r', page);
  require("munmap", munmap(base + page, page));
  require("mprotect PROT_NONE", mprotect(base + 2 * page, page, PROT_NONE));
  require("mprotect PROT_READ", mprotect(base + 3 * page, page, PROT_READ));
  return {base, base + page, base + 2 * page, base + 3 * page, page};
}

// The last `bytes` bytes of the writable page: a longer buffer there runs
// into the hole.
char* page_end(const BadPages& pages, size_t bytes) {
  return pages.writable + pages.page - bytes;
}

// `pointer` where the compiler cannot follow it: it warns about constant bad
// arguments, which are the point here.
template <typename T>
T* opaque(T* pointer) {
  asm volatile("" : "+r"(pointer));
  return pointer;
}
template <typename T = char>
T* null() {
  return opaque<T>(nullptr);
}
template <typename T = char>
T* address_one() {
  return opaque(reinterpret_cast<T*>(1));
}

// A pair with `text` sent from the client and already queued at the server.
TcpPair pair_with_queued(const std::string& text) {
  const TcpPair pair = tcp_pair();
  send_text(pair.client, text);
  sleep_ms(20);
  return pair;
}

// What the server's queue holds now: the bad calls must have left it whole.
void show_queue(const TcpPair& pair, size_t length) {
  show_exact("then read", pair.server, length);
}

// What reached the peer: the bad sends must have sent nothing, so the
// marker that follows them is the first thing it reads.
void show_nothing_sent(const TcpPair& pair) {
  send_text(pair.client, "marker");
  show_exact("peer reads", pair.server, 6);
}

// A kernel descriptor that is readable: mixed into the readiness sets.
int readable_eventfd() {
  return static_cast<int>(require("eventfd", eventfd(1, EFD_CLOEXEC)));
}

int new_epoll() {
  return static_cast<int>(require("epoll_create1", epoll_create1(EPOLL_CLOEXEC)));
}

}  // namespace

// ---------------------------------------------------------------------------
// Sending from memory that cannot be read.

CONFORMANCE_CASE(kArea, send_from_bad_buffers_efault, 1,
                 "send, sendto and write from null, 1, unmapped and PROT_NONE buffers: EFAULT, "
                 "nothing sent") {
  const TcpPair pair = tcp_pair();
  const BadPages pages = bad_pages();
  report("send null", send(pair.client, null(), 5, MSG_NOSIGNAL));
  report("send null, length 0", send(pair.client, nullptr, 0, MSG_NOSIGNAL));
  report("send address 1", send(pair.client, address_one(), 5, MSG_NOSIGNAL));
  report("send unmapped", send(pair.client, pages.hole, 5, MSG_NOSIGNAL));
  report("send PROT_NONE", send(pair.client, pages.no_access, 5, MSG_NOSIGNAL));
  report("sendto unmapped", sendto(pair.client, pages.hole, 5, MSG_NOSIGNAL, nullptr, 0));
  report("write unmapped", write(pair.client, pages.hole, 5));
  report("write null", write(pair.client, null(), 3));
  show_nothing_sent(pair);
  report("send read-only", send(pair.client, pages.read_only, 3, MSG_NOSIGNAL));
  show_exact("peer reads", pair.server, 3);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, send_running_past_mapping, 1,
                 "a send whose buffer runs off the end of a mapping: EFAULT, nothing sent") {
  const TcpPair pair = tcp_pair();
  const BadPages pages = bad_pages();
  report("send 200 from the last 100 bytes", send(pair.client, page_end(pages, 100), 200, 0));
  report("write 2 from the last byte", write(pair.client, page_end(pages, 1), 2));
  report("send 100 from the last 100 bytes", send(pair.client, page_end(pages, 100), 100, 0));
  show_exact("peer reads", pair.server, 100);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, sendmsg_bad_message_and_vectors, 1,
                 "sendmsg with a null or unmapped msghdr, an unmapped iovec array or buffer, "
                 "too many iovecs, a negative length, a bad name or control pointer") {
  const TcpPair pair = tcp_pair();
  const BadPages pages = bad_pages();
  report("sendmsg null msghdr", sendmsg(pair.client, null<msghdr>(), MSG_NOSIGNAL));
  report("sendmsg unmapped msghdr",
         sendmsg(pair.client, reinterpret_cast<msghdr*>(pages.hole), MSG_NOSIGNAL));
  char text[] = "abc";
  iovec good{text, 3};
  msghdr message{};
  message.msg_iov = reinterpret_cast<iovec*>(pages.hole);
  message.msg_iovlen = 1;
  report("sendmsg unmapped iovec array", sendmsg(pair.client, &message, MSG_NOSIGNAL));
  message.msg_iov = nullptr;
  report("sendmsg null iovec array", sendmsg(pair.client, &message, MSG_NOSIGNAL));
  iovec bad_buffer[2] = {{pages.no_access, 3}, {text, 3}};
  message.msg_iov = bad_buffer;
  message.msg_iovlen = 2;
  report("sendmsg PROT_NONE buffer", sendmsg(pair.client, &message, MSG_NOSIGNAL));
  iovec negative[2] = {{text, 3}, {text, static_cast<size_t>(-1)}};
  message.msg_iov = negative;
  report("sendmsg negative length", sendmsg(pair.client, &message, MSG_NOSIGNAL));
  message.msg_iov = &good;
  message.msg_iovlen = IOV_MAX + 1;
  report("sendmsg IOV_MAX + 1 iovecs", sendmsg(pair.client, &message, MSG_NOSIGNAL));
  message.msg_iovlen = 1;
  message.msg_name = pages.hole;
  message.msg_namelen = sizeof(sockaddr_in);
  report("sendmsg unmapped name", sendmsg(pair.client, &message, MSG_NOSIGNAL));
  message.msg_name = nullptr;
  message.msg_namelen = 0;
  message.msg_control = pages.no_access;
  message.msg_controllen = 64;
  report("sendmsg PROT_NONE control", sendmsg(pair.client, &message, MSG_NOSIGNAL));
  show_nothing_sent(pair);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, writev_bad_vectors, 1,
                 "writev with a null or unmapped iovec array, a bad buffer, a negative length: "
                 "EFAULT or EINVAL, nothing sent") {
  const TcpPair pair = tcp_pair();
  const BadPages pages = bad_pages();
  report("writev null array", writev(pair.client, null<iovec>(), 1));
  report("writev unmapped array", writev(pair.client, reinterpret_cast<iovec*>(pages.hole), 2));
  char text[] = "abc";
  iovec second_bad[2] = {{text, 3}, {pages.hole, 3}};
  report("writev second buffer unmapped", writev(pair.client, second_bad, 2));
  iovec negative[2] = {{pages.hole, 3}, {text, static_cast<size_t>(-2)}};
  report("writev negative length", writev(pair.client, negative, 2));
  // The array's last entry runs into the hole.
  auto* array_at_end = reinterpret_cast<iovec*>(page_end(pages, sizeof(iovec)));
  *array_at_end = {text, 3};
  report("writev array running past mapping", writev(pair.client, array_at_end, 2));
  report("writev array at end of mapping", writev(pair.client, array_at_end, 1));
  show_exact("peer reads", pair.server, 3);
  show_nothing_sent(pair);
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// Receiving into memory that cannot be written.

CONFORMANCE_CASE(kArea, recv_into_bad_buffers_efault, 1,
                 "recv, recvfrom and read into null, 1, unmapped, PROT_NONE and read-only "
                 "buffers: EFAULT, the data stays queued") {
  const TcpPair pair = pair_with_queued("hello");
  const BadPages pages = bad_pages();
  report("recv null", recv(pair.server, null(), 10, 0));
  report("recv address 1", recv(pair.server, address_one(), 10, 0));
  report("recv unmapped", recv(pair.server, pages.hole, 10, 0));
  report("recv PROT_NONE", recv(pair.server, pages.no_access, 10, 0));
  report("recv read-only", recv(pair.server, pages.read_only, 10, 0));
  report("recv read-only MSG_PEEK", recv(pair.server, pages.read_only, 10, MSG_PEEK));
  report("recvfrom unmapped", recvfrom(pair.server, pages.hole, 10, 0, nullptr, nullptr));
  report("read null", read(pair.server, null(), 3));
  report("read read-only", read(pair.server, pages.read_only, 3));
  say("read-only page unchanged: %s", pages.read_only[0] == 'r' ? "yes" : "no");
  report("recv null, length 0", recv(pair.server, nullptr, 0, MSG_DONTWAIT));
  show_queue(pair, 5);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, recv_running_past_mapping, 1,
                 "a receive buffer that runs off the end of a mapping: EFAULT when the data "
                 "would reach past it, the data when it fits") {
  const TcpPair pair = pair_with_queued("hello");
  const BadPages pages = bad_pages();
  report("recv 10 into the last 3 bytes", recv(pair.server, page_end(pages, 3), 10, 0));
  report("read 10 into the last 4 bytes", read(pair.server, page_end(pages, 4), 10));
  const ssize_t got = recv(pair.server, page_end(pages, 5), 100, 0);
  report_data("recv 100 into the last 5 bytes", got, std::string(page_end(pages, 5), 5));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, recv_blocking_into_bad_buffer, 1,
                 "a blocking recv into an unmapped buffer waits for data, then fails with EFAULT") {
  const TcpPair pair = tcp_pair();
  const BadPages pages = bad_pages();
  std::thread sender = in_background([&] {
    sleep_ms(30);
    send_text(pair.client, "late");
  });
  report("recv unmapped", recv(pair.server, pages.hole, 10, 0));
  sender.join();
  show_queue(pair, 4);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, recvfrom_bad_address_length, 1,
                 "recvfrom with an address but a null or unmapped length: the data is taken, "
                 "then EFAULT") {
  const TcpPair pair = pair_with_queued("abcdef");
  const BadPages pages = bad_pages();
  char buffer[8] = {};
  sockaddr_storage address{};
  report("recvfrom null length",
         recvfrom(pair.server, buffer, 2, 0, reinterpret_cast<sockaddr*>(&address),
                  null<socklen_t>()));
  report("recvfrom unmapped length",
         recvfrom(pair.server, buffer, 2, 0, reinterpret_cast<sockaddr*>(&address),
                  reinterpret_cast<socklen_t*>(pages.hole)));
  report("recvfrom read-only length",
         recvfrom(pair.server, buffer, 1, 0, reinterpret_cast<sockaddr*>(&address),
                  reinterpret_cast<socklen_t*>(pages.read_only)));
  socklen_t length = sizeof address;
  report("recvfrom unmapped address",
         recvfrom(pair.server, buffer, 1, 0, reinterpret_cast<sockaddr*>(pages.hole), &length));
  say("address length: %u", static_cast<unsigned>(length));
  recv_once("rest", pair.server, 8, MSG_DONTWAIT);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, recvmsg_bad_message_and_vectors, 1,
                 "recvmsg with a null or unmapped msghdr or iovec array, a bad buffer, too many "
                 "iovecs: nothing taken; a read-only msghdr: the data is taken, then EFAULT") {
  const TcpPair pair = pair_with_queued("message");
  const BadPages pages = bad_pages();
  report("recvmsg null msghdr", recvmsg(pair.server, null<msghdr>(), 0));
  report("recvmsg unmapped msghdr", recvmsg(pair.server, reinterpret_cast<msghdr*>(pages.hole), 0));
  char buffer[16] = {};
  iovec good{buffer, 3};
  msghdr message{};
  message.msg_iov = reinterpret_cast<iovec*>(pages.no_access);
  message.msg_iovlen = 1;
  report("recvmsg PROT_NONE iovec array", recvmsg(pair.server, &message, 0));
  iovec bad_buffer{pages.read_only, 3};
  message.msg_iov = &bad_buffer;
  report("recvmsg read-only buffer", recvmsg(pair.server, &message, 0));
  message.msg_iov = &good;
  message.msg_iovlen = IOV_MAX + 1;
  report("recvmsg IOV_MAX + 1 iovecs", recvmsg(pair.server, &message, 0));
  message.msg_iovlen = 1;
  // msg_name is only written through msg_namelen, which TCP sets to 0.
  message.msg_name = pages.hole;
  message.msg_namelen = 16;
  message.msg_control = pages.hole;
  message.msg_controllen = 0;
  report_data("recvmsg unmapped name", recvmsg(pair.server, &message, 0), std::string(buffer, 3));
  say("msg_namelen %u msg_flags %d", static_cast<unsigned>(message.msg_namelen), message.msg_flags);
  auto* read_only_message = reinterpret_cast<msghdr*>(pages.writable);
  *read_only_message = msghdr{};
  read_only_message->msg_iov = &good;
  read_only_message->msg_iovlen = 1;
  require("mprotect", mprotect(pages.writable, pages.page, PROT_READ));
  report("recvmsg read-only msghdr", recvmsg(pair.server, read_only_message, 0));
  say("received: %s", quoted(std::string(buffer, 3)).c_str());
  show_queue(pair, 1);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, readv_bad_vectors, 1,
                 "readv with a null or unmapped iovec array, a read-only buffer, a negative "
                 "length: EFAULT or EINVAL, the data stays queued") {
  const TcpPair pair = pair_with_queued("vector");
  const BadPages pages = bad_pages();
  report("readv null array", readv(pair.server, null<iovec>(), 1));
  report("readv unmapped array", readv(pair.server, reinterpret_cast<iovec*>(pages.hole), 1));
  char buffer[8] = {};
  iovec second_read_only[2] = {{buffer, 2}, {pages.read_only, 8}};
  report("readv second buffer read-only", readv(pair.server, second_read_only, 2));
  iovec negative[2] = {{buffer, 2}, {buffer, static_cast<size_t>(-1)}};
  report("readv negative length", readv(pair.server, negative, 2));
  report("readv IOV_MAX + 1", readv(pair.server, opaque(second_read_only), IOV_MAX + 1));
  show_queue(pair, 6);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, urgent_byte_into_bad_buffer, 1,
                 "recv MSG_OOB into an unmapped buffer: EFAULT, and the urgent byte is gone") {
  const TcpPair pair = tcp_pair();
  const BadPages pages = bad_pages();
  report("send MSG_OOB", send(pair.client, "ab", 2, MSG_OOB));
  sleep_ms(20);
  report("recv MSG_OOB unmapped", recv(pair.server, pages.hole, 1, MSG_OOB));
  recv_once("recv MSG_OOB again", pair.server, 1, MSG_OOB);
  report("send MSG_OOB from unmapped", send(pair.client, pages.hole, 2, MSG_OOB));
  show_queue(pair, 1);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, pipe_bad_buffers_efault, 0,
                 "read and write on a pipe with null, unmapped and read-only buffers: EFAULT, "
                 "the data stays") {
  int ends[2];
  require("pipe", pipe(ends));
  const BadPages pages = bad_pages();
  report("write unmapped", write(ends[1], pages.hole, 3));
  report("write PROT_NONE", write(ends[1], pages.no_access, 3));
  report("write", write(ends[1], "pipe", 4));
  report("read null", read(ends[0], null(), 3));
  report("read read-only", read(ends[0], pages.read_only, 3));
  report("readv null array", readv(ends[0], null<iovec>(), 1));
  report("writev unmapped array", writev(ends[1], reinterpret_cast<iovec*>(pages.hole), 1));
  show_exact("then read", ends[0], 4);
  close(ends[0]);
  close(ends[1]);
}

CONFORMANCE_CASE(kArea, buffers_taken_away_after_use, 1,
                 "buffers that served sends and receives, then unmapped, moved, mapped over, "
                 "made PROT_NONE or read-only: EFAULT, the data stays") {
  const TcpPair pair = tcp_pair();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const auto fresh_buffer = [page] {
    void* memory = mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) die("mmap");
    memset(memory, 'm', page);
    return static_cast<char*>(memory);
  };
  // Each buffer serves a send and a receive before it is taken away.
  const auto use = [&](char* buffer) {
    require("send", send(pair.client, buffer, 2, 0));
    show_exact("peer reads", pair.server, 2);
    send_text(pair.server, "ok");
    require("recv", recv(pair.client, buffer, 2, MSG_WAITALL));
  };
  // A receive that fails leaves these where they were.
  const auto show_kept_after = [&](const char* label, char* buffer) {
    send_text(pair.server, "kept");
    sleep_ms(20);
    report(label, recv(pair.client, buffer, 2, 0));
    show_exact("then read", pair.client, 4);
  };
  char* buffer = fresh_buffer();
  use(buffer);
  require("munmap", munmap(buffer, page));
  report("send after munmap", send(pair.client, buffer, 2, MSG_NOSIGNAL));
  show_kept_after("recv after munmap", buffer);
  buffer = fresh_buffer();
  use(buffer);
  char* elsewhere = fresh_buffer();
  require("mremap", reinterpret_cast<intptr_t>(
                        mremap(buffer, page, page, MREMAP_MAYMOVE | MREMAP_FIXED, elsewhere)));
  report("send after mremap away", send(pair.client, buffer, 2, MSG_NOSIGNAL));
  buffer = elsewhere;
  use(buffer);
  require("mmap MAP_FIXED",
          reinterpret_cast<intptr_t>(
              mmap(buffer, page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)));
  report("send after mapping over", send(pair.client, buffer, 2, MSG_NOSIGNAL));
  buffer = fresh_buffer();
  use(buffer);
  require("mprotect PROT_NONE", mprotect(buffer, page, PROT_NONE));
  report("send after PROT_NONE", send(pair.client, buffer, 2, MSG_NOSIGNAL));
  buffer = fresh_buffer();
  use(buffer);
  require("mprotect PROT_READ", mprotect(buffer, page, PROT_READ));
  show_kept_after("recv after PROT_READ", buffer);
  report("send after PROT_READ", send(pair.client, buffer, 2, MSG_NOSIGNAL));
  show_exact("peer reads", pair.server, 2);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, sendfile_bad_offset_pointer, 1,
                 "sendfile to a netaccel socket with an unmapped offset pointer (EFAULT, nothing "
                 "sent) and a read-only one (the data sent, then EFAULT)") {
  const TcpPair pair = tcp_pair();
  const int file = static_cast<int>(require("memfd_create", memfd_create("data", MFD_CLOEXEC)));
  require("write", write(file, "0123456789", 10));
  const BadPages pages = bad_pages();
  report("sendfile unmapped offset",
         sendfile(pair.client, file, reinterpret_cast<off_t*>(pages.hole), 4));
  memset(pages.writable, 0, sizeof(off_t));
  require("mprotect", mprotect(pages.writable, pages.page, PROT_READ));
  report("sendfile read-only offset",
         sendfile(pair.client, file, reinterpret_cast<off_t*>(pages.writable), 4));
  show_exact("peer reads", pair.server, 4);
  show_nothing_sent(pair);
  close(file);
  close_pair(pair);
}

// ---------------------------------------------------------------------------
// Readiness calls with arrays that cannot be read or written.

CONFORMANCE_CASE(kArea, epoll_wait_unwritable_events, 1,
                 "epoll_wait into null, unmapped and read-only arrays over a netaccel and a "
                 "kernel descriptor: EFAULT while an event is ready (and the event stays), 0 "
                 "when none is; a blocking wait fails once one comes") {
  const TcpPair pair = tcp_pair();
  const int kernel_fd = static_cast<int>(require("eventfd", eventfd(0, EFD_CLOEXEC)));
  const BadPages pages = bad_pages();
  const int epfd = new_epoll();
  epoll_event event{};
  event.events = EPOLLIN | EPOLLET;
  event.data.u32 = 7;
  report("epoll_ctl ADD", epoll_ctl(epfd, EPOLL_CTL_ADD, pair.server, &event));
  event.events = EPOLLIN;
  event.data.u32 = 8;
  report("epoll_ctl ADD kernel", epoll_ctl(epfd, EPOLL_CTL_ADD, kernel_fd, &event));
  report("epoll_wait nothing ready, null", epoll_wait(epfd, null<epoll_event>(), 4, 0));
  report("epoll_wait nothing ready, unmapped, 20 ms",
         epoll_wait(epfd, reinterpret_cast<epoll_event*>(pages.hole), 4, 20));
  const uint64_t one = 1;
  require("eventfd write", write(kernel_fd, &one, sizeof one));
  report("epoll_wait kernel ready, unmapped",
         epoll_wait(epfd, reinterpret_cast<epoll_event*>(pages.hole), 4, 0));
  report("epoll_pwait kernel ready, null", epoll_pwait(epfd, null<epoll_event>(), 2, 0, nullptr));
  uint64_t count = 0;
  require("eventfd read", read(kernel_fd, &count, sizeof count));
  send_text(pair.client, "x");
  sleep_ms(20);
  report("epoll_wait null", epoll_wait(epfd, null<epoll_event>(), 4, 0));
  report("epoll_wait address 1", epoll_wait(epfd, address_one<epoll_event>(), 4, 0));
  report("epoll_wait unmapped", epoll_wait(epfd, reinterpret_cast<epoll_event*>(pages.hole), 4, 0));
  report("epoll_wait read-only",
         epoll_wait(epfd, reinterpret_cast<epoll_event*>(pages.read_only), 4, 10));
  report("epoll_wait max_events 0", epoll_wait(epfd, null<epoll_event>(), 0, 0));
  epoll_event events[4] = {};
  report("epoll_wait", epoll_wait(epfd, events, 4, 0));
  say("event: %u %s", events[0].data.u32, epoll_events_text(events[0].events).c_str());
  show_exact("read", pair.server, 1);
  // Blocking: the wait ends with EFAULT when the peer's data arrives.
  std::thread sender = in_background([&] {
    sleep_ms(30);
    send_text(pair.client, "wake");
  });
  report("epoll_wait unmapped, no timeout",
         epoll_wait(epfd, reinterpret_cast<epoll_event*>(pages.hole), 1, -1));
  sender.join();
  show_exact("then read", pair.server, 4);
  close(epfd);
  close(kernel_fd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_ctl_bad_event_pointer, 1,
                 "epoll_ctl ADD and MOD of a netaccel socket with a null, unmapped or PROT_NONE "
                 "event: EFAULT, nothing registered") {
  const TcpPair pair = pair_with_queued("x");
  const BadPages pages = bad_pages();
  const int epfd = new_epoll();
  report("epoll_ctl ADD null", epoll_ctl(epfd, EPOLL_CTL_ADD, pair.server, null<epoll_event>()));
  report("epoll_ctl ADD unmapped",
         epoll_ctl(epfd, EPOLL_CTL_ADD, pair.server, reinterpret_cast<epoll_event*>(pages.hole)));
  report("epoll_ctl MOD PROT_NONE", epoll_ctl(epfd, EPOLL_CTL_MOD, pair.server,
                                              reinterpret_cast<epoll_event*>(pages.no_access)));
  epoll_event events[2];
  report("epoll_wait", epoll_wait(epfd, events, 2, 0));
  close(epfd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, epoll_wait_events_running_past_mapping, 2,
                 "epoll_wait into an array with room for one event before unmapped memory, "
                 "a kernel and two netaccel descriptors ready: one event each time") {
  const TcpPair first = pair_with_queued("1");
  const TcpPair second = pair_with_queued("2");
  const int kernel_fd = readable_eventfd();
  const BadPages pages = bad_pages();
  const int epfd = new_epoll();
  const int members[3] = {first.server, second.server, kernel_fd};
  for (uint32_t i = 0; i < 3; ++i) {
    epoll_event event{};
    event.events = EPOLLIN | EPOLLONESHOT;
    event.data.u32 = i + 1;
    require("epoll_ctl ADD", epoll_ctl(epfd, EPOLL_CTL_ADD, members[i], &event));
  }
  auto* one_slot = reinterpret_cast<epoll_event*>(page_end(pages, sizeof(epoll_event)));
  uint32_t seen = 0;
  for (int round = 0; round < 3; ++round) {
    report("epoll_wait", epoll_wait(epfd, one_slot, 3, 0));
    seen |= 1u << one_slot->data.u32;
  }
  say("each reported once: %s", seen == 0xe ? "yes" : "no");
  report("epoll_wait none left", epoll_wait(epfd, one_slot, 3, 0));
  close(epfd);
  close(kernel_fd);
  close_pair(first);
  close_pair(second);
}

CONFORMANCE_CASE(kArea, poll_bad_arrays, 1,
                 "poll and ppoll with a null or unmapped array, an array shorter than nfds, a "
                 "read-only array: EFAULT; nfds 0 with a null array: 0") {
  const TcpPair pair = pair_with_queued("x");
  const int kernel_fd = readable_eventfd();
  const BadPages pages = bad_pages();
  report("poll null, nfds 1", poll(null<pollfd>(), 1, 1));
  report("poll null, nfds 0", poll(null<pollfd>(), 0, 1));
  report("poll unmapped", poll(reinterpret_cast<pollfd*>(pages.hole), 1, 0));
  const timespec zero{0, 0};
  report("ppoll null", ppoll(null<pollfd>(), 1, &zero, nullptr));
  report("ppoll PROT_NONE", ppoll(reinterpret_cast<pollfd*>(pages.no_access), 2, &zero, nullptr));
  auto* at_end = reinterpret_cast<pollfd*>(page_end(pages, 2 * sizeof(pollfd)));
  at_end[0] = {pair.server, POLLIN, 0};
  at_end[1] = {kernel_fd, POLLIN, 0};
  report("poll nfds past the array", poll(opaque(at_end), 3, 0));
  report("poll nfds within the array", poll(at_end, 2, 0));
  say("revents: %s, %s", poll_events_text(at_end[0].revents).c_str(),
      poll_events_text(at_end[1].revents).c_str());
  require("mprotect", mprotect(pages.writable, pages.page, PROT_READ));
  report("poll read-only array", poll(at_end, 2, 0));
  report("poll read-only array, waiting", poll(at_end, 2, 20));
  close(kernel_fd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, poll_invalid_descriptors_and_short_arrays, 1,
                 "poll with negative, closed and huge descriptors beside a netaccel socket "
                 "(POLLNVAL for the closed ones), then with nfds past the array's mapping") {
  const TcpPair pair = pair_with_queued("x");
  const int closed = static_cast<int>(require("dup", dup(pair.server)));
  close(closed);
  const BadPages pages = bad_pages();
  auto* entries = reinterpret_cast<pollfd*>(page_end(pages, 5 * sizeof(pollfd)));
  entries[0] = {-1, POLLIN, 0};
  entries[1] = {closed, POLLIN, 0};
  entries[2] = {pair.server, POLLIN, 0};
  entries[3] = {INT_MAX, POLLIN, 0};
  entries[4] = {-12345, POLLIN | POLLOUT, 0};
  report("poll", poll(entries, 5, 0));
  for (int i = 0; i < 5; ++i) say("revents: %s", poll_events_text(entries[i].revents).c_str());
  const timespec zero{0, 0};
  report("ppoll", ppoll(entries, 5, &zero, nullptr));
  report("poll nfds 6", poll(opaque(entries), 6, 0));
  report("ppoll nfds 1000", ppoll(opaque(entries), 1000, &zero, nullptr));
  report("poll nfds 2000000000", poll(opaque(entries), 2000000000, 0));
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, select_bad_sets, 1,
                 "select and pselect with unmapped, address-1 and read-only fd_sets over a "
                 "netaccel and a kernel descriptor: EFAULT") {
  const TcpPair pair = pair_with_queued("x");
  const int kernel_fd = readable_eventfd();
  const BadPages pages = bad_pages();
  const int nfds = std::max(pair.server, kernel_fd) + 1;
  timeval zero{0, 0};
  report("select unmapped read set",
         select(nfds, reinterpret_cast<fd_set*>(pages.hole), nullptr, nullptr, &zero));
  zero = {0, 0};
  report("select address-1 write set",
         select(nfds, nullptr, address_one<fd_set>(), nullptr, &zero));
  const timespec zero_spec{0, 0};
  report("pselect PROT_NONE except set",
         pselect(nfds, nullptr, nullptr, reinterpret_cast<fd_set*>(pages.no_access), &zero_spec,
                 nullptr));
  auto* set = reinterpret_cast<fd_set*>(pages.writable);
  FD_ZERO(set);
  FD_SET(pair.server, set);
  FD_SET(kernel_fd, set);
  require("mprotect", mprotect(pages.writable, pages.page, PROT_READ));
  zero = {0, 0};
  report("select read-only read set", select(nfds, set, nullptr, nullptr, &zero));
  report("pselect read-only read set", pselect(nfds, set, nullptr, nullptr, &zero_spec, nullptr));
  fd_set readable;
  FD_ZERO(&readable);
  FD_SET(pair.server, &readable);
  FD_SET(kernel_fd, &readable);
  zero = {0, 0};
  report("select", select(nfds, &readable, nullptr, nullptr, &zero));
  close(kernel_fd);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, socket_addresses_bad_pointers, 1,
                 "getsockname, getpeername and accept with unmapped, read-only, null or negative "
                 "address lengths and addresses: the kernel's EFAULT and EINVAL, no crash; a "
                 "zero length copies nothing; accept loses the connection it could not report") {
  const TcpPair pair = tcp_pair();
  const BadPages pages = bad_pages();
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  report("getsockname unmapped length",
         getsockname(pair.client, reinterpret_cast<sockaddr*>(&address),
                     reinterpret_cast<socklen_t*>(pages.hole)));
  report("getpeername null length",
         getpeername(pair.client, reinterpret_cast<sockaddr*>(&address), null<socklen_t>()));
  report("getsockname unmapped address",
         getsockname(pair.client, reinterpret_cast<sockaddr*>(pages.hole), &length));
  report("getpeername read-only address",
         getpeername(pair.server, reinterpret_cast<sockaddr*>(pages.read_only), &length));
  report("getpeername read-only length",
         getpeername(pair.client, reinterpret_cast<sockaddr*>(&address),
                     reinterpret_cast<socklen_t*>(pages.read_only)));
  socklen_t nothing = 0;
  report("getsockname null address, length 0",
         getsockname(pair.client, null<sockaddr>(), &nothing));
  say("length after: %u", static_cast<unsigned>(nothing));
  socklen_t negative = static_cast<socklen_t>(-1);
  report("getpeername negative length",
         getpeername(pair.client, reinterpret_cast<sockaddr*>(&address), &negative));

  const int listener = tcp_listener();
  const int first = tcp_connect(local_port(listener));
  const int second = tcp_connect(local_port(listener));
  sleep_ms(50);
  report("accept unmapped address",
         accept(listener, reinterpret_cast<sockaddr*>(pages.hole), &length));
  const int accepted = static_cast<int>(report(
      "accept good address", accept(listener, reinterpret_cast<sockaddr*>(&address), &length)));
  if (accepted >= 0) close(accepted);
  // The first connection was accepted and closed by the failed accept.
  char byte = 0;
  report("first client reads", recv(first, &byte, 1, 0));
  close(first);
  close(second);
  close(listener);
  close_pair(pair);
}

CONFORMANCE_CASE(kArea, options_connect_ioctl_bad_pointers, 1,
                 "getsockopt with an unreachable or negative length or an unreachable value, "
                 "connect with an unmapped or oversized address, FIONREAD/SIOCOUTQ/FIONBIO with "
                 "a bad argument: the kernel's EFAULT and EINVAL, no crash") {
  const TcpPair pair = pair_with_queued("abc");
  const BadPages pages = bad_pages();
  int value = 0;
  socklen_t length = sizeof value;
  report("getsockopt SO_ERROR unmapped length",
         getsockopt(pair.server, SOL_SOCKET, SO_ERROR, &value,
                    reinterpret_cast<socklen_t*>(pages.hole)));
  report("getsockopt SO_ERROR unmapped value",
         getsockopt(pair.server, SOL_SOCKET, SO_ERROR, pages.hole, &length));
  report("getsockopt SO_ERROR read-only value",
         getsockopt(pair.server, SOL_SOCKET, SO_ERROR, pages.read_only, &length));
  socklen_t negative = static_cast<socklen_t>(-1);
  report("getsockopt SO_RCVBUF negative length",
         getsockopt(pair.server, SOL_SOCKET, SO_RCVBUF, &value, &negative));
  report("getsockopt SO_RCVBUF null length",
         getsockopt(pair.server, SOL_SOCKET, SO_RCVBUF, &value, null<socklen_t>()));
  report("getsockopt TCP_INFO unmapped value",
         getsockopt(pair.server, IPPROTO_TCP, TCP_INFO, pages.hole, &length));
  report("connect unmapped address",
         connect(pair.client, reinterpret_cast<sockaddr*>(pages.hole), sizeof(sockaddr_in)));
  sockaddr_in address{};
  report("connect oversized length",
         connect(pair.client, reinterpret_cast<sockaddr*>(&address), 4096));
  report("ioctl FIONREAD unmapped", ioctl(pair.server, FIONREAD, pages.hole));
  report("ioctl FIONREAD read-only", ioctl(pair.server, FIONREAD, pages.read_only));
  report("ioctl SIOCOUTQ null", ioctl(pair.server, SIOCOUTQ, null<int>()));
  report("ioctl FIONBIO unmapped", ioctl(pair.server, FIONBIO, pages.hole));
  recv_once("data still there", pair.server, 8, MSG_DONTWAIT);
  close_pair(pair);
}

}  // namespace conformance

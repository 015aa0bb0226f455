// Single-producer single-consumer byte-stream ring in shared memory.
//
// One ring carries one direction of a connection. Both processes map the same
// memfd at different addresses, so the layout holds offsets, never pointers.
// Indices are free-running 32-bit byte counts masked by a power-of-two
// capacity; each side keeps a cached copy of the other side's index on its
// own cache line so that the common case touches no shared line.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

namespace netaccel {

// Two lines: the adjacent-line prefetcher pulls lines in 128-byte pairs.
inline constexpr std::size_t kFalseSharingRange = 128;
inline constexpr uint32_t kByteRingMagic = 0x4e414252;  // "NABR"
inline constexpr uint32_t kByteRingVersion = 2;

struct ByteRingControl {
  // Written once by the creator, read-only afterwards.
  alignas(kFalseSharingRange) uint32_t magic;
  uint32_t version;
  uint32_t capacity;     // bytes, power of two
  uint32_t data_offset;  // from the start of this control block

  // Producer line: only the producer (or whoever closes its end) writes it.
  alignas(kFalseSharingRange) std::atomic<uint32_t> head;  // bytes ever published
  uint32_t producer_cached_tail;
  // No more data will come: EOF once drained. Beside `head`, so that a
  // readiness check reads one line the peer writes, not two.
  std::atomic<uint32_t> writer_closed;

  // Consumer line: only the consumer writes it.
  alignas(kFalseSharingRange) std::atomic<uint32_t> tail;  // bytes ever consumed
  uint32_t consumer_cached_head;

  // Rarely written flags, apart from the hot indices so that polling them
  // keeps the line shared instead of bouncing it on every push or pop.
  alignas(kFalseSharingRange) std::atomic<uint32_t> reader_waiting;  // consumer sleeps for data
  std::atomic<uint32_t> writer_waiting;                              // producer sleeps for space
  std::atomic<uint32_t> reader_closed;  // nobody will read: writes fail with EPIPE
};
static_assert(offsetof(ByteRingControl, head) == kFalseSharingRange);
static_assert(offsetof(ByteRingControl, tail) == 2 * kFalseSharingRange);
static_assert(offsetof(ByteRingControl, reader_waiting) == 3 * kFalseSharingRange);
static_assert(sizeof(ByteRingControl) == 4 * kFalseSharingRange);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

// Bytes a ring of `capacity` data bytes occupies, control block included.
inline constexpr std::size_t byte_ring_footprint(uint32_t capacity) {
  return sizeof(ByteRingControl) + capacity;
}

// Initialises a ring in zeroed memory; `capacity` must be a power of two.
inline void byte_ring_init(void* memory, uint32_t capacity) {
  auto* control = new (memory) ByteRingControl{};
  control->magic = kByteRingMagic;
  control->version = kByteRingVersion;
  control->capacity = capacity;
  control->data_offset = sizeof(ByteRingControl);
}

// Empties a ring that carried an earlier stream and opens it again, writing
// only the lines whose contents change: a line the other process still
// caches from that stream stays valid (a channel's slot is laid out anew for
// every connection, and the accepting process's misses on it bound the
// connect rate). The indices run on from where they stood; they are
// rewritten only when the ring was left unread or a cached copy lags. Memory
// that holds no ring of `capacity` is initialised as byte_ring_init does.
// The caller owns the ring: neither end may be using it.
inline void byte_ring_reopen(void* memory, uint32_t capacity) {
  auto* control = static_cast<ByteRingControl*>(memory);
  if (control->magic != kByteRingMagic || control->version != kByteRingVersion ||
      control->capacity != capacity || control->data_offset != sizeof(ByteRingControl)) {
    return byte_ring_init(memory, capacity);
  }
  const uint32_t tail = control->tail.load(std::memory_order_relaxed);
  if (control->head.load(std::memory_order_relaxed) != tail ||
      control->producer_cached_tail != tail) {
    control->head.store(tail, std::memory_order_relaxed);
    control->producer_cached_tail = tail;
  }
  if (control->consumer_cached_head != tail) control->consumer_cached_head = tail;
  if (control->writer_closed.load(std::memory_order_relaxed) != 0) {
    control->writer_closed.store(0, std::memory_order_relaxed);
  }
  // The flags' line changes anyway (a close sets them): zero all of it.
  std::memset(reinterpret_cast<unsigned char*>(control) + offsetof(ByteRingControl, reader_waiting),
              0, sizeof(ByteRingControl) - offsetof(ByteRingControl, reader_waiting));
}

// True when `memory` holds a ring this code understands that fits in `bytes`.
inline bool byte_ring_valid(const void* memory, std::size_t bytes) {
  const auto* control = static_cast<const ByteRingControl*>(memory);
  if (bytes < sizeof(ByteRingControl)) return false;
  const uint32_t capacity = control->capacity;
  return control->magic == kByteRingMagic && control->version == kByteRingVersion &&
         capacity != 0 && (capacity & (capacity - 1)) == 0 &&
         control->data_offset >= sizeof(ByteRingControl) &&
         control->data_offset + static_cast<std::size_t>(capacity) <= bytes;
}

// A process's view of one ring; cheap to copy, owns nothing.
class ByteRing {
 public:
  ByteRing() = default;
  explicit ByteRing(void* memory)
      : control_(static_cast<ByteRingControl*>(memory)),
        data_(static_cast<unsigned char*>(memory) + control_->data_offset),
        mask_(control_->capacity - 1) {}

  ByteRingControl& control() const { return *control_; }
  uint32_t capacity() const { return mask_ + 1; }

  // ---- producer side ----

  // Free space, refreshing the cached tail only when the cached value says
  // there is not enough.
  uint32_t writable(uint32_t wanted = 1) {
    const uint32_t head = control_->head.load(std::memory_order_relaxed);  // own index
    uint32_t space = capacity() - (head - control_->producer_cached_tail);
    if (space < wanted) {
      // Acquire pairs with the consumer's release store of tail: the bytes it
      // consumed are no longer read once we see the new tail, so we may overwrite.
      control_->producer_cached_tail = control_->tail.load(std::memory_order_acquire);
      space = capacity() - (head - control_->producer_cached_tail);
    }
    return space;
  }

  // Copies as much of `iov` as fits; returns bytes written (possibly 0).
  std::size_t write(const struct iovec* iov, int iovcnt) {
    std::size_t total = 0;
    for (int i = 0; i < iovcnt; ++i) total += iov[i].iov_len;
    if (total == 0) return 0;
    const uint32_t want = static_cast<uint32_t>(std::min<std::size_t>(total, capacity()));
    uint32_t space = writable(want);
    if (space == 0) return 0;
    const uint32_t head = control_->head.load(std::memory_order_relaxed);
    std::size_t written = 0;
    for (int i = 0; i < iovcnt && written < space; ++i) {
      const std::size_t n = std::min<std::size_t>(iov[i].iov_len, space - written);
      copy_in(head + static_cast<uint32_t>(written),
              static_cast<const unsigned char*>(iov[i].iov_base), n);
      written += n;
    }
    // Release publishes the copied bytes before the consumer can see the new head.
    control_->head.store(head + static_cast<uint32_t>(written), std::memory_order_release);
    return written;
  }

  std::size_t write(const void* data, std::size_t len) {
    struct iovec iov {
      const_cast<void*>(data), len
    };
    return write(&iov, 1);
  }

  // ---- consumer side ----

  // Bytes ready to read, refreshing the cached head only when it shows fewer
  // than `wanted`.
  uint32_t readable(uint32_t wanted = 1) {
    const uint32_t tail = control_->tail.load(std::memory_order_relaxed);  // own index
    uint32_t ready = control_->consumer_cached_head - tail;
    if (ready < wanted) {
      // Acquire pairs with the producer's release store of head: the bytes
      // before the new head are fully written once we see it.
      control_->consumer_cached_head = control_->head.load(std::memory_order_acquire);
      ready = control_->consumer_cached_head - tail;
    }
    return ready;
  }

  // Whether bytes wait, for a readiness check: the cached head is not
  // refreshed, so that a scan over many rings writes none of their lines.
  bool has_unread() const {
    const uint32_t tail = control_->tail.load(std::memory_order_relaxed);
    return control_->consumer_cached_head != tail ||
           control_->head.load(std::memory_order_relaxed) != tail;
  }

  // Copies up to the iovec's size into `iov`; with `peek` the bytes stay.
  std::size_t read(const struct iovec* iov, int iovcnt, bool peek = false) {
    std::size_t wanted = 0;
    for (int i = 0; i < iovcnt; ++i) wanted += iov[i].iov_len;
    const uint32_t ready =
        readable(static_cast<uint32_t>(std::min<std::size_t>(wanted, capacity())));
    if (ready == 0) return 0;
    const uint32_t tail = control_->tail.load(std::memory_order_relaxed);
    std::size_t done = 0;
    for (int i = 0; i < iovcnt && done < ready; ++i) {
      const std::size_t n = std::min<std::size_t>(iov[i].iov_len, ready - done);
      copy_out(tail + static_cast<uint32_t>(done), static_cast<unsigned char*>(iov[i].iov_base), n);
      done += n;
    }
    // Release orders our reads of the bytes before the producer may reuse them.
    if (!peek) control_->tail.store(tail + static_cast<uint32_t>(done), std::memory_order_release);
    return done;
  }

  std::size_t read(void* data, std::size_t len, bool peek = false) {
    struct iovec iov {
      data, len
    };
    return read(&iov, 1, peek);
  }

  // For a consumer that sends bytes before it consumes them (the user-space
  // stack: TCP keeps them until they are acknowledged): the ready bytes that
  // start `offset` past the tail, as far as they run without wrapping. Their
  // length is 0 when no byte is ready there.
  const unsigned char* contiguous_at(uint32_t offset, uint32_t* length) {
    const uint32_t ready = readable(offset + 1);
    if (ready <= offset) {
      *length = 0;
      return nullptr;
    }
    const uint32_t start = (control_->tail.load(std::memory_order_relaxed) + offset) & mask_;
    *length = std::min(ready - offset, capacity() - start);
    return data_ + start;
  }

  // Drops up to `len` ready bytes without copying them.
  std::size_t discard(std::size_t len) {
    const uint32_t n = static_cast<uint32_t>(std::min<std::size_t>(len, readable()));
    const uint32_t tail = control_->tail.load(std::memory_order_relaxed);
    control_->tail.store(tail + n, std::memory_order_release);  // as in read()
    return n;
  }

  // Bytes the producer published that the consumer has not taken, as either
  // side or a third party (the monitor) sees them right now.
  uint32_t unread() const {
    return control_->head.load(std::memory_order_acquire) -
           control_->tail.load(std::memory_order_acquire);
  }

 private:
  void copy_in(uint32_t position, const unsigned char* src, std::size_t n) {
    const uint32_t offset = position & mask_;
    const std::size_t first = std::min<std::size_t>(n, capacity() - offset);
    std::memcpy(data_ + offset, src, first);
    // Only a copy that wraps needs the second part; an empty call into the
    // library still costs a small message a sizeable share of its copy.
    if (n > first) std::memcpy(data_, src + first, n - first);
  }
  void copy_out(uint32_t position, unsigned char* dst, std::size_t n) const {
    const uint32_t offset = position & mask_;
    const std::size_t first = std::min<std::size_t>(n, capacity() - offset);
    std::memcpy(dst, data_ + offset, first);
    if (n > first) std::memcpy(dst + first, data_, n - first);  // as in copy_in
  }

  ByteRingControl* control_ = nullptr;
  unsigned char* data_ = nullptr;
  uint32_t mask_ = 0;
};

}  // namespace netaccel

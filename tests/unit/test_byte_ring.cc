// ByteRing: single-process behaviour (wrap-around, partial writes and reads,
// peek, discard, iovecs, layout validation, reopening for a new connection) and a cross-process
// stress test over a memfd shared by a forked producer and the test process as consumer.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "netaccel/byte_ring.h"
#include "netaccel/protocol.h"
#include "netaccel/shm.h"
#include "test_support.h"

namespace netaccel {
namespace {

using test::Deadline;
using test::Random;
using test::splitmix64;
using test::start_indices_at;

// ---------------------------------------------------------------------------
// Helpers

// A ring in a fresh memfd mapping, like the monitor makes them.
struct SharedRing {
  explicit SharedRing(uint32_t capacity, std::size_t extra_bytes = 0)
      : bytes(byte_ring_footprint(capacity) + extra_bytes) {
    fd = UniqueFd(create_shared_memory("test_byte_ring", bytes));
    EXPECT_TRUE(fd) << "create_shared_memory failed";
    mapping = map_shared(fd.get(), bytes);
    EXPECT_TRUE(mapping) << "map_shared failed";
    byte_ring_init(mapping.get(), capacity);
  }
  ByteRing ring() const { return ByteRing(mapping.get()); }
  ByteRingControl& control() const { return *static_cast<ByteRingControl*>(mapping.get()); }
  void* after_ring() const { return static_cast<unsigned char*>(mapping.get()) + bytes_of_ring(); }
  std::size_t bytes_of_ring() const { return byte_ring_footprint(control().capacity); }

  std::size_t bytes;
  UniqueFd fd;
  SharedMapping mapping;
};

// The test stream is random-access: byte i depends only on (seed, i), so the
// producer and the consumer generate it independently.
void fill_stream(uint64_t seed, uint64_t position, unsigned char* out, std::size_t n) {
  for (std::size_t i = 0; i < n;) {
    const uint64_t at = position + i;
    const uint64_t word = splitmix64(seed ^ ((at / 8) * 0x100000001b3ULL));
    for (unsigned b = at % 8; b < 8 && i < n; ++b, ++i)
      out[i] = static_cast<unsigned char>(word >> (8 * b));
  }
}

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
uint64_t fnv1a(uint64_t hash, const unsigned char* data, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    hash ^= data[i];
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

std::vector<unsigned char> pattern(std::size_t n, unsigned char first = 0) {
  std::vector<unsigned char> bytes(n);
  std::iota(bytes.begin(), bytes.end(), first);
  return bytes;
}

class ByteRingTest : public ::testing::Test {
  Deadline deadline_{30};
};

// ---------------------------------------------------------------------------
// Layout and validation

TEST_F(ByteRingTest, InitialisedRingIsValidAndEmpty) {
  SharedRing shared(4096);
  EXPECT_TRUE(byte_ring_valid(shared.mapping.get(), shared.bytes));
  ByteRing ring = shared.ring();
  EXPECT_EQ(ring.capacity(), 4096u);
  EXPECT_EQ(ring.readable(), 0u);
  EXPECT_EQ(ring.writable(), 4096u);
  EXPECT_EQ(ring.unread(), 0u);
  EXPECT_EQ(shared.control().data_offset, sizeof(ByteRingControl));
}

TEST_F(ByteRingTest, ValidRejectsBadHeaders) {
  SharedRing shared(1024);
  void* memory = shared.mapping.get();
  ByteRingControl& control = shared.control();
  const uint32_t magic = control.magic, version = control.version, capacity = control.capacity,
                 offset = control.data_offset;
  auto restore = [&] {
    control.magic = magic;
    control.version = version;
    control.capacity = capacity;
    control.data_offset = offset;
  };

  control.magic = 0x12345678;
  EXPECT_FALSE(byte_ring_valid(memory, shared.bytes)) << "bad magic";
  restore();
  control.version = kByteRingVersion + 1;
  EXPECT_FALSE(byte_ring_valid(memory, shared.bytes)) << "bad version";
  restore();
  control.capacity = 0;
  EXPECT_FALSE(byte_ring_valid(memory, shared.bytes)) << "zero capacity";
  restore();
  control.capacity = 1000;
  EXPECT_FALSE(byte_ring_valid(memory, shared.bytes)) << "capacity not a power of two";
  restore();
  control.capacity = 2048;
  EXPECT_FALSE(byte_ring_valid(memory, shared.bytes)) << "capacity larger than the mapping";
  restore();
  control.data_offset = sizeof(ByteRingControl) - 8;
  EXPECT_FALSE(byte_ring_valid(memory, shared.bytes)) << "data overlaps the control block";
  restore();
  control.data_offset = sizeof(ByteRingControl) + 64;
  EXPECT_FALSE(byte_ring_valid(memory, shared.bytes)) << "data runs past the mapping";
  restore();
  control.data_offset = 0xffffff00u;
  EXPECT_FALSE(byte_ring_valid(memory, shared.bytes)) << "offset far outside the mapping";
  restore();
  EXPECT_FALSE(byte_ring_valid(memory, shared.bytes - 1)) << "mapping one byte short";
  EXPECT_FALSE(byte_ring_valid(memory, sizeof(ByteRingControl) - 1)) << "shorter than the header";
  EXPECT_TRUE(byte_ring_valid(memory, shared.bytes));
}

// ---------------------------------------------------------------------------
// Single-process behaviour

TEST_F(ByteRingTest, WriteThenReadReturnsSameBytes) {
  SharedRing shared(256);
  ByteRing ring = shared.ring();
  const auto in = pattern(100);
  EXPECT_EQ(ring.write(in.data(), in.size()), 100u);
  EXPECT_EQ(ring.unread(), 100u);
  std::vector<unsigned char> out(100);
  EXPECT_EQ(ring.read(out.data(), out.size()), 100u);
  EXPECT_EQ(out, in);
  EXPECT_EQ(ring.unread(), 0u);
  EXPECT_EQ(ring.read(out.data(), out.size()), 0u) << "empty ring reads nothing";
}

TEST_F(ByteRingTest, ZeroLengthWriteAndReadDoNothing) {
  SharedRing shared(64);
  ByteRing ring = shared.ring();
  unsigned char byte = 7;
  EXPECT_EQ(ring.write(&byte, 0), 0u);
  EXPECT_EQ(ring.write(nullptr, 0), 0u);
  EXPECT_EQ(ring.unread(), 0u);
  ASSERT_EQ(ring.write(&byte, 1), 1u);
  EXPECT_EQ(ring.read(&byte, 0), 0u);
  EXPECT_EQ(ring.unread(), 1u);
}

TEST_F(ByteRingTest, WriteWhenFullIsPartialThenZero) {
  SharedRing shared(64);
  ByteRing ring = shared.ring();
  const auto in = pattern(100);
  EXPECT_EQ(ring.write(in.data(), in.size()), 64u) << "only the capacity fits";
  EXPECT_EQ(ring.writable(), 0u);
  EXPECT_EQ(ring.write(in.data(), 1), 0u) << "full ring accepts nothing";

  std::vector<unsigned char> out(10);
  ASSERT_EQ(ring.read(out.data(), out.size()), 10u);
  EXPECT_EQ(out, pattern(10));
  EXPECT_EQ(ring.write(in.data() + 64, 36), 10u) << "space freed by the read, no more";
  EXPECT_EQ(ring.unread(), 64u);

  std::vector<unsigned char> rest(64);
  // Asking for more than the cached head shows refreshes it: all 64 come.
  ASSERT_EQ(ring.read(rest.data(), rest.size()), 64u);
  EXPECT_EQ(rest, pattern(64, 10));
}

TEST_F(ByteRingTest, ReadIsPartialWhenLessIsReady) {
  SharedRing shared(128);
  ByteRing ring = shared.ring();
  const auto in = pattern(30);
  ASSERT_EQ(ring.write(in.data(), in.size()), 30u);
  std::vector<unsigned char> out(100, 0xee);
  EXPECT_EQ(ring.read(out.data(), 7), 7u);
  EXPECT_EQ(ring.read(out.data() + 7, 93), 23u);
  EXPECT_TRUE(std::equal(in.begin(), in.end(), out.begin()));
  EXPECT_EQ(out[30], 0xee) << "nothing written past what was ready";
}

TEST_F(ByteRingTest, PeekLeavesBytesInPlace) {
  SharedRing shared(64);
  ByteRing ring = shared.ring();
  const auto in = pattern(20);
  ASSERT_EQ(ring.write(in.data(), in.size()), 20u);
  std::vector<unsigned char> peeked(8), again(8), read(20);
  EXPECT_EQ(ring.read(peeked.data(), peeked.size(), /*peek=*/true), 8u);
  EXPECT_EQ(ring.read(again.data(), again.size(), /*peek=*/true), 8u);
  EXPECT_EQ(peeked, again);
  EXPECT_EQ(ring.unread(), 20u);
  EXPECT_EQ(ring.read(read.data(), read.size()), 20u);
  EXPECT_EQ(read, in);
  EXPECT_TRUE(std::equal(peeked.begin(), peeked.end(), in.begin()));
}

// A reader waiting for a whole header by peeking must eventually see bytes the
// producer published after the consumer cached the head (MSG_PEEK loops).
TEST_F(ByteRingTest, PeekSeesBytesPublishedAfterCachedHead) {
  SharedRing shared(64);
  ByteRing ring = shared.ring();
  const auto in = pattern(16);
  ASSERT_EQ(ring.write(in.data(), 4), 4u);
  std::vector<unsigned char> header(16);
  ASSERT_EQ(ring.read(header.data(), 16, /*peek=*/true), 4u);
  ASSERT_EQ(ring.write(in.data() + 4, 12), 12u);
  EXPECT_EQ(ring.read(header.data(), 16, /*peek=*/true), 16u);
}

TEST_F(ByteRingTest, DiscardDropsBytesWithoutCopying) {
  SharedRing shared(64);
  ByteRing ring = shared.ring();
  const auto in = pattern(40);
  ASSERT_EQ(ring.write(in.data(), in.size()), 40u);
  EXPECT_EQ(ring.discard(15), 15u);
  EXPECT_EQ(ring.unread(), 25u);
  unsigned char next = 0;
  ASSERT_EQ(ring.read(&next, 1), 1u);
  EXPECT_EQ(next, 15);
  EXPECT_EQ(ring.discard(1000), 24u) << "discard stops at what is ready";
  EXPECT_EQ(ring.discard(1), 0u);
  EXPECT_EQ(ring.unread(), 0u);
  EXPECT_EQ(ring.writable(64), 64u) << "discarded space is free again";
}

TEST_F(ByteRingTest, WrapAroundKeepsByteOrderOverManyLaps) {
  SharedRing shared(64);
  ByteRing ring = shared.ring();
  uint64_t written = 0, read = 0;
  std::vector<unsigned char> chunk(64), out(64);
  // Odd sizes so that every offset of the ring is a wrap point at some time.
  for (int round = 0; round < 2000; ++round) {
    const std::size_t n = 1 + (round * 7) % 61;
    fill_stream(1, written, chunk.data(), n);
    written += ring.write(chunk.data(), n);
    const std::size_t m = 1 + (round * 13) % 59;
    const std::size_t got = ring.read(out.data(), m);
    std::vector<unsigned char> expected(got);
    fill_stream(1, read, expected.data(), got);
    ASSERT_TRUE(std::equal(expected.begin(), expected.end(), out.begin())) << "round " << round;
    read += got;
  }
  EXPECT_GT(written, 64u * 100) << "the ring went round many times";
  EXPECT_EQ(written - read, ring.unread());
}

TEST_F(ByteRingTest, IndicesWrapPast32Bits) {
  SharedRing shared(64);
  start_indices_at(shared.control(), 0xffffffffu - 20);
  ByteRing ring = shared.ring();
  EXPECT_EQ(ring.writable(), 64u);
  const auto in = pattern(64);
  ASSERT_EQ(ring.write(in.data(), in.size()), 64u) << "head crosses 2^32";
  EXPECT_EQ(ring.writable(), 0u);
  EXPECT_EQ(ring.unread(), 64u);
  std::vector<unsigned char> out(64);
  ASSERT_EQ(ring.read(out.data(), 30), 30u);
  ASSERT_EQ(ring.read(out.data() + 30, 34), 34u) << "tail crosses 2^32";
  EXPECT_EQ(out, in);
  EXPECT_EQ(shared.control().head.load(), 0xffffffffu - 20 + 64);  // wrapped to 43
}

TEST_F(ByteRingTest, IovecWriteAndReadAcrossTheWrap) {
  SharedRing shared(64);
  ByteRing ring = shared.ring();
  // Move the indices to 50 so that the next 40 bytes straddle the end.
  std::vector<unsigned char> scratch(50);
  ASSERT_EQ(ring.write(scratch.data(), 50), 50u);
  ASSERT_EQ(ring.read(scratch.data(), 50), 50u);

  const auto in = pattern(40, 100);
  struct iovec pieces[3] = {
      {const_cast<unsigned char*>(in.data()), 5},
      {const_cast<unsigned char*>(in.data() + 5), 20},  // crosses offset 64 -> 0
      {const_cast<unsigned char*>(in.data() + 25), 15},
  };
  ASSERT_EQ(ring.write(pieces, 3), 40u);

  std::vector<unsigned char> a(13), b(1), c(26);
  struct iovec out[3] = {{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
  ASSERT_EQ(ring.read(out, 3), 40u);
  std::vector<unsigned char> joined;
  joined.insert(joined.end(), a.begin(), a.end());
  joined.insert(joined.end(), b.begin(), b.end());
  joined.insert(joined.end(), c.begin(), c.end());
  EXPECT_EQ(joined, in);
}

TEST_F(ByteRingTest, IovecWriteStopsWhereSpaceEnds) {
  SharedRing shared(32);
  ByteRing ring = shared.ring();
  const auto in = pattern(48);
  struct iovec pieces[4] = {
      {const_cast<unsigned char*>(in.data()), 10},
      {const_cast<unsigned char*>(in.data() + 10), 0},  // empty pieces are skipped
      {const_cast<unsigned char*>(in.data() + 10), 20},
      {const_cast<unsigned char*>(in.data() + 30), 18},
  };
  EXPECT_EQ(ring.write(pieces, 4), 32u) << "the third piece is cut short";
  std::vector<unsigned char> out(32);
  struct iovec whole {
    out.data(), out.size()
  };
  EXPECT_EQ(ring.read(&whole, 1, /*peek=*/true), 32u);
  EXPECT_TRUE(std::equal(out.begin(), out.end(), in.begin()));
  EXPECT_EQ(ring.unread(), 32u) << "peek through an iovec keeps the bytes";
}

TEST_F(ByteRingTest, ReadIntoIovecStopsWhereDataEnds) {
  SharedRing shared(64);
  ByteRing ring = shared.ring();
  const auto in = pattern(12);
  ASSERT_EQ(ring.write(in.data(), in.size()), 12u);
  std::vector<unsigned char> a(8, 0xee), b(8, 0xee);
  struct iovec out[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
  EXPECT_EQ(ring.read(out, 2), 12u);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), in.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.begin() + 4, in.begin() + 8));
  EXPECT_EQ(b[4], 0xee);
}

TEST_F(ByteRingTest, FlagsStartClearedAndLiveOffTheHotLines) {
  SharedRing shared(64);
  const ByteRingControl& control = shared.control();
  EXPECT_EQ(control.reader_waiting.load(), 0u);
  EXPECT_EQ(control.writer_waiting.load(), 0u);
  EXPECT_EQ(control.writer_closed.load(), 0u);
  EXPECT_EQ(control.reader_closed.load(), 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(&control) % kFalseSharingRange, 0u);
}

TEST_F(ByteRingTest, ReopenEmptiesAClosedRingAndKeepsItsIndicesRunning) {
  SharedRing shared(64);
  ByteRing ring = shared.ring();
  const auto in = pattern(40);
  ASSERT_EQ(ring.write(in.data(), in.size()), 40u);
  std::vector<unsigned char> out(40);
  ASSERT_EQ(ring.read(out.data(), 10), 10u);  // 30 bytes left unread
  ByteRingControl& control = shared.control();
  control.reader_waiting.store(1);
  control.writer_waiting.store(1);
  control.writer_closed.store(1);
  control.reader_closed.store(1);

  byte_ring_reopen(shared.mapping.get(), 64);
  EXPECT_TRUE(byte_ring_valid(shared.mapping.get(), shared.bytes));
  EXPECT_EQ(control.reader_waiting.load(), 0u);
  EXPECT_EQ(control.writer_waiting.load(), 0u);
  EXPECT_EQ(control.writer_closed.load(), 0u);
  EXPECT_EQ(control.reader_closed.load(), 0u);
  EXPECT_EQ(control.tail.load(), 10u) << "the indices run on";
  ByteRing reopened = shared.ring();
  EXPECT_EQ(reopened.unread(), 0u);
  EXPECT_EQ(reopened.readable(), 0u) << "no cached head ahead of the tail";
  EXPECT_EQ(reopened.writable(), 64u);
  ASSERT_EQ(reopened.write(in.data(), in.size()), 40u);
  ASSERT_EQ(reopened.read(out.data(), out.size()), 40u);
  EXPECT_EQ(out, in) << "a stream through the reopened ring, across its end";
}

TEST_F(ByteRingTest, ReopenInitialisesMemoryThatHoldsNoSuchRing) {
  SharedRing shared(64, 64);
  ByteRing small = shared.ring();
  const auto in = pattern(20);
  ASSERT_EQ(small.write(in.data(), in.size()), 20u);
  byte_ring_reopen(shared.mapping.get(), 128);  // another capacity
  EXPECT_TRUE(byte_ring_valid(shared.mapping.get(), shared.bytes));
  EXPECT_EQ(shared.control().capacity, 128u);
  EXPECT_EQ(shared.control().head.load(), 0u);
  EXPECT_EQ(shared.control().tail.load(), 0u);

  std::memset(shared.mapping.get(), 0xa5, shared.bytes);  // no ring at all
  byte_ring_reopen(shared.mapping.get(), 64);
  EXPECT_TRUE(byte_ring_valid(shared.mapping.get(), shared.bytes));
  EXPECT_EQ(shared.ring().unread(), 0u);
  EXPECT_EQ(shared.control().reader_closed.load(), 0u);
}

// A connection segment (protocol.h) is a header over two of these rings; a
// channel's client lays out a slot anew for each connection.
TEST_F(ByteRingTest, RelayoutStartsANewConnectionInAUsedSegment) {
  constexpr uint32_t kCapacity = 4096;
  const std::size_t bytes = connection_segment_bytes(kCapacity);
  UniqueFd fd(create_shared_memory("test_byte_ring", bytes));
  ASSERT_TRUE(fd);
  SharedMapping mapping = map_shared(fd.get(), bytes);
  ASSERT_TRUE(mapping);
  auto* base = static_cast<unsigned char*>(mapping.get());
  std::memset(base, 0xa5, bytes);  // never laid out: gets the full layout
  ConnectionSegmentHeader* header = relayout_connection_segment(base, 1, kCapacity);
  ByteRing client(base + header->ring_offset[kClientSide]);
  ByteRing server(base + header->ring_offset[kServerSide]);
  EXPECT_EQ(header->aborted[kServerSide].load(), 0u);
  EXPECT_EQ(header->holders[kClientSide].load(), 1u);
  EXPECT_EQ(client.unread(), 0u);
  EXPECT_EQ(server.control().reader_closed.load(), 0u);

  // The first connection ends with unread data, an abort and options set.
  const auto in = pattern(100);
  ASSERT_EQ(client.write(in.data(), in.size()), 100u);
  header->aborted[kServerSide].store(1);
  header->holders[kClientSide].store(0);
  header->holders[kServerSide].store(0);
  header->owner_left[kClientSide].store(1);
  header->accepted.store(1);
  header->ring_buffers[kClientSide].store(123);
  header->urgent[kClientSide].store(kUrgentRead | 'x');
  header->urgent_mark[kClientSide].store(7);
  client.control().writer_closed.store(1);
  server.control().reader_closed.store(1);

  ASSERT_EQ(relayout_connection_segment(base, 2, kCapacity), header);
  EXPECT_EQ(header->connection_id, 2u);
  for (uint32_t side : {kClientSide, kServerSide}) {
    EXPECT_EQ(header->aborted[side].load(), 0u);
    EXPECT_EQ(header->holders[side].load(), 1u);
    EXPECT_EQ(header->owner_left[side].load(), 0u);
    EXPECT_EQ(header->ring_buffers[side].load(), 0u);
    EXPECT_EQ(header->urgent[side].load(), 0u);
    EXPECT_EQ(header->urgent_mark[side].load(), 0u);
  }
  EXPECT_EQ(header->accepted.load(), 0u);
  EXPECT_TRUE(byte_ring_valid(base + header->ring_offset[kClientSide],
                              bytes - header->ring_offset[kClientSide]));
  EXPECT_EQ(client.unread(), 0u) << "the old connection's bytes are gone";
  EXPECT_EQ(client.control().writer_closed.load(), 0u);
  EXPECT_EQ(server.control().reader_closed.load(), 0u);
  std::vector<unsigned char> out(100);
  ASSERT_EQ(client.write(in.data(), in.size()), 100u);
  ASSERT_EQ(client.read(out.data(), out.size()), 100u);
  EXPECT_EQ(out, in);
}

// ---------------------------------------------------------------------------
// Cross-process stress: a forked producer writes a long pseudo-random stream
// with random write sizes (1 byte to more than the capacity, plain and
// iovec); this process consumes with random reads, peeks and discards.

struct StreamSummary {
  uint64_t bytes;
  uint64_t fnv;
};

struct StressParams {
  uint32_t capacity;
  uint64_t stream_bytes;
  uint32_t start_index;
  uint64_t seed;
};

std::size_t random_size(Random& random, uint32_t capacity) {
  switch (random.next() % 4) {
    case 0:
      return random.between(1, 16);
    case 1:
      return random.between(1, 512);
    case 2:
      return random.between(1, capacity);
    default:
      return random.between(1, 2 * static_cast<std::size_t>(capacity) + 100);
  }
}

// Splits [data, data + n) into up to four iovecs, some possibly empty.
int split_iovec(Random& random, unsigned char* data, std::size_t n, struct iovec* iov) {
  const int count = static_cast<int>(random.between(1, 4));
  std::size_t at = 0;
  for (int i = 0; i < count; ++i) {
    const std::size_t len = i + 1 == count ? n - at : random.between(0, n - at);
    iov[i] = {data + at, len};
    at += len;
  }
  return count;
}

// Runs in the child: returns its exit status.
int produce_stream(ByteRing ring, const StressParams& params, StreamSummary* summary) {
  Random random(params.seed * 3 + 1);
  std::vector<unsigned char> chunk(2 * static_cast<std::size_t>(params.capacity) + 100);
  uint64_t position = 0, hash = kFnvOffset;
  while (position < params.stream_bytes) {
    const std::size_t n =
        std::min<uint64_t>(random_size(random, params.capacity), params.stream_bytes - position);
    fill_stream(params.seed, position, chunk.data(), n);
    hash = fnv1a(hash, chunk.data(), n);
    std::size_t done = 0;
    unsigned idle = 0;
    while (done < n) {
      std::size_t wrote;
      if (random.next() % 2 == 0) {
        struct iovec iov[4];
        const int count = split_iovec(random, chunk.data() + done, n - done, iov);
        wrote = ring.write(iov, count);
      } else {
        wrote = ring.write(chunk.data() + done, n - done);
      }
      done += wrote;
      if (wrote == 0 && ++idle % 64 == 0) sched_yield();  // two cores, two processes
    }
    position += n;
  }
  summary->bytes = position;
  summary->fnv = hash;
  // Release: the summary and every byte are visible before the flag.
  ring.control().writer_closed.store(1, std::memory_order_release);
  return 0;
}

void run_stream_stress(const StressParams& params) {
  Deadline deadline(120);
  SharedRing shared(params.capacity, sizeof(StreamSummary));
  start_indices_at(shared.control(), params.start_index);
  auto* summary = static_cast<StreamSummary*>(shared.after_ring());

  const pid_t child = fork();
  ASSERT_GE(child, 0) << strerror(errno);
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    alarm(110);
    _exit(produce_stream(shared.ring(), params, summary));
  }

  ByteRing ring = shared.ring();
  Random random(params.seed * 7 + 5);
  std::vector<unsigned char> got(2 * static_cast<std::size_t>(params.capacity) + 100);
  std::vector<unsigned char> expected(got.size());
  uint64_t position = 0, hash = kFnvOffset;
  bool mismatch = false;
  unsigned idle = 0;
  for (;;) {
    const std::size_t want = random_size(random, params.capacity);
    std::size_t n = 0;
    switch (random.next() % 4) {
      case 0: {  // read through an iovec
        struct iovec iov[4];
        n = ring.read(iov, split_iovec(random, got.data(), want, iov));
        break;
      }
      case 1: {  // peek, check, then discard the same bytes
        n = ring.read(got.data(), want, /*peek=*/true);
        std::vector<unsigned char> again(n);
        if (n > 0 && ring.read(again.data(), n, /*peek=*/true) != n) mismatch = true;
        if (!std::equal(again.begin(), again.end(), got.begin())) mismatch = true;
        if (ring.discard(n) != n) mismatch = true;
        break;
      }
      default:
        n = ring.read(got.data(), want);
        break;
    }
    if (n == 0) {
      // Acquire pairs with the producer's release of writer_closed; re-check
      // the ring after seeing it, since bytes may have landed in between.
      if (ring.control().writer_closed.load(std::memory_order_acquire) != 0 && ring.unread() == 0)
        break;
      if (++idle % 64 == 0) sched_yield();
      continue;
    }
    fill_stream(params.seed, position, expected.data(), n);
    if (!std::equal(got.begin(), got.begin() + n, expected.begin())) {
      const auto at = std::mismatch(got.begin(), got.begin() + n, expected.begin());
      ADD_FAILURE() << "stream differs at byte " << position + (at.first - got.begin());
      mismatch = true;
      break;
    }
    hash = fnv1a(hash, got.data(), n);
    position += n;
  }

  // A failed consumer stops reading; the producer would wait for space forever.
  if (mismatch) kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_FALSE(mismatch);
  if (!mismatch) {
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "producer status " << status;
  }
  EXPECT_EQ(position, params.stream_bytes) << "no loss, no extra bytes";
  EXPECT_EQ(summary->bytes, params.stream_bytes);
  EXPECT_EQ(hash, summary->fnv) << "checksum of the whole stream";
  EXPECT_EQ(ring.unread(), 0u);
}

TEST_F(ByteRingTest, CrossProcessStressSmallRing) {
  run_stream_stress({.capacity = 4096, .stream_bytes = 24u << 20, .start_index = 0, .seed = 11});
}

TEST_F(ByteRingTest, CrossProcessStressSmallRingAcrossIndexWrap) {
  // Starts 1 MiB before 2^32, so the counters wrap early in the run.
  run_stream_stress(
      {.capacity = 4096, .stream_bytes = 8u << 20, .start_index = 0xfff00000u, .seed = 12});
}

TEST_F(ByteRingTest, CrossProcessStressLargeRing) {
  run_stream_stress(
      {.capacity = 256 * 1024, .stream_bytes = 192u << 20, .start_index = 0, .seed = 13});
}

}  // namespace
}  // namespace netaccel

// DescriptorRing: single-process behaviour (order, full and empty, wrap,
// layout validation, the protocol's descriptor types) and a cross-process
// stress test where every descriptor carries a sequence number.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "netaccel/descriptor_ring.h"
#include "netaccel/protocol.h"
#include "netaccel/shm.h"
#include "test_support.h"

namespace netaccel {
namespace {

using test::Deadline;
using test::Random;
using test::splitmix64;
using test::start_indices_at;

// A test descriptor: a sequence number and a body derived from it, so that a
// torn or stale slot shows up as a body that does not match its sequence.
struct Numbered {
  uint64_t sequence;
  uint64_t body[7];
};
static_assert(sizeof(Numbered) == kDescriptorBytes);

Numbered make_numbered(uint64_t sequence) {
  Numbered descriptor{};
  descriptor.sequence = sequence;
  for (int i = 0; i < 7; ++i) descriptor.body[i] = splitmix64(sequence * 8 + i);
  return descriptor;
}

bool body_matches(const Numbered& descriptor) {
  const Numbered expected = make_numbered(descriptor.sequence);
  return std::memcmp(&expected, &descriptor, sizeof descriptor) == 0;
}

struct SharedQueue {
  explicit SharedQueue(uint32_t slots, std::size_t extra_bytes = 0)
      : bytes(descriptor_ring_footprint(slots) + extra_bytes) {
    fd = UniqueFd(create_shared_memory("test_descriptor_ring", bytes));
    EXPECT_TRUE(fd) << "create_shared_memory failed";
    mapping = map_shared(fd.get(), bytes);
    EXPECT_TRUE(mapping) << "map_shared failed";
    descriptor_ring_init(mapping.get(), slots);
  }
  template <typename Descriptor>
  DescriptorRing<Descriptor> ring() const {
    return DescriptorRing<Descriptor>(mapping.get());
  }
  DescriptorRingControl& control() const {
    return *static_cast<DescriptorRingControl*>(mapping.get());
  }
  void* after_ring() const {
    return static_cast<unsigned char*>(mapping.get()) +
           descriptor_ring_footprint(control().slot_count);
  }

  std::size_t bytes;
  UniqueFd fd;
  SharedMapping mapping;
};

class DescriptorRingTest : public ::testing::Test {
  Deadline deadline_{30};
};

// ---------------------------------------------------------------------------
// Layout and validation

TEST_F(DescriptorRingTest, InitialisedRingIsValidAndEmpty) {
  SharedQueue shared(16);
  EXPECT_TRUE(descriptor_ring_valid(shared.mapping.get(), shared.bytes));
  auto ring = shared.ring<Numbered>();
  EXPECT_TRUE(static_cast<bool>(ring));
  EXPECT_FALSE(static_cast<bool>(DescriptorRing<Numbered>()));
  EXPECT_TRUE(ring.empty());
  Numbered out{};
  EXPECT_FALSE(ring.try_pop(out));
  EXPECT_EQ(shared.control().slot_bytes, kDescriptorBytes);
  EXPECT_EQ(shared.control().consumer_sleeping.load(), 0u);
}

TEST_F(DescriptorRingTest, ValidRejectsBadHeaders) {
  SharedQueue shared(16);
  void* memory = shared.mapping.get();
  DescriptorRingControl& control = shared.control();
  const uint32_t magic = control.magic, version = control.version, slots = control.slot_count,
                 slot_bytes = control.slot_bytes, offset = control.slots_offset;
  auto restore = [&] {
    control.magic = magic;
    control.version = version;
    control.slot_count = slots;
    control.slot_bytes = slot_bytes;
    control.slots_offset = offset;
  };

  control.magic = kByteRingMagic;  // a ring of the other kind
  EXPECT_FALSE(descriptor_ring_valid(memory, shared.bytes)) << "bad magic";
  restore();
  control.version = 0;
  EXPECT_FALSE(descriptor_ring_valid(memory, shared.bytes)) << "bad version";
  restore();
  control.slot_bytes = 32;
  EXPECT_FALSE(descriptor_ring_valid(memory, shared.bytes)) << "bad slot size";
  restore();
  control.slot_count = 0;
  EXPECT_FALSE(descriptor_ring_valid(memory, shared.bytes)) << "no slots";
  restore();
  control.slot_count = 12;
  EXPECT_FALSE(descriptor_ring_valid(memory, shared.bytes)) << "slot count not a power of two";
  restore();
  control.slot_count = 32;
  EXPECT_FALSE(descriptor_ring_valid(memory, shared.bytes)) << "slots past the mapping";
  restore();
  control.slots_offset = 64;
  EXPECT_FALSE(descriptor_ring_valid(memory, shared.bytes)) << "slots overlap the control block";
  restore();
  control.slots_offset = sizeof(DescriptorRingControl) + kDescriptorBytes;
  EXPECT_FALSE(descriptor_ring_valid(memory, shared.bytes)) << "offset pushes slots out";
  restore();
  EXPECT_FALSE(descriptor_ring_valid(memory, shared.bytes - 1)) << "mapping one byte short";
  EXPECT_FALSE(descriptor_ring_valid(memory, sizeof(DescriptorRingControl) - 1));
  EXPECT_TRUE(descriptor_ring_valid(memory, shared.bytes));
}

// ---------------------------------------------------------------------------
// Single-process behaviour

TEST_F(DescriptorRingTest, PopsInPushOrder) {
  SharedQueue shared(8);
  auto ring = shared.ring<Numbered>();
  for (uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(ring.try_push(make_numbered(i)));
  EXPECT_FALSE(ring.empty());
  for (uint64_t i = 0; i < 5; ++i) {
    Numbered out{};
    ASSERT_TRUE(ring.try_pop(out));
    EXPECT_EQ(out.sequence, i);
    EXPECT_TRUE(body_matches(out));
  }
  EXPECT_TRUE(ring.empty());
}

TEST_F(DescriptorRingTest, FullRingRefusesUntilOneIsPopped) {
  SharedQueue shared(4);
  auto ring = shared.ring<Numbered>();
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ring.try_push(make_numbered(i))) << i;
  EXPECT_FALSE(ring.try_push(make_numbered(99))) << "every slot is taken";
  EXPECT_FALSE(ring.try_push(make_numbered(99))) << "still full";

  Numbered out{};
  ASSERT_TRUE(ring.try_pop(out));
  EXPECT_EQ(out.sequence, 0u);
  EXPECT_TRUE(ring.try_push(make_numbered(4))) << "the popped slot is free again";
  EXPECT_FALSE(ring.try_push(make_numbered(99)));

  for (uint64_t i = 1; i <= 4; ++i) {
    ASSERT_TRUE(ring.try_pop(out));
    EXPECT_EQ(out.sequence, i) << "the refused pushes left no trace";
  }
  EXPECT_FALSE(ring.try_pop(out));
  EXPECT_TRUE(ring.empty());
}

TEST_F(DescriptorRingTest, SingleSlotRingAlternates) {
  SharedQueue shared(1);
  auto ring = shared.ring<Numbered>();
  Numbered out{};
  for (uint64_t i = 0; i < 10; ++i) {
    ASSERT_TRUE(ring.try_push(make_numbered(i)));
    EXPECT_FALSE(ring.try_push(make_numbered(i)));
    ASSERT_TRUE(ring.try_pop(out));
    EXPECT_EQ(out.sequence, i);
    EXPECT_FALSE(ring.try_pop(out));
  }
}

TEST_F(DescriptorRingTest, WrapsAroundManyTimes) {
  SharedQueue shared(8);
  auto ring = shared.ring<Numbered>();
  uint64_t pushed = 0, popped = 0;
  for (int round = 0; round < 1000; ++round) {
    const int pushes = 1 + round % 7, pops = 1 + (round * 3) % 8;
    for (int i = 0; i < pushes && ring.try_push(make_numbered(pushed)); ++i) ++pushed;
    Numbered out{};
    for (int i = 0; i < pops && ring.try_pop(out); ++i) {
      ASSERT_EQ(out.sequence, popped);
      ASSERT_TRUE(body_matches(out));
      ++popped;
    }
  }
  EXPECT_GT(popped, 8u * 100);
  EXPECT_LE(pushed - popped, 8u);
}

TEST_F(DescriptorRingTest, IndicesWrapPast32Bits) {
  SharedQueue shared(4);
  start_indices_at(shared.control(), 0xffffffffu - 2);
  auto ring = shared.ring<Numbered>();
  EXPECT_TRUE(ring.empty());
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ring.try_push(make_numbered(i)));
  EXPECT_FALSE(ring.try_push(make_numbered(4))) << "full across the wrap";
  Numbered out{};
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(ring.try_pop(out));
    EXPECT_EQ(out.sequence, i);
  }
  EXPECT_FALSE(ring.try_pop(out)) << "empty across the wrap";
  EXPECT_EQ(shared.control().head.load(), 1u);
}

TEST_F(DescriptorRingTest, CarriesProtocolRequestsAndEvents) {
  SharedQueue shared(kRequestSlots);
  auto requests = shared.ring<Request>();
  Request request{};
  request.op = RequestOp::kConnect;
  request.request_id = 42;
  request.socket_id = 0x1122334455667788ULL;
  request.address.port = 8080;
  request.address.family = AF_INET;
  ASSERT_TRUE(requests.try_push(request));
  Request got{};
  ASSERT_TRUE(requests.try_pop(got));
  EXPECT_EQ(std::memcmp(&got, &request, sizeof got), 0);

  SharedQueue events_memory(kEventSlots);
  auto events = events_memory.ring<Event>();
  Event event{};
  event.type = EventType::kReply;
  event.op = RequestOp::kConnect;
  event.status = -111;
  event.request_id = 42;
  ASSERT_TRUE(events.try_push(event));
  Event got_event{};
  ASSERT_TRUE(events.try_pop(got_event));
  EXPECT_EQ(got_event.status, -111);
  EXPECT_EQ(got_event.request_id, 42u);
}

// ---------------------------------------------------------------------------
// Cross-process stress: a forked producer pushes numbered descriptors in
// random bursts; this process pops in random batches and checks that every
// number arrives exactly once, in order, with an intact body.

struct StressParams {
  uint32_t slots;
  uint64_t count;
  uint32_t start_index;
  uint64_t seed;
};

struct ProducerDone {
  std::atomic<uint32_t> done;
  uint64_t pushed;
};

int produce_numbered(DescriptorRing<Numbered> ring, const StressParams& params,
                     ProducerDone* done) {
  Random random(params.seed);
  uint64_t next = 0;
  unsigned idle = 0;
  while (next < params.count) {
    const uint64_t burst = 1 + random.next() % (2 * params.slots + 3);
    for (uint64_t i = 0; i < burst && next < params.count;) {
      if (ring.try_push(make_numbered(next))) {
        ++next;
        ++i;
      } else if (++idle % 64 == 0) {
        sched_yield();  // two processes, maybe two cores
      }
    }
  }
  done->pushed = next;
  // Release: every push happens before the consumer sees `done`.
  done->done.store(1, std::memory_order_release);
  return 0;
}

void run_numbered_stress(const StressParams& params) {
  Deadline deadline(120);
  SharedQueue shared(params.slots, sizeof(ProducerDone));
  start_indices_at(shared.control(), params.start_index);
  auto* done = new (shared.after_ring()) ProducerDone{};

  const pid_t child = fork();
  ASSERT_GE(child, 0) << strerror(errno);
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    alarm(110);
    _exit(produce_numbered(shared.ring<Numbered>(), params, done));
  }

  auto ring = shared.ring<Numbered>();
  Random random(params.seed + 1000);
  uint64_t expected = 0;
  bool failed = false;
  unsigned idle = 0;
  while (!failed) {
    const uint64_t batch = 1 + random.next() % (2 * params.slots + 3);
    uint64_t got = 0;
    Numbered out{};
    while (got < batch && ring.try_pop(out)) {
      ++got;
      if (out.sequence != expected) {
        ADD_FAILURE() << "expected descriptor " << expected << ", got " << out.sequence
                      << (out.sequence < expected ? " (duplicate or stale)" : " (lost some)");
        failed = true;
        break;
      }
      if (!body_matches(out)) {
        ADD_FAILURE() << "descriptor " << expected << " has a torn body";
        failed = true;
        break;
      }
      ++expected;
    }
    if (got == 0) {
      // Acquire pairs with the producer's release of `done`; then the ring
      // must be found empty once more before stopping.
      if (done->done.load(std::memory_order_acquire) != 0 && ring.empty()) break;
      if (++idle % 64 == 0) sched_yield();
    }
  }

  if (failed) kill(child, SIGKILL);  // it may wait for space forever
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_FALSE(failed);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "producer status " << status;
  EXPECT_EQ(expected, params.count) << "every descriptor arrived once";
  EXPECT_EQ(done->pushed, params.count);
  Numbered extra{};
  EXPECT_FALSE(ring.try_pop(extra)) << "nothing after the last descriptor";
}

TEST_F(DescriptorRingTest, CrossProcessStressSmallRing) {
  run_numbered_stress({.slots = 16, .count = 2'000'000, .start_index = 0, .seed = 21});
}

TEST_F(DescriptorRingTest, CrossProcessStressSmallRingAcrossIndexWrap) {
  run_numbered_stress(
      {.slots = 16, .count = 500'000, .start_index = 0xffffffffu - 100'000, .seed = 22});
}

TEST_F(DescriptorRingTest, CrossProcessStressLargeRing) {
  run_numbered_stress({.slots = kEventSlots, .count = 4'000'000, .start_index = 0, .seed = 23});
}

}  // namespace
}  // namespace netaccel

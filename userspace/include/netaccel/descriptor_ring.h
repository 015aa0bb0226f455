// Single-producer single-consumer ring of fixed-size descriptors in shared
// memory: the per-process request queue (process -> monitor) and event queue
// (monitor -> process). Same discipline as ByteRing: offsets, free-running
// indices, cached peer index, acquire/release on the published indices.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

#include "netaccel/byte_ring.h"

namespace netaccel {

inline constexpr uint32_t kDescriptorRingMagic = 0x4e414452;  // "NADR"
inline constexpr uint32_t kDescriptorRingVersion = 1;
inline constexpr std::size_t kDescriptorBytes = 64;  // one cache line

struct DescriptorRingControl {
  alignas(kFalseSharingRange) uint32_t magic;
  uint32_t version;
  uint32_t slot_count;  // power of two
  uint32_t slot_bytes;
  uint32_t slots_offset;  // from the start of this control block

  alignas(kFalseSharingRange) std::atomic<uint32_t> head;  // slots ever published
  uint32_t producer_cached_tail;

  alignas(kFalseSharingRange) std::atomic<uint32_t> tail;  // slots ever consumed
  uint32_t consumer_cached_head;

  // Set by a consumer about to sleep; the producer wakes it after publishing.
  alignas(kFalseSharingRange) std::atomic<uint32_t> consumer_sleeping;
};
static_assert(sizeof(DescriptorRingControl) == 4 * kFalseSharingRange);

inline constexpr std::size_t descriptor_ring_footprint(uint32_t slot_count) {
  return sizeof(DescriptorRingControl) + static_cast<std::size_t>(slot_count) * kDescriptorBytes;
}

inline void descriptor_ring_init(void* memory, uint32_t slot_count) {
  auto* control = new (memory) DescriptorRingControl{};
  control->magic = kDescriptorRingMagic;
  control->version = kDescriptorRingVersion;
  control->slot_count = slot_count;
  control->slot_bytes = kDescriptorBytes;
  control->slots_offset = sizeof(DescriptorRingControl);
}

inline bool descriptor_ring_valid(const void* memory, std::size_t bytes) {
  const auto* control = static_cast<const DescriptorRingControl*>(memory);
  if (bytes < sizeof(DescriptorRingControl)) return false;
  const uint32_t count = control->slot_count;
  return control->magic == kDescriptorRingMagic && control->version == kDescriptorRingVersion &&
         control->slot_bytes == kDescriptorBytes && count != 0 && (count & (count - 1)) == 0 &&
         control->slots_offset >= sizeof(DescriptorRingControl) &&
         control->slots_offset + static_cast<std::size_t>(count) * kDescriptorBytes <= bytes;
}

template <typename Descriptor>
class DescriptorRing {
  static_assert(sizeof(Descriptor) == kDescriptorBytes);
  static_assert(std::is_trivially_copyable_v<Descriptor>);

 public:
  DescriptorRing() = default;
  explicit DescriptorRing(void* memory)
      : control_(static_cast<DescriptorRingControl*>(memory)),
        slots_(static_cast<unsigned char*>(memory) + control_->slots_offset),
        mask_(control_->slot_count - 1) {}

  DescriptorRingControl& control() const { return *control_; }
  explicit operator bool() const { return control_ != nullptr; }

  bool try_push(const Descriptor& descriptor) {
    const uint32_t head = control_->head.load(std::memory_order_relaxed);  // own index
    if (head - control_->producer_cached_tail > mask_) {
      // Acquire pairs with the consumer's release of tail: the slot is free.
      control_->producer_cached_tail = control_->tail.load(std::memory_order_acquire);
      if (head - control_->producer_cached_tail > mask_) return false;
    }
    std::memcpy(slot(head), &descriptor, sizeof(Descriptor));
    // Release publishes the slot's contents before the new head.
    control_->head.store(head + 1, std::memory_order_release);
    return true;
  }

  bool try_pop(Descriptor& descriptor) {
    if (!try_peek(descriptor)) return false;
    const uint32_t tail = control_->tail.load(std::memory_order_relaxed);  // own index
    // Release: we are done reading the slot before the producer may reuse it.
    control_->tail.store(tail + 1, std::memory_order_release);
    return true;
  }

  // The oldest descriptor, left queued (consumer only).
  bool try_peek(Descriptor& descriptor) {
    const uint32_t tail = control_->tail.load(std::memory_order_relaxed);  // own index
    if (control_->consumer_cached_head == tail) {
      // Acquire pairs with the producer's release of head: the slot is written.
      control_->consumer_cached_head = control_->head.load(std::memory_order_acquire);
      if (control_->consumer_cached_head == tail) return false;
    }
    std::memcpy(&descriptor, slot(tail), sizeof(Descriptor));
    return true;
  }

  bool empty() const {
    return control_->head.load(std::memory_order_acquire) ==
           control_->tail.load(std::memory_order_relaxed);
  }

 private:
  unsigned char* slot(uint32_t index) const {
    return slots_ + static_cast<std::size_t>(index & mask_) * kDescriptorBytes;
  }

  DescriptorRingControl* control_ = nullptr;
  unsigned char* slots_ = nullptr;
  uint32_t mask_ = 0;
};

}  // namespace netaccel

// Whether the program's memory may be read or written, answered without
// faulting: the check that stands in for the kernel's fault-handling copy.
//
// The kernel copies a program's buffers with fault handling, so a bad
// pointer (null, unmapped, PROT_NONE, read-only for a receive, a length
// running off a mapping) becomes EFAULT or a short count. The rings are
// filled and drained with memcpy, which would turn the same mistake into
// SIGSEGV. So every range of the program's memory that the preload is about
// to copy is checked first — and on the data path (tens of nanoseconds a
// message) the check must cost no system call.
//
// The choice: a range is *proven* once a probe that cannot fault found every
// page of it accessible, and each thread remembers a few proven page ranges
// (kProvenRanges, merged when they touch). A copy inside them needs no
// system call, only a few compares (a TCP send and receive on a ring cost
// 28 ns together with or without them; a pipe's write and read, 57 ns
// against 54); any other copy probes first, about a microsecond:
// process_vm_readv on our own thread reads one byte of each page, and the
// kernel's page walk fails where a copy would fault. To prove a page
// writable, process_vm_writev writes that byte back unchanged — only ever
// into memory the call hands the kernel to write (a receive's bytes about
// to be copied, an events or pollfd array, an fd_set). Programs reuse their
// buffers, so after the first message the probe is rare. The rejected
// alternatives: a probe on every copy (a system call per message, many
// times a ring message's cost); catching SIGSEGV around the copy (a signal
// handler would take the program's own, and sigaltstack, and jump out of
// libc); reading /proc/self/maps (tens of microseconds, and stale at once).
//
// A proof holds until the program changes its mappings: munmap, mremap,
// mprotect, mmap with MAP_FIXED, shmdt and guard pages (madvise), all
// interposed, and fork (MADV_DONTFORK), end every thread's proofs. What the
// interposed calls cannot see is memory given back behind them — glibc's
// free() of a large block, an exited thread's stack, dlclose — which the
// program may no longer use at all (doing so is undefined in C already).
// Memory the kernel cannot pin (device mappings: VM_IO, VM_PFNMAP) fails
// the probe although a copy could reach it; protection keys are not
// checked by it. Where process_vm_readv is refused (a seccomp filter),
// every range counts as accessible, as before this check existed.
#pragma once

#include <errno.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace netaccel::preload {

enum class Access : uint8_t { kRead, kWrite };

// [begin, begin + size): whole pages; size 0 when unused.
struct ProvenRange {
  uintptr_t begin;
  uintptr_t size;
};
inline constexpr int kProvenRanges = 8;
struct ProvenRanges {
  // Per Access, a copy of the range that last held one asked about: a loop
  // sends from one buffer and receives into another.
  ProvenRange last_held[2];
  uint64_t generation;  // of g_mapping_generation when these were proven
  uint32_t next[2];     // per Access, the slot the next proof replaces
  // Per Access. A write-proven range was read to prove it: readable too.
  ProvenRange ranges[2][kProvenRanges];
};
extern __thread ProvenRanges t_proven __attribute__((tls_model("initial-exec")));
// Moves on whenever the program's mappings may have lost access (above).
extern std::atomic<uint64_t> g_mapping_generation;

inline bool range_holds(const ProvenRange& range, uintptr_t begin, std::size_t length) {
  const uintptr_t offset = begin - range.begin;
  return offset < range.size && length <= range.size - offset;
}
// The slots, when last_held did not hold it; notes the one that does.
bool proven_in_slots(uintptr_t begin, std::size_t length, Access access);

// Whether this thread proved `length` bytes at `address` accessible, and
// nothing since took access away. Cheap: the data path asks it per call.
inline bool proven(const void* address, std::size_t length, Access access) {
  if (length == 0) return true;
  if (t_proven.generation != g_mapping_generation.load(std::memory_order_relaxed)) return false;
  const auto begin = reinterpret_cast<uintptr_t>(address);
  return range_holds(t_proven.last_held[static_cast<int>(access)], begin, length) ||
         proven_in_slots(begin, length, access);
}

inline bool iov_proven(const struct iovec* iov, int iovcnt, Access access) {
  for (int i = 0; i < iovcnt; ++i) {
    if (!proven(iov[i].iov_base, iov[i].iov_len, access)) return false;
  }
  return true;
}

// How many leading bytes of the `length` at `address` the program may
// access (probing, and proving them, unless proven already).
std::size_t accessible_prefix(const void* address, std::size_t length, Access access);
inline bool accessible(const void* address, std::size_t length, Access access) {
  return proven(address, length, access) || accessible_prefix(address, length, access) == length;
}

inline bool iov_accessible(const struct iovec* iov, int iovcnt, Access access) {
  for (int i = 0; i < iovcnt; ++i) {
    if (!accessible(iov[i].iov_base, iov[i].iov_len, access)) return false;
  }
  return true;
}

// One ring copy's share of a vector: at most `most` bytes of `iov` after
// its first `skip`, in `out` (iov_advance), and only if the program may
// access all of them; -1 when it may not.
int accessible_piece(const struct iovec* iov, int iovcnt, std::size_t skip, std::size_t most,
                     Access access, struct iovec* out);

// The kernel's first step of a vector call (import_iovec): it copies the
// array, refusing a negative length (EINVAL) and an array it cannot read
// (EFAULT), whichever it meets first. 0 or that errno. `count` is at most
// IOV_MAX.
int vector_error_probing(const struct iovec* iov, std::size_t count);
inline int vector_error(const struct iovec* iov, std::size_t count) {
  if (!proven(iov, count * sizeof *iov, Access::kRead)) return vector_error_probing(iov, count);
  for (std::size_t i = 0; i < count; ++i) {
    if (static_cast<ssize_t>(iov[i].iov_len) < 0) return EINVAL;
  }
  return 0;
}

// The program may have taken access away (see above): every proof ends.
inline void forget_proven_memory() {
  g_mapping_generation.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace netaccel::preload

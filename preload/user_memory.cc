// Probing the program's memory without faulting, the proofs each thread
// keeps, and the mapping calls that end them (see user_memory.h).
#include "user_memory.h"

#include <errno.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#include <algorithm>
#include <climits>

#include "intercepted.h"
#include "real_calls.h"
#include "runtime.h"

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102  // Linux 6.13
#endif

namespace netaccel::preload {

__thread ProvenRanges t_proven __attribute__((tls_model("initial-exec")));
std::atomic<uint64_t> g_mapping_generation{0};

namespace {

// Set once the kernel refused the probe: nothing is checked any more.
std::atomic<bool> g_probe_refused{false};
// Pages probed per system call: the arrays live on the caller's stack.
constexpr std::size_t kProbeBatch = 64;

uintptr_t page_size() {
  static const uintptr_t size = getauxval(AT_PAGESZ);
  return size;
}

// Of `count` pages (their probe addresses in `pages`), how many in a row
// from the first the program may access; `count` when probing is refused.
std::size_t probe_pages(struct iovec* pages, std::size_t count, Access access) {
  unsigned char bytes[kProbeBatch];
  struct iovec local {
    bytes, count
  };
  // Our own thread: the process's leader may have exited before us.
  const pid_t self = gettid();
  ssize_t readable = process_vm_readv(self, &local, 1, pages, count, 0);
  if (readable < 0 && errno != EFAULT) {
    // ENOSYS, EPERM: a filter forbids the call; unchecked from now on, as
    // before this check existed. Anything else: unchecked this once.
    if (errno == ENOSYS || errno == EPERM) g_probe_refused.store(true, std::memory_order_relaxed);
    return count;
  }
  if (readable <= 0 || access == Access::kRead) return readable < 0 ? 0 : readable;
  // Writing back the byte just read leaves the page as it was; the range
  // is the program's buffer for this call, which the copy overwrites next.
  local.iov_len = static_cast<std::size_t>(readable);
  const ssize_t writable =
      process_vm_writev(self, &local, 1, pages, static_cast<unsigned long>(readable), 0);
  return writable < 0 ? 0 : static_cast<std::size_t>(writable);
}

// Ranges are rewritten so that a signal handler running a send on this
// thread in the middle never sees more proven than was.
void write_range(ProvenRange& range, uintptr_t begin, uintptr_t size) {
  range.size = 0;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  range.begin = begin;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  range.size = size;
}

// Remembers [begin, end) (whole pages) as accessible, proven while the
// mapping generation was `generation`.
void remember(uintptr_t begin, uintptr_t end, Access access, uint64_t generation) {
  // A mapping changed during the probe: the proof may be stale already.
  if (g_mapping_generation.load(std::memory_order_relaxed) != generation) return;
  ProvenRanges& proven_ranges = t_proven;
  if (proven_ranges.generation != generation) {
    for (ProvenRange& range : proven_ranges.last_held) write_range(range, 0, 0);
    for (auto& kind : proven_ranges.ranges) {
      for (ProvenRange& range : kind) write_range(range, 0, 0);
    }
    proven_ranges.generation = generation;
  }
  const int kind = static_cast<int>(access);
  for (ProvenRange& range : proven_ranges.ranges[kind]) {
    // Ranges that touch become one (a buffer grown or moved along).
    if (range.size != 0 && begin <= range.begin + range.size && range.begin <= end) {
      const uintptr_t merged_begin = std::min(begin, range.begin);
      write_range(range, merged_begin, std::max(end, range.begin + range.size) - merged_begin);
      return;
    }
  }
  write_range(proven_ranges.ranges[kind][proven_ranges.next[kind]++ % kProvenRanges], begin,
              end - begin);
}

}  // namespace

bool proven_in_slots(uintptr_t begin, std::size_t length, Access access) {
  // Writable ranges are readable too.
  for (int kind = static_cast<int>(access); kind <= static_cast<int>(Access::kWrite); ++kind) {
    for (const ProvenRange& range : t_proven.ranges[kind]) {
      if (range_holds(range, begin, length)) {
        write_range(t_proven.last_held[static_cast<int>(access)], range.begin, range.size);
        return true;
      }
    }
  }
  return false;
}

std::size_t accessible_prefix(const void* address, std::size_t length, Access access) {
  if (length == 0 || proven(address, length, access)) return length;
  if (g_probe_refused.load(std::memory_order_relaxed)) return length;
  const auto begin = reinterpret_cast<uintptr_t>(address);
  // A range past the end of the address space is refused whole, as the
  // kernel's access_ok refuses it.
  if (length - 1 > UINTPTR_MAX - begin) return 0;
  const int saved_errno = errno;
  const uint64_t generation = g_mapping_generation.load(std::memory_order_relaxed);
  const uintptr_t page_bytes = page_size();
  const uintptr_t last_page = (begin + (length - 1)) & ~(page_bytes - 1);
  std::size_t accessible = length;
  for (uintptr_t page = begin & ~(page_bytes - 1);; page += page_bytes) {
    // One byte of each page, the first of it that belongs to the range.
    struct iovec pages[kProbeBatch];
    std::size_t count = 0;
    for (;; page += page_bytes) {
      pages[count++] = {reinterpret_cast<void*>(std::max(page, begin)), 1};
      if (page == last_page || count == kProbeBatch) break;
    }
    const std::size_t good = probe_pages(pages, count, access);
    if (good < count) {
      const uintptr_t first_bad = page - (count - 1 - good) * page_bytes;
      accessible = first_bad > begin ? first_bad - begin : 0;
      break;
    }
    if (page == last_page) break;
  }
  if (accessible > 0) {
    remember(begin & ~(page_bytes - 1), (begin + accessible + page_bytes - 1) & ~(page_bytes - 1),
             access, generation);
  }
  errno = saved_errno;
  return accessible;
}

int accessible_piece(const struct iovec* iov, int iovcnt, std::size_t skip, std::size_t most,
                     Access access, struct iovec* out) {
  const int count = iov_advance(iov, iovcnt, skip, most, out);
  return iov_accessible(out, count, access) ? count : -1;
}

int vector_error_probing(const struct iovec* iov, std::size_t count) {
  const std::size_t readable = accessible_prefix(iov, count * sizeof *iov, Access::kRead);
  for (std::size_t i = 0; i < count; ++i) {
    if ((i + 1) * sizeof *iov > readable) return EFAULT;
    if (static_cast<ssize_t>(iov[i].iov_len) < 0) return EINVAL;
  }
  return 0;
}

// ---------------------------------------------------------------------------
// The calls that may take access away. Each ends the proofs before and
// after it: a probe that ran while the mapping changed is not trusted.

namespace {

template <typename Change>
auto forgetting_proofs(Change change) {
  forget_proven_memory();
  const auto result = change();
  const int error = errno;
  forget_proven_memory();
  errno = error;
  return result;
}

// A protection that keeps reading and writing allowed takes nothing away.
bool narrows_access(int protection) {
  return (protection & (PROT_READ | PROT_WRITE)) != (PROT_READ | PROT_WRITE);
}

}  // namespace

void* intercepted_mmap(void* address, size_t length, int protection, int flags, int fd,
                       off_t offset) {
  // Only MAP_FIXED replaces what was mapped there.
  if (!(flags & MAP_FIXED)) return real().mmap(address, length, protection, flags, fd, offset);
  return forgetting_proofs(
      [&] { return real().mmap(address, length, protection, flags, fd, offset); });
}

int intercepted_munmap(void* address, size_t length) {
  return forgetting_proofs([&] { return real().munmap(address, length); });
}

void* netaccel_mremap(void* address, size_t old_length, size_t new_length, int flags,
                      void* new_address) {
  return forgetting_proofs(
      [&] { return real().mremap(address, old_length, new_length, flags, new_address); });
}

int intercepted_mprotect(void* address, size_t length, int protection) {
  if (!narrows_access(protection)) return real().mprotect(address, length, protection);
  return forgetting_proofs([&] { return real().mprotect(address, length, protection); });
}

int intercepted_pkey_mprotect(void* address, size_t length, int protection, int key) {
  if (!narrows_access(protection)) return real().pkey_mprotect(address, length, protection, key);
  return forgetting_proofs([&] { return real().pkey_mprotect(address, length, protection, key); });
}

int intercepted_madvise(void* address, size_t length, int advice) {
  // Every other advice leaves the pages mapped with their protection.
  if (advice != MADV_GUARD_INSTALL) return real().madvise(address, length, advice);
  return forgetting_proofs([&] { return real().madvise(address, length, advice); });
}

int intercepted_shmdt(const void* address) {
  return forgetting_proofs([&] { return real().shmdt(address); });
}

}  // namespace netaccel::preload

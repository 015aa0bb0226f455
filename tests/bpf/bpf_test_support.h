// What the BPF tests share: skipping without privileges, a timeout on every
// test, per-CPU counter sums.
#pragma once

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace netaccel::testing {

// Loading BPF programs needs root here (no unprivileged BPF).
#define NETACCEL_SKIP_WITHOUT_BPF_PRIVILEGES()                             \
  do {                                                                     \
    if (geteuid() != 0) GTEST_SKIP() << "loading BPF programs needs root"; \
  } while (0)

// A hung test is killed by SIGALRM instead of stalling the suite.
class BpfTest : public ::testing::Test {
 protected:
  static constexpr unsigned kTimeoutSeconds = 30;
  void SetUp() override { alarm(kTimeoutSeconds); }
  void TearDown() override { alarm(0); }
};

template <typename Counters>
Counters per_cpu_sum(int map_fd, const void* key) {
  constexpr std::size_t kFields = sizeof(Counters) / sizeof(__u64);
  std::vector<__u64> values(kFields * static_cast<std::size_t>(libbpf_num_possible_cpus()));
  Counters sum{};
  if (bpf_map_lookup_elem(map_fd, key, values.data()) != 0) return sum;
  __u64 total[kFields] = {};
  for (std::size_t i = 0; i < values.size(); ++i) total[i % kFields] += values[i];
  std::memcpy(&sum, total, sizeof sum);
  return sum;
}

}  // namespace netaccel::testing

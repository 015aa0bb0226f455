#include "doctor.h"

#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <linux/if_xdp.h>
#include <linux/magic.h>
#include <linux/membarrier.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "monitor_client.h"
#include "netaccel/bpf_loader.h"
#include "netaccel/protocol.h"
#include "netaccel/shm.h"

namespace netaccel::cli {
namespace {

#ifndef BPF_FS_MAGIC
#define BPF_FS_MAGIC 0xcafe4a11
#endif

struct Finding {
  bool ok;
  std::string what;  // what was checked, or what to fix
};

bool is_mounted_as(const char* path, long magic) {
  struct statfs status {};
  return statfs(path, &status) == 0 && status.f_type == magic;
}

// A program of two instructions (r0 = verdict; exit) of `type`: whether the
// kernel lets us load programs of that type at all.
bool can_load_program(bpf_prog_type type, int verdict) {
  const bpf_insn program[] = {
      {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, verdict},
      {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
  };
  const UniqueFd loaded(bpf_prog_load(type, "netaccel_probe", "GPL", program, 2, nullptr));
  return static_cast<bool>(loaded);
}

bool can_create_map(bpf_map_type type, unsigned key_bytes, unsigned value_bytes) {
  const UniqueFd map(bpf_map_create(type, "netaccel_probe", key_bytes, value_bytes, 1, nullptr));
  return static_cast<bool>(map);
}

long read_number(const char* path) {
  std::ifstream file(path);
  long value = -1;
  file >> value;
  return file ? value : -1;
}

std::vector<Finding> examine(const std::string& socket_path) {
  std::vector<Finding> findings;
  const auto check = [&](bool ok, const std::string& good, const std::string& fix) {
    findings.push_back({ok, ok ? good : fix});
  };
  const bool root = geteuid() == 0;
  check(root, "running as root",
        "not root: attach, stats, stack and these checks of BPF need CAP_SYS_ADMIN and "
        "CAP_NET_ADMIN (run netaccel doctor as root)");
  check(is_mounted_as(bpf::kBpfFsRoot, BPF_FS_MAGIC),
        std::string("BPF filesystem mounted at ") + bpf::kBpfFsRoot,
        std::string("no BPF filesystem at ") + bpf::kBpfFsRoot +
            ": mount -t bpf bpf /sys/fs/bpf (attach pins its programs and maps there)");
  check(access("/sys/kernel/btf/vmlinux", R_OK) == 0, "kernel BTF at /sys/kernel/btf/vmlinux",
        "no kernel BTF (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF");
  if (root) {
    check(can_load_program(BPF_PROG_TYPE_XDP, 2 /* XDP_PASS */), "XDP programs load",
          "the kernel refuses XDP programs: CONFIG_BPF_SYSCALL and CONFIG_XDP_SOCKETS are needed");
    check(can_load_program(BPF_PROG_TYPE_SOCK_OPS, 1) &&
              can_load_program(BPF_PROG_TYPE_SK_MSG, 1 /* SK_PASS */) &&
              can_create_map(BPF_MAP_TYPE_SOCKHASH, 4, 4),
          "sock_ops, sk_msg and sockhash (tier 1)",
          "no sock_ops/sk_msg/sockhash: tier 1 needs CONFIG_BPF_STREAM_PARSER and cgroup BPF");
    const UniqueFd xsk(socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0));
    check(static_cast<bool>(xsk), "AF_XDP sockets (tier 2)",
          "no AF_XDP sockets (" + std::string(std::strerror(errno)) +
              "): the user-space stack needs CONFIG_XDP_SOCKETS");
  }
  check(is_mounted_as("/sys/fs/cgroup", CGROUP2_SUPER_MAGIC) ||
            is_mounted_as("/sys/fs/cgroup/unified", CGROUP2_SUPER_MAGIC),
        "cgroup v2 mounted", "no cgroup v2 hierarchy: sock_ops attaches at its root");
  const long hugepages = read_number("/proc/sys/vm/nr_hugepages");
  check(hugepages > 0, "huge pages reserved: " + std::to_string(hugepages),
        "no huge pages reserved (/proc/sys/vm/nr_hugepages is " + std::to_string(hugepages) +
            "): netaccel stack --io dpdk runs without them, slower; "
            "echo 256 > /proc/sys/vm/nr_hugepages");
  const long membarrier = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  check(membarrier >= 0 && (membarrier & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0,
        "membarrier (private expedited)",
        "no membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): a kernel older than 4.14");
  const StatusRequest request{kStatusMagic, kProtocolVersion};
  const MonitorAnswer answer = ask_monitor(socket_path, &request, sizeof request);
  check(answer.text.has_value(), "the monitor answers at " + socket_path,
        answer.error +
            ": start it with netaccel daemon (tier 0 needs it; without it programs "
            "under netaccel run use the kernel)");
  return findings;
}

}  // namespace

int run_doctor(const std::string& socket_path) {
  bool healthy = true;
  for (const Finding& finding : examine(socket_path)) {
    std::printf("%s %s\n", finding.ok ? "ok  " : "FIX ", finding.what.c_str());
    healthy &= finding.ok;
  }
  return healthy ? 0 : 1;
}

}  // namespace netaccel::cli

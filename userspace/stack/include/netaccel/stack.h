// `netaccel stack CONTAINER...`: the user-space TCP/IP stack of one or more
// attached containers (one worker polls for all of them), in the foreground
// until SIGINT or SIGTERM.
#pragma once

#include <string>
#include <vector>

namespace netaccel::stack {

struct StackOptions {
  std::vector<std::string> containers;  // as `netaccel attach` takes them, or their names
  std::string io = "af_xdp";            // or "dpdk"
  unsigned workers = 1;
  std::string interface;    // default: each container's first
  bool force_copy = false;  // AF_XDP copy mode even where zero-copy exists
  int worker_cpu = -1;      // the CPU the worker runs on; -1: wherever the scheduler puts it
};

// Returns the process's exit status; failures print one line to stderr and
// leave nothing behind (no steering entry, socket or pin).
int run_stack(const StackOptions& options);

// Where the running stack of `container_name` publishes its counters (JSON,
// rewritten every 100 ms), for `netaccel stats`.
std::string stack_counters_path(const std::string& container_name);

}  // namespace netaccel::stack

// `netaccel attach|detach CONTAINER`, `netaccel stats` and the attached
// containers in `netaccel status`.
#include "attach.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <thread>

#include "monitor_client.h"
#include "netaccel/bpf_loader.h"
#include "netaccel/protocol.h"
#include "netaccel/stack.h"
#include "prometheus.h"

namespace netaccel::cli {
namespace {

using bpf::AttachedContainer;
using bpf::BpfError;
using bpf::ContainerStats;
using bpf::PinnedObject;
using bpf::XdpChainEntry;
using bpf::XdpInterface;

std::string json_string(const std::string& text) {
  std::string quoted = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      quoted += '\\';
      quoted += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      quoted += escaped;
    } else {
      quoted += c;
    }
  }
  return quoted + "\"";
}

std::string pins_json(const std::vector<PinnedObject>& pins) {
  std::string json = "[";
  for (const PinnedObject& pin : pins) {
    if (json.size() > 1) json += ",";
    json += "{\"pin\":" + json_string(pin.pin) + ",\"kind\":" + json_string(pin.kind) +
            ",\"id\":" + std::to_string(pin.id) + ",\"detail\":" + json_string(pin.detail) + "}";
  }
  return json + "]";
}

std::vector<std::string> interfaces_of(const netaccel_container_record& record) {
  std::vector<std::string> names;
  for (__u32 i = 0; i < record.interface_count && i < NETACCEL_MAX_INTERFACES; ++i) {
    names.emplace_back(record.ifname[i]);
  }
  return names;
}

std::vector<std::string> addresses_of(const netaccel_container_record& record) {
  std::vector<std::string> addresses;
  for (__u32 i = 0; i < record.address_count && i < NETACCEL_MAX_ADDRESSES; ++i) {
    addresses.push_back(bpf::address_to_string(record.addresses[i]));
  }
  return addresses;
}

std::string strings_json(const std::vector<std::string>& strings) {
  std::string json = "[";
  for (const std::string& text : strings) json += (json.size() > 1 ? "," : "") + json_string(text);
  return json + "]";
}

const char* xdp_mode(const netaccel_container_record& record) {
  return record.xdp_generic != 0 ? "generic" : "native";
}

std::vector<std::string> chain_actions_of(const XdpChainEntry& entry) {
  static constexpr const char* kVerdicts[] = {"XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX",
                                              "XDP_REDIRECT"};
  std::vector<std::string> actions;
  for (std::size_t verdict = 0; verdict < std::size(kVerdicts); ++verdict) {
    if ((entry.chain_actions >> verdict & 1) != 0) actions.emplace_back(kVerdicts[verdict]);
  }
  return actions;
}

// How the classifier sits on an interface: in libxdp's dispatcher (with the
// programs it runs, in order), alone, or not at all.
std::string xdp_attachment(const XdpInterface& interface) {
  if (interface.chain.empty()) {
    return interface.reachable ? "classifier not attached" : "network namespace gone";
  }
  if (interface.dispatcher_id == 0) return "classifier attached alone (no libxdp dispatcher)";
  return "libxdp dispatcher id " + std::to_string(interface.dispatcher_id) +
         (interface.frags ? " (frags)" : " (no frags)") + ", pins " + interface.dispatcher_pins;
}

std::string xdp_json(const std::vector<XdpInterface>& interfaces) {
  std::string json = "[";
  for (const XdpInterface& interface : interfaces) {
    if (json.size() > 1) json += ",";
    json += "{\"interface\":" + json_string(interface.name) +
            ",\"ifindex\":" + std::to_string(interface.ifindex) +
            ",\"attached_program\":" + std::to_string(interface.attached_program) +
            ",\"mode\":" + json_string(interface.mode) +
            ",\"dispatcher_id\":" + std::to_string(interface.dispatcher_id) +
            ",\"dispatcher_pins\":" + json_string(interface.dispatcher_pins) +
            ",\"frags\":" + (interface.frags ? "true" : "false") + ",\"chain\":[";
    bool first = true;
    for (const XdpChainEntry& entry : interface.chain) {
      json += first ? "" : ",";
      first = false;
      json += "{\"program\":" + json_string(entry.program) + ",\"id\":" + std::to_string(entry.id) +
              ",\"priority\":" + std::to_string(entry.priority) +
              ",\"chain_actions\":" + strings_json(chain_actions_of(entry)) +
              ",\"netaccel\":" + (entry.netaccel ? "true" : "false") + "}";
    }
    json += "]}";
  }
  return json + "]";
}

// The "bpf" member of `netaccel status --json`.
std::string attached_containers_json() {
  std::string json = "{\"containers\":[";
  bool first = true;
  for (const AttachedContainer& container : bpf::list_attached()) {
    const netaccel_container_record& record = container.record;
    json += first ? "" : ",";
    first = false;
    json += "{\"name\":" + json_string(record.name) +
            ",\"container_id\":" + std::to_string(record.container_id) +
            ",\"netns_inode\":" + std::to_string(record.netns_inode) +
            ",\"netns_cookie\":" + std::to_string(record.netns_cookie) +
            ",\"netns_path\":" + json_string(record.netns_path) +
            ",\"cni_container_id\":" + json_string(record.cni_container_id) +
            ",\"cni_network\":" + json_string(record.cni_network) +
            ",\"cgroup\":" + json_string(record.cgroup_path) +
            ",\"cgroup_id\":" + std::to_string(record.cgroup_id) +
            ",\"interfaces\":" + strings_json(interfaces_of(record)) +
            ",\"addresses\":" + strings_json(addresses_of(record)) +
            ",\"xdp_mode\":" + json_string(xdp_mode(record)) +
            ",\"xdp\":" + xdp_json(container.xdp) + ",\"pins\":" + pins_json(container.pins) + "}";
  }
  return json + "],\"shared_pins\":" + pins_json(bpf::list_shared_pins()) + "}";
}

std::string join(const std::vector<std::string>& parts) {
  std::string text;
  for (const std::string& part : parts) text += (text.empty() ? "" : " ") + part;
  return text.empty() ? "-" : text;
}

// ---------------------------------------------------------------------------
// netaccel stats

// The counters the user-space stack of `container` publishes (stack.h),
// while that stack runs; empty otherwise.
std::string running_stack_counters(const std::string& container) {
  std::ifstream file(stack::stack_counters_path(container));
  std::string json((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  while (!json.empty() && (json.back() == '\n' || json.back() == ' ')) json.pop_back();
  const std::size_t pid_at = json.find("\"pid\":");
  if (json.empty() || json.front() != '{' || pid_at == std::string::npos) return {};
  const long pid = std::strtol(json.c_str() + pid_at + 6, nullptr, 10);
  // A stack killed with SIGKILL leaves its last counters behind.
  if (pid <= 0 || (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)) return {};
  return json;
}

// A number from the stack's flat counters, 0 when absent.
unsigned long long stack_counter(const std::string& json, const std::string& name) {
  const std::size_t at = json.find("\"" + name + "\":");
  return at == std::string::npos ? 0
                                 : std::strtoull(json.c_str() + at + name.size() + 3, nullptr, 10);
}

std::string stats_json(const std::vector<ContainerStats>& all) {
  std::ostringstream json;
  json << "{\"containers\":[";
  bool first = true;
  for (const ContainerStats& stats : all) {
    const auto& x = stats.xdp;
    const auto& s = stats.sockmap;
    json << (first ? "" : ",") << "{\"name\":" << json_string(stats.name)
         << ",\"xdp\":{\"packets\":" << x.packets << ",\"bytes\":" << x.bytes
         << ",\"passed\":" << x.passed << ",\"to_xsk\":" << x.to_xsk
         << ",\"xsk_missing\":" << x.xsk_missing << ",\"dropped\":" << x.dropped
         << ",\"malformed\":" << x.malformed << ",\"not_ip\":" << x.not_ip
         << ",\"rejected\":" << x.rejected << ",\"flows\":" << stats.flows
         << "},\"sockmap\":{\"sockets\":" << stats.sockets
         << ",\"sockets_added\":" << s.sockets_added << ",\"redirected_msgs\":" << s.redirected_msgs
         << ",\"redirected_bytes\":" << s.redirected_bytes << ",\"passed_msgs\":" << s.passed_msgs
         << ",\"passed_bytes\":" << s.passed_bytes << "}";
    const std::string stack_counters = running_stack_counters(stats.name);
    json << ",\"stack\":" << (stack_counters.empty() ? "null" : stack_counters) << "}";
    first = false;
  }
  json << "]}";
  return json.str();
}

void print_stats_table(const std::vector<ContainerStats>& all) {
  if (all.empty()) {
    std::cout << "no container attached\n";
    return;
  }
  std::printf("%-20s %12s %14s %8s %8s %8s %8s %6s | %8s %10s %14s %10s\n", "container",
              "xdp packets", "xdp bytes", "passed", "to xsk", "dropped", "malformd", "flows",
              "sockets", "redir msgs", "redir bytes", "pass msgs");
  for (const ContainerStats& stats : all) {
    const auto& x = stats.xdp;
    const auto& s = stats.sockmap;
    std::printf("%-20s %12llu %14llu %8llu %8llu %8llu %8llu %6zu | %8zu %10llu %14llu %10llu\n",
                stats.name.c_str(), x.packets, x.bytes, x.passed, x.to_xsk, x.dropped, x.malformed,
                stats.flows, stats.sockets, s.redirected_msgs, s.redirected_bytes, s.passed_msgs);
  }
  bool header = false;
  for (const ContainerStats& stats : all) {
    const std::string counters = running_stack_counters(stats.name);
    if (counters.empty()) continue;
    if (!header) {
      std::printf("\nuser-space stack (netaccel stack; `--json` has every counter)\n");
      std::printf("%-20s %12s %12s %10s %8s %10s %10s %10s\n", "container", "frames in",
                  "frames out", "conns", "active", "retransmit", "checksum", "lwip nomem");
      header = true;
    }
    std::printf("%-20s %12llu %12llu %10llu %8llu %10llu %10llu %10llu\n", stats.name.c_str(),
                stack_counter(counters, "rx_packets"), stack_counter(counters, "tx_packets"),
                stack_counter(counters, "connections_opened"),
                stack_counter(counters, "connections_active"),
                stack_counter(counters, "tcp_retransmissions"), stack_counter(counters, "checksum"),
                stack_counter(counters, "lwip_memory_errors"));
  }
}

std::atomic<bool> g_stop_watching{false};
extern "C" void stop_watching(int) {
  g_stop_watching.store(true);
}

int show_stats(const BpfCommands& commands) {
  bpf::require_privileges();
  if (commands.watch) {
    struct sigaction action {};
    action.sa_handler = stop_watching;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
  }
  const auto interval = std::chrono::duration<double>(commands.interval_seconds);
  do {
    const std::vector<ContainerStats> all = bpf::read_stats();
    if (commands.prometheus) {
      std::vector<std::string> stacks;
      for (const ContainerStats& stats : all) stacks.push_back(running_stack_counters(stats.name));
      const StatusRequest request{kStatusMagic, kProtocolVersion};
      const MonitorAnswer monitor = ask_monitor(commands.monitor_socket, &request, sizeof request);
      std::cout << prometheus_text(all, stacks, monitor.text) << std::flush;
    } else if (commands.json) {
      std::cout << stats_json(all) << std::endl;
    } else {
      if (commands.watch) std::cout << "\n";
      print_stats_table(all);
      std::cout.flush();
    }
    if (!commands.watch) break;
    std::this_thread::sleep_for(interval);
  } while (!g_stop_watching.load());
  return 0;
}

int run_guarded(const char* command, auto&& body) {
  try {
    return body();
  } catch (const std::exception& error) {  // BpfError, and whatever the library throws
    std::cerr << "netaccel " << command << ": " << error.what() << "\n";
    return 1;
  }
}

}  // namespace

void add_bpf_commands(CLI::App& app, BpfCommands& commands) {
  const std::string container_help =
      "a network namespace name (/run/netns/NAME) or path, a PID, or a cgroup v2 directory";
  commands.attach = app.add_subcommand(
      "attach",
      "put a container's network namespace on the eBPF paths (XDP classifier, sockmap); it "
      "may hold no process yet");
  commands.attach->add_option("CONTAINER", commands.container, container_help)->required();
  commands.detach =
      app.add_subcommand("detach", "take a container off the eBPF paths, leaving nothing pinned");
  commands.detach
      ->add_option("CONTAINER", commands.container,
                   container_help + ", or its name in `netaccel status`")
      ->required();
  commands.stats = app.add_subcommand("stats", "per-container counters of the eBPF programs");
  commands.stats->add_flag("--watch", commands.watch, "print again every interval until stopped");
  commands.stats->add_flag("--json", commands.json, "one JSON object per report");
  commands.stats->add_flag("--prometheus", commands.prometheus,
                           "Prometheus text format, the monitor's (tier 0) counters included");
  commands.stats->add_option("--socket", commands.monitor_socket,
                             "the monitor's unix socket, for --prometheus");
  commands.stats
      ->add_option("--interval", commands.interval_seconds, "seconds between reports with --watch")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
}

std::optional<int> run_bpf_command(const BpfCommands& commands) {
  if (*commands.attach) {
    return run_guarded("attach", [&] {
      const bpf::Container container = bpf::attach_container(commands.container);
      std::vector<std::string> interfaces;
      for (const auto& interface : container.interfaces) interfaces.push_back(interface.name);
      std::cout << "attached " << container.name << " (network namespace cookie "
                << container.netns_cookie << ", interfaces " << join(interfaces)
                << "), pinned under " << bpf::kPinRoot << "/" << container.name << "\n";
      return 0;
    });
  }
  if (*commands.detach) {
    return run_guarded("detach", [&] {
      const std::string name = bpf::detach_container(commands.container);
      std::cout << "detached " << name << "\n";
      return 0;
    });
  }
  if (*commands.stats) return run_guarded("stats", [&] { return show_stats(commands); });
  return std::nullopt;
}

std::string add_attached_containers(const std::string& monitor_json) {
  const std::size_t closing = monitor_json.rfind('}');
  if (geteuid() != 0 || closing == std::string::npos) return monitor_json;
  std::string bpf;
  try {
    bpf = attached_containers_json();
  } catch (const BpfError& error) {
    bpf = "{\"error\":" + json_string(error.what()) + "}";
  }
  const bool empty_object =
      monitor_json.find_first_not_of(" \t\n{", monitor_json.find('{')) == closing;
  return monitor_json.substr(0, closing) + (empty_object ? "" : ",") + "\"bpf\":" + bpf +
         monitor_json.substr(closing);
}

void print_attached_containers() {
  if (geteuid() != 0) {
    std::cout << "attached containers: only root can read the BPF pins\n";
    return;
  }
  try {
    const std::vector<AttachedContainer> containers = bpf::list_attached();
    std::cout << "attached containers (eBPF, pinned under " << bpf::kPinRoot
              << "): " << containers.size() << "\n";
    for (const AttachedContainer& container : containers) {
      const netaccel_container_record& record = container.record;
      std::cout << "  " << record.name << "  netns " << record.netns_inode << " (cookie "
                << record.netns_cookie << ")"
                << (record.cni_container_id[0] != '\0'
                        ? std::string(", CNI container ") + record.cni_container_id + " on " +
                              record.cni_network
                        : std::string())
                << ", interfaces " << join(interfaces_of(record)) << " (XDP " << xdp_mode(record)
                << "), addresses " << join(addresses_of(record)) << "\n";
      for (const PinnedObject& pin : container.pins) {
        std::printf("    %-22s %-7s id %-6u %s\n", pin.pin.c_str(), pin.kind.c_str(), pin.id,
                    pin.detail.c_str());
      }
      for (const XdpInterface& interface : container.xdp) {
        std::cout << "    XDP on " << interface.name << ": " << xdp_attachment(interface) << "\n";
        for (std::size_t i = 0; i < interface.chain.size() && interface.dispatcher_id != 0; ++i) {
          const XdpChainEntry& entry = interface.chain[i];
          std::printf("      %zu. %-16s id %-6u priority %-3u chain on %s%s\n", i + 1,
                      entry.program.c_str(), entry.id, entry.priority,
                      join(chain_actions_of(entry)).c_str(), entry.netaccel ? "  (netaccel)" : "");
        }
      }
    }
    if (!containers.empty()) {
      std::cout << "  shared by all containers:\n";
      for (const PinnedObject& pin : bpf::list_shared_pins()) {
        std::printf("    %-22s %-7s id %-6u %s\n", pin.pin.c_str(), pin.kind.c_str(), pin.id,
                    pin.detail.c_str());
      }
    }
  } catch (const BpfError& error) {
    std::cout << "attached containers: " << error.what() << "\n";
  }
}

}  // namespace netaccel::cli

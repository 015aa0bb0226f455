// The `netaccel` command: the monitor daemon, programs run under the preload
// library, the monitor's status and the side-by-side benchmark.
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attach.h"
#include "bench.h"
#include "doctor.h"
#include "monitor_client.h"
#include "netaccel/log.h"
#include "netaccel/monitor.h"
#include "netaccel/protocol.h"
#include "netaccel/shm.h"
#include "netaccel/stack.h"
#include "policy.h"

// Where the installed preload library sits relative to the installed binary
// (CMake passes the real one when the libdir is not "lib").
#ifndef NETACCEL_PRELOAD_RELATIVE_PATH
#define NETACCEL_PRELOAD_RELATIVE_PATH "../lib/netaccel/libnetaccel_preload.so"
#endif

namespace netaccel::cli {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPreloadEnv = "NETACCEL_PRELOAD";
// The build tree's layout, tried when the install layout differs.
constexpr const char* kBuildTreePreloadPath = "../lib/netaccel/libnetaccel_preload.so";
constexpr int kCommandNotFound = 127;  // what a shell returns
constexpr int kCommandNotExecutable = 126;

std::string default_socket_path() {
  const char* from_environment = std::getenv(kMonitorSocketEnv);
  return from_environment != nullptr && *from_environment != '\0' ? from_environment
                                                                  : kDefaultMonitorSocket;
}

// ---------------------------------------------------------------------------
// netaccel daemon

std::atomic<Monitor*> g_running_monitor{nullptr};

extern "C" void stop_running_monitor(int) {
  if (Monitor* monitor = g_running_monitor.load()) monitor->request_stop();
}

// The monitor holds a memfd and two eventfds per connection.
void raise_open_file_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

int run_daemon(const MonitorOptions& options) {
  try {
    raise_open_file_limit();
    Monitor monitor(options);
    struct sigaction action {};
    action.sa_handler = stop_running_monitor;
    sigemptyset(&action.sa_mask);
    g_running_monitor.store(&monitor);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
    signal(SIGPIPE, SIG_IGN);  // a process dying mid-message must not take us along
    monitor.run();
    g_running_monitor.store(nullptr);
    return 0;
  } catch (const std::exception& error) {
    g_running_monitor.store(nullptr);
    std::cerr << "netaccel daemon: " << error.what() << "\n";
    return 1;
  }
}

// ---------------------------------------------------------------------------
// netaccel run

// NETACCEL_PRELOAD, else next to this executable: the install layout, then
// the build tree's. Empty when there is none.
std::string find_preload_library(std::string& looked_at) {
  if (const char* explicit_path = std::getenv(kPreloadEnv);
      explicit_path != nullptr && *explicit_path != '\0') {
    looked_at = explicit_path;
    return access(explicit_path, R_OK) == 0 ? explicit_path : "";
  }
  std::error_code error;
  const fs::path directory = fs::canonical("/proc/self/exe", error).parent_path();
  if (error) return {};
  for (const char* relative : {NETACCEL_PRELOAD_RELATIVE_PATH, kBuildTreePreloadPath}) {
    const fs::path candidate = (directory / relative).lexically_normal();
    if (looked_at.empty()) looked_at = candidate.string();
    if (access(candidate.c_str(), R_OK) == 0) return candidate.string();
  }
  return {};
}

int run_under_preload(const std::optional<std::string>& socket_path,
                      std::vector<std::string> command) {
  if (!command.empty() && command.front() == "--") command.erase(command.begin());
  if (command.empty()) {
    std::cerr << "netaccel run: no command given (netaccel run [--socket PATH] -- CMD ARGS...)\n";
    return 2;
  }
  std::string looked_at;
  const std::string library = find_preload_library(looked_at);
  if (library.empty()) {
    std::cerr << "netaccel run: preload library not found at '" << looked_at << "' (set "
              << kPreloadEnv << " to its path)\n";
    return kCommandNotFound;
  }
  // Ours first, so that our socket calls are the ones the program sees.
  std::string preload = library;
  if (const char* existing = std::getenv("LD_PRELOAD"); existing != nullptr && *existing != '\0') {
    preload = preload + ":" + existing;
  }
  setenv("LD_PRELOAD", preload.c_str(), 1);
  if (socket_path) setenv(kMonitorSocketEnv, socket_path->c_str(), 1);

  std::vector<char*> arguments;
  for (std::string& argument : command) arguments.push_back(argument.data());
  arguments.push_back(nullptr);
  execvp(arguments[0], arguments.data());
  const int error = errno;
  std::cerr << "netaccel run: " << command.front() << ": " << std::strerror(error) << "\n";
  return error == ENOENT ? kCommandNotFound : kCommandNotExecutable;
}

// ---------------------------------------------------------------------------
// netaccel status

// The monitor's status is one flat JSON object of strings and numbers.
std::vector<std::pair<std::string, std::string>> parse_flat_json(const std::string& json) {
  std::vector<std::pair<std::string, std::string>> fields;
  std::size_t position = json.find('{');
  if (position == std::string::npos) return fields;
  auto quoted = [&](std::size_t& at) {
    const std::size_t end = json.find('"', at + 1);
    if (end == std::string::npos) return std::string();
    std::string text = json.substr(at + 1, end - at - 1);
    at = end + 1;
    return text;
  };
  while ((position = json.find('"', position)) != std::string::npos) {
    std::string key = quoted(position);
    position = json.find(':', position);
    if (position == std::string::npos) break;
    position = json.find_first_not_of(" \t\n", position + 1);
    if (position == std::string::npos) break;
    std::string value;
    if (json[position] == '"') {
      value = quoted(position);
    } else {
      const std::size_t end = json.find_first_of(",}", position);
      value = json.substr(position, end - position);
      position = end;
    }
    fields.emplace_back(std::move(key), std::move(value));
  }
  return fields;
}

int show_status(const std::string& socket_path, bool as_json) {
  const StatusRequest request{kStatusMagic, kProtocolVersion};
  const MonitorAnswer reply = ask_monitor(socket_path, &request, sizeof request);
  if (!reply.text) {
    std::cerr << "netaccel status: " << reply.error << "\n";
    if (!as_json) print_attached_containers();
    return 1;
  }
  if (as_json) {
    std::cout << add_attached_containers(*reply.text) << "\n";
    return 0;
  }
  std::cout << "netaccel monitor at " << socket_path << "\n";
  for (auto [key, value] : parse_flat_json(*reply.text)) {
    std::replace(key.begin(), key.end(), '_', ' ');
    std::printf("  %-20s %s\n", key.c_str(), value.c_str());
  }
  print_attached_containers();
  return 0;
}

}  // namespace
}  // namespace netaccel::cli

int main(int argc, char** argv) {
  using namespace netaccel;
  CLI::App app{"netaccel: container networking at memory speed, applications unchanged"};
  app.require_subcommand(1);

  std::string socket_path = cli::default_socket_path();
  const std::string socket_help = "the monitor's unix socket (default: $" +
                                  std::string(kMonitorSocketEnv) + " or " + kDefaultMonitorSocket +
                                  ")";

  MonitorOptions monitor_options;
  auto* daemon = app.add_subcommand("daemon", "run the monitor (one per host)");
  daemon->add_option("--socket", socket_path, socket_help);
  daemon
      ->add_option("--engine", monitor_options.engine,
                   "control-plane engine (fpga-sim: the FPGA engine's RTL under Verilator)")
      ->check(CLI::IsMember({"software", "fpga-sim"}))
      ->capture_default_str();
  uint32_t doorbell_latency_ns =
      static_cast<uint32_t>(monitor_options.fpga_sim.doorbell_latency.count());
  daemon
      ->add_option("--doorbell-latency-ns", doorbell_latency_ns,
                   "fpga-sim: time one doorbell costs (PCIe write, descriptor fetch, events back)")
      ->check(CLI::Range(0u, 1000000u))
      ->capture_default_str();
  daemon
      ->add_option("--doorbell-batch", monitor_options.fpga_sim.doorbell_batch,
                   "fpga-sim: requests per doorbell (a polling round's end rings it sooner)")
      ->check(CLI::Range(1u, kFpgaRequestSlots))
      ->capture_default_str();
  daemon
      ->add_option("--ring-bytes", monitor_options.ring_bytes,
                   "bytes per direction of a connection (a power of two)")
      ->check(CLI::Range(4096u, 1u << 30))
      ->capture_default_str();
  unsigned idle_spin_us = static_cast<unsigned>(monitor_options.idle_spin.count());
  daemon
      ->add_option("--idle-spin-us", idle_spin_us,
                   "keep polling the queues this long after the last request before sleeping")
      ->check(CLI::Range(0u, 1000000u))
      ->capture_default_str();

  std::string run_socket_path;
  auto* run = app.add_subcommand(
      "run", "run a program with its sockets on netaccel: run [--socket PATH] -- CMD [ARGS...]");
  run->add_option("--socket", run_socket_path, socket_help);
  run->prefix_command();  // the command and its arguments are not ours to parse

  bool status_json = false;
  auto* status = app.add_subcommand("status", "show the monitor's state");
  status->add_option("--socket", socket_path, socket_help);
  status->add_flag("--json", status_json, "print the monitor's raw JSON");

  cli::BenchOptions bench_options;
  auto* bench = app.add_subcommand("bench", "kernel TCP and netaccel, side by side");
  bench
      ->add_option("--output", bench_options.output_markdown,
                   "markdown report to write (empty: none)")
      ->capture_default_str();
  bench->add_option("--seconds", bench_options.seconds_per_test, "seconds per measurement")
      ->check(CLI::Range(0.01, 3600.0))
      ->capture_default_str();
  bench->add_flag("--quick", bench_options.quick, "short runs, for a smoke test");
  bench->add_option("--plot", bench_options.plot_svg,
                    "also draw the ratios as an SVG chart (linked from the markdown)");

  std::string log_format = "text";
  daemon->add_option("--log-format", log_format, "text, or json: one JSON object per log line")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  std::string state_directory = monitor_options.state_directory;
  daemon
      ->add_option("--state-dir", state_directory,
                   "where the isolation policy persists (empty: in memory only)")
      ->capture_default_str();

  auto* doctor =
      app.add_subcommand("doctor", "check what this host offers netaccel, and what to fix");
  doctor->add_option("--socket", socket_path, socket_help);

  cli::PolicyCommands policy_commands;
  cli::add_policy_commands(app, policy_commands, socket_path, socket_help);

  cli::BpfCommands bpf_commands;
  bpf_commands.monitor_socket = socket_path;
  cli::add_bpf_commands(app, bpf_commands);

  stack::StackOptions stack_options;
  auto* stack_command = app.add_subcommand(
      "stack", "run the user-space TCP/IP stack (lwIP) of attached containers (root)");
  stack_command
      ->add_option("CONTAINER", stack_options.containers,
                   "one or more, as for attach: netns name or path, PID, cgroup, or attached name")
      ->required();
  stack_command->add_option("--io", stack_options.io, "packet I/O: af_xdp (libxdp) or dpdk")
      ->check(CLI::IsMember({"af_xdp", "dpdk"}))
      ->capture_default_str();
  stack_command->add_option("--workers", stack_options.workers, "worker threads")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  stack_command->add_option("--interface", stack_options.interface,
                            "the container's interface to carry (default: its first)");
  stack_command->add_option("--cpu", stack_options.worker_cpu, "pin the worker thread to this CPU")
      ->check(CLI::Range(0, 4095));
  stack_command->add_flag("--force-copy", stack_options.force_copy,
                          "AF_XDP copy mode even where the driver has zero-copy");

  // `run [--socket PATH] -- CMD ARGS`: what follows "--" is the command's,
  // untouched (CLI11 would take it as extra arguments of ours).
  int our_argc = argc;
  std::vector<std::string> command_after_separator;
  if (argc > 1 && std::strcmp(argv[1], "run") == 0) {
    for (int i = 2; i < argc; ++i) {
      if (std::strcmp(argv[i], "--") != 0) continue;
      command_after_separator.assign(argv + i + 1, argv + argc);
      our_argc = i;
      break;
    }
  }
  try {
    app.parse(our_argc, argv);
  } catch (const CLI::RequiredError& error) {
    // A mistyped subcommand lands here as "a subcommand is required".
    if (argc > 1 && argv[1][0] != '-') {
      std::cerr << "netaccel: unknown command '" << argv[1]
                << "' (commands: daemon, run, status, bench, attach, detach, stats, stack, policy, "
                   "doctor; "
                   "see --help)\n";
      return 2;
    }
    return app.exit(error);
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  }

  if (*daemon) {
    monitor_options.socket_path = socket_path;
    monitor_options.state_directory = state_directory;
    set_log_format(log_format == "json" ? LogFormat::kJson : LogFormat::kText);
    monitor_options.idle_spin = std::chrono::microseconds(idle_spin_us);
    monitor_options.fpga_sim.doorbell_latency = std::chrono::nanoseconds(doorbell_latency_ns);
    return cli::run_daemon(monitor_options);
  }
  if (*run) {
    std::optional<std::string> explicit_socket;
    if (run->count("--socket") != 0) explicit_socket = run_socket_path;
    std::vector<std::string> command = run->remaining();
    command.insert(command.end(), command_after_separator.begin(), command_after_separator.end());
    return cli::run_under_preload(explicit_socket, std::move(command));
  }
  if (*status) return cli::show_status(socket_path, status_json);
  if (*doctor) return cli::run_doctor(socket_path);
  if (*bench) return cli::run_bench(bench_options);
  if (*stack_command) return stack::run_stack(stack_options);
  if (const auto exit_code = cli::run_policy_command(policy_commands, socket_path)) {
    return *exit_code;
  }
  if (const auto exit_code = cli::run_bpf_command(bpf_commands)) return *exit_code;
  return 0;
}

// `netaccel attach`, `detach` and `stats`, and the attached containers that
// `netaccel status` adds to the monitor's state.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

namespace netaccel::cli {

struct BpfCommands {
  CLI::App* attach = nullptr;
  CLI::App* detach = nullptr;
  CLI::App* stats = nullptr;
  std::string container;
  bool watch = false;
  bool json = false;
  bool prometheus = false;
  std::string monitor_socket;  // for stats --prometheus: the monitor's counters too
  double interval_seconds = 1.0;
};

// Registers the subcommands; `commands` must outlive the parse.
void add_bpf_commands(CLI::App& app, BpfCommands& commands);
// The exit code of the BPF subcommand that was parsed, if one was.
std::optional<int> run_bpf_command(const BpfCommands& commands);

// `netaccel status`: the monitor's JSON object with a "bpf" member added,
// and the same as text.
std::string add_attached_containers(const std::string& monitor_json);
void print_attached_containers();

}  // namespace netaccel::cli

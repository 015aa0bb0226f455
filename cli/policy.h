// `netaccel policy`: the isolation policy between attached containers, kept
// by the monitor (deny, allow, list).
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

namespace netaccel::cli {

struct PolicyCommands {
  CLI::App* deny = nullptr;
  CLI::App* allow = nullptr;
  CLI::App* list = nullptr;
  std::string client;
  std::string server;
  unsigned port = 0;
  bool json = false;
};

void add_policy_commands(CLI::App& app, PolicyCommands& commands, std::string& socket_path,
                         const std::string& socket_help);
// The exit code when a policy command was given.
std::optional<int> run_policy_command(const PolicyCommands& commands,
                                      const std::string& socket_path);

}  // namespace netaccel::cli

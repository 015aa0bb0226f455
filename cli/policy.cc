#include "policy.h"

#include <cstdio>
#include <cstring>
#include <iostream>

#include "monitor_client.h"
#include "netaccel/protocol.h"

namespace netaccel::cli {
namespace {

// The JSON the monitor sends is flat enough to print by scanning for keys.
std::string field(const std::string& object, const std::string& key) {
  const std::string quoted = "\"" + key + "\":";
  std::size_t at = object.find(quoted);
  if (at == std::string::npos) return "";
  at += quoted.size();
  if (object[at] == '"') {
    const std::size_t end = object.find('"', at + 1);
    return object.substr(at + 1, end - at - 1);
  }
  return object.substr(at, object.find_first_of(",}", at) - at);
}

void print_rules(const std::string& json) {
  const std::size_t rules = json.find("\"rules\":[");
  std::size_t at = rules == std::string::npos ? std::string::npos : json.find('{', rules);
  if (at == std::string::npos) {
    std::cout << "no rules: containers reach each other as the kernel's network lets them\n";
    return;
  }
  for (; at != std::string::npos; at = json.find('{', at + 1)) {
    const std::string rule = json.substr(at, json.find('}', at) - at + 1);
    const std::string port = field(rule, "port");
    std::cout << "deny " << field(rule, "from") << " -> " << field(rule, "to")
              << (port == "0" ? std::string(" (every port)") : " port " + port)
              << (field(rule, "enforced") == "true" ? "" : "  [not enforced: not both attached]")
              << "\n";
  }
}

}  // namespace

void add_policy_commands(CLI::App& app, PolicyCommands& commands, std::string& socket_path,
                         const std::string& socket_help) {
  auto* policy = app.add_subcommand(
      "policy", "isolation between attached containers, enforced by the monitor (root)");
  policy->require_subcommand(1);
  auto rule_command = [&](const char* name, const char* help) {
    CLI::App* command = policy->add_subcommand(name, help);
    command
        ->add_option("CLIENT", commands.client,
                     "the connecting container, as netaccel status names it")
        ->required();
    command->add_option("SERVER", commands.server, "the listening container")->required();
    command->add_option("--socket", socket_path, socket_help);
    command->add_option("--port", commands.port, "only this port of SERVER (default: every port)")
        ->check(CLI::Range(1u, 65535u));
    return command;
  };
  commands.deny = rule_command(
      "deny", "CLIENT's connects to SERVER are refused (ECONNREFUSED), as by a REJECT rule");
  commands.allow = rule_command("allow", "remove a deny rule");
  commands.list = policy->add_subcommand("list", "show the rules");
  commands.list->add_flag("--json", commands.json, "print the monitor's JSON");
  commands.list->add_option("--socket", socket_path, socket_help);
}

std::optional<int> run_policy_command(const PolicyCommands& commands,
                                      const std::string& socket_path) {
  const bool deny = commands.deny != nullptr && commands.deny->parsed();
  const bool allow = commands.allow != nullptr && commands.allow->parsed();
  const bool list = commands.list != nullptr && commands.list->parsed();
  if (!deny && !allow && !list) return std::nullopt;
  PolicyRequest request{};
  request.magic = kPolicyMagic;
  request.version = kProtocolVersion;
  request.op = deny ? PolicyOp::kDeny : allow ? PolicyOp::kAllow : PolicyOp::kList;
  request.port = commands.port;
  for (const auto& [name, field] :
       {std::pair{&commands.client, request.client}, std::pair{&commands.server, request.server}}) {
    if (name->size() >= kContainerNameBytes) {
      std::cerr << "netaccel policy: '" << *name << "' is longer than a container name can be\n";
      return 2;
    }
    std::memcpy(field, name->c_str(), name->size() + 1);
  }
  const MonitorAnswer answer = ask_monitor(socket_path, &request, sizeof request);
  if (!answer.text) {
    std::cerr << "netaccel policy: " << answer.error
              << " (the policy lives in the monitor: start it with netaccel daemon)\n";
    return 1;
  }
  const std::string& text = *answer.text;
  if (text.rfind("error: ", 0) == 0) {
    std::cerr << "netaccel policy: " << text.substr(7) << "\n";
    return 1;
  }
  if (list) {
    if (commands.json) {
      std::cout << text << "\n";
    } else {
      print_rules(text);
    }
  }
  return 0;
}

}  // namespace netaccel::cli

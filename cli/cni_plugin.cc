// netaccel-cni: a chained CNI plugin (CNI spec 1.0 and 1.1). Placed after
// an interface plugin (bridge, ptp, macvlan) in a conflist, it attaches the
// container's network namespace to netaccel's eBPF paths on ADD, exactly as
// `netaccel attach` does (the same loader), and passes the previous result
// on unchanged: it adds no interface and no address. DEL detaches, also
// when the namespace is already gone; CHECK reports what is missing; STATUS
// and GC are those of CNI 1.1.
//
// Protocol: the command and the container in CNI_* environment variables,
// the network configuration as JSON on stdin, the result (or an error
// object with the spec's code) as JSON on stdout, exit 0 on success.
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "netaccel/bpf_loader.h"

namespace {

using Json = nlohmann::ordered_json;  // keeps prevResult's member order

constexpr const char* kOurVersion = "1.1.0";
const std::vector<std::string> kSupportedVersions = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};

// The spec's error codes (CNI spec, "Error"); 100 and up are the plugin's.
enum ErrorCode : int {
  kIncompatibleVersion = 1,
  kInvalidEnvironment = 4,
  kIoFailure = 5,
  kDecodeFailure = 6,
  kInvalidConfig = 7,
  kPluginNotAvailable = 50,
  kAttachFailed = 100,      // the loader refused or failed (its message says why)
  kAttachmentBroken = 101,  // CHECK: the attachment is missing or incomplete
};

struct CniError {
  int code;
  std::string msg;
  std::string details;
};

std::optional<std::string> environment(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

std::string required_environment(const char* name) {
  if (auto value = environment(name)) return *value;
  throw CniError{kInvalidEnvironment, std::string(name) + " is not set", ""};
}

struct Request {
  std::string command;
  Json config;
  std::string version;  // the config's cniVersion
  std::string network;  // the config's name
};

Json parse_config(const std::string& text) {
  try {
    Json config = Json::parse(text);
    if (!config.is_object())
      throw CniError{kDecodeFailure, "the network configuration is not a JSON object", ""};
    return config;
  } catch (const Json::parse_error& error) {
    throw CniError{kDecodeFailure, "cannot decode the network configuration", error.what()};
  }
}

std::string string_member(const Json& config, const char* name) {
  const auto member = config.find(name);
  if (member == config.end()) {
    throw CniError{kInvalidConfig, std::string("the network configuration has no \"") + name + "\"",
                   ""};
  }
  if (!member->is_string()) {
    throw CniError{kInvalidConfig, std::string("\"") + name + "\" is not a string", ""};
  }
  return member->get<std::string>();
}

void check_version(const std::string& version) {
  for (const std::string& supported : kSupportedVersions) {
    if (supported == version) return;
  }
  throw CniError{kIncompatibleVersion, "netaccel-cni does not support CNI version " + version,
                 "supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"};
}

// A chained plugin needs the result of the plugins before it: without it
// there is nothing to pass on, and no interface was made for it to serve.
const Json& previous_result(const Request& request) {
  const auto previous = request.config.find("prevResult");
  if (previous == request.config.end() || !previous->is_object()) {
    throw CniError{kInvalidConfig,
                   "netaccel-cni is a chained plugin: the configuration has no prevResult",
                   "place it after an interface plugin (bridge, ptp, macvlan) in a conflist"};
  }
  return *previous;
}

Json add(const Request& request) {
  const std::string container_id = required_environment("CNI_CONTAINERID");
  const std::string netns = required_environment("CNI_NETNS");
  required_environment("CNI_IFNAME");
  Json result = previous_result(request);
  netaccel::bpf::AttachOptions options;
  options.cni_container_id = container_id;
  options.cni_network = request.network;
  // A second ADD, or one from another network of the same container,
  // finds the namespace attached and leaves it so.
  options.reuse_attached = true;
  netaccel::bpf::attach_container(netns, options);
  if (!result.contains("cniVersion")) result["cniVersion"] = request.version;
  return result;
}

void del(const Request& request) {
  const std::string container_id = required_environment("CNI_CONTAINERID");
  required_environment("CNI_IFNAME");
  // The namespace may be gone, and CNI_NETNS empty: the records know the id.
  netaccel::bpf::detach_cni_container(environment("CNI_NETNS").value_or(""), container_id,
                                      request.network);
}

void check(const Request& request) {
  required_environment("CNI_CONTAINERID");
  const std::string netns = required_environment("CNI_NETNS");
  required_environment("CNI_IFNAME");
  previous_result(request);
  const std::vector<std::string> problems = netaccel::bpf::check_attachment(netns);
  if (problems.empty()) return;
  std::string details;
  for (const std::string& problem : problems) details += (details.empty() ? "" : "; ") + problem;
  throw CniError{kAttachmentBroken, "the netaccel attachment of " + netns + " is incomplete",
                 details};
}

// STATUS: whether ADD can work on this host at all.
void status() {
  try {
    netaccel::bpf::require_privileges();
  } catch (const netaccel::bpf::BpfError& error) {
    throw CniError{kPluginNotAvailable, "netaccel-cni cannot attach containers", error.what()};
  }
}

// GC: detaches what this network attached for containers the runtime no
// longer knows.
void garbage_collect(const Request& request) {
  std::set<std::string> valid;
  const auto attachments = request.config.find("cni.dev/valid-attachments");
  if (attachments != request.config.end()) {
    if (!attachments->is_array()) {
      throw CniError{kInvalidConfig, "\"cni.dev/valid-attachments\" is not an array", ""};
    }
    for (const Json& attachment : *attachments) {
      if (!attachment.is_object() || !attachment.contains("containerID") ||
          !attachment["containerID"].is_string()) {
        throw CniError{kInvalidConfig, "a valid attachment without a containerID string", ""};
      }
      valid.insert(attachment["containerID"].get<std::string>());
    }
  }
  netaccel::bpf::detach_cni_garbage(request.network, valid);
}

Json version_answer() {
  return Json{{"cniVersion", kOurVersion}, {"supportedVersions", kSupportedVersions}};
}

int run(Request& request) {
  request.command = required_environment("CNI_COMMAND");
  const std::string input(std::istreambuf_iterator<char>(std::cin), {});
  if (request.command == "VERSION") {
    std::cout << version_answer().dump() << "\n";
    return 0;
  }
  request.config = parse_config(input);
  const std::string version = string_member(request.config, "cniVersion");
  check_version(version);
  request.version = version;
  request.network = string_member(request.config, "name");
  try {
    if (request.command == "ADD") {
      std::cout << add(request).dump() << "\n";
    } else if (request.command == "DEL") {
      del(request);
    } else if (request.command == "CHECK") {
      check(request);
    } else if (request.command == "STATUS") {
      status();
    } else if (request.command == "GC") {
      garbage_collect(request);
    } else {
      throw CniError{kInvalidEnvironment, "unknown CNI_COMMAND '" + request.command + "'",
                     "expected ADD, DEL, CHECK, STATUS, GC or VERSION"};
    }
  } catch (const netaccel::bpf::BpfError& error) {
    throw CniError{kAttachFailed, std::string("netaccel ") + request.command + " failed",
                   error.what()};
  }
  return 0;
}

}  // namespace

int main() {
  Request request;
  try {
    return run(request);
  } catch (const CniError& error) {
    Json answer{{"cniVersion", request.version.empty() ? kOurVersion : request.version},
                {"code", error.code},
                {"msg", error.msg}};
    if (!error.details.empty()) answer["details"] = error.details;
    std::cout << answer.dump() << "\n";
  } catch (const std::exception& error) {
    std::cout
        << Json{{"cniVersion", kOurVersion}, {"code", kIoFailure}, {"msg", error.what()}}.dump()
        << "\n";
  }
  return 1;
}

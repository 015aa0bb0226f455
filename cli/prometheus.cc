#include "prometheus.h"

#include <cctype>
#include <sstream>

namespace netaccel::cli {
namespace {

// Label values escape backslash, quote and newline.
std::string label_value(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// The numeric members of a flat JSON object, in order.
std::vector<std::pair<std::string, std::string>> numbers_of(const std::string& json) {
  std::vector<std::pair<std::string, std::string>> numbers;
  std::size_t at = 0;
  while ((at = json.find('"', at)) != std::string::npos) {
    const std::size_t end = json.find('"', at + 1);
    if (end == std::string::npos) break;
    const std::string key = json.substr(at + 1, end - at - 1);
    at = end + 1;
    if (at >= json.size() || json[at] != ':') continue;
    const std::size_t value_end = json.find_first_of(",}", at + 1);
    const std::string value = json.substr(at + 1, value_end - at - 1);
    if (!value.empty() && (std::isdigit(static_cast<unsigned char>(value[0])) || value[0] == '-')) {
      numbers.emplace_back(key, value);
    }
  }
  return numbers;
}

class Exposition {
 public:
  // One family: its HELP and TYPE once, then a sample per container.
  template <typename Value>
  void family(const std::string& name, const char* type, const char* help,
              const std::vector<std::pair<std::string, Value>>& samples) {
    if (samples.empty()) return;
    out_ << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
    for (const auto& [container, value] : samples) {
      out_ << name;
      if (!container.empty()) out_ << "{container=\"" << label_value(container) << "\"}";
      out_ << " " << value << "\n";
    }
  }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

}  // namespace

std::string prometheus_text(const std::vector<bpf::ContainerStats>& containers,
                            const std::vector<std::string>& stack_counters,
                            const std::optional<std::string>& monitor_status) {
  Exposition exposition;
  using Samples = std::vector<std::pair<std::string, unsigned long long>>;
  const auto per_container = [&](const std::string& name, const char* help, auto field) {
    Samples samples;
    for (const bpf::ContainerStats& stats : containers)
      samples.emplace_back(stats.name, field(stats));
    exposition.family(name, "counter", help, samples);
  };
  per_container("netaccel_xdp_packets_total", "Frames the XDP classifier saw.",
                [](const auto& s) { return s.xdp.packets; });
  per_container("netaccel_xdp_bytes_total", "Bytes of those frames.",
                [](const auto& s) { return s.xdp.bytes; });
  per_container("netaccel_xdp_passed_total", "Frames handed to the kernel.",
                [](const auto& s) { return s.xdp.passed; });
  per_container("netaccel_xdp_to_xsk_total", "Frames redirected to the user-space stack.",
                [](const auto& s) { return s.xdp.to_xsk; });
  per_container("netaccel_xdp_dropped_total", "Frames dropped by steering.",
                [](const auto& s) { return s.xdp.dropped; });
  per_container("netaccel_xdp_rejected_total", "SYNs answered with a reset by the policy.",
                [](const auto& s) { return s.xdp.rejected; });
  per_container("netaccel_xdp_malformed_total", "Frames whose headers did not parse.",
                [](const auto& s) { return s.xdp.malformed; });
  per_container("netaccel_sockmap_redirected_bytes_total",
                "Bytes sk_msg moved socket to socket (tier 1).",
                [](const auto& s) { return s.sockmap.redirected_bytes; });
  per_container("netaccel_sockmap_redirected_messages_total", "sendmsg calls short-circuited.",
                [](const auto& s) { return s.sockmap.redirected_msgs; });
  per_container("netaccel_sockmap_passed_bytes_total", "Bytes sent the normal TCP way.",
                [](const auto& s) { return s.sockmap.passed_bytes; });
  // The user-space stack's counters are named by the stack itself.
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> stacks;
  for (std::size_t i = 0; i < containers.size() && i < stack_counters.size(); ++i) {
    if (!stack_counters[i].empty()) {
      stacks.emplace_back(containers[i].name, numbers_of(stack_counters[i]));
    }
  }
  if (!stacks.empty()) {
    for (const auto& [key, ignored] : stacks.front().second) {
      if (key == "pid") continue;
      std::vector<std::pair<std::string, std::string>> samples;
      for (const auto& [container, numbers] : stacks) {
        for (const auto& [name, value] : numbers) {
          if (name == key) samples.emplace_back(container, value);
        }
      }
      exposition.family("netaccel_stack_" + key, "untyped",
                        "The user-space stack's counter of that name (tier 2).", samples);
    }
  }
  if (monitor_status) {
    for (const auto& [key, value] : numbers_of(*monitor_status)) {
      exposition.family("netaccel_monitor_" + key, "untyped",
                        "The monitor's status field of that name (tier 0, host-wide).",
                        std::vector<std::pair<std::string, std::string>>{{"", value}});
    }
  }
  return exposition.text();
}

}  // namespace netaccel::cli

// `netaccel stats --prometheus`: every tier's counters in Prometheus's text
// exposition format, for a node exporter's textfile collector or a scrape
// through any HTTP front.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "netaccel/bpf_loader.h"

namespace netaccel::cli {

// Per container: the XDP classifier, the sockmap and a running user-space
// stack (`stack_counters`: its flat JSON by container name, absent when
// none runs); host-wide: the monitor's status JSON (tier 0), if it answered.
std::string prometheus_text(const std::vector<bpf::ContainerStats>& containers,
                            const std::vector<std::string>& stack_counters,
                            const std::optional<std::string>& monitor_status);

}  // namespace netaccel::cli

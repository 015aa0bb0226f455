// Asking a running monitor something on its unix socket: one request on a
// fresh connection, one message back (status, policy).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace netaccel::cli {

struct MonitorAnswer {
  std::optional<std::string> text;  // the monitor's reply
  std::string error;                // why there is none, for the user
};

MonitorAnswer ask_monitor(const std::string& socket_path, const void* request, std::size_t bytes);

}  // namespace netaccel::cli

// `netaccel doctor`: what this host offers netaccel, one line each, and what
// to fix where something is missing.
#pragma once

#include <string>

namespace netaccel::cli {

// Prints the findings; 0 when nothing needs fixing, 1 otherwise.
int run_doctor(const std::string& socket_path);

}  // namespace netaccel::cli

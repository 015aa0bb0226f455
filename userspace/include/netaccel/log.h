// The daemon's log lines on stderr: text for a terminal, or one JSON object
// per line (`netaccel daemon --log-format json`) for journald, Loki or any
// collector that parses fields.
#pragma once

#include <string>

namespace netaccel {

enum class LogFormat { kText, kJson };

// Process-wide; set once at start-up, before any thread logs.
void set_log_format(LogFormat format);

// `text` as the inside of a JSON string: quotes, backslashes and control
// characters escaped (log lines, and the other JSON the daemon writes).
std::string json_escaped(const std::string& text);

// text:  netaccel COMPONENT: MESSAGE
// json:
// {"time":"2026-12-07T23:25:35.123Z","level":"LEVEL","component":"COMPONENT","message":"MESSAGE"}
void log_line(const char* component, const char* level, const std::string& message);

}  // namespace netaccel

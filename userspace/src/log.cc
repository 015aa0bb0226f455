#include "netaccel/log.h"

#include <time.h>

#include <cstdio>
#include <ctime>

namespace netaccel {
namespace {

LogFormat g_format = LogFormat::kText;

}  // namespace

std::string json_escaped(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
          out += escaped;
        } else {
          out += c;
        }
    }
  }
  return out;
}

void set_log_format(LogFormat format) {
  g_format = format;
}

void log_line(const char* component, const char* level, const std::string& message) {
  if (g_format == LogFormat::kText) {
    std::fprintf(stderr, "netaccel %s: %s\n", component, message.c_str());
    return;
  }
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  tm utc{};
  gmtime_r(&now.tv_sec, &utc);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &utc);
  // One write per line, so lines from the keeper and the monitor never mix.
  std::fprintf(
      stderr, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"component\":\"%s\",\"message\":\"%s\"}\n",
      stamp, now.tv_nsec / 1000000, level, component, json_escaped(message).c_str());
}

}  // namespace netaccel

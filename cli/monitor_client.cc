#include "monitor_client.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>

#include "netaccel/shm.h"

namespace netaccel::cli {
namespace {
constexpr int kAnswerTimeoutMs = 5000;
}  // namespace

MonitorAnswer ask_monitor(const std::string& socket_path, const void* request, std::size_t bytes) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof address.sun_path) {
    return {std::nullopt, "socket path '" + socket_path + "' is empty or too long"};
  }
  std::memcpy(address.sun_path, socket_path.c_str(), socket_path.size() + 1);
  const UniqueFd connection(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!connection) return {std::nullopt, std::strerror(errno)};
  if (connect(connection.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) {
      return {std::nullopt, "monitor not running at " + socket_path};
    }
    return {std::nullopt,
            "cannot reach the monitor at " + socket_path + ": " + std::strerror(errno)};
  }
  if (send(connection.get(), request, bytes, MSG_NOSIGNAL) != static_cast<ssize_t>(bytes)) {
    return {std::nullopt, "cannot ask the monitor at " + socket_path + ": " + std::strerror(errno)};
  }
  pollfd ready{connection.get(), POLLIN, 0};
  std::string reply(64 * 1024, '\0');
  ssize_t received = -1;
  if (poll(&ready, 1, kAnswerTimeoutMs) == 1) {
    received = recv(connection.get(), reply.data(), reply.size(), 0);
  }
  if (received <= 0) return {std::nullopt, "the monitor at " + socket_path + " did not answer"};
  reply.resize(static_cast<std::size_t>(received));
  return {reply, ""};
}

}  // namespace netaccel::cli

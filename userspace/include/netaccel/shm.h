// RAII for the kernel objects the shared-memory paths are made of: fds,
// memfd-backed mappings and eventfds. No exceptions: the preload uses these.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <utility>

namespace netaccel {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

class SharedMapping {
 public:
  SharedMapping() = default;
  SharedMapping(void* address, std::size_t bytes) : address_(address), bytes_(bytes) {}
  SharedMapping(SharedMapping&& other) noexcept
      : address_(std::exchange(other.address_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  SharedMapping& operator=(SharedMapping&& other) noexcept {
    if (this != &other) {
      reset();
      address_ = std::exchange(other.address_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;
  ~SharedMapping() { reset(); }

  void* get() const { return address_; }
  std::size_t size() const { return bytes_; }
  explicit operator bool() const { return address_ != nullptr; }
  void reset();

 private:
  void* address_ = nullptr;
  std::size_t bytes_ = 0;
};

// A zero-filled memfd of `bytes`, close-on-exec; -errno on failure.
int create_shared_memory(const char* name, std::size_t bytes);
// Maps `bytes` of `fd` from `offset` (page aligned) read-write and shared;
// empty mapping and errno set on failure.
SharedMapping map_shared(int fd, std::size_t bytes, uint64_t offset = 0);
// Size of the object behind `fd`, or -errno.
int64_t shared_memory_size(int fd);

// Wake-ups between processes travel as eventfd increments.
int create_wake_fd();         // non-blocking, close-on-exec eventfd; -errno on failure
void signal_wake_fd(int fd);  // one increment; never blocks
void drain_wake_fd(int fd);   // consumes pending increments; never blocks
// Whether `fd` is an eventfd: only one may serve as a wake fd that a process
// hands us, since we write to it.
bool is_eventfd(int fd);

// The most fds one message carries (a channel: its memfd and two eventfds per slot).
inline constexpr std::size_t kMaxPassedFds = 64;

// Passes `fds` with `data` over a unix socket in one message; -errno on failure.
int send_with_fds(int socket_fd, const void* data, std::size_t bytes, const int* fds,
                  std::size_t fd_count);
// Receives one message and up to `max_fds` fds (close-on-exec). Returns the
// data bytes received, 0 on orderly shutdown, or -errno. `*fd_count` gets the
// number of fds stored; fds beyond `max_fds` are closed.
ssize_t receive_with_fds(int socket_fd, void* data, std::size_t bytes, int* fds,
                         std::size_t max_fds, std::size_t* fd_count);

}  // namespace netaccel

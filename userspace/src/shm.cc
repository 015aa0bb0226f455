#include "netaccel/shm.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace netaccel {

// The preload interposes close(); the raw syscall keeps our own clean-up
// from being mistaken for the application's.
static int close_raw(int fd) {
  return static_cast<int>(syscall(SYS_close, fd));
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) close_raw(fd_);
  fd_ = fd;
}

void SharedMapping::reset() {
  if (address_ != nullptr) munmap(address_, bytes_);
  address_ = nullptr;
  bytes_ = 0;
}

int create_shared_memory(const char* name, std::size_t bytes) {
  const int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return -errno;
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int error = errno;
    close_raw(fd);
    return -error;
  }
  return fd;
}

SharedMapping map_shared(int fd, std::size_t bytes, uint64_t offset) {
  void* address =
      mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (address == MAP_FAILED) return {};
  return SharedMapping(address, bytes);
}

int64_t shared_memory_size(int fd) {
  struct stat status {};
  if (fstat(fd, &status) != 0) return -errno;
  return status.st_size;
}

int create_wake_fd() {
  const int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

void signal_wake_fd(int fd) {
  const uint64_t one = 1;
  // A full counter (EAGAIN) already means "wake up"; nothing is lost.
  [[maybe_unused]] const ssize_t ignored = syscall(SYS_write, fd, &one, sizeof one);
}

void drain_wake_fd(int fd) {
  uint64_t count = 0;
  [[maybe_unused]] const ssize_t ignored = syscall(SYS_read, fd, &count, sizeof count);
}

int send_with_fds(int socket_fd, const void* data, std::size_t bytes, const int* fds,
                  std::size_t fd_count) {
  struct iovec iov {
    const_cast<void*>(data), bytes
  };
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)]{};
  struct msghdr message {};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  if (fd_count > 0) {
    if (fd_count > kMaxPassedFds) return -EINVAL;
    message.msg_control = control;
    message.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
    struct cmsghdr* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
    std::memcpy(CMSG_DATA(header), fds, sizeof(int) * fd_count);
  }
  for (;;) {
    const ssize_t sent = syscall(SYS_sendmsg, socket_fd, &message, MSG_NOSIGNAL);
    if (sent >= 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

ssize_t receive_with_fds(int socket_fd, void* data, std::size_t bytes, int* fds,
                         std::size_t max_fds, std::size_t* fd_count) {
  struct iovec iov {
    data, bytes
  };
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)]{};
  struct msghdr message {};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  *fd_count = 0;
  ssize_t received;
  do {
    received = syscall(SYS_recvmsg, socket_fd, &message, MSG_CMSG_CLOEXEC);
  } while (received < 0 && errno == EINTR);
  if (received < 0) return -errno;
  for (struct cmsghdr* header = CMSG_FIRSTHDR(&message); header != nullptr;
       header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const int* passed = reinterpret_cast<const int*>(CMSG_DATA(header));
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, passed + i, sizeof fd);
      if (*fd_count < max_fds) {
        fds[(*fd_count)++] = fd;
      } else {
        close_raw(fd);
      }
    }
  }
  return received;
}

bool is_eventfd(int fd) {
  char path[48];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  char link[64];
  const ssize_t length = readlink(path, link, sizeof link - 1);
  if (length < 0) return false;
  link[length] = '\0';
  return std::strcmp(link, "anon_inode:[eventfd]") == 0;
}

}  // namespace netaccel

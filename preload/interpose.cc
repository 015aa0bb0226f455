// The exported symbols that LD_PRELOAD puts in front of libc. Each forwards
// every argument to our implementation; nothing here may throw.
#include <pthread.h>
#include <stdarg.h>

#include "intercepted.h"
#include "real_calls.h"
#include "runtime.h"

#define NETACCEL_EXPORT extern "C" __attribute__((visibility("default")))

#define NETACCEL_CALL(ret, name, params, args)         \
  NETACCEL_EXPORT ret name params {                    \
    return netaccel::preload::intercepted_##name args; \
  }
#include "calls.def"
#undef NETACCEL_CALL

// fcntl and ioctl are variadic; every command we handle takes at most one
// argument, an integer or a pointer, which fits in an unsigned long.
NETACCEL_EXPORT int fcntl(int fd, int command, ...) {
  va_list arguments;
  va_start(arguments, command);
  const unsigned long argument = va_arg(arguments, unsigned long);
  va_end(arguments);
  return netaccel::preload::netaccel_fcntl(fd, command, argument);
}

// The large-file name of the same call.
NETACCEL_EXPORT int fcntl64(int fd, int command, ...) __attribute__((alias("fcntl")));
// The large-file name of the same call (off_t is 64 bits on our targets).
NETACCEL_EXPORT ssize_t sendfile64(int out_fd, int in_fd, off_t* offset, size_t count)
    __attribute__((alias("sendfile")));

NETACCEL_EXPORT int ioctl(int fd, unsigned long request, ...) {
  va_list arguments;
  va_start(arguments, request);
  void* argument = va_arg(arguments, void*);
  va_end(arguments);
  return netaccel::preload::netaccel_ioctl(fd, request, argument);
}

namespace {

__attribute__((constructor)) void initialise_preload() {
  netaccel::preload::real();
  netaccel::preload::config();
  pthread_atfork(netaccel::preload::lock_link_for_fork,
                 netaccel::preload::withdraw_listeners_after_fork,
                 netaccel::preload::reset_link_in_child);
}

}  // namespace

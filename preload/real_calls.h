// The libc functions behind every interposed call, resolved with
// dlsym(RTLD_NEXT) from the one list in calls.def.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

namespace netaccel::preload {

struct RealCalls {
#define NETACCEL_CALL(ret, name, params, args) ret(*name) params;
#include "calls.def"
#undef NETACCEL_CALL
  int (*fcntl)(int, int, ...);
  int (*ioctl)(int, unsigned long, ...);
  void* (*mremap)(void*, size_t, size_t, int, ...);
};

// Resolved on first use; safe to call before the library is initialised.
const RealCalls& real();

}  // namespace netaccel::preload

#include "real_calls.h"

#include <dlfcn.h>

#include <atomic>
#include <mutex>

namespace netaccel::preload {
namespace {

RealCalls resolve() {
  RealCalls calls{};
  // The casts go through void* because dlsym returns an object pointer.
#define NETACCEL_CALL(ret, name, params, args) \
  calls.name = reinterpret_cast<ret(*) params>(dlsym(RTLD_NEXT, #name));
#include "calls.def"
#undef NETACCEL_CALL
  calls.fcntl = reinterpret_cast<int (*)(int, int, ...)>(dlsym(RTLD_NEXT, "fcntl"));
  calls.ioctl = reinterpret_cast<int (*)(int, unsigned long, ...)>(dlsym(RTLD_NEXT, "ioctl"));
  calls.mremap =
      reinterpret_cast<void* (*)(void*, size_t, size_t, int, ...)>(dlsym(RTLD_NEXT, "mremap"));
  return calls;
}

}  // namespace

const RealCalls& real() {
  static const RealCalls calls = resolve();
  return calls;
}

}  // namespace netaccel::preload

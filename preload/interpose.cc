// The exported symbols that LD_PRELOAD puts in front of libc. Each forwards
// every argument to our implementation; nothing here may throw.
#include <alloca.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

#include "intercepted.h"
#include "pipes.h"
#include "real_calls.h"
#include "runtime.h"
#include "user_memory.h"

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
NETACCEL_EXPORT FILE* freopen64(const char* path, const char* mode, FILE* stream)
    __attribute__((alias("freopen")));
// The large-file name of the same call (off_t is 64 bits on our targets).
NETACCEL_EXPORT void* mmap64(void* address, size_t length, int protection, int flags, int fd,
                             off_t offset) __attribute__((alias("mmap")));
// The large-file name of the same call (off_t is 64 bits on our targets).
NETACCEL_EXPORT ssize_t sendfile64(int out_fd, int in_fd, off_t* offset, size_t count)
    __attribute__((alias("sendfile")));

// vfork has no C++ wrapper: the child returns through the caller's frame
// and the parent, resumed, returns through it again, so a frame of ours in
// between would be clobbered. This stub notes that a vfork child may run in
// our memory (holder_process() then asks getpid()) and jumps to libc's,
// leaving the stack as the caller made it.
static_assert(sizeof(std::atomic<bool>) == 1, "the stub stores one byte");
asm(R"(
  .text
  .globl vfork
  .type vfork, @function
vfork:
  movb $1, netaccel_vfork_called(%rip)
  jmp __vfork@PLT
  .size vfork, .-vfork
)");

// The list forms of exec, written out by hand as they are variadic. Their
// argument vectors live on the stack: a vfork child may not allocate.
namespace {

std::size_t count_arguments(va_list arguments) {
  va_list counting;
  va_copy(counting, arguments);
  std::size_t count = 0;
  while (va_arg(counting, const char*) != nullptr) ++count;
  va_end(counting);
  return count;
}

// Fills `argv` (room for first, the rest and the null) and leaves
// `arguments` just past the null.
void fill_arguments(const char* first, va_list arguments, char** argv) {
  std::size_t i = 0;
  argv[i++] = const_cast<char*>(first);
  while ((argv[i++] = va_arg(arguments, char*)) != nullptr) {
  }
}

}  // namespace

#define NETACCEL_ARGUMENT_VECTOR(arguments) \
  static_cast<char**>(alloca((count_arguments(arguments) + 2) * sizeof(char*)))

NETACCEL_EXPORT int execl(const char* path, const char* first, ...) {
  va_list arguments;
  va_start(arguments, first);
  char** argv = NETACCEL_ARGUMENT_VECTOR(arguments);
  fill_arguments(first, arguments, argv);
  va_end(arguments);
  return netaccel::preload::intercepted_execv(path, argv);
}

NETACCEL_EXPORT int execlp(const char* file, const char* first, ...) {
  va_list arguments;
  va_start(arguments, first);
  char** argv = NETACCEL_ARGUMENT_VECTOR(arguments);
  fill_arguments(first, arguments, argv);
  va_end(arguments);
  return netaccel::preload::intercepted_execvp(file, argv);
}

NETACCEL_EXPORT int execle(const char* path, const char* first, ...) {
  va_list arguments;
  va_start(arguments, first);
  char** argv = NETACCEL_ARGUMENT_VECTOR(arguments);
  fill_arguments(first, arguments, argv);
  char* const* envp = va_arg(arguments, char* const*);
  va_end(arguments);
  return netaccel::preload::intercepted_execve(path, argv, envp);
}
#undef NETACCEL_ARGUMENT_VECTOR

NETACCEL_EXPORT int ioctl(int fd, unsigned long request, ...) {
  va_list arguments;
  va_start(arguments, request);
  void* argument = va_arg(arguments, void*);
  va_end(arguments);
  return netaccel::preload::netaccel_ioctl(fd, request, argument);
}

// The new address follows only with MREMAP_FIXED, as glibc reads it.
NETACCEL_EXPORT void* mremap(void* address, size_t old_length, size_t new_length, int flags, ...) {
  void* new_address = nullptr;
  if (flags & MREMAP_FIXED) {
    va_list arguments;
    va_start(arguments, flags);
    new_address = va_arg(arguments, void*);
    va_end(arguments);
  }
  return netaccel::preload::netaccel_mremap(address, old_length, new_length, flags, new_address);
}

// _exit() skips the destructors: a forked child that ends with it (after a
// failed exec, Python's os._exit) still leaves the pipe read ends it held,
// or a writer would not see EPIPE once the other readers are gone.
NETACCEL_EXPORT void _exit(int status) {
  netaccel::preload::leave_pipes_at_exit();
  syscall(SYS_exit_group, status);
  __builtin_unreachable();
}
NETACCEL_EXPORT void _Exit(int status) __attribute__((alias("_exit")));

namespace {

// exit(), not _exit(): what this process held of shared connections and
// of pipes' read ends goes.
__attribute__((destructor)) void leave_connections() {
  netaccel::preload::flush_socket_streams_at_exit();
  netaccel::preload::leave_connections_at_exit();
  netaccel::preload::leave_pipes_at_exit();
}

__attribute__((constructor)) void initialise_preload() {
  netaccel::preload::real();
  netaccel::preload::config();
  netaccel::preload::register_for_asymmetric_fence();
  pthread_atfork(nullptr, nullptr, netaccel::preload::register_for_asymmetric_fence);
  // A child lacks what its parent mapped MADV_DONTFORK.
  pthread_atfork(nullptr, nullptr, netaccel::preload::forget_proven_memory);
  pthread_atfork(nullptr, nullptr, netaccel::preload::start_pipe_statistics_in_child);
  pthread_atfork(netaccel::preload::lock_link_for_fork,
                 netaccel::preload::withdraw_listeners_after_fork,
                 netaccel::preload::reset_link_in_child);
}

}  // namespace

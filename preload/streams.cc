// stdio on netaccel sockets. glibc's FILE reads and writes through its own
// internal read and write, which LD_PRELOAD cannot reach, while a connected
// netaccel socket's descriptor holds only a placeholder: the bytes are in the
// rings. So a stream on a netaccel socket is a cookie stream (fopencookie)
// whose functions go through our own read, write and close, and which
// otherwise looks like glibc's stream on a kernel socket: fileno() names the
// descriptor, it is fully buffered with the buffer the kernel's st_blksize
// would give, and a seek fails with ESPIPE.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "intercepted.h"
#include "pipes.h"
#include "real_calls.h"
#include "runtime.h"

namespace netaccel::preload {
namespace {

struct SocketStream {
  FILE* file = nullptr;
  int fd = -1;
  char* buffer = nullptr;  // ours, so that its size is the kernel stream's
  // Set when it stands in for stdin, stdout or stderr: the global, and the
  // stream glibc made for it, which the global names again once ours closes.
  FILE** standard = nullptr;
  FILE* replaced = nullptr;
};

std::mutex g_streams_mutex;
// Never destroyed: streams are flushed and closed until the very end of exit.
std::vector<SocketStream*>& streams() {
  static auto* list = new std::vector<SocketStream*>;
  return *list;
}

// Takes `file`'s stream out of the list; null when it is not one of ours.
SocketStream* take_stream(FILE* file) {
  std::lock_guard lock(g_streams_mutex);
  auto& list = streams();
  const auto found = std::find_if(list.begin(), list.end(), [file](const SocketStream* stream) {
    return stream->file == file;
  });
  if (found == list.end()) return nullptr;
  SocketStream* stream = *found;
  list.erase(found);
  return stream;
}

void free_stream(SocketStream* stream) {
  free(stream->buffer);
  delete stream;
}

ssize_t read_stream(void* cookie, char* buffer, size_t size) {
  return intercepted_read(static_cast<SocketStream*>(cookie)->fd, buffer, size);
}

// As glibc writes a kernel descriptor's stream: until everything is written
// or a call fails, returning what was written (errno says why it stopped).
ssize_t write_stream(void* cookie, const char* data, size_t size) {
  const int fd = static_cast<SocketStream*>(cookie)->fd;
  size_t written = 0;
  while (written < size) {
    const ssize_t count = intercepted_write(fd, data + written, size - written);
    if (count <= 0) break;
    written += static_cast<size_t>(count);
  }
  return static_cast<ssize_t>(written);
}

int seek_stream(void*, off64_t*, int) {
  return fail(ESPIPE);  // what lseek on a socket says
}

int close_stream(void* cookie) {
  auto* stream = static_cast<SocketStream*>(cookie);
  take_stream(stream->file);
  if (stream->standard != nullptr && *stream->standard == stream->file) {
    // fclose frees our FILE, glibc's own stays: the global names it again,
    // closed as far as it can be without freeing anything (writes fail with
    // EBADF), so that later uses of stdout (close_stdout) find a closed
    // stream, not freed memory.
    stream->replaced->_fileno = -1;
    *stream->standard = stream->replaced;
  }
  const int closed = intercepted_close(stream->fd);
  free_stream(stream);
  return closed;
}

// A stream over netaccel socket `fd` with `mode`'s access; null with errno
// set, as fdopen, when `mode` is not one fdopen takes or memory runs out.
SocketStream* open_stream(int fd, const char* mode) {
  if (mode == nullptr || (mode[0] != 'r' && mode[0] != 'w' && mode[0] != 'a')) {
    errno = EINVAL;
    return nullptr;
  }
  const int status_flags = netaccel_fcntl(fd, F_GETFL, 0);
  if (status_flags < 0) return nullptr;
  // fdopen's "a" sets O_APPEND on the descriptor.
  if (mode[0] == 'a' && (status_flags & O_APPEND) == 0 &&
      netaccel_fcntl(fd, F_SETFL, static_cast<unsigned long>(status_flags | O_APPEND)) != 0) {
    return nullptr;
  }
  struct stat status;
  const size_t buffer_size =
      fstat(fd, &status) == 0 && status.st_blksize > 0 ? status.st_blksize : BUFSIZ;
  auto* stream = new SocketStream;
  stream->fd = fd;
  stream->buffer = static_cast<char*>(malloc(buffer_size));
  const cookie_io_functions_t functions{read_stream, write_stream, seek_stream, close_stream};
  stream->file = stream->buffer != nullptr ? fopencookie(stream, mode, functions) : nullptr;
  if (stream->file == nullptr) {
    const int error = stream->buffer != nullptr ? errno : ENOMEM;
    free_stream(stream);
    errno = error;
    return nullptr;
  }
  // A cookie stream has no descriptor of its own to glibc; fileno() names ours.
  stream->file->_fileno = fd;
  setvbuf(stream->file, stream->buffer, _IOFBF, buffer_size);
  std::lock_guard lock(g_streams_mutex);
  streams().push_back(stream);
  return stream;
}

FILE* socket_stream(int fd, const char* mode) {
  SocketStream* stream = open_stream(fd, mode);
  return stream != nullptr ? stream->file : nullptr;
}

}  // namespace

FILE* intercepted_fdopen(int fd, const char* mode) {
  if (lookup_socket(fd)) return socket_stream(fd, mode);
  // A pipe end's stream reads and writes the kernel pipe itself.
  downgrade_pipe_at(fd);
  return real().fdopen(fd, mode);
}

// glibc's freopen flushes without closing, then puts the new file at the
// stream's descriptor number (or closes the number) with its internal dup3
// and close: a netaccel socket that held the number is gone, which our table
// must learn. On one of our streams it reopens our FILE as a file stream,
// once told that a cookie stream has no wide-character state to reset.
FILE* intercepted_freopen(const char* path, const char* mode, FILE* file) {
  SocketStream* stream = take_stream(file);
  if (stream != nullptr) file->_wide_data = nullptr;
  const int fd = file->_fileno;
  const bool socket_at_fd = is_netaccel_fd(fd);
  FILE* reopened = real().freopen(path, mode, file);
  const int error = errno;
  if (socket_at_fd) forget_replaced_socket(fd);
  if (stream != nullptr) free_stream(stream);
  errno = error;
  return reopened;
}

namespace {

struct Standard {
  FILE** global;
  const char* mode;
};
// Indexed by descriptor.
const Standard kStandard[] = {{&stdin, "r"}, {&stdout, "w"}, {&stderr, "w"}};
// glibc's own stdin, stdout and stderr, as the image started.
FILE* g_glibc_standard[3];

// `stream` stands in for glibc's standard stream at `fd` from now on.
void stand_in(int fd, SocketStream* stream) {
  const Standard& standard = kStandard[fd];
  stream->standard = standard.global;
  stream->replaced = *standard.global;
  *standard.global = stream->file;
}

}  // namespace

void adopt_standard_streams() {
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; ++fd) {
    g_glibc_standard[fd] = *kStandard[fd].global;
    SocketRef socket = lookup_socket(fd);
    if (!socket || socket->state != SocketState::kConnected) continue;
    SocketStream* stream = open_stream(fd, kStandard[fd].mode);
    if (stream == nullptr) continue;
    // As glibc's own: stdin and stdout on a socket fully buffered, stderr never.
    if (fd == STDERR_FILENO) setvbuf(stream->file, nullptr, _IONBF, 0);
    stand_in(fd, stream);
  }
}

void take_over_standard_stream(int fd) {
  FILE* own = g_glibc_standard[fd];
  // Ours already, or one the program chose; a vfork child runs in its
  // parent's memory and must not touch its streams.
  if (*kStandard[fd].global != own || !holder_process()) return;
  // What glibc's stream would still do with the socket must carry over:
  // pending output moves, but input it holds, an EOF or an error it
  // remembers would not; the stream then stays glibc's.
  const bool holds_input = __freading(own) && own->_IO_read_ptr < own->_IO_read_end;
  if (holds_input || feof(own) || ferror(own)) return;
  SocketStream* stream = open_stream(fd, kStandard[fd].mode);
  if (stream == nullptr) return;
  // The buffering glibc's stream has, or would take on a socket.
  const size_t own_buffer = __fbufsize(own);
  if (__flbf(own)) {
    setvbuf(stream->file, nullptr, _IOLBF, 0);
  } else if (own_buffer == 1 || (own_buffer == 0 && fd == STDERR_FILENO)) {
    setvbuf(stream->file, nullptr, _IONBF, 0);
  }
  if (const size_t pending = __fpending(own)) {
    fwrite(own->_IO_write_base, 1, pending, stream->file);
    __fpurge(own);
  }
  stand_in(fd, stream);
}

void flush_socket_streams_at_exit() {
  // Without the streams' locks, as glibc's own flush at exit: a thread
  // blocked reading one (holding its lock) must not hang the exit.
  std::lock_guard lock(g_streams_mutex);
  for (SocketStream* stream : streams()) fflush_unlocked(stream->file);
}

}  // namespace netaccel::preload

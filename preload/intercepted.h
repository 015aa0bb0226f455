// Our implementation of every interposed call (declared from calls.def) and
// the hooks that keep emulated epoll sets in step with socket transitions.
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

struct Socket;

#define NETACCEL_CALL(ret, name, params, args) ret intercepted_##name params;
#include "calls.def"
#undef NETACCEL_CALL
int netaccel_fcntl(int fd, int command, unsigned long argument);
int netaccel_ioctl(int fd, unsigned long request, void* argument);
void* netaccel_mremap(void* address, size_t old_length, size_t new_length, int flags,
                      void* new_address);

// `fd` left netaccel: when it was the socket's last descriptor, drop the
// socket from every emulated epoll set; if the number now holds a kernel
// socket, register that with the kernel epoll instead.
void epoll_forget(int fd, Socket* socket, bool now_kernel);
// `fd` got its connection: its wake fd joins the epoll sets that watch it.
void epoll_connected(Socket* socket);
// A kernel descriptor closed: forget it if it was one of our epoll sets.
void epoll_closed(int fd);

// `fd`'s number was taken over or closed behind our back (glibc's internal
// dup3 and close in freopen), or by dup2 onto it: its socket leaves the table.
void forget_replaced_socket(int fd);

// Fork bookkeeping for the monitor link.
void lock_link_for_fork();
void reset_link_in_child();
// The parent's half of a fork: its listeners wait to be announced again.
void withdraw_listeners_after_fork();

}  // namespace netaccel::preload

// Pipes carried by shared-memory rings (docs/architecture.md, "Pipes").
//
// pipe() still makes the kernel pipe, and the application gets its two
// descriptors; beside it a memfd segment holds a byte ring, the shared state
// of both ends and two robust locks, and an eventfd per direction wakes
// sleepers. Data goes through the ring while every holder is a preloaded
// process that reached the pipe as its creator or a fork of it; the moment
// something else may reach it (an exec keeping an end, stdio, SCM_RIGHTS,
// splice...), the pipe is downgraded for good: what the ring holds moves into
// the kernel pipe and every later read and write goes there. The kernel pipe
// also tells who holds the ends: POLLHUP on the read end (no writer left),
// POLLERR on the write end (no reader left), killed holders included.
#pragma once

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <vector>

namespace netaccel::preload {

struct Socket;
struct Pipe;

// Data path on the table entry `end` (state kPipe) of descriptor `fd`. The
// vector is ours or was checked (vector_error).
ssize_t pipe_read(int fd, Socket* end, const struct iovec* iov, int iovcnt);
ssize_t pipe_write(int fd, Socket* end, const struct iovec* iov, int iovcnt);

// Readiness as poll reports it (the epoll bits have the same values); the
// kernel's half (POLLHUP, POLLERR, all of it once downgraded) is read through
// `fd`, or left out when `fd` is -1 (no descriptor of the end is known).
uint32_t pipe_readiness(int fd, Socket* end);
// The two halves of it. The kernel's half, asked through `fd`, is only
// POLLHUP or POLLERR (the other end gone) until the pipe is downgraded, so a
// set watching `fd` edge-triggered in a kernel epoll may keep it and ask
// again when that reports a change.
uint32_t pipe_kernel_half(int fd, Socket* end);
uint32_t pipe_readiness_with(uint32_t kernel_half, Socket* end);
bool pipe_downgraded(Socket* end);
// What to watch on the kernel pipe end while sleeping for `end`.
short pipe_kernel_events(Socket* end);
// The eventfd that wakes sleepers of this end.
int pipe_wake_fd(Socket* end);
// The ring position that moves when an edge-triggered watcher has news:
// bytes written for the read end, bytes read for the write end.
uint32_t pipe_edge_position(Socket* end);
// Announces (or withdraws) a sleep for `events`; true when it waits for
// space, which needs a bounded sleep (readers wake writers without a fence).
bool arm_pipe_end(Socket* end, uint32_t events, bool armed);

// Control path.
int pipe_fcntl(int fd, Socket* end, int command, unsigned long argument);
int pipe_ioctl(int fd, Socket* end, unsigned long request, void* argument);
// The pipe at `fd` (if netaccel carries it) goes back to the kernel for
// good: something is about to reach it behind our back.
void downgrade_pipe_at(int fd);
void downgrade_pipe(int fd, Socket* end);
// sendmsg with SCM_RIGHTS: every pipe passed goes back to the kernel.
void downgrade_passed_pipes(const struct msghdr* message);
// exec and posix_spawn: every pipe the new image may hold goes back to the
// kernel (`include_close_on_exec`: also ends it closes, which a posix_spawn
// file action may still dup).
void downgrade_pipes_for_new_image(bool include_close_on_exec);
// The table entry's last reference went.
void release_pipe_end(Socket* end);

// Who holds a read end, counted per process so that a write right after the
// last reader closed fails at once: fork adds the child...
void share_pipes_with_child(bool shared);
// ...an exec leaves (returned, to rejoin if it fails), and so does exit.
std::vector<Pipe*> leave_pipes_for_exec();
void rejoin_pipes_after_failed_exec(const std::vector<Pipe*>& left);
void leave_pipes_at_exit();
// With NETACCEL_DEBUG, exit prints how many pipes this process made and
// downgraded and how many bytes it wrote to rings; a forked child counts
// its own from zero.
void start_pipe_statistics_in_child();

}  // namespace netaccel::preload

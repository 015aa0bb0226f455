// Whether a blocking call interrupted by a signal handler restarts, as the
// kernel decides it for socket calls (see signals.cc).
#pragma once

namespace netaccel::preload {

// Before a blocking call sleeps: no handler has interrupted it yet.
void forget_handled_signal();
// After its sleep failed with EINTR: the handler that ran was installed with
// SA_RESTART. The caller still returns EINTR when a timeout bounds the call.
bool handled_signal_restarts();
// A write the kernel refuses with EPIPE also raises SIGPIPE in the calling
// thread, unless `flags` hold MSG_NOSIGNAL.
void raise_sigpipe(int flags);

}  // namespace netaccel::preload

// Which signal handler interrupted a blocking call, so that the call can be
// restarted as the kernel restarts it (signal(7)): socket calls restart
// after a handler installed with SA_RESTART unless a timeout bounds them.
// Our blocking calls sleep in poll(), which the kernel never restarts, so
// each handler the application installs runs behind a trampoline that
// notes the signal for the thread it interrupts. The kernel keeps the
// application's flags, which glibc's siginterrupt() may still change.
#include "signals.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

#include "intercepted.h"
#include "real_calls.h"

namespace netaccel::preload {
namespace {

using PlainHandler = void (*)(int);
using InfoHandler = void (*)(int, siginfo_t*, void*);

// The application's handlers, one table per trampoline so that a handler
// always runs with the arguments its kind takes, even while it is replaced.
std::atomic<PlainHandler> g_plain_handlers[NSIG];
std::atomic<InfoHandler> g_info_handlers[NSIG];

// Initial-exec TLS: a preloaded library's, safe to touch in a handler.
__thread int t_handled_signal __attribute__((tls_model("initial-exec")));

void plain_trampoline(int signal_number) {
  t_handled_signal = signal_number;
  g_plain_handlers[signal_number].load(std::memory_order_acquire)(signal_number);
}

void info_trampoline(int signal_number, siginfo_t* info, void* context) {
  t_handled_signal = signal_number;
  g_info_handlers[signal_number].load(std::memory_order_acquire)(signal_number, info, context);
}

bool runs_a_handler(const struct sigaction& action) {
  return (action.sa_flags & SA_SIGINFO) != 0 ||
         (action.sa_handler != SIG_DFL && action.sa_handler != SIG_IGN);
}

}  // namespace

int intercepted_sigaction(int signal_number, const struct sigaction* action,
                          struct sigaction* old) {
  if (signal_number <= 0 || signal_number >= NSIG) {
    return real().sigaction(signal_number, action, old);
  }
  const PlainHandler previous_plain = g_plain_handlers[signal_number].load();
  const InfoHandler previous_info = g_info_handlers[signal_number].load();
  struct sigaction installed;
  if (action != nullptr && runs_a_handler(*action)) {
    installed = *action;
    if (action->sa_flags & SA_SIGINFO) {
      g_info_handlers[signal_number].store(action->sa_sigaction, std::memory_order_release);
      installed.sa_sigaction = info_trampoline;
    } else {
      g_plain_handlers[signal_number].store(action->sa_handler, std::memory_order_release);
      installed.sa_handler = plain_trampoline;
    }
    action = &installed;
  }
  if (real().sigaction(signal_number, action, old) != 0) return -1;
  // The application sees its own handlers, never our trampolines.
  if (old != nullptr) {
    if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction == info_trampoline) {
      old->sa_sigaction = previous_info;
    } else if (!(old->sa_flags & SA_SIGINFO) && old->sa_handler == plain_trampoline) {
      old->sa_handler = previous_plain;
    }
  }
  return 0;
}

// glibc's signal(): BSD semantics, the signal blocked in its handler and
// interrupted calls restarted.
sighandler_t intercepted_signal(int signal_number, sighandler_t handler) {
  if (handler == SIG_ERR || signal_number <= 0 || signal_number >= NSIG) {
    errno = EINVAL;
    return SIG_ERR;
  }
  struct sigaction action {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  sigaddset(&action.sa_mask, signal_number);
  action.sa_flags = SA_RESTART;
  struct sigaction old;
  if (intercepted_sigaction(signal_number, &action, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

void forget_handled_signal() {
  t_handled_signal = 0;
}

bool handled_signal_restarts() {
  const int signal_number = t_handled_signal;
  struct sigaction current;
  return signal_number != 0 && real().sigaction(signal_number, nullptr, &current) == 0 &&
         (current.sa_flags & SA_RESTART) != 0;
}

void raise_sigpipe(int flags) {
  if ((flags & MSG_NOSIGNAL) == 0) syscall(SYS_tgkill, getpid(), gettid(), SIGPIPE);
}

}  // namespace netaccel::preload

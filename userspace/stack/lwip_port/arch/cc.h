/* lwIP's platform header for netaccel: Linux user space, glibc. */
#ifndef NETACCEL_LWIP_ARCH_CC_H
#define NETACCEL_LWIP_ARCH_CC_H

#include <stdio.h>
#include <stdlib.h>

#define LWIP_TIMEVAL_PRIVATE 0
#include <sys/time.h>

#define LWIP_ERRNO_STDINCLUDE 1

#ifdef __cplusplus
extern "C" {
#endif
unsigned int netaccel_lwip_random(void);
#ifdef __cplusplus
}
#endif
#define LWIP_RAND() netaccel_lwip_random()

/* An lwIP assertion is a bug in the stack: say where, then stop. */
#define LWIP_PLATFORM_DIAG(x) \
  do {                        \
    printf x;                 \
  } while (0)
#define LWIP_PLATFORM_ASSERT(x)                                                             \
  do {                                                                                      \
    fprintf(stderr, "netaccel stack: lwIP assertion \"%s\" failed at %s:%d\n", x, __FILE__, \
            __LINE__);                                                                      \
    abort();                                                                                \
  } while (0)

#endif /* NETACCEL_LWIP_ARCH_CC_H */

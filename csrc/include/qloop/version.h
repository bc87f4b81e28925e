/* qloop/version.h - library version and build information. */
#ifndef QLOOP_VERSION_H
#define QLOOP_VERSION_H

#ifdef __cplusplus
extern "C" {
#endif

#define QLOOP_VERSION_MAJOR 0
#define QLOOP_VERSION_MINOR 1
#define QLOOP_VERSION_PATCH 0

/* cffi:begin */
/* The library version as "MAJOR.MINOR.PATCH".  Any thread. */
const char *ql_version(void);

/* Abort on misuse.  By default misuse (entering a running coroutine, yielding
 * outside one, unlocking a mutex one does not hold...) returns an error code.
 * With abort_on_misuse set, qloop prints a message naming the offender to
 * stderr and calls abort(), as QEMU does.  Process-wide; any thread. */
void ql_set_abort_on_misuse(int abort_on_misuse);
int ql_get_abort_on_misuse(void);
/* cffi:end */

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_VERSION_H */

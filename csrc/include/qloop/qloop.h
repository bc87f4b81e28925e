/*
 * qloop/qloop.h - the whole public C API of libqloop.
 *
 * Conventions (every header):
 *  - functions return 0 (or a documented non-negative value) on success and a
 *    negative errno on failure; constructors return NULL and set errno;
 *  - each function's comment says from where it may be called;
 *  - the library needs only libc and pthreads (link with -pthread).
 */
#ifndef QLOOP_QLOOP_H
#define QLOOP_QLOOP_H

#include "qloop/version.h"
#include "qloop/blocking.h"
#include "qloop/notifier.h"
#include "qloop/context.h"
#include "qloop/coroutine.h"
#include "qloop/thread-pool.h"
#include "qloop/task.h"
#include "qloop/aiocb.h"
#include "qloop/main-loop.h"

#endif /* QLOOP_QLOOP_H */

/*
 * qloop/aiocb.h - pooled control blocks for asynchronous requests (QEMU's
 * AIOPool / qemu_aio_get / qemu_aio_release).
 *
 * A driver describes its request type with a pool: the size of its control
 * block (a struct whose first member is a QLAIOCB) and how to cancel one.
 * ql_aio_get() hands out a block, reusing released ones; the driver later
 * calls ql_aio_complete() exactly once and ql_aio_release() when it is
 * done with the block.
 *
 *     typedef struct MyReq { QLAIOCB common; int fd; ... } MyReq;
 *     static QLAIOCBPool my_pool = QL_AIOCB_POOL_INIT(sizeof(MyReq), my_cancel);
 *     MyReq *r = (MyReq *)ql_aio_get(&my_pool, done_cb, opaque);
 *
 * A pool is not thread-safe: use it from one thread at a time (the thread
 * that runs the owning context, or under the caller's lock).
 */
#ifndef QLOOP_AIOCB_H
#define QLOOP_AIOCB_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */
typedef struct QLAIOCB QLAIOCB;
typedef struct QLAIOCBPool QLAIOCBPool;
/* Completion: ret is the request's result (>= 0 or a negative errno). */
typedef void QLAIOCBCompletionFunc(void *opaque, int ret);
/* Cancel: ask the driver to stop the request; the driver then completes it
 * (usually with -ECANCELED), now or later. */
typedef void QLAIOCBCancelFunc(QLAIOCB *acb);

/* New pool for blocks of aiocb_size bytes (at least sizeof(QLAIOCB); 0 means
 * exactly that).  cancel may be NULL (ql_aio_cancel then fails with
 * -ENOTSUP).  NULL + errno on failure.  Any thread. */
QLAIOCBPool *ql_aiocb_pool_new(size_t aiocb_size, QLAIOCBCancelFunc *cancel);
/* Free a pool made by ql_aiocb_pool_new() and its released blocks.  Blocks
 * still handed out must not be used afterwards (they are freed too). */
void ql_aiocb_pool_free(QLAIOCBPool *pool);
/* Drop the released blocks kept for reuse (also for static pools). */
void ql_aiocb_pool_trim(QLAIOCBPool *pool);

/* A block from the pool, zeroed past the QLAIOCB header, in flight, with
 * completion cb(opaque, ret).  Reuses a released block when there is one.
 * NULL + errno (ENOMEM) on failure. */
QLAIOCB *ql_aio_get(QLAIOCBPool *pool, QLAIOCBCompletionFunc *cb, void *opaque);
/* Run the completion callback (once): 0, or -EALREADY if the request was
 * completed before, -EINVAL if the block was released. */
int ql_aio_complete(QLAIOCB *acb, int ret);
/* Ask the pool's cancel function to cancel an in-flight request: 0,
 * -EALREADY if it already completed, -ENOTSUP without a cancel function,
 * -EINVAL if released. */
int ql_aio_cancel(QLAIOCB *acb);
/* Give the block back to its pool (whether or not it completed).
 * -EINVAL if it was released already. */
int ql_aio_release(QLAIOCB *acb);

QLAIOCBPool *ql_aio_pool(const QLAIOCB *acb);
void *ql_aio_opaque(const QLAIOCB *acb);
/* 1 while in flight (not completed), 0 once completed. */
int ql_aio_in_flight(const QLAIOCB *acb);
/* Blocks currently handed out by the pool (leak checks). */
size_t ql_aiocb_pool_in_use(const QLAIOCBPool *pool);
/* cffi:end */

enum {
    QL_AIOCB_IN_FLIGHT = 0,
    QL_AIOCB_COMPLETED = 1,
    QL_AIOCB_RELEASED = 2,
};

/* The common header of every control block (first member of the
 * driver's struct). */
struct QLAIOCB {
    QLAIOCBPool *pool;
    QLAIOCBCompletionFunc *cb;
    void *opaque;
    int state;                 /* QL_AIOCB_* */
    QLAIOCB *next_free;
};

struct QLAIOCBPool {
    size_t aiocb_size;
    QLAIOCBCancelFunc *cancel;
    QLAIOCB *free_list;        /* released blocks, reused first */
    size_t in_use;
    int dynamic;               /* made by ql_aiocb_pool_new() */
};

/* Static initialiser for a pool defined by a C driver. */
#define QL_AIOCB_POOL_INIT(size, cancel_fn) {(size), (cancel_fn), NULL, 0, 0}

#ifdef __cplusplus
}
#endif
#endif /* QLOOP_AIOCB_H */

/* Pooled control blocks for asynchronous requests (see qloop/aiocb.h). */
#include "qloop/aiocb.h"
#include "misuse.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static size_t block_size(const QLAIOCBPool *pool)
{
    return pool->aiocb_size < sizeof(QLAIOCB) ? sizeof(QLAIOCB) : pool->aiocb_size;
}

QLAIOCBPool *ql_aiocb_pool_new(size_t aiocb_size, QLAIOCBCancelFunc *cancel)
{
    QLAIOCBPool *pool = calloc(1, sizeof *pool);
    if (!pool) {
        errno = ENOMEM;
        return NULL;
    }
    pool->aiocb_size = aiocb_size;
    pool->cancel = cancel;
    pool->dynamic = 1;
    return pool;
}

void ql_aiocb_pool_trim(QLAIOCBPool *pool)
{
    QLAIOCB *acb;
    while ((acb = pool->free_list) != NULL) {
        pool->free_list = acb->next_free;
        free(acb);
    }
}

void ql_aiocb_pool_free(QLAIOCBPool *pool)
{
    if (!pool) {
        return;
    }
    ql_aiocb_pool_trim(pool);
    if (pool->dynamic) {
        free(pool);
    }
}

QLAIOCB *ql_aio_get(QLAIOCBPool *pool, QLAIOCBCompletionFunc *cb, void *opaque)
{
    size_t size = block_size(pool);
    QLAIOCB *acb = pool->free_list;
    if (acb) {
        pool->free_list = acb->next_free;
    } else {
        acb = malloc(size);
        if (!acb) {
            errno = ENOMEM;
            return NULL;
        }
    }
    memset(acb, 0, size);
    acb->pool = pool;
    acb->cb = cb;
    acb->opaque = opaque;
    acb->state = QL_AIOCB_IN_FLIGHT;
    pool->in_use++;
    return acb;
}

int ql_aio_complete(QLAIOCB *acb, int ret)
{
    if (acb->state == QL_AIOCB_RELEASED) {
        return ql__misuse(-EINVAL, "ql_aio_complete: control block already released");
    }
    if (acb->state == QL_AIOCB_COMPLETED) {
        return -EALREADY;
    }
    acb->state = QL_AIOCB_COMPLETED;
    if (acb->cb) {
        acb->cb(acb->opaque, ret);
    }
    return 0;
}

int ql_aio_cancel(QLAIOCB *acb)
{
    if (acb->state == QL_AIOCB_RELEASED) {
        return ql__misuse(-EINVAL, "ql_aio_cancel: control block already released");
    }
    if (acb->state == QL_AIOCB_COMPLETED) {
        return -EALREADY;
    }
    if (!acb->pool->cancel) {
        return -ENOTSUP;
    }
    acb->pool->cancel(acb);
    return 0;
}

int ql_aio_release(QLAIOCB *acb)
{
    if (acb->state == QL_AIOCB_RELEASED) {
        return ql__misuse(-EINVAL, "ql_aio_release: control block released twice");
    }
    QLAIOCBPool *pool = acb->pool;
    acb->state = QL_AIOCB_RELEASED;
    acb->next_free = pool->free_list;
    pool->free_list = acb;
    pool->in_use--;
    return 0;
}

QLAIOCBPool *ql_aio_pool(const QLAIOCB *acb)
{
    return acb->pool;
}

void *ql_aio_opaque(const QLAIOCB *acb)
{
    return acb->opaque;
}

int ql_aio_in_flight(const QLAIOCB *acb)
{
    return acb->state == QL_AIOCB_IN_FLIGHT;
}

size_t ql_aiocb_pool_in_use(const QLAIOCBPool *pool)
{
    return pool->in_use;
}

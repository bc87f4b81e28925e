/* AIOCB pools: recycling, completion once, cancel through the pool. */
#include "qltest.h"
#include "qloop/aiocb.h"
#include "qloop/context.h"

#include <errno.h>

typedef struct MyReq {
    QLAIOCB common;
    int payload[8];
    QLContext *ctx;
} MyReq;

static int completions, last_ret;
static void done(void *opaque, int ret)
{
    (*(int *)opaque)++;
    completions++;
    last_ret = ret;
}

static void complete_cancelled(void *opaque)
{
    ql_aio_complete(opaque, -ECANCELED);
}

/* Cancel completes later, from a BH, like a real driver. */
static void my_cancel(QLAIOCB *acb)
{
    MyReq *r = (MyReq *)acb;
    ql_bh_schedule_oneshot(r->ctx, complete_cancelled, acb, "cancel");
}

static QLAIOCBPool static_pool = QL_AIOCB_POOL_INIT(sizeof(MyReq), my_cancel);

static void test_aiocb_get_recycles_released_blocks(void)
{
    int n = 0;
    MyReq *a = (MyReq *)ql_aio_get(&static_pool, done, &n);
    QL_CHECK(a);
    QL_CHECK(ql_aio_pool(&a->common) == &static_pool);
    QL_CHECK(ql_aio_opaque(&a->common) == &n);
    QL_CHECK_EQ(a->payload[3], 0); /* zeroed */
    a->payload[3] = 42;
    QL_CHECK_EQ(ql_aiocb_pool_in_use(&static_pool), 1);
    QL_CHECK_EQ(ql_aio_release(&a->common), 0);
    QL_CHECK_EQ(ql_aiocb_pool_in_use(&static_pool), 0);
    MyReq *b = (MyReq *)ql_aio_get(&static_pool, done, &n);
    QL_CHECK(b == a);              /* same block, no malloc */
    QL_CHECK_EQ(b->payload[3], 0); /* zeroed again */
    ql_aio_release(&b->common);
    ql_aiocb_pool_trim(&static_pool);
}

static void test_aiocb_completion_runs_once(void)
{
    int n = 0;
    QLAIOCBPool *pool = ql_aiocb_pool_new(0, NULL);
    QLAIOCB *acb = ql_aio_get(pool, done, &n);
    QL_CHECK(ql_aio_in_flight(acb));
    QL_CHECK_EQ(ql_aio_complete(acb, 7), 0);
    QL_CHECK_EQ(ql_aio_complete(acb, 8), -EALREADY);
    QL_CHECK_EQ(n, 1);
    QL_CHECK_EQ(last_ret, 7);
    QL_CHECK(!ql_aio_in_flight(acb));
    QL_CHECK_EQ(ql_aio_cancel(acb), -EALREADY);
    QL_CHECK_EQ(ql_aio_release(acb), 0);
    QL_CHECK_EQ(ql_aio_release(acb), -EINVAL);
    ql_aiocb_pool_free(pool);
}

static void test_aiocb_cancel_calls_pool_cancel(void)
{
    int n = 0;
    QLContext *ctx = ql_context_new();
    MyReq *r = (MyReq *)ql_aio_get(&static_pool, done, &n);
    r->ctx = ctx;
    QL_CHECK_EQ(ql_aio_cancel(&r->common), 0);
    QL_CHECK_EQ(n, 0);
    QL_CHECK_EQ(ql_context_poll(ctx, true), 1);
    QL_CHECK_EQ(n, 1);
    QL_CHECK_EQ(last_ret, -ECANCELED);
    ql_aio_release(&r->common);
    ql_context_free(ctx);
    ql_aiocb_pool_trim(&static_pool);

    QLAIOCBPool *nocancel = ql_aiocb_pool_new(0, NULL);
    QLAIOCB *acb = ql_aio_get(nocancel, done, &n);
    QL_CHECK_EQ(ql_aio_cancel(acb), -ENOTSUP);
    ql_aio_release(acb);
    ql_aiocb_pool_free(nocancel);
}

QLTEST_MAIN(QLT(test_aiocb_get_recycles_released_blocks),
            QLT(test_aiocb_completion_runs_once),
            QLT(test_aiocb_cancel_calls_pool_cancel))

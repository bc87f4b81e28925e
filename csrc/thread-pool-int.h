/* Internal: the hook through which freeing a context shuts down its pools. */
#ifndef QLOOP_THREAD_POOL_INT_H
#define QLOOP_THREAD_POOL_INT_H

#include "qloop/context.h"

/* Called by ql_context_free() first, while BHs still work: shuts down every
 * pool delivering into ctx (see ql_thread_pool_free: queued requests are
 * cancelled, running ones waited for, workers joined, every outstanding
 * callback run), frees the default pool and leaves standalone pools
 * detached, to be freed by their owner.  Home thread. */
void ql__thread_pools_context_free(QLContext *ctx);

#endif

/*
 * Stackful coroutines: create, enter, yield, termination and the record
 * pool.  The stack pool is coroutine-stack.c; the register switch is one of
 * the backends behind coroutine-switch.h.
 *
 * Threads: every coroutine chain runs in one thread at a time.  Each thread
 * has a QLCoThread with a "leader" pseudo-coroutine standing for its own
 * stack; `current` is the running coroutine (the leader outside coroutines).
 * A suspended coroutine may be entered from another thread, so code that
 * resumes after a switch re-reads the thread state with ql__co_thread().
 */
#include "coroutine-int.h"
#include "coroutine-switch.h"
#include "misuse.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef QL_CO_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

/* Records kept per thread for reuse; beyond this they are freed. */
#define CO_POOL_MAX 256

const QLCoSwitchOps *ql__co_ops;

static pthread_once_t co_once = PTHREAD_ONCE_INIT;
static pthread_key_t co_key;
static __thread QLCoThread co_tls;
/* &co_tls once initialised, else NULL.  In the static TLS block (see
 * QL_TLS), so the fast path of ql__co_thread() is one load, without the
 * __tls_get_addr() call that co_tls itself needs in a shared object. */
static __thread __attribute__((tls_model("initial-exec"))) QLCoThread *co_tls_ptr;

static void co_thread_exit(void *opaque);
static void co_free(QLCoroutine *co);

static void co_global_init(void)
{
    const char *e = getenv("QLOOP_COROUTINE");

    ql__co_ops = &ql__co_switch_ucontext;
#ifdef QL_CO_HAVE_ASM
    if (!e || strcmp(e, "ucontext") != 0) {
        ql__co_ops = &ql__co_switch_asm;
    }
#else
    (void)e;
#endif
    if (pthread_key_create(&co_key, co_thread_exit) != 0) {
        abort();
    }
}

static void co_thread_init(QLCoThread *t)
{
    pthread_once(&co_once, co_global_init);
    memset(t, 0, sizeof *t);
    t->leader.stack = &t->leader_stack;
    t->leader.refcnt = 1;
    t->leader.started = true;
    t->current = &t->leader;
#ifdef QL_CO_TSAN
    /* Runs on the thread's own stack (a thread first touches coroutines
     * from outside any), so this is the thread's fiber. */
    t->leader_stack.tsan_fiber = __tsan_get_current_fiber();
#endif
    t->initialised = true;
    pthread_setspecific(co_key, t);
    co_tls_ptr = t;
}

/* Not inlined (and not analysed across calls): a coroutine that yields in
 * one thread and is resumed in another must not reuse a cached address of
 * the first thread's state. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noipa))
#else
__attribute__((noinline))
#endif
QLCoThread *ql__co_thread(void)
{
    QLCoThread *t = co_tls_ptr;

    if (__builtin_expect(t == NULL, 0)) {
        t = &co_tls;
        co_thread_init(t);
    }
    return t;
}

static void co_thread_exit(void *opaque)
{
    QLCoThread *t = opaque;
    QLCoroutine *co;

    while ((co = t->free_cos)) {
        t->free_cos = co->pool_next;
        co_free(co);
    }
    t->n_free_cos = 0;
    ql__co_stack_thread_exit(t);
    ql__co_overflow_thread_exit(t);
    t->initialised = false;
    co_tls_ptr = NULL; /* a later use in this thread initialises it again */
}

const char *ql_coroutine_backend(void)
{
    pthread_once(&co_once, co_global_init);
    return ql__co_ops->name;
}

/* ---- switching -------------------------------------------------------- */

#ifdef QL_CO_ASAN
/* After landing on a stack: tell ASan, and learn the bounds of the stack we
 * came from if unknown (a thread's own stack, first time). */
static void co_asan_finish(void *fake)
{
    const void *bottom;
    size_t size;
    QLCoThread *t;

    __sanitizer_finish_switch_fiber(fake, &bottom, &size);
    t = ql__co_thread();
    if (t->switch_from && !t->switch_from->asan_bottom) {
        t->switch_from->asan_bottom = bottom;
        t->switch_from->asan_size = size;
    }
}
#endif

static inline __attribute__((always_inline)) int co_switch(QLCoThread *t, QLCoroutine *from, QLCoroutine *to, int action)
{
    int ret;
#ifdef QL_CO_ASAN
    void *fake = NULL;

    t->switch_from = from;
    __sanitizer_start_switch_fiber(action == QL_CO_TERMINATE ? NULL : &fake,
                                   to->asan_bottom, to->asan_size);
#endif
    t->current = to;
#if defined(QL_CO_TSAN) && defined(QL_CO_HAVE_ASM)
    /* The ucontext backend switches fibers itself, between its sigsetjmp
     * and siglongjmp (TSan records jump buffers per fiber). */
    if (ql__co_ops == &ql__co_switch_asm) {
        ql__co_tsan_switch(to->stack);
    }
#endif
#ifdef QL_CO_HAVE_ASM
    /* A direct call is cheaper than the indirect one. */
    if (__builtin_expect(ql__co_ops == &ql__co_switch_asm, 1)) {
        ret = ql__asm_swap(from->stack, to->stack, action);
    } else
#endif
    ret = ql__co_ops->swap(from->stack, to->stack, action);
#ifdef QL_CO_ASAN
    co_asan_finish(fake);
#endif
    return ret;
}

void ql__coroutine_main(QLCoroutine *co)
{
    QLCoThread *t;
    QLCoroutine *caller;

#ifdef QL_CO_ASAN
    co_asan_finish(NULL);
#endif
    co->entry(co->opaque);
    t = ql__co_thread();
    caller = co->caller;
    co->caller = NULL;
    co_switch(t, co, caller, QL_CO_TERMINATE);
    abort(); /* a terminated coroutine is never resumed */
}

/* ---- records ---------------------------------------------------------- */

/* The stack's owner is gone: drop its TSan fiber (never the running one:
 * called after switching away from it, or for a coroutine never entered). */
static void co_stack_put(QLCoThread *t, QLCoStack *st)
{
#ifdef QL_CO_TSAN
    __tsan_destroy_fiber(st->tsan_fiber);
    st->tsan_fiber = NULL;
#endif
    ql__co_stack_put(t, st);
}

static void co_free(QLCoroutine *co)
{
    ql_timer_free(co->sleep_timer);
    free(co);
}

static void co_release(QLCoroutine *co)
{
    QLCoThread *t = ql__co_thread();

    if (t->n_free_cos < CO_POOL_MAX) {
        co->pool_next = t->free_cos;
        t->free_cos = co;
        t->n_free_cos++;
    } else {
        co_free(co);
    }
}

QLCoroutine *ql_coroutine_create_full(QLCoroutineFunc *entry, void *opaque, size_t stack_size)
{
    QLCoThread *t = ql__co_thread();
    QLCoroutine *co;
    QLCoStack *st;
    QLTimer *sleep_timer = NULL;
    size_t size = ql__co_stack_round(stack_size);

    if (!t->altstack) {
        ql__co_overflow_setup(t);
    }
    if (t->free_cos) {
        co = t->free_cos;
        t->free_cos = co->pool_next;
        t->n_free_cos--;
        sleep_timer = co->sleep_timer;
    } else {
        co = malloc(sizeof *co);
        if (!co) {
            errno = ENOMEM;
            return NULL;
        }
        co->sleep_timer = NULL;
    }
    st = ql__co_stack_get(t, size);
    if (!st) {
        int err = errno;
        co_release(co);
        errno = err;
        return NULL;
    }
    memset(co, 0, sizeof *co);
    co->sleep_timer = sleep_timer;
    co->entry = entry;
    co->opaque = opaque;
    co->refcnt = 1;
    co->stack_size = size;
    co->stack = st;
    st->co = co;
#ifdef QL_CO_ASAN
    co->asan_bottom = st->base;
    co->asan_size = st->size;
    /* A recycled stack still carries the poisoned redzones of the frames
     * of the coroutine that ended on it. */
    __asan_unpoison_memory_region(st->base, st->size);
#endif
#ifdef QL_CO_TSAN
    st->tsan_fiber = __tsan_create_fiber(0);
#endif
    ql__co_ops->prepare(st, co);
    return co;
}

QLCoroutine *ql_coroutine_create(QLCoroutineFunc *entry, void *opaque)
{
    return ql_coroutine_create_full(entry, opaque, 0);
}

void ql_coroutine_ref(QLCoroutine *co)
{
    __atomic_fetch_add(&co->refcnt, 1, __ATOMIC_RELAXED);
}

void ql_coroutine_unref(QLCoroutine *co)
{
    unsigned left = __atomic_sub_fetch(&co->refcnt, 1, __ATOMIC_ACQ_REL);

    if (left == 0 || (left == 1 && !co->started)) {
        /* Finished, or never entered and nobody else holds it (so nothing
         * can run it any more). */
        if (co->stack) {
            co_stack_put(ql__co_thread(), co->stack);
            co->stack = NULL;
        }
        co_release(co);
    }
}

/* Entry returned: recycle the stack, and the record unless referenced. */
static void co_terminated(QLCoThread *t, QLCoroutine *co)
{
    if (co->locks_held) {
        ql__misuse(-EDEADLK, "Co-routine terminated holding %d lock(s)", co->locks_held);
    }
    co_stack_put(t, co->stack);
    co->stack = NULL;
    __atomic_store_n(&co->finished, true, __ATOMIC_RELEASE);
    if (__atomic_sub_fetch(&co->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
        co_release(co);
    }
}

/* ---- enter / yield ---------------------------------------------------- */

static int co_check_enter(QLCoroutine *co)
{
    const char *sched = __atomic_load_n(&co->scheduled, __ATOMIC_ACQUIRE);

    if (__atomic_load_n(&co->finished, __ATOMIC_ACQUIRE)) {
        return ql__misuse(-EINVAL, "Co-routine entered after it finished");
    }
    if (sched) {
        return ql__misuse(-EALREADY, "Co-routine was already scheduled in '%s'", sched);
    }
    if (co->wakeup_queued) {
        return ql__misuse(-EALREADY, "Co-routine was already scheduled in 'ql_co_wake'");
    }
    if (co->caller) {
        return ql__misuse(-EBUSY, "Co-routine re-entered recursively");
    }
    return 0;
}

int ql__coroutine_enter_ctx(QLContext *ctx, QLCoroutine *co)
{
    QLCoThread *t = ql__co_thread();
    QLCoroutine *self = t->current;
    QLCoroutine *pending, *to;
    int err = co_check_enter(co);

    if (err) {
        return err;
    }
    if (!t->altstack) {
        ql__co_overflow_setup(t);
    }
    /* `pending` is a FIFO (linked through wakeup_next) of coroutines to run
     * before returning: co, then whatever the ones that ran woke. */
    co->wakeup_next = NULL;
    pending = co;
    while ((to = pending)) {
        int action;

        pending = to->wakeup_next;
        to->wakeup_next = NULL;
        to->wakeup_queued = false;
        if (to != co && co_check_enter(to) < 0) {
            continue;
        }
        to->caller = self;
        to->started = true;
        /* Pairs with the acquire load in ql_co_wake(). */
        __atomic_store_n(&to->ctx, ctx, __ATOMIC_RELEASE);
        /* `to` comes back to us (its caller) in this same thread. */
        action = co_switch(t, self, to, QL_CO_ENTER);
        if (to->wakeup_head) {
            /* Depth-first: what `to` woke runs before older pending ones. */
            to->wakeup_tail->wakeup_next = pending;
            pending = to->wakeup_head;
            to->wakeup_head = to->wakeup_tail = NULL;
        }
        if (action == QL_CO_TERMINATE) {
            co_terminated(t, to);
        }
    }
    return 0;
}

int ql_coroutine_enter(QLCoroutine *co)
{
    return ql__coroutine_enter_ctx(ql_context_current(), co);
}

int ql_coroutine_enter_if_inactive(QLCoroutine *co)
{
    if (ql_coroutine_entered(co)) {
        return 0;
    }
    return ql_coroutine_enter(co);
}

static inline void co_yield(QLCoThread *t)
{
    QLCoroutine *self = t->current;
    QLCoroutine *to = self->caller;

    if (self->hook_leave) {
        self->hook_leave(self, self->user_data);
    }
    self->caller = NULL;
    co_switch(t, self, to, QL_CO_YIELD);
    /* Re-entered: `self` is still us (a local of our own stack). */
    if (self->hook_resume) {
        self->hook_resume(self, self->user_data);
    }
}

void ql__coroutine_yield(void)
{
    co_yield(ql__co_thread());
}

int ql_coroutine_yield(void)
{
    QLCoThread *t = ql__co_thread();

    if (t->current == &t->leader) {
        return ql__misuse(-EPERM, "Co-routine is yielding to no one");
    }
    co_yield(t);
    return 0;
}

int ql__coroutine_defer_wake(QLCoroutine *co)
{
    QLCoroutine *self = ql__co_thread()->current;

    if (co->wakeup_queued) {
        return ql__misuse(-EALREADY, "Co-routine was already scheduled in 'ql_co_wake'");
    }
    co->wakeup_queued = true;
    co->wakeup_next = NULL;
    if (self->wakeup_tail) {
        self->wakeup_tail->wakeup_next = co;
    } else {
        self->wakeup_head = co;
    }
    self->wakeup_tail = co;
    return 0;
}

/* ---- queries ---------------------------------------------------------- */

QLCoroutine *ql_coroutine_self(void)
{
    QLCoThread *t = ql__co_thread();

    return t->current == &t->leader ? NULL : t->current;
}

bool ql_in_coroutine(void)
{
    QLCoThread *t = ql__co_thread();

    return t->current != &t->leader;
}

bool ql_coroutine_entered(QLCoroutine *co)
{
    return co->caller != NULL;
}

bool ql_coroutine_finished(QLCoroutine *co)
{
    return __atomic_load_n(&co->finished, __ATOMIC_ACQUIRE);
}

size_t ql_coroutine_stack_size(QLCoroutine *co)
{
    return co->stack_size;
}

QLContext *ql_coroutine_get_context(QLCoroutine *co)
{
    return __atomic_load_n(&co->ctx, __ATOMIC_ACQUIRE);
}

void ql_coroutine_set_user_data(QLCoroutine *co, void *data)
{
    co->user_data = data;
}

void *ql_coroutine_get_user_data(QLCoroutine *co)
{
    return co->user_data;
}

void ql_coroutine_set_switch_hooks(QLCoroutine *co, QLCoroutineSwitchHook *leave,
                                   QLCoroutineSwitchHook *resume)
{
    co->hook_leave = leave;
    co->hook_resume = resume;
}

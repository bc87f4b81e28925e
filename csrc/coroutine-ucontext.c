/*
 * Coroutine switch backend: portable, on ucontext + sigsetjmp/siglongjmp.
 *
 * makecontext()/setcontext() run once per stack, to start a trampoline on
 * it; the trampoline records its own entry point with sigsetjmp() and jumps
 * straight back, so stack setup runs no user code.  Every later switch is
 * sigsetjmp(from, 0) + siglongjmp(to): savemask 0 means no signal-mask
 * system call per switch (swapcontext() would make one).  Starting a new
 * coroutine on the stack jumps to the recorded entry point again.
 *
 * Under ThreadSanitizer (QL_CO_TSAN) TSan checks every siglongjmp against
 * the sigsetjmp calls it saw in the current fiber, and each coroutine has
 * its own fiber: an entry point recorded once per stack would belong to
 * another fiber (TSan aborts on the jump).  There every coroutine starts
 * with its own makecontext() + setcontext() instead, in its own fiber, and
 * the fiber switch sits between the sigsetjmp that saves the current
 * context and the jump.
 */

/* The fortified longjmp refuses to jump to another stack. */
#undef _FORTIFY_SOURCE

#include "coroutine-switch.h"

#include <errno.h>
#include <stdlib.h>
#include <ucontext.h>

#ifdef QL_CO_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

/* Hand-over from uc_stack_init to the trampoline it starts (same thread). */
static __thread QLCoStack *uc_init_stack;
static __thread sigjmp_buf *uc_init_back;
#ifdef QL_CO_ASAN
static __thread void *uc_init_fake;
#endif

static void uc_trampoline(void)
{
#ifdef QL_CO_ASAN
    const void *bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(NULL, &bottom, &size);
#endif
    if (!sigsetjmp(uc_init_stack->start_env, 0)) {
#ifdef QL_CO_ASAN
        __sanitizer_start_switch_fiber(NULL, bottom, size);
#endif
        siglongjmp(*uc_init_back, 1);
    }
    /* A coroutine starts here (uc_swap to a fresh stack).  Nothing from
     * before the sigsetjmp is used: the coroutine being started is the
     * thread's current one. */
    ql__coroutine_main(ql__co_thread()->current);
}

#ifdef QL_CO_TSAN
static void uc_tsan_start(void)
{
    ql__coroutine_main(ql__co_thread()->current);
}
#endif

static int uc_stack_init(QLCoStack *st)
{
    ucontext_t uc;
    sigjmp_buf back;

#ifdef QL_CO_TSAN
    (void)st;
    return 0; /* uc_prepare does it per coroutine */
#endif
    if (getcontext(&uc) < 0) {
        return -errno;
    }
    uc.uc_link = NULL;
    uc.uc_stack.ss_sp = st->base;
    uc.uc_stack.ss_size = st->size;
    uc.uc_stack.ss_flags = 0;
    makecontext(&uc, uc_trampoline, 0);

    uc_init_stack = st;
    uc_init_back = &back;
    if (!sigsetjmp(back, 0)) {
#ifdef QL_CO_ASAN
        __sanitizer_start_switch_fiber(&uc_init_fake, st->base, st->size);
#endif
        setcontext(&uc);
        abort(); /* setcontext does not return on success */
    }
#ifdef QL_CO_ASAN
    __sanitizer_finish_switch_fiber(uc_init_fake, NULL, NULL);
#endif
    return 0;
}

static void uc_prepare(QLCoStack *st, QLCoroutine *co)
{
    (void)co;
    st->fresh = true;
#ifdef QL_CO_TSAN
    if (getcontext(&st->tsan_uc) < 0) {
        abort(); /* cannot fail on Linux */
    }
    st->tsan_uc.uc_link = NULL;
    st->tsan_uc.uc_stack.ss_sp = st->base;
    st->tsan_uc.uc_stack.ss_size = st->size;
    st->tsan_uc.uc_stack.ss_flags = 0;
    makecontext(&st->tsan_uc, uc_tsan_start, 0);
#endif
}

static int uc_swap(QLCoStack *from, QLCoStack *to, int action)
{
    int ret = sigsetjmp(from->env, 0);

    if (ret == 0) {
#ifdef QL_CO_TSAN
        ql__co_tsan_switch(to);
        if (to->fresh) {
            to->fresh = false;
            setcontext(&to->tsan_uc);
            abort();
        }
#endif
        if (to->fresh) {
            to->fresh = false;
            siglongjmp(to->start_env, action);
        }
        siglongjmp(to->env, action);
    }
    return ret;
}

const QLCoSwitchOps ql__co_switch_ucontext = {
    .name = "ucontext",
    .stack_init = uc_stack_init,
    .prepare = uc_prepare,
    .swap = uc_swap,
};

/*
 * Internal: the coroutine record, the stack descriptor and the per-thread
 * coroutine state shared by coroutine.c, the switch backends (their ops
 * table is in coroutine-switch.h), the stack pool and the synchronisation
 * primitives (co-lock.c, co-schedule.c, co-sleep.c).
 */
#ifndef QLOOP_COROUTINE_INT_H
#define QLOOP_COROUTINE_INT_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>

#include "qloop/coroutine.h"

#if defined(__SANITIZE_ADDRESS__)
#define QL_CO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QL_CO_ASAN 1
#endif
#endif

/* ThreadSanitizer follows one stack per thread unless told about switches:
 * with QL_CO_TSAN every coroutine gets a TSan fiber (created with the
 * coroutine, destroyed when it ends or is freed unstarted), each thread's
 * own stack keeps the thread's fiber, and every switch calls
 * __tsan_switch_to_fiber() right before control moves to the other stack.
 * The switch synchronises (flags 0): the coroutines of one chain run one
 * after the other, so what one did happens before what the next one does. */
#if defined(__SANITIZE_THREAD__)
#define QL_CO_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define QL_CO_TSAN 1
#endif
#endif
#ifdef QL_CO_TSAN
#include <sanitizer/tsan_interface.h>
#include <ucontext.h>
#endif

/* What a switch tells the coroutine it lands in. */
enum {
    QL_CO_YIELD = 1,     /* the coroutine yielded back to its caller */
    QL_CO_TERMINATE = 2, /* its entry function returned */
    QL_CO_ENTER = 3,     /* a caller entered it */
};

/*
 * One coroutine stack: a slice of a slab (coroutine-stack.c) laid out as
 * [guard page][usable stack, `size` bytes], growing down from base + size.
 * The descriptor also holds the switch backend's saved context, because that
 * context lives on (and is bound to) the stack.  Each thread's leader has a
 * descriptor with base == NULL for the thread's own stack.
 *
 * Ownership: whoever holds the stack (a live coroutine, or a pool under its
 * lock) owns every field.
 */
typedef struct QLCoStack {
    void *sp;                   /* asm backend: saved stack pointer (offset 0:
                                 * coroutine-asm.c relies on it) */
    void *base;                 /* lowest usable byte (just above the guard) */
    size_t size;                /* usable bytes */
    struct QLCoStack *next;     /* free-list link while pooled */
    QLCoroutine *co;            /* coroutine to start (ucontext trampoline) */
    bool started;               /* backend set up this stack (stack_init) */
    bool fresh;                 /* ucontext: next switch starts the trampoline */
    bool hot;                   /* pages possibly resident (not MADV_DONTNEED'ed) */
    bool guarded;               /* guard page installed */
    struct QLCoSlab *slab;      /* slab it belongs to (NULL for a leader) */
    sigjmp_buf env;             /* ucontext: saved context while switched out */
    sigjmp_buf start_env;       /* ucontext: trampoline entry point */
#ifdef QL_CO_TSAN
    /* TSan fiber of the coroutine that owns the stack (the thread's own
     * fiber for a leader); switches go to it.  NULL while pooled. */
    void *tsan_fiber;
    ucontext_t tsan_uc;         /* ucontext: start of the next coroutine */
#endif
} QLCoStack;

struct QLCoroutine {
    QLCoroutineFunc *entry;
    void *opaque;
    /* Who entered us; non-NULL while running or suspended in a nested
     * enter.  Owned by the thread running the coroutine chain. */
    QLCoroutine *caller;
    /* Context we last ran in.  Written by the enterer before the switch
     * (release), read by ql_co_wake from any thread (acquire). */
    QLContext *ctx;
    /* Name of who scheduled us (ql_co_schedule, sleep), NULL otherwise.
     * Set by compare-and-swap from any thread; cleared by the context's
     * scheduling BH or by ql_co_sleep_wake before the coroutine is entered. */
    const char *scheduled;
    /* Coroutines woken by us (ql_co_wake from inside us): they run when we
     * yield or end, in FIFO order.  Only touched by the thread running us. */
    QLCoroutine *wakeup_head;
    QLCoroutine *wakeup_tail;
    QLCoroutine *wakeup_next;   /* link in a wakeup list or enter's pending */
    bool wakeup_queued;         /* on a wakeup list or pending: not enterable */
    QLCoroutine *sched_next;    /* link in ctx->co_sched_head (lock-free) */
    QLContext *resched_ctx;     /* ql_co_reschedule_self target until the move */
    QLCoroutine *wait_next;     /* link in a wait queue (co-lock.c) */
    int wait_flags;             /* what we wait for (co-lock.c) */
    int locks_held;             /* CoMutex/CoRwlock holds; 0 at the end */
    /* ql_coroutine_ref() count + 1 while the coroutine has not finished;
     * whoever drops it to 0 recycles the record.  Atomic. */
    unsigned refcnt;
    bool finished;              /* entry returned */
    bool started;               /* entered at least once */
    size_t stack_size;          /* requested usable size */
    QLCoStack *stack;           /* NULL for the leader and once finished */
    void *user_data;
    /* Switch hooks (ql_coroutine_set_switch_hooks), run on this coroutine's
     * stack by ql__coroutine_yield(); set by the thread that owns it. */
    QLCoroutineSwitchHook *hook_leave;
    QLCoroutineSwitchHook *hook_resume;
    QLCoroutine *pool_next;     /* free-list link while pooled */
    /* co-sleep.c: timer kept with the record for the next sleep in the
     * same context and clock (survives pooling; freed with the record),
     * and the sleep in progress.  Touched by the home thread only. */
    QLTimer *sleep_timer;
    QLCoSleep *sleep_w;
#ifdef QL_CO_ASAN
    const void *asan_bottom;    /* stack bounds for the fiber annotations */
    size_t asan_size;
#endif
};

#ifdef QL_CO_TSAN
/* Tell TSan that control moves to the coroutine owning stack `to`: use
 * right before the switch, once nothing else is done on the current stack.
 * A macro, not a function: an instrumented function would enter in one
 * fiber and return in the other (unbalancing both shadow call stacks). */
#define ql__co_tsan_switch(to) __tsan_switch_to_fiber((to)->tsan_fiber, 0)
#endif

/* Per-thread coroutine state (coroutine.c). */
typedef struct QLCoThread {
    QLCoroutine leader;         /* pseudo-coroutine for the thread's stack */
    QLCoStack leader_stack;
    QLCoroutine *current;       /* running coroutine, &leader outside */
    QLCoroutine *switch_from;   /* who switched to us last (ASan bounds) */
    QLCoroutine *free_cos;      /* pooled records */
    unsigned n_free_cos;
    QLCoStack *free_stacks;     /* pooled hot stacks of this thread */
    unsigned n_free_stacks;
    bool initialised;
    bool altstack;              /* sigaltstack handled for this thread */
    void *altstack_mem;
    size_t altstack_size;
} QLCoThread;

/* The calling thread's state (created on first use).  Never inlined, so a
 * coroutine that resumed in another thread sees that thread's state: call
 * it again after every switch instead of caching the pointer. */
QLCoThread *ql__co_thread(void);

/* Runs the coroutine's body on its own stack; never returns.  Entered by
 * the backends on the first switch into a prepared stack. */
void ql__coroutine_main(QLCoroutine *co) __attribute__((noreturn));

/* Enter co in ctx (QEMU's qemu_aio_coroutine_enter): runs co and then the
 * coroutines it woke, depth-first, before returning. */
int ql__coroutine_enter_ctx(QLContext *ctx, QLCoroutine *co);
/* Queue co to run when the current coroutine yields or ends.  0, or
 * -EALREADY if co is queued already (misuse). */
int ql__coroutine_defer_wake(QLCoroutine *co);
/* Yield without the outside-a-coroutine check (caller checked). */
void ql__coroutine_yield(void);

/* ---- stacks (coroutine-stack.c) -------------------------------------- */

/* Usable size for a request: 0 -> default; rounded up to pages; >= 16 KiB. */
size_t ql__co_stack_round(size_t size);
/* A stack of exactly `size` usable bytes (ql__co_stack_round'ed), from the
 * pools or a slab.  NULL + errno (ENOMEM) on failure. */
QLCoStack *ql__co_stack_get(QLCoThread *t, size_t size);
/* Give a stack back (the coroutine on it has ended). */
void ql__co_stack_put(QLCoThread *t, QLCoStack *st);
/* Thread exit: move the thread's pooled stacks to the global pool. */
void ql__co_stack_thread_exit(QLCoThread *t);
/* Install the overflow handler (process) and an alternate signal stack
 * (calling thread) if not done yet. */
void ql__co_overflow_setup(QLCoThread *t);
/* Thread exit: drop the alternate signal stack installed by us. */
void ql__co_overflow_thread_exit(QLCoThread *t);

#endif /* QLOOP_COROUTINE_INT_H */

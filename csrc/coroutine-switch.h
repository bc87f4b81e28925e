/*
 * Internal: the contract of a coroutine switch backend.  A backend only moves
 * between stacks; it never runs user code except by starting
 * ql__coroutine_main() on a prepared stack.
 *
 *   stack_init  once per stack, after it was mapped: anything that must be
 *               built on the stack itself.  0 or -errno.
 *   prepare     make the next swap() into `st` start ql__coroutine_main(co)
 *               from scratch (called for every new coroutine on the stack).
 *   swap        save the running context into `from`, resume `to` with
 *               `action`; returns the action of the swap that later resumes
 *               `from`.  No system call, no allocation.
 */
#ifndef QLOOP_COROUTINE_SWITCH_H
#define QLOOP_COROUTINE_SWITCH_H

#include "coroutine-int.h"

typedef struct QLCoSwitchOps {
    const char *name;
    int (*stack_init)(QLCoStack *st);
    void (*prepare)(QLCoStack *st, QLCoroutine *co);
    int (*swap)(QLCoStack *from, QLCoStack *to, int action);
} QLCoSwitchOps;

/* Portable sigsetjmp/siglongjmp backend (coroutine-ucontext.c). */
extern const QLCoSwitchOps ql__co_switch_ucontext;

/* Hand-written register switch (coroutine-asm.c), where available. */
#if defined(__x86_64__) || defined(__aarch64__)
#define QL_CO_HAVE_ASM 1
extern const QLCoSwitchOps ql__co_switch_asm;
/* The asm backend's swap, called directly on the hot path. */
int ql__asm_swap(QLCoStack *from, QLCoStack *to, int action)
    __attribute__((visibility("hidden")));
#endif

/* Backend in use: chosen once per process when the first thread touches
 * coroutines (QLOOP_COROUTINE=ucontext forces the portable one), never
 * changed afterwards. */
extern const QLCoSwitchOps *ql__co_ops;

#endif /* QLOOP_COROUTINE_SWITCH_H */

/* Coroutine core: enter/yield, misuse errors, wakeup chaining, threads.
 * Stacks, pool and overflow: test-coroutine-stack.c.  Run once per switch
 * backend (QLOOP_COROUTINE). */
#include "qltest.h"
#include "qloop/coroutine.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* ---- helpers ---------------------------------------------------------- */

static char order[256];
static size_t norder;

static void mark(char c)
{
    if (norder < sizeof order - 1) {
        order[norder++] = c;
        order[norder] = 0;
    }
}

static void reset_order(void)
{
    norder = 0;
    order[0] = 0;
}

/* ---- basic enter / yield ---------------------------------------------- */

static void co_yield_twice(void *opaque)
{
    int *step = opaque;
    *step = 1;
    ql_coroutine_yield();
    *step = 2;
    ql_coroutine_yield();
    *step = 3;
}

static void test_coroutine_backend_is_named(void)
{
    const char *want = getenv("QLOOP_COROUTINE");
    const char *name = ql_coroutine_backend();

    if (want && strcmp(want, "ucontext") == 0) {
        QL_CHECK(strcmp(name, "ucontext") == 0);
    } else {
#if defined(__x86_64__)
        QL_CHECK(strcmp(name, "asm-x86_64") == 0);
#elif defined(__aarch64__)
        QL_CHECK(strcmp(name, "asm-aarch64") == 0);
#else
        QL_CHECK(strcmp(name, "ucontext") == 0);
#endif
    }
}

static void test_coroutine_create_does_not_run(void)
{
    int step = 0;
    QLCoroutine *co = ql_coroutine_create(co_yield_twice, &step);

    QL_CHECK(co != NULL);
    QL_CHECK_EQ(step, 0);
    QL_CHECK(!ql_coroutine_entered(co));
    QL_CHECK(!ql_coroutine_finished(co));
    QL_CHECK_EQ(ql_coroutine_enter(co), 0);
    QL_CHECK_EQ(ql_coroutine_enter(co), 0);
    QL_CHECK_EQ(ql_coroutine_enter(co), 0); /* finishes and frees */
    QL_CHECK_EQ(step, 3);
}

static void test_coroutine_enter_runs_until_yield(void)
{
    int step = 0;
    QLCoroutine *co = ql_coroutine_create(co_yield_twice, &step);

    ql_coroutine_ref(co);
    QL_CHECK_EQ(ql_coroutine_enter(co), 0);
    QL_CHECK_EQ(step, 1);
    QL_CHECK(!ql_coroutine_entered(co));
    QL_CHECK_EQ(ql_coroutine_enter(co), 0);
    QL_CHECK_EQ(step, 2);
    QL_CHECK_EQ(ql_coroutine_enter(co), 0);
    QL_CHECK_EQ(step, 3);
    QL_CHECK(ql_coroutine_finished(co));
    ql_coroutine_unref(co);
}

struct selfcheck {
    QLCoroutine *seen;
    bool in;
};

static void co_selfcheck(void *opaque)
{
    struct selfcheck *s = opaque;
    s->seen = ql_coroutine_self();
    s->in = ql_in_coroutine();
}

static void test_coroutine_self_and_in_coroutine(void)
{
    struct selfcheck s = {0};
    QLCoroutine *co = ql_coroutine_create(co_selfcheck, &s);

    QL_CHECK(ql_coroutine_self() == NULL);
    QL_CHECK(!ql_in_coroutine());
    ql_coroutine_ref(co);
    ql_coroutine_enter(co);
    QL_CHECK(s.seen == co);
    QL_CHECK(s.in);
    QL_CHECK(ql_coroutine_self() == NULL);
    ql_coroutine_unref(co);
}

static void test_coroutine_yield_outside_is_eperm(void)
{
    QL_CHECK_EQ(ql_coroutine_yield(), -EPERM);
}

static int reenter_err;

static void co_enter_self(void *opaque)
{
    (void)opaque;
    reenter_err = ql_coroutine_enter(ql_coroutine_self());
}

static void test_coroutine_reenter_running_returns_ebusy(void)
{
    QLCoroutine *co = ql_coroutine_create(co_enter_self, NULL);

    reenter_err = 0;
    QL_CHECK_EQ(ql_coroutine_enter(co), 0);
    QL_CHECK_EQ(reenter_err, -EBUSY);
}

/* outer enters inner; inner tries to enter outer (in its caller chain). */
static QLCoroutine *outer_co;
static int inner_err;
static bool inner_saw_outer_entered;

static void co_inner(void *opaque)
{
    (void)opaque;
    mark('i');
    inner_saw_outer_entered = ql_coroutine_entered(outer_co);
    inner_err = ql_coroutine_enter(outer_co);
    ql_coroutine_yield();
    mark('j');
}

static void co_outer(void *opaque)
{
    QLCoroutine *inner = opaque;
    mark('o');
    ql_coroutine_enter(inner);
    mark('p'); /* inner yielded: back right after our enter call */
    ql_coroutine_enter(inner);
    mark('q');
}

static void test_coroutine_nested_enter_returns_to_outer(void)
{
    QLCoroutine *inner = ql_coroutine_create(co_inner, NULL);

    reset_order();
    outer_co = ql_coroutine_create(co_outer, inner);
    QL_CHECK_EQ(ql_coroutine_enter(outer_co), 0);
    QL_CHECK(strcmp(order, "oipjq") == 0);
    QL_CHECK(inner_saw_outer_entered);
    QL_CHECK_EQ(inner_err, -EBUSY);
}

static void co_nothing(void *opaque)
{
    (void)opaque;
}

static void test_coroutine_enter_finished_returns_einval(void)
{
    QLCoroutine *co = ql_coroutine_create(co_nothing, NULL);

    ql_coroutine_ref(co);
    QL_CHECK_EQ(ql_coroutine_enter(co), 0);
    QL_CHECK(ql_coroutine_finished(co));
    QL_CHECK_EQ(ql_coroutine_enter(co), -EINVAL);
    QL_CHECK_EQ(ql_coroutine_enter_if_inactive(co), -EINVAL);
    ql_coroutine_unref(co);
}

static QLCoroutine *eii_target;
static int eii_ret;

static void co_enter_if_inactive_self(void *opaque)
{
    int *n = opaque;
    (*n)++;
    eii_ret = ql_coroutine_enter_if_inactive(eii_target); /* it is us: no-op */
    ql_coroutine_yield();
    (*n)++;
}

/* Coroutines entering coroutines 128 deep: each enter returns to the
 * coroutine that made it, and every level ends. */
#define NEST_MAX 128

struct nest {
    int depth;
    int entered;
    int returned;
    int wrong_self;
};

static void co_nest(void *opaque)
{
    struct nest *n = opaque;

    n->entered++;
    if (++n->depth < NEST_MAX) {
        QLCoroutine *me = ql_coroutine_self();
        ql_coroutine_enter(ql_coroutine_create(co_nest, n));
        if (ql_coroutine_self() != me) {
            n->wrong_self++;
        }
    }
    n->returned++;
}

static void test_coroutine_nested_128_deep_returns_level_by_level(void)
{
    struct nest n = {0, 0, 0, 0};

    QL_CHECK_EQ(ql_coroutine_enter(ql_coroutine_create(co_nest, &n)), 0);
    QL_CHECK_EQ(n.entered, NEST_MAX);
    QL_CHECK_EQ(n.returned, NEST_MAX);
    QL_CHECK_EQ(n.wrong_self, 0);
    QL_CHECK(!ql_in_coroutine());
}

static void test_coroutine_enter_if_inactive(void)
{
    int n = 0;
    QLCoroutine *co = ql_coroutine_create(co_enter_if_inactive_self, &n);

    eii_target = co;
    eii_ret = 1;
    QL_CHECK_EQ(ql_coroutine_enter_if_inactive(co), 0);
    QL_CHECK_EQ(n, 1);
    QL_CHECK_EQ(eii_ret, 0);
    QL_CHECK_EQ(ql_coroutine_enter_if_inactive(co), 0);
    QL_CHECK_EQ(n, 2);
}

static void test_coroutine_unref_unentered_frees(void)
{
    /* Leak-checked under valgrind: the record and stack are recycled. */
    QLCoroutine *co = ql_coroutine_create(co_nothing, NULL);
    ql_coroutine_ref(co);
    ql_coroutine_unref(co);
    QL_CHECK(co != NULL);
}

static void test_coroutine_user_data_and_context(void)
{
    int x;
    QLCoroutine *co = ql_coroutine_create(co_nothing, NULL);

    QL_CHECK(ql_coroutine_get_user_data(co) == NULL);
    ql_coroutine_set_user_data(co, &x);
    QL_CHECK(ql_coroutine_get_user_data(co) == &x);
    QL_CHECK(ql_coroutine_get_context(co) == NULL);
    ql_coroutine_ref(co);
    ql_coroutine_unref(co);
}

/* ---- wakeups (ql_co_wake from coroutines) ----------------------------- */

static QLCoroutine *wk[4];

static void co_wake_bc(void *opaque)
{
    (void)opaque;
    mark('a');
    ql_co_wake(wk[1]);
    ql_co_wake(wk[2]);
    mark('A'); /* nothing ran yet: wakes are deferred until we yield */
    ql_coroutine_yield();
    mark('z');
}

static void co_wake_d(void *opaque)
{
    (void)opaque;
    mark('b');
    ql_co_wake(wk[3]);
    ql_coroutine_yield();
}

static void co_mark_c(void *opaque)
{
    (void)opaque;
    mark('c');
}

static void co_mark_d(void *opaque)
{
    (void)opaque;
    mark('d');
}

static void test_coroutine_wake_from_coroutine_runs_after_yield_depth_first(void)
{
    reset_order();
    wk[0] = ql_coroutine_create(co_wake_bc, NULL);
    wk[1] = ql_coroutine_create(co_wake_d, NULL);
    wk[2] = ql_coroutine_create(co_mark_c, NULL);
    wk[3] = ql_coroutine_create(co_mark_d, NULL);
    QL_CHECK_EQ(ql_coroutine_enter(wk[0]), 0);
    /* a woke b and c; b woke d, which runs before c (depth first); all
     * inside the one enter call. */
    QL_CHECK(strcmp(order, "aAbdc") == 0);
    ql_coroutine_enter(wk[1]);
    ql_coroutine_enter(wk[0]);
    QL_CHECK(strcmp(order, "aAbdcz") == 0);
}

static int twice_ret[3];

static void co_wake_twice(void *opaque)
{
    QLCoroutine *target = opaque;
    twice_ret[0] = ql_co_wake(target);
    twice_ret[1] = ql_co_wake(target);
    twice_ret[2] = ql_coroutine_enter(target); /* queued: not enterable */
}

static void test_coroutine_wake_twice_before_yield_is_ealready(void)
{
    QLCoroutine *c = ql_coroutine_create(co_mark_c, NULL);

    reset_order();
    ql_coroutine_enter(ql_coroutine_create(co_wake_twice, c));
    QL_CHECK_EQ(twice_ret[0], 0);
    QL_CHECK_EQ(twice_ret[1], -EALREADY);
    QL_CHECK_EQ(twice_ret[2], -EALREADY);
    QL_CHECK(strcmp(order, "c") == 0); /* ran once */
}

static void test_coroutine_wake_outside_coroutine_enters_now(void)
{
    QLCoroutine *co = ql_coroutine_create(co_mark_c, NULL);

    reset_order();
    QL_CHECK_EQ(ql_co_wake(co), 0);
    QL_CHECK(strcmp(order, "c") == 0);
}

/* F218: two coroutines wake each other 25,000 times inside one enter. */
static QLCoroutine *pp[2];
static int pp_count[2];
static uintptr_t pp_sp[2][2]; /* stack address at first and last round */

static void co_pingpong(void *opaque)
{
    int me = (int)(intptr_t)opaque;
    volatile char here;

    for (int i = 0; i < 25000; i++) {
        pp_sp[me][i == 0 ? 0 : 1] = (uintptr_t)&here;
        pp_count[me]++;
        ql_co_wake(pp[!me]);
        ql_coroutine_yield();
    }
}

static void test_coroutine_wakeups_chain_without_stack_growth(void)
{
    pp_count[0] = pp_count[1] = 0;
    pp[0] = ql_coroutine_create(co_pingpong, (void *)(intptr_t)0);
    pp[1] = ql_coroutine_create(co_pingpong, (void *)(intptr_t)1);
    ql_coroutine_ref(pp[0]);
    ql_coroutine_ref(pp[1]);
    QL_CHECK_EQ(ql_coroutine_enter(pp[0]), 0);
    QL_CHECK_EQ(pp_count[0], 25000);
    QL_CHECK_EQ(pp_count[1], 25000);
    QL_CHECK_EQ(pp_sp[0][0], pp_sp[0][1]);
    QL_CHECK_EQ(pp_sp[1][0], pp_sp[1][1]);
    /* pp[0] ended after its last round; pp[1] waits after its last wake. */
    QL_CHECK(ql_coroutine_finished(pp[0]));
    QL_CHECK_EQ(ql_coroutine_enter(pp[1]), 0);
    QL_CHECK(ql_coroutine_finished(pp[1]));
    ql_coroutine_unref(pp[0]);
    ql_coroutine_unref(pp[1]);
}

/* ---- threads ---------------------------------------------------------- */

/* gettid(), not pthread_self(): glibc declares the latter const, so the
 * compiler may reuse its value across the yield. */
static pid_t tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

struct migrate {
    pid_t where[3];
    QLCoroutine *self[3];
};

static void co_migrate(void *opaque)
{
    struct migrate *m = opaque;
    for (int i = 0; i < 3; i++) {
        m->where[i] = tid();
        m->self[i] = ql_coroutine_self();
        if (i < 2) {
            ql_coroutine_yield();
        }
    }
}

static pid_t entering_tid;

static void *enter_in_thread(void *co)
{
    int r;

    entering_tid = tid();
    r = ql_coroutine_enter(co);
    /* Inside this thread, outside coroutines again. */
    if (ql_in_coroutine()) {
        r = -1;
    }
    return (void *)(intptr_t)r;
}

/* ---- switch hooks ----------------------------------------------------- */

static void hook_leave(QLCoroutine *co, void *user_data)
{
    QL_CHECK(ql_coroutine_self() == co); /* still on the coroutine's side */
    QL_CHECK(user_data == &order);
    mark('L');
}

static void hook_resume(QLCoroutine *co, void *user_data)
{
    QL_CHECK(ql_coroutine_self() == co);
    QL_CHECK(user_data == &order);
    mark('R');
}

static QLCoMutex *hook_mutex;

static void co_hooked(void *opaque)
{
    (void)opaque;
    mark('a');
    ql_coroutine_yield();
    mark('b');
    ql_co_mutex_lock(hook_mutex); /* waits: held by the test's other coroutine */
    mark('c');
    ql_co_mutex_unlock(hook_mutex);
}

static void co_hold_mutex(void *opaque)
{
    (void)opaque;
    ql_co_mutex_lock(hook_mutex);
    ql_coroutine_yield();
    ql_co_mutex_unlock(hook_mutex);
}

static void test_coroutine_switch_hooks_run_around_every_yield(void)
{
    QLCoroutine *holder, *co;

    reset_order();
    hook_mutex = ql_co_mutex_new();
    holder = ql_coroutine_create(co_hold_mutex, NULL);
    ql_coroutine_enter(holder); /* takes the mutex, yields; no hooks set */
    co = ql_coroutine_create(co_hooked, NULL);
    ql_coroutine_set_user_data(co, &order);
    ql_coroutine_set_switch_hooks(co, hook_leave, hook_resume);
    ql_coroutine_enter(co);     /* first entry: no resume hook */
    QL_CHECK(strcmp(order, "aL") == 0);
    ql_coroutine_enter(co);     /* resumes, then waits for the mutex */
    QL_CHECK(strcmp(order, "aLRbL") == 0);
    ql_coroutine_enter(holder); /* unlock hands over; co runs and ends */
    QL_CHECK(strcmp(order, "aLRbLRc") == 0); /* no hook at termination */
    ql_co_mutex_free(hook_mutex);
}

static void test_coroutine_resumes_in_entering_thread(void)
{
    struct migrate m;
    QLCoroutine *co = ql_coroutine_create(co_migrate, &m);
    pthread_t th;
    void *r;

    ql_coroutine_ref(co);
    ql_coroutine_enter(co);
    pthread_create(&th, NULL, enter_in_thread, co);
    pthread_join(th, &r);
    QL_CHECK_EQ((intptr_t)r, 0);
    ql_coroutine_enter(co);
    QL_CHECK(ql_coroutine_finished(co));
    QL_CHECK_EQ(m.where[0], tid());
    QL_CHECK_EQ(m.where[1], entering_tid);
    QL_CHECK_EQ(m.where[2], tid());
    QL_CHECK(m.self[0] == co && m.self[1] == co && m.self[2] == co);
    QL_CHECK(!ql_in_coroutine());
    ql_coroutine_unref(co);
}

static void *lifecycles_in_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++) {
        int step = 0;
        QLCoroutine *co = ql_coroutine_create(co_yield_twice, &step);
        if (!co) {
            return (void *)1;
        }
        ql_coroutine_enter(co);
        ql_coroutine_enter(co);
        ql_coroutine_enter(co);
    }
    return NULL;
}

static void test_coroutine_threads_run_their_own_coroutines(void)
{
    pthread_t th[4];
    void *r;
    int bad = 0;

    for (int i = 0; i < 4; i++) {
        pthread_create(&th[i], NULL, lifecycles_in_thread, NULL);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], &r);
        bad += r != NULL;
    }
    QL_CHECK_EQ(bad, 0);
}

QLTEST_MAIN(QLT(test_coroutine_backend_is_named),
            QLT(test_coroutine_create_does_not_run),
            QLT(test_coroutine_enter_runs_until_yield),
            QLT(test_coroutine_self_and_in_coroutine),
            QLT(test_coroutine_yield_outside_is_eperm),
            QLT(test_coroutine_reenter_running_returns_ebusy),
            QLT(test_coroutine_nested_enter_returns_to_outer),
            QLT(test_coroutine_enter_finished_returns_einval),
            QLT(test_coroutine_enter_if_inactive),
            QLT(test_coroutine_unref_unentered_frees),
            QLT(test_coroutine_user_data_and_context),
            QLT(test_coroutine_wake_from_coroutine_runs_after_yield_depth_first),
            QLT(test_coroutine_wake_twice_before_yield_is_ealready),
            QLT(test_coroutine_wake_outside_coroutine_enters_now),
            QLT(test_coroutine_wakeups_chain_without_stack_growth),
            QLT(test_coroutine_switch_hooks_run_around_every_yield),
            QLT(test_coroutine_resumes_in_entering_thread),
            QLT(test_coroutine_nested_128_deep_returns_level_by_level),
            QLT(test_coroutine_threads_run_their_own_coroutines))

/* Coroutine stacks: sizes, slab allocation (100k suspended coroutines),
 * pooling and memory give-back, guard pages and the overflow report, fault
 * chaining.  Crashes happen in child processes (this executable re-run on
 * one test with QLTEST_CHILD=1).  Run once per switch backend. */
#include "qltest.h"
#include "qloop/coroutine.h"
#include "qloop/version.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* Under ThreadSanitizer every coroutine is a TSan fiber, which maps its own
 * shadow call stack and trace: the process's mapping count and memory then
 * say more about TSan than about the stack pool, so the tests that measure
 * them scale down or skip that check. */
#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

static void co_nothing(void *opaque)
{
    (void)opaque;
}

static void co_yield_twice(void *opaque)
{
    int *step = opaque;
    *step = 1;
    ql_coroutine_yield();
    *step = 2;
    ql_coroutine_yield();
    *step = 3;
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

static int count_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0, c;

    if (!f) {
        return -1;
    }
    while ((c = fgetc(f)) != EOF) {
        n += c == '\n';
    }
    fclose(f);
    return n;
}

static void test_coroutine_stack_size_rounded_with_minimum(void)
{
    long page = sysconf(_SC_PAGESIZE);
    QLCoroutine *a = ql_coroutine_create_full(co_nothing, NULL, 1);
    QLCoroutine *b = ql_coroutine_create_full(co_nothing, NULL, 100000);
    QLCoroutine *c = ql_coroutine_create(co_nothing, NULL);
    const char *env = getenv("QLOOP_STACK_SIZE");

    QL_CHECK(a && b && c);
    QL_CHECK_EQ(ql_coroutine_stack_size(a), 16 * 1024);
    QL_CHECK_EQ(ql_coroutine_stack_size(b), (100000 + page - 1) / page * page);
    QL_CHECK_EQ(ql_coroutine_stack_size(c), ql_coroutine_default_stack_size());
    if (!env) {
        QL_CHECK_EQ(ql_coroutine_default_stack_size(), 256 * 1024);
    }
    ql_coroutine_enter(a);
    ql_coroutine_enter(b);
    ql_coroutine_enter(c);
}

/* Deep recursion that needs about `depth` KiB of stack. */
static int __attribute__((noinline)) burn(int depth)
{
    volatile char buf[1000];
    buf[0] = (char)depth;
    if (depth <= 0) {
        return buf[0];
    }
    return burn(depth - 1) + buf[0];
}

static void co_burn(void *opaque)
{
    *(int *)opaque = burn(*(int *)opaque);
}

static void test_coroutine_custom_stack_size_is_usable(void)
{
    /* 1 MiB stack, ~600 KiB used: more than the default would hold. */
    int depth = 600;
    QLCoroutine *co = ql_coroutine_create_full(co_burn, &depth, 1 << 20);

    QL_CHECK(co != NULL);
    QL_CHECK_EQ(ql_coroutine_enter(co), 0);
}

/* ---- stacks and pool -------------------------------------------------- */

static void test_coroutine_lifecycle_reuses_stacks(void)
{
    int before, after;

    lifecycles_in_thread(NULL); /* warm the pools */
    before = count_maps();
    for (int i = 0; i < 10; i++) {
        QL_CHECK(lifecycles_in_thread(NULL) == NULL);
    }
    after = count_maps();
    QL_CHECK(before > 0);
    if (!UNDER_TSAN) {
        QL_CHECK_EQ(after, before);
    }
}

static void co_yield_once(void *opaque)
{
    (void)opaque;
    ql_coroutine_yield();
}

static void test_coroutine_100k_suspended(void)
{
    int n = 100000;
    size_t size = RUNNING_ON_VALGRIND ? 16 * 1024 : 0;
    QLCoroutine **cos = malloc(n * sizeof *cos);
    int maps;

    QL_CHECK(cos != NULL);
    if (getenv("QLOOP_STACK_GUARD")) {
        n = 1000; /* the mprotect fallback is bounded by max_map_count */
    }
    if (RUNNING_ON_VALGRIND || UNDER_TSAN) {
        n = 2000; /* valgrind tracks every stack, TSan maps ~1 MiB per
                   * fiber: keep the run short */
    }
    for (int i = 0; i < n; i++) {
        cos[i] = ql_coroutine_create_full(co_yield_once, NULL, size);
        if (!cos[i]) {
            fprintf(stderr, "  create %d failed: %s\n", i, strerror(errno));
        }
        QL_CHECK(cos[i] != NULL);
        QL_CHECK_EQ(ql_coroutine_enter(cos[i]), 0);
    }
    maps = count_maps();
    QL_CHECK(maps < 30000);
    for (int i = 0; i < n; i++) {
        QL_CHECK_EQ(ql_coroutine_enter(cos[i]), 0);
    }
    free(cos);
}

/* ---- subprocess tests ------------------------------------------------- */

/* Run this executable on test `name` with QLTEST_CHILD=1 and `env`
 * ("NAME=value" or NULL); capture stderr into buf.  Returns the wait
 * status. */
static int run_child(const char *name, const char *env, char *buf, size_t len)
{
    int fds[2];
    pid_t pid;
    int status;
    size_t got = 0;
    ssize_t r;

    /* Under valgrind /proc/self/exe is the tool; readlink gives us. */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);

    if (n <= 0 || pipe(fds) < 0) {
        return -1;
    }
    exe[n] = 0;
    pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        setenv("QLTEST_CHILD", "1", 1);
        if (env) {
            putenv((char *)env);
        }
        execl(exe, "child", name, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    while (got + 1 < len && (r = read(fds[0], buf + got, len - 1 - got)) > 0) {
        got += (size_t)r;
    }
    buf[got] = 0;
    close(fds[0]);
    waitpid(pid, &status, 0);
    return status;
}

static int overflow_depth;

static void test_coroutine_zz_child_overflow(void)
{
    QLCoroutine *co;

    if (!getenv("QLTEST_CHILD")) {
        return;
    }
    /* No core file for the expected crash. */
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl);
    overflow_depth = 1000; /* ~1 MB into a 64 KiB stack */
    co = ql_coroutine_create_full(co_burn, &overflow_depth, 64 * 1024);
    ql_coroutine_enter(co);
    _exit(0); /* not reached */
}

static void check_overflow_child(const char *env)
{
    char buf[4096];
    int st = run_child("test_coroutine_zz_child_overflow", env, buf, sizeof buf);

    if (!strstr(buf, "qloop: coroutine stack overflow (stack size 65536 bytes)")) {
        fprintf(stderr, "  child stderr: %s\n", buf);
    }
    QL_CHECK(strstr(buf, "qloop: coroutine stack overflow (stack size 65536 bytes)") != NULL);
    QL_CHECK(WIFSIGNALED(st));
    QL_CHECK_EQ(WTERMSIG(st), SIGSEGV);
}

static void test_coroutine_stack_overflow_reported(void)
{
    if (getenv("QLTEST_CHILD")) {
        return;
    }
    check_overflow_child(NULL);
}

static void test_coroutine_stack_overflow_reported_with_mprotect_guard(void)
{
    if (getenv("QLTEST_CHILD")) {
        return;
    }
    check_overflow_child("QLOOP_STACK_GUARD=mprotect");
}

static void test_coroutine_zz_child_mprotect_limit(void)
{
    int n = 0;

    if (!getenv("QLTEST_CHILD")) {
        return;
    }
    for (;;) {
        QLCoroutine *co = ql_coroutine_create_full(co_yield_once, NULL, 16 * 1024);
        if (!co) {
            fprintf(stderr, "created %d errno %d\n", n, errno);
            _exit(errno == ENOMEM ? 0 : 1);
        }
        ql_coroutine_enter(co);
        n++;
    }
}

static void test_coroutine_mprotect_guard_reports_enomem_at_map_limit(void)
{
    char buf[4096];
    int st, n = 0, err = -1;

    if (getenv("QLTEST_CHILD") || RUNNING_ON_VALGRIND || UNDER_TSAN) {
        return; /* under TSan, TSan's own mappings hit the limit first */
    }
    st = run_child("test_coroutine_zz_child_mprotect_limit", "QLOOP_STACK_GUARD=mprotect",
                   buf, sizeof buf);
    QL_CHECK(WIFEXITED(st));
    QL_CHECK_EQ(WEXITSTATUS(st), 0);
    QL_CHECK_EQ(sscanf(buf, "created %d errno %d", &n, &err), 2);
    QL_CHECK_EQ(err, ENOMEM);
    QL_CHECK(n > 10000);
}


/* A fault that is not on a guard page goes to the handler that was there
 * before the first coroutine (here: one that exits with status 3). */
static void user_segv(int sig)
{
    (void)sig;
    static const char msg[] = "user handler\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
        _exit(4);
    }
    _exit(3);
}

static void co_bad_store(void *opaque)
{
    *(volatile int *)opaque = 1;
}

static void test_coroutine_zz_child_other_fault(void)
{
    if (!getenv("QLTEST_CHILD")) {
        return;
    }
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl);
    if (getenv("QLTEST_USER_HANDLER")) {
        signal(SIGSEGV, user_segv);
    }
    /* A page of our own, not NULL (UBSan would stop a NULL store first). */
    void *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ql_coroutine_enter(ql_coroutine_create(co_bad_store, page));
    _exit(0);
}

static void test_coroutine_other_faults_go_to_previous_handler(void)
{
    char buf[4096];
    int st;

    if (getenv("QLTEST_CHILD")) {
        return;
    }
    st = run_child("test_coroutine_zz_child_other_fault", "QLTEST_USER_HANDLER=1", buf, sizeof buf);
    QL_CHECK(WIFEXITED(st));
    QL_CHECK_EQ(WEXITSTATUS(st), 3);
    QL_CHECK(strstr(buf, "user handler") != NULL);
    QL_CHECK(strstr(buf, "stack overflow") == NULL);
    /* No handler of ours: the default action (death by SIGSEGV), or under
     * AddressSanitizer / ThreadSanitizer its own handler, which reports the
     * SEGV. */
    st = run_child("test_coroutine_zz_child_other_fault", NULL, buf, sizeof buf);
#ifdef __SANITIZE_ADDRESS__
    QL_CHECK(strstr(buf, "AddressSanitizer: SEGV") != NULL);
#else
    if (UNDER_TSAN) {
        QL_CHECK(strstr(buf, "ThreadSanitizer: SEGV") != NULL);
    } else {
        QL_CHECK(WIFSIGNALED(st));
        QL_CHECK_EQ(WTERMSIG(st), SIGSEGV);
    }
#endif
    QL_CHECK(strstr(buf, "stack overflow") == NULL);
}

/* Terminating while holding a CoMutex is misuse (abort when asked). */
static void co_end_holding(void *opaque)
{
    ql_co_mutex_lock(opaque);
}

static void test_coroutine_zz_child_end_holding_lock(void)
{
    if (!getenv("QLTEST_CHILD")) {
        return;
    }
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl);
    ql_set_abort_on_misuse(1);
    ql_coroutine_enter(ql_coroutine_create(co_end_holding, ql_co_mutex_new()));
    _exit(0);
}

static void test_coroutine_ending_with_lock_held_is_misuse(void)
{
    char buf[4096];
    int st;

    if (getenv("QLTEST_CHILD")) {
        return;
    }
    st = run_child("test_coroutine_zz_child_end_holding_lock", NULL, buf, sizeof buf);
    QL_CHECK(WIFSIGNALED(st));
    QL_CHECK_EQ(WTERMSIG(st), SIGABRT);
    QL_CHECK(strstr(buf, "terminated holding 1 lock") != NULL);
}

static long rss_kib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) {
            resident = 0;
        }
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void co_touch_100k(void *opaque)
{
    int depth = 100;
    (void)opaque;
    burn(depth);
    ql_coroutine_yield();
}

/* Stacks beyond the pool bounds give their pages back when recycled. */
static void test_coroutine_pool_gives_back_memory_of_excess_stacks(void)
{
    enum { N = 600 };
    static QLCoroutine *cos[N];
    long high, low;

    if (RUNNING_ON_VALGRIND) {
        return; /* RSS is valgrind's */
    }
    for (int i = 0; i < N; i++) {
        cos[i] = ql_coroutine_create(co_touch_100k, NULL);
        QL_CHECK(cos[i] != NULL);
        ql_coroutine_enter(cos[i]);
    }
    high = rss_kib();
    for (int i = 0; i < N; i++) {
        ql_coroutine_enter(cos[i]);
    }
    low = rss_kib();
    /* ~60 MB touched; all but a few dozen pooled stacks are released. */
    if (high - low < 30 * 1024) {
        fprintf(stderr, "  rss %ld KiB -> %ld KiB\n", high, low);
    }
    QL_CHECK(high - low >= 30 * 1024);
}

QLTEST_MAIN(QLT(test_coroutine_stack_size_rounded_with_minimum),
            QLT(test_coroutine_custom_stack_size_is_usable),
            QLT(test_coroutine_lifecycle_reuses_stacks),
            QLT(test_coroutine_100k_suspended),
            QLT(test_coroutine_stack_overflow_reported),
            QLT(test_coroutine_stack_overflow_reported_with_mprotect_guard),
            QLT(test_coroutine_mprotect_guard_reports_enomem_at_map_limit),
            QLT(test_coroutine_other_faults_go_to_previous_handler),
            QLT(test_coroutine_ending_with_lock_held_is_misuse),
            QLT(test_coroutine_pool_gives_back_memory_of_excess_stacks),
            QLT(test_coroutine_zz_child_overflow),
            QLT(test_coroutine_zz_child_mprotect_limit),
            QLT(test_coroutine_zz_child_other_fault),
            QLT(test_coroutine_zz_child_end_holding_lock))

/*
 * Coroutine stacks: slabs, guard pages, pools, and the overflow report.
 *
 * Layout: a slab is one anonymous mapping holding up to SLAB_MAX_STACKS
 * stacks of one size, each [guard page][usable bytes].  The guard pages are
 * installed with madvise(MADV_GUARD_INSTALL) (Linux >= 6.13), which does not
 * split the mapping, so 100,000 stacks need ~1,600 mappings, far below
 * vm.max_map_count.  Where that is unsupported (EINVAL) we fall back to
 * mprotect(PROT_NONE), which splits the mapping: each stack then costs two
 * mappings and the number of stacks is bounded by about max_map_count / 2;
 * past it mprotect fails and ql_coroutine_create() returns NULL/ENOMEM.
 * QLOOP_STACK_GUARD=mprotect forces the fallback (for tests).
 *
 * Pools: a stack whose coroutine ended goes to its thread's cache (up to
 * THREAD_STACKS_MAX, no lock), then to a global pool under `pool_lock`.  The
 * global pool keeps up to GLOBAL_HOT_MAX stacks as they are; beyond that a
 * stack's pages are given back with MADV_DONTNEED ("cold") and only its
 * address space is kept.  Slabs are never unmapped: address space stays at
 * the high-water mark, memory does not.  Steady-state create/terminate does
 * no system call.
 *
 * Overflow: a fault on a guard page is caught by a SIGSEGV handler running
 * on an alternate signal stack (installed per thread, lazily), which writes
 * "qloop: coroutine stack overflow (stack size N bytes)" to stderr and lets
 * the signal kill the process.  Other faults go to the previous handler.
 */
#include "coroutine-int.h"
#include "coroutine-switch.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define QL_HAVE_VALGRIND 1
#endif
#endif

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

#define STACK_DEFAULT (256 * 1024)
#define STACK_MIN (16 * 1024)
#define SLAB_BYTES (16u << 20)
#define SLAB_MAX_STACKS 64
#define THREAD_STACKS_MAX 16
#define GLOBAL_HOT_MAX 64
#define ALTSTACK_SIZE (64 * 1024)

typedef struct QLCoSlab {
    struct QLCoSlab *next;  /* registry link; set before publication */
    char *mem;              /* the mapping: n * stride bytes */
    size_t len;
    size_t stride;          /* guard + size */
    size_t guard;
    size_t size;            /* usable bytes per stack */
    unsigned n;             /* stacks in the slab */
    unsigned used;          /* stacks handed out so far (under pool_lock) */
    QLCoStack stacks[];
} QLCoSlab;

/* Free stacks of one size (under pool_lock). */
typedef struct SizeClass {
    struct SizeClass *next;
    size_t size;
    QLCoStack *hot;         /* pages may be resident */
    QLCoStack *cold;        /* pages given back */
    QLCoSlab *slab;         /* slab being carved */
} SizeClass;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static SizeClass *classes;  /* under pool_lock */
/* Hot stacks in all classes: changed under pool_lock, read without it
 * (an estimate is enough to decide whether to give pages back). */
static unsigned n_hot;
/* Every slab ever made, newest first.  Pushed under pool_lock with a release
 * store; read lock-free by the SIGSEGV handler (acquire).  Never shrinks. */
static QLCoSlab *slabs;

static size_t page_size;
static size_t default_size;
static int guard_mode;      /* 0 madvise guard, 1 mprotect (atomic) */
static pthread_once_t stack_once = PTHREAD_ONCE_INIT;

static size_t round_pages(size_t n)
{
    return (n + page_size - 1) & ~(page_size - 1);
}

static size_t parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);

    if (end == s) {
        return 0;
    }
    if (*end == 'k' || *end == 'K') {
        v <<= 10;
    } else if (*end == 'm' || *end == 'M') {
        v <<= 20;
    }
    return (size_t)v;
}

static void stack_global_init(void)
{
    const char *e;

    page_size = (size_t)sysconf(_SC_PAGESIZE);
    default_size = STACK_DEFAULT;
    e = getenv("QLOOP_STACK_SIZE");
    if (e && parse_size(e)) {
        default_size = parse_size(e);
    }
    e = getenv("QLOOP_STACK_GUARD");
    guard_mode = e && strcmp(e, "mprotect") == 0;
    default_size = round_pages(default_size < STACK_MIN ? STACK_MIN : default_size);
}

size_t ql_coroutine_default_stack_size(void)
{
    pthread_once(&stack_once, stack_global_init);
    return default_size;
}

size_t ql__co_stack_round(size_t size)
{
    pthread_once(&stack_once, stack_global_init);
    if (size == 0) {
        return default_size;
    }
    if (size < STACK_MIN) {
        size = STACK_MIN;
    }
    return round_pages(size);
}

/* ---- slabs ------------------------------------------------------------ */

static QLCoSlab *slab_new(size_t size)
{
    size_t stride = page_size + size;
    size_t n = SLAB_BYTES / stride;
    QLCoSlab *slab;
    void *mem;

    if (n < 1) {
        n = 1;
    } else if (n > SLAB_MAX_STACKS) {
        n = SLAB_MAX_STACKS;
    }
    slab = calloc(1, sizeof *slab + n * sizeof(QLCoStack));
    if (!slab) {
        return NULL;
    }
    mem = mmap(NULL, n * stride, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (mem == MAP_FAILED) {
        free(slab);
        return NULL;
    }
    slab->mem = mem;
    slab->len = n * stride;
    slab->stride = stride;
    slab->guard = page_size;
    slab->size = size;
    slab->n = (unsigned)n;
    for (size_t i = 0; i < n; i++) {
        QLCoStack *st = &slab->stacks[i];
        st->base = slab->mem + i * stride + page_size;
        st->size = size;
        st->slab = slab;
        st->hot = true;
    }
    /* Publish to the overflow handler; pairs with its acquire load. */
    slab->next = slabs;
    __atomic_store_n(&slabs, slab, __ATOMIC_RELEASE);
    return slab;
}

/* True if the kernel refuses to read `p` (checked by writing one byte of
 * it into a pipe: EFAULT).  Used once, to catch environments that accept
 * MADV_GUARD_INSTALL without enforcing it (user-mode emulators). */
static bool page_faults(const void *p)
{
    int fds[2];
    ssize_t r;

    if (pipe(fds) < 0) {
        return true; /* cannot tell: trust the kernel */
    }
    r = write(fds[1], p, 1);
    close(fds[0]);
    close(fds[1]);
    return r < 0 && errno == EFAULT;
}

/* Guard page below st->base.  0 or -errno. */
static int stack_install_guard(QLCoStack *st)
{
    static int probed; /* atomic: the first madvise guard was checked */
    char *guard = (char *)st->base - page_size;

    if (!__atomic_load_n(&guard_mode, __ATOMIC_RELAXED)) {
        if (madvise(guard, page_size, MADV_GUARD_INSTALL) == 0) {
            if (__atomic_load_n(&probed, __ATOMIC_ACQUIRE) ||
                __atomic_exchange_n(&probed, 1, __ATOMIC_ACQ_REL) || page_faults(guard)) {
                return 0;
            }
            /* Accepted but not enforced: fall back for good. */
            __atomic_store_n(&guard_mode, 1, __ATOMIC_RELAXED);
            return mprotect(guard, page_size, PROT_NONE) < 0 ? -errno : 0;
        }
        if (errno != EINVAL) {
            return -errno;
        }
        /* Kernel (or a tool intercepting madvise) does not know it. */
        __atomic_store_n(&guard_mode, 1, __ATOMIC_RELAXED);
    }
    if (mprotect(guard, page_size, PROT_NONE) < 0) {
        return -errno;
    }
    return 0;
}

/* ---- pools ------------------------------------------------------------ */

static SizeClass *class_get(size_t size)
{
    SizeClass *c;

    for (c = classes; c; c = c->next) {
        if (c->size == size) {
            return c;
        }
    }
    c = calloc(1, sizeof *c);
    if (c) {
        c->size = size;
        c->next = classes;
        classes = c;
    }
    return c;
}

static QLCoStack *global_get(size_t size)
{
    QLCoStack *st = NULL;
    SizeClass *c;

    pthread_mutex_lock(&pool_lock);
    c = class_get(size);
    if (!c) {
        goto out;
    }
    if (c->hot) {
        st = c->hot;
        c->hot = st->next;
        __atomic_fetch_sub(&n_hot, 1, __ATOMIC_RELAXED);
    } else if (c->cold) {
        st = c->cold;
        c->cold = st->next;
    } else {
        if (!c->slab || c->slab->used == c->slab->n) {
            c->slab = slab_new(size);
            if (!c->slab) {
                goto out;
            }
        }
        st = &c->slab->stacks[c->slab->used++];
    }
out:
    pthread_mutex_unlock(&pool_lock);
    return st;
}

static void global_put(QLCoStack *st)
{
    SizeClass *c;

    if (st->hot && __atomic_load_n(&n_hot, __ATOMIC_RELAXED) >= GLOBAL_HOT_MAX) {
        /* Give the pages back (not the guard).  The ucontext trampoline
         * frame lived there: the stack must be set up again. */
        madvise(st->base, st->size, MADV_DONTNEED);
        st->hot = false;
        st->started = false;
    }
    pthread_mutex_lock(&pool_lock);
    c = class_get(st->size); /* exists: the stack came from it */
    if (st->hot) {
        st->next = c->hot;
        c->hot = st;
        __atomic_fetch_add(&n_hot, 1, __ATOMIC_RELAXED);
    } else {
        st->next = c->cold;
        c->cold = st;
    }
    pthread_mutex_unlock(&pool_lock);
}

QLCoStack *ql__co_stack_get(QLCoThread *t, size_t size)
{
    QLCoStack **pp, *st = NULL;
    int err;

    for (pp = &t->free_stacks; *pp; pp = &(*pp)->next) {
        if ((*pp)->size == size) {
            st = *pp;
            *pp = st->next;
            t->n_free_stacks--;
            break;
        }
    }
    if (!st) {
        st = global_get(size);
        if (!st) {
            errno = ENOMEM;
            return NULL;
        }
    }
    if (!st->guarded) {
        err = stack_install_guard(st);
        if (err < 0) {
            global_put(st);
            errno = err == -ENOMEM ? ENOMEM : -err;
            return NULL;
        }
        st->guarded = true;
#ifdef QL_HAVE_VALGRIND
        VALGRIND_STACK_REGISTER(st->base, (char *)st->base + st->size);
#endif
    }
    if (!st->started) {
        err = ql__co_ops->stack_init(st);
        if (err < 0) {
            ql__co_stack_put(t, st);
            errno = -err;
            return NULL;
        }
        st->started = true;
    }
    st->hot = true;
    return st;
}

void ql__co_stack_put(QLCoThread *t, QLCoStack *st)
{
    if (t->n_free_stacks < THREAD_STACKS_MAX) {
        st->next = t->free_stacks;
        t->free_stacks = st;
        t->n_free_stacks++;
    } else {
        global_put(st);
    }
}

void ql__co_stack_thread_exit(QLCoThread *t)
{
    QLCoStack *st;

    while ((st = t->free_stacks)) {
        t->free_stacks = st->next;
        global_put(st);
    }
    t->n_free_stacks = 0;
}

/* ---- overflow --------------------------------------------------------- */

static struct sigaction prev_segv;
static pthread_once_t segv_once = PTHREAD_ONCE_INIT;

/* Async-signal-safe: decimal digits of v into buf (no terminator). */
static size_t fmt_size(char *buf, size_t v)
{
    char tmp[24];
    size_t n = 0, i;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++) {
        buf[i] = tmp[n - 1 - i];
    }
    return n;
}

/* Stack size if addr is on a coroutine guard page, else 0. */
static size_t guard_hit(uintptr_t addr)
{
    for (QLCoSlab *s = __atomic_load_n(&slabs, __ATOMIC_ACQUIRE); s; s = s->next) {
        uintptr_t base = (uintptr_t)s->mem;
        if (addr >= base && addr < base + s->len) {
            return (addr - base) % s->stride < s->guard ? s->size : 0;
        }
    }
    return 0;
}

static void segv_handler(int sig, siginfo_t *si, void *uc)
{
    size_t size = guard_hit((uintptr_t)si->si_addr);
    struct sigaction dfl;

    if (size) {
        static const char head[] = "qloop: coroutine stack overflow (stack size ";
        static const char tail[] = " bytes)\n";
        char msg[sizeof head + sizeof tail + 24];
        size_t n = sizeof head - 1;

        memcpy(msg, head, n);
        n += fmt_size(msg + n, size);
        memcpy(msg + n, tail, sizeof tail - 1);
        n += sizeof tail - 1;
        if (write(STDERR_FILENO, msg, n) < 0) {
            /* nothing more we can do */
        }
    } else if (prev_segv.sa_flags & SA_SIGINFO) {
        prev_segv.sa_sigaction(sig, si, uc);
        return;
    } else if (prev_segv.sa_handler != SIG_DFL && prev_segv.sa_handler != SIG_IGN) {
        prev_segv.sa_handler(sig);
        return;
    }
    /* Die by the signal: default action, and make sure it is delivered
     * when we return (a real fault would also simply happen again). */
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGSEGV, &dfl, NULL);
    raise(SIGSEGV);
}

static void segv_install(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &prev_segv);
}

void ql__co_overflow_setup(QLCoThread *t)
{
    stack_t old, ss;
    void *mem;

    pthread_once(&segv_once, segv_install);
    t->altstack = true;
    if (sigaltstack(NULL, &old) == 0 && !(old.ss_flags & SS_DISABLE)) {
        return; /* the thread has one already: use it */
    }
    mem = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (mem == MAP_FAILED) {
        return; /* overflows then die without the message */
    }
    ss.ss_sp = mem;
    ss.ss_size = ALTSTACK_SIZE;
    ss.ss_flags = 0;
    if (sigaltstack(&ss, NULL) < 0) {
        munmap(mem, ALTSTACK_SIZE);
        return;
    }
    t->altstack_mem = mem;
    t->altstack_size = ALTSTACK_SIZE;
}

void ql__co_overflow_thread_exit(QLCoThread *t)
{
    stack_t cur, off;

    if (t->altstack_mem && sigaltstack(NULL, &cur) == 0 && cur.ss_sp == t->altstack_mem) {
        memset(&off, 0, sizeof off);
        off.ss_flags = SS_DISABLE;
        sigaltstack(&off, NULL);
        munmap(t->altstack_mem, t->altstack_size);
    }
    t->altstack_mem = NULL;
    t->altstack = false;
}

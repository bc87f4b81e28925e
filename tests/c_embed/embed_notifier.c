/*
 * A C program embedding libqloop from an installed qloop package: it is what
 * tests/test_embed.py compiles against qloop.get_include() and
 * qloop.get_library_dir() (or `pkg-config --cflags --libs qloop`).
 *
 *   cc embed_notifier.c -I"$INC" "$LIBDIR/libqloop.a" -pthread -o embed_notifier
 *
 * Prints "OK qloop <version> <notifier kind>" and exits 0, or names the first
 * failed step on stderr and exits 1.
 */
#include <qloop/qloop.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "embed_notifier: failed: %s\n", #cond);          \
            return 1;                                                        \
        }                                                                    \
    } while (0)

static void *set_it(void *arg)
{
    ql_notifier_set(arg);
    return NULL;
}

int main(void)
{
    QLNotifier n;
    pthread_t t;

    CHECK(ql_notifier_init(&n) == 0);
    CHECK(ql_notifier_fd(&n) >= 0);
    CHECK(ql_notifier_test_and_clear(&n) == 0);
    CHECK(ql_notifier_wait(&n, 0) == 0);

    CHECK(ql_notifier_set(&n) == 0);
    CHECK(ql_notifier_set(&n) == 0);
    CHECK(ql_notifier_wait(&n, -1) == 1);
    CHECK(ql_notifier_test_and_clear(&n) == 1);
    CHECK(ql_notifier_test_and_clear(&n) == 0);

    CHECK(pthread_create(&t, NULL, set_it, &n) == 0);
    CHECK(ql_notifier_wait(&n, -1) == 1);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(ql_notifier_test_and_clear(&n) == 1);

    const char *kind = n.kind == QL_NOTIFIER_EVENTFD ? "eventfd" : "pipe";
    CHECK(strcmp(kind, ql_notifier_default_kind()) == 0);
    ql_notifier_close(&n);
    CHECK(ql_notifier_set(&n) < 0);

    printf("OK qloop %s %s\n", ql_version(), kind);
    return 0;
}

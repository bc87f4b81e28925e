/*
 * Minimal C unit-test harness: each test is a function registered in a table;
 * main() runs them in order (or only those whose name contains argv[1]) and
 * prints "ok <name>" / "FAIL <name>: <where>" and a closing summary line.
 */
#ifndef QLTEST_H
#define QLTEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct QLTest {
    const char *name;
    void (*fn)(void);
} QLTest;

extern int qltest_failed_;

#define QL_CHECK(cond)                                                        \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__,          \
                    __LINE__, #cond);                                         \
            qltest_failed_ = 1;                                               \
            return;                                                           \
        }                                                                     \
    } while (0)

#define QL_CHECK_EQ(a, b)                                                     \
    do {                                                                      \
        long long qa_ = (long long)(a), qb_ = (long long)(b);                 \
        if (qa_ != qb_) {                                                     \
            fprintf(stderr, "  %s:%d: check failed: %s == %s (%lld != %lld)\n",\
                    __FILE__, __LINE__, #a, #b, qa_, qb_);                    \
            qltest_failed_ = 1;                                               \
            return;                                                           \
        }                                                                     \
    } while (0)

#define QLTEST_MAIN(...)                                                      \
    int qltest_failed_;                                                       \
    static const QLTest qltests_[] = {__VA_ARGS__};                           \
    int main(int argc, char **argv)                                           \
    {                                                                         \
        int passed = 0, failed = 0;                                           \
        setvbuf(stdout, NULL, _IONBF, 0);                                     \
        for (size_t i = 0; i < sizeof qltests_ / sizeof qltests_[0]; i++) {   \
            if (argc > 1 && !strstr(qltests_[i].name, argv[1])) {             \
                continue;                                                     \
            }                                                                 \
            qltest_failed_ = 0;                                               \
            qltests_[i].fn();                                                 \
            printf("%s %s\n", qltest_failed_ ? "FAIL" : "ok",                 \
                   qltests_[i].name);                                         \
            if (qltest_failed_) {                                             \
                failed++;                                                     \
            } else {                                                          \
                passed++;                                                     \
            }                                                                 \
        }                                                                     \
        printf("%d passed, %d failed\n", passed, failed);                     \
        return failed ? 1 : 0;                                                \
    }

#define QLT(fn) {#fn, fn}

#endif

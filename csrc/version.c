/* Library version and the process-wide misuse policy. */
#include "qloop/version.h"
#include "misuse.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define QL_STR2(x) #x
#define QL_STR(x) QL_STR2(x)

static int abort_on_misuse;

const char *ql_version(void)
{
    return QL_STR(QLOOP_VERSION_MAJOR) "." QL_STR(QLOOP_VERSION_MINOR) "." QL_STR(QLOOP_VERSION_PATCH);
}

void ql_set_abort_on_misuse(int on)
{
    __atomic_store_n(&abort_on_misuse, on != 0, __ATOMIC_RELAXED);
}

int ql_get_abort_on_misuse(void)
{
    return __atomic_load_n(&abort_on_misuse, __ATOMIC_RELAXED);
}

int ql__misuse(int err, const char *fmt, ...)
{
    if (ql_get_abort_on_misuse()) {
        va_list ap;
        va_start(ap, fmt);
        fputs("qloop: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        abort();
    }
    return err;
}

/* Internal: report misuse as an error code, or abort if the caller asked. */
#ifndef QLOOP_MISUSE_H
#define QLOOP_MISUSE_H

/* Return `err` (a negative errno), or print "qloop: <message>" and abort()
 * when ql_set_abort_on_misuse(1) is in force. */
int ql__misuse(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

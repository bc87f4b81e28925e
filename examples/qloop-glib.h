/*
 * qloop-glib.h - attach a qloop AioContext to a GLib main context as a real
 * GSource (header-only; include it in one file of a GLib program).
 *
 *     GSource *src = ql_glib_source_new(ctx);
 *     g_source_attach(src, NULL);          // default GMainContext
 *     g_main_loop_run(loop);               // runs qloop BHs, fd handlers, timers
 *     g_source_destroy(src); g_source_unref(src);
 *
 * The source watches ql_context_fd() and uses ql_context_prepare/check/
 * dispatch, like QEMU's aio_get_g_source().  Work scheduled into the context
 * from any thread wakes the GLib loop.  The context must outlive the source.
 */
#ifndef QLOOP_GLIB_H
#define QLOOP_GLIB_H

#include <glib.h>
#include <qloop/qloop.h>

typedef struct QLGSource {
    GSource source;
    QLContext *ctx;
} QLGSource;

static gboolean ql_glib_prepare(GSource *s, gint *timeout_ms)
{
    int64_t ns = ql_context_prepare(((QLGSource *)s)->ctx);
    if (ns < 0) {
        *timeout_ms = -1;
    } else {
        int64_t ms = (ns + 999999) / 1000000; /* round up: never wake early */
        *timeout_ms = ms > G_MAXINT ? G_MAXINT : (gint)ms;
    }
    return ns == 0;
}

static gboolean ql_glib_check(GSource *s)
{
    return ql_context_check(((QLGSource *)s)->ctx);
}

static gboolean ql_glib_dispatch(GSource *s, GSourceFunc cb, gpointer data)
{
    (void)cb;
    (void)data;
    ql_context_dispatch(((QLGSource *)s)->ctx);
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs ql_glib_source_funcs = {
    .prepare = ql_glib_prepare,
    .check = ql_glib_check,
    .dispatch = ql_glib_dispatch,
};

/* A new (unattached) GSource driving ctx. */
static inline GSource *ql_glib_source_new(QLContext *ctx)
{
    GSource *s = g_source_new(&ql_glib_source_funcs, sizeof(QLGSource));
    ((QLGSource *)s)->ctx = ctx;
    g_source_set_name(s, "qloop-aio-context");
    g_source_set_can_recurse(s, TRUE);
    g_source_add_unix_fd(s, ql_context_fd(ctx), G_IO_IN);
    return s;
}

#endif

/*
 * A qloop AioContext running inside a GLib main loop: a BH, a qloop timer, a
 * pipe handler and a cross-thread BH all run from g_main_loop_run(), next to
 * a plain GLib timeout.  Prints one line per event and "OK" at the end.
 *
 *   cc glib_example.c $(pkg-config --cflags --libs glib-2.0) \
 *      -I$(python -c 'import qloop;print(qloop.get_include())') \
 *      $(python -c 'import qloop;print(qloop.get_library_dir())')/libqloop.a -pthread
 */
#include "qloop-glib.h"

#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static GMainLoop *loop;
static int events;
static int pipefd[2];

static void note(const char *what)
{
    printf("%s\n", what);
    if (++events == 5) {
        g_main_loop_quit(loop);
    }
}

static void bh_cb(void *opaque) { (void)opaque; note("bh"); }
static void timer_cb(void *opaque) { (void)opaque; note("qloop-timer"); }
static void thread_bh_cb(void *opaque) { (void)opaque; note("thread-bh"); }

static void pipe_read(void *opaque)
{
    QLContext *ctx = opaque;
    char buf[16];
    if (read(pipefd[0], buf, sizeof buf) > 0) {
        ql_context_set_fd_handler(ctx, pipefd[0], NULL, NULL, NULL, NULL);
        note("pipe");
    }
}

static gboolean glib_timeout(gpointer data) { (void)data; note("glib-timeout"); return G_SOURCE_REMOVE; }

static void *thread_main(void *arg)
{
    usleep(20000);
    ql_bh_schedule(arg); /* wakes the GLib loop through the context's fd */
    return NULL;
}

int main(void)
{
    QLContext *ctx = ql_context_new();
    if (!ctx || pipe(pipefd) < 0) {
        return 1;
    }
    loop = g_main_loop_new(NULL, FALSE);
    GSource *src = ql_glib_source_new(ctx);
    g_source_attach(src, NULL);

    QLBH *bh = ql_bh_new(ctx, bh_cb, NULL, "example-bh");
    ql_bh_schedule(bh);
    QLTimer *t = ql_timer_new(ctx, QL_CLOCK_REALTIME, timer_cb, NULL, "example-timer");
    ql_timer_mod_in(t, 30 * 1000000LL);
    ql_context_set_fd_handler(ctx, pipefd[0], pipe_read, NULL, NULL, ctx);
    if (write(pipefd[1], "x", 1) != 1) {
        return 1;
    }
    g_timeout_add(10, glib_timeout, NULL);
    QLBH *tbh = ql_bh_new(ctx, thread_bh_cb, NULL, "thread-bh");
    pthread_t th;
    pthread_create(&th, NULL, thread_main, tbh);

    g_main_loop_run(loop);
    pthread_join(th, NULL);

    g_source_destroy(src);
    g_source_unref(src);
    ql_timer_free(t);
    ql_bh_delete(bh);
    ql_bh_delete(tbh);
    ql_context_free(ctx);
    g_main_loop_unref(loop);
    close(pipefd[0]);
    close(pipefd[1]);
    printf("OK\n");
    return 0;
}

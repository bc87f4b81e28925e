"""The handshake driver shared by the TLS and websocket channels.

A channel provides ``_hs_advance()`` (make progress without waiting: None
when done, else IO_IN/IO_OUT to wait for on the master; raises on failure)
and ``_hs_input()`` (read once from the master after it became readable).
``handshake(cb=None, context=None)`` then runs it: inside a coroutine it
yields on the master; outside one with ``cb`` it is a QIOTask driven by
watches on the master (``cb(task)`` runs in ``context``); without ``cb`` it
blocks the thread.

The mixin also gives such a channel layered over ``self.master`` what it
forwards to the master unchanged: readiness (with ``_buffered_input()``:
True when a read would not need the master, e.g. decrypted or decoded data
is buffered), ``close()`` and the socket options.
"""
import errno

from .base import IO_IN, in_coroutine


class HandshakeMixin:
    _hs_watch = None
    _hs_task = None

    def _wait_master(self, condition):
        if in_coroutine():
            self.master.yield_(condition)
        else:
            self.master.wait(condition)

    def _handshake_sync(self):
        while True:
            need = self._hs_advance()
            if need is None:
                return
            self._wait_master(need)
            if need == IO_IN:
                self._hs_input()

    def handshake(self, cb=None, context=None):
        """Run the handshake (see the module doc).  Returns the QIOTask when
        ``cb`` is given outside a coroutine, else None."""
        if cb is not None and not callable(cb):
            raise TypeError("cb must be callable or None, not %s" % type(cb).__name__)
        if cb is None:
            self._handshake_sync()
            return None
        from ..task import QIOTask

        task = QIOTask(self, cb, context=context)
        if in_coroutine():
            try:
                self._handshake_sync()
            except Exception as e:
                task.abort(e)
            else:
                task.complete()
            return None
        self._hs_task = task
        self._hs_step(task.context)
        return task

    def _hs_step(self, ctx):
        task = self._hs_task
        try:
            need = self._hs_advance()
        except Exception as e:
            self._hs_task = None
            task.abort(e)
            return
        if need is None:
            self._hs_task = None
            task.complete()
            return

        def ready(ch, cond):
            self._hs_watch = None
            try:
                if need == IO_IN:
                    self._hs_input()
            except Exception as e:
                self._hs_task = None
                task.abort(e)
                return False
            self._hs_step(ctx)
            return False

        self._hs_watch = self.master.add_watch(need, ready, ctx)

    def _hs_cancel(self):
        """Drop a pending handshake (the channel is closing): its task fails
        with ECANCELED."""
        if self._hs_watch is not None:
            self._hs_watch.remove()
            self._hs_watch = None
        task, self._hs_task = self._hs_task, None
        if task is not None and not task.done:
            task.abort(OSError(errno.ECANCELED, "handshake cancelled: channel closed"))

    # ---- what a layered channel forwards to its master -------------------
    def _buffered_input(self):
        return False

    def _watch_fds(self):
        return self.master._watch_fds()

    def _watch_ready(self, condition):
        ready = IO_IN if condition & IO_IN and self._buffered_input() else 0
        return ready | self.master._watch_ready(condition)

    def wait(self, condition):
        ready = self._watch_ready(condition)
        return ready if ready else self.master.wait(condition)

    def yield_(self, condition):
        if not self._watch_ready(condition):
            self.master.yield_(condition)

    def close(self):
        """Cancel a pending handshake and close the master."""
        self._hs_cancel()
        self._drop_watches()
        self.master.close()

    @property
    def closed(self):
        return self.master.closed

    def set_blocking(self, blocking):
        self.master.set_blocking(blocking)

    def set_delay(self, enabled):
        self.master.set_delay(enabled)

    def set_cork(self, enabled):
        self.master.set_cork(enabled)

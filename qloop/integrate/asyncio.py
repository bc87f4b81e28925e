"""Drive a qloop AioContext from an asyncio event loop.

    handle = qloop.integrate.asyncio.attach(ctx, loop)
    ...
    handle.detach()

The context is embedded GSource-style: asyncio watches ``ctx.fileno()`` and
a timer for ``ctx.prepare()``'s timeout, and calls ``ctx.check()`` /
``ctx.dispatch()`` when either fires.  Work scheduled into the context from
any thread wakes the asyncio loop.  An exception raised by a qloop callback
goes to the asyncio loop's exception handler (as any asyncio callback's
would), and the context keeps running.
"""
import asyncio as _asyncio


class AsyncioAttachment:
    def __init__(self, ctx, loop):
        self.ctx = ctx
        self.loop = loop
        self._timer = None
        self._soon = None
        self._attached = True
        # Kept: once the context is closed, fileno() raises.
        self._fd = ctx.fileno()
        loop.add_reader(self._fd, self._run)
        self._arm()

    def _arm(self):
        if not self._attached:
            return
        timeout = self.ctx.prepare()
        if timeout == 0:
            if self._soon is None:
                self._soon = self.loop.call_soon(self._run)
        elif timeout > 0:
            self._timer = self.loop.call_later(timeout / 1e9, self._run)

    def _run(self):
        if not self._attached:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._soon = None
        if self.ctx.closed:
            # Closed while attached: its fd is gone (and its number may be
            # reused), so stop watching it.
            self.detach()
            return
        try:
            if self.ctx.check():
                self.ctx.dispatch()
        except Exception as e:
            self.loop.call_exception_handler({
                "message": "exception in a qloop callback",
                "exception": e,
                "context": self.ctx,
            })
        finally:
            self._arm()

    def detach(self):
        """Stop driving the context from the asyncio loop (also once it is closed)."""
        if not self._attached:
            return
        self._attached = False
        self.loop.remove_reader(self._fd)
        for h in (self._timer, self._soon):
            if h is not None:
                h.cancel()
        self._timer = self._soon = None


def attach(ctx, loop=None):
    """Run ``ctx``'s callbacks inside ``loop`` (default: the running loop)."""
    if loop is None:
        loop = _asyncio.get_running_loop()
    return AsyncioAttachment(ctx, loop)

"""Helpers shared by the channel tests."""
import os
import socket

import pytest


def open_fds():
    return set(int(x) for x in os.listdir("/proc/self/fd"))


def have_ipv6():
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")


def poll_until(ctx, pred, limit=10000):
    for _ in range(limit):
        if pred():
            return
        ctx.poll(True)
    raise AssertionError("condition not reached")

"""AIOCB pools (QEMU's AIOPool / qemu_aio_get / qemu_aio_release)."""
import errno

import pytest

import qloop


def test_completion_callback_runs_once_and_block_is_recycled():
    pool = qloop.AIOCBPool()
    got = []
    acb = pool.get(lambda opaque, ret: got.append((opaque, ret)), "req1")
    acb.complete(0)
    assert got == [("req1", 0)]
    with pytest.raises(RuntimeError, match="not in use"):
        acb.complete(0)
    again = pool.get(lambda o, r: None)
    assert again is acb
    assert pool.allocated == 1


def test_cancel_calls_the_pools_cancel_function():
    cancelled = []

    def cancel(acb):
        cancelled.append(acb.opaque)
        acb.complete(-errno.ECANCELED)

    pool = qloop.AIOCBPool(cancel=cancel)
    got = []
    acb = pool.get(lambda o, r: got.append(r), "x")
    acb.cancel()
    assert cancelled == ["x"]
    assert got == [-errno.ECANCELED]


def test_cancel_without_cancel_function_is_refused():
    acb = qloop.AIOCBPool().get(lambda o, r: None)
    with pytest.raises(RuntimeError, match="no cancel function"):
        acb.cancel()


def test_release_returns_block_without_callback():
    pool = qloop.AIOCBPool()
    acb = pool.get(lambda o, r: pytest.fail("must not run"))
    acb.release()
    acb.release()
    assert pool.free_count == 1


def test_pool_arguments_validated():
    with pytest.raises(TypeError, match="cancel must be callable"):
        qloop.AIOCBPool(cancel=3)
    with pytest.raises(TypeError, match="callback must be callable"):
        qloop.AIOCBPool().get(3)

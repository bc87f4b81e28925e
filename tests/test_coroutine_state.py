"""Thread-state switching (docs/python-stack-switching.md, section 10).

Each test catches one field that is not switched, or switched wrongly.
"""
import contextvars
import gc
import signal
import subprocess
import sys
import textwrap
import traceback

import pytest

from qloop import Coroutine, coroutine_yield

BIG = 8 << 20  # stack big enough for the default recursion limit everywhere


def run_child(code, timeout=120):
    """Run code in a fresh interpreter; return (returncode, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


# ---- 1. exc_info isolation ------------------------------------------------------

def test_exc_info_isolated_between_coroutines():
    log = []

    def a():
        try:
            raise KeyError("a")
        except KeyError:
            coroutine_yield()  # B runs now, inside our except block
            log.append(("a", sys.exc_info()[0]))
            coroutine_yield()
            log.append(("a2", sys.exc_info()[0]))

    def b():
        log.append(("b-start", sys.exc_info()[0]))
        try:
            raise ValueError("b")
        except ValueError:
            coroutine_yield()
            log.append(("b", sys.exc_info()[0]))
        try:
            raise  # bare raise must not see A's KeyError
        except RuntimeError as e:
            log.append(("bare", type(e), e.__context__))
        try:
            raise OSError("x")
        except OSError as e:
            log.append(("ctx", e.__context__))

    ca, cb = Coroutine(a), Coroutine(b)
    ca.enter()
    assert sys.exc_info()[0] is None
    cb.enter()
    ca.enter()
    cb.enter()
    ca.enter()
    assert ca.done and cb.done
    assert log == [("b-start", None), ("a", KeyError), ("b", ValueError),
                   ("bare", RuntimeError, None), ("ctx", None), ("a2", KeyError)]
    assert sys.exc_info()[0] is None


def test_exc_info_of_resumer_is_not_visible_and_is_kept():
    seen = []

    def fn():
        seen.append(sys.exc_info()[0])
        coroutine_yield()
        seen.append(sys.exc_info()[0])

    co = Coroutine(fn)
    try:
        raise IndexError
    except IndexError:
        co.enter()
        assert sys.exc_info()[0] is IndexError
        co.enter()
        assert sys.exc_info()[0] is IndexError
    assert seen == [None, None]


# ---- 2. exc_info through generators ---------------------------------------------

def test_exc_info_through_generators():
    log = []

    def gen():
        try:
            raise KeyError
        except KeyError:
            yield 1
            coroutine_yield()  # switch from inside the generator's except
            log.append(("gen", sys.exc_info()[0]))
            yield 2

    def a():
        try:
            raise ValueError
        except ValueError:
            g = gen()
            next(g)
            log.append(("a-before", sys.exc_info()[0]))
            next(g)
            log.append(("a-after", sys.exc_info()[0]))

    def b():
        log.append(("b", sys.exc_info()[0]))

    ca = Coroutine(a)
    ca.enter()
    Coroutine(b).enter()
    ca.enter()
    assert log == [("a-before", ValueError), ("b", None), ("gen", KeyError),
                   ("a-after", ValueError)]


# ---- 3. frame chain ---------------------------------------------------------------

def test_frame_chain_ends_at_the_coroutine_entry():
    seen = {}

    def entry():
        def inner():
            frames = []
            f = sys._getframe()
            while f is not None:
                frames.append(f.f_code.co_name)
                f = f.f_back
            seen["frames"] = frames
            seen["stack"] = [fs.name for fs in traceback.extract_stack()]
            coroutine_yield()
            seen["after"] = [fs.name for fs in traceback.extract_stack()]
        inner()

    co = Coroutine(entry)
    co.enter()
    assert seen["frames"] == ["inner", "entry"]
    assert seen["stack"] == ["entry", "inner"]

    def resumer():
        co.enter()

    resumer()
    assert seen["after"] == ["entry", "inner"]


def test_deeper_coroutine_survives_peer_finishing():
    out = []

    def deep(n):
        if n:
            return deep(n - 1)
        coroutine_yield()
        out.append(len(traceback.extract_stack()))
        raise ValueError("deep")

    def shallow():
        coroutine_yield()
        return "s"

    cd = Coroutine(deep, 30, stack_size=BIG)
    cs = Coroutine(shallow)
    cd.enter()
    cs.enter()
    cs.enter()  # finishes, its frames are popped
    with pytest.raises(ValueError) as ei:
        cd.enter()
    assert out == [31]
    assert len(traceback.extract_tb(ei.value.__traceback__)) >= 31


# ---- 4. data stack interleaving ------------------------------------------------

def _big_frame(depth, other_done, tag):
    # Many locals: the frames of 50 levels do not fit in one data-stack chunk.
    (v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15,
     v16, v17, v18, v19, v20, v21, v22, v23, v24, v25, v26, v27, v28, v29,
     v30, v31, v32, v33, v34, v35, v36, v37, v38, v39) = [tag * 1000 + depth] * 40
    coroutine_yield()
    if depth:
        r = _big_frame(depth - 1, other_done, tag)
    else:
        r = 0
    coroutine_yield()
    total = (v0 + v1 + v2 + v3 + v4 + v5 + v6 + v7 + v8 + v9 + v10 + v11 + v12 + v13
             + v14 + v15 + v16 + v17 + v18 + v19 + v20 + v21 + v22 + v23 + v24 + v25
             + v26 + v27 + v28 + v29 + v30 + v31 + v32 + v33 + v34 + v35 + v36 + v37
             + v38 + v39)
    assert total == 40 * (tag * 1000 + depth)
    return r + total


def test_data_stack_interleaving_big_frames():
    expect = {t: sum(40 * (t * 1000 + d) for d in range(51)) for t in (1, 2)}
    for _ in range(20):
        a = Coroutine(_big_frame, 50, None, 1, stack_size=BIG)
        b = Coroutine(_big_frame, 50, None, 2, stack_size=BIG)
        while not (a.done and b.done):
            if not a.done:
                a.enter()
            if not b.done:
                b.enter()
        assert a.result() == expect[1] and b.result() == expect[2]


@pytest.mark.rss
def test_create_finish_cycles_keep_memory_flat():
    rc, out, err = run_child("""
        import gc
        from qloop import Coroutine, coroutine_yield
        def rss():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        def deep(n):
            a = b = c = d = e = f = g = h = n
            if n:
                deep(n - 1)
            else:
                coroutine_yield()
        def cycle(k):
            for _ in range(k):
                cs = [Coroutine(deep, 60) for _ in range(4)]
                for c in cs:
                    c.enter()
                for c in cs:
                    c.enter()
                    assert c.done
        cycle(2000)
        gc.collect()
        before = rss()
        cycle(10000)
        gc.collect()
        print(rss() - before)
    """)
    assert rc == 0, err
    assert int(out) < 4096, "RSS grew by %s KiB" % out


# ---- 5. recursion isolation ----------------------------------------------------

def _recurse_then_yield(n):
    if n:
        return _recurse_then_yield(n - 1) + 1
    coroutine_yield()
    return 0


def _max_depth():
    def probe(n):
        try:
            return probe(n + 1)
        except RecursionError:
            return n
    return probe(0)


def test_recursion_depth_is_per_coroutine():
    limit = sys.getrecursionlimit()
    assert limit == 1000
    a = Coroutine(_recurse_then_yield, 900, stack_size=BIG)
    a.enter()  # suspended 900 deep
    got = []
    b = Coroutine(lambda: got.append(_max_depth()), stack_size=BIG)
    b.enter()
    assert got[0] > 950  # B does not inherit A's depth
    a.enter()
    assert a.result() == 900
    # and the thread itself is back at its own depth
    assert _max_depth() > 900


def test_recursion_error_in_coroutine_where_a_thread_would_raise():
    got = []
    co = Coroutine(lambda: got.append(_max_depth()), stack_size=BIG)
    co.enter()
    assert abs(got[0] - 1000) < 10


def test_setrecursionlimit_while_suspended_is_honoured():
    old = sys.getrecursionlimit()
    got = []

    def fn():
        _recurse_then_yield(100)
        got.append(_max_depth())

    co = Coroutine(fn, stack_size=BIG)
    try:
        co.enter()
        sys.setrecursionlimit(500)
        co.enter()
    finally:
        sys.setrecursionlimit(old)
    assert abs(got[0] - 500) < 10


# ---- 6. C stack guard -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["map", "getattr", "repr", "json"])
def test_deep_c_recursion_in_small_stack_raises_recursion_error(kind):
    rc, out, err = run_child("""
        import json, sys
        from qloop import Coroutine
        sys.setrecursionlimit(100000)
        kind = %r
        def f(x):
            return list(map(f, [x]))
        class G:
            def __getattr__(self, name):
                return getattr(self, name + "x")
        def run():
            if kind == "map":
                f(1)
            elif kind == "getattr":
                getattr(G(), "a")
            elif kind == "repr":
                x = []
                for _ in range(100000):
                    x = [x]
                repr(x)
            else:
                x = []
                for _ in range(100000):
                    x = [x]
                json.dumps(x)
        for size in (64 << 10, 256 << 10):
            co = Coroutine(run, stack_size=size)
            try:
                co.enter()
            except RecursionError:
                print("RecursionError")
            else:
                print("no error")
    """ % kind)
    assert rc == 0, err
    assert out.split() == ["RecursionError", "RecursionError"], (out, err)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="3.10/3.11 share one counter")
def test_pure_python_recursion_to_the_limit_in_a_small_stack():
    got = []
    co = Coroutine(lambda: got.append(_max_depth()), stack_size=64 << 10)
    co.enter()
    assert abs(got[0] - sys.getrecursionlimit()) < 10


# ---- 7. contextvars ---------------------------------------------------------------

var = contextvars.ContextVar("var", default="unset")


def test_contextvars_alternating_reads_see_own_value():
    errors = []

    def fn(value):
        var.set(value)
        for _ in range(1000):
            coroutine_yield()
            if var.get() != value:
                errors.append(var.get())

    a, b = Coroutine(fn, 1), Coroutine(fn, 2)
    while not (a.done and b.done):
        for c in (a, b):
            if not c.done:
                c.enter()
    assert errors == []
    assert var.get() == "unset"


def test_coroutine_runs_in_a_copy_of_the_creators_context():
    var.set("creator")
    try:
        seen = []

        def fn():
            seen.append(var.get())
            var.set("inside")
            coroutine_yield()
            seen.append(var.get())

        co = Coroutine(fn)
        var.set("changed-after-creation")
        co.enter()
        assert var.get() == "changed-after-creation"
        co.enter()
        assert seen == ["creator", "inside"]
    finally:
        var.set("unset")


def test_context_run_spanning_a_switch():
    ctx = contextvars.copy_context()

    def inside():
        var.set("in-ctx")
        coroutine_yield()
        return var.get()

    def fn():
        return ctx.run(inside)

    a = Coroutine(fn)
    a.enter()
    b = Coroutine(lambda: var.get())
    b.enter()
    assert b.result() == "unset"
    a.enter()
    assert a.result() == "in-ctx"
    assert ctx[var] == "in-ctx"


# ---- 8. tracing and profiling ----------------------------------------------------

def _traced_leaf(log, what):
    log.append(what)


def _traced_body(log):
    coroutine_yield()
    _traced_leaf(log, "line")
    coroutine_yield()
    _traced_leaf(log, "line2")


def test_settrace_in_one_coroutine_traces_the_other():
    # sys.settrace() is per thread: set in A while B is suspended, it traces
    # the calls B makes after it resumes; cleared in A, B is not traced.
    events = []
    log = []

    def tracer(frame, event, arg):
        if frame.f_code.co_name == "_traced_leaf":
            events.append(event)
        return tracer

    b = Coroutine(_traced_body, log)
    b.enter()  # suspended before tracing starts

    def a():
        sys.settrace(tracer)
        coroutine_yield()
        sys.settrace(None)

    ca = Coroutine(a)
    ca.enter()
    try:
        b.enter()
        assert "call" in events and "line" in events
        ca.enter()  # settrace(None) in A
        events.clear()
        b.enter()
        assert events == []
    finally:
        sys.settrace(None)
    assert log == ["line", "line2"]


def test_setprofile_with_switching_sees_coroutine_frames():
    calls = []

    def prof(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    def leaf():
        coroutine_yield()

    def body():
        leaf()
        leaf()

    cos = [Coroutine(body) for _ in range(3)]
    sys.setprofile(prof)
    try:
        while not all(c.done for c in cos):
            for c in cos:
                if not c.done:
                    c.enter()
    finally:
        sys.setprofile(None)
    assert calls.count("body") == 3 and calls.count("leaf") == 6


def test_no_switch_inside_a_trace_function():
    errors = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "target":
            try:
                coroutine_yield()
            except RuntimeError as e:
                errors.append(str(e))
        return None

    def target():
        return 1

    def fn():
        sys.settrace(tracer)
        try:
            target()
        finally:
            sys.settrace(None)

    co = Coroutine(fn)
    co.enter()
    assert co.done
    assert errors and "trace" in errors[0]


# ---- signals -------------------------------------------------------------------

def test_keyboard_interrupt_reaches_the_running_coroutine():
    reached = []

    def fn():
        coroutine_yield()
        try:
            signal.raise_signal(signal.SIGINT)
            for _ in range(1000):
                pass
        finally:
            reached.append("finally")

    co = Coroutine(fn)
    co.enter()
    with pytest.raises(KeyboardInterrupt):
        co.enter()
    assert reached == ["finally"]


# ---- 15. GC while switching ----------------------------------------------------

def test_gc_while_suspended_and_while_switching():
    old = gc.get_threshold()
    gc.set_threshold(1)
    try:
        class Noisy:
            def __del__(self):
                pass

        def fn(n):
            junk = []
            for i in range(n):
                junk.append([Noisy(), junk])
                coroutine_yield()
                gc.collect() if i % 10 == 0 else None
            return len(junk)

        cos = [Coroutine(fn, 50) for _ in range(5)]
        while not all(c.done for c in cos):
            for c in cos:
                if not c.done:
                    c.enter()
            gc.collect()
        assert [c.result() for c in cos] == [50] * 5
    finally:
        gc.set_threshold(*old)


def test_del_method_that_switches():
    log = []

    class Switcher:
        def __del__(self):
            try:
                coroutine_yield()
                log.append("del-resumed")
            except RuntimeError:
                log.append("del-outside")

    def fn():
        s = Switcher()
        del s  # __del__ runs here, in the coroutine, and yields
        log.append("after-del")

    co = Coroutine(fn)
    co.enter()
    assert log == []
    co.enter()
    assert log == ["del-resumed", "after-del"]
    Switcher()
    assert log[-1] == "del-outside"

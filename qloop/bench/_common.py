"""Plumbing shared by the workload modules: command line, timing, result line.

A workload module defines

    NAME        "callbacks"
    VARIANTS    tuple of variant names, or () when there is none
    DEFAULT_N   int, or {variant: int}      (the definition's N)
    QUICK_N     int, or {variant: int}      (``python -m qloop bench --quick``)
    CALLGRIND_N int, or {variant: int}      (``--callgrind``: small, cheap under valgrind)
    IMPLS       {impl name: function(n, variant, opts) -> dict}
    FLOORS      impl names that are lower bounds / baselines, not peers
    REQUIRES    {impl name: importable module it needs}
    METRIC      "per_op_ns" | "ops_per_s" | {variant: metric}

The function returns {"seconds": s, "ops": k, ...extras}; ``ops`` defaults to
n.  ``measure()`` turns that into the one JSON line every run prints:

    {"workload", "impl", "n", "ops", "seconds", "per_op_ns" | "ops_per_s",
     "peak_rss_kb", ...extras, "python"}

A qloop impl that needs an API which does not exist yet raises NotAvailable
(see ``qloop_api``); the line then carries ``"status": "n/a"`` and a reason,
and the process still exits 0.
"""
import argparse
import gc
import json
import os
import resource
import sys
import time

now = time.perf_counter


class NotAvailable(Exception):
    """The qloop feature this workload needs is not implemented (yet)."""


def qloop_api(*names):
    """Return ``qloop.<name>`` for each dotted name (one object or a tuple).

    Raises NotAvailable naming the first one that is missing, so a workload
    can be written against the documented API before all of it exists.
    """
    try:
        import qloop
    except ImportError as e:  # pragma: no cover - qloop is what we bench
        raise NotAvailable("qloop is not importable: %s" % e) from None
    out = []
    for name in names:
        obj = qloop
        for part in name.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise NotAvailable("qloop.%s is not implemented" % name) from None
        out.append(obj)
    return out[0] if len(out) == 1 else tuple(out)


def peak_rss_kb():
    """Peak resident set size of this process (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_bytes():
    """Current resident set size, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


_cpu_mark = [None]


def settle():
    """Called right before every timed region: collect garbage (GC stays on).

    Also marks the process CPU time, so that measure() can report the CPU
    spent from here to the end of the run (``cpu_per_op_ns``, all threads):
    on a shared machine it is steadier than wall time.
    """
    gc.collect()
    _cpu_mark[0] = time.process_time()


def per_variant(value, variant):
    """Resolve a module constant that is either a value or {variant: value}."""
    if isinstance(value, dict):
        return value[variant]
    return value


def workload_label(mod, variant):
    return mod.NAME + ("/" + variant if variant else "")


def metric_of(mod, variant):
    return per_variant(getattr(mod, "METRIC", "per_op_ns"), variant)


def measure(mod, impl, n=None, variant=None, **opts):
    """Run one workload in this process and return its result record (a dict).

    This is the function form of ``python -m qloop.bench.<name>``; the runner
    always uses a fresh process per run, so that nothing one impl imported or
    allocated changes the next one's numbers.
    """
    if mod.VARIANTS:
        variant = variant or mod.VARIANTS[0]
        if variant not in mod.VARIANTS:
            raise ValueError("variant must be one of %s, not %r" % (mod.VARIANTS, variant))
    else:
        variant = None
    if impl not in mod.IMPLS:
        raise ValueError("impl must be one of %s, not %r" % (sorted(mod.IMPLS), impl))
    if n is None:
        n = per_variant(mod.DEFAULT_N, variant)
    rec = {"workload": workload_label(mod, variant), "impl": impl, "n": n}
    _cpu_mark[0] = None
    try:
        res = mod.IMPLS[impl](n, variant, opts)
        cpu = None if _cpu_mark[0] is None else time.process_time() - _cpu_mark[0]
        # an impl that ran in a child process reports that process's CPU
        cpu = res.pop("cpu_seconds", cpu)
    except (NotAvailable, NotImplementedError) as e:
        rec.update(status="n/a", reason=str(e) or type(e).__name__)
        rec["python"] = sys.version.split()[0]
        return rec
    seconds = res.pop("seconds")
    ops = res.pop("ops", n)
    rec["ops"] = ops
    rec["seconds"] = round(seconds, 6)
    metric = res.pop("metric", None) or metric_of(mod, variant)
    if metric == "ops_per_s" and "ops_per_s" not in res:
        rec["ops_per_s"] = round(ops / seconds, 1)
    elif metric != "ops_per_s":
        rec["per_op_ns"] = round(seconds / ops * 1e9, 2) if ops else None
    if cpu is not None and ops and "server_cpu_s" not in res:
        rec["cpu_per_op_ns"] = round(cpu / ops * 1e9, 2)
    rec["peak_rss_kb"] = res.pop("peak_rss_kb", None) or peak_rss_kb()
    rec.update(res)
    rec["python"] = sys.version.split()[0]
    return rec


def cli(mod, argv=None):
    """``python -m qloop.bench.<name> --impl IMPL [--n N] [--variant V]``."""
    p = argparse.ArgumentParser(prog="python -m qloop.bench." + mod.NAME,
                                description=(mod.__doc__ or "").split("\n\n")[0])
    p.add_argument("--impl", required=True, choices=sorted(mod.IMPLS))
    p.add_argument("--n", type=int, default=None,
                   help="operations (default: the workload definition's N)")
    if mod.VARIANTS:
        p.add_argument("--variant", choices=mod.VARIANTS, default=mod.VARIANTS[0])
    add = getattr(mod, "add_arguments", None)
    if add:
        add(p)
    a = p.parse_args(argv)
    opts = {k: v for k, v in vars(a).items() if k not in ("impl", "n", "variant")}
    rec = measure(mod, a.impl, a.n, getattr(a, "variant", None), **opts)
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()
    return 0


def new_aio_loop(impl):
    """A fresh asyncio event loop: uvloop's for impl names starting "uvloop"."""
    if impl.startswith("uvloop"):
        import uvloop
        return uvloop.new_event_loop()
    import asyncio
    return asyncio.new_event_loop()


def cache_dir():
    """Where compiled helpers go (never inside the source tree)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = os.path.join(base, "qloop-bench")
    os.makedirs(d, exist_ok=True)
    return d


def c_helper(src_name):
    """Path of the bench's C helper ``src_name`` (a .c file beside this
    module, plain C with no dependencies), compiled with $CC (default cc)
    -O2 into cache_dir() unless an up-to-date build is there."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), src_name)
    exe = os.path.join(cache_dir(), os.path.splitext(src_name)[0])
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        import subprocess
        cc = os.environ.get("CC", "cc")
        tmp = exe + ".%d" % os.getpid()
        subprocess.run([cc, "-O2", "-o", tmp, src], check=True)
        os.replace(tmp, exe)
    return exe


def qloop_driver(ctx):
    """Return (run, stop) for driving ``ctx`` like asyncio's run_forever/stop.

    ``AioContext.run_forever()`` polls in C until ``stop()``; where the
    binding lacks it, ``run`` is a Python loop over ``poll(True)`` and ``stop``
    (call it on the loop thread, e.g. from a callback) ends it.
    """
    run_forever = getattr(ctx, "run_forever", None)
    if run_forever is not None:
        return run_forever, ctx.stop
    flag = []
    poll = ctx.poll

    def run():
        while not flag:
            poll(True)
        flag.clear()

    def stop():
        flag.append(1)
    return run, stop


def qloop_run(ctx, fn, *args):
    """Run ``fn(*args)`` as a qloop coroutine in ``ctx`` until it finishes.

    That is ``AioContext.run``; where the binding has no ``run`` yet, the same
    thing is spelled with a bottom half that enters the coroutine (so that it
    belongs to ctx) and ``poll()`` until it is done.
    """
    run = getattr(ctx, "run", None)
    if run is not None:
        return run(fn, *args)
    Coroutine = qloop_api("Coroutine")
    run, stop = qloop_driver(ctx)

    def body():
        try:
            return fn(*args)
        finally:
            stop()
    co = Coroutine(body)
    ctx.schedule_oneshot(co.enter)
    run()
    return co.result()


def qloop_rescheduler(ctx):
    """Return (again, how): ``again()`` puts the running coroutine back on
    ctx's queue and yields, so it resumes in the next poll (the
    ``asyncio.sleep(0)`` of qloop; QEMU spells it aio_co_schedule(ctx, self)
    + qemu_coroutine_yield()).  ``how()`` names the mechanism used.

    ``AioContext.co_schedule(coroutine_self())`` is tried first; a binding
    that lacks it, or refuses to schedule the running coroutine, gets the
    equivalent: a oneshot BH that calls ``co_wake`` on it.
    """
    coroutine_self, coroutine_yield, co_wake = qloop_api(
        "coroutine_self", "coroutine_yield", "co_wake")
    co_schedule = getattr(ctx, "co_schedule", None)
    oneshot = ctx.schedule_oneshot
    state = ["co_schedule" if co_schedule is not None else "schedule_oneshot+co_wake"]

    def via_bh():
        oneshot(co_wake, coroutine_self())
        coroutine_yield()

    def again():
        if state[0] == "co_schedule":
            try:
                co_schedule(coroutine_self())
            except RuntimeError:
                state[0] = "schedule_oneshot+co_wake (co_schedule refuses the running coroutine)"
                return via_bh()
            coroutine_yield()
        else:
            via_bh()

    return again, lambda: state[0]

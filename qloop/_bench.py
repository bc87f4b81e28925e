"""``python -m qloop bench``: qloop against the installed peers, as ratios.

Every workload module in qloop/bench/ (see bench/README.md in the source tree
for the definitions) runs once per implementation per repeat, each run in a
fresh process, round-robin over the whole plan so that slow drift of the
machine hits every implementation alike.  Peers: asyncio always; uvloop,
gevent and greenlet when importable (``pip install qloop[bench]``); a missing
one is skipped with a note.  The table shows medians, the spread
(max - min) / median, and per workload the ratio

    qloop / best peer, as a ratio of TIME per operation
    (throughputs are inverted first): < 1 means qloop is faster.

Floors (a bare deque, a generator, two plain Locks, ...) are shown but are
not peers.  ``--callgrind`` instead counts instructions per operation under
valgrind: each workload runs at two sizes and the difference of the two
instruction counts is divided by the difference of the operation counts,
which cancels start-up and set-up.
"""
import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

PACKAGE = "qloop.bench"
WORKLOADS = ("callbacks", "threadsafe_wakeup", "timers", "switch", "spawn", "lock", "echo",
             "fdwatch", "threadpool", "cswitch", "hot_call")

# (workload label, goal text, reference impls or None for an absolute bound,
#  bound: max allowed qloop cost / reference cost, or max qloop value)
GOALS = [
    ("callbacks/batch", "<= 100 ns per callback (gevent 202, uvloop 354)", None, 100),
    ("callbacks/chain", "<= 0.8x gevent", ("gevent",), 0.8),
    ("threadsafe_wakeup", "<= 1.1x the two-Lock floor", ("threads_lock",), 1.1),
    ("timers", "<= 500 ns per timer", None, 500),
    ("switch", "<= 0.5x greenlet", ("greenlet",), 0.5),
    ("spawn/seq", "<= 1.5 us", None, 1500),
    ("spawn/mem", "RSS per suspended coroutine <= greenlet's", ("greenlet",), 1.0),
    ("lock", "CoMutex handoff <= 0.5 us (asyncio.Lock 7.5 us)", None, 500),
    ("threadpool", "<= 0.5x asyncio run_in_executor", ("asyncio",), 0.5),
    ("threadpool", "<= gevent threadpool", ("gevent",), 1.0),
    ("echo/1k", ">= 1.2x uvloop Protocol (round trips/s)", ("uvloop_protocol",), 1 / 1.2),
    ("echo/64k", ">= uvloop (MB/s)", ("uvloop_protocol", "uvloop_streams"), 1.0),
    ("fdwatch/coro", "fd readiness -> coroutine <= 3 us", None, 3000),
    ("cswitch", "<= QEMU's /perf/yield", ("qemu",), 1.0),
]

UNITS = {"per_op_ns": "ns/op", "cpu_per_op_ns": "cpu ns/op", "ops_per_s": "ops/s", "rss_delta_per_coro_b": "B/coro",
         "ir_per_op": "Ir/op", "calls_per_s": "calls/s"}
HIGHER_IS_BETTER = ("ops_per_s", "calls_per_s")


# ---- the plan ---------------------------------------------------------------

class Entry:
    """One cell of the matrix: a workload (and variant) for one impl."""

    def __init__(self, mod, variant, impl, n, extra=()):
        self.mod, self.variant, self.impl, self.n = mod, variant, impl, n
        self.extra = list(extra)
        self.label = mod.NAME + ("/" + variant if variant else "")
        self.metric = _metric(mod, variant)
        if impl == "qloop":
            self.kind = "qloop"
        elif impl.startswith("qloop"):
            self.kind = "qloop-alt"
        elif impl in getattr(mod, "FLOORS", ()):
            self.kind = "floor"
        else:
            self.kind = "peer"

    def command(self, n=None):
        cmd = [sys.executable, "-m", self.mod.__name__, "--impl", self.impl,
               "--n", str(self.n if n is None else n)]
        if self.variant:
            cmd += ["--variant", self.variant]
        return cmd + self.extra


class ScriptWorkload:
    """A benchmark script outside the workload protocol: bench/hot_call.py in
    the source tree.  One process measures every impl and prints one JSON line
    per (workload, impl).  Its impls are ranked as: qloop._core (the qloop
    path), the cffi paths (what it is compared with), a plain Python call
    (the floor)."""

    NAME = "hot_call"
    KINDS = {"core_noarg": "qloop", "cffi_keepgil": "peer", "cffi_release": "peer",
             "py_call": "floor"}

    def __init__(self, path):
        self.path = path


class ScriptEntry:
    def __init__(self, wl, a):
        self.wl, self.label, self.impl, self.kind = wl, wl.NAME, "(all)", "script"
        self.metric = "per_op_ns"
        n = 200_000 if a.quick else 1_000_000
        secs = 0.3 if a.quick else 1.0
        self.args = ["--n", str(max(1, int(n * a.n_scale))),
                     "--repeat", "2" if a.quick else "5",
                     "--seconds", "%g" % max(0.01, secs * min(1.0, a.n_scale))]

    def command(self, n=None):
        return [sys.executable, self.wl.path] + self.args


def find_hot_call():
    """bench/hot_call.py of the source tree qloop was installed from (editable
    installs), or under the current directory; None if neither exists."""
    import qloop
    pkg = os.path.dirname(os.path.abspath(qloop.__file__))
    for base in (os.path.dirname(pkg), os.getcwd()):
        path = os.path.join(base, "bench", "hot_call.py")
        if os.path.isfile(path):
            return path
    return None


def _metric(mod, variant):
    m = getattr(mod, "METRIC", "per_op_ns")
    return m[variant] if isinstance(m, dict) else m


def _per_variant(value, variant):
    return value[variant] if isinstance(value, dict) else value


def load_workloads(names, notes):
    """Import the workload modules (they import nothing heavy at top level)."""
    mods = []
    for name in WORKLOADS:
        if names and not any(x == name or x.split("/")[0] == name for x in names):
            continue
        try:
            spec = importlib.util.find_spec(PACKAGE + "." + name)
        except ImportError:
            spec = None
        if spec is None:
            if name == "hot_call":
                path = find_hot_call()
                if path:
                    mods.append(ScriptWorkload(path))
                else:
                    notes.append("hot_call: bench/hot_call.py is not in this tree (skipped)")
                continue
            raise SystemExit("qloop bench: workload module %s.%s is missing" % (PACKAGE, name))
        mod = importlib.import_module(PACKAGE + "." + name)
        if not hasattr(mod, "IMPLS"):
            notes.append("%s: module does not follow the workload protocol (skipped)" % name)
            continue
        mods.append(mod)
    return mods


def available(module_name):
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def make_plan(mods, a, notes):
    plan = []
    missing = {}
    for mod in mods:
        if isinstance(mod, ScriptWorkload):
            if a.callgrind:
                notes.append("hot_call: not measured under callgrind (its own script)")
            elif not a.only or "hot_call" in a.only:
                plan.append(ScriptEntry(mod, a))
            continue
        variants = mod.VARIANTS or (None,)
        for v in variants:
            label = mod.NAME + ("/" + v if v else "")
            if a.only and not any(x in (mod.NAME, label) for x in a.only):
                continue
            if a.callgrind:
                base = _per_variant(getattr(mod, "CALLGRIND_N", None), v)
                if base is None:
                    notes.append("%s: not measured under callgrind (runs outside this "
                                 "Python process)" % label)
                    continue
            else:
                base = _per_variant(mod.QUICK_N if a.quick else mod.DEFAULT_N, v)
            n = max(1, int(round(base * a.n_scale)))
            for impl in mod.IMPLS:
                need = mod.REQUIRES.get(impl)
                if need and not available(need):
                    missing.setdefault(need, []).append(label + ":" + impl)
                    continue
                extra = []
                if mod.NAME == "cswitch" and impl == "qemu":
                    if not a.qemu_build:
                        continue   # reported as the anchor figure instead
                    extra = ["--qemu-build", a.qemu_build]
                plan.append(Entry(mod, v, impl, n, extra))
    for need in sorted(missing):
        notes.append("%s is not installed: skipped %d runs (pip install 'qloop[bench]')"
                     % (need, len(missing[need])))
    return plan


# ---- running ----------------------------------------------------------------

class Progress:
    """One status line on stderr (rewritten in place on a terminal)."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.stream = stream
        self.tty = stream.isatty()

    def show(self, text):
        line = "[%*d/%d %5.0fs] %s" % (len(str(self.total)), self.done + 1, self.total,
                                       time.monotonic() - self.t0, text)
        if self.tty:
            self.stream.write("\r\x1b[K" + line[:150])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def step(self):
        self.done += 1

    def close(self):
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _last_line(text):
    lines = [x.strip() for x in (text or "").splitlines() if x.strip()]
    return lines[-1] if lines else ""


def run_once(cmd, timeout, env=None):
    """Run one workload process; return its record (dict), with ``status``
    "ok", "n/a" or "failed" (plus ``reason``)."""
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        return {"status": "failed", "reason": "timed out after %.0f s %s"
                % (timeout, _last_line(e.stderr if isinstance(e.stderr, str) else ""))}
    out = _last_line(r.stdout)
    if r.returncode != 0:
        return {"status": "failed", "reason": _last_line(r.stderr) or "exit status %d"
                % r.returncode, "stderr": r.stderr[-4000:]}
    try:
        rec = json.loads(out)
    except ValueError:
        return {"status": "failed", "reason": "no JSON result line: %r" % out[-200:]}
    rec.setdefault("status", "ok")
    rec["_stderr"] = r.stderr
    rec["_stdout"] = r.stdout
    return rec


def run_matrix(plan, repeat, progress, timeout):
    results = {}
    for rep in range(repeat):
        for e in plan:
            key = (e.label, e.impl)
            prev = results.get(key, [])
            if prev and prev[-1]["status"] == "n/a":
                progress.step()
                continue        # not implemented: no point asking again
            progress.show("rep %d/%d  %-22s %s" % (rep + 1, repeat, e.label, e.impl))
            started = time.monotonic()
            rec = run_once(e.command(), timeout)
            rec["process_wall_s"] = round(time.monotonic() - started, 3)
            stdout = rec.pop("_stdout", "")
            rec.pop("_stderr", None)
            if isinstance(e, ScriptEntry) and rec["status"] == "ok":
                for line in stdout.splitlines():
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    r.update(status="ok", repeat=rep, label=r["workload"], _from=e.label)
                    results.setdefault((r["workload"], r["impl"]), []).append(r)
                progress.step()
                continue
            rec["repeat"] = rep
            rec["label"], rec["impl"] = e.label, e.impl
            results.setdefault(key, []).append(rec)
            progress.step()
    return results


def _callgrind_ir(cmd, timeout, tmpdir):
    out = os.path.join(tmpdir, "callgrind.out.%d" % time.monotonic_ns())
    vg = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
    rec = run_once(vg + cmd, timeout)
    if rec["status"] != "ok":
        return rec, None
    ir = None
    try:
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    ir = int(line.split()[1])
                    break
    finally:
        if os.path.exists(out):
            os.unlink(out)
    if ir is None:
        return {"status": "failed", "reason": "callgrind wrote no instruction count"}, None
    return rec, ir


def run_callgrind(plan, progress, timeout):
    """Instructions per op = (Ir(2n) - Ir(n)) / (ops(2n) - ops(n))."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="qloop-callgrind-") as tmpdir:
        for e in plan:
            recs = []
            for n in (e.n, 2 * e.n):
                progress.show("callgrind %-22s %s n=%d" % (e.label, e.impl, n))
                rec, ir = _callgrind_ir(e.command(n), timeout, tmpdir)
                recs.append((rec, ir))
                if rec["status"] != "ok":
                    break
            progress.step()
            (r1, ir1) = recs[0]
            if r1["status"] != "ok" or recs[-1][0]["status"] != "ok":
                bad = r1 if r1["status"] != "ok" else recs[-1][0]
                out = {"status": bad["status"], "reason": bad.get("reason", "")}
            else:
                r2, ir2 = recs[1]
                dops = r2["ops"] - r1["ops"]
                out = {"status": "ok", "ir_per_op": round((ir2 - ir1) / dops, 1) if dops else None,
                       "ir": [ir1, ir2], "ops": [r1["ops"], r2["ops"]]}
            out.update(label=e.label, impl=e.impl, n=e.n, repeat=0)
            results[(e.label, e.impl)] = [out]
    return results


# ---- summarising --------------------------------------------------------------

def _cost(metric, value):
    """Turn a value into 'lower is better' (time-like) for ratios."""
    if value is None:
        return None
    return 1.0 / value if metric in HIGHER_IS_BETTER else value


def summarise(plan, results, metric_override=None, cpu=False):
    """Per (label, impl): median, spread, runs, status; per label: the ratio."""
    rows, per_label = [], {}
    cells = []     # (key, kind, metric, n) in plan order
    for e in plan:
        if isinstance(e, ScriptEntry):
            keys = [k for k, v in results.items() if v and v[0].get("_from") == e.label]
            for k in keys:
                rec = results[k][0]
                cells.append((k, e.wl.KINDS.get(k[1], "other"),
                              "calls_per_s" if "calls_per_s" in rec else "per_op_ns",
                              rec.get("n")))
            if not keys:
                cells.append(((e.label, e.impl), "script", e.metric, None))
        else:
            cells.append(((e.label, e.impl), e.kind, e.metric, e.n))
    seen = set()
    for key, kind, metric, n in cells:
        if key in seen:
            continue
        seen.add(key)
        recs = results.get(key, [])
        metric = metric_override or metric
        if cpu and metric == "per_op_ns" and any("cpu_per_op_ns" in r for r in recs):
            metric = "cpu_per_op_ns"   # (C programs and scripts have wall time only)
        ok = [r for r in recs if r["status"] == "ok" and r.get(metric) is not None]
        row = {"workload": key[0], "impl": key[1], "kind": kind, "metric": metric,
               "unit": UNITS.get(metric, metric), "runs": len(ok), "n": n}
        if ok:
            vals = [r[metric] for r in ok]
            med = statistics.median(vals)
            row.update(status="ok", median=med,
                       spread=(max(vals) - min(vals)) / med if med else 0.0,
                       best=max(vals) if metric in HIGHER_IS_BETTER else min(vals))
            for extra in ("handoff_ratio", "spurious_wakeups", "create_s", "cpu_per_op_ns",
                          "mb_per_s",
                          "server_cpu_us_per_rt", "lifecycle_ns", "rss_delta_per_coro_b"):
                xs = [r[extra] for r in ok if isinstance(r.get(extra), (int, float))]
                if xs and extra != metric:
                    row[extra] = statistics.median(xs)
        elif any(r["status"] == "n/a" for r in recs):
            row.update(status="n/a", reason=next(r.get("reason", "") for r in recs
                                                 if r["status"] == "n/a"))
        else:
            row.update(status="failed", reason=recs[-1].get("reason", "") if recs else "not run")
        rows.append(row)
        per_label.setdefault(key[0], []).append(row)
    ratios = []
    for label, lrows in per_label.items():
        q = next((r for r in lrows if r["kind"] == "qloop"), None)
        peers = [r for r in lrows if r["kind"] == "peer" and r["status"] == "ok"]
        best = min(peers, key=lambda r: _cost(r["metric"], r["median"])) if peers else None
        item = {"workload": label, "qloop": q, "best_peer": best["impl"] if best else None,
                "ratio": None}
        if q and q["status"] == "ok" and best:
            item["ratio"] = _cost(q["metric"], q["median"]) / _cost(best["metric"], best["median"])
        ratios.append(item)
    return rows, ratios


def evaluate_goals(rows, callgrind=False):
    """Return [(label, goal text, measured text, verdict)]."""
    if callgrind:
        return []
    by = {(r["workload"], r["impl"]): r for r in rows}
    out = []
    for label, text, refs, bound in GOALS:
        q = by.get((label, "qloop"))
        if q is None:
            continue
        if q["status"] != "ok":
            out.append((label, text, "qloop " + q["status"], "n/a"))
            continue
        qc = _cost(q["metric"], q["median"])
        if refs is None:
            out.append((label, text, "%s %s" % (_fmt(q["median"]), q["unit"]),
                        "met" if q["median"] <= bound else "NOT met"))
            continue
        cands = [by.get((label, r)) for r in refs]
        cands = [c for c in cands if c and c["status"] == "ok"]
        if not cands:
            if label == "cswitch":
                from .bench.cswitch import QEMU_ANCHOR_NS
                ratio = q["median"] / QEMU_ANCHOR_NS
                out.append((label, text, "%.2fx the anchor %.1f ns (QEMU not measured in "
                            "this run)" % (ratio, QEMU_ANCHOR_NS),
                            ("met" if ratio <= bound else "NOT met") + " (vs anchor)"))
            else:
                out.append((label, text, "reference %s not measured" % "/".join(refs), "n/a"))
            continue
        ref = min(cands, key=lambda c: _cost(c["metric"], c["median"]))
        ratio = qc / _cost(ref["metric"], ref["median"])
        if q["metric"] in HIGHER_IS_BETTER:
            measured = "%.2fx %s's %s" % (1 / ratio, ref["impl"], q["unit"])
        elif q["metric"] == "rss_delta_per_coro_b":
            measured = "%.2fx %s's bytes" % (ratio, ref["impl"])
        else:
            measured = "%.2fx %s's %s" % (ratio, ref["impl"], "CPU time" if q["metric"] ==
                                          "cpu_per_op_ns" else "time")
        out.append((label, text, measured, "met" if ratio <= bound else "NOT met"))
    return out


def _fmt(v):
    if v is None:
        return "-"
    if v >= 1000:
        return "{:,.0f}".format(v)
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def render(rows, ratios, goals, notes, meta, callgrind=False):
    lines = []
    what = ("instructions per operation under callgrind (difference of two sizes)"
            if callgrind else "median of %d run(s) per cell, each a fresh process%s"
            % (meta["repeat"], ", per-op figures in process CPU time" if meta.get("cpu") else ""))
    lines.append("qloop %s bench on %s, Python %s, %d CPU(s): %s"
                 % (meta["qloop"], meta["machine"], meta["python"], meta["cpus"], what))
    if callgrind:
        lines.append("ratio = qloop / best peer in instructions per operation: < 1 means "
                     "qloop executes fewer.")
    else:
        lines.append("spread = (max - min) / median.  ratio = qloop / best peer as a ratio of "
                     "TIME per operation (throughput inverted): < 1 means qloop is faster.")
    lines.append("")
    hdr = "%-22s %-20s %14s %-9s %7s %5s  %s" % ("workload", "impl", "median", "unit",
                                                 "spread", "runs", "notes")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    last = None
    for r in rows:
        name = r["workload"] if r["workload"] != last else ""
        last = r["workload"]
        impl = r["impl"] + (" (floor)" if r["kind"] == "floor" else "")
        if r["status"] == "ok":
            extras = []
            for k, fmt in (("handoff_ratio", "handoff %.2f"), ("spurious_wakeups", "spurious %g"),
                           ("cpu_per_op_ns", "cpu %.0f ns/op"), ("create_s", "create %.3fs"), ("mb_per_s", "%.0f MB/s"),
                           ("server_cpu_us_per_rt", "srv %.1f us/rt"),
                           ("lifecycle_ns", "lifecycle %.1f ns")):
                if k in r and k != r["metric"]:
                    extras.append(fmt % r[k])
            lines.append("%-22s %-20s %14s %-9s %6.0f%% %5d  %s" % (
                name, impl, _fmt(r["median"]), r["unit"], r["spread"] * 100, r["runs"],
                " ".join(extras)))
        else:
            what = "n/a (not implemented)" if r["status"] == "n/a" else "failed"
            lines.append("%-22s %-20s %s: %s" % (name, impl, what,
                                                 (r.get("reason") or "")[:100]))
    lines.append("")
    lines.append("%-22s %22s  %-18s %8s" % ("workload", "qloop", "best peer", "ratio"))
    lines.append("-" * 74)
    for it in ratios:
        q = it["qloop"]
        qtxt = (_fmt(q["median"]) + " " + q["unit"]) if q and q["status"] == "ok" else (
            "n/a" if q and q["status"] == "n/a" else ("failed" if q else "-"))
        rtxt = "%.2f" % it["ratio"] if it["ratio"] is not None else "-"
        lines.append("%-22s %22s  %-18s %8s" % (it["workload"], qtxt, it["best_peer"] or "-",
                                                rtxt))
    if goals:
        lines.append("")
        lines.append("goals")
        for label, text, measured, verdict in goals:
            lines.append("  %-18s %-48s %-40s %s" % (label, text, measured, verdict))
    if notes:
        lines.append("")
        for n in notes:
            lines.append("note: " + n)
    return "\n".join(lines)


def render_markdown(rows, ratios, goals, meta):
    """The same tables as markdown (for bench/README.md)."""
    out = ["| workload | impl | median | unit | spread | runs | notes |",
           "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        impl = r["impl"] + (" (floor)" if r["kind"] == "floor" else "")
        if r["status"] == "ok":
            notes = []
            for k, fmt in (("handoff_ratio", "handoff %.2f"), ("cpu_per_op_ns", "CPU %.0f ns/op"), ("create_s", "create %.3f s"),
                           ("mb_per_s", "%.0f MB/s"), ("server_cpu_us_per_rt", "server %.1f us/rt"),
                           ("lifecycle_ns", "lifecycle %.1f ns")):
                if k in r and k != r["metric"]:
                    notes.append(fmt % r[k])
            out.append("| %s | %s | %s | %s | %.0f%% | %d | %s |" % (
                r["workload"], impl, _fmt(r["median"]), r["unit"], r["spread"] * 100, r["runs"],
                ", ".join(notes)))
        else:
            what = "n/a (not implemented)" if r["status"] == "n/a" else "failed"
            out.append("| %s | %s | %s | | | | %s |" % (r["workload"], impl, what,
                                                      (r.get("reason") or "").replace("|", "/")))
    out += ["", "| workload | qloop | best peer | ratio (time, < 1 = qloop faster) |",
            "|---|---:|---|---:|"]
    for it in ratios:
        q = it["qloop"]
        qtxt = (_fmt(q["median"]) + " " + q["unit"]) if q and q["status"] == "ok" else (
            q["status"] if q else "-")
        out.append("| %s | %s | %s | %s |" % (it["workload"], qtxt, it["best_peer"] or "-",
                                              "%.2f" % it["ratio"] if it["ratio"] else "-"))
    if goals:
        out += ["", "| workload | goal | measured | verdict |", "|---|---|---|---|"]
        for label, text, measured, verdict in goals:
            out.append("| %s | %s | %s | %s |" % (label, text, measured, verdict))
    return "\n".join(out) + "\n"


def plot(path, ratios, meta, callgrind=False):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        sys.stderr.write("qloop bench: --plot needs matplotlib (pip install matplotlib, or "
                         "pip install 'qloop[bench]'); no chart written\n")
        return False
    items = [it for it in ratios if it["ratio"]]
    if not items:
        sys.stderr.write("qloop bench: no ratio to plot (no workload ran for qloop and a peer)\n")
        return False
    labels = [it["workload"] for it in items]
    vals = [it["ratio"] for it in items]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(items) + 2), 4.5))
    colors = ["#2a9d8f" if v <= 1 else "#e76f51" for v in vals]
    # Bars grow from 1.0 (parity) up (qloop slower) or down (qloop faster).
    ax.bar(range(len(vals)), [v - 1.0 for v in vals], bottom=1.0, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylim(min(vals + [1.0]) / 1.6, max(vals + [1.0]) * 1.6)
    fmt = matplotlib.ticker.FuncFormatter(lambda y, _: "%g" % round(y, 2))
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    for i, (v, it) in enumerate(zip(vals, items)):
        ax.text(i, v, "%.2f\n%s" % (v, it["best_peer"]), ha="center",
                va="bottom" if v >= 1 else "top", fontsize=7)
    ax.set_ylabel("qloop / best peer (%s, lower is better)"
                  % ("instructions" if callgrind else "time"))
    ax.set_title("qloop %s vs peers, Python %s" % (meta["qloop"], meta["python"]))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---- command line -------------------------------------------------------------

def parse(argv):
    p = argparse.ArgumentParser(prog="python -m qloop bench",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="workloads: " + ", ".join(WORKLOADS))
    p.add_argument("--quick", action="store_true",
                   help="smaller N and one repeat (about a minute on 2 cores)")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="run only these workloads (e.g. callbacks spawn/mem)")
    p.add_argument("--repeat", type=int, default=None,
                   help="runs per cell, round-robin (default 3; 1 with --quick)")
    p.add_argument("--json", metavar="FILE", help="write every run and the summary here")
    p.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios (matplotlib)")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as markdown too")
    p.add_argument("--from-json", metavar="FILE",
                   help="run nothing: summarise the runs saved by an earlier --json (e.g. "
                        "again with --cpu, or as --markdown / --plot)")
    p.add_argument("--cpu", action="store_true",
                   help="rank per-op workloads by process CPU time per op instead of wall "
                        "time (steadier on a shared machine; every run records both)")
    p.add_argument("--callgrind", action="store_true",
                   help="count instructions per operation under valgrind instead of timing")
    p.add_argument("--n-scale", type=float, default=1.0,
                   help="multiply every N by this (e.g. 0.01 for a smoke run)")
    p.add_argument("--qemu-build", metavar="PATH", default=os.environ.get("QLOOP_BENCH_QEMU_BUILD"),
                   help="QEMU build dir: compare cswitch with its test-coroutine /perf/yield")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds before one run counts as failed (default 300; 3600 "
                        "with --callgrind)")
    a = p.parse_args(argv)
    if a.repeat is None:
        a.repeat = 1 if (a.quick or a.callgrind) else 3
    if a.repeat < 1 or a.n_scale <= 0:
        p.error("--repeat and --n-scale must be positive")
    if a.timeout is None:
        a.timeout = 3600.0 if a.callgrind else 300.0
    return a


def main(argv=None):
    a = parse(argv)
    import qloop
    notes = []
    if a.callgrind and not _which("valgrind"):
        sys.stderr.write("qloop bench: --callgrind needs valgrind on PATH\n")
        return 2
    saved = None
    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        a.callgrind = bool(saved["meta"].get("callgrind"))
    mods = load_workloads(a.only, notes)
    plan = make_plan(mods, a, notes)
    if saved is not None:
        plan = _plan_for_saved(plan, saved, a)
    if not plan:
        sys.stderr.write("qloop bench: nothing to run (check --only)\n")
        return 2
    meta = {"qloop": qloop.__version__, "python": platform.python_version(),
            "machine": "%s %s" % (platform.system(), platform.machine()),
            "cpus": os.cpu_count() or 1, "repeat": a.repeat, "quick": a.quick,
            "n_scale": a.n_scale, "callgrind": a.callgrind, "cpu": a.cpu,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if any(e.label == "hot_call" for e in plan):
        notes.append("hot_call: the qloop column is a qloop._core call (core_noarg), the "
                     "peers are cffi calls into the same C function (GIL kept / released), "
                     "the floor a plain Python call")
    if not a.qemu_build and any(e.label == "cswitch" for e in plan):
        from .bench.cswitch import QEMU_ANCHOR_NS
        notes.append("cswitch: QEMU's /perf/yield is %.1f ns per enter+yield in "
                     "docs/anchors.md (QEMU 10.0.2, this kind of machine) -- not measured in "
                     "this run (give --qemu-build PATH to measure it)" % QEMU_ANCHOR_NS)
    if saved is not None:
        meta = dict(saved["meta"], cpu=a.cpu)
        results = {}
        for r in saved["runs"]:
            results.setdefault((r.get("label") or r["workload"], r["impl"]), []).append(r)
    else:
        t0 = time.monotonic()
        total = len(plan) * (1 if a.callgrind else a.repeat)
        progress = Progress(total)
        try:
            if a.callgrind:
                results = run_callgrind(plan, progress, a.timeout)
            else:
                results = run_matrix(plan, a.repeat, progress, a.timeout)
        finally:
            progress.close()
        meta["seconds"] = round(time.monotonic() - t0, 1)
    rows, ratios = summarise(plan, results, "ir_per_op" if a.callgrind else None, a.cpu)
    goals = evaluate_goals(rows, a.callgrind)
    print(render(rows, ratios, goals, notes, meta, a.callgrind))
    print("\n(%d runs in %.0f s)" % (sum(len(v) for v in results.values()), meta["seconds"]))
    if a.json and saved is None:
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "runs": [r for v in results.values() for r in v],
                       "rows": rows, "ratios": [_ratio_json(it) for it in ratios],
                       "goals": [dict(zip(("workload", "goal", "measured", "verdict"), g))
                                 for g in goals],
                       "notes": notes}, f, indent=1, default=_json_default)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(render_markdown(rows, ratios, goals, meta))
    if a.plot:
        plot(a.plot, ratios, meta, a.callgrind)
    return 0


def _plan_for_saved(plan, saved, a):
    """The plan of a saved run: the cells of this build's plan that the file
    has runs for, plus hot_call and cswitch/qemu if the file has them."""
    keys = {(r.get("label") or r["workload"], r["impl"]) for r in saved["runs"]}
    out = [e for e in plan if isinstance(e, ScriptEntry) or (e.label, e.impl) in keys]
    froms = {r.get("_from") for r in saved["runs"]}
    if "hot_call" in froms and not any(isinstance(e, ScriptEntry) for e in out):
        out.append(ScriptEntry(ScriptWorkload(None), a))
    if ("cswitch", "qemu") in keys and not any(e.label == "cswitch" and e.impl == "qemu"
                                                for e in out):
        from .bench import cswitch
        out.append(Entry(cswitch, None, "qemu", 0))
    return out


def _ratio_json(it):
    q = it["qloop"] or {}
    return {"workload": it["workload"], "qloop_status": q.get("status"),
            "qloop_median": q.get("median"), "unit": q.get("unit"),
            "best_peer": it["best_peer"], "ratio": it["ratio"]}


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def _which(name):
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if os.access(os.path.join(d, name), os.X_OK):
            return True
    return False

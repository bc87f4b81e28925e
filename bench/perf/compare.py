"""Run wl.py workloads round-robin over impls (each run a fresh process) and
print medians of wall and CPU ns per op and the CPU ratio to a reference impl.

    python bench/perf/compare.py [--repeats R] [--python PY=LABEL ...]
        [--only WORKLOAD ...]

--python adds another interpreter (e.g. a venv with the base branch
installed) whose qloop runs under LABEL, so before/after share one run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PLAN = {
    "chain": (["qloop", "qloop_bh", "gevent", "uvloop", "deque"], "gevent", None),
    "batch": (["qloop", "qloop_bh", "gevent", "uvloop", "deque"], "gevent", None),
    "timers": (["qloop", "gevent", "uvloop"], "gevent", None),
    "wakeup": (["qloop", "threads_lock", "gevent", "uvloop"], "threads_lock", 50000),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--python", action="append", default=[])
    p.add_argument("--only", nargs="*")
    a = p.parse_args()
    extra = [x.split("=", 1) for x in a.python]
    for wl, (impls, ref, n) in PLAN.items():
        if a.only and wl not in a.only:
            continue
        runs = [(sys.executable, i, i) for i in impls]
        runs += [(py, "qloop", label) for py, label in extra]
        res = {label: [] for _, _, label in runs}
        for _ in range(a.repeats):
            for py, impl, label in runs:
                cmd = [py, os.path.join(HERE, "wl.py"), wl, "--impl", impl]
                if n:
                    cmd += ["--n", str(n)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                res[label].append(json.loads(out))
        refcpu = statistics.median(r["cpu_per_op_ns"] for r in res[ref])
        refwall = statistics.median(r["per_op_ns"] for r in res[ref])
        for label, rs in res.items():
            wall = statistics.median(r["per_op_ns"] for r in rs)
            cpu = statistics.median(r["cpu_per_op_ns"] for r in rs)
            print(json.dumps({"workload": wl, "impl": label, "wall_ns": wall, "cpu_ns": cpu,
                              "wall_vs_" + ref: round(wall / refwall, 3),
                              "cpu_vs_" + ref: round(cpu / refcpu, 3)}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()

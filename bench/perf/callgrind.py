"""Instructions per op of wl.py workloads, counted by callgrind.

    python bench/perf/callgrind.py WORKLOAD --impl IMPL --n N1 N2 [--keep DIR]

Runs wl.py twice under ``valgrind --tool=callgrind`` collecting only the
timed region (``--toggle-collect=map_next``, see wl.py) and prints one JSON
line with ``ir_per_op = (Ir(N2) - Ir(N1)) / (ops(N2) - ops(N1))``: costs that
do not grow with N (first-call warm-up, array growth to a size both runs
reach) cancel.  --keep keeps the callgrind.out files for callgrind_annotate.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 1000


def ops(workload, n):
    return (n // BATCH) * BATCH if workload == "batch" else n


def run(workload, impl, n, outdir):
    out = os.path.join(outdir, "callgrind.out.%s.%s.%d" % (workload, impl, n))
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
           "--toggle-collect=map_next", "--callgrind-out-file=" + out,
           sys.executable, os.path.join(HERE, "wl.py"), workload, "--impl", impl, "--n", str(n)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        for line in f:
            m = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError("no totals in " + out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workload")
    p.add_argument("--impl", default="qloop")
    p.add_argument("--n", type=int, nargs=2, required=True)
    p.add_argument("--keep")
    a = p.parse_args()
    outdir = a.keep or tempfile.mkdtemp(prefix="qlcg-")
    os.makedirs(outdir, exist_ok=True)
    n1, n2 = a.n
    ir1 = run(a.workload, a.impl, n1, outdir)
    ir2 = run(a.workload, a.impl, n2, outdir)
    per = (ir2 - ir1) / (ops(a.workload, n2) - ops(a.workload, n1))
    print(json.dumps({"workload": a.workload, "impl": a.impl, "n": [n1, n2], "ir": [ir1, ir2],
                      "ir_per_op": round(per, 1)}))
    if not a.keep:
        for f in os.listdir(outdir):
            os.unlink(os.path.join(outdir, f))
        os.rmdir(outdir)


if __name__ == "__main__":
    main()

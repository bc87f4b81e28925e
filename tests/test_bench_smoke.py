"""Smoke tests for the benchmark suite (qloop/bench/ and python -m qloop bench).

Each workload runs once per installed implementation at a tiny N in a fresh
process, as the runner does.  Only the shape of the result line and the exit
status are checked, never a time: a qloop implementation may report
"n/a" while the API it needs does not exist yet, a peer never may.
"""
import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import SANITIZED

from qloop import _bench

# Tiny sizes (N and options): each run is dominated by start-up.
SMOKE = {
    "callbacks": {"n": 2000},
    "threadsafe_wakeup": {"n": 200},
    "timers": {"n": 300},
    "switch": {"n": 2000},
    "spawn": {"n": 200},
    "lock": {"n": 5, "workers": 10},
    "echo": {"n": 5, "conns": 4, "timeout": 30.0},
    "fdwatch": {"n": 200},
    "threadpool": {"n": 50},
    "cswitch": {"n": 10000},
}

# One process per workload module runs every variant x installed impl through
# the function form (measure()) and prints one line each: a fresh process per
# run, as the runner does, would make this file take a minute.  The module
# processes all start together (they mostly wait: timers, sockets, threads).
DRIVER = r"""
import importlib, importlib.util, json, sys
from qloop.bench._common import measure
name, opts = sys.argv[1], json.loads(sys.argv[2])
n = opts.pop("n")
mod = importlib.import_module("qloop.bench." + name)
for variant in mod.VARIANTS or (None,):
    for impl in mod.IMPLS:
        need = mod.REQUIRES.get(impl)
        if need and importlib.util.find_spec(need) is None:
            continue
        if name == "cswitch" and impl == "qemu":
            continue   # needs a QEMU build (see test_cswitch_qemu_is_na_without_a_build)
        try:
            rec = measure(mod, impl, n, variant, **opts)
        except Exception as e:
            rec = {"impl": impl, "variant": variant, "error": repr(e)}
        print(json.dumps(rec), flush=True)
"""


def _run(args, timeout=60):
    return subprocess.run([sys.executable] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def _check_record(name, rec):
    assert "error" not in rec, rec
    impl = rec["impl"]
    assert rec["workload"].split("/")[0] == name
    assert isinstance(rec["n"], int)
    if rec.get("status") == "n/a":
        assert impl.startswith("qloop"), "a peer must never be n/a: %s" % rec
        assert rec["reason"]
        return
    for key in ("seconds", "ops", "peak_rss_kb", "python"):
        assert key in rec, rec
    assert rec["seconds"] > 0 and rec["ops"] > 0
    metric = "ops_per_s" if name == "echo" else "per_op_ns"
    assert rec[metric] > 0, rec
    if rec["workload"] == "spawn/mem":
        assert "rss_delta_per_coro_b" in rec
    if name == "lock":
        assert 0 <= rec["handoff_ratio"] <= 1


@pytest.fixture(scope="module")
def drivers():
    procs = {name: subprocess.Popen([sys.executable, "-c", DRIVER, name, json.dumps(opts)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, opts in SMOKE.items()}
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_workload_runs_for_every_installed_impl(name, drivers):
    if name == "cswitch" and SANITIZED:
        pytest.skip("cswitch links libqloop.a into a plain C driver; the sanitized "
                    "build's library needs the sanitizer runtimes (a benchmark has no "
                    "business running there)")
    mod = importlib.import_module("qloop.bench." + name)
    out, err = drivers[name].communicate(timeout=120)
    assert drivers[name].returncode == 0, err[-3000:]
    recs = [json.loads(x) for x in out.strip().splitlines()]
    expected = set()
    for variant in mod.VARIANTS or (None,):
        for impl in mod.IMPLS:
            need = mod.REQUIRES.get(impl)
            if (need and importlib.util.find_spec(need) is None) or impl == "qemu":
                continue
            expected.add((name + ("/" + variant if variant else ""), impl))
    assert {(rec.get("workload"), rec["impl"]) for rec in recs} == expected
    for rec in recs:
        _check_record(name, rec)


@pytest.mark.parametrize("impl", ["qloop", "asyncio"])
def test_module_command_line_prints_one_json_line(impl):
    r = _run(["-m", "qloop.bench.callbacks", "--impl", impl, "--variant", "batch",
              "--n", "2000"])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    rec = json.loads(lines[0])
    assert rec["workload"] == "callbacks/batch" and rec["impl"] == impl
    _check_record("callbacks", rec)


def test_cswitch_qemu_is_na_without_a_build():
    env = dict(os.environ)
    env.pop("QLOOP_BENCH_QEMU_BUILD", None)
    r = subprocess.run([sys.executable, "-m", "qloop.bench.cswitch", "--impl", "qemu"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["status"] == "n/a" and "qemu-build" in rec["reason"]


def test_runner_quick_callbacks(tmp_path):
    out = tmp_path / "bench.json"
    r = _run(["-m", "qloop", "bench", "--quick", "--only", "callbacks/batch", "--n-scale",
              "0.02", "--json", str(out), "--markdown", str(tmp_path / "t.md")], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ratio" in r.stdout and "callbacks/batch" in r.stdout
    assert "callbacks/chain" not in r.stdout      # --only picks one variant
    assert "callbacks/batch" in r.stderr          # the progress line names each run
    data = json.loads(out.read_text())
    impls = {(row["workload"], row["impl"]) for row in data["rows"]}
    assert ("callbacks/batch", "qloop") in impls and ("callbacks/batch", "asyncio") in impls
    for row in data["rows"]:
        assert row["status"] in ("ok", "n/a"), row
    assert [it["workload"] for it in data["ratios"]] == ["callbacks/batch"]
    md = (tmp_path / "t.md").read_text()
    assert "| callbacks/batch | qloop |" in md


def test_failed_run_reports_its_last_stderr_line():
    rec = _bench.run_once([sys.executable, "-c",
                           "import sys; sys.stderr.write('first\\nboom: it broke\\n'); "
                           "sys.exit(1)"], timeout=30)
    assert rec["status"] == "failed" and rec["reason"] == "boom: it broke"


def test_table_marks_na_and_failed_and_keeps_the_rest():
    mod = importlib.import_module("qloop.bench.switch")
    plan = [_bench.Entry(mod, None, impl, 10) for impl in ("qloop", "greenlet", "asyncio")]
    results = {
        ("switch", "qloop"): [{"status": "n/a", "reason": "qloop.Coroutine is not implemented"}],
        ("switch", "greenlet"): [{"status": "failed", "reason": "Segmentation fault"}],
        ("switch", "asyncio"): [{"status": "ok", "per_op_ns": 3000.0},
                                {"status": "ok", "per_op_ns": 2000.0}],
    }
    rows, ratios = _bench.summarise(plan, results)
    text = _bench.render(rows, ratios, _bench.evaluate_goals(rows), [],
                         {"qloop": "x", "machine": "m", "python": "3", "cpus": 2, "repeat": 2})
    assert "n/a (not implemented)" in text and "failed: Segmentation fault" in text
    asy = next(r for r in rows if r["impl"] == "asyncio")
    assert asy["median"] == 2500.0 and abs(asy["spread"] - 0.4) < 1e-9
    assert ratios[0]["ratio"] is None


def test_ratio_is_a_time_ratio_for_throughput_too():
    mod = importlib.import_module("qloop.bench.echo")
    plan = [_bench.Entry(mod, "1k", impl, 10) for impl in ("qloop", "uvloop_protocol")]
    results = {("echo/1k", "qloop"): [{"status": "ok", "ops_per_s": 300.0}],
               ("echo/1k", "uvloop_protocol"): [{"status": "ok", "ops_per_s": 200.0}]}
    rows, ratios = _bench.summarise(plan, results)
    assert abs(ratios[0]["ratio"] - 200.0 / 300.0) < 1e-9   # < 1: qloop is faster
    goals = _bench.evaluate_goals(rows)
    assert goals[0][0] == "echo/1k" and goals[0][3] == "met"   # 1.5x >= 1.2x


def test_plot_without_matplotlib_says_so(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import fails
    ok = _bench.plot(str(tmp_path / "x.png"), [{"workload": "w", "ratio": 0.5,
                                                 "best_peer": "p"}],
                     {"qloop": "x", "python": "3"})
    assert ok is False
    assert "matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "r.png"
    ok = _bench.plot(str(path), [{"workload": "a", "ratio": 0.5, "best_peer": "p"},
                                 {"workload": "b", "ratio": 2.0, "best_peer": "q"},
                                 {"workload": "c", "ratio": None, "best_peer": None}],
                     {"qloop": "x", "python": "3"})
    assert ok and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not _bench._which("valgrind"), reason="needs valgrind")
@pytest.mark.skipif(SANITIZED, reason="valgrind cannot run an interpreter with libasan preloaded")
def test_callgrind_counts_instructions(tmp_path):
    rec, ir = _bench._callgrind_ir(["/bin/echo", '{"ops": 5}'], 60, str(tmp_path))
    assert rec["status"] == "ok" and rec["ops"] == 5
    assert isinstance(ir, int) and ir > 1000
    assert list(tmp_path.iterdir()) == []        # the callgrind output file is removed


def test_every_bench_file_is_installed():
    # The suite runs from an installed qloop: each file of qloop/bench/ must be
    # listed for installation in meson.build.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "meson.build")) as f:
        build = f.read()
    bench_dir = os.path.join(root, "qloop", "bench")
    files = sorted(n for n in os.listdir(bench_dir) if n.endswith((".py", ".c")))
    assert files
    missing = [n for n in files if "'qloop/bench/%s'" % n not in build]
    assert missing == [], "add these to meson.build: %s" % missing
    assert "'qloop/_bench.py'" in build


def test_fdwatch_floor_reports_the_cpu_time_of_its_own_process():
    """The C floor runs in a child process: its record's CPU time is that
    process's, not the idle Python parent's (which would make it look free)."""
    from qloop.bench import fdwatch
    from qloop.bench._common import measure
    rec = measure(fdwatch, "c_epoll", 2000, "coro")
    assert rec["per_op_ns"] > 0
    # six system calls per round trip cannot cost under 100 ns of CPU
    assert rec["cpu_per_op_ns"] > 100, rec


def test_cswitch_builds_beyond_the_newest_four_are_removed(tmp_path):
    """Each libqloop build gets its own cswitch executable in the cache; old
    ones go, so that the cache does not grow by one per build forever."""
    from qloop.bench import cswitch
    paths = []
    for i in range(7):
        p = tmp_path / ("cswitch-%016x" % i)
        p.write_bytes(b"")
        os.utime(p, ns=(i * 10**9, i * 10**9))
        paths.append(p)
    other = tmp_path / "echo_client"
    other.write_bytes(b"")
    building = tmp_path / "cswitch-00000000000000ff.1234"   # another process's temp file
    building.write_bytes(b"")
    cswitch._prune(str(paths[6]), keep=4)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([paths[3].name, paths[4].name, paths[5].name, paths[6].name,
                           other.name, building.name])

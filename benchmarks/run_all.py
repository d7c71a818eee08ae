"""Run every compare script and write its table to docs/benchmarks/<script>.md.

    python benchmarks/run_all.py            # full sizes (tens of minutes on 2 cores)
    python benchmarks/run_all.py --quick    # small sizes, a few minutes in total
    python benchmarks/run_all.py --quick --only compare_topk,compare_mining

Each table is headed by the commit, the CPU, SIMD flags, the BLAS kernel each library runs, the
thread count and the load average (benchmarks/harness.py).  Refuses to run when the 1-minute load
average is above the core count (``--force`` overrides; the headers then say FORCED under load).

The scripts run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from the environment.  When a
peer's OpenBLAS is too old to recognise this CPU (it would fall back to a generic kernel, as
faiss-cpu's bundled OpenBLAS 0.3.15 does on recent Xeons), OPENBLAS_CORETYPE is set to the kernel
the newest OpenBLAS in the process detects, so the peer runs its best kernel; the header says so.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

# (table name, script, arguments, quick arguments)
SCRIPTS = [
    ("compare_topk", "compare_topk.py", [], ["--quick"]),
    ("compare_topk-clustered", "compare_topk.py", ["--data", "clustered"],
     ["--quick", "--data", "clustered", "--queries", "1,256", "--ks", "100"]),
    ("compare_topk-scifact-tiled", "compare_topk.py", ["--data", "scifact-tiled"],
     ["--quick", "--data", "scifact-tiled", "--queries", "1,256", "--ks", "100"]),
    ("compare_topk_grid", "compare_topk_grid.py", [], ["--quick"]),
    ("compare_mining", "compare_mining.py", [], ["--quick"]),
    ("compare_mining_scale", "compare_mining_scale.py", ["--docs", "200000", "--queries", "2000"],
     ["--docs", "50000", "--queries", "500"]),
    ("compare_mining_scale-1m", "compare_mining_scale.py", ["--no-faiss"],
     ["--docs", "100000", "--queries", "1000", "--no-faiss"]),
    ("compare_mining_scale-2m-ooc", "compare_mining_scale.py",
     ["--docs", "2000000", "--dim", "768", "--queries", "2000", "--ooc", "--no-faiss"],
     ["--docs", "50000", "--dim", "768", "--queries", "500", "--ooc", "--no-faiss"]),
    ("compare_losses", "compare_losses.py", [], ["--quick"]),
    ("compare_losses_grid", "compare_losses_grid.py", [], ["--quick"]),
    ("compare_metrics", "compare_metrics.py", [], ["--quick"]),
    ("compare_bm25", "compare_bm25.py", [], ["--quick"]),
    ("compare_scale", "compare_scale.py", ["all"], ["all", "--quick"]),
    ("scale_bm25", "scale_bm25.py", [], ["--quick"]),
]

_PROBE = """
import json
import numpy
for m in ("faiss", "torch", "scipy.linalg"):
    try:
        __import__(m)
    except ImportError:
        pass
from threadpoolctl import threadpool_info
print(json.dumps([i for i in threadpool_info() if i.get("internal_api") == "openblas"]))
"""


# the name OpenBLAS has accepted longest for each kernel rank (OPENBLAS_CORETYPE must be understood by
# the oldest OpenBLAS in the process; the SIMD width is what matters for the fp32 GEMM)
_CANONICAL = {4: "SkylakeX", 3: "Haswell", 2: "Sandybridge"}


def _probe(env: dict) -> list:
    """(threadpoolctl info, kernel rank) of every OpenBLAS that numpy, faiss, torch and scipy load."""
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                             check=True).stdout
        libs = json.loads(out.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError):
        return []
    ranked = [(i, harness._RANK.get(str(i.get("architecture")).lower())) for i in libs]
    return [(i, r) for i, r in ranked if r is not None]


def child_env(force: bool) -> dict:
    """The scripts' environment: no OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE from outside, hardneg importable,
    and every OpenBLAS on its best kernel (see the module docstring)."""
    env = dict(os.environ)
    removed = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if env.pop(v, None) is not None]
    py = str(HERE.parent / "python")
    if list((HERE.parent / "python" / "hardneg").glob("_core*")) and py not in env.get("PYTHONPATH", ""):
        env["PYTHONPATH"] = py + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if force:
        env[harness.FORCED_ENV] = "1"
    notes = []
    if removed:
        notes.append(f"run_all removed {', '.join(removed)} from the environment")
    ranked = _probe(env)
    if ranked:
        best = max(r for _, r in ranked)
        low = [i for i, r in ranked if r < best]
        name = _CANONICAL.get(best)
        if low and name:
            trial = dict(env, OPENBLAS_CORETYPE=name)
            if all(r >= best for _, r in _probe(trial)):  # every OpenBLAS understood it
                env = trial
                notes.append(
                    f"run_all set OPENBLAS_CORETYPE={name}: "
                    + ", ".join(f"{Path(i['filepath']).name} {i.get('version')} detects only {i.get('architecture')} "
                                "on this CPU" for i in low)
                    + "; with it every OpenBLAS here runs its best kernel for this CPU")
    if notes:
        env["HARDNEG_BENCH_CORETYPE_NOTE"] = "; ".join(notes)
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a few minutes in total")
    ap.add_argument("--force", action="store_true", help="run even under load (the headers say FORCED)")
    ap.add_argument("--only", default=None, help="comma-separated table names (see SCRIPTS)")
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks"), help="where the tables go")
    args = ap.parse_args()

    load, cores = os.getloadavg()[0], harness.num_cores()
    if load > cores:
        msg = (f"run_all: the 1-minute load average is {load:.2f}, above the {cores} cores of this machine: "
               "other processes would take CPU time from the benchmarks and the tables would not reproduce.")
        if not args.force:
            print(msg + " Wait for a quiet machine, or pass --force (the tables then say FORCED under load).",
                  file=sys.stderr)
            return 3
        print(msg + " --force: running anyway; every header says FORCED under load.", file=sys.stderr)
    only = set(args.only.split(",")) if args.only else None
    if only:
        unknown = only - {s[0] for s in SCRIPTS}
        if unknown:
            print(f"run_all: unknown --only names {sorted(unknown)}; known: {[s[0] for s in SCRIPTS]}",
                  file=sys.stderr)
            return 2
    env = child_env(args.force)
    if env.get("HARDNEG_BENCH_CORETYPE_NOTE"):
        print("run_all: " + env["HARDNEG_BENCH_CORETYPE_NOTE"], file=sys.stderr)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed, t_all = [], time.perf_counter()
    for name, script, full, quick in SCRIPTS:
        if only and name not in only:
            continue
        argv = [sys.executable, str(HERE / script)] + (quick if args.quick else full)
        shown = " ".join(["python", f"benchmarks/{script}"] + (quick if args.quick else full))
        print(f"run_all: {shown}", file=sys.stderr)
        t = time.perf_counter()
        p = subprocess.run(argv, env=env, cwd=HERE.parent, stdout=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            print(f"run_all: {name} failed (exit {p.returncode}); {out_dir / (name + '.md')} not written",
                  file=sys.stderr)
            failed.append(name)
            continue
        text = (f"<!-- generated by `python benchmarks/run_all.py{' --quick' if args.quick else ''}`: "
                f"`{shown}` ({dt:.0f} s); do not edit by hand -->\n\n" + p.stdout.strip() + "\n")
        (out_dir / f"{name}.md").write_text(text)
        print(f"run_all: {name}: {dt:.0f} s -> {out_dir / (name + '.md')}", file=sys.stderr)
    print(f"run_all: done in {time.perf_counter() - t_all:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

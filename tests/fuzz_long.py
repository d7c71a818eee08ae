"""The long fuzz profile, for a given wall time: ``python tests/fuzz_long.py --minutes 60``.

Cycles through the property tests of tests/test_fuzz.py (each run draws new examples; the
garbage test new seeds), giving each an equal share of the time, and prints what it covered:
runs, examples and seeds per test, and every failure (then it stops with exit 1).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = ["test_topk_matches_numpy", "test_bm25_matches_bm25s", "test_evaluate_matches_pytrec_eval",
         "test_infonce_matches_float64_autograd", "test_garbage_in_a_child_process"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--examples", type=int, default=2000, help="hypothesis examples per property run")
    args = ap.parse_args()
    end = time.time() + args.minutes * 60
    done = {t: [0, 0] for t in TESTS}  # runs, examples (or child-process seeds x 2000 calls)
    seed_base = 1000
    while time.time() < end:
        for t in TESTS:
            if time.time() >= end:
                break
            env = dict(os.environ, HARDNEG_FUZZ="long", HARDNEG_FUZZ_EXAMPLES=str(args.examples),
                       HARDNEG_FUZZ_SEED_BASE=str(seed_base))
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", str(HERE / "test_fuzz.py"), "-k", t,
                                "-p", "no:cacheprovider", "-o", "addopts="], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stdout[-6000:], r.stderr[-2000:])
                print(f"FINDING in {t} (seed base {seed_base})")
                return 1
            done[t][0] += 1
            done[t][1] += 20 if t == "test_garbage_in_a_child_process" else args.examples
            if t == "test_garbage_in_a_child_process":
                seed_base += 20
        print(f"{time.strftime('%H:%M:%S')} " + ", ".join(f"{t}: {r} runs" for t, (r, _) in done.items()), flush=True)
    for t, (runs, n) in done.items():
        unit = "child processes of 2,000 garbage calls" if t == "test_garbage_in_a_child_process" else "examples"
        print(f"{t}: {runs} runs, {n:,} {unit}, no finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())

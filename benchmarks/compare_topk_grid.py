"""Exact top-k over a grid of shapes, data and metrics: hardneg vs the faster of faiss and torch.

Every cell (data x N x d x Q x metric, k = 100) times, under benchmarks/harness.py's rules
(same warm-up, interleaved calls, same threads):

* hardneg ``hn.topk(q, X, k, metric)``, one-shot (nothing kept between calls: a low-precision
  copy the screen needs is built inside every call), in its default (auto) mode, and with
  the screen off (``HARDNEG_SCREEN=0``) and forced (``HARDNEG_SCREEN=2``) for the "auto vs
  best mode" column;
* faiss ``IndexFlatIP`` / ``IndexFlatL2`` built once outside the timed call (warm), searched
  as it is and through its BLAS path (``distance_compute_blas_threshold = 20``); the faster of
  the two per run;
* torch on the prebuilt corpus tensor, in chunks of 512 queries: ``topk(q @ X.T)`` for ip,
  ``topk(|q|^2 + |x|^2 - 2 q @ X.T, largest=False)`` with the corpus norms precomputed for l2.

Data: ``isotropic`` Gaussian rows, ``scifact-tiled`` (SciFact's MiniLM corpus embeddings tiled
with small noise, d = 384 only: d = 768 tiles two of its rows side by side), ``clustered``.

    python benchmarks/compare_topk_grid.py                    # the full grid (about 10 minutes)
    python benchmarks/compare_topk_grid.py --quick            # N = 20,000, d = 384, Q = 128, 1,024
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

import harness
from compare_topk import faiss_blas_search, make_data


def grid_data(kind: str, n: int, d: int, nq: int, rng):
    if kind == "scifact-tiled" and d != 384:  # two MiniLM rows side by side
        half = make_data(kind, n * 2, 384, nq * 2, rng)
        if half is None:
            return None
        X, Q = half
        return (np.ascontiguousarray(X.reshape(n, 768)), np.ascontiguousarray(Q.reshape(nq, 768)))
    return make_data(kind, n, d, nq, rng)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="isotropic,scifact-tiled")
    ap.add_argument("--ns", default="20000,50000")
    ap.add_argument("--ds", default="384,768")
    ap.add_argument("--queries", default="128,512,1024,4096")
    ap.add_argument("--metrics", default="ip,l2")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2,
                    help="timed calls per side in a run, at least (small cells get more: see --run-seconds)")
    ap.add_argument("--run-seconds", type=float, default=0.75,
                    help="a cell's calls per run are raised until a plain-path side takes about this long "
                         "per run (from a probe call), at most 7; the same for every side")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:  # small sizes; values given explicitly are kept
        for name, small in (("ns", "20000"), ("ds", "384"), ("queries", "128,1024")):
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, small)
    harness.set_threads(args.threads)
    import faiss
    import torch

    import hardneg as hn
    from hardneg import _core

    harness.set_threads(args.threads)
    problem = harness.blas_problem("compare_topk_grid.py " + " ".join(sys.argv[1:]))
    if problem:
        print(f"compare_topk_grid: refusing to print a table: a peer's BLAS runs a reduced kernel.\n{problem}",
              file=sys.stderr)
        return 2
    qs = [int(x) for x in args.queries.split(",")]
    k = args.k
    rows, ratios, autos = [], [], []

    def mode(m, fn):
        def call():
            start = _core.screen_mode()
            _core.set_screen_mode(m)
            try:
                return fn()
            finally:
                _core.set_screen_mode(start)
        return call

    for kind in args.data.split(","):
        for n in (int(x) for x in args.ns.split(",")):
            for d in (int(x) for x in args.ds.split(",")):
                data = grid_data(kind, n, d, max(qs), np.random.default_rng(0))
                if data is None:
                    print(f"compare_topk_grid: {kind} skipped (SciFact embeddings not found)", file=sys.stderr)
                    continue
                X, Qall = data
                Xt = torch.from_numpy(X)
                xsq = (Xt * Xt).sum(1)
                for metric in args.metrics.split(","):
                    findex = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
                    findex.add(X)

                    def torch_topk(q, metric=metric):
                        qt = torch.from_numpy(q)
                        out = []
                        for i in range(0, qt.shape[0], 512):
                            s = qt[i:i + 512] @ Xt.T
                            if metric == "ip":
                                out.append(torch.topk(s, k, dim=1))
                            else:
                                qq = (qt[i:i + 512] ** 2).sum(1, keepdim=True)
                                out.append(torch.topk(qq + xsq - 2 * s, k, dim=1, largest=False))
                        return out

                    for Q in qs:
                        q = np.ascontiguousarray(Qall[:Q])
                        hn_call = (lambda q=q, metric=metric: hn.topk(q, X, k=k, metric=metric))
                        auto_ran = []  # what auto did in each call (the screen's own report)

                        def hn_auto(hn_call=hn_call, auto_ran=auto_ran):
                            out = hn_call()
                            auto_ran.append(_core.screen_last())
                            return out

                        # small cells get more calls per run (the same for every side): one call of
                        # 10-60 ms is at the mercy of this machine's noise; every cell gets at least
                        # two (--calls), since with one a run's time is a single call of a side
                        # (auto and the forced screen, the same path, differed by up to 10%)
                        probe = harness.time_once(mode(0, hn_call))
                        calls = max(args.calls, min(7, int(args.run_seconds / max(probe, 1e-3))))
                        sides = {"hn": hn_auto, "hn off": mode(0, hn_call), "hn on": mode(2, hn_call),
                                 "faiss": lambda q=q, f=findex: f.search(q, k),
                                 "faiss blas": lambda q=q, f=findex: faiss_blas_search(f, q, k),
                                 "torch": lambda q=q: torch_topk(q)}
                        r = harness.compare(sides, runs=args.runs, calls=calls)
                        ids = np.asarray(r.outputs["hn"][1])
                        assert np.array_equal(ids, np.asarray(r.outputs["hn off"][1])), "auto != off"
                        assert np.array_equal(ids, np.asarray(r.outputs["hn on"][1])), "forced != off"
                        fi = r.outputs["faiss"][1]
                        overlap = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ids, fi)])
                        per_run = [min(f, b, t) / h for h, f, b, t in zip(
                            r.run_medians("hn"), r.run_medians("faiss"), r.run_medians("faiss blas"),
                            r.run_medians("torch"))]
                        # against the mode that is faster over the whole cell, run by run (a per-run min
                        # of two modes that take about the same time would pick each run's luckier one)
                        best_mode = min(("hn off", "hn on"), key=r.median)
                        auto = [h / b for h, b in zip(r.run_medians("hn"), r.run_medians(best_mode))]
                        ratios.append(statistics.median(per_run))
                        autos.append(statistics.median(auto))
                        best_peer = min(("faiss", "faiss blas", "torch"), key=r.median)
                        screened = sum(a["screened"] for a in auto_ran)
                        ests = [a["estimate"] for a in auto_ran if a["estimate"] is not None]
                        ran = ("screen" if screened == len(auto_ran) else "plain" if screened == 0
                               else f"screen {screened}/{len(auto_ran)}")
                        if ests:
                            ran += f" (est. {statistics.median(ests):.3f})"
                        rows.append([kind, f"{n:,}", d, Q, metric, r.ms("hn"), r.ms("hn off"), r.ms("hn on"),
                                     r.ms("faiss"), r.ms("faiss blas"), r.ms("torch"),
                                     f"{statistics.median(per_run):.2f}x ({min(per_run):.2f}-{max(per_run):.2f})",
                                     best_peer, f"{statistics.median(auto):.2f}", ran, calls, f"{overlap:.4f}"])
                        print(f"{kind} N={n} d={d} Q={Q} {metric}: {rows[-1][11]}", file=sys.stderr)

    print(harness.header(f"Exact top-k grid, k = {k}: hardneg one-shot vs faiss (warm index) and torch", args.threads))
    print(harness.fmt_rules(max(3, args.runs), "the calls column's", 1) + "\n")
    print("Auto ran: what hardneg's auto mode did in its calls (the screen's own report, `_core.screen_last()`): "
          "screened or the plain path, with its estimate of the fraction of query x row pairs the screen would "
          "rescore (it screens when that estimate, with the coded copy's build, beats the plain path's time).\n")
    print("| data | N | d | Q | metric | hardneg (auto) | screen off | screen forced | faiss | faiss BLAS path | torch "
          "| faster peer / hardneg | faster peer | auto / faster of off, forced (over the cell) | auto ran | calls | "
          "top-k overlap with faiss |")
    print("|" + " --- |" * 17)
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    if ratios:
        print(f"\nAcross {len(ratios)} cells: faster peer / hardneg {min(ratios):.2f}-{max(ratios):.2f}x (median "
              f"{statistics.median(ratios):.2f}x), below 0.97x in {sum(x < 0.97 for x in ratios)}; "
              f"auto / best mode {min(autos):.2f}-{max(autos):.2f} (median {statistics.median(autos):.2f}), "
              f"above 1.05 in {sum(x > 1.05 for x in autos)}.  hardneg's int8 screen on AMX tiles: "
              f"{'yes' if _core.amx_enabled() else 'no'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

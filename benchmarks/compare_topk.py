"""hardneg exact top-k vs faiss IndexFlatIP and torch.topk(q @ X.T), under benchmarks/harness.py's rules.

Every cell of the grid Q x k times, interleaved, with the same warm-up and calls:

* one-shot (a user's first call: nothing built beforehand): ``hn.topk(q, X)``;
  faiss ``IndexFlatIP(d); add(X); search``; torch ``from_numpy`` + chunked ``q @ X.T`` + ``topk``
* warm (index built once, outside the timed call): ``hn.DenseIndex(X).search``; ``findex.search``;
  torch on the prebuilt tensor (its one-shot and warm forms are the same: from_numpy is free)
* faiss warm, BLAS path (Q > 1): faiss-cpu 1.15 sets ``faiss.cvar.distance_compute_blas_threshold``
  to 128,000 queries, so by default its IndexFlatIP never calls sgemm below that; with the
  threshold at 20 (faiss's older default) it does, which is often faster.  The faiss ratio
  columns divide by the faster of its two warm forms in each run.

All three run with the same thread count.  ``limit`` is the machine's bound for the cell,
max(corpus bytes / bandwidth, 2QNd / sgemm FLOP/s), measured in this run with numpy.  The
table is refused when a peer's OpenBLAS runs a reduced kernel (see harness.blas_problem).

    python benchmarks/compare_topk.py                  # N=200,000, d=768, 2 threads, isotropic
    python benchmarks/compare_topk.py --quick --data clustered
    python benchmarks/compare_topk.py --data scifact-tiled   # skipped when ../shared/data/scifact is absent
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import harness
from _common import peak_extra_bytes, table


def make_data(kind: str, n: int, d: int, nq: int, rng):
    """(corpus, queries) float32, or None when the data is not available."""
    if kind == "isotropic":
        return (rng.standard_normal((n, d), dtype=np.float32), rng.standard_normal((nq, d), dtype=np.float32))
    if kind == "clustered":
        # Gaussian mixture: 64 centres, each cluster with its own anisotropic per-dimension scales
        c = 64
        centres = rng.standard_normal((c, d)).astype(np.float32)
        scales = (np.logspace(0, -1.5, d)[None, :] * rng.uniform(0.3, 1.5, (c, d))).astype(np.float32)

        def draw(m):
            lab = rng.integers(0, c, m)
            out = np.empty((m, d), dtype=np.float32)
            for s in range(0, m, 65536):
                lb = lab[s:s + 65536]
                out[s:s + len(lb)] = centres[lb] + scales[lb] * rng.standard_normal((len(lb), d), dtype=np.float32)
            return out

        return draw(n), draw(nq)
    if kind == "scifact-tiled":
        emb = harness.SCIFACT / "embeddings"
        fc, fq = emb / "minilm-corpus.npy", emb / "minilm-queries.npy"
        if not (fc.exists() and fq.exists()):
            return None
        base, qb = np.load(fc).astype(np.float32), np.load(fq).astype(np.float32)
        reps = -(-n // base.shape[0])
        X = np.tile(base, (reps, 1))[:n]
        X += 0.01 * rng.standard_normal(X.shape, dtype=np.float32)  # small noise: no exact duplicates
        Q = np.tile(qb, (-(-nq // qb.shape[0]), 1))[:nq]
        return np.ascontiguousarray(X), np.ascontiguousarray(Q)
    raise ValueError(kind)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", default="1,16,64,256,2000")
    ap.add_argument("--ks", default="10,100,1000")
    ap.add_argument("--data", default="isotropic", choices=["isotropic", "clustered", "scifact-tiled"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N=50,000, Q in 1,64,256, k in 10,1000, 1 call per run")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:  # small sizes; a --queries / --ks given explicitly is kept
        args.n, args.calls = 50_000, 1
        args.queries = "1,64,256" if args.queries == ap.get_default("queries") else args.queries
        args.ks = "10,1000" if args.ks == ap.get_default("ks") else args.ks
    emb = harness.SCIFACT / "embeddings"
    if args.data == "scifact-tiled" and not (emb / "minilm-corpus.npy").exists():
        print(f"compare_topk: --data scifact-tiled skipped: {emb / 'minilm-corpus.npy'} not found")
        return 0
    harness.set_threads(args.threads)

    import hardneg as hn

    faiss = torch = None
    if not args.no_peers:
        try:
            import faiss
        except ImportError:
            faiss = None
        try:
            import torch
        except ImportError:
            torch = None
    harness.set_threads(args.threads)  # again: now the peers are loaded
    problem = harness.blas_problem("compare_topk.py " + " ".join(sys.argv[1:]))
    if problem and not args.no_peers:
        print(f"compare_topk: refusing to print a table: a peer's BLAS runs a reduced kernel.\n{problem}",
              file=sys.stderr)
        return 2

    qs = [int(x) for x in args.queries.split(",")]
    ks = [int(x) for x in args.ks.split(",")]
    rng = np.random.default_rng(0)
    data = make_data(args.data, args.n, args.d, max(qs), rng)
    if data is None:
        print(f"compare_topk: --data {args.data} skipped: {harness.SCIFACT}/embeddings not found")
        return 0
    X, Qall = data
    n, d = X.shape
    nbytes = X.nbytes

    # the machine's limits, measured now with numpy (same threads)
    dst = np.empty_like(X)
    t_copy = min(_t(lambda: np.copyto(dst, X)) for _ in range(3))
    del dst
    bandwidth = 2 * nbytes / t_copy  # read + write
    A = rng.standard_normal((2000, d), dtype=np.float32)
    B = X[:50_000]
    t_mm = min(_t(lambda: A @ B.T) for _ in range(3))
    flops = 2 * A.shape[0] * B.shape[0] * d / t_mm

    index = hn.DenseIndex(X, metric="ip")
    findex = Xt = None
    if faiss:
        findex = faiss.IndexFlatIP(d)
        findex.add(X)
    if torch:
        Xt = torch.from_numpy(X)

    def torch_topk(q, k, Xt_):
        qt = torch.from_numpy(q)
        return [torch.topk(qt[i:i + 512] @ Xt_.T, k, dim=1) for i in range(0, qt.shape[0], 512)]

    def faiss_oneshot(q, k):
        f = faiss.IndexFlatIP(d)
        f.add(X)
        return f.search(q, k)

    def faiss_blas(q, k):  # the same index, searched through sgemm (see the module docstring)
        return faiss_blas_search(findex, q, k)

    rows = []
    for Q in qs:
        q = np.ascontiguousarray(Qall[:Q])
        for k in ks:
            sides = {"hn one-shot": lambda: hn.topk(q, X, k=k, num_threads=args.threads),
                     "hn warm": lambda: index.search(q, k=k)}
            if faiss:
                sides["faiss one-shot"] = lambda: faiss_oneshot(q, k)
                sides["faiss warm"] = lambda: findex.search(q, k)
                if Q > 1 and hasattr(faiss.cvar, "distance_compute_blas_threshold"):
                    sides["faiss warm, BLAS path"] = lambda: faiss_blas(q, k)
            if torch:
                sides["torch"] = lambda: torch_topk(q, k, Xt)
            res = harness.compare(sides, runs=args.runs, calls=args.calls)
            mem = peak_extra_bytes(lambda: hn.topk(q, X, k=k, num_threads=args.threads))
            limit = max(nbytes / bandwidth, 2 * Q * n * d / flops)
            _, hi = res.outputs["hn warm"]
            agree = "-"
            if faiss:
                fi = res.outputs["faiss warm"][1]
                agree = f"{np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(hi, fi)]):.4f}"
            row = [Q, k, res.ms("hn one-shot"), res.ms("hn warm")]
            fw = [s for s in ("faiss warm", "faiss warm, BLAS path") if s in sides]
            row += [res.ms("faiss one-shot"), res.ms("faiss warm"),
                    res.ms(fw[1]) if len(fw) > 1 else "-"] if faiss else ["-", "-", "-"]
            row += [res.ms("torch")] if torch else ["-"]
            row += [f"{limit * 1e3:.1f}", f"{res.median('hn warm') / limit:.2f}"]
            row += [res.ratio("hn one-shot", "faiss one-shot") if faiss else "-",
                    res.ratio_best("hn warm", fw) if faiss else "-",
                    res.ratio("hn warm", "torch") if torch else "-", agree, f"{mem / 2**20:.0f}"]
            rows.append(row)
            print(f"Q={Q} k={k} done", file=sys.stderr)

    print(harness.header(f"Exact top-k ({args.data}), N = {n:,}, d = {d}, fp32", args.threads))
    print(f"measured: bandwidth {bandwidth / 1e9:.1f} GB/s (numpy copy), sgemm {flops / 1e9:.0f} GFLOP/s "
          f"(numpy matmul); one-shot faiss includes IndexFlatIP + add (a copy of the corpus)\n")
    print(harness.fmt_rules(max(3, args.runs), args.calls, 1) + "\n")
    print(table(["Q", "k", "hardneg one-shot", "hardneg warm", "faiss one-shot", "faiss warm",
                 "faiss warm, BLAS path", "torch", "limit", "hardneg warm / limit", "faiss / hardneg one-shot",
                 "best faiss warm / hardneg warm", "torch / hardneg warm",
                 "top-k overlap with faiss", "hardneg peak extra MiB"], rows))
    return 0


def faiss_blas_search(index, q, k):
    """``index.search(q, k)`` through faiss's sgemm path (``distance_compute_blas_threshold`` = 20, its
    older default; faiss-cpu 1.15's 128,000 keeps flat indexes off sgemm below that many queries)."""
    import faiss

    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 20
    try:
        return index.search(q, k)
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def _t(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())

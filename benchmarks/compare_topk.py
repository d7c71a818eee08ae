"""hardneg.topk vs faiss IndexFlatIP and torch.topk(q @ X.T), side by side in one run.

Prints a markdown table over the grid Q x k, with the machine's limit for each
cell: max(corpus bytes / memory bandwidth, 2*Q*N*d / sgemm FLOP/s), both measured
in this run (bandwidth from a numpy copy, FLOP/s from a numpy float32 matmul, with
the same thread count).

    python benchmarks/compare_topk.py                 # N=200,000, d=768, 2 threads
    python benchmarks/compare_topk.py --quick         # a smaller grid
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from _common import best_time, cpu_name, peak_extra_bytes, table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", default="1,16,64,256,2000")
    ap.add_argument("--ks", default="10,100,1000")
    ap.add_argument("--quick", action="store_true", help="N=50,000 and Q up to 256")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries = 50_000, "1,16,64,256"

    import hardneg as hn
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.d), dtype=np.float32)
    nbytes = X.nbytes

    # machine limits, measured now
    dst = np.empty_like(X)
    t_copy = best_time(lambda: np.copyto(dst, X), 3)
    del dst
    bandwidth = 2 * nbytes / t_copy  # read + write
    A = rng.standard_normal((2000, args.d), dtype=np.float32)
    B = X[:50_000]
    t_mm = best_time(lambda: A @ B.T, 3)
    flops = 2 * A.shape[0] * B.shape[0] * args.d / t_mm

    faiss = torch = None
    if not args.no_peers:
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
            findex = faiss.IndexFlatIP(args.d)
            findex.add(X)
        except ImportError:
            faiss = None
        try:
            import torch

            torch.set_num_threads(args.threads)
            Xt = torch.from_numpy(X)
        except ImportError:
            torch = None

    def torch_topk(q, k):
        qt = torch.from_numpy(q)
        out = []
        for i in range(0, qt.shape[0], 512):
            out.append(torch.topk(qt[i:i + 512] @ Xt.T, k, dim=1))
        return out

    rows = []
    qs = [int(x) for x in args.queries.split(",")]
    ks = [int(x) for x in args.ks.split(",")]
    for Q in qs:
        q = rng.standard_normal((Q, args.d), dtype=np.float32)
        for k in ks:
            rep = 3 if Q * args.n <= 64 * 200_000 else 1
            t_hn = best_time(lambda: hn.topk(q, X, k=k, num_threads=args.threads), rep + 1)
            mem = peak_extra_bytes(lambda: hn.topk(q, X, k=k, num_threads=args.threads))
            t_f = best_time(lambda: findex.search(q, k), rep) if faiss else float("nan")
            t_t = best_time(lambda: torch_topk(q, k), rep) if torch else float("nan")
            limit = max(nbytes / bandwidth, 2 * Q * args.n * args.d / flops)
            best_peer = np.nanmin([t_f, t_t]) if (faiss or torch) else float("nan")
            rows.append([Q, k, f"{t_hn * 1e3:.0f}", f"{t_f * 1e3:.0f}", f"{t_t * 1e3:.0f}", f"{limit * 1e3:.0f}",
                         f"{t_hn / limit:.2f}", f"{best_peer / t_hn:.2f}", f"{mem / 2**20:.0f}"])
            print(f"Q={Q} k={k} done", file=sys.stderr)

    print(f"\nExact top-k, N = {args.n:,}, d = {args.d}, fp32, {args.threads} threads, {cpu_name()}, "
          f"SIMD {hn.simd_level()}")
    print(f"measured: bandwidth {bandwidth / 1e9:.1f} GB/s (numpy copy), sgemm {flops / 1e9:.0f} GFLOP/s (numpy matmul)\n")
    print(table(["Q", "k", "hardneg ms", "faiss ms", "torch ms", "limit ms", "hardneg / limit",
                 "best peer / hardneg", "hardneg peak extra MiB"], rows))


if __name__ == "__main__":
    main()

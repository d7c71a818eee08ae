"""InfoNCE forward + backward over a grid of shapes: hardneg's InfoNCELoss against the plain torch loss.

The question of issue 21: is hardneg at least as fast as the loss users write themselves, in every
cell, and close to the arithmetic limit when there is a memory?  Per cell (B queries, n hard
negatives each, dimension d, a cross-batch memory of M rows, dot or cosine), timed under
harness.py's rules (same warm-up and number of calls for every side, interleaved, medians over 3
runs, same threads):

* **torch**: the plain loss as users write it (the reference of the ratios): normalise (cosine),
  ``cat([pos, hard])``, logits against the candidates in autograd and against the memory with the
  memory out of autograd (``memory.detach()``), one ``cat`` of the logits, ``cross_entropy``;
* **hardneg**: ``InfoNCELoss(temperature=, memory=, similarity=)`` with its defaults
  (``backend="auto"``: the dense torch path, the fused C++ kernel or both, chosen by shape);
* **two-GEMM limit** (cells with a memory): ``q @ K.T`` and ``G @ K`` with K the B(1+n) + M
  candidate rows and G a (B, B(1+n) + M) matrix, the scores and the query gradient that any
  exact loss must compute (plus ``G[:, :B(1+n)].T @ q`` for the candidates' gradient), prebuilt
  operands, no softmax.

Both losses are checked equal (relative 1e-4) in every cell before timing.

    python benchmarks/compare_losses_grid.py            # B 32..1024, n 0/3/7, d 384/768, M 0/32k/64k, dot+cosine
    python benchmarks/compare_losses_grid.py --quick    # 16 small cells, about a minute
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from hardneg.losses import CrossBatchMemory, InfoNCELoss  # noqa: E402

TEMPERATURE = 0.05


def make_cell(B: int, n: int, d: int, M: int, similarity: str, threads: int, seed: int = 0):
    """(torch step, hardneg step, limit step or None): each a forward + backward returning the loss."""
    g = torch.Generator().manual_seed(seed)
    s = d ** -0.5  # entries ~ N(0, 1/d): dot products on the scale of cosines
    q = (s * torch.randn(B, d, generator=g)).requires_grad_(True)
    pos = (q.detach() + s * torch.randn(B, d, generator=g)).requires_grad_(True)
    hard = (s * torch.randn(B, n, d, generator=g)).requires_grad_(True) if n else None
    mem = None
    if M:
        mem = CrossBatchMemory(M, d)
        for c in range(0, M, 8192):
            mem.enqueue(s * torch.randn(min(8192, M - c), d, generator=g))
    memory = mem.get()[0].detach() if mem is not None else None
    scale = 1.0 / TEMPERATURE
    labels = torch.arange(B)
    leaves = [t for t in (q, pos, hard) if t is not None]

    def torch_loss():
        cand = pos if hard is None else torch.cat([pos, hard.reshape(B * n, d)])
        qq, mm = q, memory
        if similarity == "cosine":
            qq, cand = F.normalize(q, dim=1), F.normalize(cand, dim=1)
            mm = F.normalize(memory, dim=1) if memory is not None else None
        logits = qq @ cand.T if mm is None else torch.cat([qq @ cand.T, qq @ mm.T], dim=1)
        return F.cross_entropy(logits * scale, labels)

    hn_loss = InfoNCELoss(temperature=TEMPERATURE, memory=mem, similarity=similarity, num_threads=threads)

    def step(fn):
        def run():
            for t in leaves:
                t.grad = None
            out = fn()
            out.backward()
            return out.item()
        return run

    limit = None
    if M:
        K = torch.cat([pos.detach(), (hard.detach().reshape(B * n, d) if n else pos.detach()[:0]), memory])
        G = torch.randn(B, K.shape[0], generator=g)
        qd, nc = q.detach(), B * (1 + n)

        def limit():
            scores = qd @ K.T
            gq = G @ K
            gc = G[:, :nc].T @ qd
            return float(scores[0, 0] + gq[0, 0] + gc[0, 0])

    return step(torch_loss), step(lambda: hn_loss(q, pos, hard)), limit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B 32/256, n 0/7, d 384, M 0/32768: 16 cells")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.25,
                    help="seconds of timed calls per side and run (sets the calls per cell; at least 1)")
    args = ap.parse_args()
    if args.quick:
        Bs, ns, ds, Ms = (32, 256), (0, 7), (384,), (0, 32768)
    else:
        Bs, ns, ds, Ms = (32, 128, 512, 1024), (0, 3, 7), (384, 768), (0, 32768, 65536)
    harness.set_threads(args.threads)
    torch.manual_seed(0)
    print(harness.header("InfoNCE forward + backward over a grid: hardneg InfoNCELoss vs the plain torch loss",
                         args.threads))
    print(harness.fmt_rules(max(3, args.runs), "'calls'", 1).replace("'calls' interleaved", "the column 'calls' of "
                                                                      "interleaved"))
    print("Reference: torch, the plain loss (memory out of autograd). speed-up = torch time / hardneg time "
          "(median over runs, min-max); limit = the two GEMMs any exact loss computes (scores and query "
          "gradient over the B(1+n) + M candidates, + the candidates' gradient); hardneg / limit > 1 is "
          "time above it.\n")
    print("| sim | B | n | d | M | calls | torch (ms) | hardneg (ms) | speed-up | limit (ms) | hardneg / limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    speedups, over_limit, slow_cells = [], [], []
    for sim, B, n, d, M in itertools.product(("dot", "cosine"), Bs, ns, ds, Ms):
        t_fn, h_fn, lim = make_cell(B, n, d, M, sim, args.threads)
        lt, lh = t_fn(), h_fn()  # also the untimed first call of each
        if abs(lt - lh) > 1e-4 * max(1.0, abs(lt)):
            raise SystemExit(f"losses differ at {sim} B={B} n={n} d={d} M={M}: torch {lt} hardneg {lh}")
        t0 = time.perf_counter()
        t_fn()
        calls = max(1, min(20, int(args.budget / max(time.perf_counter() - t0, 1e-6))))
        sides = {"torch": t_fn, "hardneg": h_fn}
        if lim is not None:
            sides["limit"] = lim
        res = harness.compare(sides, runs=args.runs, calls=calls)
        r = [a / b for a, b in zip(res.run_medians("torch"), res.run_medians("hardneg"))]
        speedups.append(statistics.median(r))
        if statistics.median(r) < 1.0:
            slow_cells.append(f"{sim} B={B} n={n} d={d} M={M}")
        lim_s = lim_ratio = "-"
        if lim is not None:
            lr = [a / b for a, b in zip(res.run_medians("hardneg"), res.run_medians("limit"))]
            over_limit.append(statistics.median(lr))
            lim_s, lim_ratio = res.ms("limit"), f"{statistics.median(lr):.2f}x ({min(lr):.2f}-{max(lr):.2f})"
        print(f"| {sim} | {B} | {n} | {d} | {M} | {calls} | {res.ms('torch')} | {res.ms('hardneg')} "
              f"| {res.ratio('hardneg', 'torch')} | {lim_s} | {lim_ratio} |", flush=True)
    print(f"\n{len(speedups)} cells: speed-up over the plain torch loss {min(speedups):.2f}x to "
          f"{max(speedups):.2f}x (median {statistics.median(speedups):.2f}x); "
          f"cells below 1.00x: {len(slow_cells)}" + (f" ({'; '.join(slow_cells)})" if slow_cells else ""))
    if over_limit:
        print(f"with a memory: hardneg at {min(over_limit):.2f}x to {max(over_limit):.2f}x the two-GEMM limit "
              f"(median {statistics.median(over_limit):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

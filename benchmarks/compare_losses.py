"""InfoNCE with in-batch, hard and cross-batch-memory negatives: hardneg vs peers.

Forward + backward of one loss evaluation, side by side in the same run, under harness.py's rules:

* torch (as users write it, the reference of the ratios): logits against [pos, hard] in autograd,
  logits against the memory with the memory out of autograd (``memory.detach()``), one cat of the
  logits, cross_entropy: no gradient is computed for the detached memory rows
* torch, naive: cat([pos, hard, memory]) + matmul + cross_entropy: autograd also computes a
  gradient for every memory row (shown for reference; nobody needs it)
* sentence-transformers MultipleNegativesRankingLoss.compute_loss_from_embeddings with the
  memory passed as extra negative columns (MNRL has no memory: this is what its users do; it
  concatenates them, so it also pays for the memory rows' gradient)
* hardneg InfoNCELoss as users get it (backend="auto": chosen by shape), and forced onto the fused
  C++ kernel (CPU) and onto the chunked torch path

Each method is timed one-shot (its loss object built inside the timed call) and warm (built once).
Peak extra memory: each method runs once in a fresh subprocess; peak RSS during the call minus
RSS just before it (inputs excluded).  On CUDA (--device cuda) torch.cuda.max_memory_allocated
is used instead.

    python benchmarks/compare_losses.py                # B=256 d=768 n=7 memory=65536, 2 threads
    python benchmarks/compare_losses.py --quick        # small sizes, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from hardneg.losses import CrossBatchMemory, InfoNCELoss

import harness
from _common import proc_status_bytes

REF = "torch (memory out of autograd)"
METHODS = [REF, "torch naive (memory in autograd)", "sentence-transformers MNRL",
           "hardneg InfoNCELoss (default: backend auto)", "hardneg fused (C++)", "hardneg torch path"]


def setup(B, d, n, M, device, seed=0):
    # entries ~ N(0, 1/d): dot products are on the scale of cosines
    g = torch.Generator().manual_seed(seed)
    s = d ** -0.5
    q = (s * torch.randn(B, d, generator=g)).to(device).requires_grad_(True)
    pos = (q.detach() + s * torch.randn(B, d, generator=g).to(device)).requires_grad_(True)
    hard = (s * torch.randn(B, n, d, generator=g)).to(device).requires_grad_(True)
    mem = CrossBatchMemory(M, d, device=device)
    for c in range(0, M, 8192):
        mem.enqueue((s * torch.randn(min(8192, M - c), d, generator=g)).to(device))
    return q, pos, hard, mem


def make_fn(method, q, pos, hard, mem, similarity, temperature, threads, oneshot=False):
    """A step (forward + backward) of one method; oneshot: its loss object is built inside the step."""
    if oneshot:
        def step_oneshot():
            return make_fn(method, q, pos, hard, mem, similarity, temperature, threads)()
        return step_oneshot if make_fn(method, q, pos, hard, mem, similarity, temperature, threads) else None
    B, n, d = hard.shape
    memory, _ = mem.get()
    scale = 1.0 / temperature
    if method == REF:
        mem_d = memory.detach()

        def fn():
            cand = torch.cat([pos, hard.reshape(B * n, d)])
            qq, mm = q, mem_d
            if similarity == "cosine":
                qq, cand, mm = F.normalize(q, dim=1), F.normalize(cand, dim=1), F.normalize(mem_d, dim=1)
            logits = torch.cat([qq @ cand.T, qq @ mm.T], dim=1) * scale
            return F.cross_entropy(logits, torch.arange(B, device=q.device))
    elif method == "torch naive (memory in autograd)":
        def fn():
            cand = torch.cat([pos, hard.reshape(B * n, d), memory])
            qq = q
            if similarity == "cosine":
                qq, cand = F.normalize(q, dim=1), F.normalize(cand, dim=1)
            logits = qq @ cand.T * scale
            return F.cross_entropy(logits, torch.arange(B, device=q.device))
    elif method == "sentence-transformers MNRL":
        from sentence_transformers import util
        from sentence_transformers.sentence_transformer.losses.multiple_negatives_ranking import (
            MultipleNegativesRankingLoss,
        )

        mnrl = MultipleNegativesRankingLoss(None, scale=scale,
                                            similarity_fct=util.cos_sim if similarity == "cosine" else util.dot_score)
        mem_cols = list(memory.split(B)) if memory.shape[0] % B == 0 else None
        if mem_cols is None:
            return None

        def fn():
            return mnrl.compute_loss_from_embeddings([q, pos] + list(hard.unbind(1)) + mem_cols, None)
    else:
        backend = "auto" if "auto" in method else "fused" if "fused" in method else "torch"
        if backend == "fused" and q.device.type != "cpu":
            return None
        loss = InfoNCELoss(temperature=temperature, memory=mem, similarity=similarity, backend=backend,
                           num_threads=threads)

        def fn():
            return loss(q, pos, hard)

    def step():
        for t in (q, pos, hard):
            t.grad = None
        out = fn()
        out.backward()
        if q.device.type == "cuda":
            torch.cuda.synchronize()
        return out.item()

    return step


def measure_memory_child(args):
    """Runs in a subprocess: one call of one method, prints peak extra bytes."""
    torch.set_num_threads(args.threads)
    q, pos, hard, mem = setup(args.B, args.d, args.n, args.M, args.device)
    step = make_fn(args.method, q, pos, hard, mem, args.similarity, args.temperature, args.threads)
    if step is None:
        print(json.dumps(None))
        return
    if args.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        print(json.dumps(torch.cuda.max_memory_allocated() - base))
        return
    step()  # warm-up: lazy initialisation of torch / thread pools is not the loss's memory
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # resets the peak-RSS mark (VmHWM)
        f.write("5")
    before = proc_status_bytes("VmRSS")
    step()
    print(json.dumps(max(0, proc_status_bytes("VmHWM") - before)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=256)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--n", type=int, default=7)
    ap.add_argument("--M", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--similarity", default="dot", choices=["dot", "cosine"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="B=32 d=64 n=3 M=4096, 1 call per run")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.B, args.d, args.n, args.M, args.calls = 32, 64, 3, 4096, 1
    if args.method:
        measure_memory_child(args)
        return
    harness.set_threads(args.threads)
    q, pos, hard, mem = setup(args.B, args.d, args.n, args.M, args.device)
    sides, values = {}, {}
    for m in METHODS:
        for form in ("one-shot", "warm"):
            f = make_fn(m, q, pos, hard, mem, args.similarity, args.temperature, args.threads,
                        oneshot=form == "one-shot")
            if f is not None:
                sides[(m, form)] = f
    res = harness.compare(sides, runs=args.runs, calls=args.calls)
    steps = {m: None for m, form in sides if form == "warm"}
    values = {m: res.outputs[(m, "warm")] for m in steps}
    peaks = {}
    for m in steps:
        cmd = [sys.executable, __file__, "--method", m, "--B", str(args.B), "--d", str(args.d), "--n", str(args.n),
               "--M", str(args.M), "--threads", str(args.threads), "--temperature", str(args.temperature),
               "--similarity", args.similarity, "--device", args.device]
        # every allocation >= 64 KiB is its own mmap, so freed memory leaves RSS at once
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
        peaks[m] = json.loads(out)
    ref = REF
    gflop = 2.0 * 3 * args.B * (args.B * (1 + args.n) + args.M) * args.d / 1e9
    print(harness.header(f"InfoNCE forward + backward: B={args.B} d={args.d} hard negatives={args.n} "
                         f"memory={args.M} fp32 {args.similarity}, device={args.device}", args.threads))
    print(harness.fmt_rules(max(3, args.runs), args.calls, 1))
    print(f"Reference of the ratios: {REF}; naive work {gflop:.1f} GFLOP fwd+bwd. Peak extra memory: peak RSS "
          "during the 2nd call minus RSS before it, fresh process per method.\n")
    print("| method | loss | one-shot fwd+bwd (ms) | warm fwd+bwd (ms) | speed-up vs reference, one-shot "
          "| speed-up vs reference, warm | peak extra memory (MB) | memory vs reference |")
    print("|---|---|---|---|---|---|---|---|")
    for m in steps:
        pk = peaks[m]
        pk_s = "n/a" if pk is None else f"{pk / 2**20:.1f}"
        ratio = "n/a" if pk is None or not peaks[ref] else f"{pk / peaks[ref]:.3f}"
        print(f"| {m} | {values[m]:.5f} | {res.ms((m, 'one-shot'))} | {res.ms((m, 'warm'))} "
              f"| {res.ratio((m, 'one-shot'), (ref, 'one-shot'))} | {res.ratio((m, 'warm'), (ref, 'warm'))} "
              f"| {pk_s} | {ratio} |")


if __name__ == "__main__":
    main()

"""Peak memory of the logits step of a cached (GradCache) contrastive loss: B = 4,096 queries,
a 65,536-row cross-batch memory, d = 384, float32 on the CPU.

The step CachedInfoNCELoss runs between its two embedding passes (loss + gradient w.r.t. the
batch's embeddings) is InfoNCELoss on detached embeddings: it reads the memory in chunks (or
streams the B x (B + memory) scores through the fused kernel's tiles), never all of them at once.  The torch reference (normalize, cat, matmul,
cross_entropy, backward) materialises them.  Each method runs in a fresh process; the
figure is peak RSS minus RSS before the call.

    PYTHONPATH=python python examples/cached_loss_memory.py [--B 4096 --memory 65536 --d 384]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    """Resident memory of this process (Linux), MiB."""
    with open("/proc/self/statm") as f:  # pages: size, resident, ...
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(method: str, B: int, M: int, d: int) -> dict:
    import torch
    import torch.nn.functional as F

    from hardneg.losses import CrossBatchMemory, InfoNCELoss

    torch.manual_seed(0)
    q = torch.randn(B, d).requires_grad_()
    pos = (q.detach() + torch.randn(B, d)).requires_grad_()
    mem_rows = torch.randn(M, d)
    before = rss_mb()
    t0 = time.perf_counter()
    if method == "hardneg":
        mem = CrossBatchMemory(M, d)
        mem.enqueue(mem_rows)
        before = rss_mb()
        loss = InfoNCELoss(temperature=0.05, memory=mem)(q, pos)
    else:
        qn = F.normalize(q, dim=1)
        cand = F.normalize(torch.cat([pos, mem_rows]), dim=1)
        loss = F.cross_entropy(qn @ cand.T * 20.0, torch.arange(B))
    loss.backward()
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "loss": loss.item(), "seconds": round(secs, 2), "peak_extra_mb": round(peak - before, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=4096)
    ap.add_argument("--memory", type=int, default=65536)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--method")
    a = ap.parse_args()
    if a.method:
        print(json.dumps(run(a.method, a.B, a.memory, a.d)))
        return
    for method in ("hardneg", "torch"):
        out = subprocess.run([sys.executable, __file__, "--method", method, "--B", str(a.B), "--memory",
                              str(a.memory), "--d", str(a.d)], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

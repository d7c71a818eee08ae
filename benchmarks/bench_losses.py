"""pytest-benchmark microbenchmarks of the InfoNCE loss with a cross-batch memory.

    pytest benchmarks/bench_losses.py                       # small sizes (seconds)
    HARDNEG_BENCH_FULL=1 pytest benchmarks/bench_losses.py  # B=256 d=768 n=7 memory=65536

Not run by CI.  For the side-by-side table with peak memory see compare_losses.py.
"""
from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from hardneg.losses import CrossBatchMemory, InfoNCELoss  # noqa: E402

FULL = os.environ.get("HARDNEG_BENCH_FULL") == "1"
B, D, N, M = (256, 768, 7, 65536) if FULL else (64, 128, 3, 8192)
THREADS = int(os.environ.get("HARDNEG_BENCH_THREADS", "2"))


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(THREADS)
    g = torch.Generator().manual_seed(0)
    s = D ** -0.5
    q = (s * torch.randn(B, D, generator=g)).requires_grad_(True)
    pos = (q.detach() + s * torch.randn(B, D, generator=g)).requires_grad_(True)
    hard = (s * torch.randn(B, N, D, generator=g)).requires_grad_(True)
    mem = CrossBatchMemory(M, D)
    mem.enqueue(s * torch.randn(M, D, generator=g))
    return q, pos, hard, mem


def _reference(q, pos, hard, mem, similarity):
    memory, _ = mem.get()
    cand = torch.cat([pos, hard.reshape(-1, D), memory])
    qq = q
    if similarity == "cosine":
        qq, cand = F.normalize(q, dim=1), F.normalize(cand, dim=1)
    return F.cross_entropy(qq @ cand.T / 0.05, torch.arange(B))


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("method", ["torch-reference", "hardneg-fused", "hardneg-torch-path"])
def test_infonce_forward_backward(benchmark, data, method, similarity):
    q, pos, hard, mem = data
    if method == "torch-reference":
        fn = lambda: _reference(q, pos, hard, mem, similarity)  # noqa: E731
    else:
        loss = InfoNCELoss(temperature=0.05, memory=mem, similarity=similarity,
                           backend="fused" if method == "hardneg-fused" else "torch", num_threads=THREADS)
        fn = lambda: loss(q, pos, hard)  # noqa: E731

    def step():
        for t in (q, pos, hard):
            t.grad = None
        fn().backward()

    benchmark.pedantic(step, rounds=3 if FULL else 10, warmup_rounds=1)


def test_memory_enqueue(benchmark):
    mem = CrossBatchMemory(M, D)
    x = torch.randn(B, D)
    ids = torch.arange(B)
    benchmark(mem.enqueue, x, ids)

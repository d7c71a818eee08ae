"""The prepared device check of issue 17: hardneg's CUDA paths against its CPU results, then top-k speed.

Run it as one short script on a machine with a GPU (a few minutes):

    python benchmarks/gpu_check.py                    # device cuda: parity, then the timing table
    python benchmarks/gpu_check.py --device cpu --small   # smoke run here: the same torch code on CPU

Parity (exits 1 on the first mismatch, naming it):

* ``hn.topk`` on device tensors (ip, cosine, l2; k 10 and 100; with ``exclude``) against the C++
  kernel on the same rows as numpy: ids equal (the data is random, so no two scores of a query tie
  within the tolerance), scores within 1e-4 of their magnitude;
* ``hn.DenseIndex`` over a device tensor, searched with device queries, against the numpy index;
* ``InfoNCELoss`` (dot and cosine, hard negatives, a cross-batch memory): loss and gradients on the
  device against CPU, relative 1e-4;
* ``hn.mine_hard_negatives`` with device embeddings against numpy embeddings: the same negatives.

Timing (harness.py's rules): ``hn.topk`` on the device against torch ``matmul`` + ``topk`` in
query chunks (the code users write) and faiss-gpu ``IndexFlatIP`` when the installed faiss has
GPUs; ``torch.cuda.synchronize()`` ends every timed call.  The figures go to docs/scale.md.
On CPU (``--device cpu``) the device paths are forced with ``backend="torch"``; the timing table
is skipped there (it would compare torch with itself).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import harness


def fail(what: str) -> None:
    print(f"gpu_check: MISMATCH: {what}")
    sys.exit(1)


def check_topk(hn, torch, dev, rng, small: bool, force) -> None:
    n, d, nq = (5_000, 64, 50) if small else (200_000, 384, 500)
    X = rng.standard_normal((n, d), dtype=np.float32)
    Q = rng.standard_normal((nq, d), dtype=np.float32)
    excl = [list(rng.choice(n, 5, replace=False)) for _ in range(nq)]
    Xt, Qt = torch.from_numpy(X).to(dev), torch.from_numpy(Q).to(dev)
    for metric in ("ip", "cosine", "l2"):
        for k in (10, 100):
            for ex in (None, excl):
                s_ref, i_ref = hn.topk(Q, X, k=k, metric=metric, exclude=ex)
                s, i = hn.topk(Qt, Xt, k=k, metric=metric, exclude=ex, **force)
                if s.device.type != Xt.device.type:
                    fail(f"topk {metric} k={k}: results on {s.device}, inputs on {Xt.device}")
                s, i = s.cpu().numpy(), i.cpu().numpy()
                if not np.array_equal(i, i_ref):
                    fail(f"topk {metric} k={k} exclude={ex is not None}: ids differ in "
                         f"{int((i != i_ref).any(axis=1).sum())} of {nq} queries")
                if not np.allclose(s, s_ref, rtol=1e-4, atol=1e-4 * float(np.abs(s_ref).max())):
                    fail(f"topk {metric} k={k}: scores differ by {float(np.abs(s - s_ref).max()):.3g}")
    index, ref = hn.DenseIndex(Xt, metric="ip"), hn.DenseIndex(X, metric="ip")
    s, i = index.search(Qt, k=100)
    s_ref, i_ref = ref.search(Q, k=100)
    if not np.array_equal(i.cpu().numpy(), i_ref):
        fail("DenseIndex: ids differ")
    print(f"topk and DenseIndex on {dev}: ids equal to the CPU kernel's ({n:,} x {d}, {nq} queries, ip / cosine / l2, "
          "k 10 / 100, with and without exclude)")


def check_losses(hn, torch, dev, force) -> None:
    from hardneg.losses import CrossBatchMemory, InfoNCELoss

    g = torch.Generator().manual_seed(0)
    B, n, d, M = 64, 3, 128, 4096
    base = [torch.randn(B, d, generator=g), torch.randn(B, d, generator=g), torch.randn(B, n, d, generator=g)]
    mem_rows = torch.randn(M, d, generator=g)
    for sim in ("dot", "cosine"):
        out = {}
        for where in ("cpu", dev):
            leaves = [t.to(where).requires_grad_(True) for t in base]
            mem = CrossBatchMemory(M, d, device=where)
            mem.enqueue(mem_rows.to(where))
            loss_fn = InfoNCELoss(temperature=0.05, similarity=sim, memory=mem,
                                  **(force if where != "cpu" else {}))
            loss = loss_fn(*leaves)
            loss.backward()
            out[where] = [loss.detach().cpu().double()] + [t.grad.cpu().double() for t in leaves]
        for a, b in zip(out["cpu"], out[dev]):
            if float((a - b).abs().max()) > 1e-4 * max(1.0, float(a.abs().max())):
                fail(f"InfoNCELoss {sim}: device and CPU differ by {float((a - b).abs().max()):.3g}")
    print(f"InfoNCELoss on {dev}: loss and gradients within 1e-4 of CPU (dot, cosine; hard negatives, memory)")


def check_mining(hn, torch, dev, rng) -> None:
    from hardneg import datasets as hd

    n, nq, d = 3_000, 100, 64
    X = rng.standard_normal((n, d), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    pos = rng.choice(n, nq, replace=False)
    Q = X[pos] + 0.1 * rng.standard_normal((nq, d), dtype=np.float32)
    ds = hd.from_dict({f"d{i}": f"doc {i}" for i in range(n)}, {f"q{i}": f"query {i}" for i in range(nq)},
                      {f"q{i}": {f"d{p}": 1} for i, p in enumerate(pos)})
    kw = dict(num_negatives=8, range_min=10, range_max=100, relative_margin=0.05, progress=False)
    ref = hn.mine_hard_negatives(ds, corpus_embeddings=X, query_embeddings=Q, **kw)
    got = hn.mine_hard_negatives(ds, corpus_embeddings=torch.from_numpy(X).to(dev),
                                 query_embeddings=torch.from_numpy(Q).to(dev), **kw)
    if not np.array_equal(np.asarray(ref.ids), np.asarray(got.ids)):
        fail("mine_hard_negatives: device embeddings mine other negatives than numpy ones")
    print(f"mine_hard_negatives with {dev} embeddings: the same negatives as with numpy")


def timing(hn, torch, dev, rng, threads: int) -> None:
    n, d, k = 1_000_000, 384, 100
    X = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32)).to(dev)
    sync = torch.cuda.synchronize
    faiss_index = None
    try:
        import faiss

        if faiss.get_num_gpus() > 0:
            res = faiss.StandardGpuResources()
            faiss_index = faiss.GpuIndexFlatIP(res, d)
            faiss_index.add(X.cpu().numpy())
    except (ImportError, AttributeError):
        pass
    print(harness.header(f"Exact top-k on {torch.cuda.get_device_name()}: {n:,} x {d} fp32 on the device, k = {k}",
                         threads))
    print(harness.fmt_rules(3, 3, 1) + "\n")
    print("| Q | hardneg `hn.topk` | torch matmul + topk | faiss-gpu IndexFlatIP | torch / hardneg |")
    print("| --- | --- | --- | --- | --- |")
    for nq in (16, 256, 2000, 20000):
        Q = torch.from_numpy(rng.standard_normal((nq, d), dtype=np.float32)).to(dev)

        def hn_call(Q=Q):
            out = hn.topk(Q, X, k=k)
            sync()
            return out

        def torch_call(Q=Q):
            out = [torch.topk(Q[i:i + 4096] @ X.T, k, dim=1) for i in range(0, nq, 4096)]
            sync()
            return out

        sides = {"hardneg": hn_call, "torch": torch_call}
        if faiss_index is not None:
            sides["faiss"] = lambda Q=Q: faiss_index.search(Q.cpu().numpy(), k)
        r = harness.compare(sides, runs=3, calls=3)
        fa = r.ms("faiss") if faiss_index is not None else "not installed"
        print(f"| {nq:,} | {r.ms('hardneg')} | {r.ms('torch')} | {fa} | {r.ratio('hardneg', 'torch')} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the same torch code")
    ap.add_argument("--small", action="store_true", help="small parity sizes (seconds)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    harness.set_threads(args.threads)
    import torch

    import hardneg as hn

    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; `--device cpu --small` runs the same torch code on CPU")
        return 2
    force = {"backend": "torch"} if dev == "cpu" else {}
    rng = np.random.default_rng(0)
    check_topk(hn, torch, dev, rng, args.small, force)
    check_losses(hn, torch, dev, force)
    check_mining(hn, torch, dev, rng)
    if dev != "cpu":
        timing(hn, torch, dev, rng, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())

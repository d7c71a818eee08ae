"""InfoNCELoss numerics: cosine is scale invariant over float32's range, logits float32
cannot hold are a ValueError (never NaN or a silent 0), and the fused (C++), hybrid
(torch in-batch + C++ memory) and torch paths equal a float64 torch-autograd reference
on every query->passage option and degenerate shape."""
from __future__ import annotations

import itertools
import random

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from hardneg.losses import CrossBatchMemory, InfoNCELoss  # noqa: E402

BACKENDS = ("auto", "fused", "hybrid", "torch")


def make_loss(backend, **kw):
    """auto: dense torch ops for small batches without memory, else the kernel; fused: the C++ kernel;
    hybrid: torch in-batch part + the C++ memory kernel; torch: the chunked torch algorithm."""
    f = InfoNCELoss(backend={"auto": "auto", "torch": "torch"}.get(backend, "fused"), memory_chunk=3, **kw)
    f._full_kernel = backend in ("fused", "auto")
    return f


def run(f, tensors, *args, **kw):
    for t in tensors:
        t.grad = None
    loss = f(*args, **kw)
    loss.backward()
    return loss.detach(), [t.grad.clone() for t in tensors]


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


# ------------------------------------------------------------------ references
def reference(q, pos, hard, mem, mem_ids, pos_ids, neg_ids, query_ids, scale, similarity, margin, in_batch,
              hardness_mode, alpha):
    """Naive float64 InfoNCE: one (B, B + B*n + M) logits matrix, masks, cross_entropy.

    Hardness: logit += alpha * stop_grad(sim) on own hard negatives ("hard_negatives",
    "all_negatives"), other queries' passages and the memory ("in_batch_negatives",
    "all_negatives")."""
    B, d = q.shape
    n = 0 if hard is None else hard.shape[1]
    parts = [pos] + ([hard.transpose(0, 1).reshape(B * n, d)] if n else [])  # negative k of i at B + k*B + i
    M = 0 if mem is None else mem.shape[0]
    if M:
        parts.append(mem)
    cand = torch.cat(parts)
    if similarity == "cosine":
        qq, cc = q / q.norm(dim=1, keepdim=True), cand / cand.norm(dim=1, keepdim=True)
    else:
        qq, cc = q, cand
    sim = qq @ cc.T
    N = cand.shape[0]
    rows = torch.arange(B)
    owner = torch.full((N,), -1)
    owner[:B] = rows
    if n:
        owner[B:B + B * n] = rows.repeat(n)
    own = owner[None, :] == rows[:, None]
    is_pos = torch.zeros(B, N, dtype=torch.bool)
    is_pos[rows, rows] = True
    own_hard = own & ~is_pos
    other = (owner[None, :] >= 0) & ~own
    is_mem = (owner[None, :] < 0).expand(B, N)
    mask = torch.zeros(B, N, dtype=torch.bool)
    if not in_batch:
        mask |= other
    if pos_ids is not None:
        ids = [pos_ids] + ([neg_ids.T.reshape(-1) if neg_ids is not None else torch.full((B * n,), -1)]
                           if n else [])
        if M:
            ids.append(mem_ids)
        ids = torch.cat(ids)
        for key in [pos_ids] + ([query_ids] if query_ids is not None else []):
            mask |= (ids[None, :] == key[:, None]) & (key[:, None] >= 0) & ~is_pos
    if margin is not None:
        p = sim.detach()[rows, rows]
        mask |= (sim.detach() > (p - margin)[:, None]) & ~is_pos
    pen = torch.zeros(B, N, dtype=torch.bool)
    if hardness_mode in ("hard_negatives", "all_negatives"):
        pen |= own_hard
    if hardness_mode in ("in_batch_negatives", "all_negatives"):
        pen |= other | is_mem
    z = sim * scale + torch.where(pen, alpha * sim.detach(), torch.zeros_like(sim))
    return F.cross_entropy(z.masked_fill(mask, float("-inf")), rows)


def batch(B, n, d, seed, dup):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, d, generator=g, dtype=torch.float64)
    pos = q + 0.7 * torch.randn(B, d, generator=g, dtype=torch.float64)
    hard = pos[:, None] + torch.randn(B, n, d, generator=g, dtype=torch.float64) if n else None
    hi = 2 * B if dup else 10 ** 9
    pos_ids = torch.randint(0, hi, (B,), generator=g)
    neg_ids = torch.randint(0, hi, (B, n), generator=g) if n else None
    query_ids = torch.randint(0, hi, (B,), generator=g)
    if dup and n:
        neg_ids[0, 0] = pos_ids[0]          # a "negative" that is the positive
        neg_ids[-1, n - 1] = query_ids[-1]  # a "negative" that is the query's own text
    return q, pos, hard, pos_ids, neg_ids, query_ids


# one case per line: B, n, d, memory (None / rows), ids ("none", "pos", "query"), dup, all_masked
SHAPES = [
    (1, 0, 5, None), (1, 2, 3, 4), (3, 0, 1, 5), (4, 2, 1, None), (5, 3, 16, 0), (6, 1, 9, 11), (2, 4, 7, 3),
]
OPTIONS = list(itertools.product(("cosine", "dot"), (None, "hard_negatives", "in_batch_negatives", "all_negatives"),
                                 (None, 0.15), (True, False), ("none", "pos", "query")))


def cases():
    rnd = random.Random(7)
    out = []
    for si, shape in enumerate(SHAPES):
        for opt in rnd.sample(OPTIONS, 12):
            out.append((shape, opt, si % 2 == 0))
    out.append(((4, 2, 6, 5), ("cosine", "all_negatives", None, True, "all_masked"), True))
    out.append(((3, 1, 4, 2), ("dot", None, 10.0, True, "none"), False))  # margin masks every negative
    return out


@pytest.mark.parametrize("case", cases(), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paths_agree_with_float64_reference(case, dtype):
    (B, n, d, msize), (simf, hm, margin, in_batch, ids), dup = case
    q, pos, hard, pos_ids, neg_ids, query_ids = batch(B, n, d, seed=B * 31 + n * 7 + d, dup=dup)
    if ids == "all_masked":  # every candidate carries the positive's id: loss 0, zero gradient
        pos_ids = torch.full((B,), 3)
        neg_ids = torch.full((B, n), 3)
    mem = None
    if msize is not None:
        mem = CrossBatchMemory(max(msize, 1), d, dtype=dtype)
        if msize:
            g = torch.Generator().manual_seed(d)
            mids = torch.randint(0, 2 * B if dup else 10 ** 9, (msize,), generator=g)
            mids[0] = pos_ids[0] if ids != "query" else query_ids[0]
            if ids == "all_masked":
                mids[:] = 3
            mem.enqueue(torch.randn(msize, d, generator=g, dtype=torch.float64).to(dtype), mids)
    alpha = 3.0 if hm else 0.0
    scale = 20.0 if simf == "cosine" else 0.8
    kw = {}
    if ids != "none":
        kw = dict(pos_ids=pos_ids, neg_ids=neg_ids)
    if ids == "query":
        kw["query_ids"] = query_ids
    tensors = [t.to(dtype).requires_grad_(True) for t in (q, pos) + ((hard,) if n else ())]
    args = (tensors[0], tensors[1], tensors[2] if n else None)
    r = [t.detach().double().requires_grad_(True) for t in tensors]
    m_emb, m_ids = mem.get() if mem is not None and len(mem) else (None, None)
    _, ref = run(lambda: reference(r[0], r[1], r[2] if n else None, None if m_emb is None else m_emb.double(),
                                   m_ids, kw.get("pos_ids"), kw.get("neg_ids"), kw.get("query_ids"), scale, simf,
                                   margin, in_batch, hm, alpha), r)
    ref_loss = reference(*[t.detach() for t in r[:2]], r[2].detach() if n else None,
                         None if m_emb is None else m_emb.double(), m_ids, kw.get("pos_ids"), kw.get("neg_ids"),
                         kw.get("query_ids"), scale, simf, margin, in_batch, hm, alpha)
    for be in BACKENDS:
        # float64 runs in float64 except the memory term of the C++ kernel (float32)
        exact64 = dtype == torch.float64 and (be in ("torch", "auto") or m_emb is None)
        tol = 1e-10 if exact64 else 2e-5
        f = make_loss(be, scale=scale, similarity=simf, false_negative_margin=margin, in_batch_negatives=in_batch,
                      hardness_mode=hm, hardness_strength=alpha, memory=mem)
        loss, grads = run(lambda: f(*args, **kw), tensors)
        assert torch.isfinite(loss)
        assert abs(loss.item() - ref_loss.item()) <= tol * max(abs(ref_loss.item()), 1.0), (be, loss, ref_loss)
        for name, a, b in zip(("q", "pos", "hard"), grads, ref):
            floor = 1e-3 if exact64 else 1.0  # float32 cancellation of O(scale) terms
            assert (a.double() - b).abs().max().item() <= 10 * tol * max(b.abs().max().item(), floor), (be, name)
        if ids == "all_masked" or margin == 10.0:
            assert loss.item() == 0.0 and all(torch.count_nonzero(g) == 0 for g in grads)


# ------------------------------------------------------------- scale invariance
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("factor", [1e-30, 1e-20, 1e-10, 1e10, 1e19, 1e25])
def test_cosine_is_scale_invariant(backend, factor):
    B, n, d = 5, 2, 12
    q, pos, hard, pos_ids, neg_ids, _ = batch(B, n, d, seed=3, dup=False)
    g = torch.Generator().manual_seed(1)
    mem_rows = torch.randn(7, d, generator=g, dtype=torch.float64)
    out = {}
    for s in (1.0, factor):
        mem = CrossBatchMemory(7, d)
        mem.enqueue((mem_rows * s).float())
        ts = [(t * s).float().requires_grad_(True) for t in (q, pos, hard)]
        f = make_loss(backend, temperature=0.05, memory=mem)
        out[s] = run(lambda: f(*ts, pos_ids=pos_ids, neg_ids=neg_ids), ts)
    (l1, g1), (ls, gs) = out[1.0], out[factor]
    assert l1.item() > 1e-3  # not a trivial loss
    assert abs(ls.item() - l1.item()) <= 1e-4 * l1.item(), (ls, l1)
    for a, b in zip(gs, g1):  # d loss / d (s x) = (1/s) d loss / d x
        assert torch.isfinite(a).all()
        assert rel_err(a.double() * factor, b) < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows_score_zero(backend):
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    pos = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)  # a zero positive: cosine 0 with everything
    loss, grads = run(lambda: make_loss(backend)(q, pos), [q, pos])
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    expect = (F.softplus(torch.tensor(-20.0)).item() + F.softplus(torch.tensor(0.0)).item()) / 2
    assert abs(loss.item() - expect) < 1e-6


# ----------------------------------------------------------- overflow is an error
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("factor", [1e19, 1e20, 1e30])
def test_dot_overflow_is_a_value_error(backend, factor):
    q, pos, hard, _, _, _ = batch(4, 1, 6, seed=5, dup=False)
    f = make_loss(backend, scale=1.0, similarity="dot")
    with pytest.raises(ValueError, match="overflow float32.*similarity='cosine'"):
        f((q * factor).float(), (pos * factor).float(), (hard * factor).float())
    # only one hard negative too large: the message names it (the fused kernel knows the segment)
    big = hard.clone()
    big[2, 0] *= factor * 1e20
    with pytest.raises(ValueError, match="hard_negatives"):
        f((q * 1e20).float(), pos.float(), big.float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_dot_overflow_in_memory_names_it(backend):
    q, pos, _, _, _, _ = batch(3, 0, 4, seed=6, dup=False)
    mem = CrossBatchMemory(4, 4)
    mem.enqueue(torch.full((2, 4), 1e37))
    f = make_loss(backend, scale=20.0, similarity="dot", memory=mem)
    with pytest.raises(ValueError, match="memory"):
        f(q.float() * 100, pos.float())


def test_dot_large_but_representable_is_exact():
    # |logits| near 1e37: still representable, so no error and the reference value
    q, pos, hard, _, _, _ = batch(3, 1, 2, seed=8, dup=False)
    s = 1e18
    ts = [(t * s).float().requires_grad_(True) for t in (q, pos, hard)]
    ref = reference(*[t.detach().double() for t in ts], None, None, None, None, None, 1e-18, "dot", None, True,
                    None, 0.0)
    for be in BACKENDS:
        loss = make_loss(be, scale=1e-18, similarity="dot")(*ts)
        assert abs(loss.item() - ref.item()) <= 1e-4 * max(ref.item(), 1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_dense_and_fused_agree(dtype):
    q, pos, hard, pos_ids, neg_ids, query_ids = batch(6, 2, 10, seed=12, dup=True)
    ts = [t.to(dtype).requires_grad_(True) for t in (q, pos, hard)]
    kw = dict(pos_ids=pos_ids, neg_ids=neg_ids, query_ids=query_ids)
    la, ga = run(lambda: make_loss("auto", hardness_mode="all_negatives", hardness_strength=2.0)(*ts, **kw), ts)
    lf, gf = run(lambda: make_loss("fused", hardness_mode="all_negatives", hardness_strength=2.0)(*ts, **kw), ts)
    assert la.dtype == lf.dtype == torch.float32
    assert abs(la.item() - lf.item()) <= 1e-5 * max(1.0, lf.item())
    for a, b in zip(ga, gf):
        assert a.dtype == dtype and rel_err(a.float(), b.float()) < 2e-2  # half-precision gradients round at 2^-8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("factor", [1.0, 1e19, 1e-20])
def test_cuda_path_matches_reference_and_refuses_overflow(factor):
    q, pos, hard, pos_ids, neg_ids, query_ids = batch(6, 2, 16, seed=21, dup=True)
    g = torch.Generator().manual_seed(2)
    mem_rows = torch.randn(9, 16, generator=g, dtype=torch.float64)
    mids = torch.randint(0, 12, (9,), generator=g)
    mem = CrossBatchMemory(9, 16, device="cuda")
    mem.enqueue((mem_rows * factor).float().cuda(), mids.cuda())
    ts = [(t * factor).float().cuda().requires_grad_(True) for t in (q, pos, hard)]
    kw = dict(pos_ids=pos_ids.cuda(), neg_ids=neg_ids.cuda(), query_ids=query_ids.cuda())
    f = InfoNCELoss(memory=mem, hardness_mode="all_negatives", hardness_strength=2.0, false_negative_margin=0.2)
    loss, grads = run(lambda: f(*ts, **kw), ts)
    r = [t.detach().cpu().double().requires_grad_(True) for t in ts]
    ref_loss, ref = run(lambda: reference(r[0], r[1], r[2], mem_rows * factor, mids, pos_ids, neg_ids, query_ids, 20.0,
                                          "cosine", 0.2, True, "all_negatives", 2.0), r)
    assert abs(loss.item() - ref_loss.item()) <= 1e-4 * max(1.0, ref_loss.item())
    for a, b in zip(grads, ref):
        assert rel_err(a.cpu(), b) < 1e-3
    big = (q * 1e20).float().cuda()
    with pytest.raises(ValueError, match="overflow"):
        InfoNCELoss(scale=1.0, similarity="dot")(big, big.clone())

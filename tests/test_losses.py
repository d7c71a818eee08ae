"""hardneg.losses against independent references: a naive torch autograd InfoNCE
(cat + matmul + mask + cross_entropy) and sentence-transformers'
MultipleNegativesRankingLoss.compute_loss_from_embeddings."""
from __future__ import annotations

import itertools
import os
import sys
import tempfile

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from hardneg.losses import (  # noqa: E402
    CrossBatchMemory,
    InfoNCELoss,
    SentenceTransformersLoss,
    contrastive_scores,
)


# ----------------------------------------------------------------- reference
def naive_loss(q, pos, hard, mem, mem_ids, pos_ids, neg_ids, scale, similarity="cosine", margin=None,
               in_batch=True, reduction="mean"):
    """cat + matmul + mask + cross_entropy, in the dtype of the inputs.

    hard: (B, n, d) or None; candidates in the order [pos | hard row-major | memory]."""
    B, d = q.shape
    n = 0 if hard is None else hard.shape[1]
    parts = [pos] + ([hard.reshape(B * n, d)] if n else []) + ([mem] if mem is not None and len(mem) else [])
    cand = torch.cat(parts)
    if similarity == "cosine":
        qq = F.normalize(q, dim=1)
        cand = F.normalize(cand, dim=1)
    else:
        qq = q
    sim = qq @ cand.T
    logits = sim * scale
    N = cand.shape[0]
    mask = torch.zeros(B, N, dtype=torch.bool)
    owner = torch.full((N,), -1, dtype=torch.long)  # which query a batch passage belongs to (-1: memory)
    owner[:B] = torch.arange(B)
    if n:
        owner[B:B + B * n] = torch.arange(B).repeat_interleave(n)
    is_own_pos = torch.zeros(B, N, dtype=torch.bool)
    is_own_pos[torch.arange(B), torch.arange(B)] = True
    if not in_batch:
        mask |= (owner[None, :] >= 0) & (owner[None, :] != torch.arange(B)[:, None])
    if pos_ids is not None:
        ids = [pos_ids]
        if n:
            ids.append(neg_ids.reshape(-1) if neg_ids is not None else torch.full((B * n,), -1))
        if mem is not None and len(mem):
            ids.append(mem_ids if mem_ids is not None else torch.full((len(mem),), -1))
        ids = torch.cat(ids)
        mask |= (ids[None, :] == pos_ids[:, None]) & (pos_ids[:, None] >= 0) & ~is_own_pos
    if margin is not None:
        p = sim.detach()[torch.arange(B), torch.arange(B)]
        mask |= (sim.detach() > (p - margin)[:, None]) & ~is_own_pos
    logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, torch.arange(B), reduction=reduction)


def grads_of(fn, tensors):
    for t in tensors:
        t.grad = None
    loss = fn()
    loss.backward()
    return loss.detach(), [None if t.grad is None else t.grad.clone() for t in tensors]


def assert_close(a, b, rtol, name="", floor=1e-30):
    """max |a - b| <= rtol * max(max |b|, floor)."""
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    scale = max(b.abs().max().item() if b.numel() else 0.0, floor)
    err = (a - b).abs().max().item() if b.numel() else 0.0
    assert err <= rtol * scale + 1e-12, f"{name}: max err {err:.3e} vs scale {scale:.3e} (rtol {rtol})"


def make_batch(B, n, d, dtype, seed, dup=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, d, generator=g, dtype=torch.float64)
    pos = q + 0.8 * torch.randn(B, d, generator=g, dtype=torch.float64)
    hard = (pos[:, None, :] + 1.2 * torch.randn(B, n, d, generator=g, dtype=torch.float64)) if n else None
    pos_ids = torch.randint(0, 3 * B if dup else 10 ** 6, (B,), generator=g)
    neg_ids = torch.randint(0, 3 * B, (B, n), generator=g) if n else None
    if n and dup:  # a hard negative that is really the positive
        neg_ids[0, 0] = pos_ids[0]
    cast = lambda t: None if t is None else t.to(dtype).requires_grad_(True)  # noqa: E731
    return cast(q), cast(pos), cast(hard), pos_ids, neg_ids


def fill_memory(size, d, count, dtype, seed, pos_ids=None):
    g = torch.Generator().manual_seed(seed + 1)
    mem = CrossBatchMemory(size, d, dtype=dtype)
    added = 0
    while added < count:
        k = min(5, count - added)
        ids = torch.randint(0, 10 ** 6, (k,), generator=g)
        if pos_ids is not None and added == 0:  # the positive of query 0 sits in the memory
            ids[0] = pos_ids[0]
        mem.enqueue(torch.randn(k, d, generator=g, dtype=torch.float64).to(dtype), ids)
        added += k
    return mem


# ------------------------------------------------------ parity with the reference
CASES = [
    # B, n, d, mem_size, mem_fill, temperature, similarity, margin, ids, in_batch
    (1, 0, 5, None, 0, 0.05, "cosine", None, False, True),
    (1, 2, 7, 8, 3, 0.05, "cosine", None, True, True),
    (4, 0, 16, 10, 0, 0.05, "cosine", None, True, True),  # empty memory
    (5, 3, 33, 12, 12, 0.05, "cosine", None, True, True),  # full
    (6, 2, 20, 9, 23, 0.1, "dot", None, True, True),  # wrapped memory
    (7, 1, 64, 40, 57, 0.02, "cosine", 0.1, True, True),  # wrapped + margin
    (3, 4, 9, 6, 6, 1e-3, "cosine", None, True, True),  # extreme: tiny temperature
    (3, 2, 9, 6, 6, 100.0, "cosine", None, True, True),  # extreme: huge temperature
    (5, 2, 12, 7, 7, 0.05, "cosine", 0.05, True, False),  # no in-batch negatives
    (8, 0, 1, 5, 5, 0.5, "dot", None, True, True),  # d = 1
]


@pytest.mark.parametrize("backend", ["auto", "fused", "hybrid", "torch"])
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_naive_reference(case, backend, dtype):
    B, n, d, msize, mfill, temp, simf, margin, use_ids, in_batch = case
    q, pos, hard, pos_ids, neg_ids = make_batch(B, n, d, dtype, seed=B * 100 + n * 10 + d, dup=use_ids)
    mem = fill_memory(msize, d, mfill, dtype, seed=d, pos_ids=pos_ids) if msize else None
    kw = dict(pos_ids=pos_ids, neg_ids=neg_ids) if use_ids else {}
    loss_fn = InfoNCELoss(temperature=temp, memory=mem, similarity=simf, false_negative_margin=margin,
                          in_batch_negatives=in_batch, backend={"auto": "auto", "torch": "torch"}.get(backend, "fused"),
                          memory_chunk=4)
    # auto: dense torch ops without a memory, else as fused; fused: the whole term in C++;
    # hybrid: torch in-batch part + the C++ memory kernel
    loss_fn._full_kernel = backend in ("fused", "auto")
    tensors = [t for t in (q, pos, hard) if t is not None]
    got, g_got = grads_of(lambda: loss_fn(q, pos, hard_negatives=hard, **kw), tensors)
    # reference in float64 on the same values
    r = [t.detach().to(torch.float64).requires_grad_(True) for t in tensors]
    rq, rpos, rhard = r[0], r[1], (r[2] if hard is not None else None)
    m_emb, m_ids = (mem.get() if mem is not None else (None, None))
    m_emb = None if m_emb is None else m_emb.to(torch.float64)
    ref, g_ref = grads_of(lambda: naive_loss(rq, rpos, rhard, m_emb, m_ids, pos_ids if use_ids else None,
                                             neg_ids if use_ids else None, 1.0 / temp, simf, margin, in_batch), r)
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    assert torch.isfinite(got)
    assert_close(got, ref, tol, "loss")
    for name, a, b in zip(("q", "pos", "hard"), g_got, g_ref):
        assert_close(a, b, tol, name)


def test_hard_negatives_flat_layout_and_bf16_memory():
    B, n, d = 4, 3, 24
    q, pos, hard, pos_ids, neg_ids = make_batch(B, n, d, torch.float32, seed=3, dup=True)
    mem = fill_memory(20, d, 15, torch.float32, seed=1, pos_ids=pos_ids)
    f = InfoNCELoss(memory=mem)
    a = f(q, pos, hard, pos_ids, neg_ids)
    b = f(q, pos, hard.reshape(B * n, d), pos_ids, neg_ids.reshape(-1))
    assert_close(a, b, 1e-6)
    # reduced-precision embeddings: fused and torch paths agree (both accumulate in fp32)
    for dt in (torch.bfloat16, torch.float16):
        memh = CrossBatchMemory(20, d, dtype=dt)
        e, i = mem.get()
        memh.enqueue(e.to(dt), i)
        args = (q.detach().to(dt).requires_grad_(), pos.detach().to(dt), hard.detach().to(dt))
        fused, gf = grads_of(lambda: InfoNCELoss(memory=memh, backend="fused")(*args, pos_ids, neg_ids), [args[0]])
        tch, gt = grads_of(lambda: InfoNCELoss(memory=memh, backend="torch")(*args, pos_ids, neg_ids), [args[0]])
        assert_close(fused, tch, 1e-4, "loss")
        assert_close(gf[0].float(), gt[0].float(), 1e-2, "grad q")  # bf16 grads round at 2^-8


@pytest.mark.parametrize("hardness_mode", [None, "hard_negatives", "in_batch_negatives", "all_negatives"])
def test_fused_kernel_many_blocks_and_threads(hardness_mode):
    # more rows than one query panel (256), several memory blocks, hard negatives with ids
    B, n, d, M = 300, 2, 64, 1200
    q, pos, hard, pos_ids, neg_ids = make_batch(B, n, d, torch.float32, seed=11, dup=True)
    mem = fill_memory(M, d, M + 37, torch.float32, seed=2, pos_ids=pos_ids)
    tensors = [q, pos, hard]
    out = {}
    for be in ("fused", "hybrid", "torch"):
        for nt in (1, 2):
            f = InfoNCELoss(temperature=0.03, memory=mem, backend="torch" if be == "torch" else "fused",
                            num_threads=nt, false_negative_margin=0.3, hardness_mode=hardness_mode,
                            hardness_strength=4.0 if hardness_mode else 0.0)
            f._full_kernel = be == "fused"
            out[be, nt] = grads_of(lambda: f(q, pos, hard, pos_ids=pos_ids, neg_ids=neg_ids), tensors)
    ref = out["torch", 1]
    for k, (loss, grads) in out.items():
        assert_close(loss, ref[0], 1e-5, f"loss {k}")
        for a, b in zip(grads, ref[1]):
            assert_close(a, b, 1e-4, f"grad {k}")


def test_all_negatives_masked_gives_zero_loss():
    B, n, d = 4, 2, 8
    q, pos, hard, _, _ = make_batch(B, n, d, torch.float32, seed=5)
    pos_ids = torch.full((B,), 7)  # every candidate has the positive's id
    neg_ids = torch.full((B, n), 7)
    mem = CrossBatchMemory(6, d)
    mem.enqueue(torch.randn(6, d), torch.full((6,), 7))
    for be in ("fused", "torch"):
        loss, grads = grads_of(lambda: InfoNCELoss(memory=mem, backend=be)(q, pos, hard, pos_ids, neg_ids),
                               [q, pos, hard])
        assert loss.item() == 0.0
        assert all(torch.count_nonzero(g) == 0 for g in grads)
    # the margin filter can also remove everything: a huge margin masks every negative
    loss = InfoNCELoss(memory=mem, false_negative_margin=10.0)(q, pos, hard)
    assert loss.item() == 0.0


# ------------------------------------------------ sentence-transformers parity
def st_combinations():
    dirs_rest = ("query_to_query", "doc_to_query", "doc_to_doc")
    for r in range(4):
        for extra in itertools.combinations(dirs_rest, r):
            directions = ("query_to_doc",) + extra
            for pm in ("joint", "per_direction"):
                if pm == "per_direction" and set(extra) & {"query_to_query", "doc_to_doc"}:
                    continue
                for hm in (None, "in_batch_negatives", "hard_negatives", "all_negatives"):
                    yield directions, pm, hm


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("n", [0, 2])
def test_matches_sentence_transformers_every_combination(similarity, n):
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses.multiple_negatives_ranking")
    from sentence_transformers import util

    sim_fct = util.cos_sim if similarity == "cosine" else util.dot_score
    scale = 20.0 if similarity == "cosine" else 0.7
    B, d = 6, 16
    for k, (directions, pm, hm) in enumerate(st_combinations()):
        dtype = torch.float64 if k % 3 else torch.float32
        q, pos, hard, _, _ = make_batch(B, n, d, dtype, seed=k)
        hs = 3.0 if hm else 0.0
        ref_fn = st_losses.MultipleNegativesRankingLoss(
            model=None, scale=scale, similarity_fct=sim_fct, directions=directions, partition_mode=pm,
            hardness_mode=hm, hardness_strength=hs)
        ours = InfoNCELoss(scale=scale, similarity=similarity, directions=directions, partition_mode=pm,
                           hardness_mode=hm, hardness_strength=hs,
                           memory=CrossBatchMemory(4, d, dtype=dtype))  # empty memory: no change
        tensors = [q, pos] + ([hard] if n else [])
        # sentence-transformers evaluated in float64 on the same values (its own float32 result
        # loses ~1 ulp of log Z to cancellation, ours does not)
        r = [t.detach().to(torch.float64).requires_grad_(True) for t in tensors]
        rcols = [r[0], r[1]] + ([r[2][:, j] for j in range(n)] if n else [])
        ref, g_ref = grads_of(lambda: ref_fn.compute_loss_from_embeddings(rcols, None), r)
        got, g_got = grads_of(lambda: ours(q, pos, hard), tensors)
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        tag = f"{directions} {pm} {hm} {dtype}"
        assert_close(got, ref, tol, "loss " + tag)
        for a, b in zip(g_got, g_ref):
            assert_close(a, b, tol, "grad " + tag)


def test_symmetric_is_shorthand():
    q, pos, hard, _, _ = make_batch(5, 1, 8, torch.float64, seed=9)
    a = InfoNCELoss(symmetric=True)(q, pos, hard)
    b = InfoNCELoss(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")(q, pos, hard)
    assert_close(a, b, 1e-12)


def test_memory_with_directions_and_hardness_matches_naive():
    # joint softmax over all directions + memory equals a naive concatenation
    B, n, d = 4, 1, 10
    q, pos, hard, _, _ = make_batch(B, n, d, torch.float64, seed=21)
    mem = fill_memory(8, d, 8, torch.float64, seed=4)
    alpha, scale = 2.0, 10.0
    f = InfoNCELoss(scale=scale, memory=mem, directions=("query_to_doc", "doc_to_query"),
                    hardness_mode="all_negatives", hardness_strength=alpha)
    got = f(q, pos, hard)
    qn, pn, hn_, mn = (F.normalize(x, dim=-1) for x in (q, pos, hard, mem.get()[0]))
    docs = torch.cat([pn, hn_[:, 0]])
    s = qn @ docs.T
    own = torch.eye(B, dtype=torch.bool).repeat(1, 2)
    excl = own.clone()
    excl[:, B:] = False
    z = s * scale + torch.where(excl, 0.0, alpha * s.detach())
    zm = (qn @ mn.T) * (scale + alpha)
    zd = (pn @ qn.T) * scale
    logz = torch.logsumexp(torch.cat([z, zd, zm], 1), 1)
    ref = -(z.diagonal() - logz).mean()
    assert_close(got, ref, 1e-12)


# -------------------------------------------------------------- contrastive_scores
def test_contrastive_scores_reproduce_loss():
    B, n, d = 5, 2, 12
    q, pos, hard, pos_ids, neg_ids = make_batch(B, n, d, torch.float32, seed=13, dup=True)
    mem = fill_memory(9, d, 14, torch.float32, seed=3, pos_ids=pos_ids)
    logits, mask = contrastive_scores(q, pos, hard_negatives=hard, memory=mem, pos_ids=pos_ids, neg_ids=neg_ids,
                                      temperature=0.05, false_negative_margin=0.2)
    assert logits.shape == mask.shape == (B, B + B * n + len(mem))
    assert mask.dtype == torch.bool and mask.diagonal().all()
    assert not mask[0, B].item()  # neg 0 of query 0 carries the positive's id
    ce = F.cross_entropy(logits.masked_fill(~mask, float("-inf")), torch.arange(B))
    loss = InfoNCELoss(temperature=0.05, memory=mem, false_negative_margin=0.2)(q, pos, hard, pos_ids, neg_ids)
    assert_close(ce, loss, 1e-5)
    # a plain tensor memory with explicit ids gives the same scores
    e, i = mem.get()
    l2, m2 = contrastive_scores(q, pos, hard, memory=e, memory_ids=i, pos_ids=pos_ids, neg_ids=neg_ids,
                                temperature=0.05, false_negative_margin=0.2)
    assert torch.equal(m2, mask) and torch.allclose(l2, logits)


# ------------------------------------------------------------------ the memory
def test_memory_fifo_and_state_dict(tmp_path):
    mem = CrossBatchMemory(5, 3)
    assert len(mem) == 0 and mem.get()[0].shape == (0, 3)
    for k in range(4):
        mem.enqueue(torch.full((2, 3), float(k)), torch.tensor([10 * k, 10 * k + 1]))
        assert len(mem) == min(2 * (k + 1), 5)
    e, i = mem.get()
    assert e.shape == (5, 3) and mem.embeddings.shape == (5, 3)  # never grows
    # 8 rows went in: the last 5 survive (ids 11, 20, 21, 30, 31)
    assert sorted(i.tolist()) == [11, 20, 21, 30, 31]
    mem.enqueue(torch.arange(21.0).reshape(7, 3))  # more than size at once: newest 5 kept
    assert len(mem) == 5 and sorted(mem.get()[0][:, 0].tolist()) == [6.0, 9.0, 12.0, 15.0, 18.0]
    assert (mem.get()[1] == -1).all()
    path = tmp_path / "m.pt"
    torch.save(mem.state_dict(), path)
    m2 = CrossBatchMemory(5, 3)
    m2.load_state_dict(torch.load(path))
    assert len(m2) == 5 and torch.equal(m2.get()[0], mem.get()[0]) and int(m2.ptr) == int(mem.ptr)
    m2.enqueue(torch.zeros(1, 3), [99])
    assert len(m2) == 5 and 99 in m2.get()[1].tolist()
    # it also travels inside the loss's state_dict
    f = InfoNCELoss(memory=mem)
    assert "memory.embeddings" in f.state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_memory_row_norms_kept_equal_a_fresh_pass(dtype):
    # the norms kept by enqueue equal, bit for bit, one pass over the valid rows, through wraps,
    # oversized enqueues, reset, load_state_dict and an in-place edit (both recompute)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(3)
    mem = CrossBatchMemory(300, 384, dtype=dtype)
    assert mem.row_norms(cdt).shape == (0,)

    def check():
        fresh = torch.linalg.vector_norm(mem.get()[0].to(cdt), dim=1)
        kept = mem.row_norms(cdt)
        assert kept.dtype == cdt and torch.equal(kept, fresh)

    for n in (1, 7, 32, 1, 128, 200, 31, 500, 64):
        mem.enqueue((3 * torch.randn(n, 384, generator=g)).to(dtype))
        check()
    mem.reset()
    mem.enqueue(torch.randn(5, 384, generator=g).to(dtype))
    check()
    m2 = CrossBatchMemory(300, 384, dtype=dtype)
    m2.row_norms(cdt)
    m2.load_state_dict(mem.state_dict())
    assert torch.equal(m2.row_norms(cdt), mem.row_norms(cdt))
    with torch.no_grad():
        mem.embeddings[:5].mul_(2)
    check()
    mem.enqueue(torch.randn(3, 384, generator=g).to(dtype))
    check()


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cosine_memory_with_kept_norms_equals_a_pass_per_step(backend, monkeypatch):
    # a cosine loss with a memory reads the kept norms instead of a pass over the memory:
    # the same loss and gradients, bit for bit, as with a pass per chunk
    q, pos, hard, pos_ids, neg_ids = make_batch(8, 2, 32, torch.float32, seed=4)
    mem = fill_memory(600, 32, 600, torch.float32, seed=4, pos_ids=pos_ids)
    f = InfoNCELoss(memory=mem, similarity="cosine", backend=backend, memory_chunk=128,
                    false_negative_margin=0.1)
    got, g_got = grads_of(lambda: f(q, pos, hard, pos_ids, neg_ids), [q, pos, hard])
    monkeypatch.setattr(CrossBatchMemory, "row_norms", lambda self, dtype=torch.float32: None)
    ref, g_ref = grads_of(lambda: f(q, pos, hard, pos_ids, neg_ids), [q, pos, hard])
    assert torch.equal(got, ref)
    for a, b in zip(g_got, g_ref):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["fused", "hybrid", "torch"])
def test_enqueue_between_forward_and_backward(backend):
    # the sentence-transformers adapter enqueues before the trainer calls backward()
    q, pos, hard, pos_ids, neg_ids = make_batch(4, 1, 8, torch.float32, seed=2)
    mem = fill_memory(6, 8, 6, torch.float32, seed=0)
    f = InfoNCELoss(memory=mem, backend="torch" if backend == "torch" else "fused")
    f._full_kernel = backend == "fused"
    ref, g_ref = grads_of(lambda: f(q, pos, hard), [q, pos, hard])
    for t in (q, pos, hard):
        t.grad = None
    loss = f(q, pos, hard)
    mem.enqueue(pos.detach()[:3])
    loss.backward()
    assert_close(q.grad, g_ref[0], 1e-6)
    assert_close(pos.grad, g_ref[1], 1e-6)


def test_memory_bad_input():
    with pytest.raises(ValueError, match="size"):
        CrossBatchMemory(0, 4)
    with pytest.raises(ValueError, match="dim"):
        CrossBatchMemory(4, -1)
    mem = CrossBatchMemory(4, 3)
    with pytest.raises(ValueError, match="shape"):
        mem.enqueue(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="dtype"):
        mem.enqueue(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="ids"):
        mem.enqueue(torch.zeros(2, 3), [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        mem.enqueue(torch.tensor([[0.0, float("nan"), 1.0]]))
    assert len(mem) == 0


# ------------------------------------------------------------------- bad input
def test_loss_bad_input():
    q, pos, hard, pos_ids, neg_ids = make_batch(4, 2, 6, torch.float32, seed=1)
    for kw, exc, msg in [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(scale=0.0), ValueError, "scale"),
        (dict(temperature=0.1, scale=10.0), ValueError, "temperature or scale"),
        (dict(similarity="l2"), ValueError, "similarity"),
        (dict(directions=("doc_to_query",)), ValueError, "query_to_doc"),
        (dict(directions=("query_to_doc", "query_to_query"), partition_mode="per_direction"), ValueError,
         "per_direction"),
        (dict(hardness_mode="bogus"), ValueError, "hardness_mode"),
        (dict(hardness_mode="hard_negatives", hardness_strength=-1.0), ValueError, "hardness_strength"),
        (dict(in_batch_negatives=False, symmetric=True), ValueError, "in_batch_negatives"),
        (dict(memory="x"), TypeError, "memory"),
    ]:
        with pytest.raises(exc, match=msg):
            InfoNCELoss(**kw)
    f = InfoNCELoss()
    with pytest.raises(ValueError, match="pos"):
        f(q, pos[:3])  # mismatched B
    with pytest.raises(ValueError, match="pos"):
        f(q, pos[:, :5])  # mismatched d
    with pytest.raises(ValueError, match="hard_negatives"):
        f(q, pos, hard[:, :, :5])
    with pytest.raises(ValueError, match="hard_negatives"):
        f(q, pos, hard.reshape(8, 6)[:7])
    with pytest.raises(ValueError, match="pos_ids"):
        f(q, pos, hard, pos_ids[:3])
    with pytest.raises(ValueError, match="neg_ids"):
        f(q, pos, hard, pos_ids, neg_ids[:, :1])
    with pytest.raises(TypeError, match="pos_ids"):
        f(q, pos, hard, pos_ids.float())
    with pytest.raises(TypeError, match="q"):
        f(q.detach().numpy(), pos)
    bad = q.detach().clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="q contains NaN"):
        f(bad, pos)
    bad = hard.detach().clone()
    bad[0, 1, 0] = float("inf")
    with pytest.raises(ValueError, match="hard_negatives contains NaN"):
        f(q, pos, bad)
    with pytest.raises(ValueError, match="memory has dim"):
        InfoNCELoss(memory=CrossBatchMemory(4, 7))(q, pos)
    with pytest.raises(TypeError, match="memory dtype"):
        InfoNCELoss(memory=CrossBatchMemory(4, 6, dtype=torch.float64))(q, pos)


# -------------------------------------------------------------- the adapter
class _StubModel(torch.nn.Module):
    """Embeds feature dicts {"x": (B, k)} linearly: a stand-in for a SentenceTransformer."""

    def __init__(self, k=5, d=8):
        super().__init__()
        self.lin = torch.nn.Linear(k, d)

    def forward(self, features):
        out = dict(features)
        out["sentence_embedding"] = self.lin(features["x"])
        return out


def test_sentence_transformers_adapter_matches_mnrl():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses.multiple_negatives_ranking")
    torch.manual_seed(0)
    model = _StubModel()
    feats = [{"x": torch.randn(6, 5)} for _ in range(3)]  # anchor, positive, one negative
    ref = st_losses.MultipleNegativesRankingLoss(model, scale=20.0).compute_loss_from_embeddings(
        [model(f)["sentence_embedding"] for f in feats], None)
    mem = CrossBatchMemory(16, 8)
    adapter = SentenceTransformersLoss(model, temperature=0.05, memory=mem)
    got = adapter.compute_loss_from_embeddings([model(f)["sentence_embedding"] for f in feats], None)
    assert_close(got, ref, 1e-5)
    assert len(mem) == 12  # positives and negatives of the step were enqueued
    got.backward()
    assert model.lin.weight.grad is not None
    loss2 = adapter(feats, None)  # through forward(sentence_features, labels), now with memory
    assert torch.isfinite(loss2) and loss2.item() > got.item()


# ---------------------------------------------------------- gather over gloo
def _gloo_worker(rank, world, init_method, result_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        B, n, d = 3, 2, 8
        g = torch.Generator().manual_seed(123)
        allq = torch.randn(world * B, d, generator=g, dtype=torch.float64)
        allp = allq + torch.randn(world * B, d, generator=g, dtype=torch.float64)
        allh = torch.randn(world * B, n, d, generator=g, dtype=torch.float64)
        allpid = torch.arange(world * B)
        allpid[-1] = allpid[0]  # the same passage on both ranks: a false negative across devices
        memory = CrossBatchMemory(4, d, dtype=torch.float64)
        memory.enqueue(torch.randn(4, d, generator=g, dtype=torch.float64), torch.tensor([0, 50, 51, 52]))
        sl = slice(rank * B, (rank + 1) * B)
        q, p, h = (t[sl].clone().requires_grad_(True) for t in (allq, allp, allh))
        f = InfoNCELoss(temperature=0.1, gather_across_devices=True, memory=memory, false_negative_margin=0.5)
        loss = f(q, p, h, pos_ids=allpid[sl])
        loss.backward()
        out = {"loss": loss.detach(), "q": q.grad, "p": p.grad, "h": h.grad}
        torch.save(out, os.path.join(result_dir, f"{rank}.pt"))
        dist.barrier()  # nobody leaves while the other rank still uses the group
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave without running gloo's teardown: its background threads sometimes abort
    # the process at exit ("terminate called without an active exception") after
    # the results are safely written, which would fail the test for nothing.
    sys.stdout.flush()
    os._exit(0)


def test_gather_across_devices_gloo():
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    world, B, n, d = 2, 3, 2, 8
    import socket

    with socket.socket() as sock:  # a free local port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gloo_worker, args=(world, f"tcp://127.0.0.1:{port}", tmp), nprocs=world, join=True)
        res = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
    # reference: one process, the whole batch; each rank's loss is the mean over its rows, and the
    # gradient each rank receives is d(sum of all ranks' losses)/d(its own tensors)
    g = torch.Generator().manual_seed(123)
    allq = torch.randn(world * B, d, generator=g, dtype=torch.float64).requires_grad_(True)
    allp = (allq.detach() + torch.randn(world * B, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    allh = torch.randn(world * B, n, d, generator=g, dtype=torch.float64).requires_grad_(True)
    allpid = torch.arange(world * B)
    allpid[-1] = allpid[0]
    mem = torch.randn(4, d, generator=g, dtype=torch.float64)
    per_row = naive_loss(allq, allp, allh, mem, torch.tensor([0, 50, 51, 52]), allpid, None, 10.0,
                         margin=0.5, reduction="none")
    rank_losses = per_row.reshape(world, B).mean(1)
    rank_losses.sum().backward()
    for r in range(world):
        sl = slice(r * B, (r + 1) * B)
        assert_close(res[r]["loss"], rank_losses[r], 1e-10, f"loss rank {r}")
        assert_close(res[r]["q"], allq.grad[sl], 1e-10, f"grad q rank {r}")
        assert_close(res[r]["p"], allp.grad[sl], 1e-10, f"grad pos rank {r}")
        assert_close(res[r]["h"], allh.grad[sl], 1e-10, f"grad hard rank {r}")


def test_import_hardneg_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import hardneg\n"
            "assert 'InfoNCELoss' in hardneg.__all__\n"
            "try:\n    hardneg.InfoNCELoss\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit(1)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_top_level_exports():
    import hardneg
    import hardneg.losses as losses

    assert hardneg.contrastive_scores is losses.contrastive_scores
    assert hardneg.InfoNCELoss is losses.InfoNCELoss and hardneg.CrossBatchMemory is losses.CrossBatchMemory
    assert hardneg.SentenceTransformersLoss is losses.SentenceTransformersLoss

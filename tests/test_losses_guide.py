"""Guided in-batch negative filtering (GISTEmbedLoss's rule): InfoNCELoss(guide=...) against a
float64 autograd reference whose mask is built by brute force, and SentenceTransformersLoss(guide=...)
against sentence-transformers' GISTEmbedLoss on a tiny offline model."""
from __future__ import annotations


import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from hardneg.losses import CrossBatchMemory, InfoNCELoss  # noqa: E402


# ------------------------------------------------------------------ brute-force reference
def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def _threshold(g_pos, margin, strategy):
    return g_pos - margin if strategy == "absolute" else g_pos - abs(g_pos) * margin


def reference(q, pos, hard, guide, scale, directions, partition, margin, strategy, mem=None, per_row=False):
    """Per-row loss from explicit candidate lists; the mask follows GISTEmbedLoss's rule, entry by entry.

    Returns (loss, masked) where masked is the set of (direction, row, candidate) the guide removed."""
    B = q.shape[0]
    n = 0 if hard is None else hard.shape[1]
    gq, gp = guide[0].double(), guide[1].double()
    gh = guide[2].double() if n else None
    qn, pn = F.normalize(q, dim=1), F.normalize(pos, dim=1)
    hn = F.normalize(hard, dim=2) if n else None
    # candidates: (kind, index) -> (embedding, guide embedding); kinds "p" (positive j), "h" (j, k), "q" (query j)
    docs = [("p", j) for j in range(B)] + [("h", j, k) for k in range(n) for j in range(B)]

    def emb(c):
        return {"p": lambda: pn[c[1]], "h": lambda: hn[c[1], c[2]], "q": lambda: qn[c[1]]}[c[0]]()

    def gemb(c):
        return {"p": lambda: gp[c[1]], "h": lambda: gh[c[1], c[2]], "q": lambda: gq[c[1]]}[c[0]]()

    masked = set()
    want_rows, per_row = per_row, []
    for i in range(B):
        thr = _threshold(_cos(gq[i], gp[i]), margin, strategy)
        z_pos = scale * (qn[i] @ pn[i])
        terms = {}
        for key in directions:
            anchor, ganchor = (qn[i], gq[i]) if key.startswith("query") else (pn[i], gp[i])
            cands = docs if key.endswith("doc") else [("q", j) for j in range(B)]
            zs = []
            for c in cands:
                positive = (key == "query_to_doc" and c == ("p", i)) or (key == "doc_to_query" and c == ("q", i))
                self_or_own = ((key == "query_to_query" and c == ("q", i))
                               or (key == "doc_to_doc" and c[0] in "ph" and c[1] == i))
                if self_or_own:
                    continue
                if not positive and _cos(ganchor, gemb(c)) > thr:
                    masked.add((key, i, c))
                    continue
                zs.append(scale * (anchor @ emb(c)))
            if key == "query_to_doc" and mem is not None:
                zs += [scale * (qn[i] @ F.normalize(m, dim=0)) for m in mem]
            terms[key] = torch.stack(zs) if zs else torch.zeros(0, dtype=q.dtype)
        if partition == "joint":
            per_row.append(torch.logsumexp(torch.cat(list(terms.values())), 0) - z_pos)
        else:
            per_row.append(sum(torch.logsumexp(t, 0) - z_pos for t in terms.values()) / len(terms))
    rows = torch.stack(per_row)
    return (rows if want_rows else rows.mean()), masked


def _leaves(B, n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, d, generator=g, dtype=dtype, requires_grad=True)
    pos = torch.randn(B, d, generator=g, dtype=dtype, requires_grad=True)
    hard = torch.randn(B, n, d, generator=g, dtype=dtype, requires_grad=True) if n else None
    return q, pos, hard


def _guide(B, n, dg, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed + 1000)
    base = torch.randn(1, dg, generator=g, dtype=dtype) * 1.5  # a shared component: guide cosines spread over (-1, 1)
    gq = base + torch.randn(B, dg, generator=g, dtype=dtype)
    gp = gq + 0.7 * torch.randn(B, dg, generator=g, dtype=dtype)
    out = (gq, gp)
    if n:
        out += (base + torch.randn(B, n, dg, generator=g, dtype=dtype),)
    return out


def _grads(loss, leaves):
    ls = [x for x in leaves if x is not None]
    return torch.autograd.grad(loss, ls, retain_graph=True)


CONFIGS = [
    (("query_to_doc",), "joint"),
    (("query_to_doc", "query_to_query", "doc_to_doc"), "joint"),
    (("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), "joint"),
    (("query_to_doc", "doc_to_query"), "per_direction"),
]


@pytest.mark.parametrize("directions,partition", CONFIGS, ids=lambda c: str(c))
@pytest.mark.parametrize("n", [0, 2])
@pytest.mark.parametrize("margin,strategy", [(0.0, "absolute"), (0.1, "absolute"), (-0.05, "absolute"),
                                             (0.2, "relative")])
def test_guided_loss_and_grads_match_brute_force(directions, partition, n, margin, strategy):
    B, d, dg = 5, 6, 3
    q, pos, hard = _leaves(B, n, d, seed=n + len(directions))
    guide = _guide(B, n, dg, seed=n)
    ref, masked = reference(q, pos, hard, guide, 7.0, directions, partition, margin, strategy)
    assert masked  # the rule removes something here...
    for backend in ("auto", "torch"):
        fn = InfoNCELoss(scale=7.0, directions=directions, partition_mode=partition, backend=backend,
                         guide_margin=margin, guide_margin_strategy=strategy)
        got = fn(q, pos, hard, guide=guide)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(_grads(got, (q, pos, hard)), _grads(ref, (q, pos, hard))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    plain = InfoNCELoss(scale=7.0, directions=directions, partition_mode=partition)(q, pos, hard)
    assert not torch.isclose(plain, ref)  # ...so the guide changes the loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_guide_with_memory_filters_the_batch_only(dtype):
    B, n, d, dg = 4, 1, 5, 3
    q, pos, hard = _leaves(B, n, d, seed=3, dtype=dtype)
    guide = _guide(B, n, dg, seed=3, dtype=torch.float32)  # any guide dtype and dimension
    mem = CrossBatchMemory(7, d, dtype=dtype)
    mem.enqueue(torch.randn(7, d, dtype=dtype, generator=torch.Generator().manual_seed(9)))
    r64 = [x.detach().double().requires_grad_() for x in (q, pos, hard)]
    ref, masked = reference(*r64, guide, 5.0, ("query_to_doc",), "joint", 0.0, "absolute",
                            mem=mem.get()[0].double())
    assert masked
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for backend in ("auto", "torch"):
        got = InfoNCELoss(scale=5.0, memory=mem, backend=backend)(q, pos, hard, guide=guide)
        assert abs(got.item() - ref.item()) <= tol * max(1.0, abs(ref.item()))
        for a, b in zip(_grads(got, (q, pos, hard)), _grads(ref, r64)):
            torch.testing.assert_close(a.double(), b, rtol=tol * 10, atol=tol * 10)


def test_positive_never_masked_and_ties_are_kept():
    B, n, d = 3, 1, 4
    q, pos, hard = _leaves(B, n, d, seed=5)
    gq = torch.randn(B, 2, dtype=torch.float64)
    gp = gq.clone()  # guide cosine of the positive = 1: nothing can exceed it...
    gh = gp.clone()[:, None]  # ...and each hard negative ties with its positive (kept under margin 0)
    loss = InfoNCELoss(scale=3.0)
    ref, masked = reference(q, pos, hard, (gq, gp, gh), 3.0, ("query_to_doc",), "joint", 0.0, "absolute")
    torch.testing.assert_close(loss(q, pos, hard, guide=(gq, gp, gh)), ref, rtol=1e-12, atol=1e-12)
    # a margin above the positive's guide score masks every other candidate: loss 0, zero gradients
    all_masked = InfoNCELoss(scale=3.0, guide_margin=3.0)(q, pos, hard, guide=(gq, gp, gh))
    assert all_masked.item() == 0.0
    assert all(g.abs().max().item() == 0.0 for g in _grads(all_masked, (q, pos, hard)))


def test_guide_gets_no_gradient_and_bad_guides_are_refused():
    B, n, d = 3, 2, 4
    q, pos, hard = _leaves(B, n, d, seed=6)
    gq, gp, gh = (x.clone().requires_grad_() for x in _guide(B, n, 2, seed=6))
    InfoNCELoss()(q, pos, hard, guide=(gq, gp, gh)).backward()
    assert gq.grad is None and gp.grad is None and gh.grad is None
    InfoNCELoss()(q, pos, hard, guide=(gq, gp, gh.reshape(B * n, 2)))  # (B*n, dg) works too
    fn = InfoNCELoss()
    with pytest.raises(ValueError, match="g_hard"):
        fn(q, pos, hard, guide=(gq, gp))
    with pytest.raises(ValueError, match="g_hard"):
        fn(q, pos, None, guide=(gq, gp, gh))
    with pytest.raises(TypeError, match="guide"):
        fn(q, pos, hard, guide=gq)
    with pytest.raises(ValueError, match="g_pos"):
        fn(q, pos, hard, guide=(gq, gp[:2], gh))
    with pytest.raises(ValueError, match="g_pos"):
        fn(q, pos, hard, guide=(gq, torch.randn(B, 3, dtype=torch.float64), gh))
    with pytest.raises(ValueError, match="g_hard"):
        fn(q, pos, hard, guide=(gq, gp, gh[:, :1]))
    with pytest.raises(ValueError, match="NaN"):
        fn(q, pos, hard, guide=(gq.detach() * float("nan"), gp, gh))
    with pytest.raises(TypeError, match="g_q"):
        fn(q, pos, hard, guide=(gq.detach().long(), gp, gh))
    with pytest.raises(ValueError, match="guide_margin_strategy"):
        InfoNCELoss(guide_margin_strategy="percent")
    with pytest.raises((TypeError, ValueError), match="guide_margin"):
        InfoNCELoss(guide_margin=float("nan"))


# ---------------------------------------------------------------------- gather over gloo
GLOO_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_doc")


def _gloo_data(world, B, n, d):
    g = torch.Generator().manual_seed(77)
    allq = torch.randn(world * B, d, generator=g, dtype=torch.float64)
    allp = allq + torch.randn(world * B, d, generator=g, dtype=torch.float64)
    allh = torch.randn(world * B, n, d, generator=g, dtype=torch.float64)
    return (allq, allp, allh), _guide(world * B, n, 3, seed=77)


def _gloo_worker(rank, world, init_method, result_dir):
    import os
    import sys

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        B, n, d = 3, 1, 5
        (allq, allp, allh), guide = _gloo_data(world, B, n, d)
        sl = slice(rank * B, (rank + 1) * B)
        q, p, h = (t[sl].clone().requires_grad_(True) for t in (allq, allp, allh))
        f = InfoNCELoss(scale=6.0, gather_across_devices=True, directions=GLOO_DIRECTIONS, partition_mode="joint")
        loss = f(q, p, h, guide=tuple(x[sl] for x in guide))
        loss.backward()
        torch.save({"loss": loss.detach(), "q": q.grad, "p": p.grad, "h": h.grad},
                   os.path.join(result_dir, f"{rank}.pt"))
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    sys.stdout.flush()
    os._exit(0)  # skip gloo's teardown (see tests/test_losses.py)


def test_guide_with_gather_across_devices_gloo():
    import os
    import socket
    import tempfile

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    world, B, n, d = 2, 3, 1, 5
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gloo_worker, args=(world, f"tcp://127.0.0.1:{port}", tmp), nprocs=world, join=True)
        res = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
    (allq, allp, allh), guide = _gloo_data(world, B, n, d)
    leaves = [x.clone().requires_grad_(True) for x in (allq, allp, allh)]
    rows, masked = reference(*leaves, guide, 6.0, GLOO_DIRECTIONS, "joint", 0.0, "absolute", per_row=True)
    assert masked
    rank_losses = rows.reshape(world, B).mean(1)
    rank_losses.sum().backward()
    for r in range(world):
        sl = slice(r * B, (r + 1) * B)
        torch.testing.assert_close(res[r]["loss"], rank_losses[r], rtol=1e-10, atol=1e-12)
        for key, leaf in zip("qph", leaves):
            torch.testing.assert_close(res[r][key], leaf.grad[sl], rtol=1e-9, atol=1e-12)


# -------------------------------------------------------------------- sentence-transformers
st = pytest.importorskip("sentence_transformers")
from st_tiny import assert_same, features, loss_and_grads, sentences, tiny_model  # noqa: E402

from hardneg.losses import SentenceTransformersLoss  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    model = tiny_model(tmp_path_factory.mktemp("tiny_m"), dtype=torch.float64, seed=0)
    guide = tiny_model(tmp_path_factory.mktemp("tiny_g"), dtype=torch.float64, seed=1)
    return model, guide


# GISTEmbedLoss's (contrast_anchors, contrast_positives) and the directions that give the same softmax;
# with a hard-negative column GIST's positive-positive block leaves the negatives out, MNRL's doc_to_doc
# (and so InfoNCELoss's) does not, so that pair is compared without negatives only
GIST_DIRECTIONS = {(False, False): ("query_to_doc",), (True, False): ("query_to_doc", "query_to_query"),
                   (True, True): ("query_to_doc", "query_to_query", "doc_to_doc")}


@pytest.mark.parametrize("contrast", list(GIST_DIRECTIONS), ids=str)
@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("margin,strategy", [(0.0, "absolute"), (0.002, "relative")])
@pytest.mark.parametrize("retokenize", [False, True])
def test_adapter_equals_gist(models, contrast, n, margin, strategy, retokenize):
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss

    if contrast[1] and n:
        pytest.skip("GIST's positive-positive block has no hard negatives; MNRL's doc_to_doc does")
    model, guide = models
    old = guide.max_seq_length
    if retokenize:  # a shorter guide makes GIST (and the adapter) decode and re-tokenize
        guide.max_seq_length = model.max_seq_length - 1
    try:
        s = sentences(6 * (2 + n), seed=11 + n)
        feats = features(model, [s[k * 6:(k + 1) * 6] for k in range(2 + n)])
        gist = GISTEmbedLoss(model, guide, temperature=0.05, margin_strategy=strategy, margin=margin,
                             contrast_anchors=contrast[0], contrast_positives=contrast[1])
        ours = SentenceTransformersLoss(model, scale=20.0, guide=guide, margin_strategy=strategy, margin=margin,
                                        directions=GIST_DIRECTIONS[contrast], partition_mode="joint")
        assert gist.must_retokenize == ours.must_retokenize == retokenize
        ref = loss_and_grads(gist, model, [dict(f) for f in feats])
        got = loss_and_grads(ours, model, [dict(f) for f in feats])
        assert_same(got, ref, 1e-9)
        # the guide removes candidates here (brute force on the guide's embeddings), so this is no MNRL
        g = ours.guide_columns([dict(f) for f in feats])
        with torch.no_grad():
            e = [model(dict(f))["sentence_embedding"] for f in feats]
        _, masked = reference(e[0], e[1], torch.stack(e[2:], 1) if n else None,
                              (g[0], g[1]) + ((torch.stack(g[2:], 1),) if n else ()), 20.0,
                              GIST_DIRECTIONS[contrast], "joint", margin, strategy)
        assert masked
        plain = loss_and_grads(SentenceTransformersLoss(model, scale=20.0, directions=GIST_DIRECTIONS[contrast]),
                                model, [dict(f) for f in feats])
        assert abs(plain[0].item() - got[0].item()) > 1e-6
    finally:
        guide.max_seq_length = old


def test_adapter_guide_config_and_refusals(models):
    model, guide = models
    loss = SentenceTransformersLoss(model, guide=guide, margin=0.1, margin_strategy="relative")
    cfg = loss.get_config_dict()
    assert cfg["guide"] is guide and cfg["guide_margin"] == 0.1 and cfg["guide_margin_strategy"] == "relative"
    with pytest.raises(ValueError, match="margin_strategy"):
        SentenceTransformersLoss(model, guide=guide, margin_strategy="both")
    with pytest.raises(ValueError, match="tokenizer"):
        SentenceTransformersLoss(model, guide=torch.nn.Linear(2, 2))


@pytest.mark.parametrize("n", [0, 1])
def test_cached_loss_with_a_guide_equals_the_adapter(models, n):
    from hardneg.losses import CachedInfoNCELoss

    model, guide = models
    s = sentences(7 * (2 + n), seed=21 + n)
    feats = features(model, [s[k * 7:(k + 1) * 7] for k in range(2 + n)])
    opts = dict(scale=20.0, guide=guide, margin=0.01, directions=("query_to_doc", "query_to_query"))
    ref = loss_and_grads(SentenceTransformersLoss(model, **opts), model, [dict(f) for f in feats])
    got = loss_and_grads(CachedInfoNCELoss(model, mini_batch_size=3, **opts), model, [dict(f) for f in feats])
    assert_same(got, ref, 1e-9)
    plain = loss_and_grads(CachedInfoNCELoss(model, mini_batch_size=3, scale=20.0,
                                              directions=("query_to_doc", "query_to_query")),
                            model, [dict(f) for f in feats])
    assert abs(plain[0].item() - got[0].item()) > 1e-6

"""InfoNCELoss(backend="auto") on CPU: which path runs for which shape, and that the lean forms
(the dense path without options, the memory in BLAS chunks) keep the library's values: the
log1p-exact loss and gradients of a float64 autograd reference, NaN / Inf named, overflow refused,
huge but representable logits accepted."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import hardneg._loss_dense as dense  # noqa: E402
from hardneg import _core  # noqa: E402
from hardneg.losses import AUTO_INBATCH_FRACTION, AUTO_MEMORY_CHUNK, CrossBatchMemory, InfoNCELoss  # noqa: E402

import hardneg.losses as losses  # noqa: E402
import test_losses_numerics as numerics  # noqa: E402
from test_losses_numerics import batch, cases, reference, rel_err, run  # noqa: E402


def _no_kernel(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the C++ kernel ran")

    monkeypatch.setattr(_core, "infonce_forward", boom)
    monkeypatch.setattr(_core, "memory_lse", boom)


def _leaves(q, pos, hard, dtype=torch.float32):
    return [t.to(dtype).requires_grad_(True) for t in (q, pos, hard) if t is not None]


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("n", [0, 3])
@pytest.mark.parametrize("msize", [0, 2 * AUTO_MEMORY_CHUNK + 5])
def test_auto_uses_blas_paths_and_matches_reference(monkeypatch, similarity, n, msize):
    _no_kernel(monkeypatch)  # auto: no C++ kernel while the in-batch logits fit DENSE_MAX_LOGITS
    B, d = 6, 8
    q, pos, hard, pos_ids, _, _ = batch(B, n, d, seed=3 + n, dup=False)
    mem = None
    if msize:
        mem = CrossBatchMemory(msize, d)
        g = torch.Generator().manual_seed(1)
        mem.enqueue(torch.randn(msize, d, generator=g), torch.arange(msize) + 10 ** 6)
    ts = _leaves(q, pos, hard)
    f = InfoNCELoss(temperature=0.05, similarity=similarity, memory=mem)
    loss, grads = run(lambda: f(*ts), ts)
    m_emb = mem.get()[0].double() if mem is not None else None
    r = _leaves(q, pos, hard, torch.float64)
    ref, gref = run(lambda: reference(*r, *([None] if n == 0 else []), m_emb, None, None, None, None, 20.0,
                                      similarity, None, True, None, 0.0), r)
    assert rel_err(loss, ref) < 1e-4
    for a, b in zip(grads, gref):
        assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize("limit", ["dense", "memory_fraction"])
def test_auto_takes_the_kernel_where_the_torch_path_would_hold_too_much(monkeypatch, limit):
    calls = []
    real = _core.infonce_forward
    monkeypatch.setattr(_core, "infonce_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    B, n, d = 4, 1, 5
    q, pos, hard, _, _, _ = batch(B, n, d, seed=2, dup=False)
    ts = _leaves(q, pos, hard)
    rows = B * (1 + n) * AUTO_INBATCH_FRACTION  # the most in-batch candidates the torch path takes
    mem = CrossBatchMemory(rows + 1, d)
    mem.enqueue(torch.randn(rows, d))
    f = InfoNCELoss(memory=mem)
    a, ga = run(lambda: f(*ts), ts)
    assert not calls
    if limit == "dense":
        monkeypatch.setattr(dense, "DENSE_MAX_LOGITS", B * B * (1 + n) - 1)
    else:
        mem.reset()
        mem.enqueue(torch.randn(rows - 1, d))
        a, ga = run(lambda: InfoNCELoss(memory=mem, backend="torch")(*ts), ts)
    b, gb = run(lambda: f(*ts), ts)
    assert calls
    assert rel_err(a, b) < 1e-5 and all(rel_err(x, y) < 1e-4 for x, y in zip(ga, gb))


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("n", [0, 2])
def test_well_separated_positive_keeps_relative_precision(similarity, n):
    # loss ~1e-9: cross_entropy's lse - z_pos would round it away; the log1p form keeps it
    B, d = 5, 6
    g = torch.Generator().manual_seed(4)
    q = torch.randn(B, d, generator=g, dtype=torch.float64)
    pos = q.clone()
    hard = -q[:, None].repeat(1, n, 1) + 0.1 * torch.randn(B, n, d, generator=g, dtype=torch.float64) if n else None
    ts = _leaves(q, pos, hard)
    f = InfoNCELoss(temperature=0.02, similarity=similarity)
    loss, grads = run(lambda: f(*ts), ts)
    r = _leaves(q, pos, hard, torch.float64)
    scale = 50.0
    ref, gref = run(lambda: reference(*r, *([None] if n == 0 else []), None, None, None, None, None, scale,
                                      similarity, None, True, None, 0.0), r)
    assert 0 < ref.item() < 1e-6
    assert rel_err(loss, ref) < 1e-3
    for a, b in zip(grads, gref):
        assert rel_err(a, b) < 1e-3


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["q", "pos", "hard_negatives"])
def test_nan_inf_named_on_the_auto_paths(similarity, with_memory, bad, where):
    q, pos, hard, _, _, _ = batch(4, 2, 5, seed=9, dup=False)
    ts = {"q": q.float(), "pos": pos.float(), "hard_negatives": hard.float()}
    ts[where] = ts[where].clone()
    ts[where].view(-1)[3] = bad
    mem = None
    if with_memory:
        mem = CrossBatchMemory(8, 5)
        mem.enqueue(torch.randn(8, 5))
    f = InfoNCELoss(similarity=similarity, memory=mem)
    with pytest.raises(ValueError, match=where):
        f(ts["q"], ts["pos"], ts["hard_negatives"])


@pytest.mark.parametrize("with_memory", [False, True])
def test_huge_representable_dot_logits_are_no_error(with_memory):
    # logits ~1e37 whose sum overflows float32: the cheap check falls back to the exact one
    B, n, d = 8, 1, 2
    q, pos, hard, _, _, _ = batch(B, n, d, seed=8, dup=False)
    s = 1e18
    ts = [(t * s).float().requires_grad_(True) for t in (q, pos, hard)]
    mem = m_emb = None
    if with_memory:
        mem = CrossBatchMemory(6, d)
        mem.enqueue((torch.randn(6, d, dtype=torch.float64) * s).float())
        m_emb = mem.get()[0].double()
    f = InfoNCELoss(scale=1e-18, similarity="dot", memory=mem)
    loss = f(*ts)
    r = [t.detach().double() for t in ts]
    ref = reference(*r, m_emb, None, None, None, None, 1e-18, "dot", None, True, None, 0.0)
    assert abs(loss.item() - ref.item()) <= 1e-4 * max(ref.item(), 1.0)


def test_dense_backward_twice_with_retain_graph():
    q, pos, hard, _, _, _ = batch(5, 2, 4, seed=5, dup=False)
    ts = _leaves(q, pos, hard)
    loss = InfoNCELoss(similarity="dot")(*ts)
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in ts]
    for t in ts:
        t.grad = None
    loss.backward()
    for a, b in zip(first, [t.grad for t in ts]):
        assert torch.equal(a, b)
    assert ts[2].grad.is_contiguous()


@pytest.mark.parametrize("case", [c for c in cases() if c[0][3]], ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_path_with_memory_on_every_option(monkeypatch, case, dtype):
    # the numerics suite's memory cases (masks, ids, margins, hardness, all masked, tiny shapes)
    # with auto sending every memory to the dense path, against the float64 reference
    monkeypatch.setattr(losses, "AUTO_INBATCH_FRACTION", 0)
    calls = []
    real = losses.InfoNCELoss._dense
    monkeypatch.setattr(losses.InfoNCELoss, "_dense", lambda self, b, mem: calls.append(mem) or real(self, b, mem))
    numerics.test_paths_agree_with_float64_reference(case, dtype)
    assert any(m is not None and len(m) for m in calls)


@pytest.mark.parametrize("with_memory", [False, True])
def test_dot_logit_difference_overflow_is_an_error(with_memory):
    # every logit is representable but z_neg - z_pos is not: an error, never a NaN loss
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[-3e38, 0.0], [0.0, 1.0]])
    hard = torch.tensor([[[3e38, 0.0]], [[0.0, -1.0]]])
    mem = None
    if with_memory:
        mem = CrossBatchMemory(200, 2)  # B(1+n) * 32 = 128 rows or more: the dense path
        mem.enqueue(torch.randn(200, 2))
    f = InfoNCELoss(scale=1.0, similarity="dot", memory=mem)
    with pytest.raises(ValueError, match="overflow"):
        f(q, pos, hard)


@pytest.mark.parametrize("factor", [1.0, 1e-20, 1e20])
def test_cosine_memory_rows_of_any_scale(factor):
    # memory norms outside [1e-15, 1e15] take the scale-invariant normalisation, inside the
    # scores are scaled by 1/|x_j|; both equal the float64 reference
    B, n, d, msize = 3, 1, 4, 200
    q, pos, hard, _, _, _ = batch(B, n, d, seed=11, dup=False)
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(msize, d, generator=g, dtype=torch.float64)
    rows[::7] *= factor
    mem = CrossBatchMemory(msize, d)
    mem.enqueue(rows.float())
    ts = _leaves(q, pos, hard)
    f = InfoNCELoss(temperature=0.05, similarity="cosine", memory=mem, memory_chunk=64)
    loss, grads = run(lambda: f(*ts), ts)
    r = _leaves(q, pos, hard, torch.float64)
    ref, gref = run(lambda: reference(*r, mem.get()[0].double(), None, None, None, None, 20.0, "cosine", None,
                                      True, None, 0.0), r)
    assert rel_err(loss, ref) < 1e-4
    for a, b in zip(grads, gref):
        assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("B,n,d", [(1, 0, 1), (32, 0, 384), (5, 3, 7), (40, 2, 300), (130, 0, 64)])
@pytest.mark.parametrize("options", [{}, {"hardness_mode": "all_negatives", "hardness_strength": 2.0},
                                     {"false_negative_margin": 0.05}, {"in_batch_negatives": False}])
def test_plain_batches_take_the_short_route_with_the_same_values(monkeypatch, similarity, B, n, d, options):
    # float32 CPU batches without ids, guide or memory go straight to the dense path
    # (_plain_dense): the same loss and gradients as the general route through _Batch
    g = torch.Generator().manual_seed(B + n + d)
    s = d ** -0.5
    q = s * torch.randn(B, d, generator=g)
    pos = q + s * torch.randn(B, d, generator=g)
    hard = s * torch.randn(B, n, d, generator=g) if n else None
    if B > 2:
        pos[2] = pos[0]  # a tie among the candidates
    f = InfoNCELoss(temperature=0.05, similarity=similarity, **options)
    routes = []
    real_plain = f._plain_dense
    monkeypatch.setattr(f, "_plain_dense", lambda *a: routes.append(1) or real_plain(*a))
    ts = _leaves(q, pos, hard)
    loss, grads = run(lambda: f(*ts), ts)
    assert routes
    monkeypatch.setattr(f, "_plain_dense", lambda *a: None)  # the general route
    ts = _leaves(q, pos, hard)
    ref, gref = run(lambda: f(*ts), ts)
    assert rel_err(loss, ref) < 1e-5
    for a, b in zip(grads, gref):
        assert rel_err(a, b) < 1e-4


def test_the_short_route_leaves_other_batches_to_the_general_one(monkeypatch):
    # float64, a flat (B*n, d) hard_negatives, ids, a memory: the general route (which also
    # names a bad input), never _plain_dense's
    f = InfoNCELoss(temperature=0.05)
    taken = []
    real = f._plain_dense
    monkeypatch.setattr(f, "_plain_dense", lambda *a: taken.append(real(*a)) or taken[-1])
    q, pos = torch.randn(4, 8), torch.randn(4, 8)
    f(q.double(), pos.double())
    f(q, pos, torch.randn(8, 8))
    assert taken == [None, None]
    taken.clear()
    f(q, pos, pos_ids=torch.arange(4))
    assert taken == []
    with pytest.raises(ValueError, match="q contains NaN"):
        f(torch.full((4, 8), float("nan")), pos)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        f(q.numpy(), pos)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_small_batches_of_any_layout(layout):
    # transposed and strided views take the short route with the values of contiguous inputs
    g = torch.Generator().manual_seed(7)
    base_q, base_p = torch.randn(16, 12, generator=g), torch.randn(16, 12, generator=g)
    if layout == "transposed":
        q, pos = base_q.T.contiguous().T, base_p.T.contiguous().T
    else:
        q, pos = torch.randn(16, 24, generator=g)[:, ::2], torch.randn(16, 24, generator=g)[:, ::2]
        base_q, base_p = q.contiguous(), pos.contiguous()
    assert not q.is_contiguous()
    for sim in ("dot", "cosine"):
        f = InfoNCELoss(temperature=0.05, similarity=sim)
        a, b = f(q, pos), f(base_q, base_p)
        assert torch.equal(a, b)

"""The plain step (dot product or cosine) in one C++ call (``_core.dense_step``, cpp/loss_dense.cpp, and
``hardneg._loss_dense.DenseStep``): loss and gradients against the definition in float64 (torch
autograd), at every SIMD level and thread count, on random and adversarial shapes (B = 1, d = 1,
d not a multiple of 16, ties, large logits); InfoNCELoss through it against the matmul path;
what it refuses and when InfoNCELoss does not take it.

Tolerance: loss and gradients within 1e-5 relative to their largest magnitude (float32 sums of
at most a few thousand terms against float64)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import hardneg._loss_dense as dense  # noqa: E402
from hardneg import _core  # noqa: E402
from hardneg.losses import InfoNCELoss  # noqa: E402

def batch(B, n, d, seed=0, spread=1.0):
    g = np.random.default_rng(seed)
    s = spread * d ** -0.5
    q = (s * g.standard_normal((B, d))).astype(np.float32)
    pos = (q + s * g.standard_normal((B, d))).astype(np.float32)
    hard = (s * g.standard_normal((B, n, d))).astype(np.float32) if n else None
    return q, pos, hard


def reference(q, pos, hard, scale, cosine=False):
    """(loss, gq, gpos, ghard) of the mean InfoNCE loss, float64 autograd."""
    qt = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    pt = torch.tensor(pos, dtype=torch.float64, requires_grad=True)
    ht = None if hard is None else torch.tensor(hard, dtype=torch.float64, requires_grad=True)
    B, d = q.shape
    cand = pt if ht is None else torch.cat([pt, ht.reshape(-1, d)])
    qq = qt
    if cosine:
        qq, cand = F.normalize(qt, dim=1, eps=1e-300), F.normalize(cand, dim=1, eps=1e-300)
    loss = F.cross_entropy(qq @ cand.T * scale, torch.arange(B))
    loss.backward()
    return (loss.item(), qt.grad.numpy(), pt.grad.numpy(), None if ht is None else ht.grad.numpy())


def assert_close(got, want, what):
    top = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(np.asarray(got, np.float64) - want).max())
    assert err <= 1e-5 * top + 1e-12, f"{what}: max abs error {err:.3g} against a largest value {top:.3g}"


SHAPES = [(1, 0, 1), (1, 3, 5), (2, 1, 1), (3, 0, 17), (5, 2, 15), (7, 1, 64), (9, 0, 100), (32, 0, 384),
          (32, 3, 384), (13, 7, 130), (64, 1, 768), (33, 2, 65), (70, 3, 40)]  # the last: wsum's panels split


@pytest.mark.parametrize("B,n,d", SHAPES)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("cosine", [False, True])
def test_step_matches_the_definition(level, B, n, d, threads, cosine):
    q, pos, hard = batch(B, n, d, seed=B * 100 + n * 10 + d, spread=7.0 if cosine else 1.0)
    scale = 20.0
    mean, gq, gpos, ghard, bad = _core.dense_step(q, pos, hard, scale, scale / B, cosine, threads)
    assert bad == -1
    loss, rq, rp, rh = reference(q, pos, hard, scale, cosine)
    assert abs(float(mean) - loss) <= 1e-5 * max(1.0, abs(loss))
    assert gq.shape == (B, d) and gpos.shape == (B, d) and gq.dtype == np.float32
    assert_close(gq, rq, "gq")
    assert_close(gpos, rp, "gpos")
    if n:
        assert ghard.shape == (B, n, d)
        assert_close(ghard, rh, "ghard")
    else:
        assert ghard is None


@pytest.mark.parametrize("cosine", [False, True])
def test_step_threads_give_the_same_bits(level, cosine):
    q, pos, hard = batch(96, 3, 200, seed=3)  # 96 * 384 * 200 multiply-adds: several threads
    outs = [_core.dense_step(q, pos, hard, 20.0, 20.0 / 96, cosine, t) for t in (1, 2, 5)]
    for o in outs[1:]:
        assert float(o[0]) == float(outs[0][0])
        for a, b in zip(o[1:4], outs[0][1:4]):
            np.testing.assert_array_equal(a, b)


def test_step_ties_and_a_saturated_positive(level):
    # every candidate identical: all logits tie, the loss is log(N) exactly
    B, n, d = 8, 3, 33
    q = np.ones((B, d), np.float32) / d
    pos = np.ones((B, d), np.float32)
    hard = np.ones((B, n, d), np.float32)
    mean, gq, gpos, ghard, bad = _core.dense_step(q, pos, hard, 5.0, 5.0 / B, False, 1)
    assert bad == -1
    assert abs(float(mean) - np.log(B * (1 + n))) < 1e-6
    loss, rq, rp, rh = reference(q, pos, hard, 5.0)
    assert_close(gq, rq, "gq")
    assert_close(gpos, rp, "gpos")
    assert_close(ghard, rh, "ghard")
    # a positive far above the rest: a loss of about exp(-gap), which float32 still resolves
    # (log1p of the sum, no 1 + tiny rounding; cross_entropy gives 0 even in float64)
    q, pos, hard = batch(4, 2, 16, seed=1)
    pos = q * 3.0
    mean = float(_core.dense_step(q, pos, hard, 20.0, 5.0, False, 1)[0])
    c = np.concatenate([pos, hard.reshape(-1, 16)]).astype(np.float64)
    z = 20.0 * q.astype(np.float64) @ c.T
    rows = [np.log1p(np.exp(np.delete(z[i], i) - z[i, i]).sum()) for i in range(4)]
    want = float(np.mean(rows))
    assert 0.0 < want < 1e-6  # below float32 epsilon: log(1 + x) computed as such would lose it
    assert abs(mean - want) <= 1e-5 * want


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, 3e38])
def test_step_reports_logits_it_cannot_hold(level, bad_value):
    q, pos, hard = batch(4, 1, 8)
    q[2, 3] = bad_value
    if np.isfinite(bad_value):
        q[2] = bad_value
        pos[2] = bad_value
    assert _core.dense_step(q, pos, hard, 20.0, 5.0, False, 1)[4] >= 0
    if not np.isfinite(bad_value):  # cosine: the norm tells
        assert _core.dense_step(q, pos, hard, 20.0, 5.0, True, 1)[4] >= 0
    else:  # cosines of huge rows are fine (the norms are summed in double)
        mean, gq, gpos, ghard, bad = _core.dense_step(q, pos, hard, 20.0, 5.0, True, 1)
        assert bad == -1 and np.isfinite(float(mean))
        want = reference(q, pos, hard, 20.0, True)
        assert abs(float(mean) - want[0]) <= 1e-5 * max(1.0, want[0])
        assert_close(gq, want[1], "gq")


def test_step_cosine_zero_and_tiny_rows(level):
    q, pos, hard = batch(6, 2, 20, seed=5)
    pos[1] = 0.0  # a zero candidate: cosine 0 with everything, no gradient
    hard[3, 1] = 1e-41  # subnormal entries: the norm summed in double still normalises them
    q[4] *= 1e-30
    mean, gq, gpos, ghard, bad = _core.dense_step(q, pos, hard, 20.0, 20.0 / 6, True, 1)
    assert bad == -1
    assert not gpos[1].any()
    assert np.isfinite(gq).all() and np.isfinite(ghard).all()
    want = reference(q, pos, hard, 20.0, True)
    assert abs(float(mean) - want[0]) <= 1e-5 * max(1.0, want[0])


def test_step_refuses_bad_arrays():
    q, pos, hard = batch(4, 2, 8)
    with pytest.raises(ValueError, match="q"):
        _core.dense_step(q.astype(np.float64), pos, hard, 1.0, 1.0, False, 1)
    with pytest.raises(ValueError, match="pos"):
        _core.dense_step(q, pos[:3], hard, 1.0, 1.0, False, 1)
    with pytest.raises(ValueError, match="hard"):
        _core.dense_step(q, pos, hard[:, :, :4], 1.0, 1.0, False, 1)
    with pytest.raises(ValueError, match="contiguous"):
        _core.dense_step(np.asfortranarray(q), pos, hard, 1.0, 1.0, False, 1)
    with pytest.raises(ValueError, match="dimensions"):
        _core.dense_step(q.ravel(), pos, hard, 1.0, 1.0, False, 1)
    with pytest.raises(ValueError, match="at least one"):
        _core.dense_step(q[:0], pos[:0], None, 1.0, 1.0, False, 1)


# ------------------------------------------------------------------ through InfoNCELoss
@pytest.fixture(autouse=True)
def step_at_any_level(monkeypatch):
    """InfoNCELoss takes the step only where it runs at speed (AVX-512, dense.step_fast): these
    tests force that gate, so they check the path on any CPU."""
    monkeypatch.setattr(dense, "step_fast", lambda: True)


def test_the_step_runs_at_speed_only_with_avx512(level):
    assert _core.dense_step_fast() == (level == "avx512")

def leaves(B, n, d, seed=0):
    q, pos, hard = batch(B, n, d, seed)
    out = [torch.tensor(x, requires_grad=True) for x in (q, pos)]
    out.append(None if hard is None else torch.tensor(hard, requires_grad=True))
    return out


def run(loss_fn, q, pos, hard, factor=1.0):
    for t in (q, pos, hard):
        if t is not None:
            t.grad = None
    loss = loss_fn(q, pos, hard)
    (loss * factor).backward()
    return loss.detach().clone(), [None if t is None else t.grad.clone() for t in (q, pos, hard)]


@pytest.mark.parametrize("B,n,d", [(1, 0, 1), (6, 0, 10), (16, 3, 48), (32, 7, 96)])
@pytest.mark.parametrize("factor", [1.0, -2.5])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_infonce_takes_the_step_with_the_matmul_paths_values(monkeypatch, B, n, d, factor, similarity):
    calls = []
    real = dense._step
    monkeypatch.setattr(dense, "_step", lambda *a: calls.append(1) or real(*a))
    loss_fn = InfoNCELoss(temperature=0.05, similarity=similarity)
    q, pos, hard = leaves(B, n, d)
    got = run(loss_fn, q, pos, hard, factor)
    assert calls, "the plain dot-product step did not take DenseStep"
    monkeypatch.setattr(dense, "STEP_MAX_LOGITS", 0)  # the matmul path (DenseInfoNCE)
    want = run(loss_fn, q, pos, hard, factor)
    assert len(calls) == 1
    assert abs(float(got[0]) - float(want[0])) <= 1e-5 * max(1.0, abs(float(want[0])))
    for a, b in zip(got[1], want[1]):
        if b is not None:
            assert_close(a.numpy(), b.numpy().astype(np.float64), "gradient")


def test_a_second_backward_through_the_step_gives_the_same_gradients():
    q, pos, hard = leaves(8, 2, 24)
    loss = InfoNCELoss(temperature=0.05, similarity="dot")(q, pos, hard)
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in (q, pos, hard)]
    for t in (q, pos, hard):
        t.grad = None
    loss.backward()
    for a, t in zip(first, (q, pos, hard)):
        torch.testing.assert_close(t.grad, a, rtol=0, atol=0)
    # and autograd.grad, a gradient for some inputs only
    loss = InfoNCELoss(temperature=0.05, similarity="dot")(q, pos, hard)
    (gq,) = torch.autograd.grad(loss, [q])
    torch.testing.assert_close(gq, first[0], rtol=0, atol=0)


def test_the_step_is_taken_only_where_it_applies(monkeypatch):
    calls = []
    real = dense._step
    monkeypatch.setattr(dense, "_step", lambda *a: calls.append(1) or real(*a))
    q, pos, hard = leaves(8, 2, 24)
    dot = InfoNCELoss(temperature=0.05, similarity="dot")
    monkeypatch.setattr(dense, "step_fast", lambda: False)  # a SIMD level without the fast kernel
    dot(q, pos, hard)
    monkeypatch.setattr(dense, "step_fast", lambda: True)
    with torch.no_grad():  # no gradient wanted: the forward alone
        dot(q, pos, hard)
    dot(q.detach(), pos.detach(), hard.detach())
    dot(q[:, ::2], pos[:, ::2], hard[:, :, ::2])  # not contiguous
    InfoNCELoss(temperature=0.05, similarity="dot", false_negative_margin=0.1)(q, pos, hard)
    InfoNCELoss(temperature=0.05, similarity="dot", hardness_mode="hard_negatives", hardness_strength=1.0)(q, pos, hard)
    InfoNCELoss(temperature=0.05, similarity="dot", in_batch_negatives=False)(q, pos, hard)
    assert not calls
    monkeypatch.setattr(dense, "STEP_MAX_LOGITS", 8 * 8 * 3 - 1)
    dot(q, pos, hard)
    assert not calls
    monkeypatch.setattr(dense, "STEP_MAX_LOGITS", 8 * 8 * 3)
    dot(q, pos, hard)
    assert calls == [1]


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_the_step_names_a_nan_input(similarity):
    q, pos, hard = leaves(4, 1, 8)
    with torch.no_grad():
        hard[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="hard_negatives"):
        InfoNCELoss(temperature=0.05, similarity=similarity)(q, pos, hard)
    q, pos, hard = leaves(4, 1, 8)
    with torch.no_grad():
        q.mul_(1e19)
        pos.mul_(1e19)
    if similarity == "dot":
        with pytest.raises(ValueError, match="overflow"):
            InfoNCELoss(temperature=0.05, similarity="dot")(q, pos, hard)

"""The C++ row passes of the dense InfoNCE path (cpp/loss_dense.cpp, simd/rows.inl) against numpy.

``_core.dense_rows`` turns a (B, N) similarity block into per-row losses and the weights
``grad_scale * dloss_i/dz_ic`` in place; ``_core.lse_chunk`` is one chunk of the streaming
log-sum-exp over a memory.  Both are checked in float64 (numpy in extended precision as the
reference) at every SIMD level this CPU runs, on random and adversarial blocks: ties, masked
rows and columns, the positive removed by an id, all candidates masked, N not a multiple of the
vector width, huge logits (reported, never returned), NaN.  The losses' own parity tests
(tests/test_losses*.py) cover the paths built on them.
"""
import numpy as np
import pytest

from hardneg import _core

def ref_dense(S, scale, alpha, gscale, pen=None, removed=None, lse_mem=None):
    """loss (B,), P (B, N), pmem (B,) by the definition, in float64 / longdouble."""
    S = S.astype(np.float64)
    B, N = S.shape
    Z = scale * S + (alpha * S * pen if pen is not None else 0.0)
    zp = np.diagonal(Z).copy()
    keep = np.ones((B, N), bool) if removed is None else ~removed
    keep[np.arange(B), np.arange(B)] = False
    D = np.where(keep, Z - zp[:, None], -np.inf)
    terms = [D]
    if lse_mem is not None:
        terms.append((lse_mem - zp)[:, None])
    A = np.concatenate(terms, axis=1).astype(np.longdouble)
    m = np.maximum(A.max(axis=1), 0)
    rest = np.exp(A - m[:, None]).sum(axis=1)
    loss = np.log(np.exp(-m) + rest) + m
    P = np.where(keep, np.exp(D - loss[:, None].astype(np.float64)), 0.0)
    P[np.arange(B), np.arange(B)] = np.expm1(-loss.astype(np.float64))
    pmem = None if lse_mem is None else np.exp(lse_mem - zp - loss.astype(np.float64))
    return loss.astype(np.float64), gscale * P, None if pmem is None else gscale * pmem


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("B,N", [(1, 1), (3, 3), (5, 17), (16, 16), (7, 100), (33, 257), (3, 512), (4, 1030)])
@pytest.mark.parametrize("options", ["plain", "masks", "memory"])
def test_dense_rows_matches_the_definition(level, dtype, tol, B, N, options):
    rng = np.random.default_rng(B * 1000 + N)
    S = rng.normal(scale=0.3, size=(B, N)).astype(dtype)
    S[:, N // 2] = S[:, 0]  # ties
    pen = removed = lse = None
    alpha = 0.0
    if options == "masks":
        pen = rng.random((B, N)) < 0.3
        pen[np.arange(B), np.arange(B)] = False
        removed = rng.random((B, N)) < 0.3
        removed[0, :] = True  # every candidate of row 0, its positive's column too (an id match)
        alpha = 0.5
    if options == "memory":
        lse = rng.normal(scale=3.0, size=B).astype(dtype)
    ref_loss, ref_P, ref_pm = ref_dense(S, 20.0, alpha, 20.0 / B, pen, removed, lse)
    P = S.copy()
    mean, loss, pmem, bad = _core.dense_rows(P, 20.0, alpha, 20.0 / B, pen, removed, lse, 1)
    assert bad == -1
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(float(mean), ref_loss.mean(), rtol=tol, atol=tol)
    np.testing.assert_allclose(P, ref_P, rtol=tol, atol=tol * 20.0 / B)
    if lse is not None:
        np.testing.assert_allclose(pmem, ref_pm, rtol=tol, atol=tol)
    else:
        assert pmem is None
    if options == "masks" and N > 1:
        assert loss[0] == 0.0 and P[0, 0] == 0.0  # nothing left against the positive: loss 0, no gradient


def test_dense_rows_a_well_separated_positive_keeps_its_tiny_loss(level):
    S = np.array([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]], np.float32)
    _, loss, _, _ = _core.dense_rows(S.copy(), 20.0, 0.0, 1.0, None, None, None, 1)
    np.testing.assert_allclose(loss, 2 * np.exp(-40.0), rtol=1e-5)  # not 0: no 1 + tiny rounding


def test_dense_rows_threads_give_the_same_bits(level):
    rng = np.random.default_rng(0)
    S = rng.normal(size=(300, 600)).astype(np.float32)
    a, b = S.copy(), S.copy()
    ra = _core.dense_rows(a, 20.0, 0.0, 1.0, None, None, None, 1)
    rb = _core.dense_rows(b, 20.0, 0.0, 1.0, None, None, None, 2)
    assert np.array_equal(a, b) and np.array_equal(ra[1], rb[1])


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, 3e37])
def test_dense_rows_reports_logits_it_cannot_hold(level, bad_value):
    S = np.zeros((4, 40), np.float32)
    S[2, 33] = bad_value  # 3e37 * 20 overflows float32
    assert _core.dense_rows(S, 20.0, 0.0, 1.0, None, None, None, 1)[3] == 2


def test_dense_rows_reports_a_mean_it_cannot_hold(level):
    # every logit finite, but z_ic - z_ip is not: -2 (the caller names the mean loss)
    S = np.zeros((2, 3), np.float32)
    S[0, 0], S[0, 1] = -3e38, 3e38
    assert _core.dense_rows(S, 1.0, 0.0, 1.0, None, None, None, 1)[3] == -2
    S = np.zeros((2, 3), np.float32)
    assert _core.dense_rows(S, 1.0, 0.0, 1.0, None, None, None, 1)[3] == -1


def test_dense_rows_refuses_bad_blocks():
    S = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="scores must be float32 or float64"):
        _core.dense_rows(S.astype(np.float16), 1.0, 0.0, 1.0, None, None, None, 1)
    with pytest.raises(ValueError, match="at least one row"):
        _core.dense_rows(np.zeros((0, 3), np.float32), 1.0, 0.0, 1.0, None, None, None, 1)
    with pytest.raises(ValueError, match="rows <= columns"):
        _core.dense_rows(np.zeros((4, 3), np.float32), 1.0, 0.0, 1.0, None, None, None, 1)
    ro = S.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        _core.dense_rows(ro, 1.0, 0.0, 1.0, None, None, None, 1)
    with pytest.raises(ValueError, match="contiguous"):
        _core.dense_rows(np.zeros((3, 8), np.float32)[:, ::2], 1.0, 0.0, 1.0, None, None, None, 1)
    with pytest.raises(ValueError, match="removed has shape"):
        _core.dense_rows(S, 1.0, 0.0, 1.0, None, np.zeros((3, 5), bool), None, 1)
    with pytest.raises(ValueError, match="bool"):
        _core.dense_rows(S, 1.0, 0.0, 1.0, np.zeros((3, 4), np.uint8), None, None, 1)
    with pytest.raises(ValueError, match="lse_mem"):
        _core.dense_rows(S, 1.0, 0.0, 1.0, None, None, np.zeros(2, np.float32), 1)


def ref_chunks(chunks, inv, thr, col_ids, pos_ids, query_ids, ls):
    """lse (B,) and the weights of each chunk by the definition (float64)."""
    S = np.concatenate(chunks, axis=1).astype(np.float64)
    sim = S * (np.concatenate(inv) if inv is not None else 1.0)
    masked = np.zeros(S.shape, bool)
    if thr is not None:
        masked |= sim > thr[:, None]
    if col_ids is not None:
        ids = np.concatenate(col_ids)
        masked |= (ids[None, :] == pos_ids[:, None]) & (pos_ids[:, None] >= 0)
        masked |= (ids[None, :] == query_ids[:, None]) & (query_ids[:, None] >= 0)
    z = np.where(masked, -np.inf, ls * sim)
    mx = z.max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        lse = np.where(np.isinf(mx), -np.inf, mx + np.log(np.exp(z - np.where(np.isinf(mx), 0, mx)[:, None]).sum(1)))
    return lse


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("options", ["plain", "cosine", "masks"])
def test_lse_chunk_streams_to_the_log_sum_exp(level, dtype, tol, options):
    rng = np.random.default_rng(7)
    B, sizes = 5, (16, 1, 33, 100, 700)  # 700: a long row (the 64-lane loops) with a 60-column tail
    chunks = [rng.normal(size=(B, c)).astype(dtype) for c in sizes]
    inv = [rng.uniform(0.5, 2.0, size=c).astype(dtype) for c in sizes] if options == "cosine" else None
    thr = col_ids = pos_ids = query_ids = None
    if options == "masks":
        thr = rng.normal(size=B).astype(dtype)
        thr[1] = -10.0  # every entry of row 1 masked: lse -inf
        col_ids = [rng.integers(0, 20, size=c) for c in sizes]
        pos_ids = np.array([3, 4, -1, 5, 6], np.int64)
        query_ids = np.array([-1, 7, 8, -1, 9], np.int64)
    run_max = np.full(B, -np.inf, dtype)
    run_sum = np.zeros(B, dtype)
    r = np.zeros(B, dtype)
    for k, ch in enumerate(chunks):
        w = ch.copy()
        bad = _core.lse_chunk(w, None if inv is None else inv[k], thr, None if col_ids is None else col_ids[k],
                              pos_ids, query_ids, 20.0, run_max, run_sum, r, 1)
        assert not bad
        assert np.all(w >= 0) and np.all(r >= 0) and np.all(r <= 1)
    with np.errstate(divide="ignore"):
        lse = np.where(run_sum > 0, run_max + np.log(run_sum), -np.inf)
    ref = ref_chunks(chunks, inv, thr, col_ids, pos_ids, query_ids, 20.0)
    np.testing.assert_allclose(lse, ref, rtol=tol, atol=tol)
    if options == "masks":
        assert lse[1] == -np.inf


def test_lse_chunk_reports_overflow_and_refuses_bad_arrays():
    S = np.zeros((2, 5), np.float32)
    S[1, 3] = 1e38
    st = [np.full(2, -np.inf, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32)]
    assert _core.lse_chunk(S, None, None, None, None, None, 20.0, *st, 1)
    with pytest.raises(ValueError, match="run_max must have 2 entries"):
        _core.lse_chunk(np.zeros((2, 5), np.float32), None, None, None, None, None, 1.0,
                        np.zeros(3, np.float32), st[1], st[2], 1)
    with pytest.raises(ValueError, match="wrong dtype"):
        _core.lse_chunk(np.zeros((2, 5), np.float32), None, None, None, None, None, 1.0,
                        np.zeros(2, np.float64), st[1], st[2], 1)
    with pytest.raises(ValueError, match="col_ids needs pos_ids"):
        _core.lse_chunk(np.zeros((2, 5), np.float32), None, None, np.zeros(5, np.int64), None, None, 1.0, *st, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_are_never_subnormal(level, dtype):
    # the weights feed BLAS matmuls, where a subnormal operand is ~100x slower: a weight that
    # would be subnormal is written as 0 (what flush-to-zero hardware does); normal ones keep their bits
    tiny = np.finfo(dtype).tiny
    lo = np.log(tiny)  # exp(lo) = the smallest normal value
    B, N = 4, 300
    # logits from 0 down past the subnormal range, so that some weights land in it
    S = np.zeros((B, N), dtype)
    S[:, B:] = np.linspace(-1.0, (lo - 30) / 20.0, N - B)
    S[np.arange(B), np.arange(B)] = 0.0
    P = S.copy()
    _core.dense_rows(P, 20.0, 0.0, 1e-3, None, None, None, 1)
    assert not np.any((P != 0) & (np.abs(P) < tiny))
    loss, ref_p, _ = ref_dense(S, 20.0, 0.0, 1e-3)
    big = np.abs(ref_p) >= 4 * tiny
    np.testing.assert_allclose(P[big], ref_p[big], rtol=1e-5 if dtype == np.float32 else 1e-12)
    # lse_chunk: the weights exp(z - max) / |x_j|
    W = S.copy()
    inv = np.full(N, 1e-3, dtype)
    st = (np.full(B, -np.inf, dtype), np.zeros(B, dtype), np.empty(B, dtype))
    assert not _core.lse_chunk(W, inv, None, None, None, None, 20.0, *st, 1)
    assert not np.any((W != 0) & (np.abs(W) < tiny))
    assert np.count_nonzero(W) > B  # not everything flushed

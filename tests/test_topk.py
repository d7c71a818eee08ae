"""Parity of hn.topk / hn.DenseIndex with a numpy brute force.

Most tests use small-integer vectors: every dot product, norm and squared
distance is then exact in float32, so scores must match exactly and ids must
follow the documented order (score, then ascending id) with real ties.
"""
import contextlib

import numpy as np
import pytest

import hardneg as hn
from hardneg import _core

from conftest import cuda_available

torch = pytest.importorskip("torch") if False else None
try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


def ref_topk(Q, X, k, metric="ip", exclude=None):
    """float64 brute force with the documented ordering."""
    Q = np.asarray(Q, np.float64)
    X = np.asarray(X, np.float64)
    if metric == "ip":
        key = Q @ X.T
    elif metric == "cosine":
        qn = np.linalg.norm(Q, axis=1, keepdims=True)
        xn = np.linalg.norm(X, axis=1)
        key = (Q / np.where(qn > 0, qn, 1)) @ (X / np.where(xn > 0, xn, 1)[:, None]).T
    else:
        key = -np.maximum(0, (Q * Q).sum(1)[:, None] + (X * X).sum(1)[None, :] - 2 * Q @ X.T)
    nq, n = key.shape
    S = np.full((nq, k), np.inf if metric == "l2" else -np.inf, np.float64)
    I = np.full((nq, k), -1, np.int64)
    for i in range(nq):
        ids = np.arange(n)
        if exclude is not None:
            ids = np.setdiff1d(ids, exclude[i])
        order = np.lexsort((ids, -key[i, ids]))[:k]
        m = len(order)
        I[i, :m] = ids[order]
        S[i, :m] = -key[i, ids[order]] if metric == "l2" else key[i, ids[order]]
    return S, I


def assert_ids_where_clear(s, i, rs, ri, tol=1e-4):
    """Scores close; ids equal wherever the reference has no near-tie at that rank."""
    np.testing.assert_allclose(s, rs, rtol=tol, atol=tol)
    fin = np.isfinite(rs)
    gap = np.ones_like(rs, dtype=bool)
    d = np.abs(np.diff(np.where(fin, rs, 1e30), axis=1)) > 10 * tol
    gap[:, 1:] &= d
    gap[:, :-1] &= d
    assert (i[gap] == ri[gap]).all()


def int_vectors(rng, n, d, lo=-3, hi=4):
    return rng.integers(lo, hi, size=(n, d)).astype(np.float32)


SHAPES = [(1, 1, 1, 1), (3, 5, 1, 10), (4, 7, 17, 3), (5, 50, 16, 50), (9, 300, 33, 7), (2, 1, 8, 5),
          (13, 1000, 768, 100), (1, 2000, 100, 10), (40, 3000, 64, 1000)]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("nq,n,d,k", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_exact_integer_inputs(rng, metric, nq, n, d, k, threads):
    Q, X = int_vectors(rng, nq, d), int_vectors(rng, n, d)
    s, i = hn.topk(Q, X, k=k, metric=metric, num_threads=threads)
    rs, ri = ref_topk(Q, X, k, metric)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (nq, k) == i.shape
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs.astype(np.float32))


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_random_floats(rng, metric):
    Q = rng.standard_normal((37, 129)).astype(np.float32)
    X = rng.standard_normal((2500, 129)).astype(np.float32)
    s, i = hn.topk(Q, X, k=20, metric=metric)
    rs, ri = ref_topk(Q, X, 20, metric)
    assert_ids_where_clear(s, i, rs, ri, tol=1e-4)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_duplicate_rows_tie_by_id(rng, metric):
    base = rng.standard_normal((7, 24)).astype(np.float32)
    X = np.repeat(base, 5, axis=0)[rng.permutation(35)]
    Q = rng.standard_normal((6, 24)).astype(np.float32)
    s, i = hn.topk(Q, X, k=35, metric=metric, num_threads=2)
    for r in range(6):
        # equal scores -> ascending ids, strictly ordered otherwise
        for a in range(34):
            if s[r, a] == s[r, a + 1]:
                assert i[r, a] < i[r, a + 1]
            else:
                assert (s[r, a] > s[r, a + 1]) if metric != "l2" else (s[r, a] < s[r, a + 1])
        # duplicates of the same base row have bit-identical scores
        groups = {}
        for a in range(35):
            groups.setdefault(X[i[r, a]].tobytes(), set()).add(float(s[r, a]))
        assert all(len(v) == 1 for v in groups.values())


def test_all_equal_vectors():
    X = np.ones((100, 10), np.float32)
    Q = np.ones((3, 10), np.float32)
    for metric in ("ip", "cosine", "l2"):
        s, i = hn.topk(Q, X, k=7, metric=metric)
        assert (i == np.arange(7)).all()
        assert (s == s[0, 0]).all()


def test_k_larger_than_n_pads():
    X = np.eye(3, dtype=np.float32)
    s, i = hn.topk(X, X, k=5)
    assert (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()
    s, i = hn.topk(X, X, k=5, metric="l2")
    assert (i[:, 3:] == -1).all() and np.isposinf(s[:, 3:]).all()
    assert (i[:, 0] == np.arange(3)).all()


@pytest.mark.parametrize("form", ["lists", "padded", "csr", "torch_padded"])
def test_exclusions_forms(rng, form):
    Q, X = int_vectors(rng, 6, 12), int_vectors(rng, 80, 12)
    ex = [list(rng.choice(80, size=m, replace=False)) for m in (0, 1, 5, 20, 79, 3)]
    if form == "lists":
        arg = ex
    elif form == "padded":
        arg = np.full((6, 79), -1, np.int64)
        for r, e in enumerate(ex):
            arg[r, :len(e)] = e
    elif form == "csr":
        arg = (np.cumsum([0] + [len(e) for e in ex]), np.concatenate([np.array(e, np.int64) for e in ex]))
    else:
        if torch is None:
            pytest.skip("torch missing")
        arg = torch.full((6, 79), -1, dtype=torch.int64)
        for r, e in enumerate(ex):
            arg[r, :len(e)] = torch.tensor(e, dtype=torch.int64)
    s, i = hn.topk(Q, X, k=10, exclude=arg)
    rs, ri = ref_topk(Q, X, 10, exclude=[np.array(e, np.int64) for e in ex])
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs.astype(np.float32))
    assert set(i[4]) == {-1, *set(range(80)) - set(ex[4])}


def test_exclusions_cover_everything():
    X = np.eye(4, dtype=np.float32)
    s, i = hn.topk(X, X, k=3, exclude=[[0, 1, 2, 3]] * 4)
    assert (i == -1).all() and np.isneginf(s).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_inputs_match_fp32(rng, dtype):
    Q, X = int_vectors(rng, 9, 40), int_vectors(rng, 500, 40)
    if dtype == "float16":
        s, i = hn.topk(Q.astype(np.float16), X.astype(np.float16), k=15)
    else:
        if torch is None:
            pytest.skip("torch missing")
        s, i = hn.topk(torch.from_numpy(Q).bfloat16(), torch.from_numpy(X).bfloat16(), k=15)
        s, i = s.numpy(), i.numpy()
    rs, ri = hn.topk(Q, X, k=15)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs)


def test_layouts_and_readonly(rng):
    Q, X = int_vectors(rng, 8, 20), int_vectors(rng, 400, 20)
    rs, ri = hn.topk(Q, X, k=9)
    Xf = np.asfortranarray(X)
    X2 = np.repeat(X, 2, axis=0)[::2]  # strided rows
    Xw = np.zeros((400, 32), np.float32)
    Xw[:, :20] = X
    Xr = X.copy()
    Xr.flags.writeable = False
    for variant in (Xf, X2, Xw[:, :20], Xr):
        s, i = hn.topk(np.asfortranarray(Q), variant, k=9)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(s, rs)
    s, i = hn.topk(Q.astype(np.float64), X.astype(np.float64), k=9)
    np.testing.assert_array_equal(i, ri)


@pytest.mark.skipif(torch is None, reason="torch missing")
def test_torch_cpu_in_torch_out(rng):
    Q, X = int_vectors(rng, 5, 30), int_vectors(rng, 200, 30)
    s, i = hn.topk(torch.from_numpy(Q), torch.from_numpy(X), k=4)
    assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and i.dtype == torch.int64
    rs, ri = hn.topk(Q, X, k=4)
    np.testing.assert_array_equal(i.numpy(), ri)
    Xt = torch.from_numpy(X).t().contiguous().t()  # transposed view
    s2, i2 = hn.topk(torch.from_numpy(Q), Xt.T.T, k=4)
    np.testing.assert_array_equal(i2.numpy(), ri)
    qg = torch.from_numpy(Q).requires_grad_()
    s3, _ = hn.topk(qg, torch.from_numpy(X), k=4)
    assert not s3.requires_grad


@pytest.mark.skipif(torch is None, reason="torch missing")
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_torch_path_forced_on_cpu(rng, metric):
    Q, X = int_vectors(rng, 11, 19), int_vectors(rng, 700, 19)
    X[100:110] = X[5]  # ties
    ex = [[5], [], list(range(0, 700, 2))] + [[]] * 8
    rs, ri = hn.topk(Q, X, k=25, metric=metric, exclude=ex)
    # a tiny memory budget forces many chunks and merges
    s, i = hn.topk(torch.from_numpy(Q), torch.from_numpy(X), k=25, metric=metric, exclude=ex,
                   backend="torch", memory_budget=11 * 64 * 17)
    check = np.testing.assert_array_equal if metric != "cosine" else None
    if check:  # ip / l2 on small integers are exact in float32 on both paths
        check(i.numpy(), ri)
        check(s.numpy(), rs)
    else:
        assert_ids_where_clear(s.numpy(), i.numpy(), rs, ri, tol=1e-5)
    s, i = hn.topk(Q, X, k=800, metric=metric, backend="torch")
    rs, ri = hn.topk(Q, X, k=800, metric=metric)
    if check:
        check(i, ri)
    else:
        assert_ids_where_clear(s, i, rs, ri, tol=1e-5)
    assert (i[:, 700:] == -1).all()


@pytest.mark.skipif(not cuda_available(), reason="no CUDA device")
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_cuda_tensors(rng, metric):
    Q, X = int_vectors(rng, 30, 64), int_vectors(rng, 5000, 64)
    rs, ri = hn.topk(Q, X, k=50, metric=metric, exclude=[[1, 2]] * 30)
    s, i = hn.topk(torch.from_numpy(Q).cuda(), torch.from_numpy(X).cuda(), k=50, metric=metric,
                   exclude=[[1, 2]] * 30, memory_budget=1 << 20)
    assert s.device.type == "cuda" and i.device.type == "cuda"
    np.testing.assert_array_equal(i.cpu().numpy(), ri)
    for dt in (torch.float16, torch.bfloat16):
        s, i = hn.topk(torch.from_numpy(Q).cuda().to(dt), torch.from_numpy(X).cuda().to(dt), k=50, metric=metric)
        rs2, ri2 = hn.topk(Q, X, k=50, metric=metric)
        np.testing.assert_array_equal(i.cpu().numpy(), ri2)


def test_huge_values(rng):
    Q = rng.standard_normal((4, 16)).astype(np.float32) * 1e15
    X = rng.standard_normal((50, 16)).astype(np.float32) * 1e15
    s, i = hn.topk(Q, X, k=50)
    rs, ri = ref_topk(Q, X, 50)
    np.testing.assert_allclose(s, rs, rtol=1e-4)
    # products that overflow float32 are ranked, not rejected
    s, i = hn.topk(np.full((1, 4), 3e38, np.float32), np.full((2, 4), 3e38, np.float32), k=2)
    assert (i == [[0, 1]]).all() and np.isposinf(s).all()


def test_simd_levels_agree(rng):
    Q, X = int_vectors(rng, 7, 45), int_vectors(rng, 333, 45)
    Xh = X.astype(np.float16)
    start = hn.simd_level()
    results = {}
    try:
        for level in _core.available_simd_levels():
            _core.set_simd_level(level)
            for metric in ("ip", "l2"):
                results[(level, metric)] = hn.topk(Q, X, k=30, metric=metric)
                s, i = hn.topk(Q, Xh, k=30, metric=metric)
                np.testing.assert_array_equal(i, results[(level, metric)][1])
    finally:
        _core.set_simd_level(start)
    for metric in ("ip", "l2"):
        rs, ri = ref_topk(Q, X, 30, metric)
        for level in _core.available_simd_levels():
            np.testing.assert_array_equal(results[(level, metric)][1], ri)
    with pytest.raises(ValueError, match="not available"):
        _core.set_simd_level("sse9")


def test_dense_index_add_equals_fresh(rng):
    A, B, C = int_vectors(rng, 100, 24), int_vectors(rng, 1, 24), int_vectors(rng, 57, 24)
    Q = int_vectors(rng, 12, 24)
    for metric in ("ip", "cosine", "l2"):
        idx = hn.DenseIndex(A, metric=metric)
        idx.add(B).add(C)
        assert len(idx) == 158 and idx.dim == 24
        full = np.concatenate([A, B, C])
        ex = [[0, 100, 157]] * 12
        s, i = idx.search(Q, k=40, exclude=ex)
        rs, ri = hn.DenseIndex(full, metric=metric).search(Q, k=40, exclude=ex)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(s, rs)
        assert not (i == 100).any()


@pytest.mark.parametrize("case", ["ties", "all_equal", "huge", "sorted"])
def test_buffer_compaction_keeps_the_exact_top_k(rng, case):
    # the plain path's running buffers (2k + 32 keys) compact many times over 6,000 rows at
    # k = 10: by a bound below the k-th best key (then a few more keys stay), or exactly when
    # the keys' range is not finite or too many keys tie at the cut; ids always equal the
    # float64 brute force with ties by ascending id
    N, d, k = 6000, 16, 10
    X = int_vectors(rng, N, d)
    Q = int_vectors(rng, 37, d)
    if case == "all_equal":  # every key equal: the cut keeps them all, the exact selection runs
        X[:] = 1.0
    elif case == "huge":  # keys of +-1.9e38 (exact: 2^120 times integers; finite, their range
        # is not): the exact selection
        X[::7] = 3.0 * 2.0 ** 120
        X[1::14] = -3.0 * 2.0 ** 120
        Q[::3] = 3.0
    elif case == "sorted":  # keys rising with the id: every row enters, a compaction per 42 rows
        X = np.repeat(np.arange(N, dtype=np.float32)[:, None], d, axis=1) / N
        Q = np.abs(Q) + 1
    with screen_mode(0):
        s, i = hn.topk(Q, X, k=k)
    rs, ri = ref_topk(Q, X, k)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, rtol=1e-6)


def test_cosine_zero_rows():
    X = np.array([[0, 0], [1, 0], [0, 1]], np.float32)
    s, i = hn.topk(np.array([[1, 1], [0, 0]], np.float32), X, k=3, metric="cosine")
    assert i[0].tolist() == [1, 2, 0]
    np.testing.assert_allclose(s[0], [np.sqrt(0.5), np.sqrt(0.5), 0], rtol=1e-6)
    assert i[1].tolist() == [0, 1, 2] and (s[1] == 0).all()


def test_merge_topk(rng):
    Q, X = int_vectors(rng, 6, 10), int_vectors(rng, 300, 10)
    X[200:] = X[:100]
    rs, ri = hn.topk(Q, X, k=20)
    parts = [hn.topk(Q, X[a:b], k=20) for a, b in [(0, 90), (90, 200), (200, 300)]]
    s = [p[0] for p in parts]
    i = [np.where(p[1] >= 0, p[1] + off, -1) for p, off in zip(parts, (0, 90, 200))]
    ms, mi = hn.merge_topk(s, i, k=20)
    np.testing.assert_array_equal(mi, ri)
    np.testing.assert_array_equal(ms, rs)


# ---------------------------------------------------------------- bad input
def test_bad_inputs():
    X = np.ones((10, 4), np.float32)
    Q = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="dimension"):
        hn.topk(np.ones((2, 5), np.float32), X)
    with pytest.raises(ValueError, match="queries must be 2-D"):
        hn.topk(np.ones(4, np.float32), X)
    with pytest.raises(ValueError, match="corpus must be 2-D"):
        hn.topk(Q, np.ones((2, 3, 4), np.float32))
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be"):
            hn.topk(Q, X, k=k)
    with pytest.raises(TypeError, match="k must be"):
        hn.topk(Q, X, k=2.5)
    bad = Q.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="queries contains NaN"):
        hn.topk(bad, X)
    badx = X.copy()
    badx[7, 2] = np.inf
    with pytest.raises(ValueError, match=r"corpus contains NaN or Inf \(row 7\)"):
        hn.topk(Q, badx)
    with pytest.raises(ValueError, match="corpus contains NaN"):
        hn.DenseIndex(badx)
    badh = X.astype(np.float16)
    badh[3, 0] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        hn.topk(Q, badh)
    with pytest.raises(TypeError, match="corpus must be float32"):
        hn.topk(Q, X.astype(np.complex64))
    with pytest.raises(TypeError, match="corpus must be float32"):
        hn.topk(Q, X.astype(bool))
    with pytest.raises(TypeError, match="queries must be"):
        hn.topk(np.array([["a", "b"]]), X)
    with pytest.raises(TypeError, match="corpus must be a numpy array"):
        hn.topk(Q, "not an array")
    with pytest.raises(ValueError, match="outside the corpus range"):
        hn.topk(Q, X, exclude=[[10], []])
    with pytest.raises(ValueError, match="outside the corpus range"):
        hn.topk(Q, X, exclude=[[-2], []])
    with pytest.raises(ValueError, match="one entry per query"):
        hn.topk(Q, X, exclude=[[1]])
    with pytest.raises(TypeError, match="integer ids"):
        hn.topk(Q, X, exclude=[[1.5], []])
    with pytest.raises(ValueError, match="indptr"):
        hn.topk(Q, X, exclude=(np.array([0, 1]), np.array([1])))
    with pytest.raises(ValueError, match="corpus is empty"):
        hn.topk(Q, np.ones((0, 4), np.float32))
    with pytest.raises(ValueError, match="corpus is empty"):
        hn.DenseIndex(np.ones((0, 4), np.float32))
    with pytest.raises(ValueError, match="metric must be"):
        hn.topk(Q, X, metric="dot")
    with pytest.raises(ValueError, match="backend must be"):
        hn.topk(Q, X, backend="gpu")
    with pytest.raises(ValueError, match="num_threads"):
        hn.topk(Q, X, num_threads=0)
    with pytest.raises(ValueError, match="too large for float32"):
        hn.topk(Q.astype(np.float64) * 1e300, X)
    idx = hn.DenseIndex(X)
    with pytest.raises(ValueError, match="dimension"):
        idx.add(np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="dimension"):
        idx.search(np.ones((1, 3), np.float32))


def test_empty_queries():
    s, i = hn.topk(np.ones((0, 4), np.float32), np.ones((5, 4), np.float32), k=3)
    assert s.shape == (0, 3) and i.shape == (0, 3)


@pytest.mark.skipif(not cuda_available(), reason="no CUDA device")
def test_mixed_devices():
    with pytest.raises(ValueError, match="same device"):
        hn.topk(torch.ones(2, 4).cuda(), torch.ones(5, 4))


def test_threads_setting(monkeypatch):
    hn.set_num_threads(1)
    try:
        assert hn.get_num_threads() == 1
    finally:
        hn.set_num_threads(None)
    monkeypatch.setenv("HARDNEG_NUM_THREADS", "3")
    assert hn.get_num_threads() == 3
    monkeypatch.setenv("HARDNEG_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="HARDNEG_NUM_THREADS"):
        hn.get_num_threads()


def test_info():
    info = hn.info()
    assert info["version"] == hn.__version__
    assert info["simd_level"] in ("avx512", "avx2", "neon", "scalar")
    assert info["num_threads"] >= 1
    assert set(info["screen_codes"]) <= {"int8", "bf16"}


def test_signed_zero_scores_tie_by_id():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    s, i = hn.topk(np.array([[0.0, 1.0]], np.float32), X, k=3)
    assert i.tolist() == [[1, 0, 2]]  # 0 * -1 = -0.0 ties with +0.0 -> by id


def test_simd_env_override():
    import subprocess
    import sys

    code = "import hardneg as hn; print(hn.simd_level())"
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "HARDNEG_SIMD": "scalar"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "scalar"


def test_l2_zero_distance_is_positive_zero():
    X = np.array([[1.0, 2.0]], np.float32)
    s, _ = hn.topk(X, X, k=1, metric="l2")
    assert s[0, 0] == 0 and not np.signbit(s[0, 0])
    if torch is not None:
        s, _ = hn.topk(X, X, k=1, metric="l2", backend="torch")
        assert s[0, 0] == 0 and not np.signbit(s[0, 0])


# ---------------------------------------------------------------------------------------------- the screen
# The exact search may first screen with bf16 or int8 scores and rescore the survivors in fp32
# (cpp/topk_screen.cpp).  It must return exactly what the plain fp32 path returns: same ids,
# bit-identical scores.  Mode 2 forces the screen wherever the CPU allows it, mode 0 turns it off;
# every screen test runs once per kind of codes the CPU has (int8: AVX-512 VNNI, bf16: AVX-512 BF16),
# and int8 once more on the VNNI loop where it would run on AMX tiles.


@pytest.fixture(params=["bf16", "int8", "int8-vnni"])
def screen_kind(request):
    kind = request.param.split("-")[0]
    if kind not in _core.screen_types():
        pytest.skip(f"CPU without the {kind} screen")
    if request.param == "int8-vnni" and not _core.amx_enabled():
        pytest.skip("int8 already runs on the VNNI loop here (no AMX)")
    start, amx = _core.screen_type(), _core.amx_enabled()
    _core.set_screen_type(kind)
    _core.set_amx(request.param != "int8-vnni")
    yield kind
    _core.set_screen_type(start)
    _core.set_amx(amx)


def needs_screen(f):
    skip = pytest.mark.skipif(not _core.screen_available(), reason="CPU without AVX-512 VNNI or BF16")
    return skip(pytest.mark.usefixtures("screen_kind")(f))


@contextlib.contextmanager
def screen_mode(mode):
    """The screen in `mode` (0 off, 1 auto, 2 forced) inside the block, restored after."""
    start = _core.screen_mode()
    _core.set_screen_mode(mode)
    try:
        yield
    finally:
        _core.set_screen_mode(start)


def plain_topk(Q, X, k, **kw):
    """hn.topk on the plain fp32 path (the screen off): the reference every screened search equals."""
    with screen_mode(0):
        return hn.topk(Q, X, k=k, **kw)


def assert_bit_equal(got, ref):
    """Same ids and the same score bits."""
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(np.asarray(got[0]).view(np.uint32), np.asarray(ref[0]).view(np.uint32))


def screened_vs_plain(Q, X, k, metric, exclude=None, expect="screen", **kw):
    """Runs hn.topk with the screen off and forced; asserts equal results; checks which path ran."""
    ref = plain_topk(Q, X, k, metric=metric, exclude=exclude, **kw)
    with screen_mode(2):
        before = _core.screen_counts()
        got = hn.topk(Q, X, k=k, metric=metric, exclude=exclude, **kw)
        after = _core.screen_counts()
    assert_bit_equal(got, ref)
    started, fell_back = after[0] - before[0], after[1] - before[1]
    if expect == "screen":
        assert started == 1 and fell_back == 0
    elif expect == "fallback":
        assert started == 1 and fell_back == 1
    return got


def unit_rows(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@needs_screen
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("nq,n,d,k", [(1, 1, 1, 1), (3, 50, 1, 7), (7, 300, 31, 10), (20, 1000, 384, 36),
                                      (50, 2000, 100, 105), (9, 40, 64, 100), (13, 777, 65, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_screen_equals_plain_random(rng, metric, nq, n, d, k, threads):
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    X = rng.standard_normal((n, d)).astype(np.float32)
    screened_vs_plain(Q, X, k, metric, num_threads=threads, expect="any" if d == 1 else "screen")


@needs_screen
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_screen_embedding_like_with_exclusions(rng, metric):
    # clustered unit vectors (many close scores), per-query exclusions of the nearest rows
    centers = rng.standard_normal((20, 96))
    X = unit_rows(centers[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 96)))
    Q = unit_rows(centers[rng.integers(0, 20, 64)] + 0.3 * rng.standard_normal((64, 96)))
    ex = [list(np.argsort(-(X @ q))[:m]) + [2999, 0] for q, m in zip(Q, rng.integers(0, 30, 64))]
    for k in (1, 10, 36, 105, 3000):
        screened_vs_plain(Q, X, k, metric, exclude=ex, expect="any" if k >= 3000 else "screen")


@needs_screen
def test_screen_ties_and_duplicates(rng):
    # duplicate rows (exact ties, ordered by id), rows one bf16 ulp apart, all-equal rows
    base = rng.standard_normal((30, 48)).astype(np.float32)
    X = np.repeat(base, 20, axis=0)[rng.permutation(600)]
    Q = rng.standard_normal((10, 48)).astype(np.float32)
    for metric in ("ip", "cosine", "l2"):
        screened_vs_plain(Q, X, 25, metric, expect="any")
        screened_vs_plain(Q, X, 1, metric, expect="any")
    near = np.repeat(base[:1], 500, axis=0)
    near[:, 0] += np.arange(500, dtype=np.float32) * 1e-6  # differences far below the bf16 resolution
    screened_vs_plain(Q, near, 10, "ip", expect="any")
    screened_vs_plain(Q, np.ones((1200, 48), np.float32), 5, "ip")  # every row ties: settled per query
    screened_vs_plain(Q, np.ones((1200, 48), np.float32), 5, "l2")
    screened_vs_plain(X[:7], X, 3, "l2", expect="any")  # distance 0 to 20 copies: clamped keys tie


@needs_screen
def test_screen_zero_rows_and_queries_cosine(rng):
    X = rng.standard_normal((500, 40)).astype(np.float32)
    X[::7] = 0
    Q = rng.standard_normal((8, 40)).astype(np.float32)
    Q[3] = 0
    screened_vs_plain(Q, X, 80, "cosine", expect="any")
    screened_vs_plain(Q[[0, 1, 2]], X, 80, "cosine", expect="screen")
    screened_vs_plain(Q, X, 80, "ip", expect="any")


@needs_screen
def test_screen_tiny_and_huge_values(rng):
    Q = rng.standard_normal((6, 33)).astype(np.float32)
    X = rng.standard_normal((400, 33)).astype(np.float32)
    for scale in (1e-30, 1e-19, 1e-3, 1e3, 1e12):  # denormal products, flushed bf16 inputs, large norms
        screened_vs_plain(Q * np.float32(scale), X, 20, "ip", expect="any")
        screened_vs_plain(Q, X * np.float32(scale), 20, "cosine", expect="any")
    for scale in (1e-19, 1e-3, 1e3, 1e12):  # l2: squared norms and distances at every scale
        screened_vs_plain(Q * np.float32(scale), X * np.float32(scale), 20, "l2", expect="any")
        screened_vs_plain(Q, X * np.float32(scale), 20, "l2", expect="any")
    screened_vs_plain(Q, X * np.float32(1e12), 20, "ip", expect="screen")
    mixed = X.copy()
    mixed[5, 3] = 1e-40  # a denormal element
    screened_vs_plain(Q, mixed, 20, "ip", expect="screen")
    # norms past 2^50: the plain path (and its overflow handling) runs
    screened_vs_plain(Q * np.float32(1e15), X * np.float32(1e15), 20, "ip", expect="fallback")
    screened_vs_plain(Q * np.float32(1e15), X * np.float32(1e15), 20, "l2", expect="fallback")
    big = np.full((3, 4), 3e38, np.float32)
    screened_vs_plain(big, big, 2, "ip", expect="fallback")


@needs_screen
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_screen_outlier_rows_and_scales(rng, metric):
    # rows dominated by one element (int8 codes of the rest round to 0: a large, row-specific
    # error bound), rows at very different scales, heavy tails; d not a multiple of 32 or 64
    d = 77
    X = rng.standard_normal((1500, d)).astype(np.float32)
    X[::5, 3] *= 500
    X[1::5] *= np.float32(1e-4)
    X[2::5] = rng.standard_cauchy((300, d)).astype(np.float32)
    Q = rng.standard_normal((40, d)).astype(np.float32)
    Q[::4, 10] *= 300
    Q[1::4] *= np.float32(1e5)
    # (inner product: the huge rows' norms widen every query's window until the screen gives up)
    expect = "screen" if metric == "cosine" else "any"
    for k in (1, 17, 64):
        screened_vs_plain(Q, X, k, metric, expect=expect)
        screened_vs_plain(X[:60], X, k, metric, exclude=[[i] for i in range(60)], expect="any")


@needs_screen
def test_screen_nan_raises_like_plain(rng):
    Q = rng.standard_normal((4, 16)).astype(np.float32)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    X[123, 5] = np.nan
    start = _core.screen_mode()
    try:
        for mode in (0, 2):
            _core.set_screen_mode(mode)
            with pytest.raises(ValueError, match="NaN or Inf"):
                hn.topk(Q, X, k=5)
    finally:
        _core.set_screen_mode(start)


@needs_screen
def test_screen_half_corpora_and_segments(rng):
    Q = rng.standard_normal((12, 70)).astype(np.float32)
    X = rng.standard_normal((900, 70)).astype(np.float32)
    for dtype in (np.float16,) + ((torch.bfloat16,) if torch is not None else ()):
        Xh = X.astype(dtype) if dtype is np.float16 else torch.from_numpy(X).to(dtype)
        for metric in ("ip", "cosine", "l2"):
            screened_vs_plain(Q, Xh, 30, metric)
    for metric in ("ip", "cosine"):
        start = _core.screen_mode()
        try:
            res = []
            for mode in (0, 2):
                _core.set_screen_mode(mode)
                idx = hn.DenseIndex(X[:400], metric=metric).add(X[400:401]).add(X[401:])
                res.append(idx.search(Q, k=50, exclude=[[0, 400, 899]] * 12))
        finally:
            _core.set_screen_mode(start)
        np.testing.assert_array_equal(res[0][1], res[1][1])
        np.testing.assert_array_equal(res[0][0].view(np.uint32), res[1][0].view(np.uint32))


def test_screen_mode_setting():
    start = _core.screen_mode()
    try:
        for m in (0, 1, 2):
            _core.set_screen_mode(m)
            assert _core.screen_mode() == m
        with pytest.raises(ValueError, match="screen mode"):
            _core.set_screen_mode(3)
    finally:
        _core.set_screen_mode(start)


@pytest.mark.skipif(not _core.screen_available(), reason="CPU without AVX-512 VNNI or BF16")
def test_index_keeps_codes_and_screens_few_queries(rng):
    # auto mode, one exact index: a shallow search (int8 where the CPU has it) builds the index's
    # coded copy, a deep one over a few of the queries (bf16 alone, and too few to screen without a
    # kept copy) reuses that copy and its codes, is screened, and equals the plain search
    X = unit_rows(rng.standard_normal((5000, 64)))
    Q = unit_rows(rng.standard_normal((200, 64)))
    start_mode, start_type = _core.screen_mode(), _core.screen_type()
    try:
        _core.set_screen_type("auto")
        _core.set_screen_mode(0)
        ref = hn.topk(Q[:20], X, k=105, metric="ip")
        _core.set_screen_mode(1)
        index = hn.DenseIndex(X, metric="ip")
        assert index.codes_nbytes == 0
        plain_bytes = index.nbytes
        index.search(Q, k=30)
        assert index.codes_nbytes > 0 and index.nbytes == plain_bytes + index.codes_nbytes
        before = _core.screen_counts()
        got = index.search(Q[:20], k=105)
        after = _core.screen_counts()
        assert after[0] - before[0] == 1 and after[1] == before[1]
        before = _core.screen_counts()
        hn.topk(Q[:20], X, k=105, metric="ip")  # one-shot, no kept copy: 20 queries search plain
        assert _core.screen_counts()[0] == before[0]
    finally:
        _core.set_screen_mode(start_mode)
        _core.set_screen_type(start_type)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0].view(np.uint32), ref[0].view(np.uint32))


def test_screen_type_setting():
    start = _core.screen_type()
    try:
        for t in ("bf16", "int8", "auto"):
            _core.set_screen_type(t)
            assert _core.screen_type() == t
        with pytest.raises(ValueError, match="screen type"):
            _core.set_screen_type("fp8")
    finally:
        _core.set_screen_type(start)
    kinds = _core.screen_types()
    assert set(kinds) <= {"bf16", "int8"}
    # auto: int8 (half the screening pass) while 128 k <= n, bf16 for deeper searches where this
    # CPU runs bf16's pass fast (measured once per process), else int8 again
    if kinds:
        assert _core.screen_choice(384, 10, 5183) == kinds[0]
        assert _core.screen_choice(384, 105, 5183) in kinds
        assert _core.screen_choice(384, 105, 5183) == _core.screen_choice(384, 1000, 5183)
        assert _core.screen_choice(20000, 1, 10 ** 6) == ("bf16" if "bf16" in kinds else None)  # int8 sums: d <= 16384
    else:
        assert _core.screen_choice(384, 10, 5183) is None


@needs_screen
def test_index_codes_follow_the_corpus(rng, screen_kind):
    # the index's coded copy is rebuilt whenever it no longer matches (other codes) and extended
    # after add() (kept, and the next screened search codes only the new rows); results always
    # equal the plain search
    X = rng.standard_normal((700, 40)).astype(np.float32)
    Q = rng.standard_normal((120, 40)).astype(np.float32)
    start = _core.screen_mode()
    try:
        _core.set_screen_mode(2)
        for metric in ("ip", "cosine"):
            index = hn.DenseIndex(X[:500], metric=metric)
            others = [t for t in _core.screen_types() if t != screen_kind]
            steps = [("search", screen_kind), ("search", screen_kind)]
            steps += [("search", others[0]), ("search", screen_kind)] if others else []
            steps += [("add", screen_kind), ("search", screen_kind), ("search", screen_kind)]
            corpus = X[:500]
            for what, kind in steps:
                _core.set_screen_type(kind)
                if what == "add":
                    kept_bytes = index.codes_nbytes
                    index.add(X[500:])
                    corpus = X
                    assert index.codes_nbytes == kept_bytes > 0
                    extended = _core.screen_extended()
                    continue
                before = _core.screen_counts()
                got = index.search(Q, k=30)
                assert _core.screen_counts()[0] == before[0] + 1 and index.codes_nbytes > 0
                if corpus is X:  # the first search after add() extended the copy, the next reused it
                    assert _core.screen_extended() == extended + 1 and index.codes_nbytes > kept_bytes
                _core.set_screen_mode(0)
                ref = hn.topk(Q, corpus, k=30, metric=metric)
                _core.set_screen_mode(2)
                np.testing.assert_array_equal(got[1], ref[1])
                np.testing.assert_array_equal(got[0].view(np.uint32), ref[0].view(np.uint32))
    finally:
        _core.set_screen_mode(start)


@needs_screen
def test_extended_codes_equal_a_fresh_copy(rng, screen_kind):
    # an index grown by several add()s (a one-row segment, a float16 one, ties across segments)
    # extends its coded copy at each screened search: the copy has the size of a fresh index's,
    # and every search equals the plain one, bit for bit, for each metric
    X = rng.standard_normal((1300, 40)).astype(np.float32)
    X[1290:] = X[:10]  # exact duplicates of rows in the first segment: ties across segments
    Q = rng.standard_normal((100, 40)).astype(np.float32)
    parts = [X[:600], X[600:601], X[601:1000].astype(np.float16), X[1000:]]
    with screen_mode(2):
        for metric in ("ip", "cosine", "l2"):
            index = hn.DenseIndex(parts[0], metric=metric)
            index.search(Q, k=25)
            corpus = parts[0]
            for part in parts[1:]:
                index.add(part)
                corpus = np.concatenate([corpus, part.astype(np.float32)])
                extended = _core.screen_extended()
                got = index.search(Q, k=25)
                assert _core.screen_extended() == extended + 1
                with screen_mode(0):
                    ref = hn.topk(Q, corpus, k=25, metric=metric)
                np.testing.assert_array_equal(got[1], ref[1])
                np.testing.assert_array_equal(got[0].view(np.uint32), ref[0].view(np.uint32))
            grown = index.codes_nbytes
            fresh = hn.DenseIndex(parts[0], metric=metric)
            for part in parts[1:]:
                fresh.add(part)
            fresh.search(Q, k=25)  # codes the whole corpus at once
            assert fresh.codes_nbytes == grown


@needs_screen
def test_index_codes_shared_by_threads(rng, screen_kind):
    # searches from several Python threads on one index (the GIL is released) share one coded copy
    from concurrent.futures import ThreadPoolExecutor

    X = rng.standard_normal((900, 48)).astype(np.float32)
    Q = rng.standard_normal((96, 48)).astype(np.float32)
    start = _core.screen_mode()
    try:
        _core.set_screen_mode(0)
        ref = hn.topk(Q, X, k=20, metric="cosine")
        _core.set_screen_mode(2)
        index = hn.DenseIndex(X, metric="cosine")
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: index.search(Q, k=20, num_threads=1), range(8)))
    finally:
        _core.set_screen_mode(start)
    for s, i in outs:
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_array_equal(s.view(np.uint32), ref[0].view(np.uint32))


# ------------------------------------------------------------ adversarial magnitudes, huge k, layouts
def ref_cosine64(Q, X, k):
    """float64 cosine top-k (norms in float64: no over/underflow for any finite float32)."""
    q, x = np.asarray(Q, np.float64), np.asarray(X, np.float64)
    qn, xn = np.linalg.norm(q, axis=1), np.linalg.norm(x, axis=1)
    S = (q / np.where(qn > 0, qn, 1)[:, None]) @ (x / np.where(xn > 0, xn, 1)[:, None]).T
    order = np.lexsort((np.broadcast_to(np.arange(X.shape[0]), S.shape), -S), axis=1)[:, :k]
    return np.take_along_axis(S, order, axis=1), order


@pytest.mark.parametrize("scale", [3e19, 1e30, 1e36, 1e-22, 1e-30, 1e-36])
def test_cosine_norms_do_not_overflow_or_underflow(rng, scale):
    # rows (and queries) whose squared norm over/underflows float32: every cosine path must still
    # rank by the true cosine (before: scores 0 or above 1, ids in plain id order)
    X = rng.standard_normal((400, 24)).astype(np.float32)
    X[::3] *= np.float32(scale)
    X[5] = 0
    Q = (rng.standard_normal((9, 24)) * scale).astype(np.float32)
    Q[1] = X[7]
    rs, ri = ref_cosine64(Q, X, 12)
    runs = {"topk": lambda: hn.topk(Q, X, k=12, metric="cosine"),
            "index": lambda: hn.DenseIndex(X, metric="cosine").search(Q, k=12)}
    if torch is not None:
        runs["torch"] = lambda: hn.topk(Q, X, k=12, metric="cosine", backend="torch")
    start = _core.screen_mode()
    try:
        for mode in (0, 2):  # plain path, and the screen forced (it must hand such rows to the plain path)
            _core.set_screen_mode(mode)
            for name, run in runs.items():
                s, i = run()
                s, i = np.asarray(s), np.asarray(i)
                np.testing.assert_array_equal(i, ri, err_msg=f"{name}, screen mode {mode}")
                np.testing.assert_allclose(s, rs, rtol=2e-6, atol=2e-6, err_msg=f"{name}, screen mode {mode}")
    finally:
        _core.set_screen_mode(start)


def test_cosine_tiny_and_huge_half_precision_rows(rng):
    # float16 rows near its limits: squares of 6e4 overflow nothing in fp32, but tiny subnormal
    # halves square to below 2^-126; the norms must still be exact
    X = rng.standard_normal((200, 16)).astype(np.float32)
    X[::2] *= np.float32(1e-6)
    Xh = X.astype(np.float16)
    Q = rng.standard_normal((4, 16)).astype(np.float32)
    rs, ri = ref_cosine64(Q, Xh.astype(np.float32), 10)
    s, i = hn.topk(Q, Xh, k=10, metric="cosine")
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, rtol=2e-6, atol=2e-6)


def test_huge_k_is_clamped_or_refused(rng, tmp_path):
    X = rng.standard_normal((20, 8)).astype(np.float32)
    Q = X[:3]
    # internal buffers follow the corpus, not k: a padded (Q, k) that fits is returned
    s, i = hn.topk(Q, X, k=100_000)
    assert s.shape == (3, 100_000) and (i[:, 20:] == -1).all() and np.isneginf(s[:, 20:]).all()
    assert (np.sort(i[:, :20], axis=1) == np.arange(20)).all()
    # a padded output that cannot be allocated: a ValueError naming k and the bytes
    for run in (lambda: hn.topk(X, X, k=2**31), lambda: hn.DenseIndex(X).search(X, k=2**31),
                lambda: hn.ooc.topk_memmap(X, _memmap_of(X, tmp_path), k=2**31)):
        with pytest.raises(ValueError, match=r"k=2147483648.*bytes"):
            run()
    with pytest.raises(ValueError, match="k must be"):
        hn.topk(Q, X, k=2**32)


def _memmap_of(X, folder):
    np.save(folder / "x.npy", X)
    return np.load(folder / "x.npy", mmap_mode="r")


def test_unaligned_c_contiguous_inputs_are_copied(rng):
    # a C-contiguous view at an odd byte offset: copied (aligned) before the kernel reads it
    def unaligned(a):
        buf = np.zeros(a.nbytes + 1, np.uint8)
        out = buf[1:].view(a.dtype).reshape(a.shape)
        out[...] = a
        assert not out.flags.aligned and out.flags.c_contiguous
        return out

    X = rng.standard_normal((50, 12)).astype(np.float32)
    Q = X[:4]
    for metric in ("ip", "cosine", "l2"):
        ref = hn.topk(Q, X, k=5, metric=metric)
        for got in (hn.topk(unaligned(Q), unaligned(X), k=5, metric=metric),
                    hn.DenseIndex(unaligned(X), metric=metric).search(unaligned(Q), k=5),
                    hn.topk(unaligned(Q.astype(np.float16)), unaligned(X.astype(np.float16)), k=5, metric=metric)):
            assert got[0].shape == (4, 5)
        got = hn.topk(unaligned(Q), unaligned(X), k=5, metric=metric)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])


# ------------------------------------------------------------ layering: no import cycles
def _hardneg_imports(top_level_only):
    """{module: set of hardneg modules it imports} from the source (ast), for python/hardneg/*.py."""
    import ast
    from pathlib import Path

    pkg = Path(hn.__file__).parent
    names = {p.stem for p in pkg.glob("*.py")} | {p.name for p in pkg.iterdir() if (p / "__init__.py").exists()}
    graph = {}
    for p in pkg.glob("*.py"):
        tree = ast.parse(p.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        deps = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for m in mods:
                parts = m.split(".")
                if parts[0] == "hardneg" and len(parts) > 1 and parts[1] in names:
                    deps.add(parts[1])
        graph[p.stem] = deps - {p.stem}
    return graph


def _cycle(graph, nodes):
    """A cycle among ``nodes`` in ``graph`` (a list of modules), or None."""
    state = {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if m not in nodes:
                continue
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m, path + [m])
                if found:
                    return found
        state[n] = 2
        return None

    for n in sorted(nodes):
        if n not in state:
            found = visit(n, [n])
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = _hardneg_imports(top_level_only=True)
    # module-level imports: a cycle anywhere in the package would make import order matter
    assert _cycle(graph, set(graph) - {"__init__", "__main__"}) is None
    # the retrieval layer: no cycle even through imports inside functions
    retrieval = {"_arrays", "exclude", "index_base", "backends", "_torch_topk", "exact", "ooc", "_faiss", "topk",
                 "distributed"}
    assert _cycle(_hardneg_imports(top_level_only=False), retrieval) is None
    # backends decides and imports no index module; index_base imports none either
    assert not graph["backends"] & {"exact", "ooc", "_faiss", "topk", "distributed"}
    assert not graph["index_base"] & {"exact", "ooc", "_faiss", "topk", "distributed", "backends"}


@pytest.mark.slow
@pytest.mark.parametrize("first", ["exact", "ooc", "_faiss", "distributed"])
def test_each_module_imports_first_in_a_fresh_interpreter(first):
    import subprocess
    import sys
    from pathlib import Path

    pkg = Path(hn.__file__).parent
    mods = [first] + sorted(p.stem for p in pkg.glob("*.py") if p.stem not in ("__main__", first))
    code = "import importlib\nfor m in %r: importlib.import_module('hardneg.' + m if m != '__init__' else 'hardneg')" % mods
    env = dict(__import__("os").environ, PYTHONPATH=str(pkg.parent))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def near_ties(rng, n, d, spread=1e-3):
    """n rows within `spread` of one direction: every query's scores lie within the screen's bound."""
    base = rng.standard_normal((1, d)).astype(np.float32)
    return (base + spread * rng.standard_normal((n, d))).astype(np.float32)


@needs_screen
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_screen_settles_overflowing_queries_alone(rng, metric):
    # half the corpus near-ties around one direction, half random; the queries along that
    # direction overflow their candidate buffers (settled exactly, one by one), the others prune
    d = 48
    X = np.concatenate([near_ties(rng, 1500, d), rng.standard_normal((1500, d)).astype(np.float32)])
    X = X[rng.permutation(len(X))]
    Q = rng.standard_normal((40, d)).astype(np.float32)
    Q[::3] = X[np.argmax(np.linalg.norm(X - X.mean(0), axis=1) < 0.5)] * np.float32(2)
    Q[1::7] = near_ties(rng, len(Q[1::7]), d)[:, :] * np.float32(-1)
    ex = [list(rng.integers(0, len(X), 40)) for _ in range(len(Q))]
    for k in (1, 7, 100, 700):
        for threads in (1, 2):
            screened_vs_plain(Q, X, k, metric, num_threads=threads)
        screened_vs_plain(Q, X, k, metric, exclude=ex)
    ex200 = [[i % 200, (7 * i) % 200] for i in range(len(Q))]
    screened_vs_plain(Q, X[:200], 500, metric, exclude=ex200, expect="any")  # k > N: no buffer prunes


@needs_screen
def test_screen_settles_ties_and_adversarial(rng):
    # exact duplicates (ties by ascending id across a settle), one-element rows, per-row scales
    # from 1e-6 to 1e6 among the near-ties
    d = 24
    X = np.repeat(near_ties(rng, 60, d, 1e-2), 40, axis=0)[rng.permutation(2400)]
    Q = np.concatenate([X[:10], rng.standard_normal((10, d)).astype(np.float32)])
    for k in (5, 100, 350):
        for metric in ("ip", "cosine"):
            screened_vs_plain(Q, X, k, metric)
    scaled = near_ties(rng, 2000, d) * np.logspace(-6, 6, 2000, dtype=np.float32)[:, None]
    screened_vs_plain(Q, scaled, 50, "ip", expect="any")
    screened_vs_plain(Q, scaled, 50, "cosine", expect="any")
    screened_vs_plain(Q[:, :1], np.ones((3000, 1), np.float32), 20, "ip", expect="any")  # d = 1, all ties


@needs_screen
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_screen_partial_settles_equal_plain(rng, metric):
    # rows around one direction (spread 0.03 / 0.1 of it): each query's buffer fills again
    # and again, and settle() rescores the largest bounds part by part (dozens of settles per
    # query at spread 0.03, k = 60, with int8 codes), keeping the exact top k in front of the
    # buffer.  A tenth of the rows are exact duplicates of others (ties by id across the exact
    # entries and the bounds), and exclusions remove rows from the buffers
    d, n = 64, 8000
    for spread in (0.03, 0.1):
        X = near_ties(rng, n, d, spread)
        X[n // 2:n // 2 + n // 10] = X[:n // 10]
        Q = np.concatenate([rng.standard_normal((6, d)), X[:2] + 0.01 * rng.standard_normal((2, d))])
        Q = Q.astype(np.float32)
        ex = [list(rng.integers(0, n, 30)) + [i, n // 2 + i] for i in range(len(Q))]
        for k in (60, 400):
            screened_vs_plain(Q, X, k, metric)
            screened_vs_plain(Q, X, k, metric, exclude=ex, num_threads=1)


def one_shot_auto_vs_plain(Q, X, k):
    """hn.topk in auto mode against the plain path, bit for bit; the screen counters before and after."""
    with screen_mode(0):
        ref = hn.topk(Q, X, k=k)
    with screen_mode(1):
        before = _core.screen_counts()
        got = hn.topk(Q, X, k=k)
        after = _core.screen_counts()
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0].view(np.uint32), ref[0].view(np.uint32))
    return before, after


@pytest.mark.skipif(not _core.screen_available(), reason="CPU without AVX-512 VNNI or BF16")
def test_auto_screen_estimate_skips_data_it_cannot_prune(rng):
    # a one-shot search in auto mode estimates, from a sample, the fraction of pairs the screen
    # would rescore before it builds its temporary copy: on near-ties it does not start, same results
    d, n, nq, k = 64, 4000, 128, 10
    X = near_ties(rng, n, d)
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    before, after = one_shot_auto_vs_plain(Q, X, k)
    assert after == before


def test_auto_screen_estimate_lets_prunable_data_screen(rng):
    # the same estimate on well-separated rows (clusters; queries near their centres) lets the
    # screen run, and its results are the plain path's
    d, n, nq, k = 64, 6000, 256, 10
    centres = rng.standard_normal((60, d)).astype(np.float32) * 4
    X = (centres[rng.integers(0, 60, n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)
    Q = (X[rng.integers(0, n, nq)] + 0.1 * rng.standard_normal((nq, d))).astype(np.float32)
    before, after = one_shot_auto_vs_plain(Q, X, k)
    if _core.screen_choice(d, k, n) is not None:
        assert after[0] - before[0] == 1 and after[1] == before[1]  # screened, nothing left over


def test_auto_screen_stops_where_it_does_not_prune(rng):
    # auto mode: a search whose rescoring passes the budget hands its remaining queries to the
    # plain path (same results), and the index's coded copy remembers it for later searches
    # (an index does not estimate before it builds its copy: it measures)
    d, n, nq, k = 64, 4000, 128, 10
    X = near_ties(rng, n, d)
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    start = _core.screen_mode()
    try:
        _core.set_screen_mode(0)
        ref = hn.topk(Q, X, k=k)
        _core.set_screen_mode(1)
        index = hn.DenseIndex(X)
        before = _core.screen_counts()
        got = index.search(Q, k=k)
        mid = _core.screen_counts()
        again = index.search(Q, k=k)
        after = _core.screen_counts()
    finally:
        _core.set_screen_mode(start)
    for res in (got, again):
        np.testing.assert_array_equal(res[1], ref[1])
        np.testing.assert_array_equal(res[0].view(np.uint32), ref[0].view(np.uint32))
    if _core.screen_choice(d, k, n) is None:  # no screen on this CPU (or HARDNEG_SIMD): nothing to count
        return
    assert mid[0] - before[0] == 1 and mid[1] - before[1] == 1  # started, stopped
    assert after == mid  # the second search did not try


def test_auto_screen_remembers_per_panel_size(rng):
    # a panel of a few queries is bound by memory and pays with more rescoring than a full one
    # (its own budget): a stop found by large panels leaves small ones free to try, a stop found
    # by a small panel holds for every larger one too.  Results equal the plain path's throughout.
    d, n, k = 64, 4000, 10
    X = near_ties(rng, n, d)  # the screen prunes nothing here: every try stops
    Q = rng.standard_normal((128, d)).astype(np.float32)
    with screen_mode(0):
        ref = hn.topk(Q, X, k=k)
    with screen_mode(1):
        counts, results = [], []
        big = hn.DenseIndex(X)
        for q in (Q, Q[:1], Q[:1], Q):  # large panels stop; one query still tries, stops, then not again
            counts.append(_core.screen_counts())
            results.append(big.search(q, k=k))
        counts.append(_core.screen_counts())
        small = hn.DenseIndex(X)  # searched one query at a time: it builds its copy at the 3rd search
        small_counts = [_core.screen_counts()]
        for q in (Q[:1], Q[:1], Q[:1], Q):
            small.search(q, k=k)
            small_counts.append(_core.screen_counts())
    for q, res in zip((Q, Q[:1], Q[:1], Q), results):
        m = len(q)
        np.testing.assert_array_equal(res[1], ref[1][:m])
        np.testing.assert_array_equal(res[0].view(np.uint32), ref[0][:m].view(np.uint32))
    if _core.screen_choice(d, k, n) is None:
        return
    tried = [b[0] - a[0] for a, b in zip(counts, counts[1:])]
    assert tried == [1, 1, 0, 0]
    assert [b[0] - a[0] for a, b in zip(small_counts, small_counts[1:])] == [0, 0, 1, 0]


@pytest.mark.skipif("int8" not in _core.screen_types(), reason="CPU without AVX-512 VNNI")
def test_auto_screen_above_32_mib_with_index_codes(rng):
    # an int8 coded copy past 32 MiB (530,000 rows of d = 8: 64 code bytes a row) is screened in
    # auto mode when an index keeps it: built by a search of 512+ queries, reused by any later one
    X = rng.standard_normal((530_000, 8)).astype(np.float32)
    Q = rng.standard_normal((512, 8)).astype(np.float32)
    Q[:3] = X[[5, 77_777, 529_999]]
    start = _core.screen_mode()
    try:
        _core.set_screen_mode(0)
        ref = hn.topk(Q[:40], X, k=10, exclude=[[5]] * 40)
        _core.set_screen_mode(1)
        index = hn.DenseIndex(X)
        before = _core.screen_counts()
        first = index.search(Q, k=10, exclude=[[5]] * 512)
        again = index.search(Q[:40], k=10, exclude=[[5]] * 40)
        after = _core.screen_counts()
    finally:
        _core.set_screen_mode(start)
    assert index.codes_nbytes > 32 << 20
    assert after[0] - before[0] == 2 and after[1] == before[1]
    for s, i in ((first[0][:40], first[1][:40]), again):
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_array_equal(s.view(np.uint32), ref[0].view(np.uint32))


@pytest.mark.skipif("int8" not in _core.screen_types(), reason="CPU without AVX-512 VNNI")
@pytest.mark.parametrize("data", ["random", "ties", "scaled"])
def test_one_shot_screen_above_32_mib_equals_plain(rng, data):
    # a one-shot hn.topk of 256+ queries screens a corpus whose int8 copy is past 32 MiB with a
    # temporary copy (530,000 rows of d = 8: 64 code bytes a row); on AMX tiles and on the VNNI
    # loop the results are the plain path's, ids and score bits, on random rows, rows repeated
    # 40 times (ties everywhere: ascending ids decide) and rows scaled by 1e-6 .. 1e6
    n, d = 530_000, 8
    base = rng.standard_normal((n if data != "ties" else n // 40 + 1, d)).astype(np.float32)
    X = np.ascontiguousarray(np.tile(base, (40, 1))[:n]) if data == "ties" else base
    if data == "scaled":
        X *= (10.0 ** rng.integers(-6, 7, n)).astype(np.float32)[:, None]
    Q = rng.standard_normal((300, d)).astype(np.float32)
    Q[:3] = X[[5, 77_777, n - 1]]
    excl = [[5, 6]] * 300
    ref = plain_topk(Q, X, 10, exclude=excl, metric="cosine")
    amx = _core.amx_enabled()
    try:
        with screen_mode(1):
            for on in ([True, False] if amx else [False]):
                _core.set_amx(on)
                before = _core.screen_counts()
                got = hn.topk(Q, X, k=10, exclude=excl, metric="cosine")
                assert _core.screen_counts()[0] - before[0] == 1  # screened
                assert_bit_equal(got, ref)
    finally:
        _core.set_amx(amx)


@needs_screen
def test_index_keeps_codes_from_its_third_search(rng, screen_kind):
    # an index searched again and again builds its coded copy at the third search, whatever the
    # batch size; from then on few-query searches screen with it, with the plain path's results
    X = rng.standard_normal((3000, 64)).astype(np.float32)
    Q = rng.standard_normal((2, 64)).astype(np.float32)
    ref = plain_topk(Q, X, 10, metric="cosine")
    with screen_mode(1):
        index = hn.DenseIndex(X, metric="cosine")
        counts = [_core.screen_counts()[0]]
        for _ in range(4):
            got = index.search(Q, k=10)
            counts.append(_core.screen_counts()[0])
            assert_bit_equal(got, ref)
    assert np.diff(counts).tolist() == [0, 0, 1, 1]  # searches 3 and 4 screened
    assert index.codes_nbytes > 0


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_auto_screen_estimate_over_segments_and_types(rng, metric):
    # auto over an index's segments (fp32 and fp16 ones, one of them tiny, a zero row among them:
    # the index builds, measures, remembers) and a one-shot search of the same rows (which estimates
    # from a sample first): whatever each decides, the results are the plain path's
    d, nq, k = 48, 160, 10
    centres = rng.standard_normal((40, d)).astype(np.float32) * 3
    parts = [(centres[rng.integers(0, 40, n)] + rng.standard_normal((n, d))).astype(np.float32)
             for n in (3000, 5, 2500)]
    parts[1][2] = 0.0
    Q = (parts[0][rng.integers(0, 3000, nq)] + 0.1 * rng.standard_normal((nq, d))).astype(np.float32)
    with screen_mode(0):
        ref = hn.DenseIndex(parts[0], metric=metric).add(parts[1].astype(np.float16)).add(parts[2]).search(Q, k=k)
    with screen_mode(1):
        one_shot = hn.topk(Q, np.concatenate([parts[0], parts[1].astype(np.float16).astype(np.float32), parts[2]]),
                           k=k, metric=metric)
        np.testing.assert_array_equal(one_shot[1], ref[1])
        index = hn.DenseIndex(parts[0], metric=metric).add(parts[1].astype(np.float16)).add(parts[2])
        for _ in range(3):  # the third search of an index may build its copy whatever the batch
            got = index.search(Q, k=k)
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_array_equal(got[0].view(np.uint32), ref[0].view(np.uint32))


@needs_screen
def test_auto_estimate_is_made_once_per_corpus_and_k(rng):
    """One-shot searches in a loop over query batches against one corpus sample it once: a later
    call with the same corpus and k reuses the estimate (and still decides from its own batch
    size); another k, or rows rewritten in place, estimate again.  Results are the plain path's."""
    X = rng.standard_normal((20000, 64)).astype(np.float32)
    batches = [rng.standard_normal((128, 64)).astype(np.float32) for _ in range(3)]
    with screen_mode(1):
        reports = []
        for Q in batches:
            got = hn.topk(Q, X, k=10)
            reports.append(_core.screen_last())
            assert_bit_equal(got, plain_topk(Q, X, 10))
        assert [r["estimate_reused"] for r in reports] == [False, True, True]
        assert reports[0]["estimate_seconds"] > 0.0 and reports[1]["estimate_seconds"] == 0.0
        assert reports[1]["estimate"] == reports[0]["estimate"]
        hn.topk(batches[0], X, k=20)  # another k: its own estimate
        assert _core.screen_last()["estimate_reused"] is False
        X[0] += 1.0  # the same array, a sampled row rewritten: estimated again
        got = hn.topk(batches[0], X, k=10)
        assert _core.screen_last()["estimate_reused"] is False
        assert_bit_equal(got, plain_topk(batches[0], X, 10))
        for i in range(8):  # eight other corpora push it out of the memo (8 entries)
            hn.topk(batches[0], X[i * 2000:(i + 1) * 2000 + 5000], k=10)
        hn.topk(batches[0], X, k=10)
        assert _core.screen_last()["estimate_reused"] is False


@needs_screen
def test_screen_last_reports_the_decision(rng):
    """_core.screen_last(): what the last search that reached the screen's decision did."""
    X = rng.standard_normal((20000, 64)).astype(np.float32)
    Q = rng.standard_normal((128, 64)).astype(np.float32)
    with screen_mode(2):  # forced: no estimate; every query screened
        hn.topk(Q, X, k=10)
        r = _core.screen_last()
    assert r["screened"] is True and r["estimate"] is None and r["estimate_seconds"] == 0.0
    assert 10 / 20000 <= r["rescored"] <= 1.0  # at least the k rows of each query are rescored
    with screen_mode(1):  # auto, one-shot: the estimate decides, and says so
        got = hn.topk(Q, X, k=10)
        r = _core.screen_last()
    assert 0.0 <= r["estimate"] <= 1.0 and r["estimate_seconds"] > 0.0
    assert (r["rescored"] is not None) == r["screened"]
    assert_bit_equal(got, plain_topk(Q, X, 10))

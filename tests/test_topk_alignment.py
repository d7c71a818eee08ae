"""The fp32 kernel's aligned copy of misaligned corpus blocks (cpp/topk.cpp, Panel::process).

From 16 queries per panel, a corpus block whose rows do not start on a 64-byte line is
copied into aligned rows before scoring.  The copy moves bytes only, so every score must
keep its bits: these tests compare, bit for bit, the same search on an aligned corpus, a
corpus shifted off the line, strided rows, a single query against the whole batch (a panel
of 1 never copies), and half-precision corpora.
"""
import numpy as np
import pytest

import hardneg as hn
from hardneg import _core


def _at_offset(a: np.ndarray, offset_bytes: int) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts ``offset_bytes`` past a 64-byte line."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset_bytes
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 64 == offset_bytes % 64
    return out


@pytest.fixture(autouse=True)
def _plain_path():
    # the aligned copy lives in the plain fp32 path; the screen has its own coded copy
    start = _core.screen_mode()
    _core.set_screen_mode(0)
    yield
    _core.set_screen_mode(start)


@pytest.mark.parametrize("d", [1, 3, 16, 17, 100, 384, 768])
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_misaligned_corpus_keeps_every_bit(rng, d, metric):
    X = rng.standard_normal((700, d)).astype(np.float32)
    Q = rng.standard_normal((40, d)).astype(np.float32)
    ref_s, ref_i = hn.topk(Q, _at_offset(X, 0), k=25, metric=metric)
    for off in (4, 16, 48):
        s, i = hn.topk(_at_offset(Q, off), _at_offset(X, off), k=25, metric=metric)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(s, ref_s)
    # one query at a time never copies: the same bits as the batch that does
    for r in (0, 17, 39):
        s1, i1 = hn.topk(Q[r:r + 1], _at_offset(X, 16), k=25, metric=metric)
        np.testing.assert_array_equal(i1[0], ref_i[r])
        np.testing.assert_array_equal(s1[0], ref_s[r])


def test_strided_rows_and_ties(rng):
    # small integers: every score exact, many ties, ids in ascending order among equals
    X = rng.integers(-2, 3, size=(900, 24)).astype(np.float32)
    Q = rng.integers(-2, 3, size=(64, 24)).astype(np.float32)
    wide = np.zeros((900, 40), np.float32)
    wide[:, 3:27] = X
    view = wide[:, 3:27]  # rows 160 bytes apart, starting 12 bytes into them
    s, i = hn.topk(Q, view, k=50)
    rs, ri = hn.topk(Q, np.ascontiguousarray(X), k=50)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs)
    key = Q.astype(np.float64) @ X.T.astype(np.float64)
    order = np.lexsort((np.broadcast_to(np.arange(900), key.shape), -key), axis=1)[:, :50]
    np.testing.assert_array_equal(i, order)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_corpus_misaligned(rng, dtype):
    X = rng.integers(-3, 4, size=(600, 72)).astype(np.float32)
    Q = rng.integers(-3, 4, size=(33, 72)).astype(np.float32)
    rs, ri = hn.topk(Q, X, k=20)
    if dtype == "float16":
        Xh = _at_offset(X.astype(np.float16), 16)
        s, i = hn.topk(Q, Xh, k=20)
    else:
        torch = pytest.importorskip("torch")
        Xb = torch.from_numpy(X).bfloat16()[:, 1:]  # rows 71 elements, 142 bytes apart
        s, i = hn.topk(torch.from_numpy(Q[:, 1:].copy()), Xb, k=20)
        s, i = s.numpy(), i.numpy()
        rs, ri = hn.topk(np.ascontiguousarray(Q[:, 1:]), np.ascontiguousarray(X[:, 1:]), k=20)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs)

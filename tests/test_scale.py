"""Out-of-core streaming (hardneg.ooc) and the faiss backend.

Streaming must equal the in-memory exact search bit for bit (scores and ids, ties by id across block
boundaries, exclusions, padding); resident memory must stay about one block (slow test, subprocess).
The faiss backend must follow the exact path's conventions (padding, exclusions, ordering) and give the
exact answer with a brute-force ("Flat") index."""
import contextlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import hardneg as hn
from hardneg import _core
from hardneg.ooc import OutOfCoreIndex, block_rows, topk_memmap

METRICS = ["ip", "cosine", "l2"]


def _data(n=5000, d=24, nq=17, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = (np.round(rng.standard_normal((n, d)) * 2) / 2).astype(dtype)  # coarse: many exact ties
    b = block_rows(d, np.dtype(dtype).itemsize, 1)  # smallest block: 1536 rows
    X[[r for r in (3, b - 1, b, 2 * b + 7, n - 1) if r < n]] = X[3]  # duplicates on both sides of block boundaries
    X[10] = 0  # zero row (cosine scores it 0)
    Q = rng.standard_normal((nq, d)).astype(dtype)
    Q[0] = X[3]
    Q[1] = 0
    return X, Q


def _ex(nq, n):
    rng = np.random.default_rng(1)
    return [sorted(rng.choice(n, size=int(rng.integers(0, 40)), replace=False).tolist()) for _ in range(nq)]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_from_npy_equals_in_memory(tmp_path, metric, dtype):
    X, Q = _data(dtype=dtype)
    p = tmp_path / "c.npy"
    np.save(p, X)
    ex = _ex(len(Q), len(X))
    ex[0] = [3]
    for k in (1, 10, 60):
        ref = hn.topk(Q, X, k=k, metric=metric, exclude=ex)
        idx = hn.DenseIndex.from_npy(p, metric=metric, block_bytes=1)  # 1536-row blocks: 4 blocks
        assert isinstance(idx, hn.DenseIndex) and isinstance(idx, OutOfCoreIndex)
        assert len(idx) == len(X) and idx.dim == X.shape[1]
        got = idx.search(Q, k=k, exclude=ex)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])
    # the duplicates of row 3 straddle block boundaries and come back in id order
    s, i = hn.DenseIndex.from_npy(p, metric="l2", block_bytes=1).search(Q[:1], k=5)
    b = block_rows(X.shape[1], X.itemsize, 1)
    assert i[0].tolist() == [3, b - 1, b, 2 * b + 7, len(X) - 1]


def test_from_npy_default_block_and_mmap_false(tmp_path):
    X, Q = _data(n=3000)
    p = tmp_path / "c.npy"
    np.save(p, X)
    ref = hn.topk(Q, X, k=7, metric="cosine")
    a = hn.DenseIndex.from_npy(p, metric="cosine")
    b = hn.DenseIndex.from_npy(p, metric="cosine", mmap=False)
    assert not isinstance(b, OutOfCoreIndex)
    for idx in (a, b):
        s, i = idx.search(Q, k=7)
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_array_equal(s, ref[0])


def test_from_npy_float64_padding_add_and_torch(tmp_path):
    X, Q = _data(n=2000)
    p = tmp_path / "c64.npy"
    np.save(p, X.astype(np.float64))
    idx = hn.DenseIndex.from_npy(p, block_bytes=1)
    s, i = idx.search(Q, k=2100, exclude=[[0, 1]] * len(Q))
    rs, ri = hn.topk(Q, X, k=2100, exclude=[[0, 1]] * len(Q))
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(s, rs)
    assert (i[:, -102:] == -1).all() and np.isneginf(s[:, -102:]).all()
    # add keeps new rows in memory, ids continue
    extra = np.ascontiguousarray(X[:50] * 2)
    idx.add(extra)
    assert len(idx) == 2050
    ref = hn.topk(Q, np.vstack([X, extra]), k=30)
    got = idx.search(Q, k=30)
    np.testing.assert_array_equal(got[1], ref[1])
    torch = pytest.importorskip("torch")
    st, it = idx.search(torch.from_numpy(Q), k=30)
    assert isinstance(it, torch.Tensor)
    np.testing.assert_array_equal(it.numpy(), ref[1])


@pytest.mark.parametrize("metric", METRICS)
def test_topk_on_memmap_streams_and_matches(tmp_path, metric):
    X, Q = _data()
    p = tmp_path / "c.npy"
    np.save(p, X)
    ex = _ex(len(Q), len(X))
    ref = hn.topk(Q, X, k=25, metric=metric, exclude=ex)
    for mode in ("r", "c", "r+"):
        mm = np.load(p, mmap_mode=mode)
        assert isinstance(mm, np.memmap)
        got = hn.topk(Q, mm, k=25, metric=metric, exclude=ex)  # default blocks
        np.testing.assert_array_equal(got[1], ref[1])
        got = topk_memmap(Q, mm, k=25, metric=metric, exclude=ex, block_bytes=1)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])
    # a row slice of a memmap (offset inside the mapping) and a raw np.memmap with an offset
    mm = np.load(p, mmap_mode="r")[1000:4000]
    got = topk_memmap(Q, mm, k=9, metric=metric, block_bytes=1)
    ref = hn.topk(Q, X[1000:4000], k=9, metric=metric)
    np.testing.assert_array_equal(got[1], ref[1])
    raw = tmp_path / "raw.bin"
    X.tofile(raw)
    mm = np.memmap(raw, dtype=np.float32, mode="r", offset=X.shape[1] * 4 * 7, shape=(len(X) - 7, X.shape[1]))
    got = topk_memmap(Q, mm, k=9, metric=metric, block_bytes=1)
    np.testing.assert_array_equal(got[1], hn.topk(Q, X[7:], k=9, metric=metric)[1])


def test_as_index_for_mining(tmp_path):
    from hardneg.ooc import as_index

    X, Q = _data()
    p = tmp_path / "c.npy"
    np.save(p, X)
    ref = hn.topk(Q, X, k=11, metric="l2", exclude=_ex(len(Q), len(X)))
    for src in (p, str(p), np.load(p, mmap_mode="r"), X):
        idx = as_index(src, "l2", block_bytes=1)
        assert isinstance(idx, OutOfCoreIndex) == (src is not X)
        got = idx.search(Q, k=11, exclude=_ex(len(Q), len(X)))
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])
        assert as_index(idx) is idx


# --------------------------------------------------------------------------- the screen on a file
needs_screen = pytest.mark.skipif(not _core.screen_available(), reason="CPU without AVX-512 VNNI or BF16")


@contextlib.contextmanager
def _screen(mode, kind="auto"):
    """The screen in `mode` (0 off, 1 auto, 2 forced) and codes `kind` inside the block, restored after."""
    start, start_kind = _core.screen_mode(), _core.screen_type()
    _core.set_screen_mode(mode)
    _core.set_screen_type(kind)
    try:
        yield
    finally:
        _core.set_screen_mode(start)
        _core.set_screen_type(start_kind)


def _plain(Q, X, k, **kw):
    with _screen(0):
        return hn.topk(Q, X, k=k, **kw)


@needs_screen
@pytest.mark.parametrize("kind", ["int8", "bf16"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ooc_screen_keeps_codes_and_equals_plain(tmp_path, metric, dtype, kind):
    if kind not in _core.screen_types():
        pytest.skip(f"CPU without the {kind} screen")
    X, Q = _data(n=6000, d=40, nq=33, dtype=dtype)  # coarse values: many exact ties; duplicates, a zero row
    p = tmp_path / "c.npy"
    np.save(p, X)
    ex = _ex(len(Q), len(X))
    ex[0] = [3]
    with _screen(2, kind):  # forced: every search screens (auto decides by size, tested below)
        for src in (p, np.load(p, mmap_mode="r")):
            idx = OutOfCoreIndex(src, metric=metric, block_bytes=1)
            assert idx.codes_nbytes == 0
            for k in (1, 10, 60, 7000):  # k > N pads with id -1
                ref = _plain(Q, X, k, metric=metric, exclude=ex)
                got = idx.search(Q, k=k, exclude=ex)
                assert _core.screen_last()["screened"]
                np.testing.assert_array_equal(got[1], ref[1])
                np.testing.assert_array_equal(got[0], ref[0])
            assert 0 < idx.codes_nbytes and idx.nbytes >= idx.codes_nbytes  # the copy is kept, in memory
            # rows added in memory extend the kept copy; ids continue after the file's rows
            extra = np.ascontiguousarray(X[:300] * 2)
            idx.add(extra)
            ref = _plain(Q, np.vstack([X, extra]), 25, metric=metric, exclude=ex)
            got = idx.search(Q, k=25, exclude=ex)
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_array_equal(got[0], ref[0])


@needs_screen
@pytest.mark.parametrize("metric", METRICS)
def test_ooc_screen_hands_left_queries_to_the_stream(tmp_path, monkeypatch, metric):
    """A query whose norm the screen's bounds cannot hold sends its panel to the plain path:
    the screen leaves those queries (a range in the middle), which are streamed from the file
    with their own exclusions; everything equals the plain path."""
    import hardneg.ooc as ooc

    X, Q = _data(n=4000, d=16, nq=300)
    Q[200] *= 1e18  # squared norm ~1e37, above the screen's 2^100: its panel runs the plain way
    p = tmp_path / "c.npy"
    np.save(p, X)
    streamed = []
    stream = ooc._stream
    monkeypatch.setattr(ooc, "_stream", lambda q, *a: streamed.append(len(q)) or stream(q, *a))
    ex = _ex(len(Q), len(X))
    ref = _plain(Q, X, 20, metric=metric, exclude=ex)
    with _screen(2):
        got = OutOfCoreIndex(p, metric=metric).search(Q, k=20, exclude=ex)
        assert _core.screen_last()["screened"]
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])
    if metric != "cosine":  # (cosine screens the unit query: nothing is left)
        assert len(streamed) == 1 and 0 < streamed[0] < len(Q)  # one panel's queries, and only those


@needs_screen
def test_ooc_screen_ties(tmp_path):
    """Constant rows for half the queries: every such row scores the same, the screen settles
    those queries exactly, and the result equals the plain path (ties by ascending id)."""
    rng = np.random.default_rng(3)
    X = np.zeros((5000, 16), np.float32)
    X[:, 0] = 1.0
    X[::7] = rng.standard_normal((len(X[::7]), 16)).astype(np.float32)
    Q = rng.standard_normal((40, 16)).astype(np.float32)
    Q[::2, 1:] = 0  # these score every constant row the same
    p = tmp_path / "t.npy"
    np.save(p, X)
    with _screen(2):
        for metric in METRICS:
            ref = _plain(Q, X, 50, metric=metric)
            got = OutOfCoreIndex(p, metric=metric).search(Q, k=50)
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_array_equal(got[0], ref[0])


@needs_screen
def test_ooc_screen_auto_above_the_old_line(tmp_path):
    """The default (auto) screen on a file whose int8 copy is above 32 MiB: a search of 256
    queries builds the copy and keeps it; results equal the plain path."""
    rng = np.random.default_rng(5)
    n, d = 90_000, 384  # 33 M int8 codes, a 132 MB file
    X = rng.standard_normal((n, d), dtype=np.float32)
    p = tmp_path / "big.npy"
    np.save(p, X)
    Q = rng.standard_normal((256, d), dtype=np.float32)
    try:
        with _screen(1):
            idx = hn.DenseIndex.from_npy(p, metric="cosine")
            got = idx.search(Q, k=100, exclude=[[0, 1, 2]] * len(Q))
            assert _core.screen_last()["screened"] and idx.codes_nbytes > 32 << 20
            again = idx.search(Q[:8], k=100)  # a few queries reuse the kept copy
            assert _core.screen_last()["screened"]
        ref = _plain(Q, X, 100, metric="cosine", exclude=[[0, 1, 2]] * len(Q))
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(again[1], _plain(Q[:8], X, 100, metric="cosine")[1])
        off = hn.DenseIndex.from_npy(p, metric="cosine", screen=False)
        np.testing.assert_array_equal(off.search(Q, k=100, exclude=[[0, 1, 2]] * len(Q))[1], ref[1])
        assert off.codes_nbytes == 0
    finally:
        p.unlink()  # pytest keeps old tmp dirs: do not leave 132 MB behind


def test_ooc_screen_option_and_pickle(tmp_path):
    import pickle

    X, Q = _data(n=3000)
    p = tmp_path / "c.npy"
    np.save(p, X)
    with pytest.raises(TypeError, match="screen"):
        OutOfCoreIndex(p, screen="yes")
    idx = hn.DenseIndex.from_npy(p, metric="l2")
    assert "screen=True" in repr(idx)
    with _screen(2):
        ref = idx.search(Q, k=9)
        back = pickle.loads(pickle.dumps(idx))
        assert back.codes_nbytes == 0
        got = back.search(Q, k=9)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])


def test_ooc_bad_input(tmp_path):
    X, Q = _data(n=100)
    p = tmp_path / "c.npy"
    np.save(p, X)
    np.save(tmp_path / "v.npy", X[0])
    with pytest.raises(ValueError, match="2-D"):
        hn.DenseIndex.from_npy(tmp_path / "v.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(X))
    with pytest.raises(ValueError, match="Fortran"):
        hn.DenseIndex.from_npy(tmp_path / "f.npy")
    np.save(tmp_path / "i.npy", X.astype(np.int32))
    with pytest.raises(TypeError, match="dtype"):
        hn.DenseIndex.from_npy(tmp_path / "i.npy")
    np.save(tmp_path / "e.npy", X[:0])
    with pytest.raises(ValueError, match="empty"):
        hn.DenseIndex.from_npy(tmp_path / "e.npy")
    raw = open(p, "rb").read()
    (tmp_path / "t.npy").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match="truncated"):
        hn.DenseIndex.from_npy(tmp_path / "t.npy")
    (tmp_path / "junk.npy").write_bytes(b"not a npy file at all")
    with pytest.raises(ValueError, match="npy"):
        hn.DenseIndex.from_npy(tmp_path / "junk.npy")
    with pytest.raises(FileNotFoundError):
        hn.DenseIndex.from_npy(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="block_bytes"):
        hn.DenseIndex.from_npy(p, block_bytes=0)
    idx = hn.DenseIndex.from_npy(p)
    with pytest.raises(ValueError, match="dimension"):
        idx.search(Q[:, :5], k=3)
    with pytest.raises(ValueError, match="exclude"):
        idx.search(Q, k=3, exclude=[[100]] * len(Q))
    with pytest.raises(ValueError, match="metric"):
        hn.DenseIndex.from_npy(p, metric="dot")
    with pytest.raises(ValueError, match="backend"):
        idx.search(Q, k=3, backend="torch")
    bad = X.copy()
    bad[77, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN"):
        hn.DenseIndex.from_npy(tmp_path / "nan.npy").search(Q, k=3)


RSS_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, hardneg as hn
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    path, mode = sys.argv[1], sys.argv[2]
    Q = np.random.default_rng(1).standard_normal((32, 256)).astype(np.float32)
    ref = hn.topk(Q, np.asarray(np.load(path, mmap_mode="r")[:4096]), k=5)
    base = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM)
    if mode == "index":
        s, i = hn.DenseIndex.from_npy(path, block_bytes=32 << 20).search(Q, k=5)
    else:
        from hardneg.ooc import topk_memmap
        s, i = topk_memmap(Q, np.load(path, mmap_mode="r"), k=5, block_bytes=32 << 20)
    print((status("VmHWM:") - base) / 2**20, int(i.max()))
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["index", "memmap"])
def test_streaming_keeps_resident_memory_bounded(tmp_path, mode):
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak RSS")
    n, d = 524288, 256  # 512 MiB of float32
    p = tmp_path / "big.npy"
    m = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    for r in range(0, n, 32768):
        m[r:r + 32768] = rng.standard_normal((32768, d), dtype=np.float32)
    m.flush()
    del m
    try:
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(p), mode], capture_output=True, text=True,
                             timeout=300)
    finally:
        p.unlink()  # pytest keeps old tmp dirs: do not leave 512 MiB behind
    assert out.returncode == 0, out.stderr
    extra_mib, max_id = out.stdout.split()
    assert int(max_id) > 4096  # the whole file was searched
    assert float(extra_mib) < 200, f"streaming search grew the resident set by {extra_mib} MiB"


# --------------------------------------------------------------------------- faiss backend



def _need_faiss():
    return pytest.importorskip("faiss")


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_flat_equals_exact(metric):
    _need_faiss()
    rng = np.random.default_rng(3)
    X = rng.standard_normal((1500, 20)).astype(np.float32)
    Q = rng.standard_normal((13, 20)).astype(np.float32)
    ex = _ex(len(Q), len(X))
    idx = hn.DenseIndex(X, metric, backend="faiss", index="Flat")
    assert isinstance(idx, hn.DenseIndex) and len(idx) == 1500 and idx.dim == 20
    s, i = idx.search(Q, k=40, exclude=ex)
    rs, ri = hn.topk(Q, X, k=40, metric=metric, exclude=ex)
    assert (i == ri).mean() > 0.99  # faiss sums in another order: rare near-ties may swap
    np.testing.assert_allclose(s, rs, rtol=1e-4, atol=1e-4)
    for q in range(len(Q)):
        assert not set(i[q].tolist()) & set(ex[q])
    # best first, ties by ascending id
    key = s if metric == "l2" else -s
    assert (np.diff(key, axis=1) >= 0).all()
    # padding: k > eligible rows
    s, i = idx.search(Q, k=1600, exclude=ex)
    for q in range(len(Q)):
        m = 1500 - len(ex[q])
        assert (i[q, :m] >= 0).all() and (i[q, m:] == -1).all()
        assert np.all(s[q, m:] == (np.inf if metric == "l2" else -np.inf))


def test_faiss_ivf_hnsw_and_add():
    _need_faiss()
    rng = np.random.default_rng(4)
    X = rng.standard_normal((4000, 16)).astype(np.float32)
    Q = rng.standard_normal((10, 16)).astype(np.float32)
    rs, ri = hn.topk(Q, X, k=10)
    ivf = hn.DenseIndex(X, "ip", backend="faiss", index="IVF16,Flat", nprobe=16)  # all lists: exact
    assert (ivf.search(Q, k=10)[1] == ri).mean() > 0.99
    few = hn.DenseIndex(X, "ip", backend="faiss", index="IVF16,Flat", nprobe=1)
    s, i = few.search(Q, k=3000)  # one list holds fewer than 3000 rows: padded
    assert (i == -1).any() and np.isneginf(s[i == -1]).all()
    hnsw = hn.DenseIndex(X, "l2", backend="faiss", index="HNSW32", ef_search=128)
    _, hi = hnsw.search(Q, k=10, exclude=ri[:, :3])
    assert not np.isin(hi, ri[:, :3]).any(axis=1).any()
    ivf.add(X[:5] * 10)
    assert len(ivf) == 4005
    _, i = ivf.search(Q, k=10)
    assert ((i >= 4000) & (i < 4005)).any()
    torch = pytest.importorskip("torch")
    st, it = ivf.search(torch.from_numpy(Q), k=4)
    assert isinstance(it, torch.Tensor) and it.dtype == torch.int64


def test_faiss_bad_input(monkeypatch):
    _need_faiss()
    X = np.random.default_rng(5).standard_normal((300, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="'IVF64,Bogus'"):
        hn.DenseIndex(X, "ip", backend="faiss", index="IVF64,Bogus")
    with pytest.raises(ValueError, match="could not be trained"):
        hn.DenseIndex(X, "ip", backend="faiss", index="IVF4096,Flat")
    with pytest.raises(ValueError, match="nprobe"):
        hn.DenseIndex(X, "ip", backend="faiss", index="HNSW8", nprobe=4)
    with pytest.raises(ValueError, match="nprobe"):
        hn.DenseIndex(X, "ip", backend="faiss", index="IVF4,Flat", nprobe=0)
    with pytest.raises(ValueError, match="backend"):
        hn.DenseIndex(X, "ip", backend="annoy")
    idx = hn.DenseIndex(X, "ip", backend="faiss")
    with pytest.raises(ValueError, match="dimension"):
        idx.search(X[:, :4], k=2)
    with pytest.raises(ValueError, match="exclude"):
        idx.search(X[:2], k=2, exclude=[[300], []])
    with pytest.raises(ValueError, match="NaN"):
        hn.DenseIndex(np.full((3, 8), np.nan, np.float32), "ip", backend="faiss")
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        hn.DenseIndex(X, "ip", backend="faiss", index="Flat")


def test_default_backend_is_exact():
    X = np.eye(3, dtype=np.float32)
    from hardneg.exact import ExactIndex

    idx = hn.DenseIndex(X)
    # DenseIndex builds the exact index (a sibling of the others); isinstance holds for all of them
    assert type(idx) is ExactIndex and isinstance(idx, hn.DenseIndex)
    assert type(hn.DenseIndex(X, "ip", backend="exact")) is ExactIndex


def test_index_classes_are_siblings_of_one_protocol(tmp_path):
    import inspect
    import pickle

    from hardneg._faiss import FaissIndex
    from hardneg.exact import ExactIndex
    from hardneg.index_base import SearchIndex

    X = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    np.save(tmp_path / "c.npy", X)
    exact = hn.DenseIndex(X, "cosine")
    ooc = hn.DenseIndex.from_npy(tmp_path / "c.npy", "cosine")
    made = [exact, ooc]
    try:
        import faiss  # noqa: F401
        made.append(hn.DenseIndex(X, "cosine", backend="faiss"))
    except ImportError:
        pass
    for idx in made:
        assert isinstance(idx, hn.DenseIndex) and isinstance(idx, SearchIndex)
        assert type(idx).__mro__[1] is SearchIndex  # siblings: none derives from another index class
        assert (len(idx), idx.dim, idx.metric, idx.ntotal) == (40, 6, "cosine", 40) and idx.nbytes >= 0
        s, i = idx.search(X[:3], k=4)
        np.testing.assert_array_equal(i, hn.topk(X[:3], X, k=4, metric="cosine")[1])
    assert not issubclass(ExactIndex, FaissIndex) and not issubclass(FaissIndex, ExactIndex)
    assert not isinstance(X, hn.DenseIndex)
    assert list(inspect.signature(hn.DenseIndex).parameters)[:4] == ["corpus", "metric", "num_threads", "backend"]
    with pytest.raises(TypeError, match="faiss options"):
        hn.DenseIndex(X, nprobe=4)
    # picklable (the coded copy is not pickled; it is rebuilt on demand)
    exact.search(X, k=3)
    back = pickle.loads(pickle.dumps(exact))
    assert back.codes_nbytes == 0
    np.testing.assert_array_equal(back.search(X, k=3)[1], exact.search(X, k=3)[1])
    # nbytes: rows + norms, plus the coded copy once built
    assert exact.nbytes == X.nbytes + 4 * 40 + exact.codes_nbytes
    assert ooc.nbytes == 0 and ooc.add(X[:2]).nbytes == 2 * 6 * 4 + 2 * 4

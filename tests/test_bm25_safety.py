"""BM25: nothing lost, nothing silently wrong.

Saving is atomic (a fault half-way leaves the old index loadable and equal; saving an index
into the directory it was memory-mapped from is safe), failed index()/add() calls leave the
object as it was, parameters that make the formulas meaningless are refused at construction,
and a huge k never allocates more than the padded output.
"""
import json

import numpy as np
import pytest

import hardneg as hn
import hardneg.bm25 as bm25_mod
from hardneg.bm25 import BM25

WORDS = [f"w{i}" for i in range(300)]


def corpus(n, seed=0, lo=3, hi=40):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi)), p=p)) for _ in range(n)]


QUERIES = ["w0 w5 w17", "w3 w3 w100", "w250 w1", "nothing here"]


def results(bm, k=20):
    return bm.search(QUERIES, k=k)


def assert_same(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


# ------------------------------------------------------------------------------------------ save
@pytest.mark.parametrize("n_docs", [20, 20000])
@pytest.mark.parametrize("mmap", [True, False])
def test_load_then_save_into_the_same_directory(tmp_path, n_docs, mmap):
    """A loaded index (memory-mapped by default) saved back into its own directory stays
    intact, loads again and gives the same results (used to give garbage or an OSError)."""
    d = tmp_path / "ix"
    bm = BM25(stemmer=None).index(corpus(n_docs))
    ref = results(bm)
    bm.save(d)
    b2 = BM25.load(d, mmap=mmap)
    b2.save(d)
    assert_same(results(b2), ref)  # the mapped arrays are still valid after the swap
    b3 = BM25.load(d, mmap=mmap)
    assert_same(results(b3), ref)
    b3.add(corpus(5, seed=1))
    b3.save(d)  # and after an add (arrays copied into memory)
    b4 = BM25.load(d)
    assert_same(results(b4), results(b3))
    assert not [p.name for p in tmp_path.iterdir() if p.name != "ix"], "temporary directories left behind"


@pytest.mark.parametrize("fail_after", [0, 1, 3])
def test_save_fault_half_way_keeps_the_old_index(tmp_path, monkeypatch, fail_after):
    d = tmp_path / "ix"
    old = BM25(stemmer=None).index(corpus(300))
    old.save(d)
    ref = results(old)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    new = BM25(stemmer=None).index(corpus(500, seed=3))
    real = bm25_mod._write_array
    calls = []

    def failing(path, a):
        if len(calls) == fail_after:
            raise OSError("disk full (injected)")
        calls.append(path)
        real(path, a)

    monkeypatch.setattr(bm25_mod, "_write_array", failing)
    with pytest.raises(OSError, match="injected"):
        new.save(d)
    monkeypatch.setattr(bm25_mod, "_write_array", real)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    for mmap in (True, False):
        assert_same(results(BM25.load(d, mmap=mmap)), ref)
    assert [p.name for p in tmp_path.iterdir()] == ["ix"], "temporary directory left behind"
    new.save(d)  # and a later save succeeds
    assert_same(results(BM25.load(d)), results(new))


def test_save_fault_while_loaded_from_the_same_directory(tmp_path, monkeypatch):
    d = tmp_path / "ix"
    BM25(stemmer=None).index(corpus(2000)).save(d)
    bm = BM25.load(d)  # mmap
    ref = results(bm)
    real = bm25_mod._write_array
    calls = []

    def failing(path, a):
        if calls:
            raise OSError("injected")
        calls.append(path)
        real(path, a)

    monkeypatch.setattr(bm25_mod, "_write_array", failing)
    with pytest.raises(OSError):
        bm.save(d)
    assert_same(results(bm), ref)
    assert_same(results(BM25.load(d)), ref)


def test_save_keeps_other_files_of_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    bm = BM25(stemmer=None).index(corpus(50))
    bm.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert_same(results(BM25.load(tmp_path)), results(bm))
    bm.save(tmp_path)  # again, over its own files
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="not a directory"):
        bm.save(tmp_path / "notes.txt")


def test_save_into_a_new_nested_directory(tmp_path):
    bm = BM25(stemmer=None).index(corpus(30))
    bm.save(tmp_path / "a" / "b" / "ix")
    assert_same(results(BM25.load(tmp_path / "a" / "b" / "ix")), results(bm))
    meta = json.loads((tmp_path / "a" / "b" / "ix" / "bm25.json").read_text())
    assert meta["num_docs"] == 30


# ------------------------------------------------------------------------------- all or nothing
def snapshot(bm):
    return (bm.num_docs, dict(bm.vocabulary), results(bm), bm.score(QUERIES[:2], [[0, 1], [2, 3]]))


def assert_snapshot(bm, snap):
    n, vocab, res, sc = snap
    assert bm.num_docs == n
    assert bm.vocabulary == vocab
    assert_same(results(bm), res)
    np.testing.assert_array_equal(bm.score(QUERIES[:2], [[0, 1], [2, 3]]), sc)


def test_failed_index_keeps_the_previous_index():
    bm = BM25(stemmer=None).index(corpus(40))
    snap = snapshot(bm)
    with pytest.raises(TypeError):
        bm.index(["a fine text", None, "another"])
    assert len(bm) == 40
    assert_snapshot(bm, snap)
    with pytest.raises(ValueError):
        bm.index(["the and of"])  # no tokens after stopwords
    assert_snapshot(bm, snap)


@pytest.mark.parametrize("form", ["text", "tokens"])
def test_failed_add_leaves_the_index_as_it_was(monkeypatch, form):
    """A fault injected after the new words were learnt (before the postings are merged)
    leaves documents, vocabulary, searches and scores exactly as before; a later add works."""
    docs = corpus(60)
    new = ["brandnew w1 w2 zzzword", "another novelword w3"]
    if form == "tokens":
        docs = [d.split() for d in docs]
        new = [d.split() for d in new]
    bm = BM25(stemmer=None).index(docs)
    snap = snapshot(bm)
    real = BM25._ids

    def failing(self, *a, **kw):
        out = real(self, *a, **kw)
        if a[1]:  # create=True: the add's own learning is done
            raise RuntimeError("injected after learning")
        return out

    monkeypatch.setattr(BM25, "_ids", failing)
    with pytest.raises(RuntimeError, match="injected"):
        bm.add(new)
    monkeypatch.setattr(BM25, "_ids", real)
    assert_snapshot(bm, snap)
    assert "brandnew" not in bm.vocabulary and "novelword" not in bm.vocabulary
    # the queries still see the new words as unknown, and a retried add equals a fresh index
    bm.add(new)
    fresh = BM25(stemmer=None).index(docs + new)
    assert_same(results(bm), results(fresh))
    assert bm.vocabulary == fresh.vocabulary


def test_failed_add_with_bad_item_keeps_the_index():
    bm = BM25(stemmer=None).index(corpus(30))
    snap = snapshot(bm)
    with pytest.raises(TypeError):
        bm.add(["fine w1 newword", 3])
    assert_snapshot(bm, snap)
    with pytest.raises(TypeError):
        bm.add([["ok", "tokens"], ["bad", 5]])
    assert_snapshot(bm, snap)


# ---------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("kwargs, name", [
    (dict(k1=1e100), "k1"), (dict(k1=1e19), "k1"), (dict(k1=-1.0), "k1"), (dict(k1=float("inf")), "k1"),
    (dict(b=1.0000001), "b"), (dict(b=-0.1), "b"), (dict(b=float("nan")), "b"),
    (dict(method="bm25+", delta=1e39), "delta"), (dict(method="bm25l", delta=1e31), "delta"),
    (dict(method="bm25+", delta=-1.0), "delta"), (dict(delta=float("nan")), "delta"),
])
def test_meaningless_parameters_refused_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BM25(**kwargs)


def test_bm25l_zero_k1_and_delta_refused_naming_both():
    with pytest.raises(ValueError, match=r"k1.*delta|delta.*k1"):
        BM25(method="bm25l", k1=0, delta=0)


@pytest.mark.parametrize("method", bm25_mod.METHODS)
@pytest.mark.parametrize("k1, b, delta", [(0.0, 0.0, 0.5), (0.0, 1.0, 1e30), (1e18, 0.75, 0.0),
                                          (1e18, 1.0, 1e30), (1.2, 0.75, 0.0), (0.0, 0.5, 1e-3)])
def test_extreme_valid_parameters_give_finite_scores(method, k1, b, delta):
    """The bounds are the formulas' limits: values at them still index and score finitely,
    and every returned document has a positive, finite score."""
    if method == "bm25l" and k1 == 0 and delta == 0:
        pytest.skip("refused")
    bm = BM25(method=method, k1=k1, b=b, delta=delta, stemmer=None).index(corpus(200, lo=1, hi=60))
    s, i = bm.search(QUERIES, k=10)
    got = i >= 0
    assert got[:3].any(axis=1).all(), "only padding"
    assert np.isfinite(s[got]).all() and (s[got] > 0).all()
    pair = bm.score(QUERIES, i.clip(0))
    assert np.isfinite(pair).all()


# --------------------------------------------------------------------------------- huge k
def test_huge_k_on_a_small_corpus():
    bm = BM25(stemmer=None).index(corpus(20))
    ref = bm.search(QUERIES, k=20)
    s, i = bm.search(QUERIES, k=1_000_000)  # padded output, the search itself holds <= 20 hits
    assert s.shape == (len(QUERIES), 1_000_000)
    np.testing.assert_array_equal(i[:, :20], ref[1])
    np.testing.assert_array_equal(s[:, :20], ref[0])
    assert (i[:, 20:] == -1).all() and np.isneginf(s[:, 20:]).all()
    with pytest.raises(ValueError, match=r"k asks for an output of [\d,]+ bytes"):
        bm.search(QUERIES, k=2**32 - 1)  # 4 queries x 48 GiB: refused before any allocation
    with pytest.raises(ValueError, match="k"):
        bm.search(["w1"], k=2**32)


@pytest.mark.parametrize("where", ["_ids", "add_docs"])
def test_failed_index_fault_half_way_keeps_the_previous_index(monkeypatch, where):
    """A fault injected after the new corpus's words were learnt, or at the postings step,
    leaves the previous index (documents, vocabulary, results) untouched."""
    bm = BM25(stemmer=None).index(corpus(50))
    snap = snapshot(bm)
    if where == "_ids":
        real = BM25._ids

        def failing(self, *a, **kw):
            real(self, *a, **kw)
            raise RuntimeError("injected")

        monkeypatch.setattr(BM25, "_ids", failing)
    else:
        def failing(self, core, texts, num_threads):
            self._ids(texts, True, "texts", 1, core)  # learning done in the new core
            raise RuntimeError("injected")

        monkeypatch.setattr(BM25, "_add", failing)
    with pytest.raises(RuntimeError, match="injected"):
        bm.index(corpus(80, seed=5) + ["entirely novel words"])
    monkeypatch.undo()
    assert_snapshot(bm, snap)
    assert "entirely" not in bm.vocabulary

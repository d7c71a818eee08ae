"""hardneg.retrievers: the factory, each retriever against brute force, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

import hardneg as hn
from hardneg import datasets as hd
from hardneg.retrievers import (BM25Retriever, DenseRetriever, HybridRetriever, load_npy, make_retriever)


def small(nq=6, n=50, d=8, seed=0):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((n, d)).astype(np.float32)
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    words = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "nut"]
    texts = [" ".join(rng.choice(words, size=4)) for _ in range(n)]
    ds = hd.from_dict({f"d{i}": texts[i] for i in range(n)}, {f"q{j}": f"{words[j % 8]} {words[(j + 3) % 8]}"
                                                               for j in range(nq)},
                      {f"q{j}": {f"d{j}": 1} for j in range(nq)})
    return ds, C, Q


def brute(Q, C, k, exclude=None, cosine=False):
    if cosine:
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        C = C / np.linalg.norm(C, axis=1, keepdims=True)
    S = Q.astype(np.float64) @ C.astype(np.float64).T
    out = []
    for j in range(S.shape[0]):
        ex = set(exclude[j]) if exclude else set()
        out.append([d for d in sorted(range(C.shape[0]), key=lambda d: (-S[j, d], d)) if d not in ex][:k])
    return out, S


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_dense_search_and_pair_scores_match_brute_force(metric, tmp_path):
    ds, C, Q = small()
    np.save(tmp_path / "c.npy", C)
    for source in (C, str(tmp_path / "c.npy")):
        ret = make_retriever("dense", ds, corpus_embeddings=source, query_embeddings=Q, metric=metric)
        assert isinstance(ret, DenseRetriever) and ret.name == "dense"
        ex = [[0, 1], [], [5], [], [9, 10, 11], []]
        s, i = ret.search(slice(0, 6), 10, ex)
        ref, S = brute(Q, C, 10, ex, cosine=metric == "cosine")
        assert i.tolist() == ref and s.dtype == np.float32 and i.dtype == np.int64
        rows = np.array([1, 3, 4])
        s2, i2 = ret.search(rows, 5, None)
        assert i2.tolist() == [r[:5] for r in brute(Q[rows], C, 5, cosine=metric == "cosine")[0]]
        qidx, docs = np.array([0, 2, 2]), np.array([7, 0, 49])
        np.testing.assert_allclose(ret.pair_scores(rows, qidx, docs), S[rows[qidx], docs], rtol=1e-5, atol=1e-6)
    # k beyond the corpus: padded
    s, i = ret.search(slice(0, 2), 60, None)
    assert (i[:, 50:] == -1).all() and np.isneginf(s[:, 50:]).all()


def test_split_query_rows_are_picked_from_the_whole_file():
    src = hd.sample_path()
    ds = hd.load_beir(src, "test")
    ce, qe = hd.find_embeddings(src)
    Qall = np.load(qe)
    a = make_retriever("dense", ds, corpus_embeddings=ce, query_embeddings=qe)
    b = make_retriever("dense", ds, corpus_embeddings=np.load(ce), query_embeddings=Qall[ds.query_rows])
    np.testing.assert_array_equal(a.search(slice(0, 10), 5, None)[1], b.search(slice(0, 10), 5, None)[1])


@pytest.mark.skipif(getattr(hn, "BM25", None) is None, reason="this build has no hn.BM25")
def test_bm25_and_hybrid_retrievers():
    ds, C, Q = small(n=80)
    bm = make_retriever("bm25", ds, bm25={"stemmer": None, "stopwords": None})
    assert isinstance(bm, BM25Retriever)
    ref = hn.BM25(stemmer=None, stopwords=None)
    ref.index(ds.corpus_texts)
    s, i = bm.search(slice(0, 6), 7, None)
    rs, ri = ref.search(ds.query_texts, k=7)
    np.testing.assert_array_equal(i, ri)
    docs = i[:, 0]
    np.testing.assert_allclose(bm.pair_scores(slice(0, 6), np.arange(6), docs), s[:, 0], rtol=1e-6)
    hy = make_retriever("hybrid", ds, corpus_embeddings=C, query_embeddings=Q, bm25=ref, rrf_k=10)
    assert isinstance(hy, HybridRetriever)
    hs, hi = hy.search(slice(0, 6), 12, None)
    fs, fi = hn.fuse([hy.dense.search(slice(0, 6), 12, None), bm.search(slice(0, 6), 12, None)], method="rrf",
                     k=10, depth=12)
    np.testing.assert_array_equal(hi, fi)
    # the fused score of a retrieved document, asked for as a pair, is its fused score
    np.testing.assert_allclose(hy.pair_scores(slice(0, 6), np.arange(6), hi[:, 3]), hs[:, 3], rtol=1e-6)


def test_factory_errors_name_the_argument(tmp_path):
    ds, C, Q = small()
    cases = [
        (dict(kind="sparse"), ValueError, "retriever"),
        (dict(metric="l1"), ValueError, "metric"),
        (dict(rrf_k=-1, kind="hybrid"), ValueError, "rrf_k"),
        (dict(corpus_embeddings=None), ValueError, "corpus_embeddings or an encoder"),
        (dict(corpus_embeddings=C[:-1]), ValueError, "49 rows but the corpus has 50"),
        (dict(query_embeddings=Q[:-1]), ValueError, "query_embeddings has 5 rows"),
        (dict(query_embeddings=Q[:, :3]), ValueError, "dimension"),
        (dict(corpus_embeddings=C.astype(np.int32)), TypeError, "floats"),
        (dict(encoder=3, corpus_embeddings=None), TypeError, "encoder"),
        (dict(bm25=object(), kind="bm25"), TypeError, "bm25"),
        (dict(index=object()), TypeError, "index must be"),
    ]
    for over, exc, word in cases:
        kw = dict(kind="dense", corpus_embeddings=C, query_embeddings=Q)
        kw.update(over)
        kind = kw.pop("kind")
        with pytest.raises(exc, match=word):
            make_retriever(kind, ds, **kw)
    with pytest.raises(TypeError, match="RetrievalDataset"):
        make_retriever("dense", {"corpus": []}, corpus_embeddings=C, query_embeddings=Q)
    (tmp_path / "garbage.npy").write_bytes(b"\x00not a numpy file at all" * 10)
    with pytest.raises(ValueError, match=r"my_option file .*garbage.npy is not a numpy array file"):
        load_npy(tmp_path / "garbage.npy", "my_option")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"corpus_embeddings file .*obj.npy"):
        make_retriever("dense", ds, corpus_embeddings=tmp_path / "obj.npy", query_embeddings=Q)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        make_retriever("dense", ds, corpus_embeddings=tmp_path / "missing.npy", query_embeddings=Q)


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-22, 1e-30])
def test_dense_pair_scores_exact_at_any_scale(scale):
    from hardneg.retrievers import DenseRetriever

    rng = np.random.default_rng(4)
    C = (rng.standard_normal((30, 6)) * scale).astype(np.float32)
    Q = (rng.standard_normal((4, 6)) * scale).astype(np.float32)
    r = DenseRetriever(C, Q, metric="cosine", num_threads=1, unit=lambda: False)
    qidx = np.repeat(np.arange(4), 30)
    docs = np.tile(np.arange(30), 4)
    got = r.pair_scores(slice(0, 4), qidx, docs)
    q64, c64 = Q.astype(np.float64) / scale, C.astype(np.float64) / scale
    want = (q64[qidx] * c64[docs]).sum(1) / (np.linalg.norm(q64[qidx], axis=1) * np.linalg.norm(c64[docs], axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    s, i = r.search(slice(0, 4), 5, None)
    assert np.all(np.abs(s) <= 1 + 1e-6)

"""Mining pipeline: parity with sentence-transformers, a brute-force oracle of the rule,
exclusions, sampling reproducibility, output formats and bad input."""
from __future__ import annotations

import gzip
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import hardneg as hn
from hardneg import datasets as hd
from hardneg.mining import _fuse_rrf, load_negatives, mine_hard_negatives

from exact_embeddings import integer_embeddings
from paths import SCIFACT


def _have(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


needs_st = pytest.mark.skipif(not (_have("sentence_transformers") and _have("datasets") and _have("torch")),
                              reason="needs sentence-transformers, datasets and torch")


# ---------------------------------------------------------------------------------------------- data


def make_exact(nq=40, n=300, d=8, seed=0, max_pos=3):
    """Integer embeddings whose inner products are exact in float32 and all distinct per query:
    score = n * (q . c) + doc_row, so no order of summation and no tie can change a result."""
    rng = np.random.default_rng(seed)
    Q, C, S = integer_embeddings(rng, n, nq, d)
    assert np.abs(S).max() < 2 ** 24
    pos = []
    for j in range(nq):
        k = int(rng.integers(1, max_pos + 1))
        # positives from anywhere in the ranking: top, middle and deep (below range_max + P)
        order = np.argsort(-S[j], kind="stable")
        pick = rng.choice([x for x in (0, 1, 2, 5, 20, 60, 150, 250) if x < n], size=k, replace=False)
        pos.append(order[pick])
    return Q, C, S, pos


def make_ds(nq, n, pos, qtexts=None, dtexts=None):
    corpus = {f"d{i}": (dtexts[i] if dtexts else f"d{i}") for i in range(n)}
    queries = {f"q{j}": (qtexts[j] if qtexts else f"q{j}") for j in range(nq)}
    qrels = {f"q{j}": {f"d{int(i)}": 1 for i in p} for j, p in enumerate(pos)}
    return hd.from_dict(corpus, queries, qrels)


def rows(mined):
    return [[int(x) for x in r if x >= 0] for r in mined.ids]


# ---------------------------------------------------------------------------------------------- oracle


def oracle(S, pos, num_negatives=3, range_min=0, range_max=10, relative_margin=None, absolute_margin=None,
           max_score=None, min_score=None, anchor="min", rescore=None, exclude=None, st_rule="6.3",
           query_doc=None):
    """The selection rule written out over full score matrices, one query at a time (float32 filters).

    sentence-transformers 6.3: the top ``range_max + P + 1`` of the ranking, then the positives and
    the document whose text is the query's (``query_doc[j]``, or None) dropped; 6.2: ``range_max + P``.
    """
    P = max(len(p) for p in pos)
    K = range_max + P + (1 if st_rule == "6.3" else 0)
    out = []
    for j in range(S.shape[0]):
        s = S[j].astype(np.float32)
        ex = set(exclude[j]) if exclude else set()
        p = [int(x) for x in pos[j]]
        ranked = [int(d) for d in sorted(range(len(s)), key=lambda d: (-s[d], d)) if d not in ex]
        top = ranked[:K]
        dropped = set(p)
        if st_rule == "6.3" and query_doc is not None and query_doc[j] is not None:
            dropped.add(int(query_doc[j]))
        pool = [d for d in top if d not in dropped]
        sc = {d: s[d] for d in pool}
        ps = [s[d] for d in p]
        if rescore is not None:
            sc = {d: np.float32(rescore(j, d)) for d in pool}
            ps = [np.float32(rescore(j, d)) for d in p]
            pool = sorted(pool, key=lambda d: (-sc[d], d))
        if ps:
            a = np.float32({"min": np.min, "max": np.max, "mean": np.mean}[anchor](np.array(ps, np.float64)))
        else:
            a = np.float32(np.nan)
        keep = []
        for d in pool:
            v = np.float32(sc[d])
            if absolute_margin is not None and v + np.float32(absolute_margin) > a:
                continue
            if relative_margin is not None and v > a - np.abs(a) * np.float32(relative_margin):
                continue
            if max_score is not None and v > np.float32(max_score):
                continue
            if min_score is not None and v < np.float32(min_score):
                continue
            keep.append(d)
        out.append(keep[range_min:range_max][:num_negatives])
    return out


CONFIGS = [
    dict(num_negatives=3, range_min=0, range_max=10),
    dict(num_negatives=5, range_min=4, range_max=30, relative_margin=0.05),
    dict(num_negatives=4, range_min=2, range_max=25, absolute_margin=50.0),
    dict(num_negatives=6, range_min=1, range_max=40, max_score=1000.0, min_score=-200000.0),
    dict(num_negatives=8, range_min=10, range_max=100, relative_margin=0.1, absolute_margin=10.0),
    dict(num_negatives=2, range_min=0, range_max=2, relative_margin=0.0),
]


# ---------------------------------------------------------------------------------------------- parity


@needs_st
@pytest.mark.parametrize("cfg", CONFIGS)
def test_top_equals_sentence_transformers_exact(cfg, tmp_path):
    """sampling="top" gives sentence-transformers' negatives, on embeddings where every score is exact."""
    from st_reference import st_mine

    Q, C, S, pos = make_exact()
    ds = make_ds(Q.shape[0], C.shape[0], pos)
    kw = dict(relative_margin=None, **cfg) if "relative_margin" not in cfg else dict(cfg)
    mined = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False, **kw)
    ref = st_mine(ds.query_ids, ds.corpus_ids, ds.positives(), C, Q, similarity="dot",
                  cache_folder=str(tmp_path), **kw)
    assert rows(mined) == [ref[q] for q in ds.query_ids]
    assert rows(mined) == oracle(S, pos, **kw)


@needs_st
def test_top_equals_sentence_transformers_cosine(tmp_path):
    """Real-valued embeddings with cosine similarity (rounding may differ in the last bit: allow
    a swap only between candidates whose scores agree to 1e-5)."""
    from st_reference import st_mine

    rng = np.random.default_rng(3)
    n, nq, d = 400, 60, 24
    C = rng.standard_normal((n, d)).astype(np.float32)
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    pos = [rng.choice(n, size=int(rng.integers(1, 4)), replace=False) for _ in range(nq)]
    ds = make_ds(nq, n, pos)
    kw = dict(num_negatives=5, range_min=3, range_max=40, relative_margin=0.05)
    mined = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, progress=False, **kw)
    ref = st_mine(ds.query_ids, ds.corpus_ids, ds.positives(), C, Q, cache_folder=str(tmp_path), **kw)
    Cn = C / np.linalg.norm(C, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    S = Qn @ Cn.T
    same = 0
    for j, q in enumerate(ds.query_ids):
        ours = rows(mined)[j]
        if ours == ref[q]:
            same += 1
            continue
        diff = set(ours) ^ set(ref[q])
        pos_s = S[j, pos[j]].min()
        # a mismatch must come from a near tie (with each other, the margin threshold or the window edge)
        assert all(np.min(np.abs(S[j] - S[j, x])[np.arange(n) != x]) < 1e-5
                   or abs(S[j, x] - (pos_s - abs(pos_s) * 0.05)) < 1e-5 for x in diff)
    assert same >= nq - 1


@needs_st
@pytest.mark.skipif(not SCIFACT.is_dir(), reason="SciFact not available")
def test_scifact_equals_sentence_transformers(tmp_path):
    from st_reference import st_mine

    ds = hd.load_beir(SCIFACT, "train")
    C = np.load(SCIFACT / "embeddings" / "minilm-corpus.npy", mmap_mode="r")
    Qall = np.load(SCIFACT / "embeddings" / "minilm-queries.npy", mmap_mode="r")
    kw = dict(num_negatives=8, range_min=10, range_max=100, relative_margin=0.05)
    mined = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Qall, progress=False, **kw)
    ref = st_mine(ds.query_ids, ds.corpus_ids, ds.positives(), np.asarray(C), np.asarray(Qall)[ds.query_rows],
                  cache_folder=str(tmp_path), **kw)
    same = sum(rows(mined)[j] == ref[q] for j, q in enumerate(ds.query_ids))
    # 809/809 with sentence-transformers 6.3 on AVX-512 and AVX2 (the README's configuration)
    assert same == len(ds.query_ids) == 809, f"{same}/{len(ds.query_ids)} queries equal"


@needs_st
@pytest.mark.parametrize("exclude_same_text", [True, False])
def test_query_text_in_corpus_equals_sentence_transformers(exclude_same_text, tmp_path):
    """sentence-transformers 6.3 drops the document whose text is the query's, and that document
    still takes one of the range_max + P + 1 slots when it ranks there (texts stand in as names)."""
    from st_reference import st_mine

    Q, C, S, pos = make_exact(nq=40, n=300, seed=7)
    dtexts = [f"doc {i}" for i in range(C.shape[0])]
    qtexts = [f"query {j}" for j in range(Q.shape[0])]
    query_doc = [None] * Q.shape[0]
    used = set()
    for j in range(0, Q.shape[0], 2):  # every other query's text is a document ranked 0..12, not a positive
        order = [int(d) for d in np.argsort(-S[j], kind="stable") if d not in set(pos[j].tolist()) and d not in used]
        query_doc[j] = order[j % 13]
        used.add(query_doc[j])  # distinct query texts (sentence-transformers merges equal queries)
        qtexts[j] = dtexts[query_doc[j]]
    ds = make_ds(Q.shape[0], C.shape[0], pos, qtexts=qtexts, dtexts=dtexts)
    for kw in CONFIGS:
        kw = dict(relative_margin=None, **kw) if "relative_margin" not in kw else dict(kw)
        mined = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False,
                                    exclude_same_text=exclude_same_text, **kw)
        ref = st_mine(ds.query_texts, ds.corpus_texts, ds.positives(), C, Q, similarity="dot",
                      cache_folder=str(tmp_path), **kw)
        expect = [ref[q] for q in ds.query_texts]
        if exclude_same_text:
            assert rows(mined) == expect, kw
        else:  # the query's own text stays a candidate: only the other queries agree
            for j in range(1, Q.shape[0], 2):
                assert rows(mined)[j] == expect[j], (kw, j)
        if exclude_same_text:
            assert rows(mined) == oracle(S, pos, query_doc=query_doc, **kw)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_st_rule_62_matches_its_oracle(cfg):
    """st_rule="6.2" keeps sentence-transformers 6.2's depth (range_max + P)."""
    Q, C, S, pos = make_exact(seed=2)
    ds = make_ds(Q.shape[0], C.shape[0], pos)
    kw = dict(relative_margin=None, **cfg) if "relative_margin" not in cfg else dict(cfg)
    mined = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False,
                                st_rule="6.2", **kw)
    assert rows(mined) == oracle(S, pos, st_rule="6.2", **kw)
    assert mined.params["depth"] == kw["range_max"] + max(len(p) for p in pos)
    with pytest.raises(ValueError, match="st_rule"):
        mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, st_rule="7.0", progress=False)


# ---------------------------------------------------------------------------------------------- oracle checks


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("anchor", ["min", "max", "mean"])
def test_dense_matches_oracle(cfg, anchor):
    Q, C, S, pos = make_exact(seed=5)
    ds = make_ds(Q.shape[0], C.shape[0], pos)
    kw = dict(relative_margin=None, **cfg) if "relative_margin" not in cfg else dict(cfg)
    mined = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False,
                                positive_anchor=anchor, batch_size=7, **kw)
    assert rows(mined) == oracle(S, pos, anchor=anchor, **kw)
    # scores are the candidates' scores, anchor_scores the anchor, positive_scores it per pair
    for j in range(len(ds.query_ids)):
        r = rows(mined)[j]
        np.testing.assert_array_equal(mined.scores[j, :len(r)], S[j, r].astype(np.float32))
        assert np.all(np.isneginf(mined.scores[j, len(r):]))
        red = {"min": np.min, "max": np.max, "mean": np.mean}[anchor]
        assert mined.anchor_scores[j] == pytest.approx(red(S[j, pos[j]]), rel=1e-6)
        np.testing.assert_array_equal(mined.positive_scores[j, :len(r)], mined.anchor_scores[j])
        assert np.isnan(mined.positive_scores[j, len(r):]).all()
    assert mined.positive_scores.shape == mined.ids.shape


def test_rescorer_matches_oracle():
    Q, C, S, pos = make_exact(seed=7)
    ds = make_ds(Q.shape[0], C.shape[0], pos)
    rng = np.random.default_rng(0)
    R = rng.standard_normal(S.shape).astype(np.float32)
    for j, p in enumerate(pos):
        R[j, p] += 1.0

    calls = []

    def rescorer(qs, docs):
        calls.append(len(qs))
        return np.array([R[int(q[1:]), int(d[1:])] for q, d in zip(qs, docs)], np.float32)

    kw = dict(num_negatives=4, range_min=2, range_max=30, relative_margin=0.05, max_score=1.5)
    mined = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False,
                                rescorer=rescorer, batch_size=16, **kw)
    assert rows(mined) == oracle(S, pos, rescore=lambda j, d: R[j, d], **kw)
    assert len(calls) == 3  # one call per batch of queries
    for j in range(len(ds.query_ids)):
        r = rows(mined)[j]
        np.testing.assert_array_equal(mined.scores[j, :len(r)], R[j, r])


# ---------------------------------------------------------------------------------------------- BM25 / hybrid


class FakeBM25:
    """A stand-in with hn.BM25's interface, scores from a fixed matrix (0 = no match)."""

    def __init__(self, S):
        self.S = S.astype(np.float32)
        self.search_calls = 0

    def search(self, queries, k, exclude=None, num_threads=None):
        from hardneg.exclude import to_csr

        self.search_calls += 1
        qi = [int(q[1:]) for q in queries]
        ex = to_csr(exclude, len(qi), self.S.shape[1])
        s = np.full((len(qi), k), -np.inf, np.float32)
        ids = np.full((len(qi), k), -1, np.int64)
        for r, j in enumerate(qi):
            bad = set(ex[1][ex[0][r]:ex[0][r + 1]].tolist()) if ex else set()
            cand = [d for d in sorted(range(self.S.shape[1]), key=lambda d: (-self.S[j, d], d))
                    if d not in bad and self.S[j, d] > 0][:k]
            s[r, :len(cand)] = self.S[j, cand]
            ids[r, :len(cand)] = cand
        return s, ids

    def score(self, queries, doc_ids):
        doc_ids = np.asarray(doc_ids)
        qi = np.array([int(q[1:]) for q in queries])
        return self.S[qi[:, None], doc_ids]


def make_bm25_scores(nq, n, seed):
    rng = np.random.default_rng(seed)
    B = np.round(rng.gamma(2.0, 2.0, size=(nq, n)), 3).astype(np.float32)
    B[rng.random((nq, n)) < 0.3] = 0  # documents that share no term with the query
    return B


def test_bm25_retriever_with_fake_index_matches_oracle():
    Q, C, S, pos = make_exact(nq=20, n=120, seed=9)
    B = make_bm25_scores(20, 120, 1)
    ds = make_ds(20, 120, pos)
    kw = dict(num_negatives=4, range_min=1, range_max=20, relative_margin=0.05)
    mined = mine_hard_negatives(ds, "bm25", bm25=FakeBM25(B), progress=False, **kw)
    # the fake never returns zero-score documents: they cannot be candidates
    Bm = np.where(B > 0, B, -np.inf)
    assert rows(mined) == oracle(Bm, pos, **kw)


def rrf_reference(S, B, pos, depth, k=60):
    """Fused RRF scores over the two rankings with positives removed (truncated at depth);
    positives get the score they would have at the rank they would take."""
    nq, n = S.shape
    F = np.full((nq, n), -np.inf)
    for j in range(nq):
        p = set(int(x) for x in pos[j])
        tot = np.zeros(n)
        for M, drop_zero in ((S, False), (B, True)):
            ranked = [d for d in sorted(range(n), key=lambda d: (-M[j, d], d))
                      if d not in p and not (drop_zero and M[j, d] <= 0)][:depth]
            for r, d in enumerate(ranked):
                tot[d] += 1.0 / (k + r + 1)
            for d in p:
                if drop_zero and M[j, d] <= 0:
                    continue
                nb = sum(1 for x in ranked if (M[j, x] > M[j, d]) or (M[j, x] == M[j, d] and x < d))
                if nb < depth:
                    tot[d] += 1.0 / (k + nb + 1)
        in_any = set()
        for M, drop_zero in ((S, False), (B, True)):
            ranked = [d for d in sorted(range(n), key=lambda d: (-M[j, d], d))
                      if d not in p and not (drop_zero and M[j, d] <= 0)][:depth]
            in_any.update(ranked)
        for d in in_any | p:
            F[j, d] = tot[d]
    return F.astype(np.float32)


def test_hybrid_with_fake_index_matches_oracle():
    nq, n = 15, 100
    Q, C, S, pos = make_exact(nq=nq, n=n, seed=11)
    B = make_bm25_scores(nq, n, 2)
    ds = make_ds(nq, n, pos)
    kw = dict(num_negatives=5, range_min=2, range_max=20, relative_margin=0.02)
    mined = mine_hard_negatives(ds, "hybrid", corpus_embeddings=C, query_embeddings=Q, metric="ip",
                                bm25=FakeBM25(B), progress=False, **kw)
    depth = kw["range_max"] + max(len(p) for p in pos) + 1  # sentence-transformers 6.3: one slot for the query's own text
    F = rrf_reference(S, B, pos, depth)
    assert rows(mined) == oracle(F, pos, **kw)


def test_hybrid_fusion_is_rrf():
    a_ids = np.array([[3, 1, 2, -1], [0, 1, 2, 3]])
    b_ids = np.array([[1, 5, -1, -1], [3, 2, 1, 0]])
    runs = [(np.zeros(a_ids.shape, np.float32), a_ids), (np.zeros(b_ids.shape, np.float32), b_ids)]
    s, i = _fuse_rrf(runs, k=60, depth=5)
    # query 0: 1 -> 1/62 + 1/61, 3 -> 1/61, 5 -> 1/62, 2 -> 1/63
    assert i[0].tolist() == [1, 3, 5, 2, -1]
    np.testing.assert_allclose(s[0, :4], [1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63], rtol=1e-6)
    # query 1: 0 and 3 tie (1/61 + 1/64), as do 1 and 2 (1/62 + 1/63): ties by ascending id
    assert i[1].tolist() == [0, 3, 1, 2, -1]


@pytest.mark.skipif(getattr(hn, "BM25", None) is None, reason="this build has no hn.BM25")
@pytest.mark.parametrize("retriever", ["bm25", "hybrid"])
def test_real_bm25_positives_excluded_and_full_count(retriever):
    ds = hd.load_sample("train")
    from hardneg.datasets import find_embeddings

    ce, qe = find_embeddings(hd.sample_path())
    mined = mine_hard_negatives(ds, retriever, corpus_embeddings=ce, query_embeddings=qe, num_negatives=4,
                                range_min=0, range_max=20, relative_margin=None, progress=False)
    for j, p in enumerate(ds.positives()):
        assert not set(p.tolist()) & set(rows(mined)[j])
    if retriever == "hybrid":
        assert (mined.counts == 4).all()


# ---------------------------------------------------------------------------------------------- exclusions


def test_positives_never_returned_and_full_count():
    """Positives at the very top take no slot: every query still gets its full count."""
    rng = np.random.default_rng(2)
    n, nq = 60, 12
    C = rng.standard_normal((n, 16)).astype(np.float32)
    pos = [rng.choice(n, size=5, replace=False) for _ in range(nq)]
    Q = np.stack([C[p].sum(0) for p in pos]).astype(np.float32)  # positives rank first
    ds = make_ds(nq, n, pos)
    mined = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, num_negatives=10, range_min=0,
                                range_max=10, relative_margin=None, progress=False)
    assert (mined.counts == 10).all()
    for j in range(nq):
        assert not set(pos[j].tolist()) & set(rows(mined)[j])


def test_self_and_same_text_excluded():
    rng = np.random.default_rng(4)
    n = 30
    C = rng.standard_normal((n, 64)).astype(np.float32)
    texts = [f"text {i}" for i in range(n)]
    texts[7] = texts[3]  # a duplicate of positive 3
    texts[9] = "the query itself"
    corpus = {f"d{i}": texts[i] for i in range(n)}
    corpus["q0"] = corpus.pop("d0")  # the query is also a corpus document (as in ArguAna/Quora)
    ds = hd.from_dict(corpus, {"q0": "the query itself"}, {"q0": {"d3": 1}})
    Q = C[[0]] + C[[3]] + C[[7]] + C[[9]]
    C2 = np.concatenate([C[1:], C[:1]])  # row order follows the dict: d1..d29, q0
    mined = mine_hard_negatives(ds, corpus_embeddings=C2, query_embeddings=Q, num_negatives=5, range_min=0,
                                range_max=10, relative_margin=None, progress=False)
    got = {ds.corpus_ids[r] for r in rows(mined)[0]}
    assert not got & {"q0", "d3", "d7", "d9"}
    assert len(got) == 5
    mined2 = mine_hard_negatives(ds, corpus_embeddings=C2, query_embeddings=Q, num_negatives=5, range_min=0,
                                 range_max=10, relative_margin=None, progress=False, exclude_self=False,
                                 exclude_same_text=False)
    assert {"q0", "d7", "d9"} <= {ds.corpus_ids[r] for r in rows(mined2)[0]}


# ---------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("sampling", ["random", "softmax"])
def test_sampling_reproducible_and_thread_independent(sampling):
    Q, C, S, pos = make_exact(nq=50, seed=13)
    C = C / 1e4
    Q = Q / 1e4
    ds = make_ds(50, C.shape[0], pos)
    kw = dict(num_negatives=5, range_min=2, range_max=40, relative_margin=None, sampling=sampling,
              temperature=50.0, metric="ip", progress=False)
    a = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, seed=1, num_threads=1, **kw)
    b = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, seed=1, num_threads=2, batch_size=7, **kw)
    c = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, seed=2, **kw)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, c.ids)
    top = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, **{**kw, "sampling": "top",
                                                                                  "num_negatives": 38})
    for j in range(50):
        r = rows(a)[j]
        assert len(r) == 5 and set(r) <= set(rows(top)[j])  # drawn from the window
        assert np.all(np.diff(a.scores[j]) <= 0)  # returned best first


def test_softmax_low_temperature_is_top_and_random_is_uniform():
    Q, C, S, pos = make_exact(nq=30, seed=17)
    ds = make_ds(30, C.shape[0], pos)
    base = dict(corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False, relative_margin=None,
                num_negatives=3, range_min=0, range_max=12)
    top = mine_hard_negatives(ds, **base)
    soft = mine_hard_negatives(ds, sampling="softmax", temperature=1e-3, **base)
    np.testing.assert_array_equal(top.ids, soft.ids)
    # random: over many seeds every window position is drawn about equally often
    counts = np.zeros(12)
    ref = mine_hard_negatives(ds, **{**base, "num_negatives": 12})
    for seed in range(200):
        r = mine_hard_negatives(ds, sampling="random", seed=seed, **{**base, "progress": False})
        counts += np.array([[x in set(r.ids[j]) for x in ref.ids[j]] for j in range(1)]).sum(0)
    assert counts.min() > 20 and counts.max() < 80  # expectation 50 each


# ---------------------------------------------------------------------------------------------- files


def test_npy_paths_are_memory_mapped(tmp_path):
    Q, C, S, pos = make_exact(nq=10, seed=19)
    ds = make_ds(10, C.shape[0], pos)
    np.save(tmp_path / "c.npy", C)
    np.save(tmp_path / "q.npy", Q)
    a = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False)
    b = mine_hard_negatives(ds, corpus_embeddings=str(tmp_path / "c.npy"), query_embeddings=tmp_path / "q.npy",
                            metric="ip", progress=False)
    np.testing.assert_array_equal(a.ids, b.ids)


def _read_jsonl(p):
    opener = gzip.open if str(p).endswith(".gz") else open
    with opener(p, "rt", encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


@pytest.fixture
def sample_mined():
    ds = hd.load_sample("train")
    ce, qe = hd.find_embeddings(hd.sample_path())
    return mine_hard_negatives(ds, corpus_embeddings=ce, query_embeddings=qe, num_negatives=4, range_min=2,
                               range_max=30, progress=False)


def test_save_ids_round_trip(tmp_path, sample_mined):
    m = sample_mined
    for name in ("neg.jsonl", "neg.jsonl.gz"):
        n = m.save(tmp_path / name, format="ids")
        assert n == len(m)
        back = load_negatives(tmp_path / name, m.dataset)
        np.testing.assert_array_equal(back.ids, m.ids)
        np.testing.assert_array_equal(back.scores, m.scores)
        np.testing.assert_allclose(back.anchor_scores, m.anchor_scores)
        np.testing.assert_allclose(back.positive_scores, m.positive_scores)


def test_save_training_formats_round_trip(tmp_path, sample_mined):
    m = sample_mined
    ds = m.dataset
    text_row = {t: i for i, t in enumerate(ds.corpus_texts)}
    negs = rows(m)

    m.save(tmp_path / "st.jsonl", "sentence-transformers")
    recs = _read_jsonl(tmp_path / "st.jsonl")
    assert len(recs) == sum(len(p) for p, c in zip(m.positive_ids, m.counts) if c == 4)
    by_q = {}
    for r in recs:
        assert list(r) == ["anchor", "positive", "negative_1", "negative_2", "negative_3", "negative_4"]
        by_q.setdefault(r["anchor"], []).append(r)
    for j, qt in enumerate(ds.query_texts):
        for r in by_q.get(qt, []):
            assert [text_row[r[f"negative_{t}"]] for t in range(1, 5)] == negs[j]
            assert text_row[r["positive"]] in set(m.positive_ids[j].tolist())
    if _have("datasets"):
        import datasets

        loaded = datasets.load_dataset("json", data_files=str(tmp_path / "st.jsonl"), split="train")
        assert loaded.column_names[:3] == ["anchor", "positive", "negative_1"] and len(loaded) == len(recs)

    m.save(tmp_path / "tri.jsonl", "triplet")
    recs = _read_jsonl(tmp_path / "tri.jsonl")
    assert len(recs) == sum(len(p) * c for p, c in zip(m.positive_ids, m.counts))

    m.save(tmp_path / "fe.jsonl", "flagembedding")
    recs = _read_jsonl(tmp_path / "fe.jsonl")
    qrow = {t: j for j, t in enumerate(ds.query_texts)}
    for r in recs:
        j = qrow[r["query"]]
        assert [text_row[t] for t in r["neg"]] == negs[j]
        assert [text_row[t] for t in r["pos"]] == m.positive_ids[j].tolist()
        np.testing.assert_allclose(r["neg_scores"], m.scores[j, :len(negs[j])], rtol=1e-6)

    m.save(tmp_path / "tev.jsonl", "tevatron")
    recs = _read_jsonl(tmp_path / "tev.jsonl")
    assert len(recs) == len(ds.query_ids)
    for j, r in enumerate(recs):
        assert r["query_id"] == ds.query_ids[j] and r["query"] == ds.query_texts[j]
        assert [p["docid"] for p in r["negative_passages"]] == [ds.corpus_ids[x] for x in negs[j]]
        for p in r["positive_passages"] + r["negative_passages"]:
            i = ds.doc_index[p["docid"]]
            assert p["title"] == ds.corpus_titles[i] and p["text"] == ds.corpus_bodies[i]


def test_report_mentions_the_essentials(sample_mined):
    text = sample_mined.report()
    for word in ("negatives found", "positive", "suspected false negatives", "timings", "relative_margin"):
        assert word in text


def test_report_counts_suspected_false_negatives():
    Q, C, S, pos = make_exact(nq=10, seed=23)
    ds = make_ds(10, C.shape[0], pos)
    m = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False,
                            relative_margin=None, range_min=0, range_max=20, num_negatives=5)
    above = sum(int((m.scores[j][m.ids[j] >= 0] > S[j, pos[j]].min()).sum()) for j in range(10))
    assert f"suspected false negatives: {above:,} negatives" in m.report()


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_messages(tmp_path):
    Q, C, S, pos = make_exact(nq=5, seed=29)
    ds = make_ds(5, C.shape[0], pos)
    ok = dict(corpus_embeddings=C, query_embeddings=Q, progress=False)
    cases = [
        (dict(range_min=10, range_max=10), ValueError, "range_min"),
        (dict(num_negatives=0), ValueError, "num_negatives"),
        (dict(num_negatives=50, range_min=0, range_max=10), ValueError, "num_negatives"),
        (dict(sampling="best"), ValueError, "sampling"),
        (dict(positive_anchor="median"), ValueError, "positive_anchor"),
        (dict(temperature=0.0, sampling="softmax"), ValueError, "temperature"),
        (dict(relative_margin=float("nan")), ValueError, "relative_margin"),
        (dict(corpus_embeddings=C[:-1]), ValueError, "corpus_embeddings"),
        (dict(query_embeddings=Q[:-1]), ValueError, "query_embeddings"),
        (dict(query_embeddings=Q[:, :-1]), ValueError, "dimension"),
        (dict(corpus_embeddings=str(tmp_path / "missing.npy")), FileNotFoundError, "missing.npy"),
        (dict(corpus_embeddings=None), ValueError, "corpus_embeddings"),
    ]
    for over, exc, word in cases:
        with pytest.raises(exc, match=word):
            mine_hard_negatives(ds, **{**ok, **over})
    with pytest.raises(ValueError, match="retriever"):
        mine_hard_negatives(ds, "sparse", **ok)
    with pytest.raises(TypeError, match="RetrievalDataset"):
        mine_hard_negatives({"corpus": []}, **ok)
    m = mine_hard_negatives(ds, **ok)
    with pytest.raises(ValueError, match="format"):
        m.save(tmp_path / "x.jsonl", format="parquet")
    with pytest.raises(FileNotFoundError):
        load_negatives(tmp_path / "nope.jsonl", ds)
    if getattr(hn, "BM25", None) is None:
        with pytest.raises(ImportError, match="BM25"):
            mine_hard_negatives(ds, "bm25", progress=False)


def test_query_without_positives_and_tiny_corpus():
    rng = np.random.default_rng(31)
    C = rng.standard_normal((6, 4)).astype(np.float32)
    Q = rng.standard_normal((2, 4)).astype(np.float32)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = hd.from_dict({f"d{i}": f"t{i}" for i in range(6)}, {"a": "x", "b": "y"},
                          {"a": {"d1": 1}, "b": {"zzz": 1}})
    assert ds.missing_qrels == 1 and any("absent from the corpus" in str(x.message) for x in w)
    m = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, num_negatives=8, range_min=0,
                            range_max=100, relative_margin=None, progress=False)
    assert m.counts.tolist() == [5, 6]  # corpus smaller than the range: everything but the positive
    assert np.isnan(m.anchor_scores[1]) and np.isnan(m.positive_scores[1]).all()
    assert "queries without positives: 1" in m.report()


def test_encoder_and_torch_inputs_give_the_same_negatives():
    Q, C, S, pos = make_exact(nq=12, seed=37)
    ds = make_ds(12, C.shape[0], pos)
    base = dict(metric="ip", progress=False, num_negatives=4, range_min=1, range_max=20)
    ref = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, **base)
    table = {**{f"d{i}": C[i] for i in range(C.shape[0])}, **{f"q{j}": Q[j] for j in range(12)}}
    calls = []

    def encoder(texts):
        calls.append(len(texts))
        return np.stack([table[t] for t in texts])

    enc = mine_hard_negatives(ds, encoder=encoder, encode_batch_size=64, **base)
    np.testing.assert_array_equal(enc.ids, ref.ids)
    assert calls == [64, 64, 64, 64, 44, 12]
    torch = pytest.importorskip("torch")
    tor = mine_hard_negatives(ds, corpus_embeddings=torch.from_numpy(C), query_embeddings=torch.from_numpy(Q), **base)
    np.testing.assert_array_equal(tor.ids, ref.ids)


def test_progress_bar_goes_to_stderr(capsys):
    pytest.importorskip("tqdm")
    Q, C, S, pos = make_exact(nq=5, seed=41)
    ds = make_ds(5, C.shape[0], pos)
    mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "mining (dense)" in err
    mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, progress=False)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize("retriever", ["dense", "bm25"])
def test_shallow_first_pass_equals_full_search(retriever):
    """sampling="top" first searches range_min + num_negatives + slack deep and searches again only
    the queries whose survivors fall short: the result must equal the full-depth search."""
    from hardneg.mining._config import build_config
    from hardneg.mining._pipeline import run_pipeline
    from hardneg.retrievers import make_retriever

    Q, C, S, pos = make_exact(nq=60, n=400, seed=43)
    B = make_bm25_scores(60, 400, 3)
    ds = make_ds(60, 400, pos)
    sel = dict(num_negatives=4, range_min=3, range_max=120, relative_margin=0.0005, metric="ip", progress=False,
               batch_size=17)
    src = dict(corpus_embeddings=C, query_embeddings=Q)
    if retriever == "bm25":
        sel.update(relative_margin=None, max_score=9.0)
        src = dict(bm25=FakeBM25(B))
    fast = mine_hard_negatives(ds, retriever, **sel, **src)
    cfg = build_config(retriever, shallow_first=False, **sel)
    full = run_pipeline(ds, make_retriever(retriever, ds, metric="ip", **src), cfg)
    np.testing.assert_array_equal(fast.ids, full.ids)
    np.testing.assert_array_equal(fast.scores, full.scores)
    np.testing.assert_array_equal(fast.anchor_scores, full.anchor_scores)
    assert 0 < fast.stats["searched_again"] < 60  # both paths were taken
    assert full.stats["searched_again"] is None


def test_index_hook_faiss_flat_equals_exact():
    pytest.importorskip("faiss")
    ds = hd.load_sample("train")
    C, Q = hd.find_embeddings(hd.sample_path())
    C, Q = np.load(C), np.load(Q)
    kw = dict(num_negatives=4, range_min=2, range_max=30, progress=False)
    exact = mine_hard_negatives(ds, "dense", corpus_embeddings=C, query_embeddings=Q, **kw)
    idx = hn.DenseIndex(C, metric="cosine", backend="faiss", index="Flat")
    via = mine_hard_negatives(ds, "dense", corpus_embeddings=C, query_embeddings=Q, index=idx, **kw)
    np.testing.assert_array_equal(exact.ids, via.ids)
    with pytest.raises(ValueError, match="rows"):
        mine_hard_negatives(ds, "dense", corpus_embeddings=C, query_embeddings=Q,
                            index=hn.DenseIndex(C[:10]), **kw)
    with pytest.raises(TypeError, match="index must be"):
        mine_hard_negatives(ds, "dense", corpus_embeddings=C, query_embeddings=Q, index=object(), **kw)


# ---------------------------------------------------------------------------------------------- safety


def test_load_negatives_for_another_dataset_is_an_error(tmp_path, sample_mined):
    path = tmp_path / "neg.jsonl"
    sample_mined.save(path, format="ids")
    other = make_ds(3, 10, [[0], [1], [2]])  # query ids q0..q2, none in the sample
    with pytest.raises(ValueError, match="none of its 30 query ids"):
        load_negatives(path, other)
    # partial overlap: a warning that counts the unknown ids
    ds = sample_mined.dataset
    keep = set(ds.query_ids[:10])
    sub = hd.from_dict({d: t for d, t in zip(ds.corpus_ids, ds.corpus_texts)},
                       {q: t for q, t in zip(ds.query_ids, ds.query_texts) if q in keep},
                       {q: r for q, r in ds.qrels.items() if q in keep})
    with pytest.warns(UserWarning, match="20 of its 30 query ids"):
        back = load_negatives(path, sub)
    np.testing.assert_array_equal(back.ids, sample_mined.ids[:10])


def test_save_is_atomic(tmp_path, sample_mined, monkeypatch):
    """A failure half-way leaves the previous file as it was, and no temporary file behind."""
    import hardneg.mining._result as result

    for name in ("neg.jsonl", "neg.jsonl.gz"):
        path = tmp_path / name
        sample_mined.save(path, format="ids")
        before = path.read_bytes()
        calls = []
        real = json.dumps

        def failing(obj, **kw):
            calls.append(1)
            if len(calls) == 10:
                raise RuntimeError("disk on fire")
            return real(obj, **kw)

        monkeypatch.setattr(result.json, "dumps", failing)
        with pytest.raises(RuntimeError, match="disk on fire"):
            sample_mined.save(path, format="triplet")
        monkeypatch.setattr(result.json, "dumps", real)
        assert path.read_bytes() == before
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
        n = sample_mined.save(path, format="triplet")
        assert len(_read_jsonl(path)) == n


def test_huge_range_on_a_small_corpus_stays_small():
    """Depths and buffers follow the corpus, not the range (range_min=50M on 60 documents)."""
    import resource
    import subprocess
    import sys

    code = """
import resource, numpy as np, sys
from hardneg import datasets as hd
from hardneg.mining import mine_hard_negatives
rng = np.random.default_rng(0)
C = rng.standard_normal((60, 8)).astype(np.float32); Q = rng.standard_normal((5, 8)).astype(np.float32)
ds = hd.from_dict({f"d{i}": f"t{i}" for i in range(60)}, {f"q{j}": f"x{j}" for j in range(5)},
                  {f"q{j}": {f"d{j}": 1} for j in range(5)})
for lo in (50_000_000, 10**9):
    for sampling in ("top", "random"):
        m = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, range_min=lo, range_max=lo + 8,
                                sampling=sampling, progress=False)
        assert (m.ids == -1).all() and m.ids.shape == (5, 8)
m = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, range_min=0, range_max=10**9,
                        num_negatives=3, relative_margin=None, progress=False)
assert (m.counts == 3).all() and m.params["depth"] == 10**9 + 2
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) < 1 << 20  # KiB: under 1 GiB (it asked for 16 GB and more)
    Q, C, S, pos = make_exact(nq=5, seed=3)
    ds = make_ds(5, C.shape[0], pos)
    with pytest.raises(ValueError, match=r"num_negatives asks for an output of [\d,]+ bytes"):
        mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, num_negatives=10**15, range_min=0,
                            range_max=10**15, progress=False)


def test_sentence_transformers_argument_names():
    Q, C, S, pos = make_exact(nq=20, seed=47)
    ds = make_ds(20, C.shape[0], pos)
    base = dict(corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False, num_negatives=3,
                range_min=1, range_max=30, seed=5)
    a = mine_hard_negatives(ds, sampling="random", **base)
    b = mine_hard_negatives(ds, sampling_strategy="random", **base)
    np.testing.assert_array_equal(a.ids, b.ids)
    with pytest.raises(TypeError, match="sampling_strategy"):
        mine_hard_negatives(ds, sampling="softmax", sampling_strategy="random", **base)
    with pytest.raises(ValueError, match="sampling"):
        mine_hard_negatives(ds, sampling_strategy="best", **base)

    rng = np.random.default_rng(1)
    R = rng.standard_normal(S.shape).astype(np.float32)

    class FakeCrossEncoder:  # sentence-transformers' CrossEncoder.predict(pairs, show_progress_bar=...)
        def __init__(self):
            self.calls = 0

        def predict(self, pairs, batch_size=32, show_progress_bar=None):
            self.calls += 1
            assert show_progress_bar is False
            return np.array([R[int(q[1:]), int(d[1:])] for q, d in pairs], np.float32)

    ce = FakeCrossEncoder()
    via_ce = mine_hard_negatives(ds, cross_encoder=ce, **base)
    via_fn = mine_hard_negatives(ds, rescorer=lambda qs, ds_: [R[int(q[1:]), int(d[1:])] for q, d in zip(qs, ds_)],
                                 **base)
    np.testing.assert_array_equal(via_ce.ids, via_fn.ids)
    assert ce.calls == 1 and via_ce.params["rescorer"] is True
    assert rows(via_ce) == oracle(S, pos, rescore=lambda j, d: R[j, d], num_negatives=3, range_min=1, range_max=30,
                                  relative_margin=0.05)
    with pytest.raises(TypeError, match="cross_encoder"):
        mine_hard_negatives(ds, cross_encoder=ce, rescorer=lambda q, d: 0, **base)
    with pytest.raises(TypeError, match="predict"):
        mine_hard_negatives(ds, cross_encoder=object(), **base)


def test_prebuilt_retriever_equals_the_named_one():
    from hardneg.retrievers import make_retriever

    Q, C, S, pos = make_exact(nq=30, seed=53)
    ds = make_ds(30, C.shape[0], pos)
    kw = dict(num_negatives=4, range_min=2, range_max=25, progress=False)
    a = mine_hard_negatives(ds, "dense", corpus_embeddings=C, query_embeddings=Q, metric="ip", **kw)
    ret = make_retriever("dense", ds, corpus_embeddings=C, query_embeddings=Q, metric="ip")
    b = mine_hard_negatives(ds, ret, **kw)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert b.params["retriever"] == "dense"
    with pytest.raises(TypeError, match="brings its own"):
        mine_hard_negatives(ds, ret, corpus_embeddings=C, **kw)
    with pytest.raises(TypeError, match="retriever must be"):
        mine_hard_negatives(ds, object(), **kw)


# ---------------------------------------------------------------------------------------------- prompts, cache


def test_prompts_and_saved_embeddings_in_python(tmp_path):
    Q, C, S, pos = make_exact(nq=6, n=40, seed=3)
    dtexts = [f"doc {i}" for i in range(40)]
    qtexts = [f"question {j}" for j in range(6)]
    ds = make_ds(6, 40, pos, qtexts=qtexts, dtexts=dtexts)
    seen = []

    def plain(texts):  # no prompt= argument: the prompt is written in front of each text
        seen.extend(texts)
        return np.stack([C[int(t.split()[-1])] if t.startswith("P: doc") else Q[int(t.split()[-1])] for t in texts])

    kw = dict(num_negatives=3, range_min=0, range_max=20, metric="ip", progress=False)
    mined = mine_hard_negatives(ds, encoder=plain, prompts={"query": "Q: ", "corpus": "P: "},
                                save_embeddings=tmp_path, encoder_name="org/stub", **kw)
    assert rows(mined) == oracle(S, pos, num_negatives=3, range_min=0, range_max=20, relative_margin=0.05)
    assert sorted(seen) == sorted(["P: " + t for t in dtexts] + ["Q: " + t for t in qtexts])
    assert len(list(tmp_path.glob("stub-*.npy"))) == 2
    seen.clear()
    again = mine_hard_negatives(ds, encoder=plain, prompts={"query": "Q: ", "corpus": "P: "},
                                save_embeddings=tmp_path, encoder_name="org/stub", **kw)
    assert seen == [] and rows(again) == rows(mined)
    assert mined.provenance["model"] == "org/stub" and mined.provenance["prompts"] == {"query": "Q: ", "corpus": "P: "}

    got = []

    def with_kw(texts, prompt=None):  # takes prompt=: it is passed, texts untouched
        got.append(prompt)
        return plain([("P: " if prompt == "P: " else "Q: ") + t for t in texts])

    assert rows(mine_hard_negatives(ds, encoder=with_kw, prompts={"query": "Q: ", "corpus": "P: "}, **kw)) == \
        rows(mined)
    assert set(got) == {"Q: ", "P: "}
    with pytest.raises(ValueError, match="encoder_name"):
        mine_hard_negatives(ds, encoder=plain, save_embeddings=tmp_path, **kw)
    with pytest.raises(ValueError, match="prompts"):
        mine_hard_negatives(ds, encoder=plain, prompts={"doc": "x"}, **kw)
    with pytest.raises(TypeError, match="prompts"):
        mine_hard_negatives(ds, encoder=plain, prompts={"query": 3}, **kw)


# ---------------------------------------------------------------------------------------------- duplicate texts


def _old_exclusions(ds, pos_q, pos_rows, exclude_self, exclude_same_text):
    """The previous implementation (every duplicate group expanded per query, Python lists), kept as
    the oracle of the lazy group exclusion."""
    from typing import List

    qs: List[np.ndarray] = []
    rs: List[np.ndarray] = []
    text_q: List[int] = []
    text_r: List[int] = []
    if exclude_self:
        own = ds._own_rows()
        hit = np.flatnonzero(own >= 0)
        qs.append(hit)
        rs.append(own[hit])
    if exclude_same_text and ds.num_docs:
        texts = ds.corpus_texts
        lookup = ds.text_index()
        pq: List[int] = []
        pr: List[int] = []
        for j in np.flatnonzero(lookup.may_contain(ds.query_texts)).tolist():
            rows_ = lookup.rows_with_text(ds.query_texts[j])
            pq.extend([j] * len(rows_))
            pr.extend(rows_)
            if rows_:
                text_q.append(j)
                text_r.append(min(rows_))
        dup_rows = lookup.duplicated_rows()
        if dup_rows and pos_rows.size:
            shared = np.flatnonzero(np.isin(pos_rows, np.fromiter(dup_rows, dtype=np.int64, count=len(dup_rows))))
            for t in shared.tolist():
                j, r = int(pos_q[t]), int(pos_rows[t])
                others = [x for x in lookup.rows_with_text(texts[r]) if x != r]
                pq.extend([j] * len(others))
                pr.extend(others)
        qs.append(np.array(pq, dtype=np.int64))
        rs.append(np.array(pr, dtype=np.int64))
    eq = np.concatenate(qs) if qs else np.zeros(0, np.int64)
    er = np.concatenate(rs) if rs else np.zeros(0, np.int64)
    tq, tr = np.array(text_q, dtype=np.int64), np.array(text_r, dtype=np.int64)
    if eq.size == 0:
        return eq, er, tq, tr
    base = np.int64(ds.num_docs + 1)
    pos_key = pos_q * base + pos_rows
    key = np.unique(eq * base + er)
    key = key[~np.isin(key, pos_key)]
    not_pos = ~np.isin(tq * base + tr, pos_key)
    return key // base, key % base, tq[not_pos], tr[not_pos]


def _excl_module():
    import importlib

    return importlib.import_module("hardneg.mining._exclusions")  # the package re-exports a function of this name


def _use_old_exclusions(monkeypatch):
    """Mine with the previous up-front exclusions (no lazy group)."""
    ex = _excl_module()

    def old(ds, pos_q, pos_rows, exclude_self, exclude_same_text, expand_max):
        z = np.zeros(0, np.int64)
        return (*_old_exclusions(ds, pos_q, pos_rows, exclude_self, exclude_same_text), z, z)

    monkeypatch.setattr(ex, "_split_exclusions", old)


def make_groups(seed, nq=30, n=400, d=6, tie=True):
    """A corpus where many documents share a text: 120 empty ones (identical embeddings when ``tie``,
    built to rank first), 60 boilerplate ones, four groups of 5 and unique texts; positives inside
    the groups and queries whose text is a group's.  Integer embeddings: exact inner products."""
    rng = np.random.default_rng(seed)
    texts = [f"doc {i} word{i % 17} term{i % 5}" for i in range(n)]
    empty = rng.choice(n, size=120, replace=False)
    rest = np.setdiff1d(np.arange(n), empty)
    boiler = rng.choice(rest, size=60, replace=False)
    rest = np.setdiff1d(rest, boiler)
    small = rng.choice(rest, size=20, replace=False)
    for i in empty:
        texts[i] = ""
    for i in boiler:
        texts[i] = "boiler plate word3 term1"
    for g, i in enumerate(small):
        texts[i] = f"small group {g % 4} word{g % 4}"
    C = rng.integers(-8, 9, size=(n, d)).astype(np.float32)
    if tie:
        C[empty] = 8.0
    C[boiler[: 30]] = rng.integers(4, 9, size=(30, d))
    Q = rng.integers(-2, 9, size=(nq, d)).astype(np.float32)
    qtexts = [f"query {j} word{j % 17} term{j % 5}" for j in range(nq)]
    pos = []
    for j in range(nq):
        p = set(rng.choice(n, size=int(rng.integers(1, 4)), replace=False).tolist())
        if j % 3 == 0:
            p.add(int(empty[j % 120]))
        if j % 4 == 1:
            p.add(int(boiler[j % 60]))
        if j % 5 == 2:
            p.add(int(small[j % 20]))
        pos.append(np.array(sorted(p)))
        if j % 7 == 3:
            qtexts[j] = ""
        elif j % 7 == 5:
            qtexts[j] = "boiler plate word3 term1"
        elif j % 7 == 6:
            qtexts[j] = texts[int(rest[j])]
    return make_ds(nq, n, pos, qtexts, texts), C, Q


DUP_CONFIGS = [
    dict(num_negatives=5, range_min=0, range_max=20, relative_margin=None),
    dict(num_negatives=4, range_min=3, range_max=60, relative_margin=None, max_score=60.0, st_rule="6.2"),
    dict(num_negatives=6, range_min=0, range_max=150, relative_margin=None, batch_size=7),
    dict(num_negatives=3, range_min=1, range_max=30, relative_margin=None, sampling="random", seed=3),
    dict(num_negatives=5, range_min=0, range_max=15, relative_margin=None, exclude_self=False,
         rescorer=lambda qs, ds: [float(3 * len(a) - len(b) + (b[-1:] == "1")) for a, b in zip(qs, ds)]),
]


def _same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.anchor_scores, b.anchor_scores)
    for x, y in zip(a.all_positive_scores, b.all_positive_scores):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicate_groups_exclusions_match_previous(seed):
    from hardneg.mining._exclusions import Positives, _exclusions

    ds, _, _ = make_groups(seed)
    pos = Positives.of(ds)
    for self_, same in [(True, True), (False, True), (True, False)]:
        got = _exclusions(ds, pos.query, pos.rows, self_, same)
        want = _old_exclusions(ds, pos.query, pos.rows, self_, same)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("expand_max", [0, 16, 10 ** 9])
@pytest.mark.parametrize("cfg", range(len(DUP_CONFIGS)))
@pytest.mark.parametrize("tie", [True, False])
def test_duplicate_groups_mining_identical_to_up_front(monkeypatch, expand_max, cfg, tie):
    """Lazy group exclusion (every group lazy, only large ones, none) against the previous
    implementation that expands every group for every query up front."""
    ex = _excl_module()

    ds, C, Q = make_groups(cfg + 10 * tie, tie=tie)
    kw = dict(corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False, **DUP_CONFIGS[cfg])
    monkeypatch.setattr(ex, "EXPAND_MAX", expand_max)
    got = mine_hard_negatives(ds, **kw)
    with monkeypatch.context() as m:
        _use_old_exclusions(m)
        want = mine_hard_negatives(ds, **kw)
    _same(got, want)
    assert got.counts.sum() >= got.counts.size
    texts = ds.corpus_texts
    for j, r in enumerate(rows(got)):  # no negative shares a text with the query or a positive
        banned = {ds.query_texts[j]} | {texts[p] for p in got.positive_ids[j]}
        assert not {texts[x] for x in r} & banned


@pytest.mark.parametrize("retriever", ["bm25", "hybrid"])
@pytest.mark.parametrize("expand_max", [0, 16])
def test_duplicate_groups_bm25_hybrid_identical(monkeypatch, retriever, expand_max):
    ex = _excl_module()

    ds, C, Q = make_groups(5)
    kw = dict(corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False, num_negatives=5, range_min=0,
              range_max=40, relative_margin=None, batch_size=11)
    monkeypatch.setattr(ex, "EXPAND_MAX", expand_max)
    got = mine_hard_negatives(ds, retriever, **kw)
    with monkeypatch.context() as m:
        _use_old_exclusions(m)
        want = mine_hard_negatives(ds, retriever, **kw)
    _same(got, want)


def test_duplicate_groups_ranked_first_few_searches(monkeypatch):
    """A group of 3,000 identical rows ranked first for every query: the deeper probe finds it in
    O(log) searches, and the result equals the up-front exclusion."""
    from hardneg.mining import _pipeline

    rng = np.random.default_rng(7)
    n, nq = 4000, 6
    texts = [f"t{i}" for i in range(n)]
    grp = rng.choice(n, size=3000, replace=False)
    for i in grp:
        texts[i] = "same"
    C = rng.integers(-5, 6, size=(n, 4)).astype(np.float32)
    C[grp] = 6.0
    Q = np.ones((nq, 4), np.float32)
    pos = [np.array([int(grp[j])]) for j in range(nq)]
    ds = make_ds(nq, n, pos, None, texts)
    calls = []
    search = _pipeline._search
    monkeypatch.setattr(_pipeline, "_search", lambda *a: calls.append(a[2]) or search(*a))
    kw = dict(corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False, num_negatives=5, range_min=0,
              range_max=10, relative_margin=None)
    got = mine_hard_negatives(ds, **kw)
    assert len(calls) <= 12
    with monkeypatch.context() as m:
        _use_old_exclusions(m)
        want = mine_hard_negatives(ds, **kw)
    _same(got, want)
    assert not set(np.concatenate(rows(got)).tolist()) & set(grp.tolist())


def test_text_groups_split_hash_collisions():
    ti = hd.CorpusTextIndex(["a", "b", "a", "c", "b", "a"])
    g = ti.groups()
    assert g.group[0] == g.group[2] == g.group[5] and g.group[1] == g.group[4] and len(set(g.group.tolist())) == 3
    assert ti.group_of(["c", "b", "zz", "a"]).tolist() == [g.group[3], g.group[1], -1, g.group[0]]
    ti.sorted = np.zeros(6, np.int64)  # every hash equal: groups must still split by text
    ti.order = np.arange(6)
    ti._groups = None
    g = ti.groups()
    assert g.group.tolist() == [0, 1, 0, 2, 1, 0]
    assert g.first.tolist() == [0, 1, 3] and g.size.tolist() == [3, 2, 1]
    assert g.members[g.indptr[0]:g.indptr[1]].tolist() == [0, 2, 5]


_BIG_GROUP = r"""
import resource, sys, time, tracemalloc
import numpy as np
sys.path.insert(0, sys.argv[1])
from hardneg import datasets as hd
from hardneg.mining import mine_hard_negatives
rng = np.random.default_rng(0)
n, nq, d = 110_000, 500, 8
texts = [f"doc {i}" for i in range(n)]
for i in range(100_000):
    texts[i] = ""
C = rng.standard_normal((n, d)).astype(np.float32)
Q = rng.standard_normal((nq, d)).astype(np.float32)
pos = {f"q{j}": {f"d{int(rng.integers(0, 100_000))}": 1} for j in range(nq)}  # each has an empty positive
qt = {f"q{j}": ("" if j % 2 else f"query {j}") for j in range(nq)}  # half the queries are the empty text
ds = hd.from_dict({f"d{i}": texts[i] for i in range(n)}, qt, pos)
ds.text_index().groups()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
m = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, num_negatives=8, range_min=0,
                        range_max=50, relative_margin=None, progress=False)
peak = tracemalloc.get_traced_memory()[1]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids = m.ids[m.ids >= 0]
assert ids.size == nq * 8 and (ids >= 100_000).all()
print(peak, (after - before) * 1024)
"""


def test_group_of_100k_identical_texts(tmp_path):
    """100,000 identical (empty) texts, every query with one of them as a positive and half the
    queries empty: no group expansion; peak extra memory stays far below the 100,000 x 500 pairs
    (400 MB) an up-front expansion would hold."""
    import subprocess
    import sys

    script = tmp_path / "big_group.py"
    script.write_text(_BIG_GROUP)
    out = subprocess.run([sys.executable, str(script), str(Path(hn.__file__).parents[1])], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    peak, rss = (int(x) for x in out.stdout.split())
    assert peak < 100 << 20, peak


def test_duplicate_groups_retriever_ignoring_exclude_raises(monkeypatch):
    """A search that returns excluded rows cannot converge: a clear error, not a hang."""
    from hardneg.mining import _pipeline

    ds, C, Q = make_groups(3)
    search = _pipeline._search
    monkeypatch.setattr(_pipeline, "_search", lambda ret, rows, k, exclude: search(ret, rows, k, None))
    with pytest.raises(RuntimeError, match="honour"):
        mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False,
                            num_negatives=5, range_min=0, range_max=20, relative_margin=None)


def test_huge_range_max_is_a_deep_window():
    """range_max at the int64 limit (found by the long fuzz run) is just a window deeper than the corpus."""
    ds = hd.from_dict({"d0": "a", "d1": "b", "d2": "c"}, {"q": "z"}, {"q": {"d0": 1}})
    C = np.array([[1, 0], [0.5, 0.5], [0, 1]], np.float32)
    Q = np.array([[1, 0.2]], np.float32)
    ref = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, num_negatives=2, range_min=0,
                              range_max=10, relative_margin=None, progress=False)
    for rmax in (2**62, 2**63 - 1):
        got = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, num_negatives=2, range_min=0,
                                  range_max=rmax, relative_margin=None, progress=False)
        np.testing.assert_array_equal(got.ids, ref.ids)

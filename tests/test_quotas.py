"""Negatives from several sources with quotas, and the positive-in-top filter, against brute force."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hardneg.mining import mine_hard_negatives, parse_negatives_from
from hardneg.mining._sources import merge_sources

from test_mining import FakeBM25, make_bm25_scores, make_ds, make_exact, oracle, rows


def union_reference(lists, quotas):
    """Source by source, the first `quota` negatives not taken by an earlier source."""
    out, src = [], []
    for s, (lst, quota) in enumerate(zip(lists, quotas)):
        got = 0
        for x in lst:
            if got == quota:
                break
            if x not in out:
                out.append(x)
                src.append(s)
                got += 1
    return out, src


KW = dict(range_min=1, range_max=40, relative_margin=0.05)


@pytest.mark.parametrize("order", [("bm25", "dense"), ("dense", "bm25")])
@pytest.mark.parametrize("quotas", [(4, 4), (1, 6), (5, 2)])
def test_quotas_equal_the_brute_force_union(order, quotas):
    Q, C, S, pos = make_exact(nq=25, n=120, seed=4)
    B = make_bm25_scores(25, 120, 3)
    B[:, :60] = np.maximum(B[:, :60], 1.0)  # a shared pool: the sources overlap a lot
    ds = make_ds(25, 120, pos)
    spec = dict(zip(order, quotas))
    mined = mine_hard_negatives(ds, negatives_from=spec, corpus_embeddings=C, query_embeddings=Q, metric="ip",
                                bm25=FakeBM25(B), progress=False, **KW)
    ref = {"dense": oracle(S, pos, num_negatives=20, **KW),
           "bm25": oracle(np.where(B > 0, B, -np.inf), pos, num_negatives=20, **KW)}
    got_src = mined.negative_sources()
    for j in range(25):
        want, wsrc = union_reference([ref[k][j] for k in order], quotas)
        assert rows(mined)[j] == want, j
        assert got_src[j] == [order[s] for s in wsrc]
        assert len(set(rows(mined)[j])) == len(rows(mined)[j])
    total = {k: sum(s.count(k) for s in got_src) for k in order}
    assert mined.stats["sources"] == total
    assert mined.params["negatives_from"] == spec and mined.ids.shape[1] == sum(quotas)
    # every source's own scores travel with its negatives
    for j in range(25):
        for r, x in enumerate(rows(mined)[j]):
            s = S[j, x] if got_src[j][r] == "dense" else B[j, x]
            assert mined.scores[j, r] == pytest.approx(s, rel=1e-6)
    assert "negatives per source" in mined.report()


def test_a_document_found_by_both_counts_for_the_first_and_the_next_fills_its_place():
    a = (np.array([[5, 7, -1]]), np.array([[3.0, 2.0, -np.inf]], np.float32))
    b = (np.array([[7, 5, 9, 11]]), np.array([[9.0, 8.0, 7.0, 6.0]], np.float32))
    ids, scores, src, dups = merge_sources([a, b], [2, 2])
    assert ids.tolist() == [[5, 7, 9, 11]] and src.tolist() == [[0, 0, 1, 1]] and dups == [0, 2]
    assert scores.tolist() == [[3.0, 2.0, 7.0, 6.0]]
    # a short source leaves no hole: found negatives first
    ids, _, src, _ = merge_sources([(np.array([[5, -1]]), np.zeros((1, 2), np.float32)),
                                    (np.array([[6, 8, -1]]), np.zeros((1, 3), np.float32))], [2, 1])
    assert ids.tolist() == [[5, 6, -1]] and src.tolist() == [[0, 1, -1]]


def test_sources_in_the_saved_files(tmp_path):
    Q, C, S, pos = make_exact(nq=10, n=80, seed=2)
    B = make_bm25_scores(10, 80, 5)
    ds = make_ds(10, 80, pos)
    mined = mine_hard_negatives(ds, negatives_from="bm25:2,dense:3", corpus_embeddings=C, query_embeddings=Q,
                                bm25=FakeBM25(B), progress=False, range_min=0, range_max=30)
    mined.save(tmp_path / "ids.jsonl", format="ids")
    recs = [json.loads(x) for x in (tmp_path / "ids.jsonl").read_text().splitlines()]
    assert [r["negative_sources"] for r in recs] == mined.negative_sources()
    from hardneg.mining import load_negatives

    back = load_negatives(tmp_path / "ids.jsonl", ds)
    assert back.negative_sources() == mined.negative_sources()
    n = mined.save(tmp_path / "st.jsonl", format="sentence-transformers")
    recs = [json.loads(x) for x in (tmp_path / "st.jsonl").read_text().splitlines()]
    assert len(recs) == n and all(len(r["negative_sources"]) == 5 for r in recs)


@pytest.mark.parametrize("spec,word", [({"tfidf": 2}, "unknown source"), ({"bm25": 0}, "bm25"),
                                       ({"bm25": 1.5}, "bm25"), ("bm25:x", "positive integer"),
                                       ("bm25", "SOURCE:COUNT"), ("bm25:1,bm25:2", "twice"), ({}, "no source"),
                                       (3, "negatives_from")])
def test_bad_negatives_from(spec, word):
    with pytest.raises((ValueError, TypeError), match=word):
        parse_negatives_from(spec)


# ---------------------------------------------------------------------------------------------- positive in top


def positive_in_top_reference(S, pos, k):
    """Best positive in the top k of the full ranking (ties by ascending row), by counting."""
    n = S.shape[1]
    out = []
    for j, p in enumerate(pos):
        ranks = [int(((S[j] > S[j, d]) | ((S[j] == S[j, d]) & (np.arange(n) < d))).sum()) for d in p]
        out.append(bool(ranks) and min(ranks) < k)
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3, 10, 1000])
@pytest.mark.parametrize("action", ["drop", "flag"])
def test_positive_in_top_counts_equal_numpy(k, action, tmp_path):
    Q, C, S, pos = make_exact(nq=40, n=300, seed=7)
    ds = make_ds(40, 300, pos)
    kw = dict(num_negatives=3, range_min=0, range_max=20, relative_margin=0.05)
    mined = mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, metric="ip", progress=False,
                                require_positive_in_top=k, positive_not_in_top=action, **kw)
    ref = positive_in_top_reference(S, pos, k)
    np.testing.assert_array_equal(mined.positive_in_top, ref)
    assert mined.stats["positive_not_in_top"] == {"k": k, "action": action, "queries": int((~ref).sum())}
    plain = oracle(S, pos, **kw)
    for j in range(40):
        assert rows(mined)[j] == ([] if action == "drop" and not ref[j] else plain[j])
    n = mined.save(tmp_path / "o.jsonl", format="ids")
    recs = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    if action == "drop":
        assert n == int(ref.sum()) and mined.dropped.sum() == int((~ref).sum())
    else:
        assert n == 40 and [r["positive_in_top"] for r in recs] == ref.tolist()
    assert f"positive not in the top {k}" in mined.report()


def test_positive_in_top_with_bm25_and_bad_values():
    Q, C, S, pos = make_exact(nq=12, n=90, seed=1)
    B = make_bm25_scores(12, 90, 2)
    ds = make_ds(12, 90, pos)
    mined = mine_hard_negatives(ds, "bm25", bm25=FakeBM25(B), progress=False, range_min=0, range_max=20,
                                num_negatives=2, require_positive_in_top=5, positive_not_in_top="flag")
    Bm = np.where(B > 0, B, -np.inf)
    np.testing.assert_array_equal(mined.positive_in_top, positive_in_top_reference(Bm, pos, 5))
    with pytest.raises(ValueError, match="require_positive_in_top"):
        mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, require_positive_in_top=0)
    with pytest.raises(ValueError, match="positive_not_in_top"):
        mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, require_positive_in_top=3,
                            positive_not_in_top="keep")

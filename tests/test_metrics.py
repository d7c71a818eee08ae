"""Parity of hn.evaluate with pytrec_eval (trec_eval 9.x) and of hn.fuse with a plain reference."""
from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

import hardneg as hn

pytrec_eval = pytest.importorskip("pytrec_eval")

from paths import SCIFACT

# our name -> pytrec_eval measure
PAIRS = {
    "ndcg@1": "ndcg_cut_1",
    "ndcg@3": "ndcg_cut_3",
    "ndcg@10": "ndcg_cut_10",
    "ndcg": "ndcg",
    "recip_rank": "recip_rank",
    "recall@5": "recall_5",
    "recall@100": "recall_100",
    "p@1": "P_1",
    "p@5": "P_5",
    "p@20": "P_20",
    "map": "map",
    "map@5": "map_cut_5",
    "map@100": "map_cut_100",
    "r-precision": "Rprec",
    "success@1": "success_1",
    "hit_rate@5": "success_5",
    "Success@10": "success_10",
}
TREC_NAMES = ["ndcg_cut_10", "P_5", "recall_100", "map_cut_5", "Rprec", "success_10", "map", "recip_rank"]
MEASURES = {"ndcg_cut", "ndcg", "recip_rank", "recall", "P", "map", "map_cut", "Rprec", "success"}
CUTS = "1,3,5,10,20,100"


def pytrec(qrels, run, level=1):
    ms = {f"{m}.{CUTS}" if m in ("ndcg_cut", "recall", "P", "map_cut") else m for m in MEASURES}
    ms.discard("success")
    ms.add("success.1,5,10")
    return pytrec_eval.RelevanceEvaluator(qrels, ms, relevance_level=level).evaluate(run)


def random_case(rng: random.Random, nq=40, ndocs=60, tie_mode="mixed"):
    """Qrels with graded / zero / negative judgements and runs with ties, unjudged
    documents, empty runs, queries missing on either side."""
    docs = [f"d{i}" for i in range(ndocs)] + ["D1", "é9", "a", "ab", "b"]
    qrels, run = {}, {}
    for qi in range(nq):
        q = f"q{qi}"
        if rng.random() < 0.9:
            j = rng.sample(docs, rng.randint(1, 12))
            qrels[q] = {d: rng.choice([-2, -1, 0, 0, 1, 1, 1, 2, 3, 5]) for d in j}
            if max(qrels[q].values()) < 0:
                # pytrec_eval 0.5.11 crashes (heap corruption) on a query whose judgements
                # are all negative; test_all_negative_judgements covers that case for hardneg
                qrels[q][j[0]] = 0
        if rng.random() < 0.9:
            n = rng.choice([0, 1, 3, 10, 30, 50])
            ret = rng.sample(docs, min(n, len(docs)))
            if tie_mode == "mixed":
                run[q] = {d: float(rng.choice([1, 2, 3, 3.5, 4, 4.25])) if rng.random() < 0.5 else rng.random() for d in ret}
            elif tie_mode == "float32":
                # differ in float64 but tie in float32 (trec_eval keeps float)
                run[q] = {d: 1.0 + rng.choice([0, 1e-12, 2e-12, 1e-9]) for d in ret}
            else:
                run[q] = {d: rng.random() for d in ret}
    run["not_judged"] = {"d1": 1.0}
    return qrels, run


def check_close(ours, ref_per_query, run_order, names, level_key=None):
    for name in names:
        ref_name = PAIRS.get(name, name)
        arr = ours[name]
        for i, q in enumerate(run_order):
            if q in ref_per_query:
                assert arr[i] == pytest.approx(ref_per_query[q][ref_name], abs=1e-9), (name, q)
            else:
                assert math.isnan(arr[i]), (name, q)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tie_mode", ["mixed", "float32", "none"])
def test_dict_parity_random(seed, tie_mode):
    rng = random.Random(seed * 7 + len(tie_mode))
    qrels, run = random_case(rng, tie_mode=tie_mode)
    ref = pytrec(qrels, run)
    names = list(PAIRS)
    ours = hn.evaluate(qrels, run, names, per_query=True, num_threads=2)
    check_close(ours, ref, list(run), names)
    means = hn.evaluate(hn.Qrels.from_dict(qrels), run, names)
    for name in names:
        exp = np.mean([ref[q][PAIRS[name]] for q in ref])
        assert means[name] == pytest.approx(exp, abs=1e-9)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_relevance_level(level):
    rng = random.Random(100 + level)
    qrels, run = random_case(rng)
    ref = pytrec(qrels, run, level)
    ours = hn.evaluate(qrels, run, list(PAIRS), per_query=True, relevance_level=level)
    check_close(ours, ref, list(run), list(PAIRS))


def test_trec_names_and_case():
    rng = random.Random(5)
    qrels, run = random_case(rng)
    ref = pytrec(qrels, run)
    ours = hn.evaluate(qrels, run, TREC_NAMES + ["NDCG@10", "Recall_100", "map_cut.5", "MRR"], per_query=True)
    check_close(ours, ref, list(run), TREC_NAMES)
    np.testing.assert_allclose(ours["NDCG@10"], ours["ndcg_cut_10"])
    np.testing.assert_allclose(ours["MRR"], ours["recip_rank"])


def test_tie_order_is_descending_docno():
    # trec_eval: equal (float32) scores -> docno in descending byte order
    qrels = {"q": {"a": 1}}
    cases = [({"a": 1.0, "b": 1.0}, 0.5), ({"a": 1.0, "A": 1.0}, 1.0), ({"a": 1.0 + 1e-12, "b": 1.0}, 0.5),
             ({"a": 1.0 + 1e-6, "b": 1.0}, 1.0), ({"a": 1.0, "é": 1.0, "Z": 1.0}, 0.5), ({"a": 1.0, "ab": 1.0}, 0.5)]
    for r, exp in cases:
        assert pytrec(qrels, {"q": r})["q"]["recip_rank"] == exp
        assert hn.evaluate(qrels, {"q": r}, ["recip_rank"])["recip_rank"] == exp, r


def test_mrr_at_k_is_cut_recip_rank():
    qrels = {"q": {"x": 1}}
    run = {"q": {f"d{i}": 100.0 - i for i in range(20)}}
    run["q"]["x"] = 100.0 - 11.5  # rank 13
    res = hn.evaluate(qrels, run, ["mrr@10", "mrr@13", "recip_rank"])
    assert res == {"mrr@10": 0.0, "mrr@13": pytest.approx(1 / 13), "recip_rank": pytest.approx(1 / 13)}


def test_empty_and_missing():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 2}, "q4": {}}
    run = {"q1": {}, "q2": {"b": 1.0}, "q4": {"a": 1.0}, "q5": {"c": 1.0}}
    ref = pytrec(qrels, run)
    assert set(ref) == {"q1", "q2"}
    ours = hn.evaluate(qrels, run, list(PAIRS), per_query=True)
    check_close(ours, ref, list(run), list(PAIRS))
    assert hn.evaluate(qrels, run, ["map"]) == {"map": 0.0}
    assert math.isnan(hn.evaluate(qrels, {}, ["map"])["map"])
    assert math.isnan(hn.evaluate(qrels, {"zz": {"a": 1.0}}, ["map"])["map"])


def test_all_negative_judgements():
    # pytrec_eval crashes here; trec_eval semantics: evaluated (in both), every measure 0
    qrels = {"a": {"d": 5}, "b": {"x": -2}}
    run = {"a": {"y": 4.0}, "b": {"x": 1.0}}
    res = hn.evaluate(qrels, run, list(PAIRS), per_query=True)
    for n in PAIRS:
        assert res[n].tolist() == [0.0, 0.0]


def test_ranx_convention():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 2}, "q4": {"d": 1, "e": 1}}
    run = {"q1": {"a": 1.0}, "q2": {"b": 1.0}, "q4": {"x": 2.0, "e": 1.0}, "q5": {"c": 1.0}}
    t = hn.evaluate(qrels, run, ["recall@10", "recip_rank"])
    assert t["recall@10"] == pytest.approx((1 + 0 + 0.5) / 3)
    r = hn.evaluate(qrels, run, ["recall@10", "recip_rank"], convention="ranx")
    # q1, q3 (missing: 0), q4; q2 has no relevant document
    assert r["recall@10"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert r["recip_rank"] == pytest.approx((1 + 0 + 0.5) / 3)
    pq = hn.evaluate(qrels, run, ["recip_rank"], convention="ranx", per_query=True)["recip_rank"]
    assert pq[0] == 1.0 and math.isnan(pq[1]) and pq[2] == 0.5 and math.isnan(pq[3])
    with pytest.raises(ValueError, match="convention"):
        hn.evaluate(qrels, run, ["map"], convention="beir!")


# ---- array form --------------------------------------------------------------

def trec_order(inner):
    """Documents in trec_eval's order: float32 score descending, docno descending."""
    items = sorted(inner.items(), key=lambda x: x[0].encode(), reverse=True)
    items.sort(key=lambda x: np.float32(x[1]), reverse=True)
    return [d for d, _ in items]


@pytest.mark.parametrize("seed", range(5))
def test_array_parity_random(seed):
    rng = random.Random(1000 + seed)
    qrels, run = random_case(rng)
    corpus = sorted({d for r in run.values() for d in r} | {"extra1", "extra2"})
    rng.shuffle(corpus)
    row = {d: i for i, d in enumerate(corpus)}
    qids = list(run) + ["q_only_in_ids"]
    width = max(len(v) for v in run.values()) + 5
    ids = np.full((len(qids), width), -1, dtype=np.int64)
    nprng = np.random.default_rng(seed)
    for i, q in enumerate(qids[:-1]):
        ranked = [row[d] for d in trec_order(run[q])]
        # interleave -1 padding and repeated ids: both are skipped
        out = []
        for c in ranked:
            out.append(c)
            u = nprng.random()
            if u < 0.1:
                out.append(-1)
            elif u < 0.2 and out:
                out.append(out[int(nprng.integers(len(out)))])
        out = out[:width]
        kept = []
        for c in out:
            if c >= 0 and c not in kept:
                kept.append(c)
        # the reference sees what the kernel keeps: the first occurrence, in order
        run[q] = {corpus[c]: float(len(kept) - j) for j, c in enumerate(kept)}
        ids[i, : len(out)] = out
    ref = pytrec(qrels, run)
    names = list(PAIRS)
    scores = np.zeros(ids.shape, dtype=np.float32)
    for form in (ids, (scores, ids)):
        ours = hn.evaluate(qrels, form, names, per_query=True, query_ids=qids, corpus_ids=corpus, num_threads=2)
        check_close(ours, ref, qids, names)
    # one metric at a time: the scan stops at the deepest rank the metrics need
    for name in names + [["ndcg@3", "r-precision"], ["p@1", "recall@5"]]:
        sub = [name] if isinstance(name, str) else name
        one = hn.evaluate(qrels, ids, sub, per_query=True, query_ids=qids, corpus_ids=corpus)
        check_close(one, ref, qids, sub)
    # numpy id arrays, a cached corpus mapping, means
    means = hn.evaluate(qrels, ids, names, query_ids=np.array(qids), corpus_ids=np.array(corpus))
    for name in names:
        exp = np.mean([ref[q][PAIRS[name]] for q in ref])
        assert means[name] == pytest.approx(exp, abs=1e-9)


def test_array_dict_agree_on_topk_output():
    rng = np.random.default_rng(3)
    Q, N, k = 50, 400, 30
    corpus = [f"doc{i}" for i in range(N)]
    qids = [f"q{i}" for i in range(Q)]
    scores, ids = hn.topk(rng.standard_normal((Q, 16), dtype=np.float32),
                          rng.standard_normal((N, 16), dtype=np.float32), k=k)
    qrels = {q: {corpus[int(j)]: int(rng.integers(0, 3)) for j in rng.choice(N, 8, replace=False)} for q in qids}
    qrels[qids[0]][corpus[int(ids[0, 0])]] = 2
    run = {q: {corpus[int(j)]: float(s) for j, s in zip(ids[i], scores[i])} for i, q in enumerate(qids)}
    names = list(PAIRS)
    a = hn.evaluate(qrels, (scores, ids), names, per_query=True, query_ids=qids, corpus_ids=corpus)
    d = hn.evaluate(qrels, run, names, per_query=True)
    for n in names:
        np.testing.assert_allclose(a[n], d[n], atol=1e-12)


def test_corpus_id_mapping_forms():
    qrels = {"q": {"é": 2, "b": 1, "zz": 1}, "r": {"b": 3, "x": 1}}
    corpus = ["a", "b", "é", "b#3", "c", "x"]  # "zz" absent
    ids = np.array([[3, 1, 2, 5], [0, 1, 3, -1]])
    want = None
    for form in (corpus, tuple(corpus), np.array(corpus), np.array(corpus, dtype=object)):
        got = hn.evaluate(qrels, ids, ["ndcg@10", "recall@5", "map"], per_query=True,
                          query_ids=["q", "r"], corpus_ids=form)
        if want is None:
            want = got
        for n in got:
            np.testing.assert_array_equal(got[n], want[n])
    # row 3 is unjudged; "zz" never retrieved
    ref = pytrec({"q": qrels["q"], "r": qrels["r"]},
                 {"q": {"b#3": 4.0, "b": 3.0, "é": 2.0, "x": 1.0}, "r": {"a": 3.0, "b": 2.0, "b#3": 1.0}})
    check_close(want, ref, ["q", "r"], ["map", "recall@5", "ndcg@10"])
    with pytest.raises(TypeError, match="corpus_ids"):
        hn.evaluate(qrels, ids, ["map"], query_ids=["q", "r"], corpus_ids=["a", 1, "é", "b", "c", "x"])
    # a name on two rows: the second could never be matched, so it is refused in every form
    dup = ["a", "b", "é", "b", "c", "x"]
    for form in (dup, tuple(dup), np.array(dup), np.array(dup, dtype=object)):
        with pytest.raises(ValueError, match="corpus_ids holds 'b' more than once"):
            hn.evaluate(qrels, ids, ["map"], query_ids=["q", "r"], corpus_ids=form)
    # integer corpus ids are compared as decimal strings
    res = hn.evaluate({"q": {"7": 1}}, np.array([[1, 0]]), ["recip_rank"], query_ids=["q"],
                      corpus_ids=np.array([5, 7]))
    assert res["recip_rank"] == 1.0


def test_array_bad_input():
    qrels = {"q": {"a": 1}}
    ids = np.array([[0, 1]])
    with pytest.raises(ValueError, match="query_ids"):
        hn.evaluate(qrels, ids, ["map"])
    with pytest.raises(ValueError, match="rows"):
        hn.evaluate(qrels, ids, ["map"], query_ids=["q", "r"], corpus_ids=["a", "b"])
    with pytest.raises(ValueError, match="outside"):
        hn.evaluate(qrels, ids, ["map"], query_ids=["q"], corpus_ids=["a"])
    with pytest.raises(ValueError, match="outside"):
        hn.evaluate(qrels, np.array([[0, -2]]), ["map"], query_ids=["q"], corpus_ids=["a", "b"])
    with pytest.raises(ValueError, match="2-D"):
        hn.evaluate(qrels, np.array([0, 1]), ["map"], query_ids=["q"], corpus_ids=["a", "b"])
    with pytest.raises(TypeError, match="integer"):
        hn.evaluate(qrels, np.array([[0.0, 1.0]]), ["map"], query_ids=["q"], corpus_ids=["a", "b"])
    # an out-of-range id met inside the scan, before the relevant document
    with pytest.raises(ValueError, match="outside"):
        hn.evaluate({"q": {"b": 1}}, np.array([[0, 5, 1]]), ["map"], query_ids=["q"], corpus_ids=["a", "b"])
    with pytest.raises(ValueError, match="outside"):
        hn.evaluate({"q": {"b": 1}}, np.array([[0, -3, 1]]), ["map"], query_ids=["q"], corpus_ids=["a", "b"])
    # rows of unjudged queries are checked too
    with pytest.raises(ValueError, match="outside"):
        hn.evaluate(qrels, np.array([[0, 1], [9, 0]]), ["map"], query_ids=["q", "zz"], corpus_ids=["a", "b"])
    # ids never used by a metric are still checked (an early exit does not skip them)
    with pytest.raises(ValueError, match="outside"):
        hn.evaluate(qrels, np.array([[0, 7]]), ["recip_rank"], query_ids=["q"], corpus_ids=["a", "b"])


def test_bad_metric_names_and_qrels():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0}}
    with pytest.raises(ValueError, match="valid metrics are .*ndcg@k"):
        hn.evaluate(qrels, run, ["ndcg@ten"])
    with pytest.raises(ValueError, match="unknown metric"):
        hn.evaluate(qrels, run, ["bpref"])
    for bad in ("ndcg@0", "p@-1", "recall_0"):
        with pytest.raises(ValueError, match="positive"):
            hn.evaluate(qrels, run, [bad])
    with pytest.raises(TypeError, match="run must be"):
        hn.evaluate(qrels, 5, ["map"])
    with pytest.raises(ValueError, match="at least one"):
        hn.evaluate(qrels, run, [])
    with pytest.raises(ValueError, match="integer"):
        hn.Qrels.from_dict({"q": {"a": 1.5}})
    with pytest.raises(ValueError, match="integer"):
        hn.Qrels.from_dict({"q": {"a": "1"}})
    with pytest.raises(TypeError):
        hn.Qrels.from_dict({"q": [("a", 1)]})
    with pytest.raises(TypeError):
        hn.evaluate(qrels, {"q": {"a": "high"}}, ["map"])
    with pytest.raises(TypeError):
        hn.evaluate(qrels, {"q": {1: 1.0}}, ["map"])
    with pytest.raises(TypeError):
        hn.evaluate(qrels, {"q": [1.0]}, ["map"])
    with pytest.raises(ValueError, match="NaN"):
        hn.evaluate(qrels, {"q": {"a": float("nan")}}, ["map"])
    with pytest.raises(TypeError, match="relevance_level"):
        hn.evaluate(qrels, run, ["map"], relevance_level=1.5)
    # numpy scalar scores are accepted (pytrec_eval refuses them)
    assert hn.evaluate(qrels, {"q": {"a": np.float32(2.0)}}, ["map"])["map"] == 1.0


def test_files(tmp_path):
    rng = random.Random(9)
    qrels, run = random_case(rng, nq=15)
    beir = tmp_path / "test.tsv"
    with open(beir, "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, j in qrels.items():
            for d, r in j.items():
                f.write(f"{q}\t{d}\t{r}\n")
    trec = tmp_path / "qrels.txt"
    with open(trec, "w") as f:
        for q, j in qrels.items():
            for d, r in j.items():
                f.write(f"{q} 0 {d} {r}\n")
    runf = tmp_path / "run.txt"
    with open(runf, "w") as f:
        for q, r in run.items():
            for i, (d, s) in enumerate(r.items()):
                f.write(f"{q} Q0 {d} {i + 1} {s!r} tag\n")
    assert hn.Qrels.from_tsv(beir).to_dict() == hn.Qrels.from_tsv(trec).to_dict() == {q: j for q, j in qrels.items() if j}
    with open(runf) as f:
        ref = pytrec(qrels, pytrec_eval.parse_run(f))
    for qf in (beir, trec, str(trec)):
        ours = hn.evaluate(qf, runf, list(PAIRS), per_query=True)
        check_close(ours, ref, list(hn.read_run(runf)), list(PAIRS))
    bad = tmp_path / "dup.txt"
    bad.write_text("q Q0 a 1 1.0 t\nq Q0 a 2 0.5 t\n")
    with pytest.raises(ValueError, match="twice"):
        hn.evaluate(qrels, bad, ["map"])
    bad.write_text("q 0 a x\n" * 2)
    with pytest.raises(ValueError, match="integer"):
        hn.Qrels.from_tsv(bad)


@pytest.mark.slow
def test_scifact_topk_parity():
    if not (SCIFACT / "qrels" / "test.tsv").exists():
        pytest.skip("SciFact not available")
    import json

    qrels = hn.Qrels.from_tsv(SCIFACT / "qrels" / "test.tsv")
    corpus_ids = [json.loads(l)["_id"] for l in open(SCIFACT / "corpus.jsonl")]
    query_ids = [json.loads(l)["_id"] for l in open(SCIFACT / "queries.jsonl")]
    qe = np.load(SCIFACT / "embeddings" / "minilm-queries.npy")
    ce = np.load(SCIFACT / "embeddings" / "minilm-corpus.npy")
    if len(qe) != len(query_ids) or len(ce) != len(corpus_ids):
        pytest.skip("embedding rows do not match the jsonl files")
    scores, ids = hn.topk(qe, ce, k=100, metric="cosine")
    names = ["ndcg_cut_10", "recall_100", "map", "recip_rank", "P_10", "Rprec", "success_1"]
    ours = hn.evaluate(qrels, (scores, ids), names, per_query=True, query_ids=query_ids, corpus_ids=corpus_ids)
    run = {q: {corpus_ids[int(j)]: float(len(ids[i]) - c) for c, j in enumerate(ids[i])} for i, q in enumerate(query_ids)}
    ref = pytrec(qrels.to_dict(), run)
    check_close(ours, ref, query_ids, names)


# ---- fusion ------------------------------------------------------------------

def ref_fuse_rows(runs, method, k, norm, weights):
    """Straightforward per-row fusion of (scores, ids) arrays: dict accumulation."""
    Q = runs[0][1].shape[0]
    out = []
    for i in range(Q):
        acc, cnt = {}, {}
        for (s, ids), w in zip(runs, weights):
            seen, row = set(), []
            for j, d in enumerate(ids[i].tolist()):
                if d >= 0 and d not in seen:
                    seen.add(d)
                    row.append((d, float(s[i, j]) if s is not None else 0.0))
            vals = [x for _, x in row]
            if method == "rrf":
                contrib = [w / (k + r + 1) for r in range(len(row))]
            else:
                if norm == "minmax" and vals:
                    lo, hi = min(vals), max(vals)
                    vals = [(v - lo) / (hi - lo) if hi > lo else 1.0 for v in vals]
                elif norm == "zscore" and vals:
                    m = sum(vals) / len(vals)
                    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))
                    vals = [(v - m) / sd if sd > 0 else 0.0 for v in vals]
                contrib = [w * v for v in vals]
            for (d, _), c in zip(row, contrib):
                acc[d] = acc.get(d, 0.0) + c
                cnt[d] = cnt.get(d, 0) + 1
        if method == "combmnz":
            acc = {d: v * cnt[d] for d, v in acc.items()}
        out.append(sorted(acc.items(), key=lambda x: (-x[1], x[0])))
    return out


@pytest.mark.parametrize("method,norm", [("rrf", "minmax"), ("combsum", "minmax"), ("combsum", "zscore"),
                                         ("combmnz", "minmax"), ("combmnz", "zscore"), ("combsum", "none")])
def test_fuse_arrays_vs_reference(method, norm):
    rng = np.random.default_rng(hash((method, norm)) % 1000)
    Q, N = 30, 40
    runs = []
    for kk in (10, 25, 7):
        ids = np.stack([rng.choice(N, kk, replace=False) for _ in range(Q)]).astype(np.int64)
        s = np.round(rng.standard_normal((Q, kk)), 1).astype(np.float32)  # ties
        s = -np.sort(-s, axis=1)
        ids[rng.random(ids.shape) < 0.1] = -1
        ids[rng.random(ids.shape) < 0.05] = ids[0, 0]  # repeats
        ids[3] = -1  # an empty row
        s[5] = 1.0  # constant scores
        runs.append((s, ids))
    weights = [1.0, 0.5, 2.0]
    fs, fi = hn.fuse(runs, method=method, k=60, norm=norm, weights=weights, num_threads=2)
    ref = ref_fuse_rows(runs, method, 60, norm, weights)
    assert fi.shape == (Q, 42)
    for i in range(Q):
        n = len(ref[i])
        assert fi[i, :n].tolist() == [d for d, _ in ref[i]]
        np.testing.assert_allclose(fs[i, :n], [v for _, v in ref[i]], rtol=1e-6, atol=1e-6)
        assert (fi[i, n:] == -1).all() and np.isneginf(fs[i, n:]).all()
    fs2, fi2 = hn.fuse(runs, method=method, k=60, norm=norm, weights=weights, depth=5)
    np.testing.assert_array_equal(fi2, fi[:, :5])


def test_fuse_dicts_match_arrays():
    rng = np.random.default_rng(1)
    Q, N = 20, 50
    corpus = [f"d{i:02d}" for i in range(N)]
    runs_a, runs_d = [], []
    for kk in (10, 15):
        ids = np.stack([rng.choice(N, kk, replace=False) for _ in range(Q)]).astype(np.int64)
        s = -np.sort(-rng.random((Q, kk))).astype(np.float32)
        runs_a.append((s, ids))
        runs_d.append({f"q{i}": {corpus[j]: float(s[i, c]) for c, j in enumerate(ids[i])} for i in range(Q)})
    for method in ("rrf", "combsum", "combmnz"):
        for norm in ("minmax", "zscore"):
            fs, fi = hn.fuse(runs_a, method=method, norm=norm)
            fd = hn.fuse(runs_d, method=method, norm=norm)
            for i in range(Q):
                got = fd[f"q{i}"]
                n = len(got)
                exp = {corpus[j]: v for j, v in zip(fi[i, :n].tolist(), fs[i, :n].tolist())}
                assert set(got) == set(exp)
                for d in got:
                    assert got[d] == pytest.approx(exp[d], rel=1e-5, abs=1e-6)


def test_rrf_textbook():
    a = {"q": {"x": 3.0, "y": 2.0, "z": 1.0}}
    b = {"q": {"z": 9.0, "x": 1.0}}
    f = hn.fuse([a, b], method="rrf", k=60)["q"]
    assert f["x"] == pytest.approx(1 / 61 + 1 / 62)
    assert f["z"] == pytest.approx(1 / 63 + 1 / 61)
    assert f["y"] == pytest.approx(1 / 62)
    assert list(f) == ["x", "z", "y"]
    ids = np.array([[5, 7, 9]]), np.array([[9, 5]])
    fs, fi = hn.fuse(list(ids), method="rrf")
    assert fi[0, :3].tolist() == [5, 9, 7]


def test_fuse_bad_input():
    a = (np.ones((2, 3), np.float32), np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="method"):
        hn.fuse([a], method="borda")
    with pytest.raises(ValueError, match="norm"):
        hn.fuse([a], method="combsum", norm="l2")
    with pytest.raises(ValueError, match="k must"):
        hn.fuse([a], k=0)
    with pytest.raises(ValueError, match="rows"):
        hn.fuse([a, (np.ones((3, 3), np.float32), np.zeros((3, 3), np.int64))])
    with pytest.raises(ValueError, match="needs"):
        hn.fuse([a[1]], method="combsum")
    with pytest.raises(ValueError, match="weights"):
        hn.fuse([a], weights=[1, 2])
    with pytest.raises(TypeError, match="all dicts"):
        hn.fuse([a, {"q": {}}])
    with pytest.raises(ValueError, match="finite"):
        hn.fuse([(np.full((2, 3), np.nan, np.float32), np.zeros((2, 3), np.int64))], method="combsum")
    with pytest.raises(ValueError, match="-1"):
        hn.fuse([np.full((2, 3), -5)])


@pytest.mark.parametrize("seed", range(3))
def test_mrr_at_k_random(seed):
    # mrr@k == pytrec_eval recip_rank on the run cut to its top k (trec_eval order)
    rng = random.Random(500 + seed)
    qrels, run = random_case(rng)
    for k in (1, 3, 10):
        cut = {q: {d: r[d] for d in trec_order(r)[:k]} for q, r in run.items()}
        ref = pytrec(qrels, cut)
        ours = hn.evaluate(qrels, run, [f"mrr@{k}"], per_query=True)[f"mrr@{k}"]
        for i, q in enumerate(run):
            if q in ref:
                assert ours[i] == pytest.approx(ref[q]["recip_rank"], abs=1e-12)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    qrels = {"q": {"b": 1}, "r": {"a": 2}}
    ids = np.array([[0, 1], [0, -1]])
    a = hn.evaluate(qrels, ids, ["map", "ndcg@2"], query_ids=["q", "r"], corpus_ids=["a", "b"])
    t = hn.evaluate(qrels, (torch.zeros(2, 2), torch.from_numpy(ids)), ["map", "ndcg@2"],
                    query_ids=["q", "r"], corpus_ids=["a", "b"])
    assert a == t == {"map": 0.75, "ndcg@2": pytest.approx((1 / math.log2(3) + 1) / 2)}
    fs, fi = hn.fuse([torch.from_numpy(ids), torch.from_numpy(ids[:, ::-1].copy())])
    assert isinstance(fi, torch.Tensor) and fi.shape == (2, 4)


def test_run_mutated_by_score_conversion_does_not_crash():
    run = {}

    class Evil:
        def __float__(self):
            run.clear()
            return 1.0

    class Evil2:
        def __float__(self):
            run["q"].clear()
            return 2.0

    for cls in (Evil, Evil2):
        run.clear()
        run.update({"q": {"a": cls(), "b": 0.5, "c": cls()}, "r": {"a": 1.0}})
        try:
            hn.evaluate({"q": {"a": 1, "c": 1}, "r": {"a": 1}}, run, ["map"])
        except (ValueError, TypeError, RuntimeError):
            pass


def test_custom_number_scores():
    class Num:
        def __init__(self, v):
            self.v = v

        def __float__(self):
            return self.v

    qrels = {"q": {"b": 1}}
    assert hn.evaluate(qrels, {"q": {"a": Num(2.0), "b": 3}}, ["recip_rank"])["recip_rank"] == 1.0
    assert hn.evaluate(qrels, {"q": {"a": Num(4.0), "b": 3}}, ["recip_rank"])["recip_rank"] == 0.5
    with pytest.raises(TypeError, match="'a'"):
        hn.evaluate(qrels, {"q": {"a": "x", "b": 3}}, ["recip_rank"])


@pytest.mark.parametrize("seed", range(4))
def test_heavy_ties_many_judged(seed):
    # many judged documents per query, scores drawn from a few values (ties everywhere),
    # an empty docno and non-ASCII ones; dict and array forms against pytrec_eval
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(400)] + ["", "Z", "zz", "é", "ü1"]
    qrels, run = {}, {}
    for qi in range(30):
        q = f"q{qi}"
        j = rng.sample(docs, rng.randint(1, 150))
        qrels[q] = {d: rng.choice([-1, 0, 1, 2, 3]) for d in j}
        if max(qrels[q].values()) < 0:
            qrels[q][j[0]] = 0
        ret = rng.sample(docs, rng.randint(0, 300))
        run[q] = {d: rng.choice([0.5, 1.0, 1.0 + 1e-12, 2.0, -3.0, float(rng.randint(0, 5))]) for d in ret}
    row = {d: i for i, d in enumerate(docs)}
    ids = np.full((len(run), 300), -1, np.int64)
    for i, q in enumerate(run):
        o = [row[d] for d in trec_order(run[q])]
        ids[i, : len(o)] = o
    for lvl in (1, 2):
        ref = pytrec(qrels, run, lvl)
        ours = hn.evaluate(qrels, run, list(PAIRS), per_query=True, relevance_level=lvl)
        check_close(ours, ref, list(run), list(PAIRS))
        ours = hn.evaluate(qrels, ids, list(PAIRS), per_query=True, relevance_level=lvl, query_ids=list(run),
                           corpus_ids=docs)
        check_close(ours, ref, list(run), list(PAIRS))


# ------------------------------------------------------------------ nothing silently wrong
def test_array_form_refuses_duplicate_query_ids():
    qrels = {"q": {"a": 1}, "r": {"b": 1}}
    ids = np.array([[0, 1], [1, 0], [0, 1]])
    for form in (["q", "r", "q"], np.array(["q", "r", "q"]), ("q", "r", "q")):
        with pytest.raises(ValueError, match="query_ids holds 'q' more than once"):
            hn.evaluate(qrels, ids, ["map"], query_ids=form, corpus_ids=["a", "b"])


def test_array_form_refuses_mixed_id_types():
    qrels = {"1": {"a": 1}}
    ids = np.array([[0, 1], [1, 0]])
    with pytest.raises(TypeError, match="query_ids.*mix"):
        hn.evaluate(qrels, ids, ["map"], query_ids=[1, "1"], corpus_ids=["a", "b"])
    with pytest.raises(TypeError, match="corpus_ids.*mix"):
        hn.evaluate(qrels, ids[:1], ["map"], query_ids=["1"], corpus_ids=[1, "a"])
    with pytest.raises(ValueError, match="query_ids holds '1' more than once"):
        hn.evaluate(qrels, ids, ["map"], query_ids=np.array([1, 1]), corpus_ids=["a", "b"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_refused(bad):
    qrels = {"q": {"a": 1}}
    with pytest.raises(ValueError, match="query 'q', document 'b'"):
        hn.evaluate(qrels, {"q": {"a": 1.0, "b": bad}}, ["map"])
    with pytest.raises(ValueError, match="query 'q', document 'b'"):
        hn.evaluate(qrels, {"q": {"a": 1.0, "b": np.float32(bad)}}, ["map"])
    s = np.array([[1.0, bad]], np.float32)
    with pytest.raises(ValueError, match="finite"):
        hn.evaluate(qrels, (s, np.array([[0, 1]])), ["map"], query_ids=["q"], corpus_ids=["a", "b"])
    # a non-finite score in a padded slot is not a retrieved document: fine
    out = hn.evaluate(qrels, (s, np.array([[0, -1]])), ["map"], query_ids=["q"], corpus_ids=["a", "b"])
    assert out["map"] == 1.0


@pytest.mark.parametrize("grade", [1.5, 0.5, np.float64(2.0), "1", True])
def test_fractional_or_non_integer_grades_refused(grade):
    with pytest.raises(ValueError, match="integer"):
        hn.evaluate({"q": {"a": grade}}, {"q": {"a": 1.0}}, ["map"])


@pytest.mark.parametrize("name", ["ndcg@99999999999999999999", "P_9223372036854775808", "recall.10000000000000000000000"])
def test_huge_metric_cutoff_is_a_clear_error(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        hn.evaluate({"q": {"a": 1}}, {"q": {"a": 1.0}}, [name])
    assert hn.evaluate({"q": {"a": 1}}, {"q": {"a": 1.0}}, ["ndcg@9223372036854775807"])[
        "ndcg@9223372036854775807"] == 1.0


def test_fuse_refuses_nan_scores():
    good = {"q": {"a": 3.0, "b": 2.0}}
    for method in ("rrf", "combsum", "combmnz"):
        with pytest.raises(ValueError, match=r"runs\[1\].*'q'.*'c'"):
            hn.fuse([good, {"q": {"a": 1.0, "c": float("nan")}}], method=method)
    with pytest.raises(ValueError, match=r"runs\[0\].*finite"):
        hn.fuse([{"q": {"a": float("inf")}}], method="combsum")
    assert list(hn.fuse([{"q": {"a": float("inf"), "b": 1.0}}], method="rrf")["q"]) == ["a", "b"]
    ids = np.array([[0, 1, 2]])
    s = np.array([[3.0, np.nan, 1.0]], np.float32)
    for method in ("rrf", "combsum"):
        with pytest.raises(ValueError, match=r"runs\[1\]"):
            hn.fuse([(np.ones((1, 3), np.float32), ids), (s, ids)], method=method)
    # NaN in a padding slot is ignored
    hn.fuse([(s, np.array([[0, -1, 2]]))], method="combsum")


def test_unknown_kind_names_are_clear_errors():
    from hardneg import _core
    with pytest.raises(ValueError, match="unknown fusion method 'borda'"):
        _core.fuse_ids([np.zeros((1, 2), np.int64)], [None], [1.0], "borda", "none", 60.0, 2, 1)
    with pytest.raises(ValueError, match="unknown fusion norm"):
        _core.fuse_ids([np.zeros((1, 2), np.int64)], [None], [1.0], "rrf", "l2", 60.0, 2, 1)
    with pytest.raises(ValueError, match="unknown metric kind 'ndcgx'"):
        _core.metrics_eval_dict({}, {}, np.zeros(1, np.int64), [], np.zeros(0, np.int32), 1, ["ndcgx"], [10], 1)


# ------------------------------------------------------------------ names as their owners mean them
def brute_hits(qrels, run, k, level=1):
    """ranx's hits@k: relevant documents among the top k (trec_eval's order)."""
    out = {}
    for q, inner in run.items():
        if q not in qrels:
            continue
        ranked = sorted(inner.items(), key=lambda x: x[0], reverse=True)
        ranked.sort(key=lambda x: np.float32(x[1]), reverse=True)
        out[q] = sum(1 for d, _ in ranked[:k] if qrels[q].get(d, -(10**9)) >= level)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_hits_is_ranx_count_and_success_is_binary(seed):
    rng = random.Random(300 + seed)
    qrels, run = random_case(rng)
    ours = hn.evaluate(qrels, run, ["hits@1", "hits@5", "hits@10", "success@5", "hit_rate@5"], per_query="dict")
    ref = pytrec(qrels, run)
    for k in (1, 5, 10):
        want = brute_hits(qrels, run, k)
        assert {q: v[f"hits@{k}"] for q, v in ours.items()} == want
    for q, v in ours.items():
        assert v["success@5"] == v["hit_rate@5"] == ref[q]["success_5"]
        assert v["success@5"] == float(v["hits@5"] > 0)


def test_ir_measures_names_equal_pytrec_eval():
    rng = random.Random(77)
    qrels, run = random_case(rng)
    ref = pytrec(qrels, run)
    names = {"nDCG@10": "ndcg_cut_10", "R@100": "recall_100", "P@10": "P_10", "AP": "map", "AP@5": "map_cut_5",
             "Success@10": "success_10", "RR": "recip_rank"}
    ours = hn.evaluate(qrels, run, list(names) + ["RR@10", "mrr@10"], per_query="dict")
    assert set(ours) == set(ref)
    for q in ref:
        for n, t in names.items():
            assert ours[q][n] == pytest.approx(ref[q][t], abs=1e-9), (q, n)
        assert ours[q]["RR@10"] == ours[q]["mrr@10"]
    # RR@10 is recip_rank of the run cut at 10 (trec_eval order)
    cut = {}
    for q, inner in run.items():
        ranked = sorted(inner.items(), key=lambda x: x[0], reverse=True)
        ranked.sort(key=lambda x: np.float32(x[1]), reverse=True)
        cut[q] = dict(ranked[:10])
    ref10 = pytrec(qrels, cut)
    for q in ref10:
        assert ours[q]["RR@10"] == pytest.approx(ref10[q]["recip_rank"], abs=1e-9)


def test_per_query_dict_is_pytrec_eval_form():
    rng = random.Random(12)
    qrels, run = random_case(rng)
    ref = pytrec(qrels, run)
    ours = hn.evaluate(qrels, run, TREC_NAMES, per_query="dict")
    assert set(ours) == set(ref)
    for q in ref:
        for n in TREC_NAMES:
            assert ours[q][n] == pytest.approx(ref[q][n], abs=1e-9)
    # array form: keyed by query_ids
    res = hn.evaluate({"q": {"a": 1}, "r": {"b": 1}}, np.array([[0, 1], [0, 1], [1, 0]]), ["recip_rank"],
                      per_query="dict", query_ids=["q", "r", "x"], corpus_ids=["a", "b"])
    assert res == {"q": {"recip_rank": 1.0}, "r": {"recip_rank": 0.5}}
    with pytest.raises(TypeError, match="per_query"):
        hn.evaluate(qrels, run, ["map"], per_query="yes")


def test_ignore_identical_ids_beir_rule():
    qrels = {"q1": {"d1": 1}, "q2": {"q2": 1, "d2": 1}}
    run = {"q1": {"q1": 9.0, "d0": 5.0, "d1": 4.0}, "q2": {"q2": 3.0, "d2": 2.0}}
    plain = hn.evaluate(qrels, run, ["recip_rank", "recall@1"], per_query="dict")
    assert plain["q1"]["recip_rank"] == 1 / 3
    ign = hn.evaluate(qrels, run, ["recip_rank", "recall@1"], per_query="dict", ignore_identical_ids=True)
    # BEIR: drop the query's own id from its ranking, even when it is judged relevant
    beir = {q: {d: s for d, s in inner.items() if d != q} for q, inner in run.items()}
    assert ign == hn.evaluate(qrels, beir, ["recip_rank", "recall@1"], per_query="dict")
    assert ign["q1"]["recip_rank"] == 0.5 and ign["q2"]["recall@1"] == 0.5
    # array form
    corpus = ["q1", "d0", "d1", "q2", "d2"]
    ids = np.array([[0, 1, 2], [3, 4, -1]])
    arr = hn.evaluate(qrels, ids, ["recip_rank", "recall@1"], per_query="dict", query_ids=["q1", "q2"],
                      corpus_ids=corpus, ignore_identical_ids=True)
    assert arr == ign
    assert hn.evaluate(qrels, ids, ["recip_rank"], per_query="dict", query_ids=["q1", "q2"],
                       corpus_ids=corpus)["q1"]["recip_rank"] == 1 / 3


def test_read_run_gz(tmp_path):
    import gzip
    text = "q1 Q0 d1 1 2.5 tag\nq1 Q0 d2 2 1.5 tag\nq2 Q0 d3 1 0.5 tag\n"
    (tmp_path / "run.txt").write_text(text)
    with gzip.open(tmp_path / "run.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    assert hn.metrics.read_run(tmp_path / "run.txt.gz") == hn.metrics.read_run(tmp_path / "run.txt")
    qrels = {"q1": {"d2": 1}, "q2": {"d3": 1}}
    assert hn.evaluate(qrels, tmp_path / "run.txt.gz", ["recip_rank"]) == {"recip_rank": 0.75}


def test_fuse_huge_depth_is_padding_or_a_clear_error():
    ids = np.array([[0, 1, 2], [2, 1, -1]])
    s, i = hn.fuse([ids, ids[:, ::-1].copy()], depth=100_000)
    assert i.shape == (2, 100_000) and (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()
    with pytest.raises(ValueError, match=r"depth asks for an output of [\d,]+ bytes"):
        hn.fuse([ids], depth=2**50)

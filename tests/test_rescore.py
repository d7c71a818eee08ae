"""hardneg.rescore: cross-encoder (RocketQA) and guide (GIST) denoising, threshold calibration.

Reference: brute force in numpy over the whole corpus (range_max > N makes every non-positive
document a candidate), with the scores computed independently (the stub's table, the
CrossEncoder's own predict, the guide's own normalised encode).
"""
import numpy as np
import pytest

import hardneg as hn
from hardneg.rescore import (Calibration, CrossEncoderRescorer, GuideRescorer, best_balanced_threshold,
                             calibrate_threshold, denoise_kwargs, mine_denoised)
from tiny_models import tiny_dataset

N_DOCS = 30


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset(num_docs=N_DOCS, num_queries=10, seed=2)


@pytest.fixture(scope="module")
def emb(ds):
    rng = np.random.default_rng(5)
    return (rng.standard_normal((ds.num_docs, 8)).astype(np.float32),
            rng.standard_normal((ds.num_queries, 8)).astype(np.float32))


class StubCrossEncoder:
    """``.predict(pairs)`` from a fixed random table of (query, doc) -> score in (0, 1)."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.table = {}
        self.calls = []

    def score(self, q, d):
        if (q, d) not in self.table:
            self.table[(q, d)] = np.float32(self.rng.random())
        return self.table[(q, d)]

    def predict(self, pairs, batch_size=32, show_progress_bar=None):
        self.calls.append(len(pairs))
        return np.array([self.score(q, d) for q, d in pairs], dtype=np.float32)


def brute_force(ds, score, absolute_margin=None, relative_margin=None, max_score=None):
    """Per query: kept rows (best first) and the count each filter dropped, as the rule names them."""
    positives = ds.positives()
    kept, drops = [], {"absolute_margin": 0, "relative_margin": 0, "max_score": 0}
    for j, q in enumerate(ds.query_texts):
        pos = set(positives[j].tolist())
        a = np.float32(min(score(q, ds.corpus_texts[p]) for p in pos))
        rows = []
        for r in range(ds.num_docs):
            if r in pos:
                continue
            s = np.float32(score(q, ds.corpus_texts[r]))
            if absolute_margin is not None and s + np.float32(absolute_margin) > a:
                drops["absolute_margin"] += 1
            elif relative_margin is not None and s > a - abs(a) * np.float32(relative_margin):
                drops["relative_margin"] += 1
            elif max_score is not None and s > np.float32(max_score):
                drops["max_score"] += 1
            else:
                rows.append((-float(s), r))
        kept.append([r for _, r in sorted(rows)])
    return kept, {k: v for k, v in drops.items() if v}


MINE = dict(num_negatives=N_DOCS, range_min=0, range_max=N_DOCS + 5, progress=False)


def check_against(mined, kept, drops, score, ds):
    for j, rows in enumerate(kept):
        got = [int(r) for r in mined.ids[j] if r >= 0]
        assert got == rows, j
        want_scores = [score(ds.query_texts[j], ds.corpus_texts[r]) for r in rows]
        np.testing.assert_allclose(mined.scores[j, :len(rows)], want_scores, rtol=1e-6, atol=1e-6)
    assert mined.stats["filtered"] == drops


@pytest.mark.parametrize("threshold", [None, 0.3, 0.8])
def test_cross_encoder_rule_matches_brute_force(ds, emb, threshold):
    stub = StubCrossEncoder()
    rs = CrossEncoderRescorer(stub, threshold=threshold, batch_size=7, progress=False)
    kw = rs.mining_kwargs()
    assert kw["max_score"] == threshold and kw["absolute_margin"] == 0.0 and kw["relative_margin"] is None
    mined = hn.mine_hard_negatives(ds, corpus_embeddings=emb[0], query_embeddings=emb[1], **kw, **MINE)
    kept, drops = brute_force(ds, stub.score, absolute_margin=0.0, max_score=threshold)
    check_against(mined, kept, drops, stub.score, ds)
    text = mined.report()
    assert "due to absolute_margin=0.0" in text
    if threshold is not None:
        assert f"max_score={threshold}" in text and f"due to max_score={threshold}" in text


def test_mine_denoised_records_the_rule(ds, emb):
    stub = StubCrossEncoder(1)
    cal = Calibration(threshold=0.5, method="balanced_accuracy", balanced_accuracy=0.9, tpr=0.9, tnr=0.9,
                      num_positive=10, num_negative=40)
    rs = CrossEncoderRescorer(stub, threshold=cal, progress=False)
    mined = mine_denoised(ds, rs, corpus_embeddings=emb[0], query_embeddings=emb[1], **MINE)
    d = mined.params["denoise"]
    assert d["kind"] == "cross-encoder" and d["threshold"] == 0.5 and "balanced_accuracy" in d["calibration"]
    assert d["pairs_scored"] == sum(stub.calls) > 0
    assert mined.params["max_score"] == 0.5 and mined.params["rescorer"] is True
    kept, drops = brute_force(ds, stub.score, absolute_margin=0.0, max_score=0.5)
    check_against(mined, kept, drops, stub.score, ds)
    # overrides win over the rule's own filters
    assert denoise_kwargs(rs, max_score=0.9)["max_score"] == 0.9


@pytest.mark.slow
def test_real_tiny_cross_encoder(ds, emb, tmp_path):
    pytest.importorskip("sentence_transformers")
    from tiny_models import tiny_cross_encoder

    ce = tiny_cross_encoder(tmp_path / "ce")
    table = {}

    def score(q, d):  # the CrossEncoder's own predict, pair by pair
        if (q, d) not in table:
            table[(q, d)] = np.float32(ce.predict([(q, d)], show_progress_bar=False)[0])
        return table[(q, d)]

    rs = CrossEncoderRescorer(ce, threshold=0.5, batch_size=16, progress=False)
    q, d = ds.query_texts[:3], ds.corpus_texts[:3]
    np.testing.assert_allclose(rs(q, d), [score(a, b) for a, b in zip(q, d)], rtol=1e-5, atol=1e-6)
    mined = hn.mine_hard_negatives(ds, corpus_embeddings=emb[0], query_embeddings=emb[1], **rs.mining_kwargs(),
                                   **MINE)
    kept, drops = brute_force(ds, score, absolute_margin=0.0, max_score=0.5)
    for j, rows in enumerate(kept):  # batched vs one-by-one forward passes: scores agree to ~1e-7
        got = [int(r) for r in mined.ids[j] if r >= 0]
        assert set(got) == set(rows)


@pytest.mark.slow
@pytest.mark.parametrize("strategy,margin", [("absolute", 0.0), ("absolute", 0.05), ("relative", 0.1)])
def test_guide_rule_matches_brute_force(ds, emb, tmp_path, strategy, margin):
    pytest.importorskip("sentence_transformers")
    from tiny_models import tiny_sentence_transformer

    guide = tiny_sentence_transformer(tmp_path / "guide", seed=7)
    ce = guide.encode(ds.corpus_texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float64)
    qe = guide.encode(ds.query_texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float64)
    ref = {(ds.query_texts[j], ds.corpus_texts[r]): float(qe[j] @ ce[r])
           for j in range(ds.num_queries) for r in range(ds.num_docs)}
    rs = GuideRescorer(guide, margin=margin, margin_strategy=strategy, batch_size=5, progress=False)
    kw = rs.mining_kwargs()
    assert kw["max_score"] is None
    mined = hn.mine_hard_negatives(ds, corpus_embeddings=emb[0], query_embeddings=emb[1], **kw, **MINE)
    positives = ds.positives()
    for j, q in enumerate(ds.query_texts):
        a = min(ref[(q, ds.corpus_texts[p])] for p in positives[j])
        bound = a - margin if strategy == "absolute" else a - abs(a) * margin
        cands = [r for r in range(ds.num_docs) if r not in set(positives[j].tolist())]
        surely = {r for r in cands if ref[(q, ds.corpus_texts[r])] < bound - 1e-5}
        maybe = {r for r in cands if abs(ref[(q, ds.corpus_texts[r])] - bound) <= 1e-5}
        got = {int(r) for r in mined.ids[j] if r >= 0}
        assert surely <= got <= surely | maybe
        for k, r in enumerate(mined.ids[j]):
            if r >= 0:
                assert abs(mined.scores[j, k] - ref[(q, ds.corpus_texts[r])]) < 1e-5
    dropped = sum(mined.stats["filtered"].values())
    assert dropped + int(mined.counts.sum()) == mined.stats["candidates"]


def test_guide_with_callable_and_cache(ds):
    rng = np.random.default_rng(0)
    vecs = {}
    calls = []

    def enc(texts):
        calls.append(len(texts))
        return np.stack([vecs.setdefault(t, rng.standard_normal(4)) for t in texts])

    rs = GuideRescorer(enc, progress=False)
    q = [ds.query_texts[0]] * 3
    d = ds.corpus_texts[:3]
    s = rs(q, d)
    want = [vecs[q[0]] @ vecs[t] / np.linalg.norm(vecs[q[0]]) / np.linalg.norm(vecs[t]) for t in d]
    np.testing.assert_allclose(s, want, rtol=1e-5)
    assert calls == [1, 3]  # each distinct text once
    rs(q, d)
    assert calls == [1, 3]  # cached


def brute_force_threshold(pos, neg):
    vals = sorted(set(pos) | set(neg))
    span = max(1.0, vals[-1] - vals[0])
    cands = [vals[0] - span] + [(a + b) / 2 for a, b in zip(vals, vals[1:])] + [vals[-1] + span]
    best = None
    for t in cands:
        tpr = sum(p > t for p in pos) / len(pos)
        tnr = sum(n <= t for n in neg) / len(neg)
        ba = (tpr + tnr) / 2
        if best is None or ba > best[1]:
            best = (t, ba)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_best_balanced_threshold_brute_force(seed):
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(1.0, 1.0, 30), 1)  # rounded: ties between and within classes
    neg = np.round(rng.normal(0.0, 1.0, 70), 1)
    got = best_balanced_threshold(pos, neg)
    t, ba = brute_force_threshold(pos.tolist(), neg.tolist())
    assert got["threshold"] == pytest.approx(t) and got["balanced_accuracy"] == pytest.approx(ba)
    sep = best_balanced_threshold(np.array([0.9, 0.8]), np.array([0.1, 0.2, 0.3]))
    assert sep["balanced_accuracy"] == 1.0 and 0.3 < sep["threshold"] < 0.8


def test_calibrate_threshold(ds):
    stub = StubCrossEncoder(3)
    # relevant pairs score high: make the stub's table favour the qrels
    positives = ds.positives()
    for j, q in enumerate(ds.query_texts):
        for p in positives[j]:
            stub.table[(q, ds.corpus_texts[p])] = np.float32(0.6 + 0.4 * stub.rng.random())
    cal = calibrate_threshold(stub, ds, negatives_per_query=3, seed=1, progress=False)
    n_pos = sum(p.size for p in positives)
    assert cal.num_positive == n_pos and cal.num_negative == 3 * ds.num_queries
    assert cal.method == "balanced_accuracy"
    pos = [float(stub.table[(q, ds.corpus_texts[p])]) for j, q in enumerate(ds.query_texts) for p in positives[j]]
    neg = [float(v) for k, v in stub.table.items() if float(v) not in pos]
    t, ba = brute_force_threshold(pos, neg)
    assert cal.threshold == pytest.approx(t) and cal.balanced_accuracy == pytest.approx(ba)
    assert "threshold" in str(cal)
    sub = calibrate_threshold(stub, ds, negatives_per_query=1, max_queries=4, progress=False)
    assert sub.num_negative == 4


def test_bad_input(ds):
    stub = StubCrossEncoder()
    with pytest.raises(ValueError, match="threshold"):
        CrossEncoderRescorer(stub, threshold=float("nan"))
    with pytest.raises(ValueError, match="margin"):
        CrossEncoderRescorer(stub, margin=-1)
    with pytest.raises(TypeError, match="model"):
        CrossEncoderRescorer(42)
    with pytest.raises(ValueError, match="same length"):
        CrossEncoderRescorer(stub)(["a"], ["b", "c"])

    class TwoLabels:
        def predict(self, pairs, **kw):
            return np.zeros((len(pairs), 2), np.float32)

    with pytest.raises(ValueError, match="single score"):
        CrossEncoderRescorer(TwoLabels(), progress=False)(["a"], ["b"])
    with pytest.raises(ValueError, match="margin_strategy"):
        GuideRescorer(lambda t: np.ones((len(t), 2)), margin_strategy="cosine")
    with pytest.raises(TypeError, match="guide"):
        GuideRescorer(3)
    with pytest.raises(ValueError, match="negatives_per_query"):
        calibrate_threshold(stub, ds, negatives_per_query=0)
    with pytest.raises(TypeError, match="dataset"):
        calibrate_threshold(stub, {"q": 1})
    with pytest.raises(TypeError, match="rescorer"):
        denoise_kwargs(stub)
    assert CrossEncoderRescorer(stub)([], []).shape == (0,)

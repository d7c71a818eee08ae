"""BM25: tokeniser, exact scores against bm25s, search semantics, add, save/load, bad input."""
import json
import os
import random
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import hardneg as hn
from hardneg.bm25 import STOPWORDS_EN, tokenize

from paths import SCIFACT
METHODS = ["robertson", "lucene", "atire", "bm25l", "bm25+"]
WORD_RE = re.compile(r"(?u)\b\w\w+\b")


# ---------------------------------------------------------------- helpers
def zipf_corpus(rng, n_docs, vocab, lo, hi, unicode_words=True):
    """Pre-tokenised docs with Zipf term frequencies, Unicode words, empty, tiny and huge docs."""
    words = [f"w{i}" for i in range(vocab)]
    if unicode_words:
        extra = ["ünï", "日本語", "слово", "λόγος", "كلمة", "शब्द", "x_y", "12"]
        words[: len(extra)] = extra
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    docs = []
    for i in range(n_docs):
        L = int(rng.integers(lo, hi + 1))
        docs.append([words[j] for j in rng.choice(vocab, size=L, p=p)])
    docs.append([])  # empty document
    docs.append([words[5]])  # one token
    docs.append([words[3]] * 40 + [words[7]] * 3)  # repeated terms
    docs.append([words[j] for j in rng.choice(vocab, size=3000, p=p)])  # very long
    common = "everywhere"
    for d in docs:
        d.append(common)  # a term in every document
    return docs, words


def bm25s_scores(docs, queries, method, k1=1.5, b=0.75, delta=0.5):
    bm25s = pytest.importorskip("bm25s")
    r = bm25s.BM25(method=method, k1=k1, b=b, delta=delta)
    r.index(docs, show_progress=False)
    out = []
    for q in queries:
        known = [t for t in q if t in r.vocab_dict and t != ""]
        if not known:
            out.append(None)
            continue
        out.append(r.get_scores(known).astype(np.float64))
    return out


def full_ranking(bm, queries, n):
    """Reference top lists from score(): sort by (-score, id), dropping zero-score documents."""
    s = bm.score(queries, np.tile(np.arange(n), (len(queries), 1)))
    ranks = []
    for row in s:
        order = np.lexsort((np.arange(n), -row))
        ranks.append([(row[i], i) for i in order if row[i] > 0])
    return s, ranks


# ---------------------------------------------------------------- tokeniser
def test_tokenizer_matches_python_regex_on_random_unicode():
    rng = random.Random(0)
    pool = []
    for cp in list(range(32, 0x250)) + list(range(0x370, 0x530)) + list(range(0x600, 0x6FF)) + \
            list(range(0x3040, 0x30FF)) + list(range(0x4E00, 0x4E40)) + [0x2160, 0x00B2, 0x2028, 0xA0, 0x3000]:
        c = chr(cp)
        # Known, documented differences: combining marks are word characters here,
        # and U+0130 / final sigma follow str.lower() only within a token.
        if unicodedata.category(c) in ("Mn", "Mc") or cp in (0x130, 0x3A3):
            continue
        pool.append(c)
    pool += [" "] * 40 + ["a", "B", "z"] * 20
    for _ in range(300):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 80)))
        assert tokenize(s) == WORD_RE.findall(s.lower()), repr(s)


def test_tokenizer_examples():
    assert tokenize("Hello, WORLD! a I x_y 42 3.14") == ["hello", "world", "x_y", "42", "14"]
    assert tokenize("Straße ÜBER Москва ΟΔΟΣ मराठी") == ["straße", "über", "москва", "οδος", "मराठी"]
    assert tokenize("日本語のテキスト") == ["日本語のテキスト"]  # no spaces: one token
    assert tokenize(b"ab\xff\xfecd ef\xc3") == ["ab", "cd", "ef"]
    assert tokenize("") == [] and tokenize("a b c") == []


def test_tokenizer_never_crashes_on_random_bytes():
    rng = np.random.default_rng(1)
    texts = [rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes() for _ in range(300)]
    texts.append("lone \ud800 surrogate")
    for t in texts:
        tokenize(t)
    bm = hn.BM25(stemmer=None).index(texts + ["some real words"])
    s, i = bm.search(texts[:20] + ["real words"], k=5)
    assert s.shape == (21, 5) and i[-1, 0] == len(texts)


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("method", METHODS)
def test_scores_equal_bm25s(method):
    rng = np.random.default_rng(2)
    docs, words = zipf_corpus(rng, 300, 400, 1, 60)
    queries = [[words[j] for j in rng.integers(0, 400, size=int(rng.integers(1, 8)))] for _ in range(40)]
    queries += [["everywhere"], [words[3], words[3], "nowhere_term"], ["nowhere_term"], [words[0], words[1]]]
    bm = hn.BM25(method=method, stopwords=None, stemmer=None).index(docs)
    n = len(docs)
    ours = bm.score(queries, np.tile(np.arange(n), (len(queries), 1)))
    ref = bm25s_scores(docs, queries, method)
    for q, (a, r) in enumerate(zip(ours, ref)):
        if r is None:
            assert np.all(a == 0)
            continue
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6, err_msg=f"query {q}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k1,b,delta", [(1.2, 0.75, 0.5), (0.9, 0.4, 1.0), (2.0, 1.0, 0.0), (1.5, 0.0, 0.25)])
def test_scores_equal_bm25s_other_parameters(method, k1, b, delta):
    rng = np.random.default_rng(3)
    docs, words = zipf_corpus(rng, 120, 150, 1, 30, unicode_words=False)
    queries = [[words[j] for j in rng.integers(0, 150, size=4)] for _ in range(15)]
    bm = hn.BM25(k1=k1, b=b, delta=delta, method=method, stopwords=None, stemmer=None).index(docs)
    ours = bm.score(queries, np.tile(np.arange(len(docs)), (len(queries), 1)))
    for a, r in zip(ours, bm25s_scores(docs, queries, method, k1, b, delta)):
        if r is not None:
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 7, 100, 1000])
@pytest.mark.parametrize("strategy", [0, 1, 2])
def test_search_equals_full_ranking(method, k, strategy):
    rng = np.random.default_rng(4)
    # 1,500 documents: enough for "long" terms with block-max metadata (pruning paths)
    docs, words = zipf_corpus(rng, 1500, 300, 1, 40)
    docs += docs[:40]  # duplicates: exact ties
    n = len(docs)
    queries = [[words[j] for j in rng.integers(0, 300, size=int(rng.integers(1, 6)))] for _ in range(25)]
    queries += [[], ["nowhere_term"], ["everywhere"], words[:12]]
    bm = hn.BM25(method=method, stopwords=None, stemmer=None).index(docs)
    bm._core.strategy = strategy  # 1: exhaustive, 2: block-max pruning, 0: automatic
    s, i = bm.search(queries, k=k, num_threads=2)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (len(queries), k)
    _, ranks = full_ranking(bm, queries, n)
    for q, rank in enumerate(ranks):
        top = rank[:k]
        m = len(top)
        np.testing.assert_array_equal(i[q, :m], [d for _, d in top])
        np.testing.assert_array_equal(s[q, :m], np.float32([x for x, _ in top]))
        assert np.all(i[q, m:] == -1) and np.all(np.isneginf(s[q, m:]))
    s1, i1 = bm.search(queries, k=k, num_threads=1)
    np.testing.assert_array_equal(i, i1)
    np.testing.assert_array_equal(s, s1)


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_search_with_waiting_dense_terms_equals_full_ranking(method):
    """A corpus large next to k: the very common (dense) query terms are added last,
    only for documents near the k-th score; results must not change."""
    rng = np.random.default_rng(11)
    docs, words = zipf_corpus(rng, 12000, 400, 3, 30, unicode_words=False)
    docs += docs[:30]  # exact ties
    n = len(docs)
    queries = [[words[j] for j in rng.integers(0, 60, size=int(rng.integers(1, 5)))] + words[:2] for _ in range(20)]
    queries += [words[:3], [words[0]], [words[0], words[0], words[399]]]
    bm = hn.BM25(method=method, stopwords=None, stemmer=None).index(docs)
    excl = [list(range(q, n, 997)) for q in range(len(queries))]
    _, ranks = full_ranking(bm, queries, n)
    for k in (1, 7, 40):
        for ex in (None, excl):
            s, i = bm.search(queries, k=k, exclude=ex, num_threads=2)
            for q, rank in enumerate(ranks):
                top = [(x, d) for x, d in rank if ex is None or d not in set(ex[q])][:k]
                np.testing.assert_array_equal(i[q, :len(top)], [d for _, d in top])
                np.testing.assert_array_equal(s[q, :len(top)], np.float32([x for x, _ in top]))


def test_zero_score_documents_never_returned_and_base_for_bm25plus():
    docs = [["x", "y"], ["y"], ["z"], ["x"]]
    s, i = hn.BM25(method="robertson", stopwords=None, stemmer=None).index(docs).search([["y"]], k=4)
    # robertson IDF of "y" (in half the docs) is 0: nothing scores above 0.
    assert np.all(i == -1)
    bm = hn.BM25(method="bm25+", stopwords=None, stemmer=None).index(docs)
    s, i = bm.search([["x"]], k=4)
    assert list(i[0]) == [3, 0, 1, 2]  # unmatched docs tie at the base score, ascending ids
    assert s[0, 2] == s[0, 3] > 0


def test_exclude_as_in_topk():
    rng = np.random.default_rng(5)
    docs, words = zipf_corpus(rng, 200, 100, 2, 20, unicode_words=False)
    queries = [[words[j] for j in rng.integers(0, 100, size=3)] for _ in range(12)]
    for method, strategy in (("lucene", 1), ("lucene", 2), ("bm25l", 1), ("bm25l", 2)):
        bm = hn.BM25(method=method, stopwords=None, stemmer=None).index(docs)
        bm._core.strategy = strategy
        s0, i0 = bm.search(queries, k=30)
        excl = [list(i0[q, :: 3][i0[q, ::3] >= 0]) for q in range(len(queries))]
        s, i = bm.search(queries, k=10, exclude=excl)
        for q in range(len(queries)):
            keep = [(a, d) for a, d in zip(s0[q], i0[q]) if d not in excl[q] and d >= 0][:10]
            np.testing.assert_array_equal(i[q, : len(keep)], [d for _, d in keep])
        padded = -np.ones((len(queries), 12), np.int64)
        for q, e in enumerate(excl):
            padded[q, : len(e)] = e
        s2, i2 = bm.search(queries, k=10, exclude=padded)
        np.testing.assert_array_equal(i2, i)
    with pytest.raises(ValueError, match="exclude"):
        bm.search(queries, k=5, exclude=[[10**6]] * len(queries))


# ---------------------------------------------------------------- add
@pytest.mark.parametrize("method", ["lucene", "bm25l", "bm25+"])
def test_add_equals_fresh_index(method):
    rng = np.random.default_rng(6)
    words = "alpha beta gamma delta epsilon zeta theta iota kappa lambda mu nu omicron".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 25)))) for _ in range(300)]
    texts += ["brandnew words appear later", "brandnew again"]
    queries = ["alpha beta", "brandnew", "gamma gamma kappa", "words", "unknown stuff"]
    fresh = hn.BM25(method=method).index(texts)
    inc = hn.BM25(method=method).index(texts[:100])
    inc.search(queries, k=5)  # caches "brandnew" as unknown: must be forgotten after add
    inc.add(texts[100:250]).add(texts[250:])
    assert inc.num_docs == fresh.num_docs and inc.avg_doc_len == fresh.avg_doc_len
    assert set(inc.vocabulary) == set(fresh.vocabulary)
    a, b = fresh.search(queries, k=50), inc.search(queries, k=50)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


# ---------------------------------------------------------------- persistence
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip(tmp_path, mmap):
    texts = ["the cat sat on the mat", "dogs chase cats", "a bird in the hand", "Cats and dogs, cats!"]
    bm = hn.BM25(method="bm25+", stopwords=["sat", "the"]).index(texts)
    bm.save(tmp_path / "ix")
    bm2 = hn.BM25.load(tmp_path / "ix", mmap=mmap)
    assert bm2.num_docs == 4 and bm2.vocabulary == bm.vocabulary and bm2.method == "bm25+"
    q = ["cat", "dog bird", "sat"]
    for x, y in zip(bm.search(q, k=4), bm2.search(q, k=4)):
        np.testing.assert_array_equal(x, y)
    bm.add(["one more cat"])
    bm2.add(["one more cat"])
    for x, y in zip(bm.search(q, k=5), bm2.search(q, k=5)):
        np.testing.assert_array_equal(x, y)


def test_load_wide_codes_and_version1_files(tmp_path):
    """Codes stored as uint32 (more than 65,536 (tf, length) pairs) and indexes saved by
    hardneg 0.1 (a term count and an impact per posting) load to the same index."""
    rng = np.random.default_rng(8)
    docs, words = zipf_corpus(rng, 900, 200, 1, 30)
    queries = [[words[j] for j in rng.integers(0, 200, size=4)] for _ in range(20)]
    bm = hn.BM25(stopwords=None, stemmer=None).index(docs)
    ref = bm.search(queries, k=50)
    more = docs[:30]
    bm.add(more)
    ref_add = bm.search(queries, k=50)
    bm = hn.BM25(stopwords=None, stemmer=None).index(docs)
    bm.save(tmp_path / "v2")
    assert np.load(tmp_path / "v2" / "codes.npy").dtype == np.uint16
    # wide codes
    import shutil
    shutil.copytree(tmp_path / "v2", tmp_path / "wide")
    np.save(tmp_path / "wide" / "codes.npy", np.load(tmp_path / "v2" / "codes.npy").astype(np.uint32))
    # version 1 layout
    shutil.copytree(tmp_path / "v2", tmp_path / "v1")
    d = tmp_path / "v1"
    codes, code_tf = np.load(d / "codes.npy"), np.load(d / "code_tf.npy")
    np.save(d / "tfs.npy", code_tf[codes])
    np.save(d / "impacts.npy", np.zeros(codes.shape, np.float32))
    for name in ("codes", "code_tf", "code_len"):
        (d / f"{name}.npy").unlink()
    meta = json.loads((d / "bm25.json").read_text())
    (d / "bm25.json").write_text(json.dumps(dict(meta, version=1)))
    for name in ("wide", "v1"):
        for mmap in (True, False):
            b2 = hn.BM25.load(tmp_path / name, mmap=mmap)
            for strategy in (1, 2):
                b2._core.strategy = strategy
                got = b2.search(queries, k=50)
                np.testing.assert_array_equal(got[1], ref[1])
                np.testing.assert_array_equal(got[0], ref[0])
            b2.add(more)
            got = b2.search(queries, k=50)
            np.testing.assert_array_equal(got[1], ref_add[1])
            np.testing.assert_array_equal(got[0], ref_add[0])


def test_index_memory_is_small():
    """Six bytes per posting (document id + 16-bit code), plus small tables."""
    rng = np.random.default_rng(9)
    docs, _ = zipf_corpus(rng, 2000, 500, 5, 60)
    bm = hn.BM25(stopwords=None, stemmer=None).index(docs)
    postings = bm._core.num_postings
    assert bm.nbytes < 7.5 * postings + 64 * 1024


def test_load_rejects_corrupt_or_foreign(tmp_path):
    with pytest.raises(ValueError, match="not a hardneg BM25 index"):
        hn.BM25.load(tmp_path)
    bm = hn.BM25().index(["hello world", "another doc"])
    bm.save(tmp_path / "ix")
    (tmp_path / "ix" / "bm25.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        hn.BM25.load(tmp_path / "ix")
    bm.save(tmp_path / "ix")
    np.save(tmp_path / "ix" / "docs.npy", np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="docs.npy"):
        hn.BM25.load(tmp_path / "ix")
    bm.save(tmp_path / "ix")
    np.save(tmp_path / "ix" / "offsets.npy", np.array([0, 5, 1, 2], np.int64))
    with pytest.raises(ValueError, match="corrupt"):
        hn.BM25.load(tmp_path / "ix")
    bm.save(tmp_path / "ix")
    (tmp_path / "ix" / "codes.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="codes.npy"):
        hn.BM25.load(tmp_path / "ix")
    bm.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "bm25.json").read_text())
    meta["format"] = "bm25s"
    (tmp_path / "ix" / "bm25.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format"):
        hn.BM25.load(tmp_path / "ix")


# ---------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match="method"):
        hn.BM25(method="okapi")
    with pytest.raises(ValueError, match="stopwords"):
        hn.BM25(stopwords="klingon")
    with pytest.raises(ValueError, match="stemmer"):
        hn.BM25(stemmer="klingon")
    with pytest.raises(ValueError, match="b must"):
        hn.BM25(b=1.5)
    with pytest.raises(ValueError, match="k1"):
        hn.BM25(k1=float("nan"))
    bm = hn.BM25()
    with pytest.raises(RuntimeError, match="index"):
        bm.search(["query"])
    with pytest.raises(ValueError, match="empty"):
        bm.index([])
    with pytest.raises(ValueError, match="no tokens"):
        bm.index(["", "  ", "the a"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        bm.index(["fine text", 3])
    with pytest.raises(TypeError, match="single str"):
        bm.index("just one string")
    with pytest.raises(TypeError, match="non-str token"):
        bm.index([["ok", 5]])
    bm.index(["hello world", "other words"])
    for k in (0, -3):
        with pytest.raises(ValueError, match="k must"):
            bm.search(["hello"], k=k)
    with pytest.raises(TypeError, match="k must"):
        bm.search(["hello"], k=2.5)
    s, i = bm.search(["", "the", "zzz", "hello"], k=3)
    assert np.all(i[:3] == -1) and np.all(np.isneginf(s[:3])) and i[3, 0] == 0
    s, i = bm.search([], k=3)
    assert s.shape == (0, 3)
    with pytest.raises(ValueError, match="doc_ids"):
        bm.score(["hello"], [[5]])
    assert bm.score(["hello"], [0, ])[0] > 0
    assert np.isneginf(bm.score(["hello"], [[-1]])[0, 0])


def test_missing_pystemmer_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "Stemmer", None)
    with pytest.raises(ImportError, match="PyStemmer"):
        hn.BM25(stemmer="english")
    hn.BM25(stemmer=None)


def test_stopwords_and_stemming_options():
    assert len(STOPWORDS_EN) == 33
    texts = ["The running dogs were running", "A dog runs", "they are here"]
    assert "the" not in hn.BM25(stemmer=None).index(texts).vocabulary
    v = hn.BM25(stopwords=None, stemmer=None).index(texts).vocabulary
    assert "the" in v and "running" in v
    v = hn.BM25(stopwords="en_plus").index(texts).vocabulary
    assert "were" not in v and "run" in v and "dog" in v
    v = hn.BM25(stopwords=["dogs", "RUNS"], stemmer=None).index(texts).vocabulary
    assert "dogs" not in v and "runs" not in v and "dog" in v
    bm = hn.BM25(stemmer="russian").index(["Москва большая", "москвы нет"])
    assert bm.vocabulary.keys() >= {"москв"}


# ---------------------------------------------------------------- SciFact
def _scifact():
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip("SciFact not available (../shared/data/scifact)")
    corpus = [json.loads(line) for line in open(SCIFACT / "corpus.jsonl", encoding="utf-8")]
    queries = {}
    for line in open(SCIFACT / "queries.jsonl", encoding="utf-8"):
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    qrels = {}
    with open(SCIFACT / "qrels" / "test.tsv") as f:
        next(f)
        for line in f:
            qid, did, rel = line.strip().split("\t")
            qrels.setdefault(qid, {})[did] = int(rel)
    return corpus, queries, qrels


@pytest.mark.slow
def test_scifact_ndcg_and_bm25s_parity():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    pytest.importorskip("Stemmer")
    corpus, queries, qrels = _scifact()
    texts = [d["title"] + " " + d["text"] for d in corpus]
    doc_ids = [d["_id"] for d in corpus]
    qids = sorted(qrels)
    qtexts = [queries[q] for q in qids]
    bm = hn.BM25().index(texts)
    s, i = bm.search(qtexts, k=100)
    run = {q: {doc_ids[d]: float(x) for x, d in zip(s[r], i[r]) if d >= 0} for r, q in enumerate(qids)}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
    ndcg = np.mean([v["ndcg_cut_10"] for v in ev.evaluate(run).values()])
    assert ndcg >= 0.686, ndcg

    # Same tokens through bm25s's own tokeniser: identical rankings and scores.
    bm25s = pytest.importorskip("bm25s")
    import Stemmer
    st = Stemmer.Stemmer("english")
    ctoks = bm25s.tokenize(texts, stopwords="en", stemmer=st, show_progress=False)
    ref = bm25s.BM25()
    ref.index(ctoks, show_progress=False)
    qtoks = bm25s.tokenize(qtexts, stopwords="en", stemmer=st, show_progress=False, return_ids=False)
    rs = np.stack([ref.get_scores(q) if q else np.zeros(len(texts)) for q in qtoks])
    ours = bm.score(qtexts, np.tile(np.arange(len(texts)), (len(qtexts), 1)))
    np.testing.assert_allclose(ours, rs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("strategy", [1, 2])
def test_ties_by_ascending_id(method, strategy):
    docs = [["a", "b"]] * 300 + [["c", "d"]] * 300 + [["a", "c"]] * 7
    bm = hn.BM25(method=method, stopwords=None, stemmer=None).index(docs)
    bm._core.strategy = strategy
    for k in (1, 10, 100, 700):
        s, i = bm.search([["a"], ["a", "d"]], k=k)
        _, ranks = full_ranking(bm, [["a"], ["a", "d"]], len(docs))
        for q in range(2):
            m = min(k, len(ranks[q]))
            np.testing.assert_array_equal(i[q, :m], [d for _, d in ranks[q][:m]])


def test_query_word_cache_path_equals_batch_tokenisation():
    texts = ["The Cats sat on the mat", "dogs and cats", "Ωμέγα ΣΊΣΥΦΟΣ running runs", "naïve café"]
    bm = hn.BM25().index(texts)
    queries = ["CATS running", "unknown words here", "", "the and of", "ΣΊΣΥΦΟΣ ωμέγα cats cats",
               "naïve", "brand new word cats", "x", "\udcff broken surrogate cats"]
    for nt in (1, 2):
        off, ids = bm._query_ids(queries, nt)  # learns the new words, then the cached lookup
        off2, ids2 = bm._query_ids(queries, nt)  # every word cached now
        ref_off, ref_ids = bm._ids(queries, False, "queries", nt)  # the batch tokeniser
        for o, i in ((off, ids), (off2, ids2)):
            np.testing.assert_array_equal(o, ref_off)
            np.testing.assert_array_equal(i, ref_ids)
    # a word first seen by a query, then added by a document, is found afterwards
    assert bm.search(["brand"], k=3)[1][0, 0] == -1
    bm.add(["brand new"])
    assert bm.search(["brand"], k=3)[1][0, 0] == 4


def test_concurrent_search_and_add():
    import threading

    rng = np.random.default_rng(7)
    words = [f"t{i}" for i in range(50)]
    texts = [" ".join(rng.choice(words, size=10)) for _ in range(2000)]
    bm = hn.BM25(stemmer=None).index(texts[:500])
    errors = []

    def searcher():
        try:
            for r in range(20):  # new words each time: the word cache is written meanwhile
                s, i = bm.search(["t1 t2 t3", f"t4 unseen{r} T5"], k=20, num_threads=1)
                assert s.shape == (2, 20)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for j in range(500, 2000, 100):
        bm.add(texts[j: j + 100])
    for t in threads:
        t.join()
    assert not errors
    fresh = hn.BM25(stemmer=None).index(texts)
    np.testing.assert_array_equal(fresh.search(["t1 t2"], k=30)[1], bm.search(["t1 t2"], k=30)[1])


@pytest.mark.slow
def test_pruning_strategies_identical_on_a_larger_zipf_corpus():
    """Long posting lists reach the early-termination / probing paths (sparse and dense)."""
    rng = np.random.default_rng(8)
    vocab = np.array([f"w{i}" for i in range(20000)])
    cdf = np.cumsum(1.0 / np.arange(1, vocab.size + 1))
    cdf /= cdf[-1]
    def draw(n, lo, hi):
        sizes = rng.integers(lo, hi + 1, size=n)
        ids = np.searchsorted(cdf, rng.random(int(sizes.sum())))
        cut = np.cumsum(sizes)[:-1]
        return [" ".join(x) for x in np.split(vocab[ids], cut)]
    texts = draw(80000, 5, 40)
    queries = draw(300, 2, 10) + ["w1 w2 w3", "w19999", ""]
    bm = hn.BM25(stemmer=None).index(texts)
    for k in (1, 10, 100):
        bm._core.strategy = 1
        ref = bm.search(queries, k=k)
        for strategy in (0, 2):
            bm._core.strategy = strategy
            got = bm.search(queries, k=k)
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_array_equal(got[0], ref[0])

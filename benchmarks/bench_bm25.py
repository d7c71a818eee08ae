"""pytest-benchmark microbenchmarks for hardneg.BM25 (and bm25s beside it).

    pytest benchmarks/bench_bm25.py --benchmark-only                 # default sizes
    BM25_BENCH_DOCS=2000 pytest benchmarks/bench_bm25.py --benchmark-only   # quick
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_bm25 import zipf_corpus  # noqa: E402

import hardneg as hn  # noqa: E402

DOCS = int(os.environ.get("BM25_BENCH_DOCS", "20000"))
QUERIES = int(os.environ.get("BM25_BENCH_QUERIES", "1000"))
THREADS = int(os.environ.get("BM25_BENCH_THREADS", "2"))


@pytest.fixture(scope="module")
def corpus():
    return zipf_corpus(DOCS, QUERIES, vocab=max(1000, min(100_000, DOCS * 2)))


@pytest.fixture(scope="module")
def index(corpus):
    return hn.BM25().index(corpus[0], num_threads=THREADS)


def test_index_hardneg(benchmark, corpus):
    benchmark.pedantic(lambda: hn.BM25().index(corpus[0], num_threads=THREADS), rounds=3, iterations=1)


def test_add_one_percent(benchmark, corpus):
    texts = corpus[0]
    cut = len(texts) - max(1, len(texts) // 100)

    def setup():
        return (hn.BM25().index(texts[:cut], num_threads=THREADS),), {}

    benchmark.pedantic(lambda bm: bm.add(texts[cut:], num_threads=THREADS), setup=setup, rounds=3, iterations=1)


@pytest.mark.parametrize("k", [10, 100, 1000])
def test_search_hardneg(benchmark, corpus, index, k):
    benchmark(lambda: index.search(corpus[1], k=k, num_threads=THREADS))


@pytest.mark.parametrize("k", [10, 100, 1000])
def test_search_bm25s(benchmark, corpus, k):
    bm25s = pytest.importorskip("bm25s")
    Stemmer = pytest.importorskip("Stemmer")
    st = Stemmer.Stemmer("english")
    r = bm25s.BM25(backend="numba")
    r.index(bm25s.tokenize(corpus[0], stopwords="en", stemmer=st, show_progress=False), show_progress=False)
    q = bm25s.tokenize(corpus[1], stopwords="en", stemmer=st, show_progress=False, return_ids=False)
    q = [x if x else [""] for x in q]
    r.retrieve(q[:10], k=k, n_threads=THREADS, show_progress=False)  # JIT warm-up
    benchmark(lambda: r.retrieve(q, k=k, n_threads=THREADS, show_progress=False))


def test_score_pairs(benchmark, corpus, index):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, index.num_docs, size=(len(corpus[1]), 100))
    benchmark(lambda: index.score(corpus[1], ids, num_threads=THREADS))

"""pytest-benchmark microbenchmarks for hardneg.topk (small sizes; see compare_topk.py for the grid).

    python -m pytest benchmarks/bench_topk.py --benchmark-only
"""
import numpy as np
import pytest

import hardneg as hn

N, D = 20_000, 768


@pytest.fixture(scope="module")
def corpus():
    return np.random.default_rng(0).standard_normal((N, D), dtype=np.float32)


@pytest.mark.parametrize("nq,k", [(1, 10), (16, 100), (256, 100)])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_topk(benchmark, corpus, nq, k, metric):
    q = np.random.default_rng(1).standard_normal((nq, D), dtype=np.float32)
    s, i = benchmark(hn.topk, q, corpus, k=k, metric=metric)
    assert i.shape == (nq, k)


def test_topk_fp16(benchmark, corpus):
    c16 = corpus.astype(np.float16)
    q = np.random.default_rng(1).standard_normal((16, D), dtype=np.float32)
    benchmark(hn.topk, q, c16, k=100)

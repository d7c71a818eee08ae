"""pytest-benchmark microbenchmarks for hn.evaluate / hn.fuse (and pytrec_eval beside them).

    pytest benchmarks/bench_metrics.py                      # small sizes (seconds)
    HN_BENCH_Q=10000 HN_BENCH_K=1000 pytest benchmarks/bench_metrics.py
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import hardneg as hn

Q = int(os.environ.get("HN_BENCH_Q", 1000))
K = int(os.environ.get("HN_BENCH_K", 100))
N = int(os.environ.get("HN_BENCH_N", 100_000))
METRICS = ["ndcg@10", "recip_rank", "recall@100", "map"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(N, K, replace=False) for _ in range(Q)]).astype(np.int64)
    scores = -np.sort(-rng.random((Q, K)), axis=1).astype(np.float32)
    corpus = [f"doc{j}" for j in range(N)]
    qids = [f"q{i}" for i in range(Q)]
    qrels = {q: {corpus[int(ids[i, rng.integers(0, K)])]: g for g in (1, 2, 3)} for i, q in enumerate(qids)}
    run = {q: {corpus[d]: float(s) for d, s in zip(ids[i].tolist(), scores[i].tolist())} for i, q in enumerate(qids)}
    return dict(ids=ids, scores=scores, corpus=corpus, qids=qids, qrels=qrels, run=run,
                qr=hn.Qrels.from_dict(qrels))


def test_evaluate_arrays_warm(benchmark, data):
    qr = data["qr"]
    benchmark(hn.evaluate, qr, data["ids"], METRICS, query_ids=data["qids"], corpus_ids=data["corpus"])


def test_evaluate_arrays_cold(benchmark, data):
    benchmark(lambda: hn.evaluate(hn.Qrels.from_dict(data["qrels"]), data["ids"], METRICS,
                                  query_ids=data["qids"], corpus_ids=data["corpus"]))


def test_evaluate_dicts(benchmark, data):
    benchmark(lambda: hn.evaluate(hn.Qrels.from_dict(data["qrels"]), data["run"], METRICS))


def test_pytrec_eval_dicts(benchmark, data):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    ms = {"ndcg_cut_10", "recip_rank", "recall_100", "map"}
    benchmark(lambda: pytrec_eval.RelevanceEvaluator(data["qrels"], ms).evaluate(data["run"]))


@pytest.mark.parametrize("method", ["rrf", "combsum"])
def test_fuse_arrays(benchmark, data, method):
    a = (data["scores"], data["ids"])
    b = (data["scores"][:, ::-1].copy(), data["ids"][:, ::-1].copy())
    benchmark(hn.fuse, [a, b], method=method)

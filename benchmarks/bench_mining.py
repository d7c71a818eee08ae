"""pytest-benchmark microbenchmarks of the mining pipeline (not run by CI).

    python -m pytest benchmarks/bench_mining.py --benchmark-only            # default sizes
    HARDNEG_BENCH_SMALL=1 python -m pytest benchmarks/bench_mining.py       # quick, small sizes
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import hardneg as hn
from hardneg import datasets as hd

SMALL = bool(os.environ.get("HARDNEG_BENCH_SMALL"))
N, Q, D = (3_000, 300, 128) if SMALL else (50_000, 5_000, 384)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    C = rng.standard_normal((N, D)).astype(np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    pos = [rng.choice(N, size=int(rng.integers(1, 4)), replace=False) for _ in range(Q)]
    Qe = np.stack([C[p].mean(0) for p in pos]) + 0.05 * rng.standard_normal((Q, D)).astype(np.float32)
    Qe = (Qe / np.linalg.norm(Qe, axis=1, keepdims=True)).astype(np.float32)
    ds = hd.from_dict({f"d{i}": f"doc {i}" for i in range(N)}, {f"q{j}": f"query {j}" for j in range(Q)},
                      {f"q{j}": {f"d{i}": 1 for i in p} for j, p in enumerate(pos)})
    return ds, C, Qe


@pytest.mark.parametrize("sampling", ["top", "random", "softmax"])
def test_mine_dense(benchmark, data, sampling):
    ds, C, Qe = data
    benchmark(lambda: hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Qe, sampling=sampling,
                                             progress=False))


def test_mine_dense_filters(benchmark, data):
    ds, C, Qe = data
    benchmark(lambda: hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Qe, relative_margin=0.05,
                                             absolute_margin=0.01, max_score=0.9, min_score=0.0, progress=False))


@pytest.mark.parametrize("fmt", ["ids", "flagembedding"])
def test_save(benchmark, data, tmp_path, fmt):
    ds, C, Qe = data
    m = hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Qe, progress=False)
    benchmark(lambda: m.save(tmp_path / "out.jsonl", format=fmt))

"""pytest-benchmark microbenchmarks for the scale-out paths (small sizes; run with
``pytest benchmarks/bench_scale.py --benchmark-only``; HARDNEG_BENCH_N scales the corpus)."""
import os

import numpy as np
import pytest

import hardneg as hn

N = int(os.environ.get("HARDNEG_BENCH_N", 100_000))
D, NQ, K = 256, 200, 100


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D), dtype=np.float32)
    Q = rng.standard_normal((NQ, D), dtype=np.float32)
    path = tmp_path_factory.mktemp("scale") / "corpus.npy"
    np.save(path, X)
    return X, Q, path


def test_in_memory(benchmark, data):
    X, Q, _ = data
    benchmark(hn.topk, Q, X, k=K)


def test_streamed_npy(benchmark, data):
    _, Q, path = data
    index = hn.DenseIndex.from_npy(path, block_bytes=16 << 20)
    benchmark(index.search, Q, k=K)


def test_streamed_memmap(benchmark, data):
    _, Q, path = data
    mm = np.load(path, mmap_mode="r")
    benchmark(hn.topk, Q, mm, k=K)


def test_merge_topk(benchmark):
    rng = np.random.default_rng(1)
    parts = [(-np.sort(-rng.standard_normal((4096, K)).astype(np.float32), axis=1),
              rng.integers(0, 1 << 40, (4096, K))) for _ in range(8)]
    benchmark(hn.merge_topk, [p[0] for p in parts], [p[1] for p in parts], K)


def test_faiss_ivf(benchmark, data):
    pytest.importorskip("faiss")
    X, Q, _ = data
    index = hn.DenseIndex(X, "ip", backend="faiss", index="IVF256,Flat", nprobe=16)
    benchmark(index.search, Q, k=K)

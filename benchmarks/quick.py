"""Quick side-by-side timings against the peers installed here: ``python benchmarks/quick.py [--quick]``.

Every number is the median of a few runs measured in the same process, so the
ratios are meaningful even on a busy machine; absolute times are not.  The full
benchmark scripts live in the repository's ``benchmarks/`` folder.
"""
from __future__ import annotations

import importlib.util
import time
from typing import Callable, List, Optional, Set, Tuple

import numpy as np

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "tests"))  # st_reference: the test oracle

SECTIONS = ("topk", "mining", "bm25")


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _have(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _table(title: str, rows: List[Tuple[str, str, float, float]]) -> str:
    out = [f"### {title}", "", "| case | peer | hardneg (ms) | peer (ms) | speed-up |", "| --- | --- | ---: | ---: | ---: |"]
    for case, peer, a, b in rows:
        out.append(f"| {case} | {peer} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.1f}x |")
    return "\n".join(out)


def bench_topk(quick: bool, threads: Optional[int]) -> str:
    import hardneg as hn

    rng = np.random.default_rng(0)
    n, d = (20_000, 384) if quick else (100_000, 384)
    C = rng.standard_normal((n, d), dtype=np.float32)
    rows = []
    for q, k in ((16, 10), (256, 100), (1024, 100)):
        Q = rng.standard_normal((q, d), dtype=np.float32)
        ours = _median_time(lambda: hn.topk(Q, C, k=k, num_threads=threads), 3)
        case = f"N={n:,} d={d} Q={q} k={k}"

        def np_topk():
            s = Q @ C.T
            part = np.argpartition(-s, k, axis=1)[:, :k]
            return np.take_along_axis(s, part, 1)

        rows.append((case, "numpy matmul+argpartition", ours, _median_time(np_topk, 3)))
        if _have("torch"):
            import torch

            tq, tc = torch.from_numpy(Q), torch.from_numpy(C)
            rows.append((case, "torch matmul+topk", ours, _median_time(lambda: torch.topk(tq @ tc.T, k, dim=1), 3)))
        if _have("faiss"):
            import faiss

            index = faiss.IndexFlatIP(d)
            index.add(C)
            rows.append((case, "faiss IndexFlatIP", ours, _median_time(lambda: index.search(Q, k), 3)))
    return _table("exact top-k (inner product)", rows)


def bench_mining(quick: bool, threads: Optional[int]) -> str:
    from hardneg import datasets as hd
    from hardneg.mining import mine_hard_negatives

    rng = np.random.default_rng(1)
    n, q, d = (5_000, 500, 384) if quick else (20_000, 2_000, 384)
    C = rng.standard_normal((n, d)).astype(np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    pos = [rng.choice(n, size=int(rng.integers(1, 3)), replace=False) for _ in range(q)]
    Q = np.stack([C[p].mean(0) for p in pos]) + 0.05 * rng.standard_normal((q, d)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    Q = Q.astype(np.float32)
    ds = hd.from_dict({f"d{i}": f"d{i}" for i in range(n)}, {f"q{j}": f"q{j}" for j in range(q)},
                      {f"q{j}": {f"d{i}": 1 for i in p} for j, p in enumerate(pos)})
    kw = dict(num_negatives=8, range_min=10, range_max=100, relative_margin=0.05)
    ours = _median_time(lambda: mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, progress=False,
                                                    num_threads=threads, **kw), 3)
    rows = []
    if _have("sentence_transformers") and _have("datasets") and _have("torch"):
        import contextlib
        import io
        import tempfile

        from st_reference import st_mine  # tests/st_reference.py

        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
            peer = _median_time(lambda: st_mine(ds.query_ids, ds.corpus_ids, ds.positives(), C, Q,
                                                cache_folder=tmp, **kw), 3)
        rows.append((f"N={n:,} Q={q} 8 negatives from 10..99, relative_margin=0.05",
                     "sentence-transformers mine_hard_negatives", ours, peer))
        return _table("dense mining, end to end on precomputed embeddings", rows)
    return f"### dense mining\n\nhardneg: {ours * 1e3:.1f} ms (sentence-transformers/datasets not installed: no peer)"


def bench_bm25(quick: bool, threads: Optional[int]) -> str:
    import hardneg as hn

    if getattr(hn, "BM25", None) is None:
        return "### BM25\n\n(this build has no hn.BM25)"
    if not _have("bm25s"):
        return "### BM25\n\n(bm25s not installed: no peer)"
    import bm25s

    rng = np.random.default_rng(2)
    vocab = [f"w{i}" for i in range(5000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    n = 5_000 if quick else 50_000
    docs = [" ".join(rng.choice(vocab, size=int(rng.integers(20, 80)), p=p)) for _ in range(n)]
    queries = [" ".join(rng.choice(vocab, size=5, p=p)) for _ in range(500)]

    def ours():
        bm = hn.BM25()
        bm.index(docs)
        return bm.search(queries, k=100, num_threads=threads)

    def peer():
        r = bm25s.BM25()
        r.index(bm25s.tokenize(docs, show_progress=False), show_progress=False)
        return r.retrieve(bm25s.tokenize(queries, show_progress=False), k=100, show_progress=False)

    return _table("BM25 index + search", [(f"{n:,} docs, 500 queries, k=100", "bm25s", _median_time(ours, 3),
                                           _median_time(peer, 3))])


def run(quick: bool = False, only: Optional[Set[str]] = None, num_threads: Optional[int] = None) -> str:
    import hardneg as hn

    info = hn.info()
    parts = [f"hardneg {info['version']}, SIMD {info['simd_level']}, {num_threads or info['num_threads']} threads; "
             "median of 3 runs, peers in the same process"]
    for name, fn in (("topk", bench_topk), ("mining", bench_mining), ("bm25", bench_bm25)):
        if only is None or name in only:
            parts.append(fn(quick, num_threads))
    return "\n\n".join(parts)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--only", default=None, help="comma-separated subset of: topk,mining,bm25")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    only = None if args.only is None else {x.strip() for x in args.only.split(",") if x.strip()}
    bad = (only or set()) - set(SECTIONS)
    if bad:
        p.error(f"--only: unknown section(s) {', '.join(sorted(bad))}; choose from {', '.join(SECTIONS)}")
    print(run(quick=args.quick, only=only, num_threads=args.threads))


if __name__ == "__main__":
    main()

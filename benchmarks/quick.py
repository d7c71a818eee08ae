"""Quick side-by-side timings against the peers installed here: ``python benchmarks/quick.py [--quick]``.

Every number follows benchmarks/harness.py's rules (sides interleaved, same warm-up, medians
of 3 runs with the min-max), so the ratios are meaningful even on a busy machine; absolute
times are not.  For the reproducible tables use ``python benchmarks/run_all.py``.  The full
benchmark scripts live in the repository's ``benchmarks/`` folder.
"""
from __future__ import annotations

import importlib.util
from typing import List, Optional, Set, Tuple

import numpy as np

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))  # harness, _st_peer

import harness  # noqa: E402

SECTIONS = ("topk", "mining", "bm25")


def _have(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


Row = Tuple[str, str, str, str, str]


def _row(case: str, peer: str, res: "harness.Result", ours: str, theirs: str) -> Row:
    return (case, peer, res.ms(ours), res.ms(theirs), res.ratio(ours, theirs))


def _table(title: str, rows: List[Row]) -> str:
    out = [f"### {title}", "", "| case | peer | hardneg (ms) | peer (ms) | speed-up |", "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def bench_topk(quick: bool, threads: Optional[int]) -> str:
    import hardneg as hn

    rng = np.random.default_rng(0)
    n, d = (20_000, 384) if quick else (100_000, 384)
    C = rng.standard_normal((n, d), dtype=np.float32)
    index = hn.DenseIndex(C, metric="ip")
    rows = []
    for q, k in ((16, 10), (256, 100), (1024, 100)):
        Q = rng.standard_normal((q, d), dtype=np.float32)
        case = f"N={n:,} d={d} Q={q} k={k}"

        def np_topk():
            s = Q @ C.T
            part = np.argpartition(-s, k, axis=1)[:, :k]
            return np.take_along_axis(s, part, 1)

        sides = {"hn": lambda: index.search(Q, k=k), "numpy": np_topk}
        if _have("torch"):
            import torch

            tq, tc = torch.from_numpy(Q), torch.from_numpy(C)
            sides["torch"] = lambda: torch.topk(tq @ tc.T, k, dim=1)
        if _have("faiss"):
            import faiss

            findex = faiss.IndexFlatIP(d)
            findex.add(C)
            sides["faiss"] = lambda: findex.search(Q, k)
        res = harness.compare(sides, runs=3, calls=1)
        names = {"numpy": "numpy matmul+argpartition", "torch": "torch matmul+topk", "faiss": "faiss IndexFlatIP"}
        rows += [_row(case, names[s], res, "hn", s) for s in sides if s != "hn"]
    return _table("exact top-k (inner product; indexes built once, outside)", rows)


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
    corpus = {f"d{i}": f"d{i}" for i in range(n)}
    queries = {f"q{j}": f"q{j}" for j in range(q)}
    qrels = {f"q{j}": {f"d{i}": 1 for i in p} for j, p in enumerate(pos)}
    kw = dict(num_negatives=8, range_min=10, range_max=100, relative_margin=0.05)

    def ours():  # one-shot: the dataset built inside the call, so none of its caches are warm
        ds = hd.from_dict(corpus, queries, qrels)
        return mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, progress=False,
                                   num_threads=threads, **kw)

    if _have("sentence_transformers") and _have("datasets") and _have("torch"):
        import tempfile

        import _st_peer

        ds = hd.from_dict(corpus, queries, qrels)
        with tempfile.TemporaryDirectory() as tmp:
            # only the peer's own mine_hard_negatives call is timed (its Dataset and cache files are built here)
            peer, _ = _st_peer.prepare(ds.query_ids, ds.corpus_ids, ds.positives(), C, Q, cache_folder=tmp, **kw)
            res = harness.compare({"hn": ours, "st": peer}, runs=3, calls=1)
        rows = [_row(f"N={n:,} Q={q} 8 negatives from 10..99, relative_margin=0.05",
                     "sentence-transformers mine_hard_negatives", res, "hn", "st")]
        return _table("dense mining, end to end on precomputed embeddings", rows)
    res = harness.compare({"hn": ours}, runs=3, calls=1)
    return f"### dense mining\n\nhardneg: {res.ms('hn')} ms (sentence-transformers/datasets not installed: no peer)"


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

    res = harness.compare({"hn": ours, "bm25s": peer}, runs=3, calls=1)
    return _table("BM25 index + search (both from raw strings)",
                  [_row(f"{n:,} docs, 500 queries, k=100", "bm25s", res, "hn", "bm25s")])


def run(quick: bool = False, only: Optional[Set[str]] = None, num_threads: Optional[int] = None) -> str:
    import hardneg as hn

    info = hn.info()
    if num_threads:
        harness.set_threads(num_threads)
    parts = [f"hardneg {info['version']}, SIMD {info['simd_level']}, {num_threads or info['num_threads']} threads; "
             "benchmarks/harness.py's rules: sides interleaved, medians of 3 runs (min-max), peers in the same "
             f"process; 1-minute load average {harness.START_LOAD[0]:.2f} on {harness.num_cores()} cores"]
    for name, fn in (("topk", bench_topk), ("mining", bench_mining), ("bm25", bench_bm25)):
        if only is None or name in only:
            parts.append(fn(quick, num_threads))
    problem = harness.blas_problem("quick.py")
    if problem:  # quick.py still prints (it is a smoke tool); compare_topk.py refuses
        parts.append(f"WARNING: a peer's BLAS runs a reduced kernel, its times above are pessimistic: {problem}")
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

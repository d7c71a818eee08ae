"""hardneg.mine_hard_negatives against sentence_transformers.util.mine_hard_negatives.

How the comparison is made (same run, same process, same threads):

* Data: SciFact train (809 queries, 5,183 documents) with the precomputed
  all-MiniLM-L6-v2 embeddings in ``../shared/data/scifact/embeddings``.
* sentence-transformers runs its real ``mine_hard_negatives`` on those embeddings: a
  model stub provides only ``similarity`` (cosine, as its models) and the
  embeddings come from its own ``cache_folder`` mechanism (``query_embeddings_<hash>.npy``),
  so no encoding happens; opaque id strings stand in for the texts.  Its default
  exact search (``use_faiss=False``: ``model.similarity`` + ``torch.topk``) is used,
  output_format="n-tuple".
* hardneg: ``mine_hard_negatives`` on the loaded dataset with the embeddings given as
  ``.npy`` paths (memory-mapped), same ranges, margins and counts, as the peer gets its
  dataset in memory and its embeddings from ``.npy`` files; a second column adds
  ``load_beir`` (parsing the JSONL files) and writing the n-tuple JSONL training file.
* "equal output": for every query, the negatives hardneg returns equal the ones
  sentence-transformers returns (same documents, same order).
* "search only": hardneg's kernel with exclusion vs the search block inside
  sentence-transformers (``model.similarity`` in chunks + ``torch.topk(k=range_max + P)``).
* Each timed run starts after a 20 ms pause (the main thread busy-waits), whichever side it is.
  Without it, a run that follows the peer's starts while torch's OpenMP workers are still
  spinning (they keep a core busy for a few ms after each op): on this 2-core machine hardneg's
  2 threads then share a core with them, and the search-only row measured 13.5 ms instead of
  9.7 ms, which measures the order of the runs, not either library.  (A sleeping pause lets this
  VM park the idle cores, and the next run may start slow instead.)

Run:  python benchmarks/compare_mining.py [--data ../shared/data/scifact] [--repeat 5]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "tests"))  # st_reference: the test oracle

import hardneg as hn
from hardneg import datasets as hd
from st_reference import st_mine  # tests/st_reference.py

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def median_time(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), ts


PAUSE = 0.02  # seconds of quiet before each timed run (see the module docstring)


def interleaved(fns, repeat):
    """Median time of each function, running them in turn (A B C A B C ...) after a warm-up."""
    for f in fns:
        f()
    ts = [[] for _ in fns]
    for _ in range(repeat):
        for i, f in enumerate(fns):
            pause = time.perf_counter()
            while time.perf_counter() - pause < PAUSE:  # busy: see the module docstring
                pass
            t = time.perf_counter()
            f()
            ts[i].append(time.perf_counter() - t)
    best.append([float(np.min(t)) for t in ts])
    return [float(np.median(t)) for t in ts]


best = []  # best-of-repeat times of each interleaved() call, same order


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("HARDNEG_SCIFACT", str(DEFAULT)))
    ap.add_argument("--split", default="train")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import torch

    data = Path(args.data)
    ce, qe = data / "embeddings" / "minilm-corpus.npy", data / "embeddings" / "minilm-queries.npy"
    ds = hd.load_beir(data, args.split)
    C = np.load(ce)
    Qall = np.load(qe)
    Q = np.ascontiguousarray(Qall[ds.query_rows])
    positives = ds.positives()
    print(f"SciFact {args.split}: {ds.num_queries} queries, {ds.num_docs} documents, d={C.shape[1]}; "
          f"hardneg {hn.__version__} ({hn.simd_level()}, {hn.get_num_threads()} threads), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); median of {args.repeat} runs\n")

    configs = [
        ("8 from 10..99, no filter", dict(num_negatives=8, range_min=10, range_max=100, relative_margin=None)),
        ("8 from 10..99, relative_margin=0.05", dict(num_negatives=8, range_min=10, range_max=100,
                                                     relative_margin=0.05)),
        ("8 from 10..99, absolute_margin=0.02, max_score=0.7, min_score=0.2",
         dict(num_negatives=8, range_min=10, range_max=100, relative_margin=None, absolute_margin=0.02,
              max_score=0.7, min_score=0.2)),
        ("15 from 2..199, random sampling (count check only)", dict(num_negatives=15, range_min=2, range_max=200,
                                                                   relative_margin=0.05, sampling="random")),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in configs:
            st_kw = {k: v for k, v in kw.items() if k != "sampling"}
            if kw.get("sampling") == "random":
                st_kw["sampling_strategy"] = "random"

            def ours():  # like the peer: dataset in memory, embeddings from .npy files
                return hn.mine_hard_negatives(ds, corpus_embeddings=ce, query_embeddings=qe, progress=False, **kw)

            def ours_write():  # from the files on disk to the training file
                d = hd.load_beir(data, args.split)
                m = hn.mine_hard_negatives(d, corpus_embeddings=ce, query_embeddings=qe, progress=False, **kw)
                m.save(os.path.join(tmp, "out.jsonl"), "sentence-transformers")
                return m

            def peer():
                with contextlib.redirect_stderr(io.StringIO()):
                    return st_mine(ds.query_ids, ds.corpus_ids, positives, C, Q, cache_folder=tmp, **st_kw)

            # interleaved, so that load from other processes hits both sides alike
            t_ours, t_ours_w, t_peer = interleaved([ours, ours_write, peer], args.repeat)
            m, ref = ours(), peer()
            got = [[int(x) for x in r if x >= 0] for r in m.ids]
            if kw.get("sampling") == "random":
                equal = f"counts {sum(len(g) == len(ref[q]) for g, q in zip(got, ds.query_ids))}/{ds.num_queries}"
            else:
                equal = f"{sum(g == ref[q] for g, q in zip(got, ds.query_ids))}/{ds.num_queries}"
            rows.append((name, t_ours, t_ours_w, t_peer, equal, best[-1]))

        # the search stage alone
        k = 100 + max(p.size for p in positives)
        from sentence_transformers import util

        tq, tc = torch.from_numpy(Q), torch.from_numpy(C)

        def st_search():
            s = util.cos_sim(tq, tc)
            return torch.topk(s, k=k, dim=1)

        index = hn.DenseIndex(C, metric="ip")  # what the miner runs on normalised embeddings
        t_hn_s, t_st_s = interleaved([lambda: index.search(Q, k=k, exclude=positives), st_search], args.repeat)

    print("| mining (SciFact train, dense, MiniLM embeddings) | hardneg (ms) | hardneg: load_beir + mine + write "
          "n-tuple file (ms) | sentence-transformers (ms) | speed-up | speed-up, hardneg incl. load + file "
          "| speed-up, best of each | equal output |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, a, aw, b, eq, bb in rows:
        print(f"| {name} | {a * 1e3:.1f} | {aw * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.1f}x | {b / aw:.1f}x "
              f"| {bb[2] / bb[0]:.1f}x | {eq} |")
    bs = best[-1]
    print(f"| search stage only: top-{k} of {ds.num_queries} x {ds.num_docs:,}, positives excluded (hardneg) / "
          f"cos_sim + torch.topk (peer) | {t_hn_s * 1e3:.1f} | | {t_st_s * 1e3:.1f} | {t_st_s / t_hn_s:.1f}x | "
          f"| {bs[1] / bs[0]:.1f}x | |")
    print("\nmedians of the interleaved runs; 'best of each' divides the fastest run of each side")

    if getattr(hn, "BM25", None) is not None:
        print("\n| hardneg BM25 / hybrid mining (index build included) | ms |\n| --- | ---: |")
        for retriever in ("bm25", "hybrid"):
            def f():
                d = hd.load_beir(data, args.split)
                return hn.mine_hard_negatives(d, retriever, corpus_embeddings=ce, query_embeddings=qe, progress=False)

            t, _ = median_time(f, args.repeat)
            print(f"| {retriever}, 8 from 10..99, relative_margin=0.05 | {t * 1e3:.1f} |")


if __name__ == "__main__":
    sys.exit(main())

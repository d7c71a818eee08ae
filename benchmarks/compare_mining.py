"""hardneg.mine_hard_negatives vs sentence_transformers.util.mine_hard_negatives, under harness.py's rules.

* Data: SciFact train (809 queries, 5,183 documents) with the precomputed all-MiniLM-L6-v2
  embeddings in ``../shared/data/scifact/embeddings`` (skipped cleanly when absent).
* sentence-transformers runs its real ``mine_hard_negatives`` with its embedding cache
  (``cache_folder``: ``query_embeddings_<hash>.npy``, no encoding; a model stub provides only
  ``similarity``), its default exact search (``model.similarity`` + ``torch.topk``).  Its
  ``datasets.Dataset`` and cache files are built before timing and its output is converted after:
  only its ``mine_hard_negatives`` call is timed (benchmarks/_st_peer.py).  Its other ordinary
  form, ``use_faiss=True`` (exact faiss search), is timed too when faiss is installed; the
  speed-ups divide by the faster of its two forms in each run.
* hardneg one-shot: ``load_beir`` (parsing the JSONL files) + ``mine_hard_negatives`` with the
  embeddings as ``.npy`` paths, inside the timed call: a fresh dataset every call, so none of its
  caches (positives, split rows, unit-norm check) are warm.  This is the headline column.
* hardneg warm: the dataset loaded and the embeddings read once, outside the timed call.
* "first call": each side's first call in this process (before any warm-up), for reference.
* "equal output": for every query, hardneg's negatives equal the peer's (same documents, order).
* search stage only: hardneg's kernel with exclusion (one-shot: ``DenseIndex`` built inside) vs
  ``cos_sim`` + ``torch.topk`` as inside sentence-transformers.

Run:  python benchmarks/compare_mining.py [--data ../shared/data/scifact] [--runs 3] [--calls 3] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import harness


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(harness.SCIFACT))
    ap.add_argument("--split", default="train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 call per run, two configurations")
    args = ap.parse_args()
    if args.quick:
        args.calls = 1
    data = Path(args.data)
    ce, qe = data / "embeddings" / "minilm-corpus.npy", data / "embeddings" / "minilm-queries.npy"
    if not (ce.exists() and qe.exists() and (data / "corpus.jsonl").exists()):
        print(f"compare_mining: skipped: {data} (BEIR SciFact with embeddings/) not found")
        return 0
    harness.set_threads(args.threads)
    import torch
    from sentence_transformers import util

    import _st_peer
    import hardneg as hn
    from hardneg import datasets as hd

    try:
        import faiss  # noqa: F401  (sentence-transformers' use_faiss=True form)
        use_faiss = True
    except ImportError:
        use_faiss = False
    harness.set_threads(args.threads)
    ds = hd.load_beir(data, args.split)
    C, Qall = np.load(ce), np.load(qe)
    Q = np.ascontiguousarray(Qall[ds.query_rows])
    positives = ds.positives()

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
    if args.quick:
        configs = configs[1:2] + configs[3:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in configs:
            st_kw = {k: v for k, v in kw.items() if k != "sampling"}
            if kw.get("sampling") == "random":
                st_kw["sampling_strategy"] = "random"
            peer_call, peer_convert = _st_peer.prepare(ds.query_ids, ds.corpus_ids, positives, C, Q,
                                                      cache_folder=tmp, **st_kw)
            sides_st = {"st": peer_call}
            if use_faiss:  # its other ordinary form: faiss IndexFlatIP search (exact)
                sides_st["st faiss"] = _st_peer.prepare(ds.query_ids, ds.corpus_ids, positives, C, Q,
                                                       cache_folder=tmp, use_faiss=True, **st_kw)[0]

            def oneshot():  # a user's first call: from the files on disk
                d = hd.load_beir(data, args.split)
                return hn.mine_hard_negatives(d, corpus_embeddings=ce, query_embeddings=qe, progress=False, **kw)

            def warm():  # dataset and embeddings in memory, built once
                return hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Qall, progress=False, **kw)

            res = harness.compare({"hardneg one-shot": oneshot, "hardneg warm": warm, **sides_st},
                                  runs=args.runs, calls=args.calls)
            m, ref = res.outputs["hardneg one-shot"], peer_convert(res.outputs["st"])
            mw = res.outputs["hardneg warm"]
            got = [[int(x) for x in r if x >= 0] for r in m.ids]
            same_warm = all(np.array_equal(a, b) for a, b in zip(m.ids, mw.ids))
            if kw.get("sampling") == "random":
                equal = f"counts {sum(len(g) == len(ref[q]) for g, q in zip(got, ds.query_ids))}/{ds.num_queries}"
            else:
                equal = f"{sum(g == ref[q] for g, q in zip(got, ds.query_ids))}/{ds.num_queries}"
            if not same_warm and kw.get("sampling") != "random":
                equal += " (one-shot and warm differ!)"
            if "st faiss" in res.outputs and kw.get("sampling") != "random":
                ref_f = peer_convert(res.outputs["st faiss"])
                equal += f"; use_faiss=True: {sum(g == ref_f[q] for g, q in zip(got, ds.query_ids))}/{ds.num_queries}"
            rows.append((name, res, equal))

        k = 100 + max(p.size for p in positives)
        tq, tc = torch.from_numpy(Q), torch.from_numpy(C)
        index = hn.DenseIndex(C, metric="ip")  # what the miner runs on normalised embeddings
        search = harness.compare({
            "hardneg one-shot": lambda: hn.DenseIndex(C, metric="ip").search(Q, k=k, exclude=positives),
            "hardneg warm": lambda: index.search(Q, k=k, exclude=positives),
            "st": lambda: torch.topk(util.cos_sim(tq, tc), k=k, dim=1)}, runs=args.runs, calls=args.calls)

    print(harness.header(f"Mining: SciFact {args.split} ({ds.num_queries} queries, {ds.num_docs:,} documents, "
                         f"d={C.shape[1]}), hardneg vs sentence-transformers", args.threads))
    print(harness.fmt_rules(max(3, args.runs), args.calls, 1) + "\n")
    print("| mining (dense, MiniLM embeddings) | hardneg one-shot (ms) | hardneg warm (ms) | sentence-transformers "
          "(ms) | sentence-transformers use_faiss=True (ms) | speed-up vs one-shot | speed-up vs warm "
          "| first call in process: hardneg / st (ms) | equal output |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r, eq in rows:
        st_sides = [x for x in ("st", "st faiss") if x in r.times]
        print(f"| {name} | {r.ms('hardneg one-shot')} | {r.ms('hardneg warm')} | {r.ms('st')} "
              f"| {r.ms('st faiss') if 'st faiss' in r.times else '-'} "
              f"| {r.ratio_best('hardneg one-shot', st_sides)} | {r.ratio_best('hardneg warm', st_sides)} "
              f"| {r.first['hardneg one-shot'] * 1e3:.1f} / {r.first['st'] * 1e3:.1f} | {eq} |")
    s = search
    print(f"| search stage only: top-{k} of {ds.num_queries} x {ds.num_docs:,}, positives excluded (hardneg; "
          f"one-shot builds the DenseIndex) / cos_sim + torch.topk (peer) | {s.ms('hardneg one-shot')} "
          f"| {s.ms('hardneg warm')} | {s.ms('st')} | | {s.ratio('hardneg one-shot', 'st')} "
          f"| {s.ratio('hardneg warm', 'st')} | | |")
    print("\nsentence-transformers: only its mine_hard_negatives call is timed (its Dataset and embedding cache "
          "files are built before, its output converted after); it loads the cached embeddings inside the call, "
          "as hardneg's one-shot column reads the .npy files.")

    if getattr(hn, "BM25", None) is not None:
        sides = {}
        for retriever in ("bm25", "hybrid"):
            def f(retriever=retriever):
                d = hd.load_beir(data, args.split)
                return hn.mine_hard_negatives(d, retriever, corpus_embeddings=ce, query_embeddings=qe,
                                              progress=False)
            sides[retriever] = f
        r = harness.compare(sides, runs=args.runs, calls=args.calls)
        print("\n| hardneg BM25 / hybrid mining, one-shot (load_beir + index build + mine) | ms |\n| --- | ---: |")
        for retriever in sides:
            print(f"| {retriever}, 8 from 10..99, relative_margin=0.05 | {r.ms(retriever)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

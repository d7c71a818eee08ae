"""Mine hard negatives for SciFact train with dense, BM25 and hybrid retrieval.

Prints, for each retriever: the timing of each stage, the ``report()``, and how many
mined negatives are labelled positives in the train qrels (must be 0: positives are
excluded inside the search) and in the test qrels (documents relevant to *other*
claims, not a bug: no test query is a train query).

    python examples/mine_scifact.py [--data ../shared/data/scifact]

BM25 and hybrid run when this build of hardneg has ``hn.BM25``.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import hardneg as hn
from hardneg import datasets as hd

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("HARDNEG_SCIFACT", str(DEFAULT)))
    ap.add_argument("--out", default=None, help="folder for the training files (flagembedding format)")
    args = ap.parse_args()
    data = Path(args.data)

    t = time.perf_counter()
    ds = hd.load_beir(data, "train")
    t_load = time.perf_counter() - t
    test = hd.load_beir(data, "test")
    ce, qe = data / "embeddings" / "minilm-corpus.npy", data / "embeddings" / "minilm-queries.npy"
    print(f"{ds}\nload_beir: {t_load * 1e3:.0f} ms\n")
    test_pos = {d for rel in test.qrels.values() for d, r in rel.items() if r > 0}

    retrievers = ["dense"] + (["bm25", "hybrid"] if getattr(hn, "BM25", None) is not None else [])
    for retriever in retrievers:
        t = time.perf_counter()
        mined = hn.mine_hard_negatives(ds, retriever, corpus_embeddings=ce, query_embeddings=qe,
                                       num_negatives=8, range_min=10, range_max=100, relative_margin=0.05,
                                       progress=False)
        total = time.perf_counter() - t
        print(f"== {retriever}: {total * 1e3:.0f} ms end to end (+ {t_load * 1e3:.0f} ms load_beir)")
        print(mined.report())
        negs = mined.negative_doc_ids()
        in_train = sum(d in ds.qrels[q] and ds.qrels[q][d] > 0 for q, row in zip(ds.query_ids, negs) for d in row)
        in_test = sum(d in test_pos for row in negs for d in row)
        print(f"negatives labelled positive for their own query (train qrels): {in_train}")
        print(f"negatives that are a test-split positive (of another claim): {in_test} of {sum(map(len, negs))}\n")
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            mined.save(Path(args.out) / f"scifact-train-{retriever}.jsonl", format="flagembedding")


if __name__ == "__main__":
    main()

"""hardneg.evaluate vs pytrec_eval (and ranx when installed), side by side in one run.

    python benchmarks/compare_metrics.py                       # 10,000 queries x 1,000 docs
    python benchmarks/compare_metrics.py --queries 500 --depth 100   # quick

Inputs: Q queries, each with `depth` retrieved documents out of a corpus of N ids
(no repeats), 3 graded relevant documents per query (relevance 1..3; each is
retrieved with probability 0.7 at a random rank).  Metrics ndcg@10 + recip_rank +
recall@100 + map.  Prints a markdown table (best of --repeat, seconds) with the
speed-up over pytrec_eval and the largest difference from its numbers.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import hardneg as hn

METRICS = ["ndcg@10", "recip_rank", "recall@100", "map"]
TREC = {"ndcg@10": "ndcg_cut_10", "recip_rank": "recip_rank", "recall@100": "recall_100", "map": "map"}


def make_data(Q, depth, N, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.empty((Q, depth), dtype=np.int64)
    for i in range(Q):  # distinct ids per row
        row = np.unique(rng.integers(0, N, depth + depth // 4 + 8))
        while len(row) < depth:
            row = np.unique(np.concatenate([row, rng.integers(0, N, depth)]))
        ids[i] = rng.permutation(row)[:depth]
    corpus_ids = [f"doc{j}" for j in range(N)]
    query_ids = [f"q{i}" for i in range(Q)]
    qrels = {}
    for i, q in enumerate(query_ids):
        judged = {}
        for g in (3, 2, 1):
            if rng.random() < 0.7:
                d = int(ids[i, int(rng.integers(0, depth))])
            else:
                d = int(rng.integers(0, N))
            judged[corpus_ids[d]] = g
        qrels[q] = judged
    scores = np.sort(rng.random((Q, depth)).astype(np.float32), axis=1)[:, ::-1].copy()
    run = {q: {corpus_ids[d]: float(s) for d, s in zip(ids[i].tolist(), scores[i].tolist())}
           for i, q in enumerate(query_ids)}
    return qrels, run, ids, scores, query_ids, corpus_ids


def best(fn, repeat):
    t, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t.append(time.perf_counter() - t0)
    return min(t), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--depth", type=int, default=1_000)
    ap.add_argument("--corpus", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    nt = a.threads or hn.get_num_threads()

    qrels, run, ids, scores, query_ids, corpus_ids = make_data(a.queries, a.depth, a.corpus)
    rows = []

    import pytrec_eval

    def pytrec():
        ev = pytrec_eval.RelevanceEvaluator(qrels, set(TREC.values()))
        per = ev.evaluate(run)
        return {m: float(np.mean([v[TREC[m]] for v in per.values()])) for m in METRICS}

    t_ref, ref = best(pytrec, a.repeat)
    rows.append(("pytrec_eval (dicts in, evaluator built and run)", t_ref, 0.0))

    def diff(res):
        return max(abs(res[m] - ref[m]) for m in METRICS)

    t, res = best(lambda: hn.evaluate(hn.Qrels.from_dict(qrels), run, METRICS, num_threads=nt), a.repeat)
    rows.append(("hardneg, dicts in (Qrels.from_dict + evaluate)", t, diff(res)))

    def arrays_cold():
        return hn.evaluate(hn.Qrels.from_dict(qrels), (scores, ids), METRICS, query_ids=query_ids,
                           corpus_ids=corpus_ids, num_threads=nt)

    t, res = best(arrays_cold, a.repeat)
    rows.append(("hardneg, arrays in, cold (Qrels.from_dict + id mapping + evaluate)", t, diff(res)))

    qr = hn.Qrels.from_dict(qrels)
    hn.evaluate(qr, ids, METRICS, query_ids=query_ids, corpus_ids=corpus_ids, num_threads=nt)

    t, res = best(lambda: hn.evaluate(qr, ids, METRICS, query_ids=query_ids, corpus_ids=corpus_ids,
                                      num_threads=nt), max(a.repeat, 5))
    rows.append(("hardneg, arrays in, warm (same Qrels and corpus_ids: mapping cached)", t, diff(res)))

    t, res = best(lambda: hn.evaluate(qr, ids, METRICS, query_ids=query_ids, corpus_ids=corpus_ids,
                                      num_threads=1), max(a.repeat, 5))
    rows.append(("hardneg, arrays in, warm, 1 thread", t, diff(res)))

    try:
        import ranx  # noqa: F401
        have_ranx = True
    except ImportError:
        have_ranx = False
    if have_ranx:
        from ranx import Qrels as RQ, Run as RR, evaluate as rev

        def ranx_all():
            return rev(RQ(qrels), RR(run), ["ndcg@10", "mrr", "recall@100", "map"])

        t, _ = best(ranx_all, 1)
        rows.append(("ranx (build Qrels/Run + evaluate, first call includes JIT)", t, float("nan")))

    print(f"\n{a.queries:,} queries x {a.depth:,} docs, corpus {a.corpus:,} ids, metrics {' + '.join(METRICS)}, "
          f"{nt} threads, best of {a.repeat}\n")
    print("| implementation | time | speed-up vs pytrec_eval | max abs diff vs pytrec_eval |")
    print("| --- | --- | --- | --- |")
    for name, t, d in rows:
        print(f"| {name} | {t * 1000:,.1f} ms | {t_ref / t:,.1f}x | {d:.1e} |")
    if not have_ranx:
        print("\n(ranx not installed: not measured)")


if __name__ == "__main__":
    main()

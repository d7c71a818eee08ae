"""hardneg.evaluate vs pytrec_eval (and ranx when installed), side by side in one run.

    python benchmarks/compare_metrics.py                       # 10,000 queries x 1,000 docs
    python benchmarks/compare_metrics.py --quick                # 1,000 queries x 100 docs

Inputs: Q queries, each with `depth` retrieved documents out of a corpus of N ids
(no repeats), 3 graded relevant documents per query (relevance 1..3; each is
retrieved with probability 0.7 at a random rank).  Metrics ndcg@10 + recip_rank +
recall@100 + map.  Prints a markdown table (harness.py's rules: interleaved, one-shot and
warm forms, medians with min-max over runs) with the speed-up over pytrec_eval in the same
form and the largest difference from its numbers.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import harness
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--depth", type=int, default=1_000)
    ap.add_argument("--corpus", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1,000 queries x 100 docs, 1 call per run")
    a = ap.parse_args()
    if a.quick:
        a.queries, a.depth, a.corpus, a.calls = 1_000, 100, 100_000, 1
    nt = a.threads
    harness.set_threads(nt)

    qrels, run, ids, scores, query_ids, corpus_ids = make_data(a.queries, a.depth, a.corpus)

    import pytrec_eval

    measures = set(TREC.values())

    def pytrec_mean(per):
        return {m: float(np.mean([v[TREC[m]] for v in per.values()])) for m in METRICS}

    ev = pytrec_eval.RelevanceEvaluator(qrels, measures)
    qr = hn.Qrels.from_dict(qrels)
    sides = {
        # one-shot: everything from the dicts / arrays inside the call
        "pytrec_eval one-shot": lambda: pytrec_mean(pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)),
        "hardneg dicts one-shot": lambda: hn.evaluate(hn.Qrels.from_dict(qrels), run, METRICS, num_threads=nt),
        "hardneg arrays one-shot": lambda: hn.evaluate(hn.Qrels.from_dict(qrels), (scores, ids), METRICS,
                                                       query_ids=query_ids, corpus_ids=corpus_ids, num_threads=nt),
        # warm: the evaluator / Qrels built once, outside
        "pytrec_eval warm": lambda: pytrec_mean(ev.evaluate(run)),
        "hardneg dicts warm": lambda: hn.evaluate(qr, run, METRICS, num_threads=nt),
        "hardneg arrays warm": lambda: hn.evaluate(qr, ids, METRICS, query_ids=query_ids, corpus_ids=corpus_ids,
                                                   num_threads=nt),
        "hardneg arrays warm, 1 thread": lambda: hn.evaluate(qr, ids, METRICS, query_ids=query_ids,
                                                             corpus_ids=corpus_ids, num_threads=1),
    }
    try:
        from ranx import Qrels as RQ, Run as RR, evaluate as rev
        have_ranx = True
    except ImportError:
        have_ranx = False
    if have_ranx:
        RMET = ["ndcg@10", "mrr", "recall@100", "map"]
        rq, rr = RQ(qrels), RR(run)
        sides["ranx one-shot"] = lambda: rev(RQ(qrels), RR(run), RMET)
        sides["ranx warm"] = lambda: rev(rq, rr, RMET)
    res = harness.compare(sides, runs=a.runs, calls=a.calls)

    ref = res.outputs["pytrec_eval one-shot"]

    def diff(side):
        out = res.outputs[side]
        if side.startswith("ranx"):
            names = dict(zip(["ndcg@10", "mrr", "recall@100", "map"], METRICS))
            out = {names[k]: float(v) for k, v in out.items()}
        return f"{max(abs(out[m] - ref[m]) for m in METRICS):.1e}"

    print(harness.header(f"Metrics: {a.queries:,} queries x {a.depth:,} docs, corpus {a.corpus:,} ids, "
                         f"{' + '.join(METRICS)}", nt))
    print(harness.fmt_rules(max(3, a.runs), a.calls, 1))
    print("one-shot: qrels and run given as dicts / arrays, every object built inside the call; warm: the "
          "evaluator (pytrec_eval), Qrels (hardneg) or Qrels/Run (ranx) built once outside. Every side gets the "
          "same untimed warm-up call (ranx: its numba JIT compiles there); 'first call' is that call.\n")
    print("| implementation | time (ms) | speed-up vs pytrec_eval (same form) | first call (ms) "
          "| max abs diff vs pytrec_eval |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for side in sides:
        base = "pytrec_eval one-shot" if "one-shot" in side else "pytrec_eval warm"
        print(f"| {side} | {res.ms(side)} | {res.ratio(side, base)} | {res.first[side] * 1e3:,.1f} | {diff(side)} |")
    if not have_ranx:
        print("\n(ranx not installed: not measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

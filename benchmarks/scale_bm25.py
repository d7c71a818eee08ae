"""BM25 at scale: a generated Zipf corpus of 2,000,000 documents (the scale check).

Indexes the corpus from raw text, searches top-100 / top-1000, saves the index and
loads it back memory-mapped, printing times, the index size and the process's peak
resident memory.  Not run in CI (about 3 minutes and ~6 GiB on a 2-core machine).  The table is
headed by the machine it was measured on (harness.header); ``--quick``: 200,000 documents.

    python benchmarks/scale_bm25.py --docs 2000000 --queries 5000 --threads 2
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from _common import proc_status_bytes  # noqa: E402
import hardneg as hn  # noqa: E402
from compare_bm25 import zipf_corpus  # noqa: E402


def rss_mb() -> float:
    return proc_status_bytes("VmRSS") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2_000_000)
    ap.add_argument("--queries", type=int, default=5_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="200,000 documents, 1,000 queries")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.queries = 200_000, 1_000
    harness.set_threads(args.threads)
    head = harness.header(f"BM25 at scale (hardneg only): {args.docs:,} generated documents, {args.queries:,} "
                          "queries", args.threads)  # taken now: the load average before the run

    t = time.perf_counter()
    texts, queries = zipf_corpus(args.docs, args.queries)
    nchar = sum(map(len, texts))
    print(f"generated {len(texts):,} documents ({nchar / 1e6:,.0f} M characters) in {time.perf_counter() - t:.1f} s;"
          f" RSS {rss_mb():,.0f} MB")
    rows = []
    t = time.perf_counter()
    bm = hn.BM25().index(texts, num_threads=args.threads)
    rows.append(("tokenise + index", f"{time.perf_counter() - t:.1f} s"))
    rows.append(("postings", f"{bm._core.num_postings:,}"))
    rows.append(("index size in RAM (BM25.nbytes)", f"{bm.nbytes / 1e6:,.0f} MB"))
    rows.append(("peak RSS so far (corpus strings included)", f"{peak_mb():,.0f} MB"))
    for k in (100, 1000):
        bm.search(queries[:50], k=k, num_threads=args.threads)
        t = time.perf_counter()
        bm.search(queries, k=k, num_threads=args.threads)
        rows.append((f"top-{k} queries/s ({args.threads} threads)", f"{len(queries) / (time.perf_counter() - t):,.0f}"))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        bm.save(d)
        rows.append(("save", f"{time.perf_counter() - t:.1f} s"))
        del bm, texts
        gc.collect()
        before = rss_mb()
        t = time.perf_counter()
        bm2 = hn.BM25.load(d, mmap=True)
        rows.append(("load(mmap=True)", f"{time.perf_counter() - t:.1f} s, RSS +{rss_mb() - before:,.0f} MB"))
        t = time.perf_counter()
        bm2.search(queries, k=100, num_threads=args.threads)
        rows.append(("top-100 queries/s after load", f"{len(queries) / (time.perf_counter() - t):,.0f}"))
        del bm2
    rows.append(("peak RSS of the run", f"{peak_mb():,.0f} MB"))
    print()
    print(head)
    print("Single timings (each after one untimed warm-up search of 50 queries); no peer.\n")
    print("| measure | value |\n| --- | ---: |")
    for a, b in rows:
        print(f"| {a} | {b} |")


if __name__ == "__main__":
    main()

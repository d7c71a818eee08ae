"""hardneg.BM25 vs bm25s (Numba backend) and rank_bm25, side by side in one run.

Prints a markdown table under harness.py's rules: tokenise + index time (one-shot: raw
strings in), top-k search time (warm: indexes built), index size, and the ratios.  Corpora: a generated Zipf corpus (default 200,000
documents of 20-150 words over a 100,000-word vocabulary, queries of 3-12
words) and SciFact (if ../shared/data/scifact exists).

    python benchmarks/compare_bm25.py --docs 50000 --queries 5000 --threads 2
    python benchmarks/compare_bm25.py --quick
"""
from __future__ import annotations

import argparse
import importlib.util
import gc
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DISABLE_TQDM", "1")

import numpy as np

import harness
import hardneg as hn

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
if os.environ.get("HARDNEG_SCIFACT"):
    SCIFACT = Path(os.environ["HARDNEG_SCIFACT"])


def zipf_corpus(n_docs: int, n_queries: int, vocab: int = 100_000, seed: int = 0):
    """Random lowercase words with Zipf (s = 1) frequencies; docs 20-150 words, queries 3-12."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(3, 11, size=vocab)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    words = [letters[rng.integers(0, 26, size=L)].tobytes().decode() for L in lens]
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1))
    cdf /= cdf[-1]

    def draw(n, lo, hi):
        sizes = rng.integers(lo, hi + 1, size=n)
        ids = np.searchsorted(cdf, rng.random(int(sizes.sum())))
        out, pos = [], 0
        for s in sizes:
            out.append(" ".join(words[j] for j in ids[pos: pos + s]))
            pos += s
        return out

    return draw(n_docs, 20, 150), draw(n_queries, 3, 12)


def scifact():
    if not (SCIFACT / "corpus.jsonl").exists():
        return None
    corpus = [json.loads(line) for line in open(SCIFACT / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(line)["text"] for line in open(SCIFACT / "queries.jsonl", encoding="utf-8")]
    return [d["title"] + " " + d["text"] for d in corpus], queries


# bm25s's strongest backend (its JIT compiles in the untimed warm-up call); numpy when numba is absent
BACKEND = "numba" if importlib.util.find_spec("numba") else "numpy"


def bench(name, texts, queries, threads, ks, rank_bm25_queries, runs, calls):
    import bm25s
    import Stemmer

    rows = []
    st = Stemmer.Stemmer("english")

    def bm25s_tok(x, **kw):
        return bm25s.tokenize(x, stopwords="en", stemmer=st, show_progress=False, **kw)

    def bm25s_build():  # tokenise + index (Numba backend), from the raw strings
        r = bm25s.BM25(backend=BACKEND)
        r.index(bm25s_tok(texts), show_progress=False)
        return r

    gc.collect()
    r = harness.compare({"hardneg": lambda: hn.BM25().index(texts, num_threads=threads), "bm25s": bm25s_build},
                        runs=runs, calls=1)
    bm, ref = r.outputs["hardneg"], r.outputs["bm25s"]
    rows.append((name, "tokenise + index (ms; one-shot: raw strings in)", r, "both from raw strings"))
    hn_size = bm.nbytes  # postings, codes, lengths and pruning metadata
    ref_size = sum(ref.scores[x].nbytes for x in ("data", "indices", "indptr"))
    rows.append((name, "index size (MB)", (hn_size / 1e6, ref_size / 1e6), "postings arrays"))

    def qtok():
        q = bm25s_tok(queries, return_ids=False)
        return [x if x else [""] for x in q]  # bm25s needs a token per query

    qtoks = qtok()
    for k in ks:
        r = harness.compare({
            "hardneg": lambda: bm.search(queries, k=k, num_threads=threads),
            "bm25s": lambda: ref.retrieve(qtoks, k=k, n_threads=threads, show_progress=False),
            "bm25s + query tokenisation": lambda: ref.retrieve(qtok(), k=k, n_threads=threads,
                                                               show_progress=False)}, runs=runs, calls=calls)
        hi = r.outputs["hardneg"][1]
        agree = np.mean(hi[:, 0] == np.asarray(r.outputs["bm25s"].documents)[:, 0])
        rows.append((name, f"top-{k} search of {len(queries):,} queries (ms; warm: indexes built)", r,
                     f"top-1 agreement {agree:.3f}; hardneg includes query tokenisation, the bm25s column does "
                     f"not (the next one does)"))
    # Incremental add of 1% more documents vs indexing everything again (hardneg only).
    cut = len(texts) - max(1, len(texts) // 100)
    base_ix = hn.BM25().index(texts[:cut], num_threads=threads)
    r = harness.compare({"add": lambda: base_ix.add(texts[cut:], num_threads=threads)}, runs=runs, calls=1)
    rows.append((name, "hardneg only: add 1% more docs (ms)", r, "bm25s has no add"))
    if rank_bm25_queries:
        try:
            from rank_bm25 import BM25Okapi

            ctoks = bm25s_tok(texts)
            rb = BM25Okapi(ctoks_str(ctoks))
            qs = qtoks[:rank_bm25_queries]
            r = harness.compare({"rank_bm25": lambda: [np.argsort(-rb.get_scores(q))[:100] for q in qs]},
                                runs=runs, calls=1)
            rows.append((name, f"rank_bm25 only: top-100 of {len(qs)} queries (ms, 1 thread)", r, ""))
        except ImportError:
            pass
    return rows


def ctoks_str(ctoks):
    inv = {v: k for k, v in ctoks.vocab.items()}
    return [[inv[i] for i in doc] for doc in ctoks.ids]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ks", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--no-scifact", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="20,000 docs, 2,000 queries, k=100, 1 call per run")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.queries, args.ks, args.calls = 20_000, 2_000, [100], 1
    harness.set_threads(args.threads)
    import bm25s

    harness.set_threads(args.threads)
    rows = []
    if not args.no_scifact:
        sf = scifact()
        if sf is not None:
            rows += bench("SciFact", sf[0], sf[1], args.threads, args.ks, 100, args.runs, args.calls)
    texts, queries = zipf_corpus(args.docs, args.queries)
    nchar = sum(map(len, texts))
    rows += bench(f"Zipf {args.docs // 1000}k docs ({nchar / 1e6:.0f} M chars)", texts, queries, args.threads,
                  args.ks, 0, args.runs, args.calls)

    print(harness.header(f"BM25: hardneg vs bm25s {bm25s.__version__} ({BACKEND} backend"
                         f"{'' if BACKEND == 'numba' else ': numba is not installed here'})", args.threads))
    print(harness.fmt_rules(max(3, args.runs), args.calls, 1) + " Index builds: 1 call per run.\n")
    print("| corpus | measure | hardneg | bm25s | bm25s / hardneg | notes |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for corpus, what, r, note in rows:
        if isinstance(r, tuple):
            print(f"| {corpus} | {what} | {r[0]:,.1f} | {r[1]:,.1f} | {r[1] / r[0]:.2f}x | {note} |")
        elif "bm25s" not in r.times:
            side = next(iter(r.times))
            print(f"| {corpus} | {what} | {r.ms(side) if side != 'rank_bm25' else ''} "
                  f"| {r.ms(side) if side == 'rank_bm25' else ''} | | {note} |")
        else:
            print(f"| {corpus} | {what} | {r.ms('hardneg')} | {r.ms('bm25s')} | {r.ratio('hardneg', 'bm25s')} "
                  f"| {note} |")
            if "bm25s + query tokenisation" in r.times:
                print(f"| {corpus} | {what.replace('(ms', '(ms, bm25s incl. query tokenisation')} | "
                      f"{r.ms('hardneg')} | {r.ms('bm25s + query tokenisation')} "
                      f"| {r.ratio('hardneg', 'bm25s + query tokenisation')} | both from query strings |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mining at scale: hardneg.mine_hard_negatives vs sentence-transformers' miner on large corpora.

Not in CI (the default size takes minutes per side); ``run_all.py --quick`` runs it at small sizes.

    python benchmarks/compare_mining_scale.py                          # 1,000,000 x 384, 20,000 queries
    python benchmarks/compare_mining_scale.py --docs 200000 --queries 2000
    python benchmarks/compare_mining_scale.py --data scifact-tiled --docs 200000 --queries 2000
    python benchmarks/compare_mining_scale.py --docs 2000000 --dim 768 --queries 2000 --ooc --no-faiss

* Data: ``clustered``: unit vectors from a Gaussian mixture (about 1,000 rows per centre) in a
  random 64-d latent subspace plus isotropic noise (anisotropic, clustered: benchmarks/compare_scale.py);
  ``scifact-tiled``: SciFact's all-MiniLM-L6-v2 corpus embeddings tiled with small noise.  Each query
  is a corpus row plus noise, renormalised; that row is its one positive.
* The job: 8 negatives from ranks 10..100, relative_margin 0.05, cosine (the README's configuration).
* sentence-transformers: its real ``util.mine_hard_negatives`` with its embedding cache (no encoding,
  benchmarks/_st_peer.py), exact search (``model.similarity`` + ``torch.topk``) and its other
  ordinary form ``use_faiss=True`` (faiss ``IndexFlatIP``, also exact).  Only its call is timed.
* hardneg: ``mine_hard_negatives`` with the dataset and embeddings in memory, as the peer has them
  (the peer reads its cache files inside the call; hardneg's one-shot form with ``.npy`` paths reads
  them in place).  ``--ooc`` (out of core): the corpus is generated straight into a ``.npy`` file
  and hardneg gets its path (``corpus_embeddings=path``: read in place, never loaded whole); the
  benchmark process holds no copy or mapping of it while timing.  The page cache is not dropped
  (that needs root): the file was just written, so hardneg reads whatever of it the kernel kept.
* Rules: benchmarks/harness.py (same warm-up and interleaved calls for every side, 2 threads).
  Peak extra memory: resident memory above the level before the call (VmHWM), one call per side.
* "equal output": queries whose negatives (documents and order) equal the peer's; "same negatives":
  the same documents in any order.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

import harness
from _common import peak_extra_bytes


def make_data(kind: str, n: int, nq: int, d: int, seed: int = 0, out=None):
    """(corpus (n, d), queries (nq, d), positive row of each query), float32 unit rows; None when absent.

    ``out``: an (n, d) float32 array (an ``np.memmap``) that receives the clustered corpus (returned)."""
    rng = np.random.default_rng(seed)
    if kind == "clustered":
        from compare_scale import _gen_clustered

        X = _gen_clustered(n, d, seed=seed + 2, out=out)
    else:  # compare_topk's SciFact-tiled rows (MiniLM embeddings tiled with small noise), normalised
        from compare_topk import make_data as tiled

        data = tiled("scifact-tiled", n, 384, 1, rng)
        if data is None:
            return None
        X = data[0]
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    d = X.shape[1]
    pos = rng.choice(n, nq, replace=False)
    Q = X[pos] + 0.05 * rng.standard_normal((nq, d), dtype=np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    return (X if out is not None else np.ascontiguousarray(X)), np.ascontiguousarray(Q, dtype=np.float32), pos


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="clustered", choices=["clustered", "scifact-tiled"])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384, help="clustered only (scifact-tiled: 384)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-faiss", action="store_true", help="leave out sentence-transformers' use_faiss=True")
    ap.add_argument("--ooc", action="store_true",
                    help="out of core (clustered only): the corpus lives in a .npy file that hardneg reads in place")
    args = ap.parse_args()
    if args.ooc and args.data != "clustered":
        ap.error("--ooc generates a clustered corpus into its file: use --data clustered")
    with tempfile.TemporaryDirectory() as tmp:
        return run(args, tmp)


def run(args: argparse.Namespace, tmp: str) -> int:
    """The benchmark, with ``tmp`` holding the peer's embedding cache (and, out of core, the corpus file)."""
    harness.set_threads(args.threads)
    import hardneg as hn
    from hardneg import datasets as hd

    import _st_peer

    t = time.perf_counter()
    corpus_path = None
    out = None
    if args.ooc:
        corpus_path = f"{tmp}/corpus.npy"
        out = np.lib.format.open_memmap(corpus_path, mode="w+", dtype=np.float32, shape=(args.docs, args.dim))
    data = make_data(args.data, args.docs, args.queries, args.dim, out=out)
    if data is None:
        print("compare_mining_scale: skipped: SciFact embeddings not found")
        return 0
    C, Q, pos = data
    n, d = C.shape
    if out is not None:
        out.flush()
    ds = hd.from_dict({f"d{i}": f"document {i}" for i in range(n)}, {f"q{i}": f"query {i}" for i in range(len(Q))},
                      {f"q{i}": {f"d{p}": 1} for i, p in enumerate(pos)})
    gen_s = time.perf_counter() - t
    kw = dict(num_negatives=8, range_min=10, range_max=100, relative_margin=0.05)
    try:
        import faiss  # noqa: F401
        use_faiss = not args.no_faiss
    except ImportError:
        use_faiss = False
    harness.set_threads(args.threads)

    # its query chunk (faiss_batch_size, default 16,384) bounds its similarity matrix to chunk x N
    # floats: 16,384 x 1,000,000 would be 65 GB, so it gets the chunk a user would pick, 4 GiB at most
    st_kw = dict(kw, faiss_batch_size=max(1, min(16384, 2**30 // n)))
    st_call, st_convert = _st_peer.prepare(ds.query_ids, ds.corpus_ids, ds.positives(), C, Q, tmp, **st_kw)
    st_faiss = (_st_peer.prepare(ds.query_ids, ds.corpus_ids, ds.positives(), C, Q, tmp, use_faiss=True, **st_kw)[0]
                if use_faiss else None)
    hn_corpus = C
    if corpus_path is not None:  # no copy or mapping of the corpus left in this process
        del C, data, out
        hn_corpus = corpus_path
    sides = {"hardneg": lambda: hn.mine_hard_negatives(ds, corpus_embeddings=hn_corpus, query_embeddings=Q,
                                                       progress=False, **kw),
             "st": st_call}
    if st_faiss is not None:
        sides["st faiss"] = st_faiss
    res = harness.compare(sides, runs=args.runs, calls=1, warmup=1)
    peaks = {name: peak_extra_bytes(fn) / 2**20 for name, fn in sides.items()}
    got = [[int(x) for x in r if x >= 0] for r in res.outputs["hardneg"].ids]
    equal, same_set = {}, {}
    for name in sides:
        if name != "hardneg":
            ref = st_convert(res.outputs[name])
            equal[name] = sum(g == ref[q] for g, q in zip(got, ds.query_ids))
            same_set[name] = sum(sorted(g) == sorted(ref[q]) for g, q in zip(got, ds.query_ids))

    where = " (out of core: a .npy file hardneg reads in place)" if args.ooc else ""
    print(harness.header(f"Mining at scale: {args.data} corpus {n:,} x {d}{where}, {len(Q):,} queries, one positive "
                         "each; 8 negatives from ranks 10..100, relative_margin 0.05, cosine", args.threads))
    print(harness.fmt_rules(max(3, args.runs), 1, 1, unit="s") + f" Data generated in {gen_s:.0f} s (not timed).\n")
    print("| side | time (s) | speed-up of hardneg | peak extra memory (MiB) | equal output (queries) "
          "| same negatives, any order (queries) |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    label = "hardneg `mine_hard_negatives`" + (" (`corpus_embeddings=` the .npy path)" if args.ooc else "")
    print(f"| {label} | {res.median('hardneg'):.2f} | | {peaks['hardneg']:.0f} | | |")
    names = {"st": f"sentence-transformers exact (`model.similarity` + `torch.topk`, faiss_batch_size="
                   f"{st_kw['faiss_batch_size']:,})",
             "st faiss": f"sentence-transformers `use_faiss=True` (faiss `IndexFlatIP`, exact, faiss_batch_size="
                         f"{st_kw['faiss_batch_size']:,})"}
    for name in sides:
        if name == "hardneg":
            continue
        print(f"| {names[name]} | {res.median(name):.2f} | {res.ratio('hardneg', name)} | {peaks[name]:.0f} "
              f"| {equal[name]:,}/{len(Q):,} | {same_set[name]:,}/{len(Q):,} |")
    from hardneg import _core

    print(f"\nhardneg's int8 screen on AMX tiles: {'yes' if _core.amx_enabled() else 'no'} "
          f"(`hn.info()['screen_amx']`).  Equal output: the same 8 negatives in the same order.  Where only the "
          "order differs, two negatives' float32 scores tie or differ by a rounding (hardneg orders ties by "
          "ascending id, torch.topk leaves them in any order); where the documents differ, a candidate's score "
          "lies within a rounding of a filter's edge (the relative margin or the window's last rank).")
    if args.ooc:
        print("\nOut of core: hardneg streams the file in blocks of 256 MiB (hardneg.ooc), each searched by the exact "
              "kernel (screened through a temporary int8 copy of the block where that pays); its peak extra memory "
              "counts the block's mapped file pages (clean page cache) besides that copy.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``hardneg`` command: ``mine``, ``eval`` and ``info``.

Errors (bad arguments, missing files, bad data) print one line
``hardneg: error: ...`` to stderr and exit with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """An error reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse prints usage + message by default)
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _range(text: str):
    try:
        a, b = text.split(":")
        lo, hi = int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--range must look like MIN:MAX (e.g. 10:100), got {text!r}") from None
    return lo, hi


def _opt_float(text: str) -> Optional[float]:
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from hardneg._version import __version__
    from hardneg.mining import FORMATS, POSITIVE_ANCHORS, SAMPLING

    p = _Parser(prog="hardneg", description="Hard-negative mining for dense retrievers.")
    p.add_argument("--version", action="version", version=f"hardneg {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{mine,eval,info}", parser_class=_Parser)

    m = sub.add_parser("mine", help="mine hard negatives for a BEIR dataset and write a training file",
                       description="Mine hard negatives (sentence-transformers' selection rule). Without --dataset "
                                   "it runs on the small sample dataset shipped with hardneg.")
    m.add_argument("--dataset", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); default: the sample")
    m.add_argument("--split", default="train")
    m.add_argument("--retriever", default="auto", choices=["auto", "dense", "bm25", "hybrid"],
                   help="auto: dense when embeddings are given or found in DATASET/embeddings, else bm25")
    m.add_argument("--corpus-embeddings", help=".npy (N, d), row i = line i of corpus.jsonl (memory-mapped)")
    m.add_argument("--query-embeddings", help=".npy, one row per line of queries.jsonl or per split query")
    m.add_argument("--model", help="sentence-transformers model name/path to embed what is not given")
    m.add_argument("--metric", default="cosine", choices=["cosine", "ip"])
    m.add_argument("--backend", default="exact", choices=["exact", "faiss"],
                   help="dense search: exact (hardneg's kernel) or faiss (approximate, needs faiss-cpu)")
    m.add_argument("--faiss-index", default="HNSW32", metavar="FACTORY",
                   help="faiss factory string for --backend faiss (default HNSW32; e.g. IVF4096,Flat)")
    m.add_argument("--nprobe", type=int, default=None, help="faiss IVF nprobe")
    m.add_argument("--num-negatives", type=int, default=8)
    m.add_argument("--range", type=_range, default=(10, 100), metavar="MIN:MAX",
                   help="keep positions MIN..MAX-1 of the filtered candidates (default 10:100)")
    m.add_argument("--relative-margin", type=_opt_float, default=0.05, metavar="R",
                   help="keep a candidate only if score <= pos - |pos|*R (default 0.05; 'none' turns it off)")
    m.add_argument("--absolute-margin", type=_opt_float, default=None, metavar="M")
    m.add_argument("--max-score", type=_opt_float, default=None)
    m.add_argument("--min-score", type=_opt_float, default=None)
    m.add_argument("--positive-anchor", default="min", choices=list(POSITIVE_ANCHORS))
    m.add_argument("--sampling", default="top", choices=list(SAMPLING))
    m.add_argument("--temperature", type=float, default=0.05)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=None)
    m.add_argument("--batch-size", type=int, default=2048, help="queries per search call")
    m.add_argument("--bm25-method", default=None)
    m.add_argument("--bm25-k1", type=float, default=None)
    m.add_argument("--bm25-b", type=float, default=None)
    m.add_argument("--rrf-k", type=int, default=60)
    m.add_argument("--format", default="sentence-transformers", choices=list(FORMATS))
    m.add_argument("-o", "--output", help="output file (.jsonl, or .jsonl.gz); '-' for stdout; "
                                          "without it nothing is written and a preview is shown")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no report")

    e = sub.add_parser("eval", help="evaluate a run file (or a retriever) against a dataset's qrels")
    e.add_argument("--dataset", help="BEIR folder; default: the sample")
    e.add_argument("--split", default="test")
    e.add_argument("--run", help="TREC run file (qid Q0 docid rank score tag) or 'qid docid score' TSV")
    e.add_argument("--retriever", choices=["dense", "bm25", "hybrid"],
                   help="without --run: retrieve with this (dense needs embeddings)")
    e.add_argument("--corpus-embeddings")
    e.add_argument("--query-embeddings")
    e.add_argument("--metric", default="cosine", choices=["cosine", "ip"])
    e.add_argument("--depth", type=int, default=100, help="results per query when retrieving")
    e.add_argument("--metrics", default="ndcg@10,mrr@10,recall@100")
    e.add_argument("--save-run", help="write the retrieved run as a TREC file")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("-q", "--quiet", action="store_true")

    i = sub.add_parser("info", help="version, SIMD level, threads and optional backends")
    i.add_argument("--json", action="store_true")
    return p


# ---------------------------------------------------------------------------------------------- commands


def _load_dataset(path: Optional[str], split: str):
    from hardneg import datasets as hd

    folder = Path(path) if path else hd.sample_path()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = hd.load_beir(folder, split)
    for w in caught:
        print(f"hardneg: warning: {w.message}", file=sys.stderr)
    return ds, folder


def _st_encoder(name: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise CLIError("--model needs sentence-transformers (pip install sentence-transformers)") from None
    model = SentenceTransformer(name)

    def encode(texts: List[str]):
        return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    return encode


def _resolve_dense(args, folder: Path, need: bool):
    from hardneg import datasets as hd

    ce, qe = args.corpus_embeddings, args.query_embeddings
    if (ce is None) != (qe is None) and getattr(args, "model", None) is None:
        raise CLIError("give both --corpus-embeddings and --query-embeddings (or --model to embed the other)")
    if ce is None and qe is None:
        found = hd.find_embeddings(folder)
        if found is not None and getattr(args, "model", None) is None:
            ce, qe = str(found[0]), str(found[1])
    if need and ce is None and qe is None and getattr(args, "model", None) is None:
        raise CLIError(f"dense retrieval needs --corpus-embeddings/--query-embeddings, embeddings in "
                       f"{folder / 'embeddings'}, or --model")
    return ce, qe


def _dense_index(args, ce, retriever):
    """The dense search index for --backend faiss or a torchrun launch (else None), and this rank.

    Under ``torchrun -m hardneg mine ...`` (WORLD_SIZE > 1) each rank searches its own
    contiguous shard of the memory-mapped corpus embeddings and the results are merged
    over torch.distributed (gloo on CPU); every rank mines the same negatives.
    """
    import os

    import numpy as np

    import hardneg as hn

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if retriever not in ("dense", "hybrid"):
        return None, int(os.environ.get("RANK", "0") or 0)
    C = np.load(ce, mmap_mode="r") if isinstance(ce, (str, os.PathLike)) else ce
    if world > 1:
        if args.backend == "faiss":
            raise CLIError("--backend faiss cannot be combined with a torchrun launch")
        import torch.distributed as dist

        from hardneg.distributed import DistributedIndex

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        rank = dist.get_rank()
        lo, hi = len(C) * rank // world, len(C) * (rank + 1) // world
        return DistributedIndex(C[lo:hi], metric=args.metric, offset=lo), rank
    if args.backend == "faiss":
        try:
            return hn.DenseIndex(C, metric=args.metric, backend="faiss", index=args.faiss_index,
                                 nprobe=args.nprobe), 0
        except ImportError as e:
            raise CLIError(str(e)) from None
    return None, 0


def _bm25_kwargs(args) -> Optional[dict]:
    kw = {}
    if getattr(args, "bm25_method", None):
        kw["method"] = args.bm25_method
    if getattr(args, "bm25_k1", None) is not None:
        kw["k1"] = args.bm25_k1
    if getattr(args, "bm25_b", None) is not None:
        kw["b"] = args.bm25_b
    return kw or None


def cmd_mine(args) -> int:
    import numpy as np

    import hardneg as hn
    from hardneg.mining import mine_hard_negatives

    if args.output and args.output != "-":
        parent = Path(args.output).parent
        if not parent.is_dir():  # fail before the work, not after it
            raise CLIError(f"output folder {parent} does not exist")
    t0 = time.perf_counter()
    ds, folder = _load_dataset(args.dataset, args.split)
    t_load = time.perf_counter() - t0
    retriever = args.retriever
    if retriever == "auto":
        have = (args.corpus_embeddings or args.query_embeddings or args.model
                or __import__("hardneg.datasets", fromlist=["x"]).find_embeddings(folder))
        if have:
            retriever = "dense"
        elif getattr(hn, "BM25", None) is not None:
            retriever = "bm25"
        else:
            raise CLIError(f"no embeddings found in {folder / 'embeddings'} and this build has no BM25: "
                           "pass --corpus-embeddings/--query-embeddings or --model")
    ce = qe = None
    encoder = None
    if retriever in ("dense", "hybrid"):
        ce, qe = _resolve_dense(args, folder, need=True)
        if args.model:
            encoder = _st_encoder(args.model)
    index, rank = _dense_index(args, ce, retriever)
    lo, hi = args.range
    mined = mine_hard_negatives(
        ds, retriever, corpus_embeddings=ce, query_embeddings=qe, encoder=encoder,
        num_negatives=args.num_negatives, range_min=lo, range_max=hi,
        relative_margin=args.relative_margin, absolute_margin=args.absolute_margin,
        max_score=args.max_score, min_score=args.min_score, sampling=args.sampling,
        temperature=args.temperature, seed=args.seed, num_threads=args.threads,
        positive_anchor=args.positive_anchor, metric=args.metric, bm25=_bm25_kwargs(args),
        rrf_k=args.rrf_k, batch_size=args.batch_size, progress=not args.quiet and rank == 0, index=index)
    mined.timings = {"load": t_load, **mined.timings}
    if rank != 0:  # under torchrun every rank mined the same result; rank 0 writes it
        return 0
    where = "the sample dataset" if args.dataset is None else str(folder)
    if args.output == "-":
        import tempfile
        import os

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.jsonl")
            n = mined.save(path, format=args.format)
            with open(path, encoding="utf-8") as f:
                sys.stdout.write(f.read())
        if not args.quiet:
            print(f"wrote {n} {args.format} records to stdout", file=sys.stderr)
    elif args.output:
        t1 = time.perf_counter()
        n = mined.save(args.output, format=args.format)
        mined.timings["write"] = time.perf_counter() - t1
        if not args.quiet:
            print(f"wrote {n} {args.format} records to {args.output}", file=sys.stderr)
    if not args.quiet:
        print(f"# {where}, split {args.split}", file=sys.stderr)
        print(mined.report(), file=sys.stderr)
    if not args.output and not args.quiet:
        print("", file=sys.stderr)
        cid = ds.corpus_ids
        for j in range(min(3, len(ds.query_ids))):
            negs = [cid[x] for x in mined.ids[j] if x >= 0]
            pos = [cid[x] for x in mined.positive_ids[j]]
            print(f"{ds.query_ids[j]}: {ds.query_texts[j][:60]!r} positives {pos} negatives {negs}")
        print("(no -o given: nothing written; e.g. -o negatives.jsonl --format flagembedding)", file=sys.stderr)
    return 0


def _read_run(path: str) -> Dict[str, Dict[str, float]]:
    from hardneg.metrics import read_run

    if not Path(path).is_file():
        raise CLIError(f"run file {path} not found")
    try:
        return read_run(path)
    except ValueError as e:
        raise CLIError(str(e)) from None


def cmd_eval(args) -> int:
    import numpy as np

    import hardneg as hn

    evaluate = getattr(hn, "evaluate", None)
    if evaluate is None:
        raise CLIError("hn.evaluate is not available in this build of hardneg")
    ds, folder = _load_dataset(args.dataset, args.split)
    if args.run and args.retriever:
        raise CLIError("give either --run or --retriever, not both")
    if args.depth <= 0:
        raise CLIError(f"--depth must be positive, got {args.depth}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise CLIError("--metrics is empty")
    if args.run:
        run = _read_run(args.run)
    else:
        retriever = args.retriever or "dense"
        scores, ids = _retrieve(ds, folder, args, retriever)
        cid = ds.corpus_ids
        run = {}
        for j, q in enumerate(ds.query_ids):
            run[q] = {cid[d]: float(s) for d, s in zip(ids[j].tolist(), scores[j].tolist()) if d >= 0}
        if args.save_run:
            with open(args.save_run, "w", encoding="utf-8") as f:
                for q, docs in run.items():
                    for r, (d, s) in enumerate(sorted(docs.items(), key=lambda x: (-x[1], x[0])), 1):
                        f.write(f"{q} Q0 {d} {r} {s:.6f} hardneg-{retriever}\n")
    Qrels = getattr(hn, "Qrels", None)
    qrels = Qrels.from_dict(ds.qrels) if Qrels is not None else ds.qrels
    res = evaluate(qrels, run, metrics=metrics)
    width = max(len(m) for m in metrics)
    for m in metrics:
        v = res[m] if isinstance(res, dict) else getattr(res, m)
        print(f"{m:<{width}}  {float(np.mean(v)):.4f}")
    return 0


def _retrieve(ds, folder, args, retriever):
    from hardneg.retrievers import make_retriever

    ce = qe = None
    if retriever in ("dense", "hybrid"):
        ce, qe = _resolve_dense(args, folder, need=True)
    r = make_retriever(retriever, ds, corpus_embeddings=ce, query_embeddings=qe, metric=args.metric,
                       num_threads=args.threads)
    return r.search(slice(0, ds.num_queries), args.depth, None)


def cmd_info(args) -> int:
    import hardneg as hn

    info = hn.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={'yes' if b else 'no'}" if isinstance(b, bool) else f"{a}={b}" for a, b in v.items())
        elif isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        print(f"{k:<22} {v}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``hardneg`` command; returns the exit status (0 or 2)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        cmd = {"mine": cmd_mine, "eval": cmd_eval, "info": cmd_info}[args.command]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            try:
                return cmd(args)
            finally:
                _close_process_group()
    except CLIError as e:
        print(f"hardneg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hardneg: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, KeyError, IndexError, RuntimeError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, KeyError):
            msg = f"missing key {msg}"
        print(f"hardneg: error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # never a traceback
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"hardneg: error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2


def _close_process_group() -> None:
    """Under torchrun: wait for every rank, then tear the group down (leaving gloo's
    teardown to interpreter exit sometimes aborts the process)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _entry() -> None:  # pragma: no cover
    sys.exit(main())

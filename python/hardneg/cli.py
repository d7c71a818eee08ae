"""The ``hardneg`` command: ``mine``, ``eval`` and ``info``.

Errors print one line ``hardneg: error: ...`` to stderr, never a traceback (``--debug`` adds
it).  Exit status: 0 success, 2 usage errors (bad arguments, files given that do not exist or
do not fit the dataset, nothing to do), 1 runtime failures (bad data, out of memory, a failed
write), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["main", "build_parser"]


EXIT_RUNTIME = 1
EXIT_USAGE = 2


class CLIError(Exception):
    """An error reported as one line; ``code`` is the exit status (2: usage, 1: runtime)."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


@contextmanager
def _usage_errors(prefix: str = ""):
    """ValueError / TypeError raised inside (argument checks) become usage errors (status 2)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CLIError(prefix + msg) from e


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
    from hardneg.mining._config import ST_RULES

    p = _Parser(prog="hardneg", description="Hard-negative mining for dense retrievers.")
    p.add_argument("--version", action="version", version=f"hardneg {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
    m.add_argument("--bm25-stemmer", default=None, metavar="LANG",
                   help="Snowball stemmer of BM25 (default english; 'none' turns stemming off)")
    m.add_argument("--bm25-stopwords", default=None, choices=["en", "en_plus", "none"],
                   help="stopword list of BM25 (default en; 'none' keeps every word)")
    m.add_argument("--rrf-k", type=int, default=60)
    m.add_argument("--st-rule", default="6.3", choices=list(ST_RULES),
                   help="sentence-transformers release whose candidate rule to follow (default 6.3)")
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
    for parser in (m, e, i):  # also accepted after the subcommand
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------- commands


def _load_dataset(path: Optional[str], split: str, need_queries: bool = True):
    """The dataset (warnings printed as ``hardneg: warning:`` lines); a split without queries is a
    usage error."""
    from hardneg import datasets as hd

    folder = Path(path) if path else hd.sample_path()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = hd.load_beir(folder, split)
        except ValueError as e:  # bad data in a file: a runtime failure
            raise CLIError(str(e).splitlines()[0], EXIT_RUNTIME) from e
    for w in caught:
        print(f"hardneg: warning: {w.message}", file=sys.stderr)
    if need_queries and ds.num_queries == 0:
        raise CLIError(f"split {split!r} of {folder} has no query to work on: its qrels are empty or name only "
                       "queries absent from the queries file")
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
    """The corpus and query embeddings (memory-mapped; None: to be encoded with --model)."""
    from hardneg import datasets as hd
    from hardneg.retrievers import load_npy

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
    with _usage_errors():  # a file that is no .npy array: named with its option
        C = None if ce is None else load_npy(ce, "--corpus-embeddings")
        Q = None if qe is None else load_npy(qe, "--query-embeddings")
    return C, Q


def _dense_index(args, C, retriever):
    """The dense search index for --backend faiss or a torchrun launch (else None), and this rank.

    Under ``torchrun -m hardneg mine ...`` (WORLD_SIZE > 1) each rank searches its own
    contiguous shard of the memory-mapped corpus embeddings and the results are merged
    over torch.distributed (gloo on CPU); every rank mines the same negatives.
    """
    import os

    import hardneg as hn

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if retriever not in ("dense", "hybrid") or C is None:
        return None, int(os.environ.get("RANK", "0") or 0)
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
            with _usage_errors("--faiss-index: "):
                return hn.DenseIndex(C, metric=args.metric, backend="faiss", index=args.faiss_index,
                                     nprobe=args.nprobe), 0
        except ImportError as e:
            raise CLIError(str(e)) from None
    return None, 0


def _none_or(text: Optional[str]):
    return None if text is None or text.lower() == "none" else text


def _bm25_kwargs(args) -> Optional[dict]:
    kw = {}
    if getattr(args, "bm25_method", None):
        kw["method"] = args.bm25_method
    if getattr(args, "bm25_k1", None) is not None:
        kw["k1"] = args.bm25_k1
    if getattr(args, "bm25_b", None) is not None:
        kw["b"] = args.bm25_b
    if getattr(args, "bm25_stemmer", None) is not None:
        kw["stemmer"] = _none_or(args.bm25_stemmer)
    if getattr(args, "bm25_stopwords", None) is not None:
        kw["stopwords"] = _none_or(args.bm25_stopwords)
    return kw or None


def _mining_config(args, retriever: str, rank: int):
    """The miner's settings from the options (a bad value is a usage error)."""
    from hardneg.mining import build_config

    lo, hi = args.range
    with _usage_errors():
        return build_config(
            retriever, num_negatives=args.num_negatives, range_min=lo, range_max=hi,
            relative_margin=args.relative_margin, absolute_margin=args.absolute_margin, max_score=args.max_score,
            min_score=args.min_score, sampling=args.sampling, temperature=args.temperature, seed=args.seed,
            num_threads=args.threads, positive_anchor=args.positive_anchor, metric=args.metric, rrf_k=args.rrf_k,
            batch_size=args.batch_size, progress=not args.quiet and rank == 0, st_rule=args.st_rule)


def _pick_retriever(args, folder: Path) -> str:
    import hardneg as hn
    from hardneg import datasets as hd

    if args.retriever != "auto":
        return args.retriever
    if args.corpus_embeddings or args.query_embeddings or args.model or hd.find_embeddings(folder):
        return "dense"
    if getattr(hn, "BM25", None) is not None:
        return "bm25"
    raise CLIError(f"no embeddings found in {folder / 'embeddings'} and this build has no BM25: "
                   "pass --corpus-embeddings/--query-embeddings or --model")


def _build_retriever(args, ds, folder: Path, kind: str, cfg=None, index=None, C=None, Q=None):
    """The retriever through hardneg.retrievers.make_retriever (bad embeddings or BM25 options: usage errors)."""
    from hardneg.retrievers import make_retriever

    encoder = _st_encoder(args.model) if kind in ("dense", "hybrid") and getattr(args, "model", None) else None
    with _usage_errors():
        return make_retriever(kind, ds, corpus_embeddings=C, query_embeddings=Q, encoder=encoder, index=index,
                              bm25=_bm25_kwargs(args), metric=args.metric,
                              rrf_k=getattr(args, "rrf_k", 60), num_threads=args.threads,
                              progress=cfg.progress if cfg is not None else False)


def cmd_mine(args) -> int:
    from hardneg.mining import run_pipeline

    if args.output and args.output != "-":
        parent = Path(args.output).parent
        if not parent.is_dir():  # fail before the work, not after it
            raise CLIError(f"output folder {parent} does not exist")
    t0 = time.perf_counter()
    ds, folder = _load_dataset(args.dataset, args.split)
    t_load = time.perf_counter() - t0
    kind = _pick_retriever(args, folder)
    C = Q = None
    if kind in ("dense", "hybrid"):
        C, Q = _resolve_dense(args, folder, need=True)
    index, rank = _dense_index(args, C, kind)
    cfg = _mining_config(args, kind, rank)
    t0 = time.perf_counter()
    ret = _build_retriever(args, ds, folder, kind, cfg, index, C, Q)
    timings = {"load": t_load, "index": time.perf_counter() - t0}
    mined = run_pipeline(ds, ret, cfg, timings)
    if rank != 0:  # under torchrun every rank mined the same result; rank 0 writes it
        return 0
    _write_mined(args, mined)
    _print_summary(args, ds, folder, mined)
    return 0


def _write_mined(args, mined) -> None:
    """The training file: to stdout for '-', else written beside -o and renamed into place."""
    if args.output == "-":
        import os
        import tempfile

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


def _print_summary(args, ds, folder: Path, mined) -> None:
    if args.quiet:
        return
    where = "the sample dataset" if args.dataset is None else str(folder)
    print(f"# {where}, split {args.split}", file=sys.stderr)
    print(mined.report(), file=sys.stderr)
    if not args.output:
        print("", file=sys.stderr)
        cid = ds.corpus_ids
        for j in range(min(3, len(ds.query_ids))):
            negs = [cid[x] for x in mined.ids[j] if x >= 0]
            pos = [cid[x] for x in mined.positive_ids[j]]
            print(f"{ds.query_ids[j]}: {ds.query_texts[j][:60]!r} positives {pos} negatives {negs}")
        print("(no -o given: nothing written; e.g. -o negatives.jsonl --format flagembedding)", file=sys.stderr)


def _read_run(path: str) -> Dict[str, Dict[str, float]]:
    from hardneg.metrics import read_run

    if not Path(path).is_file():
        raise CLIError(f"run file {path} not found")
    try:
        return read_run(path)
    except ValueError as e:
        raise CLIError(str(e), EXIT_RUNTIME) from None


def cmd_eval(args) -> int:
    import numpy as np

    import hardneg as hn

    evaluate = getattr(hn, "evaluate", None)
    if evaluate is None:
        raise CLIError("hn.evaluate is not available in this build of hardneg")
    if args.run and args.retriever:
        raise CLIError("give either --run or --retriever, not both")
    if args.depth <= 0:
        raise CLIError(f"--depth must be positive, got {args.depth}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise CLIError("--metrics is empty")
    ds, folder = _load_dataset(args.dataset, args.split)
    if args.run:
        run = _read_run(args.run)
    else:
        retriever = args.retriever or "dense"
        run = _retrieve_run(ds, folder, args, retriever)
        if args.save_run:
            _save_run(args.save_run, run, retriever)
    Qrels = getattr(hn, "Qrels", None)
    qrels = Qrels.from_dict(ds.qrels) if Qrels is not None else ds.qrels
    res = evaluate(qrels, run, metrics=metrics)
    width = max(len(m) for m in metrics)
    for m in metrics:
        v = res[m] if isinstance(res, dict) else getattr(res, m)
        print(f"{m:<{width}}  {float(np.mean(v)):.4f}")
    return 0


def _retrieve_run(ds, folder, args, retriever) -> Dict[str, Dict[str, float]]:
    """``{qid: {docid: score}}`` of the retriever's top ``--depth`` for the split's queries."""
    C = Q = None
    if retriever in ("dense", "hybrid"):
        C, Q = _resolve_dense(args, folder, need=True)
    ret = _build_retriever(args, ds, folder, retriever, C=C, Q=Q)
    scores, ids = ret.search(slice(0, ds.num_queries), args.depth, None)
    cid = ds.corpus_ids
    return {q: {cid[d]: float(s) for d, s in zip(ids[j].tolist(), scores[j].tolist()) if d >= 0}
            for j, q in enumerate(ds.query_ids)}


def _save_run(path: str, run: Dict[str, Dict[str, float]], retriever: str) -> None:
    """A TREC run file, written beside ``path`` and renamed into place."""
    from hardneg._io import atomic_text_output

    if not Path(path).parent.is_dir():
        raise CLIError(f"--save-run folder {Path(path).parent} does not exist")
    with atomic_text_output(path) as f:
        for q, docs in run.items():
            for r, (d, s) in enumerate(sorted(docs.items(), key=lambda x: (-x[1], x[0])), 1):
                f.write(f"{q} Q0 {d} {r} {s:.6f} hardneg-{retriever}\n")


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


def _one_line(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, CLIError):
        return msg
    if isinstance(e, KeyError):
        return f"missing key {msg}"
    if isinstance(e, (ValueError, TypeError, OSError, ImportError, IndexError, RuntimeError, MemoryError)):
        return msg or type(e).__name__
    return f"{type(e).__name__}: {msg}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``hardneg`` command; returns the exit status (0, 1, 2 or 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        debug = bool(getattr(args, "debug", False))
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        cmd = {"mine": cmd_mine, "eval": cmd_eval, "info": cmd_info}[args.command]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            try:
                return cmd(args)
            finally:
                _close_process_group()
    except KeyboardInterrupt:
        print("hardneg: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a traceback unless --debug
        if debug:
            traceback.print_exc(file=sys.stderr)
        if isinstance(e, CLIError):
            code = e.code
        elif isinstance(e, FileNotFoundError):  # a path given on the command line names nothing
            code = EXIT_USAGE
        else:
            code = EXIT_RUNTIME
        print(f"hardneg: error: {_one_line(e)}", file=sys.stderr)
        return code


def _close_process_group() -> None:
    """Under torchrun: wait for every rank, then tear the group down (leaving gloo's
    teardown to interpreter exit sometimes aborts the process)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _entry() -> None:  # pragma: no cover
    sys.exit(main())

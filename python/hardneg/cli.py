"""The ``hardneg`` command: ``mine``, ``report``, ``eval`` and ``info``.

Errors print one line ``hardneg: error: ...`` to stderr, never a traceback (``--debug`` adds
it).  Exit status: 0 success, 2 usage errors (bad arguments, files given that do not exist or
do not fit the dataset, nothing to do), 1 runtime failures (bad data, out of memory, a failed
write), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
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

# defaults of --range / --num-negatives; the sample's topics have 5 documents (1-2 answers and
# their distractors), so on it the window starts at rank 0 and asks for 3
_DEFAULT_RANGE, _DEFAULT_NUM = (10, 100), 8
_SAMPLE_RANGE, _SAMPLE_NUM = (0, 100), 3
# the options a manifest records and `--manifest` restores
_RECORDED = ("dataset", "split", "retriever", "corpus_embeddings", "query_embeddings", "model", "metric", "backend",
             "faiss_index", "nprobe", "num_negatives", "range", "relative_margin", "absolute_margin", "max_score",
             "min_score", "positive_anchor", "sampling", "temperature", "seed", "bm25_method", "bm25_k1", "bm25_b",
             "bm25_stemmer", "bm25_stopwords", "rrf_k", "st_rule", "format", "negatives_from",
             "require_positive_in_top", "positive_not_in_top", "query_prompt", "corpus_prompt", "save_embeddings",
             "cross_encoder", "cross_encoder_threshold", "guide", "guide_margin")


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
    from hardneg.mining._config import POSITIVE_NOT_IN_TOP, ST_RULES

    p = _Parser(prog="hardneg", description="Hard-negative mining for dense retrievers.")
    p.add_argument("--version", action="version", version=f"hardneg {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="{mine,report,eval,info}", parser_class=_Parser)

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
    m.add_argument("--num-negatives", type=int, default=None,
                   help=f"negatives per query (default {_DEFAULT_NUM}; {_SAMPLE_NUM} on the sample)")
    m.add_argument("--range", type=_range, default=None, metavar="MIN:MAX",
                   help="keep positions MIN..MAX-1 of the filtered candidates (default 10:100; 0:100 on the "
                        "sample, whose topics have 4 distractors each)")
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
    m.add_argument("--negatives-from", default=None, metavar="SOURCE:N,...",
                   help="negatives from several retrievers with quotas, e.g. bm25:4,dense:4 (the union without "
                        "duplicates; a document found twice counts for the first source)")
    m.add_argument("--require-positive-in-top", type=int, default=None, metavar="K",
                   help="only queries whose best positive is in the retriever's top K")
    m.add_argument("--positive-not-in-top", default="drop", choices=list(POSITIVE_NOT_IN_TOP),
                   help="what to do with the other queries (default drop; flag keeps and marks them)")
    m.add_argument("--cross-encoder", default=None, metavar="NAME",
                   help="denoise with a sentence-transformers CrossEncoder (name or path): candidates it scores "
                        "above --cross-encoder-threshold or above the positive are dropped (RocketQA)")
    m.add_argument("--cross-encoder-threshold", default=None, metavar="T|auto",
                   help="the cross-encoder's threshold; 'auto' calibrates it on the split's qrels")
    m.add_argument("--guide", default=None, metavar="NAME",
                   help="denoise with a guide SentenceTransformer (name or path): candidates it scores above "
                        "the positive minus --guide-margin are dropped (GIST)")
    m.add_argument("--guide-margin", type=float, default=0.0, metavar="M")
    m.add_argument("--query-prompt", default=None, help="prompt given to --model for queries")
    m.add_argument("--corpus-prompt", default=None, help="prompt given to --model for documents")
    m.add_argument("--save-embeddings", default=None, metavar="DIR",
                   help="cache what --model embeds in DIR (.npy keyed by model, prompt and a hash of the "
                        "texts); the next run reads them instead of encoding")
    m.add_argument("--manifest", default=None, metavar="OUT.manifest.json",
                   help="run again what a manifest records (every setting from it; -o names the new output); "
                        "a changed input is an error")
    m.add_argument("--format", default="sentence-transformers", choices=list(FORMATS))
    m.add_argument("-o", "--output", help="output file (.jsonl, or .jsonl.gz); '-' for stdout; "
                                          "without it nothing is written and a preview is shown")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no report")

    r = sub.add_parser("report", help="report on a mined file (text, or a self-contained HTML page)",
                       description="Read OUT and OUT.manifest.json (written by 'hardneg mine -o OUT') and print "
                                   "the report; --html also writes a self-contained HTML page.")
    r.add_argument("output", metavar="OUT", help="a file written by 'hardneg mine -o OUT'")
    r.add_argument("--html", default=None, metavar="PATH", help="write the HTML report there")
    r.add_argument("--suspects", type=int, default=30, help="rows of the false-negative suspects table")
    r.add_argument("-q", "--quiet", action="store_true", help="no text report")

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
    for parser in (m, r, e, i):  # also accepted after the subcommand
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

    def encode(texts: List[str], prompt: Optional[str] = None):
        return model.encode(texts, prompt=prompt, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

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


def _denoise_kwargs(args, ds, progress: bool) -> dict:
    """--cross-encoder / --guide as the miner's rescorer and the filters of its rule (hardneg.rescore)."""
    if args.cross_encoder and args.guide:
        raise CLIError("--cross-encoder and --guide: give one of them")
    if args.cross_encoder_threshold is not None and not args.cross_encoder:
        raise CLIError("--cross-encoder-threshold needs --cross-encoder")
    if not (args.cross_encoder or args.guide):
        return {}
    thr = args.cross_encoder_threshold
    if thr is not None and thr != "auto":
        try:
            thr = float(thr)
        except ValueError:
            raise CLIError(f"--cross-encoder-threshold must be a number or 'auto', got {thr!r}") from None
    try:
        import sentence_transformers
    except ImportError:
        raise CLIError("--cross-encoder / --guide need sentence-transformers (pip install sentence-transformers)") \
            from None
    from hardneg.rescore import CrossEncoderRescorer, GuideRescorer, calibrate_threshold

    name = args.cross_encoder or args.guide
    try:
        model = (sentence_transformers.CrossEncoder(name) if args.cross_encoder
                 else sentence_transformers.SentenceTransformer(name))
    except (OSError, ValueError) as e:
        raise CLIError(f"{'--cross-encoder' if args.cross_encoder else '--guide'} {name}: cannot load it "
                       f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if args.guide:
        with _usage_errors():
            return GuideRescorer(model, margin=args.guide_margin, progress=progress).mining_kwargs()
    if thr == "auto":
        thr = calibrate_threshold(model, ds)
        if progress:
            print(f"cross-encoder threshold (calibrated on the qrels): {thr}", file=sys.stderr)
    with _usage_errors():
        return CrossEncoderRescorer(model, threshold=thr, progress=progress).mining_kwargs()


def _mining_config(args, retriever: str, rank: int, num_negatives: int, **denoise):
    """The miner's settings from the options (a bad value is a usage error); ``denoise`` (a
    rescorer and its filters) replaces the score filters of the options."""
    from hardneg.mining import build_config

    lo, hi = args.range
    filters = dict(relative_margin=args.relative_margin, absolute_margin=args.absolute_margin,
                   max_score=args.max_score, min_score=args.min_score)
    filters.update(denoise)
    with _usage_errors():
        return build_config(
            retriever, num_negatives=num_negatives, range_min=lo, range_max=hi, **filters,
            sampling=args.sampling, temperature=args.temperature, seed=args.seed,
            num_threads=args.threads, positive_anchor=args.positive_anchor, metric=args.metric, rrf_k=args.rrf_k,
            batch_size=args.batch_size, progress=not args.quiet and rank == 0, st_rule=args.st_rule,
            require_positive_in_top=args.require_positive_in_top, positive_not_in_top=args.positive_not_in_top)


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
    mined, ds, folder, rank = _mine(args)
    if rank != 0:  # under torchrun every rank mined the same result; rank 0 writes it
        return 0
    _write_mined(args, mined)
    _print_summary(args, ds, folder, mined)
    return 0


def _mine(args):
    """Mine as the options (or ``--manifest``) say: (mined, dataset, its folder, torchrun rank)."""
    from hardneg.mining import mine_sources, parse_negatives_from, run_pipeline

    manifest = _apply_manifest(args) if args.manifest else None
    _apply_defaults(args)
    if args.output and args.output != "-":
        parent = Path(args.output).parent
        if not parent.is_dir():  # fail before the work, not after it
            raise CLIError(f"output folder {parent} does not exist")
    quotas = None
    if args.negatives_from is not None:
        try:
            quotas = parse_negatives_from(args.negatives_from)
        except (ValueError, TypeError) as e:  # named as the option
            raise CLIError(str(e).splitlines()[0].replace("negatives_from", "--negatives-from")) from None
    t0 = time.perf_counter()
    ds, folder = _load_dataset(args.dataset, args.split)
    if manifest is not None:
        _check_unchanged(args.manifest, manifest, ds)
    t_load = time.perf_counter() - t0
    kinds = [k for k, _ in quotas] if quotas else [_pick_retriever(args, folder)]
    dense = any(k in ("dense", "hybrid") for k in kinds)
    C = Q = None
    if dense:
        C, Q = _resolve_dense(args, folder, need=True)
    index, rank = _dense_index(args, C, "dense" if dense else kinds[0])
    denoise = _denoise_kwargs(args, ds, progress=not args.quiet and rank == 0)
    cfg = _mining_config(args, kinds[0], rank, sum(q for _, q in quotas) if quotas else args.num_negatives,
                         **denoise)
    t0 = time.perf_counter()
    rets = _build_retrievers(args, ds, kinds, cfg, index, C, Q)
    prov = _provenance(args, cfg, rets, quotas)
    if manifest is not None:
        _check_embeddings(args.manifest, manifest, prov)
    timings = {"load": t_load, "index": time.perf_counter() - t0}
    if quotas:
        mined = mine_sources(ds, rets, cfg, quotas, timings, time.perf_counter())
    else:
        mined = run_pipeline(ds, rets[kinds[0]], cfg, timings)
    mined.provenance = prov
    return mined, ds, folder, rank


def _apply_defaults(args) -> None:
    """--range / --num-negatives not given: the defaults (the sample's own without --dataset)."""
    sample = args.dataset is None
    if args.range is None:
        args.range = _SAMPLE_RANGE if sample else _DEFAULT_RANGE
    if args.num_negatives is None:
        args.num_negatives = _SAMPLE_NUM if sample else _DEFAULT_NUM


def _build_retrievers(args, ds, kinds: List[str], cfg, index, C, Q) -> dict:
    """One retriever per kind (usage errors for bad embeddings or BM25 options)."""
    from hardneg.mining import make_source_retrievers

    dense = any(k in ("dense", "hybrid") for k in kinds)
    encoder = _st_encoder(args.model) if dense and args.model else None
    prompts = {k: v for k, v in (("query", args.query_prompt), ("corpus", args.corpus_prompt)) if v is not None}
    if args.save_embeddings is not None and not Path(args.save_embeddings).is_dir():
        raise CLIError(f"--save-embeddings folder {args.save_embeddings} does not exist")
    with _usage_errors():
        return make_source_retrievers(
            kinds, ds, corpus_embeddings=C, query_embeddings=Q, encoder=encoder, index=index,
            bm25=_bm25_kwargs(args), metric=args.metric, rrf_k=args.rrf_k, num_threads=args.threads,
            progress=cfg.progress, prompts=prompts or None,
            save_embeddings=args.save_embeddings if encoder is not None else None, encoder_name=args.model)


def _provenance(args, cfg, rets: dict, quotas) -> dict:
    """The manifest's record of this run: the miner's and the command's settings."""
    from hardneg.mining import run_provenance

    prompts = {k: v for k, v in (("query", args.query_prompt), ("corpus", args.corpus_prompt)) if v is not None}
    prov = run_provenance(cfg, rets, quotas, args.corpus_embeddings, args.query_embeddings, args.model, prompts,
                          _bm25_kwargs(args))
    emb = prov.get("embeddings")
    if emb is not None and args.corpus_embeddings is None and args.model is None:  # found in DATASET/embeddings
        from hardneg import datasets as hd

        found = hd.find_embeddings(Path(args.dataset) if args.dataset else hd.sample_path())
        if found is not None:
            emb.paths = [str(found[0]), str(found[1])]
    cli = {k: getattr(args, k) for k in _RECORDED}
    cli["range"] = list(args.range)
    cli["retriever"] = cfg.retriever if not quotas else args.retriever
    prov["cli"] = cli
    return prov


def _apply_manifest(args) -> dict:
    """Read ``--manifest`` and take every recorded setting from it (a missing, foreign or
    other-version manifest is a usage error)."""
    from hardneg._version import __version__
    from hardneg.manifest import read_manifest

    try:
        m = read_manifest(args.manifest)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None
    except ValueError as e:
        raise CLIError(str(e).splitlines()[0]) from None
    if m.get("hardneg_version") != __version__:
        raise CLIError(f"{args.manifest} was written by hardneg {m.get('hardneg_version')}, this is hardneg "
                       f"{__version__}: rebuild it with that version")
    cli = m.get("cli") or _cli_from_knobs(args.manifest, m)
    for k in _RECORDED:
        if k in cli:
            setattr(args, k, cli[k])
    args.range = tuple(args.range) if args.range is not None else None
    if args.dataset is None and (m.get("dataset") or {}).get("path") and m.get("cli") is None:
        args.dataset = m["dataset"]["path"]
    return m


def _cli_from_knobs(path: str, m: dict) -> dict:
    """The command's settings from a manifest written by ``MinedNegatives.save`` in Python."""
    k = m["knobs"]
    if k.get("rescorer") or not k.get("exclude_self", True) or not k.get("exclude_same_text", True):
        raise CLIError(f"{path} records settings the command has no option for (a rescorer or exclusions off): "
                       "run it again from Python")
    emb = m.get("embeddings") or {}
    paths = [(emb.get(x) or {}).get("path") for x in ("corpus", "queries")]
    if emb and m.get("model") is None and None in paths:
        raise CLIError(f"{path} records embeddings given in memory (no file): run it again from Python")
    nf = k.get("negatives_from")
    bm = m.get("bm25") or {}
    return dict(dataset=(m.get("dataset") or {}).get("path"), split=(m.get("dataset") or {}).get("split"),
                retriever=k.get("retriever") or "auto", corpus_embeddings=paths[0], query_embeddings=paths[1],
                model=m.get("model"), format=(m.get("output") or {}).get("format", "sentence-transformers"),
                range=[k["range_min"], k["range_max"]],
                negatives_from=",".join(f"{a}:{b}" for a, b in nf.items()) if nf else None,
                query_prompt=(m.get("prompts") or {}).get("query"),
                corpus_prompt=(m.get("prompts") or {}).get("corpus"),
                bm25_method=bm.get("method"), bm25_k1=bm.get("k1"), bm25_b=bm.get("b"),
                **{x: k.get(x) for x in ("num_negatives", "relative_margin", "absolute_margin", "max_score",
                                          "min_score", "positive_anchor", "sampling", "temperature", "seed",
                                          "metric", "rrf_k", "st_rule", "require_positive_in_top",
                                          "positive_not_in_top") if x in k})


def _check_unchanged(path: str, manifest: dict, ds) -> None:
    from hardneg.manifest import changed_input

    what = changed_input(manifest, ds)
    if what is not None:
        raise CLIError(f"{what} changed since {path} was written: the run would not be the same")


def _check_embeddings(path: str, manifest: dict, prov: dict) -> None:
    from hardneg.manifest import changed_embeddings

    what = changed_embeddings(manifest, prov.get("embeddings"))
    if what is not None:
        raise CLIError(f"{what} changed since {path} was written: the run would not be the same")


def _write_mined(args, mined) -> None:
    """The training file: to stdout for '-', else written beside -o and renamed into place."""
    if args.output == "-":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.jsonl")
            n = mined.save(path, format=args.format, manifest=False)
            with open(path, encoding="utf-8") as f:
                sys.stdout.write(f.read())
        if not args.quiet:
            print(f"wrote {n} {args.format} records to stdout", file=sys.stderr)
    elif args.output:
        t1 = time.perf_counter()
        n = mined.save(args.output, format=args.format, manifest=False)
        mined.timings["write"] = time.perf_counter() - t1
        from hardneg.manifest import write_manifest

        mpath = write_manifest(mined, args.output, args.format, n)
        if not args.quiet:
            print(f"wrote {n} {args.format} records to {args.output} (how to rebuild it: {mpath})", file=sys.stderr)


def _print_summary(args, ds, folder: Path, mined) -> None:
    if args.quiet:
        return
    where = "the sample dataset" if args.dataset is None else str(folder)
    print(f"# {where}, split {args.split}, ranks {args.range[0]}:{args.range[1]}", file=sys.stderr)
    print(mined.report(), file=sys.stderr)
    _print_examples(ds, mined, sys.stderr)
    if not args.output:
        print("", file=sys.stderr)
        cid = ds.corpus_ids
        for j in range(min(3, len(ds.query_ids))):
            negs = [cid[x] for x in mined.ids[j] if x >= 0]
            pos = [cid[x] for x in mined.positive_ids[j]]
            print(f"{ds.query_ids[j]}: {ds.query_texts[j][:60]!r} positives {pos} negatives {negs}")
        print("(no -o given: nothing written; e.g. -o negatives.jsonl --format flagembedding)", file=sys.stderr)


def _print_examples(ds, mined, out, count: int = 3) -> None:
    """A few queries with their positive's and negatives' titles (or opening words), to read."""
    def name(row: int) -> str:
        t = ds.corpus_titles[row] or ds.corpus_bodies[row]
        return t if len(t) <= 50 else t[:47] + "..."

    shown = [j for j in range(len(ds.query_ids)) if (mined.ids[j] >= 0).any()][:count]
    if not shown:
        return
    print("\nexamples:", file=out)
    for j in shown:
        print(f"  {ds.query_texts[j][:70]!r}", file=out)
        print(f"    positive:  {' | '.join(name(int(r)) for r in mined.positive_ids[j][:2])}", file=out)
        print(f"    negatives: {' | '.join(name(int(r)) for r in mined.ids[j] if r >= 0)}", file=out)


def cmd_report(args) -> int:
    """The report of a mined file: its manifest names the dataset; an "ids" file is read back,
    any other format is mined again from the manifest (same inputs: same negatives)."""
    from hardneg._validate import check_int
    from hardneg.manifest import manifest_path, read_manifest

    out = Path(args.output)
    if not out.is_file():
        raise CLIError(f"mined file {out} not found")
    mpath = manifest_path(out)
    try:
        m = read_manifest(mpath)
    except FileNotFoundError:
        raise CLIError(f"{out} has no manifest ({mpath.name}): mine it with 'hardneg mine -o {out}'") from None
    except ValueError as e:
        raise CLIError(str(e).splitlines()[0]) from None
    if args.html is not None and not Path(args.html).parent.is_dir():
        raise CLIError(f"--html folder {Path(args.html).parent} does not exist")
    with _usage_errors():
        suspects = check_int(args.suspects, "--suspects", 1)
    mined = _mined_of(out, mpath, m)
    if args.html:
        from hardneg.report_html import write_html_report

        write_html_report(mined, args.html, suspects)
    text = mined.report()
    if not args.quiet:
        print(text)
        if args.html:
            print(f"wrote the HTML report to {args.html}", file=sys.stderr)
    return 0


def _mined_of(out: Path, mpath: Path, m: dict):
    """The negatives of ``out``: read back ("ids") or mined again from its manifest."""
    from hardneg import datasets as hd
    from hardneg.mining import load_negatives

    d = m.get("dataset") or {}
    if (m.get("output") or {}).get("format") == "ids":
        ds, _ = _load_dataset(d.get("path") or str(hd.sample_path()), d.get("split") or "train")
        _check_unchanged(str(mpath), m, ds)
        try:
            mined = load_negatives(out, ds)
        except ValueError as e:
            raise CLIError(str(e).splitlines()[0], EXIT_RUNTIME) from None
        mined.params = dict(m.get("knobs") or {}, retriever=m.get("retriever"),
                            negatives_from=m.get("negatives_from"))
        mined.stats = {k: v for k, v in (m.get("counts") or {}).items()
                       if k in ("candidates", "filtered", "duplicates", "positive_not_in_top")}
        mined.timings = {k: float(v) for k, v in (m.get("timings") or {}).items()}
        return mined
    args = build_parser().parse_args(["mine", "-q", "--manifest", str(mpath)])
    return _mine(args)[0]


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
        cmd = {"mine": cmd_mine, "report": cmd_report, "eval": cmd_eval, "info": cmd_info}[args.command]
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

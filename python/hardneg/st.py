"""Drop-in for ``sentence_transformers.util.mine_hard_negatives`` (sentence-transformers 6.3).

Change one import and keep the call::

    from hardneg.st import mine_hard_negatives   # was: from sentence_transformers.util import ...

    dataset = mine_hard_negatives(dataset, model, num_negatives=5, relative_margin=0.05,
                                  output_format="n-tuple", cache_folder="emb_cache")

Same signature and defaults, same returned ``datasets.Dataset`` (columns, types, row order, values;
scores to float32 rounding), same embedding calls and the same ``cache_folder`` files (caches are
shared both ways), same verbose lines.  The search and the selection are hardneg's: an exact top-k
kernel and the miner of :func:`hardneg.mine_hard_negatives` with ``st_rule="6.3"``.  Differences are
listed in :func:`mine_hard_negatives` and ``docs/mining.md`` ("Drop-in for sentence-transformers").
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from typing import TYPE_CHECKING, Any, List, Literal, Optional, Tuple

import numpy as np

from hardneg._st_formats import Pairs, build_columns, log_counters, print_report
from hardneg._st_select import Problem, select_exact, select_with_miner
from hardneg._validate import check_choice, check_float, check_int, check_optional_int

if TYPE_CHECKING:
    from datasets import Dataset

    from sentence_transformers.cross_encoder.model import CrossEncoder
    from sentence_transformers.sentence_transformer.model import SentenceTransformer

__all__ = ["mine_hard_negatives"]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")


def mine_hard_negatives(
    dataset: Dataset, model: SentenceTransformer, anchor_column_name: str | None = None,
    positive_column_name: str | None = None, corpus: list[str] | None = None, cross_encoder: CrossEncoder | None = None,
    range_min: int = 0, range_max: int | None = None, max_score: float | None = None, min_score: float | None = None,
    absolute_margin: float | None = None, relative_margin: float | None = None, num_negatives: int = 3,
    sampling_strategy: Literal["random", "top"] = "top", query_prompt_name: str | None = None,
    query_prompt: str | None = None, corpus_prompt_name: str | None = None, corpus_prompt: str | None = None,
    include_positives: bool = False,
    output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"] = "triplet",
    output_scores: bool = False, batch_size: int = 32, faiss_batch_size: int = 16384, use_faiss: bool = False,
    use_multi_process: list[str] | bool = False, verbose: bool = True, cache_folder: str | None = None,
    as_triplets: bool | None = None, margin: float | None = None,
) -> Dataset:
    """Add hard negatives to (anchor, positive) pairs exactly as sentence-transformers 6.3 does.

    Every parameter means what it means in ``sentence_transformers.util.mine_hard_negatives`` (see
    its docstring); only what differs or matters here is listed.

    Parameters
    ----------
    dataset : datasets.Dataset
        (anchor, positive) rows; a repeated anchor is one query with several positives.
    model : SentenceTransformer
        ``encode_document`` / ``encode_query`` embed what ``cache_folder`` does not hold.  Its
        ``similarity_fn_name`` must be "cosine" or "dot" ("euclidean" / "manhattan" models are handed
        to sentence-transformers' function); without one, ``model.similarity`` is probed.
    cross_encoder : CrossEncoder, optional
        ``.predict(pairs, batch_size=, convert_to_tensor=True, pool=)`` rescores candidates and positives.
    sampling_strategy : {"top", "random"}
        "random" makes sentence-transformers' ``random.sample`` calls: a seeded ``random``, its draws.
    faiss_batch_size : int
        Positive; the miner's query batch (at most 2048).
    use_faiss : bool
        Accepted, faiss not needed: the search is exact, the result that of ``use_faiss=False``.
    cache_folder : str, optional
        ``query_embeddings_<sha256>.npy`` / ``corpus_embeddings_<sha256>.npy``, sentence-transformers'
        names and hashes: either library reads what the other wrote.

    Returns
    -------
    datasets.Dataset
        "triplet": (anchor, positive, negative[, scores]); "n-tuple": (anchor, positive,
        negative_1 .. negative_n[, scores]); "labeled-pair": (anchor, document, label | score);
        "labeled-list": (anchor, [documents], labels | scores).  Scores are the model's (or the
        cross-encoder's) float32 similarities, stored as float64.
    """
    args = dict(locals())
    try:
        from datasets import Dataset
    except ImportError as exc:
        raise ImportError("Please install `datasets` to use this function: `pip install datasets`.") from exc
    if len(dataset) == 0:
        raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
    if check_int(faiss_batch_size, "faiss_batch_size") <= 0:
        raise ValueError(f"faiss_batch_size must be a positive integer, got {faiss_batch_size}.")
    sim_name = _similarity_name(model)
    if sim_name is not None and sim_name not in ("cosine", "dot"):
        from sentence_transformers.util import mine_hard_negatives as st_mine_hard_negatives

        return st_mine_hard_negatives(**args)

    anchor_column_name, positive_column_name = _column_names(dataset, anchor_column_name, positive_column_name)
    output_format, output_scores, absolute_margin = _resolve_format(
        output_format, output_scores, as_triplets, include_positives, margin, absolute_margin,
        dict(range_min=range_min, range_max=range_max, max_score=max_score, min_score=min_score,
             relative_margin=relative_margin, sampling_strategy=sampling_strategy))
    check_choice(sampling_strategy, "sampling_strategy", ("random", "top"))
    relative_margin, max_score, min_score = (check_float(v, n) for v, n in (
        (relative_margin, "relative_margin"), (max_score, "max_score"), (min_score, "min_score")))
    batch_size = check_int(batch_size, "batch_size", 1)

    queries_all = _to_list(dataset[anchor_column_name])
    positives_all = _to_list(dataset[positive_column_name])
    positives_per_query = list(Counter(queries_all).values())
    max_positives = max(positives_per_query)
    range_min, range_max = _window(num_negatives, range_min, range_max, max_positives, absolute_margin,
                                   relative_margin, max_score, min_score, cross_encoder, verbose)
    num_negatives = int(num_negatives)

    corpus_list, corpus_idx, queries = _corpus_and_queries(queries_all, positives_all, corpus, positives_per_query,
                                                           verbose)

    query_emb, corpus_emb = _embeddings(
        model, queries, corpus_list, cache_folder=cache_folder, query_prompt=query_prompt,
        query_prompt_name=query_prompt_name, corpus_prompt=corpus_prompt, corpus_prompt_name=corpus_prompt_name,
        batch_size=batch_size, use_multi_process=use_multi_process, verbose=verbose)
    metric = _metric(model, sim_name, query_emb, corpus_emb)
    pairs, positive_indices, own_rows = _pairs(queries_all, positives_all, queries, corpus_list, corpus_idx,
                                               include_positives)

    problem = Problem(query_emb, corpus_emb, metric, positive_indices, own_rows, range_max + max_positives + 1,
                      range_min, range_max, num_negatives, sampling_strategy, absolute_margin, relative_margin,
                      max_score, min_score, bool(include_positives), None, min(faiss_batch_size, 2048), bool(verbose))
    # the miner searches range_max + (most distinct positives) + 1 deep: sentence-transformers' depth
    # unless an (anchor, positive) row repeats, which it counts twice
    use_miner = (sampling_strategy == "top" and not include_positives
                 and int(pairs.n_positives.max()) == max_positives)
    sel = _select(problem, use_miner, cross_encoder, use_multi_process, queries, corpus_list, batch_size)

    if verbose:
        print("Negative candidates mined, preparing dataset...")
    cols = build_columns(output_format, output_scores, anchor_column_name, positive_column_name, pairs,
                         sel.ids, sel.scores, sel.positive_scores, num_negatives, len(dataset))
    output_dataset = Dataset.from_dict(cols.data)
    if verbose:
        params = dict(absolute_margin=absolute_margin, relative_margin=relative_margin, max_score=max_score,
                      min_score=min_score)
        print_report(cols, len(output_dataset), log_counters(sel.skipped, sel.num_candidates), params, range_min)
    return output_dataset


def _column_names(dataset: Any, anchor: str | None, positive: str | None) -> tuple[str, str]:
    """The anchor and positive columns: the ones named when the dataset has them, else its first two."""
    columns = dataset.column_names
    if not anchor or anchor not in columns:
        anchor = columns[0]
    if not positive or positive not in columns:
        if len(columns) < 2:
            raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
        positive = columns[1]
    return anchor, positive


def _corpus_and_queries(queries_all: list, positives_all: list, corpus: Any, positives_per_query: list,
                        verbose: bool) -> tuple[list, dict, list]:
    """The corpus (the given documents and every positive, deduplicated by text), each text's row,
    and the distinct queries; sentence-transformers' counts printed when ``verbose``."""
    corpus_list = list(dict.fromkeys((positives_all if corpus is None else _to_list(corpus)) + positives_all))
    corpus_idx = {text: i for i, text in enumerate(corpus_list)}
    queries = list(dict.fromkeys(queries_all))
    if len(queries) != len(queries_all) and verbose:
        print(f"Found {len(queries)} unique queries out of {len(queries_all)} total queries.")
    if max(positives_per_query) > 1 and verbose:
        print(f"Found an average of {np.mean(positives_per_query):.3f} positives per query.")
    return corpus_list, corpus_idx, queries


def _select(problem: Problem, use_miner: bool, cross_encoder: Any, use_multi_process: Any, queries: list,
            corpus: list, batch_size: int):
    """The selection (miner or exact path), with the cross-encoder's pool open around it."""
    pool = None
    if cross_encoder is not None and use_multi_process:
        pool = cross_encoder.start_multi_process_pool(
            target_devices=None if isinstance(use_multi_process, bool) else use_multi_process)
    try:
        if cross_encoder is not None:
            problem.rescore = _rescorer(cross_encoder, queries, corpus, batch_size, pool)
        return select_with_miner(problem) if use_miner else select_exact(problem)
    finally:
        if pool is not None:
            cross_encoder.stop_multi_process_pool(pool)


# ---------------------------------------------------------------------------------------------- arguments


def _resolve_format(output_format: Any, output_scores: Any, as_triplets: Any, include_positives: Any,
                    margin: Any, absolute_margin: Any, others: dict) -> Tuple[str, bool, Optional[float]]:
    """The deprecated arguments and include_positives, as sentence-transformers resolves them (same warnings)."""
    if as_triplets is not None:
        output_format = "triplet" if as_triplets else "n-tuple"
        logger.warning(
            "The `as_triplets` parameter is deprecated. Use the `output_format` parameter instead. "
            f"Setting `output_format` to `{output_format}`.")
    if include_positives:
        if (others["range_min"] != 0 or others["range_max"] is not None
                or any(others[k] is not None for k in ("max_score", "min_score", "relative_margin"))
                or absolute_margin is not None or margin is not None or others["sampling_strategy"] != "top"):
            logger.warning(
                "When using `include_positives=True`, updating `range_min`, `range_max`, `max_score`, `min_score`, "
                "`absolute_margin`, `relative_margin`, or `sampling_strategy` from the default values may still "
                "discard the positive values.")
        if output_format != "n-tuple":
            logger.warning('When using `include_positives=True`, `output_format` will be set to `"n-tuple"` to '
                           "ensure that the ranking order is preserved.")
            output_format = "n-tuple"
    if output_format == "n-tuple-scores":
        logger.warning('`output_format="n-tuple-scores"` is deprecated. Use `output_format="n-tuple"` with '
                       "`output_scores=True` instead for equivalent output formats.")
        output_format, output_scores = "n-tuple", True
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"Invalid output_format: {output_format}. Must be one of 'triplet', 'n-tuple', "
                         "'labeled-pair', or 'labeled-list'.")
    if margin is not None:
        absolute_margin = margin
        logger.warning(
            "The `margin` parameter is deprecated. Use the `absolute_margin` and/or `relative_margin` parameter "
            f"instead. Setting `absolute_margin` to `{absolute_margin}`.")
    return output_format, bool(output_scores), check_float(absolute_margin, "absolute_margin")


def _window(num_negatives: Any, range_min: Any, range_max: Any, max_positives: int, absolute_margin, relative_margin,
            max_score, min_score, cross_encoder, verbose) -> Tuple[int, int]:
    """(range_min, range_max), range_max derived when None; sentence-transformers' checks and messages."""
    num_negatives = check_int(num_negatives, "num_negatives")
    range_min = check_int(range_min, "range_min")
    range_max = check_optional_int(range_max, "range_max")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got num_negatives={num_negatives}.")
    if range_max is None:
        if (absolute_margin is not None or relative_margin is not None or max_score is not None
                or (cross_encoder is not None and min_score is not None)):
            range_max = range_min + (num_negatives * 10) + max_positives  # some may be skipped
        else:
            range_max = range_min + num_negatives + max_positives
        if verbose:
            print(f"Setting range_max to {range_max} based on the provided parameters.")
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got range_min={range_min}.")
    if range_min >= range_max:
        raise ValueError(f"range_min must be smaller than range_max, got range_min={range_min} and "
                         f"range_max={range_max}.")
    if num_negatives > range_max - range_min:
        raise ValueError(
            f"Cannot mine {num_negatives} negatives per query: only {range_max - range_min} candidates remain after "
            f"skipping the first range_min={range_min} of range_max={range_max}. Consider decreasing num_negatives "
            f"or range_min, or increasing range_max.")
    return range_min, range_max


def _to_list(values: Any) -> list:
    """A dataset column (or any iterable) as a list, materialised in one batch."""
    if isinstance(values, np.ndarray):
        return values.tolist()
    if isinstance(values, list):
        return list(values)
    try:
        from datasets import Column
    except ImportError:  # pragma: no cover - older datasets
        return list(values)
    return list(values[:] if isinstance(values, Column) else values)


def _pairs(queries_all: list, positives_all: list, queries: list, corpus: list, corpus_idx: dict,
           include_positives: Any) -> Tuple[Pairs, List[List[int]], List[int]]:
    """Each query's distinct positives in first-seen order, and the corpus row of each query's own text
    (-1: not in the corpus, or with include_positives one of its positives)."""
    queries_idx = {q: j for j, q in enumerate(queries)}
    own_rows = [corpus_idx.get(q, -1) for q in queries]
    positive_indices: List[List[int]] = [[] for _ in queries]
    seen = set()
    for q, p in zip(queries_all, positives_all):
        j, r = queries_idx[q], corpus_idx[p]
        if (j, r) not in seen:
            seen.add((j, r))
            positive_indices[j].append(r)
        if include_positives and q == p:
            own_rows[j] = -1
    n_pos = np.fromiter((len(r) for r in positive_indices), dtype=np.int64, count=len(queries))
    rows = np.fromiter((r for row in positive_indices for r in row), dtype=np.int64, count=int(n_pos.sum()))
    pairs = Pairs(queries, corpus, rows, np.repeat(np.arange(len(queries), dtype=np.int64), n_pos), n_pos)
    return pairs, positive_indices, own_rows


# ---------------------------------------------------------------------------------------------- embeddings


def _cache_files(model: Any, cache_folder: str, queries: list, corpus: list, query_prompt, query_prompt_name,
                 corpus_prompt, corpus_prompt_name) -> Tuple[str, str]:
    """sentence-transformers' cache file names: sha256 of repr((model name, prompt, prompt name, texts))."""
    model_name = model.model_card_data.base_model or ""
    qh = hashlib.sha256(repr((model_name, query_prompt, query_prompt_name, queries)).encode(),
                        usedforsecurity=False).hexdigest()
    ch = hashlib.sha256(repr((model_name, corpus_prompt, corpus_prompt_name, corpus)).encode(),
                        usedforsecurity=False).hexdigest()
    return (os.path.join(cache_folder, f"query_embeddings_{qh}.npy"),
            os.path.join(cache_folder, f"corpus_embeddings_{ch}.npy"))


def _embeddings(model: Any, queries: list, corpus: list, *, cache_folder, query_prompt, query_prompt_name,
                corpus_prompt, corpus_prompt_name, batch_size: int, use_multi_process,
                verbose) -> Tuple[np.ndarray, np.ndarray]:
    """(query float32 (Q, d), corpus float32 (N, d)): from the cache, else encoded as sentence-transformers does."""
    query_emb = corpus_emb = None
    if cache_folder:
        os.makedirs(cache_folder, exist_ok=True)
        qfile, cfile = _cache_files(model, cache_folder, queries, corpus, query_prompt, query_prompt_name,
                                    corpus_prompt, corpus_prompt_name)
        if os.path.exists(qfile):
            query_emb = np.load(qfile)
            if verbose:
                print(f"[Cache] Loaded query embeddings from {qfile} (shape={query_emb.shape})")
        if os.path.exists(cfile):
            corpus_emb = np.load(cfile)
            if verbose:
                print(f"[Cache] Loaded corpus embeddings from {cfile} (shape={corpus_emb.shape})")
    if corpus_emb is None or query_emb is None:
        pool = None
        if use_multi_process:
            pool = model.start_multi_process_pool(
                target_devices=None if isinstance(use_multi_process, bool) else use_multi_process)
        try:
            if corpus_emb is None:
                corpus_emb = model.encode_document(
                    corpus, pool=pool, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=True, prompt_name=corpus_prompt_name, prompt=corpus_prompt)
            if query_emb is None:
                query_emb = model.encode_query(
                    queries, pool=pool, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=True, prompt_name=query_prompt_name, prompt=query_prompt)
        finally:
            if use_multi_process:
                model.stop_multi_process_pool(pool)
    if cache_folder:
        for path, emb, what in ((qfile, query_emb, "query"), (cfile, corpus_emb, "corpus")):
            if not os.path.exists(path):
                np.save(path, emb)
                if verbose:
                    print(f"[Cache] Saved {what} embeddings to {path}")
    q = _rows(query_emb, "query embeddings", len(queries))
    c = _rows(corpus_emb, "corpus embeddings", len(corpus))
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"query embeddings have dimension {q.shape[1]} but corpus embeddings {c.shape[1]}")
    return q, c


def _rows(x: Any, name: str, n: int) -> np.ndarray:
    """float32 C-contiguous (n, d) from a numpy array or tensor; ValueError naming ``name`` otherwise."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, dim), got {a.shape}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must hold floats, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _similarity_name(model: Any) -> Optional[str]:
    name = getattr(model, "similarity_fn_name", None)
    name = getattr(name, "value", name)
    return name if isinstance(name, str) else None


def _metric(model: Any, name: Optional[str], query_emb: np.ndarray, corpus_emb: np.ndarray) -> str:
    """hardneg's metric for the model's similarity: its ``similarity_fn_name``, else a probe of
    ``model.similarity`` on a few rows."""
    if name is not None:
        return "cosine" if name == "cosine" else "ip"
    q, c = query_emb[:8].astype(np.float64), corpus_emb[:32].astype(np.float64)
    s = model.similarity(query_emb[:8], corpus_emb[:32])
    s = np.asarray(s.detach().cpu().numpy() if hasattr(s, "detach") else s, dtype=np.float64)
    dot = q @ c.T
    den = np.maximum(np.linalg.norm(q, axis=1), 1e-12)[:, None] * np.maximum(np.linalg.norm(c, axis=1), 1e-12)[None]
    for metric, ref in (("cosine", dot / den), ("ip", dot)):
        if s.shape == ref.shape and np.allclose(s, ref, rtol=1e-4, atol=1e-5):
            return metric
    raise ValueError("model.similarity is neither cosine similarity nor the dot product; use "
                     "sentence_transformers.util.mine_hard_negatives for this model")


def _rescorer(cross_encoder: Any, queries: list, corpus: list, batch_size: int, pool: Any):
    """rescore(query rows, corpus rows) -> float32 scores, with sentence-transformers' predict call."""
    def rescore(qrows: np.ndarray, drows: np.ndarray) -> np.ndarray:
        if qrows.size == 0:
            return np.zeros(0, np.float32)
        pairs = list(zip([queries[i] for i in qrows.tolist()], [corpus[i] for i in drows.tolist()]))
        out = cross_encoder.predict(pairs, batch_size=batch_size, convert_to_tensor=True, pool=pool)
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        out = np.asarray(out, dtype=np.float32).reshape(-1)
        if out.size != len(pairs):
            raise ValueError(f"cross_encoder.predict returned {out.size} scores for {len(pairs)} pairs")
        return out

    return rescore

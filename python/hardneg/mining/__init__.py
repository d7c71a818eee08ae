"""Hard-negative mining: from a retrieval dataset to training files with hard negatives.

The selection rule is sentence-transformers' ``util.mine_hard_negatives`` (6.3, the
current release; ``st_rule="6.2"`` for the previous one), so users who switch get the
same negatives (``sampling="top"``).  For each query:

1. take the top ``range_max + P + 1`` of its ranking, P being the largest number of
   positives of any query;
2. drop the query's positives and the document whose text is the query's (they are
   excluded inside the search kernel, and the slots they would have taken in that
   ranking are accounted for);
3. drop the candidates that fail a score filter, measured against the query's
   lowest-scoring positive (``positive_anchor="min"``):
   ``relative_margin``: kept only if ``score <= pos - |pos| * relative_margin``;
   ``absolute_margin``: kept only if ``score + absolute_margin <= pos``;
   ``max_score``: kept only if ``score <= max_score``; ``min_score``: only if ``score >= min_score``;
4. order what is left by score and keep positions ``range_min .. range_max - 1``;
5. sample ``num_negatives`` of them: the first ones (``"top"``), uniformly
   (``"random"``) or in proportion to ``exp(score / temperature)`` (``"softmax"``).

See ``docs/mining.md`` for a worked example.  The package, one stage per module:
``_config`` (settings checked into a frozen :class:`MiningConfig`), :mod:`hardneg.retrievers`
(the search), ``_exclusions`` (positives, exclusions, slots), ``_select`` (anchor, filters,
window, sampling), ``_pipeline`` (the batches) and ``_result`` (:class:`MinedNegatives`, files).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

from hardneg.datasets import RetrievalDataset
from hardneg.mining._config import (FORMATS, METRICS, POSITIVE_ANCHORS, SAMPLING, ST_RULES, MiningConfig,
                                    build_config)
from hardneg.mining._exclusions import _exclusions, _slots_taken
from hardneg.mining._pipeline import run_pipeline
from hardneg.mining._result import MinedNegatives, load_negatives
from hardneg.mining._sources import Quotas, mine_sources, parse_negatives_from
from hardneg.retrievers import RETRIEVERS, HybridRetriever, make_retriever
from hardneg.retrievers import fuse_rrf as _fuse_rrf

__all__ = ["mine_hard_negatives", "MinedNegatives", "load_negatives", "MiningConfig", "build_config",
           "run_pipeline", "mine_sources", "parse_negatives_from", "make_source_retrievers", "RETRIEVERS",
           "SAMPLING", "FORMATS", "POSITIVE_ANCHORS"]


def mine_hard_negatives(
    ds: RetrievalDataset, retriever: str = "dense", *, corpus_embeddings: Any = None, query_embeddings: Any = None,
    encoder: Optional[Callable[[List[str]], Any]] = None, num_negatives: int = 8, range_min: int = 10,
    range_max: int = 100, relative_margin: Optional[float] = 0.05, absolute_margin: Optional[float] = None,
    max_score: Optional[float] = None, min_score: Optional[float] = None, sampling: str = "top",
    temperature: float = 0.05, rescorer: Optional[Callable[[List[str], List[str]], Any]] = None, seed: int = 0,
    num_threads: Optional[int] = None, positive_anchor: str = "min", metric: str = "cosine", bm25: Any = None,
    rrf_k: int = 60, exclude_self: bool = True, exclude_same_text: bool = True, index: Any = None,
    batch_size: int = 2048, encode_batch_size: int = 256, progress: bool = True, st_rule: str = "6.3",
    sampling_strategy: Optional[str] = None, cross_encoder: Any = None, negatives_from: Any = None,
    require_positive_in_top: Optional[int] = None, positive_not_in_top: str = "drop",
    prompts: Optional[Dict[str, str]] = None, save_embeddings: Any = None, encoder_name: Optional[str] = None,
) -> MinedNegatives:
    """Mine hard negatives for every query of ``ds`` (the rule and the stages: ``docs/mining.md``).

    Parameters
    ----------
    ds : RetrievalDataset
        From :func:`hardneg.datasets.load_beir` / :func:`hardneg.datasets.from_dict`.
    retriever : {"dense", "bm25", "hybrid"} or a retriever
        "hybrid": reciprocal rank fusion (``rrf_k``) of the dense and BM25 rankings (its scores and
        filters are the RRF scores).  A retriever from :func:`hardneg.retrievers.make_retriever`
        for ``ds`` is used as it is (then leave the embeddings, ``encoder``, ``index``, ``bm25`` out).
    corpus_embeddings : array (N, d) or path to a ``.npy`` file, optional
        Row i embeds ``ds.corpus_ids[i]``; a ``.npy`` path or ``np.memmap`` is read in place.
    query_embeddings : array (Q, d) or (all queries, d) or ``.npy`` path, optional
        One row per ``ds.query_ids``, or one per line of ``queries.jsonl`` (``ds.all_query_ids``).
    encoder : callable(list[str]) -> array (n, d), optional
        Embeds what was not given (corpus texts ``title + " " + text``, query texts).
    num_negatives : int
        Negatives per query (> 0).
    range_min, range_max : int
        Keep positions ``range_min .. range_max - 1`` of the filtered candidates.
    relative_margin, absolute_margin, max_score, min_score : float or None
        Positive-aware and absolute score filters (None: off).
    sampling : {"top", "random", "softmax"}
        "top": the first ``num_negatives`` of the window (as sentence-transformers); "random":
        uniform without replacement; "softmax": without replacement, weights ``exp(score /
        temperature)``.  Sampled negatives are returned by descending score.
    temperature : float
        For "softmax" (> 0), in score units.
    rescorer : callable(queries: list[str], docs: list[str]) -> scores, optional
        Rescores every candidate pair and the positives (e.g. a cross-encoder); ordering,
        ranges and filters then use its scores.
    seed : int
        Sampling seed; results depend only on it, never on ``num_threads`` or ``batch_size``.
    num_threads : int, optional
        Threads for the search kernels.  ``batch_size``: queries per kernel call (bounds memory).
    positive_anchor : {"min", "max", "mean"}
        The positive score the margins are measured against ("min", sentence-transformers'
        choice: a candidate must score below every positive).
    metric : {"cosine", "ip"}
        Dense similarity ("cosine", as sentence-transformers, equals "ip" on normalised vectors).
    bm25 : hn.BM25 instance or dict, optional
        A BM25 index already built over ``ds.corpus_texts``, or keyword arguments for ``hn.BM25``.
    exclude_self, exclude_same_text : bool
        Also exclude the document whose id equals the query id, and documents whose text equals
        the query's text or one of its positives' texts.
    index : optional
        A prebuilt dense index (faiss, ``from_npy``, sharded: anything with ``.search(queries, k,
        exclude=)``, ``.metric``, ``len()``); its metric wins, ``corpus_embeddings`` scores the positives.
    progress : bool
        Show a progress bar (tqdm) with rate and ETA.
    st_rule : {"6.3", "6.2"}
        Which release of sentence-transformers' candidate rule to follow ("6.3": depth
        ``range_max + P + 1``, the query-text document takes a slot; "6.2": depth ``range_max + P``).
    sampling_strategy, cross_encoder : optional
        sentence-transformers' names for ``sampling`` and ``rescorer`` (a ``CrossEncoder``, or
        anything with ``.predict(list of (query, document))``); give one name of each pair.
    negatives_from : dict {source: count} or str, optional
        Several retrievers with quotas, e.g. ``{"bm25": 4, "dense": 4}`` or ``"bm25:4,dense:4"``
        (replaces ``retriever`` and ``num_negatives``); the union in the order given, a document
        found twice counting for the first source (``result.sources``).
    require_positive_in_top : int, optional
        Keep only queries whose best positive is in the retriever's top K; the others are dropped
        (``positive_not_in_top="drop"``) or flagged (``"flag"``: ``result.positive_in_top``).
    prompts : dict, optional
        ``{"query": ..., "corpus": ...}`` given to ``encoder`` (``prompt=``, or prefixed to each text).
    save_embeddings, encoder_name : folder, str, optional
        Cache what ``encoder`` embeds in that folder, keyed by the encoder's name or path (also
        recorded in the manifest), the prompt and a hash of the texts.

    Returns
    -------
    MinedNegatives
    """
    t_all = time.perf_counter()
    if not isinstance(ds, RetrievalDataset):
        raise TypeError(f"ds must be a RetrievalDataset (hn.datasets.load_beir / from_dict), got {type(ds).__name__}")
    prebuilt = None if isinstance(retriever, str) else retriever
    if prebuilt is not None:
        retriever = _check_prebuilt(prebuilt, ds, corpus_embeddings, query_embeddings, encoder, index, bm25)
    quotas = _quotas(negatives_from, prebuilt)
    if quotas:
        retriever, num_negatives = quotas[0][0], sum(q for _, q in quotas)
    cfg = build_config(
        retriever, num_negatives=num_negatives, range_min=range_min, range_max=range_max,
        relative_margin=relative_margin, absolute_margin=absolute_margin, max_score=max_score, min_score=min_score,
        sampling=sampling, temperature=temperature, rescorer=rescorer, seed=seed, num_threads=num_threads,
        positive_anchor=positive_anchor, metric=metric, rrf_k=rrf_k, exclude_self=exclude_self,
        exclude_same_text=exclude_same_text, batch_size=batch_size, encode_batch_size=encode_batch_size,
        progress=progress, st_rule=st_rule, sampling_strategy=sampling_strategy, cross_encoder=cross_encoder,
        require_positive_in_top=require_positive_in_top, positive_not_in_top=positive_not_in_top)
    if ds.num_docs == 0:
        raise ValueError("the dataset's corpus is empty")
    t0 = time.perf_counter()
    kinds = [k for k, _ in quotas] if quotas else [cfg.retriever]
    rets = {cfg.retriever: prebuilt} if prebuilt is not None else make_source_retrievers(
        kinds, ds, corpus_embeddings=corpus_embeddings, query_embeddings=query_embeddings, encoder=encoder,
        index=index, bm25=bm25, metric=cfg.metric, rrf_k=cfg.rrf_k, num_threads=cfg.num_threads,
        encode_batch_size=cfg.encode_batch_size, progress=cfg.progress, prompts=prompts,
        save_embeddings=save_embeddings, encoder_name=encoder_name)
    timings = {"index": time.perf_counter() - t0}
    if quotas:
        mined = mine_sources(ds, rets, cfg, quotas, timings, t_all)
    else:
        mined = run_pipeline(ds, rets[cfg.retriever], cfg, timings, t_all)
    mined.provenance = run_provenance(cfg, rets, quotas, corpus_embeddings, query_embeddings, encoder_name,
                                      prompts, bm25)
    return mined


def _quotas(negatives_from: Any, prebuilt: Any) -> Optional[Quotas]:
    """``negatives_from`` parsed into ``[(source, count), ...]`` (None when not given)."""
    if negatives_from is None:
        return None
    if prebuilt is not None:
        raise TypeError("negatives_from builds its own retrievers: pass retriever= as a name")
    return parse_negatives_from(negatives_from)


def make_source_retrievers(kinds: List[str], ds: RetrievalDataset, **kw: Any) -> Dict[str, Any]:
    """One retriever per kind in ``kinds`` (``make_retriever``'s keyword arguments); a dense and a
    BM25 retriever built once serve "dense", "bm25" and "hybrid" alike."""
    base: Dict[str, Any] = {}
    for k in ("dense", "bm25"):
        if k in kinds or "hybrid" in kinds:
            base[k] = make_retriever(k, ds, **kw)
    out = {k: base[k] for k in kinds if k in base}
    if "hybrid" in kinds:
        out["hybrid"] = HybridRetriever(base["dense"], base["bm25"], kw.get("rrf_k", 60))
    return out


def run_provenance(cfg: MiningConfig, rets: Dict[str, Any], quotas: Any, corpus_embeddings: Any = None,
                   query_embeddings: Any = None, model: Optional[str] = None, prompts: Any = None,
                   bm25: Any = None) -> Dict[str, Any]:
    """What the run's manifest records beside the result: settings, model, prompts, embedding hashes."""
    from hardneg.manifest import embeddings_provenance

    knobs = cfg.knobs()
    knobs["retriever"] = cfg.retriever if not quotas else None
    knobs["negatives_from"] = dict(quotas) if quotas else None
    emb = None
    for r in rets.values():
        emb = embeddings_provenance(r, corpus_embeddings, query_embeddings)
        if emb is not None:
            break
    return {"knobs": knobs, "model": model, "prompts": dict(prompts or {}), "embeddings": emb,
            "bm25": bm25 if isinstance(bm25, dict) else None}


def _check_prebuilt(ret: Any, ds: RetrievalDataset, *sources: Any) -> str:
    """The kind of a retriever passed as ``retriever=``; it brings its own embeddings and indexes."""
    kind = getattr(ret, "name", None)
    if kind not in RETRIEVERS or not callable(getattr(ret, "search", None)) \
            or not callable(getattr(ret, "pair_scores", None)):
        raise TypeError(f"retriever must be one of {RETRIEVERS} or a retriever from "
                        f"hardneg.retrievers.make_retriever, got {type(ret).__name__}")
    if any(s is not None for s in sources):
        raise TypeError("a built retriever brings its own embeddings and indexes: leave corpus_embeddings, "
                        "query_embeddings, encoder, index and bm25 out")
    return kind

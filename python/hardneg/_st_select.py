"""Candidate selection for :mod:`hardneg.st`: sentence-transformers 6.3's rule on hardneg's exact search.

Two paths give the same negatives:

* :func:`select_with_miner` hands the work to :func:`hardneg.mine_hard_negatives` (exclusions inside
  the search kernel, a shallow first search, ``st_rule="6.3"``).  Used for ``sampling_strategy="top"``.
* :func:`select_exact` searches ``candidate_count`` deep with :func:`hardneg.topk` and then applies
  sentence-transformers' masking, filters and window to the (Q, candidate_count) matrix in numpy,
  step for step.  Used where the miner's rule cannot say the same thing: ``include_positives=True``
  (positives stay candidates), ``sampling_strategy="random"`` (it makes sentence-transformers'
  ``random.sample`` calls, so a seeded ``random`` gives the same draws) and datasets repeating an
  (anchor, positive) pair (sentence-transformers then counts the pair twice in its search depth).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

_NEG_INF = np.float32(-np.inf)

# rescore(query rows into the unique queries, corpus rows) -> float32 scores, one per pair
Rescore = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Problem:
    """What both selection paths need (rows refer to the deduplicated queries and corpus)."""

    query_emb: np.ndarray            # float32 (Q, d)
    corpus_emb: np.ndarray           # float32 (N, d)
    metric: str                      # "cosine" | "ip"
    positive_indices: List[List[int]]  # per query, its positives' corpus rows (sentence-transformers' order)
    query_corpus_indices: List[int]  # per query, the corpus row holding its text, -1 if none (or not dropped)
    candidate_count: int             # range_max + max_positives + 1
    range_min: int
    range_max: int
    num_negatives: int
    sampling: str
    absolute_margin: Optional[float]
    relative_margin: Optional[float]
    max_score: Optional[float]
    min_score: Optional[float]
    include_positives: bool
    rescore: Optional[Rescore]
    batch_size: int
    progress: bool


@dataclass
class Selection:
    """Negatives per query and the positive scores, in sentence-transformers' layout."""

    ids: np.ndarray              # int64 (Q, num_negatives): corpus rows, -1 where none
    scores: np.ndarray           # float32 (Q, num_negatives): -inf where ids is -1
    positive_scores: np.ndarray  # float32 (P,): one per (query, positive) pair, queries in order
    skipped: Dict[str, int]      # candidates each filter removed (for the verbose lines)
    num_candidates: int          # candidates the counts are out of


def pair_scores(p: Problem, qrows: np.ndarray, drows: np.ndarray) -> np.ndarray:
    """float32 (P,) similarity of query ``qrows[i]`` and document ``drows[i]`` (the model's metric)."""
    q = p.query_emb[qrows].astype(np.float32, copy=False)
    d = p.corpus_emb[drows].astype(np.float32, copy=False)
    if p.metric == "cosine":  # as torch.nn.functional.normalize: x / max(|x|, 1e-12)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), np.float32(1e-12))
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), np.float32(1e-12))
    return np.einsum("ij,ij->i", q, d, dtype=np.float32)


def _flat_positives(p: Problem):
    n_pos = np.fromiter((len(r) for r in p.positive_indices), dtype=np.int64, count=len(p.positive_indices))
    qrows = np.repeat(np.arange(n_pos.size), n_pos)
    drows = np.fromiter((d for r in p.positive_indices for d in r), dtype=np.int64, count=int(n_pos.sum()))
    return n_pos, qrows, drows


def _min_per_query(values: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """float32 (Q,): the lowest positive score of each query (every query has one)."""
    starts = np.concatenate([[0], np.cumsum(n_pos)[:-1]]).astype(np.int64)
    return np.minimum.reduceat(values, starts).astype(np.float32) if values.size else values


# ---------------------------------------------------------------------------------------------- miner path


def select_with_miner(p: Problem) -> Selection:
    """The negatives through :func:`hardneg.mine_hard_negatives` (``sampling="top"``, positives excluded).

    Stand-in texts (``"d<row>"``) make ``exclude_same_text`` drop exactly the document whose text is the
    query's, which with ``st_rule="6.3"`` still takes its candidate slot, as in sentence-transformers.
    """
    from hardneg.datasets import from_dict
    from hardneg.mining import mine_hard_negatives

    nq, n_docs = p.query_emb.shape[0], p.corpus_emb.shape[0]
    qtext = [f"d{r}" if r >= 0 else f"q{j}" for j, r in enumerate(p.query_corpus_indices)]
    ds = from_dict({str(i): f"d{i}" for i in range(n_docs)},
                   {f"q{j}": t for j, t in enumerate(qtext)},
                   {f"q{j}": {str(d): 1 for d in rows} for j, rows in enumerate(p.positive_indices)})
    if ds.num_queries != nq:  # pragma: no cover - every query has a positive
        raise RuntimeError("internal error: a query without positives reached the miner")
    rescorer = None
    if p.rescore is not None:
        row_of_text = {t: j for j, t in enumerate(qtext)}

        def rescorer(qtexts: List[str], dtexts: List[str]) -> np.ndarray:
            qrows = np.fromiter((row_of_text[t] for t in qtexts), dtype=np.int64, count=len(qtexts))
            drows = np.fromiter((int(t[1:]) for t in dtexts), dtype=np.int64, count=len(dtexts))
            return p.rescore(qrows, drows)

    mined = mine_hard_negatives(
        ds, "dense", corpus_embeddings=p.corpus_emb, query_embeddings=p.query_emb,
        num_negatives=p.num_negatives, range_min=p.range_min, range_max=p.range_max,
        relative_margin=p.relative_margin, absolute_margin=p.absolute_margin,
        max_score=p.max_score, min_score=p.min_score, sampling="top", rescorer=rescorer,
        metric=p.metric, exclude_self=False, exclude_same_text=True, batch_size=p.batch_size,
        progress=p.progress, st_rule="6.3")
    depth = mined.params.get("depth")
    if depth is not None and depth != p.candidate_count:  # pragma: no cover - guarded by the caller
        raise RuntimeError(f"internal error: miner depth {depth} != {p.candidate_count}")
    return Selection(np.asarray(mined.ids, np.int64), np.asarray(mined.scores, np.float32),
                     _miner_positive_scores(p, mined), dict(mined.stats.get("filtered", {})),
                     nq * p.candidate_count)


def _miner_positive_scores(p: Problem, mined) -> np.ndarray:
    """float32 (P,): the scores the miner measured its filters against, in sentence-transformers' order
    of each query's positives (computed again only if the result does not carry them)."""
    ids, scores = getattr(mined, "positive_ids", None), getattr(mined, "all_positive_scores", None)
    if ids is None or scores is None:  # pragma: no cover - older / newer MinedNegatives
        _, pq, pd = _flat_positives(p)
        return np.asarray(p.rescore(pq, pd) if p.rescore is not None else pair_scores(p, pq, pd), np.float32)
    pos = []
    for j, rows in enumerate(p.positive_indices):
        by_row = dict(zip(np.asarray(ids[j]).tolist(), np.asarray(scores[j]).tolist()))
        pos.extend(by_row[d] for d in rows)
    return np.asarray(pos, np.float32)


# ---------------------------------------------------------------------------------------------- exact path


def _mask_excluded(p: Problem, scores: np.ndarray, ids: np.ndarray) -> None:
    """-inf for padding, the query's own text and (unless include_positives) its positives, in place."""
    scores[ids < 0] = _NEG_INF
    own = np.asarray(p.query_corpus_indices, dtype=np.int64)[:, None]
    scores[(ids == own) & (own >= 0)] = _NEG_INF
    if not p.include_positives:
        n_pos, pq, pd = _flat_positives(p)
        stride = np.int64(p.corpus_emb.shape[0] + 1)
        pos_keys = np.sort(pq * stride + pd)
        cand_keys = np.arange(ids.shape[0], dtype=np.int64)[:, None] * stride + ids
        scores[np.isin(cand_keys, pos_keys) & (ids >= 0)] = _NEG_INF


def _filter(p: Problem, scores: np.ndarray, anchor: np.ndarray) -> Dict[str, int]:
    """sentence-transformers' four score filters, in its order and float32 arithmetic, in place."""
    skipped: Dict[str, int] = {}
    a = anchor[:, None]
    finite = scores != _NEG_INF
    if p.absolute_margin is not None:
        drop = finite & (scores + np.float32(p.absolute_margin) > a)
        skipped["absolute_margin"] = int(drop.sum())
        scores[drop] = _NEG_INF
        finite &= ~drop
    if p.relative_margin is not None:
        drop = finite & (scores > a - np.abs(a) * np.float32(p.relative_margin))
        skipped["relative_margin"] = int(drop.sum())
        scores[drop] = _NEG_INF
        finite &= ~drop
    if p.max_score is not None:
        drop = finite & (scores > np.float32(p.max_score))
        skipped["max_score"] = int(drop.sum())
        scores[drop] = _NEG_INF
        finite &= ~drop
    if p.min_score is not None:
        drop = finite & (scores < np.float32(p.min_score))
        skipped["min_score"] = int(drop.sum())
        scores[drop] = _NEG_INF
    return {k: v for k, v in skipped.items() if v}


def _sample_random(p: Problem, ids: np.ndarray, scores: np.ndarray):
    """sentence-transformers' random sampling: the same ``random.sample`` calls, then by score."""
    n = p.num_negatives
    options = np.maximum(ids.shape[1] - np.isinf(scores).sum(1), n).tolist()
    picked = np.array([random.sample(range(o), k=n) for o in options], dtype=np.int64).reshape(-1, n)
    ids, scores = np.take_along_axis(ids, picked, 1), np.take_along_axis(scores, picked, 1)
    order = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def select_exact(p: Problem) -> Selection:
    """The negatives by sentence-transformers' own steps over an exact top-``candidate_count`` search."""
    from hardneg.topk import topk

    nq = p.query_emb.shape[0]
    scores, ids = topk(p.query_emb, p.corpus_emb, k=p.candidate_count, metric=p.metric)
    scores = np.array(scores, dtype=np.float32)  # a writable copy
    ids = np.asarray(ids, dtype=np.int64)
    n_pos, pq, pd = _flat_positives(p)
    if p.rescore is not None:  # every candidate and every positive, as sentence-transformers does
        q, c = np.nonzero(ids >= 0)
        scores[q, c] = p.rescore(q, ids[q, c])
        positive_scores = np.asarray(p.rescore(pq, pd), dtype=np.float32)
    else:
        positive_scores = pair_scores(p, pq, pd)
    _mask_excluded(p, scores, ids)
    skipped = {}
    if any(v is not None for v in (p.absolute_margin, p.relative_margin, p.max_score, p.min_score)):
        skipped = _filter(p, scores, _min_per_query(positive_scores, n_pos))
    # the range_max best survivors (by score, then by search rank), then positions range_min..
    cols = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.lexsort((cols, -scores.astype(np.float64)), axis=1)[:, :p.range_max]
    ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    ids, scores = ids[:, p.range_min:], scores[:, p.range_min:]
    if p.sampling == "top":
        ids, scores = ids[:, :p.num_negatives], scores[:, :p.num_negatives]
    else:
        ids, scores = _sample_random(p, ids, scores)
    ids = np.where(scores == _NEG_INF, -1, ids)
    return Selection(np.ascontiguousarray(ids), np.ascontiguousarray(scores), positive_scores, skipped,
                     nq * p.candidate_count)

"""Selection stages of a batch: the positive anchor, the score filters, the window and the sampling."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from hardneg.mining._config import MiningConfig
from hardneg.mining._exclusions import indptr_of

FILTERS = ("absolute_margin", "relative_margin", "max_score", "min_score")
_REDUCE = {"min": np.nanmin, "max": np.nanmax, "mean": np.nanmean}


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _uniform(seed: int, query_index: np.ndarray, doc_ids: np.ndarray) -> np.ndarray:
    """Uniform (0, 1) numbers that depend only on (seed, query index, document id).

    A counter-based generator: the draw for a (query, document) pair does not
    depend on batching, threads or which other candidates exist, so sampling is
    reproducible for a seed whatever ``num_threads`` and ``batch_size`` are.
    """
    with np.errstate(over="ignore"):
        s = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        q = query_index.astype(np.uint64)[:, None]
        d = doc_ids.astype(np.int64).view(np.uint64)
        h = _mix64(_mix64(np.full(d.shape, s, dtype=np.uint64) ^ np.uint64(0x9E3779B97F4A7C15)) + q * np.uint64(0xD1B54A32D192ED03))
        h = _mix64(h ^ (d * np.uint64(0x8CB92BA72F3D8DD7)))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def sort_rows(scores: np.ndarray, ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-row order: valid entries first, by descending score, then ascending id."""
    s = np.where(valid, scores.astype(np.float64), -np.inf)
    i = np.where(valid, ids, np.iinfo(np.int64).max)
    rows = np.broadcast_to(np.arange(scores.shape[0])[:, None], scores.shape)
    order = np.lexsort((i.ravel(), -s.ravel(), (~valid).ravel(), rows.ravel()))
    return (order % scores.shape[1]).reshape(scores.shape) if scores.shape[1] else order.reshape(scores.shape)


def take(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, order, axis=1)


def anchors(ps: np.ndarray, pq: np.ndarray, pos_counts: np.ndarray, positive_anchor: str) -> np.ndarray:
    """float64 (B,): each query's anchor (min / max / mean) of its positive scores ``ps`` (query
    ``pq``, sorted by query; ``pos_counts`` per query); NaN for a query without positives."""
    B = pos_counts.size
    out = np.full(B, np.nan, np.float64)
    if ps.size:
        pmat = np.full((B, max(1, int(pos_counts.max()))), np.nan, np.float64)
        slot = np.arange(ps.size) - np.repeat(indptr_of(pos_counts)[:-1], pos_counts)
        pmat[pq, slot] = ps
        has = pos_counts > 0
        out[has] = _REDUCE[positive_anchor](pmat[has], axis=1)
    return out


def apply_filters(cfg: MiningConfig, cs: np.ndarray, valid: np.ndarray,
                  anchor: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """The candidates that pass the score filters (bool, like ``cs``) and, per active filter, how
    many candidates it removed in each row (int (B,))."""
    keep = valid.copy()
    drops = {}
    # float32 arithmetic, as sentence-transformers does it, so the boundaries agree bit for bit
    s32 = cs.astype(np.float32, copy=False)
    a = anchor.astype(np.float32)[:, None]
    with np.errstate(invalid="ignore"):
        if cfg.absolute_margin is not None:
            drop = keep & (s32 + np.float32(cfg.absolute_margin) > a)
            drops["absolute_margin"] = drop.sum(1)
            keep &= ~drop
        if cfg.relative_margin is not None:
            drop = keep & (s32 > a - np.abs(a) * np.float32(cfg.relative_margin))
            drops["relative_margin"] = drop.sum(1)
            keep &= ~drop
    if cfg.max_score is not None:
        drop = keep & (s32 > np.float32(cfg.max_score))
        drops["max_score"] = drop.sum(1)
        keep &= ~drop
    if cfg.min_score is not None:
        drop = keep & (s32 < np.float32(cfg.min_score))
        drops["min_score"] = drop.sum(1)
        keep &= ~drop
    return keep, drops


def select_top(cfg: MiningConfig, cs: np.ndarray, ci: np.ndarray, keep: np.ndarray, glob_rows: np.ndarray,
               ids_out: np.ndarray, scores_out: np.ndarray) -> None:
    """``sampling="top"``: survivor ranks ``range_min .. range_min + num_negatives - 1`` (rows sorted by
    score) go to ``ids_out`` / ``scores_out`` rows ``glob_rows``."""
    rank = np.cumsum(keep, axis=1) - 1
    hi = min(cfg.range_max, cfg.range_min + cfg.num_negatives)
    r, c = np.nonzero(keep & (rank >= cfg.range_min) & (rank < hi))
    slot = rank[r, c] - cfg.range_min
    ids_out[glob_rows[r], slot] = ci[r, c]
    scores_out[glob_rows[r], slot] = cs[r, c]


def select_sampled(cfg: MiningConfig, cs: np.ndarray, ci: np.ndarray, keep: np.ndarray, glob_rows: np.ndarray,
                   ids_out: np.ndarray, scores_out: np.ndarray) -> None:
    """``sampling="random"`` / ``"softmax"``: the window ``range_min .. range_max - 1`` of the survivors,
    then ``num_negatives`` drawn without replacement (counter-based draws: see :func:`_uniform`),
    written best first."""
    order = np.argsort(~keep, axis=1, kind="stable")  # survivors first, in score order
    ws, wi, wk = take(cs, order), take(ci, order), take(keep, order)
    ws, wi, wk = ws[:, cfg.range_min:cfg.range_max], wi[:, cfg.range_min:cfg.range_max], wk[:, cfg.range_min:cfg.range_max]
    u = _uniform(cfg.seed, glob_rows, np.where(wk, wi, 0))
    if cfg.sampling == "random":
        key = np.where(wk, -u, -np.inf)  # the smallest u win
    else:  # Gumbel-top-k: sampling without replacement in proportion to exp(score / T)
        key = np.where(wk, ws.astype(np.float64) / cfg.temperature - np.log(-np.log(u)), -np.inf)
    # per row: by key, ties by ascending id (one lexsort along the rows: 4x faster than one
    # over the flattened batch with the row as a third key)
    o = np.lexsort((wi, -key), axis=1)[:, :cfg.num_negatives]
    ss, si, sk = take(ws, o), take(wi, o), take(wk, o)
    o2 = sort_rows(ss, si, sk)
    ss, si, sk = take(ss, o2), take(si, o2), take(sk, o2)
    w = ss.shape[1]
    ids_out[glob_rows, :w] = np.where(sk, si, -1)
    scores_out[glob_rows, :w] = np.where(sk, ss, -np.inf)

"""Rank fusion: :func:`fuse` (RRF, CombSUM, CombMNZ) on run dicts and top-k arrays."""
from __future__ import annotations

import math
from operator import itemgetter
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from hardneg import _core
from hardneg._arrays import id_rows, is_torch, to_caller
from hardneg._threads import resolve_num_threads
from hardneg._validate import check_bytes

METHODS = ("rrf", "combsum", "combmnz")
NORMS = ("minmax", "zscore", "none")


def _normalise(scores: List[float], norm: str) -> List[float]:
    n = len(scores)
    if n == 0 or norm == "none":
        return list(scores)
    if norm == "minmax":
        lo, hi = min(scores), max(scores)
        if hi > lo:
            return [(s - lo) / (hi - lo) for s in scores]
        return [1.0] * n
    mean = sum(scores) / n
    var = sum((s - mean) * (s - mean) for s in scores) / n
    if var > 0:
        sd = math.sqrt(var)
        return [(s - mean) / sd for s in scores]
    return [0.0] * n


def _check_dict_scores(runs, method) -> None:
    """NaN scores (anywhere) and, for CombSUM / CombMNZ, infinite ones have no rank or sum:
    ValueError naming the run, query and document."""
    for i, r in enumerate(runs):
        for q, inner in r.items():
            if not isinstance(inner, Mapping):
                raise TypeError(f"runs[{i}][{q!r}] must be a dict {{doc_id: score}}, got {type(inner).__name__}")
            for d, v in inner.items():
                try:
                    f = float(v)
                except (TypeError, ValueError):
                    raise TypeError(f"runs[{i}] score of query {q!r}, document {d!r} must be a number, "
                                    f"got {v!r}") from None
                if math.isnan(f) or (method != "rrf" and math.isinf(f)):
                    raise ValueError(f"runs[{i}] holds score {f} for query {q!r}, document {d!r}: scores must be "
                                     f"{'non-NaN' if method == 'rrf' else 'finite'}")


def _fuse_dicts(runs, method, k, norm, weights, depth):
    _check_dict_scores(runs, method)
    out: Dict[str, Dict[str, float]] = {}
    qids: Dict[str, None] = {}
    for r in runs:
        for q in r:
            qids.setdefault(q, None)
    for q in qids:
        acc: Dict[str, float] = {}
        cnt: Dict[str, int] = {}
        for r, w in zip(runs, weights):
            inner = r.get(q)
            if not inner:
                continue
            # trec_eval order: score descending, ties by docid descending
            items = sorted(inner.items(), key=itemgetter(0), reverse=True)
            items.sort(key=itemgetter(1), reverse=True)
            if method == "rrf":
                vals = [w / (k + i + 1) for i in range(len(items))]
            else:
                vals = [w * v for v in _normalise([float(s) for _, s in items], norm)]
            for (d, _), v in zip(items, vals):
                acc[d] = acc.get(d, 0.0) + v
                cnt[d] = cnt.get(d, 0) + 1
        if method == "combmnz":
            acc = {d: v * cnt[d] for d, v in acc.items()}
        ranked = sorted(acc.items(), key=itemgetter(0))  # ties: ascending docid
        ranked.sort(key=itemgetter(1), reverse=True)
        if depth is not None:
            ranked = ranked[:depth]
        out[q] = dict(ranked)
    return out


def fuse(
    runs: Sequence[Any],
    method: str = "rrf",
    k: float = 60,
    norm: str = "minmax",
    weights: Optional[Sequence[float]] = None,
    depth: Optional[int] = None,
    num_threads: Optional[int] = None,
):
    """Fuse several rankings of the same queries into one.

    Parameters
    ----------
    runs : list of runs, all of one form
        * dicts ``{qid: {docid: score}}``: each query's documents are ranked by score
          descending, ties by docid descending (trec_eval's order, on float64 scores);
          the result is a dict ``{qid: {docid: fused}}`` over the union of queries,
          inserted best first (ties by ascending docid).
        * arrays: ``(scores (Q, k_r), ids (Q, k_r))`` tuples as returned by
          :func:`hardneg.topk` (or bare ``ids`` arrays for RRF), all with the same Q
          and ids into the same corpus.  Column order is the ranking; -1 padding and
          repeated ids are skipped.  Returns ``(scores float32 (Q, depth), ids int64
          (Q, depth))`` best first, ties by ascending id, padded with -inf / -1.
    method : {"rrf", "combsum", "combmnz"}
        RRF: ``sum_r w_r / (k + rank_r(d))`` (rank 1-based).  CombSUM: sum of the
        normalised scores.  CombMNZ: CombSUM times the number of runs that retrieved d.
        A document absent from a run contributes nothing for that run.
    k : float
        The RRF constant (> 0); ignored by the other methods.
    norm : {"minmax", "zscore", "none"}
        Per-query, per-run normalisation for CombSUM/CombMNZ: min-max to [0, 1]
        (constant scores -> 1), z-score with the population standard deviation
        (constant scores -> 0), or raw scores.  Ignored by RRF.
    weights : list of float, optional
        One weight per run (default all 1).
    depth : int, optional
        Documents kept per query (default: all for dicts, the sum of the run widths
        for arrays).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)) or not k > 0 or not math.isfinite(k):
        raise ValueError(f"k must be a positive number, got {k!r}")
    runs = list(runs)
    if not runs:
        raise ValueError("runs must hold at least one run")
    if weights is None:
        weights = [1.0] * len(runs)
    weights = [float(w) for w in weights]
    if len(weights) != len(runs):
        raise ValueError(f"weights has {len(weights)} entries for {len(runs)} runs")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError("weights must be finite")
    if depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth <= 0:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        depth = int(depth)

    if all(isinstance(r, Mapping) for r in runs):
        return _fuse_dicts(runs, method, float(k), norm, weights, depth)
    if any(isinstance(r, Mapping) for r in runs):
        raise TypeError("runs must be all dicts or all arrays")

    like = None
    ids_l, sc_l = [], []
    for i, r in enumerate(runs):
        if isinstance(r, tuple):
            if len(r) != 2:
                raise ValueError(f"runs[{i}] must be a (scores, ids) tuple")
            s, ids = r
        else:
            s, ids = None, r
        like = ids if like is None else like
        ids = id_rows(ids, f"runs[{i}] ids")
        if s is not None:
            if is_torch(s):
                s = s.detach().float().cpu().numpy()
            s = np.require(s, dtype=np.float32, requirements=["C", "A"])
            if s.shape != ids.shape:
                raise ValueError(f"runs[{i}] scores {s.shape} and ids {ids.shape} differ in shape")
            retrieved = s[ids >= 0]
            if np.isnan(retrieved).any() or (method != "rrf" and not np.isfinite(retrieved).all()):
                raise ValueError(f"runs[{i}] scores of retrieved ids must be "
                                 f"{'non-NaN' if method == 'rrf' else 'finite'}")
        elif method != "rrf":
            raise ValueError(f"method {method!r} needs (scores, ids) tuples, runs[{i}] has ids only")
        if (ids < -1).any():
            raise ValueError(f"runs[{i}] ids must be >= -1 (-1 = padding)")
        if ids_l and ids.shape[0] != ids_l[0].shape[0]:
            raise ValueError(f"runs[{i}] has {ids.shape[0]} rows, runs[0] has {ids_l[0].shape[0]}")
        ids_l.append(ids)
        sc_l.append(s if method != "rrf" else None)
    if depth is None:
        depth = max(1, sum(a.shape[1] for a in ids_l))
    # (Q, depth) padded outputs, float32 + int64; the kernel's own buffers grow with the
    # runs' widths only, never with depth.
    check_bytes(ids_l[0].shape[0] * depth * 12, "depth")
    so, io = _core.fuse_ids(ids_l, sc_l, weights, method, norm, float(k), depth,
                            resolve_num_threads(num_threads))
    return to_caller(so, like), to_caller(io, like)

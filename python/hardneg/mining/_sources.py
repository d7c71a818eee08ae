"""Negatives from several sources with quotas (``negatives_from={"bm25": 4, "dense": 4}``).

Each source is mined with the same settings; the union is taken source by source in the order
given, without duplicates: a document found by two sources counts once, for the first source
listed, and the next negative of the later source fills its place.  A source is therefore mined
``quota + (quotas of the sources before it)`` deep: at most that many of its negatives can have
been taken already.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Mapping, Tuple, Union

import numpy as np

from hardneg._validate import check_int
from hardneg.datasets import RetrievalDataset
from hardneg.mining._config import MiningConfig
from hardneg.mining._result import MinedNegatives
from hardneg.retrievers import RETRIEVERS

Quotas = Tuple[Tuple[str, int], ...]


def parse_negatives_from(spec: Union[str, Mapping[str, Any]]) -> Quotas:
    """``{"bm25": 4, "dense": 4}`` or ``"bm25:4,dense:4"`` as ``(("bm25", 4), ("dense", 4))``.

    Sources are retriever kinds (``hardneg.retrievers.RETRIEVERS``), each listed once; quotas are
    positive integers.  Raises ValueError / TypeError naming ``negatives_from``.
    """
    if isinstance(spec, str):
        items = []
        for part in [p.strip() for p in spec.split(",") if p.strip()]:
            name, sep, quota = part.partition(":")
            if not sep:
                raise ValueError(f"negatives_from: {part!r} must look like SOURCE:COUNT (e.g. bm25:4,dense:4)")
            try:
                items.append((name.strip(), int(quota)))
            except ValueError:
                raise ValueError(f"negatives_from: the quota of {name.strip()!r} must be a positive integer, "
                                 f"got {quota.strip()!r}") from None
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        raise TypeError(f"negatives_from must be a dict {{source: count}} or 'source:count,...', "
                        f"got {type(spec).__name__}")
    if not items:
        raise ValueError("negatives_from names no source")
    out = []
    for name, quota in items:
        if name not in RETRIEVERS:
            raise ValueError(f"negatives_from: unknown source {name!r} (sources: {', '.join(RETRIEVERS)})")
        if name in dict(out):
            raise ValueError(f"negatives_from: source {name!r} is listed twice")
        out.append((name, check_int(quota, f"negatives_from[{name!r}]", 1)))
    return tuple(out)


def mine_sources(ds: RetrievalDataset, retrievers: Mapping[str, Any], cfg: MiningConfig, quotas: Quotas,
                 timings: Dict[str, float], t_start: float) -> MinedNegatives:
    """Mine each source of ``quotas`` with ``retrievers[name]`` and ``cfg`` and merge them (see the module)."""
    from hardneg.mining._pipeline import run_pipeline

    results = []
    before = 0
    for name, quota in quotas:
        sub = dataclasses.replace(cfg, retriever=name, num_negatives=quota + before)
        results.append(run_pipeline(ds, retrievers[name], sub, {}))
        before += quota
    ids, scores, src, dups = merge_sources([(r.ids, r.scores) for r in results], [q for _, q in quotas])
    first = results[0]
    names = [n for n, _ in quotas]
    stats = {"candidates": sum(r.stats["candidates"] for r in results),
             "filtered": _sum_dicts([r.stats["filtered"] for r in results]),
             "filtered_by_source": {n: r.stats["filtered"] for n, r in zip(names, results)},
             "max_positives": first.stats["max_positives"],
             "sources": {n: int((src == s).sum()) for s, n in enumerate(names)},
             "duplicates": dict(zip(names, dups))}
    if "positive_not_in_top" in first.stats:
        stats["positive_not_in_top"] = first.stats["positive_not_in_top"]
    for n, r in zip(names, results):
        for k, v in r.timings.items():
            if k != "total":
                timings[f"{k} ({n})"] = v
    timings["total"] = time.perf_counter() - t_start
    params = dict(first.params, retriever="+".join(names), num_negatives=int(sum(q for _, q in quotas)),
                  negatives_from=dict(quotas), depth=None)
    pit = first.positive_in_top
    if pit is not None and cfg.positive_not_in_top == "drop":
        ids[~pit] = -1
        scores[~pit] = -np.inf
        src[~pit] = -1
    return MinedNegatives(ids, scores, first.anchor_scores, first.positive_ids, first.all_positive_scores, ds,
                          params, stats, timings, positive_in_top=pit, sources=src, source_names=names,
                          source_anchor_scores=np.stack([r.anchor_scores for r in results]).astype(np.float32))


def merge_sources(lists: List[Tuple[np.ndarray, np.ndarray]],
                  quotas: List[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[int]]:
    """The union of per-source negatives, source by source, without duplicates.

    ``lists[s]`` = (ids int64 (Q, L_s), scores float32 (Q, L_s)), best first, -1 padded.  Source s
    contributes the first ``quotas[s]`` of its negatives not taken by an earlier source.  Returns
    ids int64 / scores float32 / sources int8 (Q, sum(quotas)), -1 / -inf / -1 padded, grouped
    by source in order, and per source the duplicates skipped.
    """
    nq = lists[0][0].shape[0]
    total = int(sum(quotas))
    ids = np.full((nq, total), -1, np.int64)
    scores = np.full((nq, total), -np.inf, np.float32)
    src = np.full((nq, total), -1, np.int8)
    dups = []
    col = 0
    for s, ((li, ls), quota) in enumerate(zip(lists, quotas)):
        valid = li >= 0
        taken = ids[:, :col]
        dup = valid & (li[:, :, None] == taken[:, None, :]).any(axis=2) if col else np.zeros_like(valid)
        ok = valid & ~dup
        rank = np.cumsum(ok, axis=1) - 1
        use = ok & (rank < quota)
        dups.append(int((dup & (np.cumsum(ok, axis=1) - ok < quota)).sum()))  # met before the quota filled
        r, c = np.nonzero(use)
        slot = col + rank[r, c]
        ids[r, slot] = li[r, c]
        scores[r, slot] = ls[r, c]
        src[r, slot] = s
        col += quota
    # close the gaps a source short of its quota leaves: the found negatives first, in order
    order = np.argsort(ids < 0, axis=1, kind="stable")
    return (np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1),
            np.take_along_axis(src, order, 1), dups)


def _sum_dicts(ds: List[Dict[str, int]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out

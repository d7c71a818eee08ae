"""Output of :mod:`hardneg.st`: sentence-transformers 6.3's four dataset layouts and its verbose report.

:func:`build_columns` returns the same ``dict`` of Python lists that sentence-transformers passes to
``datasets.Dataset.from_dict`` (same column names, row order and Python types), so the datasets are
equal; it also returns the score arrays its statistics table is computed from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

_NEG_INF = np.float32(-np.inf)


@dataclass
class Pairs:
    """The (query, positive) pairs in sentence-transformers' order: queries in first-seen order, each
    with its distinct positives in first-seen order."""

    queries: List[Any]           # the distinct anchors
    corpus: List[Any]            # the deduplicated corpus
    positive_rows: np.ndarray    # int64 (P,): corpus row of each pair's positive
    pair_query: np.ndarray       # int64 (P,): query of each pair
    n_positives: np.ndarray      # int64 (Q,): pairs per query


@dataclass
class Columns:
    data: Dict[str, list]
    positive_scores: np.ndarray    # float32: every pair's positive score
    negative_scores: np.ndarray    # float32: the negatives in the output (per row of it)
    difference_scores: np.ndarray  # float32: positive minus negative, aligned with negative_scores
    maximum_possible_samples: int


def _texts(items: List[Any], rows: np.ndarray) -> List[Any]:
    return [items[i] for i in rows.tolist()]


def build_columns(output_format: str, output_scores: bool, anchor: str, positive: str, pairs: Pairs,
                  ids: np.ndarray, scores: np.ndarray, positive_scores: np.ndarray, num_negatives: int,
                  num_rows: int) -> Columns:
    """Columns for ``Dataset.from_dict`` in ``output_format``.

    ``ids`` int64 (Q, W) / ``scores`` float32 (Q, W): each distinct query's negatives (-1 / -inf where
    none); ``positive_scores`` float32 (P,): one per pair; ``num_rows``: rows of the input dataset.
    """
    if output_format == "labeled-pair":
        return _labeled_pair(output_scores, anchor, positive, pairs, ids, scores, positive_scores,
                             num_negatives, num_rows)
    # the other formats have one row (or one group of rows) per (query, positive) pair
    rep_ids = np.repeat(ids, pairs.n_positives, axis=0)
    rep_scores = np.repeat(scores, pairs.n_positives, axis=0)
    keep = rep_scores != _NEG_INF
    pos_b = np.broadcast_to(positive_scores[:, None], rep_scores.shape)
    queries = _texts(pairs.queries, pairs.pair_query)
    positives = _texts(pairs.corpus, pairs.positive_rows)
    data: Dict[str, list]
    if output_format == "triplet":
        r, c = np.nonzero(keep)
        data = {anchor: [queries[i] for i in r.tolist()], positive: [positives[i] for i in r.tolist()],
                "negative": _texts(pairs.corpus, rep_ids[r, c])}
        if output_scores:
            data["scores"] = np.stack([pos_b[r, c], rep_scores[r, c]], axis=1).tolist()
        neg = rep_scores[keep]
        return Columns(data, positive_scores, neg, pos_b[keep] - neg, int(keep.size))
    if output_format == "n-tuple":
        full = keep.all(axis=1)
        rows = np.flatnonzero(full).tolist()
        data = {anchor: [queries[i] for i in rows], positive: [positives[i] for i in rows]}
        for i, col in enumerate(rep_ids[full].T, start=1):
            data[f"negative_{i}"] = _texts(pairs.corpus, col)
        if output_scores:
            data["scores"] = np.concatenate([positive_scores[full][:, None], rep_scores[full]], axis=1).tolist()
        neg = rep_scores[full].reshape(-1)
        return Columns(data, positive_scores, neg, pos_b[full].reshape(-1) - neg, int(full.size))
    # labeled-list
    rows = np.flatnonzero(keep.any(axis=1)).tolist()
    docs, labels = [], []
    for i in rows:
        k = keep[i]
        docs.append([positives[i]] + _texts(pairs.corpus, rep_ids[i][k]))
        if output_scores:
            labels.append([positive_scores[i].item()] + rep_scores[i][k].tolist())
        else:
            labels.append([1] + [0] * int(k.sum()))
    data = {anchor: [queries[i] for i in rows], positive: docs, ("scores" if output_scores else "labels"): labels}
    neg = rep_scores[keep]
    return Columns(data, positive_scores, neg, pos_b[keep] - neg, int(keep.shape[0]))


def _labeled_pair(output_scores: bool, anchor: str, positive: str, pairs: Pairs, ids: np.ndarray,
                  scores: np.ndarray, positive_scores: np.ndarray, num_negatives: int, num_rows: int) -> Columns:
    """Per query: its positives (label 1), then its negatives (label 0); or the scores instead."""
    key = "score" if output_scores else "label"
    data: Dict[str, list] = {anchor: [], positive: [], key: []}
    a, d, v = data[anchor], data[positive], data[key]
    bounds = np.concatenate([[0], np.cumsum(pairs.n_positives)]).tolist()
    pos_rows = pairs.positive_rows.tolist()
    pos_vals = positive_scores.tolist()
    for j, q in enumerate(pairs.queries):
        lo, hi = bounds[j], bounds[j + 1]
        k = scores[j] != _NEG_INF
        neg_rows = ids[j][k].tolist()
        a.extend([q] * (hi - lo + len(neg_rows)))
        d.extend(pairs.corpus[r] for r in pos_rows[lo:hi])
        d.extend(pairs.corpus[r] for r in neg_rows)
        if output_scores:
            v.extend(pos_vals[lo:hi])
            v.extend(scores[j][k].tolist())
        else:
            v.extend([1] * (hi - lo) + [0] * len(neg_rows))
    rep_scores = np.repeat(scores, pairs.n_positives, axis=0)
    keep = rep_scores != _NEG_INF
    neg = rep_scores[keep]
    diff = np.broadcast_to(positive_scores[:, None], rep_scores.shape)[keep] - neg
    return Columns(data, positive_scores, neg, diff, len(pairs.queries) * num_negatives + num_rows)


# ---------------------------------------------------------------------------------------------- report


def _stat_functions(torch: Optional[Any]):
    """sentence-transformers' statistics (torch's, where installed: lower median, unbiased std)."""
    if torch is not None:
        return [
            ("mean", torch.mean),
            ("median", torch.median),
            ("std", torch.std),
            ("min", lambda s: torch.min(s) if s.numel() > 0 else float("inf")),
            ("25%", lambda s: torch.quantile(s.float(), q=0.25) if s.numel() > 0 else float("inf")),
            ("50%", lambda s: torch.quantile(s.float(), q=0.5) if s.numel() > 0 else float("inf")),
            ("75%", lambda s: torch.quantile(s.float(), q=0.75) if s.numel() > 0 else float("inf")),
            ("max", lambda s: torch.max(s) if s.numel() > 0 else float("-inf")),
        ]
    nan = np.float32(np.nan)
    return [
        ("mean", lambda s: np.mean(s) if s.size else nan),
        ("median", lambda s: np.sort(s)[(s.size - 1) // 2] if s.size else nan),
        ("std", lambda s: np.std(s, ddof=1) if s.size > 1 else nan),
        ("min", lambda s: np.min(s) if s.size else float("inf")),
        ("25%", lambda s: np.quantile(s, 0.25) if s.size else float("inf")),
        ("50%", lambda s: np.quantile(s, 0.5) if s.size else float("inf")),
        ("75%", lambda s: np.quantile(s, 0.75) if s.size else float("inf")),
        ("max", lambda s: np.max(s) if s.size else float("-inf")),
    ]


def print_report(cols: Columns, num_output_rows: int, skipped: Dict[str, Dict[str, float]],
                 params: Dict[str, Any], range_min: int) -> None:
    """sentence-transformers' verbose statistics table and its closing lines, printed."""
    try:
        import torch
    except ImportError:  # pragma: no cover - sentence-transformers' models need torch
        torch = None
    if torch is not None:
        conv = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        is_value = lambda v: isinstance(v, torch.Tensor)  # noqa: E731
    else:
        conv = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        is_value = lambda v: isinstance(v, (np.floating, np.ndarray))  # noqa: E731
    row_format = "{:<6} {:>14} {:>14} {:>14}"

    def fmt(value):
        return f"{value.item():.4f}" if is_value(value) else f"{value:,}"

    pos, neg, diff = conv(cols.positive_scores), conv(cols.negative_scores), conv(cols.difference_scores)
    print(row_format.format("Metric", "Positive", "Negative", "Difference"))
    print(row_format.format("Count", fmt(len(pos)), fmt(len(neg)), ""))
    for metric, function in _stat_functions(torch):
        print(row_format.format(metric.capitalize(), fmt(function(pos)), fmt(function(neg)), fmt(function(diff))))
    for name in ("absolute_margin", "relative_margin", "max_score", "min_score"):
        if name in skipped:
            print(f"Skipped {skipped[name]['skipped']:,} potential negatives ({skipped[name]['ratio']:.2%}) "
                  f"due to the {name} of {params[name]}.")
    missing = cols.maximum_possible_samples - num_output_rows
    if missing > 0:
        solutions = ["range_max"]
        if range_min > 0:
            solutions.append("range_min")
        solutions += [n for n in ("absolute_margin", "relative_margin", "max_score") if params[n] is not None]
        considerations = ", ".join(solutions[:-1]) + " and " + solutions[-1] if len(solutions) > 1 else solutions[0]
        print(f"Could not find enough negatives for {missing} samples ({missing / cols.maximum_possible_samples:.2%})."
              f" Consider adjusting the {considerations} parameter{'s' if len(solutions) > 1 else ''} if you'd like"
              f" to find more valid negatives.")


def log_counters(skipped: Dict[str, int], num_candidates: int) -> Dict[str, Dict[str, float]]:
    """sentence-transformers' ``log_counters``: each filter's count and its share of the candidates
    left after the margin filters before it."""
    out: Dict[str, Dict[str, float]] = {}
    for name in ("absolute_margin", "relative_margin"):
        if skipped.get(name):
            out[name] = {"skipped": skipped[name], "ratio": skipped[name] / num_candidates}
            num_candidates -= skipped[name]
    for name in ("max_score", "min_score"):
        if skipped.get(name):
            out[name] = {"skipped": skipped[name], "ratio": skipped[name] / num_candidates}
    return out

"""The mining pipeline, one stage per function.

::

    build_config (checks)  ->  make_retriever  ->  plan_search (positives, exclusions, depths)
      -> per batch of queries:  [shallow pass]  ->  search  ->  positive scores  ->  pool
                                ->  [rescore]  ->  anchor + filters  ->  window + sampling
      -> MinedNegatives

Each batch writes its rows of the result (:class:`_Accumulator`); nothing else is shared.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from hardneg._arrays import is_torch
from hardneg._progress import progress_bar
from hardneg._validate import check_bytes
from hardneg.datasets import RetrievalDataset
from hardneg.mining._config import MiningConfig
from hardneg.mining._exclusions import Exclusions, Positives, _slots_taken, indptr_of
from hardneg.mining._result import MinedNegatives
from hardneg.mining._select import FILTERS, anchors, apply_filters, select_sampled, select_top, sort_rows, take

# First-search depth beyond the `need` survivors: need + max(_SHALLOW_SLACK, need // 2).  SciFact train
# (need = 18), 2 threads, depth 30 against 42: 0.92x the time with relative_margin=0.05 (195
# queries searched again instead of 152) and 0.8x without a filter (none again); a shallow
# first search is also cheap enough for the int8 screen (docs/topk.md).
_SHALLOW_SLACK = 12
_CANDIDATE_BYTES = 4 + 8 + 1  # float32 score, int64 id and a mask byte per searched candidate
_PROBE_CANDIDATES = 1 << 22  # a deeper probe for duplicate-text rows may hold this many (~50 MB)


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SearchPlan:
    """What every batch shares: the positives, the exclusions and the search depths.

    ``depth`` is sentence-transformers' candidate depth (``range_max + P (+ 1)``), the number the
    rule counts slots against; ``k_full`` the depth actually searched (``depth`` clamped to the
    corpus: a deeper search only adds padding); ``k_shallow`` the first search's depth when
    ``shallow`` (with ``sampling="top"``, only the first ``need`` survivors matter).
    """

    positives: Positives
    exclusions: Exclusions
    depth: int
    k_full: int
    k_shallow: int
    shallow: bool
    need: int
    num_docs: int = 0


def plan_search(ds: RetrievalDataset, cfg: MiningConfig) -> SearchPlan:
    """Positives, exclusions and depths for ``cfg``; refuses outputs that cannot be allocated.

    The shallow first search is exact: the first ``k_shallow <= range_max`` candidates of the
    excluded ranking always lie inside sentence-transformers' pool (``depth - slots >= range_max``),
    so when they hold ``need`` survivors the answer is final.  Not for hybrid (RRF scores depend
    on the depth of both rankings) nor with a rescorer (it reorders the whole pool).
    """
    nq, n = ds.num_queries, ds.num_docs
    check_bytes(nq * cfg.num_negatives * (8 + 4), "num_negatives")
    pos = Positives.of(ds)
    excl = Exclusions.of(ds, pos, cfg.exclude_self, cfg.exclude_same_text, text_takes_slot=cfg.st_rule == "6.3")
    depth = cfg.range_max + pos.max_count + (1 if cfg.st_rule == "6.3" else 0)
    k_full = min(depth, n)
    check_bytes(min(cfg.batch_size, nq) * k_full * _CANDIDATE_BYTES * 4, "range_max")
    need = cfg.range_min + cfg.num_negatives
    k_shallow = min(cfg.range_max, need + max(_SHALLOW_SLACK, need // 2), n)
    shallow = (cfg.shallow_first and cfg.sampling == "top" and cfg.rescorer is None
               and cfg.retriever != "hybrid" and k_shallow < k_full)
    return SearchPlan(pos, excl, depth, k_full, k_shallow, shallow, need, n)


# ---------------------------------------------------------------------------------------------- state


@dataclass
class _Accumulator:
    """The result being filled batch by batch, with counters and stage timings."""

    ids: np.ndarray
    scores: np.ndarray
    anchors: np.ndarray
    positive_scores: List[np.ndarray]
    candidates: int = 0
    filtered: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    searched_again: int = 0
    positive_in_top: Optional[np.ndarray] = None  # bool (Q,) with the positive-in-top filter
    t_search: float = 0.0
    t_select: float = 0.0
    t_rescore: float = 0.0

    @classmethod
    def empty(cls, nq: int, num_negatives: int, positive_filter: bool = False) -> "_Accumulator":
        return cls(np.full((nq, num_negatives), -1, np.int64), np.full((nq, num_negatives), -np.inf, np.float32),
                   np.full(nq, np.nan, np.float32), [np.zeros(0, np.float32)] * nq,
                   positive_in_top=np.zeros(nq, bool) if positive_filter else None)

    def count(self, valid: np.ndarray, drops: Dict[str, np.ndarray], sel: np.ndarray) -> None:
        """Add the candidates of rows ``sel`` and what each filter removed from them."""
        self.candidates += int(valid[sel].sum())
        for name, d in drops.items():
            self.filtered[name] += int(d[sel].sum())


@dataclass(frozen=True)
class _Batch:
    """Queries ``b0 .. b1 - 1`` and their positives (``pq`` batch index, ``pd`` corpus row)."""

    b0: int
    b1: int
    glob: np.ndarray
    pos_counts: np.ndarray
    pq: np.ndarray
    pd: np.ndarray

    @classmethod
    def of(cls, plan: SearchPlan, b0: int, b1: int) -> "_Batch":
        pos = plan.positives
        counts = pos.counts[b0:b1]
        return cls(b0, b1, np.arange(b0, b1), counts, np.repeat(np.arange(b1 - b0), counts),
                   pos.rows[pos.indptr[b0]:pos.indptr[b1]])

    @property
    def size(self) -> int:
        return self.b1 - self.b0

    @property
    def rows(self) -> slice:
        return slice(self.b0, self.b1)


# ---------------------------------------------------------------------------------------------- stages


def _search(ret: Any, rows: Any, k: int, exclude: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The retriever's top ``k`` (exclusions removed inside the search): float32 / int64 (B, k)."""
    cs, ci = ret.search(rows, k, exclude)
    return np.asarray(cs, dtype=np.float32), np.asarray(ci, dtype=np.int64)


def _search_excluded(ret: Any, rows: Any, glob: np.ndarray, k: int, plan: SearchPlan) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`_search` of the queries ``glob`` (addressed as ``rows``) with every exclusion of the plan,
    large duplicate-text groups removed as they are retrieved (:meth:`Exclusions.search`)."""
    fused = getattr(ret, "name", None) == "hybrid"

    def run(sub: Optional[np.ndarray], depth: int, exclude: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, ...]:
        cs, ci = _search(ret, rows if sub is None else glob[sub], depth, exclude)
        if fused:  # RRF depends on every row of both input rankings, retrieved or not
            ci_runs = np.concatenate([ret._last["dense"][1], ret._last["bm25"][1]], 1)
            return cs, ci, ci_runs
        return cs, ci, ci

    budget = max(4 * glob.size * plan.k_full, _PROBE_CANDIDATES)  # deeper probes: candidates in all
    cs, ci, final = plan.exclusions.search(run, glob, k, plan.num_docs, budget)
    if final is not None and getattr(ret, "name", None) not in ("dense", "bm25"):
        cs, ci = _search(ret, rows, k, final)  # the same result; the retriever's state is this batch's again
    return cs, ci


def _select(cfg: MiningConfig, cs: np.ndarray, ci: np.ndarray, keep: np.ndarray, glob_rows: np.ndarray,
            acc: _Accumulator) -> None:
    """Window and sampling of the filtered candidates, written to the result rows ``glob_rows``."""
    fn = select_top if cfg.sampling == "top" else select_sampled
    fn(cfg, cs, ci, keep, glob_rows, acc.ids, acc.scores)


def _shallow_pass(ret: Any, cfg: MiningConfig, plan: SearchPlan, batch: _Batch,
                  acc: _Accumulator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Search ``k_shallow`` deep and finish the queries that have ``need`` survivors (or fewer
    candidates than asked: the whole corpus was seen).  Returns the batch's positive scores, its
    anchors and the batch indices still to search in full."""
    t0 = time.perf_counter()
    cs, ci = _search_excluded(ret, batch.rows, batch.glob, plan.k_shallow, plan)
    ps = ret.pair_scores(batch.rows, batch.pq, batch.pd).astype(np.float32)
    acc.t_search += time.perf_counter() - t0
    t0 = time.perf_counter()
    anchor = anchors(ps, batch.pq, batch.pos_counts, cfg.positive_anchor)
    valid = ci >= 0
    keep, drops = apply_filters(cfg, cs, valid, anchor)
    done = (valid.sum(1) < plan.k_shallow) | (keep.sum(1) >= plan.need)
    if done.any():
        _select(cfg, cs[done], ci[done], keep[done], batch.glob[done], acc)
        acc.count(valid, drops, done)
    acc.t_select += time.perf_counter() - t0
    return ps, anchor, np.flatnonzero(~done)


def _pool(ret: Any, plan: SearchPlan, rows: Any, sub_glob: np.ndarray, cs: np.ndarray, ci: np.ndarray,
          spq: np.ndarray, spd: np.ndarray, sps: np.ndarray) -> np.ndarray:
    """sentence-transformers' pool as a mask over the candidates: of its top ``depth``, the documents
    it may return.  The excluded ones (positives; with the 6.3 rule also the query's own text)
    ranked inside the top ``depth`` take slots, so the pool is ``depth - (slots taken)`` deep."""
    valid = ci >= 0
    tq, td, ts = spq, spd, sps
    text_q, text_rows = plan.exclusions.text_q, plan.exclusions.text_rows
    if text_q.size:
        hit = np.isin(text_q, sub_glob)
        if hit.any():
            xq = np.searchsorted(sub_glob, text_q[hit])
            xd = text_rows[hit]
            xs = ret.pair_scores(rows, xq, xd).astype(np.float32)
            order = np.argsort(np.concatenate([spq, xq]), kind="stable")
            tq = np.concatenate([spq, xq])[order]
            td = np.concatenate([spd, xd])[order]
            ts = np.concatenate([sps, xs])[order]
    # ranks are below the corpus size, so a depth past 2**62 (range_max up to 2**63 - 1 is valid)
    # decides nothing more and stays in int64
    depth = min(plan.depth, 1 << 62)
    pool = depth - _slots_taken(cs, ci, valid, tq, td, ts, sub_glob.size, depth)
    valid &= np.arange(cs.shape[1])[None, :] < pool[:, None]
    return valid


def _rescore(ds: RetrievalDataset, cfg: MiningConfig, sub_glob: np.ndarray, cs: np.ndarray, ci: np.ndarray,
             valid: np.ndarray, spq: np.ndarray, spd: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Score every pool candidate and every positive with the rescorer (one call), and order the
    candidates by the new scores.  Returns (scores, ids, valid, positive scores)."""
    qi, cj = np.nonzero(valid)
    qt = ds.query_texts
    qtexts = [qt[sub_glob[q]] for q in qi.tolist()] + [qt[sub_glob[q]] for q in spq.tolist()]
    dtexts = [ds.corpus_texts[d] for d in ci[qi, cj].tolist()] + [ds.corpus_texts[d] for d in spd.tolist()]
    new = _to_flat(cfg.rescorer(qtexts, dtexts), len(qtexts))
    cs = cs.copy()
    cs[qi, cj] = new[: qi.size]
    order = sort_rows(cs, ci, valid)
    return take(cs, order), take(ci, order), take(valid, order), new[qi.size:]


def _full_pass(ds: RetrievalDataset, ret: Any, cfg: MiningConfig, plan: SearchPlan, batch: _Batch,
               todo: np.ndarray, shallow: Optional[Tuple[np.ndarray, np.ndarray]], acc: _Accumulator) -> np.ndarray:
    """Search the batch indices ``todo`` to the full depth, then pool, rescore, filter and select.

    ``shallow``: the shallow pass's (positive scores, anchors) of the whole batch, reused (a pair's
    score depends on the pair only; min / max anchors do not depend on the batch).  Returns the
    positive scores of the ``todo`` queries (the rescorer's when there is one).
    """
    sub_glob = batch.glob[todo]
    rows = batch.rows if todo.size == batch.size else sub_glob
    keep_pos = np.isin(batch.pq, todo)
    spq = np.searchsorted(todo, batch.pq[keep_pos])
    spd = batch.pd[keep_pos]
    t0 = time.perf_counter()
    cs, ci = _search_excluded(ret, rows, sub_glob, plan.k_full, plan)
    sps = shallow[0][keep_pos] if shallow is not None else ret.pair_scores(rows, spq, spd).astype(np.float32)
    acc.t_search += time.perf_counter() - t0

    valid = _pool(ret, plan, rows, sub_glob, cs, ci, spq, spd, sps)
    if cfg.rescorer is not None:
        t0 = time.perf_counter()
        cs, ci, valid, sps = _rescore(ds, cfg, sub_glob, cs, ci, valid, spq, spd)
        acc.t_rescore += time.perf_counter() - t0

    t0 = time.perf_counter()
    if shallow is not None and cfg.positive_anchor != "mean":
        anchor = shallow[1][todo]
    else:
        anchor = anchors(sps, spq, batch.pos_counts[todo], cfg.positive_anchor)
    keep, drops = apply_filters(cfg, cs, valid, anchor)
    _select(cfg, cs, ci, keep, sub_glob, acc)
    acc.count(valid, drops, np.ones(todo.size, dtype=bool))
    acc.t_select += time.perf_counter() - t0
    return sps


def _positive_in_top(ret: Any, cfg: MiningConfig, n_docs: int, batch: _Batch, acc: _Accumulator) -> None:
    """The positive-in-top filter: whether any positive of each query of the batch is among the
    retriever's top ``require_positive_in_top`` (nothing excluded; ties by ascending row)."""
    t0 = time.perf_counter()
    k = min(cfg.require_positive_in_top, n_docs)
    _, ti = _search(ret, batch.rows, k, None)
    hit = np.zeros(batch.size, bool)
    if batch.pq.size:
        found = (ti[batch.pq] == batch.pd[:, None]).any(axis=1)
        np.logical_or.at(hit, batch.pq, found)
    acc.positive_in_top[batch.b0:batch.b1] = hit
    acc.t_search += time.perf_counter() - t0


def _mine_batch(ds: RetrievalDataset, ret: Any, cfg: MiningConfig, plan: SearchPlan, batch: _Batch,
                acc: _Accumulator) -> None:
    """One batch of queries: [positive-in-top], [shallow pass], full pass of the rest, then its
    anchors and positive scores."""
    if cfg.require_positive_in_top is not None:  # first: a hybrid's pair scores follow its last search
        _positive_in_top(ret, cfg, ds.num_docs, batch, acc)
    todo = np.arange(batch.size)
    shallow = None
    if plan.shallow:
        ps, anchor, todo = _shallow_pass(ret, cfg, plan, batch, acc)
        shallow = (ps, anchor)
    if todo.size:
        sps = _full_pass(ds, ret, cfg, plan, batch, todo, shallow, acc)
        if shallow is None:  # here todo is the whole batch: these are the batch's positive scores
            ps = sps
    if shallow is None:
        anchor = anchors(ps, batch.pq, batch.pos_counts, cfg.positive_anchor)
    else:
        acc.searched_again += int(todo.size)
    acc.anchors[batch.b0:batch.b1] = anchor
    ps32 = ps.astype(np.float32)
    bounds = indptr_of(batch.pos_counts).tolist()
    acc.positive_scores[batch.b0:batch.b1] = [ps32[bounds[j]:bounds[j + 1]] for j in range(batch.size)]


# ---------------------------------------------------------------------------------------------- driver


def run_pipeline(ds: RetrievalDataset, ret: Any, cfg: MiningConfig, timings: Optional[Dict[str, float]] = None,
                 t_start: Optional[float] = None) -> MinedNegatives:
    """Mine every query of ``ds`` with a built retriever and checked settings.

    Parameters
    ----------
    ds : RetrievalDataset
    ret : retriever
        From :func:`hardneg.retrievers.make_retriever` for ``ds`` (``search`` / ``pair_scores``).
    cfg : MiningConfig
        From :func:`build_config`.
    timings : dict, optional
        Stage timings measured before (e.g. ``{"index": seconds}``); the pipeline's are added.
    t_start : float, optional
        ``time.perf_counter()`` at the start of the run, for ``timings["total"]``.

    Returns
    -------
    MinedNegatives
    """
    t_start = time.perf_counter() if t_start is None else t_start
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    plan = plan_search(ds, cfg)
    timings["prepare"] = time.perf_counter() - t0
    nq = ds.num_queries
    acc = _Accumulator.empty(nq, cfg.num_negatives, cfg.require_positive_in_top is not None)
    bar = progress_bar(nq, f"mining ({cfg.retriever})", cfg.progress)
    for b0 in range(0, nq, cfg.batch_size):
        batch = _Batch.of(plan, b0, min(nq, b0 + cfg.batch_size))
        _mine_batch(ds, ret, cfg, plan, batch, acc)
        bar.update(batch.size)
    bar.close()

    timings["search"] = acc.t_search
    if cfg.rescorer is not None:
        timings["rescore"] = acc.t_rescore
    timings["select"] = acc.t_select
    timings["total"] = time.perf_counter() - t_start
    stats = {"candidates": acc.candidates, "filtered": {k: v for k, v in acc.filtered.items() if v},
             "searched_again": acc.searched_again if plan.shallow else None,
             "max_positives": plan.positives.max_count}
    if acc.positive_in_top is not None:
        _apply_positive_filter(cfg, acc, stats)
    pos = plan.positives
    bounds = pos.indptr.tolist()
    positives = [pos.rows[bounds[j]:bounds[j + 1]] for j in range(nq)]  # read-only views
    params = cfg.params(metric_used=cfg.retriever in ("dense", "hybrid"), depth=plan.depth)
    return MinedNegatives(acc.ids, acc.scores, acc.anchors, positives, acc.positive_scores, ds, params, stats,
                          timings, positive_in_top=acc.positive_in_top)


def _apply_positive_filter(cfg: MiningConfig, acc: _Accumulator, stats: Dict[str, Any]) -> None:
    """Count the queries whose best positive is not in the top K; with "drop", clear their negatives."""
    miss = ~acc.positive_in_top
    stats["positive_not_in_top"] = {"k": cfg.require_positive_in_top, "action": cfg.positive_not_in_top,
                                    "queries": int(miss.sum())}
    if cfg.positive_not_in_top == "drop":
        acc.ids[miss] = -1
        acc.scores[miss] = -np.inf


def _to_flat(x: Any, n: int) -> np.ndarray:
    """A rescorer's output as float32 (n,); refuses a wrong count and NaN / Inf."""
    if is_torch(x):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size != n:
        raise ValueError(f"rescorer returned {a.size} scores for {n} pairs")
    if not np.isfinite(a).all():
        raise ValueError("rescorer returned NaN or Inf")
    return a.astype(np.float32)

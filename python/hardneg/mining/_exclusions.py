"""What each query may not get as a negative, and the slots excluded documents take in the ranking.

sentence-transformers searches the top ``range_max + P (+ 1)`` of the unexcluded ranking and
then drops the positives (and, from 6.3, the document whose text is the query's).  hardneg
excludes them inside the search kernel instead and accounts for the slots they would have
taken (:func:`_slots_taken`), so the pool is the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from hardneg.datasets import RetrievalDataset


def indptr_of(counts: np.ndarray) -> np.ndarray:
    """CSR row pointers (len(counts) + 1,) int64 of per-row counts."""
    out = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


@dataclass(frozen=True)
class Positives:
    """Every query's positives as flat (query index, corpus row) pairs, sorted by query.

    ``counts`` int64 (Q,), ``rows`` int64 (total,), ``indptr`` int64 (Q + 1,), ``query`` int64 (total,).
    """

    counts: np.ndarray
    rows: np.ndarray
    indptr: np.ndarray
    query: np.ndarray

    @classmethod
    def of(cls, ds: RetrievalDataset) -> "Positives":
        counts, rows = ds._positives_flat()
        return cls(counts, rows, indptr_of(counts), np.repeat(np.arange(ds.num_queries), counts))

    @property
    def max_count(self) -> int:
        return int(self.counts.max()) if self.counts.size else 0


@dataclass(frozen=True)
class Exclusions:
    """Per-query exclusions (positives + extra rows) as one CSR, and the documents whose text is
    the query's that take a candidate slot (``text_q`` query index, ``text_rows`` corpus row)."""

    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray
    text_q: np.ndarray
    text_rows: np.ndarray

    @classmethod
    def of(cls, ds: RetrievalDataset, pos: Positives, exclude_self: bool, exclude_same_text: bool,
           text_takes_slot: bool) -> "Exclusions":
        extra_q, extra_rows, text_q, text_rows = _exclusions(ds, pos.query, pos.rows, exclude_self,
                                                             exclude_same_text)
        if not text_takes_slot:
            text_q = text_rows = np.zeros(0, np.int64)
        if extra_q.size:
            all_q = np.concatenate([pos.query, extra_q])
            indices = np.concatenate([pos.rows, extra_rows])[np.argsort(all_q, kind="stable")]
            counts = np.bincount(all_q, minlength=ds.num_queries).astype(np.int64)
        else:
            indices, counts = pos.rows, pos.counts
        return cls(indptr_of(counts), indices, counts, text_q, text_rows)

    def csr(self, glob_rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) of the queries ``glob_rows`` (ascending), for the search kernels."""
        ptr, ind = self.indptr, self.indices
        if glob_rows.size and glob_rows[-1] - glob_rows[0] + 1 == glob_rows.size:  # a contiguous range
            a, b = ptr[glob_rows[0]], ptr[glob_rows[-1] + 1]
            return ptr[glob_rows[0]:glob_rows[-1] + 2] - a, ind[a:b]
        counts = self.counts[glob_rows]
        starts = np.repeat(ptr[glob_rows], counts)
        within = np.arange(int(counts.sum())) - np.repeat(indptr_of(counts)[:-1], counts)
        return indptr_of(counts), ind[starts + within]


def _exclusions(ds: RetrievalDataset, pos_q: np.ndarray, pos_rows: np.ndarray, exclude_self: bool,
                exclude_same_text: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-query rows to exclude besides the positives: the query's own document (same id)
    and documents whose text equals the query or one of its positives.

    ``pos_q`` / ``pos_rows`` are the positives as flat (query index, corpus row) pairs.  Returns
    the extra exclusions the same way, sorted by query then row, without duplicates and without
    the query's positives; then, as (query index, row) pairs, the first corpus row whose text
    equals each query's text when it is not one of its positives (sentence-transformers 6.3
    drops that document but it still takes a candidate slot: see :func:`_slots_taken`).  Only
    hash matches reach Python loops.
    """
    qs: List[np.ndarray] = []
    rs: List[np.ndarray] = []
    text_q: List[int] = []
    text_r: List[int] = []
    if exclude_self:
        own = ds._own_rows()
        hit = np.flatnonzero(own >= 0)
        qs.append(hit)
        rs.append(own[hit])
    if exclude_same_text and ds.num_docs:
        texts = ds.corpus_texts
        lookup = ds.text_index()
        pq: List[int] = []
        pr: List[int] = []
        for j in np.flatnonzero(lookup.may_contain(ds.query_texts)).tolist():  # a hash match: compare texts
            rows = lookup.rows_with_text(ds.query_texts[j])
            pq.extend([j] * len(rows))
            pr.extend(rows)
            if rows:
                text_q.append(j)
                text_r.append(min(rows))
        dup_rows = lookup.duplicated_rows()
        if dup_rows and pos_rows.size:
            shared = np.flatnonzero(np.isin(pos_rows, np.fromiter(dup_rows, dtype=np.int64, count=len(dup_rows))))
            for t in shared.tolist():  # a positive whose text other rows may share
                j, r = int(pos_q[t]), int(pos_rows[t])
                others = [x for x in lookup.rows_with_text(texts[r]) if x != r]
                pq.extend([j] * len(others))
                pr.extend(others)
        qs.append(np.array(pq, dtype=np.int64))
        rs.append(np.array(pr, dtype=np.int64))
    eq = np.concatenate(qs) if qs else np.zeros(0, np.int64)
    er = np.concatenate(rs) if rs else np.zeros(0, np.int64)
    tq, tr = np.array(text_q, dtype=np.int64), np.array(text_r, dtype=np.int64)
    if eq.size == 0:
        return eq, er, tq, tr
    base = np.int64(ds.num_docs + 1)
    pos_key = pos_q * base + pos_rows
    key = np.unique(eq * base + er)  # sorted, no duplicates
    key = key[~np.isin(key, pos_key)]
    not_pos = ~np.isin(tq * base + tr, pos_key)  # a positive whose text is the query's holds its slot already
    return key // base, key % base, tq[not_pos], tr[not_pos]


def _slots_taken(cs: np.ndarray, ci: np.ndarray, valid: np.ndarray, tq: np.ndarray, td: np.ndarray,
                 ts: np.ndarray, S: int, depth: int) -> np.ndarray:
    """Per query, how many of its excluded documents (query ``tq``, row ``td``, score ``ts``, sorted
    by query) rank inside the top ``depth`` of the unexcluded ranking (ties by ascending row).

    ``cs`` / ``ci`` / ``valid`` (S, width) are the excluded search's candidates (width >= depth, or
    every candidate when the corpus is smaller): an excluded document's rank is the candidates
    above it plus the excluded documents above it.
    """
    if td.size == 0:
        return np.zeros(S, np.int64)
    srow, irow, vrow = cs[tq], ci[tq], valid[tq]
    nb_cand = (vrow & ((srow > ts[:, None]) | ((srow == ts[:, None]) & (irow < td[:, None])))).sum(1)
    counts = np.bincount(tq, minlength=S)
    P = max(1, int(counts.max()))
    pmat = np.full((S, P), -np.inf, np.float64)
    imat = np.full((S, P), np.iinfo(np.int64).max, np.int64)
    slot = np.arange(td.size) - np.repeat(indptr_of(counts)[:-1], counts)
    pmat[tq, slot] = ts
    imat[tq, slot] = td
    pm, im = pmat[tq], imat[tq]
    nb_excl = ((pm > ts[:, None]) | ((pm == ts[:, None]) & (im < td[:, None]))).sum(1)
    in_top = (nb_cand + nb_excl) < depth
    return np.bincount(tq[in_top], minlength=S)

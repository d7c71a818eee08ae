"""What each query may not get as a negative, and the slots excluded documents take in the ranking.

sentence-transformers searches the top ``range_max + P (+ 1)`` of the unexcluded ranking and
then drops the positives (and, from 6.3, the document whose text is the query's).  hardneg
excludes them inside the search kernel instead and accounts for the slots they would have
taken (:func:`_slots_taken`), so the pool is the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

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


# Duplicate-text groups of at most this many rows are excluded up front (their rows join the query's
# exclusion list); larger ones lazily (:meth:`Exclusions.search`): their rows cost nothing until a
# search retrieves one, so a corpus where thousands of documents share one text (empty bodies,
# boilerplate) costs O(retrieved candidates), not O(group size x queries).
EXPAND_MAX = 16

CSR = Tuple[np.ndarray, np.ndarray]
# search(positions into the batch or None for all, depth, exclude CSR) -> (scores, ids, every id the
# result depends on: the ids themselves, or a fusion's input runs)
SearchFn = Callable[[Optional[np.ndarray], int, CSR], Tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Exclusions:
    """Per-query exclusions (positives + extra rows) as one CSR, and the documents whose text is
    the query's that take a candidate slot (``text_q`` query index, ``text_rows`` corpus row).

    Text groups larger than :data:`EXPAND_MAX` are not in the CSR: ``lazy_keys`` int64, sorted,
    holds ``query * num_groups + group`` for each (query, group) whose rows the query may not get,
    with ``group`` int64 (N,) each corpus row's text group; :meth:`search` removes them.
    """

    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray
    text_q: np.ndarray
    text_rows: np.ndarray
    lazy_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    group: Optional[np.ndarray] = None
    num_groups: int = 0

    @classmethod
    def of(cls, ds: RetrievalDataset, pos: Positives, exclude_self: bool, exclude_same_text: bool,
           text_takes_slot: bool, expand_max: Optional[int] = None) -> "Exclusions":
        expand_max = EXPAND_MAX if expand_max is None else expand_max
        extra_q, extra_rows, text_q, text_rows, lazy_q, lazy_g = _split_exclusions(
            ds, pos.query, pos.rows, exclude_self, exclude_same_text, expand_max)
        if not text_takes_slot:
            text_q = text_rows = np.zeros(0, np.int64)
        if extra_q.size:
            all_q = np.concatenate([pos.query, extra_q])
            indices = np.concatenate([pos.rows, extra_rows])[np.argsort(all_q, kind="stable")]
            counts = np.bincount(all_q, minlength=ds.num_queries).astype(np.int64)
        else:
            indices, counts = pos.rows, pos.counts
        if lazy_q.size == 0:
            return cls(indptr_of(counts), indices, counts, text_q, text_rows)
        groups = ds.text_index().groups()
        G = int(groups.size.size)
        return cls(indptr_of(counts), indices, counts, text_q, text_rows, np.unique(lazy_q * G + lazy_g),
                   groups.group, G)

    def csr(self, glob_rows: np.ndarray) -> CSR:
        """(indptr, indices) of the queries ``glob_rows`` (ascending), for the search kernels
        (without the lazily excluded groups)."""
        ptr, ind = self.indptr, self.indices
        if glob_rows.size and glob_rows[-1] - glob_rows[0] + 1 == glob_rows.size:  # a contiguous range
            a, b = ptr[glob_rows[0]], ptr[glob_rows[-1] + 1]
            return ptr[glob_rows[0]:glob_rows[-1] + 2] - a, ind[a:b]
        counts = self.counts[glob_rows]
        starts = np.repeat(ptr[glob_rows], counts)
        within = np.arange(int(counts.sum())) - np.repeat(indptr_of(counts)[:-1], counts)
        return indptr_of(counts), ind[starts + within]

    def search(self, search: SearchFn, glob_rows: np.ndarray, k: int, num_docs: int,
               budget: int) -> Tuple[np.ndarray, np.ndarray, Optional[CSR]]:
        """The top ``k`` of the queries ``glob_rows`` (ascending) with every exclusion removed.

        Searches with the CSR, then checks the retrieved rows: one whose text group the query
        excludes lazily is added to that query's exclusions and the query is searched again,
        until no searched ranking (``search``'s third output) holds such a row.  Excluding rows that were not retrieved
        changes no top-``k``, so this is the search with every group excluded up front.  From
        the third search of a query on, a deeper probe (``k * 4**round``, at most ``budget``
        candidates in all) first collects more of the group's rows, so a group of m rows ranked
        first takes O(log(m / k)) searches.  Returns (scores, ids) and, when queries were searched
        again, the final exclusion CSR of all of ``glob_rows`` (else None).
        """
        cs, ci, ids = search(None, k, self.csr(glob_rows))
        if self.lazy_keys.size == 0:
            return cs, ci, None
        fq, fr = self._hits(glob_rows, np.arange(glob_rows.size), ids)
        if fq.size == 0:
            return cs, ci, None
        pending = np.unique(fq)
        rnd = 0
        while pending.size:
            rnd += 1
            ex = self._merged(glob_rows, pending, fq, fr)
            depth = min(num_docs, k * 4 ** (rnd - 1), max(k, budget // pending.size))
            if depth > k:  # probe deeper: more of the groups' rows per search
                _, _, pids = search(pending, depth, ex)
                pq, pr = self._hits(glob_rows, pending, pids)
                if pq.size:
                    fq, fr = np.concatenate([fq, pq]), np.concatenate([fr, pr])
                    ex = self._merged(glob_rows, pending, fq, fr)
            s2, i2, ids2 = search(pending, k, ex)
            hq, hr = self._hits(glob_rows, pending, ids2)
            if np.isin(hq * np.int64(self.group.size) + hr, fq * np.int64(self.group.size) + fr).any():
                raise RuntimeError("the retriever returned a row it was asked to exclude (its search must honour "
                                   "exclude=); duplicate-text exclusion cannot converge")
            ok = ~np.isin(pending, hq)
            cs[pending[ok]] = s2[ok]
            ci[pending[ok]] = i2[ok]
            fq, fr = np.concatenate([fq, hq]), np.concatenate([fr, hr])
            pending = np.unique(hq)
        return cs, ci, self._merged(glob_rows, np.arange(glob_rows.size), fq, fr)

    def _hits(self, glob_rows: np.ndarray, sub: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(batch position, row) of the rows in ``ids`` (len(sub), w) whose group the query
        ``glob_rows[sub[i]]`` excludes lazily; unique pairs, sorted."""
        valid = ids >= 0
        qpos = np.broadcast_to(sub[:, None], ids.shape)[valid]
        rows = ids[valid]
        key = glob_rows[qpos] * self.num_groups + self.group[rows]
        at = np.minimum(np.searchsorted(self.lazy_keys, key), self.lazy_keys.size - 1)
        hit = self.lazy_keys[at] == key
        pair = np.unique(qpos[hit] * np.int64(self.group.size) + rows[hit])
        return pair // self.group.size, pair % self.group.size

    def _merged(self, glob_rows: np.ndarray, sub: np.ndarray, fq: np.ndarray, fr: np.ndarray) -> CSR:
        """The CSR of the queries ``glob_rows[sub]`` (``sub`` ascending) with the rows ``fr``
        found for batch positions ``fq`` added."""
        ptr, ind = self.csr(glob_rows[sub])
        mine = np.isin(fq, sub)
        q = np.concatenate([np.repeat(np.arange(sub.size), np.diff(ptr)), np.searchsorted(sub, fq[mine])])
        order = np.argsort(q, kind="stable")
        return indptr_of(np.bincount(q, minlength=sub.size)), np.concatenate([ind, fr[mine]])[order]


def _exclusions(ds: RetrievalDataset, pos_q: np.ndarray, pos_rows: np.ndarray, exclude_self: bool,
                exclude_same_text: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-query rows to exclude besides the positives: the query's own document (same id)
    and documents whose text equals the query or one of its positives (every group expanded).

    ``pos_q`` / ``pos_rows`` are the positives as flat (query index, corpus row) pairs.  Returns
    the extra exclusions the same way, sorted by query then row, without duplicates and without
    the query's positives; then, as (query index, row) pairs, the first corpus row whose text
    equals each query's text when it is not one of its positives (sentence-transformers 6.3
    drops that document but it still takes a candidate slot: see :func:`_slots_taken`).
    """
    return _split_exclusions(ds, pos_q, pos_rows, exclude_self, exclude_same_text,
                             int(np.iinfo(np.int64).max))[:4]


def _split_exclusions(ds: RetrievalDataset, pos_q: np.ndarray, pos_rows: np.ndarray, exclude_self: bool,
                      exclude_same_text: bool, expand_max: int) -> Tuple[np.ndarray, ...]:
    """:func:`_exclusions` with the text groups larger than ``expand_max`` rows left unexpanded:
    returns also (query index, group) pairs of those, sorted.  O(N + Q + positives + expanded rows),
    no per-query Python."""
    empty = np.zeros(0, np.int64)
    qs: List[np.ndarray] = []
    rs: List[np.ndarray] = []
    tq = tr = lazy_q = lazy_g = empty
    if exclude_self:
        own = ds._own_rows()
        hit = np.flatnonzero(own >= 0)
        qs.append(hit)
        rs.append(own[hit])
    if exclude_same_text and ds.num_docs:
        lookup = ds.text_index()
        tg = lookup.groups()
        G = np.int64(tg.size.size)
        qg = lookup.group_of(ds.query_texts)
        tq = np.flatnonzero(qg >= 0)
        tr = tg.first[qg[tq]]
        pg = tg.group[pos_rows]
        shared = tg.size[pg] > 1  # a positive whose text other rows share
        key = np.unique(np.concatenate([tq * G + qg[tq], pos_q[shared] * G + pg[shared]]))
        pair_q, pair_g = key // G, key % G
        small = tg.size[pair_g] <= expand_max
        sq, sg = pair_q[small], pair_g[small]
        cnt = tg.size[sg]
        within = np.arange(int(cnt.sum())) - np.repeat(indptr_of(cnt)[:-1], cnt)
        qs.append(np.repeat(sq, cnt))
        rs.append(tg.members[np.repeat(tg.indptr[sg], cnt) + within])
        lazy_q, lazy_g = pair_q[~small], pair_g[~small]
    eq = np.concatenate(qs) if qs else empty
    er = np.concatenate(rs) if rs else empty
    base = np.int64(ds.num_docs + 1)
    pos_key = pos_q * base + pos_rows
    not_pos = ~np.isin(tq * base + tr, pos_key)  # a positive whose text is the query's holds its slot already
    tq, tr = tq[not_pos], tr[not_pos]
    if eq.size == 0:
        return eq, er, tq, tr, lazy_q, lazy_g
    key = np.unique(eq * base + er)  # sorted, no duplicates
    key = key[~np.isin(key, pos_key)]
    return key // base, key % base, tq, tr, lazy_q, lazy_g


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

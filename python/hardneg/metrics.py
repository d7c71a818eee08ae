"""Retrieval metrics with trec_eval semantics: :class:`Qrels` and :func:`evaluate`.

Numbers equal pytrec_eval (trec_eval 9.x) to 1e-9; the metric kernels run in
C++ (``cpp/metrics.cpp``), multithreaded over queries.  See ``docs/metrics.md``
for the exact semantics (ordering of run dicts, the array form, which queries
count in the mean).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from hardneg import _core
from hardneg._arrays import id_rows, is_torch
from hardneg._io import open_text
from hardneg._threads import resolve_num_threads
from hardneg._validate import check_bool, check_int

# metric kinds, as in cpp/metrics.h; they cross into C++ by their trec_eval names
_NDCG, _RR, _RECALL, _P, _AP, _RPREC, _SUCCESS, _HITS = range(8)
_KIND_NAMES = ("ndcg", "recip_rank", "recall", "P", "map", "Rprec", "success", "hits")

VALID_METRICS = (
    "ndcg@k", "ndcg", "mrr@k", "recip_rank", "recall@k", "p@k", "map", "map@k", "r-precision", "success@k",
    "hit_rate@k", "hits@k",
    # trec_eval / pytrec_eval spellings
    "ndcg_cut_k", "recall_k", "P_k", "map_cut_k", "Rprec", "success_k",
    # ir_measures spellings
    "nDCG@k", "RR", "RR@k", "R@k", "P@k", "AP", "AP@k", "Success@k",
)
CONVENTIONS = ("trec_eval", "ranx")

_CUT = re.compile(r"^(?P<name>[a-z_\-]+?)(?:@|_|\.)(?P<k>[+-]?\d+)$")
_CUT_NAMES = {
    "ndcg": _NDCG, "ndcg_cut": _NDCG, "mrr": _RR, "recip_rank": _RR, "rr": _RR, "recall": _RECALL, "r": _RECALL,
    "p": _P, "precision": _P, "map": _AP, "map_cut": _AP, "ap": _AP, "success": _SUCCESS, "hit_rate": _SUCCESS,
    "hits": _HITS,
}
_PLAIN_NAMES = {
    "ndcg": (_NDCG, 0), "recip_rank": (_RR, 0), "mrr": (_RR, 0), "rr": (_RR, 0), "map": (_AP, 0), "ap": (_AP, 0),
    "r-precision": (_RPREC, 0), "rprec": (_RPREC, 0), "r_precision": (_RPREC, 0),
}


def parse_metric(name: str) -> Tuple[int, int]:
    """``(kind, k)`` for a metric name (k = 0: no cutoff).  Raises ValueError listing the valid names."""
    if not isinstance(name, str):
        raise TypeError(f"metric names must be str, got {name!r}")
    low = name.strip().lower()
    if low in _PLAIN_NAMES:
        return _PLAIN_NAMES[low]
    m = _CUT.match(low)
    if m and m.group("name") in _CUT_NAMES:
        k = int(m.group("k"))
        if not 0 < k < 2**63:
            raise ValueError(f"metric {name!r}: k must be a positive integer below 2**63, got {k}")
        return _CUT_NAMES[m.group("name")], k
    raise ValueError(
        f"unknown metric {name!r}; valid metrics are {', '.join(VALID_METRICS)} "
        "(k a positive integer; '@', '_' or '.' before k; case-insensitive)"
    )


def _check_rel(v: Any, q: str, d: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"qrels relevance must be an integer, got {v!r} for query {q!r}, document {d!r}")
    v = int(v)
    if not -(2**31) <= v < 2**31:
        raise ValueError(f"qrels relevance {v} for query {q!r}, document {d!r} is out of the int32 range")
    return v


class Qrels:
    """Relevance judgements ``{query_id: {doc_id: relevance}}`` (integers), stored as CSR.

    Build with :meth:`from_dict` or :meth:`from_tsv`.  Ids are strings (other
    keys are converted with ``str``).  Queries with no judgement at all are
    dropped (trec_eval cannot see them either).  Lookup structures for run dicts
    and for each ``corpus_ids`` passed to :func:`evaluate` are built once and cached.
    """

    def __init__(self, query_ids: List[str], indptr: np.ndarray, docs: List[str], rels: np.ndarray):
        self._qids = list(query_ids)
        self._indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self._docs = list(docs)
        self._rels = np.ascontiguousarray(rels, dtype=np.int32)
        if (
            len(self._indptr) != len(self._qids) + 1
            or self._indptr[-1] != len(self._docs)
            or len(self._docs) != len(self._rels)
        ):
            raise ValueError("inconsistent qrels arrays")
        self._index = {q: i for i, q in enumerate(self._qids)}
        if len(self._index) != len(self._qids):
            raise ValueError("duplicate query ids in qrels")
        self._code_cache: Optional[tuple] = None
        self._qid_sorted: Optional[tuple] = None

    # ---- construction ----------------------------------------------------------
    @classmethod
    def from_dict(cls, qrels: Mapping[Any, Mapping[Any, int]]) -> "Qrels":
        """From ``{query_id: {doc_id: relevance}}`` (pytrec_eval / ranx / BEIR style)."""
        if isinstance(qrels, Qrels):
            return qrels
        if not isinstance(qrels, Mapping):
            raise TypeError(f"qrels must be a dict {{query_id: {{doc_id: relevance}}}}, got {type(qrels).__name__}")
        qids: List[str] = []
        indptr = [0]
        docs: List[str] = []
        rels: List[int] = []
        for q, judged in qrels.items():
            if not isinstance(judged, Mapping):
                raise TypeError(f"qrels[{q!r}] must be a dict {{doc_id: relevance}}, got {type(judged).__name__}")
            if not judged:
                continue
            q = q if isinstance(q, str) else str(q)
            for d, v in judged.items():
                docs.append(d if isinstance(d, str) else str(d))
                rels.append(_check_rel(v, q, d))
            qids.append(q)
            indptr.append(len(docs))
        return cls(qids, np.asarray(indptr, dtype=np.int64), docs, np.asarray(rels, dtype=np.int32))

    @classmethod
    def from_tsv(cls, path: Union[str, os.PathLike]) -> "Qrels":
        """Read a BEIR qrels tsv (``query-id  corpus-id  score``, header line) or TREC qrels
        (``qid  iter  docid  rel``), as :func:`read_qrels_rows` does.  A repeated (query,
        document) pair keeps the last value (like BEIR's loader).
        """
        out: Dict[str, Dict[str, int]] = {}
        for q, d, rel in read_qrels_rows(path):
            out.setdefault(q, {})[d] = rel
        return cls.from_dict(out)

    # ---- views -----------------------------------------------------------------
    @property
    def query_ids(self) -> List[str]:
        return list(self._qids)

    def __len__(self) -> int:
        return len(self._qids)

    def __contains__(self, qid: object) -> bool:
        return qid in self._index

    def __repr__(self) -> str:
        return f"Qrels({len(self._qids)} queries, {len(self._docs)} judgements)"

    def to_dict(self) -> Dict[str, Dict[str, int]]:
        p = self._indptr
        return {
            q: {self._docs[j]: int(self._rels[j]) for j in range(p[i], p[i + 1])} for i, q in enumerate(self._qids)
        }

    def num_relevant(self, relevance_level: int = 1) -> np.ndarray:
        """Relevant documents per query (judgement >= relevance_level), int64 (len(self),)."""
        rel = (self._rels >= relevance_level).astype(np.int64)
        c = np.concatenate([[0], np.cumsum(rel)])
        return c[self._indptr[1:]] - c[self._indptr[:-1]]

    def _query_of_entry(self) -> np.ndarray:
        return np.repeat(np.arange(len(self._qids), dtype=np.int64), np.diff(self._indptr))

    def _rows_for(self, query_ids: Any) -> np.ndarray:
        """Qrels query of each of ``query_ids`` (-1 when not judged), int64."""
        if self._qid_sorted is None:
            arr = np.asarray(self._qids, dtype=str) if self._qids else np.zeros(0, dtype="<U1")
            order = np.argsort(arr, kind="stable")
            self._qid_sorted = (arr[order], order.astype(np.int64))
        srt, order = self._qid_sorted
        qa = _id_array(query_ids, "query_ids")
        _check_unique(qa, "query_ids")
        out = np.full(len(qa), -1, dtype=np.int64)
        if len(srt) and len(qa):
            pos = np.searchsorted(srt, qa)
            ok = pos < len(srt)
            pos[~ok] = 0
            ok &= srt[pos] == qa
            out[ok] = order[pos[ok]]
        return out

    def _codes(self, corpus_ids: Any) -> Tuple[int, np.ndarray, np.ndarray]:
        """(N, codes, rels): entries sorted by (query, corpus row) with the row of each
        judged document in corpus_ids (-1 if absent).  Cached for the same corpus_ids object."""
        c = self._code_cache
        if c is not None and c[0] is corpus_ids and c[1] == len(corpus_ids):
            return c[2]
        if isinstance(corpus_ids, (list, tuple)) and all(isinstance(x, str) for x in corpus_ids[:1]):
            # a sequence of str: one C++ pass with a hash table over the judged ids
            n = len(corpus_ids)
            codes = _core.metrics_map_ids(corpus_ids, self._docs)
            if len(set(corpus_ids)) != n:
                _check_unique(np.asarray(corpus_ids, dtype=str), "corpus_ids")
        else:
            ca = _id_array(corpus_ids, "corpus_ids")
            _check_unique(ca, "corpus_ids")
            n = len(ca)
            docs = np.asarray(self._docs, dtype=str) if self._docs else np.zeros(0, dtype="<U1")
            udocs, inv = np.unique(docs, return_inverse=True)
            ucode = np.full(len(udocs), -1, dtype=np.int64)
            if len(udocs) and n:
                # one binary search per corpus id into the (small) judged set: no sort of the corpus
                pos = np.searchsorted(udocs, ca)
                ok = pos < len(udocs)
                pos[~ok] = 0
                ok &= udocs[pos] == ca
                rows = np.nonzero(ok)[0][::-1]  # first occurrence wins
                ucode[pos[rows]] = rows
            codes = ucode[np.asarray(inv).reshape(-1)]
        order = np.lexsort((codes, self._query_of_entry()))
        res = (n, np.ascontiguousarray(codes[order]), np.ascontiguousarray(self._rels[order]))
        self._code_cache = (corpus_ids, len(corpus_ids), res)
        return res


def _id_array(ids: Any, name: str) -> np.ndarray:
    """1-D numpy str array from a list / array of ids (integers become their decimal string).

    Ids must be all str or all integers: a mix (``[1, "1"]``) raises TypeError naming ``name``.
    """
    if is_torch(ids):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, (list, tuple)):
        _check_id_types(ids, name)
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "UiuO" or (a.dtype.kind == "O" and len(a)):
        if a.dtype.kind == "O":
            _check_id_types(a.tolist(), name)
        else:
            raise ValueError(f"{name} must hold str or integer ids, got dtype {a.dtype}")
    if a.dtype.kind not in "U":
        a = a.astype(str)
    return a


def _check_id_types(ids: Sequence, name: str) -> None:
    kinds = {"str" if isinstance(x, str) else "int" if isinstance(x, (int, np.integer))
             and not isinstance(x, (bool, np.bool_)) else type(x).__name__ for x in ids}
    if len(kinds) > 1 or (kinds and kinds != {"str"} and kinds != {"int"}):
        raise TypeError(f"{name} must be all str or all integer ids, got a mix of {', '.join(sorted(kinds))}")


def _check_unique(a: np.ndarray, name: str) -> None:
    """ValueError naming ``name`` and one repeated id if the str array ``a`` has one."""
    if len(a) < 2:
        return
    srt = np.sort(a, kind="stable")
    dup = np.nonzero(srt[1:] == srt[:-1])[0]
    if len(dup):
        raise ValueError(f"{name} holds {str(srt[dup[0]])!r} more than once: each id must name one row")


def _drop_identical(ids: np.ndarray, query_ids: Any, corpus_ids: Any) -> np.ndarray:
    """ids with every entry naming the row's own query id set to -1 (BEIR's rule)."""
    qa = _id_array(query_ids, "query_ids")
    ca = _id_array(list(corpus_ids) if isinstance(corpus_ids, tuple) else corpus_ids, "corpus_ids")
    if not len(ca) or not len(qa):
        return ids
    order = np.argsort(ca, kind="stable")
    srt = ca[order]
    pos = np.searchsorted(srt, qa).clip(0, len(srt) - 1)
    own = np.where(srt[pos] == qa, order[pos], -1)  # corpus row of each query id, or -1
    hit = (ids == own[:, None]) & (own[:, None] >= 0)
    if not hit.any():
        return ids
    out = np.array(ids, dtype=np.int64, copy=True)
    out[hit] = -1
    return out


def read_qrels_rows(path: Union[str, os.PathLike]) -> List[Tuple[str, str, int]]:
    """The (query id, document id, relevance) rows of a qrels file, in file order.

    BEIR (``query-id  corpus-id  score``) or TREC (``qid  iter  docid  rel``) lines, detected per
    line by the number of fields; tab-separated lines are split on tabs only (ids may hold
    spaces), others on whitespace.  A first line whose relevance is not a number is a header.
    Relevance must be an integer (``1.0`` is accepted); ``.gz`` files are read as well.
    """
    rows: List[Tuple[str, str, int]] = []
    with open_text(path) as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if len(parts) == 3:
                q, d, r = parts
            elif len(parts) == 4:
                q, _, d, r = parts
            else:
                raise ValueError(f"{path}:{ln}: expected 3 (BEIR) or 4 (TREC) fields, got {len(parts)}")
            try:
                rel = float(r)
            except ValueError:
                if ln == 1:
                    continue  # header
                raise ValueError(f"{path}:{ln}: relevance {r!r} is not an integer") from None
            if not math.isfinite(rel) or rel != int(rel):
                raise ValueError(f"{path}:{ln}: relevance {r!r} is not an integer")
            rows.append((q.strip(), d.strip(), int(rel)))
    return rows


def read_run(path: Union[str, os.PathLike]) -> Dict[str, Dict[str, float]]:
    """Read a run file into ``{qid: {docid: score}}``.

    TREC lines (``qid Q0 docid rank score tag``) or 3-column lines (``qid docid score``, a
    header line allowed first); ``.gz`` files are read as well.  A repeated (qid, docid) pair
    raises ValueError, as in trec_eval."""
    run: Dict[str, Dict[str, float]] = {}
    with open_text(path) as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 6:
                q, _, d, _, s, _ = parts
            elif len(parts) == 3:
                q, d, s = parts
            else:
                raise ValueError(f"{path}:{ln}: expected 'qid Q0 docid rank score tag' or 'qid docid score', "
                                 f"got {len(parts)} fields")
            try:
                score = float(s)
            except ValueError:
                if ln == 1 and len(parts) == 3:
                    continue  # header
                raise ValueError(f"{path}:{ln}: score must be a number, got {s!r}") from None
            inner = run.get(q)
            if inner is None:
                inner = run[q] = {}
            if d in inner:
                raise ValueError(f"{path}:{ln}: document {d!r} appears twice for query {q!r}")
            inner[d] = score
    return run


def _ids_of(run: Any) -> np.ndarray:
    """The ids (Q, k) of an array run; the scores of a ``(scores, ids)`` tuple must be finite
    where an id is retrieved (they do not order anything, but NaN / inf there is a broken run)."""
    if not isinstance(run, tuple):
        return id_rows(run, "ids")
    if len(run) != 2:
        raise ValueError(f"run as a tuple must be (scores, ids), got {len(run)} items")
    ids = id_rows(run[1], "ids")
    s = run[0]
    if s is not None:
        s = np.asarray(s.detach().cpu().numpy() if is_torch(s) else s)
        if s.shape != ids.shape:
            raise ValueError(f"run scores {s.shape} and ids {ids.shape} differ in shape")
        if s.dtype.kind not in "fiu":
            raise TypeError(f"run scores must be numbers, got dtype {s.dtype}")
        bad = ~np.isfinite(s) & (ids >= 0)
        if bad.any():
            i, j = (int(x[0]) for x in np.nonzero(bad))
            raise ValueError(f"run scores must be finite: row {i}, column {j} holds {s[i, j]}")
    return ids


def evaluate(
    qrels: Union[Qrels, Mapping, str, os.PathLike],
    run: Any,
    metrics: Union[str, Sequence[str]] = ("ndcg@10", "recall@100", "map", "recip_rank"),
    per_query: bool = False,
    relevance_level: int = 1,
    *,
    query_ids: Optional[Sequence] = None,
    corpus_ids: Optional[Sequence] = None,
    convention: str = "trec_eval",
    ignore_identical_ids: bool = False,
    num_threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Evaluate a run against relevance judgements, with trec_eval semantics.

    Parameters
    ----------
    qrels : Qrels, dict ``{qid: {docid: int}}`` or path of a qrels file
    run : one of
        * dict ``{qid: {docid: score}}`` (pytrec_eval / ranx style): documents are
          ranked as trec_eval ranks them (score as float32 descending, ties by
          docid in descending byte order);
        * path of a TREC run file (``qid Q0 docid rank score tag``), same ordering;
        * ids ``int64 (Q, k)`` (or the ``(scores, ids)`` tuple of :func:`hardneg.topk`):
          row i ranks the corpus rows ``ids[i]`` in column order (best first; -1
          padding and repeated ids are skipped).  Needs ``query_ids`` (Q,) and
          ``corpus_ids`` (N,); no Python dict is built.
    metrics : str or list of str
        ``ndcg@k``, ``ndcg``, ``mrr@k`` (recip_rank with the run cut at k),
        ``recip_rank``, ``recall@k``, ``p@k``, ``map``, ``map@k`` (trec map_cut),
        ``r-precision``, ``success@k`` / ``hit_rate@k`` (trec success_k: 1 if a
        relevant document is in the top k), ``hits@k`` (ranx: the number of relevant
        documents in the top k); trec_eval names ``ndcg_cut_10``, ``P_10``,
        ``recall_100``, ``map_cut_100``, ``Rprec``, ``success_1`` and ir_measures names
        ``nDCG@10``, ``RR``, ``RR@10``, ``R@100``, ``P@10``, ``AP``, ``AP@100``,
        ``Success@10`` are accepted too (case-insensitive).
    per_query : bool or "dict"
        False: ``{metric: mean}``.  True: ``{metric: float64 array}`` aligned with the
        run's queries (the rows of ids, or the run dict's query order), NaN for a
        query that is not evaluated.  ``"dict"``: pytrec_eval's form ``{query_id:
        {metric: value}}`` over the evaluated queries.
    relevance_level : int
        Judgements >= this are relevant for the binary metrics; nDCG uses the raw
        judgements as gains (negative ones count 0), as trec_eval does.
    convention : {"trec_eval", "ranx"}
        "trec_eval": the queries evaluated are those in both the run and the qrels;
        a judged query with no relevant document scores 0.  "ranx": every qrels query
        with at least one relevant document counts, a query missing from the run
        scoring 0; run queries without a relevant document are ignored.
    ignore_identical_ids : bool
        BEIR's rule: a retrieved document whose id equals the query id is dropped from
        that query's ranking before evaluation (for corpora that hold the queries).
    num_threads : int, optional

    Returns
    -------
    dict ``{metric name as given: float}`` (or arrays with ``per_query=True``).
    The mean over no query is NaN.
    """
    if not isinstance(qrels, Qrels):
        qrels = Qrels.from_tsv(qrels) if isinstance(qrels, (str, os.PathLike)) else Qrels.from_dict(qrels)
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError("metrics must name at least one metric")
    specs = [parse_metric(n) for n in names]
    kinds = [_KIND_NAMES[s[0]] for s in specs]
    ks = [s[1] for s in specs]
    level = check_int(relevance_level, "relevance_level", -(2**31), 2**31 - 1)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if not (isinstance(per_query, str) and per_query == "dict"):
        per_query = check_bool(per_query, "per_query (True, False or \"dict\")")
    ignore_identical_ids = check_bool(ignore_identical_ids, "ignore_identical_ids")
    nt = resolve_num_threads(num_threads)

    if isinstance(run, (str, os.PathLike)):
        run = read_run(run)
    if isinstance(run, Mapping):
        out, row_query, run_qids = _scores_of_dict_run(run, qrels, level, kinds, ks, nt, ignore_identical_ids,
                                                       convention)
    else:
        out, row_query, run_qids = _scores_of_ids_run(run, qrels, level, kinds, ks, nt, ignore_identical_ids,
                                                      query_ids, corpus_ids, per_query == "dict")
    n_missing = _ranx_counting(out, row_query, qrels, level) if convention == "ranx" else 0
    return _summary(out, names, per_query, run_qids, n_missing)


def _scores_of_dict_run(run: Mapping, qrels: Qrels, level: int, kinds: List[int], ks: List[int], nt: int,
                        ignore_identical_ids: bool, convention: str):
    """``(scores (metrics, queries), qrels row per run query or None, run query ids)`` of a run dict."""
    if not isinstance(run, dict):
        run = dict(run)
    if ignore_identical_ids:
        run = {q: ({d: v for d, v in inner.items() if d != q} if isinstance(inner, Mapping) and q in inner
                   else inner) for q, inner in run.items()}
    out = _core.metrics_eval_dict(run, qrels._index, qrels._indptr, qrels._docs, qrels._rels, level, kinds, ks, nt)
    row_query = None
    if convention == "ranx":
        idx = qrels._index
        row_query = np.fromiter((idx.get(q, -1) for q in run), dtype=np.int64, count=len(run))
    return out, row_query, list(run)


def _scores_of_ids_run(run: Any, qrels: Qrels, level: int, kinds: List[int], ks: List[int], nt: int,
                       ignore_identical_ids: bool, query_ids: Optional[Sequence], corpus_ids: Optional[Sequence],
                       want_qids: bool):
    """``(scores (metrics, queries), qrels row per run row, run query ids or None)`` of an ids array."""
    if not (isinstance(run, (tuple, list, np.ndarray)) or is_torch(run)):
        raise TypeError(
            "run must be a dict {qid: {docid: score}}, a TREC run file path, an ids array (Q, k) "
            f"or a (scores, ids) tuple, got {type(run).__name__}"
        )
    if query_ids is None or corpus_ids is None:
        raise ValueError("the array form of run needs query_ids (Q,) and corpus_ids (N,)")
    ids = _ids_of(run)
    row_query = qrels._rows_for(query_ids)
    if len(row_query) != ids.shape[0]:
        raise ValueError(f"query_ids has {len(row_query)} entries but ids has {ids.shape[0]} rows")
    n, codes, rels = qrels._codes(corpus_ids)
    if ignore_identical_ids:
        ids = _drop_identical(ids, query_ids, corpus_ids)
    run_qids = [str(q) for q in _id_array(query_ids, "query_ids")] if want_qids else None
    out = _core.metrics_eval_ids(ids, n, row_query, qrels._indptr, codes, rels, level, kinds, ks, nt)
    return out, row_query, run_qids


def _ranx_counting(out: np.ndarray, row_query: np.ndarray, qrels: Qrels, level: int) -> int:
    """ranx's convention on ``out`` in place: run queries without a relevant document are not
    counted (NaN); returns the number of qrels queries with one that the run misses (they score 0)."""
    has_rel = qrels.num_relevant(level) > 0
    counted = row_query >= 0
    counted[counted] = has_rel[row_query[counted]]
    out[:, ~counted] = np.nan
    seen = np.zeros(len(qrels), dtype=bool)
    seen[row_query[row_query >= 0]] = True
    return int(np.count_nonzero(has_rel & ~seen))


def _summary(out: np.ndarray, names: List[str], per_query: Any, run_qids: Optional[Sequence],
             n_missing: int) -> Dict[str, Any]:
    """``evaluate``'s result from the per-query scores ``out`` (NaN: not evaluated)."""
    if per_query == "dict":
        evaluated = ~np.isnan(out[0]) if out.shape[1] else np.zeros(0, dtype=bool)
        return {q: {name: float(out[m][i]) for m, name in enumerate(names)}
                for i, q in enumerate(run_qids) if evaluated[i]}
    if per_query:
        return {name: out[m] for m, name in enumerate(names)}
    res: Dict[str, Any] = {}
    valid = ~np.isnan(out[0]) if out.shape[1] else np.zeros(0, dtype=bool)
    denom = int(np.count_nonzero(valid)) + n_missing
    for m, name in enumerate(names):
        res[name] = float(out[m][valid].sum() / denom) if denom else math.nan
    return res

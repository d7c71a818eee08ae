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

See ``docs/mining.md`` for a worked example.
"""
from __future__ import annotations

import gzip
import io
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from hardneg._arrays import is_torch
from hardneg._threads import resolve_num_threads
from hardneg.datasets import RetrievalDataset
from hardneg.topk import topk

__all__ = ["mine_hard_negatives", "MinedNegatives", "load_negatives",
           "RETRIEVERS", "SAMPLING", "FORMATS", "POSITIVE_ANCHORS"]

_IN_PLACE_BYTES = 256 << 20  # memory-mapped corpora up to this size are searched in place (ooc's block size)
_REUSE_TOKENS = itertools.count(1)
_FAST_PATH = True  # tests turn it off to compare the shallow-search path with the full one
# First-search depth beyond the `need` survivors: need + max(_FAST_SLACK, need // 2).  SciFact train
# (need = 18), 2 threads, depth 30 against 42: 0.92x the time with relative_margin=0.05 (195
# queries searched again instead of 152) and 0.8x without a filter (none again); a shallow
# first search is also cheap enough for the int8 screen (docs/topk.md).
_FAST_SLACK = 12

RETRIEVERS = ("dense", "bm25", "hybrid")
SAMPLING = ("top", "random", "softmax")
FORMATS = ("sentence-transformers", "triplet", "flagembedding", "tevatron", "ids")
POSITIVE_ANCHORS = ("min", "max", "mean")
ST_RULES = ("6.3", "6.2")  # sentence-transformers releases whose candidate rule can be followed
METRICS = ("cosine", "ip")


# ---------------------------------------------------------------------------------------------- helpers


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar (rate and ETA) when tqdm is installed and ``enabled``; else a no-op."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="q", dynamic_ncols=True, leave=False, file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm is optional
            pass

    class _Null:
        def update(self, n=1):
            pass

        def close(self):
            pass

    return _Null()


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(value: Any, name: str, positive: bool = False) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number or None, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return v


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


def _to_numpy_rows(x: Any, name: str) -> np.ndarray:
    if is_torch(x):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if not p.is_file():
            raise FileNotFoundError(f"{name} file {p} not found")
        if p.suffix != ".npy":
            raise ValueError(f"{name} must be a .npy file, got {p.name}")
        x = np.load(p, mmap_mode="r")  # memory-mapped: the corpus is never read into RAM as a whole
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {a.shape}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must hold floats, got {a.dtype}")
    return a


def _encode(encoder: Callable, texts: Sequence[str], batch: int, desc: str, progress: bool) -> np.ndarray:
    out = []
    bar = _progress(len(texts), desc, progress)
    for s in range(0, len(texts), batch):
        chunk = list(texts[s:s + batch])
        e = encoder(chunk)
        e = _to_numpy_rows(e, f"encoder output for {desc}")
        if e.shape[0] != len(chunk):
            raise ValueError(f"encoder returned {e.shape[0]} rows for {len(chunk)} texts")
        out.append(np.asarray(e, dtype=np.float32))
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _sort_rows(scores: np.ndarray, ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-row order: valid entries first, by descending score, then ascending id."""
    s = np.where(valid, scores.astype(np.float64), -np.inf)
    i = np.where(valid, ids, np.iinfo(np.int64).max)
    rows = np.broadcast_to(np.arange(scores.shape[0])[:, None], scores.shape)
    order = np.lexsort((i.ravel(), -s.ravel(), (~valid).ravel(), rows.ravel()))
    return (order % scores.shape[1]).reshape(scores.shape) if scores.shape[1] else order.reshape(scores.shape)


def _take(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, order, axis=1)


# ---------------------------------------------------------------------------------------------- retrievers


# (path, size, mtime) of a .npy file -> whether its rows are unit-norm: repeated runs on the
# same embedding files skip the pass over them.
_UNIT_CACHE: Dict[Tuple[int, int, int, int], bool] = {}


def _file_key(source: Any) -> Optional[Tuple[int, int, int, int]]:
    """(device, inode, size, mtime) of a file path, None for anything else: changes when the file does."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        st = os.stat(source)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _unit_rows_of(a: np.ndarray, source: Any) -> bool:
    """_unit_rows, remembered per unchanged .npy file when ``source`` is its path."""
    key = _file_key(source)
    if key is not None:
        if key not in _UNIT_CACHE:
            if len(_UNIT_CACHE) > 64:
                _UNIT_CACHE.clear()
            _UNIT_CACHE[key] = _unit_rows(a)
        return _UNIT_CACHE[key]
    return _unit_rows(a)


def _unit_rows(a: np.ndarray, tol: float = 1e-5) -> bool:
    """True when every row has unit L2 norm (within tol on the squared norm); one pass, no copy."""
    from hardneg import _core
    from hardneg._arrays import vectors_for_kernel

    if a.shape[0] == 0:
        return True
    v, bf16 = vectors_for_kernel(a, "embeddings")
    if bf16 or v.dtype != np.float32:
        return False  # low-precision rows are never normalised to 1e-5
    n = _core.sqnorms(v, False)
    return bool(np.all(np.abs(n - 1.0) <= tol))


class _Dense:
    """Exact inner-product / cosine search with hardneg's top-k kernel."""

    name = "dense"

    def __init__(self, corpus: np.ndarray, queries: np.ndarray, metric: str, num_threads: int, index: Any = None,
                 unit: Optional[Callable[[], bool]] = None):
        self.index = index
        if isinstance(corpus, np.memmap) and corpus.nbytes <= _IN_PLACE_BYTES:
            # No larger than one streaming block: search the mapping in place with one kernel
            # call (still never copied) instead of streaming it block by block.
            corpus = np.asarray(corpus)
        if index is not None:
            metric = index.metric  # the index decides how it scores; positives are scored alike
        elif metric == "cosine" and (unit() if unit is not None else (_unit_rows(corpus) and _unit_rows(queries))):
            # Already L2-normalised (as sentence-transformers' embeddings are): cosine = inner
            # product up to the last bit, and the inner-product kernel skips the norms.
            metric = "ip"
        self.corpus = corpus
        self.queries = queries
        self.metric = metric
        self.num_threads = num_threads
        # one token per miner run: its searches may share the kernel's coded (bf16 / int8) copy of the corpus
        # (the corpus is not modified while mining)
        self.reuse_token = next(_REUSE_TOKENS)

    def _q(self, rows) -> np.ndarray:
        """Query rows: a slice (a view) or an int array (a contiguous copy)."""
        return self.queries[rows]

    def search(self, rows: slice, k: int, exclude):
        if self.index is not None:  # faiss, out-of-core or sharded search: same conventions
            s, i = self.index.search(self._q(rows), k=k, exclude=exclude)
            return np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64)
        # hn.topk checks the corpus for NaN/Inf inside the kernel, in the same pass as the search
        if type(self.corpus) is np.ndarray:
            from hardneg.topk import _topk_kernel

            return _topk_kernel(self._q(rows), self.corpus, k, self.metric, exclude, self.num_threads,
                                self.reuse_token)
        return topk(self._q(rows), self.corpus, k=k, metric=self.metric, exclude=exclude,
                    num_threads=self.num_threads)

    def pair_scores(self, rows: slice, qidx: np.ndarray, docs: np.ndarray) -> np.ndarray:
        if docs.size == 0:
            return np.zeros(0, np.float32)
        qa = np.asarray(self._q(rows), dtype=np.float32)
        if isinstance(self.corpus, np.memmap):
            order = np.argsort(docs, kind="stable")  # sorted reads from a memory-mapped corpus
            d = np.empty((docs.shape[0], qa.shape[1]), dtype=np.float32)
            d[order] = np.asarray(self.corpus[docs[order]], dtype=np.float32)
            return self._pair_dots(qa[qidx], d)
        # In chunks of rows: the temporaries stay small (large ones come as fresh pages from
        # the OS on every call); every score depends on its own row only, so chunking
        # changes nothing in the result.
        step = max(1, (96 << 10) // max(1, 4 * qa.shape[1]))
        out = np.empty(docs.shape[0], np.float32)
        for a in range(0, docs.shape[0], step):
            b = min(docs.shape[0], a + step)
            out[a:b] = self._pair_dots(qa[qidx[a:b]], np.asarray(self.corpus[docs[a:b]], dtype=np.float32))
        return out

    def _pair_dots(self, q: np.ndarray, d: np.ndarray) -> np.ndarray:
        s = np.einsum("ij,ij->i", q, d, dtype=np.float32)
        if self.metric == "cosine":
            qn = np.linalg.norm(q, axis=1)
            dn = np.linalg.norm(d, axis=1)
            den = qn * dn
            s = np.where(den > 0, s / np.where(den > 0, den, 1), 0).astype(np.float32)
        return s


class _BM25:
    """hn.BM25 over the corpus texts (built here unless a built index is passed)."""

    name = "bm25"

    def __init__(self, bm, query_texts: List[str], num_threads: int):
        self.bm = bm
        self.query_texts = query_texts
        self.num_threads = num_threads

    def _texts(self, rows) -> List[str]:
        if isinstance(rows, slice):
            return self.query_texts[rows]
        return [self.query_texts[i] for i in rows.tolist()]

    def search(self, rows, k: int, exclude):
        s, i = self.bm.search(self._texts(rows), k=k, exclude=exclude, num_threads=self.num_threads)
        return np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64)

    def pair_scores(self, rows: slice, qidx: np.ndarray, docs: np.ndarray) -> np.ndarray:
        if docs.size == 0:
            return np.zeros(0, np.float32)
        texts = self._texts(rows)
        qs = [texts[j] for j in qidx.tolist()]
        try:  # (queries (P,), doc_ids (P, 1)) -> (P, 1)
            out = np.asarray(self.bm.score(qs, docs.reshape(-1, 1)), dtype=np.float32)
            if out.size == docs.size:
                return out.reshape(-1)
        except (TypeError, ValueError):
            pass
        out = np.asarray(self.bm.score(qs, docs), dtype=np.float32)  # (P,) pairs
        return out.reshape(-1)


class _Hybrid:
    """RRF of the dense and BM25 rankings (each searched to the same depth)."""

    name = "hybrid"

    def __init__(self, dense: _Dense, bm25: _BM25, rrf_k: int):
        self.dense, self.bm25, self.k = dense, bm25, rrf_k
        self._last: Dict[str, Any] = {}

    def search(self, rows: slice, k: int, exclude):
        ds_, di = self.dense.search(rows, k, exclude)
        bs, bi = self.bm25.search(rows, k, exclude)
        self._last = {"rows": rows, "dense": (ds_, di), "bm25": (bs, bi)}
        return _fuse_rrf([(ds_, di), (bs, bi)], self.k, k)

    def pair_scores(self, rows: slice, qidx: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """RRF score a positive would get: 1/(k + r) per run where r is the rank it would take
        among that run's retrieved (non-excluded) documents; 0 past the searched depth."""
        total = np.zeros(docs.shape[0], dtype=np.float64)
        for name, r in (("dense", self.dense), ("bm25", self.bm25)):
            s_run, i_run = self._last[name]
            ps = r.pair_scores(rows, qidx, docs)
            srow, irow = s_run[qidx], i_run[qidx]
            valid = irow >= 0
            beats = valid & ((srow > ps[:, None]) | ((srow == ps[:, None]) & (irow < docs[:, None])))
            nb = beats.sum(1)
            inside = (nb < srow.shape[1]) & (ps > (-np.inf if name == "dense" else 0))
            total += np.where(inside, 1.0 / (self.k + nb + 1), 0.0)
        return total.astype(np.float32)


def _fuse_rrf(runs, k: int, depth: int):
    """RRF of (scores, ids) runs with hn.fuse, padded to exactly ``depth`` columns."""
    from hardneg.fusion import fuse

    s, i = fuse(list(runs), method="rrf", k=k, depth=depth)
    s, i = np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64)
    if s.shape[1] < depth:
        pad = depth - s.shape[1]
        s = np.concatenate([s, np.full((s.shape[0], pad), -np.inf, np.float32)], 1)
        i = np.concatenate([i, np.full((i.shape[0], pad), -1, np.int64)], 1)
    return s[:, :depth], i[:, :depth]


def _build_bm25(bm25: Any, ds: RetrievalDataset):
    import hardneg

    if bm25 is not None and not isinstance(bm25, dict):
        if not (callable(getattr(bm25, "search", None)) and callable(getattr(bm25, "score", None))):
            raise TypeError(f"bm25 must be an hn.BM25 index or a dict of hn.BM25 arguments, got {type(bm25).__name__}")
        return bm25  # an index the caller built over ds.corpus_texts
    cls = getattr(hardneg, "BM25", None)
    if cls is None:
        raise ImportError("retriever 'bm25'/'hybrid' needs hn.BM25, which this build of hardneg does not have")
    bm = cls(**(bm25 or {}))
    bm.index(ds.corpus_texts)
    return bm


# ---------------------------------------------------------------------------------------------- exclusions


class _TextDuplicates:
    """Corpus rows sharing a text, and lookup of a query text in the corpus (hash + compare)."""

    def __init__(self, texts: List[str]):
        self.texts = texts
        h = np.fromiter((hash(t) for t in texts), dtype=np.int64, count=len(texts))
        self.order = np.argsort(h, kind="stable")
        self.sorted = h[self.order]

    def rows_with_text(self, text: str) -> List[int]:
        hv = hash(text)
        lo = int(np.searchsorted(self.sorted, hv, "left"))
        hi = int(np.searchsorted(self.sorted, hv, "right"))
        return [int(r) for r in self.order[lo:hi] if self.texts[r] == text]

    def duplicated_rows(self) -> set:
        """Rows whose hash is shared with another row (candidates for identical texts)."""
        if self.sorted.size < 2:
            return set()
        same = self.sorted[1:] == self.sorted[:-1]
        if not same.any():
            return set()
        idx = np.flatnonzero(same)
        return set(self.order[idx].tolist()) | set(self.order[idx + 1].tolist())


def _exclusions(ds: RetrievalDataset, pos_q: np.ndarray, pos_rows: np.ndarray, exclude_self: bool,
                exclude_same_text: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-query rows to exclude besides the positives: the query's own document (same id)
    and documents whose text equals the query or one of its positives.

    ``pos_q`` / ``pos_rows`` are the positives as flat (query index, corpus row) pairs.  Returns
    the extra exclusions the same way, sorted by query then row, without duplicates and without
    the query's positives; then, as (query index, row) pairs, the first corpus row whose text
    equals each query's text when it is not one of its positives (sentence-transformers 6.3
    drops that document but it still takes a candidate slot: see ``_SlotTakers``).  Only hash
    matches reach Python loops.
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
        dup = getattr(ds, "_text_duplicates", None)
        if dup is None:
            dup = _TextDuplicates(texts)
            ds._text_duplicates = dup  # cached: the corpus of a dataset does not change
        pq: List[int] = []
        pr: List[int] = []
        qh = np.fromiter((hash(t) for t in ds.query_texts), dtype=np.int64, count=ds.num_queries)
        hit = np.searchsorted(dup.sorted, qh, "right") > np.searchsorted(dup.sorted, qh, "left")
        for j in np.flatnonzero(hit).tolist():  # a hash match: compare the texts
            rows = dup.rows_with_text(ds.query_texts[j])
            pq.extend([j] * len(rows))
            pr.extend(rows)
            if rows:
                text_q.append(j)
                text_r.append(min(rows))
        dup_rows = dup.duplicated_rows()
        if dup_rows and pos_rows.size:
            shared = np.flatnonzero(np.isin(pos_rows, np.fromiter(dup_rows, dtype=np.int64, count=len(dup_rows))))
            for t in shared.tolist():  # a positive whose text other rows may share
                j, r = int(pos_q[t]), int(pos_rows[t])
                others = [x for x in dup.rows_with_text(texts[r]) if x != r]
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


# ---------------------------------------------------------------------------------------------- result


@dataclass
class MinedNegatives:
    """Hard negatives mined for each query of a dataset.

    Attributes
    ----------
    ids : int64 (Q, num_negatives)
        Corpus rows of the negatives, best first; -1 where a query got fewer.
        Row ``j`` is query ``dataset.query_ids[j]``.
    scores : float32 (Q, num_negatives)
        Their scores (the rescorer's when one was given); -inf where ids is -1.
    anchor_scores : float32 (Q,)
        The positive score each query's filters were measured against (its
        lowest-scoring positive by default); NaN for a query without positives.
    positive_scores : float32 (Q, num_negatives)  (property)
        ``anchor_scores`` aligned with each negative (``positive_scores - scores`` is
        the margin of each pair); NaN where ``ids`` is -1.
    positive_ids : list of int64 arrays
        Corpus rows of each query's positives.
    all_positive_scores : list of float32 arrays
        The scores of those positives.
    """

    ids: np.ndarray
    scores: np.ndarray
    anchor_scores: np.ndarray
    positive_ids: List[np.ndarray]
    all_positive_scores: List[np.ndarray]
    dataset: RetrievalDataset
    params: Dict[str, Any] = field(default_factory=dict)
    stats: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        return (f"MinedNegatives(queries={len(self)}, num_negatives={self.ids.shape[1]}, "
                f"found={int(self.counts.sum())}, retriever={self.params.get('retriever')!r})")

    @property
    def positive_scores(self) -> np.ndarray:
        """float32 (Q, num_negatives): the anchor positive score of each (query, negative) pair, NaN padded."""
        a = np.asarray(self.anchor_scores, dtype=np.float32)[:, None]
        return np.where(self.ids >= 0, a, np.float32(np.nan)).astype(np.float32)

    @property
    def counts(self) -> np.ndarray:
        """Negatives found per query, int64 (Q,)."""
        return (self.ids >= 0).sum(axis=1)

    @property
    def query_ids(self) -> List[str]:
        return self.dataset.query_ids

    def negative_doc_ids(self) -> List[List[str]]:
        """The negatives as corpus document ids, per query."""
        cid = self.dataset.corpus_ids
        return [[cid[r] for r in row if r >= 0] for row in self.ids.tolist()]

    # ------------------------------------------------------------------------------------- report

    def report(self, print_it: bool = False) -> str:
        """A text summary: counts, score distributions, filters, suspected false negatives, timings."""
        n = self.ids.shape[1]
        cnt = self.counts
        valid = self.ids >= 0
        neg = self.scores[valid].astype(np.float64)
        has_pos = np.array([p.size > 0 for p in self.positive_ids], dtype=bool)
        pos = self.anchor_scores[has_pos].astype(np.float64)
        anchor = np.broadcast_to(self.anchor_scores[:, None], self.ids.shape)
        diff = (anchor[valid] - self.scores[valid]).astype(np.float64)
        diff = diff[np.isfinite(diff)]
        lines = []
        p = self.params
        lines.append(f"hardneg mining report: retriever={p.get('retriever')}, {len(self)} queries, "
                     f"{self.dataset.num_docs} documents")
        rng = f"ranks {p.get('range_min')}..{p.get('range_max') - 1}" if p.get("range_max") else ""
        filt = ", ".join(f"{k}={p[k]}" for k in ("relative_margin", "absolute_margin", "max_score", "min_score")
                         if p.get(k) is not None) or "no score filter"
        lines.append(f"asked {n} negatives per query from {rng}, {filt}, sampling={p.get('sampling')}, "
                     f"positive_anchor={p.get('positive_anchor')}")
        lines.append(f"negatives found: {int(cnt.sum()):,} of {n * len(self):,}; "
                     f"queries with fewer than {n}: {int((cnt < n).sum())} "
                     f"(none at all: {int((cnt == 0).sum())}); queries without positives: {int((~has_pos).sum())}")
        lines.append("")
        fmt = "{:<8}{:>12}{:>12}{:>12}"
        lines.append(fmt.format("score", "positive", "negative", "difference"))
        lines.append(fmt.format("count", f"{pos.size:,}", f"{neg.size:,}", f"{diff.size:,}"))

        def stat(fn, a):
            return f"{fn(a):.4f}" if a.size else "-"

        for label, fn in (("mean", np.mean), ("std", np.std), ("min", np.min),
                          ("25%", lambda a: np.quantile(a, 0.25)), ("median", np.median),
                          ("75%", lambda a: np.quantile(a, 0.75)), ("max", np.max)):
            lines.append(fmt.format(label, stat(fn, pos), stat(fn, neg), stat(fn, diff)))
        lines.append("")
        for name, value in self.stats.get("filtered", {}).items():
            total = max(1, self.stats.get("candidates", 1))
            lines.append(f"skipped {value:,} candidates ({value / total:.2%}) due to {name}={p.get(name)}")
        # suspected false negatives: negatives scoring above a positive of their query
        above_low = above_high = 0
        examples = []
        for j in np.flatnonzero(cnt > 0):
            ps = self.all_positive_scores[j]
            if ps.size == 0:
                continue
            s = self.scores[j][self.ids[j] >= 0]
            lo, hi = float(np.min(ps)), float(np.max(ps))
            above_low += int((s > lo).sum())
            above_high += int((s > hi).sum())
            if len(examples) < 5 and s.size and s[0] > hi:
                examples.append((self.dataset.query_ids[j], self.dataset.corpus_ids[self.ids[j, 0]], float(s[0]), hi))
        lines.append(f"suspected false negatives: {above_low:,} negatives score above their query's lowest "
                     f"positive, {above_high:,} above its highest")
        for q, d, s, h in examples:
            lines.append(f"  e.g. query {q}: document {d} scores {s:.4f} > best positive {h:.4f}")
        if self.timings:
            lines.append("timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.timings.items()))
        text = "\n".join(lines)
        if print_it:
            print(text)
        return text

    def __str__(self) -> str:
        return self.report()

    # ------------------------------------------------------------------------------------- output

    def save(self, path: Union[str, os.PathLike], format: str = "sentence-transformers") -> int:
        """Write a training file (JSON lines; ``.gz`` paths are compressed). Returns the records written.

        Formats
        -------
        ``"sentence-transformers"``
            n-tuples ``{"anchor", "positive", "negative_1", ..., "negative_n"}``, one row per
            (query, positive), only queries with all n negatives (as its ``output_format="n-tuple"``);
            ``datasets.load_dataset("json", data_files=path)`` reads it.
        ``"triplet"``
            ``{"anchor", "positive", "negative"}``, one row per (query, positive, negative).
        ``"flagembedding"``
            ``{"query", "pos": [...], "neg": [...], "pos_scores", "neg_scores"}`` per query with a
            positive and at least one negative (FlagEmbedding's training file).
        ``"tevatron"``
            ``{"query_id", "query", "positive_passages", "negative_passages"}`` with passages
            ``{"docid", "title", "text"}`` (Tevatron's training file).
        ``"ids"``
            ``{"query_id", "positive_ids", "positive_scores", "negative_ids", "negative_scores"}`` for
            every query (document ids, no texts); :func:`load_negatives` reads it back.
        """
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        ds = self.dataset
        out = Path(path)
        if out.parent and not out.parent.exists():
            raise FileNotFoundError(f"output folder {out.parent} does not exist")
        n = self.ids.shape[1]
        cid = ds.corpus_ids
        written = 0
        opener = (lambda: io.TextIOWrapper(gzip.open(out, "wb"), encoding="utf-8")) if out.suffix == ".gz" \
            else (lambda: open(out, "w", encoding="utf-8"))
        need_text = format != "ids"
        texts = ds.corpus_texts if need_text else None
        with opener() as f:
            def emit(obj):
                nonlocal written
                f.write(json.dumps(obj, ensure_ascii=False))
                f.write("\n")
                written += 1

            for j, qid in enumerate(ds.query_ids):
                row = self.ids[j]
                k = int((row >= 0).sum())
                negs = row[:k].tolist()
                nscores = [float(x) for x in self.scores[j, :k]]
                pos = self.positive_ids[j].tolist()
                pscores = [float(x) for x in self.all_positive_scores[j]]
                qtext = ds.query_texts[j]
                if format == "ids":
                    emit({"query_id": qid, "positive_ids": [cid[p] for p in pos], "positive_scores": pscores,
                          "negative_ids": [cid[x] for x in negs], "negative_scores": nscores})
                elif format == "sentence-transformers":
                    if k < n:
                        continue
                    for p in pos:
                        rec = {"anchor": qtext, "positive": texts[p]}
                        for t, x in enumerate(negs, 1):
                            rec[f"negative_{t}"] = texts[x]
                        emit(rec)
                elif format == "triplet":
                    for p in pos:
                        for x in negs:
                            emit({"anchor": qtext, "positive": texts[p], "negative": texts[x]})
                elif format == "flagembedding":
                    if not pos or not negs:
                        continue
                    emit({"query": qtext, "pos": [texts[p] for p in pos], "neg": [texts[x] for x in negs],
                          "pos_scores": pscores, "neg_scores": nscores})
                else:  # tevatron
                    if not pos:
                        continue

                    def passage(r):
                        return {"docid": cid[r], "title": ds.corpus_titles[r], "text": ds.corpus_bodies[r]}

                    emit({"query_id": qid, "query": qtext, "positive_passages": [passage(p) for p in pos],
                          "negative_passages": [passage(x) for x in negs]})
        return written


def load_negatives(path: Union[str, os.PathLike], dataset: RetrievalDataset) -> MinedNegatives:
    """Read a file written with ``save(path, format="ids")`` back into :class:`MinedNegatives`.

    Rows follow ``dataset.query_ids``; queries absent from the file get no negatives.
    Unknown document ids raise ValueError.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"negatives file {p} not found")
    opener = (lambda: io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")) if p.suffix == ".gz" \
        else (lambda: open(p, encoding="utf-8"))
    recs = {}
    with opener() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                recs[str(obj["query_id"])] = obj
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{p}:{lineno}: not a record of format 'ids'") from None
    idx = dataset.doc_index
    width = max([len(r.get("negative_ids", [])) for r in recs.values()] + [0])
    q = dataset.num_queries
    ids = np.full((q, width), -1, np.int64)
    scores = np.full((q, width), -np.inf, np.float32)
    pos_ids, pos_scores = [], []
    for j, qid in enumerate(dataset.query_ids):
        r = recs.get(qid)
        if r is None:
            pos_ids.append(np.zeros(0, np.int64))
            pos_scores.append(np.zeros(0, np.float32))
            continue
        try:
            negs = [idx[d] for d in r.get("negative_ids", [])]
            pos = [idx[d] for d in r.get("positive_ids", [])]
        except KeyError as e:
            raise ValueError(f"{p}: document id {e.args[0]!r} is not in the dataset's corpus") from None
        ids[j, :len(negs)] = negs
        scores[j, :len(negs)] = r.get("negative_scores", [np.nan] * len(negs))
        pos_ids.append(np.array(pos, np.int64))
        pos_scores.append(np.array(r.get("positive_scores", [np.nan] * len(pos)), np.float32))
    anchor = np.array([np.min(s) if s.size else np.nan for s in pos_scores], np.float32)
    return MinedNegatives(ids, scores, anchor, pos_ids, pos_scores, dataset, params={"loaded_from": str(p)})


# ---------------------------------------------------------------------------------------------- mining


def mine_hard_negatives(
    ds: RetrievalDataset,
    retriever: str = "dense",
    *,
    corpus_embeddings: Any = None,
    query_embeddings: Any = None,
    encoder: Optional[Callable[[List[str]], Any]] = None,
    num_negatives: int = 8,
    range_min: int = 10,
    range_max: int = 100,
    relative_margin: Optional[float] = 0.05,
    absolute_margin: Optional[float] = None,
    max_score: Optional[float] = None,
    min_score: Optional[float] = None,
    sampling: str = "top",
    temperature: float = 0.05,
    rescorer: Optional[Callable[[List[str], List[str]], Any]] = None,
    seed: int = 0,
    num_threads: Optional[int] = None,
    positive_anchor: str = "min",
    metric: str = "cosine",
    bm25: Any = None,
    rrf_k: int = 60,
    exclude_self: bool = True,
    exclude_same_text: bool = True,
    index: Any = None,
    batch_size: int = 2048,
    encode_batch_size: int = 256,
    progress: bool = True,
    st_rule: str = "6.3",
) -> MinedNegatives:
    """Mine hard negatives for every query of ``ds`` (see the module docstring for the rule).

    Parameters
    ----------
    ds : RetrievalDataset
        From :func:`hardneg.datasets.load_beir` / :func:`hardneg.datasets.from_dict`.
    retriever : {"dense", "bm25", "hybrid"}
        "hybrid" ranks by reciprocal rank fusion (``rrf_k``) of the dense and BM25 rankings;
        its scores (and so its filters) are the fused RRF scores.
    corpus_embeddings : array (N, d) or path to a ``.npy`` file, optional
        Row i embeds ``ds.corpus_ids[i]``.  A ``.npy`` path (or an ``np.memmap``) is
        memory-mapped and read in place, never copied.
    query_embeddings : array (Q, d) or (all queries, d) or ``.npy`` path, optional
        Either one row per ``ds.query_ids`` or one per line of ``queries.jsonl``
        (``ds.all_query_ids``; rows are picked with ``ds.query_rows``).
    encoder : callable(list[str]) -> array (n, d), optional
        Embeds what was not given (corpus texts ``title + " " + text``, query texts).
    num_negatives : int
        Negatives per query (> 0).
    range_min, range_max : int
        Keep positions ``range_min .. range_max - 1`` of the filtered candidates.
    relative_margin, absolute_margin, max_score, min_score : float or None
        Positive-aware and absolute score filters (None: off).
    sampling : {"top", "random", "softmax"}
        "top" = the first ``num_negatives`` of the window (equal to sentence-transformers);
        "random" = uniform without replacement; "softmax" = without replacement with weights
        ``exp(score / temperature)``.  Sampled negatives are returned by descending score.
    temperature : float
        For "softmax" (> 0), in score units.
    rescorer : callable(queries: list[str], docs: list[str]) -> scores, optional
        Rescores every candidate pair and the positives (e.g. a cross-encoder); ordering,
        ranges and filters then use its scores.
    seed : int
        Sampling seed; results depend only on it, never on ``num_threads`` or ``batch_size``.
    num_threads : int, optional
        Threads for the search kernels.
    positive_anchor : {"min", "max", "mean"}
        Which of a query's positive scores the margins are measured against.  "min"
        (sentence-transformers' choice) is the most conservative: a candidate must score
        below every positive.
    metric : {"cosine", "ip"}
        Dense similarity ("cosine", as sentence-transformers, equals "ip" on normalised vectors).
    bm25 : hn.BM25 instance or dict, optional
        A BM25 index already built over ``ds.corpus_texts``, or keyword arguments for ``hn.BM25``.
    exclude_self, exclude_same_text : bool
        Also exclude the document whose id equals the query id, and documents whose text equals
        the query's text or one of its positives' texts.
    index : optional
        A prebuilt search index for the dense stage, used instead of the exact in-memory kernel:
        ``hn.DenseIndex(C, backend="faiss", index="IVF4096,Flat")`` (approximate),
        ``hn.DenseIndex.from_npy(path)`` (out of core) or
        ``hn.distributed.DistributedIndex(local_shard)`` (sharded; see
        :func:`hardneg.distributed.mine_hard_negatives`).  Anything with
        ``.search(queries, k, exclude=)``, ``.metric`` and ``len()`` works.  Its metric wins over
        ``metric``; ``corpus_embeddings`` (a memory-mapped ``.npy`` path is enough) still supplies
        the positives' scores.
    batch_size : int
        Queries searched per kernel call (bounds the working memory).
    progress : bool
        Show a progress bar (tqdm) with rate and ETA.
    st_rule : {"6.3", "6.2"}
        Which release of sentence-transformers' candidate rule to follow (``docs/mining.md``).
        "6.3" (the default, the current release) searches ``range_max + P + 1`` deep and counts
        the document whose text equals the query as taking a slot; "6.2" searches
        ``range_max + P`` deep.

    Returns
    -------
    MinedNegatives
    """
    t_all = time.perf_counter()
    timings: Dict[str, float] = {}
    if not isinstance(ds, RetrievalDataset):
        raise TypeError(f"ds must be a RetrievalDataset (hn.datasets.load_beir / from_dict), got {type(ds).__name__}")
    if retriever not in RETRIEVERS:
        raise ValueError(f"retriever must be one of {RETRIEVERS}, got {retriever!r}")
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    if positive_anchor not in POSITIVE_ANCHORS:
        raise ValueError(f"positive_anchor must be one of {POSITIVE_ANCHORS}, got {positive_anchor!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if st_rule not in ST_RULES:
        raise ValueError(f"st_rule must be one of {ST_RULES}, got {st_rule!r}")
    num_negatives = _check_int(num_negatives, "num_negatives", 1)
    range_min = _check_int(range_min, "range_min", 0)
    range_max = _check_int(range_max, "range_max", 1)
    if range_min >= range_max:
        raise ValueError(f"range_min ({range_min}) must be smaller than range_max ({range_max})")
    if num_negatives > range_max - range_min:
        raise ValueError(f"cannot mine num_negatives={num_negatives} from ranks {range_min}..{range_max - 1} "
                         f"({range_max - range_min} positions): lower num_negatives or widen the range")
    relative_margin = _check_float(relative_margin, "relative_margin")
    absolute_margin = _check_float(absolute_margin, "absolute_margin")
    max_score = _check_float(max_score, "max_score")
    min_score = _check_float(min_score, "min_score")
    temperature = _check_float(temperature, "temperature", positive=True)
    seed = _check_int(seed, "seed", 0)
    rrf_k = _check_int(rrf_k, "rrf_k", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    encode_batch_size = _check_int(encode_batch_size, "encode_batch_size", 1)
    threads = resolve_num_threads(num_threads)
    if rescorer is not None and not callable(rescorer):
        raise TypeError("rescorer must be callable(queries, docs) -> scores")
    if encoder is not None and not callable(encoder):
        raise TypeError("encoder must be callable(list[str]) -> array")
    if ds.num_docs == 0:
        raise ValueError("the dataset's corpus is empty")
    nq = ds.num_queries

    # -- retriever ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    dense = bm = None
    if retriever in ("dense", "hybrid"):
        if corpus_embeddings is None:
            if encoder is None:
                raise ValueError(f"retriever {retriever!r} needs corpus_embeddings or an encoder")
            corpus_embeddings = _encode(encoder, ds.corpus_texts, encode_batch_size, "encode corpus", progress)
        C = _to_numpy_rows(corpus_embeddings, "corpus_embeddings")
        if C.shape[0] != ds.num_docs:
            raise ValueError(f"corpus_embeddings has {C.shape[0]} rows but the corpus has {ds.num_docs} documents")
        if query_embeddings is None:
            if encoder is None:
                raise ValueError(f"retriever {retriever!r} needs query_embeddings or an encoder")
            query_embeddings = _encode(encoder, ds.query_texts, encode_batch_size, "encode queries", progress)
        Qe = Q_file = _to_numpy_rows(query_embeddings, "query_embeddings")
        if Qe.shape[0] == nq:
            pass
        elif Qe.shape[0] == len(ds.all_query_ids):
            # the split's rows of the queries file, kept on the dataset while the file is unchanged
            fkey = _file_key(query_embeddings)
            cached = getattr(ds, "_query_rows_cache", None)
            if fkey is not None and cached is not None and cached[0] == fkey and cached[1] is ds.query_rows:
                Qe = cached[2]
            else:
                Qe = np.ascontiguousarray(Qe[ds.query_rows])
                if fkey is not None:
                    Qe.flags.writeable = False
                    ds._query_rows_cache = (fkey, ds.query_rows, Qe)
        else:
            raise ValueError(f"query_embeddings has {Qe.shape[0]} rows; expected {nq} (the split's queries) or "
                             f"{len(ds.all_query_ids)} (every query of the queries file)")
        if Qe.shape[1] != C.shape[1]:
            raise ValueError(f"query_embeddings have dimension {Qe.shape[1]} but corpus_embeddings {C.shape[1]}")
        if index is not None:
            if not callable(getattr(index, "search", None)) or getattr(index, "metric", None) not in ("ip", "cosine", "l2"):
                raise TypeError("index must be a search index with .search(queries, k, exclude=) and .metric, "
                                "e.g. hn.DenseIndex(..., backend='faiss')")
            if len(index) != ds.num_docs:
                raise ValueError(f"index holds {len(index)} rows but the corpus has {ds.num_docs} documents")
        # unit-norm rows (checked once per unchanged .npy file) make cosine an inner product
        # (the whole query file's answer, cached, else the split's rows)
        unit = lambda: (_unit_rows_of(C, corpus_embeddings)  # noqa: E731
                        and (_unit_rows_of(Q_file, query_embeddings) or _unit_rows(Qe)))
        dense = _Dense(C, Qe, metric, threads, index, unit)
    if retriever in ("bm25", "hybrid"):
        bm = _BM25(_build_bm25(bm25, ds), ds.query_texts, threads)
    ret = dense if retriever == "dense" else bm if retriever == "bm25" else _Hybrid(dense, bm, rrf_k)
    timings["index"] = time.perf_counter() - t0

    # -- positives and exclusions ---------------------------------------------------------------
    t0 = time.perf_counter()
    # the positives as flat (query index, row) pairs: batches slice them instead of looping
    pos_counts_all, pos_rows = ds._positives_flat()
    pos_indptr = _indptr_of(pos_counts_all)
    pos_q = np.repeat(np.arange(nq), pos_counts_all)
    extra_q, extra_rows, text_q, text_rows = _exclusions(ds, pos_q, pos_rows, exclude_self, exclude_same_text)
    max_pos = int(pos_counts_all.max()) if nq else 0
    # sentence-transformers searches range_max + P, and from 6.3 one more slot for the document
    # whose text is the query (dropped, but it takes its slot when it ranks that high)
    if st_rule == "6.3":
        depth = range_max + max_pos + 1
    else:
        depth = range_max + max_pos
        text_q = text_rows = np.zeros(0, np.int64)
    timings["prepare"] = time.perf_counter() - t0

    ids_out = np.full((nq, num_negatives), -1, np.int64)
    scores_out = np.full((nq, num_negatives), -np.inf, np.float32)
    anchor_out = np.full(nq, np.nan, np.float32)
    pos_scores_all: List[np.ndarray] = [np.zeros(0, np.float32)] * nq
    filtered = {"absolute_margin": 0, "relative_margin": 0, "max_score": 0, "min_score": 0}
    n_candidates = 0
    t_search = t_select = t_rescore = 0.0
    need = range_min + num_negatives  # with sampling="top", survivors needed per query
    # Fast path (exact): with "top" sampling only the first `need` survivors matter.  The first
    # k_fast <= range_max candidates of the excluded ranking always lie inside sentence-transformers'
    # pool (depth - p_in >= range_max), so when they hold `need` survivors the answer is final; the
    # other queries are searched again to the full depth.  Not for hybrid (RRF scores depend on the
    # depth of both rankings) nor with a rescorer (it reorders the whole pool).
    k_fast = min(range_max, need + max(_FAST_SLACK, need // 2))
    fast = _FAST_PATH and sampling == "top" and rescorer is None and retriever != "hybrid" and k_fast < depth
    red = {"min": np.nanmin, "max": np.nanmax, "mean": np.nanmean}[positive_anchor]

    # every query's exclusions (positives + extra rows) as one CSR, sliced per batch
    if extra_q.size:
        all_q = np.concatenate([pos_q, extra_q])
        ex_indices = np.concatenate([pos_rows, extra_rows])[np.argsort(all_q, kind="stable")]
        ex_counts = np.bincount(all_q, minlength=nq).astype(np.int64)
    else:
        ex_indices, ex_counts = pos_rows, pos_counts_all
    ex_indptr = _indptr_of(ex_counts)

    def exclusion_csr(glob_rows: np.ndarray):
        if glob_rows.size and glob_rows[-1] - glob_rows[0] + 1 == glob_rows.size:  # a contiguous range
            a, b = ex_indptr[glob_rows[0]], ex_indptr[glob_rows[-1] + 1]
            return ex_indptr[glob_rows[0]:glob_rows[-1] + 2] - a, ex_indices[a:b]
        counts = ex_counts[glob_rows]
        starts = np.repeat(ex_indptr[glob_rows], counts)
        within = np.arange(int(counts.sum())) - np.repeat(_indptr_of(counts)[:-1], counts)
        return _indptr_of(counts), ex_indices[starts + within]

    def anchors(ps: np.ndarray, pq: np.ndarray, pos_counts: np.ndarray) -> np.ndarray:
        B = pos_counts.size
        out = np.full(B, np.nan, np.float64)
        if ps.size:
            pmat = np.full((B, max(1, int(pos_counts.max()))), np.nan, np.float64)
            slot = np.arange(ps.size) - np.repeat(_indptr_of(pos_counts)[:-1], pos_counts)
            pmat[pq, slot] = ps
            has = pos_counts > 0
            out[has] = red(pmat[has], axis=1)
        return out

    def apply_filters(cs: np.ndarray, valid: np.ndarray, anchor: np.ndarray):
        """Keep mask and, per filter, the candidates it removed in each row."""
        keep = valid.copy()
        drops = {}
        # float32 arithmetic, as sentence-transformers does it, so the boundaries agree bit for bit
        s32 = cs.astype(np.float32, copy=False)
        a = anchor.astype(np.float32)[:, None]
        with np.errstate(invalid="ignore"):
            if absolute_margin is not None:
                drop = keep & (s32 + np.float32(absolute_margin) > a)
                drops["absolute_margin"] = drop.sum(1)
                keep &= ~drop
            if relative_margin is not None:
                drop = keep & (s32 > a - np.abs(a) * np.float32(relative_margin))
                drops["relative_margin"] = drop.sum(1)
                keep &= ~drop
        if max_score is not None:
            drop = keep & (s32 > np.float32(max_score))
            drops["max_score"] = drop.sum(1)
            keep &= ~drop
        if min_score is not None:
            drop = keep & (s32 < np.float32(min_score))
            drops["min_score"] = drop.sum(1)
            keep &= ~drop
        return keep, drops

    def select(cs, ci, keep, glob_rows: np.ndarray):
        """Window positions range_min..range_max-1 of the survivors, then sampling; writes the output."""
        B = glob_rows.size
        if sampling == "top":  # survivor ranks range_min .. range_min + num_negatives - 1, in row order
            rank = np.cumsum(keep, axis=1) - 1
            hi = min(range_max, range_min + num_negatives)
            r, c = np.nonzero(keep & (rank >= range_min) & (rank < hi))
            slot = rank[r, c] - range_min
            ids_out[glob_rows[r], slot] = ci[r, c]
            scores_out[glob_rows[r], slot] = cs[r, c]
            return
        # survivors first, in score order (the rows are sorted), then the window
        order = np.argsort(~keep, axis=1, kind="stable")
        ws, wi, wk = _take(cs, order), _take(ci, order), _take(keep, order)
        ws, wi, wk = ws[:, range_min:range_max], wi[:, range_min:range_max], wk[:, range_min:range_max]
        # random / softmax sampling inside the window
        u = _uniform(seed, glob_rows, np.where(wk, wi, 0))
        if sampling == "random":
            key = np.where(wk, -u, -np.inf)  # the smallest u win
        else:  # Gumbel-top-k: sampling without replacement in proportion to exp(score / T)
            key = np.where(wk, ws.astype(np.float64) / temperature - np.log(-np.log(u)), -np.inf)
        # per row: by key, ties by ascending id (one lexsort along the rows: 4x faster than one
        # over the flattened batch with the row as a third key)
        o = np.lexsort((wi, -key), axis=1)[:, :num_negatives]
        ss, si, sk = _take(ws, o), _take(wi, o), _take(wk, o)
        o2 = _sort_rows(ss, si, sk)
        ss, si, sk = _take(ss, o2), _take(si, o2), _take(sk, o2)
        w = ss.shape[1]
        ids_out[glob_rows, :w] = np.where(sk, si, -1)
        scores_out[glob_rows, :w] = np.where(sk, ss, -np.inf)

    def account(valid, drops, sel):
        nonlocal n_candidates
        n_candidates += int(valid[sel].sum())
        for name, d in drops.items():
            filtered[name] += int(d[sel].sum())

    searched_again = 0
    bar = _progress(nq, f"mining ({retriever})", progress)
    for b0 in range(0, nq, batch_size):
        b1 = min(nq, b0 + batch_size)
        B = b1 - b0
        glob = np.arange(b0, b1)
        pos_counts = pos_counts_all[b0:b1]
        pq = np.repeat(np.arange(B), pos_counts)
        pd = pos_rows[pos_indptr[b0]:pos_indptr[b1]]
        todo = np.arange(B)

        if fast:
            t0 = time.perf_counter()
            cs, ci = ret.search(slice(b0, b1), k_fast, exclusion_csr(glob))
            cs, ci = np.asarray(cs, dtype=np.float32), np.asarray(ci, dtype=np.int64)
            ps = ret.pair_scores(slice(b0, b1), pq, pd).astype(np.float32)
            t_search += time.perf_counter() - t0
            t0 = time.perf_counter()
            anchor = anchors(ps, pq, pos_counts)
            valid = ci >= 0
            keep, drops = apply_filters(cs, valid, anchor)
            done = (valid.sum(1) < k_fast) | (keep.sum(1) >= need)
            if done.any():
                select(cs[done], ci[done], keep[done], glob[done])
                account(valid, drops, done)
            todo = np.flatnonzero(~done)
            t_select += time.perf_counter() - t0

        if todo.size:
            sub_glob = glob[todo]
            rows = slice(b0, b1) if todo.size == B else sub_glob
            keep_pos = np.isin(pq, todo)
            spq = np.searchsorted(todo, pq[keep_pos])
            spd = pd[keep_pos]
            scounts = pos_counts[todo]
            S = todo.size
            t0 = time.perf_counter()
            cs, ci = ret.search(rows, depth, exclusion_csr(sub_glob))
            cs, ci = np.asarray(cs, dtype=np.float32), np.asarray(ci, dtype=np.int64)
            # a pair's score depends on the pair only: the first pass's are reused as they are
            sps = ps[keep_pos] if fast else ret.pair_scores(rows, spq, spd).astype(np.float32)
            t_search += time.perf_counter() - t0

            # sentence-transformers' pool: of its top `depth`, the documents it may return.  The
            # excluded ones (positives; with the 6.3 rule also the query's own text) ranked inside
            # the top `depth` take slots, so the pool is depth - (slots taken) deep.
            valid = ci >= 0
            tq, td, ts = spq, spd, sps
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
            pool = depth - _slots_taken(cs, ci, valid, tq, td, ts, S, depth)
            valid &= np.arange(cs.shape[1])[None, :] < pool[:, None]

            if rescorer is not None:
                t0 = time.perf_counter()
                qi, cj = np.nonzero(valid)
                qt = ds.query_texts
                qtexts = [qt[sub_glob[q]] for q in qi.tolist()] + [qt[sub_glob[q]] for q in spq.tolist()]
                dtexts = [ds.corpus_texts[d] for d in ci[qi, cj].tolist()] + [ds.corpus_texts[d] for d in spd.tolist()]
                new = _to_flat(rescorer(qtexts, dtexts), len(qtexts))
                cs = cs.copy()
                cs[qi, cj] = new[: qi.size]
                sps = new[qi.size:]
                order = _sort_rows(cs, ci, valid)
                cs, ci, valid = _take(cs, order), _take(ci, order), _take(valid, order)
                t_rescore += time.perf_counter() - t0
            if not fast:  # here todo is the whole batch: these are the batch's positive scores
                ps = sps

            t0 = time.perf_counter()
            # min / max anchors are exact whatever the batch: the first pass's are reused
            sanchor = anchor[todo] if fast and positive_anchor != "mean" else anchors(sps, spq, scounts)
            keep, drops = apply_filters(cs, valid, sanchor)
            select(cs, ci, keep, sub_glob)
            account(valid, drops, np.ones(S, dtype=bool))
            t_select += time.perf_counter() - t0

        anchor_out[b0:b1] = anchor if fast else anchors(ps, pq, pos_counts)
        ps32 = ps.astype(np.float32)
        bounds = _indptr_of(pos_counts).tolist()
        pos_scores_all[b0:b1] = [ps32[bounds[j]:bounds[j + 1]] for j in range(B)]
        bar.update(B)
        searched_again += int(todo.size) if fast else 0
    bar.close()

    timings["search"] = t_search
    if rescorer is not None:
        timings["rescore"] = t_rescore
    timings["select"] = t_select
    timings["total"] = time.perf_counter() - t_all
    params = dict(retriever=retriever, num_negatives=num_negatives, range_min=range_min, range_max=range_max,
                  relative_margin=relative_margin, absolute_margin=absolute_margin, max_score=max_score,
                  min_score=min_score, sampling=sampling, temperature=temperature, seed=seed,
                  positive_anchor=positive_anchor, metric=metric if dense is not None else None,
                  rescorer=rescorer is not None, depth=depth, st_rule=st_rule)
    stats = {"candidates": n_candidates, "filtered": {k: v for k, v in filtered.items() if v},
             "searched_again": searched_again if fast else None,
             "max_positives": max_pos}
    bounds = pos_indptr.tolist()
    positives = [pos_rows[bounds[j]:bounds[j + 1]] for j in range(nq)]  # read-only views
    return MinedNegatives(ids_out, scores_out, anchor_out, positives, pos_scores_all, ds, params, stats, timings)


def _slots_taken(cs: np.ndarray, ci: np.ndarray, valid: np.ndarray, tq: np.ndarray, td: np.ndarray,
                 ts: np.ndarray, S: int, depth: int) -> np.ndarray:
    """Per query, how many of its excluded documents (query ``tq``, row ``td``, score ``ts``, sorted
    by query) rank inside the top ``depth`` of the unexcluded ranking (ties by ascending row).

    ``cs`` / ``ci`` / ``valid`` (S, >= depth) are the excluded search's candidates: an excluded
    document's rank is the candidates above it plus the excluded documents above it.
    """
    if td.size == 0:
        return np.zeros(S, np.int64)
    srow, irow, vrow = cs[tq], ci[tq], valid[tq]
    nb_cand = (vrow & ((srow > ts[:, None]) | ((srow == ts[:, None]) & (irow < td[:, None])))).sum(1)
    counts = np.bincount(tq, minlength=S)
    P = max(1, int(counts.max()))
    pmat = np.full((S, P), -np.inf, np.float64)
    imat = np.full((S, P), np.iinfo(np.int64).max, np.int64)
    slot = np.arange(td.size) - np.repeat(_indptr_of(counts)[:-1], counts)
    pmat[tq, slot] = ts
    imat[tq, slot] = td
    pm, im = pmat[tq], imat[tq]
    nb_excl = ((pm > ts[:, None]) | ((pm == ts[:, None]) & (im < td[:, None]))).sum(1)
    in_top = (nb_cand + nb_excl) < depth
    return np.bincount(tq[in_top], minlength=S)


def _indptr_of(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _to_flat(x: Any, n: int) -> np.ndarray:
    if is_torch(x):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size != n:
        raise ValueError(f"rescorer returned {a.size} scores for {n} pairs")
    if not np.isfinite(a).all():
        raise ValueError("rescorer returned NaN or Inf")
    return a.astype(np.float32)

"""Approximate search through faiss: ``DenseIndex(corpus, metric, backend="faiss", index=..., nprobe=...)``.

Same call and result conventions as the exact index: (scores float32 (Q, k),
ids int64 (Q, k)), best first, ties by ascending id, padded with id -1 and score
-inf (+inf for "l2"), exclusions skipped while still returning k results
(over-fetch k + max excluded per query, filter, and re-search the short rows
with a doubled k until they are full or faiss has no more candidates).

Metrics: "ip" -> METRIC_INNER_PRODUCT; "cosine" -> inner product of
L2-normalised copies (zero rows stay 0); "l2" -> squared Euclidean (faiss's
METRIC_L2 is already squared).  The corpus is copied to float32 (faiss's
format).  A CUDA corpus uses faiss-gpu when faiss has GPUs, else the CPU index.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from hardneg._arrays import check_finite, is_cuda, is_torch, to_caller, vectors_for_kernel
from hardneg._threads import resolve_num_threads
from hardneg.exclude import to_csr
from hardneg._validate import check_int
from hardneg.index_base import SearchIndex, check_k, check_output

PIP_HINT = "pip install faiss-cpu  (or faiss-gpu / conda install -c pytorch faiss-gpu for GPUs)"


def import_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise ImportError(f"backend='faiss' needs the faiss package, which is not installed: {PIP_HINT}") from None
    return faiss


def _f32(x: Any, name: str) -> np.ndarray:
    if is_cuda(x):
        x = x.detach().float().cpu()
    a, bf16 = vectors_for_kernel(x, name)
    check_finite(a, bf16, name)
    if bf16:
        a = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


def _normalise(a: np.ndarray) -> np.ndarray:
    n = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64)).astype(np.float32)
    inv = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
    return a * inv[:, None]


class FaissIndex(SearchIndex):
    """A faiss-backed index (built by ``hn.DenseIndex(..., backend="faiss")``), a sibling of the exact one.

    Parameters
    ----------
    corpus : array (N, d)
        numpy / torch, float32 / float16 / bfloat16 / float64 (copied to float32).
    metric : {"ip", "cosine", "l2"}
    num_threads : int, optional
        faiss OpenMP threads during build and search (default: hardneg's default).
    index : str
        Any faiss factory string, e.g. "Flat", "IVF4096,Flat", "HNSW32",
        "IVF1024,PQ64".  Default "Flat" (exact, brute force).
    nprobe : int, optional
        IVF lists probed per query (ValueError for an index without lists).
    ef_search : int, optional
        HNSW efSearch.
    train_size : int, optional
        Rows sampled (deterministically) to train the index (default: all rows;
        faiss itself subsamples to 256 points per centroid).
    """

    def __init__(self, corpus: Any, metric: str = "ip", num_threads: Optional[int] = None,
                 index: str = "Flat", nprobe: Optional[int] = None,
                 ef_search: Optional[int] = None, train_size: Optional[int] = None, seed: int = 0):
        faiss = import_faiss()
        super().__init__(metric, num_threads)
        if not isinstance(index, str) or not index.strip():
            raise ValueError(f"index must be a faiss factory string such as 'IVF4096,Flat' or 'HNSW32', got {index!r}")
        self.factory = index
        self._device = corpus.device if is_torch(corpus) else None
        a = _f32(corpus, "corpus")
        if a.shape[1] == 0:
            raise ValueError("corpus must have at least one column")
        if a.shape[0] == 0:
            raise ValueError("corpus is empty: a DenseIndex needs at least one row")
        self._set_dim(a.shape[1], "corpus")
        fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            idx = faiss.index_factory(self._dim, index, fm)
        except (RuntimeError, ValueError) as e:
            msg = str(e).strip().splitlines()
            raise ValueError(f"index: faiss rejected the factory string {index!r} "
                             f"({msg[-1] if msg else 'invalid'})") from None
        self._faiss = faiss
        self._gpu = False
        if is_cuda(corpus) and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._res = faiss.StandardGpuResources()
            idx = faiss.index_cpu_to_gpu(self._res, corpus.device.index or 0, idx)
            self._gpu = True
        self.index = idx
        with self._threads(None):
            if metric == "cosine":
                a = _normalise(a)
            if not idx.is_trained:
                t = a
                if train_size is not None:
                    train_size = check_int(train_size, "train_size", minimum=1)
                if train_size is not None and train_size < a.shape[0]:
                    sel = np.sort(np.random.default_rng(seed).choice(a.shape[0], int(train_size), replace=False))
                    t = a[sel]
                try:
                    idx.train(t)
                except RuntimeError as e:
                    msg = str(e).strip().splitlines()
                    raise ValueError(f"index {index!r} could not be trained on {t.shape[0]} rows "
                                     f"({msg[-1] if msg else 'error'}); use a smaller index or more rows") from None
            idx.add(a)
        self._size = int(idx.ntotal)
        self.nprobe = nprobe
        self.ef_search = ef_search
        if nprobe is not None:
            self._set_param("nprobe", nprobe)
        if ef_search is not None:
            self._set_param("efSearch", ef_search)

    def _set_param(self, name: str, value: Any) -> None:
        arg = "ef_search" if name == "efSearch" else name
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        faiss = self._faiss
        ps = faiss.GpuParameterSpace() if self._gpu else faiss.ParameterSpace()
        try:
            ps.set_index_parameter(self.index, name, int(value))
        except RuntimeError:
            raise ValueError(f"{arg} does not apply to index {self.factory!r}") from None

    def _threads(self, num_threads: Optional[int]):
        faiss = self._faiss
        n = resolve_num_threads(num_threads if num_threads is not None else self.num_threads)

        class _Ctx:
            def __enter__(s):
                s.old = faiss.omp_get_max_threads()
                faiss.omp_set_num_threads(n)

            def __exit__(s, *exc):
                faiss.omp_set_num_threads(s.old)

        return _Ctx()

    @property
    def nbytes(self) -> int:
        """Bytes of the vectors faiss holds: its code size per row (4 d for flat indexes) times the rows."""
        try:
            per_row = int(self.index.sa_code_size())
        except (AttributeError, RuntimeError):  # GPU indexes and older faiss
            per_row = 4 * self.dim
        return per_row * self._size

    def __repr__(self) -> str:
        return f"FaissIndex(n={self._size}, dim={self._dim}, metric={self.metric!r}, backend='faiss', index={self.factory!r})"

    def add(self, vectors: Any) -> "FaissIndex":
        """Append rows (ids continue); a trained index is not retrained."""
        a = _f32(vectors, "vectors")
        if a.shape[1] != self._dim:
            raise ValueError(f"vectors has dimension {a.shape[1]} but the index has dimension {self._dim}")
        if a.shape[0]:
            with self._threads(None):
                self.index.add(_normalise(a) if self.metric == "cosine" else a)
            self._size = int(self.index.ntotal)
        return self

    def search(self, queries: Any, k: int = 10, exclude: Any = None, num_threads: Optional[int] = None,
               backend: str = "auto", memory_budget: int = 0):
        """Approximate top-k; same arguments, conventions and exclusion semantics as
        :meth:`DenseIndex.search` (``backend``/``memory_budget`` are ignored)."""
        k = check_k(k)
        q = _f32(queries, "queries")
        if q.shape[1] != self._dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but the corpus has dimension {self._dim}")
        if self.metric == "cosine":
            q = _normalise(q)
        nq, n = q.shape[0], self._size
        check_output(nq, k)
        ex = to_csr(exclude, nq, n)
        l2 = self.metric == "l2"
        pad = np.float32(np.inf if l2 else -np.inf)
        out_s = np.full((nq, k), pad, dtype=np.float32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        if nq == 0:
            return to_caller(out_s, queries), to_caller(out_i, queries)
        counts = np.zeros(nq, np.int64) if ex is None else np.diff(ex[0])
        rows = np.arange(nq)
        ex_keys = None
        if ex is not None and ex[1].size:
            ex_keys = np.unique(np.repeat(rows, counts) * n + ex[1])
        kq = np.minimum(n, k + counts)  # per-query over-fetch
        with self._threads(num_threads):
            while rows.size:
                kk = int(kq[rows].max())
                D, I = self.index.search(q[rows], kk)
                D = np.asarray(D, dtype=np.float32)
                I = np.asarray(I, dtype=np.int64)
                valid = I >= 0
                if ex_keys is not None:  # drop excluded ids: (query, id) pairs as one int64 key
                    valid &= ~np.isin(rows[:, None] * n + I, ex_keys)
                got = valid.sum(axis=1)
                exhausted = (I[:, -1] < 0) | (kk >= n)  # faiss had no more candidates
                done = (got >= k) | exhausted
                for j in np.flatnonzero(done):
                    r = rows[j]
                    s, i = D[j][valid[j]], I[j][valid[j]]
                    o = np.lexsort((i, s if l2 else -s))[:k]  # best first, ties by ascending id
                    out_s[r, :o.size], out_i[r, :o.size] = s[o], i[o]
                rows = rows[~done]
                kq[rows] = np.minimum(n, 2 * kq[rows])
        return to_caller(out_s, queries), to_caller(out_i, queries)

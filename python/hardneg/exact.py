"""Exact in-memory search: :class:`ExactIndex` and the one-shot kernel search.

The corpus is kept as segments (the arrays as passed, read in place when their
rows are contiguous) and searched by the C++ kernel (``cpp/topk.cpp``), or by the
chunked torch code for CUDA tensors and ``backend="torch"``
(:mod:`hardneg._torch_topk`); :func:`hardneg.backends.search_engine` picks.

The low-precision screen's coded copy of the corpus (int8 / bf16 codes,
``cpp/topk_screen.cpp``) belongs to the index: a ``_core.ScreenCache`` built on
the first search that screens, reused by the next ones, dropped by :meth:`add`,
counted in :attr:`ExactIndex.nbytes` and freed with the index.  The one-shot
:func:`search_once` (``hn.topk``) builds a temporary copy per call instead.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Tuple

import numpy as np

from hardneg import _core
from hardneg._arrays import check_finite, is_cuda, is_torch, to_caller, torch_module, vectors_for_kernel
from hardneg._threads import resolve_num_threads
from hardneg._validate import check_int
from hardneg.backends import search_engine
from hardneg.exclude import to_csr
from hardneg.index_base import DEFAULT_MEMORY_BUDGET, SearchIndex, check_k, check_output

# A kernel segment: (rows (n, d) as the kernel reads them, is a bf16 bit view, squared norms or None, first id)
Segment = Tuple[np.ndarray, bool, Optional[np.ndarray], int]


def kernel_segment(x: Any, name: str, metric: str, first_id: int) -> Optional[Segment]:
    """``x`` (numpy / CPU tensor, (n, d)) as a checked kernel segment, or None when it has no rows.

    Raises TypeError / ValueError naming ``name`` for bad dtypes, shapes, NaN or Inf.
    """
    a, bf16 = vectors_for_kernel(x, name)
    check_finite(a, bf16, name)
    if a.shape[0] == 0:
        return None
    norms = _core.sqnorms(a, bf16) if metric != "ip" else None
    return a, bf16, norms, first_id


class ExactIndex(SearchIndex):
    """An exact in-memory index (what ``hn.DenseIndex(corpus)`` builds).

    Parameters
    ----------
    corpus : array (N, d)
        Dtypes, devices and copies as for :class:`hardneg.DenseIndex` (rows used in
        place when contiguous: do not modify them while the index is alive).
    metric : {"ip", "cosine", "l2"}
        Inner product, cosine similarity (rows are normalised on the fly, the
        corpus is not copied; a zero row scores 0), or squared Euclidean distance
        (smallest first).
    num_threads : int, optional
        Default thread count for :meth:`search`.

    Notes
    -----
    :meth:`add` appends rows as a new segment: ids continue from the current size,
    old rows are neither copied nor re-checked, and results equal a fresh index
    over the concatenation.  Searches may run from several threads at once; do not
    call :meth:`add` while a search runs.
    """

    def __init__(self, corpus: Any, metric: str = "ip", num_threads: Optional[int] = None):
        super().__init__(metric, num_threads)
        self._segments: List[Segment] = []
        self._torch_parts: List[Tuple[Any, int]] = []
        self._cuda = is_cuda(corpus)
        self._device = corpus.device if is_torch(corpus) else None
        self._codes = _core.ScreenCache()  # the screen's coded copy, built by the first screened search
        self._append(corpus, "corpus")
        if self._size == 0:
            raise ValueError("corpus is empty: a DenseIndex needs at least one row")

    def __repr__(self) -> str:
        return (f"ExactIndex(n={self._size}, dim={self._dim}, metric={self.metric!r}, "
                f"segments={len(self._segments) or len(self._torch_parts)})")

    def __getstate__(self) -> dict:
        # pickled without the coded copy (rebuilt by the first screened search after unpickling)
        state = dict(self.__dict__)
        del state["_codes"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._codes = _core.ScreenCache()

    @property
    def nbytes(self) -> int:
        """Bytes of the corpus rows (read in place when zero-copy), their norms and the screen's coded copy."""
        n = sum(a.nbytes + (0 if nr is None else nr.nbytes) for a, _, nr, _ in self._segments)
        n += sum(int(t.numel()) * int(t.element_size()) for t, _ in self._torch_parts)
        return n + self.codes_nbytes

    @property
    def codes_nbytes(self) -> int:
        """Bytes of the screen's coded copy of the corpus (0 until a search screens)."""
        return int(self._codes.nbytes)

    def add(self, vectors: Any) -> "ExactIndex":
        """Append rows (M, d); they get ids ``len(self) .. len(self) + M - 1``. Returns self.

        The screen's coded copy, when a search built one, is kept: the next search that
        screens codes only the new rows and extends it (the old rows are not coded again).
        """
        self._append(vectors, "vectors")
        return self

    def _append(self, x: Any, name: str) -> None:
        if self._cuda != is_cuda(x):
            raise ValueError(f"{name} is on a different device than the index")
        if self._cuda:
            self._append_cuda(x, name)
            return
        seg = kernel_segment(x, name, self.metric, self._size)
        if seg is None:  # no rows: still check the dimension
            self._set_dim(vectors_for_kernel(x, name)[0].shape[1], name)
            return
        self._set_dim(seg[0].shape[1], name)
        self._segments.append(seg)
        self._size += seg[0].shape[0]

    def _append_cuda(self, x: Any, name: str) -> None:
        torch = torch_module()
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}")
        if x.dtype == torch.float64:
            x = x.float()
        self._set_dim(int(x.shape[1]), name)
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        if x.shape[0]:
            self._torch_parts.append((x.detach(), self._size))
        self._size += int(x.shape[0])

    def search(self, queries: Any, k: int = 10, exclude: Any = None, num_threads: Optional[int] = None,
               backend: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET):
        """Top-k corpus rows for each query.

        Parameters
        ----------
        queries : array (Q, d)
            Same dtype rules as the corpus; must be on the index's device.
        k : int
            Results per query.  When fewer than k rows are eligible (k > N, or
            exclusions), rows are padded with id -1 and score -inf (+inf for "l2").
        exclude : optional
            Ids each query must not get, skipped inside the kernel so the caller
            still receives k results: a list of Q id lists, a (Q, m) int array
            padded with -1, or CSR ``(indptr, indices)``.  Ids must be in [0, N).
        num_threads : int, optional
            Threads for the C++ kernel (default: :func:`hardneg.get_num_threads`).
        backend : {"auto", "cpp", "torch"}
            "auto" takes C++ for numpy/CPU tensors and torch for CUDA tensors;
            "torch" forces the torch implementation (e.g. to test it on CPU).
        memory_budget : int
            Bytes for one score tile on the torch path.

        Returns
        -------
        scores : float32 (Q, k)
            Best first: descending for "ip"/"cosine", ascending distances for "l2".
        ids : int64 (Q, k)
            Corpus row ids; equal scores are ordered by ascending id.
            Both in the caller's type and device (numpy in, numpy out).
        """
        k = check_k(k)
        engine = search_engine(queries, self._cuda, backend)
        if self._cuda and queries.device != self._device:
            raise ValueError(f"queries are on {queries.device} but the index is on {self._device}")
        if engine == "torch":
            return self._search_torch(queries, k, exclude, memory_budget)
        q, qbf16 = vectors_for_kernel(queries, "queries")
        if q.shape[1] != self._dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but the corpus has dimension {self._dim}")
        check_finite(q, qbf16, "queries")
        check_output(q.shape[0], k)
        ex = to_csr(exclude, q.shape[0], self._size)
        nt = resolve_num_threads(num_threads if num_threads is not None else self.num_threads)
        scores, ids = _core.topk(q, qbf16, self._segments, self.metric, k,
                                 None if ex is None else ex[0], None if ex is None else ex[1], nt, self._codes)
        return to_caller(scores, queries), to_caller(ids, queries)

    def _search_torch(self, queries: Any, k: int, exclude: Any, memory_budget: Any):
        memory_budget = check_int(memory_budget, "memory_budget (bytes)", minimum=1)
        torch = torch_module()
        if torch is None:
            raise ImportError("backend='torch' needs torch: pip install 'hardneg[torch]'")
        from hardneg._torch_topk import topk_torch  # imports nothing of hardneg's indexes

        q = queries if is_torch(queries) else readonly_tensor(torch, np.asarray(queries))
        if q.dim() != 2:
            raise ValueError(f"queries must be 2-D (rows, dim), got shape {tuple(q.shape)}")
        if not q.is_floating_point():
            raise TypeError(f"queries must be a floating point array, got {q.dtype}")
        if q.shape[1] != self._dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but the corpus has dimension {self._dim}")
        if q.numel() and not bool(torch.isfinite(q).all()):
            raise ValueError("queries contains NaN or Inf")
        if q.dtype == torch.float64 and q.numel() and not bool(torch.isfinite(q.detach().float()).all()):
            raise ValueError("queries has values too large for float32")
        check_output(int(q.shape[0]), k)
        parts = self._torch_parts
        if not self._cuda:
            parts = []
            for a, bf16, _, off in self._segments:
                t = readonly_tensor(torch, a)
                parts.append((t.view(torch.bfloat16) if bf16 else t, off))
        ex = to_csr(exclude, int(q.shape[0]), self._size)
        s, i = topk_torch(q, parts, k, self.metric, ex, memory_budget)
        if is_torch(queries):
            return s, i
        return s.numpy(), i.numpy()


def search_once(queries: Any, corpus: Any, k: int, metric: str, exclude: Any, num_threads: Optional[int]):
    """The one-shot kernel search of :func:`hardneg.topk` (k and metric already checked).

    The corpus is read once: it is checked for NaN/Inf inside the kernel (a
    non-finite score triggers a scan of that block), and the screen builds a
    temporary coded copy if it runs.
    """
    c, cbf16 = vectors_for_kernel(corpus, "corpus")
    if c.shape[0] == 0:
        raise ValueError("corpus is empty: need at least one row")
    q, qbf16 = vectors_for_kernel(queries, "queries")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the corpus has dimension {c.shape[1]}")
    if c.shape[1] == 0:
        raise ValueError("corpus must have at least one column")
    check_finite(q, qbf16, "queries")
    check_output(q.shape[0], k)
    ex = to_csr(exclude, q.shape[0], c.shape[0])
    scores, ids = _core.topk(q, qbf16, [(c, cbf16, None, 0)], metric, k,
                             None if ex is None else ex[0], None if ex is None else ex[1],
                             resolve_num_threads(num_threads))
    return to_caller(scores, queries), to_caller(ids, queries)


def readonly_tensor(torch: Any, a: np.ndarray):
    """torch.from_numpy without the warning for read-only arrays (the torch path never writes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)

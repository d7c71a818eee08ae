"""Exact batched top-k similarity search: :func:`topk` and :class:`DenseIndex`."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from hardneg import _core
from hardneg._arrays import check_finite, check_uint_ids, is_cuda, is_torch, to_caller, torch_module, vectors_for_kernel
from hardneg._threads import resolve_num_threads
from hardneg.exclude import to_csr

METRICS = ("ip", "cosine", "l2")
BACKENDS = ("auto", "cpp", "torch")
INDEX_BACKENDS = ("exact", "faiss")
DEFAULT_MEMORY_BUDGET = 1 << 30


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be a positive integer, got {k}")
    if k >= 2**32:  # ids are below 2^32: a larger k could only add padding (and a huge allocation)
        raise ValueError(f"k must be below 2**32, got {k}")
    return int(k)


def _check_budget(memory_budget: Any) -> int:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive integer (bytes), got {memory_budget!r}")
    return int(memory_budget)


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class DenseIndex:
    """A corpus of vectors, validated once and searched many times.

    Parameters
    ----------
    corpus : array (N, d)
        numpy array or torch tensor, float32 / float16 / bfloat16 (float64 and
        integer inputs are converted to float32, a copy).  numpy and CPU torch
        inputs with contiguous rows are used in place (no copy): do not modify
        them while the index is alive.  A CUDA tensor makes a CUDA index.
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
    over the concatenation.
    """

    def __new__(cls, *args: Any, backend: str = "exact", **kwargs: Any):
        # backend="faiss" builds a hardneg._faiss.FaissIndex (a DenseIndex subclass).
        if cls is DenseIndex and backend == "faiss":
            from hardneg._faiss import FaissIndex
            return super().__new__(FaissIndex)
        return super().__new__(cls)

    def __init__(self, corpus: Any, metric: str = "ip", num_threads: Optional[int] = None,
                 backend: str = "exact"):
        if backend not in INDEX_BACKENDS:
            raise ValueError(f"backend must be one of {INDEX_BACKENDS}, got {backend!r}")
        self.metric = _check_metric(metric)
        self.num_threads = None if num_threads is None else resolve_num_threads(num_threads)
        self._segments: List[Tuple[Any, bool, Optional[np.ndarray], int]] = []
        self._torch_parts: List[Tuple[Any, int]] = []
        self._cuda = is_cuda(corpus)
        self._dim: Optional[int] = None
        self._size = 0
        self._device = corpus.device if is_torch(corpus) else None
        self._add(corpus, "corpus")
        if self._size == 0:
            raise ValueError("corpus is empty: a DenseIndex needs at least one row")

    @classmethod
    def from_npy(cls, path: Any, metric: str = "ip", mmap: bool = True, num_threads: Optional[int] = None,
                 block_bytes: Optional[int] = None) -> "DenseIndex":
        """An index over a 2-D ``.npy`` file.

        With ``mmap=True`` the corpus stays on disk and every search streams it in
        blocks of ``block_bytes`` (default 256 MiB) with a merged running top-k, so
        resident memory stays about one block (see :mod:`hardneg.ooc`); results
        equal the in-memory search.  ``mmap=False`` loads the file (``np.load``).
        """
        if not mmap:
            return DenseIndex(np.load(path), metric, num_threads)
        from hardneg.ooc import DEFAULT_BLOCK_BYTES, OutOfCoreIndex
        return OutOfCoreIndex(path, metric, num_threads, DEFAULT_BLOCK_BYTES if block_bytes is None else block_bytes)

    @property
    def dim(self) -> int:
        """Vector dimension d."""
        return int(self._dim)

    def __len__(self) -> int:
        return self._size

    @property
    def ntotal(self) -> int:
        """Number of corpus rows (faiss's name)."""
        return self._size

    def __repr__(self) -> str:
        return f"DenseIndex(n={self._size}, dim={self._dim}, metric={self.metric!r}, segments={len(self._segments) or len(self._torch_parts)})"

    def add(self, vectors: Any) -> "DenseIndex":
        """Append rows (M, d); they get ids ``len(self) .. len(self) + M - 1``. Returns self."""
        self._add(vectors, "vectors")
        return self

    def _add(self, x: Any, name: str) -> None:
        if self._cuda != is_cuda(x):
            raise ValueError(f"{name} is on a different device than the index")
        if self._cuda:
            torch = torch_module()
            if x.dim() != 2:
                raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")
            if not (x.is_floating_point()):
                raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}")
            if x.dtype == torch.float64:
                x = x.float()
            d = int(x.shape[1])
            self._check_dim(d, name)
            if x.numel() and not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or Inf")
            if x.shape[0]:
                self._torch_parts.append((x.detach(), self._size))
            self._size += int(x.shape[0])
            return
        a, bf16 = vectors_for_kernel(x, name)
        self._check_dim(a.shape[1], name)
        check_finite(a, bf16, name)
        if a.shape[0] == 0:
            return
        norms = _core.sqnorms(a, bf16) if self.metric != "ip" else None
        self._segments.append((a, bf16, norms, self._size))
        self._size += a.shape[0]

    def _check_dim(self, d: int, name: str) -> None:
        if d == 0:
            raise ValueError(f"{name} must have at least one column")
        if self._dim is None:
            self._dim = d
        elif d != self._dim:
            raise ValueError(f"{name} has dimension {d} but the index has dimension {self._dim}")

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
        k = _check_k(k)
        _check_backend(backend)
        if is_cuda(queries) != self._cuda:
            raise ValueError("queries and corpus must be on the same device (mixed devices)")
        if is_torch(queries) and self._device is not None and queries.device != self._device and self._cuda:
            raise ValueError(f"queries are on {queries.device} but the index is on {self._device}")
        nq = int(queries.shape[0]) if hasattr(queries, "shape") and len(queries.shape) == 2 else None
        use_torch = self._cuda or backend == "torch"
        if use_torch:
            return self._search_torch(queries, k, exclude, memory_budget)
        q, qbf16 = vectors_for_kernel(queries, "queries")
        if q.shape[1] != self._dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but the corpus has dimension {self._dim}")
        check_finite(q, qbf16, "queries")
        ex = to_csr(exclude, q.shape[0] if nq is None else nq, self._size)
        scores, ids = _core.topk(q, qbf16, self._segments, self.metric, k,
                                 None if ex is None else ex[0], None if ex is None else ex[1],
                                 resolve_num_threads(num_threads if num_threads is not None else self.num_threads))
        return to_caller(scores, queries), to_caller(ids, queries)

    def _search_torch(self, queries, k, exclude, memory_budget):
        memory_budget = _check_budget(memory_budget)
        torch = torch_module()
        if torch is None:
            raise ImportError("backend='torch' needs torch: pip install 'hardneg[torch]'")
        from hardneg._torch_topk import topk_torch

        q = queries if is_torch(queries) else _readonly_tensor(torch, np.asarray(queries))
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
        parts = self._torch_parts
        if not self._cuda:
            parts = []
            for a, bf16, _, off in self._segments:
                t = _readonly_tensor(torch, a)
                parts.append((t.view(torch.bfloat16) if bf16 else t, off))
        ex = to_csr(exclude, int(q.shape[0]), self._size)
        s, i = topk_torch(q, parts, k, self.metric, ex, memory_budget)
        if is_torch(queries):
            return s, i
        return s.numpy(), i.numpy()


def topk(queries: Any, corpus: Any, k: int = 10, metric: str = "ip", exclude: Any = None,
         num_threads: Optional[int] = None, backend: str = "auto",
         memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """Exact top-k of every query against the corpus, without building the Q x N matrix.

    Parameters
    ----------
    queries : array (Q, d)
        numpy array or torch tensor: float32, float16 or bfloat16 (float64 and
        ints are converted to float32).
    corpus : array (N, d)
        Same dtype rules; numpy and CPU tensors are read in place (zero-copy).
        ``np.memmap`` works and is streamed block by block.
    k : int
        Results per query (k > N is allowed: padded with id -1, score -inf/+inf).
    metric : {"ip", "cosine", "l2"}
        "l2" is the squared Euclidean distance, smallest first.
    exclude : optional
        Per-query ids to skip (list of lists, -1 padded int array, or CSR pair).
    num_threads, backend, memory_budget
        See :meth:`DenseIndex.search`.

    Returns
    -------
    (scores float32 (Q, k), ids int64 (Q, k)), best first, ties by ascending id,
    in the caller's type and device.

    Examples
    --------
    >>> import numpy as np, hardneg as hn
    >>> X = np.eye(4, dtype=np.float32)
    >>> s, i = hn.topk(X[:2], X, k=2, exclude=[[0], [1]])
    >>> i.tolist()
    [[1, 2], [0, 2]]
    """
    _check_metric(metric)
    k = _check_k(k)
    _check_backend(backend)
    if is_torch(queries) != is_torch(corpus) and (is_cuda(queries) or is_cuda(corpus)):
        raise ValueError("queries and corpus must be on the same device (mixed devices)")
    if is_cuda(queries) != is_cuda(corpus) or (
        is_cuda(queries) and queries.device != corpus.device
    ):
        raise ValueError("queries and corpus must be on the same device (mixed devices)")
    if is_cuda(corpus) or backend == "torch":
        return DenseIndex(corpus, metric)._search_torch(queries, k, exclude, memory_budget) if _nonempty(corpus) \
            else _empty_error()
    if isinstance(corpus, np.memmap) and backend != "torch":
        from hardneg.ooc import topk_memmap  # streamed in blocks, pages released after each
        return topk_memmap(queries, corpus, k, metric, exclude, num_threads)
    return _topk_kernel(queries, corpus, k, metric, exclude, num_threads)


def _topk_kernel(queries, corpus, k: int, metric: str, exclude, num_threads, reuse_token: int = 0):
    """The in-memory kernel path of :func:`topk` (arguments already checked).

    ``reuse_token`` (internal, non-zero): the caller promises that ``corpus`` is unchanged since
    its last call with the same token, so the low-precision screen may reuse its copy (the miner's two
    searches over one corpus).
    """
    c, cbf16 = vectors_for_kernel(corpus, "corpus")
    if c.shape[0] == 0:
        _empty_error()
    q, qbf16 = vectors_for_kernel(queries, "queries")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the corpus has dimension {c.shape[1]}")
    if c.shape[1] == 0:
        raise ValueError("corpus must have at least one column")
    check_finite(q, qbf16, "queries")
    ex = to_csr(exclude, q.shape[0], c.shape[0])
    # The corpus is checked for NaN/Inf inside the kernel (a non-finite score
    # triggers a scan of that block), so it is read only once.
    scores, ids = _core.topk(q, qbf16, [(c, cbf16, None, 0)], metric, k,
                             None if ex is None else ex[0], None if ex is None else ex[1],
                             resolve_num_threads(num_threads), reuse_token)
    return to_caller(scores, queries), to_caller(ids, queries)


def _readonly_tensor(torch, a: np.ndarray):
    """torch.from_numpy without the warning for read-only arrays (the torch path never writes)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _nonempty(corpus) -> bool:
    return len(corpus.shape) != 2 or int(corpus.shape[0]) > 0


def _empty_error():
    raise ValueError("corpus is empty: need at least one row")


def merge_topk(scores: List[np.ndarray], ids: List[np.ndarray], k: int, metric: str = "ip",
               num_threads: Optional[int] = None):
    """Merge per-shard results (each (Q, k_i), best first, global ids) into the global top k.

    Same ordering and padding rules as :func:`topk`; ids < 0 are padding and ignored.
    """
    _check_metric(metric)
    k = _check_k(k)
    if not isinstance(scores, (list, tuple)) or not isinstance(ids, (list, tuple)):
        raise TypeError("scores and ids must be lists of (Q, k_i) arrays")
    if len(scores) != len(ids) or not scores:
        raise ValueError(f"scores and ids must be lists of the same positive length, got {len(scores)} and {len(ids)}")
    s, i = [], []
    for p, (x, y) in enumerate(zip(scores, ids)):
        x = np.asarray(x.detach().cpu() if is_torch(x) else x)
        y = np.asarray(y.detach().cpu() if is_torch(y) else y)
        if x.dtype.kind not in "fiu":
            raise TypeError(f"scores[{p}] must be a real numeric array, got dtype {x.dtype}")
        if y.size and y.dtype.kind not in "iu":
            raise TypeError(f"ids[{p}] must be an integer array, got dtype {y.dtype}")
        check_uint_ids(y, f"ids[{p}]")
        x = np.require(x, dtype=np.float32, requirements=["C", "A"])  # A: aligned (views of byte buffers)
        # NaN has no place in the ordering (the C++ sort needs a strict weak order)
        if np.isnan(x).any():
            raise ValueError(f"scores[{p}] contains NaN")
        s.append(x)
        i.append(np.require(y, dtype=np.int64, requirements=["C", "A"]))
    return _core.merge_topk(s, i, metric == "l2", k, resolve_num_threads(num_threads))

"""Exact batched top-k similarity search: :func:`topk`, :func:`merge_topk` and :class:`DenseIndex`.

This is the top of the retrieval layer (docs/architecture.md).  ``DenseIndex`` is
the public name of the dense indexes: calling it builds the index that
:func:`hardneg.backends.index_kind` picks (:class:`hardneg.exact.ExactIndex`,
or :class:`hardneg._faiss.FaissIndex` with ``backend="faiss"``), and
``isinstance(x, DenseIndex)`` holds for every :class:`hardneg.index_base.SearchIndex`
(exact, out-of-core, faiss, sharded).
"""
from __future__ import annotations

import inspect
from abc import ABCMeta
from typing import Any, List, Optional

import numpy as np

from hardneg import _core
from hardneg._arrays import check_uint_ids, is_torch
from hardneg._faiss import FaissIndex
from hardneg._threads import resolve_num_threads
from hardneg.backends import index_kind, topk_route
from hardneg.exact import ExactIndex, search_once
from hardneg.index_base import (DEFAULT_MEMORY_BUDGET, METRICS, SEARCH_BACKENDS, SearchIndex, check_k,
                                check_metric, check_search_backend)
from hardneg.ooc import DEFAULT_BLOCK_BYTES, OutOfCoreIndex, topk_memmap

BACKENDS = SEARCH_BACKENDS
__all__ = ["DenseIndex", "SearchIndex", "ExactIndex", "topk", "merge_topk", "build_index", "METRICS"]

# the argument checks under their old names (bm25 and older callers import them from here)
_check_k = check_k
_check_metric = check_metric
_check_backend = check_search_backend


def build_index(corpus: Any, metric: str = "ip", num_threads: Optional[int] = None, backend: str = "exact",
                **options: Any) -> SearchIndex:
    """What ``hn.DenseIndex(...)`` returns: the index :func:`hardneg.backends.index_kind` picks.

    Parameters
    ----------
    corpus : array (N, d)
        numpy array or torch tensor (see :class:`hardneg.exact.ExactIndex`).
    metric : {"ip", "cosine", "l2"}
    num_threads : int, optional
    backend : {"exact", "faiss"}
        "exact": :class:`~hardneg.exact.ExactIndex`; "faiss":
        :class:`~hardneg._faiss.FaissIndex` (``options``: ``index``, ``nprobe``,
        ``ef_search``, ``train_size``, ``seed``).
    """
    kind = index_kind(corpus, backend)
    if kind == "faiss":
        return FaissIndex(corpus, metric, num_threads, **options)
    if options:
        raise TypeError(f"unexpected keyword argument(s) {sorted(options)} for backend='exact' "
                        "(index=, nprobe=, ... are faiss options: backend='faiss')")
    return ExactIndex(corpus, metric, num_threads)


class _BuildOnCall(ABCMeta):
    """``DenseIndex(...)`` builds the chosen index (no instance of DenseIndex itself exists)."""

    def __call__(cls, *args: Any, **kwargs: Any):
        if cls is DenseIndex:
            return build_index(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class DenseIndex(metaclass=_BuildOnCall):
    """A corpus of vectors, validated once and searched many times.

    ``hn.DenseIndex(corpus, metric="ip", num_threads=None, backend="exact", **faiss_options)``
    returns an :class:`~hardneg.exact.ExactIndex` (exact, in memory: C++ kernel, or
    torch for CUDA tensors) or, with ``backend="faiss"``, a
    :class:`~hardneg._faiss.FaissIndex`; :meth:`from_npy` gives an
    :class:`~hardneg.ooc.OutOfCoreIndex`.  All of them, and
    :class:`~hardneg.distributed.DistributedIndex`, are siblings implementing
    :class:`~hardneg.index_base.SearchIndex` (``search``, ``add``, ``metric``,
    ``dim``, ``len()``, ``ntotal``, ``nbytes``), and ``isinstance(index, DenseIndex)``
    is true for each.

    Parameters
    ----------
    corpus : array (N, d)
        numpy array or torch tensor, float32 / float16 / bfloat16 (float64 and
        integer inputs are converted to float32, a copy).  numpy and CPU torch
        inputs with contiguous rows are used in place (no copy): do not modify
        them while the index is alive.  A CUDA tensor makes a CUDA index.
    metric : {"ip", "cosine", "l2"}
    num_threads : int, optional
        Default thread count for ``search``.
    backend : {"exact", "faiss"}
    """

    @classmethod
    def __subclasshook__(cls, other: type):
        if cls is DenseIndex:
            return True if issubclass(other, SearchIndex) else NotImplemented
        return NotImplemented

    @staticmethod
    def from_npy(path: Any, metric: str = "ip", mmap: bool = True, num_threads: Optional[int] = None,
                 block_bytes: Optional[int] = None, screen: bool = True) -> SearchIndex:
        """An index over a 2-D ``.npy`` file.

        With ``mmap=True`` the corpus stays on disk and every search streams it in
        blocks of ``block_bytes`` (default 256 MiB) with a merged running top-k, so
        resident memory stays about one block (see :mod:`hardneg.ooc`); results
        equal the in-memory search.  Unless ``screen=False``, searches the
        low-precision screen takes (256 queries or more, or from the index's third
        search) keep its coded copy in memory (about N x d bytes, ``codes_nbytes``)
        and read only the surviving rows from the file.  ``mmap=False`` loads the
        file (``np.load``).
        """
        if not mmap:
            return ExactIndex(np.load(path), metric, num_threads)
        return OutOfCoreIndex(path, metric, num_threads, DEFAULT_BLOCK_BYTES if block_bytes is None else block_bytes,
                              screen=screen)


DenseIndex.__signature__ = inspect.signature(build_index)


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
    check_metric(metric)
    k = check_k(k)
    route = topk_route(queries, corpus, backend)
    if route == "torch":
        if len(corpus.shape) == 2 and int(corpus.shape[0]) == 0:
            raise ValueError("corpus is empty: need at least one row")
        return ExactIndex(corpus, metric).search(queries, k, exclude, backend="torch", memory_budget=memory_budget)
    if route == "stream":  # np.memmap: streamed in blocks, pages released after each
        return topk_memmap(queries, corpus, k, metric, exclude, num_threads)
    return search_once(queries, corpus, k, metric, exclude, num_threads)


def merge_topk(scores: List[np.ndarray], ids: List[np.ndarray], k: int, metric: str = "ip",
               num_threads: Optional[int] = None):
    """Merge per-shard results (each (Q, k_i), best first, global ids) into the global top k.

    Same ordering and padding rules as :func:`topk`; ids < 0 are padding and ignored.
    """
    check_metric(metric)
    k = check_k(k)
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

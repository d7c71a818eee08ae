"""The search-index protocol every dense index implements, and the argument checks they share.

:class:`SearchIndex` is the abstract base of hardneg's dense indexes, which are
siblings: :class:`hardneg.exact.ExactIndex` (in memory: C++ kernel or torch),
:class:`hardneg.ooc.OutOfCoreIndex` (streamed from disk),
:class:`hardneg._faiss.FaissIndex` (approximate, faiss) and
:class:`hardneg.distributed.DistributedIndex` (sharded over ranks).  Each calls
``SearchIndex.__init__`` and keeps its own state; callers (mining, the CLI) use
only the methods below.  :func:`hardneg.DenseIndex` builds the right one
(:mod:`hardneg.backends` decides which).

This module imports no other index module (it sits below all of them).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional, Tuple

from hardneg._threads import resolve_num_threads
from hardneg._validate import check_bytes, check_choice, check_int

METRICS = ("ip", "cosine", "l2")
SEARCH_BACKENDS = ("auto", "cpp", "torch")
DEFAULT_MEMORY_BUDGET = 1 << 30


def check_metric(metric: Any) -> str:
    """``metric`` if it is one of :data:`METRICS`, else ValueError."""
    return check_choice(metric, "metric", METRICS)


def check_k(k: Any) -> int:
    """Results per query: a positive integer below 2**32 (ids are below 2**32; a larger k could
    only add padding)."""
    return check_int(k, "k", minimum=1, maximum=2**32 - 1)


def check_search_backend(backend: Any) -> str:
    return check_choice(backend, "backend", SEARCH_BACKENDS)


def check_output(num_queries: int, k: int) -> None:
    """ValueError naming k when the padded (Q, k) float32 scores + int64 ids cannot be allocated."""
    check_bytes(int(num_queries) * int(k) * 12, f"k={k}")


class SearchIndex(ABC):
    """A corpus of vectors that answers top-k queries.

    Implementations: exact in memory, out of core, faiss, sharded (see the module
    docstring).  All share these conventions: ``search`` returns ``(scores float32
    (Q, k), ids int64 (Q, k))``, best first (descending for "ip"/"cosine", ascending
    squared distance for "l2"), ties by ascending id, padded with id -1 and score
    -inf (+inf for "l2"), excluded ids skipped while still returning k results, in
    the queries' type and device.

    Parameters
    ----------
    metric : {"ip", "cosine", "l2"}
    num_threads : int, optional
        Default thread count for :meth:`search`.
    """

    def __init__(self, metric: str = "ip", num_threads: Optional[int] = None):
        self.metric = check_metric(metric)
        self.num_threads = None if num_threads is None else resolve_num_threads(num_threads)
        self._dim: Optional[int] = None
        self._size = 0

    # ---- the protocol
    @abstractmethod
    def search(self, queries: Any, k: int = 10, exclude: Any = None, **options: Any) -> Tuple[Any, Any]:
        """Top-k corpus rows for each query (queries (Q, d)); see the class docstring."""

    @abstractmethod
    def add(self, vectors: Any) -> "SearchIndex":
        """Append rows (M, d) with ids ``len(self) .. len(self) + M - 1``; returns self."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of memory the index holds or reads in place (see each implementation)."""

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

    # ---- helpers for implementations
    def _set_dim(self, d: int, name: str) -> None:
        """Fix the dimension on the first rows; ValueError naming ``name`` on a mismatch."""
        if d == 0:
            raise ValueError(f"{name} must have at least one column")
        if self._dim is None:
            self._dim = int(d)
        elif d != self._dim:
            raise ValueError(f"{name} has dimension {d} but the index has dimension {self._dim}")

    def _check_query_dim(self, queries: Any) -> None:
        qd = queries.shape[1] if hasattr(queries, "shape") and len(queries.shape) == 2 else None
        if qd is not None and qd != self._dim:
            raise ValueError(f"queries have dimension {qd} but the corpus has dimension {self._dim}")

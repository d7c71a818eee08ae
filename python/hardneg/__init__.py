"""hardneg: hard-negative mining and contrastive training of dense retrievers.

Exact batched top-k search, BM25, in-batch / cross-batch contrastive losses,
retrieval metrics with trec_eval semantics and a mining pipeline, on a C++ core.
"""
from hardneg._version import __version__
from hardneg import _core
from hardneg._threads import get_num_threads, set_num_threads
from hardneg.topk import DenseIndex, merge_topk, topk
from hardneg.info import info, simd_level

# --- bm25 (issue 3) ---
from hardneg.bm25 import BM25
# --- end bm25 ---

__all__ = [
    "__version__",
    "DenseIndex",
    "topk",
    "merge_topk",
    "get_num_threads",
    "set_num_threads",
    "info",
    "simd_level",
    "BM25",
]

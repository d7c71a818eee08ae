"""hardneg: hard-negative mining and contrastive training of dense retrievers.

Exact batched top-k search, BM25, in-batch / cross-batch contrastive losses,
retrieval metrics with trec_eval semantics and a mining pipeline, on a C++ core.
"""
from hardneg._version import __version__
from hardneg import _core
from hardneg._threads import get_num_threads, set_num_threads
from hardneg.topk import DenseIndex, merge_topk, topk
from hardneg.info import info, simd_level

# --- mining pipeline (issue 6) ---
from hardneg import datasets
from hardneg.mining import MinedNegatives, load_negatives, mine_hard_negatives
# --- end mining pipeline ---

__all__ = [
    "__version__",
    "DenseIndex",
    "topk",
    "merge_topk",
    "get_num_threads",
    "set_num_threads",
    "info",
    "simd_level",
    # mining pipeline
    "datasets",
    "mine_hard_negatives",
    "MinedNegatives",
    "load_negatives",
]

"""hardneg: hard-negative mining and contrastive training of dense retrievers.

Exact batched top-k search, BM25, in-batch / cross-batch contrastive losses,
retrieval metrics with trec_eval semantics and a mining pipeline, on a C++ core.
"""
from hardneg._version import __version__
from hardneg import _core
from hardneg._log import check_simd_override as _check_simd_override
from hardneg._threads import get_num_threads, register_threadpoolctl as _register_threadpoolctl, set_num_threads
from hardneg.index_base import SearchIndex
from hardneg.topk import DenseIndex, merge_topk, topk
from hardneg.info import info, simd_level
from hardneg.metrics import Qrels, evaluate, read_run
from hardneg.fusion import fuse
from hardneg import distributed, ooc
from hardneg.bm25 import BM25
from hardneg import datasets
from hardneg.mining import MinedNegatives, load_negatives, mine_hard_negatives

_check_simd_override(_core)
_register_threadpoolctl()

# The losses need torch: loaded on first attribute access, so `import hardneg` works without it.
_LOSSES_NAMES = ("InfoNCELoss", "CachedInfoNCELoss", "CrossBatchMemory", "contrastive_scores",
                 "SentenceTransformersLoss")


def __getattr__(name):
    if name in _LOSSES_NAMES:
        from hardneg import losses as _losses

        return getattr(_losses, name)
    raise AttributeError(f"module 'hardneg' has no attribute {name!r}")


__all__ = [
    "__version__",
    # search
    "DenseIndex",
    "SearchIndex",
    "topk",
    "merge_topk",
    "distributed",
    "ooc",
    "BM25",
    # runtime
    "get_num_threads",
    "set_num_threads",
    "info",
    "simd_level",
    # metrics and fusion
    "Qrels",
    "evaluate",
    "read_run",
    "fuse",
    # losses (lazy, need torch)
    "InfoNCELoss",
    "CachedInfoNCELoss",
    "CrossBatchMemory",
    "contrastive_scores",
    "SentenceTransformersLoss",
    # mining
    "datasets",
    "mine_hard_negatives",
    "MinedNegatives",
    "load_negatives",
]

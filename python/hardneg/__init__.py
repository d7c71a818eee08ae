"""hardneg: hard-negative mining and contrastive training of dense retrievers.

Exact batched top-k search, BM25, in-batch / cross-batch contrastive losses,
retrieval metrics with trec_eval semantics and a mining pipeline, on a C++ core.
"""
from hardneg._version import __version__
from hardneg import _core
from hardneg._threads import get_num_threads, set_num_threads
from hardneg.topk import DenseIndex, merge_topk, topk
from hardneg.info import info, simd_level

# --- metrics and fusion (issue 4) ---
from hardneg.metrics import Qrels, evaluate, read_run
from hardneg.fusion import fuse
# --- end metrics ---
# --- scale-out: out-of-core streaming, torch.distributed sharding, faiss backend (issue 7)
from hardneg import distributed, ooc
# ---
# --- losses (need torch: loaded on first attribute access, so `import hardneg` works without torch) ---
_LOSSES_NAMES = ("InfoNCELoss", "CrossBatchMemory", "contrastive_scores", "SentenceTransformersLoss")


def __getattr__(name):
    if name in _LOSSES_NAMES:
        from hardneg import losses as _losses

        return getattr(_losses, name)
    raise AttributeError(f"module 'hardneg' has no attribute {name!r}")
# --- end losses ---
# --- bm25 (issue 3) ---
from hardneg.bm25 import BM25
# --- end bm25 ---
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
    # metrics and fusion (issue 4)
    "Qrels",
    "evaluate",
    "read_run",
    "fuse",
    "distributed",
    "ooc",
    # losses (lazy, need torch)
    "InfoNCELoss",
    "CrossBatchMemory",
    "contrastive_scores",
    "SentenceTransformersLoss",
    "BM25",
    # mining pipeline
    "datasets",
    "mine_hard_negatives",
    "MinedNegatives",
    "load_negatives",
]

"""sentence-transformers' ``mine_hard_negatives`` split into prepare / call / convert, so a benchmark
times only the peer's own call: ``prepare`` of tests/st_reference.py (the test oracle), imported here.

prepare (untimed): its ``datasets.Dataset`` of (anchor, positive) names and the embedding cache files
``query_embeddings_<hash>.npy`` / ``corpus_embeddings_<hash>.npy`` that its ``cache_folder`` loads
instead of encoding.  call (timed): ``mine_hard_negatives`` alone, with its embedding cache.
convert (untimed): its labeled-list output to corpus rows per query name.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from st_reference import prepare  # noqa: E402,F401  (tests/st_reference.py)

__all__ = ["prepare"]

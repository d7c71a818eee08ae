"""Which implementation serves a dense search: the one module that decides.

Every caller asks here instead of testing devices, types and options itself:

* :func:`index_kind` -- which index class a corpus gets ("exact", "out_of_core",
  "faiss" or "sharded"); :func:`hardneg.DenseIndex`, :func:`hardneg.ooc.as_index`
  and the CLI build from it.
* :func:`search_engine` -- for an exact in-memory search, the C++ kernel ("cpp":
  numpy and CPU tensors) or the chunked torch code ("torch": a CUDA corpus or
  queries, or ``backend="torch"``).
* :func:`topk_route` -- for the one-shot :func:`hardneg.topk`: "cpp", "torch" or
  "stream" (an ``np.memmap`` corpus, searched block by block).

Decisions only: this module imports no index module, so every index module may
ask it (no import cycle).  To add a backend, add its name here and the class that
serves it (see docs/architecture.md).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from hardneg._arrays import is_cuda
from hardneg._validate import check_choice
from hardneg.index_base import check_search_backend

INDEX_BACKENDS = ("exact", "faiss")
INDEX_KINDS = ("exact", "out_of_core", "faiss", "sharded")


def is_file_corpus(corpus: Any) -> bool:
    """A corpus that lives in a file: a ``.npy`` path or an ``np.memmap``."""
    return isinstance(corpus, (str, os.PathLike, np.memmap))


def index_kind(corpus: Any, backend: str = "exact", stream_files: bool = False, world_size: int = 1) -> str:
    """The index class for ``corpus``.

    Parameters
    ----------
    corpus : array, tensor, ``.npy`` path or np.memmap
    backend : {"exact", "faiss"}
        "faiss" -> "faiss" (approximate; faiss's own threads and GPU use).
    stream_files : bool
        True: a path or an np.memmap is streamed ("out_of_core", bounded resident
        memory); False: it is read in place by the exact index (as
        ``DenseIndex(np.memmap)`` always did).
    world_size : int
        Ranks sharing the corpus (a torchrun launch): above 1 -> "sharded".

    Returns
    -------
    str, one of :data:`INDEX_KINDS`.
    """
    check_choice(backend, "backend", INDEX_BACKENDS)
    if world_size > 1:
        if backend == "faiss":
            raise ValueError("backend='faiss' cannot be combined with a sharded (multi-rank) search")
        return "sharded"
    if backend == "faiss":
        return "faiss"
    if stream_files and is_file_corpus(corpus):
        return "out_of_core"
    return "exact"


def search_engine(queries: Any, corpus_on_cuda: bool, backend: str = "auto") -> str:
    """"cpp" or "torch" for an exact in-memory search (``backend`` in "auto", "cpp", "torch").

    ValueError when the queries and the corpus are on different devices.
    """
    check_search_backend(backend)
    if is_cuda(queries) != corpus_on_cuda:
        raise ValueError("queries and corpus must be on the same device (mixed devices)")
    return "torch" if corpus_on_cuda or backend == "torch" else "cpp"


def topk_route(queries: Any, corpus: Any, backend: str = "auto") -> str:
    """"cpp", "torch" or "stream" for :func:`hardneg.topk` (ValueError for mixed devices)."""
    check_search_backend(backend)
    if is_cuda(queries) != is_cuda(corpus) or (is_cuda(queries) and queries.device != corpus.device):
        raise ValueError("queries and corpus must be on the same device (mixed devices)")
    if is_cuda(corpus) or backend == "torch":
        return "torch"
    if isinstance(corpus, np.memmap):
        return "stream"
    return "cpp"


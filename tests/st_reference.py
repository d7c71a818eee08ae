"""Run sentence-transformers' ``util.mine_hard_negatives`` on precomputed embeddings.

Its ``cache_folder`` loads ``query_embeddings_<hash>.npy`` / ``corpus_embeddings_<hash>.npy``
instead of encoding, so a model stub that only provides ``similarity`` suffices; opaque id
strings stand in for the texts.  ``prepare`` splits the run into an untimed preparation, the
peer's own call and an untimed conversion (benchmarks/compare_mining.py and benchmarks/quick.py
time only the call); ``st_mine`` does all three (tests/test_mining.py).  Needs torch,
sentence-transformers and datasets.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

STUB_NAME = "hardneg-stub"


class StubModel:
    """Just enough of a SentenceTransformer for mine_hard_negatives with cached embeddings:
    ``similarity`` is "cosine", "dot", "euclidean" or "manhattan"."""

    def __init__(self, similarity: str = "cosine", dim: int = 0, name: str = STUB_NAME):
        import torch
        from sentence_transformers import util

        self.device = torch.device("cpu")
        self.model_card_data = SimpleNamespace(base_model=name)
        self._dim = dim
        sims = {"dot": (util.dot_score, util.pairwise_dot_score), "cosine": (util.cos_sim, util.pairwise_cos_sim),
                "euclidean": (util.euclidean_sim, util.pairwise_euclidean_sim),
                "manhattan": (util.manhattan_sim, util.pairwise_manhattan_sim)}
        self._sim, self._pair = sims[similarity]

    def similarity(self, a, b):
        return self._sim(a, b)

    def similarity_pairwise(self, a, b):
        return self._pair(a, b)

    def get_embedding_dimension(self):
        return self._dim

    def encode_query(self, *a, **k):  # pragma: no cover - the cache must be hit
        raise AssertionError("the embedding cache was not used")

    encode_document = encode_query


def _hash(items: List[str]) -> str:
    return hashlib.sha256(repr((STUB_NAME, None, None, items)).encode(), usedforsecurity=False).hexdigest()


def prepare(query_names: Sequence[str], corpus_names: Sequence[str], positives: Sequence[Sequence[int]],
            corpus_emb: np.ndarray, query_emb: np.ndarray, cache_folder: str, similarity: str = "cosine",
            **kwargs) -> Tuple[Callable[[], object], Callable[[object], Dict[str, List[int]]]]:
    """``(call, convert)``: ``call()`` runs only the peer's miner, with its embedding cache files
    written to ``cache_folder`` here; ``convert(out)`` gives the negatives (corpus rows, in ST's
    order) per query name, for the queries that have positives.

    ``query_emb`` row i embeds ``query_names[i]``; queries without positives are left out
    (sentence-transformers needs a positive per row).
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    anchors, pos, keep_q = [], [], []
    for i, (q, p) in enumerate(zip(query_names, positives)):
        if len(p) == 0:
            continue
        keep_q.append(i)
        for d in p:
            anchors.append(q)
            pos.append(corpus_names[d])
    queries = list(dict.fromkeys(anchors))
    corpus = list(dict.fromkeys(list(corpus_names) + pos))
    assert len(corpus) == len(corpus_names), "corpus names must be unique"
    np.save(os.path.join(cache_folder, f"query_embeddings_{_hash(queries)}.npy"),
            np.ascontiguousarray(query_emb[keep_q], dtype=np.float32))
    np.save(os.path.join(cache_folder, f"corpus_embeddings_{_hash(corpus)}.npy"),
            np.ascontiguousarray(corpus_emb, dtype=np.float32))
    ds = Dataset.from_dict({"anchor": anchors, "positive": pos})
    model = StubModel(similarity, corpus_emb.shape[1])
    corpus_list = list(corpus_names)
    kwargs.setdefault("verbose", False)

    def call():
        with contextlib.redirect_stderr(io.StringIO()):
            return mine_hard_negatives(ds, model, corpus=corpus_list, cache_folder=cache_folder,
                                       output_format="labeled-list", **kwargs)

    row = {name: i for i, name in enumerate(corpus_names)}

    def convert(out) -> Dict[str, List[int]]:
        result: Dict[str, List[int]] = {}
        for rec in out:
            a = rec["anchor"]
            if a not in result:
                result[a] = [row[t] for t in rec["positive"][1:]]
        return {q: result.get(q, []) for q in queries}

    return call, convert


def st_mine(query_names: Sequence[str], corpus_names: Sequence[str], positives: Sequence[Sequence[int]],
            corpus_emb: np.ndarray, query_emb: np.ndarray, similarity: str = "cosine",
            cache_folder: Optional[str] = None, **kwargs) -> Dict[str, List[int]]:
    """``prepare`` + call + convert in one: negatives (corpus rows, in ST's order) per query name."""
    with tempfile.TemporaryDirectory() as tmp:
        call, convert = prepare(query_names, corpus_names, positives, corpus_emb, query_emb,
                                cache_folder or tmp, similarity, **kwargs)
        return convert(call())

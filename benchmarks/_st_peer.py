"""sentence-transformers' ``mine_hard_negatives`` split into prepare / call / convert, so a benchmark
times only the peer's own call (tests/st_reference.py's ``st_mine`` does all three in one).

prepare (untimed): its ``datasets.Dataset`` of (anchor, positive) names and the embedding cache files
``query_embeddings_<hash>.npy`` / ``corpus_embeddings_<hash>.npy`` that its ``cache_folder`` loads
instead of encoding.  call (timed): ``mine_hard_negatives`` alone, with its embedding cache.
convert (untimed): its labeled-list output to corpus rows per query name.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # st_reference: the test oracle
from st_reference import StubModel, _hash  # noqa: E402  (tests/st_reference.py)


def prepare(query_names: Sequence[str], corpus_names: Sequence[str], positives: Sequence[Sequence[int]],
            corpus_emb: np.ndarray, query_emb: np.ndarray, cache_folder: str, similarity: str = "cosine",
            **kwargs) -> Tuple[Callable[[], object], Callable[[object], Dict[str, List[int]]]]:
    """(call, convert): ``call()`` runs only the peer's miner; ``convert(out)`` maps its output to rows."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    anchors, pos, keep_q = [], [], []
    for i, (q, p) in enumerate(zip(query_names, positives)):
        if len(p) == 0:
            continue  # sentence-transformers needs a positive per row
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

"""A training table whose negative columns can be swapped while a trainer reads it.

One row per (query, positive) pair; the negatives are corpus rows held in one int64 table
``(Q, n)`` in shared memory (a torch tensor after ``share_memory_()``), and the texts are
looked up when a batch is read.  :meth:`NegativesTable.dataset` is a ``datasets.Dataset`` whose
columns ``anchor, positive, negative_1 .. negative_n`` come from a format transform, so a data
loader that is already running (and its worker processes) reads the new negatives from the
next batch it fetches, without rebuilding anything.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from hardneg.datasets import RetrievalDataset
from hardneg.mining import MinedNegatives

__all__ = ["NegativesTable"]

ROW_COLUMN = "_hardneg_row"  # the stored column the transform replaces by the negative texts


class _Lookup:
    """The format transform: a batch of (anchor, positive, row) -> the n-tuple columns.

    A plain class (not a closure) so the dataset pickles into data-loader worker processes;
    the shared-memory table travels by handle, so workers see every later update.
    """

    def __init__(self, ids: Any, texts: List[str], n: int):
        self.ids, self.texts, self.n = ids, texts, n

    def __call__(self, batch: Dict[str, list]) -> Dict[str, list]:
        rows = batch[ROW_COLUMN]
        neg = self.ids[rows].tolist() if len(rows) else []
        out = {"anchor": batch["anchor"], "positive": batch["positive"]}
        for k in range(self.n):
            out[f"negative_{k + 1}"] = [self.texts[r[k]] for r in neg]
        return out


class NegativesTable:
    """The current negatives of a training set, mutable in place.

    Parameters
    ----------
    dataset : RetrievalDataset
        The training split (queries, positives, corpus texts).
    mined : MinedNegatives
        The first round.  Queries with at least one positive and all ``num_negatives``
        negatives get training rows (one per positive), as sentence-transformers'
        n-tuple output; the others never do.
    keep_previous : bool
        On :meth:`update`, a query whose new pool is short keeps its previous negatives
        in the missing slots (all of them when the pool came back empty).  False: the
        missing slots get random corpus rows that are not its positives.
    seed : int
        For those random rows.

    Attributes
    ----------
    ids : torch.Tensor int64 (Q, n), shared memory
        Current negatives (corpus rows) of every query; rows of queries without training
        rows hold -1.
    query_index : int64 (R,)
        The query of each training row.
    positive_rows : int64 (R,)
        The positive of each training row.
    """

    def __init__(self, dataset: RetrievalDataset, mined: MinedNegatives, *, keep_previous: bool = True,
                 seed: int = 0):
        import torch

        if not isinstance(mined, MinedNegatives):
            raise TypeError(f"mined must be MinedNegatives, got {type(mined).__name__}")
        if mined.ids.shape[0] != dataset.num_queries:
            raise ValueError(f"mined has {mined.ids.shape[0]} queries but the dataset {dataset.num_queries}")
        self.dataset_ = dataset
        self.num_negatives = int(mined.ids.shape[1])
        self.keep_previous = bool(keep_previous)
        self.seed = int(seed)
        self.rounds = 0
        full = (mined.ids >= 0).all(axis=1)
        positives = dataset.positives()
        q_idx, p_rows = [], []
        for j in np.flatnonzero(full).tolist():
            for p in positives[j].tolist():
                q_idx.append(j)
                p_rows.append(p)
        self.query_index = np.array(q_idx, dtype=np.int64)
        self.positive_rows = np.array(p_rows, dtype=np.int64)
        self.active = np.zeros(dataset.num_queries, dtype=bool)
        self.active[self.query_index] = True
        table = np.where(self.active[:, None], mined.ids, -1).astype(np.int64)
        self.ids = torch.from_numpy(table).share_memory_()
        self._positives = positives
        self._dataset = None

    def __len__(self) -> int:
        return int(self.query_index.size)

    def current(self) -> np.ndarray:
        """int64 (Q, n): a copy of the current negatives (-1 for queries without training rows)."""
        return self.ids.numpy().copy()

    def dataset(self):
        """A ``datasets.Dataset`` with columns ``anchor, positive, negative_1 .. negative_n`` read lazily.

        The same object is returned on every call; it reflects :meth:`update` from the next
        batch read.
        """
        if self._dataset is None:
            from datasets import Dataset

            ds = self.dataset_
            base = Dataset.from_dict({
                "anchor": [ds.query_texts[j] for j in self.query_index.tolist()],
                "positive": [ds.corpus_texts[p] for p in self.positive_rows.tolist()],
                ROW_COLUMN: self.query_index.tolist(),
            })
            base.set_transform(_Lookup(self.ids, ds.corpus_texts, self.num_negatives))
            self._dataset = base
        return self._dataset

    def update(self, mined: MinedNegatives) -> Dict[str, int]:
        """Swap in a new round of negatives, in place.  Returns counts of what changed.

        Returns
        -------
        dict
            ``queries`` (with training rows), ``changed`` (queries whose negatives differ),
            ``short`` (queries whose new pool had fewer than n), ``empty`` (none at all),
            ``filled_previous`` / ``filled_random`` (slots filled from the previous round / at random).
        """
        import torch

        if mined.ids.shape != tuple(self.ids.shape):
            raise ValueError(f"mined.ids has shape {mined.ids.shape}, the table {tuple(self.ids.shape)}")
        old = self.ids.numpy()
        new = np.where(self.active[:, None], mined.ids, -1).astype(np.int64)
        counts = (new >= 0).sum(1)
        short = np.flatnonzero(self.active & (counts < self.num_negatives))
        self.rounds += 1
        rng = np.random.default_rng([self.seed, self.rounds])
        filled_prev = filled_rand = 0
        for j in short.tolist():
            got = [int(x) for x in new[j] if x >= 0]
            if self.keep_previous:
                extra = [int(x) for x in old[j] if x >= 0 and int(x) not in got]
                filled_prev += self.num_negatives - len(got)
            else:
                extra = self._random_rows(j, got, rng)
                filled_rand += self.num_negatives - len(got)
            new[j] = (got + extra)[: self.num_negatives]
        changed = int((self.active & (new != old).any(1)).sum())
        self.ids.copy_(torch.from_numpy(new))  # in place: loaders and workers see it
        return {"queries": int(self.active.sum()), "changed": changed, "short": int(short.size),
                "empty": int((self.active & (counts == 0)).sum()), "filled_previous": filled_prev,
                "filled_random": filled_rand}

    def _random_rows(self, j: int, got: List[int], rng: np.random.Generator) -> List[int]:
        """Random corpus rows for query j, not its positives nor already chosen."""
        banned = set(got) | set(self._positives[j].tolist())
        n_docs = self.dataset_.num_docs
        if n_docs - len(banned) < self.num_negatives - len(got):
            raise ValueError("the corpus is too small to fill the negatives at random")
        out: List[int] = []
        while len(got) + len(out) < self.num_negatives:
            r = int(rng.integers(n_docs))
            if r not in banned:
                banned.add(r)
                out.append(r)
        return out

    def negatives(self, query: int) -> Optional[List[str]]:
        """The current negative texts of query row ``query`` (None when it has no training rows)."""
        if not self.active[query]:
            return None
        texts = self.dataset_.corpus_texts
        return [texts[r] for r in self.ids[query].tolist()]

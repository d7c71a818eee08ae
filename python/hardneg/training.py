"""Negatives that stay hard while the model trains (ANCE-style refresh).

Negatives mined once with the starting model get easy as the model learns them.  A refresh
re-encodes the corpus with the model being trained, re-mines with the same knobs as
:func:`hardneg.mine_hard_negatives`, and swaps the training set's negative columns in place:

* :func:`refresh_negatives` does one refresh, for hand-written training loops;
* :class:`RefreshNegatives` is a ``transformers.TrainerCallback`` that does it every
  ``every_n_steps`` optimizer steps (or at the end of each epoch) inside sentence-transformers'
  ``SentenceTransformerTrainer``, without restarting it.  Train on its ``train_dataset``.

How the swap reaches a running trainer: the training set is a ``datasets.Dataset`` whose
``negative_i`` columns are produced by a format transform that reads one shared-memory table
of corpus rows (``hardneg._negtable``); a refresh overwrites that table.  The data loader reads
the new negatives from the next batch it *fetches*.  A refresh at the end of an epoch is
therefore exact (the next epoch's iterator starts after it); a refresh after optimizer step N
reaches the micro-batches fetched after it: accelerate's loader holds one batch fetched ahead
and the trainer fetches the ``gradient_accumulation_steps`` micro-batches of an update step at
its start, so with no accumulation and no loader workers the batch of step N + 2 is the first
on the new negatives (each loader worker adds up to ``prefetch_factor`` batches of delay).

See ``docs/training.md``.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from hardneg._encode import encode_texts, model_fingerprint
from hardneg._negtable import NegativesTable
from hardneg._validate import check_bool, check_float, check_int, check_optional_int
from hardneg.datasets import RetrievalDataset
from hardneg.mining import MinedNegatives, mine_hard_negatives

try:  # the callback base class; refresh_negatives works without transformers
    from transformers import TrainerCallback as _CallbackBase
except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
    _CallbackBase = object

__all__ = ["refresh_negatives", "RefreshResult", "RefreshNegatives", "NegativesTable"]

logger = logging.getLogger("hardneg")

# Arguments of mine_hard_negatives the refresh supplies itself.
_RESERVED = ("corpus_embeddings", "query_embeddings", "encoder", "index", "ds")


@dataclass
class RefreshResult:
    """What one refresh produced.

    Attributes
    ----------
    mined : MinedNegatives
        The new round (``mined.ids`` (Q, n) corpus rows, -1 padded).
    corpus_embeddings : float32 (N, d)
        The corpus embeddings after the refresh (the array passed in, updated in place).
    query_embeddings : float32 (Q, d)
    stats : dict
        ``rows_encoded``, ``queries_encoded``, ``reused`` (model unchanged: nothing encoded),
        ``seconds`` (``encode_corpus``, ``encode_queries``, ``mine``, ``swap``, ``total``),
        ``memory_mib`` (``embeddings``, ``rss``, ``rss_peak``, ``cuda_peak`` when on a GPU) and,
        with a table, the counts of :meth:`NegativesTable.update`.
    """

    mined: MinedNegatives
    corpus_embeddings: np.ndarray
    query_embeddings: np.ndarray
    stats: Dict[str, Any] = field(default_factory=dict)


def _memory_mib(arrays: List[np.ndarray], model: Any) -> Dict[str, float]:
    """Embedding bytes, current and peak resident memory of the process, CUDA peak (MiB)."""
    out = {"embeddings": sum(a.nbytes for a in arrays if a is not None) / 2**20}
    try:
        with open("/proc/self/statm") as f:
            out["rss"] = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:  # pragma: no cover - not Linux
        pass
    out["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    device = getattr(model, "device", None)
    if getattr(device, "type", None) == "cuda":
        import torch

        out["cuda_peak"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _check_mine_kwargs(kwargs: Dict[str, Any]) -> None:
    bad = [k for k in _RESERVED if k in kwargs]
    if bad:
        raise ValueError(f"{', '.join(bad)} cannot be passed: the refresh encodes with the model and searches "
                         f"its own embeddings (pass index_factory=callable(embeddings) -> index for a custom index)")


def refresh_negatives(model: Any, dataset: RetrievalDataset, corpus_embeddings: Optional[np.ndarray] = None, *,
                      rows: Optional[np.ndarray] = None, query_embeddings: Optional[np.ndarray] = None,
                      table: Optional[NegativesTable] = None,
                      encode_batch_size: int = 64, progress: bool = True,
                      index_factory: Optional[Callable[[np.ndarray], Any]] = None,
                      **mine_kwargs: Any) -> RefreshResult:
    """Re-encode (part of) the corpus and the queries with ``model``, re-mine, swap the table.

    Parameters
    ----------
    model : SentenceTransformer or callable(list[str]) -> array (n, d)
        The model being trained (its ``encode_document`` / ``encode_query`` are used when
        present); encoding runs under ``torch.no_grad`` on the model's device, in eval mode,
        and the model's training mode is restored afterwards.
    dataset : RetrievalDataset
        The training split.
    corpus_embeddings : float32 (N, d), optional
        The current corpus embeddings; rows listed in ``rows`` are overwritten in place, the
        others are kept as they are.  None: all rows are encoded into a new array.
    rows : int64 (m,), optional
        Corpus rows to re-encode (None: all).  Ignored when ``corpus_embeddings`` is None.
    query_embeddings : float32 (Q, d), optional
        Use these instead of encoding the queries (e.g. when the model has not changed).
    table : NegativesTable, optional
        Training table to update in place with the new negatives.
    encode_batch_size : int
        Texts per forward pass.
    progress : bool
        Progress bars for the encoding and the mining.
    index_factory : callable(float32 (N, d)) -> index, optional
        Builds the search index over the updated embeddings (passed as ``index=`` to the
        miner), e.g. ``lambda c: hn.DenseIndex(c, metric="cosine")``.
    **mine_kwargs
        The knobs of :func:`hardneg.mine_hard_negatives` (``num_negatives``, ``range_min``,
        ``range_max``, margins, ``sampling``, ``seed``, ``rescorer``, ``metric``, ...).

    Returns
    -------
    RefreshResult
    """
    _check_mine_kwargs(mine_kwargs)
    if not isinstance(dataset, RetrievalDataset):
        raise TypeError(f"dataset must be a RetrievalDataset, got {type(dataset).__name__}")
    encode_batch_size = check_int(encode_batch_size, "encode_batch_size", 1)
    progress = check_bool(progress, "progress")
    if table is not None and not isinstance(table, NegativesTable):
        raise TypeError(f"table must be a NegativesTable, got {type(table).__name__}")
    t_all = time.perf_counter()
    seconds: Dict[str, float] = {}

    t0 = time.perf_counter()
    texts = dataset.corpus_texts
    if corpus_embeddings is None:
        C = encode_texts(model, texts, kind="document", batch_size=encode_batch_size, progress=progress,
                         desc="refresh: encode corpus")
        n_rows = len(texts)
    else:
        C = _writable_embeddings(corpus_embeddings, dataset.num_docs)
        idx = np.arange(dataset.num_docs) if rows is None else _check_rows(rows, dataset.num_docs)
        if idx.size:
            part = encode_texts(model, [texts[r] for r in idx.tolist()], kind="document",
                                batch_size=encode_batch_size, progress=progress, desc="refresh: encode corpus")
            if part.shape[1] != C.shape[1]:
                raise ValueError(f"the model embeds in dimension {part.shape[1]} but corpus_embeddings has "
                                 f"{C.shape[1]}")
            C[idx] = part  # in place: rows not re-encoded keep their embeddings
        n_rows = int(idx.size)
    seconds["encode_corpus"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if query_embeddings is None:
        Q = encode_texts(model, dataset.query_texts, kind="query", batch_size=encode_batch_size,
                         progress=progress, desc="refresh: encode queries")
        n_queries = len(dataset.query_texts)
    else:
        Q, n_queries = query_embeddings, 0
    seconds["encode_queries"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    index = index_factory(C) if index_factory is not None else None
    mined = mine_hard_negatives(dataset, corpus_embeddings=C, query_embeddings=Q, index=index,
                                **{"progress": progress, **mine_kwargs})
    seconds["mine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    swap = table.update(mined) if table is not None else {}
    seconds["swap"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_all
    stats = {"rows_encoded": n_rows, "queries_encoded": n_queries, "reused": False,
             "seconds": seconds, "memory_mib": _memory_mib([C, Q], model), **swap}
    return RefreshResult(mined, C, Q, stats)


def _writable_embeddings(x: Any, n: int) -> np.ndarray:
    """The caller's float32 C-contiguous writable array itself; anything else is refused."""
    if not isinstance(x, np.ndarray) or isinstance(x, np.memmap) and not x.flags.writeable:
        raise TypeError("corpus_embeddings must be a writable numpy array (N, d) (it is updated in place)")
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"corpus_embeddings must have shape ({n}, d), got {x.shape}")
    if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
        raise TypeError("corpus_embeddings must be a writable C-contiguous float32 array (it is updated in place); "
                        "use np.ascontiguousarray(x, dtype=np.float32)")
    return x


def _check_rows(rows: Any, n: int) -> np.ndarray:
    r = np.asarray(rows)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise TypeError("rows must be a 1-D array of corpus row indices")
    r = r.astype(np.int64)
    if r.size and (r.min() < 0 or r.max() >= n):
        raise ValueError(f"rows must lie in [0, {n})")
    return np.unique(r)


class RefreshNegatives(_CallbackBase):
    """A ``TrainerCallback`` that re-mines the training negatives with the model being trained.

    Parameters
    ----------
    dataset : RetrievalDataset
        The training split.  Train on :attr:`train_dataset` (columns ``anchor, positive,
        negative_1 .. negative_n``, one row per (query, positive) with a full set of negatives
        in the first round).
    model : SentenceTransformer or callable, optional
        Encodes the first round when neither ``initial`` nor ``corpus_embeddings`` is given.
        During training the trainer's model is used.
    every_n_steps : int, optional
        Refresh after every this many optimizer steps (``state.global_step``).  None: at the
        end of every epoch but the last.
    corpus_sample : int or float, optional
        Re-encode only this many corpus rows (a float in (0, 1]: this fraction), drawn anew at
        each refresh, plus (``refresh_positives``) the training queries' positives and current
        negatives; the other rows keep their old embeddings.  None: the whole corpus.
    refresh_positives : bool
        With ``corpus_sample``, always re-encode the positives and the current negatives.
    keep_previous : bool
        A query whose new pool comes back short keeps its previous negatives in the missing
        slots (all of them when it came back empty); False: random corpus rows fill them.
    reuse_unchanged : bool
        Skip the encoding (reuse the embeddings) when the model's parameters have not
        changed since the last encoding (e.g. a frozen model); re-mining still runs.
    initial : MinedNegatives, optional
        The first round, already mined (then ``corpus_embeddings`` should be the embeddings
        it was mined with, or the first refresh encodes the whole corpus).
    corpus_embeddings : float32 (N, d), optional
        Embeddings of the corpus by the starting model (updated in place by every refresh).
    query_embeddings : float32 (Q, d), optional
        With ``corpus_embeddings``: the first round is mined from these instead of encoding.
    encode_batch_size : int
    progress : bool
    seed : int
        The miner's ``seed`` (for ``sampling="random"`` / ``"softmax"``), and the corpus samples
        and random fills.
    index_factory : callable(float32 (N, d)) -> index, optional
        See :func:`refresh_negatives`.
    **mine_kwargs
        The knobs of :func:`hardneg.mine_hard_negatives`, used for every round.

    Attributes
    ----------
    table : NegativesTable
    mined : MinedNegatives
        The latest round.
    corpus_embeddings : float32 (N, d)
    history : list of dict
        One entry per round (the first included): ``step``, ``epoch``, and the stats of
        :class:`RefreshResult` (time, memory, rows encoded, queries changed).
    """

    def __init__(self, dataset: RetrievalDataset, model: Any = None, *, every_n_steps: Optional[int] = None,
                 corpus_sample: Optional[Union[int, float]] = None, refresh_positives: bool = True,
                 keep_previous: bool = True, reuse_unchanged: bool = True, initial: Optional[MinedNegatives] = None,
                 corpus_embeddings: Optional[np.ndarray] = None, query_embeddings: Optional[np.ndarray] = None,
                 encode_batch_size: int = 64, progress: bool = True, seed: int = 0,
                 index_factory: Optional[Callable[[np.ndarray], Any]] = None, **mine_kwargs: Any):
        _check_mine_kwargs(mine_kwargs)
        if not isinstance(dataset, RetrievalDataset):
            raise TypeError(f"dataset must be a RetrievalDataset, got {type(dataset).__name__}")
        self.every_n_steps = check_optional_int(every_n_steps, "every_n_steps", 1)
        self.corpus_sample = _check_sample(corpus_sample, dataset.num_docs)
        self.refresh_positives = check_bool(refresh_positives, "refresh_positives")
        self.reuse_unchanged = check_bool(reuse_unchanged, "reuse_unchanged")
        self.encode_batch_size = check_int(encode_batch_size, "encode_batch_size", 1)
        self.progress = check_bool(progress, "progress")
        self.seed = check_int(seed, "seed", 0)
        self.dataset = dataset
        self.index_factory = index_factory
        self.mine_kwargs = {**mine_kwargs, "seed": self.seed}
        self.history: List[Dict[str, Any]] = []
        self._fingerprint = None
        self.query_embeddings = query_embeddings
        self.corpus_embeddings = None if corpus_embeddings is None else _writable_embeddings(
            corpus_embeddings, dataset.num_docs)
        if initial is not None:
            if not isinstance(initial, MinedNegatives):
                raise TypeError(f"initial must be MinedNegatives, got {type(initial).__name__}")
            mined, stats = initial, {"rows_encoded": 0, "queries_encoded": 0, "reused": True}
        elif self.corpus_embeddings is not None and query_embeddings is not None:
            t0 = time.perf_counter()
            mined = mine_hard_negatives(dataset, corpus_embeddings=self.corpus_embeddings,
                                        query_embeddings=query_embeddings,
                                        index=index_factory(self.corpus_embeddings) if index_factory else None,
                                        **{"progress": self.progress, **self.mine_kwargs})
            stats = {"rows_encoded": 0, "queries_encoded": 0, "reused": True,
                     "seconds": {"mine": time.perf_counter() - t0}}
        else:
            if model is None:
                raise ValueError("pass model (to encode the first round), initial, or corpus_embeddings and "
                                 "query_embeddings")
            res = refresh_negatives(model, dataset, self.corpus_embeddings, encode_batch_size=self.encode_batch_size,
                                    progress=self.progress, index_factory=index_factory, **self.mine_kwargs)
            self.corpus_embeddings, mined, stats = res.corpus_embeddings, res.mined, res.stats
            self.query_embeddings = res.query_embeddings
            self._fingerprint = model_fingerprint(model)
        self.mined = mined
        self.table = NegativesTable(dataset, mined, keep_previous=keep_previous, seed=self.seed)
        self.history.append({"step": 0, "epoch": 0.0, **stats})
        logger.info("hardneg refresh: first round, %d training rows (%d queries)", len(self.table),
                    int(self.table.active.sum()))

    @property
    def train_dataset(self):
        """The ``datasets.Dataset`` to train on; its negative columns follow every refresh."""
        return self.table.dataset()

    def _rows_to_encode(self) -> Optional[np.ndarray]:
        """Corpus rows for this refresh (None: all of them)."""
        if self.corpus_sample is None or self.corpus_embeddings is None:
            return None
        n = self.dataset.num_docs
        rng = np.random.default_rng([self.seed, len(self.history)])
        parts = [rng.choice(n, size=min(n, self.corpus_sample), replace=False)]
        if self.refresh_positives:
            parts.append(self.table.positive_rows)
            cur = self.table.ids.numpy()
            parts.append(cur[cur >= 0])
        return np.unique(np.concatenate(parts).astype(np.int64))

    def refresh(self, model: Any, step: Optional[int] = None, epoch: Optional[float] = None,
                force: bool = False) -> Dict[str, Any]:
        """Run one refresh now with ``model``; returns (and appends to :attr:`history`) its entry.

        ``force``: encode even when the model looks unchanged.
        """
        fp = model_fingerprint(model)
        unchanged = (self.reuse_unchanged and not force and fp is not None and fp == self._fingerprint
                     and self.corpus_embeddings is not None)
        if unchanged:  # nothing to re-encode: re-mine from the stored embeddings
            rows = np.zeros(0, np.int64)
        else:
            rows = self._rows_to_encode()
        res = refresh_negatives(model, self.dataset, self.corpus_embeddings, rows=rows, table=self.table,
                                query_embeddings=self.query_embeddings if unchanged else None,
                                encode_batch_size=self.encode_batch_size, progress=self.progress,
                                index_factory=self.index_factory, **self.mine_kwargs)
        self._fingerprint = fp
        self.corpus_embeddings, self.query_embeddings = res.corpus_embeddings, res.query_embeddings
        self.mined = res.mined
        entry = {"step": step, "epoch": epoch, **res.stats, "reused": unchanged}
        self.history.append(entry)
        s, m = entry["seconds"], entry["memory_mib"]
        logger.info("hardneg refresh at step %s: encoded %d of %d corpus rows and %d queries in %.2f s, mined in "
                    "%.2f s; negatives changed for %d of %d queries (%d short, %d slots kept from the previous "
                    "round); embeddings %.1f MiB, RSS %.0f MiB (peak %.0f MiB)", step, entry["rows_encoded"],
                    self.dataset.num_docs, entry["queries_encoded"], s["encode_corpus"] + s["encode_queries"],
                    s["mine"], entry["changed"], entry["queries"], entry["short"], entry["filled_previous"],
                    m["embeddings"], m.get("rss", float("nan")), m["rss_peak"])
        return entry

    # ----------------------------------------------------------------------------- trainer events

    def on_step_end(self, args, state, control, model=None, **kwargs):
        n = self.every_n_steps
        if n is not None and state.global_step % n == 0 and state.global_step < state.max_steps:
            self.refresh(model, step=state.global_step, epoch=state.epoch)
        return control

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps is None and state.global_step < state.max_steps:
            self.refresh(model, step=state.global_step, epoch=state.epoch)
        return control


def _check_sample(value: Any, n: int) -> Optional[int]:
    """corpus_sample as a row count (a float is a fraction of ``n``)."""
    if value is None:
        return None
    if isinstance(value, float):
        f = check_float(value, "corpus_sample", positive=True, maximum=1.0)
        return max(1, int(round(f * n)))
    return check_int(value, "corpus_sample", 1)

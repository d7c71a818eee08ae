"""Denoising mined negatives with a guide: rescorers for ``mine_hard_negatives(..., rescorer=)``.

Mined "negatives" are often unlabelled positives.  Two published remedies score every
candidate (and the positives) with a stronger model and drop the suspicious ones:

* RocketQA: a cross-encoder; drop candidates it scores above a threshold (RocketQA kept those
  under 0.1) or above the positive.  :class:`CrossEncoderRescorer`; the threshold can be
  chosen from the qrels with :func:`calibrate_threshold`.
* GIST: a guide embedding model; drop candidates the guide scores above the positive
  (minus a margin).  :class:`GuideRescorer`.

Each rescorer is a callable ``(queries, docs) -> scores`` for ``mine_hard_negatives``; its
scores become ``mined.scores`` and order the candidates, and its rule is expressed with the
miner's own filters (so ``report()`` counts what each dropped)::

    rs = CrossEncoderRescorer(cross_encoder, threshold=0.1)
    mined = hn.mine_hard_negatives(ds, **rs.mining_kwargs(), corpus_embeddings=C, query_embeddings=Q)

:func:`mine_denoised` does the same and records the rescorer (model, threshold, calibration)
in ``mined.params["denoise"]``.  See ``docs/training.md``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from hardneg._arrays import is_torch
from hardneg._encode import encode_texts
from hardneg._validate import check_bool, check_choice, check_float, check_int, check_optional_int
from hardneg.datasets import RetrievalDataset
from hardneg.mining import MinedNegatives, mine_hard_negatives

__all__ = ["CrossEncoderRescorer", "GuideRescorer", "Calibration", "calibrate_threshold", "denoise_kwargs",
           "mine_denoised"]

MARGIN_STRATEGIES = ("absolute", "relative")


def _model_name(model: Any) -> str:
    for attr in ("model_card_data", "config"):
        obj = getattr(model, attr, None)
        name = getattr(obj, "base_model", None) or getattr(obj, "_name_or_path", None)
        if name:
            return str(name)
    return type(model).__name__


def _check_pairs(queries: Sequence[str], docs: Sequence[str]) -> None:
    if len(queries) != len(docs):
        raise ValueError(f"queries ({len(queries)}) and docs ({len(docs)}) must have the same length")


# ---------------------------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """A cross-encoder score threshold chosen from labelled pairs.

    Attributes
    ----------
    threshold : float
        Pairs scoring above it are called relevant.
    method : str
        How it was chosen ("balanced_accuracy").
    balanced_accuracy : float
        ``(TPR + TNR) / 2`` at the threshold on the calibration pairs.
    tpr, tnr : float
        Share of positive pairs above / random pairs at or below the threshold.
    num_positive, num_negative : int
        Calibration pairs of each kind.
    positive_quantiles, negative_quantiles : dict
        Score quantiles (5 %, 25 %, 50 %, 75 %, 95 %) of each kind.
    """

    threshold: float
    method: str
    balanced_accuracy: float
    tpr: float
    tnr: float
    num_positive: int
    num_negative: int
    positive_quantiles: Dict[str, float] = field(default_factory=dict)
    negative_quantiles: Dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"threshold {self.threshold:.4g} ({self.method}: {self.balanced_accuracy:.3f}, TPR {self.tpr:.3f}, "
                f"TNR {self.tnr:.3f} on {self.num_positive} qrels positives and {self.num_negative} random pairs)")


def best_balanced_threshold(pos: np.ndarray, neg: np.ndarray) -> Dict[str, float]:
    """The threshold maximising balanced accuracy of the rule "relevant iff score > t".

    Candidates are the midpoints between consecutive distinct scores (and one value below the
    lowest / above the highest); on ties the smallest such threshold wins (it drops more).

    Parameters
    ----------
    pos, neg : float (P,), (M,)
        Scores of relevant and of non-relevant pairs (both non-empty).

    Returns
    -------
    dict with ``threshold``, ``balanced_accuracy``, ``tpr``, ``tnr``
    """
    pos = np.sort(np.asarray(pos, dtype=np.float64))
    neg = np.sort(np.asarray(neg, dtype=np.float64))
    if pos.size == 0 or neg.size == 0:
        raise ValueError("calibration needs at least one positive and one negative pair")
    u = np.unique(np.concatenate([pos, neg]))
    span = max(1.0, float(u[-1] - u[0]))
    cand = np.concatenate([[u[0] - span], (u[:-1] + u[1:]) / 2, [u[-1] + span]])
    tpr = 1.0 - np.searchsorted(pos, cand, side="right") / pos.size  # share of positives > t
    tnr = np.searchsorted(neg, cand, side="right") / neg.size  # share of negatives <= t
    ba = (tpr + tnr) / 2
    i = int(np.argmax(ba))  # first (smallest) maximiser
    return {"threshold": float(cand[i]), "balanced_accuracy": float(ba[i]), "tpr": float(tpr[i]),
            "tnr": float(tnr[i])}


def _random_pairs(dataset: RetrievalDataset, per_query: int, rng: np.random.Generator):
    """(query index, corpus row) of ``per_query`` random non-positive rows for each query with positives."""
    positives = dataset.positives()
    qs: List[int] = []
    rs: List[int] = []
    n = dataset.num_docs
    for j, pos in enumerate(positives):
        if pos.size == 0 or n - pos.size <= 0:
            continue
        banned = set(pos.tolist())
        want = min(per_query, n - len(banned))
        picked: List[int] = []
        while len(picked) < want:
            r = int(rng.integers(n))
            if r not in banned:
                banned.add(r)
                picked.append(r)
        qs.extend([j] * len(picked))
        rs.extend(picked)
    return np.array(qs, dtype=np.int64), np.array(rs, dtype=np.int64)


def calibrate_threshold(cross_encoder: Any, dataset: RetrievalDataset, *, negatives_per_query: int = 4,
                        max_queries: Optional[int] = None, seed: int = 0, batch_size: int = 64,
                        progress: bool = True) -> Calibration:
    """Pick the cross-encoder score above which a pair is more likely relevant than not.

    The labelled pairs are the dataset's qrels positives (relevant) and, for each query with a
    positive, ``negatives_per_query`` corpus rows drawn at random among its non-positives
    (non-relevant).  The threshold maximises balanced accuracy (mean of the true-positive and
    true-negative rates) of "relevant iff score > t": the point where, with the two classes
    weighted equally, a pair above it is more likely relevant than not (where the two score
    densities cross when each is unimodal).  Random rows are easier than mined candidates, so
    the threshold is a ceiling: mined candidates above it are very likely unlabelled positives.

    Parameters
    ----------
    cross_encoder : CrossEncoder, CrossEncoderRescorer or callable(queries, docs) -> scores
    dataset : RetrievalDataset
        A split with qrels (e.g. train).
    negatives_per_query : int
        Random non-relevant rows per query (>= 1).
    max_queries : int, optional
        Calibrate on this many queries (drawn at random) only.
    seed : int
        For the random rows and the query sample.
    batch_size : int
        Pairs per cross-encoder forward pass.
    progress : bool

    Returns
    -------
    Calibration
    """
    if not isinstance(dataset, RetrievalDataset):
        raise TypeError(f"dataset must be a RetrievalDataset, got {type(dataset).__name__}")
    negatives_per_query = check_int(negatives_per_query, "negatives_per_query", 1)
    max_queries = check_optional_int(max_queries, "max_queries", 1)
    seed = check_int(seed, "seed", 0)
    scorer = cross_encoder if isinstance(cross_encoder, CrossEncoderRescorer) else \
        CrossEncoderRescorer(cross_encoder, batch_size=batch_size, progress=progress)
    rng = np.random.default_rng(seed)
    pos_list = dataset.positives()
    keep = np.flatnonzero([p.size > 0 for p in pos_list])
    if max_queries is not None and keep.size > max_queries:
        keep = np.sort(rng.choice(keep, size=max_queries, replace=False))
    sub = np.zeros(dataset.num_queries, dtype=bool)
    sub[keep] = True
    pq = np.concatenate([np.full(pos_list[j].size, j, np.int64) for j in keep]) if keep.size else np.zeros(0, np.int64)
    pr = np.concatenate([pos_list[j] for j in keep]) if keep.size else np.zeros(0, np.int64)
    nq, nr = _random_pairs(dataset, negatives_per_query, rng)
    nq, nr = nq[sub[nq]], nr[sub[nq]]
    if pq.size == 0 or nq.size == 0:
        raise ValueError("calibration needs queries with positives and a corpus with other rows")
    qt, ct = dataset.query_texts, dataset.corpus_texts
    qs = [qt[j] for j in pq.tolist()] + [qt[j] for j in nq.tolist()]
    ds_ = [ct[r] for r in pr.tolist()] + [ct[r] for r in nr.tolist()]
    s = scorer(qs, ds_)
    ps, ns = s[: pq.size], s[pq.size:]
    best = best_balanced_threshold(ps, ns)
    qk = (0.05, 0.25, 0.5, 0.75, 0.95)
    return Calibration(method="balanced_accuracy", num_positive=int(ps.size), num_negative=int(ns.size),
                       positive_quantiles={f"{q:.0%}": float(np.quantile(ps, q)) for q in qk},
                       negative_quantiles={f"{q:.0%}": float(np.quantile(ns, q)) for q in qk}, **best)


# ---------------------------------------------------------------------------------------------- rescorers


class CrossEncoderRescorer:
    """Cross-encoder scores for mined candidates (RocketQA's denoising).

    Parameters
    ----------
    model : sentence_transformers.CrossEncoder or anything with ``.predict(pairs)``, or a
        callable(queries, docs) -> scores
        A single-score cross-encoder (its activation, e.g. a sigmoid, is applied as ``predict`` does).
    threshold : float or Calibration, optional
        Candidates scoring above it are dropped (``max_score``).  None: only the positive rule.
    margin : float or None
        Candidates must score at least this much below the query's positive
        (``absolute_margin``; 0 = "not above the positive").  None: no positive rule.
    batch_size : int
        Pairs per forward pass.
    progress : bool
        The cross-encoder's progress bar.
    """

    def __init__(self, model: Any, threshold: Union[None, float, Calibration] = None, *,
                 margin: Optional[float] = 0.0, batch_size: int = 64, progress: bool = True):
        if not (callable(getattr(model, "predict", None)) or callable(model)):
            raise TypeError(f"model must be a CrossEncoder (with .predict) or a callable(queries, docs), "
                            f"got {type(model).__name__}")
        self.model = model
        self.calibration = threshold if isinstance(threshold, Calibration) else None
        self.threshold = check_float(threshold.threshold if self.calibration else threshold, "threshold")
        self.margin = check_float(margin, "margin", nonnegative=True)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.progress = check_bool(progress, "progress")
        self.calls = 0
        self.pairs_scored = 0
        self.seconds = 0.0

    def __call__(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        """float32 (P,): the score of each (queries[i], docs[i]) pair."""
        _check_pairs(queries, docs)
        t0 = time.perf_counter()
        if not queries:
            return np.zeros(0, np.float32)
        if callable(getattr(self.model, "predict", None)):
            pairs = list(zip(queries, docs))
            out = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=self.progress)
        else:
            out = self.model(list(queries), list(docs))
        if is_torch(out):
            out = out.detach().float().cpu().numpy()
        a = np.asarray(out, dtype=np.float32)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.shape != (len(queries),):
            raise ValueError(f"the cross-encoder returned shape {a.shape} for {len(queries)} pairs; a single score "
                             f"per pair is needed (a model with num_labels=1)")
        self.calls += 1
        self.pairs_scored += a.size
        self.seconds += time.perf_counter() - t0
        return a

    def mining_kwargs(self) -> Dict[str, Any]:
        """The ``mine_hard_negatives`` arguments of the rule: the rescorer, ``max_score`` = threshold,
        ``absolute_margin`` = margin, the relative margin off."""
        return {"rescorer": self, "max_score": self.threshold, "absolute_margin": self.margin,
                "relative_margin": None}

    def describe(self) -> Dict[str, Any]:
        """What to record next to the mined negatives."""
        out: Dict[str, Any] = {"kind": "cross-encoder", "model": _model_name(self.model),
                               "threshold": self.threshold, "margin": self.margin}
        if self.calibration is not None:
            out["calibration"] = str(self.calibration)
        return out


class GuideRescorer:
    """Guide-model similarities for mined candidates (GIST's denoising).

    Parameters
    ----------
    guide : SentenceTransformer or callable(list[str]) -> array (n, d)
        The guide; queries go through ``encode_query`` and documents through
        ``encode_document`` when it has them.  Scores are cosine similarities.
    margin : float
        Drop candidates scoring above ``positive - margin`` ("absolute", GIST's default with
        margin 0) or above ``positive - |positive| * margin`` ("relative").
    margin_strategy : {"absolute", "relative"}
    batch_size : int
        Texts per forward pass.
    progress : bool
    cache : bool
        Keep the embeddings of texts already seen (repeated mining rounds with a fixed guide
        encode each text once).
    """

    def __init__(self, guide: Any, *, margin: float = 0.0, margin_strategy: str = "absolute", batch_size: int = 64,
                 progress: bool = True, cache: bool = True):
        if not (callable(getattr(guide, "encode", None)) or callable(guide)):
            raise TypeError(f"guide must be a SentenceTransformer or a callable(list[str]) -> array, "
                            f"got {type(guide).__name__}")
        self.guide = guide
        self.margin = check_float(margin, "margin", nonnegative=True, optional=False)
        self.margin_strategy = check_choice(margin_strategy, "margin_strategy", MARGIN_STRATEGIES)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.progress = check_bool(progress, "progress")
        self.cache = check_bool(cache, "cache")
        self._seen: Dict[str, Dict[str, np.ndarray]] = {"query": {}, "document": {}}
        self.pairs_scored = 0
        self.seconds = 0.0

    def _embed(self, texts: Sequence[str], kind: str) -> np.ndarray:
        """Unit-norm rows (float32) for ``texts``; each distinct text is encoded once."""
        seen = self._seen[kind] if self.cache else {}
        todo = list(dict.fromkeys(t for t in texts if t not in seen))
        if todo:
            e = encode_texts(self.guide, todo, kind=kind, batch_size=self.batch_size, progress=self.progress,
                             desc=f"guide: encode {kind}s")
            norms = np.linalg.norm(e, axis=1, keepdims=True)
            e = e / np.where(norms > 0, norms, 1)
            seen.update(zip(todo, e))
        return np.stack([seen[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)

    def __call__(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        """float32 (P,): cosine similarity of the guide's embeddings of each pair."""
        _check_pairs(queries, docs)
        t0 = time.perf_counter()
        if not queries:
            return np.zeros(0, np.float32)
        q = self._embed(queries, "query")
        d = self._embed(docs, "document")
        if q.shape[1] != d.shape[1]:
            raise ValueError(f"the guide embeds queries in dimension {q.shape[1]} and documents in {d.shape[1]}")
        s = np.einsum("ij,ij->i", q, d).astype(np.float32)
        self.pairs_scored += s.size
        self.seconds += time.perf_counter() - t0
        return s

    def mining_kwargs(self) -> Dict[str, Any]:
        """The ``mine_hard_negatives`` arguments of the rule (a margin filter on the guide's scores)."""
        absolute = self.margin_strategy == "absolute"
        return {"rescorer": self, "absolute_margin": self.margin if absolute else None,
                "relative_margin": None if absolute else self.margin, "max_score": None}

    def describe(self) -> Dict[str, Any]:
        return {"kind": "guide", "model": _model_name(self.guide), "margin": self.margin,
                "margin_strategy": self.margin_strategy}


# ---------------------------------------------------------------------------------------------- mining


def denoise_kwargs(rescorer: Union[CrossEncoderRescorer, GuideRescorer], **overrides: Any) -> Dict[str, Any]:
    """``rescorer.mining_kwargs()`` updated with ``overrides`` (other mining knobs, or changes)."""
    if not isinstance(rescorer, (CrossEncoderRescorer, GuideRescorer)):
        raise TypeError(f"rescorer must be a CrossEncoderRescorer or a GuideRescorer, got {type(rescorer).__name__}")
    return {**rescorer.mining_kwargs(), **overrides}


def mine_denoised(ds: RetrievalDataset, rescorer: Union[CrossEncoderRescorer, GuideRescorer],
                  **mine_kwargs: Any) -> MinedNegatives:
    """:func:`hardneg.mine_hard_negatives` with ``rescorer``'s rule, recording it in ``params["denoise"]``.

    ``mine_kwargs`` are the other mining knobs (embeddings, ranges, ``num_negatives``, ...); a
    filter named there overrides the rescorer's.  ``mined.params["denoise"]`` holds
    :meth:`describe` (model, threshold, margin, calibration) plus the pairs scored and the time.
    """
    kw = denoise_kwargs(rescorer, **mine_kwargs)
    before = (rescorer.pairs_scored, rescorer.seconds)
    mined = mine_hard_negatives(ds, **kw)
    info = rescorer.describe()
    info["pairs_scored"] = rescorer.pairs_scored - before[0]
    info["seconds"] = rescorer.seconds - before[1]
    mined.params["denoise"] = info
    return mined

"""The miner's result, :class:`MinedNegatives`: report, training files, and reading them back."""
from __future__ import annotations

import gzip
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from hardneg._io import atomic_text_output
from hardneg.datasets import RetrievalDataset
from hardneg.mining._config import FORMATS


@dataclass
class MinedNegatives:
    """Hard negatives mined for each query of a dataset.

    Attributes
    ----------
    ids : int64 (Q, num_negatives)
        Corpus rows of the negatives, best first; -1 where a query got fewer.
        Row ``j`` is query ``dataset.query_ids[j]``.
    scores : float32 (Q, num_negatives)
        Their scores (the rescorer's when one was given); -inf where ids is -1.
    anchor_scores : float32 (Q,)
        The positive score each query's filters were measured against (its
        lowest-scoring positive by default); NaN for a query without positives.
    positive_scores : float32 (Q, num_negatives)  (property)
        ``anchor_scores`` aligned with each negative (``positive_scores - scores`` is
        the margin of each pair); NaN where ``ids`` is -1.
    positive_ids : list of int64 arrays
        Corpus rows of each query's positives.
    all_positive_scores : list of float32 arrays
        The scores of those positives.
    positive_in_top : bool (Q,) or None
        With ``require_positive_in_top=K``: whether a positive of the query is in the retriever's
        top K.  With ``positive_not_in_top="drop"`` the other queries have no negatives and are
        left out of every file (:attr:`dropped`).
    sources : int8 (Q, num_negatives) or None
        With ``negatives_from``: the index into ``source_names`` of the source each negative came
        from; -1 where ids is -1.
    source_names : list of str
        The sources in the order given (``["bm25", "dense"]``).
    source_anchor_scores : float32 (S, Q) or None
        Each source's anchor score per query (scores of different sources are not comparable).
    provenance : dict
        Model, prompts, input paths and hashes of the embeddings used (for the run's manifest).
    """

    ids: np.ndarray
    scores: np.ndarray
    anchor_scores: np.ndarray
    positive_ids: List[np.ndarray]
    all_positive_scores: List[np.ndarray]
    dataset: RetrievalDataset
    params: Dict[str, Any] = field(default_factory=dict)
    stats: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)
    positive_in_top: Optional[np.ndarray] = None
    sources: Optional[np.ndarray] = None
    source_names: List[str] = field(default_factory=list)
    source_anchor_scores: Optional[np.ndarray] = None
    provenance: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        return (f"MinedNegatives(queries={len(self)}, num_negatives={self.ids.shape[1]}, "
                f"found={int(self.counts.sum())}, retriever={self.params.get('retriever')!r})")

    @property
    def positive_scores(self) -> np.ndarray:
        """float32 (Q, num_negatives): the anchor positive score of each (query, negative) pair, NaN padded."""
        if self.sources is not None and self.source_anchor_scores is not None:  # each source's own anchor
            src = np.maximum(self.sources, 0).astype(np.int64)
            a = np.asarray(self.source_anchor_scores, dtype=np.float32)[src, np.arange(len(self))[:, None]]
        else:
            a = np.asarray(self.anchor_scores, dtype=np.float32)[:, None]
        return np.where(self.ids >= 0, a, np.float32(np.nan)).astype(np.float32)

    @property
    def dropped(self) -> np.ndarray:
        """bool (Q,): queries the positive-in-top filter dropped (left out of every file)."""
        if self.positive_in_top is None or self.params.get("positive_not_in_top") != "drop":
            return np.zeros(len(self), bool)
        return ~np.asarray(self.positive_in_top, bool)

    def negative_sources(self) -> Optional[List[List[str]]]:
        """The source of each negative, per query (None without ``negatives_from``)."""
        if self.sources is None:
            return None
        names = self.source_names
        return [[names[s] for s in row if s >= 0] for row in self.sources.tolist()]

    @property
    def counts(self) -> np.ndarray:
        """Negatives found per query, int64 (Q,)."""
        return (self.ids >= 0).sum(axis=1)

    @property
    def query_ids(self) -> List[str]:
        return self.dataset.query_ids

    def negative_doc_ids(self) -> List[List[str]]:
        """The negatives as corpus document ids, per query."""
        cid = self.dataset.corpus_ids
        return [[cid[r] for r in row if r >= 0] for row in self.ids.tolist()]

    # ------------------------------------------------------------------------------------- report

    def report(self, print_it: bool = False, html: Optional[Union[str, os.PathLike]] = None) -> str:
        """A text summary: counts, score distributions, filters, suspected false negatives, timings.

        ``html``: also write a self-contained HTML report there (histograms, negatives by rank,
        counts per filter and source, the strongest false-negative suspects side by side; see
        :func:`hardneg.report_html.write_html_report`).
        """
        if html is not None:
            from hardneg.report_html import write_html_report

            write_html_report(self, html)
        n = self.ids.shape[1]
        cnt = self.counts
        valid = self.ids >= 0
        neg = self.scores[valid].astype(np.float64)
        has_pos = np.array([p.size > 0 for p in self.positive_ids], dtype=bool)
        pos = self.anchor_scores[has_pos].astype(np.float64)
        diff = (self.positive_scores[valid] - self.scores[valid]).astype(np.float64)
        diff = diff[np.isfinite(diff)]
        lines = []
        p = self.params
        lines.append(f"hardneg mining report: retriever={p.get('retriever')}, {len(self)} queries, "
                     f"{self.dataset.num_docs} documents")
        rng = f"ranks {p.get('range_min')}..{p.get('range_max') - 1}" if p.get("range_max") else ""
        filt = ", ".join(f"{k}={p[k]}" for k in ("relative_margin", "absolute_margin", "max_score", "min_score")
                         if p.get(k) is not None) or "no score filter"
        lines.append(f"asked {n} negatives per query from {rng}, {filt}, sampling={p.get('sampling')}, "
                     f"positive_anchor={p.get('positive_anchor')}")
        lines.append(f"negatives found: {int(cnt.sum()):,} of {n * len(self):,}; "
                     f"queries with fewer than {n}: {int((cnt < n).sum())} "
                     f"(none at all: {int((cnt == 0).sum())}); queries without positives: {int((~has_pos).sum())}")
        lines.append("")
        fmt = "{:<8}{:>12}{:>12}{:>12}"
        lines.append(fmt.format("score", "positive", "negative", "difference"))
        lines.append(fmt.format("count", f"{pos.size:,}", f"{neg.size:,}", f"{diff.size:,}"))

        def stat(fn, a):
            return f"{fn(a):.4f}" if a.size else "-"

        for label, fn in (("mean", np.mean), ("std", np.std), ("min", np.min),
                          ("25%", lambda a: np.quantile(a, 0.25)), ("median", np.median),
                          ("75%", lambda a: np.quantile(a, 0.75)), ("max", np.max)):
            lines.append(fmt.format(label, stat(fn, pos), stat(fn, neg), stat(fn, diff)))
        lines.append("")
        for name, value in self.stats.get("filtered", {}).items():
            total = max(1, self.stats.get("candidates", 1))
            lines.append(f"skipped {value:,} candidates ({value / total:.2%}) due to {name}={p.get(name)}")
        lines.extend(self._extra_report_lines())
        # suspected false negatives: negatives scoring above a positive of their query
        above_low = above_high = 0
        examples = []
        for j in np.flatnonzero(cnt > 0):
            ps = self.all_positive_scores[j]
            if ps.size == 0:
                continue
            s = self.scores[j][self.ids[j] >= 0]
            lo, hi = float(np.min(ps)), float(np.max(ps))
            above_low += int((s > lo).sum())
            above_high += int((s > hi).sum())
            if len(examples) < 5 and s.size and s[0] > hi:
                examples.append((self.dataset.query_ids[j], self.dataset.corpus_ids[self.ids[j, 0]], float(s[0]), hi))
        lines.append(f"suspected false negatives: {above_low:,} negatives score above their query's lowest "
                     f"positive, {above_high:,} above its highest")
        for q, d, s, h in examples:
            lines.append(f"  e.g. query {q}: document {d} scores {s:.4f} > best positive {h:.4f}")
        if self.timings:
            lines.append("timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.timings.items()))
        text = "\n".join(lines)
        if print_it:
            print(text)
        return text

    def _extra_report_lines(self) -> List[str]:
        """Report lines of the positive-in-top filter and of the sources (none when unused)."""
        lines = []
        pit = self.stats.get("positive_not_in_top")
        if pit:
            verb = "dropped" if pit["action"] == "drop" else "kept and flagged"
            lines.append(f"positive not in the top {pit['k']}: {pit['queries']:,} queries ({verb})")
        if self.sources is not None:
            dup = self.stats.get("duplicates", {})
            quotas = self.params.get("negatives_from") or {}
            lines.append("negatives per source: " + ", ".join(
                f"{k} {int((self.sources == s).sum()):,} (quota {quotas.get(k, '-')}, "
                f"{dup.get(k, 0):,} duplicates skipped)" for s, k in enumerate(self.source_names)))
        return lines

    def __str__(self) -> str:
        return self.report()

    # ------------------------------------------------------------------------------------- output

    def save(self, path: Union[str, os.PathLike], format: str = "sentence-transformers",
             manifest: bool = True) -> int:
        """Write a training file (JSON lines; ``.gz`` paths are compressed). Returns the records written.

        The file is written beside ``path`` under a temporary name and renamed into place at the
        end: an error half-way leaves an existing file at ``path`` as it was.  With ``manifest``,
        ``path + ".manifest.json"`` records how to rebuild it (:mod:`hardneg.manifest`: version,
        retrievers, model and embedding hashes, every setting, dataset fingerprint, peers'
        versions, counts and timings).  Queries the positive-in-top filter dropped are left out.
        With ``negatives_from``, the "sentence-transformers" and "ids" records carry a
        ``negative_sources`` list; with the filter in "flag" mode, "ids" records carry
        ``positive_in_top``.

        Formats
        -------
        ``"sentence-transformers"``
            n-tuples ``{"anchor", "positive", "negative_1", ..., "negative_n"}``, one row per
            (query, positive), only queries with all n negatives (as its ``output_format="n-tuple"``);
            ``datasets.load_dataset("json", data_files=path)`` reads it.
        ``"triplet"``
            ``{"anchor", "positive", "negative"}``, one row per (query, positive, negative).
        ``"flagembedding"``
            ``{"query", "pos": [...], "neg": [...], "pos_scores", "neg_scores"}`` per query with a
            positive and at least one negative (FlagEmbedding's training file).
        ``"tevatron"``
            ``{"query_id", "query", "positive_passages", "negative_passages"}`` with passages
            ``{"docid", "title", "text"}`` (Tevatron's training file).
        ``"ids"``
            ``{"query_id", "positive_ids", "positive_scores", "negative_ids", "negative_scores"}`` for
            every query (document ids, no texts); :func:`load_negatives` reads it back.
        """
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        ds = self.dataset
        out = Path(path)
        if out.parent and not out.parent.exists():
            raise FileNotFoundError(f"output folder {out.parent} does not exist")
        n = self.ids.shape[1]
        cid = ds.corpus_ids
        written = 0
        need_text = format != "ids"
        texts = ds.corpus_texts if need_text else None
        dropped = self.dropped
        src = self.negative_sources()
        flag = self.positive_in_top is not None and not dropped.any() \
            and self.params.get("positive_not_in_top") == "flag"
        with atomic_text_output(out) as f:  # a temporary file beside ``path``, renamed into place
            def emit(obj):
                nonlocal written
                f.write(json.dumps(obj, ensure_ascii=False))
                f.write("\n")
                written += 1

            for j, qid in enumerate(ds.query_ids):
                if dropped[j]:
                    continue
                row = self.ids[j]
                k = int((row >= 0).sum())
                negs = row[:k].tolist()
                nscores = [float(x) for x in self.scores[j, :k]]
                pos = self.positive_ids[j].tolist()
                pscores = [float(x) for x in self.all_positive_scores[j]]
                qtext = ds.query_texts[j]
                if format == "ids":
                    rec = {"query_id": qid, "positive_ids": [cid[p] for p in pos], "positive_scores": pscores,
                           "negative_ids": [cid[x] for x in negs], "negative_scores": nscores}
                    if src is not None:
                        rec["negative_sources"] = src[j]
                    if flag:
                        rec["positive_in_top"] = bool(self.positive_in_top[j])
                    emit(rec)
                elif format == "sentence-transformers":
                    if k < n:
                        continue
                    for p in pos:
                        rec = {"anchor": qtext, "positive": texts[p]}
                        for t, x in enumerate(negs, 1):
                            rec[f"negative_{t}"] = texts[x]
                        if src is not None:
                            rec["negative_sources"] = src[j]
                        emit(rec)
                elif format == "triplet":
                    for p in pos:
                        for x in negs:
                            emit({"anchor": qtext, "positive": texts[p], "negative": texts[x]})
                elif format == "flagembedding":
                    if not pos or not negs:
                        continue
                    emit({"query": qtext, "pos": [texts[p] for p in pos], "neg": [texts[x] for x in negs],
                          "pos_scores": pscores, "neg_scores": nscores})
                else:  # tevatron
                    if not pos:
                        continue

                    def passage(r):
                        return {"docid": cid[r], "title": ds.corpus_titles[r], "text": ds.corpus_bodies[r]}

                    emit({"query_id": qid, "query": qtext, "positive_passages": [passage(p) for p in pos],
                          "negative_passages": [passage(x) for x in negs]})
        if manifest:
            from hardneg.manifest import write_manifest

            write_manifest(self, out, format, written)
        return written


def load_negatives(path: Union[str, os.PathLike], dataset: RetrievalDataset) -> MinedNegatives:
    """Read a file written with ``save(path, format="ids")`` back into :class:`MinedNegatives`.

    Rows follow ``dataset.query_ids``; queries absent from the file get no negatives.
    Unknown document ids raise ValueError; so does a file none of whose query ids is one of
    ``dataset.query_ids`` (mined for another dataset or split), and a file with some unknown
    query ids warns, counting them.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"negatives file {p} not found")
    opener = (lambda: io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")) if p.suffix == ".gz" \
        else (lambda: open(p, encoding="utf-8"))
    recs = {}
    with opener() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                recs[str(obj["query_id"])] = obj
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{p}:{lineno}: not a record of format 'ids'") from None
    if not isinstance(dataset, RetrievalDataset):
        raise TypeError(f"dataset must be a RetrievalDataset, got {type(dataset).__name__}")
    _check_query_overlap(p, recs, dataset)
    idx = dataset.doc_index
    width = max([len(r.get("negative_ids", [])) for r in recs.values()] + [0])
    q = dataset.num_queries
    ids = np.full((q, width), -1, np.int64)
    scores = np.full((q, width), -np.inf, np.float32)
    pos_ids, pos_scores = [], []
    names: List[str] = []
    for r in recs.values():
        for name in r.get("negative_sources", []):
            if name not in names:
                names.append(name)
    sources = np.full((q, width), -1, np.int8) if names else None
    for j, qid in enumerate(dataset.query_ids):
        r = recs.get(qid)
        if r is None:
            pos_ids.append(np.zeros(0, np.int64))
            pos_scores.append(np.zeros(0, np.float32))
            continue
        try:
            negs = [idx[d] for d in r.get("negative_ids", [])]
            pos = [idx[d] for d in r.get("positive_ids", [])]
        except KeyError as e:
            raise ValueError(f"{p}: document id {e.args[0]!r} is not in the dataset's corpus") from None
        ids[j, :len(negs)] = negs
        if sources is not None:
            got = [names.index(x) for x in r.get("negative_sources", [])]
            sources[j, :len(got)] = got
        scores[j, :len(negs)] = r.get("negative_scores", [np.nan] * len(negs))
        pos_ids.append(np.array(pos, np.int64))
        pos_scores.append(np.array(r.get("positive_scores", [np.nan] * len(pos)), np.float32))
    anchor = np.array([np.min(s) if s.size else np.nan for s in pos_scores], np.float32)
    return MinedNegatives(ids, scores, anchor, pos_ids, pos_scores, dataset, params={"loaded_from": str(p)},
                          sources=sources, source_names=names)


def _check_query_overlap(path: Path, recs: Dict[str, Any], dataset: RetrievalDataset) -> None:
    """Refuse a file whose query ids are all unknown to ``dataset``; warn when some are."""
    if not recs:
        return
    known = set(dataset.query_ids)
    unknown = sum(1 for q in recs if q not in known)
    where = f"{dataset.path}, split {dataset.split}" if dataset.path else "the dataset"
    if unknown == len(recs):
        raise ValueError(f"{path}: none of its {len(recs)} query ids is a query of {where} "
                         f"(was it mined for another dataset or split?)")
    if unknown:
        warnings.warn(f"{path}: {unknown} of its {len(recs)} query ids are not queries of {where}: "
                      "they were ignored", UserWarning, stacklevel=3)

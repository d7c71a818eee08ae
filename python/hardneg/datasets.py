"""Retrieval datasets in the BEIR layout: corpus, queries and qrels.

A BEIR dataset is a folder with::

    corpus.jsonl        {"_id", "title", "text"} per line
    queries.jsonl       {"_id", "text"} per line
    qrels/<split>.tsv   query-id <tab> corpus-id <tab> score  (a header line is optional;
                        4-column TREC qrels "qid 0 docid rel" are accepted too)

:func:`load_beir` reads it into a :class:`RetrievalDataset`; :func:`from_dict`
builds one from Python dicts; :func:`load_sample` opens the small dataset
shipped inside the package.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np

from hardneg._io import open_text
from hardneg.metrics import read_qrels_rows

__all__ = ["RetrievalDataset", "CorpusTextIndex", "TextGroups", "load_beir", "from_dict", "load_sample", "sample_path", "find_embeddings"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class RetrievalDataset:
    """Corpus, queries and the relevance judgements of one split.

    Attributes
    ----------
    corpus_ids : list of str (N,)
        Document ids in file order; row ``i`` of corpus embeddings is document ``corpus_ids[i]``.
    corpus_titles, corpus_bodies : list of str (N,)
        The raw ``title`` and ``text`` fields.
    query_ids : list of str (Q,)
        The queries that have qrels in this split, in the order of ``queries.jsonl``.
        Mined negatives, embeddings passed for the split and result rows follow this order.
    query_texts : list of str (Q,)
    qrels : dict
        ``{query_id: {doc_id: relevance}}`` for the split, judgements whose document
        is absent from the corpus removed (see ``missing_qrels``).
    all_query_ids : list of str
        Every query of ``queries.jsonl`` in file order.
    query_rows : int64 (Q,)
        Row of each split query in ``queries.jsonl`` (to select rows of embeddings
        computed for all queries).
    missing_qrels : int
        Judgements dropped because their document is not in the corpus, or their
        query is not in ``queries.jsonl``.
    """

    corpus_ids: List[str]
    corpus_titles: List[str]
    corpus_bodies: List[str]
    query_ids: List[str]
    query_texts: List[str]
    qrels: Dict[str, Dict[str, int]]
    all_query_ids: List[str] = field(default_factory=list)
    query_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    missing_qrels: int = 0
    path: Optional[str] = None
    split: Optional[str] = None

    def __post_init__(self) -> None:
        self._doc_index: Optional[Dict[str, int]] = None
        self._corpus_texts: Optional[List[str]] = None
        self._text_index: Optional[CorpusTextIndex] = None
        self._split_rows_cache: Optional[Tuple[Any, np.ndarray, np.ndarray]] = None
        if not self.all_query_ids:
            self.all_query_ids = list(self.query_ids)
            self.query_rows = np.arange(len(self.query_ids), dtype=np.int64)

    def __repr__(self) -> str:
        where = f", path={self.path!r}, split={self.split!r}" if self.path else ""
        return (f"RetrievalDataset(corpus={len(self.corpus_ids)}, queries={len(self.query_ids)}, "
                f"judgements={sum(len(v) for v in self.qrels.values())}{where})")

    @property
    def corpus_texts(self) -> List[str]:
        """``title + " " + text`` per document (just ``text`` when the title is empty), as BEIR encodes them."""
        if self._corpus_texts is None:
            self._corpus_texts = [f"{t} {b}" if t else b for t, b in zip(self.corpus_titles, self.corpus_bodies)]
        return self._corpus_texts

    @property
    def doc_index(self) -> Dict[str, int]:
        """``{doc_id: corpus row}``."""
        if self._doc_index is None:
            self._doc_index = {d: i for i, d in enumerate(self.corpus_ids)}
        return self._doc_index

    @property
    def num_docs(self) -> int:
        return len(self.corpus_ids)

    @property
    def num_queries(self) -> int:
        return len(self.query_ids)

    def positives(self, min_relevance: int = 1) -> List[np.ndarray]:
        """Corpus rows (int64) judged with relevance >= ``min_relevance``, one array per query.

        Computed once per ``min_relevance`` and cached (replace ``qrels`` rather than edit it in place).
        """
        cache = self.__dict__.setdefault("_positives_cache", {})
        key = (min_relevance, id(self.qrels), id(self.query_ids))
        if key not in cache:
            idx = self.doc_index
            out = []
            for q in self.query_ids:
                rel = self.qrels.get(q, {})
                out.append(np.array([idx[d] for d, r in rel.items() if r >= min_relevance and d in idx],
                                    dtype=np.int64))
            cache.clear()
            cache[key] = out
        return [p.copy() for p in cache[key]]

    def _positives_flat(self, min_relevance: int = 1) -> Tuple[np.ndarray, np.ndarray]:
        """The positives as (count per query, concatenated rows), read-only and cached."""
        cache = self.__dict__.setdefault("_positives_flat_cache", {})
        key = (min_relevance, id(self.qrels), id(self.query_ids), id(self.corpus_ids))
        if key not in cache:
            pos = self.positives(min_relevance)
            counts = np.fromiter((p.size for p in pos), dtype=np.int64, count=len(pos))
            rows = np.concatenate(pos).astype(np.int64, copy=False) if pos else np.zeros(0, np.int64)
            counts.flags.writeable = False
            rows.flags.writeable = False
            cache.clear()
            cache[key] = (counts, rows)
        return cache[key]

    def split_query_embeddings(self, embeddings: np.ndarray, name: str = "query_embeddings",
                               cache_key: Any = None) -> np.ndarray:
        """The rows of ``embeddings`` for the split's queries, in ``query_ids`` order.

        Parameters
        ----------
        embeddings : array (Q, d) or (len(all_query_ids), d)
            One row per split query (returned as is) or one per line of the queries file
            (rows ``query_rows`` are picked: a contiguous copy).
        name : str
            The argument named in the error message.
        cache_key : hashable, optional
            The identity of the source (e.g. a file's device, inode, size and mtime): the picked
            copy is kept on the dataset, read-only, and reused while the key and ``query_rows`` stay.

        Returns
        -------
        array (Q, d)
        """
        n = embeddings.shape[0]
        if n == self.num_queries:
            return embeddings
        if n != len(self.all_query_ids):
            raise ValueError(f"{name} has {n} rows; expected {self.num_queries} (the split's queries) or "
                             f"{len(self.all_query_ids)} (every query of the queries file)")
        cached = self._split_rows_cache
        if cache_key is not None and cached is not None and cached[0] == cache_key and cached[1] is self.query_rows:
            return cached[2]
        picked = np.ascontiguousarray(embeddings[self.query_rows])
        if cache_key is not None:
            picked.flags.writeable = False
            self._split_rows_cache = (cache_key, self.query_rows, picked)
        return picked

    def text_index(self) -> "CorpusTextIndex":
        """Lookup of documents by text (:class:`CorpusTextIndex`), built once per dataset."""
        if self._text_index is None:
            self._text_index = CorpusTextIndex(self.corpus_texts)
        return self._text_index

    def _own_rows(self) -> np.ndarray:
        """Per query, the corpus row whose id equals the query id (-1: none); read-only, cached."""
        cache = self.__dict__.setdefault("_own_rows_cache", {})
        key = (id(self.query_ids), id(self.corpus_ids))
        if key not in cache:
            idx = self.doc_index
            own = np.fromiter((idx.get(q, -1) for q in self.query_ids), dtype=np.int64, count=self.num_queries)
            own.flags.writeable = False
            cache.clear()
            cache[key] = own
        return cache[key]


class CorpusTextIndex:
    """Corpus rows by text: hashes sorted once, then lookups compare only the texts whose hash matches."""

    def __init__(self, texts: List[str]):
        self.texts = texts
        h = np.fromiter((hash(t) for t in texts), dtype=np.int64, count=len(texts))
        self.order = np.argsort(h, kind="stable")
        self.sorted = h[self.order]
        self._groups: Optional[TextGroups] = None

    def may_contain(self, texts: List[str]) -> np.ndarray:
        """bool (len(texts),): whether a corpus text has the same hash (True for every text that is there)."""
        qh = np.fromiter((hash(t) for t in texts), dtype=np.int64, count=len(texts))
        return np.searchsorted(self.sorted, qh, "right") > np.searchsorted(self.sorted, qh, "left")

    def rows_with_text(self, text: str) -> List[int]:
        """Rows whose text equals ``text``, ascending."""
        hv = hash(text)
        lo = int(np.searchsorted(self.sorted, hv, "left"))
        hi = int(np.searchsorted(self.sorted, hv, "right"))
        return [int(r) for r in self.order[lo:hi] if self.texts[r] == text]

    def groups(self) -> "TextGroups":
        """Every row's text group (rows with identical texts share one), built once: O(N) after the
        hash sort; only rows whose hash is shared with another row reach a Python loop."""
        if self._groups is None:
            self._groups = TextGroups.of(self)
        return self._groups

    def group_of(self, texts: List[str]) -> np.ndarray:
        """int64 (len(texts),): the text group of each text, -1 where no corpus row has that text.

        Compares texts only within a hash match, stopping at the first equal one (O(1) per text
        even when a large group shares it)."""
        out = np.full(len(texts), -1, np.int64)
        hit = np.flatnonzero(self.may_contain(texts))
        if hit.size == 0:
            return out
        group = self.groups().group
        for j in hit.tolist():
            t = texts[j]
            hv = hash(t)
            lo = int(np.searchsorted(self.sorted, hv, "left"))
            hi = int(np.searchsorted(self.sorted, hv, "right"))
            for p in range(lo, hi):  # usually the first one: not the whole run of a large group
                r = int(self.order[p])
                if self.texts[r] == t:
                    out[j] = group[r]
                    break
        return out

    def duplicated_rows(self) -> set:
        """Rows whose hash is shared with another row (candidates for identical texts)."""
        if self.sorted.size < 2:
            return set()
        same = self.sorted[1:] == self.sorted[:-1]
        if not same.any():
            return set()
        idx = np.flatnonzero(same)
        return set(self.order[idx].tolist()) | set(self.order[idx + 1].tolist())


@dataclass(frozen=True)
class TextGroups:
    """Corpus rows grouped by identical text (every row is in exactly one group; G groups).

    ``group`` int64 (N,): each row's group id; ``first`` int64 (G,): the smallest row of each group;
    ``size`` int64 (G,); ``indptr`` int64 (G + 1,) / ``members`` int64 (N,): each group's rows,
    ascending, as a CSR.
    """

    group: np.ndarray
    first: np.ndarray
    size: np.ndarray
    indptr: np.ndarray
    members: np.ndarray

    @classmethod
    def of(cls, index: CorpusTextIndex) -> "TextGroups":
        """The groups of ``index``'s texts: runs of equal hashes, split by text where hashes collide."""
        n = index.sorted.size
        s, order, texts = index.sorted, index.order, index.texts
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if n else np.zeros(0, np.int64)
        run = np.zeros(n, np.int64)  # per sorted position: its hash run
        if n:
            run[starts[1:]] = 1
            np.cumsum(run, out=run)
        ends = np.r_[starts[1:], n]
        num = int(starts.size)
        for a, b in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
            t0 = texts[order[a]]
            rows = order[a:b].tolist()
            if all(texts[r] == t0 for r in rows):
                continue
            ids: Dict[str, int] = {t0: int(run[a])}  # a hash collision: split the run by text
            for p, r in enumerate(rows, a):
                t = texts[r]
                if t not in ids:
                    ids[t] = num
                    num += 1
                run[p] = ids[t]
        group = np.empty(n, np.int64)
        group[order] = run
        group.flags.writeable = False
        members = np.argsort(group, kind="stable")
        size = np.bincount(group, minlength=num).astype(np.int64)
        indptr = np.zeros(num + 1, np.int64)
        np.cumsum(size, out=indptr[1:])
        first = members[indptr[:-1]] if num else np.zeros(0, np.int64)
        return cls(group, first, size, indptr, members)


# ---------------------------------------------------------------------------------------------- reading


def _find(folder: Path, name: str) -> Path:
    for cand in (folder / name, folder / (name + ".gz")):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{folder / name} not found (expected the BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")


def _lines(path: Path) -> Iterable[Tuple[int, str]]:
    """(line number, line) of a UTF-8 text file (``.gz``: decompressed); undecodable bytes and
    corrupt compressed data are ValueErrors naming the file and the line."""
    try:
        with open_text(path) as f:
            yield from enumerate(f, 1)
    except (UnicodeDecodeError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(_locate_bad_bytes(path, e)) from None


def _locate_bad_bytes(path: Path, err: BaseException) -> str:
    """The message for a file that failed to decode: the first line at fault, found by reading it
    again as bytes, line by line (the text reader decodes in chunks, so it cannot tell)."""
    lineno = 0
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return (f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                            "save the file as UTF-8")
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        return f"{path}:{lineno + 1}: corrupt or truncated gzip data ({str(e) or type(e).__name__})"
    return f"{path}: cannot be read as UTF-8 text ({str(err) or type(err).__name__})"


def _read_jsonl(path: Path, what: str) -> Iterable[Tuple[int, dict]]:
    for lineno, line in _lines(path):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON in {what} ({e.msg})") from None
        except RecursionError:
            raise ValueError(f"{path}:{lineno}: JSON nested too deeply in {what}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: {what} lines must be JSON objects")
        yield lineno, obj


def _read_qrels(path: Path) -> List[Tuple[str, str, int]]:
    """The qrels rows (:func:`hardneg.metrics.read_qrels_rows`); unreadable bytes name the file and line."""
    try:
        return read_qrels_rows(path)
    except (UnicodeDecodeError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(_locate_bad_bytes(path, e)) from None


def _get_id(obj: dict, path: Path, lineno: int) -> str:
    for key in ("_id", "id", "docid", "doc_id", "query_id", "qid"):
        if key in obj:
            return str(obj[key])
    raise ValueError(f"{path}:{lineno}: no '_id' field")


def load_beir(path: PathLike, split: str = "test", qrels_path: Optional[PathLike] = None) -> RetrievalDataset:
    """Read a dataset in the BEIR layout.

    Parameters
    ----------
    path : str or Path
        Folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``
        (``.gz`` versions are read too).
    split : str
        Which qrels file; ``query_ids`` are the queries judged in it.
    qrels_path : str or Path, optional
        A qrels file elsewhere (overrides ``split``'s file).

    Returns
    -------
    RetrievalDataset

    Notes
    -----
    Judgements whose document is not in the corpus (or whose query is not in
    ``queries.jsonl``) are dropped with one warning that counts them; the count
    is kept in ``missing_qrels``.  Duplicate ids in the corpus are an error.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} not found")
    corpus_file = _find(folder, "corpus.jsonl")
    queries_file = _find(folder, "queries.jsonl")
    if qrels_path is not None:
        qrels_file = Path(qrels_path)
        if not qrels_file.is_file():
            raise FileNotFoundError(f"qrels file {qrels_file} not found")
    else:
        try:
            qrels_file = _find(folder / "qrels", f"{split}.tsv")
        except FileNotFoundError:
            have = sorted(p.name.split(".")[0] for p in (folder / "qrels").glob("*.tsv*")) if (folder / "qrels").is_dir() else []
            raise FileNotFoundError(f"qrels for split {split!r} not found in {folder / 'qrels'}"
                                    + (f" (available: {', '.join(have)})" if have else "")) from None

    ids, titles, bodies = [], [], []
    seen = set()
    for lineno, obj in _read_jsonl(corpus_file, "corpus"):
        did = _get_id(obj, corpus_file, lineno)
        if did in seen:
            raise ValueError(f"{corpus_file}:{lineno}: duplicate document id {did!r}")
        seen.add(did)
        ids.append(did)
        titles.append(str(obj.get("title") or ""))
        bodies.append(str(obj.get("text") or ""))

    all_qids, qtexts = [], {}
    for lineno, obj in _read_jsonl(queries_file, "queries"):
        qid = _get_id(obj, queries_file, lineno)
        if qid not in qtexts:
            all_qids.append(qid)
        qtexts[qid] = str(obj.get("text") or "")

    return _assemble(ids, titles, bodies, all_qids, qtexts, _read_qrels(qrels_file), str(folder), split, seen)


def _assemble(ids, titles, bodies, all_qids, qtexts, qrel_rows, path, split, doc_set=None) -> RetrievalDataset:
    doc_set = set(ids) if doc_set is None else doc_set
    qrels: Dict[str, Dict[str, int]] = {}
    missing_docs = missing_queries = 0
    for q, d, r in qrel_rows:
        if q not in qtexts:
            missing_queries += 1
            continue
        if d not in doc_set:
            missing_docs += 1
            qrels.setdefault(q, {})
            continue
        qrels.setdefault(q, {})[d] = r
    if missing_docs or missing_queries:
        parts = []
        if missing_docs:
            parts.append(f"{missing_docs} judgement(s) name documents absent from the corpus")
        if missing_queries:
            parts.append(f"{missing_queries} judgement(s) name queries absent from the queries file")
        warnings.warn("; ".join(parts) + ": they were dropped", UserWarning, stacklevel=3)
    row_of = {q: i for i, q in enumerate(all_qids)}
    qids = [q for q in all_qids if q in qrels]
    return RetrievalDataset(
        corpus_ids=ids, corpus_titles=titles, corpus_bodies=bodies,
        query_ids=qids, query_texts=[qtexts[q] for q in qids], qrels={q: qrels[q] for q in qids},
        all_query_ids=list(all_qids), query_rows=np.array([row_of[q] for q in qids], dtype=np.int64),
        missing_qrels=missing_docs + missing_queries, path=path, split=split)


def from_dict(corpus: Mapping[str, Any], queries: Mapping[str, str],
              qrels: Mapping[str, Mapping[str, int]]) -> RetrievalDataset:
    """Build a dataset from dicts (insertion order is the row order).

    Parameters
    ----------
    corpus : ``{doc_id: text}`` or ``{doc_id: {"title": ..., "text": ...}}``
        Texts are str; a None document is refused (a None or missing title / text field is empty).
    queries : ``{query_id: text}``
    qrels : ``{query_id: {doc_id: relevance}}``
        Integer relevances (``1.0`` is accepted; ``1.7``, NaN and inf are refused, as by
        :func:`load_beir` and ``hn.Qrels.from_dict``).

    Raises
    ------
    TypeError, ValueError
        Naming the id of the offending document, query or judgement.
    """
    for name, m in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        if not isinstance(m, Mapping):
            raise TypeError(f"{name} must be a dict, got {type(m).__name__}")
    ids, titles, bodies = [], [], []
    for did, doc in corpus.items():
        ids.append(str(did))
        if isinstance(doc, Mapping):
            titles.append(_text_field(doc.get("title"), f"corpus[{did!r}]['title']"))
            bodies.append(_text_field(doc.get("text"), f"corpus[{did!r}]['text']"))
        else:
            titles.append("")
            bodies.append(_text(doc, f"corpus[{did!r}]"))
    qtexts = {str(q): _text(t, f"queries[{q!r}]") for q, t in queries.items()}
    rows = []
    for q, rel in qrels.items():
        if not isinstance(rel, Mapping):
            raise TypeError(f"qrels[{q!r}] must be a dict {{doc_id: relevance}}, got {type(rel).__name__}")
        rows.extend((str(q), str(d), _relevance(r, q, d)) for d, r in rel.items())
    return _assemble(ids, titles, bodies, list(qtexts), qtexts, rows, None, None)


def _text(value: Any, where: str) -> str:
    """A document or query text: a str (None and other objects are refused, not indexed as ``"None"``)."""
    if value is None:
        raise ValueError(f"{where} is None: give its text (a str)")
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a str (or a {{'title', 'text'}} dict for documents), "
                        f"got {type(value).__name__}")
    return value


def _text_field(value: Any, where: str) -> str:
    """A title / text field: a str, or None / missing for empty (as BEIR's files allow)."""
    return "" if value is None else _text(value, where)


def _relevance(value: Any, q: Any, d: Any) -> int:
    """An integer relevance (``1.0`` is accepted, ``1.7``, NaN, inf and bools are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"qrels[{q!r}][{d!r}] must be an integer relevance, got {value!r}")
    if isinstance(value, (float, np.floating)) and (not math.isfinite(value) or value != int(value)):
        raise ValueError(f"qrels[{q!r}][{d!r}] = {value!r} is not an integer relevance")
    return int(value)


# ---------------------------------------------------------------------------------------------- sample


def sample_path() -> Path:
    """Folder of the sample dataset shipped with hardneg (BEIR layout, with MiniLM embeddings)."""
    return Path(__file__).resolve().parent / "data" / "sample"


def load_sample(split: str = "train") -> RetrievalDataset:
    """The small sample dataset shipped inside the package.

    200 short documents and 40 questions written for hardneg (Apache-2.0, like the
    package), with all-MiniLM-L6-v2 embeddings in ``embeddings/``.  Splits:
    ``train`` (30 queries) and ``test`` (10 queries).
    """
    return load_beir(sample_path(), split)


def find_embeddings(path: PathLike) -> Optional[Tuple[Path, Path]]:
    """``(corpus.npy, queries.npy)`` when ``path/embeddings`` holds exactly one ``*-corpus.npy``/``*-queries.npy`` pair."""
    emb = Path(path) / "embeddings"
    if not emb.is_dir():
        return None
    pairs = []
    for c in sorted(emb.glob("*-corpus.npy")):
        q = c.with_name(c.name[: -len("-corpus.npy")] + "-queries.npy")
        if q.is_file():
            pairs.append((c, q))
    return pairs[0] if len(pairs) == 1 else None

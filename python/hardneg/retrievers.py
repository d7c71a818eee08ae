"""Retrievers over a :class:`~hardneg.datasets.RetrievalDataset`: dense, BM25 and their RRF hybrid.

One factory, :func:`make_retriever`, builds them for the miner and for the ``hardneg`` command.
Every retriever answers for the dataset's split queries, addressed by row (a ``slice`` or an
int array of rows into ``dataset.query_ids``)::

    ret = make_retriever("dense", ds, corpus_embeddings="corpus.npy", query_embeddings="queries.npy")
    scores, ids = ret.search(slice(0, ds.num_queries), k=100, exclude=None)  # float32 / int64 (Q, k)
    s = ret.pair_scores(slice(0, 10), qidx, docs)  # the score of pairs (query rows[qidx[i]], docs[i])

``search`` follows :func:`hardneg.topk`'s conventions: best first, ties by ascending id,
padded with ``-inf`` / ``-1``; ``exclude`` is any form :mod:`hardneg.exclude` accepts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from hardneg._arrays import is_torch
from hardneg._log import logger
from hardneg._progress import progress_bar
from hardneg._threads import resolve_num_threads
from hardneg._validate import check_choice, check_int
from hardneg.datasets import RetrievalDataset
from hardneg.exact import ExactIndex
from hardneg.topk import topk

__all__ = ["make_retriever", "DenseRetriever", "BM25Retriever", "HybridRetriever", "RETRIEVERS", "Rows"]

RETRIEVERS = ("dense", "bm25", "hybrid")
METRICS = ("cosine", "ip")
Rows = Union[slice, np.ndarray]  # query rows: a slice (a view) or an int64 array (a copy)

_IN_PLACE_BYTES = 256 << 20  # memory-mapped corpora up to this size are searched in place (ooc's block size)


# ---------------------------------------------------------------------------------------------- embeddings


def load_npy(path: Union[str, "os.PathLike[str]"], name: str) -> np.ndarray:
    """Memory-map a ``.npy`` file; a missing or unreadable file is an error naming ``name`` and the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name} file {p} not found")
    if p.suffix != ".npy":
        raise ValueError(f"{name} must be a .npy file, got {p.name}")
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)  # never read into RAM as a whole
    except (ValueError, OSError, EOFError) as e:  # garbage, pickled objects, truncated header
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in why:  # numpy's advice to allow pickles: not for data files from elsewhere
            why = "no array header (pickled Python objects are never loaded)"
        raise ValueError(f"{name} file {p} is not a numpy array file (.npy written by np.save): {why}") from None


def as_rows(x: Any, name: str) -> np.ndarray:
    """A 2-D float array (rows, dim) from a numpy array, a torch tensor or a ``.npy`` path (memory-mapped)."""
    if is_torch(x):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    if isinstance(x, (str, os.PathLike)):
        x = load_npy(x, name)
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {a.shape}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must hold floats, got {a.dtype}")
    return a


def encode_texts(encoder: Callable, texts: Sequence[str], batch: int, desc: str, progress: bool) -> np.ndarray:
    """Embed ``texts`` with ``encoder(list[str]) -> (n, d)`` in batches: float32 (len(texts), d)."""
    out = []
    bar = progress_bar(len(texts), desc, progress)
    for s in range(0, len(texts), batch):
        chunk = list(texts[s:s + batch])
        e = as_rows(encoder(chunk), f"encoder output for {desc}")
        if e.shape[0] != len(chunk):
            raise ValueError(f"encoder returned {e.shape[0]} rows for {len(chunk)} texts")
        out.append(np.asarray(e, dtype=np.float32))
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# (device, inode, size, mtime) of a .npy file -> whether its rows are unit-norm: repeated runs on
# the same embedding files skip the pass over them.
_UNIT_CACHE: Dict[Tuple[int, int, int, int], bool] = {}


def _file_key(source: Any) -> Optional[Tuple[int, int, int, int]]:
    """(device, inode, size, mtime) of a file path, None for anything else: changes when the file does."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        st = os.stat(source)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _unit_rows(a: np.ndarray, tol: float = 1e-5) -> bool:
    """True when every row has unit L2 norm (within tol on the squared norm); one pass, no copy."""
    from hardneg import _core
    from hardneg._arrays import vectors_for_kernel

    if a.shape[0] == 0:
        return True
    v, bf16 = vectors_for_kernel(a, "embeddings")
    if bf16 or v.dtype != np.float32:
        return False  # low-precision rows are never normalised to 1e-5
    n = _core.sqnorms(v, False)
    return bool(np.all(np.abs(n - 1.0) <= tol))


def _unit_rows_of(a: np.ndarray, source: Any) -> bool:
    """:func:`_unit_rows`, remembered per unchanged .npy file when ``source`` is its path."""
    key = _file_key(source)
    if key is None:
        return _unit_rows(a)
    if key not in _UNIT_CACHE:
        if len(_UNIT_CACHE) > 64:
            _UNIT_CACHE.clear()
        _UNIT_CACHE[key] = _unit_rows(a)
    return _UNIT_CACHE[key]


# ---------------------------------------------------------------------------------------------- retrievers


class DenseRetriever:
    """Exact inner-product / cosine search of the split's query embeddings over the corpus embeddings.

    Parameters
    ----------
    corpus : array (N, d), float
        A memory-mapped corpus up to 256 MiB is searched in place with one kernel call; a larger
        one is streamed block by block (never copied).
    queries : array (Q, d), float
        One row per split query.
    metric : {"cosine", "ip"}
    num_threads : int
    index : optional
        A search index (``.search(queries, k, exclude=)``, ``.metric``, ``len()``: faiss, out of core,
        sharded) used instead of the exact kernel; its metric wins.
    unit : callable() -> bool, optional
        Whether the corpus and query rows are unit-norm (then cosine is searched as an inner product).
    """

    name = "dense"

    def __init__(self, corpus: np.ndarray, queries: np.ndarray, metric: str = "cosine", num_threads: int = 1,
                 index: Any = None, unit: Optional[Callable[[], bool]] = None):
        self.index = index
        if isinstance(corpus, np.memmap) and corpus.nbytes <= _IN_PLACE_BYTES:
            # No larger than one streaming block: search the mapping in place with one kernel
            # call (still never copied) instead of streaming it block by block.
            corpus = np.asarray(corpus)
        if index is not None:
            metric = index.metric  # the index decides how it scores; positives are scored alike
        elif metric == "cosine" and (unit() if unit is not None else (_unit_rows(corpus) and _unit_rows(queries))):
            # Already L2-normalised (as sentence-transformers' embeddings are): cosine = inner
            # product up to the last bit, and the inner-product kernel skips the norms.
            metric = "ip"
            logger.info("dense retriever: the embeddings are unit-norm, so cosine is searched as inner product")
        self.corpus = corpus
        self.queries = queries
        self.metric = metric
        self.num_threads = num_threads
        # the exact index over an in-memory corpus, built on the first search: it owns the screen's
        # coded (int8 / bf16) copy of the corpus, shared by every search of this retriever
        self._exact: Optional[ExactIndex] = None

    def search(self, query_rows: Rows, k: int, exclude: Any) -> Tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of the queries ``query_rows``: (scores float32 (B, k), ids int64 (B, k))."""
        q = self.queries[query_rows]
        if self.index is not None:  # faiss, out-of-core or sharded search: same conventions
            s, i = self.index.search(q, k=k, exclude=exclude)
            return np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64)
        # the corpus is checked for NaN/Inf inside the kernel, in the same pass as the search
        if type(self.corpus) is np.ndarray:
            if self._exact is None:
                self._exact = ExactIndex(self.corpus, self.metric, self.num_threads)
            return self._exact.search(q, k=k, exclude=exclude)
        return topk(q, self.corpus, k=k, metric=self.metric, exclude=exclude, num_threads=self.num_threads)

    def pair_scores(self, query_rows: Rows, qidx: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """float32 (P,): the score of query ``query_rows[qidx[i]]`` with corpus row ``docs[i]``."""
        if docs.size == 0:
            return np.zeros(0, np.float32)
        qa = np.asarray(self.queries[query_rows], dtype=np.float32)
        if isinstance(self.corpus, np.memmap):
            order = np.argsort(docs, kind="stable")  # sorted reads from a memory-mapped corpus
            d = np.empty((docs.shape[0], qa.shape[1]), dtype=np.float32)
            d[order] = np.asarray(self.corpus[docs[order]], dtype=np.float32)
            return self._pair_dots(qa[qidx], d)
        # In chunks of rows: the temporaries stay small (large ones come as fresh pages from
        # the OS on every call); every score depends on its own row only, so chunking
        # changes nothing in the result.
        step = max(1, (96 << 10) // max(1, 4 * qa.shape[1]))
        out = np.empty(docs.shape[0], np.float32)
        for a in range(0, docs.shape[0], step):
            b = min(docs.shape[0], a + step)
            out[a:b] = self._pair_dots(qa[qidx[a:b]], np.asarray(self.corpus[docs[a:b]], dtype=np.float32))
        return out

    def _pair_dots(self, q: np.ndarray, d: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            s = np.einsum("ij,ij->i", q, d, dtype=np.float32)
            if self.metric != "cosine":
                return s
            qn = np.linalg.norm(q, axis=1)
            dn = np.linalg.norm(d, axis=1)
            den = qn * dn
            out = np.where(den > 0, s / np.where(den > 0, den, 1), 0).astype(np.float32)
            # rows whose float32 norms or dot over- or underflow (|x| beyond ~1e19 or below ~1e-19):
            # again in float64 on rows scaled by their largest entry, exact for any finite input
            bad = ~np.isfinite(den) | ~np.isfinite(s) | ((den < 1e-30) & (den >= 0) & (np.abs(q).max(1) > 0)
                                                          & (np.abs(d).max(1) > 0))
            if bad.any():
                q64, d64 = q[bad].astype(np.float64), d[bad].astype(np.float64)
                q64 /= np.abs(q64).max(1, keepdims=True)
                d64 /= np.abs(d64).max(1, keepdims=True)
                out[bad] = (np.einsum("ij,ij->i", q64, d64)
                            / (np.linalg.norm(q64, axis=1) * np.linalg.norm(d64, axis=1))).astype(np.float32)
        return out


class BM25Retriever:
    """An ``hn.BM25`` index over the corpus texts, queried with the split's query texts."""

    name = "bm25"

    def __init__(self, bm: Any, query_texts: List[str], num_threads: int = 1):
        self.bm = bm
        self.query_texts = query_texts
        self.num_threads = num_threads

    def _texts(self, query_rows: Rows) -> List[str]:
        if isinstance(query_rows, slice):
            return self.query_texts[query_rows]
        return [self.query_texts[i] for i in query_rows.tolist()]

    def search(self, query_rows: Rows, k: int, exclude: Any) -> Tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by BM25 (documents sharing no term are not returned): float32 / int64 (B, k)."""
        s, i = self.bm.search(self._texts(query_rows), k=k, exclude=exclude, num_threads=self.num_threads)
        return np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64)

    def pair_scores(self, query_rows: Rows, qidx: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """float32 (P,): BM25 of query ``query_rows[qidx[i]]`` with corpus row ``docs[i]``."""
        if docs.size == 0:
            return np.zeros(0, np.float32)
        texts = self._texts(query_rows)
        qs = [texts[j] for j in qidx.tolist()]
        try:  # (queries (P,), doc_ids (P, 1)) -> (P, 1)
            out = np.asarray(self.bm.score(qs, docs.reshape(-1, 1)), dtype=np.float32)
            if out.size == docs.size:
                return out.reshape(-1)
        except (TypeError, ValueError):
            pass
        return np.asarray(self.bm.score(qs, docs), dtype=np.float32).reshape(-1)  # (P,) pairs


class HybridRetriever:
    """Reciprocal rank fusion (constant ``rrf_k``) of a dense and a BM25 ranking, each searched as deep.

    ``pair_scores`` gives the RRF score a document would get against the rankings of the last
    ``search`` (call it after searching the same ``query_rows``).
    """

    name = "hybrid"

    def __init__(self, dense: DenseRetriever, bm25: BM25Retriever, rrf_k: int = 60):
        self.dense, self.bm25, self.k = dense, bm25, rrf_k
        self._last: Dict[str, Any] = {}

    def search(self, query_rows: Rows, k: int, exclude: Any) -> Tuple[np.ndarray, np.ndarray]:
        """RRF of the two top-``k`` rankings, ``k`` deep: float32 / int64 (B, k)."""
        ds_, di = self.dense.search(query_rows, k, exclude)
        bs, bi = self.bm25.search(query_rows, k, exclude)
        self._last = {"dense": (ds_, di), "bm25": (bs, bi)}
        return fuse_rrf([(ds_, di), (bs, bi)], self.k, k)

    def pair_scores(self, query_rows: Rows, qidx: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """RRF score a document would get: 1/(k + r) per run where r is the rank it would take
        among that run's retrieved (non-excluded) documents; 0 past the searched depth."""
        if not self._last:
            raise RuntimeError("HybridRetriever.pair_scores needs a search of the same queries first")
        total = np.zeros(docs.shape[0], dtype=np.float64)
        for name, r in (("dense", self.dense), ("bm25", self.bm25)):
            s_run, i_run = self._last[name]
            ps = r.pair_scores(query_rows, qidx, docs)
            srow, irow = s_run[qidx], i_run[qidx]
            valid = irow >= 0
            beats = valid & ((srow > ps[:, None]) | ((srow == ps[:, None]) & (irow < docs[:, None])))
            nb = beats.sum(1)
            inside = (nb < srow.shape[1]) & (ps > (-np.inf if name == "dense" else 0))
            total += np.where(inside, 1.0 / (self.k + nb + 1), 0.0)
        return total.astype(np.float32)


def fuse_rrf(runs: Sequence[Tuple[np.ndarray, np.ndarray]], k: int, depth: int) -> Tuple[np.ndarray, np.ndarray]:
    """RRF of (scores, ids) runs with ``hn.fuse``, padded to exactly ``depth`` columns."""
    from hardneg.fusion import fuse

    s, i = fuse(list(runs), method="rrf", k=k, depth=depth)
    s, i = np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64)
    if s.shape[1] < depth:
        pad = depth - s.shape[1]
        s = np.concatenate([s, np.full((s.shape[0], pad), -np.inf, np.float32)], 1)
        i = np.concatenate([i, np.full((i.shape[0], pad), -1, np.int64)], 1)
    return s[:, :depth], i[:, :depth]


def build_bm25(bm25: Any, dataset: RetrievalDataset) -> Any:
    """``bm25`` when it is a built index; else ``hn.BM25(**bm25)`` indexed over ``dataset.corpus_texts``."""
    import hardneg

    if bm25 is not None and not isinstance(bm25, dict):
        if not (callable(getattr(bm25, "search", None)) and callable(getattr(bm25, "score", None))):
            raise TypeError(f"bm25 must be an hn.BM25 index or a dict of hn.BM25 arguments, got {type(bm25).__name__}")
        return bm25  # an index the caller built over dataset.corpus_texts
    cls = getattr(hardneg, "BM25", None)
    if cls is None:
        raise ImportError("retriever 'bm25'/'hybrid' needs hn.BM25, which this build of hardneg does not have")
    bm = cls(**(bm25 or {}))
    bm.index(dataset.corpus_texts)
    return bm


# ---------------------------------------------------------------------------------------------- factory


def _encoded(given: Any, arg: str, retriever: str, encoder: Any, texts: List[str], kind: str,
             prompts: Dict[str, str], cache: Tuple[Any, Any], batch: int, progress: bool) -> Any:
    """The embeddings the caller ``given`` (argument ``arg``), or ``texts`` embedded with the ``kind``
    prompt ("corpus" / "queries"), through the cache folder ``cache = (folder or None, model name)``."""
    from hardneg.embed_cache import encode_cached, with_prompt

    if given is not None:
        return given
    if encoder is None:
        raise ValueError(f"retriever {retriever!r} needs {arg} or an encoder")
    prompt = prompts.get("corpus" if kind == "corpus" else "query")
    enc = with_prompt(encoder, prompt)
    return encode_cached(lambda: encode_texts(enc, texts, batch, f"encode {kind}", progress), cache[0], cache[1],
                         kind, prompt, texts)


def _dense(kind: str, dataset: RetrievalDataset, corpus_embeddings: Any, query_embeddings: Any, encoder: Any,
           index: Any, metric: str, threads: int, encode_batch_size: int, progress: bool,
           prompts: Optional[Dict[str, str]] = None, cache: Tuple[Any, Any] = (None, None)) -> DenseRetriever:
    """The dense retriever: embeddings given, loaded or encoded (with ``prompts``, through the
    ``cache`` folder), checked against the dataset."""
    prompts = prompts or {}
    corpus_embeddings = _encoded(corpus_embeddings, "corpus_embeddings", kind, encoder, dataset.corpus_texts,
                                 "corpus", prompts, cache, encode_batch_size, progress)
    C = as_rows(corpus_embeddings, "corpus_embeddings")
    if C.shape[0] != dataset.num_docs:
        raise ValueError(f"corpus_embeddings has {C.shape[0]} rows but the corpus has {dataset.num_docs} documents")
    query_embeddings = _encoded(query_embeddings, "query_embeddings", kind, encoder, dataset.query_texts,
                                "queries", prompts, cache, encode_batch_size, progress)
    Q_file = as_rows(query_embeddings, "query_embeddings")
    Qe = dataset.split_query_embeddings(Q_file, "query_embeddings", cache_key=_file_key(query_embeddings))
    if Qe.shape[1] != C.shape[1]:
        raise ValueError(f"query_embeddings have dimension {Qe.shape[1]} but corpus_embeddings {C.shape[1]}")
    if index is not None:
        if not callable(getattr(index, "search", None)) or getattr(index, "metric", None) not in ("ip", "cosine", "l2"):
            raise TypeError("index must be a search index with .search(queries, k, exclude=) and .metric, "
                            "e.g. hn.DenseIndex(..., backend='faiss')")
        if len(index) != dataset.num_docs:
            raise ValueError(f"index holds {len(index)} rows but the corpus has {dataset.num_docs} documents")

    # unit-norm rows (checked once per unchanged .npy file) make cosine an inner product
    # (the whole query file's answer, cached, else the split's rows)
    def unit() -> bool:
        return _unit_rows_of(C, corpus_embeddings) and (_unit_rows_of(Q_file, query_embeddings) or _unit_rows(Qe))

    return DenseRetriever(C, Qe, metric, threads, index, unit)


def make_retriever(
    kind: str,
    dataset: RetrievalDataset,
    *,
    corpus_embeddings: Any = None,
    query_embeddings: Any = None,
    encoder: Optional[Callable[[List[str]], Any]] = None,
    index: Any = None,
    bm25: Any = None,
    metric: str = "cosine",
    rrf_k: int = 60,
    num_threads: Optional[int] = None,
    encode_batch_size: int = 256,
    progress: bool = False,
    prompts: Optional[Dict[str, str]] = None,
    save_embeddings: Optional[Union[str, "os.PathLike[str]"]] = None,
    encoder_name: Optional[str] = None,
) -> Union[DenseRetriever, BM25Retriever, HybridRetriever]:
    """Build the retriever ``kind`` for the split queries of ``dataset``.

    Parameters
    ----------
    kind : {"dense", "bm25", "hybrid"}
    dataset : RetrievalDataset
    corpus_embeddings : array (N, d), torch tensor or ``.npy`` path, optional
        Row i embeds ``dataset.corpus_ids[i]``; a path is memory-mapped, never copied.
    query_embeddings : array (Q, d) or (all queries, d), or ``.npy`` path, optional
        One row per ``dataset.query_ids`` or one per line of ``queries.jsonl`` (picked with
        ``dataset.query_rows``).
    encoder : callable(list[str]) -> array (n, d), optional
        Embeds what is not given (``dataset.corpus_texts``, ``dataset.query_texts``).
    index : optional
        A prebuilt dense search index (``.search(queries, k, exclude=)``, ``.metric``, ``len()``).
    bm25 : hn.BM25 or dict, optional
        A BM25 index built over ``dataset.corpus_texts``, or keyword arguments for ``hn.BM25``.
    metric : {"cosine", "ip"}
    rrf_k : int
        RRF constant of "hybrid" (>= 0).
    num_threads : int, optional
    encode_batch_size : int
        Texts per encoder call.
    progress : bool
        Progress bars while encoding.
    prompts : dict, optional
        ``{"query": ..., "corpus": ...}``: given to ``encoder`` as ``prompt=`` when it takes that
        argument (``SentenceTransformer.encode``), else written in front of each text.
    save_embeddings : folder, optional
        Cache what ``encoder`` embeds there as ``.npy`` files keyed by ``encoder_name``, the prompt
        and a hash of the texts; an unchanged run reads them back instead of encoding.
    encoder_name : str, optional
        The encoder's model name or path (keys the cached files; needed with ``save_embeddings``).

    Returns
    -------
    DenseRetriever, BM25Retriever or HybridRetriever
        Each with ``search(query_rows, k, exclude) -> (scores float32 (B, k), ids int64 (B, k))``
        and ``pair_scores(query_rows, qidx, docs) -> float32 (P,)``.
    """
    check_choice(kind, "retriever", RETRIEVERS)
    if not isinstance(dataset, RetrievalDataset):
        raise TypeError(f"dataset must be a RetrievalDataset, got {type(dataset).__name__}")
    check_choice(metric, "metric", METRICS)
    rrf_k = check_int(rrf_k, "rrf_k", 0)
    encode_batch_size = check_int(encode_batch_size, "encode_batch_size", 1)
    if encoder is not None and not callable(encoder):
        raise TypeError("encoder must be callable(list[str]) -> array")
    threads = resolve_num_threads(num_threads)
    from hardneg.embed_cache import check_prompts

    prompts = check_prompts(prompts)
    dense = bm = None
    if kind in ("dense", "hybrid"):
        dense = _dense(kind, dataset, corpus_embeddings, query_embeddings, encoder, index, metric, threads,
                       encode_batch_size, progress, prompts, (save_embeddings, encoder_name))
    if kind in ("bm25", "hybrid"):
        bm = BM25Retriever(build_bm25(bm25, dataset), dataset.query_texts, threads)
    if kind == "dense":
        return dense
    if kind == "bm25":
        return bm
    return HybridRetriever(dense, bm, rrf_k)

"""BM25 over raw text: C++ tokeniser, inverted index and multithreaded top-k search.

:class:`BM25` tokenises (lowercase, ``\\b\\w\\w+\\b`` over Unicode letters and
digits), removes stopwords, stems each distinct word once (PyStemmer, optional),
builds an inverted index and answers top-k queries with the same output
conventions as :func:`hardneg.topk`.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from hardneg import _core
from hardneg._arrays import check_uint_ids
from hardneg._threads import resolve_num_threads
from hardneg._tokenize import TOKENIZERS, bm25s_tokens, stemmer_version, tokenizer_version
from hardneg._validate import check_bytes, check_choice, check_float
from hardneg.exclude import to_csr
from hardneg.topk import _check_k

METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")
_FORMAT = "hardneg-bm25"
_FORMAT_VERSION = 2
# name -> allowed dtypes of the saved arrays (codes: uint32 once there are > 65,536 (tf, length) pairs)
_ARRAYS = {"offsets": (np.int64,), "docs": (np.uint32,), "codes": (np.uint16, np.uint32),
           "code_tf": (np.uint32,), "code_len": (np.uint32,), "doc_len": (np.uint32,)}
# Largest k1 and delta accepted (see _check_params): every score stays finite and every
# positive term contribution a normal float32.
_MAX_K1 = 1e18
_MAX_DELTA = 1e30
_ARRAYS_V1 = {"offsets": (np.int64,), "docs": (np.uint32,), "tfs": (np.uint32,), "impacts": (np.float32,),
              "doc_len": (np.uint32,)}

#: Lucene's 33 English stopwords (the list bm25s and Pyserini use).
STOPWORDS_EN: Tuple[str, ...] = (
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no",
    "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to",
    "was", "will", "with",
)

#: A longer English list (NLTK's 179 words; bm25s's ``"en_plus"``).
STOPWORDS_EN_PLUS: Tuple[str, ...] = (
    "a", "about", "above", "after", "again", "against", "ain", "all", "am", "an", "and", "any", "are", "aren",
    "aren't", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by",
    "can", "couldn", "couldn't", "d", "did", "didn", "didn't", "do", "does", "doesn", "doesn't", "doing", "don",
    "don't", "down", "during", "each", "few", "for", "from", "further", "had", "hadn", "hadn't", "has", "hasn",
    "hasn't", "have", "haven", "haven't", "having", "he", "her", "here", "hers", "herself", "him", "himself",
    "his", "how", "i", "if", "in", "into", "is", "isn", "isn't", "it", "it's", "its", "itself", "just", "ll",
    "m", "ma", "me", "mightn", "mightn't", "more", "most", "mustn", "mustn't", "my", "myself", "needn",
    "needn't", "no", "nor", "not", "now", "o", "of", "off", "on", "once", "only", "or", "other", "our", "ours",
    "ourselves", "out", "over", "own", "re", "s", "same", "shan", "shan't", "she", "she's", "should",
    "should've", "shouldn", "shouldn't", "so", "some", "such", "t", "than", "that", "that'll", "the", "their",
    "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too",
    "under", "until", "up", "ve", "very", "was", "wasn", "wasn't", "we", "were", "weren", "weren't", "what",
    "when", "where", "which", "while", "who", "whom", "why", "will", "with", "won", "won't", "wouldn",
    "wouldn't", "y", "you", "you'd", "you'll", "you're", "you've", "your", "yours", "yourself", "yourselves",
)

_STOPWORD_LISTS = {"en": STOPWORDS_EN, "english": STOPWORDS_EN, "en_plus": STOPWORDS_EN_PLUS}


def tokenize(text: Union[str, bytes], tokenizer: str = "unicode") -> List[str]:
    """A BM25 tokeniser on one text: lowercased runs of 2+ word characters.

    ``tokenizer="unicode"`` (the default, C++): word characters are Unicode letters and
    digits of every script, ``_`` and combining marks (so Indic words with vowel signs stay
    whole); everything else (and any invalid UTF-8 byte in ``bytes`` input) separates tokens.
    ``tokenizer="bm25s"``: exactly bm25s's ``re.findall(r"(?u)\\b\\w\\w+\\b", text.lower())``,
    where combining marks are separators.  No stopword removal or stemming.  Scripts written
    without spaces (Chinese, Japanese, Thai) come out as whole runs: pass your own tokens to
    :meth:`BM25.index` for them.
    """
    check_choice(tokenizer, "tokenizer", TOKENIZERS)
    if not isinstance(text, (str, bytes)):
        raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
    if tokenizer == "bm25s":
        return bm25s_tokens(text)
    return _core.bm25_tokenize_text(text)


def _resolve_stopwords(stopwords: Any) -> Tuple[Optional[str], Tuple[str, ...]]:
    if stopwords is None or stopwords is False:
        return None, ()
    if isinstance(stopwords, str):
        if stopwords not in _STOPWORD_LISTS:
            raise ValueError(f"stopwords must be one of {sorted(_STOPWORD_LISTS)}, a list of str or None, got {stopwords!r}")
        return stopwords, _STOPWORD_LISTS[stopwords]
    try:
        words = tuple(stopwords)
    except TypeError:
        raise TypeError(f"stopwords must be a list name, a list of str or None, got {type(stopwords).__name__}") from None
    for w in words:
        if not isinstance(w, str):
            raise TypeError(f"stopwords must hold str, got {type(w).__name__}")
    return "custom", tuple(w.lower() for w in words)


def _make_stemmer(stemmer: Optional[str]):
    if stemmer is None:
        return None
    if not isinstance(stemmer, str):
        raise TypeError(f"stemmer must be a Snowball language name (e.g. 'english') or None, got {type(stemmer).__name__}")
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        raise ImportError(
            f"stemmer={stemmer!r} needs PyStemmer: pip install PyStemmer (or pass stemmer=None)"
        ) from None
    langs = Stemmer.algorithms()
    if stemmer not in langs:
        raise ValueError(f"stemmer must be one of PyStemmer's languages {sorted(langs)} or None, got {stemmer!r}")
    st = Stemmer.Stemmer(stemmer)
    # Each distinct word is stemmed once (the word cache keeps the result), so PyStemmer's own
    # cache would only be filled and evicted: with it, stemming SciFact's 35,899 words took 38 ms,
    # without it 10 ms.
    st.maxCacheSize = 0
    return st


def _as_list(texts: Any, name: str) -> list:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of str (or of token lists), not a single {type(texts).__name__}: wrap it in a list")
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    try:
        return list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a list of str or a list of token lists, got {type(texts).__name__}") from None


class BM25:
    """A BM25 index over raw text (or your own tokens), searched top-k.

    Parameters
    ----------
    k1, b : float
        Term-frequency saturation (0 <= k1 <= 1e18) and length normalisation (0 <= b <= 1).
    delta : float
        The δ of ``bm25l`` and ``bm25+`` (0 <= delta <= 1e30; ignored by the other
        methods).  ``bm25l`` needs k1 > 0 or delta > 0 (its tf = 0 part divides by
        k1 + delta).  Values outside these bounds raise ValueError naming the parameter.
    method : {"robertson", "lucene", "atire", "bm25l", "bm25+"}
        IDF and TF formulas exactly as bm25s 0.3 defines them.  For ``bm25l``
        and ``bm25+`` a query term absent from a document still adds
        ``idf * tf_part(0)``, so every document gets a positive score.
    stopwords : {"en", "en_plus"}, list of str or None
        Words removed after lowercasing and before stemming: Lucene's 33
        English words, NLTK's 179, your own list, or none.
    stemmer : str or None
        A Snowball language of PyStemmer (``"english"``, ``"german"``,
        ``"russian"``, ``"arabic"``, ...), applied once per distinct word, or
        None.  Needs ``pip install PyStemmer``.
    tokenizer : {"unicode", "bm25s"}
        ``"unicode"`` (default): the C++ tokeniser below.  ``"bm25s"``: exactly
        bm25s's tokens (Python's ``re`` ``(?u)\\b\\w\\w+\\b`` on the lowercased
        text: combining marks separate tokens, so ``"नमस्ते"`` gives ``"नमस"``), for
        scores equal to bm25s on any script; tokenised in Python, so slower.

    Notes
    -----
    Tokens are lowercased runs of two or more word characters (letters and
    digits of every script, ``_``, combining marks), as scikit-learn's
    ``(?u)\\b\\w\\w+\\b``; invalid UTF-8 bytes separate tokens.  Scripts written
    without spaces (Chinese, Japanese, Thai...) give whole runs as single
    tokens: segment them yourself and pass lists of tokens.

    Pre-tokenised input (a list of lists of str) is taken verbatim: no
    lowercasing, stopwords or stemming.  Queries are matched against the
    vocabulary the same way (text queries go through the tokeniser,
    stopwords and stemmer; token-list queries are used as they are).

    :meth:`add` appends documents and updates document frequencies and the
    average length, so scores always equal those of a fresh index over all
    documents.
    """

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        delta: float = 0.5,
        method: str = "lucene",
        stopwords: Any = "en",
        stemmer: Optional[str] = "english",
        tokenizer: str = "unicode",
    ):
        self.k1, self.b, self.delta = _check_params(method, k1, b, delta)
        self.method = method
        self.tokenizer = check_choice(tokenizer, "tokenizer", TOKENIZERS)
        self._bm25s_terms: Dict[str, Optional[str]] = {}  # tokenizer="bm25s": word -> term (None: dropped)
        self._stopwords_name, self._stopwords = _resolve_stopwords(stopwords)
        self._stop_set = frozenset(self._stopwords)
        self.stemmer = stemmer
        self._stemmer = _make_stemmer(stemmer)
        self._lock = threading.RLock()  # index / add / save against each other
        self._new_core()

    def _make_core(self):
        return _core._BM25Index(self.method, self.k1, self.b, self.delta)

    def _new_core(self) -> None:
        self._core = self._make_core()
        self._vocab_cache: Optional[Dict[str, int]] = None

    # ------------------------------------------------------------ introspection
    @property
    def num_docs(self) -> int:
        """Number of indexed documents."""
        return int(self._core.num_docs)

    @property
    def avg_doc_len(self) -> float:
        """Mean document length in tokens (after stopword removal)."""
        return float(self._core.avg_doc_len)

    @property
    def nbytes(self) -> int:
        """Bytes of memory held by the index arrays (postings, codes, per-document
        lengths and the derived dense rows and block metadata; not the vocabulary)."""
        return int(self._core.memory_bytes)

    @property
    def vocabulary(self) -> Dict[str, int]:
        """``{term: term id}`` of the indexed (stemmed) terms."""
        if self._vocab_cache is None:
            self._vocab_cache = {t: i for i, t in enumerate(self._core.terms)}
        return self._vocab_cache

    def __len__(self) -> int:
        return self.num_docs

    def __repr__(self) -> str:
        return (f"BM25(method={self.method!r}, k1={self.k1}, b={self.b}, delta={self.delta}, "
                f"stopwords={self._stopwords_name!r}, stemmer={self.stemmer!r}, tokenizer={self.tokenizer!r}, "
                f"num_docs={self.num_docs})")

    # ---------------------------------------------------------------- tokens
    def _learn(self, core, batch, create: bool) -> None:
        self._learn_words(core, core.unknown_words(batch, create), create)

    def _learn_words(self, core, words: List[str], create: bool) -> None:
        """Puts surface words in the word cache: stopword, stem, term id."""
        if not words:
            return
        stop = self._stop_set
        terms: List[Optional[str]]
        if self._stemmer is not None:  # (stopwords are stemmed too and then dropped: one pass)
            stems = self._stemmer.stemWords(words)
            if stop:
                terms = [None if w in stop or not s else s for w, s in zip(words, stems)]
            else:
                terms = [s if s else None for s in stems]
        else:
            terms = [None if w in stop else w for w in words] if stop else list(words)
        core.learn_words(words, terms, create)

    def _ids(self, texts: list, create: bool, name: str, num_threads: int,
             core: Any = None) -> Tuple[np.ndarray, np.ndarray]:
        """CSR (offsets, term ids) of texts in ``core`` (default: the index's); -1 marks dropped
        or unknown tokens."""
        core = self._core if core is None else core
        if texts and isinstance(texts[0], (list, tuple)):
            return core.pretokenized_ids(texts, create, name)
        if self.tokenizer == "bm25s":
            return core.pretokenized_ids(self._bm25s_term_lists(texts, name), create, name)
        batch = _core.bm25_tokenize(texts, num_threads, name)
        self._learn(core, batch, create)
        return core.batch_ids(batch)

    def _bm25s_term_lists(self, texts: list, name: str) -> List[List[str]]:
        """tokenizer="bm25s": each text's terms (bm25s's tokens, stopwords dropped, stemmed
        once per distinct word)."""
        toks = []
        for i, t in enumerate(texts):
            if isinstance(t, (list, tuple)):
                raise TypeError(f"{name}[{i}] must be str or bytes (all items pre-tokenised or none)")
            toks.append(bm25s_tokens(t, f"{name}[{i}]"))
        cache = self._bm25s_terms
        new = list(dict.fromkeys(w for ts in toks for w in ts if w not in cache))
        if new:
            stop = self._stop_set
            stems = self._stemmer.stemWords(new) if self._stemmer is not None else new
            for w, st in zip(new, stems):
                cache[w] = None if w in stop or not st else st
        return [[cache[w] for w in ts if cache[w] is not None] for ts in toks]

    # ---------------------------------------------------------------- building
    def index(self, texts: Iterable[Union[str, Sequence[str]]], num_threads: Optional[int] = None) -> "BM25":
        """Index a corpus (replacing any previous one); document i gets id i.

        Parameters
        ----------
        texts : iterable of str (or bytes, UTF-8), or of lists of str tokens
            Raw documents, or pre-tokenised ones taken verbatim.

        Returns
        -------
        self
        """
        texts = _as_list(texts, "texts")
        if not texts:
            raise ValueError("texts is empty: a BM25 index needs at least one document")
        with self._lock:
            # Built on a fresh core, swapped in only once complete: a failure leaves the
            # previous index as it was.
            core = self._make_core()
            self._add(core, texts, num_threads)
            self._core = core
            self._vocab_cache = None
        return self

    def add(self, texts: Iterable[Union[str, Sequence[str]]], num_threads: Optional[int] = None) -> "BM25":
        """Append documents; they get ids ``num_docs, num_docs + 1, ...``.

        Document frequencies, IDFs and the average length are updated, so every
        score afterwards equals that of a fresh index over all documents.  Costs
        tokenising the new texts plus a linear pass over the existing postings.
        """
        texts = _as_list(texts, "texts")
        if not texts:
            return self
        with self._lock:
            if self.num_docs == 0:
                return self.index(texts, num_threads)
            core = self._core
            n_terms = core.vocab_size
            try:
                self._add(core, texts, num_threads)
            except BaseException:
                # All or nothing: the postings are unchanged (add_docs swaps them in
                # last), so only the terms learnt from the new texts are forgotten.
                core.truncate_vocabulary(n_terms)
                raise
            finally:
                self._vocab_cache = None
        return self

    def _add(self, core, texts: list, num_threads: Optional[int]) -> None:
        nt = resolve_num_threads(num_threads)
        offsets, ids = self._ids(texts, True, "texts", nt, core)
        if core.total_len == 0 and not np.any(ids >= 0):
            raise ValueError("the corpus has no tokens: every document is empty or holds only stopwords")
        core.add_docs(offsets, ids, nt)

    # ---------------------------------------------------------------- queries
    def _query_ids(self, queries: Any, num_threads: int) -> Tuple[np.ndarray, np.ndarray]:
        queries = _as_list(queries, "queries")
        if not queries:
            return np.zeros(1, np.int64), np.zeros(0, np.int64)
        core = self._core
        if not isinstance(queries[0], (list, tuple)) and self.tokenizer == "unicode":
            # Fast path: look every word up in the word cache (no batch vocabulary);
            # new words are stemmed and cached first.
            for _ in range(3):
                res = core.cached_ids(queries, num_threads, "queries")
                if isinstance(res, tuple):
                    return res
                self._learn_words(core, res, False)
        return self._ids(queries, False, "queries", num_threads, core)

    def _check_ready(self) -> None:
        if self.num_docs == 0:
            raise RuntimeError("the BM25 index is empty: call index(texts) before search() or score()")

    def search(
        self,
        queries: Iterable[Union[str, Sequence[str]]],
        k: int = 100,
        exclude: Any = None,
        num_threads: Optional[int] = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k documents per query.

        Parameters
        ----------
        queries : list of str, or list of lists of str tokens (verbatim)
            Q queries.  A query term repeated twice counts twice.  An empty
            query (or one with only stopwords / unknown words) gives a padded row.
        k : int
            Results per query; may exceed the corpus size (padded).
        exclude : optional
            Document ids to leave out per query, as in :func:`hardneg.topk`: a
            list of id lists, a -1 padded (Q, m) int array, or ``(indptr, indices)``.
        num_threads : int, optional

        Returns
        -------
        scores : float32 array (Q, k)
            Best first; ties by ascending id; padding ``-inf``.
        ids : int64 array (Q, k)
            Document ids; padding -1.  A document with score 0 is never returned.
        """
        self._check_ready()
        k = _check_k(k)
        nt = resolve_num_threads(num_threads)
        offsets, ids = self._query_ids(queries, nt)
        nq = offsets.shape[0] - 1
        csr = to_csr(exclude, nq, self.num_docs, "exclude")
        ip, ii = (None, None) if csr is None else csr
        if nq == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        # (Q, k) padded outputs: float32 scores + int64 ids.  The search itself never
        # holds more than min(k, num_docs) hits per query.
        check_bytes(nq * k * 12, "k")
        return self._core.search(offsets, ids, k, ip, ii, nt)

    def score(self, queries: Iterable[Union[str, Sequence[str]]], doc_ids: Any,
              num_threads: Optional[int] = None) -> np.ndarray:
        """BM25 scores of given (query, document) pairs, e.g. to rescore candidates.

        Parameters
        ----------
        queries : list of Q str (or token lists)
        doc_ids : int array (Q, m) or (Q,), or a list of Q id lists of equal length
            Document ids per query; -1 entries score ``-inf``.

        Returns
        -------
        float32 array (Q, m) (or (Q,) for 1-D ``doc_ids``): exactly the scores
        :meth:`search` reports (0 for a document without any query term, or the
        tf = 0 base for bm25l / bm25+).
        """
        self._check_ready()
        nt = resolve_num_threads(num_threads)
        offsets, ids = self._query_ids(queries, nt)
        nq = offsets.shape[0] - 1
        d = np.asarray(doc_ids.detach().cpu().numpy() if hasattr(doc_ids, "detach") else doc_ids)
        one_d = d.ndim == 1
        if one_d:
            d = d.reshape(-1, 1)
        if d.ndim != 2 or d.shape[0] != nq:
            raise ValueError(f"doc_ids must have shape ({nq}, m) or ({nq},) for {nq} queries, got {d.shape}")
        if d.size and d.dtype.kind not in "iu":
            raise TypeError(f"doc_ids must hold integer ids, got dtype {d.dtype}")
        check_uint_ids(d, "doc_ids")
        d = np.require(d, dtype=np.int64, requirements=["C", "A"])  # A: aligned (the kernel loads int64)
        bad = (d < -1) | (d >= self.num_docs)
        if bad.any():
            raise ValueError(f"doc_ids has id {int(d[bad][0])} outside the corpus range [0, {self.num_docs})")
        out = self._core.score(offsets, ids, d, nt) if nq else np.zeros(d.shape, np.float32)
        return out[:, 0] if one_d else out

    # ------------------------------------------------------------ persistence
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the index to directory ``path`` (``.npy`` arrays + ``bm25.json``).

        The files are written into a new directory beside ``path``, flushed to disk,
        and only then swapped in for the old one (atomically where the system offers
        it), so a failure or crash half-way leaves the previous index at ``path``
        intact, and saving an index loaded (memory-mapped) from ``path`` back into
        ``path`` is safe: no file in use is ever truncated.  A ``path`` that is an
        existing directory holding other files than an index gets the index files
        replaced one by one (each atomically), and its other files kept.
        """
        target = Path(path)
        if target.exists() and not target.is_dir():
            raise ValueError(f"path {str(path)!r} exists and is not a directory")
        parent = target.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        with self._lock:  # the arrays are views of the index: no add meanwhile
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
            try:
                self._save(tmp)
                _fsync_tree(tmp)
                _swap_into(tmp, target.absolute())
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)

    def _save(self, p: Path) -> None:
        """Writes the index files into the empty directory ``p`` (bm25.json last)."""
        for name, a in self._core.arrays().items():
            _write_array(p / f"{name}.npy", np.asarray(a))
        meta = {
            "format": _FORMAT, "version": _FORMAT_VERSION, "method": self.method, "k1": self.k1, "b": self.b,
            "delta": self.delta, "stopwords_name": self._stopwords_name, "stopwords": list(self._stopwords),
            "stemmer": self.stemmer, "num_docs": self.num_docs, "total_len": self._core.total_len,
            "tokenizer": self.tokenizer, "tokenizer_version": tokenizer_version(self.tokenizer),
            "stemmer_version": stemmer_version(self.stemmer),
        }
        with open(p / "vocabulary.json", "w", encoding="utf-8") as f:
            json.dump(self._core.terms, f, ensure_ascii=False)
        with open(p / "bm25.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], mmap: bool = True) -> "BM25":
        """Read an index written by :meth:`save`.

        With ``mmap=True`` the posting arrays are memory-mapped (read-only,
        paged in on use), so resident memory stays small; :meth:`add` then
        copies them into memory.
        """
        p = Path(path)
        try:
            with open(p / "bm25.json", encoding="utf-8") as f:
                meta = json.load(f)
            with open(p / "vocabulary.json", encoding="utf-8") as f:
                terms = json.load(f)
        except FileNotFoundError as e:
            raise ValueError(f"{str(path)!r} is not a hardneg BM25 index directory (missing {Path(e.filename).name})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{str(path)!r}: corrupt BM25 metadata ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{str(path)!r} is not a hardneg BM25 index (bad format marker)")
        version = meta.get("version")
        if version not in (1, _FORMAT_VERSION):
            raise ValueError(f"unsupported BM25 index version {version!r} (expected {_FORMAT_VERSION})")
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
            raise ValueError("corrupt BM25 index: vocabulary.json must be a list of str")
        try:
            stop = meta["stopwords_name"]
            bm = cls(k1=meta["k1"], b=meta["b"], delta=meta["delta"], method=meta["method"],
                     stopwords=meta["stopwords"] if stop == "custom" else stop, stemmer=meta["stemmer"],
                     tokenizer=meta.get("tokenizer", "unicode"))
            total_len = float(meta["total_len"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"corrupt BM25 index metadata: {e!r}") from None
        _check_versions(path, meta, bm)
        arrays = {}
        for name, dts in (_ARRAYS if version == _FORMAT_VERSION else _ARRAYS_V1).items():
            try:
                a = np.load(p / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            except FileNotFoundError:
                raise ValueError(f"corrupt BM25 index: {name}.npy is missing") from None
            except Exception as e:
                raise ValueError(f"corrupt BM25 index: cannot read {name}.npy ({e})") from None
            if a.dtype not in [np.dtype(dt) for dt in dts] or a.ndim != 1:
                want = " or ".join(np.dtype(dt).name for dt in dts)
                raise ValueError(f"corrupt BM25 index: {name}.npy must be 1-D {want}, got {a.ndim}-D {a.dtype}")
            arrays[name] = a
        if arrays["doc_len"].shape[0] != meta.get("num_docs"):
            raise ValueError("corrupt BM25 index: doc_len does not match num_docs")
        try:
            if version == 1:  # term counts per posting: code them (in memory)
                arrays.update(_codes_from_tfs(arrays))
            bm._core.set_arrays(terms, arrays["offsets"], arrays["docs"], arrays["codes"], arrays["code_tf"],
                                arrays["code_len"], arrays["doc_len"], total_len)
        except ValueError as e:
            raise ValueError(f"corrupt BM25 index: {e}") from None
        bm._vocab_cache = None
        if mmap:
            _release_pages(arrays.values())
        return bm


def _check_params(method: Any, k1: Any, b: Any, delta: Any) -> Tuple[float, float, float]:
    """k1, b, delta as floats, refusing every value for which the formulas of ``method``
    (docs/bm25.md) give non-finite scores or divide by zero.

    * k1 <= 1e18: the smallest TF part, tf / (k1·B + tf) with B = 1 - b + b·L/Lavg < 2**32,
      times the smallest IDF (about 2**-32) must stay a normal float32 (2**-126): k1 < 2**62.
      Larger k1 rounds every contribution to 0 (only padding comes back).
    * delta <= 1e30: bm25+ adds idf·delta for every query term to every score; with idf <
      ln(2**32 + 1) < 23 and delta <= 1e30, sums of up to 10**7 query terms stay finite in
      float32 (max 3.4e38).  1e30 is also the bound the index puts on any one impact.
    * bm25l's tf = 0 part (k1 + 1)·delta / (k1 + delta) divides by k1 + delta: one of them > 0.
    """
    check_choice(method, "method", METHODS)
    k1 = check_float(k1, "k1", nonnegative=True, optional=False, maximum=_MAX_K1)
    b = check_float(b, "b", nonnegative=True, optional=False, maximum=1.0)
    delta = check_float(delta, "delta", nonnegative=True, optional=False, maximum=_MAX_DELTA)
    if method == "bm25l" and k1 == 0 and delta == 0:
        raise ValueError("bm25l needs k1 > 0 or delta > 0: its tf = 0 part (k1 + 1)·delta / (k1 + delta) "
                         "divides by k1 + delta (got k1=0, delta=0)")
    return k1, b, delta


def _check_versions(path: Any, meta: dict, bm: "BM25") -> None:
    """Refuse an index saved with another tokeniser or stemmer version: its documents were
    tokenised differently from how queries (and added documents) would be now.  Indexes saved
    before versions were recorded carry none and load as they are."""
    for key, now in (("tokenizer_version", tokenizer_version(bm.tokenizer)),
                     ("stemmer_version", stemmer_version(bm.stemmer))):
        if key in meta and meta[key] != now:
            what = key.split("_")[0]
            raise ValueError(f"{str(path)!r} was saved with {what} version {meta[key]!r}, but this installation has "
                             f"{now!r}: its tokens would not match new queries or documents; re-index the corpus "
                             "(or load it where the versions match)")


def _write_array(path: Path, a: np.ndarray) -> None:
    """One array of a saved index (a seam of its own, so tests can inject a failure)."""
    np.save(path, a, allow_pickle=False)


def _fsync_tree(d: Path) -> None:
    """Flush the files of directory ``d`` and ``d`` itself to disk."""
    for f in d.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(d)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - systems without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _is_index_dir(d: Path) -> bool:
    """An empty directory, or one holding only files a saved index has."""
    known = {"bm25.json", "vocabulary.json"} | {f"{n}.npy" for n in (*_ARRAYS, *_ARRAYS_V1)}
    return all(f.name in known for f in d.iterdir())


def _swap_into(tmp: Path, target: Path) -> None:
    """Put the complete directory ``tmp`` at ``target``; the old contents are removed only
    after the new ones are in place (files already mapped stay valid: they are unlinked,
    never truncated)."""
    if not target.exists():
        os.rename(tmp, target)
    elif _is_index_dir(target):
        if _exchange(tmp, target):  # tmp now holds the old index
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / "ix")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    else:
        # A directory with other files: replace the index files one by one (bm25.json,
        # which load reads first, last) and keep the rest.
        names = sorted((f.name for f in tmp.iterdir()), key=lambda n: n == "bm25.json")
        for n in names:
            os.replace(tmp / n, target / n)
        tmp.rmdir()
    _fsync_dir(target.parent)


def _codes_from_tfs(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Version-1 indexes stored a term count per posting: turn them into (tf, length) codes."""
    docs, tfs, doc_len = arrays["docs"], arrays["tfs"], arrays["doc_len"]
    if tfs.shape != docs.shape:
        raise ValueError("posting arrays differ in length")
    if docs.size and int(docs.max()) >= doc_len.shape[0]:
        raise ValueError("postings must hold document ids inside the corpus")
    pairs = (tfs.astype(np.uint64) << np.uint64(32)) | doc_len[docs].astype(np.uint64)
    table, codes = np.unique(pairs, return_inverse=True)
    return {"codes": codes.astype(np.uint16 if table.size <= 65536 else np.uint32),
            "code_tf": (table >> np.uint64(32)).astype(np.uint32), "code_len": (table & np.uint64(0xFFFFFFFF)).astype(np.uint32)}


def _release_pages(arrays: Iterable[np.ndarray]) -> None:
    """Drop the pages that validating a mapped index read in: they are clean file pages, read
    again on demand, so resident memory after ``load(mmap=True)`` stays small."""
    import mmap as _mmap

    advice = getattr(_mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    for a in arrays:
        m = getattr(a, "_mmap", None)
        if m is None:
            continue
        try:
            m.madvise(advice)
        except (OSError, ValueError):  # not supported here: only memory stays higher
            pass

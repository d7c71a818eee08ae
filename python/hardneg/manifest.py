"""The manifest written beside every mined file: ``OUT.manifest.json``.

It records what is needed to rebuild ``OUT`` and to check that nothing changed since: the hardneg
version, the retriever(s), the model and a hash of the embeddings used, every setting, a
fingerprint of the dataset (hashes of its corpus, queries and qrels), the versions of the peer
libraries, counts and timings.  ``hardneg mine --manifest OUT.manifest.json -o AGAIN`` runs it
again: with unchanged inputs ``AGAIN`` equals ``OUT`` byte for byte (timings live only in the
manifest).
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

import numpy as np

from hardneg._io import atomic_text_output
from hardneg.datasets import RetrievalDataset

__all__ = ["MANIFEST_SUFFIX", "MANIFEST_VERSION", "manifest_path", "build_manifest", "write_manifest",
           "read_manifest", "dataset_fingerprint", "changed_input", "changed_embeddings", "digest_array",
           "digest_file", "embeddings_provenance", "EmbeddingsRecord", "peer_versions"]

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1
PEERS = ("numpy", "sentence-transformers", "bm25s", "faiss-cpu", "faiss-gpu", "faiss", "torch")
_CHUNK = 64 << 20  # bytes hashed per step


def manifest_path(output: Union[str, os.PathLike]) -> Path:
    """``OUT.manifest.json`` for the output file ``OUT``."""
    return Path(str(output) + MANIFEST_SUFFIX)


def _sha(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def digest_array(a: Any) -> str:
    """sha256 (hex) of a 2-D array's dtype, shape and values (read in 64 MiB row blocks: a
    memory-mapped file is never loaded whole)."""
    a = np.asarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    rows = max(1, _CHUNK // max(1, a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))))
    for s in range(0, a.shape[0] if a.ndim else 1, rows):
        h.update(np.ascontiguousarray(a[s:s + rows] if a.ndim else a).tobytes())
    return h.hexdigest()


def digest_file(path: Union[str, os.PathLike]) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def dataset_fingerprint(ds: RetrievalDataset) -> Dict[str, Any]:
    """Where the dataset came from and sha256 hashes of its corpus (ids, titles, texts), its split
    queries (ids, texts) and its qrels (sorted), as read."""
    corpus = _sha(x for triple in zip(ds.corpus_ids, ds.corpus_titles, ds.corpus_bodies) for x in triple)
    queries = _sha(x for pair in zip(ds.query_ids, ds.query_texts) for x in pair)
    qrels = _sha(f"{q}\t{d}\t{r}" for q in sorted(ds.qrels) for d, r in sorted(ds.qrels[q].items()))
    return {"path": str(ds.path) if ds.path else None, "split": ds.split, "num_docs": ds.num_docs,
            "num_queries": ds.num_queries, "corpus_sha256": corpus, "queries_sha256": queries,
            "qrels_sha256": qrels}


def peer_versions() -> Dict[str, str]:
    """Installed versions of the libraries a run may depend on (those installed)."""
    out = {}
    for name in PEERS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _counts(mined: Any, records: int) -> Dict[str, Any]:
    cnt = mined.counts
    n = mined.ids.shape[1]
    out = {"queries": len(mined), "documents": mined.dataset.num_docs, "negatives": int(cnt.sum()),
           "queries_short": int((cnt < n).sum()), "queries_without_negatives": int((cnt == 0).sum()),
           "records": records, "candidates": mined.stats.get("candidates"),
           "filtered": mined.stats.get("filtered", {})}
    for key in ("sources", "duplicates", "positive_not_in_top"):
        if key in mined.stats:
            out[key] = mined.stats[key]
    if mined.positive_in_top is not None:
        out["dropped"] = int(mined.dropped.sum())
    return out


def build_manifest(mined: Any, output: Union[str, os.PathLike], format: str, records: int) -> Dict[str, Any]:
    """The manifest of ``mined`` written to ``output`` in ``format`` (a JSON-able dict)."""
    from hardneg._version import __version__

    prov = mined.provenance or {}
    p = mined.params
    knobs = dict(prov.get("knobs") or {k: v for k, v in p.items() if k not in ("depth", "loaded_from")})
    out = Path(output)
    return {
        "hardneg_manifest": MANIFEST_VERSION,
        "hardneg_version": __version__,
        "output": {"path": str(out), "format": format, "records": records,
                   "sha256": digest_file(out) if out.is_file() else None},
        "dataset": dataset_fingerprint(mined.dataset),
        "retriever": p.get("retriever"),
        "negatives_from": p.get("negatives_from"),
        "model": prov.get("model"),
        "prompts": prov.get("prompts") or {},
        "embeddings": resolve_embeddings(prov.get("embeddings")),
        "bm25": prov.get("bm25"),
        "seed": p.get("seed"),
        "knobs": knobs,
        "cli": prov.get("cli"),
        "peers": peer_versions(),
        "counts": _counts(mined, records),
        "timings": {k: round(float(v), 6) for k, v in mined.timings.items()},
    }


def write_manifest(mined: Any, output: Union[str, os.PathLike], format: str, records: int) -> Path:
    """Write ``output + ".manifest.json"`` (beside it under a temporary name, renamed into place)."""
    path = manifest_path(output)
    text = json.dumps(build_manifest(mined, output, format, records), indent=2, ensure_ascii=False, default=_json)
    with atomic_text_output(path) as f:
        f.write(text + "\n")
    return path


def _json(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to a manifest")


def read_manifest(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A manifest read back; FileNotFoundError when absent, ValueError when it is not one."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"manifest {p} not found")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"manifest {p} is not JSON: {e}") from None
    if not isinstance(m, dict) or m.get("hardneg_manifest") != MANIFEST_VERSION or "knobs" not in m:
        raise ValueError(f"{p} is not a hardneg manifest (version {MANIFEST_VERSION})")
    return m


def changed_input(manifest: Dict[str, Any], ds: RetrievalDataset) -> Optional[str]:
    """The first input of ``ds`` that differs from the manifest's fingerprint, named in one phrase
    ("the corpus (path/corpus.jsonl)"), or None when all agree."""
    old = manifest.get("dataset") or {}
    new = dataset_fingerprint(ds)
    where = Path(ds.path) if ds.path else None
    files = {"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": f"qrels/{ds.split}.tsv"}
    for key in ("corpus", "qrels", "queries"):  # qrels first: they pick the split's queries
        if old.get(f"{key}_sha256") != new[f"{key}_sha256"]:
            return f"the {key}" + (f" ({where / files[key]})" if where is not None else "")
    return None


def changed_embeddings(manifest: Dict[str, Any], embeddings: Optional[Dict[str, Any]]) -> Optional[str]:
    """The embeddings (corpus / queries) whose hash differs from the manifest's, or None."""
    old = manifest.get("embeddings") or {}
    embeddings = resolve_embeddings(embeddings)
    for key in ("corpus", "queries"):
        a, b = (old.get(key) or {}).get("sha256"), ((embeddings or {}).get(key) or {}).get("sha256")
        if a is not None and a != b:
            path = (old.get(key) or {}).get("path")
            return f"the {key} embeddings" + (f" ({path})" if path else "")
    return None


class EmbeddingsRecord:
    """The corpus and split-query embeddings of a run, hashed only when a manifest needs them
    (mining itself never pays for the hash).  :meth:`resolve` gives
    ``{"corpus": {"path", "shape", "sha256"}, "queries": {...}}``."""

    def __init__(self, corpus: Any, queries: Any, corpus_source: Any = None, query_source: Any = None):
        self._arrays = (corpus, queries)
        self.paths = [str(x) if isinstance(x, (str, os.PathLike)) else None for x in (corpus_source, query_source)]
        self._resolved: Optional[Dict[str, Any]] = None

    def resolve(self) -> Dict[str, Any]:
        if self._resolved is None:
            self._resolved = {key: {"path": path, "shape": list(np.shape(a)), "sha256": _cached_digest(a, path)}
                              for key, a, path in zip(("corpus", "queries"), self._arrays, self.paths)}
            self._arrays = (None, None)
        return self._resolved


# (path, device, inode, size, mtime, shape) -> sha256 of an unchanged embeddings file's rows
_DIGESTS: Dict[tuple, str] = {}


def _cached_digest(a: Any, path: Optional[str]) -> str:
    key = None
    if path is not None:
        try:
            st = os.stat(path)
            key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, tuple(np.shape(a)))
        except OSError:
            key = None
    if key is not None and key in _DIGESTS:
        return _DIGESTS[key]
    d = digest_array(a)
    if key is not None:
        if len(_DIGESTS) > 64:
            _DIGESTS.clear()
        _DIGESTS[key] = d
    return d


def resolve_embeddings(record: Any) -> Optional[Dict[str, Any]]:
    """An :class:`EmbeddingsRecord` resolved (a dict or None passes through)."""
    return record.resolve() if isinstance(record, EmbeddingsRecord) else record


def embeddings_provenance(ret: Any, corpus_source: Any = None, query_source: Any = None) -> Optional[EmbeddingsRecord]:
    """The corpus and split-query embeddings a dense or hybrid retriever uses (hashed lazily)."""
    dense = ret if getattr(ret, "name", None) == "dense" else getattr(ret, "dense", None)
    if dense is None:
        return None
    return EmbeddingsRecord(dense.corpus, dense.queries, corpus_source, query_source)

"""Per-query id lists (exclusions, positives) in one CSR form.

Accepted forms, for Q queries:

* ``None``: nothing.
* a list (length Q) of lists / arrays of ids (an empty list means none);
* a 2-D integer array (Q, m) padded with -1 (numpy or torch);
* a CSR pair ``(indptr, indices)`` with ``indptr`` of length Q + 1.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from hardneg._arrays import check_uint_ids, is_torch

CSR = Tuple[np.ndarray, np.ndarray]


def _int_array(x: Any, name: str) -> np.ndarray:
    if is_torch(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros(a.shape, dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer ids, got dtype {a.dtype}")
    check_uint_ids(a, name)
    return a.astype(np.int64, copy=False)


def to_csr(ids: Any, num_queries: int, num_ids: Optional[int], name: str = "exclude") -> Optional[CSR]:
    """Convert one of the accepted forms to ``(indptr, indices)`` int64 arrays.

    Ids must lie in ``[0, num_ids)`` when ``num_ids`` is given (padding -1 is
    dropped from the padded-array form only).  Raises ValueError/TypeError
    naming ``name``.
    """
    if ids is None:
        return None
    if isinstance(ids, tuple) and len(ids) == 2 and not isinstance(ids[0], (list, tuple)):
        indptr = _int_array(ids[0], f"{name} indptr").ravel()
        indices = _int_array(ids[1], f"{name} indices").ravel()
        if indptr.shape[0] != num_queries + 1:
            raise ValueError(f"{name} indptr must have {num_queries + 1} entries (queries + 1), got {indptr.shape[0]}")
        if indptr[0] != 0 or indptr[-1] != indices.shape[0] or np.any(np.diff(indptr) < 0):
            raise ValueError(f"{name} indptr must start at 0, be non-decreasing and end at len(indices)")
    elif isinstance(ids, np.ndarray) or is_torch(ids):
        a = _int_array(ids, name)
        if a.ndim != 2 or a.shape[0] != num_queries:
            raise ValueError(f"{name} as an array must have shape ({num_queries}, m) padded with -1, got {a.shape}")
        keep = a != -1
        indices = a[keep]
        indptr = np.zeros(num_queries + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=indptr[1:])
    elif isinstance(ids, (list, tuple)):
        if len(ids) != num_queries:
            raise ValueError(f"{name} must have one entry per query ({num_queries}), got {len(ids)}")
        rows = []
        for i, r in enumerate(ids):
            if r is None:
                r = []
            r = _int_array(r, name).ravel()
            rows.append(r)
        indptr = np.zeros(num_queries + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=indptr[1:])
        indices = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    else:
        raise TypeError(f"{name} must be None, a list of id lists, a -1 padded int array or (indptr, indices)")
    indptr = np.require(indptr, dtype=np.int64, requirements=["C", "A"])
    indices = np.require(indices, dtype=np.int64, requirements=["C", "A"])
    if num_ids is not None and indices.size and (indices.min() < 0 or indices.max() >= num_ids):
        bad = indices[(indices < 0) | (indices >= num_ids)][0]
        raise ValueError(f"{name} has id {int(bad)} outside the corpus range [0, {num_ids})")
    return indptr, indices

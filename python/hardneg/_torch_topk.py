"""Exact top-k in torch, for CUDA tensors (and on CPU when forced with backend="torch").

The score tile (query chunk x corpus chunk) is bounded by ``memory_budget``
bytes, and chunk results are merged into a running top-k.  Ordering is exact and
matches the C++ kernel: every score is packed with its id into one int64 key
(order-preserving integer image of the float in the high 32 bits, ``2^32 - 1 - id``
in the low 32 bits), so ``torch.topk`` on the keys yields "score descending, then
id ascending" with no tie ambiguity.  Excluded entries get the smallest key and
become padding.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from hardneg.exclude import CSR

_LOW = 0xFFFFFFFF


def _pack(key, ids):
    """float32 keys (larger is better) + int64 ids -> int64 sortable words."""
    import torch

    k = (key + 0.0).contiguous().view(torch.int32)  # +0.0 turns -0.0 into +0.0
    k = torch.where(k < 0, k ^ 0x7FFFFFFF, k).to(torch.int64)
    return (k << 32) | (_LOW - ids)


def _unpack(words):
    import torch

    ids = _LOW - (words & _LOW)
    k = (words >> 32).to(torch.int32)
    k = torch.where(k < 0, k ^ 0x7FFFFFFF, k)
    return k.view(torch.float32), ids


# fp32 norms in [2^-30, 2^63] lost nothing to over- or underflow of their squares (as in cpp/topk_internal.h)
_SAFE_NORM = (2.0 ** -30, 2.0 ** 63)


def _norms(x):
    """L2 norms of the rows of a float32 tensor: torch's fp32 norm, with the rows whose squares
    over- or underflow in fp32 (norm above ~1.8e19 or below ~1e-9, zero rows included)
    recomputed in float64."""
    import torch

    n = x.norm(dim=1)
    bad = ~((n >= _SAFE_NORM[0]) & (n <= _SAFE_NORM[1]))
    if bool(bad.any()):
        idx = bad.nonzero(as_tuple=True)[0]
        n = n.clone()
        n[idx] = x[idx].to(torch.float64).norm(dim=1).to(torch.float32)
    return n


def topk_torch(queries, corpus_parts, k: int, metric: str, exclude: Optional[CSR],
               memory_budget: int = 1 << 30):
    """queries (Q, d) tensor; corpus_parts: list of (tensor (n, d), id_offset), ids < 2^32.

    Returns (scores float32 (Q, k), ids int64 (Q, k)) on the queries' device.
    """
    import torch

    dev = queries.device
    q = queries.detach().to(torch.float32)
    nq = q.shape[0]
    largest = metric != "l2"
    pad = float("-inf") if largest else float("inf")
    if metric == "cosine":
        n = _norms(q)[:, None]
        q = torch.where(n > 0, q / n.clamp_min(1e-38), torch.zeros_like(q))
    qn = (q * q).sum(dim=1, keepdim=True) if metric == "l2" else None
    invalid = torch.iinfo(torch.int64).min

    ex_rows = ex_cols = None
    if exclude is not None and exclude[1].size:
        indptr, indices = exclude
        ex_rows = torch.from_numpy(np.repeat(np.arange(nq, dtype=np.int64), np.diff(indptr))).to(dev)
        ex_cols = torch.from_numpy(indices).to(dev)

    total = sum(int(c.shape[0]) for c, _ in corpus_parts)
    # bytes per tile element: fp32 scores, int64 keys and their topk temporaries
    per = 32
    qc = max(1, min(nq, 4096))
    cc = max(1, int(memory_budget // (per * qc)))
    while cc < min(total, 4 * k, 4096) and qc > 1:
        qc = max(1, qc // 2)
        cc = max(1, int(memory_budget // (per * qc)))

    out_s = torch.empty((nq, k), dtype=torch.float32, device=dev)
    out_i = torch.empty((nq, k), dtype=torch.int64, device=dev)
    for q0 in range(0, nq, qc):
        q1 = min(nq, q0 + qc)
        qb = q[q0:q1]
        run = torch.empty((q1 - q0, 0), dtype=torch.int64, device=dev)
        if ex_rows is not None:
            sel = (ex_rows >= q0) & (ex_rows < q1)
            er, ec = ex_rows[sel] - q0, ex_cols[sel]
        for part, off in corpus_parts:
            n = int(part.shape[0])
            for c0 in range(0, n, cc):
                c1 = min(n, c0 + cc)
                x = part[c0:c1].to(device=dev, dtype=torch.float32)
                s = qb @ x.T
                if metric == "cosine":
                    xn = _norms(x)
                    s = s * torch.where(xn > 0, 1.0 / xn.clamp_min(1e-38), torch.zeros_like(xn))
                elif metric == "l2":
                    s = -(qn[q0:q1] + (x * x).sum(dim=1)[None, :] - 2.0 * s).clamp_min(0.0)
                ids = torch.arange(off + c0, off + c1, device=dev, dtype=torch.int64)
                words = _pack(s, ids[None, :])
                words = torch.where(torch.isnan(s), torch.full_like(words, invalid), words)
                if ex_rows is not None:
                    g0, g1 = off + c0, off + c1
                    m = (ec >= g0) & (ec < g1)
                    words[er[m], ec[m] - g0] = invalid
                kk = min(k, words.shape[1])
                best = torch.topk(words, kk, dim=1, largest=True, sorted=False).values
                both = torch.cat([run, best], dim=1)
                run = torch.topk(both, min(k, both.shape[1]), dim=1, largest=True, sorted=True).values
        kk = run.shape[1]
        key, ids = _unpack(run)
        valid = run != invalid
        out_s[q0:q1, :kk] = torch.where(valid, key if largest else 0.0 - key, torch.full_like(key, pad))
        out_i[q0:q1, :kk] = torch.where(valid, ids, torch.full_like(ids, -1))
        if kk < k:
            out_s[q0:q1, kk:] = pad
            out_i[q0:q1, kk:] = -1
    return out_s, out_i

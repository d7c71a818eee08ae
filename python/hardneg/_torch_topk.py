"""Exact top-k in torch, for CUDA tensors (and on CPU when forced with backend="torch").

The score tile (query chunk x corpus chunk) is bounded by ``memory_budget``
bytes; chunk results are merged into a running top-k.  Ordering is exact: each
tile is sorted with a *stable* descending sort, so equal scores keep ascending id
order, and the running results (smaller ids) precede each new tile in the merge.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from hardneg.exclude import CSR

METRICS = ("ip", "cosine", "l2")


def topk_torch(queries, corpus_parts, k: int, metric: str, exclude: Optional[CSR],
               memory_budget: int = 1 << 30):
    """queries (Q, d) tensor; corpus_parts: list of (tensor (n, d), id_offset).

    Returns (scores float32 (Q, k), ids int64 (Q, k)) on the queries' device.
    """
    import torch

    dev = queries.device
    q = queries.detach().to(torch.float32)
    nq = q.shape[0]
    largest = metric != "l2"
    pad = float("-inf") if largest else float("inf")
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-30) * (q.norm(dim=1, keepdim=True) > 0)
    qn = (q * q).sum(dim=1, keepdim=True) if metric == "l2" else None

    ex_rows = ex_cols = None
    if exclude is not None and exclude[1].size:
        indptr, indices = exclude
        ex_rows = torch.from_numpy(np.repeat(np.arange(nq, dtype=np.int64), np.diff(indptr))).to(dev)
        ex_cols = torch.from_numpy(indices).to(dev)

    total = sum(int(c.shape[0]) for c, _ in corpus_parts)
    # bytes per score: the fp32 tile, the sorted copy, int64 sort indices and a bool mask
    per = 4 + 4 + 8 + 1
    qc = max(1, min(nq, 4096))
    cc = max(1, int(memory_budget // (per * qc)))
    while cc < min(total, 1024) and qc > 1:
        qc = max(1, qc // 2)
        cc = max(1, int(memory_budget // (per * qc)))

    out_s = torch.empty((nq, k), dtype=torch.float32, device=dev)
    out_i = torch.empty((nq, k), dtype=torch.int64, device=dev)
    for q0 in range(0, nq, qc):
        q1 = min(nq, q0 + qc)
        qb = q[q0:q1]
        run_s = torch.full((q1 - q0, 0), pad, dtype=torch.float32, device=dev)
        run_i = torch.full((q1 - q0, 0), -1, dtype=torch.int64, device=dev)
        run_v = torch.zeros((q1 - q0, 0), dtype=torch.bool, device=dev)
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
                    xn = x.norm(dim=1)
                    s = s * torch.where(xn > 0, 1.0 / xn, torch.zeros_like(xn))
                elif metric == "l2":
                    s = (qn[q0:q1] + (x * x).sum(dim=1)[None, :] - 2.0 * s).clamp_min(0.0)
                valid = ~torch.isnan(s)
                if ex_rows is not None:
                    g0, g1 = off + c0, off + c1
                    m = (ec >= g0) & (ec < g1)
                    valid[er[m], ec[m] - g0] = False
                ids = torch.arange(off + c0, off + c1, device=dev).expand(q1 - q0, -1)
                s_all = torch.cat([run_s, s], dim=1)
                i_all = torch.cat([run_i, ids], dim=1)
                v_all = torch.cat([run_v, valid], dim=1)
                # stable sorts: by score (ids already ascending along the row), then valid first
                s_sorted, order = torch.sort(s_all, dim=1, descending=largest, stable=True)
                v_sorted = torch.gather(v_all, 1, order)
                order2 = torch.sort(v_sorted.to(torch.int8), dim=1, descending=True, stable=True).indices
                order = torch.gather(order, 1, order2)[:, :k]
                run_s = torch.gather(s_all, 1, order)
                run_i = torch.gather(i_all, 1, order)
                run_v = torch.gather(v_all, 1, order)
        kk = run_s.shape[1]
        run_s = torch.where(run_v, run_s, torch.full_like(run_s, pad))
        run_i = torch.where(run_v, run_i, torch.full_like(run_i, -1))
        out_s[q0:q1, :kk] = run_s
        out_i[q0:q1, :kk] = run_i
        if kk < k:
            out_s[q0:q1, kk:] = pad
            out_i[q0:q1, kk:] = -1
    return out_s, out_i

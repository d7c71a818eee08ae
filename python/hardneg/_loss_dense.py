"""The query->passage InfoNCE term as a few dense torch operations, for CPU batches without
a memory whose B x B(1+n) logits fit (at most DENSE_MAX_LOGITS entries, 128 MB in float32).

There BLAS matmuls beat the fused C++ kernel's score tiles (which pay off by never building
the logits, i.e. with a memory), and the
generic torch path (one autograd node per mask and direction) is slower still; this path
does what a plain ``cross_entropy(q @ cand.T * scale)`` does (one matmul forward, two
backward) with the masks, hardness and the log1p-exact loss of :class:`InfoNCELoss`, and a
hand-written backward.  Same value and gradients as the other paths (tests/test_losses*.py).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from hardneg.losses import _id_match, _overflow_error

# logits entries (B * B(1+n)) up to which InfoNCELoss(backend="auto") takes this path on CPU;
# above it (a plain torch loss would need GBs too) the fused kernel's constant memory wins
DENSE_MAX_LOGITS = 1 << 25


def _normalize(x: Tensor, check_inputs) -> Tuple[Tensor, Tensor]:
    """(x / |x|, 1 / |x|) per row without over/underflow; a zero row gives (0, 0).

    NaN / Inf in x make the sum of squares leave [1e-30, 1e30] too: ``check_inputs()``
    then raises the ValueError naming the input."""
    sq = (x * x).sum(dim=1, keepdim=True)
    if bool(((sq >= 1e-30) & (sq <= 1e30)).all()):  # the common case: the plain sum of squares is exact enough
        inv = sq.rsqrt()
        return x * inv, inv
    check_inputs()
    m = x.abs().amax(dim=1, keepdim=True)
    nz = m > 0
    y = x / torch.where(nz, m, torch.ones_like(m))
    n = y.norm(dim=1, keepdim=True)
    xhat = torch.where(nz, y / torch.where(nz, n, torch.ones_like(n)), torch.zeros_like(y))
    inv = torch.where(nz, (1.0 / torch.where(nz, n, torch.ones_like(n))) / torch.where(nz, m, torch.ones_like(m)),
                      torch.zeros_like(m)).clamp_max(torch.finfo(x.dtype).max)
    return xhat, inv


def _masks(S: Tensor, B: int, n: int, opts: dict, pos_ids: Optional[Tensor], neg_ids: Optional[Tensor],
           query_ids: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(removed (B, N) or None, hardness-penalised (B, N) or None); column j belongs to query j % B."""
    N = S.shape[1]
    dev = S.device
    rows = torch.arange(B, device=dev)
    own = None
    if not opts["in_batch"] or opts["alpha"] > 0:
        own = (torch.arange(N, device=dev) % B)[None, :] == rows[:, None]
    removed = None
    if not opts["in_batch"]:
        removed = ~own
    if pos_ids is not None:
        cid = [pos_ids] + [neg_ids[:, k] if neg_ids is not None else torch.full_like(pos_ids, -1) for k in range(n)]
        m = _id_match(torch.cat(cid), pos_ids, query_ids)
        removed = m if removed is None else removed | m
    if opts["margin"] is not None:
        m = S > (S[rows, rows] - opts["margin"])[:, None]
        removed = m if removed is None else removed | m
    pen = None
    if opts["alpha"] > 0:
        mode = opts["hardness_mode"]
        if mode == "hard_negatives":
            pen = own.clone()
            pen[:, :B] = False
        elif mode == "in_batch_negatives":
            pen = ~own
        else:  # all_negatives
            pen = torch.ones_like(own)
        pen[rows, rows] = False
    return removed, pen


class DenseInfoNCE(torch.autograd.Function):
    """Mean over rows of log(1 + sum_{c != pos} exp(z_ic - z_ip)), z = scale*sim (+ alpha*stop_grad(sim))."""

    @staticmethod
    def forward(ctx, q, pos, hard, opts, pos_ids, neg_ids, query_ids):
        B, d = q.shape
        n = 0 if hard is None else hard.shape[1]
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        cand = pos if n == 0 else torch.cat([pos, hard.transpose(0, 1).reshape(B * n, d)])
        x, c = q.detach().to(cdt), cand.detach().to(cdt)
        if opts["cosine"]:
            x, xinv = _normalize(x, opts["check_inputs"])
            c, cinv = _normalize(c, opts["check_inputs"])
        else:
            xinv = cinv = None
        S = x @ c.T
        rows = torch.arange(B, device=q.device)
        removed, pen = _masks(S, B, n, opts, pos_ids, neg_ids, query_ids)
        Z = S * opts["scale"]
        if pen is not None:
            Z = torch.where(pen, Z + opts["alpha"] * S, Z)
        # cosine logits are bounded by (scale + alpha) * |sim| <= ~(scale + alpha): no check needed then
        bounded = opts["cosine"] and (opts["scale"] + opts["alpha"]) * 4 < torch.finfo(cdt).max
        if not bounded and not bool(torch.isfinite(Z).all()):
            opts["check_inputs"]()  # a NaN / Inf input, named
            raise _overflow_error("q against pos / hard_negatives", cdt)
        D = Z - Z[rows, rows][:, None]
        D[rows, rows] = float("-inf")
        if removed is not None:
            D.masked_fill_(removed, float("-inf"))
        m = D.max(dim=1).values.clamp_min(0.0)
        E = torch.exp(D - m[:, None])
        loss_row = m + torch.log1p(torch.expm1(-m) + E.sum(dim=1))
        loss = loss_row.mean()
        if not bounded and not bool(torch.isfinite(loss)):
            raise _overflow_error("the batch (the mean loss)", cdt)
        ctx.save_for_backward(x, c, xinv, cinv, E, m, loss_row)
        ctx.shape = (B, n, d, q.dtype, pos.dtype, None if hard is None else hard.dtype)
        ctx.scale = opts["scale"]
        return loss.to(torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype)

    @staticmethod
    def backward(ctx, g):
        x, c, xinv, cinv, E, m, loss_row = ctx.saved_tensors
        B, n, d, qdt, pdt, hdt = ctx.shape
        rows = torch.arange(B, device=x.device)
        w = g.to(x.dtype) / B
        # dloss_i/dz_ic = p_ic = exp(D_ic - loss_i) for c != pos; exp(-loss_i) - 1 for the positive
        W = E * (torch.exp(m - loss_row) * w)[:, None]
        W[rows, rows] = torch.expm1(-loss_row) * w
        W = W * ctx.scale  # the hardness term carries no gradient
        gx = W @ c if ctx.needs_input_grad[0] else None
        gc = W.T @ x if any(ctx.needs_input_grad[1:3]) else None
        if xinv is not None:  # through x / |x|
            if gx is not None:
                gx = (gx - x * (x * gx).sum(dim=1, keepdim=True)) * xinv
            if gc is not None:
                gc = (gc - c * (c * gc).sum(dim=1, keepdim=True)) * cinv
        gq = gx.to(qdt) if gx is not None else None
        gpos = gc[:B].to(pdt) if gc is not None and ctx.needs_input_grad[1] else None
        ghard = None
        if n and gc is not None and ctx.needs_input_grad[2]:
            ghard = gc[B:].reshape(n, B, d).transpose(0, 1).to(hdt)
        return gq, gpos, ghard, None, None, None, None

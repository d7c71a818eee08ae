"""The query->passage InfoNCE term as a few dense torch operations, for CPU batches whose
B x B(1+n) logits fit (at most DENSE_MAX_LOGITS entries, 128 MB in float32), without a memory
or with one at least 16 times the in-batch candidates (its log-sum-exp per query comes in).

There BLAS matmuls beat the fused C++ kernel's score tiles (which pay off by never building
the logits), and the generic torch path (one autograd node per mask and direction) is slower
still.  This path does the matmuls of a plain ``cross_entropy(q @ cand.T * scale)`` (one
forward, two backward) with the masks, hardness and the log1p-exact loss of
:class:`InfoNCELoss`, a hand-written backward, and fewer elementwise passes over the logits
than cross_entropy and its backward (in-place scale, shift and exp; no mask tensor without
options).  Same value and gradients as the other paths (tests/test_losses*.py).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from hardneg.losses import _has_nonfinite, _id_match, _overflow_error

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
    """(removed (B, N) or None, hardness-penalised (B, N) or None), or (None, None) without options.

    Columns are ``[positives (B) | hard negatives (B*n)]`` with query i's negative k at
    B + i*n + k (the row order of ``hard.reshape(B*n, d)``, no copy)."""
    alpha, in_batch, margin = opts["alpha"], opts["in_batch"], opts["margin"]
    if in_batch and alpha <= 0 and pos_ids is None and margin is None:
        return None, None  # the common case: nothing removed, nothing penalised
    dev = S.device
    rows = torch.arange(B, device=dev)
    own = None
    if not in_batch or alpha > 0:
        owner = rows if n == 0 else torch.cat([rows, rows.repeat_interleave(n)])
        own = owner[None, :] == rows[:, None]
    removed = None
    if not in_batch:
        removed = ~own
    if pos_ids is not None:
        neg = neg_ids.reshape(-1) if neg_ids is not None else torch.full((B * n,), -1, dtype=pos_ids.dtype,
                                                                            device=dev)
        m = _id_match(torch.cat([pos_ids, neg]) if n else pos_ids, pos_ids, query_ids)
        removed = m if removed is None else removed | m
    if margin is not None:
        m = S > (S.diagonal() - margin)[:, None]
        removed = m if removed is None else removed | m
    pen = None
    if alpha > 0:
        mode = opts["hardness_mode"]
        if mode == "hard_negatives":
            pen = own.clone()
            pen[:, :B] = False
        elif mode == "in_batch_negatives":
            pen = ~own
        else:  # all_negatives
            pen = torch.ones_like(own)
        pen.diagonal().fill_(False)
    return removed, pen


class DenseInfoNCE(torch.autograd.Function):
    """Mean over rows of log(1 + sum_{c != pos} exp(z_ic - z_ip)), z = scale*sim (+ alpha*stop_grad(sim)).

    Passes over the (B, N) logits: the matmul, the scale, one sum (dot: overflow, NaN), one
    row max, the shift and exp (in place), the row sum; backward: one scaled copy and the two
    matmuls.  Fewer than ``cross_entropy`` and its backward need.  ``lse_mem`` (B,), the
    log-sum-exp of each query's memory logits (differentiable), joins the sum as one more
    term ``exp(lse_mem_i - z_ip)``."""

    @staticmethod
    def forward(ctx, q, pos, hard, opts, pos_ids, neg_ids, query_ids, lse_mem=None):
        B, d = q.shape
        n = 0 if hard is None else hard.shape[1]
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        x = q.detach()
        c = pos.detach() if n == 0 else torch.cat([pos.detach(), hard.detach().reshape(B * n, d)])
        if x.dtype != cdt:
            x = x.to(cdt)
        if c.dtype != cdt:
            c = c.to(cdt)
        scale, alpha, cosine = opts["scale"], opts["alpha"], opts["cosine"]
        if cosine:
            x, xinv = _normalize(x, opts["check_inputs"])
            c, cinv = _normalize(c, opts["check_inputs"])
        else:
            xinv = cinv = None
        S = x @ c.T
        removed, pen = _masks(S, B, n, opts, pos_ids, neg_ids, query_ids)
        if pen is not None:
            Z = torch.where(pen, S * scale + alpha * S, S * scale)
        else:
            Z = S.mul_(scale)  # the masks are built: S is needed no more, scale it in place
        # cosine logits are bounded by (scale + alpha) * |sim| <= ~(scale + alpha): no check needed then
        bounded = cosine and (scale + alpha) * 4 < torch.finfo(cdt).max
        # the sum is the cheapest pass that shows a NaN or +-inf (isfinite().all() costs far more);
        # a finite sum that overflows (logits ~1e34) falls back to the exact test
        if not bounded and _has_nonfinite(Z):
            opts["check_inputs"]()  # a NaN / Inf input, named
            raise _overflow_error("q against pos / hard_negatives", cdt)
        zpos = Z.diagonal()  # a view: read before Z is shifted in place below
        if removed is not None:  # (which may remove the positive's column too: an id match)
            zpos = zpos.clone()
            Z.masked_fill_(removed, float("-inf"))
        # m_i = max(0, max_{c != pos, kept} z_ic - z_ip): the positive's own column gives 0
        m = Z.amax(dim=1).sub_(zpos)
        t = None
        if lse_mem is not None:  # the memory is one more term exp(lse_mem_i - z_ip) of the sum
            t = lse_mem.detach().to(cdt) - zpos
            m = torch.maximum(m, t)
        m = m.clamp_min_(0.0)
        E = Z.sub_((zpos + m).unsqueeze(1)).exp_()  # exp(z_ic - z_ip - m_i), in place
        E.diagonal().zero_()  # the positive is the "1" of log1p
        rest = E.sum(dim=1)
        if t is not None:
            rest = rest.add_(torch.exp(t - m))
        loss_row = torch.log1p(rest.add_(torch.expm1(m.neg()))).add_(m)
        loss = loss_row.mean()
        if not bounded and not math.isfinite(float(loss)):  # z_ic - z_ip or the mean overflowed
            raise _overflow_error("the batch (the mean loss)", cdt)
        ctx.memory_term = t
        ctx.save_for_backward(x, c, xinv, cinv, E, m, loss_row)
        ctx.shape = (B, n, d, q.dtype, pos.dtype, None if hard is None else hard.dtype)
        ctx.scale = scale
        return loss  # in cdt: float32 for float32 / float16 / bfloat16 inputs, float64 for float64

    @staticmethod
    def backward(ctx, g):
        x, c, xinv, cinv, E, m, loss_row = ctx.saved_tensors
        B, n, d, qdt, pdt, hdt = ctx.shape
        w = (g if g.dtype == x.dtype else g.to(x.dtype)) * (ctx.scale / B)  # the hardness term has no gradient
        # dloss_i/dz_ic = p_ic = exp(D_ic - loss_i) for c != pos; exp(-loss_i) - 1 for the positive
        W = E * torch.exp(m - loss_row).mul_(w).unsqueeze(1)
        W.diagonal().copy_(torch.expm1(loss_row.neg()).mul_(w))
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
            ghard = gc[B:].reshape(B, n, d).to(hdt)
        glse = None
        if ctx.memory_term is not None and ctx.needs_input_grad[7]:  # dloss_i/dlse_i = p_memory,i
            glse = torch.exp(ctx.memory_term - loss_row) * (w / ctx.scale)
        return gq, gpos, ghard, None, None, None, None, glse

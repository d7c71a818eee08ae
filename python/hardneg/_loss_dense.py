"""The query->passage InfoNCE term as BLAS matmuls and one C++ pass per row of logits, for CPU
batches whose B x B(1+n) logits fit (at most DENSE_MAX_LOGITS entries, 128 MB in float32),
without a memory or with one at least 4 times the in-batch candidates (its log-sum-exp per query
comes in).

There BLAS matmuls beat the fused C++ kernel's score tiles (which pay off by never building
the logits), and the generic torch path (one autograd node per mask and direction) is slower
still.  This path does the matmuls of a plain ``cross_entropy(q @ cand.T * scale)`` (one
forward, two backward) with the masks, hardness and the log1p-exact loss of
:class:`InfoNCELoss`; between them ``_core.dense_rows`` (cpp/loss_dense.cpp) finishes each row
of logits while it is in cache (scale, finite check, max, exp, sum, loss, gradient weights, in
place), where cross_entropy and its backward make a pass and a dispatch per operation.  Same
value and gradients as the other paths (tests/test_losses*.py, tests/test_loss_rows.py).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from hardneg import _core
from hardneg.losses import ROW_THREADS, _id_match, _overflow_error

# logits entries (B * B(1+n)) up to which InfoNCELoss(backend="auto") takes this path on CPU;
# above it (a plain torch loss would need GBs too) the fused kernel's constant memory wins
DENSE_MAX_LOGITS = 1 << 25

# The plain step (no options, a gradient wanted) takes DenseStep, the whole step in one C++ call,
# while the logits B x B(1+n) are at most STEP_MAX_LOGITS entries (the dense path's limit).  In
# scratch runs over the no-memory shapes of benchmarks/compare_losses_grid.py (B 32-1,024) it was
# faster than these BLAS matmuls in every shape tried: at small batches because torch's chain of small BLAS calls (its thread pool woken per call, a dispatch
# per operation, an autograd node per step) costs more than the arithmetic, at large ones
# because its kernels run at BLAS speed and it makes no elementwise passes.
STEP_MAX_LOGITS = DENSE_MAX_LOGITS


def step_fast() -> bool:
    """Whether the SIMD level in use runs DenseStep at speed (AVX-512: its gradient matmuls are a
    register-blocked kernel; the plain loops of the other levels measured 0.4-0.7x the matmul
    path at the AVX2 level, cpp/loss_dense.h)."""
    return _core.dense_step_fast()


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

    Forward: one BLAS matmul for the (B, N) similarities, the masks (only with options), then
    one C++ call (``_core.dense_rows``, cpp/loss_dense.cpp) that turns each row, in place and
    while it is in cache, into its loss and the weights dloss_i/dz_ic; backward: the two
    matmuls against those weights.  A plain ``cross_entropy(q @ cand.T * scale)`` runs the
    same matmuls with a chain of elementwise torch operations (scale, log_softmax, nll and
    their backward: a pass and a dispatch each) between them.  ``lse_mem`` (B,), the
    log-sum-exp of each query's memory logits (differentiable), joins the sum as one more
    term ``exp(lse_mem_i - z_ip)``."""

    @staticmethod
    def forward(ctx, q, pos, hard, lse_mem, extra):
        opts, pos_ids, neg_ids, query_ids = extra  # (one argument: apply's cost grows with their number)
        B, d = q.shape
        n = 0 if hard is None else hard.shape[1]
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        x = q  # (forward runs without autograd: no detach needed)
        c = pos if n == 0 else torch.cat([pos, hard.reshape(B * n, d)])
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
        S = x @ c.T  # (B, B(1+n)), fresh and contiguous: the row passes overwrite it
        removed, pen = _masks(S, B, n, opts, pos_ids, neg_ids, query_ids)  # (the margin reads S first)
        lse = None if lse_mem is None else lse_mem.detach().to(cdt).contiguous().numpy()
        # S becomes P = (scale / B) dloss_i/dz_ic: the backward of the mean is then two matmuls
        mean, _, pmem, bad = _core.dense_rows(S.numpy(), scale, alpha, scale / B,
                                              None if pen is None else pen.contiguous().numpy(),
                                              None if removed is None else removed.contiguous().numpy(),
                                              lse, ROW_THREADS)
        if bad != -1:
            if bad == -2:  # the logits are finite, z_ic - z_ip or the mean overflowed
                raise _overflow_error("the batch (the mean loss)", cdt)
            opts["check_inputs"]()  # a logit the compute dtype cannot hold, or a NaN / Inf input (named first)
            raise _overflow_error("q against pos / hard_negatives", cdt)
        loss = torch.from_numpy(mean)
        ctx.pmem = None if pmem is None else torch.from_numpy(pmem)
        ctx.save_for_backward(x, c, xinv, cinv, S)
        ctx.shape = (B, n, d, q.dtype, pos.dtype, None if hard is None else hard.dtype)
        ctx.scale = scale
        return loss  # in cdt: float32 for float32 / float16 / bfloat16 inputs, float64 for float64

    @staticmethod
    def backward(ctx, g):
        x, c, xinv, cinv, P = ctx.saved_tensors  # P_ic = (scale / B) dloss_i / dz_ic
        B, n, d, qdt, pdt, hdt = ctx.shape
        gs = float(g)  # dL/dloss (1 for loss.backward()); the hardness term has no gradient
        gx = P @ c if ctx.needs_input_grad[0] else None
        gc = P.T @ x if any(ctx.needs_input_grad[1:3]) else None
        if gs != 1.0:
            gx = gx.mul_(gs) if gx is not None else None
            gc = gc.mul_(gs) if gc is not None else None
        if xinv is not None:  # through x / |x|
            if gx is not None:
                gx = (gx - x * (x * gx).sum(dim=1, keepdim=True)) * xinv
            if gc is not None:
                gc = (gc - c * (c * gc).sum(dim=1, keepdim=True)) * cinv
        gq = gx if gx is None or gx.dtype == qdt else gx.to(qdt)
        gpos = None
        if gc is not None and ctx.needs_input_grad[1]:
            gpos = gc[:B] if gc.dtype == pdt else gc[:B].to(pdt)
        ghard = None
        if n and gc is not None and ctx.needs_input_grad[2]:
            ghard = gc[B:].reshape(B, n, d).to(hdt)
        glse = None
        if ctx.pmem is not None and ctx.needs_input_grad[3]:  # dloss/dlse_i = p_memory,i / B
            glse = ctx.pmem * (gs / ctx.scale)
        return gq, gpos, ghard, glse, None


class DenseStep(torch.autograd.Function):
    """The plain InfoNCE step (dot or cosine; no masks, hardness or memory) of float32 C-contiguous
    CPU tensors, loss and gradients in one C++ call (``_core.dense_step``, cpp/loss_dense.cpp):
    the scores, the row passes of :class:`DenseInfoNCE` and the two gradient matmuls in this
    library's kernels, on its own threads.

    The gradients are computed in the forward (the step is only taken when one is wanted) and
    handed to autograd in the backward, times dL/dloss.  The backward gives them up (the
    tensors are not kept), so that autograd stores them as ``.grad`` without a copy; a second
    backward through the same graph (``retain_graph=True``) recomputes them.  Values as
    :class:`DenseInfoNCE` (tests/test_loss_step.py)."""

    @staticmethod
    def forward(ctx, q, pos, hard, extra):
        loss, *ctx.grads = _step(q, pos, hard, extra)
        ctx.extra = extra
        ctx.save_for_backward(q, pos, hard)
        return loss

    @staticmethod
    def backward(ctx, g):
        grads = ctx.grads
        if grads is None:  # a second backward (retain_graph=True): the first one took them
            grads = _step(*ctx.saved_tensors, ctx.extra)[1:]
        ctx.grads = None
        gq, gpos, ghard = grads
        gs = float(g)  # dL/dloss: 1 for loss.backward()
        if gs != 1.0:
            gq, gpos = gq.mul_(gs), gpos.mul_(gs)
            ghard = None if ghard is None else ghard.mul_(gs)
        return gq, gpos, ghard, None


def _step(q: Tensor, pos: Tensor, hard: Optional[Tensor], extra):
    """(loss, gq, gpos, ghard or None) of the mean loss.  ``extra``: (scale, cosine,
    check_inputs, num_threads).  Raises what
    :class:`DenseInfoNCE` raises on a non-finite logit or input."""
    scale, cosine, check_inputs, num_threads = extra
    B = q.shape[0]
    mean, gq, gpos, ghard, bad = _core.dense_step(q.detach().numpy(), pos.detach().numpy(),
                                                  None if hard is None else hard.detach().numpy(),
                                                  scale, scale / B, cosine, num_threads)
    if bad != -1:
        if bad == -2:
            raise _overflow_error("the batch (the mean loss)", torch.float32)
        check_inputs()
        raise _overflow_error("q against pos / hard_negatives", torch.float32)
    return (torch.from_numpy(mean), torch.from_numpy(gq), torch.from_numpy(gpos),
            None if ghard is None else torch.from_numpy(ghard))

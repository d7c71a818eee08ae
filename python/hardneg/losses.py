"""Contrastive (InfoNCE) losses with in-batch, hard and cross-batch negatives.

Needs torch (``pip install hardneg[torch]``); ``import hardneg`` itself does not.

Every query ``q_i`` is scored against its positive ``pos_i``, the other queries'
positives, every hard negative in the batch (as sentence-transformers'
``MultipleNegativesRankingLoss`` does), every entry of a :class:`CrossBatchMemory`
and, with ``gather_across_devices=True``, the passages of the other ranks.

``backend="auto"`` picks the form by shape (docs/losses.md, "How it is computed").  On CPU,
batches with at most 2**25 in-batch logits run as the matmuls of a plain
``cross_entropy(q @ cand.T * scale)`` (torch's BLAS) with one C++ pass per row of logits between
them instead of a chain of elementwise torch operations (``hardneg._loss_dense``,
``_core.dense_rows``).  The memory term is the
expensive one (B x memory_size scores): a streaming log-sum-exp over chunks of the memory
(BLAS matmuls for the scores and for the gradient w.r.t. the queries; on CPU one C++ call per
chunk between them, ``_core.lse_chunk``), so neither the B x memory logits nor a concatenated
copy of the memory are ever built.  Above 2**25 in-batch logits, with a memory of fewer than
4 B(1+n) rows (or with ``backend="fused"``) the whole query->passage term runs in a fused C++ kernel on CPU
(``hardneg._core.infonce_forward``; the memory alone: ``memory_lse``) that builds no logits at all.  The in-batch part of the torch path (B x B(1+n))
is ordinary torch autograd code that follows sentence-transformers line by line.

Masking (candidates removed from a query's softmax, see docs/losses.md):

* ids: with ``pos_ids`` given, every candidate (other positive, hard negative,
  memory entry) whose id equals the query's positive id (or its ``query_ids`` entry:
  the query's own text as a passage), except the query's own positive column.  Ids < 0
  mean "unknown" and never match.
* ``false_negative_margin=m``: every candidate of the query->passage direction
  (in-batch passages and memory) whose raw similarity exceeds
  ``s(q_i, pos_i) - m`` (the positive-aware filter of NV-Retriever, on the fly).
* The positive itself is never masked, so a query whose negatives are all
  masked has loss ``-(z_pos - log exp(z_pos)) = 0`` and zero gradient.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from hardneg._arrays import vectors_for_kernel
from hardneg._threads import resolve_num_threads
from hardneg._validate import check_choice, check_float

__all__ = ["InfoNCELoss", "CrossBatchMemory", "contrastive_scores", "SentenceTransformersLoss", "CachedInfoNCELoss"]

_Q2D = ("query_to_doc",)
DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
_DIRECTION_WHAT = {"query_to_doc": "q against pos / hard_negatives", "query_to_query": "q against q",
                   "doc_to_query": "pos against q", "doc_to_doc": "pos against pos / hard_negatives"}
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# memory rows per chunk of backend="auto" on CPU: B x 2048 scores at a time, a few percent of the
# B x memory_size logits of a plain loss at memory sizes of 32k and more; big enough for BLAS
AUTO_MEMORY_CHUNK = 2048
# backend="auto" with a memory of M rows: the dense path while the in-batch candidates
# N = B(1+n) are at most M/4.  Its peak extra memory is about B (N + AUTO_MEMORY_CHUNK) floats
# (the in-batch logits, overwritten by their gradient weights, and a chunk's scores) against a
# plain loss's 3-4 B (N + M) (logits, scaled, softmax, gradient): about 7% at N = M/4 and M = 32k,
# less for smaller N or larger M.  Beyond it the fused kernel (no logits at all) keeps memory low.
AUTO_INBATCH_FRACTION = 4
# Threads of the C++ row passes between the torch matmuls of the dense path (_core.dense_rows,
# _core.lse_chunk): one.  torch's OpenMP workers keep spinning for a while after each matmul, so
# threads started next to them share the cores with spinning threads and run slower than the
# calling thread alone (measured: 2.7 ms per step at B=512, d=384 with one, 3.7 ms with two);
# the passes are a few percent of the matmuls' time.
ROW_THREADS = 1


# ------------------------------------------------------------- numerics helpers
def _l2_normalize(x: Tensor) -> Tensor:
    """Rows of ``x`` divided by their L2 norm, scale invariant over the dtype's whole range.

    The norm is taken of ``x / max|x|`` (the scaling of BLAS nrm2), so neither
    ``|x|**2`` overflowing (entries ~1e19 in float32) nor underflowing (~1e-20)
    changes the result; a zero row stays zero.  The max is detached: the gradient is
    exactly that of ``x / |x|`` (zero for a zero row, as in the C++ kernel).
    (sentence-transformers' ``cos_sim`` clamps norms
    below 1e-12 instead, so it disagrees for such tiny rows.)
    """
    m = x.detach().abs().amax(dim=-1, keepdim=True)
    nz = m > 0
    y = x / torch.where(nz, m, torch.ones_like(m))
    n = torch.where(nz, y, torch.ones_like(y)).norm(dim=-1, keepdim=True)  # no 0/0 in the backward
    return torch.where(nz, y / n, torch.zeros_like(y))


def _inverse_norms(x: Tensor, norms: Optional[Tensor] = None) -> Optional[Tensor]:
    """1 / |x_j| per row of detached ``x`` when every norm is in [1e-15, 1e15] (then the plain
    norm is exact to rounding), on CPU (the range test would sync a device); else None.
    ``norms``: those rows' norms, already known (:meth:`CrossBatchMemory.row_norms`), in place
    of a pass over ``x``."""
    if x.device.type != "cpu":
        return None
    nrm = torch.linalg.vector_norm(x, dim=1) if norms is None else norms
    if not bool(((nrm >= 1e-15) & (nrm <= 1e15)).all()):
        return None
    return nrm.reciprocal()  # (not in place: norms may be the memory's kept ones)


def _overflow_error(what: str, dtype: torch.dtype) -> ValueError:
    return ValueError(f"the logits of {what} overflow {str(dtype).replace('torch.', '')} "
                      f"(|similarity * scale| > {torch.finfo(dtype).max:.3g}): scale the embeddings "
                      "down or use similarity='cosine'")


def _has_nonfinite(x: Tensor) -> bool:
    """Does ``x`` hold a NaN or +-inf (a host sync).  A finite sum proves it does not, at a
    fraction of ``isfinite().all()``'s cost on CPU; only a non-finite sum (which may be an
    overflow of finite values) falls back to the exact test."""
    return not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all())


def _nonfinite(x: Tensor) -> Tensor:
    """0-dim bool tensor: does ``x`` hold a NaN or +-inf.  On CPU :func:`_has_nonfinite`;
    elsewhere ``isfinite`` (no device sync)."""
    if x.device.type == "cpu":
        return torch.tensor(_has_nonfinite(x))
    return ~torch.isfinite(x).all()


def _raise_overflow(flags: Sequence[Tuple[str, Tensor]], dtype: torch.dtype) -> None:
    """One host sync for all the overflow flags (bool tensors) of a loss evaluation."""
    if not flags:
        return
    bad = torch.stack([f for _, f in flags]).cpu().tolist()
    for (what, _), b in zip(flags, bad):
        if b:
            raise _overflow_error(what, dtype)


# --------------------------------------------------------------------------- memory
class CrossBatchMemory(nn.Module):
    """FIFO queue of detached passage embeddings and their ids (MoCo / XBM style).

    Parameters
    ----------
    size : int
        Capacity (rows).  The queue never grows beyond it: the oldest rows are
        overwritten first.
    dim : int
        Embedding dimension.
    dtype : torch.dtype, default torch.float32
        Storage dtype (float32, float16, bfloat16 or float64); :meth:`enqueue` and the
        loss require embeddings of this dtype.
    device : torch.device or str, default "cpu"

    Notes
    -----
    State lives in buffers (``embeddings`` (size, dim), ``ids`` (size,) int64, ``ptr``,
    ``count``), so ``state_dict()`` / ``load_state_dict()`` save and restore it.  The
    valid rows are always ``embeddings[:len(self)]`` (filled from row 0, then wrapped),
    which is what the loss reads, without a copy.  On CPU the rows' L2 norms are kept too
    (:meth:`row_norms`, computed as rows are enqueued), so a cosine loss does not re-read
    the whole memory for them at every step; they are not part of the state (recomputed
    when the embeddings change any other way, e.g. ``load_state_dict``).
    """

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32,
                 device: Union[str, torch.device] = "cpu") -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if dtype not in _FLOATS:
            raise TypeError(f"dtype must be one of {_FLOATS}, got {dtype!r}")
        self.register_buffer("embeddings", torch.zeros(int(size), int(dim), dtype=dtype, device=device))
        self.register_buffer("ids", torch.full((int(size),), -1, dtype=torch.int64, device=device))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64, device=device))
        self._norms: Optional[Tensor] = None  # (size,) row norms, valid while _norms_key matches
        self._norms_key: Optional[tuple] = None

    @property
    def size(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.dtype

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, ids: Optional[Any] = None) -> None:
        """Append rows (detached); the oldest rows are dropped once full.

        Parameters
        ----------
        embeddings : Tensor (n, dim), the memory's dtype
        ids : int64 (n,) tensor / array / list, optional
            Passage ids used for false-negative masking; -1 (unknown) when omitted.
        """
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must have shape (n, {self.dim}), got {tuple(embeddings.shape)}")
        if embeddings.dtype != self.dtype:
            raise TypeError(f"embeddings dtype {embeddings.dtype} does not match the memory dtype {self.dtype}")
        n = embeddings.shape[0]
        if ids is None:
            ids_t = torch.full((n,), -1, dtype=torch.int64, device=self.ids.device)
        else:
            ids_t = _as_ids(ids, "ids", self.ids.device).reshape(-1)
            if ids_t.shape[0] != n:
                raise ValueError(f"ids must have {n} entries (one per embedding), got {ids_t.shape[0]}")
        if n == 0:
            return
        emb = embeddings.detach().to(self.embeddings.device)
        if not bool(torch.isfinite(emb).all()):
            raise ValueError("embeddings contain NaN or Inf")
        if n >= self.size:  # only the newest `size` rows survive
            emb, ids_t, n = emb[-self.size:], ids_t[-self.size:], self.size
        pos = (int(self.ptr) + torch.arange(n, device=self.embeddings.device)) % self.size
        dt = self._norms_key[-1] if self._norms_key is not None else None
        kept = dt is not None and self._norms_key == self._key(dt)
        self.embeddings[pos] = emb
        if kept:  # the kept norms stay valid: add the new rows' (computed as a full pass would)
            self._norms[pos] = torch.linalg.vector_norm(self.embeddings[pos].to(dt), dim=1)
            self._norms_key = self._key(dt)
        self.ids[pos] = ids_t
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))

    def get(self) -> Tuple[Tensor, Tensor]:
        """Views ``(embeddings (len, dim), ids (len,))`` of the valid rows (no copy)."""
        c = int(self.count)
        return self.embeddings[:c], self.ids[:c]

    def _key(self, dt: torch.dtype) -> tuple:
        e = self.embeddings
        return (e.data_ptr(), e.device, e.dtype, e._version, dt)

    @torch.no_grad()
    def row_norms(self, dtype: torch.dtype = torch.float32) -> Optional[Tensor]:
        """L2 norms ``(len,)`` of the valid rows, computed in ``dtype`` (float32 or float64), or
        None off the CPU.  Kept between calls: :meth:`enqueue` adds the new rows' norms, so a
        cosine loss reads the memory once per step (for its scores) instead of twice; any
        other change to ``embeddings`` (``load_state_dict``, an in-place edit, ``.to()``)
        makes the next call recompute them all.  Equal, bit for bit, to
        ``torch.linalg.vector_norm(self.get()[0].to(dtype), dim=1)``."""
        if self.embeddings.device.type != "cpu":
            return None
        key = self._key(dtype)
        if self._norms_key != key:
            e = self.embeddings
            self._norms = torch.empty(e.shape[0], dtype=dtype)
            for c0 in range(0, e.shape[0], 65536):  # bounded temporaries for a float16 memory
                self._norms[c0:c0 + 65536] = torch.linalg.vector_norm(e[c0:c0 + 65536].to(dtype), dim=1)
            self._norms_key = key
        return self._norms[:len(self)]

    @torch.no_grad()
    def reset(self) -> None:
        self.ptr.zero_()
        self.count.zero_()
        self.ids.fill_(-1)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, dtype={self.dtype}, filled={len(self)}"


# ------------------------------------------------------------- memory log-sum-exp
def _fused_memory_lse(qn: Tensor, mem: Tensor, mem_ids: Optional[Tensor], pos_ids: Optional[Tensor],
                      thresholds: Optional[Tensor], logit_scale: float, grad_scale: float, cosine: bool,
                      want_grad: bool, num_threads: Optional[int],
                      query_ids: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """C++ kernel on CPU tensors; everything is passed zero-copy as numpy views."""
    from hardneg import _core

    q32 = qn.detach().to(torch.float32).contiguous()
    m_np, bf16 = vectors_for_kernel(mem, "memory")
    lse, grad = _core.memory_lse(
        q32.numpy(), m_np, bf16,
        None if mem_ids is None else mem_ids.contiguous().numpy(),
        None if pos_ids is None else pos_ids.contiguous().numpy(),
        None if thresholds is None else thresholds.detach().to(torch.float32).contiguous().numpy(),
        float(logit_scale), float(grad_scale), bool(cosine), bool(want_grad),
        resolve_num_threads(num_threads), None if query_ids is None else query_ids.contiguous().numpy())
    return torch.from_numpy(lse), (torch.from_numpy(grad) if grad is not None else None)


def _torch_memory_lse(qn: Tensor, mem: Tensor, mem_ids: Optional[Tensor], pos_ids: Optional[Tensor],
                      thresholds: Optional[Tensor], logit_scale: float, grad_scale: float, cosine: bool,
                      want_grad: bool, chunk: Optional[int],
                      query_ids: Optional[Tensor] = None,
                      norms: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """Same algorithm as the C++ kernel, chunked over the memory: per chunk a BLAS matmul for the
    scores and one for the gradient accumulator; between them, on CPU, one C++ call per chunk
    (``_core.lse_chunk``: masks, logits, running max and sum, weights, in place), on other
    devices the same steps as torch operations.  ``norms``: the memory rows' norms in q's dtype
    (cosine; :meth:`CrossBatchMemory.row_norms`), else computed per chunk."""
    q = qn.detach()
    B, d = q.shape
    dt = q.dtype
    if chunk is None:
        chunk = max(1, (1 << 22) // max(B, 1))  # <= 4 M scores per chunk
    neg_inf = torch.tensor(float("-inf"), dtype=dt, device=q.device)
    run_max = torch.full((B,), float("-inf"), dtype=dt, device=q.device)
    run_sum = torch.zeros(B, dtype=dt, device=q.device)
    acc = torch.zeros(B, d, dtype=dt, device=q.device) if want_grad else None
    id_rows = pos_ids is not None and mem_ids is not None
    overflow = torch.zeros((), dtype=torch.bool, device=q.device)
    cpu = q.device.type == "cpu" and dt in (torch.float32, torch.float64)
    if cpu:
        from hardneg import _core

        nt = ROW_THREADS
        thr_np = None if thresholds is None else thresholds.detach().to(dt).contiguous().numpy()
        ids_np = (_np_ids(pos_ids), _np_ids(query_ids)) if id_rows else (None, None)
        r_cpu = torch.empty(B, dtype=dt)
        max_np, sum_np, r_np = run_max.numpy(), run_sum.numpy(), r_cpu.numpy()
        bad_cpu = False
    # the kept norms: one range check and reciprocal for the whole memory (a few small torch ops
    # per chunk cost ~0.1 ms each at 2,048 rows); a memory with a norm out of range goes by chunk
    inv_all = _inverse_norms(mem, norms) if cosine and norms is not None else None
    for c0 in range(0, mem.shape[0], chunk):
        x = mem[c0:c0 + chunk].to(dt)
        inv = None
        if cosine:
            # q . (x_j / |x_j|) as (q . x_j) / |x_j|: the B x chunk scores are scaled, not the
            # chunk x d rows (one read of the chunk for its norms instead of a normalised copy)
            if inv_all is not None:
                inv = inv_all[c0:c0 + chunk]
            else:
                inv = _inverse_norms(x, None if norms is None else norms[c0:c0 + chunk])
            if inv is None:
                x = _l2_normalize(x)
        sim = q @ x.T
        if cpu:  # sim becomes the weights exp(z - max) (/ |x_j|); run_max, run_sum, r updated in place
            col_ids = _np_ids(mem_ids[c0:c0 + chunk]) if id_rows else None
            bad_cpu |= _core.lse_chunk(sim.numpy(), None if inv is None else inv.numpy(), thr_np, col_ids,
                                       ids_np[0], ids_np[1], logit_scale, max_np, sum_np, r_np, nt)
            if want_grad:
                acc.mul_(r_cpu[:, None]).addmm_(sim, x)
            continue
        if inv is not None:
            sim.mul_(inv)
        mask = None
        if thresholds is not None:
            mask = sim > thresholds.to(dt)[:, None]
        if id_rows:
            m2 = _id_match(mem_ids[c0:c0 + chunk], pos_ids, query_ids)
            mask = m2 if mask is None else mask | m2
        z = sim.mul_(logit_scale)  # the masks are built: scale in place
        overflow |= _nonfinite(z)
        if mask is not None:
            z.masked_fill_(mask, float("-inf"))
        new_max = torch.maximum(run_max, z.amax(dim=1))
        safe = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        r = torch.exp(run_max - safe)
        e = z.sub_(safe[:, None]).exp_()
        run_sum = run_sum * r + e.sum(dim=1)
        if want_grad:  # sum_j e_ij x_j / |x_j|
            acc = acc * r[:, None] + (e.mul_(inv) if inv is not None else e) @ x
        run_max = new_max
    live = run_sum > 0
    lse = torch.where(live, run_max + torch.log(torch.where(live, run_sum, torch.ones_like(run_sum))), neg_inf)
    grad = None
    if want_grad:
        denom = torch.where(live, run_sum, torch.ones_like(run_sum))
        grad = torch.where(live[:, None], acc * (grad_scale / denom)[:, None], torch.zeros_like(acc))
    if cpu:
        overflow = torch.tensor(bad_cpu)
    _raise_overflow([("q against the memory", overflow)], dt)
    return lse, grad


class _MemoryLSE(torch.autograd.Function):
    """lse_i = logsumexp_j z_ij over the memory; dlse_i/dq_i is computed in the forward
    pass (the memory needs no gradient), so backward only scales it."""

    @staticmethod
    def forward(ctx, qn, mem, mem_ids, pos_ids, thresholds, logit_scale, grad_scale, cosine, backend,
                num_threads, chunk, query_ids=None, norms=None):
        want = bool(ctx.needs_input_grad[0])
        if backend == "fused":
            lse, grad = _fused_memory_lse(qn, mem, mem_ids, pos_ids, thresholds, logit_scale, grad_scale,
                                          cosine, want, num_threads, query_ids)
            lse = lse.to(qn.dtype)
            grad = grad.to(qn.dtype) if grad is not None else None
        else:
            lse, grad = _torch_memory_lse(qn, mem, mem_ids, pos_ids, thresholds, logit_scale, grad_scale,
                                          cosine, want, chunk, query_ids, norms)
        if want:
            ctx.save_for_backward(grad)
        return lse

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return (g[:, None] * grad,) + (None,) * 12


def _np_ids(t: Optional[Tensor]):
    return None if t is None else t.detach().to(torch.int64).contiguous().cpu().numpy()


class _FusedInfoNCE(torch.autograd.Function):
    """Per-row query->passage InfoNCE losses from the C++ kernel (CPU).

    forward: one streaming pass over [positives | hard negatives | memory]; dloss_i/dq_i is
    accumulated in the same pass.  backward: recomputes the in-batch score tiles (never the
    memory's) to get the passages' gradients."""

    @staticmethod
    def _args(q, pos, hard, mem_emb, pos_ids, neg_ids, mem_ids, opts):
        qa, qbf = vectors_for_kernel(q.detach(), "q")
        batch = []
        pa, pbf = vectors_for_kernel(pos.detach(), "pos")
        batch.append((pa, pbf, pos_ids, 0, 1))
        n = 0 if hard is None else hard.shape[1]
        for k in range(n):
            ha, hbf = vectors_for_kernel(hard.detach()[:, k], "hard_negatives")
            batch.append((ha, hbf, neg_ids, k, n) if neg_ids is not None else (ha, hbf, None, 0, 1))
        memory = None
        if mem_emb is not None:
            ma, mbf = vectors_for_kernel(mem_emb, "memory")
            memory = (ma, mbf, mem_ids if pos_ids is not None else None, 0, 1)
        return (qa, qbf, batch, memory, pos_ids, opts["margin"], opts["scale"], opts["alpha_own_neg"],
                opts["alpha_other"], opts["alpha_mem"], opts["cosine"], opts["in_batch"])

    @staticmethod
    def forward(ctx, q, pos, hard, mem_emb, pos_ids, neg_ids, mem_ids, opts):
        from hardneg import _core

        if hard is not None:
            hard = hard.contiguous()
        args = _FusedInfoNCE._args(q, pos, hard, mem_emb, pos_ids, neg_ids, mem_ids, opts)
        want = any(ctx.needs_input_grad[:3])
        nt = resolve_num_threads(opts["num_threads"])
        loss, state = _core.infonce_forward(*args, want, nt, query_ids=opts.get("query_ids"))
        if want:
            # the memory is not needed by the backward (it has no gradient), and it may be
            # enqueued into (modified in place) before backward runs
            ctx.save_for_backward(q, pos, hard)
            ctx.extra = (pos_ids, neg_ids, opts, state, nt)
        return torch.from_numpy(loss)

    @staticmethod
    def backward(ctx, g):
        from hardneg import _core

        q, pos, hard = ctx.saved_tensors
        pos_ids, neg_ids, opts, state, nt = ctx.extra
        args = _FusedInfoNCE._args(q, pos, hard, None, pos_ids, neg_ids, None, opts)
        n = 0 if hard is None else hard.shape[1]
        want = [bool(ctx.needs_input_grad[1])] + [bool(ctx.needs_input_grad[2])] * n
        gq, outs = _core.infonce_backward(*args, state, g.detach().to(torch.float32).contiguous().numpy(), want, nt,
                                          query_ids=opts.get("query_ids"))
        grad_q = torch.from_numpy(gq).to(q.dtype) if ctx.needs_input_grad[0] else None
        grad_pos = torch.from_numpy(outs[0]).to(pos.dtype) if outs[0] is not None else None
        grad_hard = None
        if n and ctx.needs_input_grad[2]:
            grad_hard = torch.stack([torch.from_numpy(o) for o in outs[1:]], dim=1).to(hard.dtype)
        return grad_q, grad_pos, grad_hard, None, None, None, None, None


# ---------------------------------------------------------------------- helpers
def _id_match(cand_ids: Tensor, pos_ids: Tensor, query_ids: Optional[Tensor]) -> Tensor:
    """(B, C) bool: candidate j carries query i's known (>= 0) positive id or query id."""
    m = (cand_ids[None, :] == pos_ids[:, None]) & (pos_ids[:, None] >= 0)
    if query_ids is not None:
        m |= (cand_ids[None, :] == query_ids[:, None]) & (query_ids[:, None] >= 0)
    return m


def _as_ids(x: Any, name: str, device) -> Tensor:
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{name} must be integer ids, got {x.dtype}")
        return x.detach().to(device=device, dtype=torch.int64)
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        if a.size == 0:
            a = a.astype(np.int64)
        else:
            raise TypeError(f"{name} must be integer ids, got {a.dtype}")
    return torch.as_tensor(a.astype(np.int64), device=device)


def _check_emb(x: Any, name: str) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    return x


def _check_finite(x: Tensor, name: str) -> None:
    if x.numel() and _has_nonfinite(x.detach()):
        raise ValueError(f"{name} contains NaN or Inf")


_F32_MAX = float(np.finfo(np.float32).max)


def _number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {v!r}")
    return float(v)


def _resolve_scale(temperature: Optional[float], scale: Optional[float]) -> float:
    if scale is not None and temperature is not None:
        raise ValueError("give either temperature or scale, not both")
    if scale is not None:
        s = float(scale)
        if not (s > 0) or not math.isfinite(s):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        if s > _F32_MAX:  # the logits are float32: a larger scale makes every loss NaN
            raise ValueError(f"scale must be at most {_F32_MAX:.4g} (float32), got {scale!r}")
        return s
    t = 0.05 if temperature is None else float(temperature)
    if not (t > 0) or not math.isfinite(t):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if 1.0 / t > _F32_MAX:
        raise ValueError(f"temperature is too small: 1/temperature overflows float32, got {temperature!r}")
    return 1.0 / t


class _Batch:
    """Validated inputs: q, pos (B, d), hard (B, n, d) or None, ids (B,), (B, n)."""

    def __init__(self, q, pos, hard_negatives, pos_ids, neg_ids, query_ids=None, check_finite=True):
        q = _check_emb(q, "q")
        pos = _check_emb(pos, "pos")
        if q.dim() != 2:
            raise ValueError(f"q must be 2-D (B, d), got shape {tuple(q.shape)}")
        if pos.dim() != 2:
            raise ValueError(f"pos must be 2-D (B, d), got shape {tuple(pos.shape)}")
        B, d = q.shape
        if B == 0 or d == 0:
            raise ValueError(f"q must have at least one row and one column, got shape {tuple(q.shape)}")
        if pos.shape != q.shape:
            raise ValueError(f"pos has shape {tuple(pos.shape)} but q has {tuple(q.shape)} (mismatched B or d)")
        if pos.device != q.device:
            raise ValueError(f"pos is on {pos.device} but q is on {q.device}")
        hard = None
        n = 0
        if hard_negatives is not None:
            hard = _check_emb(hard_negatives, "hard_negatives")
            if hard.device != q.device:
                raise ValueError(f"hard_negatives is on {hard.device} but q is on {q.device}")
            if hard.dim() == 2:
                if hard.shape[1] != d or hard.shape[0] % B:
                    raise ValueError(f"hard_negatives of shape {tuple(hard.shape)} must be (B*n, {d}) with B={B}")
                hard = hard.reshape(B, hard.shape[0] // B, d)
            elif hard.dim() != 3 or hard.shape[0] != B or hard.shape[2] != d:
                raise ValueError(f"hard_negatives must be (B, n, d) = ({B}, n, {d}) or (B*n, d), "
                                 f"got {tuple(hard.shape)} (mismatched B or d)")
            n = hard.shape[1]
            if n == 0:
                hard = None
        self.pos_ids = self.neg_ids = None
        if pos_ids is not None:
            pid = _as_ids(pos_ids, "pos_ids", q.device).reshape(-1)
            if pid.shape[0] != B:
                raise ValueError(f"pos_ids must have B={B} entries, got {pid.shape[0]}")
            self.pos_ids = pid
        if neg_ids is not None:
            if pos_ids is None:
                raise ValueError("neg_ids needs pos_ids (a negative is masked when its id equals the positive's)")
            nid = _as_ids(neg_ids, "neg_ids", q.device)
            if nid.numel() != B * n:
                raise ValueError(f"neg_ids must have B*n={B * n} entries (shape (B, n)), got shape {tuple(nid.shape)}")
            self.neg_ids = nid.reshape(B, n)
        self.query_ids = None
        if query_ids is not None:
            if pos_ids is None:
                raise ValueError("query_ids needs pos_ids (candidates are matched by their ids)")
            qid = _as_ids(query_ids, "query_ids", q.device).reshape(-1)
            if qid.shape[0] != B:
                raise ValueError(f"query_ids must have B={B} entries, got {qid.shape[0]}")
            self.query_ids = qid
        self.q, self.pos, self.hard, self.B, self.d, self.n = q, pos, hard, B, d, n
        if check_finite:
            self.check_finite()

    def check_finite(self) -> None:
        """ValueError naming the first input with a NaN or Inf (a pass over each input)."""
        for x, name in ((self.q, "q"), (self.pos, "pos"), (self.hard, "hard_negatives")):
            if x is not None:
                _check_finite(x, name)


def _guide_batch(guide: Optional[Sequence[Tensor]], b: "_Batch") -> Optional[list]:
    """The guide embeddings ``(g_q, g_pos[, g_hard])`` checked against the batch, as a list
    ``[g_q, g_pos, g_hard[:, 0], ..., g_hard[:, n-1]]`` of L2-normalized, detached (B, dg)
    tensors in float64 (float32 on MPS, which has no float64), or None without a guide."""
    if guide is None:
        return None
    if isinstance(guide, Tensor) or not isinstance(guide, (tuple, list)) or len(guide) not in (2, 3):
        raise TypeError("guide must be a tuple (g_q, g_pos) or (g_q, g_pos, g_hard) of tensors, "
                        f"got {type(guide).__name__}")
    g_hard = guide[2] if len(guide) == 3 else None
    if (g_hard is None) != (b.n == 0):
        raise ValueError(f"guide: g_hard must be given exactly when there are hard negatives (n={b.n})")
    names = ("guide[0] (g_q)", "guide[1] (g_pos)", "guide[2] (g_hard)")
    gq, gp = (_check_emb(x, nm) for x, nm in zip(guide[:2], names))
    for x, nm in ((gq, names[0]), (gp, names[1])):
        if x.dim() != 2 or x.shape[0] != b.B or x.shape[1] == 0:
            raise ValueError(f"{nm} must have shape (B, dg) with B={b.B}, dg >= 1, got {tuple(x.shape)}")
    dg = gq.shape[1]
    if gp.shape[1] != dg:
        raise ValueError(f"{names[1]} has dim {gp.shape[1]} but {names[0]} has {dg}")
    cols = [gq, gp]
    if g_hard is not None:
        gh = _check_emb(g_hard, names[2])
        if gh.dim() == 2 and gh.shape[0] == b.B * b.n:
            gh = gh.reshape(b.B, b.n, -1)
        if gh.dim() != 3 or tuple(gh.shape) != (b.B, b.n, dg):
            raise ValueError(f"{names[2]} must have shape (B, n, dg) = ({b.B}, {b.n}, {dg}) or (B*n, dg), "
                             f"got {tuple(g_hard.shape)}")
        cols += [gh[:, k] for k in range(b.n)]
    out = []
    for x, nm in zip(cols, names[:2] + (names[2],) * b.n):
        if x.device != b.q.device:
            raise ValueError(f"{nm} is on {x.device} but q is on {b.q.device}")
        x = x.detach()
        _check_finite(x, nm)
        dt = torch.float32 if x.device.type == "mps" else torch.float64
        out.append(_l2_normalize(x.to(dt)))
    return out


def _gather(t: Tensor, with_grad: bool) -> Tensor:
    import torch.distributed as dist

    if with_grad:
        # the differentiable all_gather sentence-transformers uses: the backward sums every
        # rank's gradient for a tensor back onto the rank that owns it
        import warnings

        from torch.distributed.nn.functional import all_gather as all_gather_grad

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather_grad(t), dim=0)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


_DENSE_MODULE = None


def _dense_module():
    """hardneg._loss_dense (it imports this module: loaded on first use, then kept; its
    attributes are read at each call, so a test's monkeypatch of them holds)."""
    global _DENSE_MODULE
    if _DENSE_MODULE is None:
        import hardneg._loss_dense as module

        _DENSE_MODULE = module
    return _DENSE_MODULE


def _dist_info() -> Tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _log1p_sum_exp(x: Tensor) -> Tensor:
    """log(1 + sum_j exp(x_ij)) per row, stable for any x (entries may be -inf)."""
    if x.shape[1] == 0:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    m = x.detach().max(dim=1).values.clamp(min=0.0)
    s = torch.exp(x - m[:, None]).sum(dim=1)
    return m + torch.log1p(torch.expm1(-m) + s)


# -------------------------------------------------------------------------- loss
class InfoNCELoss(nn.Module):
    """InfoNCE / MultipleNegativesRankingLoss with hard negatives, a cross-batch memory,
    false-negative masking and cross-device gathering.

    Parameters
    ----------
    temperature : float, default 0.05
        Logits are ``similarity / temperature``.  Give this or ``scale`` (= 1/temperature).
    scale : float, optional
        sentence-transformers' name for 1/temperature.
    in_batch_negatives : bool, default True
        Score each query against the other queries' positives and hard negatives too.
        With False only its own positive, its own hard negatives and the memory remain
        (only ``directions=("query_to_doc",)`` is allowed then).
    symmetric : bool, default False
        Shorthand for ``directions=("query_to_doc", "doc_to_query")`` with
        ``partition_mode="per_direction"``.
    memory : CrossBatchMemory, optional
        Extra negatives for the query->passage direction (detached, no gradient).
        The loss does not enqueue: call ``memory.enqueue(pos.detach(), pos_ids)`` after
        the step.
    gather_across_devices : bool, default False
        All-gather queries/passages (and ids) over ``torch.distributed`` with gradients
        flowing back to each rank's own tensors (as sentence-transformers does).  Every rank
        must call the loss with the same B, n and the same optional arguments (ids given or
        not), as for any collective.  The memory stays local to each rank.
    false_negative_margin : float, optional
        Mask query->passage candidates whose raw similarity exceeds s(q, pos) - margin.
    similarity : {"cosine", "dot"}
    directions, partition_mode, hardness_mode, hardness_strength
        As in sentence-transformers' MultipleNegativesRankingLoss.  Memory entries count
        as in-batch negatives of the query_to_doc direction (they get the hardness penalty
        for "in_batch_negatives" and "all_negatives").
    backend : {"auto", "fused", "torch"}
        "auto": by shape.  With at most 2**25 in-batch query->passage logits (B * B(1+n)),
        BLAS matmuls with one C++ pass per row between them, with a memory only while B(1+n)
        is at most 1/4 of its rows, the memory then in chunks of 2,048 rows (faster than the
        kernel).  Otherwise the fused C++ kernel for CPU
        float32/16/bf16 (no logits built: the least memory) and torch for the rest.
        "fused": always the C++ kernel on CPU; "torch": the chunked torch algorithm.
    num_threads : int, optional
        Threads of the fused kernel (default: hardneg's default).
    memory_chunk : int, optional
        Memory rows per chunk of the torch path (default: 4 M scores per chunk).
    guide_margin : float, default 0.0
    guide_margin_strategy : {"absolute", "relative"}, default "absolute"
        The rule of a ``guide`` given to :meth:`forward` (GISTEmbedLoss's ``margin`` and
        ``margin_strategy``): a candidate is masked when its guide similarity exceeds
        ``g_pos - guide_margin`` ("absolute") or ``g_pos - |g_pos| * guide_margin``
        ("relative"), with ``g_pos`` the guide's cosine of the query and its positive.

    forward(q, pos, hard_negatives=None, pos_ids=None, neg_ids=None, query_ids=None, guide=None) -> scalar Tensor
        q, pos: (B, d); hard_negatives: (B, n, d) or (B*n, d) (query i's negatives are
        rows i*n..i*n+n-1); pos_ids: (B,) int; neg_ids: (B, n) or (B*n,) int;
        query_ids: (B,) int in the same id space as the passages (needs pos_ids): a
        candidate carrying query i's id (its own text as a passage) is masked too.
        Logits the compute dtype cannot represent (huge embeddings with
        ``similarity="dot"``) raise ValueError naming the inputs.
        guide: ``(g_q, g_pos)`` or ``(g_q, g_pos, g_hard)``, a guide model's embeddings of
        the same rows (``(B, dg)``, ``(B, dg)``, ``(B, n, dg)`` or ``(B*n, dg)``; any float
        dtype and dimension dg, detached; compared by cosine).  Every in-batch candidate of
        every direction (other positives, hard negatives, other queries) whose guide
        similarity to the row's anchor exceeds the threshold above is masked like a false
        negative (GISTEmbedLoss's rule); the positive is never masked.  Memory entries have
        no guide embeddings and are not filtered.  A guided batch runs on the torch path (not
        the C++ kernel of the query->passage term).
    """

    def __init__(self, temperature: Optional[float] = None, *, scale: Optional[float] = None,
                 in_batch_negatives: bool = True, symmetric: bool = False,
                 memory: Optional[CrossBatchMemory] = None, gather_across_devices: bool = False,
                 false_negative_margin: Optional[float] = None, similarity: str = "cosine",
                 directions: Optional[Sequence[str]] = None, partition_mode: Optional[str] = None,
                 hardness_mode: Optional[str] = None, hardness_strength: float = 0.0,
                 backend: str = "auto", num_threads: Optional[int] = None,
                 memory_chunk: Optional[int] = None, guide_margin: float = 0.0,
                 guide_margin_strategy: str = "absolute") -> None:
        super().__init__()
        self.scale = _resolve_scale(temperature, scale)
        self.guide_margin = check_float(guide_margin, "guide_margin", optional=False)
        self.guide_margin_strategy = check_choice(guide_margin_strategy, "guide_margin_strategy",
                                                  ("absolute", "relative"))
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        self.similarity = similarity
        if directions is None:
            directions = ("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",)
        elif isinstance(directions, str):
            directions = (directions,)
        directions = tuple(directions)
        if symmetric and "doc_to_query" not in directions:
            directions = directions + ("doc_to_query",)
        if not directions:
            raise ValueError("directions: at least one direction must be specified")
        bad = set(directions) - set(DIRECTIONS)
        if bad:
            raise ValueError(f"directions: invalid {sorted(bad)}; valid: {list(DIRECTIONS)}")
        if "query_to_doc" not in directions:
            raise ValueError("directions: 'query_to_doc' is required (it contains the positive pair)")
        if len(set(directions)) != len(directions):
            raise ValueError(f"directions: duplicates in {directions}")
        self.directions = directions
        if partition_mode is None:
            partition_mode = "per_direction" if symmetric else "joint"
        if partition_mode not in ("joint", "per_direction"):
            raise ValueError(f"partition_mode must be 'joint' or 'per_direction', got {partition_mode!r}")
        if partition_mode == "per_direction" and set(directions) & {"query_to_query", "doc_to_doc"}:
            raise ValueError("partition_mode='per_direction' cannot be used with 'query_to_query' or "
                             "'doc_to_doc' (their candidate pools do not contain the positive)")
        self.partition_mode = partition_mode
        self.symmetric = bool(symmetric)
        if hardness_mode not in HARDNESS_MODES:
            raise ValueError(f"hardness_mode must be one of {HARDNESS_MODES}, got {hardness_mode!r}")
        hs = _number(hardness_strength, "hardness_strength")
        if not (hs >= 0) or not math.isfinite(hs):
            raise ValueError(f"hardness_strength must be a non-negative number, got {hardness_strength!r}")
        self.hardness_mode, self.hardness_strength = hardness_mode, hs
        self.in_batch_negatives = bool(in_batch_negatives)
        if not self.in_batch_negatives and directions != ("query_to_doc",):
            raise ValueError("in_batch_negatives=False only works with directions=('query_to_doc',)")
        if memory is not None and not isinstance(memory, CrossBatchMemory):
            raise TypeError(f"memory must be a CrossBatchMemory, got {type(memory).__name__}")
        self.memory = memory
        self.gather_across_devices = bool(gather_across_devices)
        if false_negative_margin is not None:
            fm = _number(false_negative_margin, "false_negative_margin")
            if not math.isfinite(fm):
                raise ValueError(f"false_negative_margin must be finite, got {false_negative_margin!r}")
            false_negative_margin = fm
        self.false_negative_margin = false_negative_margin
        if backend not in ("auto", "fused", "torch"):
            raise ValueError(f"backend must be 'auto', 'fused' or 'torch', got {backend!r}")
        self.backend = backend
        if num_threads is not None:
            resolve_num_threads(num_threads)  # refuse a bad value now, whichever path runs later
        self.num_threads = num_threads
        if memory_chunk is not None and (isinstance(memory_chunk, bool) or not isinstance(memory_chunk, (int, np.integer))
                                         or memory_chunk <= 0):
            raise ValueError(f"memory_chunk must be a positive integer, got {memory_chunk!r}")
        self.memory_chunk = memory_chunk
        # query_to_doc on CPU runs entirely in C++; False keeps the torch in-batch part with the
        # C++ memory kernel (the path other directions / gathering take; for tests)
        self._full_kernel = True

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature:g}, similarity={self.similarity!r}, directions={self.directions}, "
                f"partition_mode={self.partition_mode!r}, in_batch_negatives={self.in_batch_negatives}, "
                f"hardness_mode={self.hardness_mode!r}, hardness_strength={self.hardness_strength}, "
                f"false_negative_margin={self.false_negative_margin}, "
                f"gather_across_devices={self.gather_across_devices}")

    def get_config_dict(self) -> Dict[str, Any]:
        return {"scale": self.scale, "similarity": self.similarity, "directions": self.directions,
                "partition_mode": self.partition_mode, "in_batch_negatives": self.in_batch_negatives,
                "hardness_mode": self.hardness_mode, "hardness_strength": self.hardness_strength,
                "false_negative_margin": self.false_negative_margin,
                "gather_across_devices": self.gather_across_devices,
                "guide_margin": self.guide_margin, "guide_margin_strategy": self.guide_margin_strategy,
                "memory_size": None if self.memory is None else self.memory.size}

    def _alphas(self) -> Tuple[float, float, float]:
        """Hardness penalty factors (own hard negatives, other queries' passages, memory)."""
        a = self.hardness_strength if self.hardness_mode is not None else 0.0
        return {None: (0.0, 0.0, 0.0), "hard_negatives": (a, 0.0, 0.0),
                "in_batch_negatives": (0.0, a, a), "all_negatives": (a, a, a)}[self.hardness_mode]

    def _fused(self, b: "_Batch", mem: Optional[CrossBatchMemory]) -> Tensor:
        """query_to_doc on CPU: the whole term in the C++ kernel (no B x N logits in memory)."""
        own, other, memory_alpha = self._alphas()
        opts = {"margin": self.false_negative_margin, "scale": self.scale, "alpha_own_neg": own,
                "alpha_other": other, "alpha_mem": memory_alpha, "cosine": self.similarity == "cosine",
                "in_batch": self.in_batch_negatives, "num_threads": self.num_threads}
        mem_emb = mem_ids = None
        if mem is not None and len(mem) > 0:
            mem_emb, mem_ids = mem.get()
        opts["query_ids"] = _np_ids(b.query_ids)
        # the kernel raises ValueError for logits float32 cannot represent
        per_row = _FusedInfoNCE.apply(b.q, b.pos, b.hard, mem_emb, _np_ids(b.pos_ids),
                                      None if b.neg_ids is None else _np_ids(b.neg_ids.reshape(-1)),
                                      _np_ids(mem_ids), opts)
        loss = per_row.mean()
        if not bool(torch.isfinite(loss.detach())):
            raise _overflow_error("the batch (the mean loss)", torch.float32)
        return loss.to(torch.float32 if b.q.dtype in (torch.float16, torch.bfloat16) else b.q.dtype)

    def _dense_ok(self, b: "_Batch", mem: Optional[CrossBatchMemory], gathering: bool) -> bool:
        """Query->passage problems on CPU that ``backend="auto"`` does not give the kernel
        (:meth:`_fused_ok`): dense torch ops (BLAS matmuls) beat the kernel there."""
        return self._auto_q2d and not gathering and b.q.device.type == "cpu" and not self._fused_ok(b, mem)

    @property
    def _auto_q2d(self) -> bool:
        """``backend="auto"`` with the query->passage term alone (the C++ and dense paths' case)."""
        return self.backend == "auto" and self._full_kernel and self.directions == _Q2D

    def _fused_ok(self, b: "_Batch", mem: Optional[CrossBatchMemory]) -> bool:
        """Whether the C++ kernel takes the query->passage term: always with backend="fused";
        with "auto" when the dense path would hold too much.  The dense path (BLAS matmuls: the
        in-batch logits whole, the memory in chunks of AUTO_MEMORY_CHUNK rows) is faster than
        the kernel's score tiles at every shape measured (benchmarks/compare_losses_grid.py),
        but its peak memory is that of the B x B(1+n) in-batch logits; the kernel builds no
        logits.  So "auto" takes the kernel when those logits exceed DENSE_MAX_LOGITS, or, with
        a memory, when the in-batch candidates B(1+n) exceed 1/AUTO_INBATCH_FRACTION of the
        memory's rows (then the dense path's peak would no longer be a few percent of a plain
        loss's B x (B(1+n) + memory) logits)."""
        if self.backend != "auto":
            return self.backend == "fused"
        cols = b.B * (1 + b.n)
        if b.B * cols > _dense_module().DENSE_MAX_LOGITS:
            return True
        return mem is not None and len(mem) > 0 and cols * AUTO_INBATCH_FRACTION > len(mem)

    def _dense(self, b: "_Batch", mem: Optional[CrossBatchMemory]) -> Tensor:
        opts = self._dense_opts(b.check_finite)
        lse = None
        if mem is not None and len(mem) > 0:
            b.check_finite()  # the memory pass would call a NaN input an overflow
            lse = self._dense_memory_lse(b, mem, opts["cosine"])
        return _dense_module().DenseInfoNCE.apply(b.q, b.pos, b.hard, lse, (opts, b.pos_ids, b.neg_ids, b.query_ids))

    @property
    def _plain_ok(self) -> bool:
        """Whether a batch without ids, guide or memory may take :meth:`_plain_dense`."""
        return self._auto_q2d and not self.gather_across_devices

    @property
    def _plain_step(self) -> bool:
        """Whether the plain batch's loss is the InfoNCE without options (no hardness, margin
        or in-batch removal): :class:`hardneg._loss_dense.DenseStep`'s case."""
        return (self.in_batch_negatives and self.false_negative_margin is None
                and (self.hardness_mode is None or self.hardness_strength <= 0))

    def _dense_opts(self, check_inputs: Callable[[], None]) -> Dict[str, Any]:
        """The options of :class:`hardneg._loss_dense.DenseInfoNCE`; ``check_inputs`` raises the
        ValueError naming a non-finite input (called on a non-finite norm or logit)."""
        a = self.hardness_strength if self.hardness_mode is not None else 0.0
        return {"scale": self.scale, "alpha": a, "hardness_mode": self.hardness_mode,
                "cosine": self.similarity == "cosine", "in_batch": self.in_batch_negatives,
                "margin": self.false_negative_margin, "check_inputs": check_inputs}

    def _plain_dense(self, q: Any, pos: Any, hard: Any) -> Optional[Tensor]:
        """The batch most training steps give (float32 CPU tensors, (B, d) and (B, n, d), no
        ids, guide or memory, logits within DENSE_MAX_LOGITS) straight to the dense path, or
        None for anything else (the general path then validates it and raises what it must).

        The same computation as through :class:`_Batch` and :meth:`_dense`, with the checks
        that such a batch passes done in a few attribute reads: at small B the loss is a few
        hundred microseconds and the general path's bookkeeping (an object, a dozen calls) was
        5-10% of it, the margin by which a plain torch loss was faster there.  Without options,
        with a gradient wanted and on AVX-512, the whole step is then one C++ call
        (:class:`hardneg._loss_dense.DenseStep`); otherwise the matmul path
        (:class:`hardneg._loss_dense.DenseInfoNCE`)."""
        f32 = torch.float32
        if (type(q) is not Tensor or type(pos) is not Tensor or q.dtype is not f32 or pos.dtype is not f32
                or not q.is_cpu or not pos.is_cpu):
            return None
        shape = q.shape
        if len(shape) != 2 or pos.shape != shape or not shape[0] or not shape[1]:
            return None
        B, n = shape[0], 0
        if hard is not None:
            hs = hard.shape if type(hard) is Tensor else ()
            if (len(hs) != 3 or hs[0] != B or hs[2] != shape[1] or not hs[1] or hard.dtype is not f32
                    or not hard.is_cpu):
                return None
            n = hs[1]
        dense = _dense_module()
        N = B * (1 + n)
        if B * N > dense.DENSE_MAX_LOGITS:
            return None
        check = lambda: _Batch(q, pos, hard, None, None)  # validates, names a NaN / Inf input  # noqa: E731
        if (self._plain_step and B * N <= dense.STEP_MAX_LOGITS and torch.is_grad_enabled() and dense.step_fast()
                and (q.requires_grad or pos.requires_grad or (hard is not None and hard.requires_grad))
                and q.is_contiguous() and pos.is_contiguous() and (hard is None or hard.is_contiguous())):
            return dense.DenseStep.apply(q, pos, hard, (self.scale, self.similarity == "cosine", check,
                                                        resolve_num_threads(self.num_threads)))
        return dense.DenseInfoNCE.apply(q, pos, hard, None, (self._dense_opts(check), None, None, None))

    def _dense_memory_lse(self, b: "_Batch", mem: CrossBatchMemory, cosine: bool) -> Tensor:
        """(B,) log-sum-exp of each query's memory logits (chunks of AUTO_MEMORY_CHUNK rows, never
        all materialised), differentiable w.r.t. ``b.q``, in the dense path's compute dtype."""
        cdt = torch.float64 if b.q.dtype == torch.float64 else torch.float32
        qn = b.q.to(cdt)
        if cosine:
            qn = _l2_normalize(qn)
        thr = None
        if self.false_negative_margin is not None:
            with torch.no_grad():
                pn = b.pos.detach().to(cdt)
                raw_pos = (qn.detach() * (_l2_normalize(pn) if cosine else pn)).sum(dim=1)
            thr = raw_pos - self.false_negative_margin
        memory_alpha = self._alphas()[2]
        mem_emb, mem_ids = mem.get()
        chunk = self.memory_chunk if self.memory_chunk is not None else AUTO_MEMORY_CHUNK
        return _MemoryLSE.apply(qn, mem_emb, mem_ids if b.pos_ids is not None else None, b.pos_ids, thr,
                                self.scale + memory_alpha, self.scale, cosine, "torch", self.num_threads,
                                chunk, b.query_ids, mem.row_norms(cdt) if cosine else None)

    def _apply_guide(self, masks: Dict[str, Tensor], gdocs: Sequence[Tensor], local: Tensor,
                     own_pos: Tensor) -> None:
        """OR the guide's false-negative masks into ``masks`` (GISTEmbedLoss's rule, every direction).

        gdocs: normalized guide embeddings ``[queries (WB, dg), positives (WB, dg), hard negative k
        (WB, dg) ...]`` of all ranks; ``local``: this rank's rows.  The anchor of query_to_doc /
        query_to_query is q_i, of doc_to_query / doc_to_doc pos_i; the threshold is always the
        guide's s(q_i, pos_i) (minus the margin), as in GISTEmbedLoss."""
        gq, gd = gdocs[0], torch.cat(list(gdocs[1:]), dim=0)
        lq, ld = gq[local], gdocs[1][local]
        rows = torch.arange(local.shape[0], device=local.device)
        g_q2d = lq @ gd.T
        gpos = g_q2d[rows, local]  # from the same product as the candidates: a copy of the positive ties
        if self.guide_margin_strategy == "absolute":
            thr = (gpos - self.guide_margin)[:, None]
        else:
            thr = (gpos - gpos.abs() * self.guide_margin)[:, None]
        guided = {"query_to_doc": (g_q2d > thr) & ~own_pos, "query_to_query": lq @ gq.T > thr,
                  "doc_to_doc": ld @ gd.T > thr}
        if "doc_to_query" in self.directions:
            g = ld @ gq.T > thr
            g[rows, local] = False  # pos_i -> q_i is the positive pair itself
            guided["doc_to_query"] = g
        for key in self.directions:
            masks[key] = guided[key] if key not in masks else masks[key] | guided[key]

    # ------------------------------------------------------------------ forward
    def forward(self, q: Tensor, pos: Tensor, hard_negatives: Optional[Tensor] = None,
                pos_ids: Optional[Any] = None, neg_ids: Optional[Any] = None,
                query_ids: Optional[Any] = None, guide: Optional[Sequence[Tensor]] = None) -> Tensor:
        if (guide is None and pos_ids is None and neg_ids is None and query_ids is None and self.memory is None
                and self._plain_ok):
            loss = self._plain_dense(q, pos, hard_negatives)
            if loss is not None:
                return loss
        # the dense path detects NaN / Inf on the way (norms, logits) and only then names the input
        b = _Batch(q, pos, hard_negatives, pos_ids, neg_ids, query_ids, check_finite=False)
        gdocs = _guide_batch(guide, b)  # None, or [g_q, g_pos, g_hard[:, 0], ...] normalized
        mem = self.memory
        if mem is not None:
            if mem.dim != b.d:
                raise ValueError(f"memory has dim {mem.dim} but the embeddings have d={b.d}")
            if mem.dtype != b.q.dtype:
                raise TypeError(f"memory dtype {mem.dtype} does not match the embeddings' dtype {b.q.dtype}")
            if mem.embeddings.device != b.q.device:
                raise ValueError(f"memory is on {mem.embeddings.device} but q is on {b.q.device}")
        rank, world = _dist_info() if self.gather_across_devices else (0, 1)
        gathering = world > 1
        if gdocs is None and self._dense_ok(b, mem, gathering):
            return self._dense(b, mem)
        b.check_finite()
        if (gdocs is None and self._full_kernel and self._fused_ok(b, mem)
                and self.directions == _Q2D
                and not gathering and b.q.device.type == "cpu" and b.q.dtype != torch.float64):
            return self._fused(b, mem)
        c = self._columns(b, gdocs, gathering, rank)
        sims, masks = self._similarities(c)
        if c.gdocs is not None:
            self._apply_guide(masks, c.gdocs, c.local, c.own_pos)
        logits, overflow = self._logits(c, sims, masks)
        return self._reduce(c, logits, self._memory_lse(c, mem), overflow)

    # The torch path, in stages: the batch's columns (gathered across ranks, normalised), the
    # similarity blocks of each direction with their masks, the logits (hardness, overflow
    # check), the memory's log-sum-exp, and the per-row losses.

    def _columns(self, b: "_Batch", gdocs, gathering: bool, rank: int) -> SimpleNamespace:
        """The candidates of every row: ``[positives | hard negative k of each query]`` (gathered
        when ``gathering``), their ids, and which of them are this rank's rows."""
        cdt = torch.float64 if b.q.dtype == torch.float64 else torch.float32
        B, n = b.B, b.n
        queries = b.q.to(cdt)
        docs = [b.pos.to(cdt)] + ([b.hard[:, k].to(cdt) for k in range(n)] if n else [])
        pid, qid = b.pos_ids, b.query_ids
        did = None
        if pid is not None:
            did = [pid] + [(b.neg_ids[:, k] if b.neg_ids is not None else torch.full_like(pid, -1))
                           for k in range(n)]
        offset = 0
        if gathering:
            queries = _gather(queries, True)
            docs = [_gather(x, True) for x in docs]
            if pid is not None:
                pid = _gather(pid, False)
                did = [_gather(x, False) for x in did]
                if qid is not None:
                    qid = _gather(qid, False)
            offset = rank * B
            if gdocs is not None:
                gdocs = [_gather(x, False) for x in gdocs]
        WB = queries.shape[0]
        dev = queries.device
        cos = self.similarity == "cosine"
        if cos:
            queries = _l2_normalize(queries)
            docs = [_l2_normalize(x) for x in docs]
        local = torch.arange(offset, offset + B, device=dev)
        rows = torch.arange(B, device=dev)
        ncol = WB * (1 + n)
        own = torch.eye(WB, device=dev, dtype=torch.bool)[local].repeat(1, 1 + n)  # own positive + own negatives
        own_pos = torch.zeros(B, ncol, device=dev, dtype=torch.bool)
        own_pos[rows, local] = True
        return SimpleNamespace(
            cdt=cdt, B=B, n=n, WB=WB, dev=dev, cos=cos, queries=queries, docs=docs, docs_all=torch.cat(docs, dim=0),
            pid=pid, qid=qid, doc_ids_all=torch.cat(did) if did is not None else None, local=local, rows=rows,
            local_q=queries[local], local_d=docs[0][local], lpid=pid[local] if pid is not None else None,
            lqid=qid[local] if qid is not None else None, ncol=ncol, own=own, own_pos=own_pos, gdocs=gdocs)

    def _similarities(self, c: SimpleNamespace) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Per direction, the (B, candidates) similarities and the mask of the candidates it drops."""
        B, WB, dev, rows, local = c.B, c.WB, c.dev, c.rows, c.local
        sims: Dict[str, Tensor] = {}
        masks: Dict[str, Tensor] = {}
        sims["query_to_doc"] = c.local_q @ c.docs_all.T
        c.raw_pos = sims["query_to_doc"].detach()[rows, local]
        m = torch.zeros(B, c.ncol, device=dev, dtype=torch.bool)
        if not self.in_batch_negatives:
            m |= ~c.own
        if c.lpid is not None:
            m |= _id_match(c.doc_ids_all, c.lpid, c.lqid) & ~c.own_pos
        if self.false_negative_margin is not None:
            m |= (sims["query_to_doc"].detach() > (c.raw_pos - self.false_negative_margin)[:, None]) & ~c.own_pos
        masks["query_to_doc"] = m
        if "query_to_query" in self.directions:
            sims["query_to_query"] = c.local_q @ c.queries.T
            mq = torch.zeros(B, WB, device=dev, dtype=torch.bool)
            mq[rows, local] = True  # q_i -> q_i
            if c.lpid is not None:  # queries of the same passage, and copies of the query
                mq |= _id_match(c.pid, c.lpid, None)
                if c.qid is not None:
                    mq |= _id_match(c.qid, c.lpid, c.lqid)
            masks["query_to_query"] = mq
        if "doc_to_query" in self.directions:
            sims["doc_to_query"] = (c.queries @ c.local_d.T).T
            if c.lpid is not None:
                md = _id_match(c.pid, c.lpid, None)
                if c.qid is not None:
                    md |= _id_match(c.qid, c.lpid, c.lqid)
                md[rows, local] = False
                masks["doc_to_query"] = md
        if "doc_to_doc" in self.directions:
            sims["doc_to_doc"] = (c.docs_all @ c.local_d.T).T
            mdd = c.own.clone()  # documents of the same query
            if c.lpid is not None:
                mdd |= _id_match(c.doc_ids_all, c.lpid, c.lqid)
            masks["doc_to_doc"] = mdd
        return sims, masks

    def _logits(self, c: SimpleNamespace, sims: Dict[str, Tensor], masks: Dict[str, Tensor]):
        """``similarity * scale`` (+ the hardness term), masked with -inf; and, per block, whether
        float32 could not hold it (raised after the loss, naming the input)."""
        alpha = self.hardness_strength if self.hardness_mode is not None else 0.0
        logits: Dict[str, Tensor] = {}
        overflow = []
        for key, s in sims.items():
            z = s * self.scale
            if key == "query_to_doc" and alpha > 0.0:
                if self.hardness_mode == "hard_negatives":
                    excl = ~c.own
                    excl[:, :c.WB] = True
                elif self.hardness_mode == "in_batch_negatives":
                    excl = c.own
                else:  # all_negatives
                    excl = c.own.clone()
                    excl[:, c.WB:] = False
                z = z + torch.where(excl, torch.zeros_like(s), alpha * s.detach())
            overflow.append((_DIRECTION_WHAT[key], _nonfinite(z.detach())))
            if key in masks:
                z = z.masked_fill(masks[key], float("-inf"))
            logits[key] = z
        return logits, overflow

    def _memory_lse(self, c: SimpleNamespace, mem) -> Optional[Tensor]:
        """(B,) log-sum-exp of each row's memory logits (never materialised), or None."""
        if mem is None or len(mem) == 0:
            return None
        alpha = self.hardness_strength if self.hardness_mode is not None else 0.0
        memory_alpha = alpha if self.hardness_mode in ("in_batch_negatives", "all_negatives") else 0.0
        mem_emb, mem_ids = mem.get()
        thr = None
        if self.false_negative_margin is not None:
            thr = c.raw_pos - self.false_negative_margin
        backend, chunk = self.backend, self.memory_chunk
        if backend == "auto":  # BLAS matmuls over chunks of the memory: faster than the kernel on CPU too
            backend = "torch"
            if chunk is None and c.dev.type == "cpu":
                chunk = AUTO_MEMORY_CHUNK
        norms = mem.row_norms(c.local_q.dtype) if c.cos and backend == "torch" else None
        lse_mem = _MemoryLSE.apply(c.local_q, mem_emb, mem_ids if c.lpid is not None else None, c.lpid, thr,
                                   self.scale + memory_alpha, self.scale, c.cos, backend, self.num_threads,
                                   chunk, c.lqid, norms)
        return lse_mem.to(c.cdt)

    def _reduce(self, c: SimpleNamespace, logits: Dict[str, Tensor], lse_mem: Optional[Tensor], overflow) -> Tensor:
        """The mean over rows of log Z - z_pos, raising if float32 could not hold a logit."""
        # Per-row loss log Z - z_pos = log(1 + sum_{j != pos} exp(z_j - z_pos)), evaluated with
        # log1p: the same value and gradient as cross_entropy, without the cancellation of two
        # large numbers (large logits) or the rounding of 1 + tiny (a well-separated positive).
        positive = logits["query_to_doc"][c.rows, c.local]
        shift = positive[:, None]
        q2d_rest = (logits["query_to_doc"] - shift).masked_fill(c.own_pos, float("-inf"))
        if self.partition_mode == "joint":
            parts = [q2d_rest] + [z - shift for k, z in logits.items() if k != "query_to_doc"]
            if lse_mem is not None:
                parts.append(lse_mem[:, None] - shift)
            per_row = _log1p_sum_exp(torch.cat(parts, dim=1))
        else:
            parts = [q2d_rest] + ([lse_mem[:, None] - shift] if lse_mem is not None else [])
            per_row = _log1p_sum_exp(torch.cat(parts, dim=1))
            for key, z in logits.items():
                if key != "query_to_doc":
                    per_row = per_row + torch.logsumexp(z - shift, dim=1)
            per_row = per_row / len(logits)
        loss = per_row.mean()
        overflow.append(("the batch (the mean loss)", ~torch.isfinite(loss.detach())))
        _raise_overflow(overflow, c.cdt)
        return loss


# ------------------------------------------------------------- scores for users
def contrastive_scores(q: Tensor, pos: Tensor, hard_negatives: Optional[Tensor] = None, *,
                       memory: Optional[Union[CrossBatchMemory, Tensor]] = None, pos_ids: Optional[Any] = None,
                       neg_ids: Optional[Any] = None, memory_ids: Optional[Any] = None,
                       temperature: Optional[float] = None, scale: Optional[float] = None,
                       similarity: str = "cosine", false_negative_margin: Optional[float] = None,
                       in_batch_negatives: bool = True) -> Tuple[Tensor, Tensor]:
    """Materialised query->passage logits and the validity mask, for users' own losses.

    Parameters
    ----------
    q, pos : Tensor (B, d)
    hard_negatives : Tensor (B, n, d) or (B*n, d), optional
    memory : CrossBatchMemory or Tensor (M, d), optional
    pos_ids : (B,) int; neg_ids : (B, n) int; memory_ids : (M,) int (taken from a
        CrossBatchMemory when one is given)
    temperature / scale, similarity, false_negative_margin, in_batch_negatives
        As in :class:`InfoNCELoss`.

    Returns
    -------
    logits : Tensor (B, B + B*n + M), float32 (float64 for float64 input)
        ``similarity * scale``; columns are ``[positives (B) | hard negatives, negative
        k of query i at column B + k*B + i | memory (M)]``; the label of row i is column i.
    mask : bool Tensor, same shape
        True where the candidate takes part in row i's softmax (the rules of InfoNCELoss).
        ``F.cross_entropy(logits.masked_fill(~mask, -inf), arange(B))`` equals
        ``InfoNCELoss(...)`` with default directions.
    """
    s = _resolve_scale(temperature, scale)
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
    b = _Batch(q, pos, hard_negatives, pos_ids, neg_ids)
    cdt = torch.float64 if b.q.dtype == torch.float64 else torch.float32
    B, n, dev = b.B, b.n, b.q.device
    qs = b.q.to(cdt)
    docs = [b.pos.to(cdt)] + [b.hard[:, k].to(cdt) for k in range(n)]
    mem_ids = None
    if memory is not None:
        if isinstance(memory, CrossBatchMemory):
            mem_emb, mem_ids = memory.get()
        else:
            mem_emb = _check_emb(memory, "memory")
            if mem_emb.dim() != 2:
                raise ValueError(f"memory must be 2-D (M, d), got shape {tuple(mem_emb.shape)}")
            _check_finite(mem_emb, "memory")
            if memory_ids is not None:
                mem_ids = _as_ids(memory_ids, "memory_ids", dev).reshape(-1)
                if mem_ids.shape[0] != mem_emb.shape[0]:
                    raise ValueError("memory_ids must have one entry per memory row")
        if mem_emb.shape[1] != b.d:
            raise ValueError(f"memory has dim {mem_emb.shape[1]} but the embeddings have d={b.d}")
        docs.append(mem_emb.to(device=dev, dtype=cdt))
    if similarity == "cosine":
        qs = _l2_normalize(qs)
        docs = [_l2_normalize(x) for x in docs]
    cand = torch.cat(docs, dim=0)
    sim = qs @ cand.T
    rows = torch.arange(B, device=dev)
    ncol = cand.shape[0]
    nb = B * (1 + n)
    remove = torch.zeros(B, ncol, dtype=torch.bool, device=dev)
    own_pos = torch.zeros_like(remove)
    own_pos[rows, rows] = True
    if not in_batch_negatives:
        own = torch.eye(B, dtype=torch.bool, device=dev).repeat(1, 1 + n)
        remove[:, :nb] |= ~own
    if b.pos_ids is not None:
        cid = [b.pos_ids] + [(b.neg_ids[:, k] if b.neg_ids is not None else torch.full_like(b.pos_ids, -1))
                             for k in range(n)]
        if memory is not None:
            cid.append(mem_ids if mem_ids is not None else
                       torch.full((ncol - nb,), -1, dtype=torch.int64, device=dev))
        cid = torch.cat(cid)
        remove |= (cid[None, :] == b.pos_ids[:, None]) & (b.pos_ids >= 0)[:, None] & ~own_pos
    if false_negative_margin is not None:
        raw_pos = sim.detach()[rows, rows]
        remove |= (sim.detach() > (raw_pos - float(false_negative_margin))[:, None]) & ~own_pos
    return sim * s, ~remove


# --------------------------------------------------------- sentence-transformers
# (defined in their own modules; imported last because they build on InfoNCELoss)
from hardneg._st_adapter import SentenceTransformersLoss  # noqa: E402
from hardneg.cached_loss import CachedInfoNCELoss  # noqa: E402

"""GradCache for :class:`hardneg.losses.InfoNCELoss`: batches far larger than the model's
activations allow, with the fused kernel for the logits step.

Three steps (Gao et al. 2021, as sentence-transformers' CachedMultipleNegativesRankingLoss):

1. embed every column in mini-batches without a graph (RNG state recorded per mini-batch);
2. evaluate the loss on the whole batch's embeddings and back-propagate it to them only:
   their gradients are the cache.  On CPU this is the fused C++ kernel, which never builds
   the B x (B(1+n) + memory) logits: B = 4,096 with a 65,536-row memory (d = 384) takes
   ~160 MB extra here against ~3.5 GB for a torch cat + matmul + cross_entropy step;
3. when the trainer calls ``backward()``, re-embed each mini-batch with a graph (replaying its
   RNG state, so dropout draws the same masks) and back-propagate ``<embedding, cached grad>``.

Loss and parameter gradients equal the uncached loss on the same batch (dropout aside).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import get_device_states, set_device_states

from hardneg._st_adapter import SentenceTransformersLoss
from hardneg._validate import check_int

__all__ = ["CachedInfoNCELoss"]


class _RandState:
    """The CPU and CUDA RNG states at construction, restored inside ``with`` (fork_rng)."""

    def __init__(self, *tensors: Tensor) -> None:
        self.cpu = torch.get_rng_state()
        self.devices, self.states = get_device_states(*tensors)

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        set_device_states(self.devices, self.states)

    def __exit__(self, *exc: Any) -> None:
        self._fork.__exit__(*exc)
        self._fork = None


def _rows(features: Mapping[str, Any]) -> int:
    for key in ("input_ids", "attention_mask"):
        v = features.get(key)
        if isinstance(v, Tensor) and v.dim() >= 2:
            return v.shape[0]
    if isinstance(features.get("input_ids"), Tensor) and "offsets" in features:
        raise ValueError("CachedInfoNCELoss cannot split a StaticEmbedding batch (a flat input_ids with offsets) "
                         "into mini-batches; use SentenceTransformersLoss instead")
    if "cu_seq_lens_q" in features:
        raise ValueError("CachedInfoNCELoss does not split flattened (cu_seq_lens) batches; pad them instead")
    for v in features.values():
        if isinstance(v, Tensor) and v.dim() >= 1:
            return v.shape[0]
    raise ValueError("a feature column has no tensor with a batch dimension")


def _slice(features: Mapping[str, Any], begin: int, end: int, rows: int) -> Dict[str, Any]:
    """Rows [begin, end) of every per-row tensor (first dimension == rows); other values as they are."""
    return {k: (v[begin:end] if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == rows else v)
            for k, v in features.items()}


class CachedInfoNCELoss(SentenceTransformersLoss):
    """:class:`SentenceTransformersLoss` with gradient caching (GradCache): memory of a
    ``mini_batch_size`` forward pass, the loss of the whole batch.

    A drop-in for sentence-transformers' ``CachedMultipleNegativesRankingLoss(model, scale,
    similarity_fct, mini_batch_size, ...)``, with every :class:`InfoNCELoss` option on top
    (``memory``, ``false_negative_margin``, ``in_batch_negatives``, id masking of duplicate
    texts, ``directions``, ``hardness_mode``, ...).

    Parameters
    ----------
    model : SentenceTransformer
    scale, similarity_fct
        As in MultipleNegativesRankingLoss (default 20.0, ``util.cos_sim``).
    mini_batch_size : int, default 32
        Rows per embedding forward pass (>= 1); only this many rows' activations are alive
        at a time.  It does not change the loss or the gradients.
    gather_across_devices, directions, partition_mode, hardness_mode, hardness_strength
        As in MultipleNegativesRankingLoss.
    enqueue_negatives, mask_duplicates, guide, margin_strategy, margin, **loss_options
        As in :class:`SentenceTransformersLoss` (a ``guide`` embeds ``mini_batch_size`` rows
        at a time, without a graph, as in CachedGISTEmbedLoss).

    Notes
    -----
    ``forward`` runs steps 1 and 2 (two model passes without a graph cost ~1/3 of a training
    step each); the returned loss carries a hook that runs step 3 during ``backward()``,
    scaled by the incoming gradient (so gradient accumulation and loss scaling work).  Not
    supported (ValueError): StaticEmbedding models (their flat batches cannot be split) and
    flattened ``cu_seq_lens`` batches.  ``mini_batch_num_tokens`` and ``show_progress_bar`` of
    sentence-transformers' class are not implemented.
    """

    def __init__(self, model: nn.Module, scale: Optional[float] = None, similarity_fct: Any = None,
                 mini_batch_size: int = 32, gather_across_devices: bool = False,
                 directions: Optional[Sequence[str]] = None, partition_mode: Optional[str] = None,
                 hardness_mode: Optional[str] = None, hardness_strength: float = 0.0, **options: Any) -> None:
        super().__init__(model, scale, similarity_fct, gather_across_devices, directions, partition_mode,
                         hardness_mode, hardness_strength, **options)
        self.mini_batch_size = check_int(mini_batch_size, "mini_batch_size", minimum=1)

    def guide_columns(self, sentence_features: Sequence[Mapping[str, Any]]) -> Optional[List[Tensor]]:
        """The guide's embeddings of each column (no gradient), mini-batch by mini-batch."""
        if self.guide is None:
            return None
        out = []
        with torch.no_grad():
            for f in self.guide_features(sentence_features):
                rows = _rows(f)
                out.append(torch.cat([self.guide(_slice(f, b, min(b + self.mini_batch_size, rows), rows))
                                      ["sentence_embedding"].detach()
                                      for b in range(0, rows, self.mini_batch_size)]))
        return out

    # step 1: the embeddings of one column without a graph, mini-batch by mini-batch
    def _embed_column(self, features: Mapping[str, Any], rows: int) -> Tuple[Tensor, List[_RandState]]:
        embs, states = [], []
        for begin in range(0, rows, self.mini_batch_size):
            mb = _slice(features, begin, min(begin + self.mini_batch_size, rows), rows)
            states.append(_RandState(*[v for v in mb.values() if isinstance(v, Tensor)]))
            with torch.no_grad():
                embs.append(self.model(mb)["sentence_embedding"].detach())
        return torch.cat(embs), states

    def forward(self, sentence_features: Sequence[Mapping[str, Any]], labels: Optional[Tensor] = None) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 2:
            raise ValueError(f"expected at least 2 feature columns (anchor, positive), got {len(sentence_features)}")
        rows = [_rows(f) for f in sentence_features]
        if len(set(rows)) != 1:
            raise ValueError(f"every column must have the same number of rows, got {rows}")
        B = rows[0]
        cols, states = [], []
        for f in sentence_features:  # step 1
            e, st = self._embed_column(f, B)
            cols.append(e)
            states.append(st)
        ids = self.row_ids(sentence_features, B, cols[0].device)
        guide = self.guide_columns(sentence_features)
        if not torch.is_grad_enabled():  # evaluation: nothing to cache
            return self.compute_loss_from_embeddings(cols, labels, ids, guide)
        # step 2: the loss on the whole batch, back to the embeddings only
        reps = [c.requires_grad_() for c in cols]
        with torch.enable_grad():
            loss = self.compute_loss_from_embeddings(reps, labels, ids, guide)
            loss.backward()
        cache = [r.grad if r.grad is not None else torch.zeros_like(r) for r in reps]
        out = loss.detach().requires_grad_()
        out.register_hook(partial(self._replay, sentence_features, cache, states, B))
        return out

    def _replay(self, sentence_features: Sequence[Mapping[str, Any]], cache: Sequence[Tensor],
                states: Sequence[List[_RandState]], rows: int, grad_output: Tensor) -> None:
        """Step 3 (a backward hook on the returned loss): re-embed with a graph and push the cache."""
        with torch.enable_grad():
            for f, grad, st in zip(sentence_features, cache, states):
                for k, begin in enumerate(range(0, rows, self.mini_batch_size)):
                    mb = _slice(f, begin, min(begin + self.mini_batch_size, rows), rows)
                    with st[k]:
                        emb = self.model(mb)["sentence_embedding"]
                    if not emb.requires_grad:
                        continue
                    g = grad[begin:begin + emb.shape[0]]
                    dt = torch.promote_types(torch.promote_types(emb.dtype, g.dtype), torch.float32)
                    surrogate = torch.dot(emb.flatten().to(dt), g.flatten().to(dt)) * grad_output.to(dt)
                    surrogate.backward()

    def get_config_dict(self) -> Dict[str, Any]:
        cfg = super().get_config_dict()
        cfg["mini_batch_size"] = self.mini_batch_size
        return cfg

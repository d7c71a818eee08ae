"""sentence-transformers adapter for :class:`hardneg.losses.InfoNCELoss`.

``SentenceTransformersLoss`` takes ``MultipleNegativesRankingLoss``'s arguments under their
names and values, embeds the trainer's feature columns as MNRL does, and turns each
column's rows into ids (a hash of the row's tokens) so that duplicates of a query's
positive or of its own text are masked inside the trainer, where no ids are passed.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from hardneg._validate import check_bool

__all__ = ["SentenceTransformersLoss", "similarity_from_fct", "feature_row_ids"]

_MNRL_DIRECTIONS = ("query_to_doc",)


# ------------------------------------------------------------------ similarity_fct
def similarity_from_fct(similarity_fct: Union[None, str, Callable]) -> Optional[str]:
    """``"cosine"`` / ``"dot"`` for sentence-transformers' ``util.cos_sim`` / ``util.dot_score``.

    Also accepted: the strings ``"cosine"``/``"cos_sim"``/``"dot"``/``"dot_score"`` and a
    model's bound ``model.similarity`` whose ``similarity_fn_name`` is cosine or dot.
    Any other callable raises ValueError: the kernels compute the similarity themselves
    (they never call it), so they can only do these two.  None gives None.
    """
    if similarity_fct is None:
        return None
    if isinstance(similarity_fct, str):
        names = {"cosine": "cosine", "cos_sim": "cosine", "dot": "dot", "dot_score": "dot"}
        if similarity_fct not in names:
            raise ValueError(f"similarity_fct must be util.cos_sim, util.dot_score or one of {tuple(names)}, "
                             f"got {similarity_fct!r}")
        return names[similarity_fct]
    if not callable(similarity_fct):
        raise TypeError(f"similarity_fct must be a callable such as util.cos_sim, got {similarity_fct!r}")
    name = getattr(similarity_fct, "__name__", type(similarity_fct).__name__)
    module = getattr(similarity_fct, "__module__", "") or ""
    if module.startswith("sentence_transformers"):
        if name == "cos_sim":
            return "cosine"
        if name == "dot_score":
            return "dot"
    owner = getattr(similarity_fct, "__self__", None)  # model.similarity of a SentenceTransformer
    if name == "similarity" and getattr(owner, "similarity_fn_name", None) in ("cosine", "dot"):
        return owner.similarity_fn_name
    raise ValueError(
        f"similarity_fct={name}: hardneg's losses support sentence_transformers.util.cos_sim (similarity='cosine') "
        "and util.dot_score (similarity='dot') only: their kernels compute the similarity themselves and never "
        "call the function, so other similarities (util.manhattan_sim, util.euclidean_sim, a custom callable) "
        "cannot be used; for those keep sentence-transformers' MultipleNegativesRankingLoss")


# ------------------------------------------------------------------------- row ids
def _hash_rows(rows: List[np.ndarray]) -> Tensor:
    out = np.empty(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        h = hashlib.blake2b(np.ascontiguousarray(r, dtype=np.int64).tobytes(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "little") & 0x7FFFFFFFFFFFFFFF  # >= 0: a known id
    return torch.from_numpy(out)


def feature_row_ids(features: Mapping[str, Any]) -> Optional[Tensor]:
    """One int64 id (>= 0) per row of a tokenised feature dict, or None when it has no tokens.

    The id hashes (blake2b, 63 bits) the row's token ids without its padding: the
    ``attention_mask == 1`` positions of a padded ``input_ids`` (left or right padding,
    any batch width), or the ``offsets`` slice of a flat ``input_ids`` (StaticEmbedding).
    Equal texts preprocessed the same way (same tokenizer, prompt and truncation) get the
    same id in any column; different ones collide with probability 2**-63.

    Parameters
    ----------
    features : dict
        One column of what sentence-transformers' data collator gives the loss.

    Returns
    -------
    Tensor (rows,) int64 on the CPU, or None (no ``input_ids``; images, say).
    """
    ids = features.get("input_ids") if isinstance(features, Mapping) else None
    if not isinstance(ids, Tensor) or ids.is_floating_point():
        return None
    ids_np = ids.detach().to("cpu", torch.int64).numpy()
    if ids.dim() == 2:
        mask = features.get("attention_mask")
        if isinstance(mask, Tensor) and mask.shape == ids.shape:
            keep = mask.detach().to("cpu").numpy() != 0
            return _hash_rows([row[k] for row, k in zip(ids_np, keep)])
        return _hash_rows(list(ids_np))
    offsets = features.get("offsets")
    if ids.dim() == 1 and isinstance(offsets, Tensor) and offsets.dim() == 1:
        cuts = offsets.detach().to("cpu", torch.int64).numpy().tolist() + [len(ids_np)]
        return _hash_rows([ids_np[a:b] for a, b in zip(cuts[:-1], cuts[1:])])
    return None


def batch_ids(sentence_features: Sequence[Mapping[str, Any]], batch_size: int,
              device: torch.device) -> Optional[Dict[str, Tensor]]:
    """pos_ids / neg_ids / query_ids for InfoNCELoss from the columns' token hashes.

    Returns None when the positive column has no tokens (nothing to match).  A column
    without tokens (or of another length) gets -1 ("unknown", never matches)."""
    cols = [feature_row_ids(f) for f in sentence_features]
    cols = [c if c is not None and c.shape[0] == batch_size else None for c in cols]
    if len(cols) < 2 or cols[1] is None:
        return None
    unknown = torch.full((batch_size,), -1, dtype=torch.int64)
    out = {"pos_ids": cols[1].to(device)}
    out["query_ids"] = (cols[0] if cols[0] is not None else unknown).to(device)
    if len(cols) > 2:
        out["neg_ids"] = torch.stack([c if c is not None else unknown for c in cols[2:]], dim=1).to(device)
    return out


# ------------------------------------------------------------------------ embedding
def embed(model: nn.Module, sentence_features: Sequence[Mapping[str, Any]]) -> List[Tensor]:
    """The columns' ``sentence_embedding`` as MultipleNegativesRankingLoss computes them."""
    try:
        from sentence_transformers.base.losses.merged_forward import embed_columns
    except ImportError:  # sentence-transformers < 6: one forward per column, as MNRL did there
        return [model(f)["sentence_embedding"] for f in sentence_features]
    return embed_columns(model, sentence_features)


# ---------------------------------------------------------------------------- guide
def _must_retokenize(model: nn.Module, guide: nn.Module) -> bool:
    """GISTEmbedLoss's test: the guide needs its own tokens when the vocabularies differ or its
    ``max_seq_length`` is shorter than the model's."""
    mt, gt = getattr(model, "tokenizer", None), getattr(guide, "tokenizer", None)
    if mt is None or gt is None or not hasattr(mt, "get_vocab") or not hasattr(gt, "get_vocab"):
        raise ValueError("guide: both the model and the guide must have a transformers tokenizer "
                         "(a .tokenizer with get_vocab())")
    retok = mt.get_vocab() != gt.get_vocab() or (getattr(guide, "max_seq_length", None) or 0) < (
        getattr(model, "max_seq_length", None) or 0)
    first = model[0] if hasattr(model, "__getitem__") else None
    if retok and type(first).__name__ == "StaticEmbedding":
        raise ValueError("guide: a guide with another tokenizer needs the texts back from input_ids, which a "
                         "StaticEmbedding model's flat batches do not allow")
    return retok


def _retokenize(tokenizer: Any, guide: nn.Module, features: Mapping[str, Any]) -> Dict[str, Any]:
    """Decode one column's ``input_ids`` with the model's tokenizer and preprocess it for the guide."""
    from sentence_transformers.util import batch_to_device

    input_ids = features["input_ids"]
    if "cu_seq_lens_q" in features:  # a flattened batch: one row of concatenated sequences
        flat = input_ids[0].tolist()
        cuts = features["cu_seq_lens_q"].tolist()
        input_ids = [flat[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    texts = tokenizer.batch_decode(input_ids, skip_special_tokens=True)
    return batch_to_device(guide.preprocess(texts), guide.device)


# -------------------------------------------------------------------------- adapter
class SentenceTransformersLoss(nn.Module):
    """:class:`InfoNCELoss` as a sentence-transformers loss, with MultipleNegativesRankingLoss's arguments.

    ``MultipleNegativesRankingLoss(model, scale=20.0, similarity_fct=util.cos_sim, ...)`` ->
    ``SentenceTransformersLoss(model, scale=20.0, similarity_fct=util.cos_sim, ...)``: the same
    arguments, names, defaults and values (``scale``, ``similarity_fct``,
    ``gather_across_devices``, ``directions``, ``partition_mode``, ``hardness_mode``,
    ``hardness_strength``) give the same loss and gradients on a batch without duplicate
    texts.  Columns: (anchor, positive, negative_1, ..., negative_n).

    Parameters
    ----------
    model : SentenceTransformer
    scale : float, default 20.0
        1 / temperature (or give ``temperature=`` instead).
    similarity_fct : callable, default util.cos_sim
        ``util.cos_sim`` or ``util.dot_score`` (see :func:`similarity_from_fct`); other
        callables raise ValueError.
    gather_across_devices, directions, partition_mode, hardness_mode, hardness_strength
        As in MultipleNegativesRankingLoss.
    enqueue_negatives : bool, default True
        With a ``memory``, also enqueue the hard-negative columns (the positives always are),
        after the loss, while gradients are enabled (training, not evaluation).
    guide : SentenceTransformer, optional
        A guide model (GISTEmbedLoss's ``guide``): it embeds the same batch without gradients
        and every in-batch candidate it scores (cosine) above the anchor's positive, minus
        ``margin``, is removed from the softmax (see :class:`InfoNCELoss`'s ``guide``).  Its
        features are the model's when both share a vocabulary and the guide's
        ``max_seq_length`` is not shorter; otherwise the model's ``input_ids`` are decoded and
        re-tokenized by the guide, as GISTEmbedLoss does.
    margin_strategy : {"absolute", "relative"}, default "absolute"
    margin : float, default 0.0
        GISTEmbedLoss's rule for the guide: mask when the guide similarity exceeds
        ``g_pos - margin`` ("absolute") or ``g_pos - |g_pos| * margin`` ("relative").
    mask_duplicates : bool, default True
        Hash each row's tokens (:func:`feature_row_ids`) into ids and pass them to the loss:
        a candidate (another query's positive, a hard negative, a memory entry) that is the
        same text as the query's positive or as the query itself is removed from its softmax.
        On a batch without such duplicates the loss equals MNRL's.  False: no ids (MNRL).
    **loss_options
        Any other :class:`InfoNCELoss` argument (``temperature``, ``memory``,
        ``false_negative_margin``, ``in_batch_negatives``, ``similarity``, ``backend``, ...).

    Notes
    -----
    sentence-transformers' data collator gives the loss token tensors, not texts, which is
    why duplicates are found by hashing token ids (equal texts under the same tokenizer and
    prompt).  Before this class took MNRL's argument order its second positional argument
    was ``enqueue_negatives``; a bool there is still read as that (with a warning).
    """

    def __init__(self, model: nn.Module, scale: Optional[float] = None, similarity_fct: Any = None,
                 gather_across_devices: bool = False, directions: Optional[Sequence[str]] = None,
                 partition_mode: Optional[str] = None, hardness_mode: Optional[str] = None,
                 hardness_strength: float = 0.0, *, enqueue_negatives: bool = True, mask_duplicates: bool = True,
                 guide: Optional[nn.Module] = None, margin_strategy: str = "absolute", margin: float = 0.0,
                 **loss_options: Any) -> None:
        super().__init__()
        from hardneg.losses import InfoNCELoss

        if isinstance(scale, (bool, np.bool_)):  # the old SentenceTransformersLoss(model, enqueue_negatives)
            warnings.warn("SentenceTransformersLoss's second positional argument is now scale (as in "
                          "MultipleNegativesRankingLoss); pass enqueue_negatives=... by name", FutureWarning,
                          stacklevel=2)
            enqueue_negatives, scale = bool(scale), None
        sim = similarity_from_fct(similarity_fct)
        if sim is not None:
            given = loss_options.get("similarity")
            if given is not None and given != sim:
                raise ValueError(f"similarity={given!r} contradicts similarity_fct (= {sim!r}); give one")
            loss_options["similarity"] = sim
        if scale is not None:
            loss_options["scale"] = scale
        self.model = model
        self.loss = InfoNCELoss(gather_across_devices=gather_across_devices, directions=directions,
                                partition_mode=partition_mode, hardness_mode=hardness_mode,
                                hardness_strength=hardness_strength, guide_margin=margin,
                                guide_margin_strategy=margin_strategy, **loss_options)
        self.guide = guide
        self.must_retokenize = False
        if guide is not None:
            self.must_retokenize = _must_retokenize(model, guide)
        self.enqueue_negatives = check_bool(enqueue_negatives, "enqueue_negatives")
        self.mask_duplicates = check_bool(mask_duplicates, "mask_duplicates")

    # MultipleNegativesRankingLoss's attribute names
    @property
    def scale(self) -> float:
        return self.loss.scale

    @property
    def temperature(self) -> float:
        return self.loss.temperature

    @property
    def similarity_fct(self) -> Callable[[Tensor, Tensor], Tensor]:
        from sentence_transformers import util

        return util.cos_sim if self.loss.similarity == "cosine" else util.dot_score

    def compute_loss_from_embeddings(self, embeddings: Sequence[Tensor], labels: Optional[Tensor] = None,
                                     ids: Optional[Dict[str, Tensor]] = None,
                                     guide_embeddings: Optional[Sequence[Tensor]] = None) -> Tensor:
        """The loss of embedded columns (anchor (B, d), positive (B, d), negatives (B, d) ...).

        ``ids``: optional ``{"pos_ids": (B,), "neg_ids": (B, n), "query_ids": (B,)}`` int64
        (what :meth:`forward` derives from the tokens); None: no id masking (MNRL).
        ``guide_embeddings``: optional, the guide's embeddings of the same columns ((B, dg)
        each, what :meth:`guide_columns` returns); None: no guide filtering."""
        if len(embeddings) < 2:
            raise ValueError(f"expected at least 2 embedding columns (anchor, positive), got {len(embeddings)}")
        q, pos, negs = embeddings[0], embeddings[1], list(embeddings[2:])
        hard = torch.stack(negs, dim=1) if negs else None
        ids = ids or {}
        guide = None
        if guide_embeddings is not None:
            if len(guide_embeddings) != len(embeddings):
                raise ValueError(f"guide_embeddings has {len(guide_embeddings)} columns, the batch {len(embeddings)}")
            g = [x.to(q.device) for x in guide_embeddings]
            guide = (g[0], g[1]) + ((torch.stack(g[2:], dim=1),) if negs else ())
        loss = self.loss(q, pos, hard_negatives=hard, guide=guide, **ids)
        self._enqueue(pos, negs, ids)
        return loss

    def _enqueue(self, pos: Tensor, negs: Sequence[Tensor], ids: Dict[str, Tensor]) -> None:
        mem = self.loss.memory
        if mem is None or not torch.is_grad_enabled():
            return
        mem.enqueue(pos.detach().to(mem.dtype), ids.get("pos_ids"))
        if self.enqueue_negatives:
            nid = ids.get("neg_ids")
            for k, x in enumerate(negs):
                mem.enqueue(x.detach().to(mem.dtype), None if nid is None else nid[:, k])

    def row_ids(self, sentence_features: Sequence[Mapping[str, Any]], batch_size: int,
                device: torch.device) -> Optional[Dict[str, Tensor]]:
        """The ids :meth:`forward` passes to the loss (None with ``mask_duplicates=False``)."""
        if not self.mask_duplicates:
            return None
        return batch_ids(sentence_features, batch_size, device)

    def guide_columns(self, sentence_features: Sequence[Mapping[str, Any]]) -> Optional[List[Tensor]]:
        """The guide's embeddings (no gradient) of each column, or None without a guide.

        Runs on shallow copies of the feature dicts (models write their outputs into them), or,
        when the guide must re-tokenize, on ``guide.preprocess`` of the decoded ``input_ids``."""
        if self.guide is None:
            return None
        with torch.no_grad():
            return [e.detach() for e in embed(self.guide, self.guide_features(sentence_features))]

    def guide_features(self, sentence_features: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """The feature dicts the guide embeds: shallow copies, or the re-tokenized texts."""
        if self.must_retokenize:
            return [_retokenize(self.model.tokenizer, self.guide, f) for f in sentence_features]
        return [dict(f) for f in sentence_features]

    def forward(self, sentence_features: Sequence[Mapping[str, Any]], labels: Optional[Tensor] = None) -> Tensor:
        sentence_features = list(sentence_features)
        guide_embeddings = self.guide_columns(sentence_features)  # before the model fills the dicts
        embeddings = embed(self.model, sentence_features)
        ids = self.row_ids(sentence_features, embeddings[0].shape[0], embeddings[0].device)
        return self.compute_loss_from_embeddings(embeddings, labels, ids, guide_embeddings)

    def get_config_dict(self) -> Dict[str, Any]:
        cfg = self.loss.get_config_dict()
        cfg["similarity_fct"] = "cos_sim" if self.loss.similarity == "cosine" else "dot_score"
        cfg["mask_duplicates"] = self.mask_duplicates
        if self.guide is not None:
            cfg["guide"] = self.guide
        return cfg

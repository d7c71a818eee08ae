"""Batched, gradient-free text encoding with a sentence-transformers model or any encoder callable.

Shared by :mod:`hardneg.training` (re-encoding the corpus while a model trains) and
:mod:`hardneg.rescore` (the guide model's embeddings).
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence

import numpy as np

from hardneg._arrays import is_torch
from hardneg._progress import progress_bar
from hardneg._validate import check_choice, check_int

__all__ = ["encode_texts", "model_fingerprint"]

KINDS = ("query", "document", "plain")


def _encode_fn(model: Any, kind: str) -> Callable[[List[str], int], Any]:
    """fn(texts, batch_size) -> array for a SentenceTransformer-like model, or a plain callable."""
    if callable(getattr(model, "encode", None)):
        name = {"query": "encode_query", "document": "encode_document"}.get(kind, "encode")
        method = getattr(model, name, None)
        if not callable(method):
            method = model.encode

        def fn(texts: List[str], batch_size: int) -> Any:
            return method(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

        return fn
    if callable(model):
        return lambda texts, batch_size: model(texts)
    raise TypeError(f"model must be a SentenceTransformer (anything with .encode) or a callable(list[str]) -> array, "
                    f"got {type(model).__name__}")


def encode_texts(model: Any, texts: Sequence[str], *, kind: str = "document", batch_size: int = 64,
                 progress: bool = True, desc: str = "encode") -> np.ndarray:
    """Embed ``texts`` in batches without building a graph, on the model's own device.

    Parameters
    ----------
    model : SentenceTransformer or callable(list[str]) -> array (n, d)
        A model with ``.encode`` (its ``encode_query`` / ``encode_document`` when it has them,
        so prompts are applied as at inference) or any encoder callable.
    texts : sequence of str (n,)
    kind : {"query", "document", "plain"}
        Which of the model's encode methods to use ("plain": ``.encode``).
    batch_size : int
        Texts per forward pass.
    progress : bool
        Show a tqdm bar over the texts.
    desc : str
        The bar's label.

    Returns
    -------
    float32 (n, d)

    Notes
    -----
    A torch module is put in eval mode for the pass (no dropout) and returned to the mode it
    was in, so a training loop that calls this between steps continues unchanged.
    """
    check_choice(kind, "kind", KINDS)
    batch_size = check_int(batch_size, "batch_size", 1)
    fn = _encode_fn(model, kind)
    texts = list(texts)
    was_training = bool(getattr(model, "training", False))
    out: List[np.ndarray] = []
    bar = progress_bar(len(texts), desc, progress, unit="text")
    try:
        import torch

        no_grad = torch.no_grad()
    except ImportError:  # a plain callable encoder without torch
        import contextlib

        no_grad = contextlib.nullcontext()
    chunk = batch_size * 8  # one call per 8 batches: few calls, a bar that still moves
    try:
        if was_training and callable(getattr(model, "eval", None)):
            model.eval()
        with no_grad:
            for s in range(0, len(texts), chunk):
                part = texts[s:s + chunk]
                e = fn(part, batch_size)
                if is_torch(e):
                    e = e.detach().float().cpu().numpy()
                e = np.asarray(e, dtype=np.float32)
                if e.ndim != 2 or e.shape[0] != len(part):
                    raise ValueError(f"the encoder returned shape {e.shape} for {len(part)} texts; "
                                     f"expected ({len(part)}, dim)")
                out.append(e)
                bar.update(len(part))
    finally:
        bar.close()
        if was_training and callable(getattr(model, "train", None)):
            model.train()
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(np.concatenate(out))


def model_fingerprint(model: Any) -> Any:
    """A token that changes whenever a torch model's parameters change (None: not a torch model).

    Per parameter its identity, shape and two float64 checksums (sum and sum of squares) computed
    on the parameter's device: one read of the weights, much cheaper than encoding a corpus.
    (The in-place version counter is not used: fused / foreach optimizer steps do not bump it.)
    """
    params = getattr(model, "parameters", None)
    if not callable(params):
        return None
    try:
        import torch

        plist = list(params())
        if not plist:
            return None
        with torch.no_grad():
            sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                                .to("cpu") for p in plist])
        return (tuple((id(p), tuple(p.shape)) for p in plist), sums.numpy().tobytes())
    except (ImportError, AttributeError, RuntimeError, TypeError):  # pragma: no cover - not a torch module
        return None

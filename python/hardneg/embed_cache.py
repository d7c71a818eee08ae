"""Prompts for encoders and a folder of cached embeddings (``save_embeddings=DIR``, ``--save-embeddings``).

A cached file is named ``{model}-{corpus|queries}-{hash}.npy``: the hash covers the model name,
the prompt and every text, so a changed text, prompt or model never reuses a stale file.  Files
are written beside their final name and renamed into place; they are read memory-mapped.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from hardneg._io import atomic_binary_output

PROMPT_KEYS = ("query", "corpus")

Encoder = Callable[..., Any]


def check_prompts(prompts: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    """``{"query": str, "corpus": str}`` (either may be missing); anything else is a ValueError / TypeError."""
    if prompts is None:
        return {}
    if not isinstance(prompts, Mapping):
        raise TypeError(f"prompts must be a dict {{'query': ..., 'corpus': ...}}, got {type(prompts).__name__}")
    out = {}
    for k, v in prompts.items():
        if k not in PROMPT_KEYS:
            raise ValueError(f"prompts: unknown key {k!r} (keys: {', '.join(PROMPT_KEYS)})")
        if v is None:
            continue
        if not isinstance(v, str):
            raise TypeError(f"prompts[{k!r}] must be a string, got {type(v).__name__}")
        out[k] = v
    return out


def with_prompt(encoder: Encoder, prompt: Optional[str]) -> Callable[[list], Any]:
    """``encoder`` with ``prompt``: passed as ``prompt=`` when the encoder takes it (as
    ``SentenceTransformer.encode`` does), else written in front of every text."""
    if not prompt:
        return encoder
    try:
        takes = "prompt" in inspect.signature(encoder).parameters
    except (TypeError, ValueError):
        takes = False
    if takes:
        return lambda texts: encoder(texts, prompt=prompt)
    return lambda texts: encoder([prompt + t for t in texts])


def texts_key(model: str, prompt: Optional[str], texts: Sequence[str]) -> str:
    """sha256 (hex) of the model name, the prompt and the texts."""
    h = hashlib.sha256()
    for part in (model, prompt or ""):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def cache_path(folder: Union[str, os.PathLike], model: str, kind: str, prompt: Optional[str],
               texts: Sequence[str]) -> Path:
    """Where the embeddings of ``texts`` by ``model`` with ``prompt`` are cached in ``folder``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.rstrip("/\\").split("/")[-1].split("\\")[-1])[:60] or "model"
    return Path(folder) / f"{slug}-{kind}-{texts_key(model, prompt, texts)[:24]}.npy"


def encode_cached(encode: Callable[[], np.ndarray], folder: Optional[Union[str, os.PathLike]],
                  model: Optional[str], kind: str, prompt: Optional[str], texts: Sequence[str]) -> Any:
    """``encode()``'s result, read from / written to the cache folder when one is given.

    Returns a memory-mapped array when the cache was used, else the encoded array.
    """
    if folder is None:
        return encode()
    if not model:
        raise ValueError("save_embeddings needs encoder_name= (the model's name keys the cached files)")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"save_embeddings folder {folder} does not exist")
    path = cache_path(folder, model, kind, prompt, texts)
    if path.is_file():
        return np.load(path, mmap_mode="r", allow_pickle=False)
    arr = np.ascontiguousarray(encode(), dtype=np.float32)
    with atomic_binary_output(path) as f:
        np.save(f, arr, allow_pickle=False)
    return np.load(path, mmap_mode="r", allow_pickle=False)

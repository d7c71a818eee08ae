"""Tiny, randomly initialised sentence-transformers models built offline (no downloads).

A one-layer BERT of width 16 over a WordPiece vocabulary of the words in ``WORDS``, saved to a
temporary folder and loaded as a ``SentenceTransformer`` (mean pooling) or a ``CrossEncoder``.
"""
from __future__ import annotations

from pathlib import Path

import hardneg as hn

WORDS = ("cell gene protein cancer drug study patients risk blood brain heart virus immune tumor dose trial "
         "mouse human liver lung kidney bone skin muscle nerve enzyme receptor signal pathway growth").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _save_backbone(folder: Path, num_labels: int = 0, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    vocab = SPECIAL + list(WORDS)
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    kw = dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(seed)
    if num_labels:
        BertForSequenceClassification(BertConfig(num_labels=num_labels, **kw)).save_pretrained(folder)
    else:
        BertModel(BertConfig(**kw)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_sentence_transformer(folder: Path, seed: int = 0):
    """A SentenceTransformer (BERT width 16 + mean pooling) on the CPU."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    _save_backbone(Path(folder), seed=seed)
    tr = Transformer(str(folder), max_seq_length=32)
    return SentenceTransformer(modules=[tr, Pooling(tr.get_embedding_dimension(), "mean")], device="cpu")


def tiny_cross_encoder(folder: Path, seed: int = 0):
    """A single-score CrossEncoder (BERT width 16, sigmoid activation) on the CPU."""
    from sentence_transformers import CrossEncoder

    _save_backbone(Path(folder), num_labels=1, seed=seed)
    return CrossEncoder(str(folder), device="cpu")


def tiny_dataset(num_docs: int = 30, num_queries: int = 8, seed: int = 0) -> "hn.datasets.RetrievalDataset":
    """Documents and queries of random vocabulary words; 1-2 positives per query."""
    import numpy as np

    rng = np.random.default_rng(seed)
    corpus = {f"d{i}": " ".join(rng.choice(WORDS, size=6)) for i in range(num_docs)}
    queries, qrels = {}, {}
    for j in range(num_queries):
        pos = rng.choice(num_docs, size=1 + j % 2, replace=False)
        words = corpus[f"d{pos[0]}"].split()[:3] + list(rng.choice(WORDS, size=2))
        queries[f"q{j}"] = " ".join(words)
        qrels[f"q{j}"] = {f"d{p}": 1 for p in pos}
    return hn.datasets.from_dict(corpus, queries, qrels)

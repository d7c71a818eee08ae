"""A tiny randomly initialised SentenceTransformer (1-layer BERT, 16 dims) built offline for
the loss tests: no download, deterministic weights, no dropout."""
from __future__ import annotations

import os
import warnings

WORDS = ("the a cat dog sat on mat ran fast slow red blue car house tree sun moon big small green old new "
         "man woman child park road river hill city town boat train plane book pen cup ball bird fish").split()


def tiny_model(path, dtype=None, seed=0):
    """SentenceTransformer(Transformer(tiny BERT saved under ``path``), mean Pooling) on the CPU."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    vocab = os.path.join(path, "vocab.txt")
    if not os.path.exists(os.path.join(path, "config.json")):
        with open(vocab, "w") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
        BertModel(cfg).save_pretrained(path)
        BertTokenizerFast(vocab).save_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Transformer(str(path))
        model = SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), "mean")], device="cpu")
    if dtype is not None:
        model.to(dtype)
    return model


def features(model, columns):
    """The feature dicts sentence-transformers' collator hands a loss, one per column of texts."""
    return [model.preprocess(list(col)) for col in columns]


def sentences(n, seed, length=5):
    import random

    rnd = random.Random(seed)
    out = set()
    while len(out) < n:
        out.add(" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, length))))
    out = sorted(out)
    rnd.shuffle(out)
    return out


def loss_and_grads(loss_fn, model, feats):
    """``loss_fn(feats, None)`` and the gradient of every parameter that has one (detached copies)."""
    model.zero_grad(set_to_none=True)
    loss = loss_fn(feats, None)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(a, b, tol):
    """Two ``loss_and_grads`` results agree: the loss and every gradient within ``tol`` (relative
    to the gradient's largest entry, or to 1e-4 of the largest entry of any gradient for a
    parameter whose gradient is zero in exact arithmetic, e.g. an attention key's bias: there
    both sides hold float32 rounding noise that any change of summation order redraws)."""
    (la, ga), (lb, gb) = a, b
    assert abs(la.item() - lb.item()) <= tol * max(1.0, abs(lb.item())), (la, lb)
    assert ga.keys() == gb.keys() and ga
    floor = 1e-4 * max(g.abs().max().item() for g in gb.values())
    for k in gb:
        err = (ga[k] - gb[k]).abs().max().item()
        assert err <= tol * max(gb[k].abs().max().item(), floor), (k, err)

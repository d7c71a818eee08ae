"""SentenceTransformersLoss against the installed sentence-transformers: MNRL's argument
names and values, its loss and parameter gradients on a tiny offline model, and the
duplicate masking derived from the batch's tokens."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
import torch.nn.functional as F  # noqa: E402
from sentence_transformers import util  # noqa: E402
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss  # noqa: E402
from st_tiny import assert_same, features, loss_and_grads, sentences, tiny_model  # noqa: E402

from hardneg.losses import CrossBatchMemory, SentenceTransformersLoss  # noqa: E402
from hardneg._st_adapter import feature_row_ids  # noqa: E402


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"), dtype=torch.float64)


def batch_texts(B, n, seed):
    s = sentences(B * (2 + n), seed)
    return [s[k * B:(k + 1) * B] for k in range(2 + n)]


MNRL_OPTIONS = [
    dict(),
    dict(scale=10.0, similarity_fct=util.dot_score),
    dict(scale=30.0, similarity_fct=util.cos_sim, hardness_mode="hard_negatives", hardness_strength=5.0),
    dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"),
    dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), partition_mode="joint",
         hardness_mode="all_negatives", hardness_strength=3.0),
    dict(hardness_mode="in_batch_negatives", hardness_strength=9.0, similarity_fct=util.dot_score, scale=1.0),
]


@pytest.mark.parametrize("opts", MNRL_OPTIONS, ids=lambda o: ",".join(f"{k}" for k in o) or "defaults")
@pytest.mark.parametrize("n", [0, 2])
def test_equals_mnrl_loss_and_gradients(model64, opts, n):
    feats = features(model64, batch_texts(6, n, seed=n + len(opts)))
    ref = loss_and_grads(MultipleNegativesRankingLoss(model64, **opts), model64, feats)
    for mask in (True, False):  # no duplicates in the batch: the masking changes nothing
        got = loss_and_grads(SentenceTransformersLoss(model64, mask_duplicates=mask, **opts), model64, feats)
        assert_same(got, ref, 1e-9)


def test_mnrl_argument_names_positional_and_config(model64):
    a = SentenceTransformersLoss(model64, 30.0, util.dot_score, False, ("query_to_doc",), "joint", None, 0.0)
    assert a.scale == 30.0 and a.similarity_fct is util.dot_score and a.loss.similarity == "dot"
    cfg = a.get_config_dict()
    assert cfg["similarity_fct"] == "dot_score" and cfg["scale"] == 30.0
    assert SentenceTransformersLoss(model64, similarity_fct=model64.similarity).loss.similarity == "cosine"
    assert SentenceTransformersLoss(model64, similarity_fct="dot_score").loss.similarity == "dot"
    with pytest.warns(FutureWarning, match="enqueue_negatives"):  # the old second positional argument
        old = SentenceTransformersLoss(model64, False)
    assert old.enqueue_negatives is False and old.scale == 20.0


def test_other_similarity_functions_are_refused_clearly(model64):
    for fct in (util.manhattan_sim, lambda a, b: a @ b.T):
        with pytest.raises(ValueError, match="cos_sim.*dot_score.*MultipleNegativesRankingLoss"):
            SentenceTransformersLoss(model64, similarity_fct=fct)
    with pytest.raises(ValueError, match="contradicts"):
        SentenceTransformersLoss(model64, similarity_fct=util.cos_sim, similarity="dot")
    with pytest.raises(TypeError, match="mask_duplicates"):
        SentenceTransformersLoss(model64, mask_duplicates="yes")


# ------------------------------------------------------------- duplicate masking
def masked_reference(model, feats, scale, masked):
    """MNRL's logits (cosine * scale) with the listed (row, column) entries removed."""
    emb = [model(f)["sentence_embedding"] for f in feats]
    q, docs = emb[0], torch.cat(emb[1:])
    z = util.cos_sim(q, docs) * scale
    mask = torch.zeros_like(z, dtype=torch.bool)
    for r, c in masked:
        mask[r, c] = True
    return F.cross_entropy(z.masked_fill(mask, float("-inf")), torch.arange(q.shape[0]))


def test_duplicated_positive_and_own_text_are_masked(model64):
    B = 5
    anchors, pos, neg = batch_texts(B, 1, seed=11)
    pos[3] = pos[1]      # queries 1 and 3 share a positive: each must not see the other's as a negative
    neg[4] = anchors[4]  # query 4's hard negative is its own text
    neg[0] = pos[2]      # query 2's positive appears as query 0's hard negative (column B + 0)
    feats = features(model64, [anchors, pos, neg])
    # columns: positives 0..B-1, negatives B..2B-1 (negative of query i at B + i)
    masked = [(1, 3), (3, 1), (4, B + 4), (2, B + 0)]
    ref = loss_and_grads(lambda f, _: masked_reference(model64, f, 20.0, masked), model64, feats)
    got = loss_and_grads(SentenceTransformersLoss(model64), model64, feats)
    assert_same(got, ref, 1e-9)
    # off by the option: exactly MNRL, duplicates and all
    mnrl = loss_and_grads(MultipleNegativesRankingLoss(model64), model64, feats)
    off = loss_and_grads(SentenceTransformersLoss(model64, mask_duplicates=False), model64, feats)
    assert_same(off, mnrl, 1e-9)
    assert abs(off[0].item() - got[0].item()) > 1e-3  # the masking matters on this batch


def test_memory_gets_the_row_ids(model64):
    B = 4
    anchors, pos = batch_texts(B, 0, seed=3)
    mem = CrossBatchMemory(16, 16, dtype=torch.float64)
    loss_fn = SentenceTransformersLoss(model64, memory=mem)
    loss_fn(features(model64, [anchors, pos]), None).backward()
    ids = mem.get()[1]
    assert len(mem) == B and (ids >= 0).all()
    # next step: query 0's positive is in the memory (same text): it is masked there too
    anchors2, pos2 = batch_texts(B, 0, seed=4)
    pos2[0] = pos[2]
    feats2 = features(model64, [anchors2, pos2])
    with torch.no_grad():
        emb = [model64(f)["sentence_embedding"] for f in feats2]
        mem_emb = mem.get()[0]
        z = util.cos_sim(emb[0], torch.cat([emb[1], mem_emb])) * 20.0
        z[0, B + 2] = float("-inf")
        ref = F.cross_entropy(z, torch.arange(B))
        got = loss_fn(feats2, None)
    assert abs(got.item() - ref.item()) < 1e-9


def test_row_ids_ignore_padding_and_read_offsets():
    ids_right = {"input_ids": torch.tensor([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0]]),
                 "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])}
    ids_left = {"input_ids": torch.tensor([[2, 7, 3], [5, 2, 5]]),  # left padded, a narrower batch
                "attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]])}
    flat = {"input_ids": torch.tensor([5, 6, 7, 7]), "offsets": torch.tensor([0, 2, 3])}
    a, b, c = feature_row_ids(ids_right), feature_row_ids(ids_left), feature_row_ids(flat)
    assert a[1] == b[0] and a[0] != a[1] and (a >= 0).all()
    assert c.shape == (3,) and c[1] == c[2] and c[0] != c[1]
    assert feature_row_ids({"pixel_values": torch.zeros(2, 3)}) is None


@pytest.fixture(scope="module")
def model32(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny32"))


@pytest.mark.parametrize("opts", MNRL_OPTIONS[:3], ids=["defaults", "dot", "hardness"])
@pytest.mark.parametrize("backend", ["auto", "fused"])
def test_equals_mnrl_float32(model32, opts, backend):
    # float32 on the CPU: the dense path (auto, no memory) or the fused C++ kernel
    feats = features(model32, batch_texts(8, 1, seed=5))
    ref = loss_and_grads(MultipleNegativesRankingLoss(model32, **opts), model32, feats)
    got = loss_and_grads(SentenceTransformersLoss(model32, backend=backend, **opts), model32, feats)
    assert_same(got, ref, 2e-4)


def test_trainer_collator_features_carry_the_ids(model32):
    # what SentenceTransformerTrainer hands the loss: its data collator, then collect_features
    # (the Trainer itself needs accelerate, which the test environment lacks)
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    anchors, pos = batch_texts(8, 0, seed=9)
    pos[5] = pos[1]  # a duplicated positive inside the batch
    rows = [{"anchor": a, "positive": p} for a, p in zip(anchors, pos)]
    inputs = SentenceTransformerDataCollator(preprocess_fn=model32.preprocess)(rows)
    feats, labels = SentenceTransformerTrainer.collect_features(None, inputs)
    assert len(feats) == 2 and "input_ids" in feats[1]
    loss_fn = SentenceTransformersLoss(model32)
    ids = loss_fn.row_ids(feats, 8, torch.device("cpu"))
    pid = ids["pos_ids"]
    assert (pid >= 0).all() and len(set(pid.tolist())) == 7 and pid[5] == pid[1]
    loss = loss_fn(feats, labels)
    ref = masked_reference(model32, feats, 20.0, [(1, 5), (5, 1)])
    assert abs(loss.item() - ref.item()) < 1e-5

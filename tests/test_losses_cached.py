"""CachedInfoNCELoss (GradCache): loss and parameter gradients equal the uncached loss on the
same batch for every option, and sentence-transformers' CachedMultipleNegativesRankingLoss
where the options overlap (tiny offline model)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
from sentence_transformers import util  # noqa: E402
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss  # noqa: E402
from st_tiny import assert_same, features, loss_and_grads, sentences, tiny_model  # noqa: E402

from hardneg.losses import CachedInfoNCELoss, CrossBatchMemory, SentenceTransformersLoss  # noqa: E402


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"), dtype=torch.float64)


def batch(B, n, seed, dup=False):
    s = sentences(B * (2 + n), seed)
    cols = [s[k * B:(k + 1) * B] for k in range(2 + n)]
    if dup:
        cols[1][3] = cols[1][0]  # a duplicated positive
        if n:
            cols[2][1] = cols[0][1]  # a hard negative that is the query's own text
    return cols


def memory_with(model, d, seed):
    mem = CrossBatchMemory(12, d, dtype=torch.float64)
    texts = sentences(7, seed + 100)
    with torch.no_grad():
        emb = model(model.preprocess(texts))["sentence_embedding"]
    mem.enqueue(emb, torch.arange(7))
    return mem


OPTIONS = [
    dict(),
    dict(scale=10.0, similarity_fct=util.dot_score),
    dict(hardness_mode="all_negatives", hardness_strength=4.0, false_negative_margin=0.3),
    dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), hardness_mode="hard_negatives",
         hardness_strength=2.0),
    dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"),
    dict(in_batch_negatives=False, memory=True),
    dict(memory=True, hardness_mode="in_batch_negatives", hardness_strength=3.0, mask_duplicates=False),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("mini_batch_size", [1, 64])
@pytest.mark.parametrize("n", [0, 1])
def test_equals_uncached_loss(model64, opts, mini_batch_size, n):
    feats = features(model64, batch(7, n, seed=n, dup=True))
    results = []
    for cls, kw in ((SentenceTransformersLoss, {}), (CachedInfoNCELoss, {"mini_batch_size": mini_batch_size})):
        o = dict(opts)
        mem = None
        if o.pop("memory", False):
            mem = o["memory"] = memory_with(model64, 16, seed=n)
        results.append(loss_and_grads(cls(model64, **kw, **o), model64, feats))
        if mem is not None:
            assert len(mem) == 12  # both enqueued this step's positives (and negatives)
    assert_same(results[1], results[0], 1e-6)


@pytest.mark.parametrize("opts", [dict(), dict(scale=7.0, similarity_fct=util.dot_score),
                                  dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
                                       hardness_mode="all_negatives", hardness_strength=5.0)],
                         ids=["defaults", "dot", "symmetric-hardness"])
@pytest.mark.parametrize("n", [0, 2])
def test_equals_sentence_transformers_cached_mnrl(model64, opts, n):
    feats = features(model64, batch(6, n, seed=10 + n))  # no duplicates: the id masking changes nothing
    ref = loss_and_grads(CachedMultipleNegativesRankingLoss(model64, mini_batch_size=4, **opts), model64, feats)
    got = loss_and_grads(CachedInfoNCELoss(model64, mini_batch_size=4, **opts), model64, feats)
    assert_same(got, ref, 1e-6)


def test_grad_output_scales_and_eval_mode(model64):
    feats = features(model64, batch(5, 1, seed=3))
    f = CachedInfoNCELoss(model64, mini_batch_size=2)
    l1, g1 = loss_and_grads(f, model64, feats)
    model64.zero_grad(set_to_none=True)
    (0.25 * f(feats, None)).backward()  # gradient accumulation divides the loss
    for k, p in model64.named_parameters():
        if k in g1:
            assert torch.allclose(p.grad, 0.25 * g1[k], rtol=1e-9, atol=1e-15)
    with torch.no_grad():
        assert abs(f(feats, None).item() - l1.item()) < 1e-12


def test_dropout_is_replayed(tmp_path):
    from hardneg.cached_loss import _slice

    model = tiny_model(tmp_path, dtype=torch.float64)
    for m in model.modules():  # dropout on: step 3 must draw the masks of step 1
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.3
    model.train()
    feats = features(model, batch(6, 0, seed=4))
    torch.manual_seed(5)
    got = loss_and_grads(CachedInfoNCELoss(model, mini_batch_size=2), model, feats)

    def reference(fs, _):  # the same RNG stream: columns embedded mini-batch by mini-batch, with a graph
        cols = [torch.cat([model(_slice(f, b, b + 2, 6))["sentence_embedding"] for b in range(0, 6, 2)]) for f in fs]
        return SentenceTransformersLoss(model).compute_loss_from_embeddings(cols)

    torch.manual_seed(5)
    ref = loss_and_grads(reference, model, feats)
    assert_same(got, ref, 1e-9)
    torch.manual_seed(6)
    other = loss_and_grads(reference, model, feats)
    assert abs(other[0].item() - ref[0].item()) > 1e-6  # dropout is really on


def test_bad_mini_batch_size(model64):
    for bad in (0, -3):
        with pytest.raises(ValueError, match="mini_batch_size"):
            CachedInfoNCELoss(model64, mini_batch_size=bad)
    for bad in (2.5, "8", True, None):
        with pytest.raises(TypeError, match="mini_batch_size"):
            CachedInfoNCELoss(model64, mini_batch_size=bad)
    with pytest.raises(ValueError, match="2 feature columns"):
        CachedInfoNCELoss(model64)(features(model64, batch(3, 0, seed=1))[:1], None)
    flat = {"input_ids": torch.tensor([5, 6, 7]), "offsets": torch.tensor([0, 2])}
    with pytest.raises(ValueError, match="StaticEmbedding"):
        CachedInfoNCELoss(model64)([flat, flat], None)

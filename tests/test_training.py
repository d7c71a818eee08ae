"""hardneg.training: refreshing mined negatives with the model being trained.

References: a fresh ``hn.mine_hard_negatives`` on embeddings computed independently with the
model's own ``encode``; sentence-transformers' trainer runs a tiny offline model.
"""
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

import hardneg as hn  # noqa: E402
from hardneg.training import NegativesTable, RefreshNegatives, refresh_negatives  # noqa: E402
from tiny_models import tiny_dataset, tiny_sentence_transformer  # noqa: E402

KW = dict(num_negatives=2, range_min=0, range_max=10, relative_margin=None, progress=False)


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset()


@pytest.fixture
def model(tmp_path):
    return tiny_sentence_transformer(tmp_path / "m")


def embeddings(model, ds):
    """Reference embeddings: the model's plain encode (no prompts on the tiny model)."""
    c = model.encode(ds.corpus_texts, convert_to_numpy=True, batch_size=7)
    q = model.encode(ds.query_texts, convert_to_numpy=True, batch_size=7)
    return np.asarray(c, np.float32), np.asarray(q, np.float32)


def assert_same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def test_refresh_unchanged_model_equals_fresh_mining(ds, model):
    cb = RefreshNegatives(ds, model, every_n_steps=1, **KW)
    C, Q = embeddings(model, ds)
    ref = hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, **KW)
    assert_same(cb.mined, ref)
    np.testing.assert_allclose(cb.corpus_embeddings, C, rtol=1e-5, atol=1e-6)
    for force in (True, False):  # re-encoded, or reused because the weights did not change
        entry = cb.refresh(model, step=1, force=force)
        assert entry["reused"] is (not force)
        assert entry["rows_encoded"] == (0 if not force else ds.num_docs)
        assert_same(cb.mined, ref)
        assert entry["changed"] == 0
    active = cb.table.active
    np.testing.assert_array_equal(cb.table.current()[active], ref.ids[active])


def test_refresh_changed_model_equals_mining_with_new_embeddings(ds, model, caplog):
    cb = RefreshNegatives(ds, model, every_n_steps=1, **KW)
    first = cb.mined.ids.copy()
    perturb(model)
    with caplog.at_level(logging.INFO, logger="hardneg"):
        entry = cb.refresh(model, step=5)
    C, Q = embeddings(model, ds)
    ref = hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, **KW)
    assert_same(cb.mined, ref)
    assert not entry["reused"] and entry["rows_encoded"] == ds.num_docs
    assert not np.array_equal(first, ref.ids)  # the perturbation changed something
    active = cb.table.active
    np.testing.assert_array_equal(cb.table.current()[active], ref.ids[active])
    # the lazy dataset reads the new table
    tds = cb.train_dataset
    for i in range(len(tds)):
        j = int(cb.table.query_index[i])
        assert [tds[i][f"negative_{k + 1}"] for k in range(2)] == [ds.corpus_texts[r] for r in ref.ids[j]]
    # time and memory in the history and the log
    assert {"encode_corpus", "encode_queries", "mine", "total"} <= set(entry["seconds"])
    assert entry["memory_mib"]["embeddings"] > 0 and entry["memory_mib"]["rss_peak"] > 0
    assert cb.history[-1] is entry and cb.history[0]["step"] == 0
    assert any("refresh at step 5" in r.getMessage() for r in caplog.records)


def test_seed_reaches_the_miner(ds, model):
    kw = {**KW, "sampling": "random", "range_max": 12}
    cb = RefreshNegatives(ds, model, seed=3, **kw)
    C, Q = embeddings(model, ds)
    assert_same(cb.mined, hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, seed=3, **kw))


def test_corpus_sample_keeps_other_rows(ds, model):
    cb = RefreshNegatives(ds, model, every_n_steps=1, corpus_sample=5, refresh_positives=False, seed=3, **KW)
    old = cb.corpus_embeddings.copy()
    perturb(model)
    entry = cb.refresh(model)
    C_new, Q_new = embeddings(model, ds)
    changed = np.flatnonzero(np.abs(cb.corpus_embeddings - old).max(1) > 0)
    assert entry["rows_encoded"] == 5 and changed.size == 5
    keep = np.setdiff1d(np.arange(ds.num_docs), changed)
    np.testing.assert_array_equal(cb.corpus_embeddings[keep], old[keep])
    np.testing.assert_allclose(cb.corpus_embeddings[changed], C_new[changed], rtol=1e-5, atol=1e-6)
    mixed = old.copy()
    mixed[changed] = C_new[changed]
    ref = hn.mine_hard_negatives(ds, corpus_embeddings=mixed, query_embeddings=Q_new, **KW)
    assert_same(cb.mined, ref)


def test_corpus_sample_with_positives(ds, model):
    cb = RefreshNegatives(ds, model, every_n_steps=1, corpus_sample=0.1, seed=1, **KW)
    want = set(cb.table.positive_rows.tolist()) | set(cb.table.current()[cb.table.active].ravel().tolist())
    perturb(model)
    old = cb.corpus_embeddings.copy()
    entry = cb.refresh(model)
    changed = set(np.flatnonzero(np.abs(cb.corpus_embeddings - old).max(1) > 0).tolist())
    assert want <= changed and entry["rows_encoded"] <= len(want) + 3


def _mined_like(mined, ids):
    return hn.MinedNegatives(ids, np.where(ids >= 0, 0.5, -np.inf).astype(np.float32), mined.anchor_scores,
                             mined.positive_ids, mined.all_positive_scores, mined.dataset)


@pytest.mark.parametrize("keep_previous", [True, False])
def test_short_pools(ds, keep_previous):
    rng = np.random.default_rng(0)
    C = rng.standard_normal((ds.num_docs, 8)).astype(np.float32)
    Q = rng.standard_normal((ds.num_queries, 8)).astype(np.float32)
    mined = hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, **{**KW, "num_negatives": 3})
    table = NegativesTable(ds, mined, keep_previous=keep_previous, seed=4)
    assert table.active.all()
    old = table.current()
    new = old[:, ::-1].copy()
    new[0] = -1  # empty pool
    new[1, 1:] = -1  # one negative found
    new[1, 0] = old[1, 2]
    stats = table.update(_mined_like(mined, new))
    cur = table.current()
    np.testing.assert_array_equal(cur[2:], new[2:])
    assert stats["short"] == 2 and stats["empty"] == 1
    positives = ds.positives()
    if keep_previous:
        np.testing.assert_array_equal(cur[0], old[0])
        assert cur[1].tolist() == [old[1, 2], old[1, 0], old[1, 1]]
        assert stats["filled_previous"] == 5
    else:
        assert cur[1, 0] == old[1, 2] and stats["filled_random"] == 5
        for j in (0, 1):
            assert len(set(cur[j].tolist())) == 3 and not set(cur[j].tolist()) & set(positives[j].tolist())


def test_refresh_negatives_function(ds, model):
    res = refresh_negatives(model, ds, **KW)
    C, Q = embeddings(model, ds)
    assert_same(res.mined, hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, **KW))
    buf = res.corpus_embeddings
    perturb(model)
    res2 = refresh_negatives(model, ds, buf, rows=np.array([0, 3]),
                             index_factory=lambda c: hn.DenseIndex(c, metric="cosine"), **KW)
    assert res2.corpus_embeddings is buf and res2.stats["rows_encoded"] == 2


def test_bad_arguments(ds, model):
    with pytest.raises(ValueError, match="index cannot be passed"):
        RefreshNegatives(ds, model, index=None, **KW)
    with pytest.raises(ValueError, match="encoder cannot be passed"):
        refresh_negatives(model, ds, encoder=None, **KW)
    with pytest.raises(ValueError, match="every_n_steps"):
        RefreshNegatives(ds, model, every_n_steps=0, **KW)
    with pytest.raises(ValueError, match="corpus_sample"):
        RefreshNegatives(ds, model, corpus_sample=1.5, **KW)
    with pytest.raises(TypeError, match="dataset"):
        RefreshNegatives({"a": 1}, model, **KW)
    with pytest.raises(ValueError, match="pass model"):
        RefreshNegatives(ds, None, **KW)
    with pytest.raises(TypeError, match="writable"):
        refresh_negatives(model, ds, np.zeros((ds.num_docs, 16), np.float64), **KW)
    with pytest.raises(ValueError, match="rows"):
        refresh_negatives(model, ds, np.zeros((ds.num_docs, 16), np.float32), rows=[ds.num_docs], **KW)
    with pytest.raises(TypeError, match="model"):
        refresh_negatives(object(), ds, **KW)


# ------------------------------------------------------------------------------------------ trainer


class _Recorder:
    """Wraps the trainer's data collator: records each batch's rows and the global step at fetch time."""

    def __init__(self, inner, trainer, log):
        self.inner, self.trainer, self.log = inner, trainer, log

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, features):
        self.log.append((self.trainer.state.global_step, [dict(f) for f in features]))
        return self.inner(features)


def _train(ds, model, tmp_path, cb, **args):
    pytest.importorskip("accelerate")
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    targs = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                                                 learning_rate=5e-2, save_strategy="no", report_to="none",
                                                 logging_steps=1000, use_cpu=True, seed=0, **args)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=cb.train_dataset,
                                         loss=losses.MultipleNegativesRankingLoss(model), callbacks=[cb])
    log = []
    trainer.data_collator = _Recorder(trainer.data_collator, trainer, log)
    trainer.train()
    return trainer, log


@pytest.mark.slow
def test_trainer_keeps_running_across_refreshes(ds, model, tmp_path):
    snapshots = {}

    class Spy(RefreshNegatives):
        def refresh(self, model, step=None, epoch=None, force=False):
            entry = super().refresh(model, step, epoch, force)
            snapshots[step] = self.table.current()
            return entry

    cb = Spy(ds, model, every_n_steps=1, **KW)
    snapshots[0] = cb.table.current()
    trainer, log = _train(ds, model, tmp_path, cb, max_steps=4)
    assert trainer.state.global_step == 4
    assert [e["step"] for e in cb.history] == [0, 1, 2, 3]  # no refresh after the last step
    assert any(e["changed"] > 0 for e in cb.history[1:])  # the model moved and so did the negatives
    texts = ds.corpus_texts
    text_to_query = {ds.query_texts[j]: j for j in range(ds.num_queries)}
    for fetched_at, feats in log:
        table = snapshots[max(s for s in snapshots if s <= fetched_at)]
        for f in feats:
            j = text_to_query[f["anchor"]]
            assert [f["negative_1"], f["negative_2"]] == [texts[r] for r in table[j]]
    # the documented delay: the batch of step N + 2 is the first fetched after the refresh of step N
    # (accelerate fetches one batch ahead inside an epoch; an epoch's first batch is fetched after the
    # previous epoch ended)
    steps_fetched = [s for s, _ in log]
    assert steps_fetched[:2] == [0, 0]
    assert all(s >= b - 1 for b, s in enumerate(steps_fetched))


@pytest.mark.slow
def test_trainer_epoch_refresh_is_exact(ds, model, tmp_path):
    cb = RefreshNegatives(ds, model, **KW)  # every_n_steps=None: at each epoch end
    first = cb.table.current()
    rows = len(cb.train_dataset)
    trainer, log = _train(ds, model, tmp_path, cb, num_train_epochs=2)
    per_epoch = -(-rows // 4)
    assert trainer.state.global_step == 2 * per_epoch
    assert [e["step"] for e in cb.history] == [0, per_epoch]
    second = cb.table.current()
    texts = ds.corpus_texts
    text_to_query = {ds.query_texts[j]: j for j in range(ds.num_queries)}
    for b, (_, feats) in enumerate(log):
        table = first if b < per_epoch else second
        for f in feats:
            j = text_to_query[f["anchor"]]
            assert [f["negative_1"], f["negative_2"]] == [texts[r] for r in table[j]]


def test_table_updates_reach_loader_workers(ds):
    """The shared-memory table: a persistent worker process reads the negatives of the latest update."""
    rng = np.random.default_rng(1)
    C = rng.standard_normal((ds.num_docs, 8)).astype(np.float32)
    Q = rng.standard_normal((ds.num_queries, 8)).astype(np.float32)
    mined = hn.mine_hard_negatives(ds, corpus_embeddings=C, query_embeddings=Q, **KW)
    table = NegativesTable(ds, mined)
    loader = torch.utils.data.DataLoader(table.dataset(), batch_size=len(table), num_workers=1,
                                         persistent_workers=True, collate_fn=lambda rows: rows)
    texts = ds.corpus_texts

    def seen():
        (rows,) = list(loader)
        return [[r["negative_1"], r["negative_2"]] for r in rows]

    def expected():
        cur = table.current()
        return [[texts[x] for x in cur[j]] for j in table.query_index.tolist()]

    before = seen()
    assert before == expected()
    table.update(_mined_like(mined, mined.ids[:, ::-1].copy()))  # a different order of the same negatives
    after = seen()
    assert after == expected() and after == [[b, a] for a, b in before] != before

